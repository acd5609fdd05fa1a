//! The reverse pass through fixed-grid RK4 on the augmented state (x, ℓ), `dℓ/dt = div v`
//! (discretize-then-optimize: the exact derivative of the discrete map the flow applies).
//!
//! One RK4 step from `(x, t)` with signed step `h` (negative when integrating from t = 1 to 0):
//!
//! ```text
//! k1 = v(x, t)              y2 = x + h/2·k1      k2 = v(y2, t + h/2)
//! y3 = x + h/2·k2           k3 = v(y3, t + h/2)  y4 = x + h·k3         k4 = v(y4, t + h)
//! x' = x + h/6·(k1 + 2k2 + 2k3 + k4)             ℓ' = ℓ + h/6·(div1 + 2div2 + 2div3 + div4)
//! ```
//!
//! Given `x̄'` and `ℓ̄` (ℓ enters every loss linearly, so `ℓ̄` is the same at every step), the
//! adjoint runs the stages backwards, each through the field's vector–Jacobian product
//! ([`TrainableField::vjp_at`]) with cotangent `(k̄_s, div̄_s)`:
//!
//! ```text
//! k̄4 = h/6·x̄'                 div̄4 = h/6·ℓ̄     → ȳ4 = VJP at (y4, t + h)
//! k̄3 = h/3·x̄' + h·ȳ4          div̄3 = h/3·ℓ̄     → ȳ3 = VJP at (y3, t + h/2)
//! k̄2 = h/3·x̄' + h/2·ȳ3        div̄2 = h/3·ℓ̄     → ȳ2 = VJP at (y2, t + h/2)
//! k̄1 = h/6·x̄' + h/2·ȳ2        div̄1 = h/6·ℓ̄     → ȳ1 = VJP at (x, t)
//! x̄ = x̄' + ȳ1 + ȳ2 + ȳ3 + ȳ4
//! ```
//!
//! and every VJP adds its parameter part to θ̄. The forward pass records the step start `x` and
//! the stage points `y2, y3, y4` (reconstructed bit for bit from the stage velocities the step
//! left in its workspace), 4·N·D numbers per step, so the reverse pass evaluates the field only
//! through its VJP and never re-integrates.
//!
//! The tape works for any [`TrainableField`]. The field's precomputation at the distinct stage
//! times (about 2n + 1 of them, [`TrainableField::time_point`]) is computed once per parameter
//! set and direction and kept in the tape (re-derived when [`TrainableField::time_point_key`]
//! changes), so that a batch of samples pays for it once per thread rather than per
//! evaluation; the family accumulates its parameter cotangents per time point and finishes
//! them once per pass ([`TrainableField::adjoint_finish`]).

use crate::error::{Error, Result};
use crate::field::{Cotangent, TrainableField};
use crate::integrate::{Workspace, axpy_into, check_rk4_steps, rk4};

/// Records a continuous-mode RK4 integration and runs its reverse pass. Sized once for a state
/// length and a step count; reuse one per thread: neither pass allocates.
#[derive(Debug, Clone)]
pub struct Rk4Tape<F: TrainableField> {
    len: usize,
    n_steps: usize,
    recorded: bool,
    ws: Workspace,
    /// Per executed step: t, signed h.
    steps: Vec<([f64; 3], f64)>,
    /// Per executed step: `x`, `y2`, `y3`, `y4`, each of length `len`.
    states: Vec<f64>,
    x_bar: Vec<f64>,
    x_acc: Vec<f64>,
    y_bar: Vec<f64>,
    k_bar: Vec<f64>,
    /// The field's VJP buffers, created on first use (the tape is sized before it sees a field).
    vjp: Option<F::Scratch>,
    adjoint: F::Adjoint,
    /// The field's time points at the distinct stage times of the recorded steps (equal bits,
    /// one entry), valid for the key `grid_key` and the direction `grid_forward`;
    /// `grid_index[3s + j]` locates stage time j of step s.
    grid: Vec<F::TimePoint>,
    grid_times: Vec<u64>,
    grid_index: Vec<usize>,
    grid_key: Vec<f64>,
    key_scratch: Vec<f64>,
    grid_forward: Option<bool>,
    forward: bool,
    /// The Hutchinson probe ε of the next integrations (length `len`), or empty for the exact
    /// divergence: with a probe ℓ integrates `εᵀ(∂v/∂x)ε` instead ([`Rk4Tape::set_probe`]).
    probe: Vec<f64>,
}

/// The training grid of time points, in messages.
const GRID: &str = "the training grid of time points (3 per RK4 step)";

/// The bytes of a training grid of `n_steps` RK4 steps for `field`: 3 time points per step
/// with their reverse-pass sums ([`TrainableField::time_point_bytes`]), at most; `None` when
/// the product overflows. What the tape and the exact-discrete workspace ask the system for
/// before building one.
pub(crate) fn grid_bytes<F: TrainableField>(field: &F, n_steps: usize) -> Option<usize> {
    n_steps
        .checked_mul(3)
        .and_then(|n| n.checked_mul(field.time_point_bytes()))
}

impl<F: TrainableField> Rk4Tape<F> {
    /// A tape for states of length `len` (N·D) and `n_steps` equal RK4 steps on [0, 1].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `len` is 0 or `n_steps` is outside `1..=100000` (the range
    /// [`crate::integrate::Integrator`] accepts); [`Error::Resource`] if the recorded states
    /// (4·n_steps·len doubles) cannot be allocated.
    pub fn new(len: usize, n_steps: usize) -> Result<Self> {
        if len == 0 {
            return Err(Error::invalid("RK4 tape: state length must be positive"));
        }
        check_rk4_steps(n_steps)?;
        let v = || vec![0.0; len];
        Ok(Rk4Tape {
            len,
            n_steps,
            recorded: false,
            ws: Workspace::new(len),
            steps: crate::alloc::filled(Some(n_steps), ([0.0; 3], 0.0), "the RK4 tape's steps")?,
            // 4·n_steps·N·D: up to 10⁵ steps of 3·10⁶ coordinates, so checked.
            states: crate::alloc::zeros(
                n_steps.checked_mul(4).and_then(|m| m.checked_mul(len)),
                "the RK4 tape of training (4 states per step)",
            )?,
            x_bar: v(),
            x_acc: v(),
            y_bar: v(),
            k_bar: v(),
            vjp: None,
            adjoint: F::Adjoint::default(),
            grid: crate::alloc::with_capacity(n_steps.checked_mul(3), GRID)?,
            grid_times: crate::alloc::with_capacity(n_steps.checked_mul(3), GRID)?,
            grid_index: crate::alloc::with_capacity(n_steps.checked_mul(3), GRID)?,
            grid_key: Vec::new(),
            key_scratch: Vec::new(),
            grid_forward: None,
            forward: true,
            probe: Vec::new(),
        })
    }

    /// Sets the Hutchinson probe ε of the integrations that follow (`None`: the exact
    /// divergence, the default): ℓ then integrates the unbiased estimate `εᵀ(∂v/∂x)ε` of the
    /// divergence with the same ε at every stage and step (as FFJORD does), and the reverse pass
    /// differentiates that estimate. For training only: the returned ℓ is an estimate, not a
    /// density. Invalidates the last recording.
    ///
    /// # Errors
    ///
    /// [`Error::DimensionMismatch`] unless the probe has the state's length;
    /// [`Error::NonFinite`] for a non-finite probe entry.
    pub fn set_probe(&mut self, probe: Option<&[f64]>) -> Result<()> {
        if let Some(p) = probe {
            if p.len() != self.len {
                return Err(Error::size("RK4 tape probe", self.len, p.len()));
            }
            if let Some(i) = p.iter().position(|v| !v.is_finite()) {
                return Err(Error::non_finite(format!("Hutchinson probe entry {i}")));
            }
        }
        // The state length is positive, so an empty buffer means "no probe".
        self.probe.clear();
        self.probe.extend_from_slice(probe.unwrap_or_default());
        self.recorded = false;
        Ok(())
    }

    /// Whether the integrations use a Hutchinson probe ([`Rk4Tape::set_probe`]).
    fn probed(&self) -> bool {
        !self.probe.is_empty()
    }

    /// Number of RK4 steps on [0, 1].
    #[must_use]
    pub fn n_steps(&self) -> usize {
        self.n_steps
    }

    /// State length N·D.
    #[must_use]
    pub fn state_len(&self) -> usize {
        self.len
    }

    /// Integrates `x` in place from t = 0 to 1 (`forward`) or from 1 to 0, recording the
    /// trajectory, and returns ℓ(end) − ℓ(start): `log|det ∂x(1)/∂x(0)|` forward,
    /// `log|det ∂x(0)/∂x(1)|` backward. It runs the integrator's own RK4 loop
    /// (`integrate::rk4::integrate_with`) and only observes its steps, so the result is
    /// bit-identical to [`crate::integrate::Integrator`] with `Method::Rk4` and
    /// `DensityMode::Continuous` by construction.
    ///
    /// # Errors
    ///
    /// [`Error::DimensionMismatch`] for a wrong `x` or field size; [`Error::NonFinite`] if the
    /// trajectory or ℓ is not finite (the tape is then unusable until the next integration).
    pub fn integrate(&mut self, field: &F, x: &mut [f64], forward: bool) -> Result<f64> {
        if x.len() != self.len || field.state_len() != self.len {
            return Err(Error::size("RK4 tape state", self.len, x.len()));
        }
        if self.probed() && !F::PROBE_DIVERGENCE {
            return Err(crate::field::no_probe_divergence::<F>());
        }
        self.set_direction(forward);
        let n = self.n_steps;
        let len = self.len;
        // The field's time points of the grid, cached across samples with the same parameters:
        // the forward pass then skips recomputing them at every field evaluation.
        self.prepare_grid(field)?;
        let (grid, grid_index) = (&self.grid, &self.grid_index);
        let probe = self.probed().then_some(&self.probe[..]);
        let mut recorder = Recorder {
            states: &mut self.states,
            len,
        };
        let log_det = rk4::integrate_with(
            x,
            n,
            forward,
            &mut self.ws,
            |y, s, _, i, v| {
                let point = &grid[grid_index[3 * s + i]];
                match probe {
                    Some(eps) => field.probe_velocity_at_into(y, point, eps, v),
                    None => field.velocity_at_into(y, point, v),
                }
            },
            &mut recorder,
        );
        if !log_det.is_finite() {
            return Err(Error::non_finite("log-determinant of the flow map"));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::non_finite(format!(
                "flow output coordinate {i} (the field blew up)"
            )));
        }
        self.recorded = true;
        Ok(log_det)
    }

    /// The reverse pass of the last [`Rk4Tape::integrate`]: given the cotangent `x_bar_end` of
    /// the end state and `log_det_bar` of the returned ℓ(end) − ℓ(start), adds `∂L/∂θ` to
    /// `theta_bar` (flat parameter layout of `field`, which must be the field that was
    /// integrated) and returns `∂L/∂x` at the start state.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] if nothing was recorded; [`Error::DimensionMismatch`] for wrong
    /// sizes.
    pub fn backward(
        &mut self,
        field: &F,
        x_bar_end: &[f64],
        log_det_bar: f64,
        theta_bar: &mut [f64],
    ) -> Result<&[f64]> {
        if !self.recorded {
            return Err(Error::InvalidState {
                what: "RK4 tape: backward without a successful integrate".into(),
            });
        }
        if x_bar_end.len() != self.len {
            return Err(Error::size("RK4 tape x_bar", self.len, x_bar_end.len()));
        }
        if log_det_bar != 0.0 && !F::DIVERGENCE_REVERSE {
            return Err(Error::invalid(format!(
                "the '{}' field family has no reverse pass of its divergence, so it cannot be \
                 trained by maximum likelihood or KL: train it by flow matching",
                F::NAME
            )));
        }
        let n_params = field.params().len();
        if theta_bar.len() != n_params {
            return Err(Error::size("RK4 tape theta_bar", n_params, theta_bar.len()));
        }
        self.prepare_grid(field)?;
        field.adjoint_reserve(&mut self.adjoint, self.grid.len())?;
        field.adjoint_reset(&mut self.adjoint, self.grid.len());
        let probed = self.probed();
        let scratch = self.vjp.get_or_insert_with(|| field.new_scratch());
        let len = self.len;
        self.x_bar.copy_from_slice(x_bar_end);
        let lb = log_det_bar;
        for s in (0..self.n_steps).rev() {
            let (_, h) = self.steps[s];
            let half = 0.5 * h;
            let sixth = h / 6.0;
            let third = 2.0 * sixth;
            let base = 4 * s * len;
            let states = &self.states[base..base + 4 * len];
            let (x0, rest) = states.split_at(len);
            let (y2, rest) = rest.split_at(len);
            let (y3, y4) = rest.split_at(len);
            let [i_t, i_half, i_end] = [0, 1, 2].map(|j| self.grid_index[3 * s + j]);
            self.x_acc.copy_from_slice(&self.x_bar);
            // Stage 4 has no later stage: its k̄ reads ȳ = 0.
            self.y_bar.fill(0.0);
            // (stage point, time index, weight of x̄' in k̄, weight of the later stage's ȳ, div̄)
            let stages: [(&[f64], usize, f64, f64, f64); 4] = [
                (y4, i_end, sixth, 0.0, sixth * lb),
                (y3, i_half, third, h, third * lb),
                (y2, i_half, third, half, third * lb),
                (x0, i_t, sixth, half, sixth * lb),
            ];
            for (y, i, wx, wy, div_bar) in stages {
                for ((k, xb), yb) in self.k_bar.iter_mut().zip(&self.x_bar).zip(&self.y_bar) {
                    *k = wx * xb + wy * yb;
                }
                self.y_bar.fill(0.0);
                let cot = Cotangent {
                    v: &self.k_bar,
                    div: div_bar,
                };
                if probed {
                    field.probe_vjp_at(
                        y,
                        &self.grid[i],
                        i,
                        &self.probe,
                        cot,
                        &mut self.y_bar,
                        &mut self.adjoint,
                        scratch,
                    )?;
                } else {
                    field.vjp_at(
                        y,
                        &self.grid[i],
                        i,
                        cot,
                        &mut self.y_bar,
                        &mut self.adjoint,
                        scratch,
                    );
                }
                for (a, yb) in self.x_acc.iter_mut().zip(&self.y_bar) {
                    *a += yb;
                }
            }
            std::mem::swap(&mut self.x_bar, &mut self.x_acc);
        }
        field.adjoint_finish(&self.grid, &mut self.adjoint, theta_bar);
        Ok(&self.x_bar)
    }

    /// The trajectory recorded by the last successful [`Rk4Tape::integrate`]: per step its
    /// start state and the stage points `y2, y3, y4` ([`Rk4Tape::trajectory_len`] numbers).
    ///
    /// With [`Rk4Tape::restore`] it lets one tape per thread integrate many samples, keep their
    /// trajectories, and run their reverse passes later: the reverse-KL loss evaluates the
    /// energies of a whole batch between the two passes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] if nothing was recorded.
    pub fn trajectory(&self) -> Result<&[f64]> {
        if !self.recorded {
            return Err(Error::InvalidState {
                what: "RK4 tape: no recorded trajectory".into(),
            });
        }
        Ok(&self.states)
    }

    /// Length of a recorded trajectory: `4·n_steps·N·D`.
    #[must_use]
    pub fn trajectory_len(&self) -> usize {
        self.states.len()
    }

    /// Makes `trajectory` — from [`Rk4Tape::trajectory`] of a tape with the same state length
    /// and step count after an integration in direction `forward` — the recorded integration,
    /// so that [`Rk4Tape::backward`] runs the reverse pass of that integration, bit for bit
    /// what the recording tape would have computed (the pass depends only on the trajectory,
    /// the direction and the field).
    ///
    /// # Errors
    ///
    /// [`Error::DimensionMismatch`] if `trajectory` has the wrong length.
    pub fn restore(&mut self, forward: bool, trajectory: &[f64]) -> Result<()> {
        if trajectory.len() != self.states.len() {
            return Err(Error::size(
                "RK4 tape trajectory",
                self.states.len(),
                trajectory.len(),
            ));
        }
        self.set_direction(forward);
        self.states.copy_from_slice(trajectory);
        self.recorded = true;
        Ok(())
    }

    /// Forgets the recording and sets the step times and signed steps of an integration in
    /// direction `forward`: those of the integrator's loop ([`rk4::grid_steps`]).
    fn set_direction(&mut self, forward: bool) {
        self.recorded = false;
        self.forward = forward;
        for (slot, step) in self
            .steps
            .iter_mut()
            .zip(rk4::grid_steps(self.n_steps, forward))
        {
            *slot = step;
        }
    }

    /// Makes `grid` hold the field's time points at the stage times of the recorded steps,
    /// recomputing them only when the field's time-point key (or the direction) changed.
    ///
    /// # Errors
    ///
    /// [`Error::Resource`] if the system refuses the memory of the grid and its reverse-pass
    /// sums (up to 3 time points per step, [`TrainableField::time_point_bytes`] each), asked
    /// for before any is built: at 10⁵ steps that is ~0.4 GB per thread for the kernel field,
    /// and a refusal among its many small allocations aborted the host.
    fn prepare_grid(&mut self, field: &F) -> Result<()> {
        self.key_scratch.clear();
        field.time_point_key(&mut self.key_scratch);
        // Bitwise, so that a reused grid is exactly the one this field would give.
        let same = self.grid_forward == Some(self.forward)
            && self.grid_key.len() == self.key_scratch.len()
            && self
                .grid_key
                .iter()
                .zip(&self.key_scratch)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        if same {
            return Ok(());
        }
        let need = grid_bytes(field, self.n_steps);
        let (grid, grid_times, grid_index) =
            (&mut self.grid, &mut self.grid_times, &mut self.grid_index);
        crate::alloc::probed_build(need, GRID, || {
            grid.clear();
            grid_times.clear();
            grid_index.clear();
            for &(times, _) in &self.steps {
                for ts in times {
                    let bits = ts.to_bits();
                    // Few distinct times (about 2n + 1): a linear search from the back finds
                    // the neighbouring step's shared grid point at once.
                    let i = match grid_times.iter().rposition(|&b| b == bits) {
                        Some(i) => i,
                        None => {
                            grid_times.push(bits);
                            grid.push(field.time_point(ts));
                            grid.len() - 1
                        }
                    };
                    grid_index.push(i);
                }
            }
        })?;
        std::mem::swap(&mut self.grid_key, &mut self.key_scratch);
        self.grid_forward = Some(self.forward);
        Ok(())
    }
}

/// Records what the tape's reverse pass needs of each step of the integrator's loop: the start
/// state, and the stage points `y2, y3, y4` rebuilt bit for bit from the stage velocities.
struct Recorder<'a> {
    states: &'a mut [f64],
    len: usize,
}

impl rk4::StepObserver for Recorder<'_> {
    fn before_step(&mut self, s: usize, x: &[f64]) {
        let base = 4 * s * self.len;
        self.states[base..base + self.len].copy_from_slice(x);
    }

    fn after_step(&mut self, s: usize, h: f64, k: &[Vec<f64>]) {
        let len = self.len;
        let base = 4 * s * len;
        let half = 0.5 * h;
        let (x0, rest) = self.states[base..base + 4 * len].split_at_mut(len);
        let (y2, rest) = rest.split_at_mut(len);
        let (y3, y4) = rest.split_at_mut(len);
        axpy_into(y2, x0, half, &k[0]);
        axpy_into(y3, x0, half, &k[1]);
        axpy_into(y4, x0, h, &k[2]);
    }
}
