//! Training a flow from C: an opaque `eqf_train_options` object with setters, and
//! `eqf_flow_train` (maximum likelihood on host samples, reverse KL with a built-in energy or a
//! host energy-and-gradient callback).
//!
//! ABI growth: options are an opaque object, so new settings are new setters; the two structs
//! that cross the boundary (`eqf_train_epoch`, `eqf_train_summary`) begin with their size in
//! bytes and only ever grow by appending fields, all 8 bytes wide so that no padding can hide
//! an appended field.

use std::ffi::c_void;
use std::sync::Arc;

use crate::energy::{Energy, SerialEnergy};
use crate::train::{EpochReport, LambdaSchedule, TrainConfig, TrainSummary, Trainer};
use crate::{Error, Result};

use super::energy::eqf_energy;
use super::flow::eqf_flow;
use super::{
    array_len, catch, check_not_null, count, free_handle, handle, handle_mut, input_array, threads,
    write_handle,
};

/// The report of one training epoch, passed to an `eqf_train_progress_fn`.
///
/// Filled by the library; `size` is `sizeof(eqf_train_epoch)` of the library that filled it.
/// Later versions only append fields, so a program compiled against a newer header reads a
/// field only if it lies within `size` (`offsetof(eqf_train_epoch, field) + 8 <= size`).
/// Losses are in nats per configuration.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(non_camel_case_types)]
pub struct eqf_train_epoch {
    /// Size in bytes of this struct as filled by the library.
    pub size: u64,
    /// 0-based index of the epoch that just finished.
    pub epoch: i64,
    /// Number of epochs the run was configured for.
    pub n_epochs: i64,
    /// Optimiser steps taken in this epoch.
    pub n_steps: i64,
    /// ML weight lambda of this epoch (loss = lambda NLL + (1 - lambda) KL).
    pub lambda: f64,
    /// Mean -log q of the training configurations over the epoch's minibatches (each with the
    /// parameters of its step).
    pub train_nll: f64,
    /// Mean reverse-KL loss u(F(z)) - log|det dF/dz| over the epoch's steps; NaN when the
    /// epoch had no KL term (lambda = 1).
    pub train_kl: f64,
    /// Mean mixed loss over the epoch's steps.
    pub train_loss: f64,
    /// Mean -log q of the validation set with the parameters at the end of the epoch; NaN
    /// without a validation set.
    pub validation_nll: f64,
    /// Wall time since the training call started, in seconds.
    pub elapsed_seconds: f64,
}

/// What a training run did, written by `eqf_flow_train`.
///
/// The caller sets `size = sizeof(eqf_train_summary)` before the call; the library writes only
/// the fields that fit in that many bytes (so a program compiled against an older header is
/// never overrun) and sets `size` to the number of bytes it wrote (so a program compiled against
/// a newer header can tell which fields an older library filled). `size` must be at least 80,
/// the size of the first version of this struct.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(non_camel_case_types)]
pub struct eqf_train_summary {
    /// In: the size of the caller's struct in bytes. Out: the number of bytes written.
    pub size: u64,
    /// Epochs completed (the number of progress reports).
    pub n_epochs: i64,
    /// The 0-based epoch whose parameters are now in the flow: the lowest validation NLL
    /// (earliest on ties) with a validation set, else the last completed epoch.
    pub best_epoch: i64,
    /// Optimiser steps taken in total.
    pub n_steps: i64,
    /// 1 if the progress callback stopped the run early, else 0.
    pub stopped_early: i64,
    /// Validation NLL of the flow before training; NaN without a validation set.
    pub initial_validation_nll: f64,
    /// Validation NLL of the best epoch (the parameters now in the flow); NaN without a
    /// validation set.
    pub best_validation_nll: f64,
    /// Validation NLL after the last completed epoch; NaN without a validation set.
    pub final_validation_nll: f64,
    /// Training NLL of the last completed epoch (see `eqf_train_epoch.train_nll`).
    pub final_train_nll: f64,
    /// Wall time of the training call in seconds.
    pub wall_seconds: f64,
}

/// The size of the first version of `eqf_train_summary`: the smallest `size` a caller can
/// pass. It never changes when fields are appended.
const SUMMARY_V1_SIZE: usize = 80;

/// A progress callback, called after every training epoch with that epoch's report (valid only
/// during the call). Return 0 to continue, any other value to stop training after this epoch:
/// stopping early is not an error, `eqf_flow_train` then returns EQF_OK with
/// `stopped_early = 1` in the summary and the best parameters so far in the flow.
///
/// Called on the thread that called `eqf_flow_train`, never concurrently. It may use other
/// eqflow objects and read the flow being trained (which still holds its parameters from
/// before the call), but must not train, free or otherwise modify that flow, and must not
/// unwind through eqflow (no C++ exception, no longjmp). `user` is passed through unchanged
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
/// global state, MPI initialised with MPI_THREAD_FUNNELED) is safe. It must not train, free or
/// modify the flow being trained, and must not unwind through eqflow (no C++ exception, no
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
type EnergyGradFn =
    unsafe extern "C" fn(*mut c_void, i64, i64, *const f64, *mut f64, *mut f64) -> i32;

/// The non-NULL [`eqf_train_progress_fn`], as stored.
type ProgressFn = unsafe extern "C" fn(*mut c_void, *const eqf_train_epoch) -> i32;

/// The target energy of the KL term, as the options hold it.
#[derive(Clone)]
enum KlTargetEnergy {
    /// A built-in energy, kept alive by the options (the handle may be freed).
    Builtin(Arc<dyn Energy>),
    /// A host callback with its user pointer.
    Callback {
        energy: EnergyGradFn,
        user: *mut c_void,
    },
}

/// Settings of a training run (opaque), created by `eqf_train_options_new` with the defaults of
/// the paper's DW-4 maximum-likelihood protocol and changed by the `eqf_train_options_set_*`
/// functions, each of which validates its value at once (a rejected value leaves the options
/// unchanged). Released with `eqf_train_options_free`.
///
/// One options object may be used for any number of `eqf_flow_train` calls and flows; it must
/// not be modified while a training call that uses it runs. It belongs to one thread at a time.
#[allow(non_camel_case_types)]
pub struct eqf_train_options {
    config: TrainConfig,
    progress: Option<(ProgressFn, *mut c_void)>,
    kl_energy: Option<KlTargetEnergy>,
}

/// Creates training options with the defaults of the paper's DW-4 protocol, maximum-likelihood
/// phase: 50 epochs, batch size 64, RK4 with 20 steps (the map training differentiates),
/// AdamW with learning rate 5e-3, AMSGrad and weight decay 1e-12, lambda = 1 (pure maximum
/// likelihood), 64 prior samples per KL term (used when lambda < 1), kT = 1, seed 0, no
/// progress callback and no KL target energy.
///
/// For the paper's second phase set `eqf_train_options_set_lambda_linear(options, 1.0, 0.5)`
/// and a KL target energy.
///
/// @param out  on success receives the new options, to be released with
///             `eqf_train_options_free`; untouched on failure
/// @return EQF_OK; EQF_ERR_NULL_POINTER (out is NULL)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_train_options_new(out: *mut *mut eqf_train_options) -> i32 {
    catch(|| {
        check_not_null(out, "out")?;
        let options = eqf_train_options {
            config: TrainConfig::default(),
            progress: None,
            kl_energy: None,
        };
        // SAFETY: `out` is non-NULL (checked above) and valid for one write (this function's
        // contract).
        unsafe { write_handle(out, options) };
        Ok(())
    })
}

/// Releases options created by `eqf_train_options_new`. NULL is accepted and does nothing. A
/// built-in KL energy the options kept is released with them if its handle was freed before.
///
/// @return EQF_OK
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_train_options_free(options: *mut eqf_train_options) -> i32 {
    // SAFETY: `options` is NULL or a handle from `eqf_train_options_new` not freed yet (this
    // function's contract).
    unsafe { free_handle(options) }
}

/// Applies `change` to a copy of the options' settings and keeps the copy only if the whole
/// configuration is still valid, so a rejected value leaves the options unchanged.
///
/// # Safety
/// `options` must be NULL or a live handle from `eqf_train_options_new` that no other thread
/// uses during the call.
unsafe fn update(
    options: *mut eqf_train_options,
    change: impl FnOnce(&mut TrainConfig) -> Result<()>,
) -> i32 {
    catch(|| {
        // SAFETY: `options` is NULL (rejected) or a live handle used by this thread only (the
        // caller's contract).
        let options = unsafe { handle_mut(options, "options") }?;
        let mut config = options.config;
        change(&mut config)?;
        config.validate()?;
        options.config = config;
        Ok(())
    })
}

/// Converts a count setting, which must be at least 1.
fn positive(value: i64, what: &str) -> Result<usize> {
    let n = count(value, what)?;
    if n == 0 {
        return Err(Error::invalid(format!("{what} must be at least 1, got 0")));
    }
    Ok(n)
}

/// Sets the number of epochs (passes over the training set).
///
/// @param options   the options (not NULL)
/// @param n_epochs  at least 1
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (options unchanged)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_train_options_set_epochs(
    options: *mut eqf_train_options,
    n_epochs: i64,
) -> i32 {
    // SAFETY: forwarded contract of this function.
    unsafe {
        update(options, |c| {
            c.n_epochs = positive(n_epochs, "n_epochs")?;
            Ok(())
        })
    }
}

/// Sets the number of training configurations per optimiser step (the last minibatch of an
/// epoch may be smaller).
///
/// @param options     the options (not NULL)
/// @param batch_size  at least 1
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (options unchanged)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_train_options_set_batch_size(
    options: *mut eqf_train_options,
    batch_size: i64,
) -> i32 {
    // SAFETY: forwarded contract of this function.
    unsafe {
        update(options, |c| {
            c.batch_size = positive(batch_size, "batch_size")?;
            Ok(())
        })
    }
}

/// Sets the number of fixed RK4 steps of the map that training differentiates (continuous
/// density mode; the flow's own integrator is not changed by training).
///
/// @param options  the options (not NULL)
/// @param n_steps  in 1..=100000
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (options unchanged)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_train_options_set_rk4_steps(
    options: *mut eqf_train_options,
    n_steps: i64,
) -> i32 {
    // SAFETY: forwarded contract of this function.
    unsafe {
        update(options, |c| {
            c.n_rk4_steps = positive(n_steps, "n_steps")?;
            Ok(())
        })
    }
}

/// Sets the AdamW learning rate.
///
/// @param options        the options (not NULL)
/// @param learning_rate  positive and finite, with learning_rate * weight_decay < 1
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (options unchanged)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_train_options_set_learning_rate(
    options: *mut eqf_train_options,
    learning_rate: f64,
) -> i32 {
    // SAFETY: forwarded contract of this function.
    unsafe {
        update(options, |c| {
            c.optimizer.lr = learning_rate;
            Ok(())
        })
    }
}

/// Sets the AdamW decoupled weight decay (each step multiplies the parameters by
/// `1 - learning_rate * weight_decay`).
///
/// @param options       the options (not NULL)
/// @param weight_decay  finite and >= 0, with learning_rate * weight_decay < 1
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (options unchanged)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_train_options_set_weight_decay(
    options: *mut eqf_train_options,
    weight_decay: f64,
) -> i32 {
    // SAFETY: forwarded contract of this function.
    unsafe {
        update(options, |c| {
            c.optimizer.weight_decay = weight_decay;
            Ok(())
        })
    }
}

/// Sets the seed of the run: the minibatch shuffles and the KL latents derive from it, so the
/// same flow, data, options and seed give bit-identical parameters for any thread count.
///
/// @param options  the options (not NULL)
/// @param seed     any value
/// @return EQF_OK; EQF_ERR_NULL_POINTER
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_train_options_set_seed(
    options: *mut eqf_train_options,
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

/// Sets the temperature of the KL target, u = U/kT, in the energy units of the KL energy.
///
/// @param options  the options (not NULL)
/// @param kT       positive and finite
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (options unchanged)
#[unsafe(no_mangle)]
#[allow(non_snake_case)]
pub unsafe extern "C" fn eqf_train_options_set_kT(options: *mut eqf_train_options, kT: f64) -> i32 {
    // SAFETY: forwarded contract of this function.
    unsafe {
        update(options, |c| {
            c.kt = kT;
            Ok(())
        })
    }
}

/// Sets the number of prior samples per KL term (per optimiser step with lambda < 1). The KL
/// energy is evaluated that many times per step; eqflow keeps the RK4 trajectory of each
/// (4 * n_rk4_steps * N * D doubles) between the forward and the reverse pass.
///
/// @param options    the options (not NULL)
/// @param n_samples  at least 1
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (options unchanged)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_train_options_set_kl_samples(
    options: *mut eqf_train_options,
    n_samples: i64,
) -> i32 {
    // SAFETY: forwarded contract of this function.
    unsafe {
        update(options, |c| {
            c.n_kl_samples = positive(n_samples, "n_kl_samples")?;
            Ok(())
        })
    }
}

/// Sets a constant ML weight: every epoch minimises `lambda * NLL + (1 - lambda) * KL`.
/// lambda = 1 is pure maximum likelihood (no KL energy needed), lambda = 0 pure reverse KL.
///
/// @param options  the options (not NULL)
/// @param lambda   in [0, 1]
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (options unchanged)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_train_options_set_lambda(
    options: *mut eqf_train_options,
    lambda: f64,
) -> i32 {
    // SAFETY: forwarded contract of this function.
    unsafe {
        update(options, |c| {
            c.lambda = LambdaSchedule::Constant(lambda);
            Ok(())
        })
    }
}

/// Sets a linear ML-weight schedule: lambda moves from `start` in the first epoch to `end` in
/// the last, `lambda(e) = start + (end - start) * e / (n_epochs - 1)` (`start` with a single
/// epoch). The paper's ML+KL phase is (1, 0.5).
///
/// @param options  the options (not NULL)
/// @param start    in [0, 1]
/// @param end      in [0, 1]
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (options unchanged)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_train_options_set_lambda_linear(
    options: *mut eqf_train_options,
    start: f64,
    end: f64,
) -> i32 {
    // SAFETY: forwarded contract of this function.
    unsafe {
        update(options, |c| {
            c.lambda = LambdaSchedule::Linear { start, end };
            Ok(())
        })
    }
}

/// Sets the progress callback, called after every epoch (see `eqf_train_progress_fn`); NULL
/// removes it.
///
/// @param options   the options (not NULL)
/// @param progress  the callback, or NULL
/// @param user      passed unchanged to `progress`
/// @return EQF_OK; EQF_ERR_NULL_POINTER (options is NULL)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_train_options_set_progress(
    options: *mut eqf_train_options,
    progress: eqf_train_progress_fn,
    user: *mut c_void,
) -> i32 {
    catch(|| {
        // SAFETY: `options` is NULL (rejected) or a live handle used by this thread only (this
        // function's contract).
        let options = unsafe { handle_mut(options, "options") }?;
        options.progress = progress.map(|f| (f, user));
        Ok(())
    })
}

/// Sets a built-in energy (from `eqf_energy_double_well` or `eqf_energy_lennard_jones`) as the
/// target of the KL term, replacing a KL target set before; NULL removes the target. The
/// options keep the energy alive, so its handle may be freed right after this call. Its
/// particles must be those of the flow that is trained (checked by `eqf_flow_train`). Built-in
/// energies are evaluated in eqflow's thread pool.
///
/// @param options  the options (not NULL)
/// @param energy   the energy, or NULL
/// @return EQF_OK; EQF_ERR_NULL_POINTER (options is NULL)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_train_options_set_kl_energy(
    options: *mut eqf_train_options,
    energy: *const eqf_energy,
) -> i32 {
    catch(|| {
        // SAFETY: `options` is NULL (rejected) or a live handle used by this thread only (this
        // function's contract).
        let options = unsafe { handle_mut(options, "options") }?;
        options.kl_energy = if energy.is_null() {
            None
        } else {
            // SAFETY: non-NULL, so a live handle from an `eqf_energy_*` constructor (this
            // function's contract); energies are never mutated.
            let energy = unsafe { handle(energy, "energy") }?;
            Some(KlTargetEnergy::Builtin(Arc::clone(&energy.inner)))
        };
        Ok(())
    })
}

/// Sets a host energy-and-gradient callback as the target of the KL term, replacing a KL
/// target set before; NULL removes the target. The callback is called only on the thread that
/// calls `eqf_flow_train`, never concurrently (see `eqf_energy_grad_fn`).
///
/// @param options  the options (not NULL)
/// @param energy   the callback, or NULL
/// @param user     passed unchanged to `energy`; must stay valid while the options are used
/// @return EQF_OK; EQF_ERR_NULL_POINTER (options is NULL)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_train_options_set_kl_energy_fn(
    options: *mut eqf_train_options,
    energy: eqf_energy_grad_fn,
    user: *mut c_void,
) -> i32 {
    catch(|| {
        // SAFETY: `options` is NULL (rejected) or a live handle used by this thread only (this
        // function's contract).
        let options = unsafe { handle_mut(options, "options") }?;
        options.kl_energy = energy.map(|energy| KlTargetEnergy::Callback { energy, user });
        Ok(())
    })
}

/// The host's energy callback as a [`SerialEnergy`] for the trainer, which calls it only on
/// the thread of `eqf_flow_train`.
struct HostEnergy {
    energy: EnergyGradFn,
    user: *mut c_void,
    n_particles: usize,
    dim: usize,
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
        // SAFETY: `energy` and `user` come from the host, which guarantees that `energy`
        // accepts `user`, reads N*D doubles from `x` and writes one double to `U` and N*D to
        // `gradient`; `x` and `gradient` hold N*D doubles each and `u` is a live local.
        let status = unsafe {
            (self.energy)(
                self.user,
                self.n_particles as i64,
                self.dim as i64,
                x.as_ptr(),
                &raw mut u,
                gradient.as_mut_ptr(),
            )
        };
        let fail = |what: String| Err(Error::Callback { what });
        if status != 0 {
            return fail(format!("the KL energy callback returned {status}"));
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
                 with U = {u}",
                gradient[k]
            ));
        }
        Ok(u)
    }
}

impl From<&EpochReport> for eqf_train_epoch {
    fn from(report: &EpochReport) -> Self {
        eqf_train_epoch {
            size: size_of::<eqf_train_epoch>() as u64,
            epoch: saturating_i64(report.epoch),
            n_epochs: saturating_i64(report.n_epochs),
            n_steps: saturating_i64(report.n_steps),
            lambda: report.lambda,
            train_nll: report.train_nll,
            train_kl: report.train_kl.unwrap_or(f64::NAN),
            train_loss: report.train_loss,
            validation_nll: report.validation_nll.unwrap_or(f64::NAN),
            elapsed_seconds: report.elapsed.as_secs_f64(),
        }
    }
}

impl From<&TrainSummary> for eqf_train_summary {
    fn from(summary: &TrainSummary) -> Self {
        let last = summary.epochs.last();
        let best = summary.epochs.get(summary.best_epoch);
        eqf_train_summary {
            size: size_of::<eqf_train_summary>() as u64,
            n_epochs: saturating_i64(summary.epochs.len()),
            best_epoch: saturating_i64(summary.best_epoch),
            n_steps: i64::try_from(summary.n_steps).unwrap_or(i64::MAX),
            stopped_early: i64::from(summary.stopped_early),
            initial_validation_nll: summary.initial_validation_nll.unwrap_or(f64::NAN),
            best_validation_nll: best.and_then(|e| e.validation_nll).unwrap_or(f64::NAN),
            final_validation_nll: last.and_then(|e| e.validation_nll).unwrap_or(f64::NAN),
            final_train_nll: last.map_or(f64::NAN, |e| e.train_nll),
            wall_seconds: summary.wall_time.as_secs_f64(),
        }
    }
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Reads and checks the `size` the caller put in its summary struct: the number of bytes the
/// library may write.
///
/// # Safety
/// `summary` must be NULL or point to at least the `size` field of an `eqf_train_summary`.
unsafe fn summary_bytes(summary: *const eqf_train_summary) -> Result<Option<usize>> {
    if summary.is_null() {
        return Ok(None);
    }
    if !summary.is_aligned() {
        return Err(Error::invalid(
            "summary is not aligned for eqf_train_summary",
        ));
    }
    // SAFETY: non-NULL and aligned (checked above); the first 8 bytes are the caller's `size`
    // field (this function's contract). Only that field is read: the caller's struct may be
    // shorter than this library's.
    let size = unsafe { summary.cast::<u64>().read() };
    if size < SUMMARY_V1_SIZE as u64 {
        return Err(Error::invalid(format!(
            "summary->size = {size} is smaller than the first version of eqf_train_summary \
             ({SUMMARY_V1_SIZE} bytes); set it to sizeof(eqf_train_summary)"
        )));
    }
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    Ok(Some(size.min(size_of::<eqf_train_summary>())))
}

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
/// integrator and density mode (what sampling, densities and moves use) are kept. Afterwards
/// every call on the flow uses the new parameters; moves created from the flow before the
/// call keep their own copy of the old flow.
///
/// Deterministic: the same flow, data, options and seed give bit-identical parameters for any
/// number of threads (`eqf_set_num_threads`), and a host callback that computes the same
/// numbers as a built-in energy gives the same parameters as that energy.
///
/// Threads: the per-sample work runs in eqflow's thread pool; the loop, the progress callback
/// and a host KL energy callback run on the calling thread only. Unlike the other flow
/// functions, this one **modifies the flow**: no other thread may use the flow during the call
/// (the callbacks may read it; they see the parameters from before the call).
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
///         configurations, lambda < 1 without a KL energy, a KL energy for other particles, a
///         summary size below 80); EQF_ERR_NON_FINITE (NaN or infinite data, a KL sample with
///         infinite energy, a training step that diverged); EQF_ERR_CALLBACK (the KL energy
///         callback failed); other codes from the losses. The flow is unchanged on failure
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
        // SAFETY: `flow` is NULL (rejected) or a live handle that no other thread uses during
        // the call (this function's contract). Only shared access until the final commit, so
        // callbacks may read the flow.
        let current = unsafe { handle(flow.cast_const(), "flow") }?;
        // SAFETY: `options` is NULL (rejected) or a live handle not modified during the call
        // (this function's contract).
        let options = unsafe { handle(options, "options") }?;
        // SAFETY: `summary` is NULL or points to a struct whose first field is its size (this
        // function's contract).
        let summary_bytes = unsafe { summary_bytes(summary) }?;
        let len = current.inner.layout().len();
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
                n_particles: current.inner.n_particles(),
                dim: current.inner.dim(),
            }),
            _ => None,
        };

        let pool = threads::pool()?;
        let mut trainer = Trainer::new(config, train).in_pool(&pool);
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
        let mut trained = current.inner.clone();
        let result = trainer.run(&mut trained, progress)?;

        // SAFETY: a live handle that no other thread uses during the call (this function's
        // contract); the shared borrow `current` is no longer used. The commit cannot fail.
        let flow = unsafe { handle_mut(flow, "flow") }?;
        flow.inner = trained;
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

#[cfg(test)]
mod tests;
