//! Which rayon pool runs the parallel sections of training.
//!
//! Training alternates parallel sections (the per-sample work of a batch) with work that stays
//! on the thread that called it: the loop, the progress callback and a
//! [`crate::energy::SerialEnergy`] (a host callback that is not thread-safe). A caller that
//! wants the work in a pool of its own therefore cannot `install` the pool around the run,
//! which would move the loop and the callbacks onto a pool thread. It names the pool for the
//! duration of the run with [`with_pool`] instead, and each parallel section is installed in
//! it by [`parallel`]; without one, the sections use rayon's current pool. The choice is made
//! here only: the losses and the flow-matching pairing call [`parallel`], the trainer knows
//! nothing of pools, and the C API names its pool once around a run.

use std::cell::RefCell;
use std::sync::Arc;

use rayon::ThreadPool;

thread_local! {
    /// The pool named by [`with_pool`] on this thread, if any.
    static POOL: RefCell<Option<Arc<ThreadPool>>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread with `pool` as the pool of the parallel sections that `f` starts
/// (directly or through the trainer and the losses). The previous choice is restored
/// afterwards, also if `f` panics.
pub(crate) fn with_pool<R>(pool: &Arc<ThreadPool>, f: impl FnOnce() -> R) -> R {
    /// Puts back the previous choice when dropped.
    struct Restore(Option<Arc<ThreadPool>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            POOL.with(|slot| *slot.borrow_mut() = previous);
        }
    }
    let _restore = Restore(POOL.with(|slot| slot.replace(Some(Arc::clone(pool)))));
    f()
}

/// Runs the parallel section `f` in the pool named by [`with_pool`] on this thread, or right
/// here, in rayon's current pool.
pub(crate) fn parallel<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match POOL.with(|slot| slot.borrow().clone()) {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_run_in_the_named_pool_and_the_choice_is_restored() {
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(3)
                .build()
                .unwrap(),
        );
        let inner = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap(),
        );
        let outside = parallel(rayon::current_num_threads);
        let caller = std::thread::current().id();
        let (threads, nested, after_nested, on_caller) = with_pool(&pool, || {
            let threads = parallel(rayon::current_num_threads);
            let nested = with_pool(&inner, || parallel(rayon::current_num_threads));
            let after_nested = parallel(rayon::current_num_threads);
            (
                threads,
                nested,
                after_nested,
                std::thread::current().id() == caller,
            )
        });
        assert_eq!((threads, nested, after_nested), (3, 2, 3));
        assert!(
            on_caller,
            "with_pool moved the caller's work to another thread"
        );
        assert_eq!(parallel(rayon::current_num_threads), outside);
    }
}
