//! `EnvPairField`: the environment-modulated pair field with its parameters and the
//! per-time precomputation.

use rand_distr::{Distribution, Normal};

use super::config::{Blocks, EnvPairConfig, MAX_WIDTH};
use super::net::add_rows;
use crate::error::{Error, Result};
use crate::field::exp::exp_nonpositive;
use crate::field::family::check_network_params;
use crate::geometry::Layout;
use crate::rng::{self, Stream};

/// The most particles an envpair field accepts: its derivatives keep per-pair state (the
/// messages' slopes, the pair network's input gradients), O(N²·E) memory per thread — about
/// 35 MB at 256 particles with the presets' E = 16 — and its cost grows as N² networks.
pub const MAX_ENVPAIR_PARTICLES: usize = 256;

/// An environment-modulated pair field (see the module documentation for the formula).
///
/// Immutable once built; parameters change through [`EnvPairField::set_params`].
#[derive(Debug, Clone, PartialEq)]
pub struct EnvPairField {
    pub(super) layout: Layout,
    pub(super) config: EnvPairConfig,
    pub(super) blocks: Blocks,
    pub(super) params: Vec<f64>,
    pub(super) mu: Vec<f64>,
    pub(super) a_rbf: f64,
    pub(super) mu_time: Vec<f64>,
    pub(super) a_time: f64,
}

/// What an evaluation at one flow time needs: the normalised time basis, the tail
/// coefficient and the time part of both first layers (folded into their biases).
#[derive(Debug, Clone, PartialEq)]
pub struct EnvPairTimePoint {
    /// Flow time.
    pub t: f64,
    /// `τ_r(t)`, summing to 1 (first R entries).
    pub tau: [f64; MAX_WIDTH],
    /// `c(t) = Σ_r τ_r c_r`: the pair coefficient far from every RBF.
    pub tail: f64,
    /// `b0 + Σ_r τ_r W0[K + r, :]` of the message network (first Hm entries).
    pub message_bias: [f64; MAX_WIDTH],
    /// The same for the pair network (first H entries).
    pub pair_bias: [f64; MAX_WIDTH],
}

impl EnvPairField {
    /// A field with explicit parameters (length [`Blocks::len`] of the config).
    ///
    /// # Errors
    ///
    /// An invalid config, a layout with fewer than 2 or more than
    /// [`MAX_ENVPAIR_PARTICLES`] particles, or parameters of the wrong length, non-finite, or
    /// larger than 1e6 in magnitude.
    pub fn new(layout: Layout, config: EnvPairConfig, params: Vec<f64>) -> Result<Self> {
        config.validate()?;
        if !(2..=MAX_ENVPAIR_PARTICLES).contains(&layout.n_particles) {
            return Err(Error::invalid(format!(
                "an envpair field needs 2 ..= {MAX_ENVPAIR_PARTICLES} particles, not {}",
                layout.n_particles
            )));
        }
        let blocks = Blocks::new(&config);
        let mut field = EnvPairField {
            layout,
            blocks,
            params: vec![0.0; blocks.len()],
            mu: config.rbf_centres(),
            a_rbf: config.rbf_inv_width_sq(),
            mu_time: config.time_centres(),
            a_time: config.time_inv_width_sq(),
            config,
        };
        field.set_params(&params)?;
        Ok(field)
    }

    /// A fresh field: weights `~ N(0, 1/fan_in)` from `seed` (the output layers of the node and
    /// pair networks scaled by 0.1, so the field starts small), biases and tail 0.
    ///
    /// # Errors
    ///
    /// As [`EnvPairField::new`].
    pub fn initialise(layout: Layout, config: EnvPairConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let b = Blocks::new(&config);
        let mut params = vec![0.0; b.len()];
        let mut rng = rng::stream(seed, Stream::FieldInit);
        let blocks = [
            (b.message_w0(), b.k + b.r, 1.0),
            (b.message_w1(), b.hm, 1.0),
            (b.node_w0(), b.e, 1.0),
            (b.node_w1(), b.hm, 0.1),
            (b.pair_w0(), b.k + b.r + 2 * b.e, 1.0),
            (b.pair_w1(), b.h, 1.0),
            (b.pair_w2(), b.h, 0.1),
        ];
        for (range, fan_in, scale) in blocks {
            let normal = Normal::new(0.0, scale / (fan_in as f64).sqrt())
                .map_err(|e| Error::invalid(e.to_string()))?;
            for p in &mut params[range] {
                *p = normal.sample(&mut rng);
            }
        }
        Self::new(layout, config, params)
    }

    /// Replaces the parameters; on error `self` is unchanged.
    ///
    /// # Errors
    ///
    /// A wrong length, non-finite values, or magnitudes above 1e6.
    pub fn set_params(&mut self, params: &[f64]) -> Result<()> {
        check_network_params("envpair", params, self.blocks.len())?;
        self.params.copy_from_slice(params);
        Ok(())
    }

    /// The particle layout.
    #[must_use]
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &EnvPairConfig {
        &self.config
    }

    /// The parameter layout.
    #[must_use]
    pub fn blocks(&self) -> Blocks {
        self.blocks
    }

    /// The flat parameters.
    #[must_use]
    pub fn params(&self) -> &[f64] {
        &self.params
    }

    /// The distance Gaussians `g_k(d)` into `g` and their slopes `∂g_k/∂d` into `dg`; returns
    /// `(e, e')` of the envelope `e(d) = Σ_k g_k(d)`.
    #[inline]
    pub(super) fn rbf_into(&self, d: f64, g: &mut [f64], dg: &mut [f64]) -> (f64, f64) {
        let (mut e, mut de) = (0.0, 0.0);
        for ((g, dg), mu) in g.iter_mut().zip(dg.iter_mut()).zip(&self.mu) {
            let u = d - mu;
            *g = exp_nonpositive(-(u * u * self.a_rbf));
            *dg = -2.0 * u * self.a_rbf * *g;
            e += *g;
            de += *dg;
        }
        (e, de)
    }

    /// The precomputation at flow time `t`.
    #[must_use]
    pub fn time_point(&self, t: f64) -> EnvPairTimePoint {
        let b = self.blocks;
        let mut tau = [0.0; MAX_WIDTH];
        for (tau, mu) in tau.iter_mut().zip(&self.mu_time) {
            let u = t - mu;
            *tau = exp_nonpositive(-(u * u * self.a_time));
        }
        let tau_r = &mut tau[..b.r];
        // The Gaussian nearest to any t ∈ [0, 1] is at most half a spacing away (e^−¼), so
        // the sum is positive there; outside [0, 1] it stays positive down to underflow.
        let total: f64 = tau_r.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        tau_r.iter_mut().for_each(|v| *v /= total);
        let tau_r = &tau[..b.r];
        let p = &self.params;
        let tail = tau_r.iter().zip(&p[b.tail()]).map(|(a, c)| a * c).sum();
        let mut message_bias = [0.0; MAX_WIDTH];
        message_bias[..b.hm].copy_from_slice(&p[b.message_b0()]);
        let w0 = &p[b.message_w0()];
        add_rows(
            tau_r,
            &w0[b.k * b.hm..(b.k + b.r) * b.hm],
            &mut message_bias[..b.hm],
        );
        let mut pair_bias = [0.0; MAX_WIDTH];
        pair_bias[..b.h].copy_from_slice(&p[b.pair_b0()]);
        let w0 = &p[b.pair_w0()];
        add_rows(
            tau_r,
            &w0[b.k * b.h..(b.k + b.r) * b.h],
            &mut pair_bias[..b.h],
        );
        EnvPairTimePoint {
            t,
            tau,
            tail,
            message_bias,
            pair_bias,
        }
    }
}
