//! The coordkernel field as a [`VectorField`], [`FieldFamily`] and [`TrainableField`], and
//! its Lipschitz bound.

use std::f64::consts::E;
use std::ops::Range;
use std::sync::Arc;

use super::config::CoordKernelConfig;
use super::coordkernel_field::{CoordKernelField, CoordKernelTimePoint};
use super::eval::CoordKernelScratch;
use super::grid::GridCoordKernel;
use crate::error::Result;
use crate::field::single_species;
use crate::field::{Cotangent, FieldFamily, Interaction, Preset, TrainableField, VectorField};
use crate::geometry::Layout;
use crate::species::Species;

impl VectorField for CoordKernelField {
    fn state_len(&self) -> usize {
        self.layout.len()
    }

    /// Pair differences and coordination numbers only: translation invariant.
    fn translation_axes(&self) -> Option<usize> {
        Some(self.layout.dim)
    }

    fn velocity_into(&self, x: &[f64], t: f64, v: &mut [f64]) -> f64 {
        self.velocity_at(x, &self.time_point(t), None, v, true)
    }

    fn velocity_only_into(&self, x: &[f64], t: f64, v: &mut [f64]) {
        self.velocity_at(x, &self.time_point(t), None, v, false);
    }

    fn velocity_jacobian_into(
        &self,
        x: &[f64],
        t: f64,
        v: &mut [f64],
        jacobian: &mut [f64],
    ) -> f64 {
        self.velocity_jacobian_at(x, &self.time_point(t), None, v, jacobian)
    }
}

impl FieldFamily for CoordKernelField {
    const NAME: &'static str = "coordkernel";
    type Config = CoordKernelConfig;

    fn layout(&self) -> Layout {
        self.layout
    }

    fn config(&self) -> CoordKernelConfig {
        self.config.clone()
    }

    fn from_config(layout: Layout, config: CoordKernelConfig, params: Vec<f64>) -> Result<Self> {
        CoordKernelField::new(layout, config, params)
    }

    /// The preset's 16 distance and 6 time Gaussians. A range request keeps the preset's shell
    /// count and puts the shells on the middle half of the range (the double-well preset's
    /// rule: [2, 6] of [0, 8]).
    fn default_counts() -> (usize, usize) {
        let preset = CoordKernelConfig::double_well();
        (preset.n_rbf, preset.n_time)
    }

    fn preset_config(preset: &Preset) -> Result<CoordKernelConfig> {
        Ok(match *preset {
            Preset::Benchmark {
                interaction,
                length_scale,
            } => {
                let mut config = match interaction {
                    Interaction::DoubleWell => CoordKernelConfig::double_well(),
                    Interaction::LennardJones => CoordKernelConfig::lennard_jones(),
                };
                for v in [
                    &mut config.rbf_min,
                    &mut config.rbf_max,
                    &mut config.shell_min,
                    &mut config.shell_max,
                ] {
                    *v *= length_scale;
                }
                config
            }
            Preset::Range {
                range: (min, max), ..
            } => {
                let (k, r) = preset.counts_or(Self::default_counts());
                CoordKernelConfig {
                    n_rbf: k,
                    rbf_min: min,
                    rbf_max: max,
                    n_time: r,
                    shell_min: min + 0.25 * (max - min),
                    shell_max: min + 0.75 * (max - min),
                    ..CoordKernelConfig::double_well()
                }
            }
        })
    }

    fn validate_config(config: &CoordKernelConfig) -> Result<()> {
        config.validate()
    }

    fn untrained(
        layout: Layout,
        config: CoordKernelConfig,
        species: Species,
        seed: u64,
    ) -> Result<Self> {
        single_species::<Self>(layout, &species)?;
        CoordKernelField::initialise(layout, config, seed)
    }

    fn params(&self) -> &[f64] {
        &self.params
    }

    fn set_params(&mut self, params: &[f64]) -> Result<()> {
        CoordKernelField::set_params(self, params)
    }

    fn param_blocks(&self) -> Vec<(&'static str, Range<usize>)> {
        self.config.param_blocks()
    }

    /// All of them: the field is linear in its parameters V.
    fn output_linear_blocks(&self) -> Vec<Range<usize>> {
        std::iter::once(0..self.params().len()).collect()
    }

    /// `2(N−1)(Φ + F) + (4N − 3)·C'·Σ_a Ψ_a`, in closed form from the parameters (no
    /// sampling, so it is a proof, not an estimate).
    ///
    /// Why: the Jacobian's pair blocks `φ I + F r uᵀ` have norm ≤ `Φ + F` with
    /// `Φ ≥ |φ|` and `F ≥ |∂φ/∂d|·d`; its environment blocks `Σ_{j,a} Y_ij^a (∂h_j^a/∂x_m)ᵀ`
    /// have norm ≤ `N C' Σ_a Ψ_a` (m = i) and `3 C' Σ_a Ψ_a` (m ≠ i), with `Ψ_a ≥ |ψ^a|·d` and
    /// `C' = sup|c'_a| = √(2/(e η²))` bounding `|G_i^a|` and `(N−1)|∂h_j^a/∂x_m|`. Block rows
    /// and columns have the same bounds, so `‖J‖₂ ≤ √(‖J‖₁‖J‖∞)` on block norms gives the
    /// row sum. Each radial coefficient `a_q = Σ_k M_qk(t) B_k` is bounded term by term with
    /// `B_k ≤ 1`, `d B_k ≤ μ_k + 1/√(2e a)` and `d |B'_k| ≤ μ_k √(2a/e) + 2/e`
    /// (`a = 1/γ²`), and coordinations lie in [0, 1].
    fn lipschitz_bounds(&self, times: &[f64]) -> Vec<f64> {
        let n = self.layout.n_particles as f64;
        let na = self.config.n_shells;
        let k = self.config.n_rbf;
        let (sup_db, sup_db1, c1) = self.bound_constants();
        times
            .iter()
            .map(|&t| {
                let point = self.time_point(t);
                let sums = |q: usize| {
                    let row = &point.m[q * k..(q + 1) * k];
                    let (mut alpha, mut gamma, mut beta) = (0.0, 0.0, 0.0);
                    for kk in 0..k {
                        let w = row[kk].abs();
                        alpha += w;
                        gamma += w * sup_db[kk];
                        beta += w * sup_db1[kk];
                    }
                    (alpha, gamma, beta)
                };
                let (alpha0, _, beta0) = sums(0);
                let (mut phi, mut fd, mut psi) = (alpha0, beta0, 0.0);
                for s in 0..na {
                    let (alpha_p, gamma_p, beta_p) = sums(1 + s);
                    let (alpha_x, gamma_x, beta_x) = sums(1 + na + s);
                    phi += 2.0 * alpha_p + alpha_x;
                    fd += 2.0 * beta_p + beta_x;
                    psi += gamma_p + gamma_x;
                }
                let bound = 2.0 * (n - 1.0) * (phi + fd) + (4.0 * n - 3.0) * c1 * psi;
                if bound.is_nan() { f64::INFINITY } else { bound }
            })
            .collect()
    }

    /// The same field with its time points precomputed at the grid's stage times.
    fn grid_dynamics(&self, times: &[f64]) -> Option<Arc<dyn VectorField + Send>> {
        Some(Arc::new(GridCoordKernel::new(self, times)))
    }
}

impl CoordKernelField {
    /// The constants of the Lipschitz bound: `sup d B_k`, `sup d |B'_k|` per distance
    /// Gaussian and `C' = sup |c'_a|`.
    fn bound_constants(&self) -> (Vec<f64>, Vec<f64>, f64) {
        let a = self.a_rbf;
        let sup_db = self
            .mu
            .iter()
            .map(|mu| mu + 1.0 / (2.0 * E * a).sqrt())
            .collect();
        let sup_db1 = self
            .mu
            .iter()
            .map(|mu| mu * (2.0 * a / E).sqrt() + 2.0 / E)
            .collect();
        (sup_db, sup_db1, (2.0 * self.a_shell / E).sqrt())
    }

    /// The Lipschitz bound as `Σ_qk C_qk |M_qk(t)|`: the coefficients `C_qk` (Q × K
    /// row-major), collected from the terms of [`FieldFamily::lipschitz_bounds`].
    fn bound_coefficients(&self) -> Vec<f64> {
        let n = self.layout.n_particles as f64;
        let na = self.config.n_shells;
        let k = self.config.n_rbf;
        let (sup_db, sup_db1, c1) = self.bound_constants();
        let pair = 2.0 * (n - 1.0);
        let env = (4.0 * n - 3.0) * c1;
        let mut coef = vec![0.0; self.config.n_features() * k];
        for (q, row) in coef.chunks_exact_mut(k).enumerate() {
            // Row 0 enters Φ and F once; the h_i + h_j rows twice, the h_i ⊙ h_j rows once,
            // and both coordination rows enter Ψ once.
            let (times_pair, in_psi) = match q {
                0 => (1.0, false),
                q if q <= na => (2.0, true),
                _ => (1.0, true),
            };
            for kk in 0..k {
                row[kk] = pair * times_pair * (1.0 + sup_db1[kk]);
                if in_psi {
                    row[kk] += env * sup_db[kk];
                }
            }
        }
        coef
    }
}

impl TrainableField for CoordKernelField {
    type TimePoint = CoordKernelTimePoint;
    /// `M̄(t)` per time point, Q·K each.
    type Adjoint = Vec<f64>;
    type Scratch = CoordKernelScratch;

    fn time_point(&self, t: f64) -> CoordKernelTimePoint {
        CoordKernelField::time_point(self, t)
    }

    /// `M(t)` (Q·K), its padded transpose (K·Q_pad) and the reverse pass's `M̄(t)` (Q·K).
    fn time_point_bytes(&self) -> usize {
        let (nq, k) = (self.config.n_features(), self.config.n_rbf);
        let qp = nq.div_ceil(super::coordkernel_field::FOLD_LANES)
            * super::coordkernel_field::FOLD_LANES;
        std::mem::size_of::<CoordKernelTimePoint>()
            + (2 * nq * k + qp * k) * std::mem::size_of::<f64>()
    }

    /// Exact where no `M_qk(t)` is zero: the bound is `Σ_qk C_qk |M_qk(t)|` with `M(t) = V·τ(t)`,
    /// so `∂L(t)/∂V_qkr = C_qk sign(M_qk(t)) τ_r(t)`, taking the subgradient 0 at `M_qk = 0`.
    fn lipschitz_bounds_and_vjp(
        &self,
        times: &[f64],
        bounds_bar: &[f64],
        theta_bar: &mut [f64],
    ) -> Result<Vec<f64>> {
        let bounds = self.lipschitz_bounds(times);
        let coef = self.bound_coefficients();
        let r = self.config.n_time;
        for (&t, &l_bar) in times.iter().zip(bounds_bar) {
            if l_bar == 0.0 {
                continue;
            }
            let point = self.time_point(t);
            for ((row, m), c) in theta_bar.chunks_exact_mut(r).zip(&point.m).zip(&coef) {
                let sign = if *m > 0.0 {
                    1.0
                } else if *m < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                let scale = l_bar * c * sign;
                for (g, tau) in row.iter_mut().zip(&point.tau[..r]) {
                    *g += scale * tau;
                }
            }
        }
        Ok(bounds)
    }

    fn time_point_key(&self, key: &mut Vec<f64>) {
        key.extend_from_slice(&self.params);
    }

    fn new_scratch(&self) -> CoordKernelScratch {
        CoordKernelScratch::default()
    }

    fn velocity_at_into(&self, x: &[f64], point: &CoordKernelTimePoint, v: &mut [f64]) -> f64 {
        self.velocity_at(x, point, None, v, true)
    }

    fn adjoint_reserve(&self, adjoint: &mut Vec<f64>, n_times: usize) -> crate::Result<()> {
        adjoint.clear();
        crate::alloc::reserve(
            adjoint,
            n_times
                .checked_mul(self.config.n_features())
                .and_then(|n| n.checked_mul(self.config.n_rbf)),
            "the coordkernel field's reverse-pass sums per time point",
        )
    }

    fn adjoint_reset(&self, adjoint: &mut Vec<f64>, n_times: usize) {
        adjoint.clear();
        adjoint.resize(n_times * self.config.n_features() * self.config.n_rbf, 0.0);
    }

    fn vjp_at(
        &self,
        x: &[f64],
        point: &CoordKernelTimePoint,
        time_index: usize,
        cotangent: Cotangent<'_>,
        x_bar: &mut [f64],
        adjoint: &mut Vec<f64>,
        scratch: &mut CoordKernelScratch,
    ) {
        let qk = self.config.n_features() * self.config.n_rbf;
        let m_bar = &mut adjoint[time_index * qk..(time_index + 1) * qk];
        self.vjp_into(x, point, cotangent.v, cotangent.div, x_bar, m_bar, scratch);
    }

    const JACOBIAN_REVERSE: bool = true;

    fn jacobian_vjp_at(
        &self,
        x: &[f64],
        point: &CoordKernelTimePoint,
        time_index: usize,
        v_bar: &[f64],
        jac_bar: &[f64],
        x_bar: &mut [f64],
        adjoint: &mut Vec<f64>,
        scratch: &mut CoordKernelScratch,
    ) -> Result<()> {
        let qk = self.config.n_features() * self.config.n_rbf;
        let m_bar = &mut adjoint[time_index * qk..(time_index + 1) * qk];
        self.jacobian_vjp_into(x, point, v_bar, jac_bar, x_bar, m_bar, scratch);
        Ok(())
    }

    /// `V̄_qkr += Σ_t M̄_qk(t) τ_r(t)`.
    fn adjoint_finish(
        &self,
        points: &[CoordKernelTimePoint],
        adjoint: &mut Vec<f64>,
        theta_bar: &mut [f64],
    ) {
        let r = self.config.n_time;
        let qk = self.config.n_features() * self.config.n_rbf;
        for (point, m_bar) in points.iter().zip(adjoint.chunks_exact(qk)) {
            for (row, mb) in theta_bar.chunks_exact_mut(r).zip(m_bar) {
                for (t, tau) in row.iter_mut().zip(&point.tau[..r]) {
                    *t += mb * tau;
                }
            }
        }
    }
}
