//! Local minima of an energy surface: a minimiser, a saddle filter and permutation- and
//! rotation-invariant fingerprints, for counting the distinct metastable states a sampler
//! reaches (paper §7, Fig. 7 and Table 1).
//!
//! A configuration `x` is mapped to its *metastable state* ψ(x) by minimising `U` from `x`
//! ([`minimize`], L-BFGS: a quasi-Newton method without momentum, as the paper asks, so a
//! minimisation stays in the basin of attraction of gradient descent far more often than a
//! momentum method would). Gradient-based minimisers can stop at first-order saddle points,
//! so every candidate is checked by its Hessian ([`curvature`]): the D(D+1)/2 eigenvalues of
//! smallest magnitude are the translations and rotations of an energy invariant under them
//! (3 in 2-D, 6 in 3-D) and are discarded; a minimum has no remaining eigenvalue below
//! `−tolerance`. The Hessian is the central finite difference of the analytic gradient
//! (error O(h²) from the difference, O(ε·|∇U|/h) from round-off), symmetrised.
//!
//! Two minima are the same state if they agree up to rotations, reflections, translations and
//! permutations of the particles. As in the paper, this is tested without aligning them: each
//! minimum's fingerprint is its sorted list of the N(N−1)/2 pair distances ([`Fingerprint`]),
//! and two minima are taken as equal when the largest absolute difference of their lists is
//! below a threshold ([`DistinctMinima`]). Equal states have equal lists, so the counts are
//! lower bounds (two different states could share a list), as the paper says of its own.
//!
//! Energies and gradients follow [`crate::energy`]: `U` in the energy's units, the gradient is
//! `+∂U/∂x`, configurations particle-major.

use nalgebra::{DMatrix, SymmetricEigen};

use crate::energy::Energy;
use crate::error::{Error, Result, check_finite};

/// Settings of [`minimize`]. Lengths are in the energy's length units.
#[derive(Debug, Clone, PartialEq)]
pub struct MinimizerConfig {
    /// Convergence: the Euclidean norm of the gradient below this (> 0).
    pub gradient_tolerance: f64,
    /// Largest number of iterations (≥ 1); a run that reaches it reports `converged: false`.
    pub max_iterations: usize,
    /// Largest displacement of any coordinate in one step (> 0): keeps a first step from a
    /// high-energy start (overlapping Lennard-Jones particles) from flinging particles apart.
    pub max_step: f64,
    /// Number of (step, gradient change) pairs L-BFGS keeps (≥ 1).
    pub memory: usize,
}

impl Default for MinimizerConfig {
    /// Gradient norm 1e-6, 20,000 iterations, steps of at most 0.1 per coordinate, memory 10.
    fn default() -> Self {
        MinimizerConfig {
            gradient_tolerance: 1e-6,
            max_iterations: 20_000,
            max_step: 0.1,
            memory: 10,
        }
    }
}

impl MinimizerConfig {
    /// Checks every setting.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a non-positive or non-finite tolerance or step, or a zero
    /// iteration count or memory.
    pub fn validate(&self) -> Result<()> {
        if !(self.gradient_tolerance.is_finite() && self.gradient_tolerance > 0.0) {
            return Err(Error::invalid(format!(
                "minimizer: gradient_tolerance must be positive and finite, got {}",
                self.gradient_tolerance
            )));
        }
        if !(self.max_step.is_finite() && self.max_step > 0.0) {
            return Err(Error::invalid(format!(
                "minimizer: max_step must be positive and finite, got {}",
                self.max_step
            )));
        }
        if self.max_iterations == 0 || self.memory == 0 {
            return Err(Error::invalid(
                "minimizer: max_iterations and memory must be at least 1",
            ));
        }
        Ok(())
    }
}

/// The end of one minimisation, with its statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct Minimized {
    /// The final configuration.
    pub x: Vec<f64>,
    /// `U(x)` there.
    pub energy: f64,
    /// Euclidean norm of the gradient there.
    pub gradient_norm: f64,
    /// Whether the gradient norm fell below the tolerance.
    pub converged: bool,
    pub n_iterations: usize,
    /// Energy-and-gradient evaluations, line-search trials included.
    pub n_evaluations: usize,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimises `energy` from `x0` by L-BFGS with a backtracking (Armijo) line search.
///
/// A run that stalls (no step decreases the energy, even along the steepest descent, which
/// happens when round-off dominates the energy differences) or exhausts
/// [`MinimizerConfig::max_iterations`] is returned with `converged: false`, not as an error:
/// callers count such runs.
///
/// # Errors
///
/// [`Error::DimensionMismatch`] if `x0` is not one configuration of `energy`;
/// [`Error::NonFinite`] if `x0` holds a NaN or infinity or `U(x0)` is not finite (overlapping
/// particles: there is no gradient to follow); what [`MinimizerConfig::validate`] reports.
pub fn minimize<E: Energy + ?Sized>(
    energy: &E,
    x0: &[f64],
    config: &MinimizerConfig,
) -> Result<Minimized> {
    config.validate()?;
    let len = energy.n_particles() * energy.dim();
    if x0.len() != len {
        return Err(Error::size("minimize: x0", len, x0.len()));
    }
    check_finite(x0, "minimize: x0")?;
    let mut x = x0.to_vec();
    let mut g = vec![0.0; len];
    let mut f = energy.energy_gradient_into(&x, &mut g);
    if !f.is_finite() {
        return Err(Error::non_finite(format!(
            "minimize: the starting energy is {f}"
        )));
    }
    let mut n_evaluations = 1;
    // History of (s, y, 1/sᵀy), oldest first.
    let mut history: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> =
        std::collections::VecDeque::with_capacity(config.memory);
    let mut d = vec![0.0; len];
    let mut alpha = vec![0.0; config.memory];
    let mut x_new = vec![0.0; len];
    let mut g_new = vec![0.0; len];
    let mut n_iterations = 0;
    let mut converged = false;
    while n_iterations < config.max_iterations {
        if dot(&g, &g).sqrt() < config.gradient_tolerance {
            converged = true;
            break;
        }
        n_iterations += 1;
        let mut accepted = false;
        // Try the quasi-Newton direction, then (with the history cleared) steepest descent.
        for _attempt in 0..2 {
            // Two-loop recursion: d = −H g.
            d.iter_mut().zip(&g).for_each(|(d, g)| *d = -g);
            for (k, (s, y, rho)) in history.iter().enumerate().rev() {
                alpha[k] = rho * dot(s, &d);
                d.iter_mut().zip(y).for_each(|(d, y)| *d -= alpha[k] * y);
            }
            if let Some((s, y, _)) = history.back() {
                let gamma = dot(s, y) / dot(y, y);
                d.iter_mut().for_each(|d| *d *= gamma);
            }
            for (k, (s, y, rho)) in history.iter().enumerate() {
                let beta = rho * dot(y, &d);
                d.iter_mut()
                    .zip(s)
                    .for_each(|(d, s)| *d += (alpha[k] - beta) * s);
            }
            let mut slope = dot(&g, &d);
            if slope.is_nan() || slope >= 0.0 {
                d.iter_mut().zip(&g).for_each(|(d, g)| *d = -g);
                slope = dot(&g, &d);
            }
            let largest = d.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
            if largest > config.max_step {
                let scale = config.max_step / largest;
                d.iter_mut().for_each(|d| *d *= scale);
                slope *= scale;
            }
            // Energy differences below the round-off of a sum of pair terms are noise.
            let slack = 1e-13 * f.abs().max(1.0);
            let mut step = 1.0;
            for _ in 0..60 {
                for ((xn, x), d) in x_new.iter_mut().zip(&x).zip(&d) {
                    *xn = x + step * d;
                }
                let f_new = energy.energy_gradient_into(&x_new, &mut g_new);
                n_evaluations += 1;
                if f_new.is_finite() && f_new <= f + 1e-4 * step * slope + slack {
                    accepted = true;
                    let s: Vec<f64> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
                    let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
                    let sy = dot(&s, &y);
                    // Keep only pairs with positive curvature, so H stays positive definite.
                    if sy > 1e-300 && dot(&y, &y) > 0.0 {
                        if history.len() == config.memory {
                            history.pop_front();
                        }
                        history.push_back((s, y, 1.0 / sy));
                    }
                    std::mem::swap(&mut x, &mut x_new);
                    std::mem::swap(&mut g, &mut g_new);
                    f = f_new;
                    break;
                }
                step *= 0.5;
            }
            if accepted {
                break;
            }
            if history.is_empty() {
                break;
            }
            history.clear();
        }
        if !accepted {
            break;
        }
    }
    let gradient_norm = dot(&g, &g).sqrt();
    converged |= gradient_norm < config.gradient_tolerance;
    Ok(Minimized {
        x,
        energy: f,
        gradient_norm,
        converged,
        n_iterations,
        n_evaluations,
    })
}

/// The Hessian `∂²U/∂x²` at `x` by central differences of the analytic gradient with step
/// `step` (length units), symmetrised: `N·D` pairs of gradient evaluations.
///
/// # Errors
///
/// [`Error::DimensionMismatch`] if `x` is not one configuration of `energy`;
/// [`Error::NonFinite`] if `x` or a gradient is not finite; [`Error::InvalidArgument`] for a
/// non-positive or non-finite `step`.
pub fn hessian<E: Energy + ?Sized>(energy: &E, x: &[f64], step: f64) -> Result<DMatrix<f64>> {
    let len = energy.n_particles() * energy.dim();
    if x.len() != len {
        return Err(Error::size("hessian: x", len, x.len()));
    }
    check_finite(x, "hessian: x")?;
    if !(step.is_finite() && step > 0.0) {
        return Err(Error::invalid(format!(
            "hessian: step must be positive and finite, got {step}"
        )));
    }
    let mut h = DMatrix::zeros(len, len);
    let mut xp = x.to_vec();
    let mut g_plus = vec![0.0; len];
    let mut g_minus = vec![0.0; len];
    for j in 0..len {
        xp[j] = x[j] + step;
        energy.energy_gradient_into(&xp, &mut g_plus);
        xp[j] = x[j] - step;
        energy.energy_gradient_into(&xp, &mut g_minus);
        xp[j] = x[j];
        for i in 0..len {
            h[(i, j)] = (g_plus[i] - g_minus[i]) / (2.0 * step);
        }
    }
    let h = (&h + h.transpose()) * 0.5;
    if h.iter().any(|v| !v.is_finite()) {
        return Err(Error::non_finite(
            "hessian: a gradient near x is not finite",
        ));
    }
    Ok(h)
}

/// Settings of the saddle filter [`curvature`].
#[derive(Debug, Clone, PartialEq)]
pub struct SaddleFilter {
    /// Finite-difference step of the Hessian (length units, > 0).
    pub step: f64,
    /// An eigenvalue is negative when below `−relative_tolerance · max|λ|` (≥ 0): the
    /// difference Hessian carries errors of about `step² · |U''''|` and round-off.
    pub relative_tolerance: f64,
}

impl Default for SaddleFilter {
    /// Step 1e-5, relative tolerance 1e-6.
    fn default() -> Self {
        SaddleFilter {
            step: 1e-5,
            relative_tolerance: 1e-6,
        }
    }
}

/// The Hessian spectrum at a stationary point with the rigid-body modes left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Curvature {
    /// Eigenvalues below `−relative_tolerance · max|λ|` among those kept: 0 at a minimum, 1 at
    /// a first-order saddle.
    pub n_negative: usize,
    /// The smallest eigenvalue kept.
    pub lowest: f64,
    /// The largest magnitude among the discarded zero modes (should be ≈ 0; a large value
    /// says the point is not stationary or the energy is not invariant).
    pub largest_zero_mode: f64,
    /// All eigenvalues, ascending, zero modes included.
    pub eigenvalues: Vec<f64>,
}

impl Curvature {
    /// No negative eigenvalue outside the zero modes.
    #[must_use]
    pub fn is_minimum(&self) -> bool {
        self.n_negative == 0
    }
}

/// Number of rigid-body zero modes of N particles in D dimensions: D translations and
/// D(D−1)/2 rotations (capped by the N·D coordinates; N = 2 in 2-D has 3, like any N in 2-D).
#[must_use]
pub fn n_zero_modes(n_particles: usize, dim: usize) -> usize {
    (dim * (dim + 1) / 2).min(n_particles * dim)
}

/// The Hessian spectrum at `x` with the [`n_zero_modes`] eigenvalues of smallest magnitude
/// discarded (nalgebra's `SymmetricEigen`).
///
/// # Errors
///
/// What [`hessian`] reports; [`Error::InvalidArgument`] for a negative or non-finite
/// tolerance.
pub fn curvature<E: Energy + ?Sized>(
    energy: &E,
    x: &[f64],
    filter: &SaddleFilter,
) -> Result<Curvature> {
    if !(filter.relative_tolerance.is_finite() && filter.relative_tolerance >= 0.0) {
        return Err(Error::invalid(format!(
            "saddle filter: relative_tolerance must be non-negative and finite, got {}",
            filter.relative_tolerance
        )));
    }
    let h = hessian(energy, x, filter.step)?;
    let mut eigenvalues: Vec<f64> = SymmetricEigen::new(h).eigenvalues.iter().copied().collect();
    eigenvalues.sort_by(f64::total_cmp);
    let n_zero = n_zero_modes(energy.n_particles(), energy.dim());
    let mut by_magnitude: Vec<f64> = eigenvalues.clone();
    by_magnitude.sort_by(|a, b| a.abs().total_cmp(&b.abs()));
    let largest_zero_mode = by_magnitude[..n_zero]
        .iter()
        .fold(0.0_f64, |m, v| m.max(v.abs()));
    let kept = &by_magnitude[n_zero..];
    let scale = eigenvalues.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    let threshold = -filter.relative_tolerance * scale;
    Ok(Curvature {
        n_negative: kept.iter().filter(|&&l| l < threshold).count(),
        lowest: kept.iter().copied().fold(f64::INFINITY, f64::min),
        largest_zero_mode,
        eigenvalues,
    })
}

/// The sorted list of the N(N−1)/2 pair distances of a configuration: invariant under
/// permutations, rotations, reflections and translations.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint(Vec<f64>);

impl Fingerprint {
    /// The fingerprint of the particle-major configuration `x` in `dim` dimensions.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `dim` is zero or does not divide `x.len()`.
    pub fn of(x: &[f64], dim: usize) -> Result<Self> {
        if dim == 0 || !x.len().is_multiple_of(dim) {
            return Err(Error::invalid(format!(
                "fingerprint: {} coordinates are not particles of dimension {dim}",
                x.len()
            )));
        }
        let n = x.len() / dim;
        let mut d = Vec::with_capacity(n * n.saturating_sub(1) / 2);
        for i in 0..n {
            for j in i + 1..n {
                let r2: f64 = (0..dim)
                    .map(|k| (x[i * dim + k] - x[j * dim + k]).powi(2))
                    .sum();
                d.push(r2.sqrt());
            }
        }
        d.sort_by(f64::total_cmp);
        Ok(Fingerprint(d))
    }

    /// The sorted pair distances.
    #[must_use]
    pub fn distances(&self) -> &[f64] {
        &self.0
    }

    /// Largest absolute difference of two fingerprints (∞ for lists of different lengths).
    #[must_use]
    pub fn distance(&self, other: &Fingerprint) -> f64 {
        if self.0.len() != other.0.len() {
            return f64::INFINITY;
        }
        self.0
            .iter()
            .zip(&other.0)
            .fold(0.0_f64, |m, (a, b)| m.max((a - b).abs()))
    }

    /// Whether the largest absolute difference is below `threshold` (stops at the first
    /// difference that is not).
    #[must_use]
    pub fn matches(&self, other: &Fingerprint, threshold: f64) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| (a - b).abs() < threshold)
    }
}

/// One distinct state of a [`DistinctMinima`] set: the first configuration seen of it.
#[derive(Debug, Clone, PartialEq)]
pub struct DistinctMinimum {
    pub x: Vec<f64>,
    pub energy: f64,
    pub fingerprint: Fingerprint,
    /// How many inserted configurations matched it.
    pub n_hits: usize,
}

/// A set of configurations up to the fingerprint threshold: each insert either matches a
/// member (first match in insertion order) or becomes one.
#[derive(Debug, Clone, PartialEq)]
pub struct DistinctMinima {
    dim: usize,
    threshold: f64,
    members: Vec<DistinctMinimum>,
}

impl DistinctMinima {
    /// An empty set for configurations in `dim` dimensions; two fingerprints match when their
    /// largest difference is below `threshold` (length units).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for `dim == 0` or a non-positive or non-finite threshold.
    pub fn new(dim: usize, threshold: f64) -> Result<Self> {
        if dim == 0 || !(threshold.is_finite() && threshold > 0.0) {
            return Err(Error::invalid(format!(
                "distinct minima: need dim ≥ 1 and a positive finite threshold, got {dim} and \
                 {threshold}"
            )));
        }
        Ok(DistinctMinima {
            dim,
            threshold,
            members: Vec::new(),
        })
    }

    /// Adds a configuration with its energy; returns the index of the member it matched or
    /// became.
    ///
    /// # Errors
    ///
    /// What [`Fingerprint::of`] reports.
    pub fn insert(&mut self, x: &[f64], energy: f64) -> Result<usize> {
        let fingerprint = Fingerprint::of(x, self.dim)?;
        if let Some(k) = self
            .members
            .iter()
            .position(|m| m.fingerprint.matches(&fingerprint, self.threshold))
        {
            self.members[k].n_hits += 1;
            return Ok(k);
        }
        self.members.push(DistinctMinimum {
            x: x.to_vec(),
            energy,
            fingerprint,
            n_hits: 1,
        });
        Ok(self.members.len() - 1)
    }

    /// The index of the member `x` matches, if any (the set is unchanged).
    ///
    /// # Errors
    ///
    /// What [`Fingerprint::of`] reports.
    pub fn find(&self, x: &[f64]) -> Result<Option<usize>> {
        let fingerprint = Fingerprint::of(x, self.dim)?;
        Ok(self
            .members
            .iter()
            .position(|m| m.fingerprint.matches(&fingerprint, self.threshold)))
    }

    /// The members, in the order they were first seen.
    #[must_use]
    pub fn members(&self) -> &[DistinctMinimum] {
        &self.members
    }

    /// Keeps only the members for which `keep` is true.
    pub fn retain(&mut self, keep: impl FnMut(&DistinctMinimum) -> bool) {
        self.members.retain(keep);
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Members with energy in the open interval `(lo, hi)` (`lo = −∞` allowed).
    #[must_use]
    pub fn count_in(&self, lo: f64, hi: f64) -> usize {
        self.members
            .iter()
            .filter(|m| m.energy > lo && m.energy < hi)
            .count()
    }
}
