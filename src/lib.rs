//! eqflow: equivariant kernel normalizing flows as exact Boltzmann-generator Monte Carlo moves.
//!
//! The flow of Köhler, Klein & Noé (ICML 2020) generates whole configurations of N identical
//! particles in D dimensions and knows the exact density of what it generates, so a host
//! simulation can use it inside a Metropolis step with exact log importance weights.
//!
//! # Conventions
//!
//! * **Layout.** A configuration `x` ∈ R^(N·D) is particle-major, `x[i*D + k]` (C
//!   `double x[N][D]`, Fortran `x(D, N)`, the same bytes). A batch adds the slowest index.
//! * **Units.** Lengths are the host's; energies `U` are in the host's energy units and the
//!   reduced energy is `u = U/kT` (β = 1/kT). Gradients are `+∂U/∂x` and are called
//!   `gradient`, never "force".
//! * **Logs.** Log-space quantities are named `log_*` and use natural logarithms. Every
//!   `log q` includes the normalising constant of the prior.
//!
//! # The mathematics
//!
//! **Prior** ([`prior`]): an isotropic Gaussian on the centre-of-mass-free subspace U of
//! dimension (N−1)·D, `log ρ(z) = −|z|²/(2σ²) − ((N−1)D/2)·log(2πσ²)`.
//!
//! **Field** ([`field`]): any registered field family ([`field::Field`]); each is translation
//! invariant, conserves the centre of mass, and gives its exact divergence, Jacobian, reverse
//! pass and a global Lipschitz bound; each but the non-equivariant `dense` baseline
//! ([`field::dense`]) is equivariant. The paper's kernel family ([`field::kernel`]):
//! with `r_ij = x_i − x_j` and `d_ij = sqrt(|r_ij|² + ε_d)`, ε_d = 1e−6,
//! `v_i(x, t) = Σ_{j≠i} φ(d_ij, t)·r_ij`, `φ(d, t) = Σ_r τ_r(t)·[Σ_k (ρ_k(d) + s_k²)·W_kr + b_r]`,
//! where `ρ_k` and `τ_r` are normalised Gaussian RBFs in distance and time. The field is
//! equivariant under permutations, rotations, reflections and translations, and conserves the
//! centre of mass. Its divergence is exact and closed-form,
//! `div v = Σ_i Σ_{j≠i} [D·φ(d_ij) + φ'(d_ij)·|r_ij|²/d_ij]`.
//!
//! **Species** ([`species`]): particles may be of several species; the kernel field then has one
//! radial function per unordered species pair, `φ_{s_i s_j}`, and is equivariant under
//! permutations within a species only (one species is exactly the paper's field).
//!
//! **Flow** ([`flow`], [`integrate`]): `dx/dt = v(x, t)` from the prior (t = 0) to the data
//! (t = 1). In the continuous mode `log q(x(1)) = log ρ(z) − ∫₀¹ div v dt`, integrated by RK4 or
//! adaptive Dormand–Prince. In the default **exact-discrete** mode the density is that of the
//! fixed-grid RK4 map itself, `log q(x) = log ρ(z) − Σ_steps log det ∂Φ_h/∂y`, so the density of
//! a proposal and the density evaluated later for the same configuration agree to round-off.
//!
//! **Flows for any system** ([`flow_config`]): family, distance-kernel range, kernel counts,
//! prior σ and integrator as settings, and the range and σ fitted to a host's configurations.
//! A system's preset and a host's range reach every family as one family-neutral request
//! ([`field::Preset`]) that the family turns into its own settings ([`field::Family`]).
//!
//! **Energies** ([`energy`]): the double well and Lennard-Jones cluster benchmark systems, and
//! Lennard-Jones with per-species-pair parameters;
//! systems (energy, kT, units) by name or from a JSON file ([`system`]).
//!
//! **Training** ([`train`]): maximum likelihood, reverse KL and their mix, with exact gradients
//! through the fixed-grid RK4 map (discretize-then-optimize) and AdamW.
//! **Monte Carlo move** ([`flow_move`]): independence Metropolis–Hastings with the flow as
//! proposal, `x' = F(z) + c(x)` accepted with probability `min(1, exp(log w(x') − log w(x)))`,
//! `log w = −U/kT − log q` ([`boltzmann`]).
//! **Free energies** ([`free_energy`]): log Z of the target on the same CoM-free space as
//! `log q`, by bridge sampling between flow and target samples, hence the target's entropy
//! (the floor of the NLL); free-energy differences between states.
//!
//! # Layers
//!
//! Data flows one way (DESIGN.md §3): [`energy`] and [`field`] know nothing of flows; the
//! integrators ([`integrate`]) see a field only as a [`field::VectorField`], never the prior;
//! [`flow`] composes prior, field and integrator; [`train`] (through [`field::TrainableField`])
//! and [`flow_move`] use the flow; [`boltzmann`] holds the Boltzmann rules they share, and
//! [`free_energy`] the estimators built on its log weights; [`minima`] maps configurations
//! to the local minima of an energy (metastable states) and counts the distinct ones;
//! [`io`], [`ffi`] and the CLI only adapt. A new field family is a folder under `src/field/`
//! plus its registration in `src/field/registry.rs`.
//!
//! # Determinism and threads
//!
//! A [`Flow`] is immutable and `Sync`. Batches run in parallel with rayon; sample `i` of a call
//! with seed `s` uses its own random stream, so results are bit-identical for any thread count.

#![deny(unsafe_code)]

pub mod alloc;
pub mod boltzmann;
pub mod energy;
pub mod error;
pub mod field;
pub mod flow;
pub mod flow_config;
pub mod flow_move;
pub mod free_energy;
pub mod geometry;
pub mod integrate;
pub mod io;
pub mod minima;
pub mod prior;
pub mod reference_mcmc;
pub mod rng;
pub mod species;
pub mod system;
pub mod thread_count;
pub mod train;

// The C ABI (`include/eqflow.h`): with `integrate::simd` (one AVX-512 kernel, checked bit for
// bit against its safe twin) the only module allowed to use `unsafe`, which the crate
// attribute above denies everywhere else.
#[allow(unsafe_code)]
pub mod ffi;

pub use energy::{DoubleWell, Energy, LennardJones};
pub use error::{Error, Result};
pub use flow::Flow;
pub use flow_move::FlowMove;
pub use species::Species;
