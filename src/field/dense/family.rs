//! The dense field as a [`VectorField`], [`FieldFamily`] and [`TrainableField`], and its
//! Lipschitz bound.

use std::ops::Range;

use super::config::DenseConfig;
use super::dense_field::{DenseField, DenseTimePoint};
use super::eval::DenseScratch;
use crate::error::Result;
use crate::field::family::named_blocks;
use crate::field::single_species;
use crate::field::{Cotangent, FieldFamily, Interaction, Preset, TrainableField, VectorField};
use crate::geometry::Layout;
use crate::species::Species;

impl VectorField for DenseField {
    fn state_len(&self) -> usize {
        self.layout.len()
    }

    /// The network sees centred coordinates only: translation invariant.
    fn translation_axes(&self) -> Option<usize> {
        Some(self.layout.dim)
    }

    fn velocity_into(&self, x: &[f64], t: f64, v: &mut [f64]) -> f64 {
        self.velocity_at(x, &self.time_point(t), v)
    }

    fn velocity_jacobian_into(
        &self,
        x: &[f64],
        t: f64,
        v: &mut [f64],
        jacobian: &mut [f64],
    ) -> f64 {
        self.velocity_jacobian_at(x, &self.time_point(t), v, jacobian, None)
    }

    fn velocity_jacobian_divgrad_into(
        &self,
        x: &[f64],
        t: f64,
        v: &mut [f64],
        jacobian: &mut [f64],
        div_gradient: &mut [f64],
    ) -> Option<f64> {
        Some(self.velocity_jacobian_at(x, &self.time_point(t), v, jacobian, Some(div_gradient)))
    }
}

impl DenseField {
    /// `(|A_h·|, |B_·h|)` per hidden unit: the norms of the rank-one terms of the Jacobian.
    fn unit_norms(&self) -> Vec<(f64, f64)> {
        let n = self.layout.len();
        let h = self.config.n_hidden;
        (0..h)
            .map(|k| {
                let a: f64 = self.a1[k * n..(k + 1) * n].iter().map(|v| v * v).sum();
                let b: f64 = (0..n).map(|i| self.a2[i * h + k].powi(2)).sum();
                (a.sqrt(), b.sqrt())
            })
            .collect()
    }

    /// `Σ_h |A_h·| |B_·h|`.
    fn bound(&self) -> f64 {
        let l: f64 = self.unit_norms().iter().map(|(a, b)| a * b).sum();
        if l.is_nan() { f64::INFINITY } else { l }
    }
}

impl FieldFamily for DenseField {
    const NAME: &'static str = "dense";
    type Config = DenseConfig;

    fn layout(&self) -> Layout {
        self.layout
    }

    fn config(&self) -> DenseConfig {
        self.config.clone()
    }

    fn from_config(layout: Layout, config: DenseConfig, params: Vec<f64>) -> Result<Self> {
        DenseField::new(layout, config, params)
    }

    /// For the dense baseline the two counts are the hidden width H and the number of time
    /// features: the double-well preset's 64 and 6. A range request sets the length scale ℓ to a
    /// quarter of the range's upper end (the preset's ℓ = 2 for [0, 8]).
    fn default_counts() -> (usize, usize) {
        let preset = DenseConfig::double_well();
        (preset.n_hidden, preset.n_time)
    }

    fn preset_config(preset: &Preset) -> Result<DenseConfig> {
        Ok(match *preset {
            Preset::Benchmark {
                interaction,
                length_scale,
            } => {
                let mut config = match interaction {
                    Interaction::DoubleWell => DenseConfig::double_well(),
                    Interaction::LennardJones => DenseConfig::lennard_jones(),
                };
                config.length_scale *= length_scale;
                config
            }
            Preset::Range {
                range: (_, max), ..
            } => {
                let (k, r) = preset.counts_or(Self::default_counts());
                DenseConfig {
                    n_hidden: k,
                    n_time: r,
                    length_scale: 0.25 * max,
                }
            }
        })
    }

    fn validate_config(config: &DenseConfig) -> Result<()> {
        config.validate()
    }

    fn untrained(layout: Layout, config: DenseConfig, species: Species, seed: u64) -> Result<Self> {
        single_species::<Self>(layout, &species)?;
        DenseField::initialise(layout, config, seed)
    }

    fn params(&self) -> &[f64] {
        &self.params
    }

    fn set_params(&mut self, params: &[f64]) -> Result<()> {
        DenseField::set_params(self, params)
    }

    fn param_blocks(&self) -> Vec<(&'static str, Range<usize>)> {
        self.config.param_blocks(self.layout.len())
    }

    /// The output layer `w2` and its time bias `b2`.
    fn output_linear_blocks(&self) -> Vec<Range<usize>> {
        named_blocks(self.param_blocks(), &["w2", "b2"])
    }

    /// `Σ_h |A_h·| |B_·h|`, the same at every time (a proof, not an estimate): the Jacobian
    /// is `Σ_h s_h B_·h A_h·` with `0 < s_h ≤ 1`, and a rank-one term has spectral norm
    /// `|B_·h| |A_h·|`. By Cauchy–Schwarz it is at most `‖B‖_F ‖A‖_F`, the product of the
    /// layers' Frobenius norms.
    fn lipschitz_bounds(&self, times: &[f64]) -> Vec<f64> {
        vec![self.bound(); times.len()]
    }
}

impl TrainableField for DenseField {
    type TimePoint = DenseTimePoint;
    /// `θ̄` of the evaluations so far, flat parameter layout (the field is not linear in its
    /// parameters, so nothing is gained by keeping it per time point).
    type Adjoint = Vec<f64>;
    type Scratch = DenseScratch;

    fn time_point(&self, t: f64) -> DenseTimePoint {
        DenseField::time_point(self, t)
    }

    /// Exact where no `|A_h·|` or `|B_·h|` is zero: `∂L/∂A_h· = |B_·h| A_h·/|A_h·|` and
    /// `∂L/∂B_·h = |A_h·| B_·h/|B_·h|`, mapped to `W1` and `W2` through `A = W1 P/ℓ` and
    /// `B = P W2` (the subgradient 0 where a norm vanishes).
    fn lipschitz_bounds_and_vjp(
        &self,
        times: &[f64],
        bounds_bar: &[f64],
        theta_bar: &mut [f64],
    ) -> Result<Vec<f64>> {
        let bounds = self.lipschitz_bounds(times);
        let l_bar: f64 = bounds_bar.iter().sum();
        let n = self.layout.len();
        let h = self.config.n_hidden;
        let inv_l = 1.0 / self.config.length_scale;
        let blocks = self.config.param_blocks(n);
        for (k, (na, nb)) in self.unit_norms().into_iter().enumerate() {
            if na > 0.0 {
                let scale = l_bar * nb / na * inv_l;
                let row =
                    &mut theta_bar[blocks[0].1.start + k * n..blocks[0].1.start + (k + 1) * n];
                for (g, a) in row.iter_mut().zip(&self.a1[k * n..(k + 1) * n]) {
                    *g += scale * a;
                }
            }
            if nb > 0.0 {
                let scale = l_bar * na / nb;
                let w2 = blocks[2].1.start;
                for i in 0..n {
                    theta_bar[w2 + i * h + k] += scale * self.a2[i * h + k];
                }
            }
        }
        Ok(bounds)
    }

    /// The time points depend on the time alone (the time features are fixed), not on the
    /// parameters: nothing to add.
    fn time_point_key(&self, key: &mut Vec<f64>) {
        let _ = key;
    }

    fn new_scratch(&self) -> DenseScratch {
        DenseScratch::default()
    }

    fn velocity_at_into(&self, x: &[f64], point: &DenseTimePoint, v: &mut [f64]) -> f64 {
        self.velocity_at(x, point, v)
    }

    fn adjoint_reset(&self, adjoint: &mut Vec<f64>, n_times: usize) {
        let _ = n_times;
        adjoint.clear();
        adjoint.resize(self.params.len(), 0.0);
    }

    fn vjp_at(
        &self,
        x: &[f64],
        point: &DenseTimePoint,
        time_index: usize,
        cotangent: Cotangent<'_>,
        x_bar: &mut [f64],
        adjoint: &mut Vec<f64>,
        scratch: &mut DenseScratch,
    ) {
        let _ = time_index;
        self.vjp_into(
            x,
            point,
            None,
            cotangent.v,
            cotangent.div,
            x_bar,
            adjoint,
            scratch,
        );
    }

    const PROBE_DIVERGENCE: bool = true;

    fn probe_velocity_at_into(
        &self,
        x: &[f64],
        point: &DenseTimePoint,
        probe: &[f64],
        v: &mut [f64],
    ) -> f64 {
        self.probe_velocity_at(x, point, probe, v)
    }

    fn probe_vjp_at(
        &self,
        x: &[f64],
        point: &DenseTimePoint,
        time_index: usize,
        probe: &[f64],
        cotangent: Cotangent<'_>,
        x_bar: &mut [f64],
        adjoint: &mut Vec<f64>,
        scratch: &mut DenseScratch,
    ) -> Result<()> {
        let _ = time_index;
        self.vjp_into(
            x,
            point,
            Some(probe),
            cotangent.v,
            cotangent.div,
            x_bar,
            adjoint,
            scratch,
        );
        Ok(())
    }

    fn adjoint_finish(
        &self,
        points: &[DenseTimePoint],
        adjoint: &mut Vec<f64>,
        theta_bar: &mut [f64],
    ) {
        let _ = points;
        for (t, a) in theta_bar.iter_mut().zip(adjoint.iter()) {
            *t += a;
        }
    }
}
