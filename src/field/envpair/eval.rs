//! The forward pass of the envpair field: environments, the pair network, the velocity, its
//! exact divergence and its exact Jacobian, all in closed form from the networks' values and
//! slopes (no automatic differentiation, no stochastic trace).
//!
//! Notation (ordered pairs i ≠ j, N particles in D dimensions, `n1 = N − 1`):
//! `r_ij = x_i − x_j`, `d_ij = sqrt(|r_ij|² + ε_d)`, `u_ij = r_ij/d_ij`; messages
//! `m_ij = m(d_ij, t) ∈ R^E` (symmetric in i, j) with slopes `m'_ij = ∂m/∂d`;
//! `h0_i = Σ_j m_ij/n1`, `h_i = h0_i + node(h0_i)` with `G_i = ∂h_i/∂h0_i`;
//! `φ_ij = c(t) + e(d_ij)·ψ(g(d_ij), τ(t), h_i, h_j)`, `s_ij = ∂φ_ij/∂d_ij`,
//! `a_ij = ∂φ_ij/∂h_i`, `b_ij = ∂φ_ij/∂h_j`; `v_i = Σ_j φ_ij r_ij − (1/N)Σ_k Σ_j φ_kj r_kj`.
//!
//! Then `∂h0_i/∂x_l = −m'_il u_ilᵀ/n1` (l ≠ i), `Σ_k m'_ik u_ikᵀ/n1` (l = i), and with
//! `q_il = G_i m'_il` the Jacobian blocks of the unprojected field are
//! `J_ii += Σ_j B_ij`, `J_ij −= B_ij` (`B_ij = φ_ij I + s_ij r_ij u_ijᵀ`),
//! `J_il += (Σ_j r_ij a_ij·q_il) (u_il... )` and `J_il += Σ_j r_ij (b_ij·q_jl)(…)` as written
//! out in [`EnvPairField::jacobian_into`]. The projection removes the row mean of each column;
//! it leaves the trace unchanged (Σ_k v_k is translation invariant), so the divergence is
//!
//! `div = Σ_ij (D φ_ij + s_ij |r_ij|²/d_ij) + Σ_ij a_ij·(T_i r_ij)/n1
//!        + Σ_ij (b_ij·q_ji) |r_ij|²/(d_ij n1)`, `T_i = G_i Σ_k m'_ik u_ikᵀ`.

use std::cell::RefCell;

use super::config::MAX_WIDTH;
use super::envpair_field::{EnvPairField, EnvPairTimePoint};
use super::net::{add_rows, dot, dot_rows, silu_and_slope};
use crate::field::{grow_scratch, pair_geometry};
use crate::geometry::MAX_DIM;

/// Per-thread buffers of one evaluation, grown on first use and reused.
#[derive(Debug, Clone, Default)]
pub struct EnvPairScratch {
    // Per particle.
    pub(super) h0: Vec<f64>,
    pub(super) zn: Vec<f64>,
    pub(super) h: Vec<f64>,
    pub(super) g_mat: Vec<f64>,
    pub(super) p_i: Vec<f64>,
    pub(super) p_j: Vec<f64>,
    // Per ordered pair (index i·N + j).
    pub(super) m_slope: Vec<f64>,
    pub(super) phi: Vec<f64>,
    pub(super) s: Vec<f64>,
    pub(super) a: Vec<f64>,
    pub(super) b: Vec<f64>,
    pub(super) q: Vec<f64>,
    // The reverse pass's adjoints per particle.
    pub(super) h_bar: Vec<f64>,
    pub(super) h0_bar: Vec<f64>,
    pub(super) delta: Vec<f64>,
}

impl EnvPairScratch {
    pub(super) fn ensure(&mut self, f: &EnvPairField, pairs: bool) {
        let n = f.layout.n_particles;
        let b = f.blocks;
        let grow = grow_scratch;
        grow(&mut self.h0, n * b.e);
        grow(&mut self.zn, n * b.hm);
        grow(&mut self.h, n * b.e);
        grow(&mut self.p_i, n * b.h);
        grow(&mut self.p_j, n * b.h);
        grow(&mut self.h_bar, n * b.e);
        grow(&mut self.h0_bar, n * b.e);
        if pairs {
            grow(&mut self.g_mat, n * b.e * b.e);
            grow(&mut self.m_slope, n * n * b.e);
            grow(&mut self.phi, n * n);
            grow(&mut self.s, n * n);
            grow(&mut self.a, n * n * b.e);
            grow(&mut self.b, n * n * b.e);
            grow(&mut self.q, n * n * b.e);
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<EnvPairScratch> = RefCell::new(EnvPairScratch::default());
}

/// Runs `f` with this thread's scratch (allocated once per thread, then reused).
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut EnvPairScratch) -> R) -> R {
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

/// The pair network's activations and slopes for one ordered pair.
pub(super) struct PairNet {
    pub p0_slope: [f64; MAX_WIDTH],
    pub a0: [f64; MAX_WIDTH],
    pub p1_slope: [f64; MAX_WIDTH],
    pub a1: [f64; MAX_WIDTH],
    pub psi: f64,
}

/// The message network's activations and slopes for one pair distance.
pub(super) struct MessageNet {
    pub z0_slope: [f64; MAX_WIDTH],
    pub a0: [f64; MAX_WIDTH],
    pub z1_slope: [f64; MAX_WIDTH],
    pub m: [f64; MAX_WIDTH],
}

impl EnvPairField {
    /// The message network at RBF values `g` (time folded into `point`).
    #[inline]
    pub(super) fn message(&self, g: &[f64], point: &EnvPairTimePoint) -> MessageNet {
        let b = self.blocks;
        let p = &self.params;
        let mut out = MessageNet {
            z0_slope: [0.0; MAX_WIDTH],
            a0: [0.0; MAX_WIDTH],
            z1_slope: [0.0; MAX_WIDTH],
            m: [0.0; MAX_WIDTH],
        };
        let mut z0 = [0.0; MAX_WIDTH];
        let z0 = &mut z0[..b.hm];
        z0.copy_from_slice(&point.message_bias[..b.hm]);
        add_rows(g, &p[b.message_w0()][..b.k * b.hm], z0);
        for q in 0..b.hm {
            (out.a0[q], out.z0_slope[q]) = silu_and_slope(z0[q]);
        }
        let mut z1 = [0.0; MAX_WIDTH];
        let z1 = &mut z1[..b.e];
        z1.copy_from_slice(&p[b.message_b1()]);
        add_rows(&out.a0[..b.hm], &p[b.message_w1()], z1);
        for e in 0..b.e {
            (out.m[e], out.z1_slope[e]) = silu_and_slope(z1[e]);
        }
        out
    }

    /// `∂m/∂d` from the message network's slopes and the RBF slopes `dg`, into `out` (E).
    #[inline]
    pub(super) fn message_slope(&self, net: &MessageNet, dg: &[f64], out: &mut [f64]) {
        let b = self.blocks;
        let p = &self.params;
        let mut dz0 = [0.0; MAX_WIDTH];
        let dz0 = &mut dz0[..b.hm];
        add_rows(dg, &p[b.message_w0()][..b.k * b.hm], dz0);
        for (dz, s) in dz0.iter_mut().zip(&net.z0_slope) {
            *dz *= s;
        }
        out.fill(0.0);
        add_rows(dz0, &p[b.message_w1()], out);
        for (o, s) in out.iter_mut().zip(&net.z1_slope) {
            *o *= s;
        }
    }

    /// Messages, environments and the per-particle parts of the pair network's first layer
    /// (`p_i = W_iᵀ h_i`, `p_j = W_jᵀ h_i`); with `slopes`, also `m'` per ordered pair and
    /// `G_i`.
    pub(super) fn environment(
        &self,
        x: &[f64],
        point: &EnvPairTimePoint,
        ws: &mut EnvPairScratch,
        slopes: bool,
    ) {
        let n = self.layout.n_particles;
        let dim = self.layout.dim;
        let b = self.blocks;
        let p = &self.params;
        let (e_w, hm) = (b.e, b.hm);
        let h0 = &mut ws.h0[..n * e_w];
        h0.fill(0.0);
        let mut r = [0.0; MAX_DIM];
        let r = &mut r[..dim];
        let mut g = [0.0; MAX_WIDTH];
        let mut dg = [0.0; MAX_WIDTH];
        let mut ms = [0.0; MAX_WIDTH];
        for i in 0..n {
            for k in i + 1..n {
                let (_, d) = pair_geometry(x, dim, i, k, r);
                self.rbf_into(d, &mut g[..b.k], &mut dg[..b.k]);
                let net = self.message(&g[..b.k], point);
                for e in 0..e_w {
                    h0[i * e_w + e] += net.m[e];
                    h0[k * e_w + e] += net.m[e];
                }
                if slopes {
                    self.message_slope(&net, &dg[..b.k], &mut ms[..e_w]);
                    ws.m_slope[(i * n + k) * e_w..(i * n + k + 1) * e_w]
                        .copy_from_slice(&ms[..e_w]);
                    ws.m_slope[(k * n + i) * e_w..(k * n + i + 1) * e_w]
                        .copy_from_slice(&ms[..e_w]);
                }
            }
        }
        let inv_n1 = 1.0 / (n - 1) as f64;
        h0.iter_mut().for_each(|v| *v *= inv_n1);
        let (v0, c0, v1, c1) = (
            &p[b.node_w0()],
            &p[b.node_b0()],
            &p[b.node_w1()],
            &p[b.node_b1()],
        );
        let w0 = &p[b.pair_w0()];
        let w_i = &w0[(b.k + b.r) * b.h..(b.k + b.r + e_w) * b.h];
        let w_j = &w0[(b.k + b.r + e_w) * b.h..];
        for i in 0..n {
            let h0_i = &ws.h0[i * e_w..(i + 1) * e_w];
            let zn = &mut ws.zn[i * hm..(i + 1) * hm];
            zn.copy_from_slice(c0);
            add_rows(h0_i, v0, zn);
            let mut act = [0.0; MAX_WIDTH];
            let mut slope = [0.0; MAX_WIDTH];
            for q in 0..hm {
                (act[q], slope[q]) = silu_and_slope(zn[q]);
            }
            let h_i = &mut ws.h[i * e_w..(i + 1) * e_w];
            for e in 0..e_w {
                h_i[e] = h0_i[e] + c1[e];
            }
            add_rows(&act[..hm], v1, h_i);
            if slopes {
                // G[e][f] = δ_ef + Σ_q V1[q][e]·silu'(zn_q)·V0[f][q]
                let g_i = &mut ws.g_mat[i * e_w * e_w..(i + 1) * e_w * e_w];
                for e in 0..e_w {
                    for f in 0..e_w {
                        let mut sum = if e == f { 1.0 } else { 0.0 };
                        for q in 0..hm {
                            sum += v1[q * e_w + e] * slope[q] * v0[f * hm + q];
                        }
                        g_i[e * e_w + f] = sum;
                    }
                }
            }
            let h_i = &ws.h[i * e_w..(i + 1) * e_w];
            let pi = &mut ws.p_i[i * b.h..(i + 1) * b.h];
            pi.fill(0.0);
            add_rows(h_i, w_i, pi);
            let pj = &mut ws.p_j[i * b.h..(i + 1) * b.h];
            pj.fill(0.0);
            add_rows(h_i, w_j, pj);
        }
    }

    /// `W_gᵀ y` into `out` (H): the distance rows of the pair network's first layer applied
    /// to `y` (the RBF values g, or their slopes g'). Shared by the pairs (i, j) and (j, i).
    #[inline]
    pub(super) fn pair_distance_part(&self, y: &[f64], out: &mut [f64]) {
        let b = self.blocks;
        out.fill(0.0);
        add_rows(y, &self.params[b.pair_w0()][..b.k * b.h], out);
    }

    /// The pair network ψ for the ordered pair (i, j), with `g_part = W_gᵀ g(d_ij)`.
    #[inline]
    pub(super) fn pair_net(
        &self,
        g_part: &[f64],
        point: &EnvPairTimePoint,
        ws: &EnvPairScratch,
        i: usize,
        j: usize,
    ) -> PairNet {
        let b = self.blocks;
        let h = b.h;
        let p = &self.params;
        let mut p0 = [0.0; MAX_WIDTH];
        let p0 = &mut p0[..h];
        let (pi, pj) = (&ws.p_i[i * h..(i + 1) * h], &ws.p_j[j * h..(j + 1) * h]);
        for o in 0..h {
            p0[o] = g_part[o] + point.pair_bias[o] + pi[o] + pj[o];
        }
        let mut out = PairNet {
            p0_slope: [0.0; MAX_WIDTH],
            a0: [0.0; MAX_WIDTH],
            p1_slope: [0.0; MAX_WIDTH],
            a1: [0.0; MAX_WIDTH],
            psi: 0.0,
        };
        for o in 0..h {
            (out.a0[o], out.p0_slope[o]) = silu_and_slope(p0[o]);
        }
        let mut p1 = [0.0; MAX_WIDTH];
        let p1 = &mut p1[..h];
        p1.copy_from_slice(&p[b.pair_b1()]);
        add_rows(&out.a0[..h], &p[b.pair_w1()], p1);
        for o in 0..h {
            (out.a1[o], out.p1_slope[o]) = silu_and_slope(p1[o]);
        }
        out.psi = dot(&out.a1[..h], &p[b.pair_w2()]) + p[b.pair_b2()][0];
        out
    }

    /// `δ0 = ∂ψ/∂p0` (the pre-activations of the pair network's first layer) into `delta0`,
    /// scaled by `scale`.
    #[inline]
    pub(super) fn pair_backward(&self, net: &PairNet, scale: f64, delta0: &mut [f64]) {
        let b = self.blocks;
        let h = b.h;
        let p = &self.params;
        let mut d1 = [0.0; MAX_WIDTH];
        let d1 = &mut d1[..h];
        for ((d, w), s) in d1.iter_mut().zip(&p[b.pair_w2()]).zip(&net.p1_slope) {
            *d = scale * w * s;
        }
        dot_rows(&p[b.pair_w1()], d1, delta0);
        for (d, s) in delta0.iter_mut().zip(&net.p0_slope) {
            *d *= s;
        }
    }

    /// `v(x, t)` into `v` (projected to Σ v_i = 0); with `derivatives`, returns the exact
    /// divergence and leaves in `ws` what [`EnvPairField::jacobian_into`] needs (otherwise
    /// returns 0).
    pub(super) fn evaluate(
        &self,
        x: &[f64],
        point: &EnvPairTimePoint,
        v: &mut [f64],
        ws: &mut EnvPairScratch,
        derivatives: bool,
    ) -> f64 {
        let n = self.layout.n_particles;
        let dim = self.layout.dim;
        let b = self.blocks;
        let e_w = b.e;
        ws.ensure(self, derivatives);
        self.environment(x, point, ws, derivatives);
        v.fill(0.0);
        let mut r = [0.0; MAX_DIM];
        let r = &mut r[..dim];
        let mut g = [0.0; MAX_WIDTH];
        let mut dg = [0.0; MAX_WIDTH];
        let mut delta0 = [0.0; MAX_WIDTH];
        let mut g_part = [0.0; MAX_WIDTH];
        let mut g_slope_part = [0.0; MAX_WIDTH];
        let w0 = &self.params[b.pair_w0()];
        let w_i = &w0[(b.k + b.r) * b.h..(b.k + b.r + e_w) * b.h];
        let w_j = &w0[(b.k + b.r + e_w) * b.h..];
        let mut div = 0.0;
        for i in 0..n {
            for j in i + 1..n {
                let (r2, d) = pair_geometry(x, dim, i, j, r);
                let (env, env_slope) = self.rbf_into(d, &mut g[..b.k], &mut dg[..b.k]);
                self.pair_distance_part(&g[..b.k], &mut g_part[..b.h]);
                if derivatives {
                    self.pair_distance_part(&dg[..b.k], &mut g_slope_part[..b.h]);
                }
                // (i, j) with r_ij, then (j, i) with r_ji = −r_ij.
                for (a, o, sign) in [(i, j, 1.0), (j, i, -1.0)] {
                    let net = self.pair_net(&g_part[..b.h], point, ws, a, o);
                    let phi = point.tail + env * net.psi;
                    for c in 0..dim {
                        v[a * dim + c] += phi * sign * r[c];
                    }
                    if derivatives {
                        let delta0 = &mut delta0[..b.h];
                        self.pair_backward(&net, 1.0, delta0);
                        // ∂ψ/∂d through g: δ0 · (W_gᵀ g').
                        let psi_d = dot(&g_slope_part[..b.h], delta0);
                        let s = env_slope * net.psi + env * psi_d;
                        let ao = a * n + o;
                        ws.phi[ao] = phi;
                        ws.s[ao] = s;
                        let av = &mut ws.a[ao * e_w..(ao + 1) * e_w];
                        dot_rows(w_i, delta0, av);
                        av.iter_mut().for_each(|v| *v *= env);
                        let bv = &mut ws.b[ao * e_w..(ao + 1) * e_w];
                        dot_rows(w_j, delta0, bv);
                        bv.iter_mut().for_each(|v| *v *= env);
                        div += dim as f64 * phi + s * r2 / d;
                    }
                }
            }
        }
        project_out_mean(v, dim);
        if !derivatives {
            return 0.0;
        }
        self.environment_slopes(ws);
        div + self.environment_divergence(x, ws)
    }

    /// The two environment terms of the divergence (see the module documentation).
    fn environment_divergence(&self, x: &[f64], ws: &EnvPairScratch) -> f64 {
        let n = self.layout.n_particles;
        let dim = self.layout.dim;
        let e_w = self.blocks.e;
        let inv_n1 = 1.0 / (n - 1) as f64;
        let mut r = [0.0; MAX_DIM];
        let r = &mut r[..dim];
        let mut t_i = [0.0; MAX_WIDTH * MAX_DIM];
        let t_i = &mut t_i[..e_w * dim];
        let mut div = 0.0;
        for i in 0..n {
            // T_i = G_i Σ_k m'_ik u_ikᵀ = Σ_k q_ik u_ikᵀ (E × D).
            t_i.fill(0.0);
            for k in 0..n {
                if k == i {
                    continue;
                }
                let (_, d) = pair_geometry(x, dim, i, k, r);
                let ik = i * n + k;
                let q = &ws.q[ik * e_w..(ik + 1) * e_w];
                for e in 0..e_w {
                    for c in 0..dim {
                        t_i[e * dim + c] += q[e] * r[c] / d;
                    }
                }
            }
            for j in 0..n {
                if j == i {
                    continue;
                }
                let (r2, d) = pair_geometry(x, dim, i, j, r);
                let ij = i * n + j;
                let a = &ws.a[ij * e_w..(ij + 1) * e_w];
                for e in 0..e_w {
                    let tr: f64 = (0..dim).map(|c| t_i[e * dim + c] * r[c]).sum();
                    div += a[e] * tr * inv_n1;
                }
                // (b_ij · q_ji) |r_ij|²/(d_ij n1)
                let ji = j * n + i;
                let bb = &ws.b[ij * e_w..(ij + 1) * e_w];
                div += dot(bb, &ws.q[ji * e_w..(ji + 1) * e_w]) * r2 / d * inv_n1;
            }
        }
        div
    }

    /// `q_il = G_i m'_il` for every ordered pair: how particle l's distance moves h_i, shared
    /// by the divergence and the Jacobian.
    fn environment_slopes(&self, ws: &mut EnvPairScratch) {
        let n = self.layout.n_particles;
        let e_w = self.blocks.e;
        for i in 0..n {
            let g_i = &ws.g_mat[i * e_w * e_w..(i + 1) * e_w * e_w];
            for l in 0..n {
                if l == i {
                    continue;
                }
                let il = i * n + l;
                for e in 0..e_w {
                    ws.q[il * e_w + e] = dot(
                        &g_i[e * e_w..(e + 1) * e_w],
                        &ws.m_slope[il * e_w..(il + 1) * e_w],
                    );
                }
            }
        }
    }

    /// The dense Jacobian `∂v_a/∂x_b` (row-major, n × n) from the state `evaluate` left in
    /// `ws` with `derivatives` at the same x and time (including `q`).
    pub(super) fn jacobian_into(&self, x: &[f64], ws: &EnvPairScratch, jac: &mut [f64]) {
        let n = self.layout.n_particles;
        let dim = self.layout.dim;
        let e_w = self.blocks.e;
        let len = n * dim;
        let inv_n1 = 1.0 / (n - 1) as f64;
        jac.fill(0.0);
        let mut r = [0.0; MAX_DIM];
        let r = &mut r[..dim];
        let mut u = [0.0; MAX_DIM];
        let u = &mut u[..dim];
        let mut w = [0.0; MAX_DIM];
        let w = &mut w[..dim];
        let add_block =
            |jac: &mut [f64], i: usize, l: usize, left: &[f64], right: &[f64], k: f64| {
                for c in 0..dim {
                    let row = (i * dim + c) * len + l * dim;
                    for dd in 0..dim {
                        jac[row + dd] += k * left[c] * right[dd];
                    }
                }
            };
        // Direct pair terms: B_ij = φ I + s r uᵀ on (i, i) and −B_ij on (i, j).
        for i in 0..n {
            for j in 0..n {
                if i == j {
                    continue;
                }
                let (_, d) = pair_geometry(x, dim, i, j, r);
                let ij = i * n + j;
                let (phi, s) = (ws.phi[ij], ws.s[ij]);
                for c in 0..dim {
                    u[c] = r[c] / d;
                    jac[(i * dim + c) * len + i * dim + c] += phi;
                    jac[(i * dim + c) * len + j * dim + c] -= phi;
                }
                add_block(jac, i, i, r, u, s);
                add_block(jac, i, j, r, u, -s);
            }
        }
        // Environment of i: w_il = Σ_j r_ij (a_ij·q_il)/n1 on (i, i) with +u_ilᵀ, on (i, l)
        // with −u_ilᵀ. Environment of j: r_ij (b_ij·q_jl)/n1 on (i, j) with +u_jlᵀ, on (i, l)
        // with −u_jlᵀ.
        let mut rj = [0.0; MAX_DIM];
        let rj = &mut rj[..dim];
        for i in 0..n {
            for l in 0..n {
                if l == i {
                    continue;
                }
                let il = i * n + l;
                let q_il = &ws.q[il * e_w..(il + 1) * e_w];
                w.fill(0.0);
                for j in 0..n {
                    if j == i {
                        continue;
                    }
                    pair_geometry(x, dim, i, j, rj);
                    let ij = i * n + j;
                    let k = dot(&ws.a[ij * e_w..(ij + 1) * e_w], q_il) * inv_n1;
                    for c in 0..dim {
                        w[c] += k * rj[c];
                    }
                }
                let (_, d) = pair_geometry(x, dim, i, l, r);
                for c in 0..dim {
                    u[c] = r[c] / d;
                }
                add_block(jac, i, i, w, u, 1.0);
                add_block(jac, i, l, w, u, -1.0);
            }
            for j in 0..n {
                if j == i {
                    continue;
                }
                pair_geometry(x, dim, i, j, rj);
                let ij = i * n + j;
                let b_ij = &ws.b[ij * e_w..(ij + 1) * e_w];
                for l in 0..n {
                    if l == j {
                        continue;
                    }
                    let jl = j * n + l;
                    let k = dot(b_ij, &ws.q[jl * e_w..(jl + 1) * e_w]) * inv_n1;
                    let (_, d) = pair_geometry(x, dim, j, l, r);
                    for c in 0..dim {
                        u[c] = r[c] / d;
                    }
                    add_block(jac, i, j, rj, u, k);
                    add_block(jac, i, l, rj, u, -k);
                }
            }
        }
        // Projection: subtract the mean over particles of each (component, column).
        let inv_n = 1.0 / n as f64;
        for c in 0..dim {
            for col in 0..len {
                let mean: f64 = (0..n).map(|k| jac[(k * dim + c) * len + col]).sum::<f64>() * inv_n;
                for k in 0..n {
                    jac[(k * dim + c) * len + col] -= mean;
                }
            }
        }
    }
}

/// Subtracts the mean over particles from each component.
pub(super) fn project_out_mean(v: &mut [f64], dim: usize) {
    let n = v.len() / dim;
    for c in 0..dim {
        let mean = v.iter().skip(c).step_by(dim).sum::<f64>() / n as f64;
        v.iter_mut().skip(c).step_by(dim).for_each(|x| *x -= mean);
    }
}
