//! Versions and the last error message.

use std::ffi::{CStr, c_char};
use std::panic::catch_unwind;

use super::with_last_error;

/// The crate version as a C string, built at compile time.
const VERSION: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(version) => version,
        Err(_) => panic!("the crate version contains a NUL byte"),
    };

/// Version of the C ABI described by this header: 1.
///
/// It changes only when an existing function changes its signature or meaning (functions are
/// only ever added within one ABI version). A host can compare it with the value it was
/// compiled against to detect a mismatched shared library.
#[unsafe(no_mangle)]
pub extern "C" fn eqf_abi_version() -> i32 {
    1
}

/// The eqflow library version, e.g. "0.1.0", as a static NUL-terminated string.
///
/// The string is owned by the library and valid for the lifetime of the program: do not free
/// or modify it.
#[unsafe(no_mangle)]
pub extern "C" fn eqf_version() -> *const c_char {
    VERSION.as_ptr()
}

/// Copies the message of the calling thread's last failed eqflow call into `buf`.
///
/// snprintf-style: at most `len - 1` bytes of the message are copied, followed by a NUL byte
/// (nothing is written when `len` is 0, and `buf` may then be NULL). The return value is the
/// full length of the message in bytes, excluding the NUL, so a return value `>= len` means the
/// message was truncated; call again with a buffer of at least `return value + 1` bytes to get
/// all of it.
///
/// The message is empty (return value 0) if no call has failed on this thread. Messages are
/// kept per thread and are not cleared by successful calls: read the message right after a
/// call returned a status other than `EQF_OK`. Never fails.
///
/// @param buf  caller-owned buffer of `len` bytes, or NULL when `len` is 0
/// @param len  size of `buf` in bytes, including room for the terminating NUL
/// @return     length of the full message in bytes, excluding the terminating NUL
#[unsafe(no_mangle)]
pub extern "C" fn eqf_last_error_message(buf: *mut c_char, len: usize) -> usize {
    let copy = |message: &str| {
        let bytes = message.as_bytes();
        if len > 0 && !buf.is_null() {
            let n_copy = bytes.len().min(len - 1);
            // SAFETY: `buf` is non-NULL and, by this function's contract, valid for `len` byte
            // writes; we write `n_copy + 1 <= len` bytes. The message is our own thread-local
            // string, so the ranges cannot overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buf, n_copy);
                buf.add(n_copy).write(0);
            }
        }
        bytes.len()
    };
    // Nothing here should panic; if it ever did, unwinding into C would abort the host.
    catch_unwind(|| with_last_error(copy)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use crate::ffi::catch;

    #[test]
    fn abi_and_crate_versions() {
        assert_eq!(eqf_abi_version(), 1);
        // SAFETY: `eqf_version` returns a static NUL-terminated string.
        let version = unsafe { CStr::from_ptr(eqf_version()) };
        assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }

    /// A NUL inside a message (a model file's family name "kernel\u0000x", say) would end the
    /// C string there: it is shown as `\0`, and the length returned is the length C reads.
    #[test]
    fn a_nul_inside_a_message_does_not_cut_it_off() {
        let _ = catch(|| Err(Error::invalid("unknown field family 'kernel\0x'")));
        let mut buf = [b'x' as c_char; 128];
        let n = eqf_last_error_message(buf.as_mut_ptr(), buf.len());
        // SAFETY: the function NUL-terminated `buf`.
        let copied = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
        assert_eq!(
            copied,
            "invalid argument: unknown field family 'kernel\\0x'"
        );
        assert_eq!(n, copied.len());
    }

    #[test]
    fn last_error_message_is_snprintf_like() {
        // A fresh thread has no error.
        std::thread::spawn(|| {
            let mut buf = [b'x' as c_char; 4];
            assert_eq!(eqf_last_error_message(buf.as_mut_ptr(), buf.len()), 0);
            assert_eq!(buf[0], 0);
            assert_eq!(buf[1], b'x' as c_char);
            assert_eq!(eqf_last_error_message(std::ptr::null_mut(), 0), 0);
        })
        .join()
        .unwrap();

        let _ = catch(|| Err(Error::invalid("abc")));
        let expected = "invalid argument: abc";
        assert_eq!(
            eqf_last_error_message(std::ptr::null_mut(), 0),
            expected.len()
        );
        // NULL with a non-zero length writes nothing and does not crash.
        assert_eq!(
            eqf_last_error_message(std::ptr::null_mut(), 10),
            expected.len()
        );

        let mut small = [b'x' as c_char; 8];
        assert_eq!(
            eqf_last_error_message(small.as_mut_ptr(), small.len()),
            expected.len()
        );
        // SAFETY: the function NUL-terminated `small`.
        let copied = unsafe { CStr::from_ptr(small.as_ptr()) };
        assert_eq!(copied.to_str().unwrap(), &expected[..7]);

        let mut big = [b'x' as c_char; 64];
        assert_eq!(
            eqf_last_error_message(big.as_mut_ptr(), big.len()),
            expected.len()
        );
        // SAFETY: the function NUL-terminated `big`.
        let copied = unsafe { CStr::from_ptr(big.as_ptr()) };
        assert_eq!(copied.to_str().unwrap(), expected);
        assert_eq!(
            big[expected.len() + 1],
            b'x' as c_char,
            "wrote past the NUL"
        );

        let mut one = [b'x' as c_char; 1];
        assert_eq!(eqf_last_error_message(one.as_mut_ptr(), 1), expected.len());
        assert_eq!(one[0], 0);
    }
}
