//! Messages a host callback attaches to its failure (`eqf_set_callback_error`), so that
//! `eqf_last_error_message` can say *why* an energy callback failed, not only that it did.
//!
//! The message lives in a thread-local slot: every callback site clears it just before calling
//! the host and reads it on the same thread right after a failure, so a message set outside a
//! callback, or by a callback that then succeeded, never reaches a later error.

use std::cell::RefCell;
use std::ffi::{CStr, c_char};

use super::status::EQF_OK;

/// Longest message kept, in bytes (longer ones are cut at a character boundary).
const MAX_MESSAGE_BYTES: usize = 4096;

thread_local! {
    static MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Clears this thread's callback message; call just before invoking a host callback.
pub(crate) fn clear() {
    let _ = MESSAGE.try_with(|m| m.borrow_mut().take());
}

/// `what` with the message the callback attached on this thread, if any (and clears it).
pub(crate) fn annotate(what: String) -> String {
    match MESSAGE.try_with(|m| m.borrow_mut().take()).ok().flatten() {
        // An empty message says nothing: no dangling ": ".
        Some(message) if !message.trim().is_empty() => format!("{what}: {message}"),
        _ => what,
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
/// message set elsewhere, or by a callback that then returns 0, is discarded. NULL clears the
/// message. The text is copied (at most 4,096 bytes; invalid UTF-8 is replaced).
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

    #[test]
    fn a_message_is_attached_once_and_then_gone() {
        clear();
        let msg = c"bond 3-4 too short";
        // SAFETY: a valid C string.
        assert_eq!(unsafe { eqf_set_callback_error(msg.as_ptr()) }, EQF_OK);
        assert_eq!(annotate("failed".into()), "failed: bond 3-4 too short");
        assert_eq!(annotate("failed".into()), "failed");
        // SAFETY: NULL is allowed.
        assert_eq!(unsafe { eqf_set_callback_error(std::ptr::null()) }, EQF_OK);
        assert_eq!(annotate("failed".into()), "failed");
        // A message set before the callback site clears it is discarded.
        // SAFETY: a valid C string.
        unsafe { eqf_set_callback_error(msg.as_ptr()) };
        clear();
        assert_eq!(annotate("failed".into()), "failed");
        // Long messages are cut.
        let long = std::ffi::CString::new("x".repeat(10_000)).unwrap();
        // SAFETY: a valid C string.
        unsafe { eqf_set_callback_error(long.as_ptr()) };
        assert_eq!(annotate(String::new()).len(), 2 + MAX_MESSAGE_BYTES);
        // An empty or blank message adds nothing.
        for blank in [c"", c"  "] {
            // SAFETY: a valid C string.
            unsafe { eqf_set_callback_error(blank.as_ptr()) };
            assert_eq!(annotate("failed".into()), "failed");
        }
    }

    /// A message cut at the limit keeps whole characters only: before, the cut split the
    /// 2-byte 'é' that straddles byte 4,096 and the lossy conversion made the half a 3-byte
    /// U+FFFD, 4,098 bytes in all.
    #[test]
    fn a_long_message_is_cut_before_a_split_character() {
        let text = format!("{}éé", "a".repeat(MAX_MESSAGE_BYTES - 1));
        let c_text = std::ffi::CString::new(text).unwrap();
        clear();
        // SAFETY: a valid C string.
        unsafe { eqf_set_callback_error(c_text.as_ptr()) };
        let kept = annotate(String::new());
        let kept = kept.strip_prefix(": ").unwrap();
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
