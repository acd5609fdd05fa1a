//! Potential energies of particle configurations: the target a Boltzmann generator is trained
//! towards and the energy the Monte Carlo move reweights with.
//!
//! # Conventions
//!
//! - **Units.** [`Energy::energy`] returns `U(x)` in the energy units of the model's parameters
//!   (for the benchmark systems of DESIGN.md §2 these are units of kT = 1). The reduced energy
//!   `u(x) = U(x)/kT` that enters Boltzmann weights is formed by the caller, which owns kT; nothing
//!   in this module knows a temperature.
//! - **Sign.** The derivative returned by [`Energy::energy_gradient_into`] is the *gradient*
//!   `+∂U/∂x`, not the force `−∂U/∂x`. It is called `gradient` everywhere.
//! - **Layout.** A configuration of `N` particles in `D` dimensions is a flat slice of length
//!   `N·D`, particle-major: component `k` of particle `i` is `x[i*D + k]` (C `double x[N][D]`,
//!   Fortran `x(D,N)`). A batch of `n` configurations is `n` such blocks one after another.
//! - **Infinite energies.** `U = +∞` is a legitimate value (overlapping Lennard-Jones particles,
//!   configurations whose energy overflows): the Metropolis step always rejects it. Where `U = +∞`
//!   the built-in energies write a finite gradient that carries no meaning (terms whose
//!   derivative is singular or overflows contribute zero). `NaN` and `−∞` are never valid
//!   energies.
//! - **Finite coordinates.** The built-in energies handle any finite coordinates, up to
//!   `±f64::MAX`: distances are formed without overflowing (or underflowing) intermediate
//!   squares, and a difference of coordinates that overflows never turns into NaN. Where `U` is
//!   finite the gradient is finite unless its true value is not representable (it overflows);
//!   it then holds a non-finite value. Values that no `f64` can hold (a `−∞` energy, `+∞ − ∞`
//!   between pairs of absurd coefficients, an overflowing gradient) are reported by the checked
//!   batch helpers [`energies_into`] and [`energies_gradients_into`] as [`Error::NonFinite`]
//!   naming the output: they never return a NaN or `−∞` energy, nor a non-finite gradient,
//!   with success.
//!
//! The single-configuration methods trust their caller on sizes (they are the inner loop); the
//! batch helpers [`energies_into`] and [`energies_gradients_into`] are the checked entry points.

mod double_well;
mod lennard_jones;
mod serial;
mod species_lennard_jones;

pub use double_well::DoubleWell;
pub use lennard_jones::LennardJones;
pub use serial::SerialEnergy;
pub use species_lennard_jones::SpeciesLennardJones;

use rayon::prelude::*;

use crate::error::{Compact, check_finite};
use crate::{Error, Result, Species};

/// A potential energy `U(x)` of `N` particles in `D` dimensions, identical unless
/// [`Energy::species`] says otherwise.
///
/// Implementations must be pure functions of `x` (no interior state), so that batches can be
/// evaluated in parallel and give identical results for any thread count.
pub trait Energy: Send + Sync {
    /// Number of particles `N`.
    fn n_particles(&self) -> usize;

    /// Spatial dimension `D`.
    fn dim(&self) -> usize;

    /// `U(x)` for one particle-major configuration.
    ///
    /// `x.len() == n_particles() * dim()` is the caller's guarantee (checked only in debug
    /// builds); use [`energies_into`] for checked input.
    fn energy(&self, x: &[f64]) -> f64;

    /// `U(x)`, and the gradient `+∂U/∂x` written into `gradient` (same length and layout as `x`,
    /// overwritten). Returns `U(x)`, equal to what [`Energy::energy`] returns.
    ///
    /// Sizes are the caller's guarantee, as for [`Energy::energy`].
    fn energy_gradient_into(&self, x: &[f64], gradient: &mut [f64]) -> f64;

    /// The species of the particles, where the energy tells them apart; `None` (the default)
    /// when all particles are identical. A flow trained towards the energy must tell the same
    /// particles apart ([`crate::train::Trainer`] checks it).
    fn species(&self) -> Option<&Species> {
        None
    }
}

/// Numbers of configurations and of coordinates per configuration, after checking that `x`
/// holds exactly `u.len()` configurations of `energy`.
fn check_batch<E: Energy + ?Sized>(energy: &E, x: &[f64], n_samples: usize) -> Result<usize> {
    let per_sample = energy
        .n_particles()
        .checked_mul(energy.dim())
        .filter(|&m| m > 0)
        .ok_or_else(|| {
            Error::invalid("energy: n_particles * dim must be positive and fit in usize")
        })?;
    let expected = n_samples.checked_mul(per_sample).ok_or_else(|| {
        Error::invalid("energies: batch size * n_particles * dim overflows usize")
    })?;
    if x.len() != expected {
        return Err(Error::size(
            "x (batch of configurations)",
            expected,
            x.len(),
        ));
    }
    check_finite(x, "x")?;
    Ok(per_sample)
}

/// Energies of a batch: `u[s] = U(x_s)` for the `n = u.len()` configurations stored one after
/// another in `x` (`x.len()` must be `n · N · D`).
///
/// # Errors
///
/// [`Error::DimensionMismatch`] if `x` does not hold exactly `u.len()` configurations,
/// [`Error::NonFinite`] if `x` contains a NaN or infinity or if an energy is NaN or `−∞` (not a
/// valid energy; `+∞` is), [`Error::InvalidArgument`] if the energy reports zero coordinates per
/// configuration, [`Error::Resource`] if the temporary results cannot be allocated. Nothing is
/// written on failure.
///
/// Samples are distributed over the rayon thread pool, each evaluated sequentially, so the
/// results are bit-identical whatever the number of threads.
pub fn energies_into<E: Energy + ?Sized>(energy: &E, x: &[f64], u: &mut [f64]) -> Result<()> {
    check_batch(energy, x, u.len())?;
    let mut values = crate::alloc::zeros(Some(u.len()), "energies (temporary)")?;
    evaluate_into(energy, x, &mut values, None)?;
    u.copy_from_slice(&values);
    Ok(())
}

/// Energies and gradients `+∂U/∂x` of a batch: as [`energies_into`], with the gradient of sample
/// `s` written to `gradient[s·N·D .. (s+1)·N·D]` (`gradient.len()` must equal `x.len()`).
/// Where `u[s] = +∞` the gradient of sample `s` is finite but carries no meaning.
///
/// # Errors
///
/// As [`energies_into`], plus [`Error::DimensionMismatch`] if `gradient.len() != x.len()` and
/// [`Error::NonFinite`] if a gradient component is NaN or infinite (its true value overflows),
/// naming the configuration, particle and component. Nothing is written on failure. Results
/// are bit-identical whatever the number of threads.
pub fn energies_gradients_into<E: Energy + ?Sized>(
    energy: &E,
    x: &[f64],
    u: &mut [f64],
    gradient: &mut [f64],
) -> Result<()> {
    check_batch(energy, x, u.len())?;
    if gradient.len() != x.len() {
        return Err(Error::size("gradient (batch)", x.len(), gradient.len()));
    }
    let mut values = crate::alloc::zeros(Some(u.len()), "energies (temporary)")?;
    let mut gradients = crate::alloc::zeros(Some(gradient.len()), "gradients (temporary)")?;
    evaluate_into(energy, x, &mut values, Some(&mut gradients))?;
    u.copy_from_slice(&values);
    gradient.copy_from_slice(&gradients);
    Ok(())
}

/// The work of [`energies_into`] and [`energies_gradients_into`] in place, for callers that
/// already evaluate into temporaries (the C API): `u` (and `gradient`, if given) are overwritten
/// and then checked, so on failure they hold unspecified values and must be discarded.
pub(crate) fn evaluate_into<E: Energy + ?Sized>(
    energy: &E,
    x: &[f64],
    u: &mut [f64],
    gradient: Option<&mut [f64]>,
) -> Result<()> {
    let per_sample = check_batch(energy, x, u.len())?;
    match gradient {
        None => {
            u.par_iter_mut()
                .zip(x.par_chunks_exact(per_sample))
                .for_each(|(u_s, x_s)| *u_s = energy.energy(x_s));
            check_energies(u)
        }
        Some(gradient) => {
            if gradient.len() != x.len() {
                return Err(Error::size("gradient (batch)", x.len(), gradient.len()));
            }
            u.par_iter_mut()
                .zip(x.par_chunks_exact(per_sample))
                .zip(gradient.par_chunks_exact_mut(per_sample))
                .for_each(|((u_s, x_s), g_s)| *u_s = energy.energy_gradient_into(x_s, g_s));
            check_energies(u)?;
            check_gradients(u, gradient, per_sample, energy.dim())
        }
    }
}

/// Fails with [`Error::NonFinite`] at the first energy that is NaN or `−∞`.
fn check_energies(u: &[f64]) -> Result<()> {
    match u.iter().position(|v| v.is_nan() || *v == f64::NEG_INFINITY) {
        None => Ok(()),
        Some(s) => Err(Error::non_finite(format!(
            "U[{s}] = {}: the energy of configuration {s} is not representable (finite \
             coordinates whose energy overflows to -inf, or to +inf and -inf in different \
             terms); only +inf is a valid infinite energy",
            u[s]
        ))),
    }
}

/// Fails with [`Error::NonFinite`] at the first gradient component that is NaN or infinite.
fn check_gradients(u: &[f64], gradient: &[f64], per_sample: usize, dim: usize) -> Result<()> {
    match gradient.iter().position(|g| !g.is_finite()) {
        None => Ok(()),
        Some(index) => {
            let (s, within) = (index / per_sample, index % per_sample);
            let dim = dim.max(1);
            Err(Error::non_finite(format!(
                "gradient[{index}] = {} (configuration {s}, particle {}, component {}, where \
                 U = {}): the gradient is not representable there (it overflows)",
                gradient[index],
                within / dim,
                within % dim,
                Compact(u[s])
            )))
        }
    }
}

/// The mean of coordinate `k` over the `n` particles of `x` (particle-major, `dim` per
/// particle). Summed first, as always; if that sum overflows (coordinates near `±f64::MAX`) the
/// terms are divided by `n` first, which cannot overflow.
#[inline]
fn coordinate_mean(x: &[f64], n: usize, dim: usize, k: usize) -> f64 {
    let sum = (0..n).map(|i| x[i * dim + k]).sum::<f64>();
    if sum.is_finite() {
        return sum / n as f64;
    }
    (0..n).map(|i| x[i * dim + k] / n as f64).sum()
}

/// What an `energy_gradient_into` of a built-in energy does last: where `U = +∞` the gradient
/// carries no meaning and is made finite (non-finite components become 0); where `U` is finite
/// but a term's derivative overflowed (and was left out), the gradient is not representable and
/// is filled with NaN, which the checked batch helpers report.
fn finish_gradient(u: f64, gradient: &mut [f64], overflowed: bool) {
    if u == f64::INFINITY {
        gradient
            .iter_mut()
            .filter(|g| !g.is_finite())
            .for_each(|g| *g = 0.0);
    } else if overflowed && u.is_finite() {
        gradient.fill(f64::NAN);
    }
}

/// Squared distance between two particles given as coordinate slices of equal length.
#[inline]
fn squared_distance(xi: &[f64], xj: &[f64]) -> f64 {
    xi.iter().zip(xj).map(|(a, b)| (a - b) * (a - b)).sum()
}

/// Euclidean distance between two particles, exact to rounding for any finite coordinates:
/// the plain `sqrt(Σ r_k²)` unless the squares overflow or underflow, then scaled by the largest
/// component (of the halved differences, if a difference itself may overflow). `+∞` only when
/// the distance exceeds `f64::MAX`.
#[inline]
fn distance(xi: &[f64], xj: &[f64]) -> f64 {
    let d2 = squared_distance(xi, xj);
    if d2.is_finite() && d2 >= f64::MIN_POSITIVE {
        return d2.sqrt();
    }
    let halve = !d2.is_finite();
    match scaled_difference(xi, xj, halve) {
        None => 0.0,
        Some((m, norm)) => {
            let d = m * norm;
            if halve { 2.0 * d } else { d }
        }
    }
}

/// `x_i − x_j` (each component halved first if `halve`, so that no difference overflows) as
/// its largest component magnitude `m` and the norm of the difference divided by `m`: the
/// length is `m · norm` (twice that if halved), formed without overflow or underflow. `None`
/// for a zero difference. Shared by [`distance`] and the slow path of [`add_pair_gradient`].
#[inline]
fn scaled_difference(xi: &[f64], xj: &[f64], halve: bool) -> Option<(f64, f64)> {
    let m = xi
        .iter()
        .zip(xj)
        .map(|(&a, &b)| difference(a, b, halve).abs())
        .fold(0.0, f64::max);
    if m == 0.0 {
        return None;
    }
    let norm = xi
        .iter()
        .zip(xj)
        .map(|(&a, &b)| {
            let t = difference(a, b, halve) / m;
            t * t
        })
        .sum::<f64>()
        .sqrt();
    Some((m, norm))
}

/// `a − b`, or `a/2 − b/2` (which cannot overflow) if `halve`.
#[inline]
fn difference(a: f64, b: f64, halve: bool) -> f64 {
    if halve { a * 0.5 - b * 0.5 } else { a - b }
}

/// Adds the gradient of a pair term `f(d_ij)` to particles `i < j`:
/// `∂f/∂x_i = f'(d) (x_i − x_j)/d` and the opposite to `j`.
///
/// Pairs with `d == 0` (no direction) or `dudd == 0` (no contribution) are skipped. The unit
/// vector is formed component by component, `r_k / d`, rather than by multiplying with `1/d`,
/// because `1/d` overflows for subnormal `d` while `|r_k / d| ≤ 1` cannot; where `d` or a
/// difference `r_k` is not finite (coordinates near `±f64::MAX`), it is formed from the halved
/// differences scaled by their largest component, so that `∞/∞` never makes a NaN.
#[inline]
fn add_pair_gradient(
    x: &[f64],
    gradient: &mut [f64],
    dim: usize,
    (i, j): (usize, usize),
    d: f64,
    dudd: f64,
) {
    debug_assert!(i < j);
    if d == 0.0 || dudd == 0.0 {
        return;
    }
    let xi = &x[i * dim..(i + 1) * dim];
    let xj = &x[j * dim..(j + 1) * dim];
    // Two disjoint mutable rows at once; also lets the compiler drop bounds checks in the loop.
    let (head, tail) = gradient.split_at_mut(j * dim);
    let gi = &mut head[i * dim..(i + 1) * dim];
    let gj = &mut tail[..dim];
    let fast = d.is_finite() && xi.iter().zip(xj).all(|(a, b)| (a - b).is_finite());
    if fast {
        for (((gi_k, gj_k), xi_k), xj_k) in gi.iter_mut().zip(gj).zip(xi).zip(xj) {
            let g = dudd * ((xi_k - xj_k) / d);
            *gi_k += g;
            *gj_k -= g;
        }
        return;
    }
    let Some((m, norm)) = scaled_difference(xi, xj, true) else {
        return;
    };
    for (((gi_k, gj_k), &xi_k), &xj_k) in gi.iter_mut().zip(gj).zip(xi).zip(xj) {
        let g = dudd * ((difference(xi_k, xj_k, true) / m) / norm);
        *gi_k += g;
        *gj_k -= g;
    }
}
