//! Flows for the host's own system: the opaque `eqf_flow_options` object (field family,
//! distance range, kernel counts, prior σ, integrator, seed), the call that derives the scales
//! from the host's configurations, and `eqf_flow_new_with_options`.
//!
//! Modelled on the training options: a growable opaque object whose setters validate a copy
//! and keep it only if the whole configuration is still valid.

use std::ffi::{CStr, c_char};
use std::sync::{Mutex, PoisonError};

use crate::Result;
use crate::error::Error;
use crate::flow_config::{Family, FlowConfig, fit_scales};
use crate::geometry::Layout;

use super::flow::eqf_flow;
use super::integrator::integrator;
use super::{
    Region, array_len, catch, check_disjoint, check_not_null, count, free_handle, handle,
    input_array, species_from, update_validated, write_handle,
};

/// Settings of an untrained flow (opaque), created by `eqf_flow_options_new` with the defaults
/// of `eqf_flow_new` and changed by the `eqf_flow_options_set_*` functions and
/// `eqf_flow_options_fit_scales`, each of which validates at once (a rejected value leaves the
/// options unchanged). Released with `eqf_flow_options_free`.
///
/// Settings are independent of the number of particles: one options object may create flows
/// of any size with `eqf_flow_new_with_options`. Calls on one options object from several
/// threads are serialised by a lock (none holds it for long).
#[allow(non_camel_case_types)]
pub struct eqf_flow_options {
    /// Locked for a setter's update or a reader's copy, never across other work, so that two
    /// threads misusing one options object neither race nor wait long.
    config: Mutex<FlowConfig>,
}

impl eqf_flow_options {
    /// A copy of the settings.
    fn config(&self) -> FlowConfig {
        self.config
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Creates flow options with the defaults of `eqf_flow_new`: the "kernel" family (the paper's
/// pairwise RBF field), distance kernels centred on [0, 8] of the host's length unit, 50
/// distance and 10 time kernels, prior sigma 1, 20 fixed RK4 steps with the exact density of
/// that discrete map, seed 0, strict mode on.
///
/// @param out  on success receives the new options, to be released with
///             `eqf_flow_options_free`; untouched on failure
/// @return EQF_OK; EQF_ERR_NULL_POINTER (out is NULL)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_options_new(out: *mut *mut eqf_flow_options) -> i32 {
    catch(|| {
        check_not_null(out, "out")?;
        let options = eqf_flow_options {
            config: Mutex::new(FlowConfig::default()),
        };
        // SAFETY: `out` is non-NULL (checked above) and valid for one write (this function's
        // contract).
        unsafe { write_handle(out, options) };
        Ok(())
    })
}

/// Releases options created by `eqf_flow_options_new`. NULL is accepted and does nothing.
/// Flows created from the options are independent of them.
///
/// @return EQF_OK
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_options_free(options: *mut eqf_flow_options) -> i32 {
    // SAFETY: `options` is NULL or a handle from `eqf_flow_options_new` not freed yet (this
    // function's contract).
    unsafe { free_handle(options) }
}

/// Applies `change` to a copy of the options' settings and keeps the copy only if the whole
/// configuration is still valid, so a rejected value leaves the options unchanged.
///
/// # Safety
/// `options` must be NULL or a live handle from `eqf_flow_options_new`, not freed during the
/// call (another thread's call waits for the lock).
unsafe fn update(
    options: *mut eqf_flow_options,
    change: impl FnOnce(&mut FlowConfig) -> Result<()>,
) -> i32 {
    catch(|| {
        // SAFETY: `options` is NULL (rejected) or a live handle (the caller's contract); its
        // settings are reached through their lock.
        let options = unsafe { handle(options.cast_const(), "options") }?;
        let mut config = options
            .config
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        update_validated(&mut *config, FlowConfig::validate, change)
    })
}

/// Sets the field family by its name: "kernel" (the paper's pairwise RBF kernel field, the
/// default; trains by every objective), "coordkernel" (pair coefficients modulated by both
/// particles' coordination numbers, shells on the middle half of the distance range; every
/// objective), "envpair" (the environment-modulated pair field; flow matching only),
/// "kernelcoord" (the paper's kernel field plus a coordination correction that starts at
/// zero, so an untrained one is the kernel field; every objective) or "dense" (the
/// non-equivariant baseline: a tanh network of the flattened centred coordinates, not
/// permutation or rotation equivariant; every objective but the exact-discrete likelihood).
/// Kernel counts left at their defaults follow the family (kernel:
/// 50 and 10, also for kernelcoord's kernel part; coordkernel and envpair: 16 and 6; dense:
/// hidden width 64 and 6 time features); counts set with `eqf_flow_options_set_kernel_counts`
/// must suit the new family. Particle limits below EQF_MAX_PARTICLES, checked when the flow is
/// created (EQF_ERR_INVALID_ARGUMENT): coordkernel, kernelcoord and envpair at most 256
/// particles, dense at most 1,024.
///
/// @param options  the options (not NULL)
/// @param name     NUL-terminated family name (not NULL)
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (unknown name, or kernel
///         counts the family does not accept; options unchanged)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_options_set_family(
    options: *mut eqf_flow_options,
    name: *const c_char,
) -> i32 {
    // SAFETY: forwarded contract of this function; `name` is read inside the closure only
    // after the NULL check.
    unsafe {
        update(options, |c| {
            check_not_null(name, "name")?;
            // SAFETY: non-NULL (checked above) and NUL-terminated (this function's contract).
            let name = CStr::from_ptr(name)
                .to_str()
                .map_err(|_| Error::invalid("field family name is not valid UTF-8"))?;
            c.family = Family::from_name(name)?;
            Ok(())
        })
    }
}

/// Sets the centres of the first and the last distance kernel, in the host's length unit: the
/// range of pair distances the field resolves. The kernel family centres its distance kernels
/// at `linspace(min, max, n_dist)` with widths 3.06 times their spacing (the proportion of the
/// paper's double-well preset); the envpair family spaces its Gaussians over the same range.
/// Cover the distances of the host's configurations with some room on either side, or let
/// `eqf_flow_options_fit_scales` choose. The kernels' widths must lie between 4.5e-5 and 2.2e4
/// (what a model file may hold): with the default 50 kernels, ranges from about 7.3e-4 to 3.5e5
/// wide (Å and nm are fine; express metres as nm). `eqf_flow_new_with_options` refuses
/// settings outside it, naming the range.
///
/// @param options  the options (not NULL)
/// @param min      centre of the first kernel, finite and >= 0
/// @param max      centre of the last kernel, with min + 1e-6 <= max <= 1e6
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (options unchanged)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_options_set_distance_range(
    options: *mut eqf_flow_options,
    min: f64,
    max: f64,
) -> i32 {
    // SAFETY: forwarded contract of this function.
    unsafe {
        update(options, |c| {
            c.distance_range = (min, max);
            Ok(())
        })
    }
}

/// Sets the numbers of distance and time kernels. The kernel family has
/// `(n_dist + 3) * n_time + 2 * n_dist` parameters (620 for 50 and 10).
///
/// @param options  the options (not NULL)
/// @param n_dist   kernel family: 2 to 128; coordkernel and envpair: 2 to 64; dense: the
///                 hidden width, 1 to 1024
/// @param n_time   kernel family: 2 to 64; coordkernel, envpair and dense: 2 to 64
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (options unchanged)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_options_set_kernel_counts(
    options: *mut eqf_flow_options,
    n_dist: i64,
    n_time: i64,
) -> i32 {
    // SAFETY: forwarded contract of this function.
    unsafe {
        update(options, |c| {
            let n_dist = count(n_dist, "n_dist")?;
            let n_time = count(n_time, "n_time")?;
            c.kernel_counts = Some((n_dist, n_time));
            Ok(())
        })
    }
}

/// Sets the standard deviation sigma of the flow's Gaussian prior, in the host's length unit
/// (per coordinate, on the centre-of-mass-free subspace).
///
/// @param options  the options (not NULL)
/// @param sigma    in [1e-6, 1e6]
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (options unchanged)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_options_set_prior_sigma(
    options: *mut eqf_flow_options,
    sigma: f64,
) -> i32 {
    // SAFETY: forwarded contract of this function.
    unsafe {
        update(options, |c| {
            c.prior_sigma = sigma;
            Ok(())
        })
    }
}

/// Sets the integrator and density mode, with the arguments and meaning of
/// `eqf_flow_with_integrator` (`EQF_METHOD_*`, `EQF_DENSITY_*`).
///
/// @param options       the options (not NULL)
/// @param method        EQF_METHOD_RK4 or EQF_METHOD_DOPRI5
/// @param n_steps       RK4: 1 to 100000 equal steps; Dormand–Prince: maximum number of
///                      attempted steps, 1 to 1000000, 0 for the default
/// @param rtol, atol    Dormand–Prince tolerances, finite, rtol at least 10 × DBL_EPSILON
///                      (2.2204e-15), atol at least 1e-100, both at most 0.1 (as
///                      `eqf_flow_with_integrator`); ignored by RK4
/// @param density_mode  EQF_DENSITY_EXACT_DISCRETE (RK4 only) or EQF_DENSITY_CONTINUOUS
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (options unchanged)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_options_set_integrator(
    options: *mut eqf_flow_options,
    method: i32,
    n_steps: i64,
    rtol: f64,
    atol: f64,
    density_mode: i32,
) -> i32 {
    // SAFETY: forwarded contract of this function.
    unsafe {
        update(options, |c| {
            c.integrator = integrator(method, n_steps, rtol, atol, density_mode)?;
            Ok(())
        })
    }
}

/// Sets the seed of the random initial weights: the same options, seed and sizes give the same
/// flow.
///
/// @param options  the options (not NULL)
/// @param seed     any value
/// @return EQF_OK; EQF_ERR_NULL_POINTER
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_options_set_seed(
    options: *mut eqf_flow_options,
    seed: u64,
) -> i32 {
    // SAFETY: forwarded contract of this function.
    unsafe {
        update(options, |c| {
            c.seed = seed;
            Ok(())
        })
    }
}

/// Sets strict mode of the flows created from these options (see
/// `eqf_flow_with_require_certificate`): in the exact-discrete density mode they refuse to
/// sample, evaluate densities or propose moves (EQF_ERR_UNCERTIFIED, naming the step count that
/// would be certified) unless their step certificate proves every RK4 step a bijection. On
/// (the default), `eqf_flow_new_with_options` makes each new flow certified at its step count
/// (damping its initial output weights as `eqf_flow_new` does); off keeps the weights as drawn.
///
/// @param options  the options (not NULL)
/// @param require  1: strict mode on (the default), 0: off
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (require neither 0 nor 1;
///         the options are unchanged)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_options_set_require_certificate(
    options: *mut eqf_flow_options,
    require: i32,
) -> i32 {
    // SAFETY: forwarded contract of this function.
    unsafe {
        update(options, |c| {
            c.require_certificate = match require {
                0 => false,
                1 => true,
                other => {
                    return Err(crate::Error::invalid(format!(
                        "require = {other}: expected 0 or 1"
                    )));
                }
            };
            Ok(())
        })
    }
}

/// Sets the species of the particles: particle i is of species `species[i]`, an index below
/// `n_species`. Only particles of the same species are interchangeable: the flow's field has
/// one radial function per unordered pair of species (`n_species * (n_species + 1) / 2`
/// parameter blocks, each of the single-species size) and is equivariant under permutations
/// within a species only. Needs the "kernel" family (the default). The number of indices must
/// equal the number of particles of the flows created with `eqf_flow_new_with_options`
/// (checked there: EQF_ERR_DIMENSION_MISMATCH). `n_particles = 0` (species may then be NULL)
/// clears the species: all particles identical, the default.
///
/// @param options      the options (not NULL)
/// @param species      n_particles species indices (not NULL unless n_particles is 0)
/// @param n_particles  the number of indices, 0 or 2 to EQF_MAX_PARTICLES
/// @param n_species    the number of species, 1 to 8 (ignored when n_particles is 0)
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (an index not below
///         n_species, n_species out of range, or a family other than "kernel" with several
///         species; options unchanged)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_options_set_species(
    options: *mut eqf_flow_options,
    species: *const u32,
    n_particles: i64,
    n_species: i64,
) -> i32 {
    // SAFETY: forwarded contract of this function; `species` is read inside the closure after
    // its size is validated.
    unsafe {
        update(options, |c| {
            c.species = if n_particles == 0 {
                None
            } else {
                // SAFETY: `species` points to n_particles indices, valid and unmodified during
                // the call (this function's contract).
                Some(species_from(species, n_particles, n_species, 2)?)
            };
            Ok(())
        })
    }
}

/// Derives the distance range and the prior sigma from the host's own configurations (for
/// example frames of an MD trajectory), replacing both settings:
///
/// - distance range: the 0.1 % and 99.9 % quantiles of the pair distances (the minimum-image
///   convention is not applied: pass unwrapped clusters), padded outwards on either side by a
///   quarter of their difference (at least 5 % of the upper quantile), the lower end at least 0;
/// - prior sigma: the RMS displacement of the particles from their configuration's centre of
///   mass, per coordinate of the centre-of-mass-free subspace,
///   `sigma^2 = sum |x_i - com|^2 / (n_configs * (N - 1) * D)`.
///
/// The configurations may have any centre of mass. At most 2^21 pair distances enter the
/// quantiles (whole configurations, evenly spaced). Use `eqf_flow_options_scales` to read what
/// was derived.
///
/// @param options      the options (not NULL)
/// @param n_particles  N of the configurations (2 to EQF_MAX_PARTICLES)
/// @param dim          D (1, 2 or 3)
/// @param x            n_configs * N * D doubles, particle-major (not NULL)
/// @param n_configs    at least 1
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (sizes out of range,
///         configurations without spread, or scales no flow takes, such as a prior sigma
///         outside [1e-6, 1e6]: the message gives the distances and spread found);
///         EQF_ERR_DIMENSION_MISMATCH (n_configs is 0);
///         EQF_ERR_NON_FINITE (a NaN or infinite coordinate); EQF_ERR_RESOURCE (the pair
///         distances of one configuration need more than 1 TiB, N above about 524,000, or
///         memory is refused). On failure the options are unchanged.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_options_fit_scales(
    options: *mut eqf_flow_options,
    n_particles: i64,
    dim: i64,
    x: *const f64,
    n_configs: i64,
) -> i32 {
    // SAFETY: forwarded contract of this function; `x` is borrowed inside the closure after
    // its size is validated.
    unsafe {
        update(options, |c| {
            let layout = Layout::new(count(n_particles, "n_particles")?, count(dim, "dim")?)?;
            let n_configs = count(n_configs, "n_configs")?;
            let len = array_len(n_configs, layout.len(), "x")?;
            // SAFETY: `x` points to n_configs·N·D doubles, valid and unmodified during the
            // call (this function's contract).
            let x = input_array(x, len, "x")?;
            let scales = fit_scales(layout, x)?;
            c.distance_range = scales.distance_range;
            c.prior_sigma = scales.prior_sigma;
            Ok(())
        })
    }
}

/// Reads the length scales the options hold (set, derived by `eqf_flow_options_fit_scales`,
/// or the defaults). Any output pointer may be NULL to skip it.
///
/// @param options       the options (not NULL)
/// @param distance_min  output or NULL: centre of the first distance kernel
/// @param distance_max  output or NULL: centre of the last distance kernel
/// @param prior_sigma   output or NULL: the prior's sigma
/// @return EQF_OK; EQF_ERR_NULL_POINTER (options is NULL); EQF_ERR_INVALID_ARGUMENT (two
///         outputs share memory)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_options_scales(
    options: *const eqf_flow_options,
    distance_min: *mut f64,
    distance_max: *mut f64,
    prior_sigma: *mut f64,
) -> i32 {
    catch(|| {
        // SAFETY: `options` is NULL (rejected) or a live handle not modified during the call
        // (this function's contract).
        let config = unsafe { handle(options, "options") }?.config();
        check_disjoint(&[
            Region::of(distance_min, 1, "distance_min"),
            Region::of(distance_max, 1, "distance_max"),
            Region::of(prior_sigma, 1, "prior_sigma"),
        ])?;
        let (min, max) = config.distance_range;
        for (ptr, value) in [
            (distance_min, min),
            (distance_max, max),
            (prior_sigma, config.prior_sigma),
        ] {
            if !ptr.is_null() {
                // SAFETY: non-NULL, so valid for one write of a double (this function's
                // contract).
                unsafe { ptr.write(value) };
            }
        }
        Ok(())
    })
}

/// Creates an untrained flow for `n_particles` particles in `dim` dimensions with the given
/// options. With default options this is `eqf_flow_new` with seed 0. The flow does not refer
/// to the options afterwards.
///
/// @param n_particles  N (2 to EQF_MAX_PARTICLES)
/// @param dim          D (1, 2 or 3)
/// @param options      the options (not NULL)
/// @param out          on success receives the new flow, to be released with
///                     `eqf_flow_free`; untouched on failure
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (n_particles or dim out of
///         range, or settings whose field lies outside the ranges a model file may hold, such
///         as a distance range so narrow that the kernels' bandwidths fall below the smallest
///         allowed: the flow could be neither saved nor loaded); EQF_ERR_DIMENSION_MISMATCH
///         (species set with another number of particles); EQF_ERR_UNCERTIFIED (strict mode,
///         the default: no damping of the untrained field's output down to 2^-60 certifies
///         it, as when its kernels' bandwidths are so disparate that its Lipschitz bound is
///         infinite; the message gives the bound; `eqf_flow_options_set_require_certificate`
///         with 0 builds it uncertified)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_new_with_options(
    n_particles: i64,
    dim: i64,
    options: *const eqf_flow_options,
    out: *mut *mut eqf_flow,
) -> i32 {
    catch(|| {
        // SAFETY: `options` is NULL (rejected) or a live handle not modified during the call
        // (this function's contract).
        let config = unsafe { handle(options, "options") }?.config();
        check_not_null(out, "out")?;
        let layout = Layout::new(count(n_particles, "n_particles")?, count(dim, "dim")?)?;
        let flow = config.build(layout)?;
        // SAFETY: `out` is non-NULL (checked above) and valid for one write (this function's
        // contract); it is written only now that the flow exists.
        unsafe { write_handle(out, eqf_flow::from_flow(flow)) };
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::flow::eqf_flow_free;
    use crate::ffi::integrator::{
        EQF_DENSITY_CONTINUOUS, EQF_DENSITY_EXACT_DISCRETE, EQF_METHOD_DOPRI5, EQF_METHOD_RK4,
    };
    use crate::ffi::test_handles::FlowOptionsHandle;
    use crate::ffi::{
        EQF_ERR_DIMENSION_MISMATCH, EQF_ERR_INVALID_ARGUMENT, EQF_ERR_NON_FINITE,
        EQF_ERR_NULL_POINTER, EQF_OK,
    };
    use crate::flow::Flow;
    use crate::integrate::DensityMode;

    /// What these tests read from options (the handle itself: `ffi::test_handles`).
    impl FlowOptionsHandle {
        fn config(&self) -> FlowConfig {
            // SAFETY: live options, not modified concurrently.
            unsafe { (*self.0).config() }
        }

        fn flow(&self, n_particles: i64, dim: i64) -> Flow {
            let mut out = std::ptr::null_mut();
            // SAFETY: live options and a valid slot; the flow is freed right after cloning.
            unsafe {
                let status = eqf_flow_new_with_options(n_particles, dim, self.0, &raw mut out);
                assert_eq!(status, EQF_OK);
                let flow = (*out).flow().clone();
                assert_eq!(eqf_flow_free(out), EQF_OK);
                flow
            }
        }
    }

    #[test]
    fn default_options_give_the_flow_of_eqf_flow_new() {
        let options = FlowOptionsHandle::new();
        assert_eq!(options.config(), FlowConfig::default());
        let flow = options.flow(4, 2);
        let preset = Flow::new(4, 2, 0).unwrap();
        assert_eq!(flow.field().params(), preset.field().params());
        assert_eq!(flow.field().spec(), preset.field().spec());
        assert_eq!(flow.integrator(), preset.integrator());
    }

    #[test]
    fn the_coordkernel_family_is_selectable_by_name() {
        let options = FlowOptionsHandle::new();
        let name = c"coordkernel";
        // SAFETY: live options; a NUL-terminated name.
        let status = unsafe { eqf_flow_options_set_family(options.0, name.as_ptr()) };
        assert_eq!(status, EQF_OK);
        assert_eq!(options.config().family, Family::CoordKernel);
        let flow = options.flow(4, 2);
        assert_eq!(flow.field().spec().family, "coordkernel");
        assert_eq!(flow.field().params().len(), 864);
    }

    #[test]
    fn the_dense_family_is_selectable_by_name() {
        let options = FlowOptionsHandle::new();
        let name = c"dense";
        // SAFETY: live options; a NUL-terminated name.
        let status = unsafe { eqf_flow_options_set_family(options.0, name.as_ptr()) };
        assert_eq!(status, EQF_OK);
        assert_eq!(options.config().family, Family::Dense);
        let flow = options.flow(4, 2);
        assert_eq!(flow.field().spec().family, "dense");
        assert_eq!(flow.field().params().len(), 1456);
        // A hidden width beyond the family's limit is refused and changes nothing.
        // SAFETY: live options.
        let status = unsafe { eqf_flow_options_set_kernel_counts(options.0, 5000, 6) };
        assert_eq!(status, EQF_ERR_INVALID_ARGUMENT);
        assert_eq!(options.config().kernel_counts, None);
    }

    /// Sweep 29: values a family derives from the distance range were refused without the
    /// range ("dense length_scale = 0.00000025"), and counts too large for the kernel family
    /// were refused as "must be 1..=128" when the family needs at least 2.
    #[test]
    fn family_refusals_name_the_range_and_the_true_count_bounds() {
        let options = FlowOptionsHandle::new();
        let set_family = |name: &std::ffi::CStr| {
            // SAFETY: live options; a NUL-terminated name.
            let status = unsafe { eqf_flow_options_set_family(options.0, name.as_ptr()) };
            (status, crate::ffi::with_last_error(str::to_owned))
        };
        // SAFETY: live options.
        let status = unsafe { eqf_flow_options_set_distance_range(options.0, 0.0, 1e-6) };
        assert_eq!(status, EQF_OK);
        for (name, derived) in [
            (c"dense", "dense length_scale"),
            (c"coordkernel", "coordkernel shell range"),
        ] {
            let (status, message) = set_family(name);
            assert_eq!(status, EQF_ERR_INVALID_ARGUMENT, "{message}");
            assert!(
                message.contains(derived) && message.contains("from the distance range [0, 1e-6]"),
                "{message}"
            );
        }
        // SAFETY: live options.
        let status = unsafe { eqf_flow_options_set_distance_range(options.0, 0.0, 8.0) };
        assert_eq!(status, EQF_OK);
        assert_eq!(set_family(c"dense").0, EQF_OK);
        // SAFETY: live options.
        let status = unsafe { eqf_flow_options_set_kernel_counts(options.0, 1024, 64) };
        assert_eq!(status, EQF_OK);
        let (status, message) = set_family(c"kernel");
        assert_eq!(status, EQF_ERR_INVALID_ARGUMENT);
        assert!(
            message.contains("needs 2..=128 distance and 2..=64 time kernels, got 1024 and 64"),
            "{message}"
        );
        assert_eq!(options.config().family, Family::Dense, "options unchanged");
    }

    #[test]
    fn species_of_fewer_than_two_particles_are_refused_by_the_setter() {
        // Before: one index was accepted, and every flow built from the options then failed.
        let options = FlowOptionsHandle::new();
        let species = [0u32, 1];
        // SAFETY: live options; `species` holds the indices the counts name.
        unsafe {
            let status = eqf_flow_options_set_species(options.0, species.as_ptr(), 1, 2);
            assert_eq!(status, EQF_ERR_INVALID_ARGUMENT);
            assert_eq!(options.config(), FlowConfig::default());
            let status = eqf_flow_options_set_species(options.0, species.as_ptr(), 2, 2);
            assert_eq!(status, EQF_OK);
        }
        assert_eq!(options.config().species.map(|s| s.n_species()), Some(2));
    }

    #[test]
    fn setters_apply_and_validate_and_leave_the_options_unchanged_on_failure() {
        let options = FlowOptionsHandle::new();
        let o = options.0;
        let envpair = c"envpair";
        // SAFETY: live options or NULL (rejected); NUL-terminated names.
        unsafe {
            assert_eq!(eqf_flow_options_set_family(o, envpair.as_ptr()), EQF_OK);
            assert_eq!(eqf_flow_options_set_distance_range(o, 0.3, 1.5), EQF_OK);
            assert_eq!(eqf_flow_options_set_kernel_counts(o, 20, 5), EQF_OK);
            assert_eq!(eqf_flow_options_set_prior_sigma(o, 0.4), EQF_OK);
            assert_eq!(eqf_flow_options_set_seed(o, 9), EQF_OK);
            let status = eqf_flow_options_set_integrator(
                o,
                EQF_METHOD_DOPRI5,
                0,
                1e-5,
                1e-10,
                EQF_DENSITY_CONTINUOUS,
            );
            assert_eq!(status, EQF_OK);
            let config = options.config();
            assert_eq!(config.family, Family::EnvPair);
            assert_eq!(config.distance_range, (0.3, 1.5));
            assert_eq!(config.kernel_counts, Some((20, 5)));
            assert_eq!(config.prior_sigma, 0.4);
            assert_eq!(config.seed, 9);
            assert_eq!(config.integrator.mode(), DensityMode::Continuous);
            let flow = options.flow(5, 3);
            assert_eq!(flow.prior().sigma(), 0.4);
            assert_eq!(flow.field().spec().family, "envpair");

            let before = options.config();
            let rejected = |status: i32, expected: i32| {
                assert_eq!(status, expected);
                assert_eq!(options.config(), before);
            };
            rejected(
                eqf_flow_options_set_family(o, c"graph".as_ptr()),
                EQF_ERR_INVALID_ARGUMENT,
            );
            rejected(
                eqf_flow_options_set_family(o, std::ptr::null()),
                EQF_ERR_NULL_POINTER,
            );
            rejected(
                eqf_flow_options_set_family(o, c"\xff".as_ptr()),
                EQF_ERR_INVALID_ARGUMENT,
            );
            for (min, max) in [(1.0, 1.0), (-1.0, 2.0), (0.0, f64::NAN), (0.0, 1e7)] {
                rejected(
                    eqf_flow_options_set_distance_range(o, min, max),
                    EQF_ERR_INVALID_ARGUMENT,
                );
            }
            for (k, r) in [(1, 5), (65, 5), (20, 0), (-1, 5)] {
                rejected(
                    eqf_flow_options_set_kernel_counts(o, k, r),
                    EQF_ERR_INVALID_ARGUMENT,
                );
            }
            for sigma in [0.0, -1.0, f64::INFINITY, 1e7] {
                rejected(
                    eqf_flow_options_set_prior_sigma(o, sigma),
                    EQF_ERR_INVALID_ARGUMENT,
                );
            }
            rejected(
                eqf_flow_options_set_integrator(
                    o,
                    EQF_METHOD_DOPRI5,
                    0,
                    1e-5,
                    1e-10,
                    EQF_DENSITY_EXACT_DISCRETE,
                ),
                EQF_ERR_INVALID_ARGUMENT,
            );
            rejected(
                eqf_flow_options_set_integrator(o, EQF_METHOD_RK4, 0, 0.0, 0.0, 0),
                EQF_ERR_INVALID_ARGUMENT,
            );
            // 100 distance kernels suit the kernel family but not envpair: switching back to
            // the kernel family first makes them acceptable, and then envpair is refused.
            assert_eq!(eqf_flow_options_set_family(o, c"kernel".as_ptr()), EQF_OK);
            assert_eq!(eqf_flow_options_set_kernel_counts(o, 100, 5), EQF_OK);
            let before = options.config();
            assert_eq!(
                eqf_flow_options_set_family(o, envpair.as_ptr()),
                EQF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(options.config(), before);

            let null = std::ptr::null_mut();
            for status in [
                eqf_flow_options_new(std::ptr::null_mut()),
                eqf_flow_options_set_family(null, envpair.as_ptr()),
                eqf_flow_options_set_distance_range(null, 0.0, 1.0),
                eqf_flow_options_set_kernel_counts(null, 10, 10),
                eqf_flow_options_set_prior_sigma(null, 1.0),
                eqf_flow_options_set_integrator(null, 0, 20, 0.0, 0.0, 0),
                eqf_flow_options_set_seed(null, 1),
                eqf_flow_options_fit_scales(null, 2, 1, [0.0, 1.0].as_ptr(), 1),
                eqf_flow_options_scales(null, null.cast(), null.cast(), null.cast()),
            ] {
                assert_eq!(status, EQF_ERR_NULL_POINTER);
            }
            assert_eq!(eqf_flow_options_free(null), EQF_OK);
            let mut flow = std::ptr::dangling_mut::<eqf_flow>();
            assert_eq!(
                eqf_flow_new_with_options(4, 2, null, &raw mut flow),
                EQF_ERR_NULL_POINTER
            );
            assert_eq!(
                eqf_flow_new_with_options(4, 2, o, std::ptr::null_mut()),
                EQF_ERR_NULL_POINTER
            );
            for (n, d) in [(1, 2), (4, 0), (4, 4), (-4, 2)] {
                assert_eq!(
                    eqf_flow_new_with_options(n, d, o, &raw mut flow),
                    EQF_ERR_INVALID_ARGUMENT
                );
            }
            assert_eq!(flow, std::ptr::dangling_mut::<eqf_flow>());
        }
    }

    #[test]
    fn fitted_scales_are_kept_only_on_success() {
        let options = FlowOptionsHandle::new();
        let o = options.0;
        // Two particles 3 length units apart, in 1-D: σ² = 2·1.5²/((2−1)·1).
        let x = [0.0, 3.0, 10.0, 13.0];
        let (mut min, mut max, mut sigma) = (0.0, 0.0, 0.0);
        // SAFETY: live options, arrays of the stated sizes, valid output slots.
        unsafe {
            assert_eq!(eqf_flow_options_fit_scales(o, 2, 1, x.as_ptr(), 2), EQF_OK);
            let status = eqf_flow_options_scales(o, &raw mut min, &raw mut max, &raw mut sigma);
            assert_eq!(status, EQF_OK);
            assert!((min - 2.85).abs() < 1e-12 && (max - 3.15).abs() < 1e-12);
            assert!((sigma - 4.5f64.sqrt()).abs() < 1e-12);
            let before = options.config();
            let nan = [0.0, f64::NAN];
            for (status, expected) in [
                (
                    eqf_flow_options_fit_scales(o, 2, 1, nan.as_ptr(), 1),
                    EQF_ERR_NON_FINITE,
                ),
                (
                    eqf_flow_options_fit_scales(o, 2, 1, x.as_ptr(), 0),
                    EQF_ERR_DIMENSION_MISMATCH,
                ),
                (
                    eqf_flow_options_fit_scales(o, 2, 1, std::ptr::null(), 2),
                    EQF_ERR_NULL_POINTER,
                ),
                (
                    eqf_flow_options_fit_scales(o, 1, 1, x.as_ptr(), 2),
                    EQF_ERR_INVALID_ARGUMENT,
                ),
                (
                    eqf_flow_options_fit_scales(o, 2, 1, x.as_ptr(), -1),
                    EQF_ERR_INVALID_ARGUMENT,
                ),
                (
                    eqf_flow_options_fit_scales(o, 2, 1, [1.0, 1.0].as_ptr(), 1),
                    EQF_ERR_INVALID_ARGUMENT,
                ),
            ] {
                assert_eq!(status, expected);
                assert_eq!(options.config(), before);
            }
            let null = std::ptr::null_mut();
            assert_eq!(eqf_flow_options_scales(o, null, null, null), EQF_OK);
        }
    }
}
