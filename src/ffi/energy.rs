//! Built-in benchmark energies behind an opaque `eqf_energy` handle.

use std::sync::Arc;

use crate::energy::{DoubleWell, Energy, LennardJones, SpeciesLennardJones, evaluate_into};
use crate::{Error, Result};

use super::{
    EQF_MAX_PARTICLES, Region, array_len, catch, check_disjoint, check_not_null, check_output,
    count, free_handle, handle, input_array, scratch, species_from, threads, write_handle,
    write_output,
};

/// An energy function U(x) of N particles in D dimensions (opaque).
///
/// Created by `eqf_energy_double_well`, `eqf_energy_lennard_jones` or
/// `eqf_energy_lennard_jones_species`, owned by the caller and
/// released with `eqf_energy_free`. An energy is immutable: one handle may be used from several
/// threads at the same time.
#[allow(non_camel_case_types)]
pub struct eqf_energy {
    /// Shared, so that training options can keep the energy after the handle is freed.
    pub(super) inner: Arc<dyn Energy>,
}

/// Converts the (particles, dimensions) pair of a constructor into `usize`, with the limits of
/// every energy and flow: at most `EQF_MAX_PARTICLES` particles and at most `EQF_MAX_ELEMENTS`
/// numbers per configuration (`EQF_ERR_INVALID_ARGUMENT`, as `eqf_flow_new`).
fn shape(n_particles: i64, dim: i64) -> Result<(usize, usize)> {
    let (n, d) = (count(n_particles, "n_particles")?, count(dim, "dim")?);
    if n > crate::geometry::MAX_PARTICLES {
        return Err(Error::invalid(format!(
            "n_particles = {n} exceeds EQF_MAX_PARTICLES = {EQF_MAX_PARTICLES}"
        )));
    }
    array_len(n, d, "a configuration (n_particles x dim)")?;
    Ok((n, d))
}

/// Validates `out`, builds the energy, and hands it to the caller.
///
/// # Safety
/// `out` must be NULL or valid for one pointer write.
unsafe fn create(
    out: *mut *mut eqf_energy,
    build: impl FnOnce() -> Result<Arc<dyn Energy>>,
) -> i32 {
    catch(|| {
        check_not_null(out, "out")?;
        let inner = build()?;
        // SAFETY: `out` is non-NULL (checked above) and valid for one write (the caller's
        // contract); it is written only now that the energy was built successfully.
        unsafe { write_handle(out, eqf_energy { inner }) };
        Ok(())
    })
}

/// Creates the pairwise double-well energy of the DW-2 / DW-4 benchmarks (reduced units):
///
/// ```text
/// U(x) = sum over unordered pairs i < j of  a (d - d0) + b (d - d0)^2 + c (d - d0)^4,
/// ```
///
/// with d = |x_i - x_j| the plain Euclidean distance. The benchmark parameters are a = 0,
/// b = -4, c = 0.9, d0 = 4 (with kT = 1).
///
/// @param n_particles  N, number of particles (1 to EQF_MAX_PARTICLES; a single particle has
///                     U = 0)
/// @param dim          D, spatial dimension (at least 1, with N*D at most EQF_MAX_ELEMENTS)
/// @param a, b, c, d0  the polynomial coefficients and the reference distance
/// @param out          on success receives a new energy, to be released with
///                     `eqf_energy_free`; untouched on failure
/// @return EQF_OK; EQF_ERR_NULL_POINTER (out is NULL); EQF_ERR_INVALID_ARGUMENT (n_particles
///         or dim negative, zero or too large); EQF_ERR_NON_FINITE (a parameter is NaN or
///         infinite)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_energy_double_well(
    n_particles: i64,
    dim: i64,
    a: f64,
    b: f64,
    c: f64,
    d0: f64,
    out: *mut *mut eqf_energy,
) -> i32 {
    // SAFETY: `out` is NULL (rejected by `create`) or valid for one write (this function's
    // contract).
    unsafe {
        create(out, || {
            let (n_particles, dim) = shape(n_particles, dim)?;
            Ok(Arc::new(DoubleWell::new(n_particles, dim, a, b, c, d0)?))
        })
    }
}

/// Creates the Lennard-Jones cluster energy of the LJ-13 benchmark (reduced units):
///
/// ```text
/// U(x) = epsilon * sum over i < j of [ (r_m/d)^12 - 2 (r_m/d)^6 ]
///        + (oscillator_k / 2) * sum over i of |x_i - x_mean|^2,
/// ```
///
/// with d = |x_i - x_j|; the harmonic term holds the cluster together around its centre of mass.
/// The LJ-13 benchmark uses epsilon = 2, r_m = 1, oscillator_k = 1 (kT = 1): epsilon = 2
/// reproduces the convention of the published LJ-13 data sets.
///
/// @param n_particles   N, number of particles (1 to EQF_MAX_PARTICLES)
/// @param dim           D, spatial dimension (at least 1, with N*D at most EQF_MAX_ELEMENTS)
/// @param epsilon       well depth (> 0)
/// @param r_m           distance of the pair minimum (> 0)
/// @param oscillator_k  spring constant of the centre-of-mass oscillator (>= 0)
/// @param out           on success receives a new energy, to be released with
///                      `eqf_energy_free`; untouched on failure
/// @return EQF_OK; EQF_ERR_NULL_POINTER (out is NULL); EQF_ERR_NON_FINITE (a parameter is NaN
///         or infinite); EQF_ERR_INVALID_ARGUMENT (n_particles or dim negative, zero or too
///         large, or a parameter out of range)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_energy_lennard_jones(
    n_particles: i64,
    dim: i64,
    epsilon: f64,
    r_m: f64,
    oscillator_k: f64,
    out: *mut *mut eqf_energy,
) -> i32 {
    // SAFETY: `out` is NULL (rejected by `create`) or valid for one write (this function's
    // contract).
    unsafe {
        create(out, || {
            let (n_particles, dim) = shape(n_particles, dim)?;
            Ok(Arc::new(LennardJones::new(
                n_particles,
                dim,
                epsilon,
                r_m,
                oscillator_k,
            )?))
        })
    }
}

/// Creates a Lennard-Jones cluster energy of several particle species, with one well depth and
/// one pair-minimum distance per pair of species:
///
/// ```text
/// U(x) = sum over i < j of epsilon[a][b] * [ (r_m[a][b]/d)^12 - 2 (r_m[a][b]/d)^6 ]
///        + (oscillator_k / 2) * sum over i of |x_i - x_mean|^2,
/// ```
///
/// with a = species[i], b = species[j], d = |x_i - x_j|: the convention of
/// `eqf_energy_lennard_jones` per species pair (which it equals when every entry is the same).
/// `epsilon` and `r_m` are symmetric n_species x n_species arrays, row-major
/// (`epsilon[a * n_species + b]`), C `double epsilon[S][S]`.
///
/// @param n_particles   N, number of particles (1 to EQF_MAX_PARTICLES), and of species
///                      indices
/// @param dim           D, spatial dimension (at least 1, with N*D at most EQF_MAX_ELEMENTS)
/// @param species       N species indices, each below n_species (not NULL)
/// @param n_species     S, the number of species (1 to 8)
/// @param epsilon       S*S well depths (> 0), symmetric (not NULL)
/// @param r_m           S*S distances of the pair minimum (> 0), symmetric (not NULL)
/// @param oscillator_k  spring constant of the centre-of-mass oscillator (>= 0)
/// @param out           on success receives a new energy, to be released with
///                      `eqf_energy_free`; untouched on failure
/// @return EQF_OK; EQF_ERR_NULL_POINTER (species, epsilon, r_m or out is NULL);
///         EQF_ERR_NON_FINITE (a parameter is NaN or infinite); EQF_ERR_INVALID_ARGUMENT
///         (sizes out of range, a species index not below n_species, an array that is not
///         symmetric, or a parameter out of range)
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // the C signature
pub unsafe extern "C" fn eqf_energy_lennard_jones_species(
    n_particles: i64,
    dim: i64,
    species: *const u32,
    n_species: i64,
    epsilon: *const f64,
    r_m: *const f64,
    oscillator_k: f64,
    out: *mut *mut eqf_energy,
) -> i32 {
    // SAFETY: `out` is NULL (rejected by `create`) or valid for one write (this function's
    // contract); the arrays are read inside the closure after their sizes are validated.
    unsafe {
        create(out, || {
            let (_, dim) = shape(n_particles, dim)?;
            // SAFETY: `species` points to n_particles indices (this function's contract).
            let species = species_from(species, n_particles, n_species, 1)?;
            let s = species.n_species();
            let matrix = |ptr: *const f64, what: &str| -> Result<Vec<f64>> {
                // SAFETY: `ptr` points to S·S doubles, valid and unmodified during the call
                // (this function's contract).
                let m = input_array(ptr, s * s, what)?;
                let mut per_type = Vec::with_capacity(species.n_pair_types());
                for a in 0..s {
                    for b in a..s {
                        let (ab, ba) = (m[a * s + b], m[b * s + a]);
                        // NaN is reported as non-finite by the energy, not as asymmetric.
                        if ab.to_bits() != ba.to_bits() && !(ab.is_nan() || ba.is_nan()) {
                            return Err(Error::invalid(format!(
                                "{what}[{a}][{b}] = {ab} but {what}[{b}][{a}] = {ba}: a species \
                                 pair is unordered, so {what} must be symmetric"
                            )));
                        }
                        per_type.push(if ab.is_nan() { ab } else { ba });
                    }
                }
                Ok(per_type)
            };
            let epsilon = matrix(epsilon, "epsilon")?;
            let r_m = matrix(r_m, "r_m")?;
            Ok(Arc::new(SpeciesLennardJones::new(
                dim,
                species,
                epsilon,
                r_m,
                oscillator_k,
            )?))
        })
    }
}

/// Evaluates the energy, and optionally its gradient, of `n` configurations.
///
/// Layout: `x` holds n configurations of N particles in D dimensions, particle-major and
/// contiguous: coordinate k of particle i of configuration s is `x[(s*N + i)*D + k]` (C
/// `double x[n][N][D]`, Fortran `x(D, N, n)`). `gradient` has the same layout and receives
/// +dU/dx (the gradient, not the force).
///
/// All arrays are owned by the caller. Nothing is written unless the call succeeds. With
/// `n == 0` nothing is read or written and the arrays may be NULL. Thread-safe: several threads
/// may evaluate the same energy at once.
///
/// @param energy    the energy (not NULL)
/// @param n         number of configurations (>= 0)
/// @param x         input, n*N*D doubles, finite
/// @param U         output, n doubles: U[s] is the energy of configuration s (may be +infinity
///                  where the energy is singular, e.g. two coincident Lennard-Jones particles,
///                  or overflows, which includes squared distances beyond DBL_MAX (particles
///                  more than ~1e154 apart) even where a tiny oscillator constant would bring
///                  the sum back into range; never NaN or -infinity)
/// @param gradient  output, n*N*D doubles, or NULL to skip the gradient; always finite: where
///                  U[s] is +infinity the gradient of configuration s does not exist and what
///                  is written there is finite but carries no meaning
/// @return EQF_OK; EQF_ERR_NULL_POINTER (energy, x or U is NULL); EQF_ERR_INVALID_ARGUMENT
///         (n negative or too large, or U and gradient share memory); EQF_ERR_NON_FINITE (x
///         contains NaN or infinity, or a result is not representable: a U that would be NaN
///         or -infinity, or, with U finite, a gradient component that overflows; the message
///         names the output);
///         EQF_ERR_RESOURCE (the temporaries for n results need more than 1 TiB or memory is
///         refused)
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn eqf_energy_eval(
    energy: *const eqf_energy,
    n: i64,
    x: *const f64,
    U: *mut f64,
    gradient: *mut f64,
) -> i32 {
    catch(|| {
        // SAFETY: `energy` is NULL (rejected) or a live handle from an `eqf_energy_*`
        // constructor (this function's contract); energies are never mutated.
        let energy = unsafe { handle(energy, "energy") }?;
        let n = count(n, "n")?;
        let inner = energy.inner.as_ref();
        let len = array_len(n, inner.n_particles().saturating_mul(inner.dim()), "x")?;
        check_output(U, n, "U")?;
        if !gradient.is_null() {
            check_output(gradient, len, "gradient")?;
        }
        // The temporaries first: an impossible count fails before the host's arrays are read.
        let mut energies = scratch(n, "U")?;
        let mut gradients = if gradient.is_null() {
            Vec::new()
        } else {
            scratch(len, "gradient")?
        };
        check_disjoint(&[Region::of(U, n, "U"), Region::of(gradient, len, "gradient")])?;
        // SAFETY: `x` is NULL (rejected) or points to n*N*D doubles that the caller does not
        // modify during the call (this function's contract).
        let x = unsafe { input_array(x, len, "x") }?;
        // Into the temporaries, checked there (a NaN or -inf U, a non-finite gradient is an
        // error): the host's arrays are written only on success.
        if gradient.is_null() {
            threads::install(|| evaluate_into(inner, x, &mut energies, None))?;
            // SAFETY: `U` was checked (non-NULL, aligned) for n doubles and is writable for n
            // doubles (this function's contract).
            unsafe { write_output(U, &energies) };
        } else {
            threads::install(|| evaluate_into(inner, x, &mut energies, Some(&mut gradients)))?;
            // SAFETY: both outputs were checked (non-NULL, aligned) for n and n*N*D doubles and
            // are writable for that many (this function's contract).
            unsafe {
                write_output(U, &energies);
                write_output(gradient, &gradients);
            }
        }
        Ok(())
    })
}

/// Releases an energy created by `eqf_energy_double_well` or `eqf_energy_lennard_jones`.
///
/// NULL is accepted and does nothing. The handle must not be used afterwards, nor freed twice.
///
/// @return EQF_OK
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_energy_free(energy: *mut eqf_energy) -> i32 {
    // SAFETY: `energy` is NULL or a handle from an `eqf_energy_*` constructor not freed yet
    // (this function's contract).
    unsafe { free_handle(energy) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energy::energies_gradients_into;
    use crate::ffi::{EQF_ERR_NON_FINITE, EQF_OK};

    fn lennard_jones() -> *mut eqf_energy {
        let mut energy = std::ptr::null_mut();
        // SAFETY: `energy` is a valid pointer slot.
        let status = unsafe { eqf_energy_lennard_jones(3, 3, 2.0, 1.0, 1.0, &raw mut energy) };
        assert_eq!(status, EQF_OK);
        energy
    }

    #[test]
    fn eval_matches_the_rust_api() {
        let energy = lennard_jones();
        let x: Vec<f64> = (0..18).map(|i| (f64::from(i) * 0.7).sin() * 1.3).collect();
        let mut u = [0.0; 2];
        let mut gradient = [0.0; 18];
        // SAFETY: live handle; x of 2*N*D doubles, outputs of 2 and 2*N*D doubles.
        let status = unsafe {
            eqf_energy_eval(energy, 2, x.as_ptr(), u.as_mut_ptr(), gradient.as_mut_ptr())
        };
        assert_eq!(status, EQF_OK);
        let reference = LennardJones::new(3, 3, 2.0, 1.0, 1.0).unwrap();
        let mut u_rust = [0.0; 2];
        let mut gradient_rust = [0.0; 18];
        energies_gradients_into(&reference, &x, &mut u_rust, &mut gradient_rust).unwrap();
        assert_eq!(u, u_rust);
        assert_eq!(gradient, gradient_rust);
        // SAFETY: created above, freed once.
        assert_eq!(unsafe { eqf_energy_free(energy) }, EQF_OK);
    }

    #[test]
    fn failed_eval_writes_nothing() {
        let energy = lennard_jones();
        let mut x = [0.5; 9];
        x[4] = f64::NAN;
        let mut u = [7.0];
        let mut gradient = [7.0; 9];
        // SAFETY: live handle; arrays of N*D, 1 and N*D doubles.
        let status = unsafe {
            eqf_energy_eval(energy, 1, x.as_ptr(), u.as_mut_ptr(), gradient.as_mut_ptr())
        };
        assert_eq!(status, EQF_ERR_NON_FINITE);
        assert_eq!(u, [7.0]);
        assert_eq!(gradient, [7.0; 9]);
        // SAFETY: created above, freed once.
        assert_eq!(unsafe { eqf_energy_free(energy) }, EQF_OK);
    }

    fn message() -> String {
        crate::ffi::with_last_error(str::to_owned)
    }

    /// Evaluates one configuration through the C API with sentinel outputs; returns the status,
    /// U and the gradient (the sentinels if nothing was written).
    fn eval_one(energy: *mut eqf_energy, x: &[f64]) -> (i32, f64, Vec<f64>) {
        let mut u = [7.0];
        let mut gradient = vec![7.0; x.len()];
        // SAFETY: live handle; x, U and gradient of one configuration.
        let status = unsafe {
            eqf_energy_eval(energy, 1, x.as_ptr(), u.as_mut_ptr(), gradient.as_mut_ptr())
        };
        (status, u[0], gradient)
    }

    #[test]
    fn far_flung_coordinates_give_a_finite_gradient() {
        // x_0 − x_1 = −2e308 overflows to −inf: the pair's unit vector used to be ∞/∞ = NaN.
        let x = [-1e308, 0.0, 1e308, 0.0, 1.0, 1.0, 2.0, 2.0];
        let mut pair = [0.0; 4];
        let reference = LennardJones::new(2, 2, 1.0, 1.0, 0.0).unwrap();
        reference.energy_gradient_into(&[1.0, 1.0, 2.0, 2.0], &mut pair);
        for k in [0.0, 1.0] {
            let mut energy = std::ptr::null_mut();
            // SAFETY: a valid pointer slot.
            let status = unsafe { eqf_energy_lennard_jones(4, 2, 1.0, 1.0, k, &raw mut energy) };
            assert_eq!(status, EQF_OK);
            let (status, u, gradient) = eval_one(energy, &x);
            assert_eq!(status, EQF_OK, "{}", message());
            assert!(
                gradient.iter().all(|g| g.is_finite()),
                "k = {k}: {gradient:?}"
            );
            if k == 0.0 {
                assert_eq!(u, -0.234375);
                assert_eq!(gradient[..4], [0.0; 4]);
                assert_eq!(gradient[4..], pair);
            } else {
                // The oscillator overflows; the gradient is finite (here still the exact one).
                assert_eq!(u, f64::INFINITY);
                assert_eq!(gradient[0], -1e308 - 0.75);
            }
            // SAFETY: created above, freed once.
            assert_eq!(unsafe { eqf_energy_free(energy) }, EQF_OK);
        }
    }

    #[test]
    fn double_well_energies_are_never_nan_and_never_minus_infinity_with_success() {
        // a (d − d0) alone: c = 0 used to give 0·∞ = NaN once d² overflowed.
        let double_well = |a: f64, c: f64| {
            let mut energy = std::ptr::null_mut();
            // SAFETY: a valid pointer slot.
            let status = unsafe { eqf_energy_double_well(2, 2, a, 0.0, c, 0.0, &raw mut energy) };
            assert_eq!(status, EQF_OK);
            energy
        };
        // d = 1e200: d² overflows, the distance does not.
        let linear = double_well(1.0, 0.0);
        let (status, u, gradient) = eval_one(linear, &[0.0, 0.0, 1e200, 0.0]);
        assert_eq!(status, EQF_OK, "{}", message());
        assert_eq!(u, 1e200);
        assert_eq!(gradient, [-1.0, 0.0, 1.0, 0.0]);
        // d = 2e308 > f64::MAX: U = +∞, a valid energy, with a finite gradient.
        let far = [-1e308, 0.0, 1e308, 0.0];
        let (status, u, gradient) = eval_one(linear, &far);
        assert_eq!(status, EQF_OK, "{}", message());
        assert_eq!(u, f64::INFINITY);
        assert!(gradient.iter().all(|g| g.is_finite()), "{gradient:?}");
        // a < 0: U = −∞ is not an energy: an error naming U, nothing written.
        let falling = double_well(-1.0, 0.0);
        let (status, u, gradient) = eval_one(falling, &far);
        assert_eq!(status, EQF_ERR_NON_FINITE);
        assert!(message().contains("U[0] = -inf"), "{}", message());
        assert_eq!((u, gradient), (7.0, vec![7.0; 4]));
        // A finite U whose gradient overflows (4c·1.1³ > f64::MAX > c·1.1⁴): an error naming
        // the gradient; U alone is fine.
        let steep = double_well(0.0, 1e308);
        let x = [0.0, 0.0, 1.1, 0.0];
        let (status, u, gradient) = eval_one(steep, &x);
        assert_eq!(status, EQF_ERR_NON_FINITE);
        assert!(message().contains("gradient["), "{}", message());
        assert_eq!((u, gradient), (7.0, vec![7.0; 4]));
        let mut u = [7.0];
        // SAFETY: live handle; x of one configuration, U of one double, no gradient.
        let status =
            unsafe { eqf_energy_eval(steep, 1, x.as_ptr(), u.as_mut_ptr(), std::ptr::null_mut()) };
        assert_eq!(status, EQF_OK);
        assert!(u[0].is_finite() && u[0] > 1e308, "{}", u[0]);
        for energy in [linear, falling, steep] {
            // SAFETY: created above, freed once.
            assert_eq!(unsafe { eqf_energy_free(energy) }, EQF_OK);
        }
    }

    #[test]
    fn constructors_enforce_the_particle_and_element_limits() {
        use crate::ffi::EQF_ERR_INVALID_ARGUMENT;
        let species = [0u32; 4];
        let (epsilon, r_m) = ([1.0], [1.0]);
        let build = |n: i64, dim: i64, which: usize| {
            let mut energy = std::ptr::null_mut();
            // SAFETY: a valid pointer slot; species of 4 indices (read only for n = 4) and
            // 1x1 parameter arrays.
            let status = unsafe {
                match which {
                    0 => eqf_energy_double_well(n, dim, 0.0, -4.0, 0.9, 4.0, &raw mut energy),
                    1 => eqf_energy_lennard_jones(n, dim, 1.0, 1.0, 1.0, &raw mut energy),
                    _ => eqf_energy_lennard_jones_species(
                        n,
                        dim,
                        species.as_ptr(),
                        1,
                        epsilon.as_ptr(),
                        r_m.as_ptr(),
                        1.0,
                        &raw mut energy,
                    ),
                }
            };
            if status == EQF_OK {
                // SAFETY: created just now, freed once.
                assert_eq!(unsafe { eqf_energy_free(energy) }, EQF_OK);
            } else {
                assert!(energy.is_null(), "out written on failure");
            }
            status
        };
        for which in 0..3 {
            for (n, dim, needle) in [
                (2_000_000, 3, "EQF_MAX_PARTICLES"),
                (4, 1 << 40, "EQF_MAX_ELEMENTS"),
            ] {
                assert_eq!(
                    build(n, dim, which),
                    EQF_ERR_INVALID_ARGUMENT,
                    "{which}: {n} x {dim}"
                );
                assert!(message().contains(needle), "{}", message());
            }
            if which < 2 {
                assert_eq!(build(1_000_000, 3, which), EQF_OK, "{}", message());
            }
            // One particle is in every constructor's documented range (U is its oscillator
            // term); none is refused.
            assert_eq!(build(1, 3, which), EQF_OK, "{which}: {}", message());
            assert_eq!(build(0, 3, which), EQF_ERR_INVALID_ARGUMENT, "{which}");
        }
    }
}
