//! The equivariant RBF vector field (DESIGN.md §1) and the interface integrators see.
//!
//! `v_i(x, t) = Σ_{j≠i} φ(d_ij, t)·r_ij` with `r_ij = x_i − x_j`, `d_ij = sqrt(|r_ij|² + ε_d)`:
//! a sum of radial pair forces, hence equivariant under permutations, rotations, reflections and
//! translations, with `Σ_i v_i = 0` (the centre of mass is conserved). Its divergence and its
//! Jacobian are computed in closed form from `φ` and `∂φ/∂d`, the exact derivatives of the
//! field as implemented (ε_d and the underflow rule of [`exp`] included); the reverse pass
//! ([`KernelField::vjp_into`]) differentiates one evaluation with respect to x and the parameters.

pub mod exp;
mod kernel_field;
mod kernels;
mod pairs;
mod params;
mod radial;
pub mod reverse;
mod table;

pub use kernel_field::KernelField;
pub use kernels::{KernelConfig, MAX_DIST_KERNELS, MAX_TIME_KERNELS};
pub use pairs::EPS_D;
pub use params::ParamLayout;
pub use radial::TimeSlice;
pub use reverse::{Cotangent, VjpScratch};
pub(crate) use reverse::{ParamAccumulator, TimePoint};
pub use table::TabulatedField;

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
}
