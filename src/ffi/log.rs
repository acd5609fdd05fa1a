//! Library messages routed to a host-supplied callback (never to stdout or stderr).

use std::cell::Cell;
use std::ffi::{CString, c_char, c_void};
use std::sync::{PoisonError, RwLock};

/// Log level of a message that reports a failure the library could not recover from on its own
/// (for example a caught internal panic).
pub const EQF_LOG_ERROR: i32 = 1;

/// Log level of a message about a questionable setting that was ignored (for example an
/// unparsable `EQFLOW_NUM_THREADS`).
pub const EQF_LOG_WARNING: i32 = 2;

/// Log level of an informational message (for example the size of the thread pool).
pub const EQF_LOG_INFO: i32 = 3;

/// Log level of a diagnostic message: every failed call, with its status and message.
pub const EQF_LOG_DEBUG: i32 = 4;

/// A log callback: receives the `user` pointer given to `eqf_set_log_callback`, a level
/// (`EQF_LOG_ERROR` … `EQF_LOG_DEBUG`) and a NUL-terminated UTF-8 message that is valid only
/// during the call.
#[allow(non_camel_case_types)]
pub type eqf_log_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, level: i32, message: *const c_char)>;

#[derive(Clone, Copy)]
struct Logger {
    callback: unsafe extern "C" fn(*mut c_void, i32, *const c_char),
    user: *mut c_void,
}

// SAFETY: the logger is only a function pointer and an opaque pointer that the library never
// dereferences; `eqf_set_log_callback` documents that the callback may be called from any thread
// at any time, so making them reachable from every thread is the host's stated contract.
unsafe impl Send for Logger {}
// SAFETY: as for `Send`: shared access only copies the two pointers.
unsafe impl Sync for Logger {}

/// The process-wide logger. One of the two pieces of global state of the C API (with the thread
/// pool); both are settings a host makes once at start-up.
static LOGGER: RwLock<Option<Logger>> = RwLock::new(None);

thread_local! {
    /// Set while this thread runs the callback, so that an eqflow call made by the callback
    /// (which may fail and log) cannot recurse without end.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// Whether the host installed a log callback: lets a caller skip work whose only purpose is a
/// message.
pub(crate) fn logging() -> bool {
    LOGGER
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .is_some()
}

/// Sends a message to the host's callback, if one is installed. `message` is only formatted
/// when there is a callback.
pub(crate) fn log(level: i32, message: impl FnOnce() -> String) {
    let logger = *LOGGER.read().unwrap_or_else(PoisonError::into_inner);
    let Some(logger) = logger else {
        return;
    };
    if IN_CALLBACK.try_with(Cell::get).unwrap_or(true) {
        return;
    }
    let text = message().replace('\0', "\u{FFFD}");
    let Ok(text) = CString::new(text) else {
        return;
    };
    let _ = IN_CALLBACK.try_with(|flag| flag.set(true));
    // A message of a call that reads a flow (its failure report too, sent after the call let
    // go of the flow) is sent as from inside that call: the callback cannot train a flow.
    let _reading = super::flow::LogOfAFlowCall::enter();
    // SAFETY: the callback and `user` were supplied together by the host through
    // `eqf_set_log_callback`, whose contract is that the callback accepts this pointer from any
    // thread; `text` is a valid NUL-terminated string that lives until after the call.
    unsafe { (logger.callback)(logger.user, level, text.as_ptr()) };
    let _ = IN_CALLBACK.try_with(|flag| flag.set(false));
}

/// Installs `callback` as the receiver of eqflow's diagnostic messages, or removes it when
/// `callback` is NULL (the default: eqflow never prints anything).
///
/// Messages: every failed call at `EQF_LOG_DEBUG` (with the status; the same text is available
/// from `eqf_last_error_message`), caught internal panics at `EQF_LOG_ERROR`, an ignored
/// `EQFLOW_NUM_THREADS` at `EQF_LOG_WARNING`, a model loaded by `eqf_flow_load` whose RK4 map
/// is not certified one-to-one (exact-discrete mode) at `EQF_LOG_WARNING`, thread pool
/// (re)configuration and the step count `eqf_flow_train` raised (strict mode) at
/// `EQF_LOG_INFO`.
///
/// The setting is process-wide. The callback may be called from any thread, concurrently, for
/// as long as it is installed, so it must be thread-safe; `user` is passed back unchanged and
/// never dereferenced by eqflow. The message string is valid only during the call. The callback
/// must not unwind (no C++ exception, no longjmp) through eqflow. eqflow calls made from inside
/// the callback work, but their own messages are not logged. Replacing the callback while
/// another thread is logging is safe; that message goes to either the old or the new callback.
///
/// @param callback  the receiver, or NULL to disable logging
/// @param user      opaque pointer passed as the first argument of every call
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_set_log_callback(callback: eqf_log_fn, user: *mut c_void) {
    let logger = callback.map(|callback| Logger { callback, user });
    *LOGGER.write().unwrap_or_else(PoisonError::into_inner) = logger;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::ffi::CStr;
    use std::sync::Mutex;

    /// Messages received by [`record`], with the `user` value they came with.
    pub(crate) static RECEIVED: Mutex<Vec<(usize, i32, String)>> = Mutex::new(Vec::new());

    /// Held by every test that installs a callback, so one test cannot remove another's.
    pub(crate) static INSTALLS: Mutex<()> = Mutex::new(());

    pub(crate) unsafe extern "C" fn record(user: *mut c_void, level: i32, message: *const c_char) {
        // SAFETY: eqflow passes a valid NUL-terminated string.
        let text = unsafe { CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned();
        RECEIVED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((user as usize, level, text));
    }

    #[test]
    fn failures_reach_the_callback_with_the_user_pointer() {
        let _guard = INSTALLS.lock().unwrap_or_else(PoisonError::into_inner);
        // Other tests of this binary may log concurrently: look for our own message only.
        // SAFETY: `record` is thread-safe; the user pointer is never dereferenced.
        unsafe { eqf_set_log_callback(Some(record), 0x5eed as *mut c_void) };
        let status = crate::ffi::catch(|| Err(crate::Error::invalid("logged-failure-7")));
        assert_eq!(status, crate::ffi::EQF_ERR_INVALID_ARGUMENT);
        let found = RECEIVED.lock().unwrap().iter().any(|(user, level, text)| {
            *user == 0x5eed && *level == EQF_LOG_DEBUG && text.contains("logged-failure-7")
        });
        // SAFETY: removing the callback is always allowed.
        unsafe { eqf_set_log_callback(None, std::ptr::null_mut()) };
        assert!(found, "{:?}", RECEIVED.lock().unwrap());
        let _ = crate::ffi::catch(|| Err(crate::Error::invalid("not-logged-8")));
        let logged_after = RECEIVED
            .lock()
            .unwrap()
            .iter()
            .any(|(_, _, text)| text.contains("not-logged-8"));
        assert!(!logged_after);
    }
}
