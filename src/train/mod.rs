//! Training the flow: losses, their exact gradients by a hand-written reverse pass, AdamW, the λ
//! schedule and the training loop.
//!
//! # Losses (nats per configuration)
//!
//! * **Maximum likelihood**, per data configuration x (its centre of mass removed first):
//!   `L_ML(x) = −log q(x) = −log ρ(z) − ℓ`, where `z` and `ℓ = log|det ∂z/∂x|` come from
//!   integrating the augmented state (x, ℓ), `dℓ/dt = div v`, *backwards* from t = 1 to t = 0
//!   with continuous-mode RK4. This is exactly what [`crate::Flow::log_density_into`] computes
//!   with a continuous-mode RK4 [`crate::integrate::Integrator`] of the same step count,
//!   and its batch value is the mean.
//! * **Reverse KL**, per prior sample z ([`crate::prior::Prior::sample_into`] with the stream
//!   [`crate::flow::sample_rng`]`(seed, index)`): `L_KL(z) = u(F(z)) − log|det ∂F/∂z|
//!   = U(x)/kT − ℓ_forward`, x = F(z) by forward RK4. It differs from `−log w(x) = u(x) + log q(x)`
//!   by `−log ρ(z)`, which does not depend on the parameters; its expectation is
//!   `KL(q‖p) − log Z + H(ρ)`.
//! * **Mixed**: `λ·L_ML + (1 − λ)·L_KL` with λ from a [`LambdaSchedule`] (per epoch).
//!
//! # Gradients: discretize-then-optimize
//!
//! The gradient is that of the *discrete* map the losses evaluate — the fixed-grid RK4 steps of
//! the augmented state — not of the ODE (no adjoint ODE is integrated backwards, so gradients
//! are exact to round-off for the loss that is reported; the paper found this faster and more
//! robust than optimize-then-discretize). [`Rk4Tape`] records each step's start state and stage
//! points and propagates adjoints back through the four stages of every step, using the
//! field's vector–Jacobian product [`crate::field::KernelField::vjp_into`], which differentiates
//! all five parameter blocks (W, b, s and both log inverse bandwidths).
//!
//! # Sign conventions
//!
//! * Losses are minimised; gradients are `+∂L/∂θ` in the flat layout of
//!   [`crate::field::ParamLayout`]; the optimiser steps against them.
//! * ℓ is the log-determinant of the map that was integrated: `log|det ∂z/∂x|` for the ML
//!   direction (t: 1 → 0), `log|det ∂x/∂z|` for KL (t: 0 → 1).
//! * Energy gradients are `+∂U/∂x` ([`crate::Energy::energy_gradient_into`]); `u = U/kT`.
//!
//! # Non-finite energies
//!
//! A KL sample whose energy is not finite — `U = +∞` when the flow puts two Lennard-Jones
//! particles on top of each other — is **an error**, not clamped: its KL gradient does not exist,
//! and a clamp would silently bias training. The error names the sample (seed and stream index),
//! and the trainer stops with the flow unchanged.
//!
//! # Determinism and speed
//!
//! Batches run in parallel over samples (rayon); each sample is computed sequentially with its
//! own buffers and per-sample gradients are reduced in index order, so results are bit-identical
//! for any number of threads. Nothing allocates per pair or per step: tapes and kernel buffers
//! are sized once per thread.
//!
//! # Energies of the KL term: parallel or serial
//!
//! A KL batch runs in three phases: the forward integrations of all latents in parallel, each
//! keeping its RK4 trajectory ([`Rk4Tape::trajectory`]); the energies and gradients of the whole
//! batch; the reverse passes in parallel ([`Rk4Tape::restore`]). A thread-safe
//! [`crate::Energy`] ([`Trainer::with_energy`]) is evaluated in parallel; a
//! [`crate::energy::SerialEnergy`] ([`Trainer::with_serial_energy`], a host callback that is not
//! thread-safe) sample by sample on the thread that called the loss or the trainer, never
//! concurrently, stopping at its first error. Every sample does the arithmetic of [`kl_sample`]
//! either way, so the two give bit-identical results. The cost is memory: the trajectories of
//! one KL batch, `n_kl_samples·4·n_rk4_steps·N·D` numbers.

mod adamw;
pub mod adjoint;
pub mod assignment;
pub mod discrete_ml;
mod flow_matching;
mod losses;
pub mod pairing;
pub(crate) mod pool;
mod probe;
#[cfg(test)]
mod refused_memory_tests;
mod schedule;
pub mod tape;
mod trainer;

pub use adamw::{AdamW, AdamWConfig};
pub use losses::{KlTarget, LossWorkspace, Losses, flow_matching_sample, kl_sample, ml_sample};
pub use probe::Probe;
pub use schedule::LambdaSchedule;
pub use tape::Rk4Tape;
pub use trainer::{
    EpochReport, LrSchedule, Objective, Pairing, TrainConfig, TrainSummary, Trainer,
};
