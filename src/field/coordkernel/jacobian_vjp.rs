//! The reverse pass of one coordkernel evaluation's velocity *and dense Jacobian*: what
//! training by the exact-discrete likelihood needs (the RK4 map's step log-determinants are
//! built from stage Jacobians). Notation of [`super::eval`].
//!
//! With cotangents `v̄` and `J̄` (row-major like the Jacobian), `L = v̄·v + Σ J̄_ab J_ab` is
//! differentiated through the Jacobian's two parts:
//!
//! - the pair blocks: per unordered pair `⟨S, B⟩` with `B = φ I + F r rᵀ/d` and
//!   `S = J̄_ii − J̄_ij + J̄_jj − J̄_ji` (D × D blocks), so `φ̄ += tr S`, `F̄ += rᵀSr/d` and
//!   `r̄ += F [(S + Sᵀ) r/d − (rᵀSr/d) r/d²]`;
//! - the environment product `Y H`: `Ȳ = J̄ Hᵀ` and `H̄ = Yᵀ J̄`. Per pair and shell, `Y`'s
//!   entries give `E_ij = P̄_i − Ȳ[(j,·),(i,a)]` (with `P̄_i = Ȳ[(i,·),(i,a)]`, `P`'s cotangent),
//!   then `ψ̄_ij = E_ij·r`, `ψ̄_ji = −E_ji·r`, `r̄ += ψ_ij E_ij − ψ_ji E_ji`; `H`'s entries give
//!   `W_ij = Ḡ_i − H̄[(i,a),(j,·)]` (with `Ḡ_i = H̄[(i,a),(i,·)]`), then
//!   `c̄'_a += κ (W_ij − W_ji)·u` and `ū += κ c'_a (W_ij − W_ji)`.
//!
//! From there the chain through `φ`, `F`, `ψ` to the coordinations, the radial coefficients
//! and the distances is [`super::reverse_chain`]'s, shared with the divergence's pass
//! ([`super::vjp`]), whose seeds are this pass's at `J̄ = δ I` (`E_ij = δ G_i`,
//! `W_ij − W_ji = δ (P_i − P_j)`): a test checks the two agree.

use super::coordkernel_field::{CoordKernelField, CoordKernelTimePoint};
use super::eval::CoordKernelScratch;
use super::reverse_chain::{Seeds, reverse_chain};
use crate::field::pair_geometry;
use crate::geometry::MAX_DIM;

impl CoordKernelField {
    /// Adds `∂/∂x [v̄·v + Σ J̄_ab J_ab]` to `x_bar` and its `M(t)` part to `m_bar` (Q × K).
    #[allow(clippy::too_many_arguments)] // the reverse pass's buffers, unpacked
    pub(super) fn jacobian_vjp_into(
        &self,
        x: &[f64],
        point: &CoordKernelTimePoint,
        v_bar: &[f64],
        jac_bar: &[f64],
        x_bar: &mut [f64],
        m_bar: &mut [f64],
        ws: &mut CoordKernelScratch,
    ) {
        let n = self.layout.n_particles;
        let dim = self.layout.dim;
        let na = self.config.n_shells;
        let nd = n * dim;
        let nk = n * na;
        ws.ensure(self, true, true);
        ws.ensure_jacobian_reverse(nd * nk);
        let mut v = std::mem::take(&mut ws.v);
        self.evaluate(x, point, &mut v[..nd], ws, true);
        ws.v = v;
        self.environment_factors(x, ws);
        // Ȳ = J̄ Hᵀ and H̄ = Yᵀ J̄, both (N·D)² · N·A multiply-adds over contiguous rows.
        let (y, h) = (&ws.y[..nd * nk], &ws.dh[..nk * nd]);
        let (y_bar, h_bar) = (&mut ws.y_bar[..nd * nk], &mut ws.dh_bar[..nk * nd]);
        for (jb_row, yb_row) in jac_bar.chunks_exact(nd).zip(y_bar.chunks_exact_mut(nk)) {
            for (yb, h_row) in yb_row.iter_mut().zip(h.chunks_exact(nd)) {
                *yb = jb_row.iter().zip(h_row).map(|(a, b)| a * b).sum();
            }
        }
        h_bar.fill(0.0);
        for (jb_row, y_row) in jac_bar.chunks_exact(nd).zip(y.chunks_exact(nk)) {
            for (hb_row, &yv) in h_bar.chunks_exact_mut(nd).zip(y_row) {
                if yv != 0.0 {
                    for (hb, jb) in hb_row.iter_mut().zip(jb_row) {
                        *hb += yv * jb;
                    }
                }
            }
        }
        let (y_bar, h_bar) = (
            std::mem::take(&mut ws.y_bar),
            std::mem::take(&mut ws.dh_bar),
        );
        let seeds = JacobianSeeds {
            jac_bar,
            y_bar: &y_bar,
            h_bar: &h_bar,
            dim,
            na,
            nd,
            nk,
        };
        reverse_chain(self, x, point, v_bar, &seeds, x_bar, m_bar, ws);
        (ws.y_bar, ws.dh_bar) = (y_bar, h_bar);
    }

    /// Fills the Jacobian's environment factors `Y` and `H` (see
    /// [`CoordKernelField::jacobian_into`], which uses them too) from the state of an
    /// evaluation with the divergence at the same `x`; `ws` must hold room for them.
    pub(super) fn environment_factors(&self, x: &[f64], ws: &mut CoordKernelScratch) {
        let n = self.layout.n_particles;
        let dim = self.layout.dim;
        let na = self.config.n_shells;
        let nd = n * dim;
        let nk = n * na;
        let kappa = 1.0 / (n - 1) as f64;
        let mut r = [0.0; MAX_DIM];
        let (y, h) = (&mut ws.y[..nd * nk], &mut ws.dh[..nk * nd]);
        for i in 0..n {
            for a in 0..na {
                for c in 0..dim {
                    h[(i * na + a) * nd + i * dim + c] = ws.g[(i * na + a) * dim + c];
                    y[(i * dim + c) * nk + i * na + a] = ws.p[(i * na + a) * dim + c];
                }
            }
            for j in 0..n {
                if i == j {
                    continue;
                }
                let (_, d) = pair_geometry(x, dim, i, j, &mut r);
                for a in 0..na {
                    let f = -kappa * ws.c1[(i * n + j) * na + a] / d;
                    let psi_ji = ws.psi[(j * n + i) * na + a];
                    for c in 0..dim {
                        h[(i * na + a) * nd + j * dim + c] = f * r[c];
                        y[(i * dim + c) * nk + j * na + a] = psi_ji * r[c];
                    }
                }
            }
        }
    }
}

/// The Jacobian's cotangent `J̄` entering the chain (module docs), with `Ȳ = J̄ Hᵀ` and
/// `H̄ = Yᵀ J̄` computed.
struct JacobianSeeds<'a> {
    jac_bar: &'a [f64],
    y_bar: &'a [f64],
    h_bar: &'a [f64],
    dim: usize,
    na: usize,
    nd: usize,
    nk: usize,
}

impl JacobianSeeds<'_> {
    /// `Ȳ[(i, c), (j, a)]`.
    fn yb(&self, i: usize, c: usize, j: usize, a: usize) -> f64 {
        self.y_bar[(i * self.dim + c) * self.nk + j * self.na + a]
    }

    /// `H̄[(j, a), (m, c)]`.
    fn hb(&self, j: usize, a: usize, m: usize, c: usize) -> f64 {
        self.h_bar[(j * self.na + a) * self.nd + m * self.dim + c]
    }
}

impl Seeds for JacobianSeeds<'_> {
    /// The pair blocks `B = φ I + F r rᵀ/d`: with `S = J̄_ii − J̄_ij + J̄_jj − J̄_ji`,
    /// `φ̄ += tr S`, `F̄ = rᵀSr/d`, `r̄ += F [(S + Sᵀ) r/d − (rᵀSr/d) r/d²]`; no z coupling.
    fn pair(
        &self,
        (i, j): (usize, usize),
        r: &[f64; MAX_DIM],
        d: f64,
        _z: f64,
        fd: f64,
        r_bar: &mut [f64; MAX_DIM],
    ) -> (f64, f64, f64) {
        let (dim, nd) = (self.dim, self.nd);
        let mut s = [[0.0; MAX_DIM]; MAX_DIM];
        for c in 0..dim {
            for c2 in 0..dim {
                let at = |p: usize, m: usize| self.jac_bar[(p * dim + c) * nd + m * dim + c2];
                s[c][c2] = at(i, i) - at(i, j) + at(j, j) - at(j, i);
            }
        }
        let mut trace = 0.0;
        let mut rsr = 0.0;
        let mut s_sym_r = [0.0; MAX_DIM];
        for c in 0..dim {
            trace += s[c][c];
            for c2 in 0..dim {
                rsr += r[c] * s[c][c2] * r[c2];
                s_sym_r[c] += (s[c][c2] + s[c2][c]) * r[c2];
            }
        }
        let beta = rsr / d;
        for c in 0..dim {
            r_bar[c] = fd * (s_sym_r[c] / d - beta * r[c] / (d * d));
        }
        (trace, beta, 0.0)
    }

    /// `E_ij = P̄_i − Ȳ[(j,·),(i,a)]` with `P̄_i = Ȳ[(i,·),(i,a)]`.
    fn environment_out(
        &self,
        i: usize,
        j: usize,
        a: usize,
        e_ij: &mut [f64; MAX_DIM],
        e_ji: &mut [f64; MAX_DIM],
    ) {
        for c in 0..self.dim {
            e_ij[c] = self.yb(i, c, i, a) - self.yb(j, c, i, a);
            e_ji[c] = self.yb(j, c, j, a) - self.yb(i, c, j, a);
        }
    }

    fn z_coupling(&self) -> f64 {
        0.0
    }

    /// `W_ij − W_ji` with `W_ij = Ḡ_i − H̄[(i,a),(j,·)]` and `Ḡ_i = H̄[(i,a),(i,·)]`.
    fn environment_in(&self, i: usize, j: usize, a: usize, w: &mut [f64; MAX_DIM]) -> bool {
        for c in 0..self.dim {
            let w_ij = self.hb(i, a, i, c) - self.hb(i, a, j, c);
            let w_ji = self.hb(j, a, j, c) - self.hb(j, a, i, c);
            w[c] = w_ij - w_ji;
        }
        true
    }
}
