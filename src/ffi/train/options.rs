//! The training options: the opaque `eqf_train_options` object, its constructor and
//! destructor, and one validating setter per setting.

use std::ffi::c_void;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::energy::Energy;
use crate::train::{LambdaSchedule, Objective, Pairing, Probe, TrainConfig};
use crate::{Error, Result};

use super::callback::{EnergyGradFn, ProgressFn, eqf_energy_grad_fn, eqf_train_progress_fn};
use crate::ffi::energy::eqf_energy;
use crate::ffi::{
    catch, check_not_null, count, free_handle, handle, update_validated, write_handle,
};

/// The target energy of the KL term, as the options hold it.
#[derive(Clone)]
pub(super) enum KlTargetEnergy {
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
/// One options object may be used for any number of `eqf_flow_train` calls and flows. Each
/// training call works on a copy of the options made when it starts, so changing them during
/// training (from a callback, or from another thread) affects only later calls. Calls on one
/// options object from several threads are serialised by a lock (none holds it for long).
#[allow(non_camel_case_types)]
pub struct eqf_train_options {
    /// Locked for a setter's update or a training call's copy, never across training, so that
    /// two threads misusing one options object neither race nor wait long.
    state: Mutex<TrainOptions>,
}

/// What an `eqf_train_options` holds; a training call works on its own copy.
#[derive(Clone)]
pub(super) struct TrainOptions {
    pub(super) config: TrainConfig,
    pub(super) progress: Option<(ProgressFn, *mut c_void)>,
    pub(super) kl_energy: Option<KlTargetEnergy>,
}

impl eqf_train_options {
    /// The settings as they are now (a training call's copy).
    pub(super) fn snapshot(&self) -> TrainOptions {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, TrainOptions> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
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
            state: Mutex::new(TrainOptions {
                config: TrainConfig::default(),
                progress: None,
                kl_energy: None,
            }),
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
/// `options` must be NULL or a live handle from `eqf_train_options_new`, not freed during the
/// call (another thread's call waits for the lock).
unsafe fn update(
    options: *mut eqf_train_options,
    change: impl FnOnce(&mut TrainConfig) -> Result<()>,
) -> i32 {
    catch(|| {
        // SAFETY: `options` is NULL (rejected) or a live handle (the caller's contract); its
        // state is reached through its lock.
        let options = unsafe { handle(options.cast_const(), "options") }?;
        update_validated(&mut options.lock().config, TrainConfig::validate, change)
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

/// Sets the step-certificate penalty: every optimiser step adds `weight * P` to the loss,
/// where P = sum over RK4 steps of max(0, c - target)^2 and c is the step's certificate bound
/// (from the field's Lipschitz and compression bounds, as `eqf_flow_certificate` reports it;
/// every RK4 step of the trained map is a bijection when c < 1), and the run keeps a certified
/// epoch over any uncertified one. Weight 0, the default (the paper's protocol), is off;
/// `eqflow train` uses weight 1 for the kernel field. Needs the kernel, coordkernel,
/// kernelcoord or dense field (`eqf_flow_train` fails with EQF_ERR_INVALID_ARGUMENT for a
/// family whose bound has no gradient).
///
/// @param options  the options (not NULL)
/// @param weight   finite and >= 0 (0: off)
/// @param target   in (0, 1), e.g. 0.9 (the default)
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (options unchanged)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_train_options_set_lipschitz_penalty(
    options: *mut eqf_train_options,
    weight: f64,
    target: f64,
) -> i32 {
    // SAFETY: forwarded contract of this function.
    unsafe {
        update(options, |c| {
            c.lipschitz_penalty = weight;
            c.lipschitz_target = target;
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

/// Objective of `eqf_train_options_set_objective`: maximum likelihood through the RK4 map,
/// mixed with reverse KL by lambda (the default).
pub const EQF_OBJECTIVE_MAXIMUM_LIKELIHOOD: i32 = 0;
/// Objective: conditional flow matching from the prior, each prior sample paired with a data
/// configuration in order. Trains without integrating; lambda must be 1.
pub const EQF_OBJECTIVE_FLOW_MATCHING: i32 = 1;
/// Objective: flow matching with equivariant optimal-transport pairs (each data configuration
/// aligned to its prior sample over permutations and rotations/reflections, the batch paired
/// by minimum cost). Lambda must be 1.
pub const EQF_OBJECTIVE_FLOW_MATCHING_OT: i32 = 2;
/// Objective: flow matching with aligned pairs: each data configuration, in the order drawn,
/// aligned to its prior sample over permutations and rotations/reflections (no batch
/// assignment: O(batch) alignments instead of O(batch²)). Lambda must be 1.
pub const EQF_OBJECTIVE_FLOW_MATCHING_ALIGNED: i32 = 3;
/// Objective: maximum likelihood of the exact-discrete density of the RK4 map of the options'
/// step count (the density the flow samples and evaluates with in its exact-discrete mode),
/// mixed with reverse KL by lambda like EQF_OBJECTIVE_MAXIMUM_LIKELIHOOD. For the families with
/// the Jacobian's reverse pass: kernel, coordkernel, kernelcoord (others:
/// EQF_ERR_INVALID_ARGUMENT from `eqf_flow_train`, the flow unchanged).
/// Costs about twice the continuous-mode likelihood per step at 20 RK4 steps; it is what
/// keeps a flow with few steps (5–10) exact-trained.
pub const EQF_OBJECTIVE_DISCRETE_LIKELIHOOD: i32 = 4;
/// Objective: maximum likelihood through the RK4 map with the divergence replaced by its
/// Hutchinson estimate, one Rademacher probe (entries ±1) per training configuration and step:
/// how the paper trained its non-equivariant baseline. Lambda must be 1. Dense field only
/// (others: EQF_ERR_INVALID_ARGUMENT from `eqf_flow_train`, the flow unchanged). Validation
/// NLLs and every density use the exact divergence.
pub const EQF_OBJECTIVE_HUTCHINSON_RADEMACHER: i32 = 5;
/// Objective: as EQF_OBJECTIVE_HUTCHINSON_RADEMACHER with Gaussian probes (larger variance).
pub const EQF_OBJECTIVE_HUTCHINSON_GAUSSIAN: i32 = 6;

/// Sets the training objective (`EQF_OBJECTIVE_*`). A flow-matching run reports NaN as its
/// epochs' `train_nll` (no likelihood is computed; the validation NLL is); fine-tune it with a
/// second, maximum-likelihood `eqf_flow_train` call.
///
/// @param options    the options (not NULL)
/// @param objective  one of the `EQF_OBJECTIVE_*` constants
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (unknown objective, or flow
///         matching or a Hutchinson objective with a lambda schedule below 1; options unchanged)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_train_options_set_objective(
    options: *mut eqf_train_options,
    objective: i32,
) -> i32 {
    // SAFETY: forwarded contract of this function.
    unsafe {
        update(options, |c| {
            c.objective = match objective {
                EQF_OBJECTIVE_MAXIMUM_LIKELIHOOD => Objective::MaximumLikelihood,
                EQF_OBJECTIVE_DISCRETE_LIKELIHOOD => Objective::DiscreteLikelihood,
                EQF_OBJECTIVE_HUTCHINSON_RADEMACHER => Objective::HutchinsonLikelihood {
                    probe: Probe::Rademacher,
                },
                EQF_OBJECTIVE_HUTCHINSON_GAUSSIAN => Objective::HutchinsonLikelihood {
                    probe: Probe::Gaussian,
                },
                EQF_OBJECTIVE_FLOW_MATCHING => Objective::FlowMatching {
                    pairing: Pairing::InOrder,
                },
                EQF_OBJECTIVE_FLOW_MATCHING_OT => Objective::FlowMatching {
                    pairing: Pairing::EquivariantOt,
                },
                EQF_OBJECTIVE_FLOW_MATCHING_ALIGNED => Objective::FlowMatching {
                    pairing: Pairing::Aligned,
                },
                other => {
                    return Err(Error::invalid(format!(
                        "unknown training objective {other} (expected an EQF_OBJECTIVE_* constant)"
                    )));
                }
            };
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
        // SAFETY: `options` is NULL (rejected) or a live handle (this function's contract);
        // its state is reached through its lock.
        let options = unsafe { handle(options.cast_const(), "options") }?;
        options.lock().progress = progress.map(|f| (f, user));
        Ok(())
    })
}

/// Sets a built-in energy (from `eqf_energy_double_well`, `eqf_energy_lennard_jones` or
/// `eqf_energy_lennard_jones_species`) as the target of the KL term, replacing a KL target set
/// before; NULL removes the target. The options keep the energy alive, so its handle may be
/// freed right after this call. Built-in energies are evaluated in eqflow's thread pool.
///
/// Its particles must be those of the flow that is trained, which `eqf_flow_train` checks
/// (EQF_ERR_INVALID_ARGUMENT otherwise): the same N and D and, for an energy with several
/// species, exactly the flow's species (`eqf_flow_options_set_species`: the same number of
/// species and the same species index for every particle). An energy of identical particles
/// (the double well, Lennard-Jones, or one species) suits any flow, one with species too: the
/// flow can learn a target that does not tell its species apart. An energy with several
/// species does not suit a flow of identical particles, which cannot tell them apart. A host
/// callback (`eqf_train_options_set_kl_energy_fn`) is checked for N and D only.
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
        // SAFETY: `options` is NULL (rejected) or a live handle (this function's contract);
        // its state is reached through its lock.
        let options = unsafe { handle(options.cast_const(), "options") }?;
        let kl_energy = if energy.is_null() {
            None
        } else {
            // SAFETY: non-NULL, so a live handle from an `eqf_energy_*` constructor (this
            // function's contract); energies are never mutated.
            let energy = unsafe { handle(energy, "energy") }?;
            Some(KlTargetEnergy::Builtin(Arc::clone(&energy.inner)))
        };
        options.lock().kl_energy = kl_energy;
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
        // SAFETY: `options` is NULL (rejected) or a live handle (this function's contract);
        // its state is reached through its lock.
        let options = unsafe { handle(options.cast_const(), "options") }?;
        options.lock().kl_energy = energy.map(|energy| KlTargetEnergy::Callback { energy, user });
        Ok(())
    })
}
