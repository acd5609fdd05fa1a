//! The chain both coordkernel reverse passes share: from the cotangents of the pair
//! coefficients `φ`, their slopes `F` and the coordination couplings `ψ`, through the
//! coordinations `h`, the radial coefficients `M(t)` and the shells, to the distances and the
//! configuration. The two passes differ only in where their cotangents enter ([`Seeds`]):
//!
//! - the divergence's ([`super::vjp`]): `φ̄ = Δ·r + 2Dδ`, `F̄ = 2δz`, `E_ij = δ G_i`,
//!   `W_ij − W_ji = δ (P_i − P_j)`, and the divergence's own dependence on `z` through the
//!   shells' slopes (`κδ c'_a z` in `ψ̄`, with its `c̄'_a` and `z̄`);
//! - the whole Jacobian's ([`super::jacobian_vjp`]): `φ̄ = tr S + Δ·r`, `F̄ = rᵀSr/d` and the
//!   pair blocks' part of `r̄` from `S = J̄_ii − J̄_ij + J̄_jj − J̄_ji`, `E` from `Ȳ = J̄ Hᵀ`
//!   and `W` from `H̄ = Yᵀ J̄`, and no `z` coupling.
//!
//! The divergence's pass is the Jacobian's at `J̄ = δ I`, which a test checks; sharing this
//! chain keeps the two from drifting apart. Notation of [`super::eval`]; `Δ = v̄_i − v̄_j`,
//! `z = |r|²/d`:
//!
//! ```text
//! per pair i < j:
//!   r̄ = (seed's pair-block part) + φΔ,  z̄ = (seed's z̄)
//!   per shell a:  ψ̄_ij = E_ij·r + κδ c'_a z,  ψ̄_ji = −E_ji·r + κδ c'_a z,
//!                 r̄ += ψ_ij E_ij − ψ_ji E_ji,  c̄'_a = κδ (ψ_ij + ψ_ji) z,
//!                 z̄ += κδ (ψ_ij + ψ_ji) c'_a          (κδ terms: the divergence's only)
//!   ā_0 = φ̄,  ā_a^+ = φ̄(h_i + h_j) + ψ̄_ij + ψ̄_ji,  ā_a^× = φ̄ h_i h_j + ψ̄_ij h_j + ψ̄_ji h_i
//!   ā'_0 = F̄,  ā'^+_a = F̄(h_i + h_j),  ā'^×_a = F̄ h_i h_j
//!   h̄_i^a += φ̄ ψ_ij^a + F̄ (a'^+_a + h_j a'^×_a) + ψ̄_ji^a a_a^×     (and i ↔ j)
//!   M̄_qk += B_k ā_q + B'_k ā'_q,   d̄ = Σ_q (a'_q ā_q + a''_q ā'_q),   r̄ += z̄ r (2/d − |r|²/d³)
//! then, once h̄ is complete, per pair:
//!   c̄_a = κ(h̄_i^a + h̄_j^a),  c̄'_a += κ (W_ij − W_ji)·u,  ū = κ Σ_a c'_a (W_ij − W_ji)
//!   d̄ += Σ_a (c̄_a c'_a + c̄'_a c''_a) − ū·r/d²,  r̄ += ū/d + d̄ r/d
//!   x̄_i += r̄,  x̄_j −= r̄
//! ```

use super::coordkernel_field::{CoordKernelField, CoordKernelTimePoint, MAX_FEATURES};
use super::eval::CoordKernelScratch;
use crate::field::pair_geometry;
use crate::geometry::MAX_DIM;

/// Where one reverse pass's cotangents enter the shared chain (module docs).
pub(super) trait Seeds {
    /// For the pair `(i, j)`, `i < j`, with `r = x_i − x_j`, distance `d`, `z = |r|²/d` and
    /// slope `F`: writes the pair blocks' part of `r̄` into `r_bar` (zeros on entry) and
    /// returns `(φ̄ − Δ·r, F̄, z̄)`, the cotangents beyond the velocity's.
    fn pair(
        &self,
        pair: (usize, usize),
        r: &[f64; MAX_DIM],
        d: f64,
        z: f64,
        fd: f64,
        r_bar: &mut [f64; MAX_DIM],
    ) -> (f64, f64, f64);

    /// `E_ij^a` and `E_ji^a`, the cotangents of `Y`'s pair entries, into `e_ij` and `e_ji`.
    fn environment_out(
        &self,
        i: usize,
        j: usize,
        a: usize,
        e_ij: &mut [f64; MAX_DIM],
        e_ji: &mut [f64; MAX_DIM],
    );

    /// `κδ`: the weight of the divergence's dependence on `z` through the shells' slopes
    /// (0 for a pass without it).
    fn z_coupling(&self) -> f64;

    /// `W_ij^a − W_ji^a`, the cotangent of `H`'s pair entries, into `w`; false when it is zero
    /// (the pass then skips the shell's terms).
    fn environment_in(&self, i: usize, j: usize, a: usize, w: &mut [f64; MAX_DIM]) -> bool;
}

/// Adds the chain's `x̄` to `x_bar` and `M̄` to `m_bar` (Q × K), given an evaluation of `f` at
/// `x` with the divergence's state in `ws` (coordinations, `φ`, `F`, `c'`, `P`) and the
/// velocity's cotangent `v_bar`. Inlined so that a caller compiled for the host's vector
/// extensions compiles it so too.
#[allow(clippy::too_many_arguments)] // the reverse pass's buffers, unpacked
#[inline(always)]
pub(super) fn reverse_chain<S: Seeds>(
    f: &CoordKernelField,
    x: &[f64],
    point: &CoordKernelTimePoint,
    v_bar: &[f64],
    seeds: &S,
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
    let kd = seeds.z_coupling();
    ws.h_bar[..n * na].fill(0.0);
    let mut r = [0.0; MAX_DIM];
    let rad = &mut ws.radial;
    let mut a_bar = [0.0; MAX_FEATURES];
    let mut a1_bar = [0.0; MAX_FEATURES];
    let (mut e_ij, mut e_ji) = ([0.0; MAX_DIM], [0.0; MAX_DIM]);
    for i in 0..n {
        for j in i + 1..n {
            let (s, d) = pair_geometry(x, dim, i, j, &mut r);
            rad.fill(f, point, d, true);
            let z = s / d;
            let ij = i * n + j;
            let (phi, fd) = (ws.phi[ij], ws.fd[ij]);
            let mut r_bar = [0.0; MAX_DIM];
            let (mut phi_bar, fd_bar, mut z_bar) = seeds.pair((i, j), &r, d, z, fd, &mut r_bar);
            for c in 0..dim {
                let diff = v_bar[i * dim + c] - v_bar[j * dim + c];
                phi_bar += diff * r[c];
                r_bar[c] += phi * diff;
            }
            a_bar[0] = phi_bar;
            a1_bar[0] = fd_bar;
            for a in 0..na {
                let (hi, hj) = (ws.h[i * na + a], ws.h[j * na + a]);
                let (ap, ax) = (rad.a[1 + a], rad.a[1 + na + a]);
                let (a1p, a1x) = (rad.a1[1 + a], rad.a1[1 + na + a]);
                let psi_ij = ap + hj * ax;
                let psi_ji = ap + hi * ax;
                seeds.environment_out(i, j, a, &mut e_ij, &mut e_ji);
                let (mut psi_bar_ij, mut psi_bar_ji) = (0.0, 0.0);
                for c in 0..dim {
                    psi_bar_ij += e_ij[c] * r[c];
                    psi_bar_ji -= e_ji[c] * r[c];
                    r_bar[c] += psi_ij * e_ij[c] - psi_ji * e_ji[c];
                }
                if kd != 0.0 {
                    let c1 = ws.c1[ij * na + a];
                    psi_bar_ij += kd * c1 * z;
                    psi_bar_ji += kd * c1 * z;
                    let sigma = psi_ij + psi_ji;
                    ws.c1_bar[ij * na + a] = kd * sigma * z;
                    z_bar += kd * sigma * c1;
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
            if z_bar != 0.0 {
                let dz = 2.0 / d - s / (d * d * d);
                for c in 0..dim {
                    r_bar[c] += z_bar * r[c] * dz;
                }
            }
            ws.d_bar[ij] = d_bar;
            ws.r_bar[ij * dim..(ij + 1) * dim].copy_from_slice(&r_bar[..dim]);
        }
    }
    // The coordinations and the shells' slopes, now that h̄ is complete.
    let mut w = [0.0; MAX_DIM];
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
                let mut c1_bar = if kd != 0.0 {
                    ws.c1_bar[ij * na + a]
                } else {
                    0.0
                };
                if seeds.environment_in(i, j, a, &mut w) {
                    for c in 0..dim {
                        c1_bar += kappa * w[c] * r[c] / d;
                        u_bar[c] += kappa * c1 * w[c];
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
