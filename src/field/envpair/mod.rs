//! The environment-modulated pair field (`"envpair"`): the paper's pair structure
//! `v_i = Σ_j φ_ij r_ij`, with the pair coefficient a neural network of the pair distance, the
//! flow time and both particles' learned environments.
//!
//! * messages `m_ij = m(g(d_ij), τ(t)) ∈ R^E` (two SiLU layers), symmetric in i and j;
//! * environments `h0_i = mean_j m_ij`, `h_i = h0_i + node(h0_i)` (a residual SiLU layer);
//! * pair coefficient `φ_ij = c(t) + e(d_ij)·ψ(g(d_ij), τ(t), h_i, h_j)` with ψ a two-hidden-
//!   layer SiLU network (asymmetric: φ_ij ≠ φ_ji in general) and the envelope
//!   `e(d) = Σ_k g_k(d)`, which makes far pairs feel only the tail `c(t) = Σ_r τ_r c_r`;
//! * `v_i = Σ_j φ_ij r_ij` minus its mean over particles (the centre of mass is conserved).
//!
//! Invariant features (distances) and the vector `r_ij` make it equivariant under rotations,
//! reflections and translations; sums over particles make it permutation equivariant. Its
//! exact divergence and Jacobian are closed forms of the networks' values and slopes
//! (`eval.rs`); its reverse pass (`vjp.rs`) covers the velocity, so it trains by flow matching.
//! Designed and sized by the measurements in `docs/field_families.md`.

// The networks' loops index several parallel arrays (weights, activations, slopes) by the same
// unit; iterator zips of four slices read worse than the index.
#![allow(clippy::needless_range_loop)]

mod config;
mod envpair_field;
mod eval;
mod family;
mod net;
mod vjp;

pub use config::{Blocks, EnvPairConfig, MAX_WIDTH};
pub use envpair_field::{EnvPairField, EnvPairTimePoint, MAX_ENVPAIR_PARTICLES};
pub use eval::EnvPairScratch;
