//! The host's callbacks: the C typedefs of the progress and KL energy callbacks, and the
//! adapter that makes an energy callback a [`SerialEnergy`] for the trainer.

use std::ffi::c_void;

use crate::energy::SerialEnergy;
use crate::{Error, Result};

use super::summary::eqf_train_epoch;

/// A progress callback, called after every training epoch with that epoch's report (valid only
/// during the call). Return 0 to continue, any other value to stop training after this epoch:
/// stopping early is not an error, `eqf_flow_train` then returns EQF_OK with
/// `stopped_early = 1` in the summary and the best parameters so far in the flow.
///
/// Called on the thread that called `eqf_flow_train`, never concurrently. It may use other
/// eqflow objects and read the flow being trained (which still holds its parameters from
/// before the call), but must not free that flow (training it again is refused with
/// EQF_ERR_INVALID_STATE), and must not unwind through eqflow (no C++ exception, no longjmp). `user` is passed through unchanged
/// from `eqf_train_options_set_progress`.
#[allow(non_camel_case_types)]
pub type eqf_train_progress_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, report: *const eqf_train_epoch) -> i32>;

/// An energy-and-gradient callback supplied by the host, the target of the reverse-KL term of
/// training: writes U(x) of one configuration into `*U` and the gradient +dU/dx (not the
/// force; same layout as x) into `gradient`, and returns 0, or any non-zero value to report
/// failure.
///
/// `x` holds `n_particles * dim` doubles, particle-major (`x[i*dim + k]`, C `double x[N][D]`,
/// Fortran `x(D, N)`); `gradient` has room for as many (never NULL); both are valid only during
/// the call. `*U` is in the energy units of the kT set with `eqf_train_options_set_kT`.
///
/// Failures stop training with EQF_ERR_CALLBACK (flow unchanged, message naming the prior
/// sample): a non-zero return, `*U` NaN, or, with a finite `*U`, a gradient component that is
/// NaN or infinite (or not written). `*U = +infinity` (overlapping particles) is not a callback
/// failure but stops training with EQF_ERR_NON_FINITE, as for built-in energies: the KL
/// gradient does not exist there.
///
/// Called **only on the thread that called `eqf_flow_train`, one configuration at a time, never
/// concurrently**, while eqflow's own threads wait: a non-thread-safe energy (Fortran with
/// global state, MPI initialised with MPI_THREAD_FUNNELED) is safe. It must not free the flow
/// being trained (training it again is refused with EQF_ERR_INVALID_STATE), and must not unwind through eqflow (no C++ exception, no
/// longjmp). `user` is passed through unchanged from `eqf_train_options_set_kl_energy_fn`.
#[allow(non_camel_case_types, non_snake_case)]
pub type eqf_energy_grad_fn = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        n_particles: i64,
        dim: i64,
        x: *const f64,
        U: *mut f64,
        gradient: *mut f64,
    ) -> i32,
>;

/// The non-NULL [`eqf_energy_grad_fn`], as stored. (The public alias spells the signature out
/// with parameter names, for the generated header.)
pub(super) type EnergyGradFn =
    unsafe extern "C" fn(*mut c_void, i64, i64, *const f64, *mut f64, *mut f64) -> i32;

/// The non-NULL [`eqf_train_progress_fn`], as stored.
pub(super) type ProgressFn = unsafe extern "C" fn(*mut c_void, *const eqf_train_epoch) -> i32;

/// The host's energy callback as a [`SerialEnergy`] for the trainer, which calls it only on
/// the thread of `eqf_flow_train`.
pub(super) struct HostEnergy {
    pub(super) energy: EnergyGradFn,
    pub(super) user: *mut c_void,
    pub(super) n_particles: usize,
    pub(super) dim: usize,
}

impl SerialEnergy for HostEnergy {
    fn n_particles(&self) -> usize {
        self.n_particles
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn energy_gradient_into(&self, x: &[f64], gradient: &mut [f64]) -> Result<f64> {
        debug_assert_eq!(x.len(), self.n_particles * self.dim);
        debug_assert_eq!(gradient.len(), x.len());
        let mut u = f64::NAN;
        // A gradient the callback does not write stays NaN and is reported below.
        gradient.fill(f64::NAN);
        // In a message slot of its own: the callback may itself run eqflow calls with
        // callbacks (a move's step), whose messages must not replace its own.
        let (status, message) = crate::ffi::callback_error::run_host_callback(|| {
            // SAFETY: `energy` and `user` come from the host, which guarantees that `energy`
            // accepts `user`, reads N*D doubles from `x` and writes one double to `U` and N*D
            // to `gradient`; `x` and `gradient` hold N*D doubles each and `u` is a live local.
            unsafe {
                (self.energy)(
                    self.user,
                    self.n_particles as i64,
                    self.dim as i64,
                    x.as_ptr(),
                    &raw mut u,
                    gradient.as_mut_ptr(),
                )
            }
        });
        let fail = |what: String| Err(Error::Callback { what });
        if status != 0 {
            return fail(crate::ffi::callback_error::annotate(
                format!("the KL energy callback returned {status}"),
                message,
            ));
        }
        if u.is_nan() {
            return fail("the KL energy callback returned U = NaN".to_owned());
        }
        // Where U is infinite the gradient carries no meaning; the loss reports U itself.
        if u.is_finite()
            && let Some(k) = gradient.iter().position(|g| !g.is_finite())
        {
            return fail(format!(
                "the KL energy callback returned a non-finite gradient (component {k} is {}) \
                 with U = {}",
                gradient[k],
                crate::error::Compact(u)
            ));
        }
        Ok(u)
    }
}
