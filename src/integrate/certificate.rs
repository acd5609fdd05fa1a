//! A certificate that every step of a fixed-grid RK4 map is a bijection of configuration
//! space, from a global Lipschitz bound `L(t)` of the field (each field family provides one:
//! `FieldFamily::lipschitz_bound`).
//!
//! One RK4 step is `Φ_h(y) = y + Δ(y)` with the increment `Δ = h/6·(k1 + 2k2 + 2k3 + k4)`.
//! With `L₁, L₂, L₄` the bounds at the step's stage times (start, middle, end), the stages'
//! Lipschitz constants are bounded by
//!
//! ```text
//! ℓ1 = L₁    ℓ2 = L₂(1 + |h|/2·ℓ1)    ℓ3 = L₂(1 + |h|/2·ℓ2)    ℓ4 = L₄(1 + |h|·ℓ3)
//! Lip(Δ) ≤ c = |h|/6·(ℓ1 + 2ℓ2 + 2ℓ3 + ℓ4)
//! ```
//!
//! If `c < 1`, Φ_h is a bijection of R^n: injective because `|Φ_h(y) − Φ_h(y')| ≥ (1 − c)|y − y'|`,
//! and onto because `y = x − Δ(y)` is a contraction in y for every x (Banach's fixed point),
//! whose fixed point the exact-discrete inverse finds. Then the push-forward density is the
//! single-preimage formula the exact-discrete mode evaluates. The step is the same map in both
//! directions of integration, so one certificate covers sampling and density evaluation.
//!
//! What it proves depends on the bound: for the kernel field `L(t)` comes from a sampled
//! maximum with a slope margin (see `field::kernel`), not interval arithmetic.

use std::cell::RefCell;
use std::collections::HashMap;

use super::rk4::grid_stage_times;

/// The certificate of an RK4 grid: the largest increment contraction bound over its steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCertificate {
    /// Steps of the grid on [0, 1].
    pub n_steps: usize,
    /// `max_steps c`, the bound on `Lip(Δ)` of the worst step (see the module docs).
    pub max_contraction: f64,
    /// Start time of the worst step.
    pub worst_step_start: f64,
    /// The largest field bound `L(t)` met at the grid's stage times.
    pub max_lipschitz: f64,
}

impl StepCertificate {
    /// True when every step is certified to be a bijection (`max_contraction < 1`).
    #[must_use]
    pub fn is_certified(&self) -> bool {
        self.max_contraction < 1.0
    }
}

/// The bound `c` on the Lipschitz constant of one RK4 step's increment, from the field
/// bounds at its start, middle and end times and its step size `h`.
#[must_use]
pub fn increment_bound(l_start: f64, l_middle: f64, l_end: f64, h: f64) -> f64 {
    let h = h.abs();
    let l1 = l_start;
    let l2 = l_middle * (1.0 + 0.5 * h * l1);
    let l3 = l_middle * (1.0 + 0.5 * h * l2);
    let l4 = l_end * (1.0 + h * l3);
    h / 6.0 * (l1 + 2.0 * l2 + 2.0 * l3 + l4)
}

/// [`increment_bound`] and its partial derivatives with respect to `l_start`, `l_middle` and
/// `l_end` (the reverse of its recurrence).
#[must_use]
pub fn increment_bound_gradient(
    l_start: f64,
    l_middle: f64,
    l_end: f64,
    h: f64,
) -> (f64, [f64; 3]) {
    let h = h.abs();
    let l1 = l_start;
    let l2 = l_middle * (1.0 + 0.5 * h * l1);
    let l3 = l_middle * (1.0 + 0.5 * h * l2);
    let l4 = l_end * (1.0 + h * l3);
    let c = h / 6.0 * (l1 + 2.0 * l2 + 2.0 * l3 + l4);
    let (mut b1, mut b2, mut b3, b4) = (h / 6.0, h / 3.0, h / 3.0, h / 6.0);
    let end_bar = b4 * (1.0 + h * l3);
    b3 += b4 * l_end * h;
    let mut middle_bar = b3 * (1.0 + 0.5 * h * l2);
    b2 += b3 * l_middle * 0.5 * h;
    middle_bar += b2 * (1.0 + 0.5 * h * l1);
    b1 += b2 * l_middle * 0.5 * h;
    (c, [b1, middle_bar, end_bar])
}

/// The distinct stage times of the RK4 grid of `n_steps` steps on [0, 1], in order: step s
/// starts at `[2s]`, has its middle at `[2s + 1]` and ends at `[2s + 2]`.
#[must_use]
pub fn certificate_times(n_steps: usize) -> Vec<f64> {
    let n = n_steps.max(1);
    let mut times = Vec::with_capacity(2 * n + 1);
    for s in 0..n {
        let [t0, tm, _] = grid_stage_times(s, n, true);
        times.extend([t0, tm]);
    }
    times.push(grid_stage_times(n - 1, n, true)[2]);
    times
}

/// The certificate penalty of field bounds `l` at [`certificate_times`]`(n_steps)`:
/// `P = Σ_steps max(0, c_s − target)²` with `c_s` the step's [`increment_bound`], and `∂P/∂l`
/// (same length as `l`). Zero exactly when every step's bound is at most `target`; with
/// `target < 1` a field that a training loop keeps at P = 0 stays certified with a margin.
#[must_use]
pub fn certificate_penalty(l: &[f64], n_steps: usize, target: f64) -> (f64, Vec<f64>) {
    let n = n_steps.max(1);
    let h = 1.0 / n as f64;
    let mut value = 0.0;
    let mut l_bar = vec![0.0; l.len()];
    for s in 0..n {
        let (c, dc) = increment_bound_gradient(l[2 * s], l[2 * s + 1], l[2 * s + 2], h);
        let excess = c - target;
        if excess > 0.0 {
            value += excess * excess;
            for (i, d) in dc.iter().enumerate() {
                l_bar[2 * s + i] += 2.0 * excess * d;
            }
        }
    }
    (value, l_bar)
}

/// Certifies the RK4 grid of `n_steps` steps on [0, 1] for a field whose bounds at a list of
/// times are `bounds(times)`; asks for the 2·n_steps + 1 distinct stage times at once.
#[must_use]
pub fn certify_rk4(bounds: &dyn Fn(&[f64]) -> Vec<f64>, n_steps: usize) -> StepCertificate {
    let n = n_steps.max(1);
    let h = 1.0 / n as f64;
    let times = certificate_times(n);
    let l = bounds(&times);
    let mut cert = StepCertificate {
        n_steps: n,
        max_contraction: 0.0,
        worst_step_start: 0.0,
        max_lipschitz: 0.0,
    };
    for s in 0..n {
        let (l0, lm, l1) = (l[2 * s], l[2 * s + 1], l[2 * s + 2]);
        let c = increment_bound(l0, lm, l1, h);
        cert.max_lipschitz = cert.max_lipschitz.max(l0).max(lm).max(l1);
        // NaN never certifies: it must not be skipped by max().
        if c.is_nan() || c > cert.max_contraction {
            cert.max_contraction = if c.is_nan() { f64::INFINITY } else { c };
            cert.worst_step_start = times[2 * s];
        }
    }
    cert
}

/// The smallest step count in `1..=max_steps` whose grid is certified, if any. Finer grids
/// need not be certified monotonically (their stage times differ), so this searches by
/// doubling and then bisection between an uncertified and a certified count, and returns a
/// count that is certified. Bounds are computed once per distinct time.
#[must_use]
pub fn steps_needed(bounds: &dyn Fn(&[f64]) -> Vec<f64>, max_steps: usize) -> Option<usize> {
    let cache = RefCell::new(HashMap::<u64, f64>::new());
    let cached = |times: &[f64]| {
        let missing: Vec<f64> = {
            let cache = cache.borrow();
            times
                .iter()
                .copied()
                .filter(|t| !cache.contains_key(&t.to_bits()))
                .collect()
        };
        if !missing.is_empty() {
            let values = bounds(&missing);
            let mut cache = cache.borrow_mut();
            for (t, v) in missing.iter().zip(values) {
                cache.insert(t.to_bits(), v);
            }
        }
        let cache = cache.borrow();
        times.iter().map(|t| cache[&t.to_bits()]).collect()
    };
    let certified = |n: usize| certify_rk4(&cached, n).is_certified();
    let mut hi = 1;
    while !certified(hi) {
        if hi >= max_steps {
            return None;
        }
        hi = (2 * hi).min(max_steps);
    }
    let mut lo = hi / 2; // uncertified (or 0)
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if certified(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linear_field_certifies_exactly_when_its_step_is_a_contraction() {
        // v = −L·x has Lipschitz constant L everywhere and its RK4 increment is
        // (p(−hL) − 1)·x with p the degree-4 Taylor polynomial of exp; the bound c is
        // hL + (hL)²/2 + (hL)³/6 + (hL)⁴/24 = p(hL) − 1 ≥ |p(−hL) − 1|: exact for v = +L·x.
        for l in [0.5, 3.0, 40.0] {
            let cert = certify_rk4(&|t: &[f64]| vec![l; t.len()], 10);
            let x = l / 10.0;
            let expected = x + x * x / 2.0 + x * x * x / 6.0 + x * x * x * x / 24.0;
            assert!((cert.max_contraction - expected).abs() < 1e-12 * expected);
            assert_eq!(cert.max_lipschitz, l);
        }
        // hL + … = 1 at hL ≈ 0.6964: L = 6.9 needs 10 steps, L = 7.0 needs 11.
        assert!(certify_rk4(&|t: &[f64]| vec![6.9; t.len()], 10).is_certified());
        assert!(!certify_rk4(&|t: &[f64]| vec![7.0; t.len()], 10).is_certified());
        assert_eq!(
            steps_needed(&|t: &[f64]| vec![7.0; t.len()], 1000),
            Some(11)
        );
        assert_eq!(steps_needed(&|t: &[f64]| vec![0.1; t.len()], 1000), Some(1));
        assert_eq!(steps_needed(&|t: &[f64]| vec![1e9; t.len()], 1000), None);
    }

    #[test]
    fn certificate_penalty_gradient_matches_finite_differences() {
        let n_steps = 4;
        let l: Vec<f64> = (0..9).map(|i| 5.0 + 3.0 * (i as f64 * 0.7).sin()).collect();
        for target in [0.5, 0.9, 2.0] {
            let (p, grad) = certificate_penalty(&l, n_steps, target);
            let mut q = l.clone();
            let eps = 1e-6;
            for i in 0..l.len() {
                q[i] = l[i] + eps;
                let up = certificate_penalty(&q, n_steps, target).0;
                q[i] = l[i] - eps;
                let down = certificate_penalty(&q, n_steps, target).0;
                q[i] = l[i];
                let fd = (up - down) / (2.0 * eps);
                assert!(
                    (fd - grad[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{i}: {fd} vs {}",
                    grad[i]
                );
            }
            // Zero exactly when every step is at most the target.
            let cert = certify_rk4(
                &|t: &[f64]| t.iter().map(|t| l[(t * 8.0).round() as usize]).collect(),
                n_steps,
            );
            assert_eq!(p == 0.0, cert.max_contraction <= target, "{p} {cert:?}");
        }
        let (c, _) = increment_bound_gradient(1.0, 2.0, 3.0, 0.1);
        assert_eq!(c, increment_bound(1.0, 2.0, 3.0, 0.1));
    }

    #[test]
    fn the_worst_step_is_where_the_field_is_stiff_and_nan_never_certifies() {
        let l = |t: &[f64]| {
            t.iter()
                .map(|&t| if t > 0.5 { 50.0 } else { 1.0 })
                .collect()
        };
        let cert = certify_rk4(&l, 20);
        assert!(cert.worst_step_start >= 0.45, "{cert:?}");
        assert_eq!(cert.max_lipschitz, 50.0);
        assert!(!certify_rk4(&|t: &[f64]| vec![f64::NAN; t.len()], 5).is_certified());
    }
}
