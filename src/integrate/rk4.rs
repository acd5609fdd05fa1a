//! Classical fixed-grid Runge–Kutta 4 on the augmented state (x, ℓ), `dℓ/dt = div v`.

use super::Workspace;
use crate::field::VectorField;

/// One RK4 step with step `h` (negative integrates backwards), in place, evaluating the field
/// at `times` = (start, middle, end) of the step (see [`grid_stage_times`]).
/// Returns the increment of ℓ, `h/6·(div₁ + 2div₂ + 2div₃ + div₄)`. (Solves go through
/// [`integrate_with`]; tests take single steps.)
#[cfg(test)]
pub(crate) fn step<F: VectorField + ?Sized>(
    field: &F,
    x: &mut [f64],
    times: [f64; 3],
    h: f64,
    ws: &mut Workspace,
) -> f64 {
    step_with(x, h, ws, |y, stage_time, v| {
        field.velocity_into(y, times[stage_time], v)
    })
}

/// As [`step`] for `x` alone, without the divergences: the same bits in `x`, cheaper. For the
/// iterative solves of the exact-discrete inverse.
pub(crate) fn step_values<F: VectorField + ?Sized>(
    field: &F,
    x: &mut [f64],
    times: [f64; 3],
    h: f64,
    ws: &mut Workspace,
) {
    step_with(x, h, ws, |y, stage_time, v| {
        field.velocity_only_into(y, times[stage_time], v);
        0.0
    });
}

/// The times at which step `i` of a grid of `n_steps` RK4 steps on [0, 1] evaluates the field,
/// in the order of integration: forward `[t_i, t_i + h/2, t_{i+1}]`, backward the reverse.
///
/// Every fixed-grid solve in either direction and mode (and the training tape) takes its times
/// from here, so one step's times are the same bits whichever way it is taken, and the end of
/// one step is the start of the next: a grid has only `2·n_steps + 1` distinct times, the
/// tables of the tabulated field.
#[inline]
pub(crate) fn grid_stage_times(i: usize, n_steps: usize, forward: bool) -> [f64; 3] {
    let start = grid_time(i, n_steps);
    let end = grid_time(i + 1, n_steps);
    let middle = start + 0.5 / n_steps as f64;
    if forward {
        [start, middle, end]
    } else {
        [end, middle, start]
    }
}

/// Every time at which the RK4 integrations of a grid of `n_steps` steps on [0, 1] evaluate the
/// field, sorted and without duplicates: the times worth tabulating.
#[must_use]
pub fn rk4_stage_times(n_steps: usize) -> Vec<f64> {
    let mut times: Vec<f64> = (0..n_steps)
        .flat_map(|i| grid_stage_times(i, n_steps, true))
        .collect();
    times.sort_by(f64::total_cmp);
    times.dedup_by(|a, b| a.to_bits() == b.to_bits());
    times
}

/// One RK4 step with the field evaluations supplied by `eval(y, i, v) -> div`, where `i`
/// indexes the step's stage times (start, middle, end; see [`grid_stage_times`]): lets a
/// caller reuse per-time work (the training tape's folded time bases) while doing exactly the
/// arithmetic of [`step`].
pub(crate) fn step_with<E>(x: &mut [f64], h: f64, ws: &mut Workspace, mut eval: E) -> f64
where
    E: FnMut(&[f64], usize, &mut [f64]) -> f64,
{
    let [k1, k2, k3, k4, ..] = &mut ws.k;
    let stage = &mut ws.stage;
    let half = 0.5 * h;
    let div1 = eval(x, 0, k1);
    axpy_into(stage, x, half, k1);
    let div2 = eval(stage, 1, k2);
    axpy_into(stage, x, half, k2);
    let div3 = eval(stage, 1, k3);
    axpy_into(stage, x, h, k3);
    let div4 = eval(stage, 2, k4);
    let sixth = h / 6.0;
    for i in 0..x.len() {
        x[i] += sixth * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
    }
    sixth * (div1 + 2.0 * div2 + 2.0 * div3 + div4)
}

/// `out = x + a·k`.
#[inline]
pub(crate) fn axpy_into(out: &mut [f64], x: &[f64], a: f64, k: &[f64]) {
    for ((o, x), k) in out.iter_mut().zip(x).zip(k) {
        *o = x + a * k;
    }
}

/// The time of grid point `i` of `n_steps` on [0, 1]; forward and inverse use the same bits.
#[inline]
pub(crate) fn grid_time(i: usize, n_steps: usize) -> f64 {
    i as f64 / n_steps as f64
}

/// The steps of a fixed-grid integration of `n_steps` steps in the order they are taken:
/// each step's stage times ([`grid_stage_times`]) and its signed step size (negative
/// backwards, from t = 1 to 0).
pub(crate) fn grid_steps(n_steps: usize, forward: bool) -> impl Iterator<Item = ([f64; 3], f64)> {
    let h = 1.0 / n_steps as f64;
    (0..n_steps).map(move |s| {
        if forward {
            (grid_stage_times(s, n_steps, true), h)
        } else {
            (grid_stage_times(n_steps - 1 - s, n_steps, false), -h)
        }
    })
}

/// Watches a fixed-grid RK4 integration step by step, in the order the steps are taken (the
/// training tape records the trajectory it later differentiates).
pub(crate) trait StepObserver {
    /// Before step `s` (0-based, in order of execution), with the state at its start.
    fn before_step(&mut self, s: usize, x: &[f64]);
    /// After step `s` of signed size `h`, with the step's stage velocities `k1…k4`.
    fn after_step(&mut self, s: usize, h: f64, k: &[Vec<f64>]);
}

/// Observes nothing.
pub(crate) struct Unobserved;

impl StepObserver for Unobserved {
    fn before_step(&mut self, _: usize, _: &[f64]) {}
    fn after_step(&mut self, _: usize, _: f64, _: &[Vec<f64>]) {}
}

/// The one fixed-grid RK4 loop: integrates from t = 0 to 1 (`forward`) or from 1 to 0 over
/// [`grid_steps`], evaluating the field by `eval(y, s, times, i, v) -> div` (step `s` in order
/// of execution, its stage times, the stage-time index `i` as in [`step_with`]) and telling
/// `observer` about every step. Returns ℓ(end) − ℓ(start). The continuous mode and the
/// training tape both run this loop, so they apply the same map bit for bit by construction.
pub(crate) fn integrate_with<E, O>(
    x: &mut [f64],
    n_steps: usize,
    forward: bool,
    ws: &mut Workspace,
    mut eval: E,
    observer: &mut O,
) -> f64
where
    E: FnMut(&[f64], usize, [f64; 3], usize, &mut [f64]) -> f64,
    O: StepObserver + ?Sized,
{
    let mut log_det = 0.0;
    for (s, (times, h)) in grid_steps(n_steps, forward).enumerate() {
        observer.before_step(s, x);
        log_det += step_with(x, h, ws, |y, i, v| eval(y, s, times, i, v));
        observer.after_step(s, h, &ws.k);
    }
    log_det
}

/// Integrates from t = 0 to 1 (`forward`) or from 1 to 0, returning ℓ(end) − ℓ(start).
pub(crate) fn integrate<F: VectorField + ?Sized>(
    field: &F,
    x: &mut [f64],
    n_steps: usize,
    forward: bool,
    ws: &mut Workspace,
) -> f64 {
    integrate_with(
        x,
        n_steps,
        forward,
        ws,
        |y, _, times, i, v| field.velocity_into(y, times[i], v),
        &mut Unobserved,
    )
}
