//! The kernel field as a [`FieldFamily`] and [`TrainableField`]: the glue between the paper's
//! field and the rest of the crate.

use std::ops::Range;
use std::sync::Arc;

use super::bound::Side;
use super::kernels::{MAX_DIST_KERNELS, MAX_TIME_KERNELS};
use super::vjp::{ParamAccumulator, TimePoint, VjpScratch};
use super::{KernelConfig, KernelField, TabulatedField};
use crate::error::{Error, Result};
use crate::field::{
    Cotangent, FieldFamily, Interaction, Preset, TrainableField, VectorField, linspace,
};
use crate::geometry::Layout;
use crate::species::Species;

impl FieldFamily for KernelField {
    const NAME: &'static str = "kernel";
    const SPECIES: bool = true;
    type Config = KernelConfig;

    fn layout(&self) -> Layout {
        KernelField::layout(self)
    }

    fn config(&self) -> KernelConfig {
        self.kernels().clone()
    }

    fn from_config(layout: Layout, config: KernelConfig, params: Vec<f64>) -> Result<Self> {
        KernelField::new(layout, config, params)
    }

    fn from_config_with_species(
        layout: Layout,
        config: KernelConfig,
        species: Species,
        params: Vec<f64>,
    ) -> Result<Self> {
        KernelField::with_species(layout, config, species, params)
    }

    fn species(&self) -> Option<&Species> {
        KernelField::species(self)
    }

    /// The paper's 50 distance and 10 time kernels (DESIGN.md §2).
    fn default_counts() -> (usize, usize) {
        (50, 10)
    }

    /// A benchmark preset scales the centres and widths of its distance kernels. A range puts
    /// the distance centres at `linspace(min, max, K)` and the time centres at
    /// `linspace(0, 1, R)`, with widths in the proportion to the centre spacing of the
    /// double-well preset (γ = 0.5 at spacing 8/49, γ = 0.3 at spacing 1/9), so that the range
    /// [0, 8] with the default counts is that preset exactly and other ranges and counts overlap
    /// their neighbours alike.
    fn preset_config(preset: &Preset) -> Result<KernelConfig> {
        match *preset {
            Preset::Benchmark {
                interaction,
                length_scale,
            } => {
                let mut kernels = match interaction {
                    Interaction::DoubleWell => KernelConfig::double_well(),
                    Interaction::LennardJones => KernelConfig::lennard_jones(),
                };
                for v in kernels.mu_dist.iter_mut().chain(&mut kernels.gamma_dist) {
                    *v *= length_scale;
                }
                Ok(kernels)
            }
            Preset::Range { range, .. } => {
                let (k, r) = preset.counts_or(Self::default_counts());
                // Checked here, before any kernel is laid out: the bounds the family really
                // has (it used to state the 1..= bounds of `KernelConfig` for too many).
                if !(2..=MAX_DIST_KERNELS).contains(&k) || !(2..=MAX_TIME_KERNELS).contains(&r) {
                    return Err(Error::invalid(format!(
                        "the kernel family needs 2..={MAX_DIST_KERNELS} distance and \
                         2..={MAX_TIME_KERNELS} time kernels, got {k} and {r}"
                    )));
                }
                let (min, max) = range;
                let dist_spacing = (max - min) / (k - 1) as f64;
                let time_spacing = 1.0 / (r - 1) as f64;
                Ok(KernelConfig {
                    mu_dist: linspace(min, max, k),
                    gamma_dist: vec![0.5 * (dist_spacing / (8.0 / 49.0)); k],
                    mu_time: linspace(0.0, 1.0, r),
                    gamma_time: vec![0.3 * (time_spacing / (1.0 / 9.0)); r],
                })
            }
        }
    }

    fn validate_config(config: &KernelConfig) -> Result<()> {
        config.validate()
    }

    fn untrained(
        layout: Layout,
        config: KernelConfig,
        species: Species,
        seed: u64,
    ) -> Result<Self> {
        KernelField::initialise_with_species(layout, config, species, seed)
    }

    fn params(&self) -> &[f64] {
        KernelField::params(self)
    }

    fn set_params(&mut self, params: &[f64]) -> Result<()> {
        KernelField::set_params(self, params)
    }

    /// One set of the five blocks per species-pair type, in pair-type order (the names repeat).
    fn param_blocks(&self) -> Vec<(&'static str, Range<usize>)> {
        (0..self.n_pair_types())
            .flat_map(|ty| {
                let offset = self.block_range(ty).start;
                self.param_layout()
                    .blocks()
                    .into_iter()
                    .map(move |(name, r)| (name, r.start + offset..r.end + offset))
            })
            .collect()
    }

    /// Every pair type's `w` and `b`: φ is linear in them together (the bandwidths only shape
    /// the basis, and the offsets enter as `s_k²·w_k(t)`; `src/field/kernel/radial.rs`).
    fn output_linear_blocks(&self) -> Vec<Range<usize>> {
        self.param_blocks()
            .into_iter()
            .filter(|(name, _)| matches!(*name, "w" | "b"))
            .map(|(_, range)| range)
            .collect()
    }

    /// `N · max_d max(|φ|, |φ + φ'·r²/d|)` at each time: see `src/field/kernel/bound.rs`.
    fn lipschitz_bounds(&self, times: &[f64]) -> Vec<f64> {
        self.kernel_bounds(Side::Both, times)
    }

    /// `N · max(0, max_d max(−φ, −(φ + φ'·r²/d)))` at each time: see
    /// `src/field/kernel/bound.rs`.
    fn compression_bounds(&self, times: &[f64]) -> Vec<f64> {
        self.kernel_bounds(Side::Compression, times)
    }

    /// Both sides from one evaluation of φ per time (`src/field/kernel/bound.rs`).
    fn certificate_bounds(&self, times: &[f64]) -> (Vec<f64>, Vec<f64>) {
        self.certificate_bounder()(times)
    }

    /// The distance grids of every pair type built once, then both sides at each time.
    fn certificate_bounder(&self) -> crate::field::CertificateBounder<'_> {
        let grids = self.bound_grids();
        Box::new(move |times| {
            let mut both =
                self.kernel_bounds_on(grids.as_deref(), &[Side::Both, Side::Compression], times);
            let compression = both.pop().unwrap_or_default();
            (both.pop().unwrap_or_default(), compression)
        })
    }

    fn check_usable(&self, h: f64) -> Result<()> {
        super::limits::check_usable(self, h)
    }

    /// Per-pair maxima over the distances a pair reaches inside the ball: see
    /// `src/field/kernel/local.rs`.
    fn local_bounds(&self, times: &[f64]) -> Result<Option<Box<dyn crate::field::LocalBounds>>> {
        Ok(self
            .local_bound_tables(times)?
            .map(|t| Box::new(t) as Box<dyn crate::field::LocalBounds>))
    }

    fn grid_dynamics(&self, times: &[f64]) -> Option<Arc<dyn VectorField + Send>> {
        TabulatedField::new(self, times).map(|t| Arc::new(t) as Arc<dyn VectorField + Send>)
    }
}

/// The parameter cotangent of one reverse pass: per time point and pair type `Σ w̄` (padded K)
/// and `Σ c̄`, unfolded once per time point at the end (the unfold is linear), and one
/// accumulator per pair type.
#[derive(Clone, Default)]
pub struct KernelAdjoint {
    acc: Vec<ParamAccumulator>,
    padded: usize,
    n_types: usize,
    w_sums: Vec<f64>,
    c_sums: Vec<f64>,
}

impl std::fmt::Debug for KernelAdjoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelAdjoint { .. }")
    }
}

impl TrainableField for KernelField {
    type TimePoint = TimePoint;
    type Adjoint = KernelAdjoint;
    type Scratch = VjpScratch;

    fn time_point(&self, t: f64) -> TimePoint {
        KernelField::time_point(self, t)
    }

    /// One `TimePart` (the time slice and time-basis values) per pair type, and the reverse
    /// pass's `w_sums` (padded kernels) and `c_sums` per pair type and time.
    fn time_point_bytes(&self) -> usize {
        let n_types = self.n_pair_types();
        std::mem::size_of::<TimePoint>()
            + n_types * std::mem::size_of::<super::vjp::TimePart>()
            + n_types * (self.mu_padded().len() + 1) * std::mem::size_of::<f64>()
    }

    /// See `src/field/kernel/bound.rs`: exact for the bound as computed, away from ties of its maxima.
    fn lipschitz_bounds_and_vjp(
        &self,
        times: &[f64],
        bounds_bar: &[f64],
        gradient: &mut [f64],
    ) -> Result<Vec<f64>> {
        self.bounds_gradient(Side::Both, times, bounds_bar, gradient)
            .ok_or_else(|| bound_not_finite("Lipschitz bound"))
    }

    /// Both bounds and both gradients from one pass over the distance grid
    /// (`src/field/kernel/bound.rs`).
    fn certificate_bounds_and_vjp(
        &self,
        times: &[f64],
        bars: &mut crate::field::BoundCotangents<'_>,
        gradient: &mut [f64],
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        self.both_bounds_gradient(times, bars, gradient)
            .ok_or_else(|| bound_not_finite("certificate bounds"))
    }

    /// See `src/field/kernel/bound.rs`, as for the Lipschitz bound's gradient.
    fn compression_bounds_and_vjp(
        &self,
        times: &[f64],
        bounds_bar: &[f64],
        gradient: &mut [f64],
    ) -> Result<Vec<f64>> {
        self.bounds_gradient(Side::Compression, times, bounds_bar, gradient)
            .ok_or_else(|| bound_not_finite("compression bound"))
    }

    fn time_point_key(&self, key: &mut Vec<f64>) {
        key.extend_from_slice(self.params());
        key.extend_from_slice(&self.kernels().mu_time);
    }

    fn new_scratch(&self) -> VjpScratch {
        VjpScratch::new()
    }

    fn velocity_at_into(&self, x: &[f64], point: &TimePoint, v: &mut [f64]) -> f64 {
        if self.species().is_none() {
            self.velocity_with_slice_into(x, point.slice(), v)
        } else {
            self.velocity_with_slices_into(x, point.slices(), v)
        }
    }

    fn adjoint_reserve(&self, adjoint: &mut KernelAdjoint, n_times: usize) -> Result<()> {
        let n_types = self.n_pair_types();
        let what = "the kernel field's reverse-pass sums per time point";
        adjoint.w_sums.clear();
        crate::alloc::reserve(
            &mut adjoint.w_sums,
            n_times
                .checked_mul(n_types)
                .and_then(|n| n.checked_mul(self.mu_padded().len())),
            what,
        )?;
        adjoint.c_sums.clear();
        crate::alloc::reserve(&mut adjoint.c_sums, n_times.checked_mul(n_types), what)
    }

    fn adjoint_reset(&self, adjoint: &mut KernelAdjoint, n_times: usize) {
        let n_types = self.n_pair_types();
        adjoint.acc.resize_with(n_types, ParamAccumulator::default);
        adjoint.acc.iter_mut().for_each(|a| a.reset(self));
        adjoint.padded = self.mu_padded().len();
        adjoint.n_types = n_types;
        adjoint.w_sums.clear();
        adjoint
            .w_sums
            .resize(n_times * n_types * adjoint.padded, 0.0);
        adjoint.c_sums.clear();
        adjoint.c_sums.resize(n_times * n_types, 0.0);
    }

    fn vjp_at(
        &self,
        x: &[f64],
        point: &TimePoint,
        time_index: usize,
        cotangent: Cotangent<'_>,
        x_bar: &mut [f64],
        adjoint: &mut KernelAdjoint,
        scratch: &mut VjpScratch,
    ) {
        let (kp, n_types) = (adjoint.padded, adjoint.n_types);
        let span = n_types * kp;
        let c_bar = self.vjp_pairs_at(
            x,
            point,
            cotangent,
            x_bar,
            &mut adjoint.w_sums[time_index * span..(time_index + 1) * span],
            &mut adjoint.acc,
            scratch,
        );
        for (sum, c) in adjoint.c_sums[time_index * n_types..(time_index + 1) * n_types]
            .iter_mut()
            .zip(c_bar)
        {
            *sum += c;
        }
    }

    const JACOBIAN_REVERSE: bool = true;

    /// See `src/field/kernel/jacobian_vjp.rs`.
    fn jacobian_vjp_at(
        &self,
        x: &[f64],
        point: &TimePoint,
        time_index: usize,
        v_bar: &[f64],
        jac_bar: &[f64],
        x_bar: &mut [f64],
        adjoint: &mut KernelAdjoint,
        scratch: &mut VjpScratch,
    ) -> Result<()> {
        let (kp, n_types) = (adjoint.padded, adjoint.n_types);
        let span = n_types * kp;
        let c_bar = self.jacobian_vjp_pairs_at(
            x,
            point,
            v_bar,
            jac_bar,
            x_bar,
            &mut adjoint.w_sums[time_index * span..(time_index + 1) * span],
            &mut adjoint.acc,
            scratch,
        );
        for (sum, c) in adjoint.c_sums[time_index * n_types..(time_index + 1) * n_types]
            .iter_mut()
            .zip(c_bar)
        {
            *sum += c;
        }
        Ok(())
    }

    fn adjoint_finish(
        &self,
        points: &[TimePoint],
        adjoint: &mut KernelAdjoint,
        theta_bar: &mut [f64],
    ) {
        let (kp, n_types) = (adjoint.padded, adjoint.n_types);
        for (i, point) in points.iter().enumerate() {
            for ty in 0..n_types {
                let at = i * n_types + ty;
                let w_sum = &mut adjoint.w_sums[at * kp..(at + 1) * kp];
                let c_sum = adjoint.c_sums[at];
                self.unfold_time(ty, point.part(ty), c_sum, w_sum, &mut adjoint.acc[ty]);
            }
        }
        for (ty, acc) in adjoint.acc.iter().enumerate() {
            acc.add_to(self, ty, theta_bar);
        }
    }
}

/// The error of a kernel bound's gradient that cannot be taken: `what` is not finite.
fn bound_not_finite(what: &str) -> Error {
    Error::non_finite(format!(
        "the kernel field's {what} (bandwidths too disparate for its grid, or a field that is \
         not finite)"
    ))
}
