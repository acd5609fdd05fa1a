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
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::sync::PoisonError;

    use crate::energy::DoubleWell;
    use crate::ffi::energy::{eqf_energy_double_well, eqf_energy_free, eqf_energy_lennard_jones};
    use crate::ffi::flow::{eqf_flow_free, eqf_flow_new, eqf_flow_sample};
    use crate::ffi::threads::eqf_set_num_threads;
    use crate::ffi::{
        EQF_ERR_CALLBACK, EQF_ERR_INVALID_ARGUMENT, EQF_ERR_NON_FINITE, EQF_ERR_NULL_POINTER,
        EQF_OK, with_last_error,
    };
    use crate::mcmc::{McmcConfig, run};
    use crate::train::AdamWConfig;
    use crate::{Energy, Flow};

    /// DW-4 configurations from random-walk Metropolis at kT = 1, centres of mass left in place.
    fn dw4_data(n_samples: usize, seed: u64) -> Vec<f64> {
        let config = McmcConfig {
            n_chains: 4,
            n_burnin: 500,
            n_samples,
            thin: 5,
            seed,
            ..McmcConfig::default()
        };
        run(&DoubleWell::dw4(), &config).unwrap().x
    }

    /// Owned options, freed on drop.
    struct Options(*mut eqf_train_options);

    impl Options {
        fn new() -> Options {
            let mut out = std::ptr::null_mut();
            // SAFETY: a valid pointer slot.
            assert_eq!(unsafe { eqf_train_options_new(&raw mut out) }, EQF_OK);
            Options(out)
        }

        /// Small DW-4 settings: 2 epochs of batch 16, RK4 with 6 steps.
        fn small() -> Options {
            let options = Options::new();
            // SAFETY: live options.
            unsafe {
                assert_eq!(eqf_train_options_set_epochs(options.0, 2), EQF_OK);
                assert_eq!(eqf_train_options_set_batch_size(options.0, 16), EQF_OK);
                assert_eq!(eqf_train_options_set_rk4_steps(options.0, 6), EQF_OK);
                assert_eq!(eqf_train_options_set_seed(options.0, 21), EQF_OK);
            }
            options
        }

        fn config(&self) -> TrainConfig {
            // SAFETY: live options, not modified concurrently.
            unsafe { (*self.0).config }
        }
    }

    impl Drop for Options {
        fn drop(&mut self) {
            // SAFETY: created by `eqf_train_options_new`, freed once.
            assert_eq!(unsafe { eqf_train_options_free(self.0) }, EQF_OK);
        }
    }

    /// An owned DW-4 flow handle, freed on drop.
    struct FlowHandle(*mut eqf_flow);

    impl FlowHandle {
        fn new(seed: u64) -> FlowHandle {
            let mut flow = std::ptr::null_mut();
            // SAFETY: a valid pointer slot.
            assert_eq!(unsafe { eqf_flow_new(4, 2, seed, &raw mut flow) }, EQF_OK);
            FlowHandle(flow)
        }

        fn params(&self) -> Vec<f64> {
            // SAFETY: live handle, not used by other threads.
            unsafe { (*self.0).inner.field().params().to_vec() }
        }

        /// Trains with `data` (and `validation`), returning the status and the summary.
        fn train(
            &self,
            options: &Options,
            data: &[f64],
            validation: &[f64],
        ) -> (i32, eqf_train_summary) {
            let mut summary = sentinel_summary();
            // SAFETY: live handles; arrays of whole DW-4 configurations; a full summary.
            let status = unsafe {
                eqf_flow_train(
                    self.0,
                    options.0,
                    (data.len() / 8) as i64,
                    data.as_ptr(),
                    (validation.len() / 8) as i64,
                    validation.as_ptr(),
                    &raw mut summary,
                )
            };
            (status, summary)
        }
    }

    impl Drop for FlowHandle {
        fn drop(&mut self) {
            // SAFETY: created by `eqf_flow_new`, freed once.
            assert_eq!(unsafe { eqf_flow_free(self.0) }, EQF_OK);
        }
    }

    /// A summary whose size is set and whose other fields hold a recognisable sentinel.
    fn sentinel_summary() -> eqf_train_summary {
        eqf_train_summary {
            size: size_of::<eqf_train_summary>() as u64,
            n_epochs: -7,
            best_epoch: -7,
            n_steps: -7,
            stopped_early: -7,
            initial_validation_nll: -7.0,
            best_validation_nll: -7.0,
            final_validation_nll: -7.0,
            final_train_nll: -7.0,
            wall_seconds: -7.0,
        }
    }

    fn message() -> String {
        with_last_error(str::to_owned)
    }

    /// Records every progress report; stops when `stop_after` epochs are done.
    struct Progress {
        reports: Vec<eqf_train_epoch>,
        stop_after: usize,
    }

    unsafe extern "C" fn progress(user: *mut c_void, report: *const eqf_train_epoch) -> i32 {
        // SAFETY: the tests pass a live `Progress`; eqflow passes a live report.
        let (progress, report) = unsafe { (&mut *user.cast::<Progress>(), *report) };
        progress.reports.push(report);
        i32::from(progress.reports.len() >= progress.stop_after)
    }

    /// The host energy of the tests: DW-4, with a record of its calls and a failure mode.
    struct Host {
        energy: DoubleWell,
        thread: std::thread::ThreadId,
        calls: Cell<usize>,
        in_call: Cell<bool>,
        foreign_thread_or_reentrant: Cell<bool>,
        /// After this many good calls, misbehave as `failure` says.
        fail_after: usize,
        failure: Failure,
    }

    #[derive(Clone, Copy)]
    enum Failure {
        Status,
        NanEnergy,
        NanGradient,
        MissingGradient,
        InfiniteEnergy,
    }

    impl Host {
        fn new(fail_after: usize, failure: Failure) -> Host {
            Host {
                energy: DoubleWell::dw4(),
                thread: std::thread::current().id(),
                calls: Cell::new(0),
                in_call: Cell::new(false),
                foreign_thread_or_reentrant: Cell::new(false),
                fail_after,
                failure,
            }
        }

        fn user(&self) -> *mut c_void {
            std::ptr::from_ref(self).cast_mut().cast()
        }
    }

    unsafe extern "C" fn host_energy(
        user: *mut c_void,
        n_particles: i64,
        dim: i64,
        x: *const f64,
        u: *mut f64,
        gradient: *mut f64,
    ) -> i32 {
        // SAFETY: the tests pass a live `Host`. Its `Cell`s are only touched here; if eqflow
        // called from another thread the thread check below records it.
        let host = unsafe { &*user.cast::<Host>() };
        if std::thread::current().id() != host.thread || host.in_call.replace(true) {
            host.foreign_thread_or_reentrant.set(true);
        }
        let len = (n_particles * dim) as usize;
        // SAFETY: eqflow passes N*D readable and writable doubles and one writable double.
        let (x, gradient) = unsafe {
            (
                std::slice::from_raw_parts(x, len),
                std::slice::from_raw_parts_mut(gradient, len),
            )
        };
        let calls = host.calls.get();
        host.calls.set(calls + 1);
        let failing = calls >= host.fail_after;
        let mut value = if failing && matches!(host.failure, Failure::MissingGradient) {
            host.energy.energy(x)
        } else {
            host.energy.energy_gradient_into(x, gradient)
        };
        let mut status = 0;
        if failing {
            match host.failure {
                Failure::Status => status = 3,
                Failure::NanEnergy => value = f64::NAN,
                Failure::NanGradient => gradient[5] = f64::NAN,
                Failure::MissingGradient => {}
                Failure::InfiniteEnergy => value = f64::INFINITY,
            }
        }
        // SAFETY: a writable double (see above).
        unsafe { u.write(value) };
        host.in_call.set(false);
        status
    }

    /// A setter call that must fail with EQF_ERR_INVALID_ARGUMENT and a message containing
    /// `needle`.
    #[track_caller]
    fn rejected(status: i32, needle: &str) {
        assert_eq!(status, EQF_ERR_INVALID_ARGUMENT, "{needle}");
        let message = message();
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }

    #[test]
    fn options_start_at_the_paper_defaults_and_setters_validate() {
        let options = Options::new();
        assert_eq!(options.config(), TrainConfig::default());
        let o = options.0;
        let null = std::ptr::null_mut();
        // SAFETY: live options or NULL (rejected).
        unsafe {
            assert_eq!(
                eqf_train_options_new(std::ptr::null_mut()),
                EQF_ERR_NULL_POINTER
            );
            assert_eq!(eqf_train_options_free(std::ptr::null_mut()), EQF_OK);

            // Valid values are applied.
            assert_eq!(eqf_train_options_set_epochs(o, 3), EQF_OK);
            assert_eq!(eqf_train_options_set_batch_size(o, 5), EQF_OK);
            assert_eq!(eqf_train_options_set_rk4_steps(o, 7), EQF_OK);
            assert_eq!(eqf_train_options_set_learning_rate(o, 1e-3), EQF_OK);
            assert_eq!(eqf_train_options_set_weight_decay(o, 0.5), EQF_OK);
            assert_eq!(eqf_train_options_set_seed(o, u64::MAX), EQF_OK);
            assert_eq!(eqf_train_options_set_kT(o, 2.5), EQF_OK);
            assert_eq!(eqf_train_options_set_kl_samples(o, 9), EQF_OK);
            assert_eq!(eqf_train_options_set_lambda_linear(o, 1.0, 0.25), EQF_OK);
            let expected = TrainConfig {
                n_epochs: 3,
                batch_size: 5,
                n_rk4_steps: 7,
                optimizer: AdamWConfig {
                    lr: 1e-3,
                    weight_decay: 0.5,
                    ..AdamWConfig::default()
                },
                lambda: LambdaSchedule::Linear {
                    start: 1.0,
                    end: 0.25,
                },
                n_kl_samples: 9,
                kt: 2.5,
                seed: u64::MAX,
            };
            assert_eq!(options.config(), expected);
            assert_eq!(eqf_train_options_set_lambda(o, 0.0), EQF_OK);
            assert_eq!(options.config().lambda, LambdaSchedule::Constant(0.0));

            // Every rejected value names the setting and leaves the options unchanged. (The
            // status argument is evaluated right before `rejected` reads the message.)
            let before = options.config();
            rejected(
                eqf_train_options_set_epochs(o, 0),
                "n_epochs must be at least 1",
            );
            rejected(
                eqf_train_options_set_epochs(o, -2),
                "n_epochs = -2 is negative",
            );
            rejected(eqf_train_options_set_batch_size(o, 0), "batch_size");
            rejected(
                eqf_train_options_set_batch_size(o, i64::MAX),
                "EQF_MAX_ELEMENTS",
            );
            rejected(eqf_train_options_set_rk4_steps(o, 0), "n_steps");
            rejected(eqf_train_options_set_rk4_steps(o, 100_001), "1..=100000");
            rejected(eqf_train_options_set_learning_rate(o, 0.0), "lr");
            rejected(eqf_train_options_set_learning_rate(o, f64::NAN), "lr");
            rejected(eqf_train_options_set_learning_rate(o, f64::INFINITY), "lr");
            // lr · weight_decay must stay below 1 (the weight decay is 0.5 here).
            rejected(eqf_train_options_set_learning_rate(o, 2.0), "weight_decay");
            rejected(eqf_train_options_set_weight_decay(o, -1e-3), "weight_decay");
            rejected(
                eqf_train_options_set_weight_decay(o, f64::NAN),
                "weight_decay",
            );
            rejected(eqf_train_options_set_weight_decay(o, 1e4), "weight_decay");
            rejected(eqf_train_options_set_kT(o, 0.0), "kT must be positive");
            rejected(eqf_train_options_set_kT(o, -1.0), "kT must be positive");
            rejected(
                eqf_train_options_set_kT(o, f64::INFINITY),
                "kT must be positive",
            );
            rejected(eqf_train_options_set_kl_samples(o, 0), "n_kl_samples");
            rejected(eqf_train_options_set_kl_samples(o, -1), "n_kl_samples");
            rejected(
                eqf_train_options_set_lambda(o, 1.5),
                "λ must lie in [0, 1], got 1.5",
            );
            rejected(
                eqf_train_options_set_lambda(o, -0.1),
                "λ must lie in [0, 1]",
            );
            rejected(eqf_train_options_set_lambda(o, f64::NAN), "got NaN");
            rejected(
                eqf_train_options_set_lambda_linear(o, 1.0, f64::NAN),
                "got NaN",
            );
            rejected(eqf_train_options_set_lambda_linear(o, 1.2, 0.5), "got 1.2");
            assert_eq!(options.config(), before);

            // NULL options are rejected by every setter.
            for status in [
                eqf_train_options_set_epochs(null, 1),
                eqf_train_options_set_batch_size(null, 1),
                eqf_train_options_set_rk4_steps(null, 1),
                eqf_train_options_set_learning_rate(null, 1e-3),
                eqf_train_options_set_weight_decay(null, 0.0),
                eqf_train_options_set_seed(null, 1),
                eqf_train_options_set_kT(null, 1.0),
                eqf_train_options_set_kl_samples(null, 1),
                eqf_train_options_set_lambda(null, 1.0),
                eqf_train_options_set_lambda_linear(null, 1.0, 0.5),
                eqf_train_options_set_progress(null, Some(progress), null.cast()),
                eqf_train_options_set_kl_energy(null, std::ptr::null()),
                eqf_train_options_set_kl_energy_fn(null, Some(host_energy), null.cast()),
            ] {
                assert_eq!(status, EQF_ERR_NULL_POINTER);
            }
            assert!(message().contains("options"));

            // Callbacks and energies are set and removed (NULL).
            assert_eq!(
                eqf_train_options_set_progress(o, Some(progress), null.cast()),
                EQF_OK
            );
            assert!((*o).progress.is_some());
            assert_eq!(eqf_train_options_set_progress(o, None, null.cast()), EQF_OK);
            assert!((*o).progress.is_none());
            let fn_set = eqf_train_options_set_kl_energy_fn(o, Some(host_energy), null.cast());
            assert_eq!(fn_set, EQF_OK);
            assert!(matches!(
                (*o).kl_energy,
                Some(KlTargetEnergy::Callback { .. })
            ));
            assert_eq!(eqf_train_options_set_kl_energy(o, std::ptr::null()), EQF_OK);
            assert!((*o).kl_energy.is_none());
        }
    }

    #[test]
    fn ml_training_matches_the_rust_trainer_and_fills_the_summary() {
        let data = dw4_data(48, 1);
        let validation = dw4_data(16, 2);
        let options = Options::small();
        let flow = FlowHandle::new(3);
        let before = flow.params();
        let (status, summary) = flow.train(&options, &data, &validation);
        assert_eq!(status, EQF_OK, "{}", message());

        let mut reference = Flow::new(4, 2, 3).unwrap();
        let expected = Trainer::new(options.config(), &data)
            .with_validation(&validation)
            .run(&mut reference, |_| true)
            .unwrap();
        assert_eq!(flow.params(), reference.field().params());
        assert_ne!(flow.params(), before);
        assert_eq!(summary.size, size_of::<eqf_train_summary>() as u64);
        assert_eq!(summary.n_epochs, 2);
        assert_eq!(summary.n_steps, 6, "2 epochs of ceil(48/16) steps");
        assert_eq!(summary.stopped_early, 0);
        assert_eq!(summary.best_epoch, expected.best_epoch as i64);
        let best = &expected.epochs[expected.best_epoch];
        assert_eq!(summary.best_validation_nll, best.validation_nll.unwrap());
        assert_eq!(
            summary.initial_validation_nll,
            expected.initial_validation_nll.unwrap()
        );
        assert_eq!(
            summary.final_validation_nll,
            expected.epochs[1].validation_nll.unwrap()
        );
        assert_eq!(summary.final_train_nll, expected.epochs[1].train_nll);
        assert!(summary.wall_seconds > 0.0);

        // Without a validation set its NLLs are NaN and the last epoch is kept.
        let flow = FlowHandle::new(3);
        let (status, summary) = flow.train(&options, &data, &[]);
        assert_eq!(status, EQF_OK);
        assert!(summary.initial_validation_nll.is_nan());
        assert!(summary.best_validation_nll.is_nan());
        assert!(summary.final_validation_nll.is_nan());
        assert_eq!(summary.best_epoch, 1);
    }

    #[test]
    fn summary_sizes_are_honoured_in_both_directions() {
        let data = dw4_data(16, 3);
        let options = Options::small();
        // SAFETY: live options.
        unsafe { assert_eq!(eqf_train_options_set_epochs(options.0, 1), EQF_OK) };
        let flow = FlowHandle::new(4);
        let n = (data.len() / 8) as i64;

        // A caller compiled against a newer header: a larger struct. Only this library's
        // fields are written, and `size` says how many bytes.
        let mut bigger = [f64::to_bits(-7.0); 14];
        bigger[0] = 14 * 8;
        // SAFETY: live handles; `bigger` is an aligned buffer of 112 bytes whose first 8 hold
        // its size, as eqflow reads them.
        let status = unsafe {
            eqf_flow_train(
                flow.0,
                options.0,
                n,
                data.as_ptr(),
                0,
                std::ptr::null(),
                bigger.as_mut_ptr().cast(),
            )
        };
        assert_eq!(status, EQF_OK, "{}", message());
        assert_eq!(bigger[0], 80);
        assert_eq!(bigger[1], 1, "n_epochs");
        assert!(
            bigger[10..].iter().all(|&b| b == f64::to_bits(-7.0)),
            "overrun"
        );

        // Too small a size is rejected before any work: flow and struct unchanged.
        let before = flow.params();
        let mut small = sentinel_summary();
        small.size = 72;
        // SAFETY: as above, with a full summary.
        let status = unsafe {
            eqf_flow_train(
                flow.0,
                options.0,
                n,
                data.as_ptr(),
                0,
                std::ptr::null(),
                &raw mut small,
            )
        };
        assert_eq!(status, EQF_ERR_INVALID_ARGUMENT);
        assert!(
            message().contains("sizeof(eqf_train_summary)"),
            "{}",
            message()
        );
        assert_eq!(small.n_epochs, -7);
        assert_eq!(flow.params(), before);

        // NULL: no summary wanted.
        // SAFETY: live handles and data.
        let status = unsafe {
            eqf_flow_train(
                flow.0,
                options.0,
                n,
                data.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null_mut(),
            )
        };
        assert_eq!(status, EQF_OK);
        assert_ne!(flow.params(), before);
        assert_eq!(SUMMARY_V1_SIZE, size_of::<eqf_train_summary>());
        assert_eq!(size_of::<eqf_train_epoch>(), 80);
    }

    #[test]
    fn progress_reports_every_epoch_and_can_stop_early() {
        let data = dw4_data(32, 4);
        let validation = dw4_data(8, 5);
        let options = Options::small();
        let mut record = Progress {
            reports: Vec::new(),
            stop_after: usize::MAX,
        };
        // SAFETY: live options; `record` outlives the training calls below.
        unsafe {
            assert_eq!(eqf_train_options_set_epochs(options.0, 3), EQF_OK);
            let user = (&raw mut record).cast();
            assert_eq!(
                eqf_train_options_set_progress(options.0, Some(progress), user),
                EQF_OK
            );
        }
        let flow = FlowHandle::new(5);
        let (status, summary) = flow.train(&options, &data, &validation);
        assert_eq!(status, EQF_OK);
        assert_eq!(summary.stopped_early, 0);
        assert_eq!(record.reports.len(), 3);
        for (e, report) in record.reports.iter().enumerate() {
            assert_eq!(report.size, size_of::<eqf_train_epoch>() as u64);
            assert_eq!(
                (report.epoch, report.n_epochs, report.n_steps),
                (e as i64, 3, 2)
            );
            assert_eq!(report.lambda, 1.0);
            assert!(report.train_kl.is_nan(), "no KL term with λ = 1");
            assert_eq!(report.train_loss, report.train_nll);
            assert!(report.validation_nll.is_finite());
            assert!(report.elapsed_seconds >= 0.0);
        }
        assert_eq!(
            summary.final_validation_nll,
            record.reports[2].validation_nll
        );

        // Non-zero from the callback stops after that epoch: a success, not an error.
        record.reports.clear();
        record.stop_after = 2;
        let flow = FlowHandle::new(5);
        let (status, summary) = flow.train(&options, &data, &validation);
        assert_eq!(status, EQF_OK);
        assert_eq!(record.reports.len(), 2);
        assert_eq!(
            (summary.stopped_early, summary.n_epochs, summary.n_steps),
            (1, 2, 4)
        );
    }

    /// Options for a short ML+KL run on DW-4.
    fn ml_kl_options() -> Options {
        let options = Options::small();
        // SAFETY: live options.
        unsafe {
            assert_eq!(
                eqf_train_options_set_lambda_linear(options.0, 0.9, 0.5),
                EQF_OK
            );
            assert_eq!(eqf_train_options_set_kl_samples(options.0, 8), EQF_OK);
        }
        options
    }

    #[test]
    fn kl_callback_runs_on_the_calling_thread_and_matches_the_builtin_energy_bit_for_bit() {
        let data = dw4_data(32, 6);
        let validation = dw4_data(8, 7);
        let options = ml_kl_options();
        // λ < 1 without a KL energy is refused, naming the setters.
        let flow = FlowHandle::new(8);
        let (status, _) = flow.train(&options, &data, &validation);
        assert_eq!(status, EQF_ERR_INVALID_ARGUMENT);
        assert!(
            message().contains("eqf_train_options_set_kl_energy"),
            "{}",
            message()
        );

        // The built-in energy, its handle freed at once (the options keep it alive).
        let mut energy = std::ptr::null_mut();
        // SAFETY: valid pointer slot; live options; the energy handle is freed once.
        unsafe {
            let status = eqf_energy_double_well(4, 2, 0.0, -4.0, 0.9, 4.0, &raw mut energy);
            assert_eq!(status, EQF_OK);
            assert_eq!(eqf_train_options_set_kl_energy(options.0, energy), EQF_OK);
            assert_eq!(eqf_energy_free(energy), EQF_OK);
        }
        let builtin = FlowHandle::new(8);
        let (status, builtin_summary) = builtin.train(&options, &data, &validation);
        assert_eq!(status, EQF_OK, "{}", message());

        // The same numbers from a host callback.
        let host = Host::new(usize::MAX, Failure::Status);
        // SAFETY: live options; `host` outlives the training call.
        let status = unsafe {
            eqf_train_options_set_kl_energy_fn(options.0, Some(host_energy), host.user())
        };
        assert_eq!(status, EQF_OK);
        let callback = FlowHandle::new(8);
        let (status, callback_summary) = callback.train(&options, &data, &validation);
        assert_eq!(status, EQF_OK, "{}", message());
        assert_eq!(callback.params(), builtin.params());
        assert_eq!(
            callback_summary.final_train_nll.to_bits(),
            builtin_summary.final_train_nll.to_bits()
        );
        assert_eq!(
            host.calls.get(),
            4 * 8,
            "one call per KL sample of 2 epochs of 2 steps"
        );
        assert!(
            !host.foreign_thread_or_reentrant.get(),
            "the callback ran on another thread or concurrently"
        );

        // And both are the Rust trainer's result with the Rust energy.
        let mut reference = Flow::new(4, 2, 8).unwrap();
        Trainer::new(options.config(), &data)
            .with_validation(&validation)
            .with_energy(&DoubleWell::dw4())
            .run(&mut reference, |_| true)
            .unwrap();
        assert_eq!(callback.params(), reference.field().params());
    }

    #[test]
    fn callback_failures_stop_training_and_leave_the_flow_and_summary_unchanged() {
        let data = dw4_data(32, 8);
        let options = ml_kl_options();
        let cases = [
            (Failure::Status, EQF_ERR_CALLBACK, "callback returned 3"),
            (Failure::NanEnergy, EQF_ERR_CALLBACK, "U = NaN"),
            (Failure::NanGradient, EQF_ERR_CALLBACK, "component 5 is NaN"),
            (
                Failure::MissingGradient,
                EQF_ERR_CALLBACK,
                "non-finite gradient",
            ),
            (Failure::InfiniteEnergy, EQF_ERR_NON_FINITE, "U(F(z)) = inf"),
        ];
        for (failure, expected, needle) in cases {
            // Fail in the second step, on its third sample (index 8 + 2 = 10).
            let host = Host::new(10, failure);
            // SAFETY: live options; `host` outlives the training call.
            unsafe {
                let user = host.user();
                let status = eqf_train_options_set_kl_energy_fn(options.0, Some(host_energy), user);
                assert_eq!(status, EQF_OK);
            }
            let flow = FlowHandle::new(9);
            let before = flow.params();
            let (status, summary) = flow.train(&options, &data, &[]);
            assert_eq!(status, expected, "{}", message());
            let message = message();
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
            assert!(message.contains("index 10"), "{message}");
            assert_eq!(host.calls.get(), 11, "no call after the failing sample");
            assert_eq!(flow.params(), before);
            assert_eq!(summary, sentinel_summary());
        }
    }

    #[test]
    fn bad_arguments_are_rejected_before_training() {
        let data = dw4_data(16, 9);
        let options = Options::small();
        let flow = FlowHandle::new(10);
        let before = flow.params();
        let n = (data.len() / 8) as i64;
        let x = data.as_ptr();
        let null = std::ptr::null::<f64>();
        let no_summary = std::ptr::null_mut();
        // SAFETY: live handles and arrays, or NULLs (rejected); counts never exceed the data.
        unsafe {
            let train = |flow: *mut eqf_flow,
                         options: *const eqf_train_options,
                         n_train: i64,
                         x_train: *const f64,
                         n_val: i64,
                         x_val: *const f64| {
                eqf_flow_train(flow, options, n_train, x_train, n_val, x_val, no_summary)
            };
            let null_flow = std::ptr::null_mut();
            let status = train(null_flow, options.0.cast_const(), n, x, 0, null);
            assert_eq!(status, EQF_ERR_NULL_POINTER);
            assert!(message().contains("flow"));
            let status = train(flow.0, std::ptr::null(), n, x, 0, null);
            assert_eq!(status, EQF_ERR_NULL_POINTER);
            assert!(message().contains("options"));
            let status = train(flow.0, options.0, n, null, 0, null);
            assert_eq!(status, EQF_ERR_NULL_POINTER);
            assert!(message().contains("x_train"));
            let status = train(flow.0, options.0, n, x, 2, null);
            assert_eq!(status, EQF_ERR_NULL_POINTER);
            assert!(message().contains("x_validation"));
            assert_eq!(
                train(flow.0, options.0, 0, x, 0, null),
                EQF_ERR_INVALID_ARGUMENT
            );
            assert!(message().contains("n_train = 0"));
            assert_eq!(
                train(flow.0, options.0, -1, x, 0, null),
                EQF_ERR_INVALID_ARGUMENT
            );
            assert_eq!(
                train(flow.0, options.0, n, x, -1, null),
                EQF_ERR_INVALID_ARGUMENT
            );
            let status = train(flow.0, options.0, i64::MAX, x, 0, null);
            assert_eq!(status, EQF_ERR_INVALID_ARGUMENT);
            let mut bad = data.clone();
            bad[13] = f64::NAN;
            let status = train(flow.0, options.0, n, bad.as_ptr(), 0, null);
            assert_eq!(status, EQF_ERR_NON_FINITE);
            let status = train(flow.0, options.0, n, x, 1, bad[8..].as_ptr());
            assert_eq!(status, EQF_ERR_NON_FINITE);
            assert!(message().contains("validation"), "{}", message());

            // A KL energy for other particles.
            let mut lj = std::ptr::null_mut();
            assert_eq!(
                eqf_energy_lennard_jones(13, 3, 2.0, 1.0, 1.0, &raw mut lj),
                EQF_OK
            );
            assert_eq!(eqf_train_options_set_kl_energy(options.0, lj), EQF_OK);
            assert_eq!(eqf_energy_free(lj), EQF_OK);
            assert_eq!(eqf_train_options_set_lambda(options.0, 0.5), EQF_OK);
            assert_eq!(
                train(flow.0, options.0, n, x, 0, null),
                EQF_ERR_INVALID_ARGUMENT
            );
            assert!(message().contains("13 particles"), "{}", message());

            // A misaligned summary.
            let mut buffer = [0_u64; 12];
            let misaligned = buffer.as_mut_ptr().cast::<u8>().wrapping_add(4).cast();
            let status = eqf_flow_train(flow.0, options.0, n, x, 0, null, misaligned);
            assert_eq!(status, EQF_ERR_INVALID_ARGUMENT);
        }
        assert_eq!(flow.params(), before);
    }

    #[test]
    fn training_is_bit_identical_for_one_and_two_threads() {
        // The pool size is process-wide: hold the lock the thread-count tests share.
        let _guard = crate::ffi::log::tests::INSTALLS
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let data = dw4_data(32, 10);
        let validation = dw4_data(8, 11);
        let options = ml_kl_options();
        let host = Host::new(usize::MAX, Failure::Status);
        // SAFETY: live options; `host` outlives the training calls.
        unsafe {
            let user = host.user();
            let status = eqf_train_options_set_kl_energy_fn(options.0, Some(host_energy), user);
            assert_eq!(status, EQF_OK);
        }
        let mut results = Vec::new();
        for threads in [1, 2] {
            assert_eq!(eqf_set_num_threads(threads), EQF_OK);
            let flow = FlowHandle::new(11);
            let (status, summary) = flow.train(&options, &data, &validation);
            assert_eq!(status, EQF_OK, "{}", message());
            results.push((flow.params(), summary.best_validation_nll.to_bits()));
        }
        assert_eq!(eqf_set_num_threads(0), EQF_OK);
        assert_eq!(results[0], results[1]);
        assert!(!host.foreign_thread_or_reentrant.get());
    }

    #[test]
    fn sampling_after_training_uses_the_new_parameters() {
        let data = dw4_data(32, 12);
        let options = Options::small();
        let flow = FlowHandle::new(13);
        let sample = |flow: &FlowHandle| {
            let (mut x, mut log_q) = (vec![0.0; 5 * 8], vec![0.0; 5]);
            // SAFETY: live handle; buffers of 5 configurations and 5 doubles.
            let status =
                unsafe { eqf_flow_sample(flow.0, 4, 5, x.as_mut_ptr(), log_q.as_mut_ptr()) };
            assert_eq!(status, EQF_OK);
            (x, log_q)
        };
        // Sampling first builds the flow's radial tables for the untrained parameters.
        let untrained = sample(&flow);
        let (status, _) = flow.train(&options, &data, &[]);
        assert_eq!(status, EQF_OK);
        let trained = sample(&flow);
        assert_ne!(trained, untrained);
        let mut reference = Flow::new(4, 2, 13).unwrap();
        reference.set_params(&flow.params()).unwrap();
        assert_eq!(trained, reference.sample(4, 5).unwrap());
    }
}
