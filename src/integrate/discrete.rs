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
//! log-determinant is taken at the converged point, or one Newton step `Δ` from it and
//! corrected to first order (see [`inverse_step`]), so that the density of a proposal and the
//! density evaluated later for the same configuration agree to round-off.
//!
//! Where that fast solve fails (a stiff step: the iteration stalls, or an iterate lands where
//! the step Jacobian folds), a damped Newton iteration with a line search, falling back to the
//! fixed-point step `y ← x − Δ(y)`, starts again from the predictor (`ForwardStep::damped_newton`);
//! its answer is accepted only with a residual at round-off and a positive step determinant at
//! the point found. That proves the point a preimage of the step, not the only one: uniqueness
//! is the step certificate's (`integrate::certificate`).

use super::linalg::{
    axpy, gemm_acc, lu_factor, lu_solve, matvec, matvec_transposed, quotient_by_translations,
    scale, scale_into,
};
use super::rk4::{axpy_into, grid_stage_times};
use super::{Stats, Workspace, rk4};
use crate::error::{Error, Result};
use crate::field::VectorField;

/// Newton iterations allowed per inverse step; the backward-RK4 start is O(h⁵) away, so two or
/// three suffice in practice.
const MAX_NEWTON: usize = 12;

/// Iterations of the inverse's damped Newton fallback (see `ForwardStep::damped_newton`):
/// each costs a step Jacobian and a few step values; reached only where the fast path failed.
const MAX_FALLBACK_ITERATIONS: usize = 100;

/// Halvings of the fallback's line search before a direction is given up (λ down to 2⁻⁴⁰).
const MAX_HALVINGS: usize = 40;

/// A residual (max norm, relative to `1 + ‖x‖∞`) at which the fallback accepts a point where
/// no direction decreases the residual any more: round-off, as the fast path's stall test.
const STALLED_RESIDUAL: f64 = 1e-11;

/// Weights of the stage Jacobians J₁…J₄ of a step `t → t + h` in the quadratic extrapolation
/// of `∂v/∂x` along the trajectory to `t − h/2`, the middle of the step before: nodes at
/// `t` (J₁), `t + h/2` ((J₂ + J₃)/2, whose stage points straddle the trajectory) and `t + h`
/// (J₄), Lagrange weights 3, −3, 1.
const CHORD_EXTRAPOLATION: [f64; 4] = [3.0, -1.5, -1.5, 1.0];

/// The extrapolated chord matrix replaces the evaluated one only while the chord iteration
/// contracts at least this strongly: then its extra error (O(h⁴), against P's O(h³)) costs no
/// iterations. DW-4 qualifies (one Jacobian fewer per step); LJ-13's narrow time kernels make
/// the extrapolation contract worse than the Jacobian it saves is worth (see
/// docs/numerics.md §"Exact density of the discrete RK4 map", inverse step 2).
const MAX_RATE_FOR_EXTRAPOLATED_CHORD: f64 = 1e-4;

/// The largest first-order correction of a step log-determinant that may be applied, in nats:
/// the bound `‖∇L‖₁·‖Δ‖∞` on `|∇L·Δ|` for a Newton step `Δ` (see [`inverse_step`]), so that
/// what decides is the step's size, not its direction. The correction is off by
/// `(∇ log det − ∇L)·Δ`, at most `ρ·‖∇L‖₁·‖Δ‖∞` with ρ the relative error of the quadrature
/// gradient, O(h⁴) (`quadrature_gradient_approximates_the_log_determinant_gradient`), which
/// keeps the correction's error at round-off on the presets and far below it on the shipped
/// trained models. A lower bound makes more steps miss it (each a full step more: DW-4's
/// predictor alone has to meet it); a higher one lets a larger error through (ρ times the
/// bound). The measured ρ, log q agreement and miss rates per bound are in docs/numerics.md
/// §"Exact density of the discrete RK4 map", inverse step 4.
const MAX_CORRECTION: f64 = 3e-10;

/// The largest Newton step, relative to the state's scale, that the first-order correction is
/// applied to: the terms it neglects are O(|Δ|²), round-off below this.
const MAX_CORRECTED_STEP: f64 = 1e-8;

/// How far below the correctable step the chord iteration aims, for the error of its own
/// prediction (its contraction varies from step to step). A miss costs a full step more;
/// aiming lower, a chord evaluation (4 field values) more now and then; chosen from LJ-13's
/// counts at margins 1, 3 and 30 (see docs/numerics.md §"Exact density of the discrete RK4
/// map"). DW-4 skips the chord altogether.
const CHORD_MARGIN: f64 = 3.0;

/// Computes `Φ_h(y)` into `out` and the step Jacobian into `ws.step_jac`, for the forward step
/// with stage times `times` (see [`grid_stage_times`]). With `extrapolate_chord`, also leaves
/// in `ws.chord` the chord matrix of the inverse of the step before (see [`inverse_step`]).
/// With `quadrature_gradient`, also leaves in `ws.quadrature_gradient` the gradient of the
/// step's RK4 quadrature of the divergence, `L(y) = h/6·Σ_s w_s·div v(y_s)` over its stage
/// points `y_s`, if the field provides `∇ div v`
/// ([`VectorField::velocity_jacobian_divgrad_into`]), and returns whether it did.
/// Fails if the step Jacobian is not finite (the field blew up).
#[allow(clippy::too_many_arguments)]
fn step_and_jacobian<F: VectorField + ?Sized>(
    field: &F,
    y: &[f64],
    times: [f64; 3],
    h: f64,
    out: &mut [f64],
    extrapolate_chord: bool,
    quadrature_gradient: bool,
    ws: &mut Workspace,
) -> Result<bool> {
    ws.reserve_exact_discrete()?;
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
        div_gradient,
        quadrature_gradient: gradient,
        product,
        ..
    } = ws;
    let [k1, k2, k3, k4, ..] = k;

    // ∇L = h/6·Σ_s w_s·(∂y_s/∂y)ᵀ·∇ div v(y_s), with ∂y_s/∂y = I + shift_s·dk_{s−1}: the
    // stage derivatives the step Jacobian is built from anyway.
    let mut with_gradient = stage_jacobian(
        field,
        y,
        times[0],
        k1,
        dk_prev,
        div_gradient,
        quadrature_gradient,
    );
    if with_gradient {
        gradient.copy_from_slice(div_gradient);
    }
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
        with_gradient = stage_jacobian(field, stage, time, k_cur, jac, div_gradient, with_gradient);
        if with_gradient {
            matvec_transposed(n, dk_prev, div_gradient, product);
            for ((g, d), p) in gradient
                .iter_mut()
                .zip(div_gradient.iter())
                .zip(product.iter())
            {
                *g += weight * (d + shift * p);
            }
        }
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
    if with_gradient {
        gradient.iter_mut().for_each(|g| *g *= sixth);
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
    Ok(with_gradient)
}

/// One stage's `v` and Jacobian, and `∇ div v` too if `with_gradient` and the field provides
/// it; returns whether it did.
fn stage_jacobian<F: VectorField + ?Sized>(
    field: &F,
    y: &[f64],
    t: f64,
    v: &mut [f64],
    jacobian: &mut [f64],
    div_gradient: &mut [f64],
    with_gradient: bool,
) -> bool {
    let computed = with_gradient
        && field
            .velocity_jacobian_divgrad_into(y, t, v, jacobian, div_gradient)
            .is_some();
    if !computed {
        field.velocity_jacobian_into(y, t, v, jacobian);
    }
    computed
}

/// LU-factors the m × m `ws.step_jac` (finite: see [`step_and_jacobian`]; m = n, or n − D
/// after `linalg::quotient_by_translations`) in place and returns its log-determinant,
/// failing when the step is not locally a bijection (determinant ≤ 0 or singular).
fn factor_step(ws: &mut Workspace, m: usize, t: f64) -> Result<f64> {
    let (log_abs, sign) = lu_factor(m, &mut ws.step_jac, &mut ws.pivots);
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
///
/// For a translation-invariant field ([`VectorField::translation_axes`]: every family) the
/// determinant is taken in the quotient by translations (`linalg::quotient_by_translations`),
/// whose order is n − D: the step is the identity on translations, so the determinant is the
/// same, and the LU smaller (6 × 6 instead of 8 × 8 for DW-4, 36 instead of 39 for LJ-13).
pub(crate) fn step<F: VectorField + ?Sized>(
    field: &F,
    x: &mut [f64],
    times: [f64; 3],
    h: f64,
    ws: &mut Workspace,
) -> Result<f64> {
    ws.reserve_exact_discrete()?;
    let mut next = std::mem::take(&mut ws.trial);
    let computed = step_and_jacobian(field, x, times, h, &mut next, false, false, ws);
    ws.trial = next;
    computed?;
    x.copy_from_slice(&ws.trial);
    let n = x.len();
    // At least two particles (with one, a translation-invariant field is zero).
    let m = match field.translation_axes() {
        Some(dim) if n > dim => quotient_by_translations(n, dim, &mut ws.step_jac),
        _ => n,
    };
    factor_step(ws, m, times[0])
}

/// What one inverse step hands to the next (the step before it in the map): see
/// [`inverse_step`]. Per inversion of a map, not per workspace: a sample's result must not
/// depend on the samples the same thread inverted before it.
pub(crate) struct InverseCarry {
    /// The chord's last measured contraction factor (∞ until measured).
    rate: f64,
    /// `ws.k[0]` holds `v(x, t + h)` for the next step's output `x`, or at a point within an
    /// accepted Newton step of it (see [`inverse_step`]).
    first_stage: bool,
    /// `ws.chord` holds the next step's extrapolated chord matrix.
    chord: bool,
    /// How far the last step's solution was from its predictor (max norm; ∞ until measured):
    /// what the next predictor is expected to miss by.
    predictor_error: f64,
    /// The last step's `‖∇L‖₁`, the correction per unit Newton step at most (∞ until a step
    /// was corrected).
    sensitivity: f64,
}

impl InverseCarry {
    /// Nothing carried: for the first step inverted (the map's last).
    pub(crate) fn new() -> Self {
        InverseCarry {
            rate: f64::INFINITY,
            first_stage: false,
            chord: false,
            predictor_error: f64::INFINITY,
            sensitivity: f64::INFINITY,
        }
    }
}

/// Inverts one forward step `t → t + h`: on entry `x` is the step's output, on exit its input.
/// Returns the log-determinant of the *forward* step at the solution and the solver counts.
///
/// The step Jacobian is needed once, near the solution, for the log-determinant. Getting there
/// costs field values and at most one Jacobian of v: from a backward RK4 step (O(h⁵) away,
/// values only) a chord iteration `y ← y − P·(Φ_h(y) − x)` with a fixed approximate inverse of
/// the step Jacobian, `P = I − A + A²/2`, `A = h·∂v/∂x` at the predictor's second middle stage
/// (time `t + h/2`). The step Jacobian is `exp(A) + O(h³)` and P is `exp(−A) + O(h³)`,
/// so each iteration gains about three digits (see docs/numerics.md, inverse step 2)
/// and P is applied by two matrix–vector products, with no factorisation. The full step (with
/// the step Jacobian) then ends the solve in one of two ways:
/// - its residual is at round-off: the log-determinant is the one at the solution;
/// - otherwise its LU factors give the Newton step `Δ` (the solution is `y − Δ` to O(|Δ|²)).
///   If `Δ` is small ([`MAX_CORRECTED_STEP`]) and the field provides `∇ div v`, the
///   log-determinant at the solution is taken as `log det(y) − ∇L·Δ`, where L is the step's
///   RK4 quadrature of the divergence (see [`step_and_jacobian`]): `log det ∂Φ_h/∂y − L(y)` is
///   O(h⁵) and smooth, so ∇L is the gradient of the log-determinant to a relative O(h⁴), and
///   the correction, at most [`MAX_CORRECTION`], is accurate to round-off. Otherwise the
///   Newton step is taken and the full step repeated.
///
/// The correction is what lets the chord iteration stop early: it only has to bring the
/// correction under [`MAX_CORRECTION`], not the residual to round-off. On DW-4 the backward
/// RK4 step alone does (median error 8e−11): no chord evaluation at all, four field values per
/// step fewer.
///
/// `carry` links the steps of one inversion, which run from the map's last step to its first:
/// - `rate`, the chord's contraction factor: when the residual times the expected contraction
///   is already small enough, the iteration stops without evaluating the map once more,
///   because the full step that follows evaluates it anyway. A wrong guess costs a Newton
///   step, never accuracy.
/// - `predictor_error` and `sensitivity`: the predictor's last error and the correction per
///   unit step predict whether the predictor alone will do; if so, the chord iteration (and
///   its matrix) is skipped. Again a wrong guess costs a Newton step, not accuracy.
/// - `first_stage`: the full step that ended the previous inversion (of the step
///   `t + h → t + 2h`, whose solution is this step's `x`) left `v(x, t + h)` in `ws.k[0]`,
///   the predictor's first stage: the same bits as evaluating it, or after a corrected step
///   `v` one accepted Newton step away, which only moves the predictor by less than it misses.
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
    fallback: bool,
    ws: &mut Workspace,
) -> Result<(f64, Stats)> {
    ws.reserve_exact_discrete()?;
    let step = ForwardStep { field, times, h };
    let cached_stage = std::mem::take(&mut carry.first_stage);
    let cached_chord = std::mem::take(&mut carry.chord);
    let mut solve = Solve::start(x, carry, ws);
    let skip_chord = carry.predictor_error <= solve.correctable;
    let evaluate_chord = !cached_chord && !skip_chord;
    // Backward step (4 values) and the chord matrix (1 Jacobian), less what is cached or
    // skipped.
    solve.stats.n_eval = if cached_stage { 3 } else { 4 };
    solve.stats.n_jacobian = u64::from(evaluate_chord);
    step.predict(x, cached_stage, evaluate_chord, ws);
    if !skip_chord {
        step.chord_iteration(x, &mut solve, carry, ws);
    }
    // The chord matrix of the next step to invert (the step before this one), from this
    // step's stage Jacobians, if the contraction allows it and the next step is expected to
    // iterate (unused after the map's first step: 4n² operations).
    let extrapolate = !skip_chord && carry.rate <= MAX_RATE_FOR_EXTRAPOLATED_CHORD;
    let mut log_det = step.newton(x, extrapolate, &mut solve, carry, ws);
    let mut fell_back = false;
    if let Err(fast) = &log_det
        && fallback
        && matches!(
            fast,
            Error::NotConverged { .. } | Error::NotInvertible { .. }
        )
    {
        // The fast path failed (a stalled or diverging iteration, or an iterate where the
        // step Jacobian folds): start again from the predictor, globalised. A non-finite
        // field value is not retried: the field blew up, which is reported as such.
        x.copy_from_slice(&ws.predicted);
        log_det = step
            .damped_newton(x, &mut solve, ws)
            .map_err(|e| fallback_error(fast, e));
        fell_back = true;
        solve.stats.n_fallback += 1;
    }
    if log_det.is_ok() {
        carry.first_stage = true;
        // After a fallback the chord and its rate say nothing about the next step.
        carry.chord = extrapolate && !fell_back;
        if fell_back {
            carry.rate = f64::INFINITY;
        }
        carry.predictor_error = x
            .iter()
            .zip(&ws.predicted)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    }
    let stats = solve.finish(ws);
    log_det.map(|log_det| (log_det, stats))
}

/// The forward step `t → t + h` that [`inverse_step`] inverts, with its parts: the predictor,
/// the chord iteration and the full (Newton) steps.
struct ForwardStep<'a, F: ?Sized> {
    field: &'a F,
    /// Stage times (see [`grid_stage_times`]).
    times: [f64; 3],
    h: f64,
}

/// The state of one inverse step: buffers borrowed from the workspace until
/// [`Solve::finish`], the tolerances derived from the point to invert, and the counts.
struct Solve {
    /// The step's output, the point to invert.
    target: Vec<f64>,
    /// `Φ_h(y)` of the current iterate `y`.
    image: Vec<f64>,
    /// `Φ_h(y) − target`, then the correction subtracted from `y`.
    residual: Vec<f64>,
    /// `1 + ‖target‖∞`, the scale of round-off.
    scale: f64,
    /// A residual at round-off: converged.
    floor: f64,
    /// The Newton step the full step may leave for the first-order correction (0 until a
    /// correction was measured: then the chord iterates to round-off).
    correctable: f64,
    /// The step's solver counts so far.
    stats: Stats,
}

impl Solve {
    /// Starts inverting the step whose output is `x`.
    fn start(x: &[f64], carry: &InverseCarry, ws: &mut Workspace) -> Self {
        let mut target = std::mem::take(&mut ws.target);
        target.copy_from_slice(x);
        let scale = 1.0 + target.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        Solve {
            target,
            image: std::mem::take(&mut ws.trial),
            residual: std::mem::take(&mut ws.error),
            scale,
            floor: 64.0 * f64::EPSILON * scale,
            correctable: (MAX_CORRECTION / carry.sensitivity).min(MAX_CORRECTED_STEP * scale),
            stats: Stats::default(),
        }
    }

    /// Returns the buffers to the workspace; the counts of the step.
    fn finish(self, ws: &mut Workspace) -> Stats {
        ws.target = self.target;
        ws.trial = self.image;
        ws.error = self.residual;
        self.stats
    }
}

/// How a full step of [`inverse_step`] ended.
enum FullStep {
    /// With the log-determinant of the forward step at (or corrected to) the solution.
    Solved(f64),
    /// With a Newton step taken from an iterate with this residual (max norm).
    Stepped(f64),
}

impl<F: VectorField + ?Sized> ForwardStep<'_, F> {
    /// The predictor: one backward RK4 step from the output `x`, in place (O(h⁵) from the
    /// solution), also kept in `ws.predicted`. Its first stage is `ws.k[0]` as left by the
    /// step after this one if `cached_stage`; with `evaluate_chord` it leaves the chord
    /// matrix `h·∂v/∂x` in `ws.chord`.
    fn predict(&self, x: &mut [f64], cached_stage: bool, evaluate_chord: bool, ws: &mut Workspace) {
        let field = self.field;
        let back = [self.times[2], self.times[1], self.times[0]];
        // Without a cached chord matrix, the predictor's second middle stage evaluates the
        // Jacobian with its value (one field value fewer than a separate evaluation): its point
        // is O(h²) from the step's middle, so `h·J` there is O(h³) from `h·J` at the middle,
        // the order of P's own error. Other points for J cost more or contract worse (see
        // docs/numerics.md §"Exact density of the discrete RK4 map", inverse step 2).
        let mut jac = std::mem::take(&mut ws.jac);
        let mut jacobian_pending = evaluate_chord;
        let mut middle_seen = false;
        rk4::step_with(x, -self.h, ws, |y, time, v| {
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
        if evaluate_chord {
            scale_into(self.h, &jac, &mut ws.chord);
        }
        ws.jac = jac;
        ws.predicted.copy_from_slice(x);
    }

    /// The chord iteration `y ← y − P·(Φ_h(y) − x)` on `x` with the matrix in `ws.chord`
    /// ([`apply_inverse_exp`]): until the residual is at round-off or stops contracting, or
    /// the measured contraction (kept in `carry.rate`) predicts a Newton step the full step
    /// may leave for the correction.
    fn chord_iteration(
        &self,
        x: &mut [f64],
        solve: &mut Solve,
        carry: &mut InverseCarry,
        ws: &mut Workspace,
    ) {
        let n = x.len();
        let symmetric = self.field.symmetric_jacobian();
        // A stop on a predicted residual must leave room for the prediction's error.
        let predicted_floor = 0.25 * solve.floor;
        let chord_target = (solve.correctable / CHORD_MARGIN).max(predicted_floor);
        let mut previous = f64::INFINITY;
        for _ in 0..MAX_NEWTON {
            solve.image.copy_from_slice(x);
            rk4::step_values(self.field, &mut solve.image, self.times, self.h, ws);
            solve.stats.n_eval += 4;
            let norm = residual_into(&solve.image, &solve.target, &mut solve.residual, false);
            if previous.is_finite() && norm < 0.5 * previous {
                carry.rate = norm / previous;
            }
            if norm <= solve.floor || !norm.is_finite() || norm >= 0.5 * previous {
                break;
            }
            apply_inverse_exp(
                n,
                &ws.chord,
                symmetric,
                &mut solve.residual,
                &mut ws.stage,
                &mut ws.product,
            );
            subtract(x, &solve.residual);
            if norm * carry.rate <= chord_target {
                break;
            }
            previous = norm;
        }
    }

    /// Full steps from `x` until one ends the solve; returns the log-determinant of the forward
    /// step at (or corrected to) the solution. With `extrapolate`, the ending step leaves the
    /// next step's chord matrix in `ws.chord`.
    fn newton(
        &self,
        x: &mut [f64],
        extrapolate: bool,
        solve: &mut Solve,
        carry: &mut InverseCarry,
        ws: &mut Workspace,
    ) -> Result<f64> {
        let mut previous = f64::INFINITY;
        for _ in 0..MAX_NEWTON {
            match self.full_step(x, previous, extrapolate, solve, carry, ws)? {
                FullStep::Solved(log_det) => return Ok(log_det),
                FullStep::Stepped(norm) => previous = norm,
            }
        }
        Err(Error::NotConverged {
            what: format!(
                "inverse of the RK4 step at t = {} did not converge in {MAX_NEWTON} Newton \
                 iterations; the step may not be invertible here (use more steps)",
                self.times[0]
            ),
            residual: previous,
        })
    }

    /// The fallback of [`inverse_step`] when its fast path fails: Newton's method on
    /// `Φ_h(y) = x` globalised by a backtracking line search on the residual's 2-norm, started
    /// from the predictor (on entry in `x`). Each iteration evaluates the step with its
    /// Jacobian at y and tries the Newton step `−J⁻¹r`, halving it until the residual
    /// decreases (Armijo); where J is singular or the Newton direction finds no decrease, the
    /// fixed-point step `−r` (that is `y ← x − Δ(y)`, a contraction wherever the increment's
    /// Lipschitz constant is below 1, which `StepCertificate::max_increment_lipschitz`
    /// bounds) is tried the same way.
    /// It never fails at an intermediate iterate whose Jacobian folds (the fast path does).
    ///
    /// What it returns is proved by its end: the residual `‖Φ_h(y) − x‖∞` at the returned y is
    /// at round-off (the floor of the fast path), so y is a preimage of this exact step, and
    /// the log-determinant is that of the step Jacobian at y, which must be positive (else
    /// [`Error::NotInvertible`]: the step folds at its preimage). Whether y is the only
    /// preimage is what the step certificate answers, not this solve.
    fn damped_newton(&self, x: &mut [f64], solve: &mut Solve, ws: &mut Workspace) -> Result<f64> {
        let n = x.len();
        let t = self.times[0];
        let mut merit = f64::INFINITY;
        let mut norm = f64::INFINITY;
        for _ in 0..MAX_FALLBACK_ITERATIONS {
            let computed = step_and_jacobian(
                self.field,
                x,
                self.times,
                self.h,
                &mut solve.image,
                false,
                false,
                ws,
            );
            solve.stats.n_eval += 4;
            solve.stats.n_jacobian += 4;
            solve.stats.n_newton += 1;
            norm = residual_into(&solve.image, &solve.target, &mut solve.residual, true);
            if !norm.is_finite() {
                return Err(Error::non_finite(format!(
                    "inverse RK4 step at t = {t}: the damped Newton residual is not finite"
                )));
            }
            computed?;
            merit = two_norm(&solve.residual);
            let (log_abs, sign) = lu_factor(n, &mut ws.step_jac, &mut ws.pivots);
            if norm <= solve.floor {
                if sign <= 0.0 || !log_abs.is_finite() {
                    return Err(Error::NotInvertible {
                        what: format!(
                            "the RK4 step at t = {t} has a Jacobian with determinant sign \
                             {sign} at the preimage the damped Newton fallback found: the \
                             step folds there (use more steps)"
                        ),
                    });
                }
                return Ok(log_abs);
            }
            // Directions: Newton where J is regular, then the fixed-point step.
            ws.product.copy_from_slice(&solve.residual);
            let mut stepped = false;
            for newton in [true, false] {
                if newton {
                    if sign == 0.0 || !log_abs.is_finite() {
                        continue;
                    }
                    lu_solve(n, &ws.step_jac, &ws.pivots, &mut solve.residual);
                } else {
                    solve.residual.copy_from_slice(&ws.product);
                }
                if self.line_search(x, merit, solve, ws) {
                    stepped = true;
                    break;
                }
            }
            if !stepped {
                // No direction decreases the residual: at round-off already, or stuck.
                if norm <= STALLED_RESIDUAL * solve.scale {
                    let (log_abs, sign) = self.log_det_at(x, solve, ws)?;
                    if sign > 0.0 && log_abs.is_finite() {
                        return Ok(log_abs);
                    }
                }
                break;
            }
        }
        Err(Error::NotConverged {
            what: format!(
                "inverse of the RK4 step at t = {t}: the damped Newton fallback stopped with \
                 residual 2-norm {merit:e}; the step may not be invertible here (use more steps)"
            ),
            residual: norm,
        })
    }

    /// Tries `y − λ·d` (d in `solve.residual`) for λ = 1, 1/2, … until the residual 2-norm
    /// falls below `(1 − 10⁻⁴λ)·merit` (Armijo for the Newton direction); on success `x` is
    /// moved there. Field values only.
    fn line_search(
        &self,
        x: &mut [f64],
        merit: f64,
        solve: &mut Solve,
        ws: &mut Workspace,
    ) -> bool {
        let mut lambda = 1.0;
        for _ in 0..MAX_HALVINGS {
            for ((y, x), d) in ws.stage.iter_mut().zip(x.iter()).zip(&solve.residual) {
                *y = x - lambda * d;
            }
            solve.image.copy_from_slice(&ws.stage);
            let mut trial = std::mem::take(&mut solve.image);
            rk4::step_values(self.field, &mut trial, self.times, self.h, ws);
            solve.image = trial;
            solve.stats.n_eval += 4;
            let merit_trial = solve
                .image
                .iter()
                .zip(&solve.target)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>()
                .sqrt();
            if merit_trial <= (1.0 - 1e-4 * lambda) * merit {
                for (x, d) in x.iter_mut().zip(&solve.residual) {
                    *x -= lambda * d;
                }
                return true;
            }
            lambda *= 0.5;
        }
        false
    }

    /// The step Jacobian's `(log|det|, sign)` at `x`, checking the residual once more.
    fn log_det_at(&self, x: &[f64], solve: &mut Solve, ws: &mut Workspace) -> Result<(f64, f64)> {
        step_and_jacobian(
            self.field,
            x,
            self.times,
            self.h,
            &mut solve.image,
            false,
            false,
            ws,
        )?;
        solve.stats.n_eval += 4;
        solve.stats.n_jacobian += 4;
        let norm = residual_into(&solve.image, &solve.target, &mut solve.residual, true);
        if norm.is_nan() || norm > STALLED_RESIDUAL * solve.scale {
            return Ok((f64::NAN, 0.0));
        }
        Ok(lu_factor(x.len(), &mut ws.step_jac, &mut ws.pivots))
    }

    /// One full step at the iterate `x`: `Φ_h(x)` with the step Jacobian, factored. Ends the
    /// solve with the log-determinant if the residual is at round-off (`previous`, the last
    /// full step's residual, ∞ at the first, tells a stall) and the log-determinant needs no
    /// correction, or if the Newton step `Δ` is small enough to be corrected for (see
    /// [`inverse_step`]); otherwise takes the Newton step.
    fn full_step(
        &self,
        x: &mut [f64],
        previous: f64,
        extrapolate: bool,
        solve: &mut Solve,
        carry: &mut InverseCarry,
        ws: &mut Workspace,
    ) -> Result<FullStep> {
        let n = x.len();
        let t = self.times[0];
        let image = &mut solve.image;
        let computed = step_and_jacobian(
            self.field,
            x,
            self.times,
            self.h,
            image,
            extrapolate,
            true,
            ws,
        );
        solve.stats.n_eval += 4;
        solve.stats.n_jacobian += 4;
        solve.stats.n_newton += 1;
        let norm = residual_into(&solve.image, &solve.target, &mut solve.residual, true);
        if !norm.is_finite() {
            return Err(Error::non_finite(format!(
                "inverse RK4 step at t = {t}: residual is not finite (the field blew up)"
            )));
        }
        let has_gradient = computed?;
        let log_det = factor_step(ws, n, t)?;
        // Converged at round-off, or stalled at the round-off floor after a real descent.
        let converged =
            norm <= solve.floor || (norm >= 0.5 * previous && norm <= 1e-11 * solve.scale);
        if converged && !has_gradient {
            return Ok(FullStep::Solved(log_det));
        }
        // The Newton step Δ (in `residual`), and whether the correction may stand for it.
        lu_solve(n, &ws.step_jac, &ws.pivots, &mut solve.residual);
        let (step, c, gradient_norm) = newton_correction(&solve.residual, &ws.quadrature_gradient);
        if has_gradient && !c.is_finite() {
            return Err(Error::non_finite(format!(
                "inverse RK4 step at t = {t}: the gradient of the divergence is not finite \
                 (the field blew up)"
            )));
        }
        let correct = has_gradient
            && step <= MAX_CORRECTED_STEP * solve.scale
            && gradient_norm * step <= MAX_CORRECTION;
        if converged && !correct {
            // At round-off but too steep a log-determinant to correct: taken where it is.
            return Ok(FullStep::Solved(log_det));
        }
        subtract(x, &solve.residual);
        if correct {
            solve.stats.n_corrected += 1;
            carry.sensitivity = gradient_norm;
            return Ok(FullStep::Solved(log_det - c));
        }
        Ok(FullStep::Stepped(norm))
    }
}

/// The fallback's error `e`, its message extended by the fast path's failure `fast`.
fn fallback_error(fast: &Error, e: Error) -> Error {
    let extend = |what: String| format!("{what}; before it, the fast inverse: {fast}");
    match e {
        Error::NotConverged { what, residual } => Error::NotConverged {
            what: extend(what),
            residual,
        },
        Error::NotInvertible { what } => Error::NotInvertible { what: extend(what) },
        Error::NonFinite { what } => Error::NonFinite { what: extend(what) },
        other => other,
    }
}

/// `y ← y − d`, one step of either iteration of [`inverse_step`].
fn subtract(y: &mut [f64], d: &[f64]) {
    for (y, d) in y.iter_mut().zip(d) {
        *y -= d;
    }
}

/// The max norm of the Newton step `delta`, the first-order change of the step
/// log-determinant it undoes, `∇L·delta`, and `‖∇L‖₁` (the last two meaningful only where
/// `gradient` was computed).
fn newton_correction(delta: &[f64], gradient: &[f64]) -> (f64, f64, f64) {
    let step = delta.iter().fold(0.0f64, |m, d| m.max(d.abs()));
    let c = gradient.iter().zip(delta).map(|(g, d)| g * d).sum();
    let norm = gradient.iter().map(|g| g.abs()).sum();
    (step, c, norm)
}

/// The Euclidean norm of `v`.
fn two_norm(v: &[f64]) -> f64 {
    v.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// `residual = image − target`, returning its max norm: the convergence test of both loops of
/// [`inverse_step`]. With `strict`, NaN if any component is NaN (`f64::max` alone skips NaNs,
/// and a residual of NaNs would pass for converged): the full step's acceptance test. The chord
/// loop does without (the check costs density time; see docs/numerics.md §"Exact density of
/// the discrete RK4 map"): a NaN there reaches the full step that follows.
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
    // Horner: r − A(r − A r/2). (No cubic term −A³/6: the O(h³) variation of J along the
    // step dominates P's error; see docs/numerics.md, inverse step 2.)
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
    inverse_with(field, x, n_steps, true, ws)
}

/// [`inverse`], with or without the damped Newton fallback of each step (without: the fast
/// path alone, as before the fallback existed, for tests that show what it rescues).
pub(crate) fn inverse_with<F: VectorField + ?Sized>(
    field: &F,
    x: &mut [f64],
    n_steps: usize,
    fallback: bool,
    ws: &mut Workspace,
) -> Result<(f64, Stats)> {
    let h = 1.0 / n_steps as f64;
    let mut log_det = 0.0;
    let mut stats = Stats::default();
    let mut carry = InverseCarry::new();
    for i in (0..n_steps).rev() {
        let times = grid_stage_times(i, n_steps, true);
        let (ld, step_stats) = inverse_step(field, x, times, h, &mut carry, fallback, ws)?;
        log_det += ld;
        stats += step_stats;
    }
    stats.n_steps = n_steps as u64;
    Ok((log_det, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::{KernelConfig, KernelField, TabulatedField};
    use crate::geometry::Layout;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const N_STEPS: usize = 20;

    fn presets() -> [(usize, usize, KernelConfig); 2] {
        [
            (4, 2, KernelConfig::double_well()),
            (13, 3, KernelConfig::lennard_jones()),
        ]
    }

    /// The step's log-determinant and its divergence quadrature L at `y`, and ∇L.
    fn step_quantities<F: VectorField + ?Sized>(
        field: &F,
        y: &[f64],
        step_index: usize,
        ws: &mut Workspace,
    ) -> (f64, f64, Vec<f64>) {
        let h = 1.0 / N_STEPS as f64;
        let times = grid_stage_times(step_index, N_STEPS, true);
        let mut out = vec![0.0; y.len()];
        assert!(step_and_jacobian(field, y, times, h, &mut out, false, true, ws).unwrap());
        let gradient = ws.quadrature_gradient.clone();
        let log_det = factor_step(ws, y.len(), times[0]).unwrap();
        let mut z = y.to_vec();
        let quadrature = rk4::step(field, &mut z, times, h, ws);
        assert_eq!(z, out, "the same map");
        (log_det, quadrature, gradient)
    }

    /// Central differences of the log-determinant and of L along every coordinate.
    fn fd_gradients<F: VectorField + ?Sized>(
        field: &F,
        y: &[f64],
        step_index: usize,
        ws: &mut Workspace,
    ) -> (Vec<f64>, Vec<f64>) {
        let eps = 1e-5;
        let mut p = y.to_vec();
        let (mut g_log_det, mut g_quadrature) = (vec![0.0; y.len()], vec![0.0; y.len()]);
        for b in 0..y.len() {
            p[b] = y[b] + eps;
            let (ld_up, q_up, _) = step_quantities(field, &p, step_index, ws);
            p[b] = y[b] - eps;
            let (ld_down, q_down, _) = step_quantities(field, &p, step_index, ws);
            p[b] = y[b];
            g_log_det[b] = (ld_up - ld_down) / (2.0 * eps);
            g_quadrature[b] = (q_up - q_down) / (2.0 * eps);
        }
        (g_log_det, g_quadrature)
    }

    fn l1(v: impl Iterator<Item = f64>) -> f64 {
        v.map(f64::abs).sum()
    }

    /// ∇L, assembled from `∇ div v` at the stages through the stage derivatives, against
    /// central differences of L itself, for the exact and the tabulated field.
    #[test]
    fn quadrature_gradient_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for (n, dim, kernels) in presets() {
            let layout = Layout::new(n, dim).unwrap();
            let field = KernelField::initialise(layout, kernels, 1).unwrap();
            let tabulated = TabulatedField::new(&field, &rk4::rk4_stage_times(N_STEPS)).unwrap();
            let mut ws = Workspace::new(layout.len());
            for trial in 0..4 {
                let y: Vec<f64> = (0..layout.len())
                    .map(|_| rng.random_range(-1.5..1.5))
                    .collect();
                let step_index = 5 * trial;
                for f in [&field as &dyn VectorField, &tabulated] {
                    let (_, _, gradient) = step_quantities(f, &y, step_index, &mut ws);
                    let (_, fd) = fd_gradients(f, &y, step_index, &mut ws);
                    let err = l1(gradient.iter().zip(&fd).map(|(a, b)| a - b));
                    assert!(
                        err < 1e-6 * l1(fd.iter().copied()).max(1.0),
                        "{n} particles, step {step_index}: ‖∇L − FD‖₁ = {err:e}"
                    );
                }
            }
        }
    }

    /// ρ = ‖∇ log det − ∇L‖₁ / ‖∇L‖₁, the relative error of the first-order correction per
    /// unit step (see [`MAX_CORRECTION`]), on both presets: O(h⁴) small, larger for LJ-13's
    /// narrow time kernels. The bounds are about ten times the maxima measured (see
    /// docs/numerics.md, inverse step 4).
    #[test]
    fn quadrature_gradient_approximates_the_log_determinant_gradient() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        for ((n, dim, kernels), bound) in presets().into_iter().zip([5e-6, 2e-3]) {
            let layout = Layout::new(n, dim).unwrap();
            let field = KernelField::initialise(layout, kernels, 0).unwrap();
            let mut ws = Workspace::new(layout.len());
            let mut worst = 0.0f64;
            for trial in 0..N_STEPS {
                let y: Vec<f64> = (0..layout.len())
                    .map(|_| rng.random_range(-1.5..1.5))
                    .collect();
                let (_, _, gradient) = step_quantities(&field, &y, trial, &mut ws);
                let (fd_log_det, _) = fd_gradients(&field, &y, trial, &mut ws);
                let rho = l1(fd_log_det.iter().zip(&gradient).map(|(a, b)| a - b))
                    / l1(gradient.iter().copied());
                worst = worst.max(rho);
            }
            eprintln!("{n} particles: ρ at most {worst:.1e}");
            assert!(worst < bound, "{n} particles: ρ = {worst:e}");
        }
    }
}

#[cfg(test)]
mod fallback_tests {
    use super::*;
    use crate::field::{KernelConfig, KernelField};
    use crate::geometry::Layout;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A stiff DW-4 field (the initial weights times 8, 10 RK4 steps): the fast path fails on
    /// some of the map's own images, which the fallback pulls back to their latents, with the
    /// forward map's log-determinant; where the fast path succeeds, the fallback changes nothing.
    #[test]
    fn damped_newton_fallback_inverts_what_the_fast_path_fails_on() {
        let layout = Layout::new(4, 2).unwrap();
        let n_steps = 10;
        let mut field = KernelField::initialise(layout, KernelConfig::double_well(), 3).unwrap();
        let mut p = field.params().to_vec();
        p[field.param_layout().w()]
            .iter_mut()
            .for_each(|v| *v *= 8.0);
        field.set_params(&p).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut ws = Workspace::new(layout.len());
        let mut rescued = 0;
        for _ in 0..400 {
            let mut z: Vec<f64> = (0..8).map(|_| rng.random_range(-2.0..2.0)).collect();
            crate::geometry::remove_center_of_mass(&mut z, 2);
            let mut x = z.clone();
            let (log_det, _) = forward(&field, &mut x, n_steps, &mut ws).unwrap();
            let mut fast = x.clone();
            let fast_result = inverse_with(&field, &mut fast, n_steps, false, &mut ws);
            let mut robust = x.clone();
            let (robust_log_det, stats) =
                inverse_with(&field, &mut robust, n_steps, true, &mut ws).unwrap();
            match fast_result {
                Ok((fast_log_det, _)) => {
                    assert_eq!(stats.n_fallback, 0);
                    assert_eq!(fast, robust);
                    assert_eq!(fast_log_det, robust_log_det);
                }
                Err(e) => {
                    assert!(
                        matches!(e, Error::NotConverged { .. } | Error::NotInvertible { .. }),
                        "{e}"
                    );
                    assert!(stats.n_fallback >= 1);
                    rescued += 1;
                    let err = robust
                        .iter()
                        .zip(&z)
                        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
                    assert!(err < 1e-9, "latent off by {err:e}");
                    assert!(
                        (robust_log_det - log_det).abs() < 1e-8,
                        "{robust_log_det} vs {log_det}"
                    );
                }
            }
        }
        assert!(
            rescued >= 1,
            "the field is not stiff enough to test the fallback"
        );
    }

    /// Where a configuration has no preimage (or none the iteration can reach) the fallback
    /// cannot make one up: one RK4 step of size 1 of a field so stiff that it folds (the
    /// initial DW-4 weights times 4) fails on some random points, with a typed error naming
    /// the fallback, and what it returns elsewhere is a preimage with its log-determinant.
    #[test]
    fn the_fallback_fails_typed_where_it_cannot_converge() {
        const SCALE: f64 = 4.0;
        let layout = Layout::new(4, 2).unwrap();
        let mut field = KernelField::initialise(layout, KernelConfig::double_well(), 3).unwrap();
        let mut p = field.params().to_vec();
        p[field.param_layout().w()]
            .iter_mut()
            .for_each(|v| *v *= SCALE);
        field.set_params(&p).unwrap();
        let mut ws = Workspace::new(layout.len());
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut n_failed = 0;
        for _ in 0..400 {
            let mut x: Vec<f64> = (0..8).map(|_| rng.random_range(-2.0..2.0)).collect();
            crate::geometry::remove_center_of_mass(&mut x, 2);
            let target = x.clone();
            match inverse_with(&field, &mut x, 1, true, &mut ws) {
                Ok((log_det, _)) => {
                    // Whatever it returns is a preimage with its log-determinant.
                    let (ld, _) = forward(&field, &mut x, 1, &mut ws).unwrap();
                    let err = x
                        .iter()
                        .zip(&target)
                        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
                    assert!(err < 1e-9, "not a preimage: {err:e}");
                    assert!((ld - log_det).abs() < 1e-8);
                }
                Err(e) => {
                    n_failed += 1;
                    assert!(
                        matches!(
                            e,
                            Error::NotConverged { .. }
                                | Error::NotInvertible { .. }
                                | Error::NonFinite { .. }
                        ),
                        "{e}"
                    );
                    assert!(e.to_string().contains("fallback"), "{e}");
                }
            }
        }
        eprintln!("{n_failed} of 400 failed");
        assert!(n_failed > 0);
    }
}
