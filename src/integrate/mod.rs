//! Integrators of the flow ODE `dx/dt = v(x, t)` together with `dℓ/dt = div v`.
//!
//! Every solve returns ℓ(end) − ℓ(start), the log-determinant of the map it applied: forward
//! (t: 0 → 1) `log|det ∂x/∂z|`, inverse (t: 1 → 0) `log|det ∂z/∂x|` in the continuous mode. In
//! the exact-discrete mode both directions return the forward map's log-determinant
//! `Σ log det ∂Φ_h/∂y`, evaluated at the points of that trajectory; [`Integrator`] hides the
//! difference and always reports the log-determinant of the map it applied.
//!
//! The integrator knows a [`VectorField`], nothing of priors or flows.

mod certificate;
pub(crate) mod discrete;
pub(crate) mod dopri5;
pub(crate) mod linalg;
mod local_certificate;
pub(crate) mod rk4;
// The one module besides the C ABI allowed `unsafe`: SIMD intrinsics with run-time feature
// detection, checked bit for bit against their safe twin in `linalg`.
#[allow(unsafe_code)]
mod simd;
mod workspace;

pub use certificate::{
    FieldBounds, StepCertificate, certificate_penalty, certificate_times, certify_rk4,
    increment_bound, needed_steps_text, step_bound, step_bound_gradient, steps_needed,
};
pub use dopri5::{Dopri5Config, MAX_DOPRI5_STEPS, MAX_TOLERANCE, MIN_ATOL, MIN_RTOL};
pub(crate) use local_certificate::certify_pull_back;
pub use local_certificate::{CentreValues, ConfigurationCertificate, local_step_bound};
pub use rk4::rk4_stage_times;
pub use workspace::{MAX_WORKSPACE_BYTES, Workspace};
// The exact RK4 step and grid the continuous mode uses, for the reverse pass of training, which
// must differentiate the very map the flow applies.
pub(crate) use rk4::axpy_into;

use crate::error::{Error, Result};
use crate::field::VectorField;

/// Counters reported by every solve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Evaluations of the field v (each with its divergence).
    pub n_eval: u64,
    /// Evaluations of the field's Jacobian (exact-discrete mode).
    pub n_jacobian: u64,
    /// Accepted steps.
    pub n_steps: u64,
    /// Rejected steps (adaptive solver).
    pub n_rejected: u64,
    /// Full step Jacobians evaluated while inverting (exact-discrete inverse; one per step
    /// when the chord iteration converges).
    pub n_newton: u64,
    /// Inverse steps whose log-determinant was taken one Newton step from the solution and
    /// corrected to first order (exact-discrete inverse; see `integrate::discrete`).
    pub n_corrected: u64,
    /// Inverse steps whose fast solve failed and that the damped Newton fallback solved or
    /// tried to (exact-discrete inverse; see `integrate::discrete`).
    pub n_fallback: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.n_eval += o.n_eval;
        self.n_jacobian += o.n_jacobian;
        self.n_steps += o.n_steps;
        self.n_rejected += o.n_rejected;
        self.n_newton += o.n_newton;
        self.n_corrected += o.n_corrected;
        self.n_fallback += o.n_fallback;
    }
}

/// How the ODE is solved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Fixed-grid classical Runge–Kutta 4 with `n_steps` equal steps on [0, 1].
    Rk4 { n_steps: usize },
    /// Adaptive Dormand–Prince 5(4).
    Dopri5(Dopri5Config),
}

impl Default for Method {
    /// RK4 with 20 steps, what training differentiates through.
    fn default() -> Self {
        Method::Rk4 { n_steps: 20 }
    }
}

/// Which density the flow reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DensityMode {
    /// The exact density of the fixed-grid RK4 map (requires [`Method::Rk4`]): proposal and
    /// evaluated densities agree to round-off. The default.
    #[default]
    ExactDiscrete,
    /// The continuous-time change of variables, `∫ div v dt` integrated by the method; exact
    /// only in the limit of infinitely fine steps.
    Continuous,
}

/// The largest RK4 step count any solve or training tape accepts.
pub const MAX_RK4_STEPS: usize = 100_000;

/// The RK4 step counts every fixed-grid solve and the training tape accept:
/// `1..=`[`MAX_RK4_STEPS`].
///
/// # Errors
///
/// [`Error::InvalidArgument`] outside that range.
pub fn check_rk4_steps(n_steps: usize) -> Result<()> {
    if n_steps == 0 || n_steps > MAX_RK4_STEPS {
        return Err(Error::invalid(format!(
            "RK4 n_steps must be in 1..={MAX_RK4_STEPS}, got {n_steps}"
        )));
    }
    Ok(())
}

/// A validated method and density mode.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Integrator {
    method: Method,
    mode: DensityMode,
}

impl Integrator {
    /// Validates the pair: step counts and tolerances in range, exact-discrete only with RK4.
    pub fn new(method: Method, mode: DensityMode) -> Result<Self> {
        match method {
            Method::Rk4 { n_steps } => {
                check_rk4_steps(n_steps)?;
            }
            Method::Dopri5(cfg) => {
                cfg.validate()?;
                if mode == DensityMode::ExactDiscrete {
                    return Err(Error::invalid(
                        "the exact-discrete density needs a fixed-grid method (RK4); \
                         use the continuous mode with Dormand–Prince",
                    ));
                }
            }
        }
        Ok(Integrator { method, mode })
    }

    #[must_use]
    pub fn method(&self) -> Method {
        self.method
    }

    #[must_use]
    pub fn mode(&self) -> DensityMode {
        self.mode
    }

    /// Maps `x` from t = 0 to t = 1 in place; returns `log|det ∂x(1)/∂x(0)|` and statistics.
    pub fn forward<F: VectorField + ?Sized>(
        &self,
        field: &F,
        x: &mut [f64],
        ws: &mut Workspace,
    ) -> Result<(f64, Stats)> {
        self.solve(field, x, ws, true)
    }

    /// Maps `x` from t = 1 back to t = 0 in place; returns `log|det ∂x(0)/∂x(1)|` and statistics.
    pub fn inverse<F: VectorField + ?Sized>(
        &self,
        field: &F,
        x: &mut [f64],
        ws: &mut Workspace,
    ) -> Result<(f64, Stats)> {
        self.solve(field, x, ws, false)
    }

    fn solve<F: VectorField + ?Sized>(
        &self,
        field: &F,
        x: &mut [f64],
        ws: &mut Workspace,
        forward: bool,
    ) -> Result<(f64, Stats)> {
        if ws.state_len() != x.len() || field.state_len() != x.len() {
            return Err(Error::size("integrator state", field.state_len(), x.len()));
        }
        let (log_det, stats) = match (self.method, self.mode, forward) {
            (Method::Rk4 { n_steps }, DensityMode::ExactDiscrete, true) => {
                discrete::forward(field, x, n_steps, ws)?
            }
            (Method::Rk4 { n_steps }, DensityMode::ExactDiscrete, false) => {
                let (ld, stats) = discrete::inverse(field, x, n_steps, ws)?;
                (-ld, stats)
            }
            (Method::Rk4 { n_steps }, DensityMode::Continuous, forward) => {
                let ld = rk4::integrate(field, x, n_steps, forward, ws);
                let stats = Stats {
                    n_eval: 4 * n_steps as u64,
                    n_steps: n_steps as u64,
                    ..Stats::default()
                };
                (ld, stats)
            }
            (Method::Dopri5(cfg), _, forward) => {
                let (t0, t1) = if forward { (0.0, 1.0) } else { (1.0, 0.0) };
                dopri5::integrate(field, &cfg, x, t0, t1, ws)?
            }
        };
        if !log_det.is_finite() {
            return Err(Error::non_finite("log-determinant of the flow map"));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::non_finite(format!(
                "flow output coordinate {i} (the field blew up)"
            )));
        }
        Ok((log_det, stats))
    }
}
