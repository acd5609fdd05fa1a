//! Free-energy estimates: the log normalising constant log Z of a Boltzmann distribution by
//! bridge sampling and by importance sampling, the entropy of the target and its KL divergence
//! to the flow, and free-energy differences between states from (reweighted) populations.
//!
//! # What is estimated
//!
//! The target is `p(x) = exp(−u(x)) / Z` with the reduced energy `u = U/kT` ([`crate::boltzmann`])
//! and `Z = ∫ exp(−u(x)) dx`. The estimators here see the target only through log importance
//! weights `log w(x) = −u(x) − log q(x)` against a flow density `q`, so `Z` is an integral over
//! exactly the space and measure on which `q` is a normalised density. For eqflow's flows that
//! is the centre-of-mass-free subspace of dimension (N−1)·D with its Euclidean (Lebesgue)
//! measure, the measure of the prior's normalised density (crate docs): `log Z`, the entropy
//! and the NLL `−E[log q]` are then in one convention, and `NLL − S` is a KL divergence.
//! (If `q` were unnormalised with constant `Z_q`, every estimate of log Z here would be of
//! `log(Z/Z_q)`.)
//!
//! # Bridge sampling
//!
//! [`bridge_sampling`] is the optimal bridge estimator of Meng & Wong (Statistica Sinica 6, 831,
//! 1996), which is Bennett's acceptance ratio (J. Comput. Phys. 22, 245, 1976). Given `n_F`
//! independent flow samples with log weights `a_i` and `n_P` independent target samples with log
//! weights `b_j`, and `M = log(n_P/n_F)`, the estimate `Δ = log Z` is the unique root of
//!
//! ```text
//! Σ_j σ(Δ − M − b_j) = Σ_i σ(a_i + M − Δ),        σ(t) = 1/(1 + e^(−t)),
//! ```
//!
//! the fixed point of Meng & Wong's iteration written as one monotone equation: the left side
//! increases with Δ, the right side decreases, so a bracketing solver finds the root without
//! the iteration's slow convergence when the overlap is poor, and no weight is ever
//! exponentiated on its own (nothing overflows). Unlike importance sampling, which needs the
//! flow to cover the target, bridge sampling uses the target samples as well: it stays
//! accurate when the flow's ESS is a few percent, as long as the two distributions overlap.
//!
//! **Standard error.** The asymptotic (delta-method, M-estimator) variance of the root: with
//! `h_P,j = σ(Δ − M − b_j)`, `h_F,i = σ(a_i + M − Δ)` and `g' = Σ_j h_P,j(1 − h_P,j) + Σ_i
//! h_F,i(1 − h_F,i)` the derivative of the equation,
//! `Var(Δ) ≈ [n_P·Var(h_P) + n_F·Var(h_F)] / g'²`, with sample variances. At the optimum this is
//! Meng & Wong's asymptotic variance (their eq. 4.2 with the optimal bridge; BAR's variance of
//! Shirts et al., PRL 91, 140601, 2003). It assumes independent samples: for correlated
//! samples (an MCMC chain) it is too small by the integrated autocorrelation time, and like
//! every asymptotic error bar it is too small when the overlap is so poor that a handful of
//! samples decide the estimate.
//!
//! **Entropy and KL.** The entropy of the target is `S = −E_p[log p] = E_p[u] + log Z`, and the
//! KL divergence from target to flow is `KL(p‖q) = E_p[log p − log q] = E_p[log w] − log Z`,
//! the gap between the NLL `E_p[−log q]` and its floor `S`. Both use the target samples twice
//! (in the mean and in log Z), so their standard errors ([`BridgeSampling::entropy`],
//! [`BridgeSampling::kl_target_to_flow`]) linearise the sum jointly rather than adding
//! variances as if the two terms were independent.
//!
//! # Importance sampling
//!
//! [`importance_log_z`] is `log Z ≈ log mean_i exp(a_i)` over flow samples, with the
//! delta-method standard error `sd(w)/(√n·mean(w))`. It is unbiased in Z (biased low in log Z)
//! and reliable only when the Kish ESS is large; it is reported beside bridge sampling because a
//! disagreement between the two is itself a warning.
//!
//! # Free-energy differences between states
//!
//! A state (a basin, a conformation) has population `P_s = Σ_{x in s} w(x) / Σ_x w(x)`
//! ([`state_populations`]: unit weights for Boltzmann samples, importance weights for flow
//! samples), and the free-energy difference between states is
//! `F_b − F_a = −kT · log(P_b/P_a)` ([`free_energy_difference`]).

use crate::boltzmann::{Kt, check_log_weights};
use crate::error::Compact;
use crate::error::{Error, Result};

/// An estimate with its standard error (one standard deviation of the estimator).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The estimate.
    pub value: f64,
    /// Its standard error.
    pub standard_error: f64,
}

/// The result of [`bridge_sampling`]: `log Z` with its standard error, and what the entropy
/// and KL estimates need to propagate the same samples' errors jointly.
#[derive(Debug, Clone)]
pub struct BridgeSampling {
    log_z: Estimate,
    /// The target samples' log weights `b_j`, for the KL estimate.
    log_w_target: Vec<f64>,
    /// Each target sample's term in the linearised estimate, `h_P,j / g'`; log Z moves by
    /// `−(h_P,j − mean)/g'` when sample j is perturbed.
    target_influence: Vec<f64>,
    /// The flow samples' contribution to `Var(log Z)`, `n_F·Var(h_F)/g'²` (independent of the
    /// target samples, so it adds to every variance below).
    flow_variance: f64,
}

impl BridgeSampling {
    /// `log Z` of the target, relative to the flow's normalised density (module docs).
    #[must_use]
    pub fn log_z(&self) -> Estimate {
        self.log_z
    }

    /// The number of target samples the estimate used.
    #[must_use]
    pub fn n_target(&self) -> usize {
        self.log_w_target.len()
    }

    /// The entropy of the target, `S = −E_p[log p] = E_p[u] + log Z`, from the reduced energies
    /// `u_j = U_j/kT` of the same target samples (in the same order) whose log weights were
    /// given to [`bridge_sampling`]. The standard error accounts for the correlation between the
    /// mean energy and log Z, which share those samples.
    ///
    /// # Errors
    ///
    /// [`Error::DimensionMismatch`] if `reduced_energy_target` does not have one value per
    /// target sample; [`Error::NonFinite`] if one of them is not finite.
    pub fn entropy(&self, reduced_energy_target: &[f64]) -> Result<Estimate> {
        if reduced_energy_target.len() != self.n_target() {
            return Err(Error::size(
                "reduced energies of the target samples",
                self.n_target(),
                reduced_energy_target.len(),
            ));
        }
        if let Some(j) = reduced_energy_target.iter().position(|u| !u.is_finite()) {
            return Err(Error::non_finite(format!(
                "reduced energy of target sample {j}: {}",
                reduced_energy_target[j]
            )));
        }
        Ok(self.target_mean_plus(reduced_energy_target, 1.0))
    }

    /// The KL divergence from the target to the flow, `KL(p‖q) = E_p[log w] − log Z`: the NLL
    /// `E_p[−log q]` minus the entropy, estimated from the same samples with a joint standard
    /// error. It is not clamped at zero (an estimate slightly below zero is noise).
    ///
    #[must_use]
    pub fn kl_target_to_flow(&self) -> Estimate {
        // The target's log weights are all finite (checked by `bridge_sampling`).
        self.target_mean_plus(&self.log_w_target, -1.0)
    }

    /// `mean_j o_j + sign·log Z` with the standard error of the linearised sum: the target
    /// samples enter through both terms, the flow samples through log Z only.
    fn target_mean_plus(&self, observable: &[f64], sign: f64) -> Estimate {
        let n = observable.len() as f64;
        let (mean, _) = mean_and_variance(observable);
        // Sample j's term: o_j/n from the mean, −sign·h_P,j/g' from log Z.
        let terms: Vec<f64> = observable
            .iter()
            .zip(&self.target_influence)
            .map(|(o, h)| o / n - sign * h)
            .collect();
        let (_, var_terms) = mean_and_variance(&terms);
        Estimate {
            value: mean + sign * self.log_z.value,
            standard_error: (n * var_terms + self.flow_variance).sqrt(),
        }
    }
}

/// Mean and sample variance (denominator n − 1), summed in index order.
fn mean_and_variance(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

/// The logistic function `1/(1 + e^(−t))`, without overflow for any `t` (`σ(±∞)` is 1 or 0).
fn sigmoid(t: f64) -> f64 {
    if t >= 0.0 {
        1.0 / (1.0 + (-t).exp())
    } else {
        let e = t.exp();
        e / (1.0 + e)
    }
}

/// Checks one set of log weights for bridge or importance sampling: at least two (a sample
/// variance needs them), none NaN or `+∞`, at least one finite (else the set carries no
/// information about Z).
fn check_set(log_w: &[f64], what: &str) -> Result<()> {
    if log_w.len() < 2 {
        return Err(Error::invalid(format!(
            "{what}: at least 2 samples are needed for an estimate with an error bar, got {}",
            log_w.len()
        )));
    }
    check_log_weights(log_w).map_err(|e| match e {
        Error::NonFinite { what: inner } => Error::non_finite(format!("{what}: {inner}")),
        other => other,
    })?;
    if log_w.iter().all(|w| *w == f64::NEG_INFINITY) {
        return Err(Error::non_finite(format!(
            "{what}: every log weight is −∞ (every sample has weight zero)"
        )));
    }
    Ok(())
}

/// `log Z` of a target distribution by bridge sampling (Bennett's acceptance ratio, the optimal
/// bridge of Meng & Wong) between samples of a normalised flow density `q` and samples of the
/// target `p = exp(−u)/Z`, with the asymptotic standard error (module docs).
///
/// * `log_w_flow`: `log w = −u − log q` of independent samples drawn from the flow (as from
///   [`crate::boltzmann::log_weights_into`]); `−∞` (a sample of infinite energy) is a valid
///   weight of zero.
/// * `log_w_target`: the same quantity, `−u − log q`, on independent samples of the target
///   (reference data), with `log q` the flow's density of those configurations; all finite.
///
/// The estimate is of `log Z` over the space and measure on which `q` is normalised: for
/// eqflow's flows, the centre-of-mass-free subspace (module docs). Shifting every log weight by
/// `c` (scaling the unnormalised target by `e^c`) shifts the estimate by `c`, to round-off.
///
/// # Errors
///
/// [`Error::InvalidArgument`] if either set has fewer than 2 samples; [`Error::NonFinite`] if a
/// log weight is NaN or `+∞`, a target log weight is `−∞`, or every flow log weight is `−∞`
/// (nothing to bridge).
pub fn bridge_sampling(log_w_flow: &[f64], log_w_target: &[f64]) -> Result<BridgeSampling> {
    check_set(log_w_flow, "bridge sampling, flow samples")?;
    check_set(log_w_target, "bridge sampling, target samples")?;
    // A target sample of weight zero (infinite energy) contradicts its being a target sample,
    // and would put a constant term in the equation that can remove its root.
    if let Some(j) = log_w_target.iter().position(|w| !w.is_finite()) {
        return Err(Error::non_finite(format!(
            "bridge sampling, target samples: log_w[{j}] = {} (a target sample must have a \
             finite energy)",
            log_w_target[j]
        )));
    }
    let (n_f, n_p) = (log_w_flow.len() as f64, log_w_target.len() as f64);
    let m = (n_p / n_f).ln();
    // Solve for δ = Δ − c with c the largest finite log weight, so that the equation sees
    // numbers of order one whatever the scale of the energies, and a shift of every weight
    // moves only c.
    let c = log_w_flow
        .iter()
        .chain(log_w_target)
        .copied()
        .filter(|w| w.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    let a: Vec<f64> = log_w_flow.iter().map(|w| w - c).collect();
    let b: Vec<f64> = log_w_target.iter().map(|w| w - c).collect();
    // g(δ) = Σ_j σ(δ − M − b_j) − Σ_i σ(a_i + M − δ), increasing in δ; its derivative
    // g'(δ) = Σ σ(1 − σ) over both sets.
    let g = |delta: f64| -> (f64, f64) {
        let (mut value, mut slope) = (0.0, 0.0);
        for bj in &b {
            let s = sigmoid(delta - m - bj);
            value += s;
            slope += s * sigmoid(-(delta - m - bj));
        }
        for ai in &a {
            let s = sigmoid(ai + m - delta);
            value -= s;
            slope += s * sigmoid(-(ai + m - delta));
        }
        (value, slope)
    };
    // A bracket: below every finite weight by |M| + 50, every target term is below e^−50 and
    // every finite flow term above 1 − e^−50, so g < 0 (for fewer than e^50 samples); above
    // them, symmetrically, g > 0. By Jensen's inequality the root lies between the mean flow
    // weight (E_q[log w] = log Z − KL(q‖p)) and the mean target weight (log Z + KL(p‖q)) up to
    // sampling noise, so Newton starts from their midpoint.
    let min = a
        .iter()
        .chain(&b)
        .copied()
        .filter(|w| w.is_finite())
        .fold(f64::INFINITY, f64::min);
    let margin = m.abs() + 50.0;
    let (lo, hi) = (min - margin, margin);
    // Round-off defeats the bracket only when the weights spread over ~1e16 nats.
    if !(g(lo).0 < 0.0 && g(hi).0 > 0.0) {
        return Err(Error::non_finite(format!(
            "bridge sampling: log weights spread over [{:e}, {c:e}], too widely to bracket \
             log Z",
            c + min
        )));
    }
    let delta = solve_increasing(&g, lo, hi, 0.5 * (mean_finite(&a) + mean_finite(&b)))?;
    let (_, slope) = g(delta);
    let h_target: Vec<f64> = b.iter().map(|bj| sigmoid(delta - m - bj)).collect();
    let h_flow: Vec<f64> = a.iter().map(|ai| sigmoid(ai + m - delta)).collect();
    let (_, var_target) = mean_and_variance(&h_target);
    let (_, var_flow) = mean_and_variance(&h_flow);
    let flow_variance = n_f * var_flow / (slope * slope);
    let target_variance = n_p * var_target / (slope * slope);
    let log_z = Estimate {
        value: c + delta,
        standard_error: (target_variance + flow_variance).sqrt(),
    };
    if !log_z.value.is_finite() || !log_z.standard_error.is_finite() {
        // The slope of the bridge equation vanished: 0/0 in the error, or ∞ in both.
        return Err(Error::non_finite(format!(
            "bridge sampling: log Z = {} has no finite standard error (the flow and target \
             samples do not overlap)",
            Compact(log_z.value)
        )));
    }
    Ok(BridgeSampling {
        log_z,
        log_w_target: log_w_target.to_vec(),
        target_influence: h_target.iter().map(|h| h / slope).collect(),
        flow_variance,
    })
}

/// The mean of the finite entries of `v` (there is at least one).
fn mean_finite(v: &[f64]) -> f64 {
    let (sum, n) = v
        .iter()
        .filter(|w| w.is_finite())
        .fold((0.0, 0usize), |(s, n), w| (s + w, n + 1));
    sum / n as f64
}

/// The root of an increasing function `g` (returning value and slope) with `g(lo) < 0 < g(hi)`:
/// Newton steps from `start` kept inside the shrinking bracket, bisection when a Newton step
/// would leave it or the slope has underflowed.
fn solve_increasing(
    g: &impl Fn(f64) -> (f64, f64),
    mut lo: f64,
    mut hi: f64,
    start: f64,
) -> Result<f64> {
    let mut x = if start > lo && start < hi {
        start
    } else {
        0.5 * (lo + hi)
    };
    // Bisection alone reaches round-off from a bracket of width W in 52 + log2(W) steps; the
    // bracket is finite, so this bound is never the one that stops a solvable problem.
    for _ in 0..2200 {
        let (value, slope) = g(x);
        if value == 0.0 {
            return Ok(x);
        }
        if value > 0.0 {
            hi = x;
        } else {
            lo = x;
        }
        let newton = x - value / slope;
        let next = if slope > 0.0 && newton > lo && newton < hi {
            newton
        } else {
            0.5 * (lo + hi)
        };
        // Converged when the step or the bracket is at the round-off of the root.
        let tolerance = 4.0 * f64::EPSILON * x.abs().max(1.0);
        if (next - x).abs() <= tolerance || hi - lo <= tolerance {
            return Ok(next);
        }
        x = next;
    }
    Err(Error::NotConverged {
        what: "bridge sampling: root of the acceptance-ratio equation".into(),
        residual: hi - lo,
    })
}

/// `log Z` by importance sampling over flow samples, `log mean_i exp(log w_i)`, with the
/// delta-method standard error `sd(w)/(√n·mean(w))` (module docs). `log_w` are the log weights
/// `−u − log q` of independent flow samples; `−∞` is a weight of zero.
///
/// # Errors
///
/// [`Error::InvalidArgument`] for fewer than 2 samples; [`Error::NonFinite`] for a NaN or `+∞`
/// log weight, or if every weight is zero.
pub fn importance_log_z(log_w: &[f64]) -> Result<Estimate> {
    check_set(log_w, "importance sampling")?;
    let max = log_w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let relative: Vec<f64> = log_w.iter().map(|w| (w - max).exp()).collect();
    let (mean, var) = mean_and_variance(&relative);
    Ok(Estimate {
        value: max + mean.ln(),
        standard_error: (var / log_w.len() as f64).sqrt() / mean,
    })
}

/// Weighted populations of `n_states` states: `P_s = Σ_{i: states[i] = s} w_i / Σ_i w_i`, with
/// the sums in index order. `weights` need not be normalised (relative importance weights from
/// [`crate::boltzmann::relative_weights_into`], or ones for Boltzmann samples).
///
/// # Errors
///
/// [`Error::DimensionMismatch`] if the slices differ in length; [`Error::InvalidArgument`] for a
/// state index ≥ `n_states` or a negative weight; [`Error::NonFinite`] for a non-finite weight
/// or when the weights sum to zero (no population is defined).
pub fn state_populations(states: &[usize], weights: &[f64], n_states: usize) -> Result<Vec<f64>> {
    if weights.len() != states.len() {
        return Err(Error::size("weights", states.len(), weights.len()));
    }
    let mut p = vec![0.0; n_states];
    for (i, (&s, &w)) in states.iter().zip(weights).enumerate() {
        if !w.is_finite() {
            return Err(Error::non_finite(format!("weight {i} = {w}")));
        }
        if w < 0.0 {
            return Err(Error::invalid(format!(
                "weight {i} = {} is negative",
                Compact(w)
            )));
        }
        let slot = p.get_mut(s).ok_or_else(|| {
            Error::invalid(format!(
                "sample {i} is in state {s}, but there are {n_states} states"
            ))
        })?;
        *slot += w;
    }
    let total: f64 = p.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return Err(Error::non_finite(format!(
            "state populations: the weights sum to {total}"
        )));
    }
    p.iter_mut().for_each(|v| *v /= total);
    Ok(p)
}

/// The free-energy difference `F_to − F_from = −kT·log(P_to/P_from)` between two states of
/// populations `population_from` and `population_to` (in the energy units of kT; divide by kT
/// for units of kT). The populations need not be normalised, only on the same scale.
///
/// # Errors
///
/// [`Error::InvalidArgument`] unless both populations are positive and finite (a state of
/// population zero has no finite free energy).
pub fn free_energy_difference(kt: Kt, population_from: f64, population_to: f64) -> Result<f64> {
    for (what, p) in [("from", population_from), ("to", population_to)] {
        if !(p.is_finite() && p > 0.0) {
            return Err(Error::invalid(format!(
                "free-energy difference: population of the '{what}' state is {}; it must be \
                 positive and finite",
                Compact(p)
            )));
        }
    }
    Ok(-kt.get() * (population_to / population_from).ln())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use rand_distr::{Distribution, StandardNormal};

    /// An isotropic Gaussian in `DIM` dimensions.
    struct Gaussian {
        mean: f64,
        sd: f64,
    }

    const DIM: usize = 4;

    impl Gaussian {
        fn sample(&self, rng: &mut ChaCha20Rng, n: usize) -> Vec<[f64; DIM]> {
            (0..n)
                .map(|_| {
                    std::array::from_fn(|_| {
                        let z: f64 = StandardNormal.sample(rng);
                        self.mean + self.sd * z
                    })
                })
                .collect()
        }

        /// `−|x − μ|²/(2σ²)`: the log density without its normaliser.
        fn log_unnormalised(&self, x: &[f64; DIM]) -> f64 {
            -x.iter().map(|v| (v - self.mean).powi(2)).sum::<f64>() / (2.0 * self.sd.powi(2))
        }

        /// `log ∫ exp(log_unnormalised)`.
        fn log_normaliser(&self) -> f64 {
            0.5 * DIM as f64 * (2.0 * std::f64::consts::PI * self.sd.powi(2)).ln()
        }

        fn log_density(&self, x: &[f64; DIM]) -> f64 {
            self.log_unnormalised(x) - self.log_normaliser()
        }
    }

    /// A target `exp(C0)·N(0.5, 0.8²)` (unnormalised, log Z known) and a flow N(0, 1).
    const C0: f64 = 3.7;
    const TARGET: Gaussian = Gaussian { mean: 0.5, sd: 0.8 };
    const FLOW: Gaussian = Gaussian { mean: 0.0, sd: 1.0 };

    /// One draw of the problem: (flow log weights, target log weights, target reduced
    /// energies), with `u = −log p̃ = −(C0 + log_unnormalised)`.
    fn draw(seed: u64, n_flow: usize, n_target: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let u = |x: &[f64; DIM]| -(C0 + TARGET.log_unnormalised(x));
        let log_w = |x: &[f64; DIM]| -u(x) - FLOW.log_density(x);
        let xf = FLOW.sample(&mut rng, n_flow);
        let xp = TARGET.sample(&mut rng, n_target);
        (
            xf.iter().map(log_w).collect(),
            xp.iter().map(log_w).collect(),
            xp.iter().map(u).collect(),
        )
    }

    /// Over `estimates` of a quantity with known `truth`: every error within 5 standard errors,
    /// about 95 % within 2, and the reported standard errors on average the spread of the
    /// estimates (within 20 %, which 300 repeats resolve).
    fn check_calibration(what: &str, estimates: &[Estimate], truth: f64) {
        let n = estimates.len() as f64;
        let within_2 = estimates
            .iter()
            .filter(|e| (e.value - truth).abs() < 2.0 * e.standard_error)
            .count() as f64
            / n;
        for e in estimates {
            assert!(
                (e.value - truth).abs() < 5.0 * e.standard_error,
                "{what}: {e:?} vs {truth}"
            );
        }
        let values: Vec<f64> = estimates.iter().map(|e| e.value).collect();
        let (mean, var) = mean_and_variance(&values);
        let spread = var.sqrt();
        let mean_se = estimates.iter().map(|e| e.standard_error).sum::<f64>() / n;
        assert!(
            (0.90..=0.99).contains(&within_2),
            "{what}: {within_2} within 2 SE"
        );
        assert!(
            (0.8..1.25).contains(&(mean_se / spread)),
            "{what}: mean SE {mean_se} vs spread {spread}"
        );
        assert!(
            (mean - truth).abs() < 4.0 * spread / n.sqrt(),
            "{what}: mean {mean} vs {truth} (bias)"
        );
    }

    #[test]
    fn bridge_sampling_recovers_a_known_gaussian_normaliser_with_calibrated_errors() {
        let log_z = C0 + TARGET.log_normaliser();
        let entropy = 0.5 * DIM as f64 * (1.0 + (2.0 * std::f64::consts::PI * 0.64f64).ln());
        // KL(N(μp, σp²) ‖ N(μq, σq²)) per dimension, times DIM.
        let kl = DIM as f64
            * ((FLOW.sd / TARGET.sd).ln()
                + (TARGET.sd.powi(2) + (TARGET.mean - FLOW.mean).powi(2))
                    / (2.0 * FLOW.sd.powi(2))
                - 0.5);
        let (mut z, mut s, mut k, mut is) = (vec![], vec![], vec![], vec![]);
        for seed in 0..300 {
            let (a, b, u) = draw(seed, 2000, 1000);
            let bridge = bridge_sampling(&a, &b).unwrap();
            z.push(bridge.log_z());
            s.push(bridge.entropy(&u).unwrap());
            k.push(bridge.kl_target_to_flow());
            is.push(importance_log_z(&a).unwrap());
        }
        check_calibration("log Z", &z, log_z);
        check_calibration("entropy", &s, entropy);
        check_calibration("KL", &k, kl);
        // The standard error of importance sampling is a delta-method figure whose own spread
        // is large with these weights: check only that it is unbiased within its scatter.
        let values: Vec<f64> = is.iter().map(|e| e.value).collect();
        let (mean, var) = mean_and_variance(&values);
        assert!(
            (mean - log_z).abs() < 4.0 * (var / 300.0).sqrt() + 0.01,
            "{mean}"
        );
        // The joint error of the entropy is not the independent sum: the mean energy and
        // log Z move together through the shared target samples.
        assert!(s[0].standard_error > 0.0 && z[0].standard_error > 0.0);
    }

    #[test]
    fn shifting_the_target_shifts_log_z_and_nothing_else() {
        let (a, b, u) = draw(7, 500, 300);
        let base = bridge_sampling(&a, &b).unwrap();
        for c in [0.37, -1e3, 1e6, -2.5e8] {
            let shift = |v: &[f64]| v.iter().map(|w| w + c).collect::<Vec<f64>>();
            let shifted = bridge_sampling(&shift(&a), &shift(&b)).unwrap();
            // Round-off of the shifted inputs, not of the solver, sets the tolerance.
            let tol = 1e-12 + 16.0 * f64::EPSILON * c.abs();
            assert!(
                (shifted.log_z().value - base.log_z().value - c).abs() < tol,
                "c = {c}: {:?} vs {:?}",
                shifted.log_z(),
                base.log_z()
            );
            let rel = |x: f64, y: f64| (x - y).abs() / y;
            assert!(rel(shifted.log_z().standard_error, base.log_z().standard_error) < 1e-6);
            // u − c is the same target's reduced energy: the entropy does not move.
            let u_c: Vec<f64> = u.iter().map(|v| v - c).collect();
            let (s0, s1) = (base.entropy(&u).unwrap(), shifted.entropy(&u_c).unwrap());
            assert!((s0.value - s1.value).abs() < tol, "{s0:?} {s1:?}");
            let (k0, k1) = (base.kl_target_to_flow(), shifted.kl_target_to_flow());
            assert!((k0.value - k1.value).abs() < tol, "{k0:?} {k1:?}");
            let is0 = importance_log_z(&a).unwrap();
            let is1 = importance_log_z(&shift(&a)).unwrap();
            assert!((is1.value - is0.value - c).abs() < tol);
        }
    }

    #[test]
    fn swapping_the_roles_of_target_and_flow_negates_the_estimate() {
        // Bridge sampling estimates log(Z_p/Z_q) symmetrically: with the target samples as
        // the "flow" and the weights inverted it gives log(Z_q/Z_p).
        let (a, b, _) = draw(11, 400, 700);
        let forward = bridge_sampling(&a, &b).unwrap().log_z();
        let neg = |v: &[f64]| v.iter().map(|w| -w).collect::<Vec<f64>>();
        let backward = bridge_sampling(&neg(&b), &neg(&a)).unwrap().log_z();
        assert!(
            (forward.value + backward.value).abs() < 1e-12,
            "{forward:?}"
        );
        assert!((forward.standard_error - backward.standard_error).abs() < 1e-12);
        // The order of the samples does not matter.
        let rev = |v: &[f64]| v.iter().rev().copied().collect::<Vec<f64>>();
        let reversed = bridge_sampling(&rev(&a), &rev(&b)).unwrap().log_z();
        assert!((reversed.value - forward.value).abs() < 1e-12);
    }

    #[test]
    fn a_perfect_flow_gives_log_z_exactly_with_zero_error() {
        // q = p: every log weight is log Z.
        for (n_f, n_p) in [(2, 2), (1000, 10), (10, 1000)] {
            let bridge = bridge_sampling(&vec![-42.25; n_f], &vec![-42.25; n_p]).unwrap();
            assert!((bridge.log_z().value + 42.25).abs() < 1e-12);
            // The sample variance of equal numbers is zero up to the round-off of their mean.
            assert!(bridge.log_z().standard_error < 1e-12);
            assert!(bridge.kl_target_to_flow().value.abs() < 1e-12);
            let is = importance_log_z(&vec![-42.25; n_f]).unwrap();
            assert!((is.value + 42.25).abs() < 1e-12);
            assert!(is.standard_error < 1e-12);
        }
    }

    #[test]
    fn weights_of_zero_and_poor_overlap_give_finite_estimates() {
        let (mut a, b, _) = draw(3, 300, 300);
        a[0] = f64::NEG_INFINITY;
        a[5] = f64::NEG_INFINITY;
        let z = bridge_sampling(&a, &b).unwrap().log_z();
        assert!(z.value.is_finite() && z.standard_error.is_finite());
        // Two sets 200 nats apart: a root still exists and is found.
        let far: Vec<f64> = b.iter().map(|w| w + 200.0).collect();
        let z = bridge_sampling(&a, &far).unwrap().log_z();
        assert!(z.value.is_finite(), "{z:?}");
    }

    #[test]
    fn unusable_inputs_are_typed_errors() {
        let ok = [0.0, 1.0, -1.0];
        let invalid = |r: Result<BridgeSampling>| {
            assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
        };
        let non_finite = |r: Result<BridgeSampling>| {
            assert!(matches!(r, Err(Error::NonFinite { .. })), "{r:?}");
        };
        invalid(bridge_sampling(&[0.0], &ok));
        invalid(bridge_sampling(&ok, &[]));
        non_finite(bridge_sampling(&[0.0, f64::NAN], &ok));
        non_finite(bridge_sampling(&ok, &[0.0, f64::INFINITY]));
        non_finite(bridge_sampling(&[f64::NEG_INFINITY; 3], &ok));
        non_finite(bridge_sampling(&ok, &[0.0, f64::NEG_INFINITY]));
        let bridge = bridge_sampling(&ok, &ok).unwrap();
        assert!(matches!(
            bridge.entropy(&[1.0]),
            Err(Error::DimensionMismatch { .. })
        ));
        assert!(matches!(
            bridge.entropy(&[1.0, f64::NAN, 0.0]),
            Err(Error::NonFinite { .. })
        ));
        assert!(importance_log_z(&[1.0]).is_err());
        assert!(importance_log_z(&[f64::NEG_INFINITY; 2]).is_err());
    }

    #[test]
    fn populations_and_free_energy_differences_of_a_two_level_system() {
        // Two states with energies 0 and ε, Boltzmann weights 1 and e^(−ε/kT): ΔF = ε.
        let (epsilon, kt) = (0.75, Kt::new(1.5).unwrap());
        let states = [0, 1, 0, 1];
        let w1 = (-epsilon / kt.get()).exp();
        let p = state_populations(&states, &[1.0, w1, 1.0, w1], 3).unwrap();
        assert_eq!(p[2], 0.0);
        assert!((p[0] + p[1] - 1.0).abs() < 1e-15);
        let df = free_energy_difference(kt, p[0], p[1]).unwrap();
        assert!((df - epsilon).abs() < 1e-12, "{df}");
        assert_eq!(free_energy_difference(kt, p[1], p[0]).unwrap(), -df);
        // Unnormalised populations give the same difference.
        assert_eq!(
            free_energy_difference(kt, 2.0, 1.0).unwrap(),
            free_energy_difference(kt, 4.0, 2.0).unwrap()
        );
        assert!(free_energy_difference(kt, 0.0, 1.0).is_err());
        assert!(free_energy_difference(kt, 1.0, f64::NAN).is_err());
        assert!(state_populations(&[0, 3], &[1.0, 1.0], 3).is_err());
        assert!(state_populations(&[0, 1], &[1.0], 3).is_err());
        assert!(state_populations(&[0, 1], &[1.0, -1.0], 3).is_err());
        assert!(state_populations(&[0, 1], &[0.0, 0.0], 3).is_err());
        assert!(state_populations(&[0, 1], &[1.0, f64::INFINITY], 3).is_err());
    }
}
