//! The forward pass of the coordkernel field: coordinations, the velocity, its exact
//! divergence and its exact dense Jacobian, in closed form.
//!
//! Notation (N particles in D dimensions, A shells, `κ = 1/(N − 1)`, ordered pairs i ≠ j):
//! `r_ij = x_i − x_j`, `d_ij = sqrt(|r_ij|² + ε_d)`, `u_ij = r_ij/d_ij`, shells `c_a(d)` with
//! slopes `c'_a`; coordinations `h_i^a = κ Σ_j c_a(d_ij)` with gradients
//! `G_i^a = ∂h_i^a/∂x_i = κ Σ_j c'_a(d_ij) u_ij` and `∂h_j^a/∂x_m = −κ c'_a(d_jm) u_jm` (m ≠ j);
//! pair coefficient `φ_ij = a_0(d) + Σ_a (h_i^a + h_j^a) a_a^+(d) + h_i^a h_j^a a_a^×(d)`
//! (symmetric in i, j) with `F_ij = ∂φ_ij/∂d` and `ψ_ij^a = ∂φ_ij/∂h_i^a = a_a^+ + h_j^a a_a^×`
//! (so `∂φ_ij/∂h_j^a = ψ_ji^a`); `P_i^a = Σ_j ψ_ij^a r_ij`.
//!
//! The Jacobian blocks `J_im = ∂v_i/∂x_m` are
//!
//! ```text
//! J_ii += Σ_j B_ij,  J_ij −= B_ij          B_ij = φ_ij I + F_ij r_ij u_ijᵀ
//! J_im += Σ_a Σ_j Y_ij^a (∂h_j^a/∂x_m)ᵀ    Y_ii^a = P_i^a,  Y_ij^a = ψ_ji^a r_ij (j ≠ i)
//! ```
//!
//! and its trace, the divergence, is O(N²):
//!
//! ```text
//! div = Σ_{i≠j} [D φ_ij + F_ij |r_ij|²/d_ij + κ Σ_a ψ_ji^a c'_a(d_ij) |r_ij|²/d_ij]
//!     + Σ_i Σ_a P_i^a · G_i^a
//! ```

use std::cell::RefCell;

use multiversion::multiversion;

use super::config::MAX_BASIS;
use super::coordkernel_field::{
    CoordKernelField, CoordKernelTimePoint, FOLD_LANES, MAX_FEATURES_PADDED,
};
use super::table::FunctionTable;
use crate::field::{grow_scratch, pair_geometry};
use crate::geometry::MAX_DIM;

/// Per-thread buffers of one evaluation, grown on first use and reused.
#[derive(Debug, Clone, Default)]
pub struct CoordKernelScratch {
    // Per particle and shell (index i·A + a), and per particle, shell and axis.
    pub(super) h: Vec<f64>,
    pub(super) g: Vec<f64>,
    pub(super) p: Vec<f64>,
    // Per ordered pair (index i·N + j), and per ordered pair and shell.
    pub(super) phi: Vec<f64>,
    pub(super) fd: Vec<f64>,
    pub(super) c1: Vec<f64>,
    pub(super) psi: Vec<f64>,
    // The Jacobian's environment factors: Y, (N·D) × (N·A), and H = ∂h/∂x, (N·A) × (N·D).
    pub(super) y: Vec<f64>,
    pub(super) dh: Vec<f64>,
    // The reverse pass: adjoints per particle and shell, per pair (i < j at i·N + j), and the
    // velocity of the forward pass it reruns.
    pub(super) h_bar: Vec<f64>,
    pub(super) c1_bar: Vec<f64>,
    pub(super) d_bar: Vec<f64>,
    pub(super) r_bar: Vec<f64>,
    pub(super) v: Vec<f64>,
    // The Jacobian's reverse pass: the cotangents of Y and H (same shapes).
    pub(super) y_bar: Vec<f64>,
    pub(super) dh_bar: Vec<f64>,
    // One pair's radial basis and coefficients, kept here so that an evaluation does not
    // zero 4.6 KB of stack per call.
    pub(super) radial: Radial,
}

impl CoordKernelScratch {
    pub(super) fn ensure(&mut self, f: &CoordKernelField, jacobian: bool, reverse: bool) {
        let n = f.layout.n_particles;
        let dim = f.layout.dim;
        let na = f.config.n_shells;
        let grow = grow_scratch;
        for (v, len) in [
            (&mut self.h, n * na),
            (&mut self.g, n * na * dim),
            (&mut self.p, n * na * dim),
            (&mut self.phi, n * n),
            (&mut self.fd, n * n),
            (&mut self.c1, n * n * na),
            (&mut self.psi, n * n * na),
        ] {
            grow(v, len);
        }
        if jacobian {
            grow(&mut self.y, n * dim * n * na);
            grow(&mut self.dh, n * dim * n * na);
        }
        if reverse {
            grow(&mut self.h_bar, n * na);
            grow(&mut self.c1_bar, n * n * na);
            grow(&mut self.d_bar, n * n);
            grow(&mut self.r_bar, n * n * dim);
            grow(&mut self.v, n * dim);
        }
    }
}

impl CoordKernelScratch {
    /// Grows the cotangents of the Jacobian's environment factors to `len` entries each.
    pub(super) fn ensure_jacobian_reverse(&mut self, len: usize) {
        grow_scratch(&mut self.y_bar, len);
        grow_scratch(&mut self.dh_bar, len);
    }
}

thread_local! {
    static SCRATCH: RefCell<CoordKernelScratch> = RefCell::new(CoordKernelScratch::default());
}

/// Tabulated forms of the field's functions of one distance at one flow time (see
/// `table.rs`): the coordination shells and the radial coefficients `a_q(d, t)`. An evaluation
/// given them integrates the tabulated field, whose derivatives it computes exactly.
#[derive(Clone, Copy)]
pub(super) struct Tables<'a> {
    pub shells: &'a FunctionTable,
    pub radial: &'a FunctionTable,
}

/// Runs `f` with this thread's scratch.
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut CoordKernelScratch) -> R) -> R {
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

/// The radial coefficients of one pair: `a_q(d)`, `a'_q(d)` (and `a''_q(d)` when asked) for
/// every feature q, from the time-folded `M(t)`.
#[derive(Clone)]
pub(super) struct Radial {
    pub b: [f64; MAX_BASIS],
    pub b1: [f64; MAX_BASIS],
    pub b2: [f64; MAX_BASIS],
    pub a: [f64; MAX_FEATURES_PADDED],
    pub a1: [f64; MAX_FEATURES_PADDED],
    pub a2: [f64; MAX_FEATURES_PADDED],
}

impl Default for Radial {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Radial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Radial { .. }")
    }
}

impl Radial {
    pub(super) fn new() -> Self {
        Radial {
            b: [0.0; MAX_BASIS],
            b1: [0.0; MAX_BASIS],
            b2: [0.0; MAX_BASIS],
            a: [0.0; MAX_FEATURES_PADDED],
            a1: [0.0; MAX_FEATURES_PADDED],
            a2: [0.0; MAX_FEATURES_PADDED],
        }
    }

    /// Fills the basis at `d` and the coefficients; the second derivatives only if `second`.
    #[inline(always)]
    pub(super) fn fill(
        &mut self,
        f: &CoordKernelField,
        point: &CoordKernelTimePoint,
        d: f64,
        second: bool,
    ) {
        let k = f.config.n_rbf;
        let qp = f.config.n_features().div_ceil(FOLD_LANES) * FOLD_LANES;
        if second {
            f.rbf_into(
                d,
                &mut self.b[..k],
                &mut self.b1[..k],
                Some(&mut self.b2[..k]),
            );
            fold_rows(&point.m_t, qp, &self.b[..k], &mut self.a[..qp]);
            fold_rows(&point.m_t, qp, &self.b1[..k], &mut self.a1[..qp]);
            fold_rows(&point.m_t, qp, &self.b2[..k], &mut self.a2[..qp]);
        } else {
            f.rbf_into(d, &mut self.b[..k], &mut self.b1[..k], None);
            fold_rows(&point.m_t, qp, &self.b[..k], &mut self.a[..qp]);
            fold_rows(&point.m_t, qp, &self.b1[..k], &mut self.a1[..qp]);
        }
    }
}

/// `out_q = Σ_k w_k m_t[k, q]` (m_t row-major K × qp, qp a multiple of [`FOLD_LANES`]),
/// summed in k order for every q, one register block of lanes at a time. Inlined into its
/// multiversioned callers.
#[inline(always)]
fn fold_rows(m_t: &[f64], qp: usize, w: &[f64], out: &mut [f64]) {
    for (lane, out) in out[..qp].chunks_exact_mut(FOLD_LANES).enumerate() {
        let mut acc = [0.0; FOLD_LANES];
        for (row, wk) in m_t.chunks_exact(qp).zip(w) {
            let r: &[f64; FOLD_LANES] = row[lane * FOLD_LANES..(lane + 1) * FOLD_LANES]
                .try_into()
                .unwrap_or(&[0.0; FOLD_LANES]);
            for (acc, r) in acc.iter_mut().zip(r) {
                *acc += r * wk;
            }
        }
        out.copy_from_slice(&acc);
    }
}

/// `c += a·b` for row-major `a` (rows × k), `b` (k × n) and `c` (rows × n): each entry gets
/// `Σ_k a_ik b_kj` summed in k order, in 4 × 8 register blocks (as `integrate::linalg`'s
/// square product; the last block row and column are shifted back to end at the edge and
/// their overlap added once). No fused multiply-add (Rust never contracts), so the bits are
/// the same on every machine.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
fn add_product(k: usize, n: usize, a: &[f64], b: &[f64], c: &mut [f64]) {
    const MR: usize = 4;
    const NR: usize = 8;
    let rows = c.len() / n;
    if rows < MR || n < NR {
        for (c_row, a_row) in c.chunks_exact_mut(n).zip(a.chunks_exact(k)) {
            for (j, cv) in c_row.iter_mut().enumerate() {
                let mut acc = 0.0;
                for (kk, av) in a_row.iter().enumerate() {
                    acc += av * b[kk * n + j];
                }
                *cv += acc;
            }
        }
        return;
    }
    let starts = |len: usize, block: usize| {
        (0..len.div_ceil(block)).map(move |q| ((q * block).min(len - block), q * block))
    };
    for (i, i_done) in starts(rows, MR) {
        for (j, j_done) in starts(n, NR) {
            let mut acc = [[0.0f64; NR]; MR];
            for kk in 0..k {
                let bk: &[f64; NR] = b[kk * n + j..kk * n + j + NR].try_into().unwrap();
                for (r, acc) in acc.iter_mut().enumerate() {
                    let aik = a[(i + r) * k + kk];
                    for (acc, b) in acc.iter_mut().zip(bk) {
                        *acc += aik * b;
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate().skip(i_done - i) {
                let row = &mut c[(i + r) * n + j_done..(i + r) * n + j + NR];
                for (c, acc) in row.iter_mut().zip(&acc[j_done - j..]) {
                    *c += acc;
                }
            }
        }
    }
}
impl CoordKernelField {
    /// [`CoordKernelField::evaluate`] with this thread's scratch: `v` and, with `with_div`,
    /// the divergence (returned; 0 otherwise) at the time point `point`.
    pub(super) fn velocity_at(
        &self,
        x: &[f64],
        point: &CoordKernelTimePoint,
        tables: Option<Tables<'_>>,
        v: &mut [f64],
        with_div: bool,
    ) -> f64 {
        debug_assert_eq!(x.len(), self.layout.len());
        with_scratch(|ws| evaluate_in(self, x, point, tables, v, ws, with_div))
    }

    /// `v`, the dense Jacobian and the returned divergence at the time point `point`.
    pub(super) fn velocity_jacobian_at(
        &self,
        x: &[f64],
        point: &CoordKernelTimePoint,
        tables: Option<Tables<'_>>,
        v: &mut [f64],
        jacobian: &mut [f64],
    ) -> f64 {
        debug_assert_eq!(jacobian.len(), x.len() * x.len());
        with_scratch(|ws| {
            let div = evaluate_in(self, x, point, tables, v, ws, true);
            self.jacobian_into(x, ws, jacobian);
            div
        })
    }

    /// `v(x, t)` into `v`; with `with_div` also the divergence (returned; 0 otherwise) and the
    /// per-pair state the Jacobian and the reverse pass read (`ψ`, `P`, `G`). The velocity's
    /// bits do not depend on `with_div`.
    pub(super) fn evaluate(
        &self,
        x: &[f64],
        point: &CoordKernelTimePoint,
        v: &mut [f64],
        ws: &mut CoordKernelScratch,
        with_div: bool,
    ) -> f64 {
        evaluate_in(self, x, point, None, v, ws, with_div)
    }

    /// The dense Jacobian (row-major, `(i·D + c)·N·D + m·D + c'`) from the state of an
    /// [`CoordKernelField::evaluate`] with the divergence at the same `x`.
    ///
    /// The environment blocks are one matrix product, `J += Y H` with the inner index (j, a):
    /// `Y[(i, c), (j, a)] = Y_ij^a` (`ψ_ji^a r_ij`, or `P_i^a` for j = i) and
    /// `H[(j, a), (m, c')] = ∂h_j^a/∂x_m` (`−κ c'_a(d_jm) u_jm`, or `G_j^a` for m = j):
    /// (N·D)² · N·A multiply-adds over contiguous rows, which vectorise.
    pub(super) fn jacobian_into(&self, x: &[f64], ws: &mut CoordKernelScratch, jac: &mut [f64]) {
        let n = self.layout.n_particles;
        let dim = self.layout.dim;
        let na = self.config.n_shells;
        let nd = n * dim;
        let nk = n * na;
        ws.ensure(self, true, false);
        jac.fill(0.0);
        self.environment_factors(x, ws);
        let mut r = [0.0; MAX_DIM];
        for i in 0..n {
            for j in 0..n {
                if i == j {
                    continue;
                }
                let (_, d) = pair_geometry(x, dim, i, j, &mut r);
                // Pair block B_ij = φ I + F r uᵀ.
                let (phi, fd) = (ws.phi[i * n + j], ws.fd[i * n + j]);
                for c in 0..dim {
                    for c2 in 0..dim {
                        let mut b = fd * r[c] * r[c2] / d;
                        if c == c2 {
                            b += phi;
                        }
                        jac[(i * dim + c) * nd + i * dim + c2] += b;
                        jac[(i * dim + c) * nd + j * dim + c2] -= b;
                    }
                }
            }
        }
        let (y, h) = (&ws.y[..nd * nk], &ws.dh[..nk * nd]);
        add_product(nk, nd, y, h, jac);
    }
}

/// [`CoordKernelField::evaluate`], compiled for the host's vector extensions (the helpers it
/// calls are inlined into it); with `tables`, of the tabulated field (distances past the
/// tables use the exact functions).
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
fn evaluate_in(
    f: &CoordKernelField,
    x: &[f64],
    point: &CoordKernelTimePoint,
    tables: Option<Tables<'_>>,
    v: &mut [f64],
    ws: &mut CoordKernelScratch,
    with_div: bool,
) -> f64 {
    let n = f.layout.n_particles;
    let dim = f.layout.dim;
    let na = f.config.n_shells;
    let kappa = 1.0 / (n - 1) as f64;
    ws.ensure(f, false, false);
    ws.h[..n * na].fill(0.0);
    ws.g[..n * na * dim].fill(0.0);
    let mut r = [0.0; MAX_DIM];
    let (mut shell, mut shell1) = ([0.0; MAX_BASIS], [0.0; MAX_BASIS]);
    // Coordinations (and their gradients G for the divergence).
    for i in 0..n {
        for j in i + 1..n {
            let (_, d) = pair_geometry(x, dim, i, j, &mut r);
            if !tables.is_some_and(|t| t.shells.eval(d, &mut shell, &mut shell1)) {
                f.shells_into(d, &mut shell[..na], &mut shell1[..na]);
            }
            for a in 0..na {
                let (c, c1) = (shell[a], shell1[a]);
                ws.h[i * na + a] += kappa * c;
                ws.h[j * na + a] += kappa * c;
                ws.c1[(i * n + j) * na + a] = c1;
                ws.c1[(j * n + i) * na + a] = c1;
                if with_div {
                    let f = kappa * c1 / d;
                    for c in 0..dim {
                        ws.g[(i * na + a) * dim + c] += f * r[c];
                        ws.g[(j * na + a) * dim + c] -= f * r[c];
                    }
                }
            }
        }
    }
    v.fill(0.0);
    if with_div {
        ws.p[..n * na * dim].fill(0.0);
    }
    let mut div = 0.0;
    let rad = &mut ws.radial;
    for i in 0..n {
        for j in i + 1..n {
            let (s, d) = pair_geometry(x, dim, i, j, &mut r);
            if !tables.is_some_and(|t| t.radial.eval(d, &mut rad.a, &mut rad.a1)) {
                rad.fill(f, point, d, false);
            }
            let (hi, hj) = (&ws.h[i * na..(i + 1) * na], &ws.h[j * na..(j + 1) * na]);
            let (mut phi, mut fd) = (rad.a[0], rad.a1[0]);
            for a in 0..na {
                let (hs, hp) = (hi[a] + hj[a], hi[a] * hj[a]);
                phi += hs * rad.a[1 + a] + hp * rad.a[1 + na + a];
                fd += hs * rad.a1[1 + a] + hp * rad.a1[1 + na + a];
            }
            for c in 0..dim {
                v[i * dim + c] += phi * r[c];
                v[j * dim + c] -= phi * r[c];
            }
            ws.phi[i * n + j] = phi;
            ws.phi[j * n + i] = phi;
            ws.fd[i * n + j] = fd;
            ws.fd[j * n + i] = fd;
            if !with_div {
                continue;
            }
            let z = s / d;
            let mut pair_div = 2.0 * (dim as f64 * phi + fd * z);
            for a in 0..na {
                let psi_ij = rad.a[1 + a] + hj[a] * rad.a[1 + na + a];
                let psi_ji = rad.a[1 + a] + hi[a] * rad.a[1 + na + a];
                ws.psi[(i * n + j) * na + a] = psi_ij;
                ws.psi[(j * n + i) * na + a] = psi_ji;
                pair_div += kappa * (psi_ij + psi_ji) * ws.c1[(i * n + j) * na + a] * z;
                for c in 0..dim {
                    ws.p[(i * na + a) * dim + c] += psi_ij * r[c];
                    ws.p[(j * na + a) * dim + c] -= psi_ji * r[c];
                }
            }
            div += pair_div;
        }
    }
    if with_div {
        let len = n * na * dim;
        div += ws.p[..len]
            .iter()
            .zip(&ws.g[..len])
            .map(|(p, g)| p * g)
            .sum::<f64>();
    }
    div
}
