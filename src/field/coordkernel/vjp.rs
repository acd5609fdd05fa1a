//! The reverse pass of one coordkernel evaluation: the vector–Jacobian product of
//! `(v(x, t), div v(x, t))` with respect to the configuration and to the time-folded
//! coefficients `M(t)` (the field is linear in its parameters, so `V̄_qkr = Σ_t M̄_qk(t) τ_r(t)`
//! is applied once per time point by the family's `adjoint_finish`).
//!
//! With cotangents `v̄` and `δ = div̄`, `L = v̄·v + δ div` is differentiated through the forward
//! program of [`super::eval`] in reverse. The divergence, `Σ_{i≠j} [D φ + F z + κ Σ_a ψ c'_a z]`
//! plus `Σ P·G`, gives the seeds `φ̄ = 2Dδ` (beyond the velocity's `Δ·r`), `F̄ = 2δz`, `z̄ = 2δF`,
//! `E_ij = δ G_i` (from `P̄ = δ G`), `W_ij − W_ji = δ (P_i − P_j)` (from `Ḡ = δ P`) and the
//! shells' `κδ` coupling through z; the chain from there is [`super::reverse_chain`]'s.

use multiversion::multiversion;

use super::coordkernel_field::{CoordKernelField, CoordKernelTimePoint};
use super::eval::CoordKernelScratch;
use super::reverse_chain::{Seeds, reverse_chain};
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
    ws.ensure(f, false, true);
    let mut v = std::mem::take(&mut ws.v);
    f.evaluate(x, point, &mut v[..n * dim], ws, true);
    ws.v = v;
    // G and P are read by the seeds while the chain writes the rest of the scratch.
    let (g, p) = (std::mem::take(&mut ws.g), std::mem::take(&mut ws.p));
    let seeds = DivergenceSeeds {
        g: &g,
        p: &p,
        delta: div_bar,
        dim,
        na: f.config.n_shells,
        kappa_delta: (1.0 / (n - 1) as f64) * div_bar,
    };
    reverse_chain(f, x, point, v_bar, &seeds, x_bar, m_bar, ws);
    (ws.g, ws.p) = (g, p);
}

/// The divergence's cotangent `δ` entering the chain (module docs).
struct DivergenceSeeds<'a> {
    g: &'a [f64],
    p: &'a [f64],
    delta: f64,
    dim: usize,
    na: usize,
    kappa_delta: f64,
}

impl Seeds for DivergenceSeeds<'_> {
    fn pair(
        &self,
        _pair: (usize, usize),
        _r: &[f64; MAX_DIM],
        _d: f64,
        z: f64,
        fd: f64,
        _r_bar: &mut [f64; MAX_DIM],
    ) -> (f64, f64, f64) {
        let delta = self.delta;
        (
            2.0 * self.dim as f64 * delta,
            2.0 * delta * z,
            2.0 * delta * fd,
        )
    }

    fn environment_out(
        &self,
        i: usize,
        j: usize,
        a: usize,
        e_ij: &mut [f64; MAX_DIM],
        e_ji: &mut [f64; MAX_DIM],
    ) {
        let (dim, na) = (self.dim, self.na);
        for c in 0..dim {
            e_ij[c] = self.delta * self.g[(i * na + a) * dim + c];
            e_ji[c] = self.delta * self.g[(j * na + a) * dim + c];
        }
    }

    fn z_coupling(&self) -> f64 {
        self.kappa_delta
    }

    fn environment_in(&self, i: usize, j: usize, a: usize, w: &mut [f64; MAX_DIM]) -> bool {
        if self.delta == 0.0 {
            return false;
        }
        let (dim, na) = (self.dim, self.na);
        for c in 0..dim {
            // Ḡ_i − Ḡ_j = δ (P_i − P_j).
            w[c] = self.delta * (self.p[(i * na + a) * dim + c] - self.p[(j * na + a) * dim + c]);
        }
        true
    }
}
