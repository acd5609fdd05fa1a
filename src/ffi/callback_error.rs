//! Messages a host callback attaches to its failure (`eqf_set_callback_error`), so that
//! `eqf_last_error_message` can say *why* an energy callback failed, not only that it did.
//!
//! The message lives in a thread-local slot, and every host callback gets a slot of its own
//! ([`run_host_callback`]): the slot of an enclosing callback (one that called an eqflow
//! function that called this callback) is put aside during the call and restored afterwards,
//! so a nested callback can neither wipe the enclosing callback's message nor leave its own in
//! its place. The callback site attaches the message only when the callback failed, so a
//! message set outside a callback, or by a callback that then succeeded, never reaches an
//! error.

use std::cell::RefCell;
use std::ffi::{CStr, c_char};

use super::status::EQF_OK;

/// Longest message kept, in bytes (longer ones are cut at a character boundary).
const MAX_MESSAGE_BYTES: usize = 4096;

thread_local! {
    /// The message of the callback running innermost on this thread.
    static MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Takes this thread's message out of the slot, leaving it empty.
fn take() -> Option<String> {
    MESSAGE.try_with(|m| m.borrow_mut().take()).ok().flatten()
}

/// Puts `message` back into the slot, however the callback's call ended.
struct Restore(Option<String>);

impl Drop for Restore {
    fn drop(&mut self) {
        let enclosing = self.0.take();
        let _ = MESSAGE.try_with(|m| *m.borrow_mut() = enclosing);
    }
}

/// Runs `call`, which invokes one host callback, in a fresh message slot; returns its result
/// and the message the callback set with `eqf_set_callback_error` (`None` if it set none, or
/// an empty or blank one). The enclosing slot is restored afterwards. Attach the message with
/// [`annotate`] only if the callback failed: a successful callback's message is discarded.
pub(crate) fn run_host_callback<T>(call: impl FnOnce() -> T) -> (T, Option<String>) {
    let restore = Restore(take());
    let result = call();
    let own = take();
    drop(restore);
    // An empty message says nothing: no dangling ": ".
    (result, own.filter(|m| !m.trim().is_empty()))
}

/// `what`, followed by the failed callback's `message` if it set one.
pub(crate) fn annotate(what: String, message: Option<String>) -> String {
    match message {
        Some(message) => format!("{what}: {message}"),
        None => what,
    }
}

/// `bytes` as text of at most [`MAX_MESSAGE_BYTES`] bytes that ends on a whole character.
///
/// Cutting the bytes at the limit first could split a character, which the lossy conversion
/// would then turn into a 3-byte replacement character, past the limit. So a prefix a few
/// bytes longer is converted, and the text is cut afterwards at a character boundary. The
/// extra bytes cannot change what is kept: a replacement character is never shorter than the
/// bytes it replaces, so whatever the cut at `MAX + 4` produces starts past `MAX`.
fn bounded(bytes: &[u8]) -> String {
    let prefix = &bytes[..bytes.len().min(MAX_MESSAGE_BYTES + 4)];
    let mut text = String::from_utf8_lossy(prefix).into_owned();
    if text.len() > MAX_MESSAGE_BYTES {
        let end = (0..=MAX_MESSAGE_BYTES)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(end);
    }
    text
}

/// Attaches a message to the failure a host callback is about to report (by returning a
/// non-zero status from an energy or energy-gradient callback). The status of the eqflow call
/// that invoked the callback is then `EQF_ERR_CALLBACK` and `eqf_last_error_message` ends with
/// this text. Call it from inside the callback, on the thread that runs the callback; a
/// message set elsewhere, or by a callback that then returns 0, is discarded. Each callback
/// has its own message: a callback that calls an eqflow function which runs another host
/// callback (a step of another move, a training run with a KL energy callback) keeps the
/// message it set, whatever the inner callback sets. NULL clears the message. The text is
/// copied (at most 4,096 bytes, ending on a whole character; invalid UTF-8 is replaced).
///
/// @param message  NUL-terminated text, or NULL
/// @return EQF_OK
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eqf_set_callback_error(message: *const c_char) -> i32 {
    let text = if message.is_null() {
        None
    } else {
        // SAFETY: `message` is non-NULL and, by this function's contract, NUL-terminated and
        // readable; the borrow ends with the copy below.
        let bytes = unsafe { CStr::from_ptr(message) }.to_bytes();
        Some(bounded(bytes))
    };
    let _ = MESSAGE.try_with(|m| *m.borrow_mut() = text);
    EQF_OK
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets this thread's message, as a host callback does.
    fn set(message: &std::ffi::CStr) {
        // SAFETY: a valid C string.
        assert_eq!(unsafe { eqf_set_callback_error(message.as_ptr()) }, EQF_OK);
    }

    /// What a callback that runs `body` and then fails reports.
    fn failure_of(body: impl FnOnce()) -> String {
        let ((), message) = run_host_callback(body);
        annotate("failed".into(), message)
    }

    #[test]
    fn a_message_is_attached_once_and_then_gone() {
        assert_eq!(
            failure_of(|| set(c"bond 3-4 too short")),
            "failed: bond 3-4 too short"
        );
        assert_eq!(failure_of(|| {}), "failed");
        assert_eq!(
            failure_of(|| {
                set(c"x");
                // SAFETY: NULL is allowed, and clears the message.
                unsafe { eqf_set_callback_error(std::ptr::null()) };
            }),
            "failed"
        );
        // A message set outside a callback is not this callback's.
        set(c"stale, set outside any callback");
        assert_eq!(failure_of(|| {}), "failed");
        // Long messages are cut.
        let long = std::ffi::CString::new("x".repeat(10_000)).unwrap();
        assert_eq!(
            failure_of(|| set(&long)).len(),
            "failed: ".len() + MAX_MESSAGE_BYTES
        );
        // An empty or blank message adds nothing.
        for blank in [c"", c"  "] {
            assert_eq!(failure_of(|| set(blank)), "failed");
        }
    }

    /// Issue F1 of the C-ABI sweep: a callback that called an eqflow function running another
    /// host callback lost its own message (the inner call site cleared the one slot) or got
    /// the inner callback's instead, even when the inner callback had succeeded.
    #[test]
    fn a_nested_callback_keeps_its_message_out_of_the_enclosing_one() {
        // The inner callback succeeds after setting a message: discarded, the outer one kept.
        let ((), outer) = run_host_callback(|| {
            set(c"OUTER");
            let ((), inner) = run_host_callback(|| set(c"INNER"));
            assert_eq!(
                inner.as_deref(),
                Some("INNER"),
                "the inner site sees its own"
            );
        });
        assert_eq!(outer.as_deref(), Some("OUTER"));
        // An inner callback that sets nothing does not clear the outer message either, and an
        // outer message set after the nested call is the one reported.
        let ((), outer) = run_host_callback(|| {
            set(c"OUTER");
            let ((), inner) = run_host_callback(|| {});
            assert_eq!(inner, None);
        });
        assert_eq!(outer.as_deref(), Some("OUTER"));
        let ((), outer) = run_host_callback(|| {
            let ((), _) = run_host_callback(|| set(c"INNER"));
        });
        assert_eq!(outer, None, "the inner message does not leak out");
        // Three levels.
        let ((), outer) = run_host_callback(|| {
            set(c"1");
            let ((), middle) = run_host_callback(|| {
                set(c"2");
                let ((), inner) = run_host_callback(|| set(c"3"));
                assert_eq!(inner.as_deref(), Some("3"));
            });
            assert_eq!(middle.as_deref(), Some("2"));
        });
        assert_eq!(outer.as_deref(), Some("1"));
    }

    /// A message cut at the limit keeps whole characters only: before, the cut split the
    /// 2-byte 'é' that straddles byte 4,096 and the lossy conversion made the half a 3-byte
    /// U+FFFD, 4,098 bytes in all.
    #[test]
    fn a_long_message_is_cut_before_a_split_character() {
        let text = format!("{}éé", "a".repeat(MAX_MESSAGE_BYTES - 1));
        let c_text = std::ffi::CString::new(text).unwrap();
        let ((), kept) = run_host_callback(|| set(&c_text));
        let kept = kept.unwrap();
        // (Lengths and a tail compared, not the 4 kB texts, for a readable failure.)
        assert_eq!(
            kept.len(),
            MAX_MESSAGE_BYTES - 1,
            "ends {:?}",
            &kept[kept.len() - 8..]
        );
        assert!(kept.bytes().all(|b| b == b'a'));
        // Exactly at the limit, a whole 'é' ends the text.
        assert_eq!(
            bounded(format!("{}éé", "a".repeat(MAX_MESSAGE_BYTES - 2)).as_bytes()).len(),
            MAX_MESSAGE_BYTES
        );
        // Invalid bytes near the limit: replaced, and still at most the limit, on a boundary.
        for lead in MAX_MESSAGE_BYTES - 4..=MAX_MESSAGE_BYTES + 2 {
            let mut bytes = vec![b'a'; lead];
            bytes.extend_from_slice(b"\xff\xc3\xa9\xe2\x82tail");
            let kept = bounded(&bytes);
            assert!(kept.len() <= MAX_MESSAGE_BYTES, "{lead}: {}", kept.len());
            assert!(
                kept.len() >= MAX_MESSAGE_BYTES - 3,
                "{lead}: {}",
                kept.len()
            );
        }
    }
}
