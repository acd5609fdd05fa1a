//! The coordination-modulated kernel field (`"coordkernel"`): the paper's pair structure
//! `v_i = Σ_j φ_ij r_ij`, with the pair coefficient depending on both particles' coordination
//! numbers as well as on their distance and the flow time:
//!
//! ```text
//! h_i^a  = (1/(N−1)) Σ_{l≠i} c_a(d_il)                        (A Gaussian coordination shells)
//! φ_ij   = Σ_q e_q(h_i, h_j) Σ_k B_k(d_ij) Σ_r V_qkr τ_r(t)
//! e      = (1, h_i + h_j, h_i ⊙ h_j)                          (Q = 1 + 2A pair features)
//! ```
//!
//! with fixed Gaussian bases `B_k` (distance), `c_a` (shells) and normalised `τ_r` (time).
//! φ_ij = φ_ji, so `Σ_i v_i = 0` (the centre of mass is conserved) without a projection;
//! distances make it rotation/reflection/translation invariant, sums over particles permutation
//! equivariant. Many-body: a particle's pair coefficients see how crowded both ends are (the
//! centre of a cluster against its surface), which a pair potential's gradient cannot.
//!
//! It is **linear in its parameters** V, with closed-form velocity, divergence, dense Jacobian
//! (`eval.rs`), the reverse pass of both velocity and divergence (`vjp.rs`) and of the velocity
//! and the whole Jacobian (`jacobian_vjp.rs`), the two sharing one chain (`reverse_chain.rs`):
//! it trains by maximum likelihood (of the
//! continuous-mode or the exact-discrete density), KL and flow matching. Its Lipschitz bound
//! is a closed form of V.

// The loops index several parallel arrays (per particle, per pair, per shell) by the same
// index; iterator zips of four slices read worse than the index.
#![allow(clippy::needless_range_loop)]

mod config;
mod coordkernel_field;
mod eval;
mod family;
mod grid;
mod jacobian_vjp;
mod reverse_chain;
mod table;
mod vjp;

pub use config::{CoordKernelConfig, MAX_BASIS};
pub use coordkernel_field::{CoordKernelField, CoordKernelTimePoint, MAX_COORDKERNEL_PARTICLES};
pub use eval::CoordKernelScratch;
