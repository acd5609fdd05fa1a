//! A certificate that every step of a fixed-grid RK4 map is a bijection of configuration
//! space, from two global bounds of the field that each field family provides: its Lipschitz
//! bound `L(t) ≥ ‖∂v/∂x‖` (`FieldFamily::lipschitz_bounds`) and its compression bound
//! `μ(t) ≥ −λ_min(sym ∂v/∂x)` (`FieldFamily::compression_bounds`, at most L; by default L).
//!
//! One RK4 step is `Φ_h(y) = y + Δ(y)` with the increment `Δ = h/6·(k1 + 2k2 + 2k3 + k4)`,
//! taken forward (h > 0) from the prior at t = 0 towards the data at t = 1; the density
//! evaluation inverts the same map. At any point the increment's Jacobian is
//!
//! ```text
//! ∂Δ = h/6·(K1 + 2K2 + 2K3 + K4),  K1 = J1,  K2 = J2(I + h/2·K1),  K3 = J3(I + h/2·K2),
//!                                  K4 = J4(I + h·K3)
//! ```
//!
//! with `J1…J4` the field's Jacobians at the stage points and times (start, middle twice,
//! end). With `L₁, L₂, L₄` and `μ₁, μ₂, μ₄` the bounds at those times, the stages' norms are
//! bounded by
//!
//! ```text
//! ℓ1 = L₁    ℓ2 = L₂(1 + h/2·ℓ1)    ℓ3 = L₂(1 + h/2·ℓ2)    ℓ4 = L₄(1 + h·ℓ3)
//! ```
//!
//! and splitting `∂Δ` into its first-order part `h/6·(J1 + 2J2 + 2J3 + J4)` and the rest
//! `h²/6·(J2K1 + J3K2 + J4K3)` gives, for every direction u,
//!
//! ```text
//! uᵀ∂Δ u ≥ −c|u|²,   c = h/6·(μ₁ + 4μ₂ + μ₄) + h²/6·(L₂ℓ1 + L₂ℓ2 + L₄ℓ3)
//! ```
//!
//! (`step_bound`). Integrating along the segment between two configurations y, y':
//! `⟨Φ_h(y) − Φ_h(y'), y − y'⟩ ≥ (1 − c)|y − y'|²`. If `c < 1` the step is *strongly
//! monotone*: injective, and (continuous and strongly monotone on R^n, Browder–Minty) onto,
//! so every configuration has exactly one preimage, the single-preimage density the
//! exact-discrete mode evaluates is the push-forward density, and one certificate covers
//! sampling and density evaluation. Only the first-order part uses the one-sided μ: a field
//! that expands configurations fast (large positive eigenvalues, as the flows from a narrow
//! prior to spread-out data do) but compresses them slowly certifies with fewer steps than
//! its Lipschitz constant alone allows. With μ = L, c is the bound on the increment's
//! Lipschitz constant `c_L = h/6·(ℓ1 + 2ℓ2 + 2ℓ3 + ℓ4)` (`increment_bound`), below 1 of which
//! the fixed-point iteration `y ← x − Δ(y)` of the inverse's fallback also contracts
//! (Banach); the certificate reports both.
//!
//! What it proves depends on the bounds: for the kernel field they come from a sampled
//! maximum with a slope margin (see `field::kernel`), not interval arithmetic.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use super::rk4::grid_stage_times;

/// A field's two bounds at a list of times (one entry per time each): what the certificate
/// reads from a field family.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldBounds {
    /// `L(t) ≥ ‖∂v/∂x‖` for every configuration.
    pub lipschitz: Vec<f64>,
    /// `μ(t) ≥ max(0, −λ_min(sym ∂v/∂x))` for every configuration; `μ = L` is always valid.
    pub compression: Vec<f64>,
}

impl FieldBounds {
    /// Bounds with `μ = L` (no one-sided bound known).
    #[must_use]
    pub fn lipschitz_only(lipschitz: Vec<f64>) -> Self {
        FieldBounds {
            compression: lipschitz.clone(),
            lipschitz,
        }
    }
}

/// The certificate of an RK4 grid: the largest step bound over its steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCertificate {
    /// Steps of the grid on [0, 1].
    pub n_steps: usize,
    /// `max_steps c`, the bound of the worst step (see the module docs): every step is a
    /// bijection when it is below 1.
    pub max_contraction: f64,
    /// Start time of the worst step.
    pub worst_step_start: f64,
    /// The largest field bound `L(t)` met at the grid's stage times.
    pub max_lipschitz: f64,
    /// The largest compression bound `μ(t)` met at the grid's stage times.
    pub max_compression: f64,
    /// `max_steps c_L`, the bound on the increment's Lipschitz constant (μ replaced by L):
    /// below 1, the inverse's fixed-point iteration contracts too.
    pub max_increment_lipschitz: f64,
}

impl StepCertificate {
    /// True when every step is certified to be a bijection (`max_contraction < 1`).
    #[must_use]
    pub fn is_certified(&self) -> bool {
        self.max_contraction < 1.0
    }

    /// What a host should be told about a flow that reports exact-discrete densities through
    /// this grid without strict mode, `None` when the grid is certified; `needed` is the
    /// certified step count found by a search up to `searched` steps
    /// (`Flow::certified_step_count`, `Flow::step_search_limit`). The command line's warning
    /// and the C API's log message are this text with their own pointers to the remedies.
    #[must_use]
    pub fn uncertified_warning(&self, needed: Option<usize>, searched: usize) -> Option<String> {
        (!self.is_certified()).then(|| {
            format!(
                "the RK4 map is not certified one-to-one at its {} steps (worst step's bound \
                 {:.3}, needs < 1; certified from {}): each log q assumes a single preimage, \
                 which is not proved",
                self.n_steps,
                self.max_contraction,
                needed_steps_text(needed, searched)
            )
        })
    }
}

/// A certified step count (`Flow::certified_step_count`) as a message reads it: "N steps", or
/// that none up to `searched`, the search's limit, certifies.
#[must_use]
pub fn needed_steps_text(needed: Option<usize>, searched: usize) -> String {
    needed.map_or(format!("no step count up to {searched}"), |n| {
        format!("{n} steps")
    })
}

/// The bound `c_L` on the Lipschitz constant of one RK4 step's increment, from the field
/// bounds at its start, middle and end times and its step size `h`.
#[must_use]
pub fn increment_bound(l_start: f64, l_middle: f64, l_end: f64, h: f64) -> f64 {
    step_bound([l_start, l_middle, l_end], [l_start, l_middle, l_end], h)
}

/// The certificate's bound `c` of one RK4 step (module docs) from the Lipschitz bounds `l` and
/// the compression bounds `m` at its start, middle and end times; each `μ` is used as
/// `min(μ, L)` (both bound −λ_min). `h` is the step of the forward map, from the prior at
/// t = 0 towards t = 1 (its magnitude is used): the compression bound is one-sided, so it
/// bounds the map taken in that direction, which is the map every sample and density uses.
#[must_use]
pub fn step_bound(l: [f64; 3], m: [f64; 3], h: f64) -> f64 {
    step_bound_gradient(l, m, h).0
}

/// [`step_bound`] and its partial derivatives with respect to `l` and `m` (the reverse of its
/// recurrence; where `μ > L` the derivative goes to `L`).
#[must_use]
pub fn step_bound_gradient(l: [f64; 3], m: [f64; 3], h: f64) -> (f64, [f64; 3], [f64; 3]) {
    let h = h.abs();
    let [l1, lm, l4] = l;
    // f64::min would drop a NaN μ; a NaN bound must never certify.
    let m_used: [f64; 3] =
        std::array::from_fn(|i| if m[i].is_nan() { m[i] } else { m[i].min(l[i]) });
    let s1 = l1;
    let s2 = lm * (1.0 + 0.5 * h * s1);
    let s3 = lm * (1.0 + 0.5 * h * s2);
    let first = h / 6.0 * (m_used[0] + 4.0 * m_used[1] + m_used[2]);
    let rest = h * h / 6.0 * (lm * s1 + lm * s2 + l4 * s3);
    // Reverse: rest = k·(lm·s1 + lm·s2 + l4·s3), k = h²/6.
    let k = h * h / 6.0;
    let s3_bar = k * l4;
    let mut lm_bar = k * (s1 + s2) + s3_bar * (1.0 + 0.5 * h * s2);
    let s2_bar = k * lm + s3_bar * lm * 0.5 * h;
    lm_bar += s2_bar * (1.0 + 0.5 * h * s1);
    let s1_bar = k * lm + s2_bar * lm * 0.5 * h;
    let mut l_bar = [s1_bar, lm_bar, k * s3];
    let weights = [h / 6.0, 4.0 * h / 6.0, h / 6.0];
    let mut m_bar = [0.0; 3];
    for i in 0..3 {
        if m[i] <= l[i] {
            m_bar[i] = weights[i];
        } else {
            l_bar[i] += weights[i];
        }
    }
    (first + rest, l_bar, m_bar)
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

/// The three bounds of step `s` from per-time bounds at [`certificate_times`].
fn of_step(v: &[f64], s: usize) -> [f64; 3] {
    [v[2 * s], v[2 * s + 1], v[2 * s + 2]]
}

/// The certificate penalty of field bounds `b` at [`certificate_times`]`(n_steps)`:
/// `P = Σ_steps max(0, c_s − target)²` with `c_s` the step's [`step_bound`], and `∂P/∂L`,
/// `∂P/∂μ` (one per time each). Zero exactly when every step's bound is at most `target`;
/// with `target < 1` a field that a training loop keeps at P = 0 stays certified with a margin.
#[must_use]
pub fn certificate_penalty(b: &FieldBounds, n_steps: usize, target: f64) -> (f64, FieldBounds) {
    let n = n_steps.max(1);
    let h = 1.0 / n as f64;
    let mut value = 0.0;
    let mut bar = FieldBounds {
        lipschitz: vec![0.0; b.lipschitz.len()],
        compression: vec![0.0; b.compression.len()],
    };
    for s in 0..n {
        let (c, dl, dm) =
            step_bound_gradient(of_step(&b.lipschitz, s), of_step(&b.compression, s), h);
        let excess = c - target;
        if excess > 0.0 {
            value += excess * excess;
            for i in 0..3 {
                bar.lipschitz[2 * s + i] += 2.0 * excess * dl[i];
                bar.compression[2 * s + i] += 2.0 * excess * dm[i];
            }
        }
    }
    (value, bar)
}

/// Certifies the RK4 grid of `n_steps` steps on [0, 1] for a field whose bounds at a list of
/// times are `bounds(times)`; asks for the 2·n_steps + 1 distinct stage times at once.
#[must_use]
pub fn certify_rk4(bounds: &dyn Fn(&[f64]) -> FieldBounds, n_steps: usize) -> StepCertificate {
    let n = n_steps.max(1);
    let h = 1.0 / n as f64;
    let times = certificate_times(n);
    let b = bounds(&times);
    let mut cert = StepCertificate {
        n_steps: n,
        max_contraction: 0.0,
        worst_step_start: 0.0,
        max_lipschitz: 0.0,
        max_compression: 0.0,
        max_increment_lipschitz: 0.0,
    };
    for s in 0..n {
        let (l, m) = (of_step(&b.lipschitz, s), of_step(&b.compression, s));
        let c = step_bound(l, m, h);
        let c_l = step_bound(l, l, h);
        for i in 0..3 {
            cert.max_lipschitz = cert.max_lipschitz.max(l[i]);
            cert.max_compression = cert.max_compression.max(m[i]);
        }
        // NaN never certifies: it must not be skipped by max().
        let c_l = if c_l.is_nan() { f64::INFINITY } else { c_l };
        cert.max_increment_lipschitz = cert.max_increment_lipschitz.max(c_l);
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
/// count that is certified. Bounds are computed once per distinct time, and a probe first
/// tries the step containing the last full certificate's worst step start, which rejects most
/// uncertified counts from three times (`bounds` is best a function that tabulates once what
/// does not depend on time: [`crate::field::FieldFamily::certificate_bounder`]).
#[must_use]
pub fn steps_needed(bounds: &dyn Fn(&[f64]) -> FieldBounds, max_steps: usize) -> Option<usize> {
    let cache = RefCell::new(HashMap::<u64, (f64, f64)>::new());
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
            for (i, t) in missing.iter().enumerate() {
                cache.insert(t.to_bits(), (values.lipschitz[i], values.compression[i]));
            }
        }
        let cache = cache.borrow();
        let (lipschitz, compression) = times.iter().map(|t| cache[&t.to_bits()]).unzip();
        FieldBounds {
            lipschitz,
            compression,
        }
    };
    // Where the last full certificate was worst: a grid that is not certified usually fails
    // at the step containing that time too, and three bounds show it without the other
    // 2·n − 2 (a bound ≥ 1 at any step is a failure; below 1 it decides nothing).
    let worst = Cell::new(None::<f64>);
    let certified = |n: usize| {
        if let Some(t) = worst.get() {
            let s = ((t * n as f64) as usize).min(n - 1);
            let b = cached(&grid_stage_times(s, n, true));
            let c = step_bound(
                of_step(&b.lipschitz, 0),
                of_step(&b.compression, 0),
                1.0 / n as f64,
            );
            if c.is_nan() || c >= 1.0 {
                return false;
            }
        }
        let cert = certify_rk4(&cached, n);
        worst.set(Some(cert.worst_step_start));
        cert.is_certified()
    };
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

    /// Bounds `l` and `m` at every time.
    fn constant(l: f64, m: f64) -> impl Fn(&[f64]) -> FieldBounds {
        move |t: &[f64]| FieldBounds {
            lipschitz: vec![l; t.len()],
            compression: vec![m; t.len()],
        }
    }

    #[test]
    fn a_linear_field_certifies_exactly_when_its_step_is_a_contraction() {
        // v = −L·x has Lipschitz constant L everywhere and its RK4 increment is
        // (p(−hL) − 1)·x with p the degree-4 Taylor polynomial of exp; the bound c is
        // hL + (hL)²/2 + (hL)³/6 + (hL)⁴/24 = p(hL) − 1 ≥ |p(−hL) − 1|: exact for v = +L·x.
        for l in [0.5, 3.0, 40.0] {
            let cert = certify_rk4(&constant(l, l), 10);
            let x = l / 10.0;
            let expected = x + x * x / 2.0 + x * x * x / 6.0 + x * x * x * x / 24.0;
            assert!((cert.max_contraction - expected).abs() < 1e-12 * expected);
            assert_eq!(cert.max_increment_lipschitz, cert.max_contraction);
            assert_eq!(cert.max_lipschitz, l);
        }
        // hL + … = 1 at hL ≈ 0.6964: L = 6.9 needs 10 steps, L = 7.0 needs 11.
        assert!(certify_rk4(&constant(6.9, 6.9), 10).is_certified());
        assert!(!certify_rk4(&constant(7.0, 7.0), 10).is_certified());
        assert_eq!(steps_needed(&constant(7.0, 7.0), 1000), Some(11));
        assert_eq!(steps_needed(&constant(0.1, 0.1), 1000), Some(1));
        assert_eq!(steps_needed(&constant(1e9, 1e9), 1000), None);
    }

    /// For a field whose bounds peak in time, the search returns the first certified count of
    /// a linear scan, and its pre-check at the last worst step keeps the uncertified probes
    /// cheap: it asks for far fewer distinct times than the full grids it probes.
    #[test]
    fn the_search_finds_the_scanned_count_with_few_bound_evaluations() {
        for (peak, most) in [(3.0, 40), (40.0, 400), (900.0, 7_000)] {
            let asked = Cell::new(0_usize);
            let bounds = |times: &[f64]| {
                asked.set(asked.get() + times.len());
                let l: Vec<f64> = times
                    .iter()
                    .map(|t| 1.0 + peak * (-(t - 0.6) * (t - 0.6) / 0.02).exp())
                    .collect();
                FieldBounds {
                    compression: l.iter().map(|l| 0.5 * l).collect(),
                    lipschitz: l,
                }
            };
            let found = steps_needed(&bounds, 100_000).unwrap();
            let searched = asked.get();
            let scanned = (1..)
                .find(|&n| certify_rk4(&bounds, n).is_certified())
                .unwrap();
            assert_eq!(found, scanned, "peak {peak}");
            assert!(
                searched <= most,
                "peak {peak}: {searched} times for {found} steps"
            );
        }
    }

    #[test]
    fn an_expanding_field_certifies_by_its_second_order_terms_alone() {
        // v = +L·x (μ = 0): the step is x ↦ p(hL)·x, a bijection for every h, but the
        // certificate still pays the second-order terms: c = (hL)²/2 + (hL)³/6 + (hL)⁴/24,
        // below 1 up to hL ≈ 1.157 (against 0.696 for the Lipschitz bound alone).
        for l in [0.5, 3.0, 11.0] {
            let cert = certify_rk4(&constant(l, 0.0), 10);
            let x = l / 10.0;
            let expected = x * x / 2.0 + x * x * x / 6.0 + x * x * x * x / 24.0;
            assert!((cert.max_contraction - expected).abs() < 1e-12 * expected);
            assert!(cert.max_increment_lipschitz > cert.max_contraction);
            assert_eq!(cert.max_compression, 0.0);
        }
        assert!(certify_rk4(&constant(11.0, 0.0), 10).is_certified());
        assert!(!certify_rk4(&constant(11.0, 11.0), 10).is_certified());
        assert_eq!(steps_needed(&constant(7.0, 0.0), 1000), Some(7));
        // μ above L is used as L (both bound −λ_min).
        assert_eq!(
            certify_rk4(&constant(3.0, 5.0), 10).max_contraction,
            certify_rk4(&constant(3.0, 3.0), 10).max_contraction
        );
    }

    /// `v = A x` with a fixed matrix: the RK4 step is `x ↦ (I + h/6·(K1 + 2K2 + 2K3 + K4))x`,
    /// so `min_u uᵀ∂Δu/|u|²` is computable, and the bound must lie above its negative.
    #[test]
    fn the_step_bound_dominates_the_increments_compression_for_linear_fields() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let n = 4;
        let mul = |a: &[f64], b: &[f64]| -> Vec<f64> {
            let mut c = vec![0.0; n * n];
            for i in 0..n {
                for k in 0..n {
                    for j in 0..n {
                        c[i * n + j] += a[i * n + k] * b[k * n + j];
                    }
                }
            }
            c
        };
        let plus_scaled = |a: &[f64], s: f64| -> Vec<f64> {
            let mut c: Vec<f64> = a.iter().map(|v| s * v).collect();
            for i in 0..n {
                c[i * n + i] += 1.0;
            }
            c
        };
        for trial in 0..200 {
            let scale = 0.5 + 10.0 * f64::from(trial % 10) / 10.0;
            let a: Vec<f64> = (0..n * n)
                .map(|_| scale * rng.random_range(-1.0..1.0))
                .collect();
            // Symmetric part's eigenvalues bounded by Gershgorin; norm by Frobenius.
            let sym: Vec<f64> = (0..n * n)
                .map(|k| 0.5 * (a[k] + a[(k % n) * n + k / n]))
                .collect();
            let mu = (0..n)
                .map(|i| {
                    let off: f64 = (0..n)
                        .filter(|&j| j != i)
                        .map(|j| sym[i * n + j].abs())
                        .sum();
                    (-(sym[i * n + i] - off)).max(0.0)
                })
                .fold(0.0, f64::max);
            let l = a.iter().map(|v| v * v).sum::<f64>().sqrt();
            let h = 0.1;
            let k1 = a.clone();
            let k2 = mul(&a, &plus_scaled(&k1, h / 2.0));
            let k3 = mul(&a, &plus_scaled(&k2, h / 2.0));
            let k4 = mul(&a, &plus_scaled(&k3, h));
            let d: Vec<f64> = (0..n * n)
                .map(|k| h / 6.0 * (k1[k] + 2.0 * k2[k] + 2.0 * k3[k] + k4[k]))
                .collect();
            let c = step_bound([l; 3], [mu; 3], h);
            for _ in 0..50 {
                let u: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
                let norm2: f64 = u.iter().map(|v| v * v).sum();
                let q: f64 = (0..n)
                    .flat_map(|i| (0..n).map(move |j| (i, j)))
                    .map(|(i, j)| u[i] * d[i * n + j] * u[j])
                    .sum();
                assert!(q >= -c * norm2 * (1.0 + 1e-12), "{q} < −{c}·{norm2}");
            }
        }
    }

    #[test]
    fn certificate_penalty_gradient_matches_finite_differences() {
        let n_steps = 4;
        let l: Vec<f64> = (0..9).map(|i| 5.0 + 3.0 * (i as f64 * 0.7).sin()).collect();
        // Some μ below L (the one-sided branch), some above (used as L).
        let m: Vec<f64> = (0..9).map(|i| 4.0 + 3.0 * (i as f64 * 1.3).cos()).collect();
        assert!(m.iter().zip(&l).any(|(m, l)| m < l) && m.iter().zip(&l).any(|(m, l)| m > l));
        let bounds = FieldBounds {
            lipschitz: l.clone(),
            compression: m.clone(),
        };
        for target in [0.5, 0.9, 2.0] {
            let (p, grad) = certificate_penalty(&bounds, n_steps, target);
            let eps = 1e-6;
            for which in 0..2 {
                for i in 0..l.len() {
                    let at = |delta: f64| {
                        let mut b = bounds.clone();
                        let v = if which == 0 {
                            &mut b.lipschitz
                        } else {
                            &mut b.compression
                        };
                        v[i] += delta;
                        certificate_penalty(&b, n_steps, target).0
                    };
                    let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                    let g = if which == 0 {
                        grad.lipschitz[i]
                    } else {
                        grad.compression[i]
                    };
                    assert!(
                        (fd - g).abs() < 1e-6 * (1.0 + fd.abs()),
                        "{which} {i}: {fd} vs {g}"
                    );
                }
            }
            // Zero exactly when every step is at most the target.
            let cert = certify_rk4(
                &|t: &[f64]| {
                    let at = |v: &[f64]| t.iter().map(|t| v[(t * 8.0).round() as usize]).collect();
                    FieldBounds {
                        lipschitz: at(&l),
                        compression: at(&m),
                    }
                },
                n_steps,
            );
            assert_eq!(p == 0.0, cert.max_contraction <= target, "{p} {cert:?}");
        }
        let (c, _, _) = step_bound_gradient([1.0, 2.0, 3.0], [0.5, 2.5, 1.0], 0.1);
        assert_eq!(c, step_bound([1.0, 2.0, 3.0], [0.5, 2.5, 1.0], 0.1));
    }

    #[test]
    fn the_worst_step_is_where_the_field_is_stiff_and_nan_never_certifies() {
        let l = |t: &[f64]| {
            FieldBounds::lipschitz_only(
                t.iter()
                    .map(|&t| if t > 0.5 { 50.0 } else { 1.0 })
                    .collect(),
            )
        };
        let cert = certify_rk4(&l, 20);
        assert!(cert.worst_step_start >= 0.45, "{cert:?}");
        assert_eq!(cert.max_lipschitz, 50.0);
        assert!(!certify_rk4(&constant(f64::NAN, f64::NAN), 5).is_certified());
        assert!(!certify_rk4(&constant(1.0, f64::NAN), 5).is_certified());
    }
}
