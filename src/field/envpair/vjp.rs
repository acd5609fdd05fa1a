//! The reverse pass of one envpair evaluation with respect to x and the parameters, for a
//! cotangent of the velocity (flow matching trains on velocities alone; the divergence has no
//! reverse pass in this family, see [`crate::field::TrainableField::DIVERGENCE_REVERSE`]).
//!
//! It runs the forward pass again (environments, then each pair's network) and walks it
//! backwards: the pair networks pair by pair (their input gradients with respect to `h_i` and
//! `h_j` are linear in the per-pair δ, so they are summed per particle first), then the node
//! network per particle, then the messages per unordered pair.

use super::config::MAX_WIDTH;
use super::envpair_field::{EnvPairField, EnvPairTimePoint};
use super::eval::EnvPairScratch;
use super::net::{add_outer, dot, dot_rows, silu_and_slope};
use crate::field::pair_geometry;
use crate::geometry::MAX_DIM;

impl EnvPairField {
    /// Adds `v̄ᵀ ∂v/∂x` to `x_bar` and `v̄ᵀ ∂v/∂θ` to `theta_bar` (flat parameter layout) for
    /// `v = v(x, t)` at `point`. No size checks: the caller sized everything.
    pub(crate) fn vjp_into(
        &self,
        x: &[f64],
        point: &EnvPairTimePoint,
        v_bar: &[f64],
        x_bar: &mut [f64],
        theta_bar: &mut [f64],
        ws: &mut EnvPairScratch,
    ) {
        let n = self.layout.n_particles;
        let dim = self.layout.dim;
        let bl = self.blocks;
        let (k_w, e_w, hm, h_w) = (bl.k, bl.e, bl.hm, bl.h);
        ws.ensure(self, false);
        self.environment(x, point, ws, false);
        let p = &self.params;

        // The projection's transpose: v̄ ← v̄ − mean(v̄) per component.
        let mut mean = [0.0; MAX_DIM];
        for vb in v_bar.chunks_exact(dim) {
            for c in 0..dim {
                mean[c] += vb[c] / n as f64;
            }
        }
        // Per-particle sums of the pair networks' δ0 with particle as first / second index.
        let grow = |v: &mut Vec<f64>, len: usize| {
            v.clear();
            v.resize(len, 0.0);
        };
        // Taken out of the scratch while the pair networks read it.
        let mut delta = std::mem::take(&mut ws.delta);
        grow(&mut delta, 2 * n * h_w);
        let (delta_i, delta_j) = delta.split_at_mut(n * h_w);
        let mut delta_sum = [0.0; MAX_WIDTH];
        let mut tail_bar = 0.0;

        let w0 = &p[bl.pair_w0()];
        let v_bar_centred = |i: usize, c: usize| v_bar[i * dim + c] - mean[c];
        let w_pair1 = &p[bl.pair_w1()];
        let w_pair2 = &p[bl.pair_w2()];
        let mut r = [0.0; MAX_DIM];
        let r = &mut r[..dim];
        let mut g = [0.0; MAX_WIDTH];
        let mut dg = [0.0; MAX_WIDTH];
        let mut d1 = [0.0; MAX_WIDTH];
        let mut d0 = [0.0; MAX_WIDTH];
        let mut g_part = [0.0; MAX_WIDTH];
        let mut g_slope_part = [0.0; MAX_WIDTH];
        let mut d0_pair = [0.0; MAX_WIDTH];
        {
            let (head, _) = theta_bar.split_at_mut(bl.tail().start);
            for i in 0..n {
                for j in i + 1..n {
                    let (_, d) = pair_geometry(x, dim, i, j, r);
                    let (env, env_slope) = self.rbf_into(d, &mut g[..k_w], &mut dg[..k_w]);
                    self.pair_distance_part(&g[..k_w], &mut g_part[..h_w]);
                    self.pair_distance_part(&dg[..k_w], &mut g_slope_part[..h_w]);
                    // Both orders share g: their δ0 are summed for the W_g rows.
                    let d0_pair = &mut d0_pair[..h_w];
                    d0_pair.fill(0.0);
                    for (a, o, sign) in [(i, j, 1.0), (j, i, -1.0)] {
                        let net = self.pair_net(&g_part[..h_w], point, ws, a, o);
                        let phi = point.tail + env * net.psi;
                        // φ̄ = v̄_a · r_ao with r_ao = sign·r_ij.
                        let phi_bar: f64 =
                            sign * (0..dim).map(|c| v_bar_centred(a, c) * r[c]).sum::<f64>();
                        tail_bar += phi_bar;
                        let psi_bar = env * phi_bar;
                        // Output layer.
                        head[bl.pair_b2()][0] += psi_bar;
                        for (wb, a1) in head[bl.pair_w2()].iter_mut().zip(&net.a1[..h_w]) {
                            *wb += psi_bar * a1;
                        }
                        let d1 = &mut d1[..h_w];
                        for q in 0..h_w {
                            d1[q] = psi_bar * w_pair2[q] * net.p1_slope[q];
                        }
                        add_outer(&net.a0[..h_w], d1, &mut head[bl.pair_w1()]);
                        for (bb, d) in head[bl.pair_b1()].iter_mut().zip(d1.iter()) {
                            *bb += d;
                        }
                        let d0 = &mut d0[..h_w];
                        dot_rows(w_pair1, d1, d0);
                        for (d, s) in d0.iter_mut().zip(&net.p0_slope) {
                            *d *= s;
                        }
                        for q in 0..h_w {
                            d0_pair[q] += d0[q];
                            delta_sum[q] += d0[q];
                            delta_i[a * h_w + q] += d0[q];
                            delta_j[o * h_w + q] += d0[q];
                        }
                        // x̄ through r_ao directly and through d (u_ao = sign·r_ij/d).
                        let d_bar = phi_bar * env_slope * net.psi + dot(&g_slope_part[..h_w], d0);
                        for c in 0..dim {
                            let xb = phi * v_bar_centred(a, c) + sign * d_bar * r[c] / d;
                            x_bar[a * dim + c] += xb;
                            x_bar[o * dim + c] -= xb;
                        }
                    }
                    add_outer(&g[..k_w], d0_pair, &mut head[bl.pair_w0()][..k_w * h_w]);
                }
            }
        }
        for (cb, tau) in theta_bar[bl.tail()].iter_mut().zip(&point.tau[..bl.r]) {
            *cb += tau * tail_bar;
        }
        // First pair layer: time rows, bias, and the h_i / h_j rows (per particle).
        {
            let wb0 = &mut theta_bar[bl.pair_w0()];
            add_outer(
                &point.tau[..bl.r],
                &delta_sum[..h_w],
                &mut wb0[k_w * h_w..(k_w + bl.r) * h_w],
            );
        }
        for (bb, d) in theta_bar[bl.pair_b0()].iter_mut().zip(&delta_sum[..h_w]) {
            *bb += d;
        }
        let w_i = &w0[(k_w + bl.r) * h_w..(k_w + bl.r + e_w) * h_w];
        let w_j = &w0[(k_w + bl.r + e_w) * h_w..];
        let mut tmp = [0.0; MAX_WIDTH];
        for i in 0..n {
            let h_i = &ws.h[i * e_w..(i + 1) * e_w];
            let di = &delta_i[i * h_w..(i + 1) * h_w];
            let dj = &delta_j[i * h_w..(i + 1) * h_w];
            let wb0 = &mut theta_bar[bl.pair_w0()];
            let (rows_i, rows_j) = wb0[(k_w + bl.r) * h_w..].split_at_mut(e_w * h_w);
            add_outer(h_i, di, rows_i);
            add_outer(h_i, dj, rows_j);
            let hb = &mut ws.h_bar[i * e_w..(i + 1) * e_w];
            dot_rows(w_i, di, hb);
            dot_rows(w_j, dj, &mut tmp[..e_w]);
            for (a, b) in hb.iter_mut().zip(&tmp[..e_w]) {
                *a += b;
            }
        }
        // Node network: h = h0 + V1ᵀ silu(V0ᵀ h0 + c0) + c1.
        let (v0, v1) = (&p[bl.node_w0()], &p[bl.node_w1()]);
        let mut act = [0.0; MAX_WIDTH];
        let mut zn_bar = [0.0; MAX_WIDTH];
        for i in 0..n {
            let hb = &ws.h_bar[i * e_w..(i + 1) * e_w];
            let zn = &ws.zn[i * hm..(i + 1) * hm];
            let zn_bar = &mut zn_bar[..hm];
            dot_rows(v1, hb, zn_bar);
            for q in 0..hm {
                let (a, s) = silu_and_slope(zn[q]);
                act[q] = a;
                zn_bar[q] *= s;
            }
            for (cb, v) in theta_bar[bl.node_b1()].iter_mut().zip(hb) {
                *cb += v;
            }
            add_outer(&act[..hm], hb, &mut theta_bar[bl.node_w1()]);
            add_outer(
                &ws.h0[i * e_w..(i + 1) * e_w],
                zn_bar,
                &mut theta_bar[bl.node_w0()],
            );
            for (cb, v) in theta_bar[bl.node_b0()].iter_mut().zip(zn_bar.iter()) {
                *cb += v;
            }
            let h0b = &mut ws.h0_bar[i * e_w..(i + 1) * e_w];
            dot_rows(v0, zn_bar, h0b);
            for (a, b) in h0b.iter_mut().zip(hb) {
                *a += b;
            }
        }
        // Messages, per unordered pair: m̄ = (h̄0_i + h̄0_k)/(N − 1).
        let inv_n1 = 1.0 / (n - 1) as f64;
        let mw0 = &p[bl.message_w0()];
        let mw1 = &p[bl.message_w1()];
        let mut z0_sum = [0.0; MAX_WIDTH];
        let mut z1_bar = [0.0; MAX_WIDTH];
        let mut z0_bar = [0.0; MAX_WIDTH];
        for i in 0..n {
            for k in i + 1..n {
                let (_, d) = pair_geometry(x, dim, i, k, r);
                self.rbf_into(d, &mut g[..k_w], &mut dg[..k_w]);
                let net = self.message(&g[..k_w], point);
                let z1_bar = &mut z1_bar[..e_w];
                for e in 0..e_w {
                    let m_bar = (ws.h0_bar[i * e_w + e] + ws.h0_bar[k * e_w + e]) * inv_n1;
                    z1_bar[e] = m_bar * net.z1_slope[e];
                }
                add_outer(&net.a0[..hm], z1_bar, &mut theta_bar[bl.message_w1()]);
                for (cb, v) in theta_bar[bl.message_b1()].iter_mut().zip(z1_bar.iter()) {
                    *cb += v;
                }
                let z0_bar = &mut z0_bar[..hm];
                dot_rows(mw1, z1_bar, z0_bar);
                for q in 0..hm {
                    z0_bar[q] *= net.z0_slope[q];
                    z0_sum[q] += z0_bar[q];
                }
                add_outer(
                    &g[..k_w],
                    z0_bar,
                    &mut theta_bar[bl.message_w0()][..k_w * hm],
                );
                let mut d_bar = 0.0;
                for (kk, dgk) in dg[..k_w].iter().enumerate() {
                    if *dgk != 0.0 {
                        d_bar += dgk * dot(&mw0[kk * hm..(kk + 1) * hm], z0_bar);
                    }
                }
                for c in 0..dim {
                    let xb = d_bar * r[c] / d;
                    x_bar[i * dim + c] += xb;
                    x_bar[k * dim + c] -= xb;
                }
            }
        }
        {
            let wb = &mut theta_bar[bl.message_w0()];
            add_outer(
                &point.tau[..bl.r],
                &z0_sum[..hm],
                &mut wb[k_w * hm..(k_w + bl.r) * hm],
            );
        }
        for (cb, v) in theta_bar[bl.message_b0()].iter_mut().zip(&z0_sum[..hm]) {
            *cb += v;
        }
        ws.delta = delta;
    }
}
