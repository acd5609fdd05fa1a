//! The dense baseline field (`"dense"`): a fully connected tanh network of the flattened
//! coordinates and the flow time, the **non-equivariant** baseline of the paper's §7.3–7.4
//! (Köhler, Klein & Noé 2020, Fig. 5 and 6: "a simple fully-connected neural network"):
//!
//! ```text
//! a = W1 (P x)/ℓ + W_b1 τ(t)            H hidden units, one tanh layer
//! v = P (W2 tanh(a) + W_b2 τ(t))        linear output, CoM component removed
//! ```
//!
//! with `x` the N·D coordinates flattened particle-major, `P` the projection onto the
//! centre-of-mass-free subspace (`(P y)_i = y_i − mean_j y_j`, per axis), ℓ a fixed length
//! scale and `τ(t)` R normalised time Gaussians (time-dependent biases). Parameters:
//! `2·H·N·D + H·R + N·D·R` (1,456 for the DW-4 preset).
//!
//! **What it preserves and what it does not.** Input `P x` makes it translation invariant;
//! the output projection makes `Σ_i v_i = 0`, so the centre of mass is conserved and the flow
//! stays in the subspace the prior lives on, and the full-space trace of its Jacobian is the
//! trace on that subspace (the density convention of every family, DESIGN.md §1). It is **not**
//! equivariant under permutations of identical particles, nor under rotations or
//! reflections, by design: it is the baseline that shows what equivariance buys. The
//! symmetric target density is therefore fitted only as far as the data show its symmetric
//! copies (the paper's "data augmentation" is a choice of training data, not of the field).
//!
//! Divergence, dense Jacobian, the divergence's gradient and the reverse pass of both the
//! velocity and the divergence are closed forms (`eval.rs`, `vjp.rs`), so it trains by
//! maximum likelihood, KL and flow matching, and the exact-discrete density and the Monte Carlo
//! move work as for every family. Its global Lipschitz bound `Σ_h |A_h·| |B_·h|` is a closed
//! form of the weights, with its gradient. `tanh` is the platform's libm `tanh`: bit-identical
//! across threads and runs, not necessarily across machines.

// The loops index the weight matrices, their transposed use and the per-unit buffers by the
// same index; iterator zips over strided columns read worse than the index.
#![allow(clippy::needless_range_loop)]

mod config;
mod dense_field;
mod eval;
mod family;
mod vjp;

pub use config::{DenseConfig, MAX_HIDDEN, MAX_TIME_FEATURES};
pub use dense_field::{DenseField, DenseTimePoint, MAX_DENSE_PARTICLES};
pub use eval::DenseScratch;
