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
use crate::species::Species;

// A padding kernel's centre: (d − μ)²·a overflows the exp range, so its Gaussian is exactly 0.
const PAD_MU: f64 = 1e100;

/// The equivariant RBF kernel field of DESIGN.md §1 for a fixed particle layout.
///
/// With several particle species ([`Species`]) the field has one radial function per
/// unordered species pair, `v_i = Σ_j φ_{s_i s_j}(d_ij, t) r_ij`: one parameter block of
/// [`ParamLayout`] per pair type, in the pair-type order of [`crate::species`], stored one after
/// the other (with one species exactly the single block of the paper's field). It is then
/// equivariant under permutations within a species only.
///
/// Immutable once built; changing parameters goes through [`KernelField::set_params`], which
/// re-derives the cached bandwidths.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelField {
    layout: Layout,
    kernels: KernelConfig,
    /// `None` for a single species (the paper's field); otherwise at least two species.
    species: Option<Species>,
    /// The layout of one pair type's block.
    param_layout: ParamLayout,
    params: Vec<f64>,
    // Derived from `kernels`: padded centres.
    mu_pad: Vec<f64>,
    /// Derived from `params`, one per pair type.
    blocks: Vec<PairKernel>,
}

/// One pair type's radial function, derived from its parameter block: padded inverse squared
/// bandwidths, and W transposed and padded (R rows of the padded K) with s², so that folding
/// the time basis is a few vector AXPYs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PairKernel {
    pub(crate) a_pad: Vec<f64>,
    pub(crate) a_time: Vec<f64>,
    pub(crate) w_t: Vec<f64>,
    pub(crate) s_sq: Vec<f64>,
}

impl KernelField {
    /// A single-species field with explicit parameters (length [`ParamLayout::len`]).
    pub fn new(layout: Layout, kernels: KernelConfig, params: Vec<f64>) -> Result<Self> {
        Self::with_species(layout, kernels, Species::single(layout.n_particles), params)
    }

    /// A field for particles of several species, with explicit parameters: one block of
    /// [`ParamLayout::len`] per unordered species pair (length `n_pair_types · len`).
    ///
    /// # Errors
    ///
    /// [`Error::DimensionMismatch`] if `species` does not have one index per particle or the
    /// parameters have the wrong length; the kernel configuration's and parameters' own errors.
    pub fn with_species(
        layout: Layout,
        kernels: KernelConfig,
        species: Species,
        params: Vec<f64>,
    ) -> Result<Self> {
        kernels.validate()?;
        species.check_count(layout.n_particles)?;
        let param_layout = ParamLayout::new(kernels.n_dist(), kernels.n_time());
        let padded = kernels.n_dist().div_ceil(LANES) * LANES;
        let block = PairKernel {
            a_pad: vec![1.0; padded],
            a_time: vec![0.0; kernels.n_time()],
            w_t: vec![0.0; kernels.n_time() * padded],
            s_sq: vec![0.0; padded],
        };
        let mut field = KernelField {
            layout,
            param_layout,
            params: Vec::new(),
            mu_pad: vec![PAD_MU; padded],
            blocks: vec![block; species.n_pair_types()],
            species: (!species.is_single()).then_some(species),
            kernels,
        };
        field.mu_pad[..field.kernels.n_dist()].copy_from_slice(&field.kernels.mu_dist);
        field.set_params(&params)?;
        Ok(field)
    }

    /// The paper's initialisation: `W ~ N(0, 1/K)` from `seed`, `b = s = 0`, bandwidths from
    /// the kernel configuration.
    pub fn initialise(layout: Layout, kernels: KernelConfig, seed: u64) -> Result<Self> {
        Self::initialise_with_species(layout, kernels, Species::single(layout.n_particles), seed)
    }

    /// [`KernelField::initialise`] for several species: every pair type's block initialised
    /// the same way, the weights drawn from one stream in block order (so the first block has
    /// the bits of the single-species field with the same seed).
    pub fn initialise_with_species(
        layout: Layout,
        kernels: KernelConfig,
        species: Species,
        seed: u64,
    ) -> Result<Self> {
        kernels.validate()?;
        let pl = ParamLayout::new(kernels.n_dist(), kernels.n_time());
        let n_types = species.n_pair_types();
        let mut params = vec![0.0; pl.len() * n_types];
        let normal = Normal::new(0.0, 1.0 / (kernels.n_dist() as f64).sqrt())
            .map_err(|e| Error::invalid(e.to_string()))?;
        let mut rng = rng::stream(seed, Stream::FieldInit);
        for block in params.chunks_exact_mut(pl.len()) {
            for w in &mut block[pl.w()] {
                *w = normal.sample(&mut rng);
            }
            for (p, g) in block[pl.log_inv_gamma_dist()]
                .iter_mut()
                .zip(&kernels.gamma_dist)
            {
                *p = -g.ln();
            }
            for (p, g) in block[pl.log_inv_gamma_time()]
                .iter_mut()
                .zip(&kernels.gamma_time)
            {
                *p = -g.ln();
            }
        }
        Self::with_species(layout, kernels, species, params)
    }

    /// Replaces the parameters, validating length and finiteness. On error `self` is unchanged.
    pub fn set_params(&mut self, params: &[f64]) -> Result<()> {
        if params.len() != self.n_params() {
            return Err(Error::size("field params", self.n_params(), params.len()));
        }
        check_finite(params, "field parameters")?;
        // a = 1/γ² = exp(2·(−log γ)); reject bandwidths whose square overflows or vanishes.
        let inv_sq = |p: f64| (2.0 * p).exp();
        let pl = self.param_layout;
        for block in params.chunks_exact(pl.len()) {
            if let Some(p) = block[pl.log_inv_gamma_dist().start..pl.log_inv_gamma_time().end]
                .iter()
                .find(|p| !(inv_sq(**p).is_normal()))
            {
                return Err(Error::invalid(format!(
                    "log inverse bandwidth {p} gives an unusable 1/γ²"
                )));
            }
        }
        self.params.clear();
        self.params.extend_from_slice(params);
        let padded = self.mu_pad.len();
        for (kernel, params) in self.blocks.iter_mut().zip(params.chunks_exact(pl.len())) {
            for (a, p) in kernel
                .a_pad
                .iter_mut()
                .zip(&params[pl.log_inv_gamma_dist()])
            {
                *a = inv_sq(*p);
            }
            for (a, p) in kernel
                .a_time
                .iter_mut()
                .zip(&params[pl.log_inv_gamma_time()])
            {
                *a = inv_sq(*p);
            }
            let w = &params[pl.w()];
            for k in 0..pl.n_dist {
                for r in 0..pl.n_time {
                    kernel.w_t[r * padded + k] = w[k * pl.n_time + r];
                }
            }
            for (sq, s) in kernel.s_sq.iter_mut().zip(&params[pl.s()]) {
                *sq = s * s;
            }
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

    /// The layout of one pair type's parameter block (the whole vector for one species).
    #[must_use]
    pub fn param_layout(&self) -> ParamLayout {
        self.param_layout
    }

    /// The species, `None` for a single species.
    #[must_use]
    pub fn species(&self) -> Option<&Species> {
        self.species.as_ref()
    }

    /// The number of unordered species pairs, each with its own radial function (1 for a
    /// single species).
    #[must_use]
    pub fn n_pair_types(&self) -> usize {
        self.blocks.len()
    }

    /// The number of parameters, `n_pair_types · ParamLayout::len`.
    #[must_use]
    pub fn n_params(&self) -> usize {
        self.param_layout.len() * self.blocks.len()
    }

    /// Where pair type `ty`'s block lives in the flat parameter vector.
    #[must_use]
    pub fn block_range(&self, ty: usize) -> std::ops::Range<usize> {
        let len = self.param_layout.len();
        ty * len..(ty + 1) * len
    }

    #[must_use]
    pub fn params(&self) -> &[f64] {
        &self.params
    }

    /// Pair type `ty`'s parameter block.
    pub(crate) fn block_params(&self, ty: usize) -> &[f64] {
        &self.params[self.block_range(ty)]
    }

    /// Pair type `ty`'s derived arrays.
    pub(crate) fn block(&self, ty: usize) -> &PairKernel {
        &self.blocks[ty]
    }

    /// Padded distance centres μ_k; padding entries sit so far away that their Gaussians are
    /// exactly 0. For the reverse pass, which must see the same kernels as the forward loop.
    pub(crate) fn mu_padded(&self) -> &[f64] {
        &self.mu_pad
    }

    /// Normalised time basis `τ_r(t)` of pair type 0 into `tau` (length R).
    pub fn time_basis_into(&self, t: f64, tau: &mut [f64]) {
        self.time_basis_of_into(0, t, tau);
    }

    /// Normalised time basis `τ_r(t)` of pair type `ty` into `tau` (length R).
    pub(crate) fn time_basis_of_into(&self, ty: usize, t: f64, tau: &mut [f64]) {
        let mut total = 0.0;
        for ((tau, mu), a) in tau
            .iter_mut()
            .zip(&self.kernels.mu_time)
            .zip(&self.blocks[ty].a_time)
        {
            let e = t - mu;
            *tau = exp_nonpositive(-(e * e * a));
            total += *tau;
        }
        let inv = 1.0 / (NORM_EPS + total);
        tau.iter_mut().for_each(|v| *v *= inv);
    }

    /// Folds the time basis at `t` into per-kernel weights and a constant (pair type 0).
    #[must_use]
    pub fn time_slice(&self, t: f64) -> TimeSlice {
        self.time_slice_of(0, t)
    }

    /// Folds pair type `ty`'s time basis at `t` into per-kernel weights and a constant.
    #[must_use]
    pub(crate) fn time_slice_of(&self, ty: usize, t: f64) -> TimeSlice {
        let pl = self.param_layout;
        let mut tau = [0.0; MAX_TIME_KERNELS];
        let tau = &mut tau[..pl.n_time];
        self.time_basis_of_into(ty, t, tau);
        let mut slice = TimeSlice::zeroed();
        let padded = self.mu_pad.len();
        let w = &mut slice.w[..padded];
        let block = &self.blocks[ty];
        for (row, tau) in block.w_t.chunks_exact(padded).zip(tau.iter()) {
            for (w, x) in w.iter_mut().zip(row) {
                *w += tau * x;
            }
        }
        let c: f64 = w.iter().zip(&block.s_sq).map(|(w, s)| w * s).sum();
        let b = &self.block_params(ty)[pl.b()];
        slice.c = c + b.iter().zip(tau.iter()).map(|(b, t)| b * t).sum::<f64>();
        slice
    }

    /// Every pair type's time slice at `t`.
    pub(crate) fn time_slices(&self, t: f64) -> Vec<TimeSlice> {
        (0..self.n_pair_types())
            .map(|ty| self.time_slice_of(ty, t))
            .collect()
    }

    /// The exact radial function of pair type `ty` at the time folded into `slice`.
    pub(crate) fn exact_radial<'a>(&'a self, ty: usize, slice: &'a TimeSlice) -> ExactRadial<'a> {
        ExactRadial {
            mu: &self.mu_pad,
            a: &self.blocks[ty].a_pad,
            slice,
        }
    }

    /// Calls `f` with the exact radial functions of every pair type at time `t`: on the stack
    /// for one species (no allocation on the paper's hot path).
    fn with_exact_radials<T>(&self, t: f64, f: impl FnOnce(&[ExactRadial<'_>]) -> T) -> T {
        if self.species.is_none() {
            let slice = self.time_slice_of(0, t);
            f(&[self.exact_radial(0, &slice)])
        } else {
            let slices = self.time_slices(t);
            self.with_radials_of_slices(&slices, f)
        }
    }

    /// Calls `f` with the exact radial functions of the given per-pair-type slices.
    pub(crate) fn with_radials_of_slices<'s, T>(
        &self,
        slices: impl IntoIterator<Item = &'s TimeSlice>,
        f: impl FnOnce(&[ExactRadial<'_>]) -> T,
    ) -> T {
        let radials: Vec<ExactRadial<'_>> = slices
            .into_iter()
            .enumerate()
            .map(|(ty, slice)| self.exact_radial(ty, slice))
            .collect();
        f(&radials)
    }

    /// `v(x, t)` into `v` and `div v`, with the time basis of pair type 0 already folded into
    /// `slice` (as [`KernelField::time_slice`] gives it): the same bits as `velocity_into` at
    /// that time. Single species only (see [`KernelField::velocity_with_slices_into`]).
    pub(crate) fn velocity_with_slice_into(
        &self,
        x: &[f64],
        slice: &TimeSlice,
        v: &mut [f64],
    ) -> f64 {
        debug_assert!(self.species.is_none());
        velocity_pairs(x, self.layout.dim, None, &[self.exact_radial(0, slice)], v)
    }

    /// `v(x, t)` into `v` and `div v` from every pair type's folded slice at one time.
    pub(crate) fn velocity_with_slices_into<'s>(
        &self,
        x: &[f64],
        slices: impl IntoIterator<Item = &'s TimeSlice>,
        v: &mut [f64],
    ) -> f64 {
        let dim = self.layout.dim;
        self.with_radials_of_slices(slices, |radials| {
            velocity_pairs(x, dim, self.species.as_ref(), radials, v)
        })
    }

    /// `(φ(d, t), ∂φ/∂d)` at one distance (`d` is the softened distance), of pair type 0.
    #[must_use]
    pub fn radial(&self, d: f64, t: f64) -> (f64, f64) {
        self.radial_of(0, d, t)
    }

    /// `(φ(d, t), ∂φ/∂d)` of pair type `ty` (numbering of [`crate::species`]).
    #[must_use]
    pub fn radial_of(&self, ty: usize, d: f64, t: f64) -> (f64, f64) {
        self.exact_radial(ty, &self.time_slice_of(ty, t))
            .eval(d, &mut Scratch::new())
    }
}

impl VectorField for KernelField {
    fn state_len(&self) -> usize {
        self.layout.len()
    }

    /// Pairwise in the differences `x_i − x_j`: translation invariant.
    fn translation_axes(&self) -> Option<usize> {
        Some(self.layout.dim)
    }

    /// v is the gradient of a pair potential and the pair loops assemble its Jacobian
    /// symmetrically (tested in `tests/field.rs`).
    fn symmetric_jacobian(&self) -> bool {
        true
    }

    fn velocity_into(&self, x: &[f64], t: f64, v: &mut [f64]) -> f64 {
        debug_assert_eq!(x.len(), self.layout.len());
        let (dim, species) = (self.layout.dim, self.species.as_ref());
        self.with_exact_radials(t, |radials| velocity_pairs(x, dim, species, radials, v))
    }

    fn velocity_only_into(&self, x: &[f64], t: f64, v: &mut [f64]) {
        debug_assert_eq!(x.len(), self.layout.len());
        let (dim, species) = (self.layout.dim, self.species.as_ref());
        self.with_exact_radials(t, |radials| {
            velocity_only_pairs(x, dim, species, radials, v);
        });
    }

    fn velocity_jacobian_into(
        &self,
        x: &[f64],
        t: f64,
        v: &mut [f64],
        jacobian: &mut [f64],
    ) -> f64 {
        debug_assert_eq!(jacobian.len(), x.len() * x.len());
        let (dim, species) = (self.layout.dim, self.species.as_ref());
        self.with_exact_radials(t, |radials| {
            velocity_jacobian_pairs(x, dim, species, radials, v, jacobian)
        })
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
        let (dim, species) = (self.layout.dim, self.species.as_ref());
        Some(self.with_exact_radials(t, |radials| {
            velocity_jacobian_divgrad_pairs(x, dim, species, radials, v, jacobian, div_gradient)
        }))
    }
}
