//! The reverse pass of one field evaluation: the vector–Jacobian product of `(v(x, t), div v(x, t))`
//! with respect to the configuration and to every trainable parameter.
//!
//! Given cotangents `v̄` (length N·D) for `v` and `div̄` (a scalar) for `div v`, the scalar
//! `L = v̄·v + div̄·div v` is differentiated and
//!
//! ```text
//! x̄ += ∂L/∂x = v̄ᵀ ∂v/∂x + div̄ ∂div/∂x,      θ̄ += ∂L/∂θ = v̄ᵀ ∂v/∂θ + div̄ ∂div/∂θ
//! ```
//!
//! are *accumulated*, θ̄ in the flat layout of [`ParamLayout`]. These are the exact derivatives
//! of the field as implemented: ε_d softening, the `1e-6` in both normalisations and the
//! underflow rule of [`exp_nonpositive`] (a Gaussian that is exactly 0 has exactly zero
//! derivatives, since every derivative of `g_k` carries the factor `g_k`).
//!
//! # Derivation
//!
//! Notation as in [`super`] and `radial.rs`: `e_k = d − μ_k`, `a_k = 1/γ_k² = exp(2 p_k)` with
//! `p_k = −log γ_k`, `g_k = exp(−e_k² a_k)`, `S = 1e-6 + Σ_k g_k`, `ρ_k = g_k/S`, the folded time
//! weights `w_k(t) = Σ_r τ_r(t) W_kr` and `c(t) = Σ_k s_k² w_k + Σ_r b_r τ_r`, so
//! `φ = φ₀ + c` with `φ₀ = A/S`, `A = Σ_k g_k w_k`. Primes are `∂/∂d`:
//!
//! ```text
//! g'_k  = −2 e_k a_k g_k                 g''_k = g_k (4 e_k² a_k² − 2 a_k)
//! φ'    = (A' − φ₀ G') / S               φ''   = (A'' − φ₀ G'' − 2 φ' G') / S
//! ```
//!
//! with `G = Σ g_k` and `A = Σ g_k w_k` differentiated term by term.
//!
//! **One unordered pair** i < j (`r = x_i − x_j`, `r² = |r|²`, `d = sqrt(r² + ε_d)`) adds
//! `φ r` to `v_i`, `−φ r` to `v_j` and `2(D φ + φ' r²/d)` to `div v`, so with `u = v̄_i − v̄_j` and
//! `P = u·r` its part of L is `L_p = φ P + 2 div̄ (D φ + φ' r²/d)`.
//!
//! *Configuration.* With `∂d/∂r = r/d` and `∂(r²/d)/∂r = r (r² + 2ε_d)/d³`,
//!
//! ```text
//! ∂L_p/∂r = φ u + r · [ φ' P/d + 2 div̄ (D φ'/d + φ'' r²/d² + φ' (r² + 2ε_d)/d³) ],
//! ```
//!
//! added to `x̄_i` and subtracted from `x̄_j`.
//!
//! *Parameters.* `∂L_p/∂θ = α ∂φ/∂θ + β ∂φ'/∂θ` with `α = P + 2 D div̄` and `β = 2 div̄ r²/d`.
//! Per kernel, with `δ_k = w_k − φ₀` and `Γ = G'/S`:
//!
//! ```text
//! ∂φ/∂w_k  = g_k/S                      ∂φ'/∂w_k  = g_k (−2 e_k a_k − Γ)/S
//! ∂φ/∂a_k  = −e_k² g_k δ_k/S            ∂φ'/∂a_k  = g_k [2 e_k (e_k² a_k − 1) δ_k + e_k² (δ_k Γ + φ')]/S
//! ∂φ/∂c    = 1                          ∂φ'/∂c    = 0
//! ```
//!
//! (from `∂g_k/∂a_k = −e_k² g_k`, `∂g'_k/∂a_k = 2 e_k g_k (e_k² a_k − 1)`, and the quotient rule on
//! `A/S` and `(A' − φ₀ G')/S`). The pair loop accumulates `w̄_k`, `ā_k` and `c̄ = Σ_pairs α`.
//!
//! *Once per evaluation* the time fold is undone: `w̄_k ← w̄_k + c̄ s_k²` (c contains `s_k² w_k`),
//! then
//!
//! ```text
//! W̄_kr += w̄_k τ_r      b̄_r += c̄ τ_r      s̄_k += 2 c̄ s_k w_k      p̄_k += 2 a_k ā_k
//! τ̄_r = Σ_k w̄_k W_kr + c̄ b_r
//! h̄_r = (τ̄_r − Σ_j τ̄_j τ_j) / S_t                    (τ_r = h_r/S_t, S_t = 1e-6 + Σ h)
//! q̄_r += h̄_r · (−(t − μ_r)² h_r) · 2 α_r              (h_r = exp(−(t − μ_r)² α_r), α_r = exp(2 q_r))
//! ```
//!
//! where `q_r = −log γ_r` of the time basis. The flow time t is not a parameter.
//!
//! # Cost
//!
//! Per pair: one pass over the kernels that recomputes the Gaussians (as the forward loop does)
//! and six lane-wise sums, and one element-wise pass that accumulates `w̄` and `ā`. No allocation:
//! per-kernel buffers live in a [`VjpScratch`] reused across evaluations.

use multiversion::multiversion;

use super::KernelField;
use super::exp::exp_nonpositive;
use super::kernel_field::EPS_D;
use super::kernels::MAX_TIME_KERNELS;
use super::radial::{LANES, MAX_PADDED, NORM_EPS, TimeSlice};
use crate::error::{Error, Result};
use crate::geometry::MAX_DIM;

#[cfg(doc)]
use super::ParamLayout;

/// The cotangent of one field evaluation's outputs: `v̄` for `v(x, t)` (length N·D,
/// particle-major like `x`) and `div̄` for `div v(x, t)`.
#[derive(Debug, Clone, Copy)]
pub struct Cotangent<'a> {
    /// `∂L/∂v`, length N·D.
    pub v: &'a [f64],
    /// `∂L/∂(div v)`.
    pub div: f64,
}

/// Reusable buffers of [`KernelField::vjp_into`]: per-kernel values of the pair being processed
/// and the per-evaluation accumulators `w̄`, `ā`. Create one per thread and reuse it; its
/// contents between calls carry no meaning.
#[derive(Clone)]
pub struct VjpScratch {
    e: [f64; MAX_PADDED],
    ea: [f64; MAX_PADDED],
    g: [f64; MAX_PADDED],
    w_bar: [f64; MAX_PADDED],
    a_bar: [f64; MAX_PADDED],
}

impl VjpScratch {
    /// Zeroed buffers (about 5 KiB, sized for the largest supported kernel count).
    #[must_use]
    pub fn new() -> Self {
        VjpScratch {
            e: [0.0; MAX_PADDED],
            ea: [0.0; MAX_PADDED],
            g: [0.0; MAX_PADDED],
            w_bar: [0.0; MAX_PADDED],
            a_bar: [0.0; MAX_PADDED],
        }
    }
}

impl Default for VjpScratch {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for VjpScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VjpScratch { .. }")
    }
}

impl KernelField {
    /// Vector–Jacobian product of one evaluation of the field at `(x, t)` (t in flow time, x in
    /// length units, particle-major): accumulates
    /// `x_bar += v̄ᵀ ∂v/∂x + div̄ ∂div v/∂x` and `theta_bar += v̄ᵀ ∂v/∂θ + div̄ ∂div v/∂θ`,
    /// `theta_bar` in the flat layout of [`ParamLayout`] (derivatives with respect to `W`, `b`,
    /// `s` and the log inverse bandwidths `−log γ` of both bases). See the [module
    /// docs](self) for the derivation. Nothing is overwritten: callers zero the accumulators.
    ///
    /// # Errors
    ///
    /// [`Error::DimensionMismatch`] if `x`, `cotangent.v` or `x_bar` is not of length N·D or
    /// `theta_bar` not of the parameter count; nothing is written then.
    pub fn vjp_into(
        &self,
        x: &[f64],
        t: f64,
        cotangent: Cotangent<'_>,
        x_bar: &mut [f64],
        theta_bar: &mut [f64],
        scratch: &mut VjpScratch,
    ) -> Result<()> {
        let len = self.layout().len();
        for (what, found) in [
            ("vjp x", x.len()),
            ("vjp cotangent v", cotangent.v.len()),
            ("vjp x_bar", x_bar.len()),
        ] {
            if found != len {
                return Err(Error::size(what, len, found));
            }
        }
        if theta_bar.len() != self.param_layout().len() {
            return Err(Error::size(
                "vjp theta_bar",
                self.param_layout().len(),
                theta_bar.len(),
            ));
        }
        self.vjp_unchecked(x, t, cotangent, x_bar, theta_bar, scratch);
        Ok(())
    }

    /// [`KernelField::vjp_into`] without the size checks, for the reverse pass through the
    /// integrator whose buffers are sized once.
    pub(crate) fn vjp_unchecked(
        &self,
        x: &[f64],
        t: f64,
        cotangent: Cotangent<'_>,
        x_bar: &mut [f64],
        theta_bar: &mut [f64],
        scratch: &mut VjpScratch,
    ) {
        debug_assert_eq!(x.len(), self.layout().len());
        debug_assert_eq!(theta_bar.len(), self.param_layout().len());
        let slice = self.time_slice(t);
        let kp = self.mu_padded().len();
        scratch.w_bar[..kp].fill(0.0);
        scratch.a_bar[..kp].fill(0.0);
        let c_bar = vjp_pairs(
            x,
            self.layout().dim,
            self.param_layout().n_dist,
            self.mu_padded(),
            self.inv_gamma_sq_padded(),
            &slice,
            cotangent,
            x_bar,
            scratch,
        );
        self.unfold_time(t, &slice, c_bar, scratch, theta_bar);
    }

    /// Turns the per-evaluation accumulators `w̄_k`, `ā_k`, `c̄` into parameter cotangents: the
    /// reverse of the time fold and of `a = exp(2p)` (module docs, "once per evaluation").
    fn unfold_time(
        &self,
        t: f64,
        slice: &TimeSlice,
        c_bar: f64,
        scratch: &mut VjpScratch,
        theta_bar: &mut [f64],
    ) {
        let pl = self.param_layout();
        let (nk, nr) = (pl.n_dist, pl.n_time);
        let params = self.params();
        let w = &params[pl.w()];
        let b = &params[pl.b()];
        let s = &params[pl.s()];
        // The time basis exactly as `time_basis_into` computes it, keeping h_r and S_t.
        let mu_t = &self.kernels().mu_time;
        let a_t = self.inv_gamma_sq_time();
        let mut h = [0.0; MAX_TIME_KERNELS];
        let mut total = 0.0;
        for r in 0..nr {
            let e = t - mu_t[r];
            h[r] = exp_nonpositive(-(e * e * a_t[r]));
            total += h[r];
        }
        let inv_t = 1.0 / (NORM_EPS + total);
        let mut tau = [0.0; MAX_TIME_KERNELS];
        for r in 0..nr {
            tau[r] = h[r] * inv_t;
        }

        let w_bar = &mut scratch.w_bar;
        let a_pad = self.inv_gamma_sq_padded();
        let mut tau_bar = [0.0; MAX_TIME_KERNELS];
        for r in 0..nr {
            tau_bar[r] = c_bar * b[r];
            theta_bar[pl.b().start + r] += c_bar * tau[r];
        }
        for k in 0..nk {
            theta_bar[pl.s().start + k] += 2.0 * c_bar * s[k] * slice.w[k];
            theta_bar[pl.log_inv_gamma_dist().start + k] += 2.0 * a_pad[k] * scratch.a_bar[k];
            // c = Σ_k s_k² w_k + …: its cotangent reaches w_k too.
            let wb = w_bar[k] + c_bar * s[k] * s[k];
            let row = &w[k * nr..(k + 1) * nr];
            let row_bar = &mut theta_bar[k * nr..(k + 1) * nr];
            for r in 0..nr {
                row_bar[r] += wb * tau[r];
                tau_bar[r] += wb * row[r];
            }
        }
        let mean: f64 = (0..nr).map(|r| tau_bar[r] * tau[r]).sum();
        let q_start = pl.log_inv_gamma_time().start;
        for r in 0..nr {
            let h_bar = (tau_bar[r] - mean) * inv_t;
            let e = t - mu_t[r];
            theta_bar[q_start + r] += h_bar * (-(e * e) * h[r]) * 2.0 * a_t[r];
        }
    }
}

/// φ₀ = A/S, φ', φ'' and the quantities the parameter pass needs, for one distance.
struct Radial2 {
    phi0: f64,
    dphi: f64,
    d2phi: f64,
    inv_s: f64,
    gamma: f64,
}

/// The pair loop of the reverse pass. Accumulates `x_bar` and the scratch's `w̄`, `ā`; returns
/// `c̄`. Compiled for several instruction sets like the forward loop; every version performs the
/// same operations in the same order, so results do not depend on the machine.
#[allow(clippy::too_many_arguments)] // the hot loop takes the field's arrays unpacked
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
fn vjp_pairs(
    x: &[f64],
    dim: usize,
    n_dist: usize,
    mu: &[f64],
    a: &[f64],
    slice: &TimeSlice,
    cotangent: Cotangent<'_>,
    x_bar: &mut [f64],
    scratch: &mut VjpScratch,
) -> f64 {
    let n = x.len() / dim;
    let dim_f = dim as f64;
    let div_bar = cotangent.div;
    let v_bar = cotangent.v;
    let kp = mu.len();
    let w = &slice.w[..kp];
    let mut c_bar = 0.0;
    for i in 0..n {
        for j in i + 1..n {
            let mut r = [0.0; MAX_DIM];
            let mut u = [0.0; MAX_DIM];
            let mut r2 = 0.0;
            let mut p = 0.0;
            for k in 0..dim {
                r[k] = x[i * dim + k] - x[j * dim + k];
                u[k] = v_bar[i * dim + k] - v_bar[j * dim + k];
                r2 += r[k] * r[k];
                p += u[k] * r[k];
            }
            let d = (r2 + EPS_D).sqrt();
            let rad = radial_second(d, mu, a, w, scratch);
            let phi = rad.phi0 + slice.c;
            let inv_d = 1.0 / d;
            let m = r2 * inv_d;

            // Configuration: ∂L_p/∂r = φ u + coef · r.
            let coef = rad.dphi * p * inv_d
                + 2.0
                    * div_bar
                    * (dim_f * rad.dphi * inv_d
                        + rad.d2phi * m * inv_d
                        + rad.dphi * (r2 + 2.0 * EPS_D) * inv_d * inv_d * inv_d);
            for k in 0..dim {
                let gr = phi * u[k] + coef * r[k];
                x_bar[i * dim + k] += gr;
                x_bar[j * dim + k] -= gr;
            }

            // Parameters: α ∂φ/∂θ + β ∂φ'/∂θ.
            let alpha = p + 2.0 * dim_f * div_bar;
            let beta = 2.0 * div_bar * m;
            c_bar += alpha;
            accumulate_kernels(n_dist, w, alpha, beta, &rad, scratch);
        }
    }
    c_bar
}

/// Pass 1 over the padded kernels: the Gaussians (bit-identical to the forward loop's), kept in
/// the scratch, and the six sums that give φ, φ', φ''.
#[inline(always)]
fn radial_second(d: f64, mu: &[f64], a: &[f64], w: &[f64], scratch: &mut VjpScratch) -> Radial2 {
    let kp = mu.len();
    let VjpScratch { e, ea, g, .. } = scratch;
    for ((((e, ea), g), mu), a) in e[..kp]
        .iter_mut()
        .zip(&mut ea[..kp])
        .zip(&mut g[..kp])
        .zip(mu)
        .zip(a)
    {
        *e = d - mu;
        *ea = *e * a;
        *g = exp_nonpositive(-(*e * *ea));
    }
    let mut s_g = [0.0; LANES];
    let mut s_gw = [0.0; LANES];
    let mut s_gea = [0.0; LANES];
    let mut s_geaw = [0.0; LANES];
    let mut s_g2 = [0.0; LANES];
    let mut s_g2w = [0.0; LANES];
    for (((g, ea), a), w) in g[..kp]
        .chunks_exact(LANES)
        .zip(ea[..kp].chunks_exact(LANES))
        .zip(a.chunks_exact(LANES))
        .zip(w.chunks_exact(LANES))
    {
        for l in 0..LANES {
            let gea = g[l] * ea[l];
            // g''/… = g (4 e² a² − 2 a); padding lanes have g = 0 and finite factors.
            let g2 = g[l] * (4.0 * ea[l] * ea[l] - 2.0 * a[l]);
            s_g[l] += g[l];
            s_gw[l] += g[l] * w[l];
            s_gea[l] += gea;
            s_geaw[l] += gea * w[l];
            s_g2[l] += g2;
            s_g2w[l] += g2 * w[l];
        }
    }
    let inv_s = 1.0 / (NORM_EPS + reduce(&s_g));
    let big_a = reduce(&s_gw);
    let dg = -2.0 * reduce(&s_gea);
    let da = -2.0 * reduce(&s_geaw);
    let d2g = reduce(&s_g2);
    let d2a = reduce(&s_g2w);
    let phi0 = big_a * inv_s;
    let dphi = (da - phi0 * dg) * inv_s;
    let d2phi = (d2a - phi0 * d2g - 2.0 * dphi * dg) * inv_s;
    Radial2 {
        phi0,
        dphi,
        d2phi,
        inv_s,
        gamma: dg * inv_s,
    }
}

/// Pass 2 over the real kernels: `w̄_k += α ∂φ/∂w_k + β ∂φ'/∂w_k` and the same for `a_k`.
/// Padding lanes are skipped: their `e` is ~1e100, and `0 · e³` could overflow to NaN.
#[inline(always)]
fn accumulate_kernels(
    n_dist: usize,
    w: &[f64],
    alpha: f64,
    beta: f64,
    rad: &Radial2,
    scratch: &mut VjpScratch,
) {
    let VjpScratch {
        e,
        ea,
        g,
        w_bar,
        a_bar,
    } = scratch;
    let (phi0, dphi, gamma, inv_s) = (rad.phi0, rad.dphi, rad.gamma, rad.inv_s);
    for k in 0..n_dist {
        let gs = g[k] * inv_s;
        let (e, ea) = (e[k], ea[k]);
        let delta = w[k] - phi0;
        w_bar[k] += gs * (alpha - beta * (2.0 * ea + gamma));
        a_bar[k] += gs
            * (e * e * (beta * (delta * gamma + dphi) - alpha * delta)
                + 2.0 * beta * e * (e * ea - 1.0) * delta);
    }
}

/// Pairwise sum in a fixed order, as in the forward loop: the same bits whatever the SIMD width.
#[inline(always)]
fn reduce(lanes: &[f64; LANES]) -> f64 {
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
        + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
}
