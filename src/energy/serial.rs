//! Energies that must be evaluated one configuration at a time on one thread, and may fail:
//! host callbacks.

use crate::Result;

/// A potential energy `U(x)` that is evaluated **sequentially, on one thread**, and whose
/// evaluation may fail: typically a callback into a host code that is not thread-safe (a Fortran
/// energy with global state, an MPI code initialised with `MPI_THREAD_FUNNELED`).
///
/// Units, sign (`gradient` is `+∂U/∂x`, never the force) and layout are those of
/// [`super::Energy`]. Unlike `Energy` the trait does not require `Sync`, so the compiler
/// guarantees that code holding a `&dyn SerialEnergy` cannot hand it to other threads: users
/// such as [`crate::train::Trainer::with_serial_energy`] call it on the thread that called them,
/// never concurrently, while the rest of their work runs in parallel.
pub trait SerialEnergy {
    /// Number of particles `N`.
    fn n_particles(&self) -> usize;

    /// Spatial dimension `D`.
    fn dim(&self) -> usize;

    /// `U(x)` for one particle-major configuration `x` (length `N·D`), with the gradient
    /// `+∂U/∂x` written into `gradient` (same length and layout, overwritten). `U = +∞` is a
    /// value, not an error (the caller decides what it means).
    ///
    /// # Errors
    ///
    /// Whatever the implementation reports, typically [`crate::Error::Callback`] when the host
    /// signals a failure or returns an unusable value; the caller stops and passes it on.
    fn energy_gradient_into(&self, x: &[f64], gradient: &mut [f64]) -> Result<f64>;
}
