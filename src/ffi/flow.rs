//! Normalizing flows behind an opaque `eqf_flow` handle.

use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use crate::flow::Flow;

use super::{
    Region, array_len, catch, catch_value, check_disjoint, check_not_null, check_output, count,
    free_handle, handle, input_array, scratch, threads, write_handle, write_output,
};

/// An equivariant normalizing flow over configurations of N particles in D dimensions (opaque).
///
/// Created by `eqf_flow_new`, owned by the caller and released with `eqf_flow_free`. One
/// handle may be shared by any number of threads, which may sample and evaluate densities
/// concurrently without locking on their side. The one call that changes a flow is
/// `eqf_flow_train`: other threads may go on using the flow while it trains; they see the old
/// flow until the call commits the trained one, an instant swap that no call sees half done.
/// Never free a flow that another thread may be using.
#[allow(non_camel_case_types)]
pub struct eqf_flow {
    /// Written only by `eqf_flow_train`'s final swap (no allocation or callback under the
    /// lock), so readers wait at most for that swap and never for training.
    inner: RwLock<Flow>,
    /// Set while `eqf_flow_train` runs on this flow: a second run (from a callback of the
    /// first, or on another thread) is refused instead of one run's commit silently replacing
    /// the other's.
    training: std::sync::atomic::AtomicBool,
}

impl eqf_flow {
    pub(crate) fn from_flow(inner: Flow) -> Self {
        eqf_flow {
            inner: RwLock::new(inner),
            training: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Marks the flow as training until the returned guard is dropped.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidState`] if a training run of this flow is in progress.
    pub(crate) fn begin_training(&self) -> crate::Result<TrainingRun<'_>> {
        use std::sync::atomic::Ordering;
        if self
            .training
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(crate::Error::InvalidState {
                what: "eqf_flow_train is already training this flow (called from a callback of \
                       that run, or on another thread); nothing was done"
                    .to_owned(),
            });
        }
        Ok(TrainingRun(&self.training))
    }

    /// Whether a call is using this flow: training it, or reading it (on another thread, or
    /// the call whose callback asks). `eqf_flow_free` refuses such a flow.
    fn in_use(&self) -> bool {
        self.training.load(std::sync::atomic::Ordering::Acquire)
            || matches!(
                self.inner.try_write(),
                Err(std::sync::TryLockError::WouldBlock)
            )
    }

    /// The flow, for the duration of a call. A panic while the lock was held (caught and
    /// reported as an internal error) cannot have left a half-written flow: the only writer
    /// is [`eqf_flow::replace`], a move.
    pub(crate) fn flow(&self) -> FlowRead<'_> {
        let _ = READING.try_with(|n| n.set(n.get() + 1));
        let _ = CALL_READ_A_FLOW.try_with(|read| read.set(true));
        FlowRead(self.inner.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the flow (a trained one), waiting for calls on other threads that read it.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidState`] if this thread is inside a call that reads a flow (a
    /// callback of that call training a flow): waiting for it would never end.
    pub(crate) fn replace(&self, flow: Flow) -> crate::Result<()> {
        check_not_reading()?;
        let old = std::mem::replace(
            &mut *self.inner.write().unwrap_or_else(PoisonError::into_inner),
            flow,
        );
        // The old flow is freed after the lock is released.
        drop(old);
        Ok(())
    }
}

thread_local! {
    /// Flow read locks held by this thread (calls in progress that read a flow), and log
    /// messages of such calls being delivered (see [`LogOfAFlowCall`]).
    static READING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Whether the innermost eqflow call on this thread has read a flow (see [`CallFrame`]).
    static CALL_READ_A_FLOW: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// One exported call on this thread, from its start until its failure, if any, has been
/// reported (held by `catch`). It records whether the call read a flow, so that every log
/// message of such a call, the failure report included, counts as sent from inside a call
/// that reads a flow. The failure report goes out after the call's own flow guard is gone: a
/// log callback training the flow from there would change it while the call has not returned,
/// which `eqf_flow_train` documents as refused. Calls made from the call's host callbacks have
/// frames of their own, and the enclosing call's record is restored when they end.
pub(crate) struct CallFrame {
    enclosing: bool,
}

impl CallFrame {
    pub(crate) fn enter() -> CallFrame {
        let enclosing = CALL_READ_A_FLOW
            .try_with(|read| read.replace(false))
            .unwrap_or(false);
        CallFrame { enclosing }
    }
}

impl Drop for CallFrame {
    fn drop(&mut self) {
        let _ = CALL_READ_A_FLOW.try_with(|read| read.set(self.enclosing));
    }
}

/// Held while a log message is delivered: if the call that sends it read a flow, this thread
/// counts as reading one, so that `eqf_flow_train` from the log callback is refused.
pub(crate) struct LogOfAFlowCall(bool);

impl LogOfAFlowCall {
    pub(crate) fn enter() -> LogOfAFlowCall {
        let read = CALL_READ_A_FLOW
            .try_with(std::cell::Cell::get)
            .unwrap_or(false);
        if read {
            let _ = READING.try_with(|n| n.set(n.get() + 1));
        }
        LogOfAFlowCall(read)
    }
}

impl Drop for LogOfAFlowCall {
    fn drop(&mut self) {
        if self.0 {
            let _ = READING.try_with(|n| n.set(n.get().saturating_sub(1)));
        }
    }
}

/// Fails if this thread holds a flow's read lock: a commit from there could wait for itself.
pub(crate) fn check_not_reading() -> crate::Result<()> {
    if READING.try_with(std::cell::Cell::get).unwrap_or(0) > 0 {
        return Err(crate::Error::InvalidState {
            what: "eqf_flow_train was called from a callback inside another eqflow call that \
                   reads a flow on this thread; nothing was done"
                .to_owned(),
        });
    }
    Ok(())
}

/// A training run of one flow in progress (see [`eqf_flow::begin_training`]).
pub(crate) struct TrainingRun<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for TrainingRun<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// A flow read for one call (counted per thread for [`check_not_reading`]).
pub(crate) struct FlowRead<'a>(RwLockReadGuard<'a, Flow>);

impl std::ops::Deref for FlowRead<'_> {
    type Target = Flow;
    fn deref(&self) -> &Flow {
        &self.0
    }
}

impl Drop for FlowRead<'_> {
    fn drop(&mut self) {
        let _ = READING.try_with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Creates an untrained flow for `n_particles` particles in `dim` dimensions.
///
/// The flow uses the default kernel settings of the double-well benchmarks (50 distance RBFs
/// with centres in [0, 8], 10 time RBFs) with weights drawn from N(0, 1/K) using `seed`; it is
/// integrated with 20 fixed RK4 steps and reports the exact density of that discrete map.
/// Same arguments, same flow.
///
/// The flow is in strict mode (`eqf_flow_with_require_certificate`) and certified at its 20
/// steps: where the drawn weights are not (from N = 4 on, more often with more particles), the
/// field's output weights are scaled down by the largest factor 2^(-k/8) that certifies it,
/// so the new flow samples at once. This costs one certificate evaluation (a few
/// milliseconds) per trial factor: 7 ms at N = 4, 53 ms at N = 13, 0.17 s at N = 55, 0.28 s
/// at N = 1000 (BENCHMARKS.md, session 24).
///
/// @param n_particles  N, number of particles (2 to EQF_MAX_PARTICLES)
/// @param dim          D, spatial dimension (1, 2 or 3)
/// @param seed         seed of the random initial weights
/// @param out          on success receives the new flow, to be released with `eqf_flow_free`;
///                     untouched on failure
/// @return EQF_OK; EQF_ERR_NULL_POINTER (out is NULL); EQF_ERR_INVALID_ARGUMENT (n_particles
///         or dim out of range)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_new(
    n_particles: i64,
    dim: i64,
    seed: u64,
    out: *mut *mut eqf_flow,
) -> i32 {
    catch(|| {
        check_not_null(out, "out")?;
        let n_particles = count(n_particles, "n_particles")?;
        let dim = count(dim, "dim")?;
        let inner = Flow::new(n_particles, dim, seed)?;
        // SAFETY: `out` is non-NULL (checked above) and valid for one write (this function's
        // contract); it is written only now that the flow was built successfully.
        unsafe { write_handle(out, eqf_flow::from_flow(inner)) };
        Ok(())
    })
}

/// Releases a flow created by `eqf_flow_new`.
///
/// NULL is accepted and does nothing. The handle must not be used afterwards (by any thread),
/// nor freed twice. A flow that a call is using at this moment (`eqf_flow_train` running on
/// it, or any call reading it on another thread, or the call whose callback this is) is not
/// freed: that would pull it from under the call. Free it once the call has returned. (A call
/// that *starts* on another thread after the free cannot be detected: the host must order
/// them.) The log callback reporting a call's failure runs once that call has let go of the
/// flow, so a flow may be freed from there.
///
/// @return EQF_OK; EQF_ERR_INVALID_STATE (a call is using the flow; nothing was freed)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_free(flow: *mut eqf_flow) -> i32 {
    // SAFETY: `flow` is NULL or a handle from `eqf_flow_new` not freed yet (this function's
    // contract), so it can be read through a shared reference.
    if let Some(live) = unsafe { flow.as_ref() }
        && live.in_use()
    {
        return catch(|| {
            Err(crate::Error::InvalidState {
                what: "the flow is in use by a call (eqf_flow_train on it, a call on another \
                       thread, or the call whose callback this is); it was not freed: free it \
                       once that call has returned"
                    .to_owned(),
            })
        });
    }
    // SAFETY: as above; no call is using the flow.
    unsafe { free_handle(flow) }
}

/// The number of particles N of a flow, or -1 if `flow` is NULL (the message is then recorded
/// for `eqf_last_error_message`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_n_particles(flow: *const eqf_flow) -> i64 {
    catch_value(-1, || {
        // SAFETY: `flow` is NULL (rejected) or a live handle from `eqf_flow_new` (this
        // function's contract).
        let flow = unsafe { handle(flow, "flow") }?;
        Ok(i64::try_from(flow.flow().n_particles()).unwrap_or(i64::MAX))
    })
}

/// The particle species of a flow (`eqf_flow_options_set_species`, or the "species" of a
/// model file): writes the species index of each particle into `species` and the number of
/// species into `n_species`. A flow of identical particles has one species, every index 0.
/// Either output may be NULL to skip it.
///
/// @param flow         the flow (not NULL)
/// @param species      output or NULL: n_particles indices
/// @param n_particles  the length of `species`; must equal the flow's N when `species` is
///                     not NULL
/// @param n_species    output or NULL: the number of species S (pair types: S (S + 1) / 2)
/// @return EQF_OK; EQF_ERR_NULL_POINTER (flow is NULL); EQF_ERR_DIMENSION_MISMATCH (n_particles
///         is not the flow's N); EQF_ERR_INVALID_ARGUMENT (n_particles negative, `species`
///         not aligned, or the two outputs share memory). Nothing is written on failure.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_species(
    flow: *const eqf_flow,
    species: *mut u32,
    n_particles: i64,
    n_species: *mut i64,
) -> i32 {
    catch(|| {
        // SAFETY: `flow` is NULL (rejected) or a live handle from `eqf_flow_new` (this
        // function's contract).
        let flow = unsafe { handle(flow, "flow") }?.flow();
        let n = flow.n_particles();
        let field_species = flow.field().species();
        // Checked with or without `species`, as documented.
        let len = count(n_particles, "n_particles")?;
        if !species.is_null() {
            if len != n {
                return Err(crate::Error::size("species (one per particle)", n, len));
            }
            check_disjoint(&[
                Region::of(species, n, "species"),
                Region::of(n_species, 1, "n_species"),
            ])?;
            if !species.is_aligned() {
                return Err(crate::Error::invalid("species is not aligned for uint32_t"));
            }
            // SAFETY: non-NULL and aligned (checked above), and valid for N writes (this
            // function's contract, N checked above).
            let out = unsafe { std::slice::from_raw_parts_mut(species, n) };
            match field_species {
                Some(s) => out.copy_from_slice(s.of_particle()),
                None => out.fill(0),
            }
        }
        if !n_species.is_null() {
            let s = field_species.map_or(1, crate::Species::n_species);
            // SAFETY: non-NULL, so valid for one write (this function's contract).
            unsafe { n_species.write(s as i64) };
        }
        Ok(())
    })
}

/// The spatial dimension D of a flow, or -1 if `flow` is NULL (the message is then recorded for
/// `eqf_last_error_message`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_dim(flow: *const eqf_flow) -> i64 {
    catch_value(-1, || {
        // SAFETY: `flow` is NULL (rejected) or a live handle from `eqf_flow_new` (this
        // function's contract).
        let flow = unsafe { handle(flow, "flow") }?;
        Ok(i64::try_from(flow.flow().dim()).unwrap_or(i64::MAX))
    })
}

/// Whether every step of the flow's fixed-grid RK4 map is certified to be a bijection, so
/// that the exact-discrete density is the density of what the flow proposes (one preimage per
/// configuration). From the field's global Lipschitz bound and its compression bound (how fast
/// the field can bring two configurations together), the certificate bounds how strongly each
/// step's increment can pull two configurations together (see docs/embedding.md, "Step
/// certificate"); it is certified when that bound is below 1 for every step, which makes each
/// step strongly monotone and so one-to-one and onto.
///
/// @param flow            the flow (not NULL)
/// @param certified       output: 1 if certified, 0 if not (also 0 for an adaptive method)
/// @param max_contraction output: the worst step's bound (certified when < 1);
///                        +infinity for an adaptive method
/// @param n_steps_needed  output or NULL: the smallest RK4 step count the field certifies, or
///                        -1 if none up to 16 times the flow's own count or 4,096, whichever
///                        is larger (at most EQF_MAX_RK4_STEPS; this search costs more: pass
///                        NULL if you only need the verdict)
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (two outputs share memory)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_certificate(
    flow: *const eqf_flow,
    certified: *mut i32,
    max_contraction: *mut f64,
    n_steps_needed: *mut i64,
) -> i32 {
    catch(|| {
        // SAFETY: `flow` is NULL (rejected) or a live handle from `eqf_flow_new` (this
        // function's contract).
        let flow = unsafe { handle(flow, "flow") }?.flow();
        check_not_null(certified, "certified")?;
        check_not_null(max_contraction, "max_contraction")?;
        check_disjoint(&[
            Region::of(certified, 1, "certified"),
            Region::of(max_contraction, 1, "max_contraction"),
            Region::of(n_steps_needed, 1, "n_steps_needed"),
        ])?;
        let cert = flow.certificate();
        let needed = (!n_steps_needed.is_null()).then(|| {
            flow.certified_step_count()
                .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX))
        });
        // SAFETY: `certified` and `max_contraction` are non-NULL (checked above) and valid for
        // one write each; `n_steps_needed` is written only when non-NULL (this function's
        // contract).
        unsafe {
            certified.write(i32::from(cert.is_some_and(|c| c.is_certified())));
            max_contraction.write(cert.map_or(f64::INFINITY, |c| c.max_contraction));
            if let Some(needed) = needed {
                n_steps_needed.write(needed);
            }
        }
        Ok(())
    })
}

/// Creates a copy of `flow` (same parameters and integrator) with strict mode on or off.
///
/// In strict mode, sampling, density evaluation and moves of a flow in the exact-discrete
/// density mode fail with EQF_ERR_UNCERTIFIED, before writing anything, unless the flow's step
/// certificate (`eqf_flow_certificate`) proves every RK4 step a bijection; the message names the
/// step count that would be certified (use it with `eqf_flow_with_integrator`). Strict mode
/// has no effect in the continuous density mode. It is saved by `eqf_flow_save`. **On by
/// default** for every flow (new, loaded or trained); `require = 0` is the explicit opt-out,
/// for a host that accepts densities through a map not proved one-to-one.
///
/// Flows are immutable and shared between threads, so the setting is not changed in place:
/// the new flow is independent of the old one (either may be freed first).
///
/// @param flow     the flow to copy (not NULL)
/// @param require  1: strict mode on, 0: off
/// @param out      on success receives the new flow, to be released with `eqf_flow_free`;
///                 untouched on failure
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (require neither 0 nor 1)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_with_require_certificate(
    flow: *const eqf_flow,
    require: i32,
    out: *mut *mut eqf_flow,
) -> i32 {
    catch(|| {
        // SAFETY: `flow` is NULL (rejected) or a live handle from `eqf_flow_new` (this
        // function's contract); flows are never mutated.
        let flow = unsafe { handle(flow, "flow") }?;
        check_not_null(out, "out")?;
        let require = match require {
            0 => false,
            1 => true,
            other => {
                return Err(crate::Error::InvalidArgument {
                    what: format!("require = {other}: expected 0 or 1"),
                });
            }
        };
        let mut inner = flow.flow().clone();
        inner.set_require_certificate(require);
        // SAFETY: `out` is non-NULL (checked above) and valid for one write (this function's
        // contract); it is written only now that the new flow exists.
        unsafe { write_handle(out, eqf_flow::from_flow(inner)) };
        Ok(())
    })
}

/// Whether a flow is in strict mode (see `eqf_flow_with_require_certificate`).
///
/// @param flow     the flow (not NULL)
/// @param require  output: 1 if strict mode is on, 0 if not
/// @return EQF_OK; EQF_ERR_NULL_POINTER
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_require_certificate(
    flow: *const eqf_flow,
    require: *mut i32,
) -> i32 {
    catch(|| {
        // SAFETY: `flow` is NULL (rejected) or a live handle from `eqf_flow_new` (this
        // function's contract).
        let flow = unsafe { handle(flow, "flow") }?;
        check_not_null(require, "require")?;
        // SAFETY: `require` is non-NULL (checked above) and valid for one write (this
        // function's contract).
        unsafe { require.write(i32::from(flow.flow().requires_certificate())) };
        Ok(())
    })
}

/// Draws `n` independent samples from the flow, with their exact log-densities.
///
/// Layout: `x` receives n configurations of N particles in D dimensions, particle-major and
/// contiguous: coordinate k of particle i of sample s is `x[(s*N + i)*D + k]` (C
/// `double x[n][N][D]`, Fortran `x(D, N, n)`). Samples have their centre of mass at the
/// origin. `log_q[s]` is the natural log of the flow's density at sample s, with respect to
/// Lebesgue measure on the centre-of-mass-free subspace, normalising constant included. In
/// the exact-discrete density mode (the default) it equals what `eqf_flow_log_density`
/// returns for the same configuration to round-off. In the continuous mode both numbers
/// approximate the ODE's density, integrated forward here and backward there, and agree only
/// to the integrator's accuracy (measured on DW-4 and LJ-13: up to ~2 at RK4 with 5 steps,
/// 2e-3 at 20 steps and at Dormand–Prince rtol 1e-5; with Dormand–Prince, rotated copies of a
/// configuration also differ at that level, since its step control is not rotation
/// invariant): use the exact-discrete mode wherever the two must match.
///
/// Deterministic: the same flow, seed and n give bit-identical output whatever the number of
/// threads. Sample s depends only on (seed, s), so a larger n extends a smaller one.
///
/// The arrays are owned by the caller; nothing is written unless the call succeeds. With
/// `n == 0` nothing is written and the arrays may be NULL. Thread-safe.
///
/// @param flow   the flow (not NULL)
/// @param seed   seed of the random stream
/// @param n      number of samples (>= 0)
/// @param x      output, n*N*D doubles
/// @param log_q  output, n doubles
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (n negative or too large, or
///         x and log_q share memory); EQF_ERR_NOT_INVERTIBLE or EQF_ERR_NON_FINITE if the flow
///         cannot produce a valid sample (a badly trained flow); EQF_ERR_RESOURCE if the
///         exact-discrete workspace would exceed EQF_MAX_WORKSPACE_BYTES (N·D above 10,362),
///         the temporaries for the n samples need more than 1 TiB, or memory is refused;
///         EQF_ERR_UNCERTIFIED (strict mode, see `eqf_flow_with_require_certificate`)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_sample(
    flow: *const eqf_flow,
    seed: u64,
    n: i64,
    x: *mut f64,
    log_q: *mut f64,
) -> i32 {
    catch(|| {
        // SAFETY: `flow` is NULL (rejected) or a live handle from `eqf_flow_new` (this
        // function's contract); flows are never mutated.
        let flow = unsafe { handle(flow, "flow") }?.flow();
        let n = count(n, "n")?;
        let len = array_len(n, flow.n_particles().saturating_mul(flow.dim()), "x")?;
        check_output(x, len, "x")?;
        check_output(log_q, n, "log_q")?;
        let mut samples = scratch(len, "x")?;
        let mut log_densities = scratch(n, "log_q")?;
        check_disjoint(&[Region::of(x, len, "x"), Region::of(log_q, n, "log_q")])?;
        threads::install(|| flow.sample_into(seed, &mut samples, &mut log_densities))?;
        // SAFETY: both outputs were checked (non-NULL, aligned) for n*N*D and n doubles and are
        // writable for that many (this function's contract).
        unsafe {
            write_output(x, &samples);
            write_output(log_q, &log_densities);
        }
        Ok(())
    })
}

/// Evaluates the flow's exact log-density at `n` configurations.
///
/// Layout of `x` as in `eqf_flow_sample`: `x[(s*N + i)*D + k]`, C `double x[n][N][D]`. The
/// configurations may have any centre of mass: the density is that of the centre-of-mass-free
/// part (the flow is translation invariant), so translating a sample does not change its
/// log-density.
///
/// The arrays are owned by the caller; `log_q` is written only if the call succeeds. With
/// `n == 0` nothing is read or written and the arrays may be NULL. Thread-safe.
///
/// @param flow   the flow (not NULL)
/// @param n      number of configurations (>= 0)
/// @param x      input, n*N*D doubles, finite
/// @param log_q  output, n doubles
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (n negative or too large);
///         EQF_ERR_NON_FINITE (x contains NaN or infinity); EQF_ERR_NOT_CONVERGED or
///         EQF_ERR_NOT_INVERTIBLE if the inverse map cannot be computed at some configuration;
///         EQF_ERR_RESOURCE if the exact-discrete workspace would exceed
///         EQF_MAX_WORKSPACE_BYTES (N·D above 10,362) or memory is refused;
///         EQF_ERR_UNCERTIFIED (strict mode, see `eqf_flow_with_require_certificate`)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_log_density(
    flow: *const eqf_flow,
    n: i64,
    x: *const f64,
    log_q: *mut f64,
) -> i32 {
    catch(|| {
        // SAFETY: `flow` is NULL (rejected) or a live handle from `eqf_flow_new` (this
        // function's contract); flows are never mutated.
        let flow = unsafe { handle(flow, "flow") }?.flow();
        let n = count(n, "n")?;
        let len = array_len(n, flow.n_particles().saturating_mul(flow.dim()), "x")?;
        check_output(log_q, n, "log_q")?;
        // The temporary first: an impossible count fails before the host's array is read.
        let mut log_densities = scratch(n, "log_q")?;
        // SAFETY: `x` is NULL (rejected) or points to n*N*D doubles that the caller does not
        // modify during the call (this function's contract).
        let x = unsafe { input_array(x, len, "x") }?;
        threads::install(|| flow.log_density_into(x, &mut log_densities))?;
        // SAFETY: `log_q` was checked (non-NULL, aligned) for n doubles and is writable for n
        // doubles (this function's contract).
        unsafe { write_output(log_q, &log_densities) };
        Ok(())
    })
}

/// Certifies, configuration by configuration, that each of `x` has exactly one preimage under
/// the flow's RK4 map, so that the exact-discrete log density at it is its push-forward
/// density: the per-configuration form of `eqf_flow_certificate`, for flows whose global
/// certificate fails (it is too pessimistic where the field is stiff only far from the data).
/// Each configuration is pulled back as for its density; at each step the field's bounds on a
/// ball holding every preimage of the step's output prove the step one-to-one there (see
/// docs/embedding.md, "Step certificate"; a field family without local bounds gives the global
/// certificate). A configuration costs one or two density evaluations on a flow the global
/// certificate covers, and about 10 on DW-4 and 6 on LJ-13 on one it does not.
///
/// The arrays are owned by the caller and written only if the call succeeds. With `n == 0`
/// nothing is read or written and the arrays may be NULL. Thread-safe; parallel over the
/// configurations (`eqf_set_num_threads`), with results independent of the thread count.
///
/// @param flow         the flow (not NULL); its integrator must be fixed-grid RK4
/// @param n            number of configurations (>= 0)
/// @param x            input, n*N*D doubles, finite (any centre of mass)
/// @param step_bound   output, n doubles: the configuration's worst step bound (the smaller of
///                     each step's global and local bound); the configuration is certified to
///                     have exactly one preimage when it is below 1
/// @param n_certified  output or NULL: how many of the n configurations are certified
/// @return EQF_OK; EQF_ERR_NULL_POINTER; EQF_ERR_INVALID_ARGUMENT (n negative or too large, an
///         adaptive integrator, or step_bound and n_certified share memory);
///         EQF_ERR_NON_FINITE (x contains NaN or infinity);
///         EQF_ERR_NOT_CONVERGED or EQF_ERR_NOT_INVERTIBLE if some configuration cannot be
///         pulled back; EQF_ERR_RESOURCE if memory is refused
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_flow_certify_configurations(
    flow: *const eqf_flow,
    n: i64,
    x: *const f64,
    step_bound: *mut f64,
    n_certified: *mut i64,
) -> i32 {
    catch(|| {
        // SAFETY: `flow` is NULL (rejected) or a live handle from `eqf_flow_new` (this
        // function's contract); flows are never mutated.
        let flow = unsafe { handle(flow, "flow") }?.flow();
        let n = count(n, "n")?;
        let len = array_len(n, flow.n_particles().saturating_mul(flow.dim()), "x")?;
        check_output(step_bound, n, "step_bound")?;
        check_disjoint(&[
            Region::of(step_bound, n, "step_bound"),
            Region::of(n_certified, 1, "n_certified"),
        ])?;
        let mut bounds = scratch(n, "step_bound")?;
        // SAFETY: `x` is NULL (rejected) or points to n*N*D doubles that the caller does not
        // modify during the call (this function's contract).
        let x = unsafe { input_array(x, len, "x") }?;
        crate::error::check_finite(x, "x")?;
        let certs = threads::install(|| flow.certify_configurations(x))?;
        let mut certified = 0_i64;
        for (bound, cert) in bounds.iter_mut().zip(certs) {
            let cert = cert?;
            *bound = cert.max_step_bound;
            certified += i64::from(cert.is_certified());
        }
        // SAFETY: `step_bound` was checked (non-NULL, aligned) for n doubles and is writable
        // for n doubles; `n_certified` is written only when non-NULL, and then valid for one
        // write (this function's contract).
        unsafe {
            write_output(step_bound, &bounds);
            if !n_certified.is_null() {
                n_certified.write(certified);
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::test_handles::FlowHandle;
    use crate::ffi::{EQF_ERR_INVALID_ARGUMENT, EQF_ERR_INVALID_STATE, EQF_ERR_NON_FINITE, EQF_OK};

    /// A flow handle for N = 3, D = 2.
    fn handle(seed: u64) -> FlowHandle {
        FlowHandle::new(3, 2, seed)
    }

    impl FlowHandle {
        fn sample(&self, seed: u64, n: usize) -> (i32, Vec<f64>, Vec<f64>) {
            // SAFETY: live handle, not used by other threads.
            let len = unsafe { (*self.0).flow().layout().len() };
            let mut x = vec![f64::NAN; n * len];
            let mut log_q = vec![f64::NAN; n];
            // SAFETY: live handle; buffers of n*N*D and n doubles.
            let status = unsafe {
                eqf_flow_sample(self.0, seed, n as i64, x.as_mut_ptr(), log_q.as_mut_ptr())
            };
            (status, x, log_q)
        }
    }

    /// A flow that a call is using is not freed from under it (it used to be: the call then
    /// went on with freed memory, or training committed into it).
    #[test]
    fn a_flow_in_use_is_not_freed() {
        let h = handle(2);
        // SAFETY: a live handle, freed only by `h`'s drop.
        let live = unsafe { &*h.0 };
        let refused = |why: &str| {
            // SAFETY: a live handle; refused, so not freed.
            let status = unsafe { eqf_flow_free(h.0) };
            assert_eq!(status, EQF_ERR_INVALID_STATE, "{why}");
            let message = crate::ffi::with_last_error(str::to_owned);
            assert!(message.contains("it was not freed"), "{why}: {message}");
        };
        // Read by a call on another thread.
        let (reading_tx, reading_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let _read = live.flow();
                reading_tx.send(()).unwrap();
                done_rx.recv().unwrap();
            });
            reading_rx.recv().unwrap();
            refused("read on another thread");
            done_tx.send(()).unwrap();
        });
        // Read by the call whose callback frees it.
        {
            let _read = live.flow();
            refused("read by this thread's call");
        }
        // Training.
        {
            let _training = live.begin_training().unwrap();
            refused("training");
        }
        // Idle again: `h`'s drop frees it with EQF_OK, and the flow is intact meanwhile.
        assert_eq!(h.sample(1, 2).0, EQF_OK);
    }

    #[test]
    fn configuration_certificates_agree_with_the_rust_flow_and_fail_cleanly() {
        let h = handle(6);
        let (_, mut x, _) = h.sample(2, 3);
        // SAFETY: live handle.
        let flow = unsafe { (*h.0).flow() };
        let expected: Vec<f64> = flow
            .certify_configurations(&x)
            .unwrap()
            .into_iter()
            .map(|c| c.unwrap().max_step_bound)
            .collect();
        let mut bounds = vec![f64::NAN; 3];
        let mut n_certified = -7;
        // SAFETY: live handle; x holds 3 configurations, bounds 3 doubles.
        let status = unsafe {
            eqf_flow_certify_configurations(
                h.0,
                3,
                x.as_ptr(),
                bounds.as_mut_ptr(),
                &raw mut n_certified,
            )
        };
        assert_eq!(status, EQF_OK);
        assert_eq!(bounds, expected);
        let certified = expected.iter().filter(|b| **b < 1.0).count();
        assert_eq!(n_certified, certified as i64);
        // A failed call writes nothing: NaN input, NULL output, NULL flow.
        x[1] = f64::NAN;
        let mut untouched = vec![-1.0; 3];
        // SAFETY: as above; NULL where the contract says it is rejected.
        unsafe {
            let status = eqf_flow_certify_configurations(
                h.0,
                3,
                x.as_ptr(),
                untouched.as_mut_ptr(),
                std::ptr::null_mut(),
            );
            assert_eq!(status, EQF_ERR_NON_FINITE);
            let status = eqf_flow_certify_configurations(
                h.0,
                3,
                x.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            assert_eq!(status, crate::ffi::EQF_ERR_NULL_POINTER);
            let status = eqf_flow_certify_configurations(
                std::ptr::null(),
                0,
                std::ptr::null(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            assert_eq!(status, crate::ffi::EQF_ERR_NULL_POINTER);
            let status = eqf_flow_certify_configurations(
                h.0,
                0,
                std::ptr::null(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            assert_eq!(status, EQF_OK);
        }
        assert_eq!(untouched, vec![-1.0; 3]);
    }

    #[test]
    fn certificate_agrees_with_the_rust_flow_and_rejects_null() {
        let h = handle(4);
        let (mut certified, mut contraction, mut needed) = (-7, f64::NAN, -7);
        // SAFETY: live handle, valid output slots.
        let status = unsafe {
            eqf_flow_certificate(
                h.0,
                &raw mut certified,
                &raw mut contraction,
                &raw mut needed,
            )
        };
        assert_eq!(status, EQF_OK);
        // SAFETY: live handle.
        let flow = unsafe { (*h.0).flow() };
        let cert = flow.certificate().unwrap();
        assert_eq!(certified, i32::from(cert.is_certified()));
        assert_eq!(contraction.to_bits(), cert.max_contraction.to_bits());
        assert_eq!(needed, flow.certified_step_count().unwrap() as i64);
        // NULL for the step count is allowed; NULL for the verdict is not.
        // SAFETY: live handle, valid or NULL slots as the contract allows.
        unsafe {
            assert_eq!(
                eqf_flow_certificate(
                    h.0,
                    &raw mut certified,
                    &raw mut contraction,
                    std::ptr::null_mut()
                ),
                EQF_OK
            );
            assert_eq!(
                eqf_flow_certificate(
                    h.0,
                    std::ptr::null_mut(),
                    &raw mut contraction,
                    &raw mut needed
                ),
                crate::ffi::EQF_ERR_NULL_POINTER
            );
            assert_eq!(
                eqf_flow_certificate(
                    std::ptr::null(),
                    &raw mut certified,
                    &raw mut contraction,
                    &raw mut needed
                ),
                crate::ffi::EQF_ERR_NULL_POINTER
            );
        }
    }

    #[test]
    fn sampling_matches_the_rust_api_and_extends_with_n() {
        let flow = handle(5);
        let (status, x, log_q) = flow.sample(9, 4);
        assert_eq!(status, EQF_OK);
        let (x_rust, log_q_rust) = Flow::new(3, 2, 5).unwrap().sample(9, 4).unwrap();
        assert_eq!(x, x_rust);
        assert_eq!(log_q, log_q_rust);
        // Sample s depends only on (seed, s): a shorter batch is a prefix (documented).
        let (_, x_short, log_q_short) = flow.sample(9, 2);
        assert_eq!(x_short, x[..12]);
        assert_eq!(log_q_short, log_q[..2]);
        // SAFETY: live handle.
        unsafe {
            assert_eq!(eqf_flow_n_particles(flow.0), 3);
            assert_eq!(eqf_flow_dim(flow.0), 2);
        }
    }

    #[test]
    fn one_flow_is_shared_by_threads() {
        let flow = handle(1);
        let (_, x, log_q) = flow.sample(3, 5);
        let address = flow.0 as usize;
        let results: Vec<(Vec<f64>, Vec<f64>)> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    let flow = address as *const eqf_flow;
                    let mut x = vec![0.0; 30];
                    let mut log_q = vec![0.0; 5];
                    // SAFETY: the handle outlives the threads (joined below); flows are
                    // immutable and Sync.
                    let status =
                        unsafe { eqf_flow_sample(flow, 3, 5, x.as_mut_ptr(), log_q.as_mut_ptr()) };
                    assert_eq!(status, EQF_OK);
                    (x, log_q)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .collect();
        for (x_thread, log_q_thread) in results {
            assert_eq!(x_thread, x);
            assert_eq!(log_q_thread, log_q);
        }
    }

    /// The last error message of this thread.
    fn last_message() -> String {
        crate::ffi::with_last_error(str::to_owned)
    }

    fn assert_resource_error(status: i32) {
        assert_eq!(status, crate::ffi::EQF_ERR_RESOURCE, "{}", last_message());
        let message = last_message();
        assert!(
            message.contains("needs") && message.contains("limit is 4294967296 bytes"),
            "{message}"
        );
    }

    #[test]
    fn oversized_flows_fail_with_a_resource_error_instead_of_aborting() {
        let mut flow = std::ptr::null_mut();
        // SAFETY: `flow` is a valid pointer slot.
        let status = unsafe { eqf_flow_new(100_000, 2, 0, &raw mut flow) };
        assert_eq!(status, EQF_OK);
        let flow = FlowHandle(flow);
        let mut x = vec![f64::NAN; 200_000];
        let mut log_q = [f64::NAN];
        // SAFETY: live handle; buffers of N*D and 1 doubles.
        let status = unsafe { eqf_flow_sample(flow.0, 0, 1, x.as_mut_ptr(), log_q.as_mut_ptr()) };
        assert_resource_error(status);
        // 5 matrices of (2·10⁵)² doubles.
        assert!(
            last_message().contains("needs 1600000000000 bytes"),
            "{}",
            last_message()
        );
        assert!(log_q[0].is_nan(), "nothing written on failure");
        let mut mv = std::ptr::dangling_mut();
        // SAFETY: live handle; `mv` is a valid pointer slot.
        let status = unsafe { crate::ffi::flow_move::eqf_move_new(flow.0, 1.0, 0, &raw mut mv) };
        assert_resource_error(status);
        assert_eq!(mv, std::ptr::dangling_mut());

        let mut flow = std::ptr::null_mut();
        // SAFETY: `flow` is a valid pointer slot.
        assert_eq!(unsafe { eqf_flow_new(50_000, 3, 0, &raw mut flow) }, EQF_OK);
        let flow = FlowHandle(flow);
        let x: Vec<f64> = (0..150_000).map(|i| f64::from(i % 977) * 0.37).collect();
        // SAFETY: live handle; buffers of N*D and 1 doubles.
        let status = unsafe { eqf_flow_log_density(flow.0, 1, x.as_ptr(), log_q.as_mut_ptr()) };
        assert_resource_error(status);
        assert!(log_q[0].is_nan());
    }

    #[test]
    fn an_oversized_model_file_fails_with_a_resource_error() {
        let dir = std::env::temp_dir().join(format!("eqflow-ffi-resource-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.json");
        let mut file =
            crate::io::model::ModelFile::from_flow(&Flow::new(4, 2, 0).unwrap(), None, None);
        file.n_particles = 60_000;
        // The field, certified for 4 particles, is not for 60,000: strict mode would refuse it
        // before the memory is counted, which is what this test checks.
        file.require_certificate = false;
        std::fs::write(&path, file.to_json()).unwrap();
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        let mut flow = std::ptr::null_mut();
        // SAFETY: NUL-terminated path; `flow` is a valid pointer slot.
        let status = unsafe { crate::ffi::model::eqf_flow_load(c_path.as_ptr(), &raw mut flow) };
        assert_eq!(status, EQF_OK, "{}", last_message());
        let flow = FlowHandle(flow);
        let mut x = vec![0.0; 120_000];
        let mut log_q = [0.0];
        // SAFETY: live handle; buffers of N*D and 1 doubles.
        let status = unsafe { eqf_flow_sample(flow.0, 0, 1, x.as_mut_ptr(), log_q.as_mut_ptr()) };
        assert_resource_error(status);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn failed_calls_write_nothing() {
        let flow = handle(2);
        let (_, mut x, _) = flow.sample(4, 2);
        x[7] = f64::INFINITY;
        let mut log_q = [-1.0; 2];
        // SAFETY: live handle; buffers of 2*N*D and 2 doubles.
        let status = unsafe { eqf_flow_log_density(flow.0, 2, x.as_ptr(), log_q.as_mut_ptr()) };
        assert_eq!(status, EQF_ERR_NON_FINITE);
        assert_eq!(log_q, [-1.0; 2]);

        let mut out = std::ptr::dangling_mut::<eqf_flow>();
        // SAFETY: `out` is a valid pointer slot.
        let status = unsafe { eqf_flow_new(1, 2, 0, &raw mut out) };
        assert_eq!(status, EQF_ERR_INVALID_ARGUMENT);
        assert_eq!(out, std::ptr::dangling_mut::<eqf_flow>());
    }

    /// A copy of `h`'s flow with `n_steps` exact-discrete RK4 steps and strict mode `require`.
    fn strict_copy(h: &FlowHandle, n_steps: i64, require: i32) -> FlowHandle {
        use crate::ffi::integrator::{
            EQF_DENSITY_EXACT_DISCRETE, EQF_METHOD_RK4, eqf_flow_with_integrator,
        };
        let (mut stepped, mut strict) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: live handle, valid pointer slots; `stepped` is freed once.
        unsafe {
            assert_eq!(
                eqf_flow_with_integrator(
                    h.0,
                    EQF_METHOD_RK4,
                    n_steps,
                    0.0,
                    0.0,
                    EQF_DENSITY_EXACT_DISCRETE,
                    &raw mut stepped
                ),
                EQF_OK
            );
            assert_eq!(
                eqf_flow_with_require_certificate(stepped, require, &raw mut strict),
                EQF_OK
            );
            assert_eq!(eqf_flow_free(stepped), EQF_OK);
        }
        FlowHandle(strict)
    }

    #[test]
    fn strict_mode_refuses_an_uncertified_grid_naming_the_certified_step_count() {
        let h = handle(4);
        // SAFETY: live handle.
        let flow = unsafe { (*h.0).flow() };
        let needed = flow.certified_step_count().unwrap();
        assert!(needed > 1, "the test needs a grid that is not certified");
        // Certified (enough steps): strict mode changes no bit.
        let certified = strict_copy(&h, needed as i64, 1);
        let plain = strict_copy(&h, needed as i64, 0);
        let (status, x, log_q) = certified.sample(3, 4);
        assert_eq!(status, EQF_OK, "{}", last_message());
        assert_eq!((x, log_q), {
            let (_, x, log_q) = plain.sample(3, 4);
            (x, log_q)
        });
        // Uncertified (one step fewer): sampling and densities refused, nothing written.
        let strict = strict_copy(&h, needed as i64 - 1, 1);
        let (status, x, log_q) = strict.sample(3, 4);
        assert_eq!(status, crate::ffi::EQF_ERR_UNCERTIFIED);
        let message = last_message();
        assert!(
            message.contains(&format!("certified with {needed} RK4 steps")),
            "{message}"
        );
        assert!(
            x.iter().chain(&log_q).all(|v| v.is_nan()),
            "nothing written"
        );
        let data = plain.sample(5, 2).1;
        let mut log_q = [f64::NAN; 2];
        // SAFETY: live handle; 2 configurations in, 2 doubles out.
        let status =
            unsafe { eqf_flow_log_density(strict.0, 2, data.as_ptr(), log_q.as_mut_ptr()) };
        assert_eq!(status, crate::ffi::EQF_ERR_UNCERTIFIED);
        assert!(log_q.iter().all(|v| v.is_nan()));
        // The same grid without strict mode still samples.
        assert_eq!(strict_copy(&h, needed as i64 - 1, 0).sample(3, 4).0, EQF_OK);
        // The query, and bad arguments (the output slot untouched).
        let (mut on, mut off) = (-1, -1);
        let mut out = std::ptr::null_mut();
        // SAFETY: live handles, valid or NULL slots as each case says.
        unsafe {
            let lax = strict_copy(&h, needed as i64 - 1, 0);
            assert_eq!(eqf_flow_require_certificate(h.0, &raw mut on), EQF_OK);
            assert_eq!(eqf_flow_require_certificate(lax.0, &raw mut off), EQF_OK);
            assert_eq!((on, off), (1, 0), "strict by default; the opt-out");
            assert_eq!(
                eqf_flow_require_certificate(h.0, std::ptr::null_mut()),
                crate::ffi::EQF_ERR_NULL_POINTER
            );
            assert_eq!(
                eqf_flow_with_require_certificate(h.0, 2, &raw mut out),
                EQF_ERR_INVALID_ARGUMENT
            );
            assert!(out.is_null());
            assert_eq!(
                eqf_flow_with_require_certificate(std::ptr::null(), 1, &raw mut out),
                crate::ffi::EQF_ERR_NULL_POINTER
            );
            assert!(out.is_null());
        }
        // SAFETY: live handle.
        let original = unsafe { (*h.0).flow() };
        assert!(original.requires_certificate(), "original unchanged");
    }
}
