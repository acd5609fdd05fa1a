//! The grid form of a coordkernel field: what a fixed-grid flow integrates. At each of the
//! grid's stage times it holds the time point (the time-folded coefficients `M(t)`) and a
//! table of the radial coefficients `a_q(·, t)`, and once the table of the coordination shells
//! (`table.rs`), so that an evaluation neither folds the time basis nor evaluates a Gaussian
//! per pair, and does not allocate. Other times use the exact field.

use super::coordkernel_field::{CoordKernelField, CoordKernelTimePoint, FOLD_LANES};
use super::eval::Tables;
use super::table::{FunctionTable, spacing};
use crate::field::VectorField;

/// The most memory the precomputed time points and tables of one flow may take. They are per
/// distinct stage time (2n + 1 for n RK4 steps): past this the tables (and, past it alone, the
/// time points) are left out and computed per evaluation instead (slower, equally exact).
pub const MAX_GRID_BYTES: usize = 256 << 20;

/// A [`CoordKernelField`] with precomputed time points and tables (see the module
/// documentation).
#[derive(Debug, Clone)]
pub(super) struct GridCoordKernel {
    field: CoordKernelField,
    /// Sorted by time bits.
    points: Vec<GridPoint>,
    /// The coordination shells (independent of time); `None` when the tables are left out.
    shells: Option<FunctionTable>,
}

#[derive(Debug, Clone)]
struct GridPoint {
    point: CoordKernelTimePoint,
    /// The radial coefficients at this time, present exactly when the shells' table is.
    radial: Option<FunctionTable>,
}

impl GridCoordKernel {
    pub(super) fn new(field: &CoordKernelField, times: &[f64]) -> Self {
        let mut times = times.to_vec();
        times.sort_by_key(|t| t.to_bits());
        times.dedup_by_key(|t| t.to_bits());
        let config = &field.config;
        let (nq, na, k) = (config.n_features(), config.n_shells, config.n_rbf);
        // A time point holds M(t) (Q × K) and its lane-padded transpose.
        let point_bytes =
            (nq * k + nq.div_ceil(FOLD_LANES) * FOLD_LANES * k) * std::mem::size_of::<f64>();
        let (rbf_width, shell_width) = (field.a_rbf.sqrt().recip(), field.a_shell.sqrt().recip());
        let plan = || {
            // One spacing for both tables (the narrower Gaussians set it); each reaches 8 of
            // its own widths past its last centre.
            let min_width = rbf_width.min(shell_width);
            let (h, n_radial) = spacing(min_width, rbf_width, config.rbf_max)?;
            let (_, n_shells) = spacing(min_width, shell_width, config.shell_max)?;
            let bytes = FunctionTable::bytes(n_radial, nq)?
                .checked_add(point_bytes)?
                .checked_mul(times.len())?
                .checked_add(FunctionTable::bytes(n_shells, na)?)?;
            (bytes <= MAX_GRID_BYTES).then_some((h, n_radial, n_shells))
        };
        let keep_points = times.len().saturating_mul(point_bytes) <= MAX_GRID_BYTES;
        let plan = if keep_points { plan() } else { None };
        let shells = plan.map(|(h, _, n_shells)| {
            FunctionTable::new(h, n_shells, na, |d, c, c1| field.shells_into(d, c, c1))
        });
        // Sequential on purpose: flows build their grid inside a `OnceLock` initialiser, and a
        // rayon join there could steal a job that waits on the same lock (a deadlock).
        let points = if keep_points {
            times
                .iter()
                .map(|&t| {
                    let point = field.time_point(t);
                    let radial = plan.map(|(h, n_radial, _)| {
                        let mut radial = super::eval::Radial::new();
                        FunctionTable::new(h, n_radial, nq, |d, a, a1| {
                            radial.fill(field, &point, d, false);
                            a.copy_from_slice(&radial.a[..nq]);
                            a1.copy_from_slice(&radial.a1[..nq]);
                        })
                    });
                    GridPoint { point, radial }
                })
                .collect()
        } else {
            Vec::new()
        };
        GridCoordKernel {
            field: field.clone(),
            points,
            shells,
        }
    }

    /// Runs `f` with the time point at `t` and its tables: the precomputed ones at a grid
    /// time (bitwise), a fresh time point and no tables elsewhere.
    fn at<R>(&self, t: f64, f: impl FnOnce(&CoordKernelTimePoint, Option<Tables<'_>>) -> R) -> R {
        match self
            .points
            .binary_search_by_key(&t.to_bits(), |p| p.point.t.to_bits())
        {
            Ok(i) => {
                let grid = &self.points[i];
                let tables = match (&self.shells, &grid.radial) {
                    (Some(shells), Some(radial)) => Some(Tables { shells, radial }),
                    _ => None,
                };
                f(&grid.point, tables)
            }
            Err(_) => f(&self.field.time_point(t), None),
        }
    }
}

impl VectorField for GridCoordKernel {
    fn state_len(&self) -> usize {
        self.field.layout.len()
    }

    /// Pair differences and coordination numbers only: translation invariant.
    fn translation_axes(&self) -> Option<usize> {
        Some(self.field.layout.dim)
    }

    fn velocity_into(&self, x: &[f64], t: f64, v: &mut [f64]) -> f64 {
        self.at(t, |p, tables| self.field.velocity_at(x, p, tables, v, true))
    }

    fn velocity_only_into(&self, x: &[f64], t: f64, v: &mut [f64]) {
        self.at(t, |p, tables| {
            self.field.velocity_at(x, p, tables, v, false);
        });
    }

    fn velocity_jacobian_into(
        &self,
        x: &[f64],
        t: f64,
        v: &mut [f64],
        jacobian: &mut [f64],
    ) -> f64 {
        self.at(t, |p, tables| {
            self.field.velocity_jacobian_at(x, p, tables, v, jacobian)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::coordkernel::CoordKernelConfig;
    use crate::geometry::Layout;
    use crate::integrate::rk4_stage_times;

    fn field() -> CoordKernelField {
        let layout = Layout::new(4, 2).unwrap();
        CoordKernelField::initialise(layout, CoordKernelConfig::double_well(), 3).unwrap()
    }

    #[test]
    fn a_grid_of_few_steps_holds_its_time_points_and_tables() {
        let grid = GridCoordKernel::new(&field(), &rk4_stage_times(20));
        assert_eq!(grid.points.len(), 41);
        assert!(grid.shells.is_some());
        assert!(grid.points.iter().all(|p| p.radial.is_some()));
    }

    #[test]
    fn memory_does_not_grow_past_the_cap_with_the_step_count() {
        // 100,000 steps: the tables (~20 GB) and the time points (~650 MB) are both left out.
        let grid = GridCoordKernel::new(&field(), &rk4_stage_times(100_000));
        assert!(grid.shells.is_none());
        assert!(grid.points.is_empty());
        // 2,000 steps: the time points (13 MB) are kept, the tables (~440 MB) are not.
        let grid = GridCoordKernel::new(&field(), &rk4_stage_times(2_000));
        assert_eq!(grid.points.len(), 4_001);
        assert!(grid.shells.is_none());
        assert!(grid.points.iter().all(|p| p.radial.is_none()));
    }
}
