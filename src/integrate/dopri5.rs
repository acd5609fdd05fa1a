//! Adaptive Dormand–Prince 5(4) on the augmented state (x, ℓ), `dℓ/dt = div v`.
//!
//! Tableau from J. R. Dormand and P. J. Prince, "A family of embedded Runge–Kutta formulae",
//! J. Comput. Appl. Math. 6 (1980) 19–26; step control and the initial step as in Hairer, Nørsett
//! & Wanner, *Solving ODEs I*, §II.4. The error norm covers ℓ too, so the log-density is
//! integrated to the same tolerance as the coordinates.

use super::{Stats, Workspace};
use crate::error::{Error, Result};
use crate::field::VectorField;

const C: [f64; 7] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
const A: [[f64; 6]; 7] = [
    [0.0; 6],
    [1.0 / 5.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0, 0.0],
    [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0, 0.0],
    [
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
        0.0,
        0.0,
    ],
    [
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
        0.0,
    ],
    // The fifth-order weights (first same as last: stage 7 is evaluated at the new point).
    [
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
    ],
];
/// Fifth- minus fourth-order weights: the embedded error estimate.
const E: [f64; 7] = [
    71.0 / 57600.0,
    0.0,
    -71.0 / 16695.0,
    71.0 / 1920.0,
    -17253.0 / 339200.0,
    22.0 / 525.0,
    -1.0 / 40.0,
];

/// Tolerances and limits of the adaptive solver.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dopri5Config {
    /// Relative tolerance (> 0).
    pub rtol: f64,
    /// Absolute tolerance (> 0).
    pub atol: f64,
    /// Maximum number of attempted steps before failing with `NotConverged`.
    pub max_steps: usize,
}

impl Default for Dopri5Config {
    /// The paper's evaluation setting: rtol 1e-5, atol 1e-10.
    fn default() -> Self {
        Dopri5Config {
            rtol: 1e-5,
            atol: 1e-10,
            max_steps: 100_000,
        }
    }
}

impl Dopri5Config {
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("rtol", self.rtol), ("atol", self.atol)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::invalid(format!(
                    "Dormand–Prince {name} must be positive, got {v}"
                )));
            }
        }
        if self.max_steps == 0 {
            return Err(Error::invalid("Dormand–Prince max_steps must be positive"));
        }
        Ok(())
    }
}

/// RMS norm of `(err, err_l)` scaled by `atol + rtol·max(|a|, |b|)` componentwise.
fn scaled_rms(
    cfg: &Dopri5Config,
    err: &[f64],
    err_l: f64,
    a: &[f64],
    a_l: f64,
    b: &[f64],
    b_l: f64,
) -> f64 {
    let scale = |a: f64, b: f64| cfg.atol + cfg.rtol * a.abs().max(b.abs());
    let mut sum = (err_l / scale(a_l, b_l)).powi(2);
    for ((e, a), b) in err.iter().zip(a).zip(b) {
        sum += (e / scale(*a, *b)).powi(2);
    }
    (sum / (err.len() + 1) as f64).sqrt()
}

/// Integrates from `t0` to `t1` (either order), in place; returns ℓ(t1) − ℓ(t0) and statistics.
pub(crate) fn integrate<F: VectorField + ?Sized>(
    field: &F,
    cfg: &Dopri5Config,
    x: &mut [f64],
    t0: f64,
    t1: f64,
    ws: &mut Workspace,
) -> Result<(f64, Stats)> {
    integrate_rhs(
        &mut |x: &[f64], t: f64, v: &mut [f64]| field.velocity_into(x, t, v),
        cfg,
        x,
        t0,
        t1,
        ws,
    )
}

/// [`integrate`] for any right-hand side `rhs(x, t, dx/dt) -> dℓ/dt` on a state of the
/// workspace's length: what the continuous adjoint method (`train::adjoint`) integrates, its
/// state being more than configurations.
pub(crate) fn integrate_rhs(
    rhs: &mut impl FnMut(&[f64], f64, &mut [f64]) -> f64,
    cfg: &Dopri5Config,
    x: &mut [f64],
    t0: f64,
    t1: f64,
    ws: &mut Workspace,
) -> Result<(f64, Stats)> {
    let mut stats = Stats::default();
    let span = t1 - t0;
    if span == 0.0 {
        return Ok((0.0, stats));
    }
    let dir = span.signum();
    let Workspace {
        k,
        stage,
        trial,
        error,
        ..
    } = ws;
    let mut kd = [0.0; 7];
    let mut t = t0;
    let mut ell = 0.0;
    kd[0] = rhs(x, t, &mut k[0]);
    stats.n_eval += 1;

    // Initial step (Hairer–Nørsett–Wanner II.4): from the sizes of x, v and a trial derivative.
    let d0 = scaled_rms(cfg, x, 0.0, x, 0.0, x, 0.0);
    let d1 = scaled_rms(cfg, &k[0], kd[0], x, 0.0, x, 0.0);
    let h0 = if d0 < 1e-5 || d1 < 1e-5 {
        1e-6
    } else {
        0.01 * d0 / d1
    }
    .min(span.abs());
    for i in 0..x.len() {
        stage[i] = x[i] + dir * h0 * k[0][i];
    }
    let kd_trial = rhs(stage, t + dir * h0, &mut k[1]);
    stats.n_eval += 1;
    for i in 0..x.len() {
        error[i] = k[1][i] - k[0][i];
    }
    let d2 = scaled_rms(cfg, error, kd_trial - kd[0], x, 0.0, x, 0.0) / h0;
    let h1 = if d1.max(d2) <= 1e-15 {
        (h0 * 1e-3).max(1e-6)
    } else {
        (0.01 / d1.max(d2)).powf(0.2)
    };
    let mut h = (100.0 * h0).min(h1).min(span.abs()) * dir;

    let mut attempts = 0;
    loop {
        if attempts >= cfg.max_steps {
            return Err(Error::NotConverged {
                what: format!(
                    "Dormand–Prince reached max_steps = {} before t = {t1} (at t = {t})",
                    cfg.max_steps
                ),
                residual: (t1 - t).abs(),
            });
        }
        attempts += 1;
        let last = (t1 - t).abs() <= h.abs() * (1.0 + 1e-12);
        if last {
            h = t1 - t;
        }
        // Stages 2..7; ℓ does not feed back into v, so only its weights are needed.
        for s in 1..7 {
            let (done, rest) = k.split_at_mut(s);
            for i in 0..x.len() {
                let mut acc = 0.0;
                for (a, kj) in A[s].iter().zip(done.iter()) {
                    acc += a * kj[i];
                }
                stage[i] = x[i] + h * acc;
            }
            kd[s] = rhs(stage, t + C[s] * h, &mut rest[0]);
            if s == 6 {
                // Stage 7 is evaluated at the fifth-order solution (first same as last).
                trial.copy_from_slice(stage);
            }
        }
        stats.n_eval += 6;
        let mut ell_step = 0.0;
        for j in 0..6 {
            ell_step += A[6][j] * kd[j];
        }
        ell_step *= h;
        let mut err_l = 0.0;
        for j in 0..7 {
            err_l += E[j] * kd[j];
        }
        err_l *= h;
        for i in 0..x.len() {
            let mut acc = 0.0;
            for (j, kj) in k.iter().enumerate() {
                acc += E[j] * kj[i];
            }
            error[i] = h * acc;
        }
        let norm = scaled_rms(cfg, error, err_l, x, ell, trial, ell + ell_step);
        if !norm.is_finite() {
            return Err(Error::non_finite(format!(
                "Dormand–Prince error estimate at t = {t} (the field blew up)"
            )));
        }
        if norm <= 1.0 {
            stats.n_steps += 1;
            x.copy_from_slice(trial);
            ell += ell_step;
            t = if last { t1 } else { t + h };
            k.swap(0, 6);
            kd[0] = kd[6];
            if last {
                return Ok((ell, stats));
            }
        } else {
            stats.n_rejected += 1;
        }
        let factor = if norm == 0.0 {
            5.0
        } else {
            (0.9 * norm.powf(-0.2)).clamp(0.2, 5.0)
        };
        let factor = if norm > 1.0 { factor.min(1.0) } else { factor };
        h *= factor;
    }
}
