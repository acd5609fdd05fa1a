//! Boltzmann-generator importance weights and their effective sample size, for batches.

use crate::boltzmann::{check_log_weights, kish_ess, log_weights_into};

use super::{catch, check_output, count, input_array, scratch, write_output};

/// Computes the log importance weights `log_w[s] = -U[s]/kT - log_q[s]` of n configurations
/// drawn from a flow (`log_q` from `eqf_flow_sample` or `eqf_flow_log_density`, `U` from the
/// host's energy or `eqf_energy_eval`, in the same energy units as kT).
///
/// Self-normalised estimates of an observable O are then `sum_s w_s O_s / sum_s w_s`; compute
/// them with `exp(log_w[s] - max log_w)` to avoid overflow. An energy of +infinity is valid and
/// gives weight 0 (`log_w = -infinity`). A finite energy whose log weight is not representable
/// as a finite double (e.g. U = -1e308 at kT = 1e-10, where -U/kT = 1e318) is an error rather
/// than a log weight of +-infinity, which would claim a weight of infinity or exactly zero.
///
/// Nothing is written unless the call succeeds; with n == 0 the arrays may be NULL.
/// `log_w` may be the same array as `U` or `log_q`.
///
/// @param n      number of configurations (>= 0)
/// @param U      input, n energies (not NaN, not -infinity)
/// @param log_q  input, n finite log-densities
/// @param kT     temperature in energy units (> 0, finite)
/// @param log_w  output, n log weights
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (n negative or too large, kT
///         not positive and finite); EQF_ERR_NON_FINITE (U NaN or -infinity, log_q not finite,
///         a log weight not representable); EQF_ERR_RESOURCE (the temporary of n log weights
///         needs more than 1 TiB or memory is refused)
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn eqf_log_weights(
    n: i64,
    U: *const f64,
    log_q: *const f64,
    kT: f64,
    log_w: *mut f64,
) -> i32 {
    catch(|| {
        let n = count(n, "n")?;
        check_output(log_w, n, "log_w")?;
        // The temporary first: an impossible count fails before the host's arrays are read.
        let mut weights = scratch(n, "log_w")?;
        // SAFETY: `U` and `log_q` are NULL (rejected) or point to n doubles that the caller does
        // not modify during the call (this function's contract). The borrows end before
        // `log_w`, which may alias them, is written.
        let (energies, log_densities) =
            unsafe { (input_array(U, n, "U")?, input_array(log_q, n, "log_q")?) };
        log_weights_into(energies, log_densities, kT, &mut weights)?;
        // SAFETY: `log_w` was checked (non-NULL, aligned) for n doubles and is writable for n
        // doubles (this function's contract); `weights` is our own temporary.
        unsafe { write_output(log_w, &weights) };
        Ok(())
    })
}

/// Computes the Kish effective sample size `ESS = (sum w)^2 / sum w^2` of n log importance
/// weights, stably (the weights are shifted by their maximum). ESS lies between 1 and n; report
/// `ESS / n` as the sampling efficiency. The ESS of n == 0 weights, or of weights that are all
/// zero (every `log_w` = -infinity), is 0.
///
/// @param n      number of weights (>= 0)
/// @param log_w  input, n log weights (-infinity allowed, NaN and +infinity not)
/// @param ess    output, one double; written only on success
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (n negative or too large);
///         EQF_ERR_NON_FINITE (a log weight is NaN or +infinity)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_kish_ess(n: i64, log_w: *const f64, ess: *mut f64) -> i32 {
    catch(|| {
        let n = count(n, "n")?;
        check_output(ess, 1, "ess")?;
        // SAFETY: `log_w` is NULL (rejected) or points to n doubles that the caller does not
        // modify during the call (this function's contract).
        let weights = unsafe { input_array(log_w, n, "log_w") }?;
        check_log_weights(weights)?;
        let value = kish_ess(weights);
        // SAFETY: `ess` is non-NULL (checked above) and valid for one write of a double (this
        // function's contract).
        unsafe { write_output(ess, &[value]) };
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::{EQF_ERR_NON_FINITE, EQF_ERR_NULL_POINTER, EQF_OK};

    #[test]
    fn weights_and_ess_match_the_rust_api_and_fail_cleanly() {
        let u = [1.0, f64::INFINITY, -2.0];
        let log_q = [-0.5, 0.25, 3.0];
        let mut log_w = [7.0; 3];
        // SAFETY: arrays of 3 doubles.
        let status =
            unsafe { eqf_log_weights(3, u.as_ptr(), log_q.as_ptr(), 2.0, log_w.as_mut_ptr()) };
        assert_eq!(status, EQF_OK);
        assert_eq!(log_w, [-0.5 + 0.5, f64::NEG_INFINITY, 1.0 - 3.0]);
        let mut ess = -1.0;
        // SAFETY: 3 log weights, one output double.
        assert_eq!(unsafe { eqf_kish_ess(3, log_w.as_ptr(), &mut ess) }, EQF_OK);
        assert_eq!(ess, kish_ess(&log_w));

        let bad_u = [f64::NAN, 0.0, 0.0];
        let mut untouched = [7.0; 3];
        // SAFETY: arrays of 3 doubles.
        let status = unsafe {
            eqf_log_weights(
                3,
                bad_u.as_ptr(),
                log_q.as_ptr(),
                1.0,
                untouched.as_mut_ptr(),
            )
        };
        assert_eq!(status, EQF_ERR_NON_FINITE);
        assert_eq!(untouched, [7.0; 3]);
        // SAFETY: a NULL input is rejected before use.
        let status = unsafe {
            eqf_log_weights(
                3,
                std::ptr::null(),
                log_q.as_ptr(),
                1.0,
                untouched.as_mut_ptr(),
            )
        };
        assert_eq!(status, EQF_ERR_NULL_POINTER);
        let mut ess = -1.0;
        let (nan, inf) = ([0.0, f64::NAN], [0.0, f64::INFINITY]);
        // SAFETY: 2 log weights and one output double each; n = 0 touches no array.
        let statuses = unsafe {
            [
                eqf_kish_ess(2, nan.as_ptr(), &mut ess),
                eqf_kish_ess(2, inf.as_ptr(), &mut ess),
            ]
        };
        assert_eq!(statuses, [EQF_ERR_NON_FINITE; 2]);
        assert_eq!(ess, -1.0);
        // SAFETY: n = 0 touches no array.
        let status = unsafe { eqf_kish_ess(0, std::ptr::null(), &mut ess) };
        assert_eq!(status, EQF_OK);
        assert_eq!(ess, 0.0);
        // A misaligned output is refused like a misaligned array (it used to be written).
        let mut backing = [0.0f64; 2];
        let misaligned = backing
            .as_mut_ptr()
            .cast::<u8>()
            .wrapping_add(1)
            .cast::<f64>();
        // SAFETY: 3 log weights; the misaligned output is refused before any write.
        let status = unsafe { eqf_kish_ess(3, log_w.as_ptr(), misaligned) };
        assert_eq!(status, crate::ffi::EQF_ERR_INVALID_ARGUMENT);
        assert_eq!(backing, [0.0; 2], "nothing written");
    }

    /// Issue 14: `−U/kT` of U = −1e308 at kT = 1e-10 is +1e318, not representable. The call
    /// used to succeed with log_w = +infinity (a weight that swallows every other); it must fail
    /// with EQF_ERR_NON_FINITE, a message naming the sample, and nothing written. So must a
    /// finite energy whose log weight overflows to -infinity; U = +infinity stays valid.
    #[test]
    fn unrepresentable_log_weights_fail_cleanly() {
        let log_q = [0.0, 0.0];
        for u in [[1.0, -1e308], [1.0, 1e308]] {
            let mut log_w = [7.0; 2];
            // SAFETY: arrays of 2 doubles.
            let status = unsafe {
                eqf_log_weights(2, u.as_ptr(), log_q.as_ptr(), 1e-10, log_w.as_mut_ptr())
            };
            assert_eq!(status, EQF_ERR_NON_FINITE, "U = {u:?}");
            assert_eq!(log_w, [7.0; 2]);
            let message = crate::ffi::with_last_error(str::to_owned);
            assert!(message.contains("sample 1"), "{message}");
        }
        let u = [1.0, f64::INFINITY];
        let mut log_w = [7.0; 2];
        // SAFETY: arrays of 2 doubles.
        let status =
            unsafe { eqf_log_weights(2, u.as_ptr(), log_q.as_ptr(), 1e-10, log_w.as_mut_ptr()) };
        assert_eq!(status, EQF_OK);
        assert_eq!(log_w, [-1e10, f64::NEG_INFINITY]);
    }
}
