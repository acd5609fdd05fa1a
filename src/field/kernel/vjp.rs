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
//! Per pair: one element-wise pass over the kernels that recomputes the Gaussians (bit-identical
//! to the forward loop's) with the products `g·e·a` and `g''`, six one-accumulator lane sums,
//! and one element-wise pass that accumulates `w̄` and `ā`. The `ā` sum needs no time factor,
//! so it runs across evaluations; since the rest of the parameter part is linear in `(w̄, c̄)`
//! at a fixed time, the reverse pass through an integration sums those per distinct stage time
//! and undoes the time fold once per time point (about 2n + 1 for n RK4 steps) rather than once
//! per evaluation. No allocation: per-kernel buffers live in a [`VjpScratch`] reused across
//! evaluations.

use multiversion::multiversion;

use super::KernelField;
use super::kernels::MAX_TIME_KERNELS;
use super::pairs::EPS_D;
use super::radial::{LANES, MAX_PADDED, NORM_EPS, TimeSlice};
use crate::error::{Error, Result};
use crate::field::Cotangent;
use crate::field::exp::exp_nonpositive;
use crate::geometry::MAX_DIM;
use crate::species::{MAX_PAIR_TYPES, Species};

#[cfg(doc)]
use super::ParamLayout;

/// Reusable buffers of [`KernelField::vjp_into`]: per-kernel values of the pair being processed
/// and a parameter accumulator. Create one per thread and
/// reuse it; its contents between calls carry no meaning.
#[derive(Clone)]
pub struct VjpScratch {
    e: [f64; MAX_PADDED],
    ea: [f64; MAX_PADDED],
    g: [f64; MAX_PADDED],
    gea: [f64; MAX_PADDED],
    g2: [f64; MAX_PADDED],
    /// One accumulator per pair type.
    acc: Vec<ParamAccumulator>,
}

impl VjpScratch {
    /// Buffers sized for the largest supported kernel count (the parameter accumulator grows to
    /// the field's size on first use).
    #[must_use]
    pub fn new() -> Self {
        VjpScratch {
            e: [0.0; MAX_PADDED],
            ea: [0.0; MAX_PADDED],
            g: [0.0; MAX_PADDED],
            gea: [0.0; MAX_PADDED],
            g2: [0.0; MAX_PADDED],
            acc: Vec::new(),
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

/// The time basis at one flow time, precomputed for the reverse pass, per species-pair type
/// (one for a single species). An integration visits few distinct times, so the reverse pass
/// computes these once per parameter set rather than once per evaluation.
#[derive(Clone)]
pub struct TimePoint {
    parts: Vec<TimePart>,
}

/// One pair type's part of a [`TimePoint`]: the folded slice (the same bits as
/// [`KernelField::time_slice`]), `τ_r`, `1/S_t` and `∂h_r/∂q_r`.
#[derive(Clone)]
pub(crate) struct TimePart {
    pub(super) slice: TimeSlice,
    tau: [f64; MAX_TIME_KERNELS],
    inv_t: f64,
    /// `∂h_r/∂q_r = −(t − μ_r)² h_r · 2 a_r`, with `q_r = −log γ_r`, `a_r = exp(2 q_r)`.
    dh_dq: [f64; MAX_TIME_KERNELS],
}

impl TimePoint {
    /// The folded time basis of pair type 0 at this time.
    pub(crate) fn slice(&self) -> &TimeSlice {
        &self.parts[0].slice
    }

    /// Every pair type's folded time basis, in pair-type order.
    pub(crate) fn slices(&self) -> impl Iterator<Item = &TimeSlice> {
        self.parts.iter().map(|p| &p.slice)
    }

    /// Pair type `ty`'s part.
    pub(crate) fn part(&self, ty: usize) -> &TimePart {
        &self.parts[ty]
    }

    /// Every pair type's part, in pair-type order.
    pub(crate) fn parts(&self) -> &[TimePart] {
        &self.parts
    }

    /// Pair type `ty`'s folded time basis.
    pub(crate) fn part_slice(&self, ty: usize) -> &TimeSlice {
        &self.parts[ty].slice
    }
}

impl std::fmt::Debug for TimePoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TimePoint { .. }")
    }
}

impl std::fmt::Debug for ParamAccumulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ParamAccumulator { .. }")
    }
}

/// θ̄ of one pair type's block summed over evaluations, in a layout that keeps the
/// per-evaluation work contiguous:
/// `W̄` transposed and padded like the field's `w_t`, and the `s` and `−log γ_dist` parts before
/// their per-parameter factors `2 s_k` and `2 a_k`, applied once by [`ParamAccumulator::add_to`].
#[derive(Clone, Default)]
pub(crate) struct ParamAccumulator {
    padded: usize,
    /// `Σ w̄_k τ_r`, R × padded K.
    w_t: Vec<f64>,
    /// `Σ c̄ τ_r`.
    b: Vec<f64>,
    /// `Σ c̄ w_k(t)`; `s̄_k = 2 s_k ·` this.
    s: Vec<f64>,
    /// `Σ ā_k` (pair sums of `∂L/∂a_k`); `p̄_k = 2 a_k ·` this.
    pub(super) a: Vec<f64>,
    /// `Σ h̄_r ∂h_r/∂q_r`.
    q: Vec<f64>,
}

impl ParamAccumulator {
    /// Sizes the buffers for `field` and zeroes them.
    pub(crate) fn reset(&mut self, field: &KernelField) {
        let pl = field.param_layout();
        let padded = field.mu_padded().len();
        self.padded = padded;
        for (v, n) in [
            (&mut self.w_t, pl.n_time * padded),
            (&mut self.b, pl.n_time),
            (&mut self.s, padded),
            (&mut self.a, padded),
            (&mut self.q, pl.n_time),
        ] {
            v.clear();
            v.resize(n, 0.0);
        }
    }

    /// Adds the accumulated cotangent of pair type `ty` to `theta_bar` (the whole flat
    /// vector: `ty`'s block of the [`ParamLayout`]).
    pub(crate) fn add_to(&self, field: &KernelField, ty: usize, theta_bar: &mut [f64]) {
        let pl = field.param_layout();
        let (nk, nr, kp) = (pl.n_dist, pl.n_time, self.padded);
        let params = field.block_params(ty);
        let theta_bar = &mut theta_bar[field.block_range(ty)];
        let w_bar = &mut theta_bar[pl.w()];
        for k in 0..nk {
            for r in 0..nr {
                w_bar[k * nr + r] += self.w_t[r * kp + k];
            }
        }
        for (t, v) in theta_bar[pl.b()].iter_mut().zip(&self.b) {
            *t += v;
        }
        let s_start = pl.s().start;
        for k in 0..nk {
            theta_bar[s_start + k] += 2.0 * params[s_start + k] * self.s[k];
        }
        let a_pad = &field.block(ty).a_pad;
        for ((t, a), v) in theta_bar[pl.log_inv_gamma_dist()]
            .iter_mut()
            .zip(a_pad)
            .zip(&self.a)
        {
            *t += 2.0 * a * v;
        }
        for (t, v) in theta_bar[pl.log_inv_gamma_time()].iter_mut().zip(&self.q) {
            *t += v;
        }
    }
}

impl KernelField {
    /// Vector–Jacobian product of one evaluation of the field at `(x, t)` (t in flow time, x in
    /// length units, particle-major): accumulates
    /// `x_bar += v̄ᵀ ∂v/∂x + div̄ ∂div v/∂x` and `theta_bar += v̄ᵀ ∂v/∂θ + div̄ ∂div v/∂θ`,
    /// `theta_bar` in the flat layout of [`ParamLayout`] (derivatives with respect to `W`, `b`,
    /// `s` and the log inverse bandwidths `−log γ` of both bases). See the [module
    /// docs](crate::field::kernel::vjp) for the derivation. Nothing is overwritten: callers zero the accumulators.
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
        if theta_bar.len() != self.n_params() {
            return Err(Error::size(
                "vjp theta_bar",
                self.n_params(),
                theta_bar.len(),
            ));
        }
        let point = self.time_point(t);
        // The accumulators are moved out so the scratch's per-pair buffers can be borrowed too.
        let mut acc = std::mem::take(&mut scratch.acc);
        let n_types = self.n_pair_types();
        acc.resize_with(n_types, ParamAccumulator::default);
        acc.iter_mut().for_each(|a| a.reset(self));
        let kp = self.mu_padded().len();
        let mut w_bar = vec![0.0; n_types * kp];
        let c_bar = self.vjp_pairs_at(x, &point, cotangent, x_bar, &mut w_bar, &mut acc, scratch);
        for (ty, (acc, w_bar)) in acc.iter_mut().zip(w_bar.chunks_exact_mut(kp)).enumerate() {
            self.unfold_time(ty, point.part(ty), c_bar[ty], w_bar, acc);
            acc.add_to(self, ty, theta_bar);
        }
        scratch.acc = acc;
        Ok(())
    }

    /// The time basis at `t` with what the reverse pass needs of it, per pair type.
    pub(crate) fn time_point(&self, t: f64) -> TimePoint {
        TimePoint {
            parts: (0..self.n_pair_types())
                .map(|ty| self.time_part(ty, t))
                .collect(),
        }
    }

    fn time_part(&self, ty: usize, t: f64) -> TimePart {
        let nr = self.param_layout().n_time;
        let mu_t = &self.kernels().mu_time;
        let a_t = &self.block(ty).a_time;
        // h_r and S_t exactly as `time_basis_into` computes them.
        let mut h = [0.0; MAX_TIME_KERNELS];
        let mut total = 0.0;
        for r in 0..nr {
            let e = t - mu_t[r];
            h[r] = exp_nonpositive(-(e * e * a_t[r]));
            total += h[r];
        }
        let inv_t = 1.0 / (NORM_EPS + total);
        let mut point = TimePart {
            slice: self.time_slice_of(ty, t),
            tau: [0.0; MAX_TIME_KERNELS],
            inv_t,
            dh_dq: [0.0; MAX_TIME_KERNELS],
        };
        for r in 0..nr {
            let e = t - mu_t[r];
            point.tau[r] = h[r] * inv_t;
            point.dh_dq[r] = -(e * e) * h[r] * 2.0 * a_t[r];
        }
        point
    }

    /// The pair part of the VJP at a precomputed time point: accumulates `x_bar`, the time-local
    /// `w̄` (per pair type, each of length padded K, one after the other; it may already hold
    /// other evaluations at the same time, since the time unfold is linear) and `ā` into `acc`
    /// (one per pair type), and returns this evaluation's `c̄` per pair type. Finish with
    /// [`KernelField::unfold_time`] once per time point and pair type. No size checks: the
    /// caller sized everything.
    #[allow(clippy::too_many_arguments)] // internal: the reverse pass's buffers, unpacked
    pub(crate) fn vjp_pairs_at(
        &self,
        x: &[f64],
        point: &TimePoint,
        cotangent: Cotangent<'_>,
        x_bar: &mut [f64],
        w_bar: &mut [f64],
        acc: &mut [ParamAccumulator],
        scratch: &mut VjpScratch,
    ) -> [f64; MAX_PAIR_TYPES] {
        debug_assert_eq!(x.len(), self.layout().len());
        debug_assert_eq!(acc.len(), self.n_pair_types());
        debug_assert_eq!(acc[0].padded, self.mu_padded().len());
        debug_assert_eq!(w_bar.len(), self.n_pair_types() * self.mu_padded().len());
        vjp_pairs(
            x,
            self.layout().dim,
            self.param_layout().n_dist,
            self.mu_padded(),
            self.species(),
            self,
            &point.parts,
            cotangent,
            x_bar,
            scratch,
            w_bar,
            acc,
        )
    }

    /// Turns the `w̄_k` and `c̄` of the evaluations at one time point into parameter cotangents:
    /// the reverse of the time fold (module docs, "once per evaluation"). `w_bar` is used as
    /// scratch.
    pub(crate) fn unfold_time(
        &self,
        ty: usize,
        point: &TimePart,
        c_bar: f64,
        w_bar: &mut [f64],
        acc: &mut ParamAccumulator,
    ) {
        let pl = self.param_layout();
        let nr = pl.n_time;
        let b = &self.block_params(ty)[pl.b()];
        let block = self.block(ty);
        let mut tau_bar = [0.0; MAX_TIME_KERNELS];
        unfold_lanes(
            &point.slice.w[..w_bar.len()],
            &point.tau[..nr],
            c_bar,
            &block.s_sq,
            &block.w_t,
            w_bar,
            acc,
            &mut tau_bar[..nr],
        );
        for r in 0..nr {
            tau_bar[r] += c_bar * b[r];
            acc.b[r] += c_bar * point.tau[r];
        }
        let tau_bar = &tau_bar[..nr];
        let mean: f64 = tau_bar.iter().zip(&point.tau).map(|(a, b)| a * b).sum();
        for ((q, tb), dh) in acc.q.iter_mut().zip(tau_bar).zip(&point.dh_dq) {
            *q += (tb - mean) * point.inv_t * dh;
        }
    }
}

/// The kernel-sized part of [`KernelField::unfold_time`], in lanes over the padded kernels
/// (padding entries carry zeros): `w̄ += c̄ s²`, `s̄ += c̄ w(t)`, `W̄ᵀ_r += w̄ τ_r` and
/// `τ̄_r = Σ_k w̄_k W_kr` (without the `b` term).
#[allow(clippy::too_many_arguments)] // the hot loop takes the field's arrays unpacked
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
fn unfold_lanes(
    w_t_now: &[f64],
    tau: &[f64],
    c_bar: f64,
    s_sq: &[f64],
    w_transposed: &[f64],
    w_bar: &mut [f64],
    acc: &mut ParamAccumulator,
    tau_bar: &mut [f64],
) {
    let kp = w_bar.len();
    // c = Σ_k s_k² w_k + …: its cotangent reaches w_k too.
    for (wb, sq) in w_bar.iter_mut().zip(s_sq) {
        *wb += c_bar * sq;
    }
    for (s, w) in acc.s.iter_mut().zip(w_t_now) {
        *s += c_bar * w;
    }
    for (r, (tau, tau_bar)) in tau.iter().zip(tau_bar.iter_mut()).enumerate() {
        let mut dot = [0.0; LANES];
        for ((acc_row, w_row), wb) in acc.w_t[r * kp..(r + 1) * kp]
            .chunks_exact_mut(LANES)
            .zip(w_transposed[r * kp..(r + 1) * kp].chunks_exact(LANES))
            .zip(w_bar.chunks_exact(LANES))
        {
            for l in 0..LANES {
                acc_row[l] += wb[l] * tau;
                dot[l] += wb[l] * w_row[l];
            }
        }
        *tau_bar = reduce(&dot);
    }
}

/// φ₀ = A/S, φ', φ'' and the quantities the parameter pass needs, for one distance.
pub(super) struct Radial2 {
    pub(super) phi0: f64,
    pub(super) dphi: f64,
    pub(super) d2phi: f64,
    inv_s: f64,
    gamma: f64,
}

/// The pair loop of the reverse pass. Accumulates `x_bar`, `w̄` (pair type `ty` at
/// `w_bar[ty·Kp..]`) and each pair type's `ā`; returns `c̄` per pair type. Compiled for
/// several instruction sets like the forward loop; every version performs the same operations
/// in the same order, so results do not depend on the machine.
#[allow(clippy::too_many_arguments)] // the hot loop takes the field's arrays unpacked
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
fn vjp_pairs(
    x: &[f64],
    dim: usize,
    n_dist: usize,
    mu: &[f64],
    species: Option<&Species>,
    field: &KernelField,
    parts: &[TimePart],
    cotangent: Cotangent<'_>,
    x_bar: &mut [f64],
    scratch: &mut VjpScratch,
    w_bar: &mut [f64],
    acc: &mut [ParamAccumulator],
) -> [f64; MAX_PAIR_TYPES] {
    let n = x.len() / dim;
    let dim_f = dim as f64;
    let div_bar = cotangent.div;
    let v_bar = cotangent.v;
    let kp = mu.len();
    let mut c_bar = [0.0; MAX_PAIR_TYPES];
    for i in 0..n {
        for j in i + 1..n {
            let ty = species.map_or(0, |s| s.pair_type_of_particles(i, j));
            let a = &field.block(ty).a_pad[..];
            let slice = &parts[ty].slice;
            let w = &slice.w[..kp];
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
            c_bar[ty] += alpha;
            accumulate_kernels(
                n_dist,
                w,
                alpha,
                beta,
                &rad,
                scratch,
                &mut w_bar[ty * kp..(ty + 1) * kp],
                &mut acc[ty].a,
            );
        }
    }
    c_bar
}

/// Pass 1 over the padded kernels: the Gaussians (bit-identical to the forward loop's) and the
/// per-kernel products `g·e·a` and `g'' = g (4 e² a² − 2 a)`, kept in the scratch, then the six
/// sums that give φ, φ', φ''. Each sum is its own one-accumulator lane loop: with several sums
/// in one loop the vectoriser pairs unrelated sums and falls back to 2-wide code.
#[inline(always)]
pub(super) fn radial_second(
    d: f64,
    mu: &[f64],
    a: &[f64],
    w: &[f64],
    scratch: &mut VjpScratch,
) -> Radial2 {
    let kp = mu.len();
    let VjpScratch {
        e, ea, g, gea, g2, ..
    } = scratch;
    for ((((((e, ea), g), gea), g2), mu), a) in e[..kp]
        .iter_mut()
        .zip(&mut ea[..kp])
        .zip(&mut g[..kp])
        .zip(&mut gea[..kp])
        .zip(&mut g2[..kp])
        .zip(mu)
        .zip(a)
    {
        *e = d - mu;
        *ea = *e * a;
        *g = exp_nonpositive(-(*e * *ea));
        *gea = *g * *ea;
        // Padding lanes have g = 0 and finite factors.
        *g2 = *g * (4.0 * *ea * *ea - 2.0 * a);
    }
    let (g, gea, g2) = (&g[..kp], &gea[..kp], &g2[..kp]);
    let s_g = lane_sum(g);
    let s_gw = lane_dot(g, w);
    let s_gea = lane_sum(gea);
    let s_geaw = lane_dot(gea, w);
    let s_g2 = lane_sum(g2);
    let s_g2w = lane_dot(g2, w);
    let inv_s = 1.0 / (NORM_EPS + s_g);
    let big_a = s_gw;
    let dg = -2.0 * s_gea;
    let da = -2.0 * s_geaw;
    let d2g = s_g2;
    let d2a = s_g2w;
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
/// With the per-pair scalars folded (`g_k/S` factored out, `δ_k = w_k − φ₀`, `Γ = G'/S`):
///
/// ```text
/// w̄_k += g_k · [(α − βΓ) − 2β e_k a_k] / S
/// ā_k += g_k · [β φ' e_k² + δ_k ((βΓ − α) e_k² + 2β (e_k² · e_k a_k − e_k))] / S
/// ```
///
/// Padding lanes are skipped: their `e` is ~1e100, and `0 · e³` could overflow to NaN.
#[allow(clippy::too_many_arguments)] // inlined into the pair loop
#[inline(always)]
pub(super) fn accumulate_kernels(
    n_dist: usize,
    w: &[f64],
    alpha: f64,
    beta: f64,
    rad: &Radial2,
    scratch: &VjpScratch,
    w_bar: &mut [f64],
    a_bar: &mut [f64],
) {
    let VjpScratch { e, ea, g, .. } = scratch;
    let inv_s = rad.inv_s;
    let c_w0 = (alpha - beta * rad.gamma) * inv_s;
    let c_w1 = -2.0 * beta * inv_s;
    let c_e2 = beta * rad.dphi * inv_s;
    let c_d0 = -c_w0;
    let c_d1 = -c_w1;
    let phi0 = rad.phi0;
    // Zipped slices of one length: no bounds checks, so the loop vectorises.
    for (((((wb, ab), g), e), ea), w) in w_bar[..n_dist]
        .iter_mut()
        .zip(&mut a_bar[..n_dist])
        .zip(&g[..n_dist])
        .zip(&e[..n_dist])
        .zip(&ea[..n_dist])
        .zip(&w[..n_dist])
    {
        let e2 = e * e;
        let delta = w - phi0;
        *wb += g * (c_w0 + c_w1 * ea);
        *ab += g * (c_e2 * e2 + delta * (c_d0 * e2 + c_d1 * (e2 * ea - e)));
    }
}

/// `Σ a` over whole lanes, in a fixed order.
#[inline(always)]
fn lane_sum(a: &[f64]) -> f64 {
    let mut acc = [0.0; LANES];
    for a in a.chunks_exact(LANES) {
        for l in 0..LANES {
            acc[l] += a[l];
        }
    }
    reduce(&acc)
}

/// `Σ a·b` over whole lanes, in a fixed order.
#[inline(always)]
fn lane_dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0; LANES];
    for (a, b) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
        }
    }
    reduce(&acc)
}

/// Pairwise sum in a fixed order, as in the forward loop: the same bits whatever the SIMD width.
#[inline(always)]
fn reduce(lanes: &[f64; LANES]) -> f64 {
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
        + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
}
