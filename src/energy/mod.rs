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
//! - **Infinite energies.** `U = +∞` is a legitimate value (overlapping Lennard-Jones particles):
//!   the Metropolis step always rejects it. [`DoubleWell`] and [`LennardJones`] never return NaN
//!   for finite coordinates below ~1e150 in magnitude (beyond that, squared distances overflow);
//!   where `U` is infinite their gradient is finite but carries no meaning.
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

use crate::error::check_finite;
use crate::{Error, Result};

/// A potential energy `U(x)` of `N` identical particles in `D` dimensions.
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
/// [`Error::NonFinite`] if `x` contains a NaN or infinity, [`Error::InvalidArgument`] if the
/// energy reports zero coordinates per configuration. Nothing is written on failure.
///
/// Samples are distributed over the rayon thread pool, each evaluated sequentially, so the
/// results are bit-identical whatever the number of threads.
pub fn energies_into<E: Energy + ?Sized>(energy: &E, x: &[f64], u: &mut [f64]) -> Result<()> {
    let per_sample = check_batch(energy, x, u.len())?;
    u.par_iter_mut()
        .zip(x.par_chunks_exact(per_sample))
        .for_each(|(u_s, x_s)| *u_s = energy.energy(x_s));
    Ok(())
}

/// Energies and gradients `+∂U/∂x` of a batch: as [`energies_into`], with the gradient of sample
/// `s` written to `gradient[s·N·D .. (s+1)·N·D]` (`gradient.len()` must equal `x.len()`).
///
/// # Errors
///
/// As [`energies_into`], plus [`Error::DimensionMismatch`] if `gradient.len() != x.len()`.
/// Nothing is written on failure. Results are bit-identical whatever the number of threads.
pub fn energies_gradients_into<E: Energy + ?Sized>(
    energy: &E,
    x: &[f64],
    u: &mut [f64],
    gradient: &mut [f64],
) -> Result<()> {
    let per_sample = check_batch(energy, x, u.len())?;
    if gradient.len() != x.len() {
        return Err(Error::size("gradient (batch)", x.len(), gradient.len()));
    }
    u.par_iter_mut()
        .zip(x.par_chunks_exact(per_sample))
        .zip(gradient.par_chunks_exact_mut(per_sample))
        .for_each(|((u_s, x_s), g_s)| *u_s = energy.energy_gradient_into(x_s, g_s));
    Ok(())
}

/// Squared distance between two particles given as coordinate slices of equal length.
#[inline]
fn squared_distance(xi: &[f64], xj: &[f64]) -> f64 {
    xi.iter().zip(xj).map(|(a, b)| (a - b) * (a - b)).sum()
}

/// Adds the gradient of a pair term `f(d_ij)` to particles `i < j`:
/// `∂f/∂x_i = f'(d) (x_i − x_j)/d` and the opposite to `j`.
///
/// The caller skips pairs with `d == 0` or non-finite `dudd`. The unit vector is formed
/// component by component, `r_k / d`, rather than by multiplying with `1/d`, because `1/d`
/// overflows for subnormal `d` while `|r_k / d| ≤ 1` cannot.
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
    let xi = &x[i * dim..(i + 1) * dim];
    let xj = &x[j * dim..(j + 1) * dim];
    // Two disjoint mutable rows at once; also lets the compiler drop bounds checks in the loop.
    let (head, tail) = gradient.split_at_mut(j * dim);
    let gi = &mut head[i * dim..(i + 1) * dim];
    let gj = &mut tail[..dim];
    for (((gi_k, gj_k), xi_k), xj_k) in gi.iter_mut().zip(gj).zip(xi).zip(xj) {
        let g = dudd * ((xi_k - xj_k) / d);
        *gi_k += g;
        *gj_k -= g;
    }
}
