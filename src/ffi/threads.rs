//! The crate-owned thread pool of the batch entry points, so that a host running MPI ranks or
//! OpenMP threads decides how many threads eqflow may use.
//!
//! Batch calls (`eqf_flow_sample`, `eqf_flow_log_density`, `eqf_energy_eval`) run inside this
//! pool with `ThreadPool::install`; a training run stays on the caller's thread with only its
//! parallel sections in the pool; single-configuration calls (the move) run on the caller's
//! thread. Results never depend on the pool size: every sample is computed sequentially from its
//! own random stream (see `crate::flow`).

use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

use super::catch;
use super::log::{EQF_LOG_INFO, EQF_LOG_WARNING, log};
use crate::{Error, Result};

/// Largest thread count `eqf_set_num_threads` accepts; beyond it a count is a mistake.
const MAX_THREADS: i64 = 4096;

/// The environment variable read (once, when the pool is first needed) for the default size.
const ENV_VAR: &str = "EQFLOW_NUM_THREADS";

/// The pool, built on first use. Replaced as a whole by `eqf_set_num_threads`; calls already
/// running keep the `Arc` of the pool they started in.
static POOL: RwLock<Option<Arc<ThreadPool>>> = RwLock::new(None);

/// `EQFLOW_NUM_THREADS`, parsed once: `Some(n)` for a positive integer, else `None`.
fn env_threads() -> Option<usize> {
    static PARSED: OnceLock<Option<usize>> = OnceLock::new();
    *PARSED.get_or_init(|| {
        let value = std::env::var(ENV_VAR).ok()?;
        match value.trim().parse::<usize>() {
            Ok(n) if n >= 1 && n as i64 <= MAX_THREADS => Some(n),
            _ => {
                log(EQF_LOG_WARNING, || {
                    format!(
                        "{ENV_VAR}={value:?} is not an integer in 1..={MAX_THREADS}; ignored \
                         (eqflow uses one thread per core)"
                    )
                });
                None
            }
        }
    })
}

/// Builds a pool of `n` threads; `0` means the default (`EQFLOW_NUM_THREADS`, else rayon's
/// default: `RAYON_NUM_THREADS` or one thread per core).
fn build(n: usize) -> Result<Arc<ThreadPool>> {
    let n = if n == 0 {
        env_threads().unwrap_or(0)
    } else {
        n
    };
    let pool = ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("eqflow-{i}"))
        .build()
        .map_err(|error| Error::invalid(format!("cannot start {n} threads: {error}")))?;
    let size = pool.current_num_threads();
    log(EQF_LOG_INFO, || {
        format!("batch calls use a pool of {size} threads")
    });
    Ok(Arc::new(pool))
}

/// The current pool, built with the default size on first use.
pub(super) fn pool() -> Result<Arc<ThreadPool>> {
    if let Some(pool) = POOL.read().unwrap_or_else(PoisonError::into_inner).as_ref() {
        return Ok(Arc::clone(pool));
    }
    let mut slot = POOL.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(pool) = slot.as_ref() {
        return Ok(Arc::clone(pool));
    }
    let pool = build(0)?;
    *slot = Some(Arc::clone(&pool));
    Ok(pool)
}

/// Runs `f` in eqflow's thread pool: the rayon parallelism inside `f` uses that pool only.
pub(crate) fn install<R: Send>(f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    pool()?.install(f)
}

/// Runs `f` on the calling thread with the parallel sections of training inside it in eqflow's
/// thread pool (see `crate::train::pool`): for a training run, whose loop and host callbacks
/// must stay on the host's thread.
pub(crate) fn install_sections<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    crate::train::pool::with_pool(&pool()?, f)
}

/// Sets the number of threads that batch calls (`eqf_flow_sample`, `eqf_flow_log_density`,
/// `eqf_energy_eval`) may use.
///
/// `n >= 1` uses exactly n threads; `n == 0` restores the default, which is the environment
/// variable `EQFLOW_NUM_THREADS` (read once, at the first batch call or the first
/// `eqf_set_num_threads(0)`), else one thread per core. A host that runs several MPI ranks or
/// its own OpenMP threads per node should call `eqf_set_num_threads(1)` (or set
/// `EQFLOW_NUM_THREADS=1`) so that eqflow does not oversubscribe the cores. Results are
/// bit-identical for any number of threads.
///
/// The setting is process-wide; it is meant to be made once at start-up. Calling it while batch
/// calls run in other threads is safe: those calls finish on the previous pool. Moves
/// (`eqf_move_*`) always run on the calling thread and are not affected.
///
/// @param n  number of threads (0 = default, at most 4096)
/// @return EQF_OK; EQF_ERR_INVALID_ARGUMENT (n negative or above 4096, or the threads cannot be
///         started)
#[unsafe(no_mangle)]
pub extern "C" fn eqf_set_num_threads(n: i64) -> i32 {
    catch(|| {
        if !(0..=MAX_THREADS).contains(&n) {
            return Err(Error::invalid(format!(
                "number of threads must be in 0..={MAX_THREADS}, got {n}"
            )));
        }
        let pool = build(usize::try_from(n).unwrap_or(0))?;
        *POOL.write().unwrap_or_else(PoisonError::into_inner) = Some(pool);
        Ok(())
    })
}

/// The number of threads batch calls use now (starting the pool if needed), or -1 if the pool
/// cannot be started (the message is then recorded for `eqf_last_error_message`).
#[unsafe(no_mangle)]
pub extern "C" fn eqf_num_threads() -> i64 {
    super::catch_value(-1, || {
        Ok(i64::try_from(pool()?.current_num_threads()).unwrap_or(i64::MAX))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::EQF_ERR_INVALID_ARGUMENT;
    use crate::ffi::flow::{
        eqf_flow, eqf_flow_free, eqf_flow_log_density, eqf_flow_new, eqf_flow_sample,
    };
    use crate::ffi::log::eqf_set_log_callback;
    use crate::ffi::log::tests::{INSTALLS, RECEIVED, record};

    /// Samples and log-densities through the C API with the current pool.
    fn sample_and_evaluate(flow: *const eqf_flow) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let n = 37;
        let (mut x, mut log_q, mut again) = (vec![0.0; n * 6], vec![0.0; n], vec![0.0; n]);
        // SAFETY: live flow handle; buffers of n*N*D and n doubles.
        unsafe {
            let status = eqf_flow_sample(flow, 11, n as i64, x.as_mut_ptr(), log_q.as_mut_ptr());
            assert_eq!(status, 0);
            let status = eqf_flow_log_density(flow, n as i64, x.as_ptr(), again.as_mut_ptr());
            assert_eq!(status, 0);
        }
        (x, log_q, again)
    }

    #[test]
    fn thread_counts_are_validated_applied_logged_and_change_no_result() {
        // Tests in this binary run concurrently and share the pool: only this test changes it.
        let _guard = INSTALLS.lock().unwrap_or_else(PoisonError::into_inner);
        let mut flow = std::ptr::null_mut();
        // SAFETY: a valid pointer slot.
        assert_eq!(unsafe { eqf_flow_new(3, 2, 4, &raw mut flow) }, 0);
        // SAFETY: `record` is thread-safe; the user pointer is never dereferenced.
        unsafe { eqf_set_log_callback(Some(record), std::ptr::null_mut()) };

        assert_eq!(eqf_set_num_threads(-1), EQF_ERR_INVALID_ARGUMENT);
        assert_eq!(
            eqf_set_num_threads(MAX_THREADS + 1),
            EQF_ERR_INVALID_ARGUMENT
        );
        assert_eq!(eqf_set_num_threads(3), 0);
        assert_eq!(eqf_num_threads(), 3);
        let inside = install(|| Ok(rayon::current_num_threads())).unwrap();
        assert_eq!(inside, 3);
        let three = sample_and_evaluate(flow);
        assert_eq!(eqf_set_num_threads(1), 0);
        assert_eq!(eqf_num_threads(), 1);
        let one = sample_and_evaluate(flow);
        assert_eq!(one, three, "results depend on the number of threads");
        assert_eq!(eqf_set_num_threads(0), 0);
        assert!(eqf_num_threads() >= 1);

        // SAFETY: removing the callback is always allowed; the flow is freed once.
        unsafe {
            eqf_set_log_callback(None, std::ptr::null_mut());
            assert_eq!(eqf_flow_free(flow), 0);
        }
        let received = RECEIVED.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(
            received.iter().any(
                |(_, level, text)| *level == EQF_LOG_INFO && text.contains("pool of 1 threads")
            ),
            "{received:?}"
        );
    }
}
