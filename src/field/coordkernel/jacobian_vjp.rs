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
//! and the distances is [`super::vjp`]'s, whose divergence terms are this pass at `J̄ = δ I`
//! (`E_ij = δ G_i`, `W_ij − W_ji = δ (P_i − P_j)`): a test checks the two agree.

use super::coordkernel_field::{CoordKernelField, CoordKernelTimePoint, MAX_FEATURES};
use super::eval::CoordKernelScratch;
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
        let k = self.config.n_rbf;
        let nq = self.config.n_features();
        let kappa = 1.0 / (n - 1) as f64;
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
        // Ȳ[(i, c), (j, a)] and H̄[(j, a), (m, c)].
        let yb = |i: usize, c: usize, j: usize, a: usize| y_bar[(i * dim + c) * nk + j * na + a];
        let hb = |j: usize, a: usize, m: usize, c: usize| h_bar[(j * na + a) * nd + m * dim + c];
        ws.h_bar[..nk].fill(0.0);
        let mut r = [0.0; MAX_DIM];
        let rad = &mut ws.radial;
        let mut a_bar = [0.0; MAX_FEATURES];
        let mut a1_bar = [0.0; MAX_FEATURES];
        for i in 0..n {
            for j in i + 1..n {
                let (_, d) = pair_geometry(x, dim, i, j, &mut r);
                rad.fill(self, point, d, true);
                let ij = i * n + j;
                let (phi, fd) = (ws.phi[ij], ws.fd[ij]);
                // The pair blocks: S = J̄_ii − J̄_ij + J̄_jj − J̄_ji.
                let mut s = [[0.0; MAX_DIM]; MAX_DIM];
                for c in 0..dim {
                    for c2 in 0..dim {
                        let at = |p: usize, m: usize| jac_bar[(p * dim + c) * nd + m * dim + c2];
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
                let mut phi_bar = trace;
                let mut r_bar = [0.0; MAX_DIM];
                for c in 0..dim {
                    let diff = v_bar[i * dim + c] - v_bar[j * dim + c];
                    phi_bar += diff * r[c];
                    r_bar[c] = phi * diff + fd * (s_sym_r[c] / d - beta * r[c] / (d * d));
                }
                let fd_bar = beta;
                a_bar[0] = phi_bar;
                a1_bar[0] = fd_bar;
                for a in 0..na {
                    let (hi, hj) = (ws.h[i * na + a], ws.h[j * na + a]);
                    let (ap, ax) = (rad.a[1 + a], rad.a[1 + na + a]);
                    let (a1p, a1x) = (rad.a1[1 + a], rad.a1[1 + na + a]);
                    let psi_ij = ap + hj * ax;
                    let psi_ji = ap + hi * ax;
                    let (mut psi_bar_ij, mut psi_bar_ji) = (0.0, 0.0);
                    for c in 0..dim {
                        let e_ij = yb(i, c, i, a) - yb(j, c, i, a);
                        let e_ji = yb(j, c, j, a) - yb(i, c, j, a);
                        psi_bar_ij += e_ij * r[c];
                        psi_bar_ji -= e_ji * r[c];
                        r_bar[c] += psi_ij * e_ij - psi_ji * e_ji;
                    }
                    let (hs, hp) = (hi + hj, hi * hj);
                    a_bar[1 + a] = phi_bar * hs + psi_bar_ij + psi_bar_ji;
                    a_bar[1 + na + a] = phi_bar * hp + psi_bar_ij * hj + psi_bar_ji * hi;
                    a1_bar[1 + a] = fd_bar * hs;
                    a1_bar[1 + na + a] = fd_bar * hp;
                    ws.h_bar[i * na + a] +=
                        phi_bar * psi_ij + fd_bar * (a1p + hj * a1x) + psi_bar_ji * ax;
                    ws.h_bar[j * na + a] +=
                        phi_bar * psi_ji + fd_bar * (a1p + hi * a1x) + psi_bar_ij * ax;
                }
                let mut d_bar = 0.0;
                for q in 0..nq {
                    let row = &mut m_bar[q * k..(q + 1) * k];
                    for kk in 0..k {
                        row[kk] += rad.b[kk] * a_bar[q] + rad.b1[kk] * a1_bar[q];
                    }
                    d_bar += rad.a1[q] * a_bar[q] + rad.a2[q] * a1_bar[q];
                }
                ws.d_bar[ij] = d_bar;
                ws.r_bar[ij * dim..(ij + 1) * dim].copy_from_slice(&r_bar[..dim]);
            }
        }
        // The coordinations and the shells' slopes in H, now that h̄ is complete.
        for i in 0..n {
            for j in i + 1..n {
                let (_, d) = pair_geometry(x, dim, i, j, &mut r);
                let ij = i * n + j;
                let mut d_bar = ws.d_bar[ij];
                let mut r_bar = [0.0; MAX_DIM];
                r_bar[..dim].copy_from_slice(&ws.r_bar[ij * dim..(ij + 1) * dim]);
                let mut u_bar = [0.0; MAX_DIM];
                for a in 0..na {
                    let (_, c1, c2) = self.shell(a, d);
                    let c_bar = kappa * (ws.h_bar[i * na + a] + ws.h_bar[j * na + a]);
                    let mut c1_bar = 0.0;
                    for c in 0..dim {
                        let w_ij = hb(i, a, i, c) - hb(i, a, j, c);
                        let w_ji = hb(j, a, j, c) - hb(j, a, i, c);
                        let w_diff = w_ij - w_ji;
                        c1_bar += kappa * w_diff * r[c] / d;
                        u_bar[c] += kappa * c1 * w_diff;
                    }
                    d_bar += c_bar * c1 + c1_bar * c2;
                }
                let mut u_r = 0.0;
                for c in 0..dim {
                    u_r += u_bar[c] * r[c];
                }
                d_bar -= u_r / (d * d);
                for c in 0..dim {
                    let g = r_bar[c] + u_bar[c] / d + d_bar * r[c] / d;
                    x_bar[i * dim + c] += g;
                    x_bar[j * dim + c] -= g;
                }
            }
        }
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
