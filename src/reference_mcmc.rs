//! Reference data by random-walk Metropolis: many independent chains, in parallel and
//! bit-reproducible.
//!
//! # The chain
//!
//! Each chain samples the Boltzmann distribution `p(x) ∝ exp(−U(x)/kT)` restricted to the
//! centre-of-mass-free subspace (CoM = 0). A proposal displaces **all** coordinates at once,
//! `y = x + σ·ξ` with `ξ ~ N(0, I)` in R^(N·D), and removes the centre of mass of `y`; the
//! displacement is therefore an isotropic Gaussian of standard deviation σ on the CoM-free
//! subspace, a symmetric proposal, and the acceptance probability is the plain Metropolis
//! `min(1, exp(−(U(y) − U(x))/kT))`.
//!
//! Why whole-configuration moves: [`Energy`] evaluates a whole configuration (it has no
//! single-particle energy difference), so a one-particle move would cost as much as a whole one
//! while moving N times less. Why CoM removal: every energy of this crate is translation
//! invariant, so the CoM-free marginal is the distribution of interest and the CoM would only
//! random-walk. For an energy that is *not* translation invariant the chains sample the
//! conditional distribution at CoM = 0.
//!
//! `U = +∞` (overlapping particles) is a valid energy and is always rejected. A NaN energy, or
//! `U = −∞` (an improper distribution), is an error. The rules, the log ratio and the test are
//! those of [`crate::boltzmann`] ([`log_boltzmann_ratio`], [`metropolis`]), which the flow
//! move shares; they stay correct at any positive kT, however small.
//!
//! # Burn-in, adaptation, thinning
//!
//! Every chain first runs `n_burnin` steps during which its step size σ adapts by Robbins–Monro,
//! `log σ ← log σ + (α_t − α*)/(t + 1)^0.6`, with `α_t` the acceptance probability of step `t`
//! and `α*` the target acceptance. σ is then **frozen**: the production chain is a
//! time-homogeneous Markov chain with `p` as its stationary distribution, which an ever-adapting
//! chain is not guaranteed to be. Production keeps every `thin`-th state.
//!
//! # Determinism
//!
//! Chain `c` of a run with seed `s` draws everything (its start, proposals, acceptance tests)
//! from its own ChaCha20 stream `sample_rng(s, c)` and runs sequentially on one thread, so
//! output is bit-identical for any number of threads.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::RngExt;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::boltzmann::{Kt, Metropolis, is_admissible_energy, log_boltzmann_ratio, metropolis};
use crate::energy::Energy;
use crate::error::{Error, Result, check_finite};
use crate::geometry::{Layout, remove_center_of_mass};
use crate::rng::{self, Stream};

/// Where each chain starts. Whatever the start, its centre of mass is removed first.
#[derive(Debug, Clone, PartialEq)]
pub enum InitialState {
    /// Particles on the first N sites (lexicographic order) of a simple cubic lattice in D
    /// dimensions with the given `spacing` (length units), each coordinate then displaced by a
    /// uniform random amount in `[−jitter, jitter]·spacing` drawn from the chain's own stream, so
    /// chains start apart. A compact, overlap-free start: choose `spacing` near the typical
    /// nearest-neighbour distance of the system (1 for LJ-13 with `r_m = 1`; 2.5–4 for the
    /// double wells, though burn-in also recovers from a poor choice).
    Lattice { spacing: f64, jitter: f64 },
    /// Given configurations, particle-major: either one (N·D values), used by every chain, or
    /// one per chain (`n_chains`·N·D values, chain-major).
    Configurations(Vec<f64>),
}

impl Default for InitialState {
    /// `Lattice { spacing: 1.0, jitter: 0.1 }`.
    fn default() -> Self {
        InitialState::Lattice {
            spacing: 1.0,
            jitter: 0.1,
        }
    }
}

/// Settings of a run. Build with struct-update syntax from [`McmcConfig::default`]; every field
/// is validated by [`run`], which never panics on a bad value.
#[derive(Debug, Clone, PartialEq)]
pub struct McmcConfig {
    /// Temperature kT in the energy's units (> 0).
    pub kt: f64,
    /// Number of independent chains (≥ 1).
    pub n_chains: usize,
    /// Burn-in (adaptation) steps per chain, discarded.
    pub n_burnin: usize,
    /// Total number of samples returned (≥ `n_chains`), split as evenly as possible: chain `c`
    /// gives `n_samples / n_chains` samples, one more if `c < n_samples % n_chains`.
    pub n_samples: usize,
    /// Production steps per returned sample (≥ 1): each chain keeps every `thin`-th state.
    pub thin: usize,
    /// Step size σ at the start of burn-in (length units, > 0): the standard deviation of the
    /// displacement of each coordinate before CoM removal.
    pub initial_step: f64,
    /// Acceptance probability the burn-in adaptation steers towards, in (0, 1).
    pub target_acceptance: f64,
    /// Seed of all random streams.
    pub seed: u64,
    /// Where the chains start.
    pub initial: InitialState,
}

impl Default for McmcConfig {
    /// kT = 1, 16 chains, 10,000 burn-in steps, 10,000 samples, thin 10, σ₀ = 0.1, target
    /// acceptance 0.4, seed 0, [`InitialState::default`].
    fn default() -> Self {
        McmcConfig {
            kt: 1.0,
            n_chains: 16,
            n_burnin: 10_000,
            n_samples: 10_000,
            thin: 10,
            initial_step: 0.1,
            target_acceptance: 0.4,
            seed: 0,
            initial: InitialState::default(),
        }
    }
}

impl McmcConfig {
    /// Number of samples chain `chain` contributes (see [`McmcConfig::n_samples`]).
    #[must_use]
    pub fn samples_of_chain(&self, chain: usize) -> usize {
        self.n_samples / self.n_chains + usize::from(chain < self.n_samples % self.n_chains)
    }

    /// Checks every field against a system of `layout`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a value out of range, [`Error::NonFinite`] for NaN or
    /// infinite initial coordinates, [`Error::DimensionMismatch`] for initial configurations of
    /// the wrong length.
    pub fn validate(&self, layout: Layout) -> Result<()> {
        Kt::new(self.kt).map_err(|e| match e {
            Error::InvalidArgument { what } => Error::invalid(format!("mcmc: {what}")),
            other => other,
        })?;
        if self.n_chains == 0 {
            return Err(Error::invalid("mcmc: n_chains must be at least 1"));
        }
        if self.n_samples < self.n_chains {
            return Err(Error::invalid(format!(
                "mcmc: n_samples ({}) must be at least n_chains ({}), or some chains would be wasted",
                self.n_samples, self.n_chains
            )));
        }
        if self.thin == 0 {
            return Err(Error::invalid("mcmc: thin must be at least 1"));
        }
        if !(self.initial_step.is_finite() && self.initial_step > 0.0) {
            return Err(Error::invalid(format!(
                "mcmc: initial_step must be positive and finite, got {}",
                self.initial_step
            )));
        }
        if !(self.target_acceptance > 0.0 && self.target_acceptance < 1.0) {
            return Err(Error::invalid(format!(
                "mcmc: target_acceptance must lie in (0, 1), got {}",
                self.target_acceptance
            )));
        }
        let n_steps = self.steps_per_chain(0);
        if n_steps.is_none() {
            return Err(Error::invalid(
                "mcmc: n_burnin + samples per chain * thin overflows",
            ));
        }
        if self.n_samples.checked_mul(layout.len()).is_none() {
            return Err(Error::invalid(format!(
                "mcmc: {} samples of {} coordinates do not fit in memory",
                self.n_samples,
                layout.len()
            )));
        }
        match &self.initial {
            InitialState::Lattice { spacing, jitter } => {
                if !(spacing.is_finite() && *spacing > 0.0) {
                    return Err(Error::invalid(format!(
                        "mcmc: lattice spacing must be positive and finite, got {spacing}"
                    )));
                }
                if !(jitter.is_finite() && *jitter >= 0.0) {
                    return Err(Error::invalid(format!(
                        "mcmc: lattice jitter must be non-negative and finite, got {jitter}"
                    )));
                }
            }
            InitialState::Configurations(x) => {
                let per_chain = self.n_chains.checked_mul(layout.len());
                if x.len() != layout.len() && Some(x.len()) != per_chain {
                    return Err(Error::size(
                        format!(
                            "mcmc: initial configurations (one of N·D = {} values, or one per chain)",
                            layout.len()
                        ),
                        per_chain.unwrap_or(usize::MAX),
                        x.len(),
                    ));
                }
                check_finite(x, "mcmc: initial configuration")?;
            }
        }
        Ok(())
    }

    /// Burn-in plus production steps of chain `chain`; `None` on overflow.
    fn steps_per_chain(&self, chain: usize) -> Option<u64> {
        let production = (self.samples_of_chain(chain) as u64).checked_mul(self.thin as u64)?;
        production.checked_add(self.n_burnin as u64)
    }
}

/// What one chain did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChainStats {
    /// Samples this chain contributed.
    pub n_samples: usize,
    /// Burn-in steps and how many of them were accepted.
    pub n_burnin: u64,
    pub n_burnin_accepted: u64,
    /// Production steps (`n_samples · thin`) and how many of them were accepted.
    pub n_proposed: u64,
    pub n_accepted: u64,
    /// The step size σ frozen at the end of burn-in and used for the whole production chain.
    pub step: f64,
}

impl ChainStats {
    /// Acceptance rate of the production chain (0 if it made no step).
    #[must_use]
    pub fn acceptance(&self) -> f64 {
        ratio(self.n_accepted, self.n_proposed)
    }

    /// Acceptance rate during burn-in (0 if there was none).
    #[must_use]
    pub fn burnin_acceptance(&self) -> f64 {
        ratio(self.n_burnin_accepted, self.n_burnin)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Statistics of a run, one entry per chain in chain order.
#[derive(Debug, Clone, PartialEq)]
pub struct McmcStats {
    pub chains: Vec<ChainStats>,
}

impl McmcStats {
    /// Overall production acceptance rate: accepted over proposed steps, summed over chains.
    #[must_use]
    pub fn acceptance(&self) -> f64 {
        let accepted = self.chains.iter().map(|c| c.n_accepted).sum();
        let proposed = self.chains.iter().map(|c| c.n_proposed).sum();
        ratio(accepted, proposed)
    }

    /// Sample indices `a..b` of chain `chain` in [`McmcOutput`] (chains are stored one after
    /// another, in chain order).
    ///
    /// # Panics
    ///
    /// If `chain` is not a chain of this run.
    #[must_use]
    pub fn chain_samples(&self, chain: usize) -> Range<usize> {
        let start: usize = self.chains[..chain].iter().map(|c| c.n_samples).sum();
        start..start + self.chains[chain].n_samples
    }
}

/// Samples of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct McmcOutput {
    /// Particles and dimension of the system.
    pub layout: Layout,
    /// `n_samples` configurations, `n_samples · N·D` values, particle-major, centre of mass
    /// removed; chain-major (chain 0's samples in order, then chain 1's, …, see
    /// [`McmcStats::chain_samples`]).
    pub x: Vec<f64>,
    /// `U(x)` of each sample, in the energy's units (not divided by kT). Always finite.
    pub energies: Vec<f64>,
    pub stats: McmcStats,
}

/// Progress of a run, for a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McmcProgress {
    /// Steps (burn-in and production, all chains) completed so far.
    pub steps_done: u64,
    /// Steps the whole run will make.
    pub steps_total: u64,
}

/// Runs the chains of `config` on `energy` (see the module docs).
///
/// # Errors
///
/// The errors of [`McmcConfig::validate`]; [`Error::InvalidArgument`] if the energy's
/// particles and dimension do not form a valid [`Layout`] or a chain starts at `U = ±∞`;
/// [`Error::NonFinite`] if the energy returns NaN (or `−∞`) anywhere; [`Error::Resource`] if
/// the `n_samples` configurations cannot be allocated. Chains are checked in
/// order and the error of the lowest-numbered failing chain is returned, whatever the
/// scheduling.
pub fn run<E: Energy + ?Sized>(energy: &E, config: &McmcConfig) -> Result<McmcOutput> {
    run_with_progress(energy, config, &|_| {})
}

/// As [`run`], calling `progress` every few thousand steps of each chain and once at the end of
/// each chain.
///
/// The callback runs on the worker threads, possibly concurrently, so the `steps_done` values
/// it sees are not necessarily increasing; exactly one call, made as the last chain finishes,
/// reports `steps_done == steps_total`. It cannot change the results.
pub fn run_with_progress<E: Energy + ?Sized>(
    energy: &E,
    config: &McmcConfig,
    progress: &(dyn Fn(McmcProgress) + Sync),
) -> Result<McmcOutput> {
    let layout = Layout::new(energy.n_particles(), energy.dim())
        .map_err(|e| Error::invalid(format!("mcmc: energy does not describe a system: {e}")))?;
    config.validate(layout)?;
    let len = layout.len();

    // The counts are the caller's (a CLI flag, a script): checked, and refused as
    // `Error::Resource` rather than aborting when the memory is not there.
    let mut x = crate::alloc::zeros(config.n_samples.checked_mul(len), "mcmc: the samples")?;
    let mut energies = crate::alloc::zeros(Some(config.n_samples), "mcmc: the sample energies")?;
    let mut counts = crate::alloc::with_capacity(Some(config.n_chains), "mcmc: the chains")?;
    counts.extend((0..config.n_chains).map(|c| config.samples_of_chain(c)));

    // Per-chain output windows of unequal length, handed out in chain order.
    let mut windows = crate::alloc::with_capacity(Some(config.n_chains), "mcmc: the chains")?;
    let (mut x_rest, mut u_rest) = (&mut x[..], &mut energies[..]);
    for &n in &counts {
        let (xc, xr) = x_rest.split_at_mut(n * len);
        let (uc, ur) = u_rest.split_at_mut(n);
        windows.push((xc, uc));
        (x_rest, u_rest) = (xr, ur);
    }

    let steps_total = (0..config.n_chains)
        .map(|c| config.steps_per_chain(c).unwrap_or(u64::MAX))
        .fold(0u64, u64::saturating_add);
    let reporter = Reporter {
        done: AtomicU64::new(0),
        total: steps_total,
        callback: progress,
    };

    let results: Vec<Result<ChainStats>> = windows
        .into_par_iter()
        .enumerate()
        .map(|(c, (xc, uc))| {
            let mut chain = Chain::start(energy, layout, config, c)?;
            chain.run(config, xc, uc, &reporter)
        })
        .collect();
    let chains = results.into_iter().collect::<Result<Vec<_>>>()?;
    Ok(McmcOutput {
        layout,
        x,
        energies,
        stats: McmcStats { chains },
    })
}

/// Steps between progress reports of one chain: rare enough to cost nothing.
const REPORT_EVERY: u64 = 4096;

struct Reporter<'a> {
    done: AtomicU64,
    total: u64,
    callback: &'a (dyn Fn(McmcProgress) + Sync),
}

impl Reporter<'_> {
    fn add(&self, steps: u64) {
        let done = self.done.fetch_add(steps, Ordering::Relaxed) + steps;
        (self.callback)(McmcProgress {
            steps_done: done,
            steps_total: self.total,
        });
    }
}

/// One chain's state: its stream, current configuration and energy, and a proposal buffer.
struct Chain<'e, E: ?Sized> {
    energy: &'e E,
    index: usize,
    dim: usize,
    kt: Kt,
    rng: ChaCha20Rng,
    x: Vec<f64>,
    u: f64,
    y: Vec<f64>,
}

impl<'e, E: Energy + ?Sized> Chain<'e, E> {
    fn start(energy: &'e E, layout: Layout, config: &McmcConfig, index: usize) -> Result<Self> {
        let len = layout.len();
        let mut rng = rng::stream(config.seed, Stream::McmcChain(index as u64));
        let mut x = vec![0.0; len];
        match &config.initial {
            InitialState::Lattice { spacing, jitter } => {
                lattice_into(layout, *spacing, &mut x);
                if *jitter > 0.0 {
                    let half = jitter * spacing;
                    for xi in &mut x {
                        *xi += rng.random_range(-half..=half);
                    }
                }
            }
            InitialState::Configurations(given) => {
                let offset = if given.len() == len { 0 } else { index * len };
                x.copy_from_slice(&given[offset..offset + len]);
            }
        }
        remove_center_of_mass(&mut x, layout.dim);
        let u = energy.energy(&x);
        if !u.is_finite() {
            let what = format!("mcmc: chain {index} starts at U = {u}");
            return Err(if u.is_nan() {
                Error::non_finite(what)
            } else {
                Error::invalid(format!(
                    "{what}; start from a configuration of finite energy"
                ))
            });
        }
        Ok(Chain {
            energy,
            index,
            dim: layout.dim,
            kt: Kt::new(config.kt)?,
            rng,
            y: vec![0.0; len],
            x,
            u,
        })
    }

    /// One Metropolis step with step size `step`. Returns (accepted, acceptance probability).
    fn step(&mut self, step: f64) -> Result<(bool, f64)> {
        for (yi, xi) in self.y.iter_mut().zip(&self.x) {
            let e: f64 = StandardNormal.sample(&mut self.rng);
            *yi = xi + step * e;
        }
        // Projecting the displacement and re-centring the state are the same operation here,
        // and doing it on y keeps round-off from accumulating a CoM drift over long chains.
        remove_center_of_mass(&mut self.y, self.dim);
        let u_new = self.energy.energy(&self.y);
        if !is_admissible_energy(u_new) {
            return Err(Error::non_finite(format!(
                "mcmc: energy of a proposal in chain {} is {u_new}",
                self.index
            )));
        }
        let log_alpha = log_boltzmann_ratio(self.kt, self.u, u_new);
        // One uniform per step, used or not, so the stream position depends only on the step.
        let r: f64 = self.rng.random();
        let Metropolis {
            accepted,
            probability,
        } = metropolis(log_alpha, r);
        if accepted {
            std::mem::swap(&mut self.x, &mut self.y);
            self.u = u_new;
        }
        Ok((accepted, probability))
    }

    fn run(
        &mut self,
        config: &McmcConfig,
        x_out: &mut [f64],
        u_out: &mut [f64],
        reporter: &Reporter<'_>,
    ) -> Result<ChainStats> {
        let mut unreported = 0u64;
        let mut tick = |n: u64| {
            unreported += n;
            if unreported >= REPORT_EVERY {
                reporter.add(unreported);
                unreported = 0;
            }
        };

        let mut log_step = config.initial_step.ln();
        let mut n_burnin_accepted = 0u64;
        for t in 0..config.n_burnin {
            let (accepted, alpha) = self.step(log_step.exp())?;
            n_burnin_accepted += u64::from(accepted);
            // Gain (t+1)^−0.6: Σ gain diverges (any start is reached), Σ gain² converges
            // (the noise of single acceptance decisions averages out).
            log_step += (alpha - config.target_acceptance) / ((t + 1) as f64).powf(0.6);
            tick(1);
        }
        let step = log_step.exp();

        let len = self.x.len();
        let mut n_accepted = 0u64;
        for (xs, us) in x_out.chunks_exact_mut(len).zip(u_out.iter_mut()) {
            for _ in 0..config.thin {
                n_accepted += u64::from(self.step(step)?.0);
            }
            xs.copy_from_slice(&self.x);
            *us = self.u;
            tick(config.thin as u64);
        }
        if unreported > 0 {
            reporter.add(unreported);
        }

        let n_samples = u_out.len();
        Ok(ChainStats {
            n_samples,
            n_burnin: config.n_burnin as u64,
            n_burnin_accepted,
            n_proposed: n_samples as u64 * config.thin as u64,
            n_accepted,
            step,
        })
    }
}

/// The first N sites of a simple cubic lattice in D dimensions, lexicographic order.
fn lattice_into(layout: Layout, spacing: f64, x: &mut [f64]) {
    let (n, dim) = (layout.n_particles, layout.dim);
    // Smallest side s with s^D ≥ N.
    let mut side = 1usize;
    while side.saturating_pow(dim as u32) < n {
        side += 1;
    }
    for (i, particle) in x.chunks_exact_mut(dim).enumerate() {
        let mut rest = i;
        for coord in particle.iter_mut() {
            *coord = (rest % side) as f64 * spacing;
            rest /= side;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_longer_than_memory_are_a_resource_error_before_any_step() {
        // Issue 14: 2^40 DW-4 samples (64 TiB) were allocated infallibly.
        let config = McmcConfig {
            n_chains: 2,
            n_samples: 1 << 40,
            ..McmcConfig::default()
        };
        let error = run(&crate::DoubleWell::dw4(), &config).unwrap_err();
        match error {
            Error::Resource {
                need_bytes,
                limit_bytes,
                ..
            } => {
                assert_eq!(need_bytes, (1u128 << 40) * 8 * 8);
                assert_eq!(limit_bytes, crate::alloc::MAX_ALLOCATION_BYTES);
            }
            other => panic!("expected a resource error, got {other:?}"),
        }
    }

    #[test]
    fn lattice_sites_are_distinct_and_spaced() {
        let layout = Layout::new(13, 3).unwrap();
        let mut x = vec![0.0; 39];
        lattice_into(layout, 1.5, &mut x);
        let mut min_d2 = f64::INFINITY;
        for i in 0..13 {
            for j in i + 1..13 {
                let d2: f64 = (0..3).map(|k| (x[i * 3 + k] - x[j * 3 + k]).powi(2)).sum();
                min_d2 = min_d2.min(d2);
            }
        }
        assert!((min_d2 - 2.25).abs() < 1e-12, "{min_d2}");
        // 13 sites need a side of 3 (2³ = 8 < 13): no coordinate beyond 2·spacing.
        assert!(x.iter().all(|&v| (0.0..=3.0).contains(&v)));
    }

    #[test]
    fn samples_split_evenly_with_the_remainder_first() {
        let config = McmcConfig {
            n_chains: 4,
            n_samples: 10,
            ..McmcConfig::default()
        };
        let counts: Vec<_> = (0..4).map(|c| config.samples_of_chain(c)).collect();
        assert_eq!(counts, vec![3, 3, 2, 2]);
    }
}
