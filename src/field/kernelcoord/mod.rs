//! The kernel field with a coordination correction (`"kernelcoord"`): the paper's pair field
//! plus a coordkernel field,
//!
//! ```text
//! v_i = Σ_j φ(d_ij, t) r_ij  +  Σ_j φ^c_ij(d_ij, h_i, h_j, t) r_ij
//! ```
//!
//! with the paper's trained-bandwidth RBF kernels in the first term (`super::kernel`) and the
//! coordination-modulated coefficients of `super::coordkernel` in the second. The correction
//! starts at zero, so an untrained field *is* the paper's field and training by maximum
//! likelihood starts from wherever the paper's field would and only adds what a pair
//! potential's gradient cannot express: how crowded both ends of a pair are.
//!
//! Everything is the sum of the two parts: velocity, divergence, Jacobian, the reverse passes
//! (each part adds into the shared position cotangent and fills its own parameter block) and
//! the Lipschitz bound (a sum of Lipschitz constants bounds the sum's). Both parts are tested
//! on their own (`tests/field.rs`, `tests/coordkernel.rs`); `tests/kernelcoord.rs` tests the sum.

mod family;
mod kernelcoord_field;

pub use kernelcoord_field::{KernelCoordConfig, KernelCoordField, KernelCoordScratch};
