//! Vector fields: the interface integrators see ([`VectorField`]), the interface a field family
//! implements ([`FieldFamily`], [`TrainableField`]), and the registered families ([`Field`]).
//!
//! Every family but the `dense` baseline is equivariant under permutations, rotations/reflections
//! and translations; every family is translation invariant, conserves the centre of mass
//! (`Σ_i v_i = 0`), and gives its *exact* divergence and Jacobian (DESIGN.md §1): no stochastic
//! trace anywhere. One folder per family:
//!
//! | family | folder | what |
//! |---|---|---|
//! | `kernel` | [`kernel`] | the paper's pairwise RBF field `v_i = Σ_j φ(d_ij, t) r_ij`, 620 parameters |
//! | `coordkernel` | [`coordkernel`] | the kernel field's pair coefficient modulated by both particles' coordination numbers, linear in its 864 parameters; trains by ML, KL and flow matching |
//! | `dense` | [`dense`] | the non-equivariant baseline: one tanh hidden layer on the flattened centred coordinates, CoM projected out, 1,456 parameters for DW-4 |
//! | `envpair` | [`envpair`] | pair coefficients from a network of distance, time and both particles' learned environments, ~5,000 parameters; trained by flow matching |
//! | `kernelcoord` | [`kernelcoord`] | the paper's kernel field plus a coordkernel correction that starts at zero, 1,484 parameters; trains by ML, KL and flow matching |

pub mod coordkernel;
pub mod dense;
pub mod envpair;
pub mod exp;
mod family;
pub mod kernel;
pub mod kernelcoord;
mod local;
mod preset;
mod registry;

pub use family::{BoundCotangents, CertificateBounder, FieldFamily, TrainableField};
pub(crate) use family::{no_jacobian_reverse, no_probe_divergence, single_species};
pub use kernel::{
    EPS_D, KernelConfig, KernelField, MAX_DIST_KERNELS, MAX_TIME_KERNELS, ParamLayout,
    TabulatedField, TimeSlice, VjpScratch,
};
pub use local::{BallBounds, LocalBounds};
pub use preset::{Interaction, MAX_DISTANCE, MAX_LENGTH_SCALE, Preset};
pub(crate) use registry::with_family;
pub use registry::{Family, Field, FieldSpec};

/// `n ≥ 2` evenly spaced values from `start` to `stop` (both included), the one formula every
/// RBF preset uses for its centres (bit-for-bit the same centres everywhere).
pub(crate) fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| start + (stop - start) * i as f64 / (n - 1) as f64)
        .collect()
}

/// `r = x_i − x_j` into `r` (particle-major `x`, `dim` axes); returns `(|r|², d)` with the
/// softened distance `d = sqrt(|r|² + ε_d)` every pair family uses.
#[inline(always)]
pub(crate) fn pair_geometry(
    x: &[f64],
    dim: usize,
    i: usize,
    j: usize,
    r: &mut [f64],
) -> (f64, f64) {
    let mut r2 = 0.0;
    for c in 0..dim {
        r[c] = x[i * dim + c] - x[j * dim + c];
        r2 += r[c] * r[c];
    }
    (r2, (r2 + EPS_D).sqrt())
}

/// Grows a per-thread scratch buffer to at least `len` entries (never shrinks: the buffers are
/// reused across evaluations, so after the first call of a size nothing allocates).
pub(crate) fn grow_scratch(v: &mut Vec<f64>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

/// The cotangent of one field evaluation's outputs: `v̄` for `v(x, t)` (length N·D,
/// particle-major like `x`) and `div̄` for `div v(x, t)`.
#[derive(Debug, Clone, Copy)]
pub struct Cotangent<'a> {
    /// `∂L/∂v`, length N·D.
    pub v: &'a [f64],
    /// `∂L/∂(div v)`.
    pub div: f64,
}

/// A time-dependent vector field on R^n with its exact divergence and Jacobian: what an
/// integrator needs. Implementations must be deterministic and allocation-free.
pub trait VectorField: Sync {
    /// Length n of the state vector.
    fn state_len(&self) -> usize;

    /// Writes `v(x, t)` into `v` and returns `div v(x, t)`.
    fn velocity_into(&self, x: &[f64], t: f64, v: &mut [f64]) -> f64;

    /// Writes `v(x, t)` into `v`, the same bits as [`VectorField::velocity_into`], without the
    /// divergence (for iterative solves, which need values only).
    fn velocity_only_into(&self, x: &[f64], t: f64, v: &mut [f64]) {
        self.velocity_into(x, t, v);
    }

    /// Writes `v(x, t)` into `v` and the dense Jacobian `∂v_a/∂x_b` into `jacobian` (row-major,
    /// n × n, entry `a*n + b`) and returns `div v(x, t)` (the Jacobian's trace).
    fn velocity_jacobian_into(&self, x: &[f64], t: f64, v: &mut [f64], jacobian: &mut [f64])
    -> f64;

    /// As [`VectorField::velocity_jacobian_into`], also writing the gradient of the
    /// divergence, `∂(div v)/∂x_b`, into `div_gradient` (length n); the same bits in `v`, the
    /// Jacobian and the returned divergence.
    ///
    /// `None`, with nothing written, if the field does not provide it (the default). The
    /// exact-discrete inverse uses it for a first-order correction of the step log-determinant
    /// (see `integrate::discrete`); without it, that inverse iterates to round-off instead.
    fn velocity_jacobian_divgrad_into(
        &self,
        x: &[f64],
        t: f64,
        v: &mut [f64],
        jacobian: &mut [f64],
        div_gradient: &mut [f64],
    ) -> Option<f64> {
        let _ = (x, t, v, jacobian, div_gradient);
        None
    }

    /// True if the Jacobian written by [`VectorField::velocity_jacobian_into`] is symmetric
    /// bit for bit (v is a gradient field, assembled symmetrically). The exact-discrete inverse
    /// then applies its chord matrix by the faster transposed product. Default: false.
    fn symmetric_jacobian(&self) -> bool {
        false
    }

    /// `Some(D)` if the state is N particles in D dimensions, particle-major, and v is
    /// translation invariant: `v(x + 1⊗c, t) = v(x, t)` for every `c ∈ R^D`, so that the
    /// Jacobian maps every translation to zero (its column blocks sum to zero in each row).
    ///
    /// The exact-discrete forward map then factors its step Jacobians in the quotient by
    /// translations, on (N−1)·D coordinates instead of N·D (see `integrate::discrete`): the
    /// step is the identity on translations, so nothing of its determinant is lost, and the LU
    /// is smaller ((6/8)³ of the work for DW-4). A field that claims it wrongly samples with
    /// a wrong log q: every family's claim is tested (`tests/field_family.rs`). Default:
    /// `None`.
    fn translation_axes(&self) -> Option<usize> {
        None
    }
}
