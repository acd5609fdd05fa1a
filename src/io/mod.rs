//! Files: trajectories as NumPy `.npy` arrays ([`npy`]) and extended XYZ ([`xyz`]), and model
//! files ([`model`]).
//!
//! Configurations are particle-major everywhere (`x[i*D + k]`, DESIGN.md §1), in the length
//! units of the system; a batch of `n` configurations is `n·N·D` values, sample-major. In memory
//! everything is `f64`; `.npy` files may store `f32` or `f64` ([`Dtype`]).
//!
//! Every reader validates what it reads and fails with a typed [`crate::Error`] whose message
//! names the file: [`crate::Error::Io`] when the file cannot be opened, read or written,
//! [`crate::Error::Format`] for malformed or truncated contents, [`crate::Error::DimensionMismatch`]
//! for a well-formed array of the wrong shape, [`crate::Error::NonFinite`] for NaN or infinite
//! coordinates. Writers validate their input before creating the file.
//!
//! Only regular files (or symbolic links to them) are read: a FIFO, a device or a directory is
//! refused with [`crate::Error::Io`] before anything is read, and files are opened without
//! blocking, so a path that is swapped for a FIFO between the check and the open cannot hang the
//! caller (`open_regular`).
//!
//! Every writer is atomic and independent of every other save (`write_atomically`): the data
//! go to a temporary file with a name unique to this save (process id and a process-wide
//! counter), created exclusively next to the target, written, flushed to disk and renamed over
//! the target; the folder is then flushed too where the platform allows. A reader therefore sees
//! either the old file or the complete new one, concurrent saves to different paths never share
//! a temporary, and a failed save removes its own temporary and touches nothing else.

pub mod json;
pub mod model;
pub mod npy;
mod unfinished;
pub mod xyz;

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

pub use npy::{
    ConfigShape, NpyArray, read_array, read_configurations, read_values, write_array,
    write_configurations, write_values,
};
pub use unfinished::{Unfinished, remove_unfinished_and_exit, uninterrupted};
pub use xyz::{XyzTrajectory, read_xyz, write_xyz, write_xyz_with_species};

/// Floating-point type of the numbers stored in a file (little-endian IEEE 754).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit float (`'<f4'`): half the size, about 7 significant digits.
    F32,
    /// 64-bit float (`'<f8'`): exact round trip of eqflow's `f64` values.
    F64,
}

impl Dtype {
    /// Bytes per element.
    #[must_use]
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

/// Opens `path` for reading, accepting only a regular file (following symbolic links).
///
/// The type is checked before opening, and the file is opened non-blocking on unix and its type
/// checked again through the open descriptor: opening a FIFO without a writer would otherwise
/// block forever, and a check by path alone races with a path swapped in between. Reads from a
/// regular file never block, so the flag changes nothing for the files accepted here.
///
/// # Errors
///
/// [`Error::Io`] naming the file if it cannot be opened or is not a regular file.
pub(crate) fn open_regular(path: &Path, what: &str) -> Result<File> {
    let not_regular = |kind: &str| Error::Io {
        what: format!(
            "cannot read {what} {}: it is {kind}, not a regular file",
            path.display()
        ),
    };
    let cannot = |e: &std::io::Error| Error::Io {
        what: format!("cannot read {what} {}: {e}", path.display()),
    };
    let kind = |meta: &std::fs::Metadata| {
        let t = meta.file_type();
        if t.is_dir() {
            "a directory"
        } else {
            "a special file (FIFO, socket or device)"
        }
    };
    let meta = std::fs::metadata(path).map_err(|e| cannot(&e))?;
    if !meta.is_file() {
        return Err(not_regular(kind(&meta)));
    }
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| cannot(&e))?;
    let meta = file.metadata().map_err(|e| cannot(&e))?;
    if !meta.is_file() {
        return Err(not_regular(kind(&meta)));
    }
    Ok(file)
}

/// Reads the whole of a text file that must be a regular file (see [`open_regular`]) of at most
/// `limit` bytes: refused before reading when larger, and again if it grows while being read.
/// `what` names the kind of file in messages ("model file", "system file"). A leading UTF-8
/// byte-order mark is dropped.
///
/// # Errors
///
/// [`Error::Io`] for a file that cannot be read or is not a regular file; [`Error::Format`]
/// for one that is not UTF-8; [`Error::Resource`] for a file larger than `limit`, or whose
/// text the system refuses the memory for.
pub(crate) fn read_text_bounded(path: &Path, what: &str, limit: u64) -> Result<String> {
    use std::io::Read;
    let too_large = |need: u64| {
        Error::resource(
            format!("{what} {}", path.display()),
            u128::from(need),
            limit,
        )
    };
    let cannot = |e: std::io::Error| Error::Io {
        what: format!("cannot read {what} {}: {e}", path.display()),
    };
    let file = open_regular(path, what)?;
    let size = file.metadata().map_err(cannot)?.len();
    if size > limit {
        return Err(too_large(size));
    }
    let mut text = String::new();
    // The file's size up front, fallibly: a system that refuses it gets a resource error, not
    // an abort or an I/O error ("out of memory").
    let refused = || {
        Error::resource(
            format!("{what} {} (the system refused the memory)", path.display()),
            u128::from(size),
            limit,
        )
    };
    text.try_reserve_exact(usize::try_from(size).unwrap_or(usize::MAX))
        .map_err(|_| refused())?;
    // `take` bounds a file that grows between the size check and the read.
    file.take(limit.saturating_add(1))
        .read_to_string(&mut text)
        .map_err(|e| match e.kind() {
            // Read, but not text: a malformed file, as a parser would say.
            std::io::ErrorKind::InvalidData => Error::Format {
                what: format!("{what} {}: {e}", path.display()),
            },
            std::io::ErrorKind::OutOfMemory => refused(),
            _ => cannot(e),
        })?;
    if text.len() as u64 > limit {
        return Err(too_large(text.len() as u64));
    }
    // A byte-order mark (Windows editors write one) is no part of the text: JSON parsers refuse
    // it as "expected value at line 1 column 1", which names no cause. Removed in place.
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

/// Distinguishes the temporaries of the saves of this process (with the process id, those of
/// all processes).
static SAVE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How many unique names a save tries before giving up (a name is only taken if a file of that
/// name already exists, for example left over by a crashed process with the same id).
const TEMPORARY_ATTEMPTS: u32 = 64;

/// Creates a new temporary file next to `target` under a name no other save uses, exclusively
/// (`create_new`: an existing file is never opened, let alone truncated).
fn create_temporary(dir: &Path, target_name: &str) -> std::io::Result<(PathBuf, File)> {
    // A short, recognisable prefix of the target's name; the suffix makes it unique.
    let stem: String = target_name.chars().take(48).collect();
    let pid = std::process::id();
    let mut last_error = None;
    for _ in 0..TEMPORARY_ATTEMPTS {
        let id = SAVE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{stem}.eqflow-{pid}-{id}.tmp"));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

/// Writes a file atomically: `write` fills a new temporary file in the target's folder, which is
/// flushed to disk and renamed over `path`; the folder is flushed afterwards where possible.
///
/// On any failure the temporary this call created is removed, and `path` is as it was. Only a
/// regular file or a new name is replaced ([`save_target`]): a `path` that is a folder, a
/// special file or has no file name is refused before anything is created, and a symbolic
/// link is followed to the regular file it names (the link stays a link). An existing file is
/// replaced only if this process could write it (a read-only file is refused, as writing into
/// it would be), and the new file keeps its permissions.
///
/// # Errors
///
/// [`Error::Io`] naming `path` and `what` it was to hold.
pub(crate) fn write_atomically(
    path: &Path,
    what: &str,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let fail = |reason: &dyn std::fmt::Display| Error::Io {
        what: format!("cannot write {what} {}: {reason}", path.display()),
    };
    let (target, replaced) = save_target(path).map_err(|why| fail(&why))?;
    let path = target.as_path();
    // The rename needs only the folder's permission; a file its owner made read-only (or that
    // belongs to someone else) is replaced only if this process could write it. Opening it for
    // writing (without truncating) asks exactly that, before the temporary exists, so that a
    // refusal leaves nothing behind.
    if replaced.is_some()
        && let Err(e) = OpenOptions::new().write(true).open(path)
    {
        return Err(fail(&format_args!(
            "the existing file cannot be written ({e}); it is left as it is"
        )));
    }
    let Some(name) = path.file_name() else {
        return Err(fail(&"the path has no file name"));
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Registered until renamed or removed below: a signal handler may remove it.
    let (_unfinished, tmp, file) =
        Unfinished::create(|| create_temporary(dir, &name.to_string_lossy()))
            .map_err(|e| fail(&e))?;
    let written = (|| {
        if let Some(meta) = &replaced {
            // The new file keeps the old one's permissions: a private (0600) model stays
            // private instead of getting the umask's default.
            file.set_permissions(meta.permissions())?;
        }
        let mut writer = BufWriter::new(&file);
        write(&mut writer)?;
        writer.flush()?;
        drop(writer);
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // Only the temporary this call created; never the target or anything else.
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(&e));
    }
    sync_dir(dir);
    Ok(())
}

/// The file a save to `path` replaces: `path` itself when it is a regular file or does not
/// exist yet, the regular file a symbolic link at `path` names (renaming over the link would
/// replace it by a file and leave its target stale), or why neither: a save renames a new file
/// over its target, which for a FIFO, socket or device (`/dev/null`) would replace the node
/// itself, and for a folder fails.
///
/// With the target, the metadata of the file it replaces (`None` for a new name).
fn save_target(
    path: &Path,
) -> std::result::Result<(std::path::PathBuf, Option<std::fs::Metadata>), &'static str> {
    const SPECIAL: &str =
        "it is a special file (a FIFO, socket or device); eqflow writes regular files only";
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        // A new name (or one that cannot be inspected, which creating the temporary reports).
        return Ok((path.to_path_buf(), None));
    };
    if meta.file_type().is_symlink() {
        let Ok(target) = std::fs::canonicalize(path) else {
            return Err("it is a symbolic link whose target does not exist");
        };
        return match std::fs::metadata(&target) {
            Ok(m) if m.is_file() => Ok((target, Some(m))),
            Ok(m) if m.is_dir() => Err("it is a symbolic link to a directory"),
            _ => Err("it is a symbolic link to a special file; eqflow writes regular files only"),
        };
    }
    if meta.is_dir() {
        Err("it is a directory")
    } else if meta.is_file() {
        Ok((path.to_path_buf(), Some(meta)))
    } else {
        Err(SPECIAL)
    }
}

/// Flushes a folder's entries (the rename) to disk; best effort, as not every platform or file
/// system can open a folder for this.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Prefixes the message of `e` with the file it is about, so that a host juggling several files
/// knows which one is bad.
fn in_file(path: &Path, e: Error) -> Error {
    let name = path.display();
    match e {
        Error::Format { what } => Error::Format {
            what: format!("{name}: {what}"),
        },
        Error::NonFinite { what } => Error::NonFinite {
            what: format!("{name}: {what}"),
        },
        Error::DimensionMismatch {
            what,
            expected,
            found,
        } => Error::DimensionMismatch {
            what: format!("{name}: {what}"),
            expected,
            found,
        },
        Error::InvalidArgument { what } => Error::InvalidArgument {
            what: format!("{name}: {what}"),
        },
        other => other,
    }
}

fn format_error(what: impl Into<String>) -> Error {
    Error::Format { what: what.into() }
}
