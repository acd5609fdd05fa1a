//! eqflow: equivariant kernel normalizing flows as exact Boltzmann-generator Monte Carlo moves.
//!
//! (Crate documentation is written in full once the modules exist.)

pub mod energy;
pub mod error;
pub mod field;
pub mod flow;
pub mod geometry;
pub mod integrate;
pub mod prior;

pub use energy::{DoubleWell, Energy, LennardJones};
pub use error::{Error, Result};
pub use flow::Flow;
