//! Scratch buffers for one integration, sized once per state length and reused across samples,
//! so that no step allocates.
//!
//! The exact-discrete mode needs five dense n × n matrices (n = N·D): 40·n² bytes, 300 GB for
//! 100,000 particles in 2-D. They are allocated only when that mode first runs
//! ([`Workspace::reserve_exact_discrete`]), after checking the need against
//! [`MAX_WORKSPACE_BYTES`] with overflow-checked arithmetic and with a fallible allocation, so an
//! oversized flow fails with [`Error::Resource`] instead of aborting the process.

use crate::error::{Error, Result};

/// Largest memory the dense matrices of one workspace may take: 4 GiB, reached at a state length
/// N·D of 10,362 (3,454 particles in 3-D, 5,181 in 2-D). One workspace exists per thread that
/// samples or evaluates densities at the same time.
pub const MAX_WORKSPACE_BYTES: u64 = 4 * (1 << 30);

/// How many n × n matrices the exact-discrete mode keeps.
const N_MATRICES: u128 = 5;

/// Buffers for every integrator; create one per thread (rayon `for_each_init`) and reuse it.
#[derive(Debug, Clone)]
pub struct Workspace {
    n: usize,
    /// Stage velocities (RK4 uses 4, Dormand–Prince 7).
    pub(crate) k: [Vec<f64>; 7],
    /// Stage state, trial state, error estimate, target of an inverse step.
    pub(crate) stage: Vec<f64>,
    pub(crate) trial: Vec<f64>,
    pub(crate) error: Vec<f64>,
    pub(crate) target: Vec<f64>,
    /// Matrix–vector products of the exact-discrete inverse.
    pub(crate) product: Vec<f64>,
    /// n × n: a stage Jacobian of v, the previous and current stage derivative, the step Jacobian.
    pub(crate) jac: Vec<f64>,
    pub(crate) dk_prev: Vec<f64>,
    pub(crate) dk: Vec<f64>,
    pub(crate) step_jac: Vec<f64>,
    /// n × n: `h·∂v/∂x` extrapolated to the middle of the next inverse step (its chord matrix).
    pub(crate) chord: Vec<f64>,
    pub(crate) pivots: Vec<usize>,
    /// The exact-discrete inverse's first-order log-determinant correction: `∇ div v` at a
    /// stage, the gradient of the step's divergence quadrature, the predictor's point.
    pub(crate) div_gradient: Vec<f64>,
    pub(crate) quadrature_gradient: Vec<f64>,
    pub(crate) predicted: Vec<f64>,
}

impl Workspace {
    /// Buffers for states of length `n`. The n × n matrices of the exact-discrete mode are
    /// allocated on first use (or ahead with [`Workspace::reserve_exact_discrete`]).
    #[must_use]
    pub fn new(n: usize) -> Self {
        let v = || vec![0.0; n];
        let m = Vec::new;
        Workspace {
            n,
            k: [v(), v(), v(), v(), v(), v(), v()],
            stage: v(),
            trial: v(),
            error: v(),
            target: v(),
            product: v(),
            jac: m(),
            dk_prev: m(),
            dk: m(),
            step_jac: m(),
            chord: m(),
            pivots: vec![0; n],
            div_gradient: v(),
            quadrature_gradient: v(),
            predicted: v(),
        }
    }

    /// Bytes of the exact-discrete mode's matrices for states of length `n` (exact: no
    /// overflow is possible in `u128` for any `usize`).
    #[must_use]
    pub fn exact_discrete_bytes(n: usize) -> u128 {
        let n = n as u128;
        N_MATRICES * n * n * std::mem::size_of::<f64>() as u128
    }

    /// Allocates the exact-discrete mode's n × n matrices if they are not there yet.
    ///
    /// # Errors
    ///
    /// [`Error::Resource`] (nothing allocated, the workspace unchanged) if they would take more
    /// than [`MAX_WORKSPACE_BYTES`] or the system refuses the memory.
    pub fn reserve_exact_discrete(&mut self) -> Result<()> {
        let n = self.n;
        if !self.chord.is_empty() {
            return Ok(());
        }
        let need = Self::exact_discrete_bytes(n);
        let what = || {
            format!(
                "the exact-discrete density for a state of N·D = {n} coordinates (5 dense {n}×{n} matrices)"
            )
        };
        if need > u128::from(MAX_WORKSPACE_BYTES) {
            return Err(Error::resource(what(), need, MAX_WORKSPACE_BYTES));
        }
        // Within the limit, so n * n fits in usize.
        let len = n * n;
        let zeroed = || -> Result<Vec<f64>> {
            crate::alloc::zeros(Some(len), "").map_err(|_| {
                Error::resource(
                    format!("{} (the system refused the memory)", what()),
                    need,
                    MAX_WORKSPACE_BYTES,
                )
            })
        };
        let matrices = [zeroed()?, zeroed()?, zeroed()?, zeroed()?, zeroed()?];
        let [jac, dk_prev, dk, step_jac, chord] = matrices;
        self.jac = jac;
        self.dk_prev = dk_prev;
        self.dk = dk;
        self.step_jac = step_jac;
        self.chord = chord;
        Ok(())
    }

    /// The state length these buffers serve.
    #[must_use]
    pub fn state_len(&self) -> usize {
        self.n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrices_are_allocated_on_demand_within_the_limit() {
        let mut ws = Workspace::new(3);
        assert!(ws.jac.is_empty());
        ws.reserve_exact_discrete().unwrap();
        assert_eq!(ws.chord.len(), 9);
        ws.reserve_exact_discrete().unwrap();
        // 10,362² · 40 bytes is just under 4 GiB; one more coordinate is over.
        assert!(Workspace::exact_discrete_bytes(10_362) <= u128::from(MAX_WORKSPACE_BYTES));
        assert!(Workspace::exact_discrete_bytes(10_363) > u128::from(MAX_WORKSPACE_BYTES));
        let mut big = Workspace::new(200_000);
        match big.reserve_exact_discrete().unwrap_err() {
            Error::Resource {
                need_bytes,
                limit_bytes,
                ..
            } => {
                assert_eq!(need_bytes, 5 * 200_000u128 * 200_000 * 8);
                assert_eq!(limit_bytes, MAX_WORKSPACE_BYTES);
            }
            other => panic!("{other:?}"),
        }
        assert!(big.jac.is_empty());
    }
}
