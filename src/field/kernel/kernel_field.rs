//! `KernelField`: the equivariant RBF field with its trainable parameters.

use rand_distr::{Distribution, Normal};

use super::kernels::{KernelConfig, MAX_TIME_KERNELS};
use super::pairs::{
    velocity_jacobian_divgrad_pairs, velocity_jacobian_pairs, velocity_only_pairs, velocity_pairs,
};
use super::params::ParamLayout;
use super::radial::{ExactRadial, LANES, NORM_EPS, RadialFn, Scratch, TimeSlice};
use crate::error::{Error, Result, check_finite};
use crate::field::VectorField;
use crate::field::exp::exp_nonpositive;
use crate::geometry::Layout;
use crate::rng::{self, Stream};

// A padding kernel's centre: (d − μ)²·a overflows the exp range, so its Gaussian is exactly 0.
const PAD_MU: f64 = 1e100;

/// The equivariant RBF kernel field of DESIGN.md §1 for a fixed particle layout.
///
/// Immutable once built; changing parameters goes through [`KernelField::set_params`], which
/// re-derives the cached bandwidths.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelField {
    layout: Layout,
    kernels: KernelConfig,
    param_layout: ParamLayout,
    params: Vec<f64>,
    // Derived from `kernels` and `params`: padded centres and inverse squared bandwidths.
    mu_pad: Vec<f64>,
    a_pad: Vec<f64>,
    a_time: Vec<f64>,
    // W transposed and padded (R rows of the padded K), and s², so that folding the time basis
    // is a few vector AXPYs.
    w_t: Vec<f64>,
    s_sq: Vec<f64>,
}

impl KernelField {
    /// A field with explicit parameters (length [`ParamLayout::len`]).
    pub fn new(layout: Layout, kernels: KernelConfig, params: Vec<f64>) -> Result<Self> {
        kernels.validate()?;
        let param_layout = ParamLayout::new(kernels.n_dist(), kernels.n_time());
        let padded = kernels.n_dist().div_ceil(LANES) * LANES;
        let mut field = KernelField {
            layout,
            param_layout,
            params: Vec::new(),
            mu_pad: vec![PAD_MU; padded],
            a_pad: vec![1.0; padded],
            a_time: vec![0.0; kernels.n_time()],
            w_t: vec![0.0; kernels.n_time() * padded],
            s_sq: vec![0.0; padded],
            kernels,
        };
        field.mu_pad[..field.kernels.n_dist()].copy_from_slice(&field.kernels.mu_dist);
        field.set_params(&params)?;
        Ok(field)
    }

    /// The paper's initialisation: `W ~ N(0, 1/K)` from `seed`, `b = s = 0`, bandwidths from
    /// the kernel configuration.
    pub fn initialise(layout: Layout, kernels: KernelConfig, seed: u64) -> Result<Self> {
        kernels.validate()?;
        let pl = ParamLayout::new(kernels.n_dist(), kernels.n_time());
        let mut params = vec![0.0; pl.len()];
        let normal = Normal::new(0.0, 1.0 / (kernels.n_dist() as f64).sqrt())
            .map_err(|e| Error::invalid(e.to_string()))?;
        let mut rng = rng::stream(seed, Stream::FieldInit);
        for w in &mut params[pl.w()] {
            *w = normal.sample(&mut rng);
        }
        for (p, g) in params[pl.log_inv_gamma_dist()]
            .iter_mut()
            .zip(&kernels.gamma_dist)
        {
            *p = -g.ln();
        }
        for (p, g) in params[pl.log_inv_gamma_time()]
            .iter_mut()
            .zip(&kernels.gamma_time)
        {
            *p = -g.ln();
        }
        Self::new(layout, kernels, params)
    }

    /// Replaces the parameters, validating length and finiteness. On error `self` is unchanged.
    pub fn set_params(&mut self, params: &[f64]) -> Result<()> {
        if params.len() != self.param_layout.len() {
            return Err(Error::size(
                "field params",
                self.param_layout.len(),
                params.len(),
            ));
        }
        check_finite(params, "field parameters")?;
        // a = 1/γ² = exp(2·(−log γ)); reject bandwidths whose square overflows or vanishes.
        let inv_sq = |p: f64| (2.0 * p).exp();
        let pl = self.param_layout;
        if let Some(p) = params[pl.log_inv_gamma_dist().start..pl.log_inv_gamma_time().end]
            .iter()
            .find(|p| !(inv_sq(**p).is_normal()))
        {
            return Err(Error::invalid(format!(
                "log inverse bandwidth {p} gives an unusable 1/γ²"
            )));
        }
        self.params.clear();
        self.params.extend_from_slice(params);
        for (a, p) in self.a_pad.iter_mut().zip(&params[pl.log_inv_gamma_dist()]) {
            *a = inv_sq(*p);
        }
        for (a, p) in self.a_time.iter_mut().zip(&params[pl.log_inv_gamma_time()]) {
            *a = inv_sq(*p);
        }
        let padded = self.mu_pad.len();
        let w = &params[pl.w()];
        for k in 0..pl.n_dist {
            for r in 0..pl.n_time {
                self.w_t[r * padded + k] = w[k * pl.n_time + r];
            }
        }
        for (sq, s) in self.s_sq.iter_mut().zip(&params[pl.s()]) {
            *sq = s * s;
        }
        Ok(())
    }

    #[must_use]
    pub fn layout(&self) -> Layout {
        self.layout
    }

    #[must_use]
    pub fn kernels(&self) -> &KernelConfig {
        &self.kernels
    }

    #[must_use]
    pub fn param_layout(&self) -> ParamLayout {
        self.param_layout
    }

    #[must_use]
    pub fn params(&self) -> &[f64] {
        &self.params
    }

    /// Padded distance centres μ_k; padding entries sit so far away that their Gaussians are
    /// exactly 0. For the reverse pass, which must see the same kernels as the forward loop.
    pub(crate) fn mu_padded(&self) -> &[f64] {
        &self.mu_pad
    }

    /// Padded `a_k = 1/γ_k² = exp(2·(−log γ_k))` of the distance basis (padding entries 1).
    pub(crate) fn inv_gamma_sq_padded(&self) -> &[f64] {
        &self.a_pad
    }

    /// W transposed and padded, R rows of the padded K (`w_t[r*Kp + k] = W_kr`).
    pub(crate) fn w_transposed(&self) -> &[f64] {
        &self.w_t
    }

    /// `s_k²`, padded with zeros.
    pub(crate) fn s_squared_padded(&self) -> &[f64] {
        &self.s_sq
    }

    /// `a_r = 1/γ_r²` of the time basis (length R).
    pub(crate) fn inv_gamma_sq_time(&self) -> &[f64] {
        &self.a_time
    }

    /// Normalised time basis `τ_r(t)` into `tau` (length R).
    pub fn time_basis_into(&self, t: f64, tau: &mut [f64]) {
        let mut total = 0.0;
        for ((tau, mu), a) in tau.iter_mut().zip(&self.kernels.mu_time).zip(&self.a_time) {
            let e = t - mu;
            *tau = exp_nonpositive(-(e * e * a));
            total += *tau;
        }
        let inv = 1.0 / (NORM_EPS + total);
        tau.iter_mut().for_each(|v| *v *= inv);
    }

    /// Folds the time basis at `t` into per-kernel weights and a constant.
    #[must_use]
    pub fn time_slice(&self, t: f64) -> TimeSlice {
        let pl = self.param_layout;
        let mut tau = [0.0; MAX_TIME_KERNELS];
        let tau = &mut tau[..pl.n_time];
        self.time_basis_into(t, tau);
        let mut slice = TimeSlice::zeroed();
        let padded = self.mu_pad.len();
        let w = &mut slice.w[..padded];
        for (row, tau) in self.w_t.chunks_exact(padded).zip(tau.iter()) {
            for (w, x) in w.iter_mut().zip(row) {
                *w += tau * x;
            }
        }
        let c: f64 = w.iter().zip(&self.s_sq).map(|(w, s)| w * s).sum();
        let b = &self.params[pl.b()];
        slice.c = c + b.iter().zip(tau.iter()).map(|(b, t)| b * t).sum::<f64>();
        slice
    }

    /// The exact radial function at the time folded into `slice`.
    pub(crate) fn exact_radial<'a>(&'a self, slice: &'a TimeSlice) -> ExactRadial<'a> {
        ExactRadial {
            mu: &self.mu_pad,
            a: &self.a_pad,
            slice,
        }
    }

    /// `v(x, t)` into `v` and `div v`, with the time basis already folded into `slice` (as
    /// [`KernelField::time_slice`] gives it): the same bits as `velocity_into` at that time.
    pub(crate) fn velocity_with_slice_into(
        &self,
        x: &[f64],
        slice: &TimeSlice,
        v: &mut [f64],
    ) -> f64 {
        velocity_pairs(x, self.layout.dim, &self.exact_radial(slice), v)
    }

    /// `(φ(d, t), ∂φ/∂d)` at one distance (`d` is the softened distance).
    #[must_use]
    pub fn radial(&self, d: f64, t: f64) -> (f64, f64) {
        self.exact_radial(&self.time_slice(t))
            .eval(d, &mut Scratch::new())
    }
}

impl VectorField for KernelField {
    fn state_len(&self) -> usize {
        self.layout.len()
    }

    /// v is the gradient of a pair potential and the pair loops assemble its Jacobian
    /// symmetrically (tested in `tests/field.rs`).
    fn symmetric_jacobian(&self) -> bool {
        true
    }

    fn velocity_into(&self, x: &[f64], t: f64, v: &mut [f64]) -> f64 {
        debug_assert_eq!(x.len(), self.layout.len());
        self.velocity_with_slice_into(x, &self.time_slice(t), v)
    }

    fn velocity_only_into(&self, x: &[f64], t: f64, v: &mut [f64]) {
        debug_assert_eq!(x.len(), self.layout.len());
        velocity_only_pairs(
            x,
            self.layout.dim,
            &self.exact_radial(&self.time_slice(t)),
            v,
        );
    }

    fn velocity_jacobian_into(
        &self,
        x: &[f64],
        t: f64,
        v: &mut [f64],
        jacobian: &mut [f64],
    ) -> f64 {
        debug_assert_eq!(jacobian.len(), x.len() * x.len());
        let slice = self.time_slice(t);
        velocity_jacobian_pairs(x, self.layout.dim, &self.exact_radial(&slice), v, jacobian)
    }

    fn velocity_jacobian_divgrad_into(
        &self,
        x: &[f64],
        t: f64,
        v: &mut [f64],
        jacobian: &mut [f64],
        div_gradient: &mut [f64],
    ) -> Option<f64> {
        debug_assert_eq!(jacobian.len(), x.len() * x.len());
        let slice = self.time_slice(t);
        let radial = self.exact_radial(&slice);
        Some(velocity_jacobian_divgrad_pairs(
            x,
            self.layout.dim,
            &radial,
            v,
            jacobian,
            div_gradient,
        ))
    }
}
