//! The kernel field's global Lipschitz bound `L(t)` and compression bound `μ(t)` (its part of
//! the step certificate, [`crate::integrate::certify_rk4`]) and their gradients with respect to
//! the parameters (what the certificate penalty in training needs).
//!
//! `L(t) = N · max_d max(|φ|, |φ + φ'·r²/d|)`. Why it bounds `‖∂v/∂x‖₂`: the Jacobian is
//! `Σ_{i<j} (e_i − e_j)(e_i − e_j)ᵀ ⊗ B_ij` (with `r = x_i − x_j`) with the symmetric pair
//! block `B_ij = φ I + φ' r rᵀ/d`, whose eigenvalues are φ and `φ + φ' r²/d`, so
//! `uᵀ J u = Σ_{i<j} (u_i − u_j)ᵀ B_ij (u_i − u_j)`, `|uᵀ J u| ≤ M Σ_{i<j} |u_i − u_j|² ≤ M N |u|²`
//! (the complete graph's Laplacian has norm N) and J is symmetric. With several species each
//! pair's block has its pair type's φ, and M is the largest of the pair types' maxima: the
//! bound is the largest per-type bound.
//!
//! `μ(t) = N · max(0, max_d max(−φ, −(φ + φ'·r²/d)))` by the same sum: only a pair block's
//! negative eigenvalues make `uᵀ J u` negative, so `uᵀ J u ≥ −μ |u|²`. Flows from a narrow
//! prior to spread-out data mostly push pairs apart (positive eigenvalues), so μ is often far
//! below L (shipped DW-4 model at t = 1: 11 against 88); both are taken by the same grid
//! maximum below, with `f` the quantity of each (`Side`).
//!
//! The maximum over d is taken on a grid from `d = √ε_d` (or, when every Gaussian underflows to
//! exactly 0 below some distance, from the last grid point before it: φ is the constant `c(t)`
//! there, which that point has) to the distance past which every Gaussian underflows to exactly
//! 0 (φ is constant there too, so that last point covers the tail),
//! with spacing the largest power of two not above `γ_min/40` (so between `γ_min/80` and
//! `γ_min/40`; not `γ_min/32`, a power of two for the presets' γ = 0.5, where the spacing would
//! jump under any change of the bandwidths). Between two grid points
//! `f` (`max(|φ|, |φ + φ'r²/d|)`, or `max(−φ, −(φ + φ'r²/d))` for μ) is bounded by the larger end value plus half the largest change
//! of f over that interval and its two neighbours (a first-order margin from the local slope,
//! where the error of the plain grid maximum is second order). This is sound for an f that is
//! smooth on the grid's scale, which the Gaussians of width ≥ 40 grid spacings make it; it is
//! not an interval-arithmetic enclosure. Bandwidths so disparate that the grid would exceed
//! 2²⁰ points give the (true, useless) bound +∞.
//!
//! Tables. φ is linear in the time basis: `φ(d, t) = Σ_k ρ_k(d)·w_k(t) + c(t)` with
//! `w_k(t) = Σ_r W_kr τ_r(t)`, so `φ(d, t) = Σ_r τ_r(t)·Ψ_r(d) + c(t)` with
//! `Ψ_r = Σ_k W_kr ρ_k`, and alike for `φ'·r²/d`. The grid tabulates, once per field, the
//! shorter of the two bases (`Ψ_r` when there are fewer time than distance kernels, as in
//! both presets: 10 against 50, else `ρ_k`); one time's φ on the whole grid is then that
//! many multiply-adds per point. The step-count search asks for thousands of times at large
//! N, so this (with a one-pass grid maximum for finite values) is what makes it take seconds
//! rather than a minute at N = 1,000 (BENCHMARKS.md, session 22).
//!
//! The spacing is a power of two so that the grid's points do not move with the bandwidths:
//! the bound is then, for a fixed grid, a piecewise smooth function of the parameters (smooth
//! away from ties of its maxima and sign changes), and its gradient there is what
//! [`KernelField::bounds_gradient`] computes: through `w(t)` and `c(t)` (W, b, s and the
//! time bandwidths, by the reverse of the time fold) and through `ρ` (the distance
//! bandwidths), at the few grid points the maximum and its margin are taken from.

use super::pairs::EPS_D;
use super::radial::MAX_PADDED;
use super::radial::NORM_EPS;
use super::vjp::ParamAccumulator;
use super::{KernelField, MAX_TIME_KERNELS, TimeSlice};
use crate::field::exp::{UNDERFLOW, exp_nonpositive};

/// The largest d-grid the bound evaluates.
const MAX_BOUND_POINTS: f64 = (1u64 << 20) as f64;

/// The most time-dependent weights a grid's φ can have (module docs, "Tables").
const MAX_GRID_WEIGHTS: usize = if MAX_TIME_KERNELS < MAX_PADDED {
    MAX_PADDED
} else {
    MAX_TIME_KERNELS
};

/// The d-grid of one pair type's bound and its tables: `φ(d_i, t) = Σ_j a_j(t)·B_j(d_i) + c(t)`
/// and `φ'(d_i, t)·r²/d = Σ_j a_j(t)·B'_j(d_i)` (module docs, "Tables").
pub(super) struct BoundGrid {
    pub(super) n_points: usize,
    pub(super) step: f64,
    /// The first point's distance: `√ε_d`, or a later point of the same lattice where every
    /// Gaussian underflows below it (φ is the constant `c(t)` there, as past the last point).
    pub(super) origin: f64,
    /// Whether the tables hold the time-folded basis `Ψ_r = Σ_k W_kr ρ_k` (weights τ_r(t))
    /// rather than `ρ_k` (weights w_k(t)).
    folded: bool,
    /// The number of basis functions `j`.
    n_basis: usize,
    /// `B_j(d_i)` at `[j · n_points + i]`: basis-major, so that one time's φ over the grid is
    /// `n_basis` contiguous multiply-adds.
    basis: Vec<f64>,
    /// `B'_j(d_i)·r²/d`, laid out as `basis`.
    basis_slope: Vec<f64>,
}

/// The time-dependent weights of φ on one pair type's grid at one time.
pub(super) struct GridWeights {
    a: [f64; MAX_GRID_WEIGHTS],
    n: usize,
    /// `c(t)`.
    pub(super) c: f64,
}

/// The buffers of one pass over a grid ([`KernelField::side_maxima`]): φ, φ'·r²/d and one
/// side's f, each as long as the longest grid.
struct GridScratch {
    phi: Vec<f64>,
    slope: Vec<f64>,
    f: Vec<f64>,
}

impl GridScratch {
    fn for_grids(grids: &[BoundGrid]) -> Self {
        let longest = grids.iter().map(|g| g.n_points).max().unwrap_or(0);
        GridScratch {
            phi: vec![0.0; longest],
            slope: vec![0.0; longest],
            f: vec![0.0; longest],
        }
    }
}

impl BoundGrid {
    /// The distance of grid point `i`.
    pub(super) fn distance(&self, i: usize) -> f64 {
        self.origin + i as f64 * self.step
    }

    /// `φ` and `φ'·r²/d` over the whole grid into `phi` and `slope` (at least `n_points`
    /// long): the same bits as [`BoundGrid::phi_and_slope`] at every point.
    pub(super) fn fill(&self, weights: &GridWeights, phi: &mut [f64], slope: &mut [f64]) {
        let n = self.n_points;
        let (phi, slope) = (&mut phi[..n], &mut slope[..n]);
        phi.fill(0.0);
        slope.fill(0.0);
        for (j, &a) in weights.a[..weights.n].iter().enumerate() {
            let row = j * n..(j + 1) * n;
            for (p, b) in phi.iter_mut().zip(&self.basis[row.clone()]) {
                *p += a * b;
            }
            for (s, b) in slope.iter_mut().zip(&self.basis_slope[row]) {
                *s += a * b;
            }
        }
        phi.iter_mut().for_each(|p| *p += weights.c);
    }

    /// `φ` and `φ'·r²/d` at grid point `i`.
    pub(super) fn phi_and_slope(&self, weights: &GridWeights, i: usize) -> (f64, f64) {
        let n = self.n_points;
        let (mut phi, mut slope) = (0.0, 0.0);
        for (j, &a) in weights.a[..weights.n].iter().enumerate() {
            phi += a * self.basis[j * n + i];
            slope += a * self.basis_slope[j * n + i];
        }
        (phi + weights.c, slope)
    }
}

/// The normalised bases `ρ_k(d)` and `ρ'_k(d)·r²/d` of a field with distance centres `mu`
/// and inverse squared bandwidths `a` into `rho` and `rho_slope` (one per kernel).
fn normalised_basis(d: f64, mu: &[f64], a: &[f64], rho: &mut [f64], rho_slope: &mut [f64]) {
    let n_dist = a.len();
    let (mut total, mut total_slope) = (NORM_EPS, 0.0);
    for kk in 0..n_dist {
        let e = d - mu[kk];
        let g = exp_nonpositive(-(e * e * a[kk]));
        rho[kk] = g;
        rho_slope[kk] = -2.0 * e * a[kk] * g;
        total += g;
        total_slope += rho_slope[kk];
    }
    let r2_over_d = (d * d - EPS_D) / d;
    for kk in 0..n_dist {
        let r = rho[kk] / total;
        rho_slope[kk] = (rho_slope[kk] - r * total_slope) / total * r2_over_d;
        rho[kk] = r;
    }
}

/// Which bound a grid maximum computes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Side {
    /// The Lipschitz bound: `f = max(|φ|, |φ + φ'r²/d|)`, the pair block's largest
    /// eigenvalue magnitude.
    Both,
    /// The compression bound: `f = max(−φ, −(φ + φ'r²/d))`, the pair block's most negative
    /// eigenvalue, negated (clamped at 0 after the maximum): only negative eigenvalues of
    /// `∂v/∂x` bring configurations together along a forward step.
    Compression,
}

impl Side {
    /// `f` of the side from `φ` and `φ'r²/d`.
    pub(super) fn value(self, phi: f64, slope: f64) -> f64 {
        match self {
            Side::Both => phi.abs().max((phi + slope).abs()),
            Side::Compression => (-phi).max(-(phi + slope)),
        }
    }

    /// `(∂f/∂φ, ∂f/∂slope)·f̄` at one point (the first branch on ties).
    fn cotangent(self, phi: f64, slope: f64, f_bar: f64) -> (f64, f64) {
        match self {
            Side::Both => {
                if phi.abs() >= (phi + slope).abs() {
                    (f_bar * phi.signum(), 0.0)
                } else {
                    let s = f_bar * (phi + slope).signum();
                    (s, s)
                }
            }
            Side::Compression => {
                if -phi >= -(phi + slope) {
                    (-f_bar, 0.0)
                } else {
                    (-f_bar, -f_bar)
                }
            }
        }
    }
}

/// Where one time's bound was taken: `N·(f[a] + ½·sign·(f[j] − f[j+1]))`, with the change term
/// absent (`change = None`) when the bound is `N·f[0]`.
struct Argmax {
    a: usize,
    change: Option<(usize, f64)>,
}

/// One time's bound of one side: the pair type it came from, its value, where it was taken.
struct Taken {
    ty: usize,
    bound: f64,
    at: Option<Argmax>,
}

/// The parameter cotangents of the bounds, accumulated over times and sides before they are
/// added to θ̄: per pair type, the time-unfolded W, b, s and time-bandwidth parts and the
/// distance-bandwidth cotangents `ā` (`a = 1/γ²`).
struct BoundGradient {
    acc: Vec<ParamAccumulator>,
    a_bar: Vec<f64>,
    w_bar: Vec<f64>,
}

impl BoundGradient {
    fn new(field: &KernelField) -> Self {
        let n_types = field.n_pair_types();
        let mut acc = vec![ParamAccumulator::default(); n_types];
        acc.iter_mut().for_each(|a| a.reset(field));
        BoundGradient {
            acc,
            a_bar: vec![0.0; n_types * field.kernels().n_dist()],
            w_bar: vec![0.0; field.mu_padded().len()],
        }
    }

    /// `theta_bar +=` the accumulated cotangents.
    fn add_to(&self, field: &KernelField, theta_bar: &mut [f64]) {
        let n_dist = field.kernels().n_dist();
        for (ty, acc) in self.acc.iter().enumerate() {
            acc.add_to(field, ty, theta_bar);
            let a = &field.block(ty).a_pad;
            let offset = field.block_range(ty).start;
            let range = field.param_layout().log_inv_gamma_dist();
            let range = range.start + offset..range.end + offset;
            let a_bar = &self.a_bar[ty * n_dist..(ty + 1) * n_dist];
            for ((t, a), ab) in theta_bar[range].iter_mut().zip(a).zip(a_bar) {
                // a = exp(2p): ∂a/∂p = 2a.
                *t += 2.0 * a * ab;
            }
        }
    }
}

/// `|f[i] − f[i+1]|`, 0 past the grid's end.
fn grid_change(f: &[f64], i: usize) -> f64 {
    match (f.get(i), f.get(i + 1)) {
        (Some(a), Some(b)) => (a - b).abs(),
        _ => 0.0,
    }
}

/// The bound of `f` over grid cell `[d_i, d_{i+1}]` (`i + 1 < f.len()`; module docs): the
/// larger end value `f[a]` plus half the largest change `|f[j] − f[j+1]|` over the cell and its
/// two neighbours, with `a` and `j`. NaN if any value it reads is NaN, so that a NaN is never
/// hidden behind a larger neighbour. What the global bound maximises over all cells and the
/// local bounds (`local.rs`) over the cells a pair can reach.
pub(super) fn cell_candidate(f: &[f64], i: usize) -> (f64, usize, usize) {
    let candidates = [i.saturating_sub(1), i, i + 1];
    let j = candidates.into_iter().fold(candidates[0], |best, j| {
        if grid_change(f, j) > grid_change(f, best) {
            j
        } else {
            best
        }
    });
    let a = if f[i + 1] > f[i] { i + 1 } else { i };
    let mut read = [f[i], f[i + 1]]
        .into_iter()
        .chain(candidates.map(|j| grid_change(f, j)));
    let value = if read.any(f64::is_nan) {
        f64::NAN
    } else {
        f[a] + 0.5 * grid_change(f, j)
    };
    (value, a, j)
}

/// The largest of `f[0]` and every cell's [`cell_candidate`], and where it was taken (the
/// first on ties); a NaN candidate wins, so that a NaN is never hidden.
fn grid_argmax(f: &[f64]) -> (f64, Argmax) {
    let mut m = f[0];
    let mut at = Argmax { a: 0, change: None };
    for i in 0..f.len() - 1 {
        let (value, a, j) = cell_candidate(f, i);
        // A NaN candidate wins (f64::max would skip it), so a NaN bound is never hidden.
        if value.is_nan() || value > m {
            m = value;
            at = argmax_at(f, a, j);
        }
    }
    (m, at)
}

/// [`grid_argmax`] for finite `f` (no candidate can then be NaN), the same value and place:
/// one pass that carries each cell's three neighbouring changes over to the next cell instead
/// of recomputing them (what the step-count search spends most of its time in).
fn finite_grid_argmax(f: &[f64]) -> (f64, Argmax) {
    let n = f.len();
    let change = |k: usize| {
        if k + 1 < n {
            (f[k] - f[k + 1]).abs()
        } else {
            0.0
        }
    };
    let mut m = f[0];
    let mut at = Argmax { a: 0, change: None };
    // The changes of cells i − 1 (saturating at 0) and i.
    let (mut before, mut here) = (change(0), change(0));
    for i in 0..n - 1 {
        let after = change(i + 1);
        // The first largest of [i − 1, i, i + 1], as `cell_candidate` chooses.
        let (mut j, mut largest) = (i.saturating_sub(1), before);
        if here > largest {
            (j, largest) = (i, here);
        }
        if after > largest {
            (j, largest) = (i + 1, after);
        }
        let a = if f[i + 1] > f[i] { i + 1 } else { i };
        let value = f[a] + 0.5 * largest;
        if value > m {
            m = value;
            at = argmax_at(f, a, j);
        }
        (before, here) = (here, after);
    }
    (m, at)
}

/// Where a cell's candidate `f[a] + ½·|f[j] − f[j+1]|` was taken, with the sign that gives
/// `f[j] − f[j+1]` its absolute value.
fn argmax_at(f: &[f64], a: usize, j: usize) -> Argmax {
    let sign = if j + 1 < f.len() && f[j] < f[j + 1] {
        -1.0
    } else {
        1.0
    };
    Argmax {
        a,
        change: (j + 1 < f.len()).then_some((j, sign)),
    }
}

impl KernelField {
    /// The grid of pair type `ty`'s bound and its tables (module docs), `None` when it would
    /// be too large (the bound is then +∞).
    pub(super) fn bound_grid(&self, ty: usize) -> Option<BoundGrid> {
        let k = self.kernels();
        let n_dist = k.n_dist();
        let n_time = self.param_layout().n_time;
        let a = &self.block(ty).a_pad[..n_dist];
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
        // Below the first kernel's reach φ is constant as well: the grid starts at the last
        // lattice point before it (kernels far from 0 with narrow bandwidths, as a distance
        // range of [9.999, 10], then need thousands of points instead of millions).
        let d_start = mu
            .iter()
            .zip(a)
            .map(|(mu, a)| mu - (-UNDERFLOW / a).sqrt())
            .fold(f64::INFINITY, f64::min);
        let step = (gamma_min / 40.0).log2().floor().exp2();
        let skipped = ((d_start - EPS_D.sqrt()) / step).floor().max(0.0);
        let origin = if skipped.is_finite() {
            EPS_D.sqrt() + skipped * step
        } else {
            EPS_D.sqrt()
        };
        let n_points = ((d_end - origin) / step).ceil() + 2.0;
        if step.is_nan() || step <= 0.0 || n_points.is_nan() || n_points > MAX_BOUND_POINTS {
            return None;
        }
        // Kernels that have all decayed before the grid's first point (centres below √ε_d, as
        // a distance range of (0, 3e-4) or negative centres give) leave φ zero on the whole
        // grid, which still needs two points: the scan reads a point and its neighbour.
        let n_points = n_points.max(2.0) as usize;
        let folded = n_time < n_dist;
        let n_basis = if folded { n_time } else { n_dist };
        let mut basis = vec![0.0; n_basis * n_points];
        let mut basis_slope = vec![0.0; n_basis * n_points];
        let (mut rho, mut rho_slope) = (vec![0.0; n_dist], vec![0.0; n_dist]);
        // W_kr with r fastest (`w_t` holds it with k fastest, padded), so that the sums
        // Ψ_r = Σ_k W_kr ρ_k of one point run over r side by side.
        let padded = self.mu_padded().len();
        let w_t = &self.block(ty).w_t;
        let w: Vec<f64> = (0..n_dist)
            .flat_map(|k| (0..n_time).map(move |r| w_t[r * padded + k]))
            .collect();
        let (mut psi, mut psi_slope) = (vec![0.0; n_time], vec![0.0; n_time]);
        for i in 0..n_points {
            let d = origin + i as f64 * step;
            normalised_basis(d, mu, a, &mut rho, &mut rho_slope);
            let (b, bs) = if folded {
                psi.fill(0.0);
                psi_slope.fill(0.0);
                for ((w, r), rs) in w.chunks_exact(n_time).zip(&rho).zip(&rho_slope) {
                    for ((p, ps), w) in psi.iter_mut().zip(&mut psi_slope).zip(w) {
                        *p += w * r;
                        *ps += w * rs;
                    }
                }
                (&psi, &psi_slope)
            } else {
                (&rho, &rho_slope)
            };
            for j in 0..n_basis {
                basis[j * n_points + i] = b[j];
                basis_slope[j * n_points + i] = bs[j];
            }
        }
        Some(BoundGrid {
            n_points,
            step,
            origin,
            folded,
            n_basis,
            basis,
            basis_slope,
        })
    }

    /// The weights of `grid` (pair type `ty`'s) at the time folded into `slice`, which is
    /// `t`: `τ(t)` for a folded grid, `w(t)` otherwise, and `c(t)` from `slice`.
    pub(super) fn grid_weights(
        &self,
        ty: usize,
        grid: &BoundGrid,
        slice: &TimeSlice,
        t: f64,
    ) -> GridWeights {
        let mut weights = GridWeights {
            a: [0.0; MAX_GRID_WEIGHTS],
            n: grid.n_basis,
            c: slice.c,
        };
        if grid.folded {
            self.time_basis_of_into(ty, t, &mut weights.a[..grid.n_basis]);
        } else {
            weights.a[..grid.n_basis].copy_from_slice(&slice.w[..grid.n_basis]);
        }
        weights
    }

    /// `ρ_k(d_i)` and `ρ'_k(d_i)·r²/d` at grid point `i` of pair type `ty`'s grid: what the
    /// gradient needs at the few points a bound was taken from.
    fn basis_at(&self, ty: usize, grid: &BoundGrid, i: usize) -> (Vec<f64>, Vec<f64>) {
        let n_dist = self.kernels().n_dist();
        let a = &self.block(ty).a_pad[..n_dist];
        let d = grid.distance(i);
        let (mut rho, mut rho_slope) = (vec![0.0; n_dist], vec![0.0; n_dist]);
        normalised_basis(d, &self.kernels().mu_dist, a, &mut rho, &mut rho_slope);
        (rho, rho_slope)
    }

    /// The bound of `side` from its `f` on the grid: `N ·` the largest end value plus half the
    /// largest neighbouring change (module docs), and where it was taken; `None` for a
    /// compression bound clamped at 0.
    fn grid_maximum(&self, side: Side, f: &[f64]) -> (f64, Option<Argmax>) {
        let (m, at) = if f.iter().all(|v| v.is_finite()) {
            finite_grid_argmax(f)
        } else {
            grid_argmax(f)
        };
        let n = self.layout().n_particles as f64;
        if side == Side::Compression && m <= 0.0 {
            return (0.0, None);
        }
        (n * m, Some(at))
    }

    /// [`crate::field::FieldFamily::lipschitz_bounds`] (`Side::Both`) and
    /// [`crate::field::FieldFamily::compression_bounds`] (`Side::Compression`) for the kernel
    /// field (module docs): for each of `sides`, the largest of the pair types' bounds at each
    /// of `times`. See [`KernelField::kernel_bounds_on`].
    pub(crate) fn kernel_bounds_of(&self, sides: &[Side], times: &[f64]) -> Vec<Vec<f64>> {
        self.kernel_bounds_on(self.bound_grids().as_deref(), sides, times)
    }

    /// [`KernelField::kernel_bounds_of`] on grids tabulated once ([`KernelField::bound_grids`],
    /// `None` when one is too large: every bound is then +∞), so that a caller asking at many
    /// times in many calls (the step-count search) builds them once. One evaluation of φ per
    /// pair type and time serves every side; a NaN bound wins over every other.
    pub(super) fn kernel_bounds_on(
        &self,
        grids: Option<&[BoundGrid]>,
        sides: &[Side],
        times: &[f64],
    ) -> Vec<Vec<f64>> {
        let Some(grids) = grids else {
            return vec![vec![f64::INFINITY; times.len()]; sides.len()];
        };
        let mut bounds = vec![vec![f64::NEG_INFINITY; times.len()]; sides.len()];
        let mut scratch = GridScratch::for_grids(grids);
        for (ty, grid) in grids.iter().enumerate() {
            for (k, &t) in times.iter().enumerate() {
                self.side_maxima(ty, grid, t, sides, &mut scratch, |s, b, _| {
                    let bound = &mut bounds[s][k];
                    if b.is_nan() || b > *bound {
                        *bound = b;
                    }
                });
            }
        }
        bounds
    }

    /// φ and φ'·r²/d on pair type `ty`'s `grid` at time `t`, then `each(s, bound, where)` with
    /// the grid maximum of each of `sides` ([`KernelField::grid_maximum`]): the one pass over
    /// a grid that the bounds' values and their gradients share.
    fn side_maxima(
        &self,
        ty: usize,
        grid: &BoundGrid,
        t: f64,
        sides: &[Side],
        scratch: &mut GridScratch,
        mut each: impl FnMut(usize, f64, Option<Argmax>),
    ) {
        let n = grid.n_points;
        let GridScratch { phi, slope, f } = scratch;
        let weights = self.grid_weights(ty, grid, &self.time_slice_of(ty, t), t);
        grid.fill(&weights, phi, slope);
        for (s, side) in sides.iter().enumerate() {
            for i in 0..n {
                f[i] = side.value(phi[i], slope[i]);
            }
            let (bound, at) = self.grid_maximum(*side, &f[..n]);
            each(s, bound, at);
        }
    }

    /// [`KernelField::kernel_bounds_of`] for one side.
    pub(crate) fn kernel_bounds(&self, side: Side, times: &[f64]) -> Vec<f64> {
        self.kernel_bounds_of(&[side], times).swap_remove(0)
    }

    /// The grids of every pair type, `None` if one would be too large (the bounds are +∞).
    pub(super) fn bound_grids(&self) -> Option<Vec<BoundGrid>> {
        (0..self.n_pair_types())
            .map(|ty| self.bound_grid(ty))
            .collect()
    }

    /// For each of `sides` and each of `times`: the bound (the largest over pair types, the
    /// first on ties) and where it was taken, from one evaluation of φ and φ'r²/d on each
    /// type's grid per time, shared by the sides. `None` if a bound is not finite.
    fn take(&self, sides: &[Side], grids: &[BoundGrid], times: &[f64]) -> Option<Vec<Vec<Taken>>> {
        let mut scratch = GridScratch::for_grids(grids);
        let mut taken: Vec<Vec<Taken>> = sides
            .iter()
            .map(|_| Vec::with_capacity(times.len()))
            .collect();
        for &t in times {
            let mut best: Vec<Option<Taken>> = sides.iter().map(|_| None).collect();
            let mut finite = true;
            for (ty, grid) in grids.iter().enumerate() {
                self.side_maxima(ty, grid, t, sides, &mut scratch, |s, bound, at| {
                    finite &= bound.is_finite();
                    if best[s].as_ref().is_none_or(|b| bound > b.bound) {
                        best[s] = Some(Taken { ty, bound, at });
                    }
                });
                if !finite {
                    return None;
                }
            }
            for (taken, best) in taken.iter_mut().zip(best) {
                taken.push(best?);
            }
        }
        Some(taken)
    }

    /// Adds `Σ_t bars[t]·∂(bound of side at t)/∂θ` to `g` from where each bound was taken.
    fn backprop(
        &self,
        side: Side,
        grids: &[BoundGrid],
        times: &[f64],
        taken: &[Taken],
        bars: &[f64],
        g: &mut BoundGradient,
    ) {
        let n_dist = self.kernels().n_dist();
        let n = self.layout().n_particles as f64;
        for ((&t, taken), &l_bar) in times.iter().zip(taken).zip(bars) {
            // A clamped compression bound (0) is flat in the parameters.
            let Some(at) = taken.at.as_ref().filter(|_| l_bar != 0.0) else {
                continue;
            };
            let ty = taken.ty;
            let point = self.time_point(t);
            let (grid, slice) = (&grids[ty], point.part_slice(ty));
            // Cotangents of f at the points the bound was taken from.
            let mut f_bar: Vec<(usize, f64)> = vec![(at.a, n * l_bar)];
            if let Some((j, sign)) = at.change {
                f_bar.push((j, 0.5 * n * l_bar * sign));
                f_bar.push((j + 1, -0.5 * n * l_bar * sign));
            }
            g.w_bar.fill(0.0);
            let mut c_bar = 0.0;
            let weights = self.grid_weights(ty, grid, slice, t);
            for (i, fb) in f_bar {
                let (phi, slope) = grid.phi_and_slope(&weights, i);
                let (phi_bar, slope_bar) = side.cotangent(phi, slope, fb);
                c_bar += phi_bar;
                let (rho, rho_slope) = self.basis_at(ty, grid, i);
                for ((wb, r), rs) in g.w_bar.iter_mut().zip(&rho).zip(&rho_slope) {
                    *wb += phi_bar * r + slope_bar * rs;
                }
                let a_bar = &mut g.a_bar[ty * n_dist..(ty + 1) * n_dist];
                self.add_bandwidth_cotangent(ty, grid, slice, i, phi_bar, slope_bar, a_bar);
            }
            self.unfold_time(ty, point.part(ty), c_bar, &mut g.w_bar, &mut g.acc[ty]);
        }
    }

    /// The bounds of `side` at `times` and `theta_bar += Σ_t bounds_bar[t]·∂L(t)/∂θ` (module
    /// docs), or `None` (nothing added) where a bound is +∞ or not finite.
    ///
    /// With several species the gradient is that of the pair type whose bound is the largest
    /// at each time (the first on ties), through that type's block only.
    pub(crate) fn bounds_gradient(
        &self,
        side: Side,
        times: &[f64],
        bounds_bar: &[f64],
        theta_bar: &mut [f64],
    ) -> Option<Vec<f64>> {
        let grids = self.bound_grids()?;
        let taken = self.take(&[side], &grids, times)?;
        let mut g = BoundGradient::new(self);
        self.backprop(side, &grids, times, &taken[0], bounds_bar, &mut g);
        g.add_to(self, theta_bar);
        Some(taken[0].iter().map(|t| t.bound).collect())
    }

    /// Both bounds at `times` (Lipschitz, compression) from one pass over the grids, then
    /// cotangents `bars(L, μ)` computed from them and their vector–Jacobian product added to
    /// `theta_bar`: what [`KernelField::bounds_gradient`] twice for each side, after the bounds
    /// themselves, computes with four passes. `None` (nothing added) where a bound is not finite.
    pub(crate) fn both_bounds_gradient(
        &self,
        times: &[f64],
        bars: &mut crate::field::BoundCotangents<'_>,
        theta_bar: &mut [f64],
    ) -> Option<(Vec<f64>, Vec<f64>)> {
        let grids = self.bound_grids()?;
        let sides = [Side::Both, Side::Compression];
        let taken = self.take(&sides, &grids, times)?;
        let bounds = |k: usize| -> Vec<f64> { taken[k].iter().map(|t| t.bound).collect() };
        let (l, m) = (bounds(0), bounds(1));
        let (l_bar, m_bar) = bars(&l, &m);
        let mut g = BoundGradient::new(self);
        self.backprop(Side::Both, &grids, times, &taken[0], &l_bar, &mut g);
        self.backprop(Side::Compression, &grids, times, &taken[1], &m_bar, &mut g);
        g.add_to(self, theta_bar);
        Some((l, m))
    }

    /// `a_bar[l] += φ̄·∂φ/∂a_l + s̄·∂(φ'·r²/d)/∂a_l` at grid point `i` (a_l = 1/γ_l²): only the
    /// Gaussian g_l moves with a_l, by `α = ∂g_l/∂a_l = −e²g_l` and
    /// `β = ∂g'_l/∂a_l = −2e·g_l·(1 − a_l e²)` (e = d − μ_l), and through the normalisation
    /// `ρ = g/T`, `T = ε + Σg`, `S = Σg'`, `φ₀ = Σ_k ρ_k w_k`, `φ'₀ = (Σ_k w_k g'_k − φ₀S)/T`:
    /// `∂φ₀/∂a_l = α(w_l − φ₀)/T` and `∂φ'₀/∂a_l = [β(w_l − φ₀) − α(S(w_l − φ₀)/T + φ'₀)]/T`.
    #[allow(clippy::too_many_arguments)] // internal: one grid point's cotangents, unpacked
    fn add_bandwidth_cotangent(
        &self,
        ty: usize,
        grid: &BoundGrid,
        slice: &TimeSlice,
        i: usize,
        phi_bar: f64,
        slope_bar: f64,
        a_bar: &mut [f64],
    ) {
        let k = self.kernels();
        let n_dist = k.n_dist();
        let a = &self.block(ty).a_pad[..n_dist];
        let w = &slice.w[..n_dist];
        let d = grid.distance(i);
        let r2_over_d = (d * d - EPS_D) / d;
        let (mut total, mut total_slope, mut weighted_slope) = (NORM_EPS, 0.0, 0.0);
        let mut g = vec![0.0; n_dist];
        let mut e = vec![0.0; n_dist];
        for kk in 0..n_dist {
            e[kk] = d - k.mu_dist[kk];
            g[kk] = exp_nonpositive(-(e[kk] * e[kk] * a[kk]));
            let dg = -2.0 * e[kk] * a[kk] * g[kk];
            total += g[kk];
            total_slope += dg;
            weighted_slope += w[kk] * dg;
        }
        let phi0: f64 = g.iter().zip(w).map(|(g, w)| g * w).sum::<f64>() / total;
        let dphi0 = (weighted_slope - phi0 * total_slope) / total;
        let dphi_bar = slope_bar * r2_over_d;
        for l in 0..n_dist {
            if g[l] == 0.0 {
                continue;
            }
            let alpha = -e[l] * e[l] * g[l];
            let beta = -2.0 * e[l] * g[l] * (1.0 - a[l] * e[l] * e[l]);
            let dw = w[l] - phi0;
            let d_phi = alpha * dw / total;
            let d_dphi = (beta * dw - alpha * (total_slope * dw / total + dphi0)) / total;
            a_bar[l] += phi_bar * d_phi + dphi_bar * d_dphi;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::KernelConfig;
    use crate::geometry::Layout;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The bound's gradient against central differences in every parameter, on both presets
    /// with random parameters (all blocks perturbed away from their initial values, so that
    /// s, b and the bandwidths matter), at a few times at once with random weights.
    #[test]
    fn lipschitz_bound_gradient_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (n, dim, kernels) in [
            (4, 2, KernelConfig::double_well()),
            (13, 3, KernelConfig::lennard_jones()),
        ] {
            let layout = Layout::new(n, dim).unwrap();
            let mut field = KernelField::initialise(layout, kernels, 2).unwrap();
            let mut p = field.params().to_vec();
            let pl = field.param_layout();
            for v in &mut p[pl.b()] {
                *v = rng.random_range(-0.3..0.3);
            }
            for v in &mut p[pl.s()] {
                *v = rng.random_range(-0.5..0.5);
            }
            for v in &mut p[pl.log_inv_gamma_dist()] {
                *v += rng.random_range(-0.05..0.05);
            }
            for v in &mut p[pl.log_inv_gamma_time()] {
                *v += rng.random_range(-0.2..0.2);
            }
            field.set_params(&p).unwrap();
            let times = [0.0, 0.237, 0.5, 0.9];
            let weights = [0.3, -1.0, 0.7, 1.5];
            for side in [Side::Both, Side::Compression] {
                let bounds_of = |f: &KernelField| f.kernel_bounds(side, &times);
                let mut grad = vec![0.0; p.len()];
                let bounds = field
                    .bounds_gradient(side, &times, &weights, &mut grad)
                    .unwrap();
                assert_eq!(bounds, bounds_of(&field), "the same bound");
                assert!(bounds.iter().all(|b| *b > 0.0), "{side:?}: {bounds:?}");
                let value = |q: &[f64]| {
                    let mut f = field.clone();
                    f.set_params(q).unwrap();
                    bounds_of(&f)
                        .iter()
                        .zip(&weights)
                        .map(|(l, w)| l * w)
                        .sum::<f64>()
                };
                let eps = 1e-6;
                let mut q = p.clone();
                let mut worst = 0.0f64;
                let scale = grad.iter().fold(0.0f64, |m, g: &f64| m.max(g.abs()));
                for i in 0..p.len() {
                    q[i] = p[i] + eps;
                    let up = value(&q);
                    q[i] = p[i] - eps;
                    let down = value(&q);
                    q[i] = p[i];
                    let fd = (up - down) / (2.0 * eps);
                    worst = worst.max((fd - grad[i]).abs());
                }
                assert!(scale > 0.0);
                assert!(
                    worst < 1e-5 * scale,
                    "{n} particles, {side:?}: worst |FD − gradient| {worst:e} against {scale:e}"
                );
            }
        }
    }

    /// The grid's tables give φ and φ'·r²/d of the field's own radial function (what the pair
    /// loops evaluate), both with the time-folded basis (fewer time than distance kernels)
    /// and with the distance basis; `fill` gives the same bits as the pointwise form.
    #[test]
    fn grid_tables_reproduce_the_radial_function() {
        use super::super::radial::RadialFn;
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let few_distances = KernelConfig {
            mu_dist: vec![0.5, 1.5, 2.5, 4.0],
            gamma_dist: vec![0.6; 4],
            mu_time: (0..9).map(|r| r as f64 / 8.0).collect(),
            gamma_time: vec![0.2; 9],
        };
        for (kernels, folded) in [
            (KernelConfig::double_well(), true),
            (KernelConfig::lennard_jones(), true),
            (few_distances, false),
        ] {
            let layout = Layout::new(5, 3).unwrap();
            let mut field = KernelField::initialise(layout, kernels, 4).unwrap();
            let p: Vec<f64> = field
                .params()
                .iter()
                .map(|v| v + rng.random_range(-0.3..0.3))
                .collect();
            field.set_params(&p).unwrap();
            let grid = field.bound_grid(0).unwrap();
            assert_eq!(grid.folded, folded);
            let (mut phi, mut slope) = (vec![0.0; grid.n_points], vec![0.0; grid.n_points]);
            for t in [0.0, 0.31, 0.77, 1.0] {
                let slice = field.time_slice_of(0, t);
                let weights = field.grid_weights(0, &grid, &slice, t);
                grid.fill(&weights, &mut phi, &mut slope);
                let radial = field.exact_radial(0, &slice);
                let mut scratch = radial.scratch();
                let scale = phi.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                for i in (0..grid.n_points).step_by(7) {
                    assert_eq!(grid.phi_and_slope(&weights, i), (phi[i], slope[i]));
                    let d = grid.distance(i);
                    let (exact, dexact) = radial.eval(d, &mut scratch);
                    let exact_slope = dexact * (d * d - EPS_D) / d;
                    assert!(
                        (phi[i] - exact).abs() <= 1e-12 * scale
                            && (slope[i] - exact_slope).abs() <= 1e-11 * scale.max(1.0) * d,
                        "folded {folded}, t {t}, d {d}: ({}, {}) against ({exact}, {exact_slope})",
                        phi[i],
                        slope[i]
                    );
                }
            }
        }
    }

    /// The one-pass scan for finite values takes the same maximum, bit for bit, at the same
    /// place as the general scan, ties included (small integers make many).
    #[test]
    fn the_finite_scan_takes_the_maximum_where_the_general_scan_does() {
        let mut rng = ChaCha8Rng::seed_from_u64(14);
        for case in 0..4000 {
            let n = rng.random_range(1..12);
            let f: Vec<f64> = (0..n)
                .map(|_| {
                    if case % 2 == 0 {
                        f64::from(rng.random_range(0..4_i32))
                    } else {
                        rng.random_range(-3.0..3.0)
                    }
                })
                .collect();
            let (m, at) = grid_argmax(&f);
            let (m_fast, at_fast) = finite_grid_argmax(&f);
            assert_eq!(m.to_bits(), m_fast.to_bits(), "{f:?}");
            assert_eq!((at.a, at.change), (at_fast.a, at_fast.change), "{f:?}");
        }
    }

    /// The one-pass path of the certificate penalty equals the separate passes: the same
    /// bounds bit for bit, the cotangents computed from them, the same gradient.
    #[test]
    fn kernels_decayed_before_the_first_grid_point_give_finite_bounds() {
        // Centres in [0, 1e-4] with bandwidths to match, and centres at −1: every Gaussian
        // has underflowed before √ε_d = 1e-3, where the grid starts (the grid was empty and
        // its scan read past it).
        let layout = Layout::new(4, 2).unwrap();
        let tiny = KernelConfig {
            mu_dist: (0..5).map(|k| k as f64 * 2.5e-5).collect(),
            gamma_dist: vec![3e-5; 5],
            ..KernelConfig::double_well()
        };
        let negative = KernelConfig {
            mu_dist: vec![-1.0; 5],
            gamma_dist: vec![1e-2; 5],
            ..KernelConfig::double_well()
        };
        for kernels in [tiny, negative] {
            let field = KernelField::initialise(layout, kernels, 1).unwrap();
            let times = crate::integrate::certificate_times(4);
            for side in [Side::Both, Side::Compression] {
                let bounds = field.kernel_bounds(side, &times);
                assert!(
                    bounds.iter().all(|b| b.is_finite() && *b >= 0.0),
                    "{bounds:?}"
                );
            }
        }
    }

    #[test]
    fn both_bounds_in_one_pass_equal_the_separate_passes() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        for (n, dim, kernels) in [
            (4, 2, KernelConfig::double_well()),
            (13, 3, KernelConfig::lennard_jones()),
        ] {
            let layout = Layout::new(n, dim).unwrap();
            let mut field = KernelField::initialise(layout, kernels, 3).unwrap();
            let mut p = field.params().to_vec();
            let pl = field.param_layout();
            for v in &mut p[pl.b()] {
                *v = rng.random_range(-0.3..0.3);
            }
            for v in &mut p[pl.s()] {
                *v = rng.random_range(-0.5..0.5);
            }
            field.set_params(&p).unwrap();
            let times = crate::integrate::certificate_times(4);
            // Cotangents that depend on the bounds (as the penalty's do).
            let mut bars = |l: &[f64], m: &[f64]| -> (Vec<f64>, Vec<f64>) {
                (
                    l.iter().map(|v| 0.1 * v).collect(),
                    m.iter().map(|v| 1.0 - 0.05 * v).collect(),
                )
            };
            let mut fast = vec![0.0; p.len()];
            let (l, m) = field
                .both_bounds_gradient(&times, &mut bars, &mut fast)
                .unwrap();
            assert_eq!(l, field.kernel_bounds(Side::Both, &times));
            assert_eq!(m, field.kernel_bounds(Side::Compression, &times));
            assert!(
                m.iter().any(|m| *m > 0.0),
                "{n}: the compression side must matter"
            );
            let (l_bar, m_bar) = bars(&l, &m);
            let mut slow = vec![0.0; p.len()];
            field
                .bounds_gradient(Side::Both, &times, &l_bar, &mut slow)
                .unwrap();
            field
                .bounds_gradient(Side::Compression, &times, &m_bar, &mut slow)
                .unwrap();
            let scale = slow.iter().fold(0.0f64, |a, g| a.max(g.abs()));
            let worst = fast
                .iter()
                .zip(&slow)
                .fold(0.0f64, |a, (f, s)| a.max((f - s).abs()));
            assert!(
                scale > 0.0 && worst <= 1e-12 * scale,
                "{n}: {worst} of {scale}"
            );
        }
    }
}
