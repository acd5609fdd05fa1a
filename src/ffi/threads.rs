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
use crate::thread_count::{
    MAX_POOL_THREADS, RAYON_ENV_VAR, THREAD_STACK_BYTES, THREADS_PER_CORE, cores,
    rayon_env_threads, thread_cap,
};
use crate::{Error, Result};

/// Largest thread count `eqf_set_num_threads` accepts; beyond it a count is a mistake.
const MAX_THREADS: i64 = 4096;

/// The environment variable read (once, when the pool is first needed) for the default size.
const ENV_VAR: &str = "EQFLOW_NUM_THREADS";

/// The pool, built on first use. Replaced as a whole by `eqf_set_num_threads`; calls already
/// running keep the `Arc` of the pool they started in.
static POOL: RwLock<Option<Arc<ThreadPool>>> = RwLock::new(None);

/// Messages for the log callback, given only after the pool's lock is released: a callback may
/// call eqflow, whose batch calls take that lock (logging while holding it deadlocked them).
type Notes = Vec<(i32, String)>;

/// Gives `notes` to the log callback; call with no lock held.
fn emit(notes: Notes) {
    for (level, text) in notes {
        log(level, || text);
    }
}

/// `EQFLOW_NUM_THREADS`, parsed once: `Some(n)` for a positive integer, else `None` with the
/// warning to log when it is set but not usable.
fn env_threads() -> (Option<usize>, Option<String>) {
    static PARSED: OnceLock<(Option<usize>, Option<String>)> = OnceLock::new();
    PARSED
        .get_or_init(|| {
            let Ok(value) = std::env::var(ENV_VAR) else {
                return (None, None);
            };
            match value.trim().parse::<usize>() {
                Ok(n) if n >= 1 && n as i64 <= MAX_THREADS => (Some(n), None),
                _ => (
                    None,
                    Some(format!(
                        "{ENV_VAR}={value:?} is not an integer in 1..={MAX_THREADS}; ignored \
                         (eqflow uses one thread per core)"
                    )),
                ),
            }
        })
        .clone()
}

/// The default request and where it comes from: `EQFLOW_NUM_THREADS`, else
/// `RAYON_NUM_THREADS`, else one thread per core.
fn default_request(notes: &mut Notes) -> (usize, &'static str) {
    let (threads, warning) = env_threads();
    notes.extend(warning.map(|text| (EQF_LOG_WARNING, text)));
    if let Some(n) = threads {
        return (n, ENV_VAR);
    }
    match rayon_env_threads() {
        Some(n) => (n, RAYON_ENV_VAR),
        None => (cores(), "the core count"),
    }
}

/// The error of a pool the system refused to start: the real request, the size actually tried,
/// and the system's reason.
fn start_failure(
    requested: usize,
    source: &str,
    size: usize,
    cap: usize,
    reason: &dyn std::fmt::Display,
) -> Error {
    Error::resource(
        format!(
            "the stacks of a pool of {size} threads for batch calls ({source} asked for \
             {requested}, capped at {cap}; the system refused to start them: {reason})"
        ),
        (size as u128).saturating_mul(u128::from(THREAD_STACK_BYTES)),
        (cap as u64).saturating_mul(THREAD_STACK_BYTES),
    )
}

/// Builds a pool of `n` threads; `0` means the default (`EQFLOW_NUM_THREADS`, else
/// `RAYON_NUM_THREADS`, else one thread per core). Either is capped at [`thread_cap`], with a
/// warning: the count is always explicit, so rayon never reads its variable uncapped. What it
/// has to say goes to `notes`, for [`emit`] once no lock is held.
fn build(n: usize, notes: &mut Notes) -> Result<Arc<ThreadPool>> {
    let (requested, source) = if n == 0 {
        default_request(notes)
    } else {
        (n, "eqf_set_num_threads")
    };
    let cap = thread_cap(cores());
    let size = requested.clamp(1, cap);
    if size < requested {
        notes.push((
            EQF_LOG_WARNING,
            format!(
                "{source} asks for {requested} threads; eqflow starts at most {cap} \
                 ({THREADS_PER_CORE} per core, at most {MAX_POOL_THREADS}); results do not \
                 depend on the count"
            ),
        ));
    }
    let pool = ThreadPoolBuilder::new()
        .num_threads(size)
        .thread_name(|i| format!("eqflow-{i}"))
        .build()
        .map_err(|error| start_failure(requested, source, size, cap, &error))?;
    let size = pool.current_num_threads();
    notes.push((
        EQF_LOG_INFO,
        format!("batch calls use a pool of {size} threads"),
    ));
    Ok(Arc::new(pool))
}

/// The current pool, built with the default size on first use.
pub(super) fn pool() -> Result<Arc<ThreadPool>> {
    if let Some(pool) = POOL.read().unwrap_or_else(PoisonError::into_inner).as_ref() {
        return Ok(Arc::clone(pool));
    }
    let mut notes = Notes::new();
    let built = {
        let mut slot = POOL.write().unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref() {
            Some(pool) => Ok(Arc::clone(pool)),
            None => build(0, &mut notes).inspect(|pool| *slot = Some(Arc::clone(pool))),
        }
    };
    emit(notes);
    built
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
/// `n >= 1` uses n threads; `n == 0` restores the default, which is the environment
/// variable `EQFLOW_NUM_THREADS` (read once, at the first batch call or the first
/// `eqf_set_num_threads(0)`), else `RAYON_NUM_THREADS`, else one thread per core. Whatever is
/// asked, the pool has at most 4 threads per core and never more than 1024 (a larger request
/// is capped, with a warning to the log callback): thousands of threads take tens of seconds to
/// start and can exhaust the process's memory maps. A host that runs several MPI ranks or
/// its own OpenMP threads per node should call `eqf_set_num_threads(1)` (or set
/// `EQFLOW_NUM_THREADS=1`) so that eqflow does not oversubscribe the cores. Results are
/// bit-identical for any number of threads.
///
/// The setting is process-wide; it is meant to be made once at start-up. Calling it while batch
/// calls run in other threads is safe: those calls finish on the previous pool. Moves
/// (`eqf_move_*`) always run on the calling thread and are not affected.
///
/// @param n  number of threads (0 = default, at most 4096; at most 4 per core and 1024 are
///           started)
/// @return EQF_OK; EQF_ERR_INVALID_ARGUMENT (n negative or above 4096); EQF_ERR_RESOURCE (the
///         system refused to start the threads: the message gives the count and the system's
///         reason; the previous pool stays in use)
#[unsafe(no_mangle)]
pub extern "C" fn eqf_set_num_threads(n: i64) -> i32 {
    catch(|| {
        if !(0..=MAX_THREADS).contains(&n) {
            return Err(Error::invalid(format!(
                "number of threads must be in 0..={MAX_THREADS}, got {n}"
            )));
        }
        let mut notes = Notes::new();
        let built = build(usize::try_from(n).unwrap_or(0), &mut notes);
        // The pool is in place before the notes reach the log callback, so a setting the
        // callback makes comes after this one and stays (it used to be overwritten by this
        // call's, with both returning EQF_OK).
        if let Ok(pool) = built {
            *POOL.write().unwrap_or_else(PoisonError::into_inner) = Some(pool);
            emit(notes);
            return Ok(());
        }
        emit(notes);
        built.map(|_| ())
    })
}

/// The number of threads batch calls use now (starting the pool if needed), or -1 if the pool
/// cannot be started (the message is then recorded for `eqf_last_error_message`; batch calls
/// then fail with EQF_ERR_RESOURCE).
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

    /// A log callback that calls eqflow: the pool's lock must be free while it runs.
    unsafe extern "C" fn calls_eqflow(
        _user: *mut std::ffi::c_void,
        _level: i32,
        _message: *const std::ffi::c_char,
    ) {
        assert!(eqf_num_threads() >= 1);
    }

    #[test]
    fn a_log_callback_may_call_eqflow_while_the_pool_is_built() {
        // Before: the first batch call built the pool and logged its size while holding the
        // pool's write lock; a callback calling eqf_num_threads (or any batch call) waited for
        // that lock forever.
        let _guard = INSTALLS.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: `calls_eqflow` is thread-safe; the user pointer is never dereferenced.
        unsafe { eqf_set_log_callback(Some(calls_eqflow), std::ptr::null_mut()) };
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // The first use: builds the pool and logs its size.
            *POOL.write().unwrap_or_else(PoisonError::into_inner) = None;
            let first = eqf_num_threads();
            let set = eqf_set_num_threads(1);
            let _ = done.send((first, set, eqf_set_num_threads(0)));
        });
        let outcome = finished.recv_timeout(std::time::Duration::from_secs(60));
        // SAFETY: removing the callback is always allowed.
        unsafe { eqf_set_log_callback(None, std::ptr::null_mut()) };
        let (first, set, reset) = outcome.expect("a callback calling eqflow deadlocked");
        assert!(first >= 1);
        assert_eq!((set, reset), (0, 0));
    }

    /// Set by the test below: the one thread count `sets_three_threads` is to apply.
    static SET_FROM_CALLBACK: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);

    /// A log callback that sets 3 threads, once (its own call logs too).
    unsafe extern "C" fn sets_three_threads(
        _user: *mut std::ffi::c_void,
        _level: i32,
        _message: *const std::ffi::c_char,
    ) {
        if SET_FROM_CALLBACK.swap(false, std::sync::atomic::Ordering::SeqCst) {
            assert_eq!(eqf_set_num_threads(3), 0);
        }
    }

    #[test]
    fn a_thread_count_set_from_the_log_callback_is_the_one_that_stays() {
        // Before: the outer call logged before installing its pool, so the callback's later
        // setting was overwritten by the earlier one, both returning EQF_OK.
        let _guard = INSTALLS.lock().unwrap_or_else(PoisonError::into_inner);
        SET_FROM_CALLBACK.store(true, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: `sets_three_threads` is thread-safe; the user pointer is never dereferenced.
        unsafe { eqf_set_log_callback(Some(sets_three_threads), std::ptr::null_mut()) };
        let status = eqf_set_num_threads(1);
        let now = eqf_num_threads();
        // SAFETY: removing the callback is always allowed.
        unsafe { eqf_set_log_callback(None, std::ptr::null_mut()) };
        let called = !SET_FROM_CALLBACK.swap(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(eqf_set_num_threads(0), 0);
        assert!(called, "the pool change was not logged");
        assert_eq!((status, now), (0, 3));
    }

    #[test]
    fn a_pool_the_system_refuses_is_a_resource_error_with_the_real_count_and_reason() {
        // Before: "invalid argument: cannot start 0 threads: …", with the default's 0.
        let reason = std::io::Error::from_raw_os_error(11);
        let error = start_failure(5000, RAYON_ENV_VAR, 8, 8, &reason);
        assert_eq!(
            crate::ffi::status::status_of(&error),
            crate::ffi::EQF_ERR_RESOURCE
        );
        let text = error.to_string();
        for needle in [
            "asked for 5000",
            RAYON_ENV_VAR,
            "8 threads",
            &reason.to_string(),
        ] {
            assert!(text.contains(needle), "{needle:?} not in {text:?}");
        }
    }

    #[test]
    fn a_huge_thread_count_is_capped_and_starts_fast() {
        // Before: eqf_set_num_threads(4096) started 4096 threads (~24 s here) and then failed.
        let _guard = INSTALLS.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: `record` is thread-safe; the user pointer is never dereferenced.
        unsafe { eqf_set_log_callback(Some(record), std::ptr::null_mut()) };
        let cap = thread_cap(cores());
        let start = std::time::Instant::now();
        assert_eq!(eqf_set_num_threads(MAX_THREADS), 0);
        assert_eq!(eqf_num_threads(), i64::try_from(cap).unwrap());
        assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
        assert_eq!(eqf_set_num_threads(0), 0);
        // SAFETY: removing the callback is always allowed.
        unsafe { eqf_set_log_callback(None, std::ptr::null_mut()) };
        let received = RECEIVED.lock().unwrap_or_else(PoisonError::into_inner);
        let warning = format!("asks for {MAX_THREADS} threads; eqflow starts at most {cap}");
        assert!(
            received
                .iter()
                .any(|(_, level, text)| *level == EQF_LOG_WARNING && text.contains(&warning)),
            "{received:?}"
        );
    }

    /// The child half of `rayon_num_threads_5000_in_the_environment_is_capped`: run alone, in a
    /// process of its own with `RAYON_NUM_THREADS` set.
    #[test]
    #[ignore = "run by rayon_num_threads_5000_in_the_environment_is_capped in a child process"]
    fn child_builds_the_default_pool_from_the_environment() {
        let start = std::time::Instant::now();
        let expected = std::env::var("EQFLOW_TEST_EXPECTED_THREADS").unwrap();
        assert_eq!(eqf_num_threads().to_string(), expected);
        assert_eq!(
            install(|| Ok(rayon::current_num_threads()))
                .unwrap()
                .to_string(),
            expected
        );
        assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
    }

    #[test]
    fn rayon_num_threads_5000_in_the_environment_is_capped() {
        // Before: with RAYON_NUM_THREADS=5000 every batch call spent ~29 s trying to start 5000
        // threads and failed with "invalid argument: cannot start 0 threads".
        let test = "ffi::threads::tests::child_builds_the_default_pool_from_the_environment";
        let cap = thread_cap(cores());
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--ignored", "--test-threads=1"])
            .env("RAYON_NUM_THREADS", "5000")
            .env_remove(ENV_VAR)
            .env("EQFLOW_TEST_EXPECTED_THREADS", cap.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("1 passed"), "{stdout}\n{stderr}");
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
