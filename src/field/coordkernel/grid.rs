//! The grid form of a coordkernel field: the same field with its time points (the time-folded
//! coefficients `M(t)`) computed once for a fixed grid's stage times, so that an evaluation
//! at a grid time neither folds the time basis again nor allocates. Same bits as the field.

use super::coordkernel_field::{CoordKernelField, CoordKernelTimePoint};
use crate::field::VectorField;

/// A [`CoordKernelField`] with precomputed time points (see the module documentation).
#[derive(Debug, Clone)]
pub(super) struct GridCoordKernel {
    field: CoordKernelField,
    /// Sorted by time bits.
    points: Vec<CoordKernelTimePoint>,
}

impl GridCoordKernel {
    pub(super) fn new(field: &CoordKernelField, times: &[f64]) -> Self {
        let mut points: Vec<CoordKernelTimePoint> =
            times.iter().map(|&t| field.time_point(t)).collect();
        points.sort_by_key(|p| p.t.to_bits());
        points.dedup_by_key(|p| p.t.to_bits());
        GridCoordKernel {
            field: field.clone(),
            points,
        }
    }

    /// Runs `f` with the time point at `t`: the precomputed one at a grid time (bitwise), a
    /// fresh one elsewhere.
    fn at<R>(&self, t: f64, f: impl FnOnce(&CoordKernelTimePoint) -> R) -> R {
        match self
            .points
            .binary_search_by_key(&t.to_bits(), |p| p.t.to_bits())
        {
            Ok(i) => f(&self.points[i]),
            Err(_) => f(&self.field.time_point(t)),
        }
    }
}

impl VectorField for GridCoordKernel {
    fn state_len(&self) -> usize {
        self.field.layout.len()
    }

    fn velocity_into(&self, x: &[f64], t: f64, v: &mut [f64]) -> f64 {
        self.at(t, |p| self.field.velocity_at(x, p, v, true))
    }

    fn velocity_only_into(&self, x: &[f64], t: f64, v: &mut [f64]) {
        self.at(t, |p| {
            self.field.velocity_at(x, p, v, false);
        });
    }

    fn velocity_jacobian_into(
        &self,
        x: &[f64],
        t: f64,
        v: &mut [f64],
        jacobian: &mut [f64],
    ) -> f64 {
        self.at(t, |p| self.field.velocity_jacobian_at(x, p, v, jacobian))
    }
}
