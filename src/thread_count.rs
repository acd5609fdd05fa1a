//! How many threads eqflow's pools may have: one rule for the C ABI's pool
//! (`crate::ffi`'s `eqf_set_num_threads`, `EQFLOW_NUM_THREADS`) and the command line's global
//! pool, both of which also honour `RAYON_NUM_THREADS`.
//!
//! A request is capped at [`THREADS_PER_CORE`] threads per core and [`MAX_POOL_THREADS`] in
//! all. Left to rayon, `RAYON_NUM_THREADS=5000` started 5000 threads, which took half a minute
//! and then aborted the process (a thread that cannot start aborts it, which no error handling
//! can catch). Results are bit-identical for any thread count, so the cap changes no number.

use std::num::NonZeroUsize;

/// Threads per core a pool may have at most. More threads than cores only adds switching; a
/// few per core leave room for cores the OS reports conservatively (cgroup quotas).
pub const THREADS_PER_CORE: usize = 4;

/// Absolute ceiling of a pool, whatever the core count.
pub const MAX_POOL_THREADS: usize = 1024;

/// The stack every pool thread reserves: Rust's default for spawned threads (rayon sets none),
/// reported when the system refuses to start the threads.
pub const THREAD_STACK_BYTES: u64 = 2 << 20;

/// rayon's own variable for the size of its pools.
pub const RAYON_ENV_VAR: &str = "RAYON_NUM_THREADS";

/// The cores this process may use (1 if the system cannot tell).
#[must_use]
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// The most threads a pool gets on a machine with `cores` cores:
/// `min(THREADS_PER_CORE · cores, MAX_POOL_THREADS)`, at least 1.
#[must_use]
pub fn thread_cap(cores: usize) -> usize {
    THREADS_PER_CORE
        .saturating_mul(cores)
        .clamp(1, MAX_POOL_THREADS)
}

/// A `RAYON_NUM_THREADS` value as rayon reads it: a positive integer; anything else (0, text,
/// unset) means the default.
#[must_use]
pub fn parse_rayon_threads(value: Option<&str>) -> Option<usize> {
    value
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n >= 1)
}

/// `RAYON_NUM_THREADS` from the environment, parsed by [`parse_rayon_threads`].
#[must_use]
pub fn rayon_env_threads() -> Option<usize> {
    parse_rayon_threads(std::env::var(RAYON_ENV_VAR).ok().as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_capped_at_four_threads_per_core_and_1024() {
        assert_eq!(thread_cap(1), 4);
        assert_eq!(thread_cap(2), 8);
        assert_eq!(thread_cap(256), MAX_POOL_THREADS);
        assert_eq!(thread_cap(usize::MAX), MAX_POOL_THREADS);
        assert_eq!(thread_cap(0), 1);
        // RAYON_NUM_THREADS as rayon reads it: 0 and text mean the default.
        assert_eq!(parse_rayon_threads(Some(" 5000 ")), Some(5000));
        assert_eq!(parse_rayon_threads(Some("0")), None);
        assert_eq!(parse_rayon_threads(Some("many")), None);
        assert_eq!(parse_rayon_threads(None), None);
    }
}
