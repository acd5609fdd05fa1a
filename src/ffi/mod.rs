//! The C ABI (`include/eqflow.h`, generated from this module by cbindgen).
//!
//! This is the only module of the crate that contains `unsafe` code. Its shape follows
//! metatensor-core: every exported function runs its body inside `catch`, which
//!
//! * catches panics (a panic must never unwind into C, and the host must never be aborted), turning
//!   them into [`Error::Internal`];
//! * turns a [`crate::Error`] into its `int32_t` status (`status::status_of`, mirrored by the
//!   `EQF_ERR_*` constants of `status`);
//! * stores the message in a thread-local, read back by `eqf_last_error_message`.
//!
//! Conventions shared by every function, stated once here and in the header's doc comments:
//!
//! * counts are `int64_t`; negative counts and counts whose arrays would exceed
//!   [`EQF_MAX_ELEMENTS`] elements are rejected with `EQF_ERR_INVALID_ARGUMENT`;
//! * a NULL handle or array is rejected with `EQF_ERR_NULL_POINTER`, with a message naming the
//!   argument; when a count is 0 the arrays it sizes are never touched and may be NULL;
//! * results are computed into temporaries and copied into the caller's buffers only on success,
//!   so a failed call writes nothing (and `*out` of a constructor is only written on success);
//! * two outputs of one call that share memory (and an output sharing memory with an input the
//!   function documents as distinct) are refused by `check_disjoint` before any work: the
//!   second result written would overwrite the first and be reported with `EQF_OK`.

#![warn(clippy::undocumented_unsafe_blocks)]

// Declaration order is the order of the header: basics first.
mod callback_error;
mod energy;
mod flow;
mod flow_move;
mod integrator;
// After `integrator`, whose EQF_METHOD_* and EQF_DENSITY_* constants its setter takes.
mod flow_options;
mod log;
mod model;
mod panic_hook;
mod status;
mod threads;
mod train;
mod version;
mod weights;

pub use status::*;

#[cfg(test)]
mod allocation_tests;
#[cfg(test)]
mod test_handles;

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::{Error, Result};

/// Largest number of elements (doubles) that any array passed through the C API may have:
/// 2^40, i.e. 8 TiB of doubles. Counts beyond it are rejected with `EQF_ERR_INVALID_ARGUMENT`
/// before any memory is touched; they are almost always an uninitialised or corrupted count.
// Written out (not `1 << 40`, which cbindgen would copy into C, where it overflows `int`).
pub const EQF_MAX_ELEMENTS: i64 = 1_099_511_627_776;

/// Largest memory one workspace of the exact-discrete density (the default mode) may take: 4 GiB
/// (`40·(N·D)²` bytes for five dense `N·D × N·D` matrices, so N·D ≤ 10,362). One workspace is
/// used per thread that samples, evaluates densities or runs a move. Calls that would need more
/// fail with `EQF_ERR_RESOURCE`, with the need and the limit in the message, before allocating;
/// larger systems need the continuous density mode (`eqf_flow_with_integrator`).
pub const EQF_MAX_WORKSPACE_BYTES: i64 = 4_294_967_296;

/// Largest number of particles of a flow or an energy: 1,000,000. Larger counts are rejected
/// with `EQF_ERR_INVALID_ARGUMENT`.
pub const EQF_MAX_PARTICLES: i64 = 1_000_000;

/// Largest number of fixed-grid RK4 steps of a flow (`eqf_flow_with_integrator`, flow options,
/// training options, model files): 100,000. Memory does not grow with the step count outside
/// training: per-time tables are capped at 256 MB per flow, past which the exact field is
/// integrated instead.
pub const EQF_MAX_RK4_STEPS: i64 = 100_000;

/// Largest number of particles of a `coordkernel` or `envpair` flow: 256 (their per-thread pair
/// state is O(N²) and their dense Jacobian costs O(N³)); the `kernel` family takes up to
/// `EQF_MAX_PARTICLES`.
pub const EQF_MAX_MANY_BODY_PARTICLES: i64 = 256;

// The C constants are the library's limits, not copies that could drift.
const _: () = assert!(EQF_MAX_RK4_STEPS as usize == crate::integrate::MAX_RK4_STEPS);
const _: () = assert!(
    EQF_MAX_MANY_BODY_PARTICLES as usize == crate::field::coordkernel::MAX_COORDKERNEL_PARTICLES
        && EQF_MAX_MANY_BODY_PARTICLES as usize == crate::field::envpair::MAX_ENVPAIR_PARTICLES
);

thread_local! {
    /// The message of the last failed call on this thread; empty until a call fails.
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records `message` as this thread's last error, with any NUL byte (which can come from a
/// model file's strings, say) written as `\0`: C reads the message up to its first NUL, so an
/// embedded one would cut off the rest, and the length `eqf_last_error_message` returns would
/// not be the length C sees.
fn set_last_error(message: String) {
    let message = if message.contains('\0') {
        message.replace('\0', "\\0")
    } else {
        message
    };
    // `try_with` fails only while the thread is being torn down; then there is nobody left to
    // read the message, and failing here would abort.
    let _ = LAST_ERROR.try_with(|last| *last.borrow_mut() = message);
}

/// Calls `f` with a copy of this thread's last error message (empty if there is none).
fn with_last_error<T>(f: impl FnOnce(&str) -> T) -> T {
    let mut f = Some(f);
    let result = LAST_ERROR.try_with(|last| (f.take().expect("called once"))(&last.borrow()));
    match result {
        Ok(value) => value,
        Err(_) => (f.take().expect("not called when try_with fails"))(""),
    }
}

/// Turns a panic payload into a message.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Runs the body of an exported function: `Ok` becomes `EQF_OK`, an error its status code, a
/// panic `EQF_ERR_INTERNAL`; the message of a failure is stored for `eqf_last_error_message`.
///
/// `AssertUnwindSafe` is sound here because no state survives a panic: flows and energies are
/// immutable, results go to temporaries that are dropped, caller buffers are written only at the
/// very end of a successful call, and the mutable handles change only in an infallible commit
/// after all fallible work is done (a move's state; a flow trained by `eqf_flow_train`, which
/// trains a copy; training and flow options, whose setters validate a copy).
///
/// Failures are also reported to the log callback (`eqf_set_log_callback`): errors at
/// `EQF_LOG_DEBUG` (the host sees the status anyway), caught panics at `EQF_LOG_ERROR`.
pub(crate) fn catch(f: impl FnOnce() -> Result<()>) -> i32 {
    // Until the failure below is logged: a log callback of a call that read a flow must not
    // train one, whether the flow is still held or not.
    let _frame = flow::CallFrame::enter();
    let error = match panic_hook::quietly(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(Ok(())) => return EQF_OK,
        Ok(Err(error)) => error,
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            Error::Internal {
                what: match panic_hook::take_location() {
                    Some(at) => format!("{message} (at {at})"),
                    None => message,
                },
            }
        }
    };
    let status = status::status_of(&error);
    let message = error.to_string();
    let level = if status == EQF_ERR_INTERNAL {
        log::EQF_LOG_ERROR
    } else {
        log::EQF_LOG_DEBUG
    };
    log::log(level, || {
        format!("call failed with status {status}: {message}")
    });
    set_last_error(message);
    status
}

/// Like [`catch`] for functions that return a value rather than a status: `on_error` is returned
/// (and the message stored) when `f` fails or panics.
pub(crate) fn catch_value<T>(on_error: T, f: impl FnOnce() -> Result<T>) -> T {
    let mut value = None;
    let status = catch(|| {
        value = Some(f()?);
        Ok(())
    });
    match value {
        Some(value) if status == EQF_OK => value,
        _ => on_error,
    }
}

/// Fails with [`Error::NullPointer`] naming `what` if `ptr` is NULL.
pub(crate) fn check_not_null<T>(ptr: *const T, what: &str) -> Result<()> {
    if ptr.is_null() {
        Err(Error::NullPointer {
            what: what.to_owned(),
        })
    } else {
        Ok(())
    }
}

/// Borrows the object behind a handle, failing on NULL.
///
/// # Safety
/// `ptr` must be NULL or point to a live `T` (one returned by the matching `_new` and not yet
/// freed) that nobody mutates for `'a`.
pub(crate) unsafe fn handle<'a, T>(ptr: *const T, what: &str) -> Result<&'a T> {
    check_not_null(ptr, what)?;
    // SAFETY: non-NULL was checked just above; liveness and the absence of mutation are the
    // caller's contract (a handle is used between its `_new` and its `_free`).
    Ok(unsafe { &*ptr })
}

/// The one rule of every options setter: applies `change` to a copy of `settings` and keeps
/// the copy only if `validate` accepts the whole configuration, so that a rejected value leaves
/// the options exactly as they were.
pub(crate) fn update_validated<C: Clone>(
    settings: &mut C,
    validate: impl FnOnce(&C) -> Result<()>,
    change: impl FnOnce(&mut C) -> Result<()>,
) -> Result<()> {
    let mut copy = settings.clone();
    change(&mut copy)?;
    validate(&copy)?;
    *settings = copy;
    Ok(())
}

/// Converts a C count into a `usize`: negative counts and counts above [`EQF_MAX_ELEMENTS`]
/// are [`Error::InvalidArgument`].
pub(crate) fn count(n: i64, what: &str) -> Result<usize> {
    if n < 0 {
        return Err(Error::invalid(format!("{what} = {n} is negative")));
    }
    if n > EQF_MAX_ELEMENTS {
        return Err(Error::invalid(format!(
            "{what} = {n} exceeds EQF_MAX_ELEMENTS = {EQF_MAX_ELEMENTS}"
        )));
    }
    usize::try_from(n).map_err(|_| Error::invalid(format!("{what} = {n} does not fit in size_t")))
}

/// The number of elements of an array of `n` items of `per_item` doubles each, failing with
/// [`Error::InvalidArgument`] when it overflows or exceeds [`EQF_MAX_ELEMENTS`].
pub(crate) fn array_len(n: usize, per_item: usize, what: &str) -> Result<usize> {
    let limit = usize::try_from(EQF_MAX_ELEMENTS).unwrap_or(usize::MAX);
    match n.checked_mul(per_item) {
        Some(len) if len <= limit => Ok(len),
        _ => Err(Error::invalid(format!(
            "{what} would hold {n} x {per_item} elements, more than EQF_MAX_ELEMENTS = \
             {EQF_MAX_ELEMENTS}"
        ))),
    }
}

/// Checks that `ptr` can be read or written as `len` doubles: non-NULL and aligned when
/// `len > 0` (a zero-length array is never touched and may be NULL).
fn check_array(ptr: *const f64, len: usize, what: &str) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    check_not_null(ptr, what)?;
    if !ptr.is_aligned() {
        return Err(Error::invalid(format!("{what} is not aligned for double")));
    }
    Ok(())
}

/// Borrows a caller-owned input array of `len` doubles.
///
/// # Safety
/// When `len > 0` and `ptr` is not NULL, `ptr` must point to `len` initialised doubles that stay
/// valid and unmodified for `'a`.
pub(crate) unsafe fn input_array<'a>(ptr: *const f64, len: usize, what: &str) -> Result<&'a [f64]> {
    check_array(ptr, len, what)?;
    if len == 0 {
        return Ok(&[]);
    }
    // SAFETY: `ptr` is non-NULL and aligned (checked above) and points to `len` doubles that stay
    // valid and unmodified while borrowed (the caller's contract, documented on every function).
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Borrows a caller-owned input array of `len` species indices (`uint32_t`): non-NULL and
/// aligned when `len > 0`.
///
/// # Safety
/// When `len > 0` and `ptr` is not NULL, `ptr` must point to `len` initialised `uint32_t`
/// that stay valid and unmodified for `'a`.
pub(crate) unsafe fn input_indices<'a>(
    ptr: *const u32,
    len: usize,
    what: &str,
) -> Result<&'a [u32]> {
    if len == 0 {
        return Ok(&[]);
    }
    check_not_null(ptr, what)?;
    if !ptr.is_aligned() {
        return Err(Error::invalid(format!(
            "{what} is not aligned for uint32_t"
        )));
    }
    // SAFETY: `ptr` is non-NULL and aligned (checked above) and points to `len` indices that
    // stay valid and unmodified while borrowed (the caller's contract, documented on every
    // function).
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// The species of `n_particles` particles from a caller's index array and species count,
/// validated ([`crate::Species::new`]); `n_particles` must be between `min_particles` (2 for
/// a flow, 1 for an energy: each function's documented range) and `EQF_MAX_PARTICLES`.
///
/// # Safety
/// As [`input_indices`] for `n_particles` indices.
pub(crate) unsafe fn species_from(
    species: *const u32,
    n_particles: i64,
    n_species: i64,
    min_particles: usize,
) -> Result<crate::Species> {
    let n_particles = count(n_particles, "n_particles")?;
    // Before the indices are copied: the copy is as long as the host says.
    if !(min_particles..=crate::geometry::MAX_PARTICLES).contains(&n_particles) {
        return Err(Error::invalid(format!(
            "n_particles = {n_particles} is outside {min_particles}..=EQF_MAX_PARTICLES \
             ({EQF_MAX_PARTICLES})"
        )));
    }
    let n_species = count(n_species, "n_species")?;
    // SAFETY: forwarded contract of this function.
    let indices = unsafe { input_indices(species, n_particles, "species") }?;
    crate::Species::new(n_species, indices.to_vec())
}

/// Checks an output array of `len` doubles before any work is done, so that a NULL output is
/// reported before computing anything.
pub(crate) fn check_output(ptr: *mut f64, len: usize, what: &str) -> Result<()> {
    check_array(ptr, len, what)
}

/// The memory a caller's argument covers, for [`check_disjoint`]: `len` elements of `T` at
/// `ptr` (nothing when `ptr` is NULL or `len` is 0).
#[derive(Clone, Copy)]
pub(crate) struct Region<'a> {
    start: usize,
    bytes: usize,
    what: &'a str,
}

impl<'a> Region<'a> {
    pub(crate) fn of<T>(ptr: *const T, len: usize, what: &'a str) -> Self {
        let bytes = if ptr.is_null() {
            0
        } else {
            len.saturating_mul(size_of::<T>())
        };
        Self {
            start: ptr.addr(),
            bytes,
            what,
        }
    }

    fn overlaps(&self, other: &Region) -> bool {
        self.bytes > 0
            && other.bytes > 0
            && self.start < other.start.saturating_add(other.bytes)
            && other.start < self.start.saturating_add(self.bytes)
    }
}

/// Refuses arguments that share memory where each must have its own: two outputs (the second
/// written would overwrite the first, a wrong number returned with `EQF_OK`), or an output and
/// an input that a function documents as distinct. Checked before any work, so the call
/// fails with nothing written.
pub(crate) fn check_disjoint(regions: &[Region]) -> Result<()> {
    for (i, a) in regions.iter().enumerate() {
        for b in &regions[i + 1..] {
            if a.overlaps(b) {
                return Err(Error::invalid(format!(
                    "{} and {} overlap in memory; they must be separate arrays",
                    a.what, b.what
                )));
            }
        }
    }
    Ok(())
}

/// Copies a finished result into a caller-owned output array that [`check_output`] accepted
/// for `values.len()` doubles.
///
/// # Safety
/// When `values` is not empty, `ptr` must point to `values.len()` writable doubles.
pub(crate) unsafe fn write_output(ptr: *mut f64, values: &[f64]) {
    if values.is_empty() {
        return;
    }
    // SAFETY: `ptr` is non-NULL and aligned (checked by `check_output`) and valid for
    // `values.len()` writes (the caller's contract); `values` is our own temporary, so the two
    // ranges cannot overlap. No reference to the caller's buffer is created, so two output
    // arrays that (wrongly) overlap each other are still not undefined behaviour on our side.
    unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), ptr, values.len()) };
}

/// A zero-filled temporary of `len` doubles. A size beyond what eqflow allows or the system
/// gives becomes [`Error::Resource`] (`EQF_ERR_RESOURCE`) instead of aborting the host.
pub(crate) fn scratch(len: usize, what: &str) -> Result<Vec<f64>> {
    crate::alloc::zeros(Some(len), what)
}

/// Stores a newly created object in `*out`, transferring ownership to the caller.
///
/// # Safety
/// `out` must be non-NULL (checked by the caller with [`check_not_null`] before any work) and
/// valid for one pointer write.
pub(crate) unsafe fn write_handle<T>(out: *mut *mut T, value: T) {
    let ptr = Box::into_raw(Box::new(value));
    // SAFETY: `out` is non-NULL (checked before the object was built) and valid for one write
    // (the caller's contract). Writing is the last step, so `*out` is untouched on failure.
    unsafe { out.write(ptr) };
}

/// Frees an object created by [`write_handle`]; NULL is a no-op.
///
/// # Safety
/// `ptr` must be NULL or a pointer returned through [`write_handle`] that was not freed yet.
pub(crate) unsafe fn free_handle<T>(ptr: *mut T) -> i32 {
    catch(|| {
        if !ptr.is_null() {
            // SAFETY: `ptr` came from `Box::into_raw` in `write_handle` and is freed only once
            // (the caller's contract), so rebuilding the box is sound.
            drop(unsafe { Box::from_raw(ptr) });
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_maps_results_panics_and_messages() {
        assert_eq!(catch(|| Ok(())), EQF_OK);
        let status = catch(|| Err(Error::invalid("n = -1")));
        assert_eq!(status, EQF_ERR_INVALID_ARGUMENT);
        assert_eq!(with_last_error(str::to_owned), "invalid argument: n = -1");
        // A success does not clear the last failure.
        assert_eq!(catch(|| Ok(())), EQF_OK);
        assert_eq!(with_last_error(str::to_owned), "invalid argument: n = -1");

        let status = catch(|| panic!("boom {}", 42));
        assert_eq!(status, EQF_ERR_INTERNAL);
        let message = with_last_error(str::to_owned);
        assert!(message.contains("boom 42"), "{message}");
    }

    #[test]
    fn last_error_is_per_thread() {
        assert_eq!(catch(|| Err(Error::invalid("main thread"))), 2);
        std::thread::spawn(|| {
            assert_eq!(with_last_error(str::to_owned), "");
            assert_eq!(catch(|| Err(Error::invalid("other thread"))), 2);
        })
        .join()
        .unwrap();
        assert_eq!(
            with_last_error(str::to_owned),
            "invalid argument: main thread"
        );
    }

    #[test]
    fn regions_overlap_when_they_share_a_byte() {
        let values = [0.0_f64; 4];
        let p = values.as_ptr();
        let whole = Region::of(p, 4, "whole");
        // Addresses only, never dereferenced.
        let (second, third, end) = (p.wrapping_add(1), p.wrapping_add(2), p.wrapping_add(4));
        assert!(check_disjoint(&[Region::of(p, 2, "a"), Region::of(third, 2, "b")]).is_ok());
        let error =
            check_disjoint(&[Region::of(p, 2, "a"), Region::of(second, 1, "b")]).unwrap_err();
        assert!(error.to_string().contains("a and b overlap"), "{error}");
        // An `i32` at the start of a double, and a double half over the next one.
        assert!(check_disjoint(&[whole, Region::of(p.cast::<i32>(), 1, "flag")]).is_err());
        let halfway = p.cast::<u8>().wrapping_add(4).cast::<f64>();
        assert!(check_disjoint(&[Region::of(p, 1, "a"), Region::of(halfway, 1, "b")]).is_err());
        // Touching is not overlapping; NULL and empty regions overlap nothing.
        assert!(check_disjoint(&[Region::of(p, 4, "a"), Region::of(end, 3, "b")]).is_ok());
        assert!(check_disjoint(&[whole, Region::of(std::ptr::null::<f64>(), 9, "null")]).is_ok());
        assert!(check_disjoint(&[Region::of(p, 4, "a"), Region::of(p, 0, "empty")]).is_ok());
        // Three regions: the pair that overlaps is named.
        let error = check_disjoint(&[
            Region::of(p, 1, "a"),
            Region::of(second, 1, "b"),
            Region::of(second, 2, "c"),
        ])
        .unwrap_err();
        assert!(error.to_string().contains("b and c"), "{error}");
    }

    #[test]
    fn catch_value_returns_fallback_on_failure() {
        assert_eq!(catch_value(-1_i64, || Ok(7)), 7);
        assert_eq!(catch_value(-1_i64, || Err(Error::invalid("x"))), -1);
    }

    #[test]
    fn max_elements_is_two_to_the_forty() {
        assert_eq!(EQF_MAX_ELEMENTS, 1_i64 << 40);
        assert_eq!(
            EQF_MAX_WORKSPACE_BYTES as u64,
            crate::integrate::MAX_WORKSPACE_BYTES
        );
        assert_eq!(EQF_MAX_PARTICLES as usize, crate::geometry::MAX_PARTICLES);
    }

    #[test]
    fn counts_are_validated() {
        assert_eq!(count(0, "n").unwrap(), 0);
        assert_eq!(count(12, "n").unwrap(), 12);
        assert_eq!(
            status_of(&count(-1, "n").unwrap_err()),
            EQF_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            status_of(&count(i64::MAX, "n").unwrap_err()),
            EQF_ERR_INVALID_ARGUMENT
        );
        assert_eq!(count(EQF_MAX_ELEMENTS, "n").unwrap(), 1 << 40);
        assert!(count(EQF_MAX_ELEMENTS + 1, "n").is_err());
        assert_eq!(array_len(3, 8, "x").unwrap(), 24);
        assert!(array_len(1 << 38, 8, "x").is_err());
        assert!(array_len(usize::MAX, 2, "x").is_err());
    }

    #[test]
    fn arrays_are_checked() {
        let values = [1.0, 2.0];
        // SAFETY: a live local array of two doubles.
        let slice = unsafe { input_array(values.as_ptr(), 2, "x") }.unwrap();
        assert_eq!(slice, &values);
        // SAFETY: NULL is rejected before being dereferenced.
        let error = unsafe { input_array(std::ptr::null(), 2, "x") }.unwrap_err();
        assert_eq!(status_of(&error), EQF_ERR_NULL_POINTER);
        assert_eq!(error.to_string(), "null pointer: x");
        // SAFETY: a zero-length array is never dereferenced.
        let empty = unsafe { input_array(std::ptr::null(), 0, "x") }.unwrap();
        assert!(empty.is_empty());
        let misaligned = values.as_ptr().cast::<u8>().wrapping_add(1).cast::<f64>();
        // SAFETY: the misaligned pointer is rejected before being dereferenced.
        let error = unsafe { input_array(misaligned, 1, "x") }.unwrap_err();
        assert_eq!(status_of(&error), EQF_ERR_INVALID_ARGUMENT);
        assert!(check_output(std::ptr::null_mut(), 0, "U").is_ok());
        assert!(check_output(std::ptr::null_mut(), 1, "U").is_err());
    }

    #[test]
    fn handles_round_trip() {
        let mut out: *mut Vec<f64> = std::ptr::null_mut();
        // SAFETY: `out` is a valid local pointer slot.
        unsafe { write_handle(&raw mut out, vec![1.0, 2.0]) };
        assert!(!out.is_null());
        // SAFETY: `out` was just created by `write_handle` and is alive.
        let value = unsafe { handle(out.cast_const(), "v") }.unwrap();
        assert_eq!(value, &vec![1.0, 2.0]);
        // SAFETY: freed exactly once; NULL is a no-op.
        unsafe {
            assert_eq!(free_handle(out), EQF_OK);
            assert_eq!(free_handle(std::ptr::null_mut::<Vec<f64>>()), EQF_OK);
        }
    }

    #[test]
    fn scratch_reports_impossible_allocations() {
        assert_eq!(scratch(3, "x").unwrap(), vec![0.0; 3]);
        let error = scratch(usize::MAX / 8, "x").unwrap_err();
        assert_eq!(status_of(&error), EQF_ERR_RESOURCE);
    }
}
