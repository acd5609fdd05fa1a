//! The reverse pass of one dense-field evaluation: the vector–Jacobian product of
//! `(v(x, t), div v(x, t))` with respect to the configuration and every parameter.
//!
//! With cotangents `v̄` and `δ = div̄`, `L = v̄·v + δ div` differentiated through the forward
//! program of [`super::eval`] (notation there; `σ = tanh(a)`):
//!
//! ```text
//! ā_h    = s_h (Bᵀ v̄)_h + δ c_h s'_h
//! x̄     += Aᵀ ā
//! W̄1_h  += (ā_h P x + δ s_h B_·h) / ℓ          (∂L/∂A, then A = W1 P/ℓ)
//! W̄2_·h += σ_h P v̄ + δ s_h A_h·ᵀ                (∂L/∂B, then B = P W2)
//! W̄b1   += ā τᵀ,   W̄b2 += (P v̄) τᵀ
//! ```
//!
//! (`B_·h` and `A_h·` have no centre-of-mass component, so projecting them again is the
//! identity.) The second term of each line is the divergence's: `div = Σ_h s_h c_h` with
//! `c_h = Σ_i A_hi B_ih`.
//!
//! With a Hutchinson probe ε the divergence is replaced by its estimate `εᵀ(∂v/∂x)ε =
//! Σ_h s_h c̃_h`, `c̃_h = u_h w_h`, `u = A ε`, `w = Bᵀ ε` ([`DenseField::probe_divergence`]):
//! `c_h` becomes `c̃_h` in `ā`, and since `∂c̃_h/∂A_h· = w_h εᵀ` and `∂c̃_h/∂B_·h = u_h ε`,
//! the divergence terms become `δ s_h w_h P ε/ℓ` in `W̄1_h` and `δ s_h u_h P ε` in `W̄2_·h`.

use super::dense_field::{DenseField, DenseTimePoint, project_com};
use super::eval::DenseScratch;

impl DenseField {
    /// Adds `v̄ᵀ∂v/∂x + div̄ ∂div/∂x` to `x_bar` and the parameter cotangent to `theta_bar`
    /// (flat parameter layout); with a `probe`, `div` is its Hutchinson estimate
    /// ([`DenseField::probe_divergence`]).
    #[allow(clippy::too_many_arguments)] // the reverse pass's buffers, unpacked
    pub(super) fn vjp_into(
        &self,
        x: &[f64],
        point: &DenseTimePoint,
        probe: Option<&[f64]>,
        v_bar: &[f64],
        div_bar: f64,
        x_bar: &mut [f64],
        theta_bar: &mut [f64],
        ws: &mut DenseScratch,
    ) {
        let n = self.layout.len();
        let dim = self.layout.dim;
        let h = self.config.n_hidden;
        let r = self.config.n_time;
        let delta = div_bar;
        let inv_l = 1.0 / self.config.length_scale;
        ws.ensure(self);
        let mut v = std::mem::take(&mut ws.v);
        self.evaluate(x, point, &mut v[..n], ws);
        ws.v = v;
        if let Some(probe) = probe {
            self.probe_divergence(probe, ws);
        }
        // The divergence's coefficient of unit k: c_k, or the probe's u_k w_k.
        let coef = |ws: &DenseScratch, k: usize| match probe {
            Some(_) => ws.probe_u[k] * ws.probe_w[k],
            None => self.c[k],
        };
        ws.pv_bar[..n].copy_from_slice(&v_bar[..n]);
        project_com(&mut ws.pv_bar[..n], dim);
        ws.px[..n].copy_from_slice(&x[..n]);
        project_com(&mut ws.px[..n], dim);
        for k in 0..h {
            let mut sigma_bar = 0.0;
            for i in 0..n {
                sigma_bar += self.a2[i * h + k] * v_bar[i];
            }
            let (sigma, slope) = (ws.sigma[k], ws.slope[k]);
            ws.a_bar[k] = slope * sigma_bar + delta * coef(ws, k) * (-2.0 * sigma * slope);
        }
        let blocks = self.config.param_blocks(n);
        let tau = &point.tau[..r];
        // x̄ and W̄1.
        {
            let w1_bar = &mut theta_bar[blocks[0].1.clone()];
            for k in 0..h {
                let ab = ws.a_bar[k];
                let arow = &self.a1[k * n..(k + 1) * n];
                for (xb, a) in x_bar[..n].iter_mut().zip(arow) {
                    *xb += a * ab;
                }
                let ds = delta * ws.slope[k];
                let wrow = &mut w1_bar[k * n..(k + 1) * n];
                for i in 0..n {
                    let dc = match probe {
                        Some(_) => ws.probe_w[k] * ws.p_eps[i],
                        None => self.a2[i * h + k],
                    };
                    wrow[i] += (ab * ws.px[i] + ds * dc) * inv_l;
                }
            }
        }
        {
            let b1_bar = &mut theta_bar[blocks[1].1.clone()];
            for k in 0..h {
                for (b, t) in b1_bar[k * r..(k + 1) * r].iter_mut().zip(tau) {
                    *b += ws.a_bar[k] * t;
                }
            }
        }
        {
            let w2_bar = &mut theta_bar[blocks[2].1.clone()];
            for i in 0..n {
                let pv = ws.pv_bar[i];
                let wrow = &mut w2_bar[i * h..(i + 1) * h];
                for k in 0..h {
                    let dc = match probe {
                        Some(_) => ws.probe_u[k] * ws.p_eps[i],
                        None => self.a1[k * n + i],
                    };
                    wrow[k] += ws.sigma[k] * pv + delta * ws.slope[k] * dc;
                }
            }
        }
        {
            let b2_bar = &mut theta_bar[blocks[3].1.clone()];
            for i in 0..n {
                for (b, t) in b2_bar[i * r..(i + 1) * r].iter_mut().zip(tau) {
                    *b += ws.pv_bar[i] * t;
                }
            }
        }
    }
}
