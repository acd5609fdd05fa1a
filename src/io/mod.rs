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

pub mod model;
pub mod npy;
pub mod xyz;

use std::path::Path;

use crate::error::Error;

pub use npy::{
    ConfigShape, NpyArray, read_array, read_configurations, read_values, write_array,
    write_configurations, write_values,
};
pub use xyz::{XyzTrajectory, read_xyz, write_xyz};

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

/// An I/O failure on `path`, as [`Error::Io`].
fn io_error(path: &Path, action: &str, e: &std::io::Error) -> Error {
    Error::Io {
        what: format!("cannot {action} {}: {e}", path.display()),
    }
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
