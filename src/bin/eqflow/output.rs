//! Output files of the commands: checked before any expensive work, never an input, and
//! written so that a failure leaves every target as it was.
//!
//! Each library writer is atomic already (a temporary renamed over the target). A command
//! with several outputs (`sample`: the samples, `_log_q.npy` and `_log_w.npy`) stages them
//! ([`Staged`]) and renames them over their targets only once every one is written, undoing
//! the renames already made if a later one fails, so a failed run cannot leave new samples
//! beside an old run's log q. `demo` and `repro`, which write their files one by one as the
//! work goes on, run inside [`all_or_none`]: every output written through [`write_output`]
//! joins one [`Staged`] set that is committed only when the whole run has succeeded.

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use eqflow::io::Unfinished;
use eqflow::{Error, Result};

/// Distinguishes the temporaries of this process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn io_error(what: String) -> Error {
    Error::Io { what }
}

/// Whether two existing paths are one file (the same inode, whatever the spelling, symbolic
/// or hard link).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

/// The folder a file `path` goes into (`.` for a bare name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A new, empty file beside `target` with a name no other file has; its path.
fn create_temporary(target: &Path) -> std::io::Result<PathBuf> {
    let name = target
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let stem: String = name.chars().take(48).collect();
    let pid = std::process::id();
    let extension = target
        .extension()
        .map_or_else(String::new, |e| format!(".{}", e.to_string_lossy()));
    let mut last = None;
    for _ in 0..64 {
        let id = COUNTER.fetch_add(1, Ordering::Relaxed);
        // The target's extension last: a writer that picks its format by the extension
        // (plotters' PNG encoder) writes the temporary as it will the target.
        let tmp = folder_of(target).join(format!(".{stem}.eqflow-out-{pid}-{id}.tmp{extension}"));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(_) => return Ok(tmp),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

/// Checks that `path` (given as `flag`) can take an output before any work is done: it names
/// a file, not a folder nor a special file (a FIFO, a device: eqflow replaces regular files
/// only), in an existing folder where a file can be created, and is none of `inputs` (flag
/// and path of each input of the command; an input that does not exist is skipped).
///
/// # Errors
///
/// [`Error::InvalidArgument`] naming the flag and the path, or [`Error::Io`] when the folder
/// cannot be written.
pub fn check_output(flag: &str, path: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    let shown = path.display();
    let bad = |why: String| Error::InvalidArgument {
        what: format!("{flag} {shown}: {why}"),
    };
    let text = path.as_os_str().to_string_lossy();
    if path.file_name().is_none()
        || text.ends_with('/')
        || text.ends_with(std::path::MAIN_SEPARATOR)
    {
        return Err(bad("not a file name".into()));
    }
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if is_link && std::fs::metadata(path).is_err() {
        // Every writer follows a link to the file it names (as the library's saves do), so a
        // link to nothing cannot be written: said now, not after the work.
        return Err(bad("is a symbolic link whose target does not exist".into()));
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_dir() {
            return Err(bad("is a folder; give a file name".into()));
        }
        if !meta.is_file() {
            return Err(bad(
                "is a special file (a FIFO, socket or device); eqflow writes regular files only"
                    .into(),
            ));
        }
    }
    let folder = folder_of(path);
    match std::fs::metadata(folder) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(bad(format!("{} is not a folder", folder.display()))),
        Err(_) => {
            return Err(bad(format!(
                "the folder {} does not exist",
                folder.display()
            )));
        }
    }
    // The one sure test of writability: create a file there (and remove it).
    let (_registered, probe, ()) = Unfinished::create(|| Ok((create_temporary(path)?, ())))
        .map_err(|e| {
            io_error(format!(
                "{flag} {shown}: cannot create files in the folder {}: {e}",
                folder.display()
            ))
        })?;
    let _ = std::fs::remove_file(probe);
    for (input_flag, input) in inputs {
        if same_file(path, input) {
            return Err(bad(format!(
                "is the same file as {input_flag} {}; eqflow never overwrites an input, \
                 choose another output",
                input.display()
            )));
        }
    }
    Ok(())
}

/// Outputs written to temporaries beside their targets and renamed over them together by
/// [`Staged::commit`]; dropped uncommitted, they remove their temporaries and leave the targets
/// as they were.
pub struct Staged {
    /// (temporary, target) of each output written so far.
    files: Vec<(PathBuf, PathBuf)>,
    /// The temporaries, registered for removal if a signal stops the process
    /// ([`eqflow::io::remove_unfinished`]) until they are renamed or removed.
    unfinished: Vec<Unfinished>,
}

impl Staged {
    pub fn new() -> Self {
        Staged {
            files: Vec::new(),
            unfinished: Vec::new(),
        }
    }

    /// Writes the output for `target` with `write`, which is given the temporary's path.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if no temporary can be created beside `target`; what `write` returns.
    pub fn write(&mut self, target: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        // Through a symbolic link to the file it names, as the library's saves do: renaming
        // over the link itself would replace it by a file and leave its target stale.
        let target = &followed(target)?;
        // Created and registered for a signal handler's removal at once (see `Unfinished`).
        let (registered, tmp, ()) = Unfinished::create(|| Ok((create_temporary(target)?, ())))
            .map_err(|e| io_error(format!("cannot write {}: {e}", target.display())))?;
        // Listed first, so that a failed write removes it too.
        self.files.push((tmp.clone(), target.to_path_buf()));
        self.unfinished.push(registered);
        write(&tmp)
    }

    /// Renames every temporary over its target, in the order written. If a rename fails
    /// halfway, the targets already replaced get their earlier contents back (a target that
    /// did not exist is removed), so the outputs land together or not at all.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the target whose rename failed (every temporary is removed and every
    /// target is as it was), or naming a target whose earlier contents could not be kept aside.
    pub fn commit(mut self) -> Result<()> {
        let files = std::mem::take(&mut self.files);
        // An interrupt (Ctrl-C, SIGTERM) waits for the renames to end: its handler removes the
        // unfinished temporaries and the earlier contents kept aside, which half-way through
        // would leave new and old outputs side by side with nothing to undo them.
        eqflow::io::uninterrupted(|| put_in_place(&files))
    }
}

/// [`Staged::commit`]'s renames, with the earlier contents kept aside to undo them.
fn put_in_place(files: &[(PathBuf, PathBuf)]) -> Result<()> {
    // The earlier contents of each target, kept aside under a second name: a hard link
    // (no copy, the same inode survives the rename), or a copy where links are refused.
    let mut kept: Vec<Option<PathBuf>> = Vec::with_capacity(files.len());
    let mut kept_unfinished = Vec::with_capacity(files.len());
    let mut failure = None;
    for (_, target) in files {
        match keep_aside(target) {
            Ok(Some((registered, backup))) => {
                kept_unfinished.push(registered);
                kept.push(Some(backup));
            }
            Ok(None) => kept.push(None),
            Err(e) => {
                failure = Some(io_error(format!(
                    "cannot write {}: its earlier contents cannot be kept aside: {e}",
                    target.display()
                )));
                break;
            }
        }
    }
    if failure.is_none() {
        for (done, (tmp, target)) in files.iter().enumerate() {
            if let Err(e) = std::fs::rename(tmp, target) {
                // Undo the renames already made, newest first.
                for ((_, earlier), backup) in files[..done].iter().zip(&kept).rev() {
                    let _ = match backup {
                        Some(backup) => std::fs::rename(backup, earlier),
                        None => std::fs::remove_file(earlier),
                    };
                }
                failure = Some(io_error(format!("cannot write {}: {e}", target.display())));
                break;
            }
        }
    }
    for (tmp, _) in files {
        let _ = std::fs::remove_file(tmp);
    }
    for backup in kept.iter().flatten() {
        let _ = std::fs::remove_file(backup);
    }
    failure.map_or(Ok(()), Err)
}

/// `target`, or the file a symbolic link at `target` names (its canonical path).
///
/// # Errors
///
/// [`Error::Io`] for a link whose target does not exist.
fn followed(target: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(target) {
        Ok(meta) if meta.file_type().is_symlink() => std::fs::canonicalize(target).map_err(|e| {
            io_error(format!(
                "cannot write {}: it is a symbolic link whose target does not exist ({e})",
                target.display()
            ))
        }),
        _ => Ok(target.to_path_buf()),
    }
}

/// A second name for what `target` is now, beside it (`None` if nothing is there yet, or a
/// folder, over which the rename itself fails): a hard link to the file (or a copy if the file
/// system refuses links). Targets are never symbolic links here: [`Staged::write`] follows them.
fn keep_aside(target: &Path) -> std::io::Result<Option<(Unfinished, PathBuf)>> {
    match std::fs::metadata(target) {
        Ok(meta) if meta.is_dir() => return Ok(None),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    // Made and registered at once: a signal handler removes it unless the commit did.
    let (registered, backup, ()) = Unfinished::create(|| {
        let backup = create_temporary(target)?;
        std::fs::remove_file(&backup)?;
        let made = std::fs::hard_link(target, &backup)
            .or_else(|_| std::fs::copy(target, &backup).map(|_| ()));
        match made {
            Ok(()) => Ok((backup, ())),
            Err(e) => {
                let _ = std::fs::remove_file(&backup);
                Err(e)
            }
        }
    })?;
    Ok(Some((registered, backup)))
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (tmp, _) in &self.files {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

thread_local! {
    /// The outputs of the [`all_or_none`] run in progress on this thread, if any.
    static RUN: RefCell<Option<Staged>> = const { RefCell::new(None) };
}

/// Runs `work` so that its outputs land together or not at all: every file it writes through
/// [`write_output`] (and so [`write_atomically`] and the plots) is staged, and the whole set is
/// renamed over its targets only when `work` succeeds. A failure, or a signal that stops the
/// process (the temporaries are registered for removal), leaves every target as it was.
///
/// # Errors
///
/// What `work` returns (its staged files are removed), or the commit's [`Error::Io`].
pub fn all_or_none<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    let outer = RUN.with(|run| run.borrow_mut().replace(Staged::new()));
    let result = work();
    let staged = RUN.with(|run| std::mem::replace(&mut *run.borrow_mut(), outer));
    let value = result?;
    if let Some(staged) = staged {
        staged.commit()?;
    }
    Ok(value)
}

/// Writes the output `target` with `write`, which is given a temporary's path: into the
/// [`all_or_none`] run in progress on this thread, or else as a set of one, renamed over
/// `target` at once.
///
/// # Errors
///
/// What [`Staged::write`] and [`Staged::commit`] return.
pub fn write_output(target: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    // Taken out while `write` runs, so that nothing is borrowed across the caller's code.
    match RUN.with(|run| run.borrow_mut().take()) {
        Some(mut staged) => {
            let written = staged.write(target, write);
            RUN.with(|run| *run.borrow_mut() = Some(staged));
            written
        }
        None => {
            let mut staged = Staged::new();
            staged.write(target, write)?;
            staged.commit()
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary beside it, flushed and renamed over it
/// ([`write_output`]). A failure leaves `path` as it was.
///
/// # Errors
///
/// [`Error::Io`] naming `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_output(path, |tmp| {
        let written = (|| {
            let mut file = OpenOptions::new().write(true).truncate(true).open(tmp)?;
            file.write_all(bytes)?;
            file.sync_all()
        })();
        written.map_err(|e| io_error(format!("cannot write {}: {e}", path.display())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("eqflow-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A run's outputs replace the earlier ones together when it succeeds and not at all when
    /// it fails half-way (`demo` and `repro` wrote file by file, so a failure or Ctrl-C left a
    /// new CSV beside an old figure).
    #[test]
    fn an_all_or_none_run_commits_its_outputs_only_when_it_succeeds() {
        let dir = fresh("all_or_none");
        let (a, b) = (dir.join("a.csv"), dir.join("b.png"));
        std::fs::write(&a, "old a").unwrap();
        std::fs::write(&b, "old b").unwrap();
        let failed: Result<()> = all_or_none(|| {
            write_atomically(&a, b"new a")?;
            write_output(&b, |tmp| {
                std::fs::write(tmp, "new b").map_err(|e| io_error(e.to_string()))
            })?;
            Err(io_error("the experiment failed after writing both".into()))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "old a");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "old b");
        assert_eq!(entries(&dir), ["a.csv", "b.png"], "no temporaries left");
        let value = all_or_none(|| {
            write_atomically(&a, b"new a")?;
            // Staged, not yet written.
            assert_eq!(std::fs::read_to_string(&a).unwrap(), "old a");
            Ok(7)
        })
        .unwrap();
        assert_eq!(value, 7);
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "new a");
        // Outside a run, a write lands at once.
        write_atomically(&b, b"newer b").unwrap();
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "newer b");
        assert_eq!(entries(&dir), ["a.csv", "b.png"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn staged_outputs_land_together_or_not_at_all() {
        let dir = fresh("staged");
        let (a, b) = (dir.join("a.csv"), dir.join("b.csv"));
        std::fs::write(&a, "old a").unwrap();
        // The second write fails: the first target keeps its old contents, no temporary stays.
        let mut staged = Staged::new();
        staged
            .write(&a, |tmp| {
                std::fs::write(tmp, "new a").map_err(|e| io_error(e.to_string()))
            })
            .unwrap();
        let failed = staged.write(&b, |_| Err(io_error("disk full".into())));
        assert!(failed.is_err());
        drop(staged);
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "old a");
        assert_eq!(entries(&dir), ["a.csv"]);
        // Both written: both land on commit.
        let mut staged = Staged::new();
        for (path, text) in [(&a, "new a"), (&b, "new b")] {
            staged
                .write(path, |tmp| {
                    std::fs::write(tmp, text).map_err(|e| io_error(e.to_string()))
                })
                .unwrap();
        }
        staged.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "new a");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "new b");
        assert_eq!(entries(&dir), ["a.csv", "b.csv"]);
        // A rename that fails halfway (the second target is a folder): the first target gets
        // its earlier contents back, a target that did not exist is removed again, nothing else
        // stays behind.
        let (c, folder) = (dir.join("c.csv"), dir.join("d.csv"));
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("inside"), "kept").unwrap();
        let mut staged = Staged::new();
        for (path, text) in [(&a, "newer a"), (&c, "new c"), (&folder, "new d")] {
            staged
                .write(path, |tmp| {
                    std::fs::write(tmp, text).map_err(|e| io_error(e.to_string()))
                })
                .unwrap();
        }
        let error = staged.commit().unwrap_err();
        assert!(error.to_string().contains("d.csv"), "{error}");
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "new a");
        assert_eq!(
            std::fs::read_to_string(folder.join("inside")).unwrap(),
            "kept"
        );
        assert_eq!(entries(&dir), ["a.csv", "b.csv", "d.csv"]);
        std::fs::remove_dir_all(&folder).unwrap();
        // A symbolic link as a target is followed: the file it names is replaced (and
        // restored on failure), the link stays a link. A link to nothing is refused.
        #[cfg(unix)]
        {
            let link = dir.join("link.csv");
            std::os::unix::fs::symlink(&b, &link).unwrap();
            write_atomically(&link, b"through the link").unwrap();
            assert_eq!(std::fs::read_link(&link).unwrap(), b);
            assert_eq!(std::fs::read_to_string(&b).unwrap(), "through the link");
            write_atomically(&b, b"new b").unwrap();
            let dangling = dir.join("dangling.csv");
            std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
            let error = write_atomically(&dangling, b"x").unwrap_err().to_string();
            assert!(error.contains("target does not exist"), "{error}");
            let error = check_output("--out", &dangling, &[])
                .unwrap_err()
                .to_string();
            assert!(error.contains("target does not exist"), "{error}");
            std::fs::remove_file(&dangling).unwrap();
            std::fs::create_dir(&folder).unwrap();
            std::fs::write(folder.join("inside"), "kept").unwrap();
            let mut staged = Staged::new();
            for path in [&link, &folder] {
                staged
                    .write(path, |tmp| {
                        std::fs::write(tmp, "x").map_err(|e| io_error(e.to_string()))
                    })
                    .unwrap();
            }
            assert!(staged.commit().is_err());
            assert_eq!(std::fs::read_link(&link).unwrap(), b);
            assert_eq!(std::fs::read_to_string(&b).unwrap(), "new b");
            std::fs::remove_dir_all(&folder).unwrap();
            std::fs::remove_file(&link).unwrap();
        }
        // An atomic write into a missing folder fails and creates nothing.
        assert!(write_atomically(&dir.join("missing").join("c.csv"), b"x").is_err());
        write_atomically(&a, b"third").unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "third");
        assert_eq!(entries(&dir), ["a.csv", "b.csv"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_output_is_never_an_input() {
        let dir = fresh("inputs");
        let data = dir.join("data.npy");
        std::fs::write(&data, "data").unwrap();
        let spelt = dir.join(".").join("data.npy");
        let error = check_output("--out", &spelt, &[("--data", &data)]).unwrap_err();
        assert!(error.to_string().contains("same file as --data"), "{error}");
        check_output("--out", &dir.join("other.npy"), &[("--data", &data)]).unwrap();
        assert_eq!(entries(&dir), ["data.npy"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
