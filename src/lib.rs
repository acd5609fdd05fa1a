//! eqflow: equivariant kernel normalizing flows as exact Boltzmann-generator Monte Carlo moves.
//!
//! (Crate documentation is written in full once the modules exist.)

#![deny(unsafe_code)]

pub mod energy;
pub mod error;
pub mod field;
pub mod flow;
pub mod geometry;
pub mod integrate;
pub mod prior;

// The C ABI (`include/eqflow.h`): the only module allowed to use `unsafe`, which the crate
// attribute above denies everywhere else.
#[allow(unsafe_code)]
pub mod ffi;

pub use energy::{DoubleWell, Energy, LennardJones};
pub use error::{Error, Result};
pub use flow::Flow;
