//! The temporaries of writes in progress, so that a process stopped by a signal can remove
//! them.
//!
//! Every file is written to a temporary beside its target and renamed over it when complete
//! ([`super::write_atomically`]), so an interrupted write never leaves a half-written target.
//! But a process killed mid-write (Ctrl-C during a large `eqflow mcmc`) used to leave the
//! temporary itself behind, under a name no later run reuses. Each temporary is therefore
//! created and registered here while it exists ([`Unfinished`]), and
//! [`remove_unfinished_and_exit`] deletes those that are still there: the command line calls
//! it from its Ctrl-C/SIGTERM handler. The library installs no signal handler itself (a host's
//! signals are its own); a host that wants the same can call it from its own.

use std::path::PathBuf;
use std::sync::Mutex;

/// Held while a set of outputs is renamed over its targets ([`uninterrupted`]), and taken by
/// [`remove_unfinished_and_exit`] before anything is removed. Always taken before the
/// registry's lock, never while holding it.
static COMMITTING: Mutex<()> = Mutex::new(());

/// The registered temporaries, in creation order.
static UNFINISHED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The registered list, also after a panic while it was held (it is a plain list of paths,
/// never left half-updated).
fn list() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    UNFINISHED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`COMMITTING`], also after a panic while it was held (it guards no data).
fn committing() -> std::sync::MutexGuard<'static, ()> {
    COMMITTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `commit`, the renames that put a set of finished outputs in place, so that a signal
/// handler's [`remove_unfinished_and_exit`] waits for it to end. Without this an interrupt
/// between two renames removed the rest of the set, and the earlier contents kept aside to
/// undo the renames, leaving new and old outputs side by side; now a late interrupt finds
/// the set complete and exits with it in place.
pub fn uninterrupted<T>(commit: impl FnOnce() -> T) -> T {
    let _commit = committing();
    commit()
}

/// A temporary file registered for [`remove_unfinished_and_exit`] from its creation until this
/// guard is dropped, which the writer does once the file has been renamed over its target or removed.
#[derive(Debug)]
pub struct Unfinished {
    path: PathBuf,
}

impl Unfinished {
    /// Creates a temporary with `create` (which returns its path and whatever else the writer
    /// needs, such as the open file) and registers it, both under the registry's lock: a
    /// signal handler that removes the temporaries ([`remove_unfinished_and_exit`]) runs
    /// either before the file exists or after it is registered, never in between.
    ///
    /// # Errors
    ///
    /// What `create` returns; nothing is registered then.
    pub fn create<T>(
        create: impl FnOnce() -> std::io::Result<(PathBuf, T)>,
    ) -> std::io::Result<(Unfinished, PathBuf, T)> {
        let mut list = list();
        let (path, made) = create()?;
        list.push(path.clone());
        Ok((Unfinished { path: path.clone() }, path, made))
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        let mut list = list();
        if let Some(i) = list.iter().rposition(|p| *p == self.path) {
            list.swap_remove(i);
        }
    }
}

/// Removes every registered temporary that still exists, then exits the process with
/// `code`, holding the registry's lock to the end so that no thread creates a temporary after
/// the removal. For a signal handler that runs on an ordinary thread (as the `ctrlc` crate's
/// does): a write in progress never completes, and its target stays as it was.
pub fn remove_unfinished_and_exit(code: i32) -> ! {
    // Kept to the exit, like the registry: no commit starts after the removal.
    let _commit = committing();
    let list = list();
    remove_all(&list);
    std::process::exit(code)
}

/// Removes the files of `paths` that still exist; how many were removed.
fn remove_all(paths: &[PathBuf]) -> usize {
    paths
        .iter()
        .filter(|path| std::fs::remove_file(path).is_ok())
        .count()
}

/// [`remove_unfinished_and_exit`] without the exit, for tests.
#[cfg(test)]
fn remove_unfinished() -> usize {
    let _commit = committing();
    remove_all(&list())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_temporaries_are_removed_until_their_guard_is_dropped() {
        let dir = std::env::temp_dir().join(format!("eqflow-unfinished-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join(".a.tmp"), dir.join(".b.tmp"));
        let make = |path: &PathBuf| {
            std::fs::write(path, "x")?;
            Ok((path.clone(), ()))
        };
        let (guard_a, _, ()) = Unfinished::create(|| make(&a)).unwrap();
        let (guard_b, _, ()) = Unfinished::create(|| make(&b)).unwrap();
        // A failed creation registers nothing.
        let failed = Unfinished::create::<()>(|| Err(std::io::Error::other("no")));
        assert!(failed.is_err());
        // `b` is finished (renamed or removed by its writer): no longer registered.
        drop(guard_b);
        // Other tests may register temporaries concurrently: count only ours.
        remove_unfinished();
        assert!(!a.exists(), "the unfinished temporary is removed");
        assert!(b.exists(), "a finished one is not touched");
        drop(guard_a);
        std::fs::write(&a, "a again").unwrap();
        remove_unfinished();
        assert!(a.exists(), "a dropped guard no longer names its file");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn removal_waits_for_a_commit_in_progress() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Barrier};
        let started = Arc::new(Barrier::new(2));
        let finished = Arc::new(AtomicBool::new(false));
        let commit = {
            let (started, finished) = (Arc::clone(&started), Arc::clone(&finished));
            std::thread::spawn(move || {
                uninterrupted(|| {
                    started.wait();
                    // Long enough for the removal below to run first if it did not wait.
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    finished.store(true, Ordering::SeqCst);
                });
            })
        };
        started.wait();
        remove_unfinished();
        assert!(
            finished.load(Ordering::SeqCst),
            "the removal ran while a set of outputs was being renamed into place"
        );
        commit.join().unwrap();
    }
}
