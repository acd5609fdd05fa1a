//! The temporaries of writes in progress, so that a process stopped by a signal can remove
//! them.
//!
//! Every file is written to a temporary beside its target and renamed over it when complete
//! ([`super::write_atomically`]), so an interrupted write never leaves a half-written target.
//! But a process killed mid-write (Ctrl-C during a large `eqflow mcmc`) used to leave the
//! temporary itself behind, under a name no later run reuses. Each temporary is therefore
//! registered here while it exists ([`Unfinished`]), and [`remove_unfinished`] deletes those
//! that are still there: the command line calls it from its Ctrl-C/SIGTERM handler. The
//! library installs no signal handler itself (a host's signals are its own); a host that
//! wants the same can call [`remove_unfinished`] from its own.

use std::path::PathBuf;
use std::sync::Mutex;

/// The registered temporaries, in creation order.
static UNFINISHED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The registered list, also after a panic while it was held (it is a plain list of paths,
/// never left half-updated).
fn list() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    UNFINISHED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A temporary file registered for [`remove_unfinished`] from its creation until this guard is
/// dropped, which the writer does once the file has been renamed over its target or removed.
#[derive(Debug)]
pub struct Unfinished {
    path: PathBuf,
}

impl Unfinished {
    /// Registers `path`, a temporary this process has just created.
    #[must_use]
    pub fn register(path: PathBuf) -> Unfinished {
        list().push(path.clone());
        Unfinished { path }
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

/// Removes every registered temporary that still exists and returns how many were removed.
/// For a signal handler that runs on an ordinary thread (as the `ctrlc` crate's does), just
/// before the process exits: a write in progress then fails, and its target stays as it was.
pub fn remove_unfinished() -> usize {
    let list = list();
    list.iter()
        .filter(|path| std::fs::remove_file(path).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_temporaries_are_removed_until_their_guard_is_dropped() {
        let dir = std::env::temp_dir().join(format!("eqflow-unfinished-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join(".a.tmp"), dir.join(".b.tmp"));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        let guard_a = Unfinished::register(a.clone());
        let guard_b = Unfinished::register(b.clone());
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
}
