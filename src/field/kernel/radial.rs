//! The radial function `φ(d, t)` and its derivative `∂φ/∂d`: the hot loop of everything.
//!
//! At a fixed time the time basis folds into per-kernel weights, `w_k(t) = Σ_r τ_r(t)·W_kr`, and a
//! constant `c(t) = Σ_k s_k²·w_k(t) + Σ_r b_r·τ_r(t)`, so that
//! `φ(d, t) = Σ_k ρ_k(d)·w_k(t) + c(t)` with `ρ_k = g_k / (1e−6 + Σ_l g_l)`. The kernel sums run
//! over lanes of [`LANES`] so the compiler emits SIMD code; lanes are reduced in a fixed order,
//! so the result does not depend on the vector width of the machine.

use super::kernels::MAX_DIST_KERNELS;
use crate::field::exp::exp_nonpositive;

/// Width of the kernel loop; kernel arrays are padded to a multiple of it.
pub const LANES: usize = 8;
/// Room for the padded distance basis.
pub const MAX_PADDED: usize = MAX_DIST_KERNELS.div_ceil(LANES) * LANES;

/// Normalisation offset of the RBF bases, `ρ_k = g_k / (NORM_EPS + Σ_l g_l)`.
pub const NORM_EPS: f64 = 1e-6;

/// The field's time dependence folded at one time t: per-kernel weights and a constant.
#[derive(Debug, Clone)]
pub struct TimeSlice {
    /// `w_k(t)`, padded with zeros to the padded kernel count.
    pub(crate) w: [f64; MAX_PADDED],
    /// `c(t)`.
    pub(crate) c: f64,
}

impl TimeSlice {
    pub(crate) fn zeroed() -> Self {
        TimeSlice {
            w: [0.0; MAX_PADDED],
            c: 0.0,
        }
    }
}

/// A radial function `d ↦ (φ(d), ∂φ/∂d)` at one fixed time: what the pair loops need.
pub(crate) trait RadialFn {
    /// Per-evaluation buffers, created once per field evaluation (not per pair).
    type Scratch;

    fn scratch(&self) -> Self::Scratch;

    /// `(φ(d), ∂φ/∂d)`.
    fn eval(&self, d: f64, scratch: &mut Self::Scratch) -> (f64, f64);

    /// `eval` for every distance of a block (same bits per element).
    #[inline(always)]
    fn eval_block(
        &self,
        d: &[f64],
        phi: &mut [f64],
        dphi: &mut [f64],
        scratch: &mut Self::Scratch,
    ) {
        for ((d, phi), dphi) in d.iter().zip(phi.iter_mut()).zip(dphi.iter_mut()) {
            (*phi, *dphi) = self.eval(*d, scratch);
        }
    }

    /// `(φ(d), ∂φ/∂d, ∂²φ/∂d²)`, the first two the same bits as `eval`: for the gradient of
    /// the divergence (see [`crate::field::VectorField::velocity_jacobian_divgrad_into`]).
    fn eval2(&self, d: f64, scratch: &mut Self::Scratch) -> (f64, f64, f64);

    /// `eval2` for every distance of a block (same bits per element).
    #[inline(always)]
    fn eval2_block(
        &self,
        d: &[f64],
        phi: &mut [f64],
        dphi: &mut [f64],
        d2phi: &mut [f64],
        scratch: &mut Self::Scratch,
    ) {
        for (((d, phi), dphi), d2phi) in d.iter().zip(phi).zip(dphi).zip(d2phi) {
            (*phi, *dphi, *d2phi) = self.eval2(*d, scratch);
        }
    }

    /// `φ` alone for every distance of a block, the same bits as `eval(d).0`; implementations
    /// override it when skipping the derivative saves work.
    #[inline(always)]
    fn value_block(&self, d: &[f64], phi: &mut [f64], scratch: &mut Self::Scratch) {
        for (d, phi) in d.iter().zip(phi.iter_mut()) {
            *phi = self.eval(*d, scratch).0;
        }
    }
}

/// The exact RBF radial function at the time folded into `slice`.
pub(crate) struct ExactRadial<'a> {
    pub(crate) mu: &'a [f64],
    pub(crate) a: &'a [f64],
    pub(crate) slice: &'a TimeSlice,
}

impl RadialFn for ExactRadial<'_> {
    type Scratch = Scratch;

    fn scratch(&self) -> Scratch {
        Scratch::new()
    }

    #[inline(always)]
    fn eval(&self, d: f64, scratch: &mut Scratch) -> (f64, f64) {
        radial(d, self.mu, self.a, self.slice, scratch)
    }

    fn eval2(&self, d: f64, scratch: &mut Scratch) -> (f64, f64, f64) {
        let (phi, dphi) = radial(d, self.mu, self.a, self.slice, scratch);
        (phi, dphi, curvature(self.a, self.slice, scratch))
    }
}

/// Per-kernel buffers of [`radial`], created once per field evaluation rather than per pair.
pub(crate) struct Scratch {
    g: [f64; MAX_PADDED],
    ea: [f64; MAX_PADDED],
}

impl Scratch {
    pub(crate) fn new() -> Self {
        Scratch {
            g: [0.0; MAX_PADDED],
            ea: [0.0; MAX_PADDED],
        }
    }
}

/// Returns `(φ(d), ∂φ/∂d)` for the folded slice. `mu` and `a` (= 1/γ²) are the padded distance
/// basis; padding entries have a centre so far away that their Gaussian is exactly 0.
#[inline(always)]
pub(crate) fn radial(
    d: f64,
    mu: &[f64],
    a: &[f64],
    slice: &TimeSlice,
    scratch: &mut Scratch,
) -> (f64, f64) {
    // Two passes: a plain element-wise map (which the loop vectoriser turns into SIMD exp)
    // and lane-wise sums in a fixed order.
    let kp = mu.len();
    let Scratch { g, ea } = scratch;
    for (((g, ea), mu), a) in g[..kp].iter_mut().zip(&mut ea[..kp]).zip(mu).zip(a) {
        let e = d - mu;
        *ea = e * a;
        *g = exp_nonpositive(-(e * *ea));
    }
    let mut sum_g = [0.0; LANES];
    let mut sum_gw = [0.0; LANES];
    let mut sum_gea = [0.0; LANES];
    let mut sum_geaw = [0.0; LANES];
    let w = &slice.w[..kp];
    for ((g, ea), w) in g[..kp]
        .chunks_exact(LANES)
        .zip(ea[..kp].chunks_exact(LANES))
        .zip(w.chunks_exact(LANES))
    {
        for l in 0..LANES {
            let gea = g[l] * ea[l];
            sum_g[l] += g[l];
            sum_gw[l] += g[l] * w[l];
            sum_gea[l] += gea;
            sum_geaw[l] += gea * w[l];
        }
    }
    let s = reduce(&sum_g);
    let sw = reduce(&sum_gw);
    let sea = reduce(&sum_gea);
    let seaw = reduce(&sum_geaw);
    let inv = 1.0 / (NORM_EPS + s);
    // ∂g_k/∂d = −2·(d − μ_k)·a_k·g_k, so ∂(Σ g w)/∂d = −2·seaw and ∂(Σ g)/∂d = −2·sea.
    let phi = sw * inv + slice.c;
    let dphi = -2.0 * (seaw - sw * sea * inv) * inv;
    (phi, dphi)
}

/// `∂²φ/∂d²` at the distance whose kernel terms [`radial`] just left in `scratch`.
///
/// With `S = ε + Σ g_k`, `W = Σ g_k·w_k`, `g_k' = −2·e_k·g_k` and
/// `g_k'' = (4·e_k² − 2·a_k)·g_k` (`e_k = (d − μ_k)·a_k`), `φ = W/S + c` gives
/// `φ'' = W''/S − 2·W'·S'/S² − W·S''/S² + 2·W·S'²/S³`. Off the hot paths (distances past a
/// table, untabulated fields), so plain sums.
fn curvature(a: &[f64], slice: &TimeSlice, scratch: &Scratch) -> f64 {
    let kp = a.len();
    let (mut s, mut s1, mut s2, mut w0, mut w1, mut w2) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (((g, ea), a), w) in scratch.g[..kp]
        .iter()
        .zip(&scratch.ea[..kp])
        .zip(a)
        .zip(&slice.w[..kp])
    {
        let g1 = -2.0 * ea * g;
        let g2 = (4.0 * ea * ea - 2.0 * a) * g;
        s += g;
        s1 += g1;
        s2 += g2;
        w0 += g * w;
        w1 += g1 * w;
        w2 += g2 * w;
    }
    let inv = 1.0 / (NORM_EPS + s);
    w2 * inv - (2.0 * w1 * s1 + w0 * s2) * inv * inv + 2.0 * w0 * s1 * s1 * inv * inv * inv
}

/// Pairwise sum in a fixed order: the same bits whatever the SIMD width.
#[inline(always)]
fn reduce(lanes: &[f64; LANES]) -> f64 {
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
        + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
}
