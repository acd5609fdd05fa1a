//! Fallible allocation of buffers whose size a host or a file decides.
//!
//! Rust aborts the process when an allocation fails, and a library embedded in a simulation code
//! must never abort its host (issue 14). Every buffer whose length follows from a count passed
//! in by a caller therefore goes through this module: the byte need is computed with checked
//! arithmetic, a need above [`MAX_ALLOCATION_BYTES`] is refused before the system is asked, and
//! a refusal by the allocator below it is reported too. Both become [`Error::Resource`] with the
//! need and the limit, and nothing is allocated.
//!
//! What this cannot promise: on a system that overcommits memory (Linux by default) an
//! allocation the kernel grants may still be reclaimed by its out-of-memory killer when the pages
//! are first written. The limit keeps absurd counts (an uninitialised `int64_t`) from getting
//! that far; it does not know how much memory this machine has.

use rayon::iter::{IndexedParallelIterator, ParallelExtend};

use crate::{Error, Result};

/// Largest single buffer eqflow allocates for a caller-decided size: 1 TiB. Anything beyond is an
/// uninitialised or corrupted count on every machine eqflow targets; refusing it by rule makes the
/// failure the same everywhere instead of depending on the system's overcommit policy.
pub const MAX_ALLOCATION_BYTES: u64 = 1 << 40;

/// The bytes of `len` items of `T`, `None` when the product does not even fit a `u128` (it
/// always does for a `usize` length; `None` is kept for lengths that overflowed earlier).
fn bytes_of<T>(len: Option<usize>) -> Option<u128> {
    len.and_then(|n| (n as u128).checked_mul(std::mem::size_of::<T>() as u128))
}

/// Fails with [`Error::Resource`] naming `what` if `need_bytes` (`None`: a size computation that
/// overflowed) is above [`MAX_ALLOCATION_BYTES`].
///
/// For a need spread over many allocations (one trajectory per sample), which no single
/// fallible allocation can guard.
pub(crate) fn check_need(need_bytes: Option<u128>, what: &str) -> Result<()> {
    match need_bytes {
        Some(need) if need <= u128::from(MAX_ALLOCATION_BYTES) => Ok(()),
        need => Err(Error::resource(
            what,
            need.unwrap_or(u128::MAX),
            MAX_ALLOCATION_BYTES,
        )),
    }
}

/// An empty vector with room for `len` items (`None`: a length whose computation overflowed),
/// or [`Error::Resource`] instead of an abort.
pub(crate) fn with_capacity<T>(len: Option<usize>, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    reserve(&mut v, len, what)?;
    Ok(v)
}

/// The items of the indexed parallel iterator `items`, collected into a vector allocated
/// fallibly on the calling thread before any item is made: [`Error::Resource`] instead of the
/// abort of a plain `collect` when the system refuses one result slot per item.
pub(crate) fn collect_indexed<I>(items: I, what: &str) -> Result<Vec<I::Item>>
where
    I: IndexedParallelIterator,
{
    let mut v = with_capacity(Some(items.len()), what)?;
    // The capacity is already there: rayon's `reserve` for an indexed extension is a no-op.
    v.par_extend(items);
    Ok(v)
}

/// A test-only stand-in for a system that refuses memory below [`MAX_ALLOCATION_BYTES`] (Linux
/// refuses a request it judges beyond RAM and swap): sites that allocate infallibly would
/// abort the test process there, so the tests of each site make the refusal happen on demand,
/// for the calling thread only, at sizes any machine has.
#[cfg(test)]
pub(crate) mod test_seam {
    use std::cell::Cell;

    thread_local! {
        static REFUSE_ABOVE: Cell<Option<u128>> = const { Cell::new(None) };
    }

    /// Runs `f` with every fallible allocation of more than `bytes` on this thread refused as
    /// the system would refuse it.
    pub(crate) fn refusing_above<R>(bytes: u128, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<u128>);
        impl Drop for Restore {
            fn drop(&mut self) {
                REFUSE_ABOVE.with(|r| r.set(self.0));
            }
        }
        let _restore = Restore(REFUSE_ABOVE.with(|r| r.replace(Some(bytes))));
        f()
    }

    pub(super) fn system_refuses(need: Option<u128>) -> bool {
        REFUSE_ABOVE
            .with(Cell::get)
            .is_some_and(|limit| need.is_none_or(|n| n > limit))
    }
}

#[cfg(not(test))]
mod test_seam {
    pub(super) fn system_refuses(_need: Option<u128>) -> bool {
        false
    }
}

/// Asks the system for `need_bytes` (`None`: a size computation that overflowed) and gives
/// them back at once, for a need spread over many small allocations (a training grid of time
/// points, a parse): a refusal then comes here as [`Error::Resource`] naming `what`, where it
/// would otherwise come from one of the small ones as an abort.
pub(crate) fn probe(need_bytes: Option<usize>, what: &str) -> Result<()> {
    drop(with_capacity::<u8>(need_bytes, what)?);
    Ok(())
}

/// Held from a [`probe`] to the end of the allocations it stands for ([`probed_build`]).
static PROBED_BUILDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`probe`], then `build` (the many small allocations it stood for), one thread at a time:
/// two threads that probed at once would both pass and then share out memory that only one
/// had been shown (the sweep saw `eqf_flow_train` abort so with two worker threads). For
/// builds that are rare (once per parameter update per thread) and short.
pub(crate) fn probed_build<T>(
    need_bytes: Option<usize>,
    what: &str,
    build: impl FnOnce() -> T,
) -> Result<T> {
    let _one_at_a_time = PROBED_BUILDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    probe(need_bytes, what)?;
    Ok(build())
}

/// Makes room in `v` for `len` items in all (`None`: a length whose computation overflowed), or
/// [`Error::Resource`] instead of an abort; `v` keeps its items either way.
pub(crate) fn reserve<T>(v: &mut Vec<T>, len: Option<usize>, what: &str) -> Result<()> {
    let need = bytes_of::<T>(len);
    check_need(need, what)?;
    // Within the limit, so `len` is `Some`.
    let additional = len.unwrap_or(0).saturating_sub(v.len());
    if test_seam::system_refuses(need) || v.try_reserve_exact(additional).is_err() {
        return Err(Error::resource(
            format!("{what} (the system refused the memory)"),
            need.unwrap_or(u128::MAX),
            MAX_ALLOCATION_BYTES,
        ));
    }
    Ok(())
}

/// `len` copies of `value` (`None`: a length whose computation overflowed), or
/// [`Error::Resource`] instead of an abort.
pub(crate) fn filled<T: Clone>(len: Option<usize>, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = with_capacity(len, what)?;
    v.resize(len.unwrap_or(0), value);
    Ok(v)
}

/// `len` zeros: [`filled`] for the commonest case.
pub(crate) fn zeros(len: Option<usize>, what: &str) -> Result<Vec<f64>> {
    filled(len, 0.0, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need_of(error: &Error) -> u128 {
        match error {
            Error::Resource {
                need_bytes,
                limit_bytes,
                ..
            } => {
                assert_eq!(*limit_bytes, MAX_ALLOCATION_BYTES);
                *need_bytes
            }
            other => panic!("expected a resource error, got {other:?}"),
        }
    }

    #[test]
    fn small_buffers_are_allocated_and_filled() {
        assert_eq!(zeros(Some(3), "x").unwrap(), vec![0.0; 3]);
        assert_eq!(filled(Some(2), 7u32, "x").unwrap(), vec![7, 7]);
        assert!(with_capacity::<f64>(Some(5), "x").unwrap().capacity() >= 5);
        assert!(zeros(Some(0), "x").unwrap().is_empty());
    }

    #[test]
    fn needs_above_the_limit_or_overflowing_are_resource_errors() {
        let error = zeros(Some(usize::MAX / 8), "log q").unwrap_err();
        assert_eq!(need_of(&error), (usize::MAX / 8) as u128 * 8);
        assert!(error.to_string().contains("log q needs"), "{error}");
        assert!(error.to_string().contains("limit is 1099511627776 bytes"));
        // One byte over the limit is refused without asking the system.
        let over = (MAX_ALLOCATION_BYTES / 8 + 1) as usize;
        assert_eq!(
            need_of(&zeros(Some(over), "x").unwrap_err()),
            over as u128 * 8
        );
        // A length whose computation overflowed.
        assert_eq!(need_of(&zeros(None, "x").unwrap_err()), u128::MAX);
        assert_eq!(need_of(&check_need(None, "x").unwrap_err()), u128::MAX);
        assert!(check_need(Some(u128::from(MAX_ALLOCATION_BYTES)), "x").is_ok());
    }
}
