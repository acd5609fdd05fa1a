//! The kernelcoord field as a [`FieldFamily`] and [`TrainableField`]: every method the sum of
//! its two parts', each part reading and writing its own block of the parameters.

use std::ops::Range;
use std::sync::Arc;

use super::kernelcoord_field::{
    KernelCoordConfig, KernelCoordField, KernelCoordScratch, SumDynamics, add_second,
};
use crate::error::Result;
use crate::field::coordkernel::{CoordKernelField, CoordKernelTimePoint};
use crate::field::kernel::{KernelAdjoint, KernelField, TimePoint};
use crate::field::{Cotangent, FieldFamily, Preset, TrainableField, VectorField, single_species};
use crate::geometry::Layout;
use crate::species::Species;

impl FieldFamily for KernelCoordField {
    const NAME: &'static str = "kernelcoord";
    type Config = KernelCoordConfig;

    fn layout(&self) -> Layout {
        FieldFamily::layout(&self.kernel)
    }

    fn config(&self) -> KernelCoordConfig {
        KernelCoordConfig {
            kernel: FieldFamily::config(&self.kernel),
            coord: FieldFamily::config(&self.coord),
        }
    }

    fn from_config(layout: Layout, config: KernelCoordConfig, params: Vec<f64>) -> Result<Self> {
        KernelCoordField::new(layout, config, params)
    }

    /// The kernel part's counts (the paper's 50 distance and 10 time kernels); the correction
    /// keeps its preset's.
    fn default_counts() -> (usize, usize) {
        KernelField::default_counts()
    }

    /// Each part's preset; a range request's counts go to the kernel part, the correction
    /// spans the same range with its own counts.
    fn preset_config(preset: &Preset) -> Result<KernelCoordConfig> {
        let coord_preset = match *preset {
            Preset::Range { range, .. } => Preset::Range {
                range,
                counts: None,
            },
            benchmark => benchmark,
        };
        Ok(KernelCoordConfig {
            kernel: KernelField::preset_config(preset)?,
            coord: CoordKernelField::preset_config(&coord_preset)?,
        })
    }

    fn validate_config(config: &KernelCoordConfig) -> Result<()> {
        KernelField::validate_config(&config.kernel)?;
        CoordKernelField::validate_config(&config.coord)
    }

    fn untrained(
        layout: Layout,
        config: KernelCoordConfig,
        species: Species,
        seed: u64,
    ) -> Result<Self> {
        single_species::<Self>(layout, &species)?;
        KernelCoordField::initialise(layout, config, seed)
    }

    fn params(&self) -> &[f64] {
        &self.params
    }

    fn set_params(&mut self, params: &[f64]) -> Result<()> {
        KernelCoordField::set_params(self, params)
    }

    /// The kernel part's blocks, then the correction's (`coord_` names).
    fn param_blocks(&self) -> Vec<(&'static str, Range<usize>)> {
        let offset = self.n_kernel_params();
        let mut blocks = self.kernel.param_blocks();
        blocks.extend(self.coord.param_blocks().into_iter().map(|(name, r)| {
            let name = match name {
                "pair" => "coord_pair",
                "shell_sum" => "coord_shell_sum",
                "shell_product" => "coord_shell_product",
                other => other,
            };
            (name, r.start + offset..r.end + offset)
        }));
        blocks
    }

    /// Both parts' (a sum of fields is linear in the union).
    fn output_linear_blocks(&self) -> Vec<Range<usize>> {
        let offset = self.n_kernel_params();
        let mut blocks = self.kernel.output_linear_blocks();
        blocks.extend(
            self.coord
                .output_linear_blocks()
                .into_iter()
                .map(|r| r.start + offset..r.end + offset),
        );
        blocks
    }

    fn check_usable(&self, h: f64) -> Result<()> {
        self.kernel.check_usable(h)?;
        self.coord.check_usable(h)
    }

    /// The sum of the parts' bounds: `‖J_a + J_b‖ ≤ ‖J_a‖ + ‖J_b‖`.
    fn lipschitz_bounds(&self, times: &[f64]) -> Vec<f64> {
        let a = self.kernel.lipschitz_bounds(times);
        let b = self.coord.lipschitz_bounds(times);
        a.iter().zip(&b).map(|(a, b)| a + b).collect()
    }

    /// The sum of the parts' compression bounds: `uᵀ(J_a + J_b)u ≥ −(μ_a + μ_b)|u|²`.
    fn compression_bounds(&self, times: &[f64]) -> Vec<f64> {
        let a = self.kernel.compression_bounds(times);
        let b = self.coord.compression_bounds(times);
        a.iter().zip(&b).map(|(a, b)| a + b).collect()
    }

    /// The sums of the parts' bounds, each part's from its own shared pass.
    fn certificate_bounds(&self, times: &[f64]) -> (Vec<f64>, Vec<f64>) {
        self.certificate_bounder()(times)
    }

    /// The sum of the parts' bounders, each tabulated once.
    fn certificate_bounder(&self) -> crate::field::CertificateBounder<'_> {
        let (a, b) = (
            self.kernel.certificate_bounder(),
            self.coord.certificate_bounder(),
        );
        Box::new(move |times| {
            let ((la, ma), (lb, mb)) = (a(times), b(times));
            let sum = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a + b).collect();
            (sum(&la, &lb), sum(&ma, &mb))
        })
    }

    /// The sum of the parts' fixed-grid forms (the kernel part tabulated).
    fn grid_dynamics(&self, times: &[f64]) -> Option<Arc<dyn VectorField + Send>> {
        let a = self
            .kernel
            .grid_dynamics(times)
            .unwrap_or_else(|| Arc::new(self.kernel.clone()));
        let b = self
            .coord
            .grid_dynamics(times)
            .unwrap_or_else(|| Arc::new(self.coord.clone()));
        Some(Arc::new(SumDynamics { a, b }))
    }
}

impl KernelCoordField {
    /// A bound of the sum from its parts' (`‖J_a + J_b‖ ≤ ‖J_a‖ + ‖J_b‖`, and alike for the
    /// compression bound) with each part's gradient written into its own parameter block.
    fn sum_of_parts(
        &self,
        gradient: &mut [f64],
        kernel: impl FnOnce(&KernelField, &mut [f64]) -> Result<Vec<f64>>,
        coord: impl FnOnce(&CoordKernelField, &mut [f64]) -> Result<Vec<f64>>,
    ) -> Result<Vec<f64>> {
        let (ga, gb) = gradient.split_at_mut(self.n_kernel_params());
        let a = kernel(&self.kernel, ga)?;
        let b = coord(&self.coord, gb)?;
        Ok(a.iter().zip(&b).map(|(a, b)| a + b).collect())
    }
}

impl TrainableField for KernelCoordField {
    type TimePoint = (TimePoint, CoordKernelTimePoint);
    type Adjoint = (KernelAdjoint, Vec<f64>);
    type Scratch = KernelCoordScratch;

    fn time_point(&self, t: f64) -> Self::TimePoint {
        (self.kernel.time_point(t), self.coord.time_point(t))
    }

    fn time_point_bytes(&self) -> usize {
        self.kernel.time_point_bytes() + self.coord.time_point_bytes()
    }

    fn lipschitz_bounds_and_vjp(
        &self,
        times: &[f64],
        bounds_bar: &[f64],
        gradient: &mut [f64],
    ) -> Result<Vec<f64>> {
        self.sum_of_parts(
            gradient,
            |kernel, g| kernel.lipschitz_bounds_and_vjp(times, bounds_bar, g),
            |coord, g| coord.lipschitz_bounds_and_vjp(times, bounds_bar, g),
        )
    }

    fn compression_bounds_and_vjp(
        &self,
        times: &[f64],
        bounds_bar: &[f64],
        gradient: &mut [f64],
    ) -> Result<Vec<f64>> {
        self.sum_of_parts(
            gradient,
            |kernel, g| kernel.compression_bounds_and_vjp(times, bounds_bar, g),
            |coord, g| coord.compression_bounds_and_vjp(times, bounds_bar, g),
        )
    }

    fn time_point_key(&self, key: &mut Vec<f64>) {
        self.kernel.time_point_key(key);
        self.coord.time_point_key(key);
    }

    fn new_scratch(&self) -> KernelCoordScratch {
        KernelCoordScratch {
            kernel: self.kernel.new_scratch(),
            coord: self.coord.new_scratch(),
        }
    }

    fn velocity_at_into(&self, x: &[f64], point: &Self::TimePoint, v: &mut [f64]) -> f64 {
        let div = self.kernel.velocity_at_into(x, &point.0, v);
        div + add_second(v, |w| self.coord.velocity_at_into(x, &point.1, w))
    }

    fn adjoint_reserve(&self, adjoint: &mut Self::Adjoint, n_times: usize) -> Result<()> {
        self.kernel.adjoint_reserve(&mut adjoint.0, n_times)?;
        self.coord.adjoint_reserve(&mut adjoint.1, n_times)
    }

    fn adjoint_reset(&self, adjoint: &mut Self::Adjoint, n_times: usize) {
        self.kernel.adjoint_reset(&mut adjoint.0, n_times);
        self.coord.adjoint_reset(&mut adjoint.1, n_times);
    }

    fn vjp_at(
        &self,
        x: &[f64],
        point: &Self::TimePoint,
        time_index: usize,
        cotangent: Cotangent<'_>,
        x_bar: &mut [f64],
        adjoint: &mut Self::Adjoint,
        scratch: &mut KernelCoordScratch,
    ) {
        self.kernel.vjp_at(
            x,
            &point.0,
            time_index,
            cotangent,
            x_bar,
            &mut adjoint.0,
            &mut scratch.kernel,
        );
        self.coord.vjp_at(
            x,
            &point.1,
            time_index,
            cotangent,
            x_bar,
            &mut adjoint.1,
            &mut scratch.coord,
        );
    }

    const JACOBIAN_REVERSE: bool = true;

    fn jacobian_vjp_at(
        &self,
        x: &[f64],
        point: &Self::TimePoint,
        time_index: usize,
        v_bar: &[f64],
        jac_bar: &[f64],
        x_bar: &mut [f64],
        adjoint: &mut Self::Adjoint,
        scratch: &mut KernelCoordScratch,
    ) -> Result<()> {
        self.kernel.jacobian_vjp_at(
            x,
            &point.0,
            time_index,
            v_bar,
            jac_bar,
            x_bar,
            &mut adjoint.0,
            &mut scratch.kernel,
        )?;
        self.coord.jacobian_vjp_at(
            x,
            &point.1,
            time_index,
            v_bar,
            jac_bar,
            x_bar,
            &mut adjoint.1,
            &mut scratch.coord,
        )
    }

    fn adjoint_finish(
        &self,
        points: &[Self::TimePoint],
        adjoint: &mut Self::Adjoint,
        theta_bar: &mut [f64],
    ) {
        let (ta, tb) = theta_bar.split_at_mut(self.n_kernel_params());
        // Each part finishes from a slice of its own points: copied out once per reverse pass
        // (about 2n + 1 points for n RK4 steps), nothing per evaluation.
        let kernel_points: Vec<TimePoint> = points.iter().map(|p| p.0.clone()).collect();
        let coord_points: Vec<CoordKernelTimePoint> = points.iter().map(|p| p.1.clone()).collect();
        self.kernel
            .adjoint_finish(&kernel_points, &mut adjoint.0, ta);
        self.coord.adjoint_finish(&coord_points, &mut adjoint.1, tb);
    }
}
