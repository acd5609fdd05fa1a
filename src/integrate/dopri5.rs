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

/// Smallest relative tolerance [`Dopri5Config::validate`] accepts: ten units of round-off,
/// `10 · f64::EPSILON` ≈ 2.2e-15. The error test compares an estimate that is itself computed in
/// double precision; below this the round-off of the step update alone exceeds the tolerance,
/// so no step size meets it and the controller would shrink the step until it vanishes.
pub const MIN_RTOL: f64 = 10.0 * f64::EPSILON;

/// Smallest absolute tolerance [`Dopri5Config::validate`] accepts: 1e-100. Coordinates and
/// log-densities of any physical system are many orders of magnitude above it, so no meaningful
/// setting is refused; below it the scaled error `(error / atol)²` of a component at zero
/// overflows to infinity (at `atol` = 5e-324 the initial step even comes out as zero).
pub const MIN_ATOL: f64 = 1e-100;

/// Largest tolerance, relative or absolute, [`Dopri5Config::validate`] accepts: 0.1. The
/// controller takes the largest step whose estimated error is within the tolerance, so at a
/// tolerance of order one it crosses the whole interval in a step or two and returns a map and
/// a log-density off by as much as the tolerance allows, with no sign of it: a setting above
/// this asks for a solution the density could not be trusted with (the paper evaluates at
/// rtol 1e-5, atol 1e-10).
pub const MAX_TOLERANCE: f64 = 0.1;

/// Largest `max_steps` [`Dopri5Config::validate`] accepts: 1,000,000, ten times the default.
/// Every attempted step costs seven field evaluations, so a solve that needs more is better
/// reported as not converged (or moved to a fixed-grid method) than left to run for minutes per
/// configuration.
pub const MAX_DOPRI5_STEPS: usize = 1_000_000;

/// Tolerances and limits of the adaptive solver.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dopri5Config {
    /// Relative tolerance, in [`MIN_RTOL`]`..=`[`MAX_TOLERANCE`].
    pub rtol: f64,
    /// Absolute tolerance, in [`MIN_ATOL`]`..=`[`MAX_TOLERANCE`].
    pub atol: f64,
    /// Maximum number of attempted steps before failing with `NotConverged`, in
    /// `1..=`[`MAX_DOPRI5_STEPS`].
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
    /// Checks the tolerances and the step limit.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the setting: `rtol` below [`MIN_RTOL`] or `atol` below
    /// [`MIN_ATOL`] (tolerances that round-off cannot meet), either above [`MAX_TOLERANCE`]
    /// (an error bound too loose for a density) or not finite, `max_steps` outside
    /// `1..=`[`MAX_DOPRI5_STEPS`].
    pub fn validate(&self) -> Result<()> {
        for (name, v, min) in [("rtol", self.rtol, MIN_RTOL), ("atol", self.atol, MIN_ATOL)] {
            // `!(v >= min)` also refuses NaN.
            if !(v.is_finite() && v >= min) {
                return Err(Error::invalid(format!(
                    "Dormand–Prince {name} must be finite and at least {min:e} (smaller \
                     tolerances cannot be met in double precision), got {v:e}"
                )));
            }
            if v > MAX_TOLERANCE {
                return Err(Error::invalid(format!(
                    "Dormand–Prince {name} must be at most {MAX_TOLERANCE} (a looser tolerance \
                     lets the solver cross the flow in a step or two, with the map and its \
                     density off by that much), got {v:e}"
                )));
            }
        }
        if !(1..=MAX_DOPRI5_STEPS).contains(&self.max_steps) {
            return Err(Error::invalid(format!(
                "Dormand–Prince max_steps must be in 1..={MAX_DOPRI5_STEPS}, got {}",
                self.max_steps
            )));
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

    // The scale of the times of this solve, for the step-collapse test below.
    let t_scale = t0.abs().max(t1.abs());
    let mut attempts = 0;
    let mut rejected = false;
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
        // The step has collapsed when the controller proposes zero or NaN (which no growth
        // factor can repair), or when a rejection has shrunk it below ten units of round-off
        // of the time scale (Hairer's "step size too small", with the span's scale so that it
        // applies at t = 0 too). The tolerances cannot be met there: every further attempt
        // would repeat the rejection, or accept zero-length steps, until `max_steps`, which
        // took hours. The size test applies only after a rejection: the initial-step heuristic
        // legitimately proposes tiny steps (1e-86 for atol = 1e-100, from ℓ's scale at ℓ = 0,
        // even below an ulp of t), which are accepted and grow fivefold per step. Tested on the
        // controller's proposal, before a final step is clipped to the (possibly tiny) rest of
        // the span.
        let stalled = h == 0.0 || h.is_nan();
        let too_small = rejected && 0.1 * h.abs() <= f64::EPSILON * t.abs().max(t_scale);
        if !last && (stalled || too_small) {
            return Err(Error::NotConverged {
                what: format!(
                    "Dormand–Prince step size collapsed to h = {h:e} at t = {t} before t = {t1} \
                     (rtol = {:e}, atol = {:e} cannot be met here)",
                    cfg.rtol, cfg.atol
                ),
                residual: (t1 - t).abs(),
            });
        }
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
        rejected = norm > 1.0;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Integrates `rhs` over [0, 1] from `x0`, counting the right-hand side's evaluations
    /// independently of the solver's statistics.
    fn solve(
        cfg: &Dopri5Config,
        x0: &[f64],
        mut rhs: impl FnMut(&[f64], f64, &mut [f64]) -> f64,
    ) -> (Result<(f64, Stats)>, u64) {
        let mut evaluations = 0;
        let mut counted = |x: &[f64], t: f64, v: &mut [f64]| {
            evaluations += 1;
            rhs(x, t, v)
        };
        let mut x = x0.to_vec();
        let mut ws = Workspace::new(x.len());
        let result = integrate_rhs(&mut counted, cfg, &mut x, 0.0, 1.0, &mut ws);
        (result, evaluations)
    }

    /// dx/dt = −x, dℓ/dt = −n: smooth and easy.
    fn decay(x: &[f64], _t: f64, v: &mut [f64]) -> f64 {
        for (v, x) in v.iter_mut().zip(x) {
            *v = -x;
        }
        -(x.len() as f64)
    }

    #[test]
    fn subnormal_tolerances_fail_at_once_instead_of_running_max_steps() {
        // The reproduced hang: tolerances the old validation accepted (> 0, finite) gave a zero
        // step at t = 0 that was accepted forever, ~1 s per 100,000 attempts. Validation now
        // refuses them; the solver itself must still fail fast if it ever meets them.
        let cfg = Dopri5Config {
            rtol: 5e-324,
            atol: 5e-324,
            max_steps: 1_000_000,
        };
        assert!(cfg.validate().is_err());
        let (result, evaluations) = solve(&cfg, &[1.0, 0.5], decay);
        let err = result.unwrap_err();
        assert!(matches!(err, Error::NotConverged { .. }), "{err}");
        assert!(err.to_string().contains("collapsed"), "{err}");
        assert!(
            evaluations < 100,
            "{evaluations} evaluations before failing"
        );
    }

    #[test]
    fn a_step_collapsing_at_a_jump_fails_fast_with_valid_tolerances() {
        // x stays exactly 0 until the velocity jumps at t = 0.5: every step across the jump
        // has an error of the order of its own size relative to the solution, at any step
        // size, so the tolerance cannot be met. Without the collapse test the step shrank to
        // ~atol and then crawled until max_steps.
        let cfg = Dopri5Config {
            rtol: MIN_RTOL,
            atol: MIN_ATOL,
            max_steps: MAX_DOPRI5_STEPS,
        };
        cfg.validate().unwrap();
        let jump = |_x: &[f64], t: f64, v: &mut [f64]| {
            v[0] = if t < 0.5 { 0.0 } else { 1.0 };
            0.0
        };
        let (result, evaluations) = solve(&cfg, &[0.0], jump);
        let err = result.unwrap_err();
        assert!(matches!(err, Error::NotConverged { .. }), "{err}");
        assert!(
            evaluations < 10_000,
            "{evaluations} evaluations before failing"
        );
    }

    #[test]
    fn tolerances_at_the_floors_still_converge_on_a_smooth_problem() {
        let cfg = Dopri5Config {
            rtol: MIN_RTOL,
            atol: MIN_ATOL,
            max_steps: MAX_DOPRI5_STEPS,
        };
        let (result, _) = solve(&cfg, &[1.0, 0.5], decay);
        let (ell, stats) = result.unwrap();
        assert!((ell + 2.0).abs() < 1e-13, "{ell}");
        assert!(stats.n_steps > 0);
        // A short span far from t = 0 is still integrated (the collapse test is relative).
        let mut x = vec![1.0];
        let mut ws = Workspace::new(1);
        let t0 = 0.5;
        let t1 = t0 + 4.0 * f64::EPSILON;
        let (ell, _) = integrate_rhs(&mut decay, &cfg, &mut x, t0, t1, &mut ws).unwrap();
        assert!((ell + (t1 - t0)).abs() < 1e-30, "{ell}");
    }

    #[test]
    fn tolerances_below_round_off_and_huge_step_limits_are_refused() {
        let ok = Dopri5Config::default();
        ok.validate().unwrap();
        let cases = [
            ("rtol", Dopri5Config { rtol: 5e-324, ..ok }),
            ("rtol", Dopri5Config { rtol: 1e-16, ..ok }),
            (
                "rtol",
                Dopri5Config {
                    rtol: f64::NAN,
                    ..ok
                },
            ),
            ("rtol", Dopri5Config { rtol: 0.0, ..ok }),
            ("rtol", Dopri5Config { rtol: 0.2, ..ok }),
            ("rtol", Dopri5Config { rtol: 1e300, ..ok }),
            ("atol", Dopri5Config { atol: 0.5, ..ok }),
            (
                "atol",
                Dopri5Config {
                    atol: f64::MAX,
                    ..ok
                },
            ),
            ("atol", Dopri5Config { atol: 1e-300, ..ok }),
            (
                "atol",
                Dopri5Config {
                    atol: f64::INFINITY,
                    ..ok
                },
            ),
            ("max_steps", Dopri5Config { max_steps: 0, ..ok }),
            (
                "max_steps",
                Dopri5Config {
                    max_steps: MAX_DOPRI5_STEPS + 1,
                    ..ok
                },
            ),
            (
                "max_steps",
                Dopri5Config {
                    max_steps: 1_000_000_000_000,
                    ..ok
                },
            ),
        ];
        for (name, cfg) in cases {
            let err = cfg.validate().unwrap_err();
            assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
        for cfg in [
            Dopri5Config {
                rtol: MIN_RTOL,
                ..ok
            },
            Dopri5Config {
                atol: MIN_ATOL,
                ..ok
            },
            Dopri5Config {
                max_steps: MAX_DOPRI5_STEPS,
                ..ok
            },
        ] {
            cfg.validate().unwrap();
        }
    }
}
