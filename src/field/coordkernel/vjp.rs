//! The reverse pass of one coordkernel evaluation: the vector–Jacobian product of
//! `(v(x, t), div v(x, t))` with respect to the configuration and to the time-folded
//! coefficients `M(t)` (the field is linear in its parameters, so `V̄_qkr = Σ_t M̄_qk(t) τ_r(t)`
//! is applied once per time point by the family's `adjoint_finish`).
//!
//! With cotangents `v̄` and `δ = div̄`, `L = v̄·v + δ div` is differentiated through the forward
//! program of [`super::eval`] in reverse (notation there; `z = |r|²/d`, `Δ = v̄_i − v̄_j`):
//!
//! ```text
//! P̄_i^a = δ G_i^a,  Ḡ_i^a = δ P_i^a                         (div's Σ P·G)
//! per pair i < j:
//!   φ̄ = Δ·r + 2Dδ,  F̄ = 2δz
//!   ψ̄_ij^a = P̄_i^a·r + κδ c'_a z,  ψ̄_ji^a = −P̄_j^a·r + κδ c'_a z
//!   ā_0 = φ̄,  ā_a^+ = φ̄(h_i + h_j) + ψ̄_ij + ψ̄_ji,  ā_a^× = φ̄ h_i h_j + ψ̄_ij h_j + ψ̄_ji h_i
//!   ā'_0 = F̄,  ā'^+_a = F̄(h_i + h_j),  ā'^×_a = F̄ h_i h_j
//!   h̄_i^a += φ̄ ψ_ij^a + F̄ (a'^+_a + h_j a'^×_a) + ψ̄_ji^a a_a^×     (and i ↔ j)
//!   M̄_qk += B_k ā_q + B'_k ā'_q,   d̄ = Σ_q (a'_q ā_q + a''_q ā'_q)
//!   c̄'_a = κδ (ψ_ij + ψ_ji) z,  z̄ = 2δF + κδ Σ_a (ψ_ij + ψ_ji) c'_a
//!   r̄ = φΔ + Σ_a (ψ_ij P̄_i − ψ_ji P̄_j) + z̄ r (2/d − |r|²/d³)
//! then, once h̄ is complete, per pair:
//!   c̄_a = κ(h̄_i^a + h̄_j^a),  c̄'_a += κ(Ḡ_i^a − Ḡ_j^a)·u,  ū = κ Σ_a c'_a (Ḡ_i^a − Ḡ_j^a)
//!   d̄ += Σ_a (c̄_a c'_a + c̄'_a c''_a) − ū·r/d²,  r̄ += ū/d + d̄ r/d
//!   x̄_i += r̄,  x̄_j −= r̄
//! ```

use multiversion::multiversion;

use super::coordkernel_field::{CoordKernelField, CoordKernelTimePoint};
use super::eval::CoordKernelScratch;
use crate::field::pair_geometry;
use crate::geometry::MAX_DIM;

impl CoordKernelField {
    /// Adds `v̄ᵀ∂v/∂x + div̄ ∂div/∂x` to `x_bar` and `∂L/∂M(t)` to `m_bar` (Q × K).
    #[allow(clippy::too_many_arguments)] // the reverse pass's buffers, unpacked
    pub(super) fn vjp_into(
        &self,
        x: &[f64],
        point: &CoordKernelTimePoint,
        v_bar: &[f64],
        div_bar: f64,
        x_bar: &mut [f64],
        m_bar: &mut [f64],
        ws: &mut CoordKernelScratch,
    ) {
        vjp_in(self, x, point, v_bar, div_bar, x_bar, m_bar, ws);
    }
}

/// [`CoordKernelField::vjp_into`], compiled for the host's vector extensions.
#[allow(clippy::too_many_arguments)] // the reverse pass's buffers, unpacked
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
fn vjp_in(
    f: &CoordKernelField,
    x: &[f64],
    point: &CoordKernelTimePoint,
    v_bar: &[f64],
    div_bar: f64,
    x_bar: &mut [f64],
    m_bar: &mut [f64],
    ws: &mut CoordKernelScratch,
) {
    let n = f.layout.n_particles;
    let dim = f.layout.dim;
    let na = f.config.n_shells;
    let k = f.config.n_rbf;
    let nq = f.config.n_features();
    let kappa = 1.0 / (n - 1) as f64;
    let delta = div_bar;
    ws.ensure(f, false, true);
    let mut v = std::mem::take(&mut ws.v);
    f.evaluate(x, point, &mut v[..n * dim], ws, true);
    ws.v = v;
    ws.h_bar[..n * na].fill(0.0);
    let mut r = [0.0; MAX_DIM];
    let rad = &mut ws.radial;
    let mut a_bar = [0.0; super::coordkernel_field::MAX_FEATURES];
    let mut a1_bar = [0.0; super::coordkernel_field::MAX_FEATURES];
    for i in 0..n {
        for j in i + 1..n {
            let (s, d) = pair_geometry(x, dim, i, j, &mut r);
            rad.fill(f, point, d, true);
            let z = s / d;
            let mut diff = [0.0; MAX_DIM];
            let mut phi_bar = 2.0 * dim as f64 * delta;
            for c in 0..dim {
                diff[c] = v_bar[i * dim + c] - v_bar[j * dim + c];
                phi_bar += diff[c] * r[c];
            }
            let fd_bar = 2.0 * delta * z;
            let (phi, fd) = (ws.phi[i * n + j], ws.fd[i * n + j]);
            let mut r_bar = [0.0; MAX_DIM];
            for c in 0..dim {
                r_bar[c] = phi * diff[c];
            }
            let mut z_bar = 2.0 * delta * fd;
            a_bar[0] = phi_bar;
            a1_bar[0] = fd_bar;
            let ij = i * n + j;
            for a in 0..na {
                let (hi, hj) = (ws.h[i * na + a], ws.h[j * na + a]);
                let (ap, ax) = (rad.a[1 + a], rad.a[1 + na + a]);
                let (a1p, a1x) = (rad.a1[1 + a], rad.a1[1 + na + a]);
                let psi_ij = ap + hj * ax;
                let psi_ji = ap + hi * ax;
                let c1 = ws.c1[ij * na + a];
                let gi = &ws.g[(i * na + a) * dim..(i * na + a + 1) * dim];
                let gj = &ws.g[(j * na + a) * dim..(j * na + a + 1) * dim];
                let (mut gi_r, mut gj_r) = (0.0, 0.0);
                for c in 0..dim {
                    gi_r += gi[c] * r[c];
                    gj_r += gj[c] * r[c];
                    r_bar[c] += delta * (psi_ij * gi[c] - psi_ji * gj[c]);
                }
                let psi_bar_ij = delta * gi_r + kappa * delta * c1 * z;
                let psi_bar_ji = -delta * gj_r + kappa * delta * c1 * z;
                let sigma = psi_ij + psi_ji;
                ws.c1_bar[ij * na + a] = kappa * delta * sigma * z;
                z_bar += kappa * delta * sigma * c1;
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
            let dz = 2.0 / d - s / (d * d * d);
            for c in 0..dim {
                r_bar[c] += z_bar * r[c] * dz;
            }
            ws.d_bar[ij] = d_bar;
            ws.r_bar[ij * dim..(ij + 1) * dim].copy_from_slice(&r_bar[..dim]);
        }
    }
    // Coordinations and their gradients, now that h̄ is complete.
    for i in 0..n {
        for j in i + 1..n {
            let (_, d) = pair_geometry(x, dim, i, j, &mut r);
            let ij = i * n + j;
            let mut d_bar = ws.d_bar[ij];
            let mut r_bar = [0.0; MAX_DIM];
            r_bar[..dim].copy_from_slice(&ws.r_bar[ij * dim..(ij + 1) * dim]);
            let mut u_bar = [0.0; MAX_DIM];
            for a in 0..na {
                let (_, c1, c2) = f.shell(a, d);
                let c_bar = kappa * (ws.h_bar[i * na + a] + ws.h_bar[j * na + a]);
                let mut c1_bar = ws.c1_bar[ij * na + a];
                if delta != 0.0 {
                    let pi = &ws.p[(i * na + a) * dim..(i * na + a + 1) * dim];
                    let pj = &ws.p[(j * na + a) * dim..(j * na + a + 1) * dim];
                    for c in 0..dim {
                        // Ḡ_i − Ḡ_j = δ (P_i − P_j).
                        let g_diff = delta * (pi[c] - pj[c]);
                        c1_bar += kappa * g_diff * r[c] / d;
                        u_bar[c] += kappa * c1 * g_diff;
                    }
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
