//! The exact density of the discrete RK4 map (DESIGN.md §1, "beyond the paper").
//!
//! A host receives samples of the push-forward of the prior along the map it actually runs,
//! `Φ = Φ_h ∘ … ∘ Φ_h`, not along the exact ODE flow. Its log-determinant is the sum of the
//! step log-determinants, each computed from the stage Jacobians of v:
//!
//! ```text
//! dk₁ = J₁,  dk₂ = J₂(I + h/2·dk₁),  dk₃ = J₃(I + h/2·dk₂),  dk₄ = J₄(I + h·dk₃)
//! ∂Φ_h/∂y = I + h/6·(dk₁ + 2dk₂ + 2dk₃ + dk₄)
//! ```
//!
//! The inverse of a step is found by Newton's method started from a backward RK4 step, and the
//! log-determinant is taken at the converged point, so that the density of a proposal and the
//! density evaluated later for the same configuration agree to round-off.

use super::linalg::{gemm_acc, lu_factor, lu_solve};
use super::rk4::{axpy_into, grid_time};
use super::{Stats, Workspace, rk4};
use crate::error::{Error, Result};
use crate::field::VectorField;

/// Newton iterations allowed per inverse step; the backward-RK4 start is O(h⁵) away, so two or
/// three suffice in practice.
const MAX_NEWTON: usize = 12;

/// Computes `Φ_h(y)` into `out` and the step Jacobian into `ws.step_jac`, starting at time `t`.
fn step_and_jacobian<F: VectorField + ?Sized>(
    field: &F,
    y: &[f64],
    t: f64,
    h: f64,
    out: &mut [f64],
    ws: &mut Workspace,
) {
    let n = y.len();
    let half = 0.5 * h;
    let sixth = h / 6.0;
    let Workspace {
        k,
        stage,
        jac,
        dk_prev,
        dk,
        step_jac,
        ..
    } = ws;
    let [k1, k2, k3, k4, ..] = k;

    field.velocity_jacobian_into(y, t, k1, dk_prev);
    // step_jac accumulates dk₁ + 2dk₂ + 2dk₃ + dk₄.
    step_jac.copy_from_slice(dk_prev);

    // (stage offset = time offset, weight in Φ): y + shift·k_prev at t + shift.
    let stages: [(f64, f64); 3] = [(half, 2.0), (half, 2.0), (h, 1.0)];
    let mut k_prev: &mut [f64] = k1;
    for ((shift, weight), k_cur) in stages.into_iter().zip([k2, k3, k4]) {
        axpy_into(stage, y, shift, k_prev);
        field.velocity_jacobian_into(stage, t + shift, k_cur, jac);
        // dk = J + shift·J·dk_prev
        dk.copy_from_slice(jac);
        gemm_acc(n, shift, jac, dk_prev, dk);
        for (acc, d) in step_jac.iter_mut().zip(dk.iter()) {
            *acc += weight * d;
        }
        std::mem::swap(dk_prev, dk);
        k_prev = k_cur;
    }
    for v in step_jac.iter_mut() {
        *v *= sixth;
    }
    for i in 0..n {
        step_jac[i * n + i] += 1.0;
    }
    let [k1, k2, k3, k4, ..] = &ws.k;
    for i in 0..n {
        out[i] = y[i] + sixth * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
    }
}

/// LU-factors `ws.step_jac` in place and returns its log-determinant, failing when the step is
/// not locally a bijection (determinant ≤ 0 or singular).
fn factor_step(ws: &mut Workspace, t: f64) -> Result<f64> {
    let n = ws.state_len();
    let (log_abs, sign) = lu_factor(n, &mut ws.step_jac, &mut ws.pivots);
    if sign <= 0.0 || !log_abs.is_finite() {
        return Err(Error::NotInvertible {
            what: format!(
                "the RK4 step at t = {t} has a Jacobian with determinant sign {sign}: \
                 the step is too large for this field (use more steps)"
            ),
        });
    }
    Ok(log_abs)
}

/// One forward step with its exact log-determinant; `x` is advanced in place.
pub(crate) fn step<F: VectorField + ?Sized>(
    field: &F,
    x: &mut [f64],
    t: f64,
    h: f64,
    ws: &mut Workspace,
) -> Result<f64> {
    let mut next = std::mem::take(&mut ws.trial);
    step_and_jacobian(field, x, t, h, &mut next, ws);
    x.copy_from_slice(&next);
    ws.trial = next;
    factor_step(ws, t)
}

/// Inverts one forward step `t → t + h`: on entry `x` is the step's output, on exit its input.
/// Returns the log-determinant of the *forward* step at the solution and the solver counts.
///
/// The step Jacobian is needed once, at the solution, for the log-determinant. Getting there
/// costs only field values: from a backward RK4 step (O(h⁵) away) a chord iteration with the
/// cheap matrix `M = I + h·∂v/∂x(y₀, t + h/2)`, which differs from the step Jacobian by O(h²)
/// and so gains about three digits per iteration. Newton steps with the full Jacobian take over
/// only if the chord iteration stalls.
pub(crate) fn inverse_step<F: VectorField + ?Sized>(
    field: &F,
    x: &mut [f64],
    t: f64,
    h: f64,
    ws: &mut Workspace,
) -> Result<(f64, Stats)> {
    let n = x.len();
    // Backward step (4 values) and the chord matrix (1 Jacobian).
    let mut stats = Stats {
        n_eval: 4,
        n_jacobian: 1,
        ..Stats::default()
    };
    let mut target = std::mem::take(&mut ws.target);
    let mut image = std::mem::take(&mut ws.trial);
    let mut residual = std::mem::take(&mut ws.error);
    target.copy_from_slice(x);
    let scale = 1.0 + target.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let floor = 64.0 * f64::EPSILON * scale;
    rk4::step(field, x, t + h, -h, ws);

    // Chord iteration.
    {
        let Workspace { k, dk, pivots, .. } = &mut *ws;
        field.velocity_jacobian_into(x, t + 0.5 * h, &mut k[0], dk);
        for v in dk.iter_mut() {
            *v *= h;
        }
        for i in 0..n {
            dk[i * n + i] += 1.0;
        }
        let (_, sign) = lu_factor(n, dk, pivots);
        if sign != 0.0 {
            let mut previous = f64::INFINITY;
            for _ in 0..MAX_NEWTON {
                image.copy_from_slice(x);
                rk4::step(field, &mut image, t, h, ws);
                stats.n_eval += 4;
                let mut norm = 0.0f64;
                for i in 0..n {
                    residual[i] = image[i] - target[i];
                    norm = norm.max(residual[i].abs());
                }
                if norm <= floor || !norm.is_finite() || norm >= 0.5 * previous {
                    break;
                }
                previous = norm;
                lu_solve(n, &ws.dk, &ws.pivots, &mut residual);
                for i in 0..n {
                    x[i] -= residual[i];
                }
            }
        }
    }

    // The log-determinant at the solution, with Newton steps if the chord did not get there.
    let mut result = Err(Error::NotConverged {
        what: String::new(),
        residual: f64::NAN,
    });
    let mut previous = f64::INFINITY;
    for iteration in 1..=MAX_NEWTON {
        step_and_jacobian(field, x, t, h, &mut image, ws);
        stats.n_eval += 4;
        stats.n_jacobian += 4;
        stats.n_newton += 1;
        let mut norm = 0.0f64;
        for i in 0..n {
            residual[i] = image[i] - target[i];
            norm = norm.max(residual[i].abs());
        }
        let log_det = match factor_step(ws, t) {
            Ok(v) => v,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        // Converged at round-off, or stalled at the round-off floor after a real descent.
        let stalled = iteration > 1 && norm >= 0.5 * previous && norm <= 1e-11 * scale;
        if norm <= floor || stalled {
            result = Ok((log_det, stats));
            break;
        }
        if !norm.is_finite() {
            result = Err(Error::non_finite(format!(
                "inverse RK4 step at t = {t}: residual is not finite"
            )));
            break;
        }
        result = Err(Error::NotConverged {
            what: format!(
                "inverse of the RK4 step at t = {t} did not converge in {MAX_NEWTON} Newton \
                 iterations; the step may not be invertible here (use more steps)"
            ),
            residual: norm,
        });
        previous = norm;
        lu_solve(n, &ws.step_jac, &ws.pivots, &mut residual);
        for i in 0..n {
            x[i] -= residual[i];
        }
    }
    ws.target = target;
    ws.trial = image;
    ws.error = residual;
    result
}

/// Runs the whole discrete map forward (t: 0 → 1), returning Σ log det ∂Φ_h/∂y.
pub(crate) fn forward<F: VectorField + ?Sized>(
    field: &F,
    x: &mut [f64],
    n_steps: usize,
    ws: &mut Workspace,
) -> Result<(f64, Stats)> {
    let h = 1.0 / n_steps as f64;
    let mut log_det = 0.0;
    for i in 0..n_steps {
        log_det += step(field, x, grid_time(i, n_steps), h, ws)?;
    }
    let stats = Stats {
        n_eval: 4 * n_steps as u64,
        n_jacobian: 4 * n_steps as u64,
        n_steps: n_steps as u64,
        ..Stats::default()
    };
    Ok((log_det, stats))
}

/// Inverts the whole discrete map (t: 1 → 0), returning Σ log det ∂Φ_h/∂y of the forward
/// steps at the solution (so the caller subtracts it, as for the forward map).
pub(crate) fn inverse<F: VectorField + ?Sized>(
    field: &F,
    x: &mut [f64],
    n_steps: usize,
    ws: &mut Workspace,
) -> Result<(f64, Stats)> {
    let h = 1.0 / n_steps as f64;
    let mut log_det = 0.0;
    let mut stats = Stats::default();
    for i in (0..n_steps).rev() {
        let (ld, step_stats) = inverse_step(field, x, grid_time(i, n_steps), h, ws)?;
        log_det += ld;
        stats += step_stats;
    }
    stats.n_steps = n_steps as u64;
    Ok((log_det, stats))
}
