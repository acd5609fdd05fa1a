//! The paper's equivariant RBF kernel field (DESIGN.md §1), the first field family.
//!
//! `v_i(x, t) = Σ_{j≠i} φ(d_ij, t)·r_ij` with `r_ij = x_i − x_j`, `d_ij = sqrt(|r_ij|² + ε_d)`:
//! a sum of radial pair forces, hence equivariant under permutations, rotations, reflections and
//! translations, with `Σ_i v_i = 0` (the centre of mass is conserved). Its divergence and its
//! Jacobian are computed in closed form from `φ` and `∂φ/∂d`, the exact derivatives of the
//! field as implemented (ε_d and the underflow rule of [`crate::field::exp`] included); the
//! reverse pass ([`KernelField::vjp_into`], [`vjp`]) differentiates one evaluation with respect
//! to x and the parameters. Fixed-grid flows integrate per-time tables of φ
//! ([`TabulatedField`]).

mod bound;
mod family;
mod jacobian_vjp;
mod kernel_field;
mod kernels;
pub mod limits;
mod local;
mod pairs;
mod params;
mod radial;
mod table;
pub mod vjp;

pub use family::KernelAdjoint;
pub use kernel_field::KernelField;
pub use kernels::{KernelConfig, MAX_DIST_KERNELS, MAX_TIME_KERNELS};
pub use pairs::EPS_D;
pub use params::ParamLayout;
pub use radial::TimeSlice;
pub use table::TabulatedField;
pub use vjp::{TimePoint, VjpScratch};
