//! The kernel field as a [`FieldFamily`] and [`TrainableField`]: the glue between the paper's
//! field and the rest of the crate.

use std::ops::Range;
use std::sync::Arc;

use super::pairs::EPS_D;
use super::radial::NORM_EPS;
use super::vjp::{ParamAccumulator, TimePoint, VjpScratch};
use super::{KernelConfig, KernelField, TabulatedField};
use crate::error::Result;
use crate::field::exp::{UNDERFLOW, exp_nonpositive};
use crate::field::{Cotangent, FieldFamily, TrainableField, VectorField};
use crate::geometry::Layout;

/// The largest d-grid a kernel field's Lipschitz bound evaluates (see `lipschitz_bounds`).
const MAX_BOUND_POINTS: f64 = (1u64 << 20) as f64;

impl FieldFamily for KernelField {
    const NAME: &'static str = "kernel";
    type Config = KernelConfig;

    fn layout(&self) -> Layout {
        KernelField::layout(self)
    }

    fn config(&self) -> KernelConfig {
        self.kernels().clone()
    }

    fn from_config(layout: Layout, config: KernelConfig, params: Vec<f64>) -> Result<Self> {
        KernelField::new(layout, config, params)
    }

    fn params(&self) -> &[f64] {
        KernelField::params(self)
    }

    fn set_params(&mut self, params: &[f64]) -> Result<()> {
        KernelField::set_params(self, params)
    }

    fn param_blocks(&self) -> Vec<(&'static str, Range<usize>)> {
        self.param_layout().blocks().to_vec()
    }

    /// `N · max_d max(|φ|, |φ + φ'·r²/d|)` at each time.
    ///
    /// Why it bounds `‖∂v/∂x‖₂`: the Jacobian is `−Σ_{i<j} (e_i − e_j)(e_i − e_j)ᵀ ⊗ B_ij` with
    /// the symmetric pair block `B_ij = φ I + φ' r rᵀ/d`, whose eigenvalues are φ and
    /// `φ + φ' r²/d`, so `|uᵀ J u| ≤ M Σ_{i<j} |u_i − u_j|² ≤ M N |u|²` (the complete graph's
    /// Laplacian has norm N) and J is symmetric.
    ///
    /// The maximum over d is taken on a grid of spacing `γ_min/32` from `d = √ε_d` to the
    /// distance past which every Gaussian underflows to exactly 0 (φ is constant there, so
    /// that last point covers the tail). Between two grid points `f = max(|φ|, |φ + φ'r²/d|)`
    /// is bounded by the larger end value plus half the largest change of f over that interval
    /// and its two neighbours (a first-order margin from the local slope, where the error of
    /// the plain grid maximum is second order). This is sound for an f that is smooth on the
    /// grid's scale, which the Gaussians of width ≥ 32 grid spacings make it; it is not an
    /// interval-arithmetic enclosure. The normalised bases `ρ_k(d)` and `ρ'_k(d)` do not depend
    /// on t, so they are computed once for all `times`: φ(·, t) is then `ρ·w(t) + c(t)`.
    /// Bandwidths so disparate that the grid would exceed 2²⁰ points give the (true, useless)
    /// bound +∞.
    fn lipschitz_bounds(&self, times: &[f64]) -> Vec<f64> {
        let k = self.kernels();
        let n_dist = k.n_dist();
        let a = &self.inv_gamma_sq_padded()[..n_dist];
        let mu = &k.mu_dist;
        let gamma_min = a
            .iter()
            .map(|a| 1.0 / a.sqrt())
            .fold(f64::INFINITY, f64::min);
        let d_end = mu
            .iter()
            .zip(a)
            .map(|(mu, a)| mu + (-UNDERFLOW / a).sqrt())
            .fold(0.0, f64::max);
        let step = gamma_min / 32.0;
        let n_points = ((d_end - EPS_D.sqrt()) / step).ceil() + 2.0;
        if n_points.is_nan() || n_points > MAX_BOUND_POINTS {
            return vec![f64::INFINITY; times.len()];
        }
        let n_points = n_points as usize;
        // ρ_k(d_i) and ρ'_k(d_i)·r²/d (the factor of the second eigenvalue), row-major.
        let mut rho = vec![0.0; n_points * n_dist];
        let mut rho_slope = vec![0.0; n_points * n_dist];
        let mut g = vec![0.0; n_dist];
        let mut dg = vec![0.0; n_dist];
        for i in 0..n_points {
            let d = EPS_D.sqrt() + i as f64 * step;
            let (mut total, mut total_slope) = (NORM_EPS, 0.0);
            for kk in 0..n_dist {
                let e = d - mu[kk];
                g[kk] = exp_nonpositive(-(e * e * a[kk]));
                dg[kk] = -2.0 * e * a[kk] * g[kk];
                total += g[kk];
                total_slope += dg[kk];
            }
            let r2_over_d = (d * d - EPS_D) / d;
            for kk in 0..n_dist {
                let r = g[kk] / total;
                rho[i * n_dist + kk] = r;
                rho_slope[i * n_dist + kk] = (dg[kk] - r * total_slope) / total * r2_over_d;
            }
        }
        let mut f = vec![0.0; n_points];
        times
            .iter()
            .map(|&t| {
                let slice = self.time_slice(t);
                let w = &slice.w[..n_dist];
                for (i, fi) in f.iter_mut().enumerate() {
                    let row = i * n_dist..(i + 1) * n_dist;
                    let phi: f64 = rho[row.clone()]
                        .iter()
                        .zip(w)
                        .map(|(r, w)| r * w)
                        .sum::<f64>()
                        + slice.c;
                    let slope: f64 = rho_slope[row].iter().zip(w).map(|(r, w)| r * w).sum();
                    *fi = phi.abs().max((phi + slope).abs());
                }
                let change = |i: usize| match (f.get(i), f.get(i + 1)) {
                    (Some(a), Some(b)) => (a - b).abs(),
                    _ => 0.0,
                };
                let mut m = f[0];
                for i in 0..n_points - 1 {
                    let local = change(i.saturating_sub(1))
                        .max(change(i))
                        .max(change(i + 1));
                    m = m.max(f[i].max(f[i + 1]) + 0.5 * local);
                }
                self.layout().n_particles as f64 * m
            })
            .collect()
    }

    fn check_usable(&self, h: f64) -> Result<()> {
        super::limits::check_usable(self, h)
    }

    fn grid_dynamics(&self, times: &[f64]) -> Option<Arc<dyn VectorField + Send>> {
        TabulatedField::new(self, times).map(|t| Arc::new(t) as Arc<dyn VectorField + Send>)
    }
}

/// The parameter cotangent of one reverse pass: per time point `Σ w̄` (padded K) and `Σ c̄`,
/// unfolded once per time point at the end (the unfold is linear), and the accumulator.
#[derive(Clone, Default)]
pub struct KernelAdjoint {
    acc: ParamAccumulator,
    padded: usize,
    w_sums: Vec<f64>,
    c_sums: Vec<f64>,
}

impl std::fmt::Debug for KernelAdjoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelAdjoint { .. }")
    }
}

impl TrainableField for KernelField {
    type TimePoint = TimePoint;
    type Adjoint = KernelAdjoint;
    type Scratch = VjpScratch;

    fn time_point(&self, t: f64) -> TimePoint {
        KernelField::time_point(self, t)
    }

    fn time_point_key(&self, key: &mut Vec<f64>) {
        key.extend_from_slice(self.params());
        key.extend_from_slice(&self.kernels().mu_time);
    }

    fn new_scratch(&self) -> VjpScratch {
        VjpScratch::new()
    }

    fn velocity_at_into(&self, x: &[f64], point: &TimePoint, v: &mut [f64]) -> f64 {
        self.velocity_with_slice_into(x, point.slice(), v)
    }

    fn adjoint_reset(&self, adjoint: &mut KernelAdjoint, n_times: usize) {
        adjoint.acc.reset(self);
        adjoint.padded = self.mu_padded().len();
        adjoint.w_sums.clear();
        adjoint.w_sums.resize(n_times * adjoint.padded, 0.0);
        adjoint.c_sums.clear();
        adjoint.c_sums.resize(n_times, 0.0);
    }

    fn vjp_at(
        &self,
        x: &[f64],
        point: &TimePoint,
        time_index: usize,
        cotangent: Cotangent<'_>,
        x_bar: &mut [f64],
        adjoint: &mut KernelAdjoint,
        scratch: &mut VjpScratch,
    ) {
        let kp = adjoint.padded;
        adjoint.c_sums[time_index] += self.vjp_pairs_at(
            x,
            point,
            cotangent,
            x_bar,
            &mut adjoint.w_sums[time_index * kp..(time_index + 1) * kp],
            &mut adjoint.acc,
            scratch,
        );
    }

    fn adjoint_finish(
        &self,
        points: &[TimePoint],
        adjoint: &mut KernelAdjoint,
        theta_bar: &mut [f64],
    ) {
        let kp = adjoint.padded;
        for (i, point) in points.iter().enumerate() {
            let w_sum = &mut adjoint.w_sums[i * kp..(i + 1) * kp];
            self.unfold_time(point, adjoint.c_sums[i], w_sum, &mut adjoint.acc);
        }
        adjoint.acc.add_to(self, theta_bar);
    }
}
