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

/// Certifies the RK4 grid of `n_steps` steps on [0, 1] for a field whose bound at time t is
/// `lipschitz(t)`. Evaluates the bound once per distinct stage time (2·n_steps + 1).
#[must_use]
pub fn certify_rk4(lipschitz: &dyn Fn(f64) -> f64, n_steps: usize) -> StepCertificate {
    let n = n_steps.max(1);
    let h = 1.0 / n as f64;
    let mut cert = StepCertificate {
        n_steps: n,
        max_contraction: 0.0,
        worst_step_start: 0.0,
        max_lipschitz: 0.0,
    };
    let mut l_end_prev = None;
    for s in 0..n {
        let [t0, tm, t1] = grid_stage_times(s, n, true);
        // Consecutive steps share a grid point: reuse its bound.
        let l0 = l_end_prev.unwrap_or_else(|| lipschitz(t0));
        let (lm, l1) = (lipschitz(tm), lipschitz(t1));
        l_end_prev = Some(l1);
        let c = increment_bound(l0, lm, l1, h);
        cert.max_lipschitz = cert.max_lipschitz.max(l0).max(lm).max(l1);
        // NaN never certifies: it must not be skipped by max().
        if c.is_nan() || c > cert.max_contraction {
            cert.max_contraction = if c.is_nan() { f64::INFINITY } else { c };
            cert.worst_step_start = t0;
        }
    }
    cert
}

/// The smallest step count in `1..=max_steps` whose grid is certified, if any. Since finer
/// grids need not be certified monotonically (their stage times differ), this searches by
/// doubling and then bisection on certified/uncertified counts and returns a count that is
/// certified.
#[must_use]
pub fn steps_needed(lipschitz: &dyn Fn(f64) -> f64, max_steps: usize) -> Option<usize> {
    // Grids of different counts share many times (all of a count's when it doubles): each
    // bound is computed once.
    let cache = std::cell::RefCell::new(std::collections::HashMap::new());
    let cached = |t: f64| {
        *cache
            .borrow_mut()
            .entry(t.to_bits())
            .or_insert_with(|| lipschitz(t))
    };
    let lipschitz = &cached;
    let mut hi = 1;
    while !certify_rk4(lipschitz, hi).is_certified() {
        if hi >= max_steps {
            return None;
        }
        hi = (2 * hi).min(max_steps);
    }
    let mut lo = hi / 2; // uncertified (or 0)
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if certify_rk4(lipschitz, mid).is_certified() {
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
            let cert = certify_rk4(&|_| l, 10);
            let x = l / 10.0;
            let expected = x + x * x / 2.0 + x * x * x / 6.0 + x * x * x * x / 24.0;
            assert!((cert.max_contraction - expected).abs() < 1e-12 * expected);
            assert_eq!(cert.max_lipschitz, l);
        }
        // hL + … = 1 at hL ≈ 0.6964: L = 6.9 needs 10 steps, L = 7.0 needs 11.
        assert!(certify_rk4(&|_| 6.9, 10).is_certified());
        assert!(!certify_rk4(&|_| 7.0, 10).is_certified());
        assert_eq!(steps_needed(&|_| 7.0, 1000), Some(11));
        assert_eq!(steps_needed(&|_| 0.1, 1000), Some(1));
        assert_eq!(steps_needed(&|_| 1e9, 1000), None);
    }

    #[test]
    fn the_worst_step_is_where_the_field_is_stiff_and_nan_never_certifies() {
        let l = |t: f64| if t > 0.5 { 50.0 } else { 1.0 };
        let cert = certify_rk4(&l, 20);
        assert!(cert.worst_step_start >= 0.45, "{cert:?}");
        assert_eq!(cert.max_lipschitz, 50.0);
        assert!(!certify_rk4(&|_| f64::NAN, 5).is_certified());
    }
}
