//! The Boltzmann-generator Monte Carlo move: independence Metropolis–Hastings with the flow as
//! proposal (DESIGN.md §1).
//!
//! # The rule
//!
//! With β = 1/kT and the log importance weight `log w(x) = −U(x)/kT − log q(x)` (see
//! [`crate::boltzmann`]), one move from the current state `x` is
//!
//! 1. draw a latent `z` from the prior and push it through the flow, `y = F(z)` with its exact
//!    `log q(y)`;
//! 2. translate it to the current centre of mass, `x' = y + c(x)`, so that the move never changes
//!    the centre of mass (and stays valid when U has a centre-of-mass term);
//! 3. let the host evaluate `U(x')`;
//! 4. accept with probability `min(1, exp(log w(x') − log w(x)))`.
//!
//! On the fibre of configurations with centre of mass c(x) the proposal density is
//! `q(x' − c(x))`, independent of the current state, and `log q` is invariant under translations,
//! so this is the independence sampler whose stationary distribution is `exp(−U/kT)` restricted
//! to that fibre.
//!
//! # Exactness
//!
//! Detailed balance needs the *same* function `log q` at `x` and at `x'`. In the default
//! exact-discrete density mode the log-density reported with a proposal (push-forward) and the
//! log-density evaluated later for the same configuration (pull-back) agree to round-off, so the
//! chain samples `exp(−U/kT)` exactly. In the continuous mode the two differ by the
//! integrator's error and the chain is biased at that level; use it only for comparisons.
//!
//! # The cache
//!
//! `log q` of the current state is cached together with the exact bits of its coordinates. A move
//! that follows an accepted flow proposal (the host copied `x'` into its state) reuses the
//! proposal's `log q`; after the host changed the state (a local move, an MD segment) the new
//! state is pulled back through the flow once. `U` of the current state is taken as given on every
//! call and enters only `log w`, so a host may change its Hamiltonian between moves.
//!
//! # Special energies and temperatures
//!
//! The rules are those of [`crate::boltzmann`]; the decision is
//! [`metropolis`]`(`[`log_weight_ratio`]`(…), uniform)`.
//!
//! * `U = +∞` is a valid energy: a proposal with `U(x') = +∞` is always rejected, even from a
//!   current state of infinite energy (the chain then stays where it is).
//! * A current state with `U(x) = +∞` has weight 0, `log w(x) = −∞`, and that is the only way
//!   its log weight is −∞: the ratio w(x')/w(x) is infinite and any proposal with finite
//!   energy is accepted with certainty, whatever its `log q`. This lets a host start from an
//!   overlapping configuration.
//! * `U = NaN` and `U = −∞` are errors.
//! * Any positive finite kT works. At a tiny kT (1e-300, 5e-324) `U/kT` overflows for
//!   ordinary energies; the test then compares the states through `−(U' − U)/kT`, so a
//!   downhill proposal is accepted and an uphill one rejected, never decided by an overflow.
//!
//! # Errors leave everything untouched
//!
//! The latent of proposal number `k` is drawn from its own random stream, derived from the move's
//! seed and `k` (the number of proposals decided so far), and `k` advances only when a proposal
//! is decided. A call that fails (NaN energy, failing energy callback, a configuration the flow
//! cannot invert, NaN coordinates) changes neither the state, nor the statistics, nor the random
//! stream: retrying gives the identical proposal.
//!
//! # Particle labels
//!
//! The flow is permutation equivariant and its density permutation invariant, so the labels of
//! the particles in a proposal are arbitrary: particle `i` of `x'` has no relation to particle `i`
//! of `x`. Hosts that track particle identity (bonds, per-particle properties, trajectories
//! analysed per label) must not rely on labels surviving an accepted flow move; for identical
//! particles the stationary distribution is unaffected. (With the non-equivariant `dense`
//! baseline field the density depends on the labels; the move is still exact for the labelled
//! target, it just proposes the label arrangements its training data showed.)

use std::sync::Arc;

use rand::RngExt;

use crate::boltzmann::{Kt, check_energy, log_weight_ratio, metropolis};
use crate::error::{Error, Result, check_finite};
use crate::flow::Flow;
use crate::geometry::{MAX_DIM, center_of_mass_into, translate};
use crate::integrate::{Stats, Workspace};

use crate::rng::{self, Stream};

/// Counters of a move.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MoveStats {
    /// Proposals that were decided (accepted or rejected). A proposal replaced by a new
    /// [`FlowMove::propose`] before it was decided is not counted.
    pub n_proposed: u64,
    /// Proposals that were accepted.
    pub n_accepted: u64,
    /// The solver work of the decided proposals, summed: the proposals' push-forwards and
    /// the pull-backs of current states that were not cached.
    pub solver: Stats,
}

impl MoveStats {
    /// `n_accepted / n_proposed`, or 0 before the first decided proposal.
    #[must_use]
    pub fn acceptance_rate(&self) -> f64 {
        if self.n_proposed == 0 {
            0.0
        } else {
            self.n_accepted as f64 / self.n_proposed as f64
        }
    }
}

/// What a proposal needs for its decision, computed without touching the move's state.
#[derive(Debug, Clone, Copy)]
struct Prepared {
    /// `log q` of the current state, and whether it was computed now (a cache miss).
    log_q_current: f64,
    cache_miss: bool,
    /// `U` of the current state, as the host gave it (admissible).
    u_current: f64,
    /// `log q` of the proposal (in `FlowMove::trial`).
    log_q_proposed: f64,
    /// The uniform variate of the Metropolis test, from the proposal's stream.
    uniform: f64,
    /// The solver work of this proposal (and of the current state's pull-back on a miss).
    solver: Stats,
}

/// An undecided proposal (in `FlowMove::pending_x`).
#[derive(Debug, Clone, Copy)]
struct Pending {
    prepared: Prepared,
}

/// The flow Monte Carlo move for one chain. See the module documentation for the rule.
///
/// A move owns a shared reference to its flow, a workspace and the cached current state; it is
/// `Send` but meant for one chain, driven by one thread at a time. Many moves can share one flow.
#[derive(Debug, Clone)]
pub struct FlowMove {
    flow: Arc<Flow>,
    kt: Kt,
    seed: u64,
    stats: MoveStats,
    workspace: Workspace,
    /// The current state as last seen, and its `log q` (valid when `current_valid`).
    current_x: Vec<f64>,
    current_log_q: f64,
    current_valid: bool,
    /// The proposal awaiting [`FlowMove::accept`].
    pending_x: Vec<f64>,
    pending: Option<Pending>,
    /// Scratch: the proposal being built, and the pull-back of the current state.
    trial: Vec<f64>,
    scratch: Vec<f64>,
}

impl FlowMove {
    /// A move proposing from `flow` at temperature `kt` (same energy units as U), with proposal
    /// randomness derived from `seed`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `kt` is not positive and finite; [`Error::Resource`] if the
    /// exact-discrete workspace would exceed [`crate::integrate::MAX_WORKSPACE_BYTES`].
    pub fn new(flow: Arc<Flow>, kt: f64, seed: u64) -> Result<FlowMove> {
        let kt = Kt::new(kt)?;
        let len = flow.layout().len();
        let mut workspace = flow.workspace();
        if flow.integrator().mode() == crate::integrate::DensityMode::ExactDiscrete {
            // Up front, so that an oversized flow fails here rather than at the first proposal.
            workspace.reserve_exact_discrete()?;
        }
        Ok(FlowMove {
            workspace,
            flow,
            kt,
            seed,
            stats: MoveStats::default(),
            current_x: vec![0.0; len],
            current_log_q: f64::NAN,
            current_valid: false,
            pending_x: vec![0.0; len],
            pending: None,
            trial: vec![0.0; len],
            scratch: vec![0.0; len],
        })
    }

    #[must_use]
    pub fn flow(&self) -> &Arc<Flow> {
        &self.flow
    }

    /// The temperature kT, in the energy units of U.
    #[must_use]
    pub fn kt(&self) -> f64 {
        self.kt.get()
    }

    #[must_use]
    pub fn seed(&self) -> u64 {
        self.seed
    }

    #[must_use]
    pub fn stats(&self) -> MoveStats {
        self.stats
    }

    /// `log q` of the cached current state, if there is one.
    #[must_use]
    pub fn current_log_density(&self) -> Option<f64> {
        self.current_valid.then_some(self.current_log_q)
    }

    /// The undecided proposal, if any.
    #[must_use]
    pub fn pending_proposal(&self) -> Option<&[f64]> {
        self.pending.map(|_| &self.pending_x[..])
    }

    /// `log q` of the undecided proposal, as reported by the push-forward.
    #[must_use]
    pub fn pending_log_density(&self) -> Option<f64> {
        self.pending.map(|p| p.prepared.log_q_proposed)
    }

    /// Phase one: proposes `x'` from the current state `x_current` with energy `u_current`.
    ///
    /// Returns the proposal (same layout as `x_current`, same centre of mass, arbitrary particle
    /// labels), which stays pending until [`FlowMove::accept`]. Calling `propose` again before
    /// `accept` replaces the pending proposal by the same proposal translated to the new current
    /// state (the random stream advances only when a proposal is decided).
    ///
    /// # Errors
    ///
    /// [`Error::DimensionMismatch`] (wrong length), [`Error::NonFinite`] (NaN or infinite
    /// coordinates, `U` NaN or −∞, a non-finite `log q`), and the flow's errors when the current
    /// state cannot be pulled back or the proposal pushed forward. On error nothing changes,
    /// including a pending proposal.
    pub fn propose(&mut self, x_current: &[f64], u_current: f64) -> Result<&[f64]> {
        let prepared = self.prepare(x_current, u_current)?;
        self.commit_current(x_current, prepared);
        std::mem::swap(&mut self.pending_x, &mut self.trial);
        self.pending = Some(Pending { prepared });
        Ok(&self.pending_x)
    }

    /// Phase two: decides the pending proposal given its energy `u_proposed`. Returns whether it
    /// was accepted; the host then copies the proposal into its state (accepted) or keeps the
    /// current state (rejected). Either way the proposal is no longer pending.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] if no proposal is pending; [`Error::NonFinite`] if `u_proposed`
    /// is NaN or −∞. On error nothing changes and the proposal stays pending.
    pub fn accept(&mut self, u_proposed: f64) -> Result<bool> {
        let Some(Pending { prepared }) = self.pending else {
            return Err(Error::InvalidState {
                what: "accept called without a pending proposal (call propose first)".to_owned(),
            });
        };
        check_energy(u_proposed, "energy of the proposal")?;
        let accepted = self.decide(&prepared, u_proposed);
        if accepted {
            std::mem::swap(&mut self.current_x, &mut self.pending_x);
            self.current_log_q = prepared.log_q_proposed;
            self.current_valid = true;
        }
        self.pending = None;
        self.record(accepted, prepared.solver);
        Ok(accepted)
    }

    /// Both phases in one call: proposes from `(x, u)`, evaluates the proposal's energy with
    /// `energy`, and on acceptance overwrites `x` and `u` with the proposal and its energy.
    /// Returns whether the proposal was accepted. Discards a pending proposal of
    /// [`FlowMove::propose`] on success.
    ///
    /// # Errors
    ///
    /// As [`FlowMove::propose`]; an error returned by `energy` is passed through, and an energy
    /// that is NaN or −∞ is [`Error::NonFinite`]. On error nothing changes, `x` and `u`
    /// included.
    pub fn step<F>(&mut self, x: &mut [f64], u: &mut f64, mut energy: F) -> Result<bool>
    where
        F: FnMut(&[f64]) -> Result<f64>,
    {
        let prepared = self.prepare(x, *u)?;
        let u_proposed = energy(&self.trial)?;
        check_energy(u_proposed, "energy returned for the proposal")?;
        let accepted = self.decide(&prepared, u_proposed);
        if accepted {
            x.copy_from_slice(&self.trial);
            *u = u_proposed;
            std::mem::swap(&mut self.current_x, &mut self.trial);
            self.current_log_q = prepared.log_q_proposed;
            self.current_valid = true;
        } else {
            self.commit_current(x, prepared);
        }
        self.pending = None;
        self.record(accepted, prepared.solver);
        Ok(accepted)
    }

    /// Computes everything a decision needs into scratch space (`trial`, `scratch`,
    /// `workspace`), leaving the observable state untouched.
    fn prepare(&mut self, x: &[f64], u: f64) -> Result<Prepared> {
        let layout = self.flow.layout();
        if x.len() != layout.len() {
            return Err(Error::size("current configuration", layout.len(), x.len()));
        }
        check_finite(x, "current configuration")?;
        check_energy(u, "energy of the current state")?;

        let cache_hit = self.current_valid && same_bits(&self.current_x, x);
        let mut solver = Stats::default();
        let log_q_current = if cache_hit {
            self.current_log_q
        } else {
            self.scratch.copy_from_slice(x);
            let (log_q, stats) = self
                .flow
                .pull_back(&mut self.scratch, &mut self.workspace)?;
            check_log_q(log_q, "log q of the current state")?;
            solver += stats;
            log_q
        };

        // Proposal k draws its latent and then its uniform from its own stream, disjoint from
        // every batch sample's (rng module docs).
        let mut rng = rng::stream(self.seed, Stream::MoveProposal(self.stats.n_proposed));
        let (log_q_proposed, stats) =
            self.flow
                .sample_one_into(&mut rng, &mut self.trial, &mut self.workspace)?;
        solver += stats;
        check_log_q(log_q_proposed, "log q of the proposal")?;
        let uniform: f64 = rng.random();

        let dim = layout.dim;
        let mut com = [0.0; MAX_DIM];
        center_of_mass_into(x, dim, &mut com[..dim]);
        translate(&mut self.trial, dim, &com[..dim]);
        check_finite(&self.trial, "proposal")?;

        Ok(Prepared {
            log_q_current,
            cache_miss: !cache_hit,
            u_current: u,
            log_q_proposed,
            uniform,
            solver,
        })
    }

    /// The Metropolis decision for a prepared proposal with energy `u_proposed` (admissible).
    fn decide(&self, prepared: &Prepared, u_proposed: f64) -> bool {
        let log_acceptance = log_weight_ratio(
            self.kt,
            prepared.u_current,
            prepared.log_q_current,
            u_proposed,
            prepared.log_q_proposed,
        );
        metropolis(log_acceptance, prepared.uniform).accepted
    }

    /// Caches the current state after a successful prepare.
    fn commit_current(&mut self, x: &[f64], prepared: Prepared) {
        if prepared.cache_miss {
            self.current_x.copy_from_slice(x);
            self.current_log_q = prepared.log_q_current;
            self.current_valid = true;
        }
    }

    fn record(&mut self, accepted: bool, solver: Stats) {
        self.stats.solver += solver;
        self.stats.n_proposed += 1;
        if accepted {
            self.stats.n_accepted += 1;
        }
    }
}

fn check_log_q(log_q: f64, what: &str) -> Result<()> {
    if log_q.is_finite() {
        Ok(())
    } else {
        Err(Error::non_finite(format!("{what} = {log_q}")))
    }
}

/// Bitwise equality, so that −0.0 ≠ 0.0 and the cache is never reused for a different input.
fn same_bits(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energy::{DoubleWell, Energy};

    fn dw4_move(seed: u64) -> (FlowMove, DoubleWell) {
        let flow = Arc::new(Flow::new(4, 2, 3).unwrap());
        (FlowMove::new(flow, 1.0, seed).unwrap(), DoubleWell::dw4())
    }

    /// A sample of the flow of `dw4_move` with high energy (U ≈ 300), so that the first
    /// proposals are accepted: the untrained flow accepts ~0.3 % of its proposals on DW-4, and
    /// hardly ever leaves a low-energy state.
    fn start() -> Vec<f64> {
        Flow::new(4, 2, 3).unwrap().sample(1, 1).unwrap().0
    }

    #[test]
    fn rejects_bad_temperatures() {
        let flow = Arc::new(Flow::new(2, 2, 0).unwrap());
        for kt in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(FlowMove::new(flow.clone(), kt, 0).is_err(), "kT = {kt}");
        }
    }

    #[test]
    fn two_phase_and_one_call_agree() {
        let (mut two, energy) = dw4_move(11);
        let (mut one, _) = dw4_move(11);
        let mut x2 = start();
        let mut u2 = energy.energy(&x2);
        let mut x1 = x2.clone();
        let mut u1 = u2;
        for _ in 0..30 {
            let proposal = two.propose(&x2, u2).unwrap().to_vec();
            let u_prop = energy.energy(&proposal);
            if two.accept(u_prop).unwrap() {
                x2 = proposal;
                u2 = u_prop;
            }
            one.step(&mut x1, &mut u1, |y| Ok(energy.energy(y)))
                .unwrap();
            assert_eq!(x1, x2);
            assert_eq!(u1.to_bits(), u2.to_bits());
        }
        assert_eq!(one.stats(), two.stats());
        assert_eq!(one.stats().n_proposed, 30);
        assert!(one.stats().n_accepted > 0, "{:?}", one.stats());
    }

    #[test]
    fn infinite_energies_are_always_rejected_and_escape_from_infinity_is_certain() {
        let (mut mv, _) = dw4_move(1);
        let mut x = start();
        let mut u = 0.0;
        for _ in 0..5 {
            assert!(!mv.step(&mut x, &mut u, |_| Ok(f64::INFINITY)).unwrap());
        }
        assert_eq!(x, start());
        let mut u = f64::INFINITY;
        assert!(mv.step(&mut x, &mut u, |_| Ok(1e6)).unwrap());
        assert_eq!(u, 1e6);
        // Both infinite: rejected.
        let mut u = f64::INFINITY;
        assert!(!mv.step(&mut x, &mut u, |_| Ok(f64::INFINITY)).unwrap());
        assert_eq!(mv.stats().n_proposed, 7);
        assert_eq!(mv.stats().n_accepted, 1);
    }

    #[test]
    fn accept_without_propose_is_an_invalid_state() {
        let (mut mv, _) = dw4_move(1);
        assert!(matches!(mv.accept(0.0), Err(Error::InvalidState { .. })));
        mv.propose(&start(), 0.0).unwrap();
        mv.accept(0.0).unwrap();
        assert!(matches!(mv.accept(0.0), Err(Error::InvalidState { .. })));
        assert_eq!(mv.stats().n_proposed, 1);
    }

    #[test]
    fn the_cache_is_keyed_on_bits() {
        assert!(!same_bits(&[0.0], &[-0.0]));
        assert!(same_bits(&[1.5, -2.0], &[1.5, -2.0]));
        let (mut mv, _) = dw4_move(1);
        let x = start();
        mv.propose(&x, 0.0).unwrap();
        let cached = mv.current_log_density().unwrap();
        let reference = mv.flow().log_density(&x).unwrap()[0];
        assert_eq!(cached, reference);
    }
}
