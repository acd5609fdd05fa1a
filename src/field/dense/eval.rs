//! The forward pass of the dense field: the velocity, its exact divergence, its exact dense
//! Jacobian and the gradient of the divergence, all in closed form (notation of the module
//! documentation; `A = W1·P/ℓ`, `B = P·W2`, `s_h = 1 − tanh²(a_h)`):
//!
//! ```text
//! a     = A x + W_b1 τ(t)
//! v     = B tanh(a) + P W_b2 τ(t)
//! ∂v/∂x = B diag(s) A                        (n × n, rank ≤ H)
//! div v = tr(B diag(s) A) = Σ_h s_h c_h,     c_h = Σ_i A_hi B_ih (parameters only)
//! ∂div/∂x = Aᵀ (c ⊙ s'),                     s'_h = ∂s_h/∂a_h = −2 tanh(a_h) s_h
//! ```
//!
//! Because `A = A P` and `B = P B`, the Jacobian is `P J P`: its trace is the trace on the
//! centre-of-mass-free subspace, the density convention of every family.

use std::cell::RefCell;

use super::dense_field::{DenseField, DenseTimePoint, project_com};
use crate::field::grow_scratch;

/// Per-thread buffers of one evaluation, grown on first use and reused.
#[derive(Debug, Clone, Default)]
pub struct DenseScratch {
    /// `tanh(a_h)`.
    pub(super) sigma: Vec<f64>,
    /// `1 − tanh²(a_h)`.
    pub(super) slope: Vec<f64>,
    /// The reverse pass's `ā` and `P v̄`.
    pub(super) a_bar: Vec<f64>,
    pub(super) pv_bar: Vec<f64>,
    /// The reverse pass's `P x` and the velocity of the forward pass it reruns.
    pub(super) px: Vec<f64>,
    pub(super) v: Vec<f64>,
    /// A Hutchinson probe's `P ε`, `u = A ε` and `w = Bᵀ ε` ([`DenseField::probe_divergence`]).
    pub(super) p_eps: Vec<f64>,
    pub(super) probe_u: Vec<f64>,
    pub(super) probe_w: Vec<f64>,
}

impl DenseScratch {
    pub(super) fn ensure(&mut self, f: &DenseField) {
        let h = f.config.n_hidden;
        grow_scratch(&mut self.sigma, h);
        grow_scratch(&mut self.slope, h);
        grow_scratch(&mut self.a_bar, h);
        grow_scratch(&mut self.pv_bar, f.layout.len());
        grow_scratch(&mut self.px, f.layout.len());
        grow_scratch(&mut self.v, f.layout.len());
        grow_scratch(&mut self.p_eps, f.layout.len());
        grow_scratch(&mut self.probe_u, h);
        grow_scratch(&mut self.probe_w, h);
    }
}

thread_local! {
    static SCRATCH: RefCell<DenseScratch> = RefCell::new(DenseScratch::default());
}

/// Runs `f` with this thread's scratch.
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut DenseScratch) -> R) -> R {
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

impl DenseField {
    /// The hidden layer at `x` (`tanh(a)` and its slope into the scratch), `v` into `v`;
    /// returns the divergence.
    pub(super) fn evaluate(
        &self,
        x: &[f64],
        point: &DenseTimePoint,
        v: &mut [f64],
        ws: &mut DenseScratch,
    ) -> f64 {
        let n = self.layout.len();
        let h = self.config.n_hidden;
        let r = self.config.n_time;
        ws.ensure(self);
        let tau = &point.tau[..r];
        let (b1, b2) = self.bias_ranges();
        let (b1, b2) = (&self.params[b1], &self.params[b2]);
        let mut div = 0.0;
        for k in 0..h {
            let row = &self.a1[k * n..(k + 1) * n];
            let mut a: f64 = row.iter().zip(x).map(|(w, x)| w * x).sum();
            a += b1[k * r..(k + 1) * r]
                .iter()
                .zip(tau)
                .map(|(w, t)| w * t)
                .sum::<f64>();
            let sigma = a.tanh();
            let slope = 1.0 - sigma * sigma;
            ws.sigma[k] = sigma;
            ws.slope[k] = slope;
            div += slope * self.c[k];
        }
        for (i, v) in v[..n].iter_mut().enumerate() {
            *v = b2[i * r..(i + 1) * r]
                .iter()
                .zip(tau)
                .map(|(w, t)| w * t)
                .sum();
        }
        project_com(&mut v[..n], self.layout.dim);
        for (i, v) in v[..n].iter_mut().enumerate() {
            let row = &self.a2[i * h..(i + 1) * h];
            *v += row
                .iter()
                .zip(&ws.sigma[..h])
                .map(|(w, s)| w * s)
                .sum::<f64>();
        }
        div
    }

    /// The Hutchinson estimate `εᵀ(∂v/∂x)ε = Σ_h s_h u_h w_h` with `u = A ε`, `w = Bᵀ ε`
    /// (the divergence's formula with `c_h` replaced by `u_h w_h`, whose mean over probes with
    /// `E[εεᵀ] = I` is `c_h`), at the point of the last [`DenseField::evaluate`] with `ws`;
    /// leaves `P ε`, `u` and `w` in `ws` for the reverse pass.
    pub(super) fn probe_divergence(&self, probe: &[f64], ws: &mut DenseScratch) -> f64 {
        let n = self.layout.len();
        let h = self.config.n_hidden;
        ws.p_eps[..n].copy_from_slice(&probe[..n]);
        project_com(&mut ws.p_eps[..n], self.layout.dim);
        let mut estimate = 0.0;
        for k in 0..h {
            let u: f64 = self.a1[k * n..(k + 1) * n]
                .iter()
                .zip(&ws.p_eps[..n])
                .map(|(a, e)| a * e)
                .sum();
            let w: f64 = (0..n).map(|i| self.a2[i * h + k] * ws.p_eps[i]).sum();
            ws.probe_u[k] = u;
            ws.probe_w[k] = w;
            estimate += ws.slope[k] * (u * w);
        }
        estimate
    }

    /// `v` into `v`; returns the Hutchinson estimate of the divergence with `probe`
    /// ([`DenseField::probe_divergence`]).
    pub(super) fn probe_velocity_at(
        &self,
        x: &[f64],
        point: &DenseTimePoint,
        probe: &[f64],
        v: &mut [f64],
    ) -> f64 {
        with_scratch(|ws| {
            self.evaluate(x, point, v, ws);
            self.probe_divergence(probe, ws)
        })
    }

    /// `v` into `v`; returns the divergence.
    pub(super) fn velocity_at(&self, x: &[f64], point: &DenseTimePoint, v: &mut [f64]) -> f64 {
        with_scratch(|ws| self.evaluate(x, point, v, ws))
    }

    /// `v`, the dense Jacobian `B diag(s) A` (row-major n × n) and, if given, `∂div/∂x`;
    /// returns the divergence (the same bits as [`DenseField::velocity_at`]).
    pub(super) fn velocity_jacobian_at(
        &self,
        x: &[f64],
        point: &DenseTimePoint,
        v: &mut [f64],
        jacobian: &mut [f64],
        div_gradient: Option<&mut [f64]>,
    ) -> f64 {
        let n = self.layout.len();
        let h = self.config.n_hidden;
        with_scratch(|ws| {
            let div = self.evaluate(x, point, v, ws);
            for (i, jrow) in jacobian[..n * n].chunks_exact_mut(n).enumerate() {
                jrow.fill(0.0);
                let brow = &self.a2[i * h..(i + 1) * h];
                for k in 0..h {
                    let coef = brow[k] * ws.slope[k];
                    for (j, a) in jrow.iter_mut().zip(&self.a1[k * n..(k + 1) * n]) {
                        *j += coef * a;
                    }
                }
            }
            if let Some(g) = div_gradient {
                g[..n].fill(0.0);
                for k in 0..h {
                    let coef = self.c[k] * (-2.0 * ws.sigma[k] * ws.slope[k]);
                    for (g, a) in g[..n].iter_mut().zip(&self.a1[k * n..(k + 1) * n]) {
                        *g += coef * a;
                    }
                }
            }
            div
        })
    }
}
