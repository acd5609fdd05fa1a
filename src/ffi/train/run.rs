//! The training run, `eqf_flow_train`: checks the host's arrays, runs the trainer and commits
//! the trained parameters and the summary only on success.

use crate::Error;
use crate::flow::MAX_STEP_GROWTH;
use crate::integrate::Method;
use crate::train::{EpochReport, Trainer};

use super::callback::HostEnergy;
use super::options::{KlTargetEnergy, eqf_train_options};
use super::summary::{eqf_train_epoch, eqf_train_summary, summary_bytes};
use crate::ffi::flow::check_not_reading;
use crate::ffi::flow::eqf_flow;
use crate::ffi::{array_len, catch, count, handle, input_array, log, threads};

/// Trains `flow` in place: maximum likelihood on the host's configurations `x_train`, mixed
/// with the reverse KL divergence to exp(-U/kT) when the options' lambda is below 1 (see the
/// `eqf_train_options_set_*` functions). Minibatches are drawn by shuffling the training set
/// every epoch; after every epoch the validation NLL is evaluated (if a validation set is
/// given) and the progress callback is called. When training ends, the flow holds the
/// parameters of the epoch with the lowest validation NLL (without a validation set: of the
/// last epoch).
///
/// Layout: `x_train` holds n_train configurations, `x_train[(s*N + i)*D + k]` (C
/// `double x[n][N][D]`, Fortran `x(D, N, n)`), finite, with any centres of mass (each is
/// removed; the flow's densities are centre-of-mass free). Likewise `x_validation`. At least
/// one training configuration is required, also for pure reverse-KL training (lambda = 0),
/// where the training set still sets the number of steps per epoch (ceil(n_train/batch_size))
/// and the reported NLL.
///
/// Training differentiates continuous-mode RK4 with the options' step count; the flow's own
/// integrator and density mode (what sampling, densities and moves use) are kept, with one
/// exception: in strict mode (the default, `eqf_flow_with_require_certificate`) a trained
/// field that its RK4 step count does not certify gets the smallest step count that does, if
/// that is at most 16 times its own (`eqf_flow_certificate` reports it; logged at
/// `EQF_LOG_INFO`), so that the trained flow samples; beyond that the flow keeps its steps
/// and its exact-discrete calls fail with EQF_ERR_UNCERTIFIED naming the count (logged at
/// `EQF_LOG_WARNING`). Train with `eqf_train_options_set_lipschitz_penalty` to keep the step
/// count. Afterwards every call on the flow uses the new parameters; moves created from the
/// flow before the call keep their own copy of the old flow.
///
/// Deterministic: the same flow, data, options and seed give bit-identical parameters for any
/// number of threads (`eqf_set_num_threads`), and a host callback that computes the same
/// numbers as a built-in energy gives the same parameters as that energy.
///
/// Threads: the per-sample work runs in eqflow's thread pool; the loop, the progress callback
/// and a host KL energy callback run on the calling thread only. Unlike the other flow
/// functions, this one **modifies the flow**, by one swap at its end: until then the callbacks
/// and other threads may read the flow and see the parameters from before the call; calls on
/// other threads that read it then finish on the old flow or start on the new one. Called from
/// a callback of another eqflow call that reads a flow on this thread (a log callback: any
/// message of that call, the one reporting its failure included), or while another
/// `eqf_flow_train` trains the same flow (from its progress or energy callback, or on another
/// thread), it fails with EQF_ERR_INVALID_STATE before training.
///
/// On failure the flow is unchanged, `summary` is not written, and the message says what
/// failed (for a failed KL energy: which prior sample and how).
///
/// @param flow          the flow to train (not NULL)
/// @param options       the settings (not NULL), not modified by the call
/// @param n_train       number of training configurations (>= 1)
/// @param x_train       input, n_train*N*D doubles
/// @param n_validation  number of validation configurations (>= 0)
/// @param x_validation  input, n_validation*N*D doubles (may be NULL when n_validation = 0)
/// @param summary       output, or NULL: the caller sets `summary->size` to
///                      `sizeof(eqf_train_summary)`; written only on success
/// @return EQF_OK (also when the progress callback stopped training early);
///         EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (a count out of range, no training
///         configurations, lambda < 1 without a KL energy, a KL energy for other particles:
///         another N or D, or species other than the flow's, see
///         `eqf_train_options_set_kl_energy`; a summary size below 80); EQF_ERR_NON_FINITE
///         (NaN or infinite data, a KL sample with infinite energy, a training step that
///         diverged, a finite gradient whose square overflows the optimiser's second moment:
///         a loss scale far too large, typically kT far below the energy's scale);
///         EQF_ERR_CALLBACK (the KL energy callback failed); EQF_ERR_INVALID_STATE
///         (the flow is training already, or this thread is inside a callback of a call that
///         reads a flow); EQF_ERR_RESOURCE (one training step would hold more than 1 TiB:
///         n_kl_samples RK4 trajectories of 4*n_rk4_steps*N*D doubles, the per-sample
///         gradients of a minibatch, the batch^2 alignments of equivariant-OT flow matching;
///         or the system refuses the memory of one of these or of the RK4 tape);
///         other codes from the losses. The flow is unchanged on failure
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_train(
    flow: *mut eqf_flow,
    options: *const eqf_train_options,
    n_train: i64,
    x_train: *const f64,
    n_validation: i64,
    x_validation: *const f64,
    summary: *mut eqf_train_summary,
) -> i32 {
    catch(|| {
        // SAFETY: `flow` is NULL (rejected) or a live handle, not freed during the call (this
        // function's contract). Only read until the final commit, so callbacks and other
        // threads may read the flow meanwhile.
        let current = unsafe { handle(flow.cast_const(), "flow") }?;
        // Before training, not after it: the commit below cannot happen from here.
        check_not_reading()?;
        // One run per flow at a time; released however the call ends.
        let _run = current.begin_training()?;
        // SAFETY: `options` is NULL (rejected) or a live handle (this function's contract).
        // Training works on a copy: changes to the options during the call affect only later
        // calls.
        let options = unsafe { handle(options, "options") }?.snapshot();
        // SAFETY: `summary` is NULL or points to a struct whose first field is its size (this
        // function's contract).
        let summary_bytes = unsafe { summary_bytes(summary) }?;
        let len = current.flow().layout().len();
        let n_train = count(n_train, "n_train")?;
        if n_train == 0 {
            return Err(Error::invalid(
                "n_train = 0: training needs at least one configuration (with lambda = 0 too: \
                 the training set sets the steps per epoch and the reported NLL)",
            ));
        }
        let train_len = array_len(n_train, len, "x_train")?;
        // SAFETY: `x_train` is NULL (rejected) or points to n_train*N*D doubles that the
        // caller does not modify during the call (this function's contract).
        let train = unsafe { input_array(x_train, train_len, "x_train") }?;
        let n_validation = count(n_validation, "n_validation")?;
        let validation_len = array_len(n_validation, len, "x_validation")?;
        // SAFETY: `x_validation` is NULL (rejected unless n_validation = 0) or points to
        // n_validation*N*D doubles not modified during the call (this function's contract).
        let validation = unsafe { input_array(x_validation, validation_len, "x_validation") }?;
        let config = options.config;
        if config.lambda.needs_kl() && options.kl_energy.is_none() {
            return Err(Error::invalid(
                "lambda < 1 needs a KL target energy: set one with \
                 eqf_train_options_set_kl_energy or eqf_train_options_set_kl_energy_fn",
            ));
        }
        let host_energy = match &options.kl_energy {
            Some(KlTargetEnergy::Callback { energy, user }) => Some(HostEnergy {
                energy: *energy,
                user: *user,
                n_particles: current.flow().n_particles(),
                dim: current.flow().dim(),
            }),
            _ => None,
        };

        let mut trainer = Trainer::new(config, train);
        if n_validation > 0 {
            trainer = trainer.with_validation(validation);
        }
        match (&options.kl_energy, &host_energy) {
            (_, Some(host)) => trainer = trainer.with_serial_energy(host),
            (Some(KlTargetEnergy::Builtin(energy)), None) => {
                trainer = trainer.with_energy(energy.as_ref());
            }
            _ => {}
        }
        let progress = |report: &EpochReport| match options.progress {
            None => true,
            Some((progress, user)) => {
                let report = eqf_train_epoch::from(report);
                // SAFETY: `progress` and `user` come from the host, which guarantees that
                // `progress` accepts `user`; `report` is a live local read during the call.
                unsafe { progress(user, &raw const report) == 0 }
            }
        };
        let mut trained = current.flow().clone();
        let result = threads::install_sections(|| trainer.run(&mut trained, progress))?;
        // Strict mode (the default): the trained field may need more steps than the flow has;
        // they grow with it, so that the trained flow samples. Past MAX_STEP_GROWTH times its
        // own it keeps them, and strict mode names the problem at its first use.
        if trained.requires_certificate() {
            // The step count, read off the integrator (the certificate is computed once, by
            // the raise).
            let before = match trained.integrator().method() {
                Method::Rk4 { n_steps } => n_steps,
                Method::Dopri5(_) => 0,
            };
            match trained.raise_to_certified_steps(before.saturating_mul(MAX_STEP_GROWTH)) {
                Ok(Some(needed)) => log::log(log::EQF_LOG_INFO, || {
                    format!(
                        "eqf_flow_train: the trained field is certified from {needed} RK4 \
                         steps, not at the flow's {before}: the flow now has {needed} (strict \
                         mode; a flow with it off keeps its steps)"
                    )
                }),
                Ok(None) => {}
                Err(e) => log::log(log::EQF_LOG_WARNING, || {
                    format!(
                        "eqf_flow_train: the trained flow keeps its {before} RK4 steps, and \
                         strict mode will refuse its exact-discrete work: {e}"
                    )
                }),
            }
        }

        // SAFETY: a live handle, not freed during the call (this function's contract). The
        // commit waits only for other threads' calls that read the old flow, and cannot fail
        // (this thread reads no flow: checked before training).
        let flow = unsafe { handle(flow.cast_const(), "flow") }?;
        flow.replace(trained)?;
        if let Some(bytes) = summary_bytes {
            let mut written = eqf_train_summary::from(&result);
            written.size = bytes as u64;
            // SAFETY: `summary` is non-NULL and aligned (checked before training) and the
            // caller's struct has room for `bytes` bytes (its `size` field says at least that
            // many; this function's contract); `written` is a local, so the ranges are disjoint.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (&raw const written).cast::<u8>(),
                    summary.cast::<u8>(),
                    bytes,
                );
            }
        }
        Ok(())
    })
}
