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

use super::linalg::{
    axpy, gemm_acc, lu_factor, lu_solve, matvec, matvec_transposed, scale, scale_into,
};
use super::rk4::{axpy_into, grid_stage_times};
use super::{Stats, Workspace, rk4};
use crate::error::{Error, Result};
use crate::field::VectorField;

/// Newton iterations allowed per inverse step; the backward-RK4 start is O(h⁵) away, so two or
/// three suffice in practice.
const MAX_NEWTON: usize = 12;

/// Weights of the stage Jacobians J₁…J₄ of a step `t → t + h` in the quadratic extrapolation
/// of `∂v/∂x` along the trajectory to `t − h/2`, the middle of the step before: nodes at
/// `t` (J₁), `t + h/2` ((J₂ + J₃)/2, whose stage points straddle the trajectory) and `t + h`
/// (J₄), Lagrange weights 3, −3, 1.
const CHORD_EXTRAPOLATION: [f64; 4] = [3.0, -1.5, -1.5, 1.0];

/// The extrapolated chord matrix replaces the evaluated one only while the chord iteration
/// contracts at least this strongly: then its extra error (O(h⁴), against P's O(h³)) costs no
/// iterations. Measured median contraction, evaluated / extrapolated: DW-4 1e−5.1 / 1e−5.1
/// (the same iterations, one Jacobian fewer per step); LJ-13, whose time kernels are narrow,
/// 1e−2.9 / 1e−2.3 (0.8 more map evaluations per step than the Jacobian saves).
const MAX_RATE_FOR_EXTRAPOLATED_CHORD: f64 = 1e-4;

/// Computes `Φ_h(y)` into `out` and the step Jacobian into `ws.step_jac`, for the forward step
/// with stage times `times` (see [`grid_stage_times`]). With `extrapolate_chord`, also leaves
/// in `ws.chord` the chord matrix of the inverse of the step before (see [`inverse_step`]).
/// Fails if the step Jacobian is not finite (the field blew up).
fn step_and_jacobian<F: VectorField + ?Sized>(
    field: &F,
    y: &[f64],
    times: [f64; 3],
    h: f64,
    out: &mut [f64],
    extrapolate_chord: bool,
    ws: &mut Workspace,
) -> Result<()> {
    let n = y.len();
    let half = 0.5 * h;
    let sixth = h / 6.0;
    let [_, t_half, t_end] = times;
    let Workspace {
        k,
        stage,
        jac,
        dk_prev,
        dk,
        step_jac,
        chord,
        ..
    } = ws;
    let [k1, k2, k3, k4, ..] = k;

    field.velocity_jacobian_into(y, times[0], k1, dk_prev);
    // step_jac accumulates dk₁ + 2dk₂ + 2dk₃ + dk₄.
    step_jac.copy_from_slice(dk_prev);

    if extrapolate_chord {
        scale_into(h * CHORD_EXTRAPOLATION[0], dk_prev, chord);
    }

    // (stage offset, stage time, weight in Φ): y + shift·k_prev at the stage time.
    let stages: [(f64, f64, f64); 3] = [(half, t_half, 2.0), (half, t_half, 2.0), (h, t_end, 1.0)];
    let mut k_prev: &mut [f64] = k1;
    for (((shift, time, weight), k_cur), chord_weight) in stages
        .into_iter()
        .zip([k2, k3, k4])
        .zip(&CHORD_EXTRAPOLATION[1..])
    {
        axpy_into(stage, y, shift, k_prev);
        field.velocity_jacobian_into(stage, time, k_cur, jac);
        if extrapolate_chord {
            axpy(h * chord_weight, jac, chord);
        }
        // dk = J + shift·J·dk_prev
        dk.copy_from_slice(jac);
        gemm_acc(n, shift, jac, dk_prev, dk);
        axpy(weight, dk, step_jac);
        std::mem::swap(dk_prev, dk);
        k_prev = k_cur;
    }
    let finite = scale(sixth, step_jac);
    for i in 0..n {
        step_jac[i * n + i] += 1.0;
    }
    let [k1, k2, k3, k4, ..] = &ws.k;
    for i in 0..n {
        out[i] = y[i] + sixth * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
    }
    if !finite {
        return Err(Error::non_finite(format!(
            "the RK4 step Jacobian at t = {} (the field blew up)",
            times[0]
        )));
    }
    Ok(())
}

/// LU-factors `ws.step_jac` (finite: see [`step_and_jacobian`]) in place and returns its
/// log-determinant, failing when the step is not locally a bijection (determinant ≤ 0 or
/// singular).
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
    times: [f64; 3],
    h: f64,
    ws: &mut Workspace,
) -> Result<f64> {
    let mut next = std::mem::take(&mut ws.trial);
    let computed = step_and_jacobian(field, x, times, h, &mut next, false, ws);
    ws.trial = next;
    computed?;
    x.copy_from_slice(&ws.trial);
    factor_step(ws, times[0])
}

/// What one inverse step hands to the next (the step before it in the map): see
/// [`inverse_step`]. Per inversion of a map, not per workspace: a sample's result must not
/// depend on the samples the same thread inverted before it.
pub(crate) struct InverseCarry {
    /// The chord's last measured contraction factor (∞ until measured).
    rate: f64,
    /// `ws.k[0]` holds `v(x, t + h)` for the next step's output `x`.
    first_stage: bool,
    /// `ws.chord` holds the next step's extrapolated chord matrix.
    chord: bool,
}

impl InverseCarry {
    /// Nothing carried: for the first step inverted (the map's last).
    pub(crate) fn new() -> Self {
        InverseCarry {
            rate: f64::INFINITY,
            first_stage: false,
            chord: false,
        }
    }
}

/// Inverts one forward step `t → t + h`: on entry `x` is the step's output, on exit its input.
/// Returns the log-determinant of the *forward* step at the solution and the solver counts.
///
/// The step Jacobian is needed once, at the solution, for the log-determinant. Getting there
/// costs field values and at most one Jacobian of v: from a backward RK4 step (O(h⁵) away, values
/// only) a chord iteration `y ← y − P·(Φ_h(y) − x)` with a fixed approximate inverse of the
/// step Jacobian, `P = I − A + A²/2`, `A = h·∂v/∂x` at the predictor's second middle stage
/// (time `t + h/2`). The step Jacobian is `exp(A) + O(h³)` and P is `exp(−A) + O(h³)`,
/// so each iteration gains about three digits (measured: 1e−3…1e−4 per iteration on LJ-13)
/// and P is applied by two matrix–vector products, with no factorisation. Newton steps with
/// the full step Jacobian take over only if the chord iteration stalls.
///
/// `carry` links the steps of one inversion, which run from the map's last step to its first:
/// - `rate`, the chord's contraction factor: when the residual times the expected contraction
///   is already at round-off, the iteration stops without evaluating the map once more,
///   because the full step that follows evaluates it anyway. A wrong guess costs a Newton
///   step, never accuracy.
/// - `first_stage`: the full step that ended the previous inversion (of the step
///   `t + h → t + 2h`, whose solution is this step's `x`) left `v(x, t + h)` in `ws.k[0]`,
///   the predictor's first stage: the same bits as evaluating it.
/// - `chord`: that full step also extrapolated `h·∂v/∂x` from its four stage Jacobians back
///   to this step's middle ([`CHORD_EXTRAPOLATION`]; error O(h⁴), below P's own O(h³)), and
///   this step uses it instead of evaluating the Jacobian, while the measured contraction
///   says that costs no iterations ([`MAX_RATE_FOR_EXTRAPOLATED_CHORD`]).
pub(crate) fn inverse_step<F: VectorField + ?Sized>(
    field: &F,
    x: &mut [f64],
    times: [f64; 3],
    h: f64,
    carry: &mut InverseCarry,
    ws: &mut Workspace,
) -> Result<(f64, Stats)> {
    let n = x.len();
    let cached_stage = std::mem::take(&mut carry.first_stage);
    let cached_chord = std::mem::take(&mut carry.chord);
    let rate = &mut carry.rate;
    // Backward step (4 values) and the chord matrix (1 Jacobian), less what is cached.
    let mut stats = Stats {
        n_eval: if cached_stage { 3 } else { 4 },
        n_jacobian: if cached_chord { 0 } else { 1 },
        ..Stats::default()
    };
    let mut target = std::mem::take(&mut ws.target);
    let mut image = std::mem::take(&mut ws.trial);
    let mut residual = std::mem::take(&mut ws.error);
    target.copy_from_slice(x);
    let scale = 1.0 + target.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let floor = 64.0 * f64::EPSILON * scale;
    // A stop on a predicted residual must leave room for the prediction's error.
    let predicted_floor = 0.25 * floor;
    let back = [times[2], times[1], times[0]];
    // Without a cached chord matrix, the predictor's second middle stage evaluates the
    // Jacobian with its value (one field value fewer than a separate evaluation): its point is
    // O(h²) from the step's middle, so `h·J` there is O(h³) from `h·J` at the middle, the
    // order of P's own error. Measured on LJ-13: 395 field values per sample, against 396
    // with J at `((y₀ + x)/2, t + h/2)` and 410 at the first middle stage.
    let mut jac = std::mem::take(&mut ws.jac);
    let mut jacobian_pending = !cached_chord;
    let mut middle_seen = false;
    rk4::step_with(x, -h, ws, |y, time, v| {
        // `v` is ws.k[0] at time index 0.
        let second_middle = time == 1 && std::mem::replace(&mut middle_seen, true);
        if second_middle && jacobian_pending {
            field.velocity_jacobian_into(y, back[1], v, &mut jac);
            jacobian_pending = false;
        } else if time > 0 || !cached_stage {
            field.velocity_only_into(y, back[time], v);
        }
        0.0
    });
    if !cached_chord {
        scale_into(h, &jac, &mut ws.chord);
    }
    ws.jac = jac;

    let symmetric = field.symmetric_jacobian();
    let mut previous = f64::INFINITY;
    for _ in 0..MAX_NEWTON {
        image.copy_from_slice(x);
        rk4::step_values(field, &mut image, times, h, ws);
        stats.n_eval += 4;
        let norm = residual_into(&image, &target, &mut residual, false);
        if previous.is_finite() && norm < 0.5 * previous {
            *rate = norm / previous;
        }
        if norm <= floor || !norm.is_finite() || norm >= 0.5 * previous {
            break;
        }
        apply_inverse_exp(
            n,
            &ws.chord,
            symmetric,
            &mut residual,
            &mut ws.stage,
            &mut ws.product,
        );
        for i in 0..n {
            x[i] -= residual[i];
        }
        if norm * *rate <= predicted_floor {
            break;
        }
        previous = norm;
    }

    // The log-determinant at the solution, with Newton steps if the chord did not get there.
    let mut result = Err(Error::NotConverged {
        what: String::new(),
        residual: f64::NAN,
    });
    let mut previous = f64::INFINITY;
    // The chord matrix of the next step to invert (the step before this one), from this
    // step's stage Jacobians, if the contraction allows it (unused after the map's first step:
    // 4n² operations).
    let extrapolate = *rate <= MAX_RATE_FOR_EXTRAPOLATED_CHORD;
    for iteration in 1..=MAX_NEWTON {
        let computed = step_and_jacobian(field, x, times, h, &mut image, extrapolate, ws);
        stats.n_eval += 4;
        stats.n_jacobian += 4;
        stats.n_newton += 1;
        let norm = residual_into(&image, &target, &mut residual, true);
        if !norm.is_finite() {
            result = Err(Error::non_finite(format!(
                "inverse RK4 step at t = {}: residual is not finite (the field blew up)",
                times[0]
            )));
            break;
        }
        if let Err(e) = computed {
            result = Err(e);
            break;
        }
        let log_det = match factor_step(ws, times[0]) {
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
            *carry = InverseCarry {
                rate: *rate,
                first_stage: true,
                chord: extrapolate,
            };
            break;
        }
        result = Err(Error::NotConverged {
            what: format!(
                "inverse of the RK4 step at t = {} did not converge in {MAX_NEWTON} Newton \
                 iterations; the step may not be invertible here (use more steps)",
                times[0]
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

/// `residual = image − target`, returning its max norm: the convergence test of both loops of
/// [`inverse_step`]. With `strict`, NaN if any component is NaN (`f64::max` alone skips NaNs,
/// and a residual of NaNs would pass for converged): the full step's acceptance test. The chord
/// loop does without (2% of DW-4 density time): a NaN there reaches the full step that follows.
fn residual_into(image: &[f64], target: &[f64], residual: &mut [f64], strict: bool) -> f64 {
    let mut norm = 0.0f64;
    for ((r, y), t) in residual.iter_mut().zip(image).zip(target) {
        *r = y - t;
        norm = norm.max(r.abs());
    }
    if strict && residual.iter().any(|r| r.is_nan()) {
        f64::NAN
    } else {
        norm
    }
}

/// `r ← (I − A + A²/2)·r`, the truncated series of `exp(−A)`, by two products with the
/// n × n row-major `A` (`s`, `u` are scratch of length n). With `symmetric` (A is a
/// combination of Jacobians that [`VectorField::symmetric_jacobian`] declares symmetric) the
/// products are the faster `Aᵀ·r`, which then equals `A·r`.
fn apply_inverse_exp(
    n: usize,
    a: &[f64],
    symmetric: bool,
    r: &mut [f64],
    s: &mut [f64],
    u: &mut [f64],
) {
    let product = if symmetric { matvec_transposed } else { matvec };
    // Horner: r − A(r − A r/2). (The cubic term −A³/6 was measured to save no iterations:
    // the O(h³) variation of J along the step dominates.)
    product(n, a, r, u);
    for i in 0..n {
        s[i] = r[i] - 0.5 * u[i];
    }
    product(n, a, s, u);
    for i in 0..n {
        r[i] -= u[i];
    }
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
        log_det += step(field, x, grid_stage_times(i, n_steps, true), h, ws)?;
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
    let mut carry = InverseCarry::new();
    for i in (0..n_steps).rev() {
        let times = grid_stage_times(i, n_steps, true);
        let (ld, step_stats) = inverse_step(field, x, times, h, &mut carry, ws)?;
        log_det += ld;
        stats += step_stats;
    }
    stats.n_steps = n_steps as u64;
    Ok((log_det, stats))
}
