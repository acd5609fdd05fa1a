//! The envpair field as a [`VectorField`], [`FieldFamily`] and [`TrainableField`], and its
//! Lipschitz bound.

use std::ops::Range;

use super::config::{EnvPairConfig, MAX_WIDTH};
use super::envpair_field::{EnvPairField, EnvPairTimePoint};
use super::eval::{EnvPairScratch, with_scratch};
use super::net::{SILU_SLOPE_MAX, silu_and_slope};
use crate::error::Result;
use crate::field::family::named_blocks;
use crate::field::single_species;
use crate::field::{
    Cotangent, EPS_D, FieldFamily, Interaction, Preset, TrainableField, VectorField,
};
use crate::geometry::Layout;
use crate::species::Species;

impl VectorField for EnvPairField {
    fn state_len(&self) -> usize {
        self.layout.len()
    }

    /// Pair differences and environments built from them only: translation invariant.
    fn translation_axes(&self) -> Option<usize> {
        Some(self.layout.dim)
    }

    fn velocity_into(&self, x: &[f64], t: f64, v: &mut [f64]) -> f64 {
        debug_assert_eq!(x.len(), self.layout.len());
        let point = self.time_point(t);
        with_scratch(|ws| self.evaluate(x, &point, v, ws, true))
    }

    fn velocity_only_into(&self, x: &[f64], t: f64, v: &mut [f64]) {
        debug_assert_eq!(x.len(), self.layout.len());
        let point = self.time_point(t);
        with_scratch(|ws| self.evaluate(x, &point, v, ws, false));
    }

    fn velocity_jacobian_into(
        &self,
        x: &[f64],
        t: f64,
        v: &mut [f64],
        jacobian: &mut [f64],
    ) -> f64 {
        debug_assert_eq!(jacobian.len(), x.len() * x.len());
        let point = self.time_point(t);
        with_scratch(|ws| {
            let div = self.evaluate(x, &point, v, ws, true);
            self.jacobian_into(x, ws, jacobian);
            div
        })
    }
}

impl FieldFamily for EnvPairField {
    const NAME: &'static str = "envpair";
    type Config = EnvPairConfig;

    fn layout(&self) -> Layout {
        self.layout
    }

    fn config(&self) -> EnvPairConfig {
        self.config.clone()
    }

    fn from_config(layout: Layout, config: EnvPairConfig, params: Vec<f64>) -> Result<Self> {
        EnvPairField::new(layout, config, params)
    }

    /// The preset's 16 distance and 6 time Gaussians.
    fn default_counts() -> (usize, usize) {
        let preset = EnvPairConfig::double_well();
        (preset.n_rbf, preset.n_time)
    }

    fn preset_config(preset: &Preset) -> Result<EnvPairConfig> {
        Ok(match *preset {
            Preset::Benchmark {
                interaction,
                length_scale,
            } => {
                let mut config = match interaction {
                    Interaction::DoubleWell => EnvPairConfig::double_well(),
                    Interaction::LennardJones => EnvPairConfig::lennard_jones(),
                };
                config.rbf_min *= length_scale;
                config.rbf_max *= length_scale;
                config
            }
            Preset::Range {
                range: (min, max), ..
            } => {
                let (k, r) = preset.counts_or(Self::default_counts());
                EnvPairConfig {
                    n_rbf: k,
                    rbf_min: min,
                    rbf_max: max,
                    n_time: r,
                    ..EnvPairConfig::double_well()
                }
            }
        })
    }

    fn validate_config(config: &EnvPairConfig) -> Result<()> {
        config.validate()
    }

    fn untrained(
        layout: Layout,
        config: EnvPairConfig,
        species: Species,
        seed: u64,
    ) -> Result<Self> {
        single_species::<Self>(layout, &species)?;
        EnvPairField::initialise(layout, config, seed)
    }

    fn params(&self) -> &[f64] {
        &self.params
    }

    fn set_params(&mut self, params: &[f64]) -> Result<()> {
        EnvPairField::set_params(self, params)
    }

    fn param_blocks(&self) -> Vec<(&'static str, Range<usize>)> {
        self.blocks.named()
    }

    /// The pair network's output layer and the tail `c(t)`: φ is linear in them together.
    fn output_linear_blocks(&self) -> Vec<Range<usize>> {
        named_blocks(self.param_blocks(), &["pair_w2", "pair_b2", "tail"])
    }

    /// `2(N−1)·M_B + 4(N−1)·A·‖G‖·M'`, from bounds on the networks over every input they can
    /// see.
    ///
    /// Why: the Jacobian of the unprojected field has pair blocks `B_ij = φ I + s r uᵀ` and
    /// environment blocks `r_ij (∂φ_ij/∂h)(∂h/∂x_l)`; bounding the spectral norm by the block
    /// row and column sums (‖J‖₂ ≤ √(‖J‖₁‖J‖∞) on block norms) gives `2(N−1)·max‖B‖` for the
    /// first and `4(N−1)·A·‖G‖·M'` for the second, where `A ≥ |r|·|∂φ/∂h|`, `M' ≥ |∂m/∂d|`
    /// and `‖G‖ ≥ ‖∂h/∂h0‖`; the projection has norm 1. The envelope `e(d) = Σ_k g_k(d)` on
    /// the pair network's output is what makes A finite: far pairs (where `|r|` grows) see
    /// `φ → c(t)`, independent of x. Network bounds: interval propagation of the inputs' box
    /// (g ∈ [0, 1]^K, τ(t) exact, h in the box the message and node networks map that to) for
    /// |ψ|; products of absolute weights and the SiLU slope bound 1.1 for the input gradients;
    /// Frobenius norms for G. The suprema over d of `e`, `d·e`, `d·|e'|`, `d·e·‖g'‖`, `‖g'‖`
    /// are taken on a grid of spacing γ/64 (with a first-order margin, as for the kernel
    /// field). The bound is valid but loose (products of norms): it certifies only fine
    /// grids; it is the family's honest global constant, not an estimate of the local one.
    fn lipschitz_bounds(&self, times: &[f64]) -> Vec<f64> {
        let radial = self.radial_suprema();
        let message_slope = self.message_slope_bound() * radial.g_slope;
        let node = self.node_gain_bound();
        let n1 = (self.layout.n_particles - 1) as f64;
        times
            .iter()
            .map(|&t| {
                let point = self.time_point(t);
                let net = self.pair_bounds(&point);
                let phi = point.tail.abs() + radial.env * net.psi;
                let s_d = radial.d_env_slope * net.psi + radial.d_env_g_slope * net.grad_g;
                let a = radial.d_env * net.grad_h;
                let bound = 2.0 * n1 * (phi + s_d) + 4.0 * n1 * a * node * message_slope;
                if bound.is_nan() { f64::INFINITY } else { bound }
            })
            .collect()
    }
}

/// Suprema over d of the radial factors the Lipschitz bound needs.
struct RadialSuprema {
    env: f64,
    d_env: f64,
    d_env_slope: f64,
    d_env_g_slope: f64,
    g_slope: f64,
}

/// Bounds on the pair network over its input box at one time.
struct PairBounds {
    psi: f64,
    grad_g: f64,
    grad_h: f64,
}

/// `[lo, hi]` of `b + Σ_i x_i W[i, :]` for `x_i ∈ [lo_i, hi_i]`.
fn affine_interval(lo: &[f64], hi: &[f64], w: &[f64], bias: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let m = bias.len();
    let (mut out_lo, mut out_hi) = (bias.to_vec(), bias.to_vec());
    for ((l, h), row) in lo.iter().zip(hi).zip(w.chunks_exact(m)) {
        for o in 0..m {
            let (a, b) = (l * row[o], h * row[o]);
            out_lo[o] += a.min(b);
            out_hi[o] += a.max(b);
        }
    }
    (out_lo, out_hi)
}

/// The image of `[lo, hi]` under SiLU (which falls to its minimum ≈ −0.27846 at z ≈ −1.2785,
/// then rises), in place.
fn silu_interval(lo: &mut [f64], hi: &mut [f64]) {
    const Z_MIN: f64 = -1.278_464_542_761_074;
    const SILU_MIN: f64 = -0.278_464_542_761_074 - 1e-12;
    for (l, h) in lo.iter_mut().zip(hi.iter_mut()) {
        let (a, b) = (silu_and_slope(*l).0, silu_and_slope(*h).0);
        let low = if *l <= Z_MIN && Z_MIN <= *h {
            SILU_MIN
        } else {
            a.min(b)
        };
        *l = low;
        *h = a.max(b);
    }
}

/// `max(f_i, f_{i+1})` plus half the largest change over the interval and its neighbours: the
/// grid supremum with a first-order margin.
fn grid_sup(f: &[f64]) -> f64 {
    let change = |i: usize| match (f.get(i), f.get(i + 1)) {
        (Some(a), Some(b)) => (a - b).abs(),
        _ => 0.0,
    };
    let mut m = f.first().copied().unwrap_or(0.0);
    for i in 0..f.len().saturating_sub(1) {
        let local = change(i.saturating_sub(1))
            .max(change(i))
            .max(change(i + 1));
        m = m.max(f[i].max(f[i + 1]) + 0.5 * local);
    }
    m
}

impl EnvPairField {
    fn radial_suprema(&self) -> RadialSuprema {
        let k = self.blocks.k;
        let gamma = 1.0 / self.a_rbf.sqrt();
        // Past 27γ beyond the last centre every Gaussian is exactly 0 (e^−729 underflows).
        let d_end = self.config.rbf_max + 27.0 * gamma;
        let step = gamma / 64.0;
        let n_points = ((d_end - EPS_D.sqrt()) / step).ceil() as usize + 2;
        let mut g = [0.0; MAX_WIDTH];
        let mut dg = [0.0; MAX_WIDTH];
        let mut cols: [Vec<f64>; 5] = Default::default();
        for i in 0..n_points {
            let d = EPS_D.sqrt() + i as f64 * step;
            let (e, de) = self.rbf_into(d, &mut g[..k], &mut dg[..k]);
            let g_slope = dg[..k].iter().map(|v| v * v).sum::<f64>().sqrt();
            let vals = [e, d * e, d * de.abs(), d * e * g_slope, g_slope];
            for (c, v) in cols.iter_mut().zip(vals) {
                c.push(v);
            }
        }
        RadialSuprema {
            env: grid_sup(&cols[0]),
            d_env: grid_sup(&cols[1]),
            d_env_slope: grid_sup(&cols[2]),
            d_env_g_slope: grid_sup(&cols[3]),
            g_slope: grid_sup(&cols[4]),
        }
    }

    /// `‖|∂m/∂g|‖_F` from absolute weights and the SiLU slope bound: `‖m'(d)‖ ≤ this·‖g'(d)‖`.
    fn message_slope_bound(&self) -> f64 {
        let b = self.blocks;
        let p = &self.params;
        let (w0, w1) = (&p[b.message_w0()], &p[b.message_w1()]);
        let mut total = 0.0;
        for kk in 0..b.k {
            for e in 0..b.e {
                let mut sum = 0.0;
                for q in 0..b.hm {
                    sum += w0[kk * b.hm + q].abs() * w1[q * b.e + e].abs();
                }
                let v = SILU_SLOPE_MAX * SILU_SLOPE_MAX * sum;
                total += v * v;
            }
        }
        total.sqrt()
    }

    /// `1 + 1.1·‖V0‖_F‖V1‖_F ≥ ‖∂h/∂h0‖`.
    fn node_gain_bound(&self) -> f64 {
        let b = self.blocks;
        let frob = |r: Range<usize>| self.params[r].iter().map(|v| v * v).sum::<f64>().sqrt();
        1.0 + SILU_SLOPE_MAX * frob(b.node_w0()) * frob(b.node_w1())
    }

    fn pair_bounds(&self, point: &EnvPairTimePoint) -> PairBounds {
        let b = self.blocks;
        let p = &self.params;
        // Environment box: messages over g ∈ [0, 1]^K, then the node network.
        let (g_lo, g_hi) = (vec![0.0; b.k], vec![1.0; b.k]);
        let w0 = &p[b.message_w0()][..b.k * b.hm];
        let (mut lo, mut hi) = affine_interval(&g_lo, &g_hi, w0, &point.message_bias[..b.hm]);
        silu_interval(&mut lo, &mut hi);
        let (mut m_lo, mut m_hi) =
            affine_interval(&lo, &hi, &p[b.message_w1()], &p[b.message_b1()]);
        silu_interval(&mut m_lo, &mut m_hi);
        let (mut z_lo, mut z_hi) = affine_interval(&m_lo, &m_hi, &p[b.node_w0()], &p[b.node_b0()]);
        silu_interval(&mut z_lo, &mut z_hi);
        let (n_lo, n_hi) = affine_interval(&z_lo, &z_hi, &p[b.node_w1()], &p[b.node_b1()]);
        let h_lo: Vec<f64> = m_lo.iter().zip(&n_lo).map(|(a, b)| a + b).collect();
        let h_hi: Vec<f64> = m_hi.iter().zip(&n_hi).map(|(a, b)| a + b).collect();
        // Pair network over [g; h_i; h_j] (time folded into the bias).
        let mut in_lo = g_lo.clone();
        let mut in_hi = g_hi.clone();
        for _ in 0..2 {
            in_lo.extend_from_slice(&h_lo);
            in_hi.extend_from_slice(&h_hi);
        }
        let pw0 = &p[b.pair_w0()];
        let mut rows = pw0[..b.k * b.h].to_vec();
        rows.extend_from_slice(&pw0[(b.k + b.r) * b.h..]);
        let (mut lo, mut hi) = affine_interval(&in_lo, &in_hi, &rows, &point.pair_bias[..b.h]);
        silu_interval(&mut lo, &mut hi);
        let (mut lo, mut hi) = affine_interval(&lo, &hi, &p[b.pair_w1()], &p[b.pair_b1()]);
        silu_interval(&mut lo, &mut hi);
        let (psi_lo, psi_hi) = affine_interval(&lo, &hi, &p[b.pair_w2()], &p[b.pair_b2()]);
        // Input gradients: |∂ψ/∂z| ≤ |W0| (1.1 |W1| (1.1 |w2|)) elementwise.
        let w2 = &p[b.pair_w2()];
        let w1 = &p[b.pair_w1()];
        let gamma1: Vec<f64> = (0..b.h)
            .map(|o| {
                SILU_SLOPE_MAX
                    * (0..b.h)
                        .map(|o2| w1[o * b.h + o2].abs() * SILU_SLOPE_MAX * w2[o2].abs())
                        .sum::<f64>()
            })
            .collect();
        let grad = |row: usize| -> f64 {
            (0..b.h)
                .map(|o| rows[row * b.h + o].abs() * gamma1[o])
                .sum()
        };
        let norm = |range: Range<usize>| range.map(|r| grad(r).powi(2)).sum::<f64>().sqrt();
        PairBounds {
            psi: psi_lo[0].abs().max(psi_hi[0].abs()),
            grad_g: norm(0..b.k),
            grad_h: norm(b.k..b.k + b.e).max(norm(b.k + b.e..b.k + 2 * b.e)),
        }
    }
}

impl TrainableField for EnvPairField {
    type TimePoint = EnvPairTimePoint;
    type Adjoint = Vec<f64>;
    type Scratch = EnvPairScratch;

    /// Flow matching needs only the velocity's reverse pass; maximum likelihood and KL, which
    /// differentiate the divergence, are refused for this family (the training tape checks).
    const DIVERGENCE_REVERSE: bool = false;

    fn time_point(&self, t: f64) -> EnvPairTimePoint {
        EnvPairField::time_point(self, t)
    }

    fn time_point_key(&self, key: &mut Vec<f64>) {
        key.extend_from_slice(&self.params);
    }

    fn new_scratch(&self) -> EnvPairScratch {
        EnvPairScratch::default()
    }

    fn velocity_at_into(&self, x: &[f64], point: &EnvPairTimePoint, v: &mut [f64]) -> f64 {
        with_scratch(|ws| self.evaluate(x, point, v, ws, true))
    }

    fn adjoint_reset(&self, adjoint: &mut Vec<f64>, _n_times: usize) {
        adjoint.clear();
        adjoint.resize(self.params.len(), 0.0);
    }

    fn vjp_at(
        &self,
        x: &[f64],
        point: &EnvPairTimePoint,
        _time_index: usize,
        cotangent: Cotangent<'_>,
        x_bar: &mut [f64],
        adjoint: &mut Vec<f64>,
        scratch: &mut EnvPairScratch,
    ) {
        debug_assert!(
            cotangent.div == 0.0,
            "envpair has no divergence reverse pass"
        );
        self.vjp_into(x, point, cotangent.v, x_bar, adjoint, scratch);
    }

    fn adjoint_finish(
        &self,
        _points: &[EnvPairTimePoint],
        adjoint: &mut Vec<f64>,
        theta_bar: &mut [f64],
    ) {
        for (t, a) in theta_bar.iter_mut().zip(adjoint.iter()) {
            *t += a;
        }
    }
}
