//! Choosing the integrator and density mode of a flow: a new flow, since flows are immutable.

use crate::flow::Flow;
use crate::integrate::{DensityMode, Dopri5Config, Integrator, Method};
use crate::{Error, Result};

use super::flow::eqf_flow;
use super::{Region, catch, check_disjoint, check_not_null, handle, write_handle};

/// Integration method: fixed-grid classical Runge–Kutta 4 with `n_steps` equal steps (the
/// default, 20 steps). The only method that supports `EQF_DENSITY_EXACT_DISCRETE`.
pub const EQF_METHOD_RK4: i32 = 0;

/// Integration method: adaptive Dormand–Prince 5(4) with relative and absolute tolerances (the
/// paper's evaluation setting is rtol = 1e-5, atol = 1e-10). Requires `EQF_DENSITY_CONTINUOUS`.
pub const EQF_METHOD_DOPRI5: i32 = 1;

/// Density mode: the exact density of the discrete RK4 map that produces the samples (the
/// default). The log-density of a proposal and the log-density evaluated later for the same
/// configuration agree to round-off, which makes Metropolis acceptance and importance weights
/// exact. Costs an N·D × N·D Jacobian per RK4 stage.
pub const EQF_DENSITY_EXACT_DISCRETE: i32 = 0;

/// Density mode: the continuous-time change of variables, `log q = log ρ(z) − ∫ div v dt`
/// integrated by the chosen method. Cheaper for large N·D, but exact only in the limit of
/// infinitely fine steps: a Monte Carlo move using it is biased at the level of the integration
/// error. For comparisons with the paper and for training.
pub const EQF_DENSITY_CONTINUOUS: i32 = 1;

/// Translates the C description of an integrator into a validated [`Integrator`].
pub(super) fn integrator(
    method: i32,
    n_steps: i64,
    rtol: f64,
    atol: f64,
    density_mode: i32,
) -> Result<Integrator> {
    let mode = match density_mode {
        EQF_DENSITY_EXACT_DISCRETE => DensityMode::ExactDiscrete,
        EQF_DENSITY_CONTINUOUS => DensityMode::Continuous,
        other => {
            return Err(Error::invalid(format!(
                "density_mode = {other} is neither EQF_DENSITY_EXACT_DISCRETE (0) nor \
                 EQF_DENSITY_CONTINUOUS (1)"
            )));
        }
    };
    let n_steps = usize::try_from(n_steps)
        .map_err(|_| Error::invalid(format!("n_steps = {n_steps} is negative")))?;
    let method = match method {
        EQF_METHOD_RK4 => Method::Rk4 { n_steps },
        EQF_METHOD_DOPRI5 => {
            let default = Dopri5Config::default();
            Method::Dopri5(Dopri5Config {
                rtol,
                atol,
                max_steps: if n_steps == 0 {
                    default.max_steps
                } else {
                    n_steps
                },
            })
        }
        other => {
            return Err(Error::invalid(format!(
                "method = {other} is neither EQF_METHOD_RK4 (0) nor EQF_METHOD_DOPRI5 (1)"
            )));
        }
    };
    Integrator::new(method, mode)
}

/// Creates a copy of `flow` (same parameters) that integrates with another method and/or
/// reports another density.
///
/// Flows are immutable and shared between threads, so the integrator is not changed in place:
/// the new flow is independent of the old one (either may be freed first). Moves created from
/// the new flow (`eqf_move_new`) propose and evaluate with its integrator. The copy keeps
/// strict mode: fewer RK4 steps than the field's certified count (`eqf_flow_certificate`)
/// make its exact-discrete calls fail with EQF_ERR_UNCERTIFIED, unless strict mode is off
/// (`eqf_flow_with_require_certificate`).
///
/// @param flow          the flow to copy (not NULL)
/// @param method        EQF_METHOD_RK4 or EQF_METHOD_DOPRI5
/// A Dormand–Prince solve whose step size collapses (the tolerances cannot be met at some
/// point, for example across a discontinuity of the field) fails at once with
/// EQF_ERR_NOT_CONVERGED instead of running its maximum number of steps.
///
/// @param n_steps       RK4: number of equal steps on [0, 1], 1 to 100000 (default 20).
///                      Dormand–Prince: maximum number of attempted steps before failing with
///                      EQF_ERR_NOT_CONVERGED, 1 to 1000000, 0 for the default (100000)
/// @param rtol, atol    Dormand–Prince: relative and absolute tolerances, finite, rtol at least
///                      10 × DBL_EPSILON (2.2204e-15) and atol at least 1e-100 (smaller
///                      tolerances cannot be met in double precision), both at most 0.1 (a
///                      looser one crosses the flow in a step or two with the map and its
///                      density off by that much); ignored by RK4
/// @param density_mode  EQF_DENSITY_EXACT_DISCRETE (RK4 only) or EQF_DENSITY_CONTINUOUS
/// @param out           on success receives the new flow, to be released with
///                      `eqf_flow_free`; untouched on failure
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (unknown method or mode,
///         steps or tolerances out of range, exact-discrete with Dormand–Prince, or a field too
///         strong for so few steps, which `eqf_flow_load` would refuse too)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_with_integrator(
    flow: *const eqf_flow,
    method: i32,
    n_steps: i64,
    rtol: f64,
    atol: f64,
    density_mode: i32,
    out: *mut *mut eqf_flow,
) -> i32 {
    catch(|| {
        // SAFETY: `flow` is NULL (rejected) or a live handle from `eqf_flow_new` (this
        // function's contract); flows are never mutated.
        let flow = unsafe { handle(flow, "flow") }?;
        check_not_null(out, "out")?;
        let integrator = integrator(method, n_steps, rtol, atol, density_mode)?;
        // A field too strong for these steps is refused as the loader refuses it (it used to
        // be accepted, and then the flow could not be saved).
        crate::io::model::check_usable_with(flow.flow().field(), &integrator)?;
        let mut inner: Flow = flow.flow().clone();
        inner.set_integrator(integrator);
        // SAFETY: `out` is non-NULL (checked above) and valid for one write (this function's
        // contract); it is written only now that the new flow exists.
        unsafe { write_handle(out, eqf_flow::from_flow(inner)) };
        Ok(())
    })
}

/// Reports the integrator and density mode of a flow. Any output pointer may be NULL to skip
/// it. For RK4, `rtol` and `atol` receive 0; for Dormand–Prince, `n_steps` receives the maximum
/// number of attempted steps.
///
/// @return EQF_OK; EQF_ERR_NULL_POINTER (flow is NULL); EQF_ERR_INVALID_ARGUMENT (two outputs
///         share memory)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_integrator(
    flow: *const eqf_flow,
    method: *mut i32,
    n_steps: *mut i64,
    rtol: *mut f64,
    atol: *mut f64,
    density_mode: *mut i32,
) -> i32 {
    catch(|| {
        // SAFETY: `flow` is NULL (rejected) or a live handle from `eqf_flow_new` (this
        // function's contract); flows are never mutated.
        let flow = unsafe { handle(flow, "flow") }?;
        check_disjoint(&[
            Region::of(method, 1, "method"),
            Region::of(n_steps, 1, "n_steps"),
            Region::of(rtol, 1, "rtol"),
            Region::of(atol, 1, "atol"),
            Region::of(density_mode, 1, "density_mode"),
        ])?;
        let integrator = flow.flow().integrator();
        let (m, steps, r, a) = match integrator.method() {
            Method::Rk4 { n_steps } => (EQF_METHOD_RK4, n_steps, 0.0, 0.0),
            Method::Dopri5(cfg) => (EQF_METHOD_DOPRI5, cfg.max_steps, cfg.rtol, cfg.atol),
        };
        let mode = match integrator.mode() {
            DensityMode::ExactDiscrete => EQF_DENSITY_EXACT_DISCRETE,
            DensityMode::Continuous => EQF_DENSITY_CONTINUOUS,
        };
        let steps = i64::try_from(steps).unwrap_or(i64::MAX);
        // SAFETY: each pointer is NULL (skipped) or valid for one write of its type (this
        // function's contract).
        unsafe {
            write_scalar(method, m);
            write_scalar(n_steps, steps);
            write_scalar(rtol, r);
            write_scalar(atol, a);
            write_scalar(density_mode, mode);
        }
        Ok(())
    })
}

/// Writes `value` through `ptr` unless it is NULL.
///
/// # Safety
/// `ptr` must be NULL or valid for one write of a `T`.
unsafe fn write_scalar<T>(ptr: *mut T, value: T) {
    if !ptr.is_null() {
        // SAFETY: non-NULL, and valid for one write (the caller's contract).
        unsafe { ptr.write(value) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::flow::{eqf_flow_free, eqf_flow_new};
    use crate::ffi::{EQF_ERR_INVALID_ARGUMENT, EQF_OK};

    /// A field too strong for the requested steps is refused as the loader refuses it: the
    /// shipped DW-4 model at 1 RK4 step used to be accepted and then could not be saved.
    #[test]
    fn steps_too_few_for_the_field_are_refused_as_the_loader_refuses_them() {
        let path = std::ffi::CString::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models/dw4.json"))
            .unwrap();
        let mut flow = std::ptr::null_mut();
        // SAFETY: a NUL-terminated path and a pointer slot.
        let status = unsafe { crate::ffi::model::eqf_flow_load(path.as_ptr(), &raw mut flow) };
        assert_eq!(status, EQF_OK);
        let mut other = std::ptr::dangling_mut::<eqf_flow>();
        // SAFETY: a live flow and a pointer slot.
        let status = unsafe {
            eqf_flow_with_integrator(
                flow,
                EQF_METHOD_RK4,
                1,
                0.0,
                0.0,
                EQF_DENSITY_EXACT_DISCRETE,
                &raw mut other,
            )
        };
        assert_eq!(status, EQF_ERR_INVALID_ARGUMENT);
        assert_eq!(other, std::ptr::dangling_mut::<eqf_flow>(), "out untouched");
        // SAFETY: as above.
        let status = unsafe {
            eqf_flow_with_integrator(
                flow,
                EQF_METHOD_RK4,
                20,
                0.0,
                0.0,
                EQF_DENSITY_EXACT_DISCRETE,
                &raw mut other,
            )
        };
        assert_eq!(status, EQF_OK);
        // SAFETY: both live, freed once.
        unsafe {
            assert_eq!(eqf_flow_free(other), EQF_OK);
            assert_eq!(eqf_flow_free(flow), EQF_OK);
        }
    }

    #[test]
    fn a_new_flow_with_another_integrator_leaves_the_old_one_alone() {
        let mut flow = std::ptr::null_mut();
        let mut other = std::ptr::dangling_mut::<eqf_flow>();
        // SAFETY: valid pointer slots; handles freed once below.
        unsafe {
            assert_eq!(eqf_flow_new(3, 2, 1, &raw mut flow), EQF_OK);
            let status = eqf_flow_with_integrator(
                flow,
                EQF_METHOD_DOPRI5,
                0,
                1e-5,
                1e-10,
                EQF_DENSITY_EXACT_DISCRETE,
                &raw mut other,
            );
            assert_eq!(status, EQF_ERR_INVALID_ARGUMENT);
            assert_eq!(other, std::ptr::dangling_mut::<eqf_flow>());
            for (m, d) in [(7, 0), (0, 7)] {
                let status = eqf_flow_with_integrator(flow, m, 20, 0.0, 0.0, d, &raw mut other);
                assert_eq!(status, EQF_ERR_INVALID_ARGUMENT);
            }
            let status = eqf_flow_with_integrator(flow, 0, -1, 0.0, 0.0, 0, &raw mut other);
            assert_eq!(status, EQF_ERR_INVALID_ARGUMENT);
            // Settings Dormand–Prince cannot finish with (they used to be accepted and made
            // every sample run ~max_steps zero-length steps): tolerances below round-off, a
            // step limit beyond the cap. And tolerances too loose for a density (accepted
            // until session 30: at rtol 1e300 the solver crossed the flow in one step).
            for (n_steps, rtol, atol) in [
                (0, 0.5, 1e-10),
                (0, 1e300, 1e-10),
                (0, 1e-5, 1.0),
                (0, 1e-5, f64::MAX),
                (0, 5e-324, 5e-324),
                (0, 1e-16, 1e-10),
                (0, 1e-5, 1e-300),
                (10_000_000, 1e-5, 1e-10),
                (1_000_000_000_000, 1e-5, 1e-10),
            ] {
                let status = eqf_flow_with_integrator(
                    flow,
                    EQF_METHOD_DOPRI5,
                    n_steps,
                    rtol,
                    atol,
                    EQF_DENSITY_CONTINUOUS,
                    &raw mut other,
                );
                assert_eq!(
                    status, EQF_ERR_INVALID_ARGUMENT,
                    "{n_steps} {rtol:e} {atol:e}"
                );
                assert_eq!(other, std::ptr::dangling_mut::<eqf_flow>());
            }

            let status = eqf_flow_with_integrator(
                flow,
                EQF_METHOD_DOPRI5,
                0,
                1e-6,
                1e-9,
                EQF_DENSITY_CONTINUOUS,
                &raw mut other,
            );
            assert_eq!(status, EQF_OK);
            let (mut m, mut n, mut r, mut a, mut d) = (-1, -1, -1.0, -1.0, -1);
            let status = eqf_flow_integrator(other, &mut m, &mut n, &mut r, &mut a, &mut d);
            assert_eq!(status, EQF_OK);
            assert_eq!((m, n, r, a, d), (1, 100_000, 1e-6, 1e-9, 1));
            // The original is unchanged (and can be freed first).
            let status = eqf_flow_integrator(flow, &mut m, &mut n, &mut r, &mut a, &mut d);
            assert_eq!(status, EQF_OK);
            assert_eq!((m, n, r, a, d), (0, 20, 0.0, 0.0, 0));
            let (no_i32, no_i64, no_f64) = (
                std::ptr::null_mut::<i32>(),
                std::ptr::null_mut::<i64>(),
                std::ptr::null_mut::<f64>(),
            );
            let status = eqf_flow_integrator(flow, no_i32, no_i64, no_f64, no_f64, no_i32);
            assert_eq!(status, EQF_OK);
            assert_eq!(eqf_flow_free(flow), EQF_OK);
            assert_eq!((*other).flow().integrator().mode(), DensityMode::Continuous);
            assert_eq!(eqf_flow_free(other), EQF_OK);
        }
    }
}
