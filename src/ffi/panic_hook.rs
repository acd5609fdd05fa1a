//! A panic inside the library stays inside it: the exported call returns
//! `EQF_ERR_INTERNAL` with the panic's message (and where it happened) for
//! `eqf_last_error_message` and the log callback, and nothing reaches the host's stderr.
//!
//! Catching the unwind (`super::catch`) keeps a panic from aborting the host, but Rust's
//! default panic hook would still print the message and a backtrace hint to the host's
//! stderr. So the first exported call installs a hook that stays silent for panics on a
//! thread inside an exported call or on one of eqflow's pool threads (named `eqflow-…`), and
//! hands every other panic (the host's own, if it has Rust code) to the hook it replaced.

use std::cell::Cell;
use std::sync::{Mutex, Once, PoisonError};

thread_local! {
    /// How many exported calls this thread is inside (a host callback may call back in).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Where the last silenced panic happened, `file:line`, until a call reports it.
static LOCATION: Mutex<Option<String>> = Mutex::new(None);

/// Runs `f` as the body of an exported call: a panic inside it prints nothing.
pub(super) fn quietly<T>(f: impl FnOnce() -> T) -> T {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if inside_library() {
                if let Some(at) = info.location() {
                    *LOCATION.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(format!("{}:{}", at.file(), at.line()));
                }
            } else {
                previous(info);
            }
        }));
    });
    /// Leaves the call also when `f` unwinds.
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            let _ = DEPTH.try_with(|d| d.set(d.get().saturating_sub(1)));
        }
    }
    let _ = DEPTH.try_with(|d| d.set(d.get() + 1));
    let _leave = Leave;
    f()
}

/// Whether the panicking thread is running library code for a host call.
fn inside_library() -> bool {
    DEPTH.try_with(|d| d.get() > 0).unwrap_or(false)
        || std::thread::current()
            .name()
            .is_some_and(|name| name.starts_with("eqflow-"))
}

/// Where the last silenced panic happened (`file:line`), if one was not reported yet.
pub(super) fn take_location() -> Option<String> {
    LOCATION
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
}

#[cfg(test)]
mod tests {
    use crate::ffi::status::EQF_ERR_INTERNAL;
    use crate::ffi::{catch, threads, with_last_error};

    /// Run in a child process of this test binary with real stderr (`--nocapture`): panics in
    /// a call and on a pool thread print nothing and are reported with their place; a panic
    /// outside any call still reaches the previous hook.
    #[test]
    fn panics_inside_calls_print_nothing_and_others_still_do() {
        if std::env::var_os("EQFLOW_PANIC_HOOK_CHILD").is_some() {
            assert_eq!(catch(|| panic!("boom in a call")), EQF_ERR_INTERNAL);
            let message = with_last_error(str::to_owned);
            assert!(
                message.contains("boom in a call") && message.contains("panic_hook.rs:"),
                "{message}"
            );
            let in_pool = catch(|| {
                threads::install(|| {
                    rayon::join(|| panic!("boom in the pool"), || ());
                    Ok(())
                })
            });
            assert_eq!(in_pool, EQF_ERR_INTERNAL);
            assert!(std::panic::catch_unwind(|| panic!("boom outside")).is_err());
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "ffi::panic_hook::tests::panics_inside_calls_print_nothing_and_others_still_do",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("EQFLOW_PANIC_HOOK_CHILD", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(
            stdout.contains("1 passed"),
            "the child ran nothing: {stdout}"
        );
        assert!(
            !stderr.contains("boom in a call") && !stderr.contains("boom in the pool"),
            "{stderr}"
        );
        assert!(stderr.contains("boom outside"), "{stderr}");
    }
}
