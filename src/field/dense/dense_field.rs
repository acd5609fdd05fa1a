//! `DenseField`: the dense tanh network with its parameters and the matrices derived from them
//! (the first layer acting on centred coordinates, the projected second layer, the diagonal
//! that makes the divergence closed-form).

use rand_distr::{Distribution, Normal};

use super::config::{DenseConfig, MAX_TIME_FEATURES};
use crate::error::{Error, Result};
use crate::field::exp::exp_nonpositive;
use crate::field::family::check_network_params;
use crate::geometry::Layout;
use crate::rng::{self, Stream};

/// The most particles a dense field accepts: its weights are O(H·N·D) and its dense Jacobian
/// O((N·D)²·H) per evaluation.
pub const MAX_DENSE_PARTICLES: usize = 1024;

/// A dense (fully connected, one tanh hidden layer) vector field on the flattened
/// coordinates; see the module documentation for the formula and what it does and does not
/// preserve.
///
/// Immutable once built; parameters change through [`DenseField::set_params`].
#[derive(Debug, Clone, PartialEq)]
pub struct DenseField {
    pub(super) layout: Layout,
    pub(super) config: DenseConfig,
    pub(super) params: Vec<f64>,
    /// `A = W1·P/ℓ`, H × n row-major: the first layer on raw coordinates (each row has no
    /// centre-of-mass component, so translations do not change the pre-activations).
    pub(super) a1: Vec<f64>,
    /// `B = P·W2`, n × H row-major: the second layer followed by the CoM projection.
    pub(super) a2: Vec<f64>,
    /// `c_h = Σ_i A_hi B_ih`, so that `div v = Σ_h tanh'(a_h) c_h`.
    pub(super) c: Vec<f64>,
    pub(super) mu_time: Vec<f64>,
    pub(super) a_time: f64,
}

/// What an evaluation at one flow time needs: the normalised time features.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseTimePoint {
    /// Flow time.
    pub t: f64,
    /// `τ_r(t)`, summing to 1 (first R entries).
    pub tau: [f64; MAX_TIME_FEATURES],
}

/// `y − mean` per axis over the particles, in place (particle-major, `dim` axes): the
/// projection P onto the centre-of-mass-free subspace.
pub(super) fn project_com(y: &mut [f64], dim: usize) {
    let n_p = y.len() / dim;
    for c in 0..dim {
        let mean = y.iter().skip(c).step_by(dim).sum::<f64>() / n_p as f64;
        y.iter_mut().skip(c).step_by(dim).for_each(|v| *v -= mean);
    }
}

impl DenseField {
    /// A field with explicit parameters (length [`DenseConfig::n_params`] of N·D).
    ///
    /// # Errors
    ///
    /// An invalid config, more than [`MAX_DENSE_PARTICLES`] particles, or parameters of the
    /// wrong length, non-finite, or larger than 1e6 in magnitude.
    pub fn new(layout: Layout, config: DenseConfig, params: Vec<f64>) -> Result<Self> {
        config.validate()?;
        if layout.n_particles > MAX_DENSE_PARTICLES {
            return Err(Error::invalid(format!(
                "a dense field needs at most {MAX_DENSE_PARTICLES} particles, not {}",
                layout.n_particles
            )));
        }
        let n = layout.len();
        let h = config.n_hidden;
        let mut field = DenseField {
            layout,
            params: vec![0.0; config.n_params(n)],
            a1: vec![0.0; h * n],
            a2: vec![0.0; n * h],
            c: vec![0.0; h],
            mu_time: config.time_centres(),
            a_time: config.time_inv_width_sq(),
            config,
        };
        field.set_params(&params)?;
        Ok(field)
    }

    /// A fresh field from `seed`: `w1 ~ N(0, 1/n)`, `b1 ~ N(0, 1)` (so that the hidden units
    /// start spread over tanh's slope), `w2 ~ N(0, 0.01·ℓ²/H)` (a small initial field, close to
    /// the identity map) and `b2 = 0`.
    ///
    /// # Errors
    ///
    /// As [`DenseField::new`].
    pub fn initialise(layout: Layout, config: DenseConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let n = layout.len();
        let mut params = vec![0.0; config.n_params(n)];
        let mut rng = rng::stream(seed, Stream::FieldInit);
        let h = config.n_hidden as f64;
        for (block, range) in config.param_blocks(n) {
            let std = match block {
                "w1" => 1.0 / (n as f64).sqrt(),
                "b1" => 1.0,
                "w2" => 0.1 * config.length_scale / h.sqrt(),
                _ => 0.0,
            };
            if std == 0.0 {
                continue;
            }
            let normal = Normal::new(0.0, std).map_err(|e| Error::invalid(e.to_string()))?;
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
        check_network_params("dense", params, self.config.n_params(self.layout.len()))?;
        self.params.copy_from_slice(params);
        self.derive();
        Ok(())
    }

    /// Recomputes `A`, `B` and `c` from the parameters.
    fn derive(&mut self) {
        let n = self.layout.len();
        let dim = self.layout.dim;
        let h = self.config.n_hidden;
        let blocks = self.config.param_blocks(n);
        let (w1, w2) = (
            &self.params[blocks[0].1.clone()],
            &self.params[blocks[2].1.clone()],
        );
        let inv_l = 1.0 / self.config.length_scale;
        for (row, w) in self.a1.chunks_exact_mut(n).zip(w1.chunks_exact(n)) {
            row.copy_from_slice(w);
            project_com(row, dim);
            row.iter_mut().for_each(|v| *v *= inv_l);
        }
        // Columns of W2 projected: gather, project, scatter.
        let mut col = vec![0.0; n];
        for k in 0..h {
            for i in 0..n {
                col[i] = w2[i * h + k];
            }
            project_com(&mut col, dim);
            for i in 0..n {
                self.a2[i * h + k] = col[i];
            }
        }
        for k in 0..h {
            self.c[k] = (0..n)
                .map(|i| self.a1[k * n + i] * self.a2[i * h + k])
                .sum();
        }
    }

    /// The particle layout.
    #[must_use]
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &DenseConfig {
        &self.config
    }

    /// The flat parameters.
    #[must_use]
    pub fn params(&self) -> &[f64] {
        &self.params
    }

    /// The precomputation at flow time `t`: the normalised time features.
    #[must_use]
    pub fn time_point(&self, t: f64) -> DenseTimePoint {
        let mut tau = [0.0; MAX_TIME_FEATURES];
        let r = self.config.n_time;
        for (tau, mu) in tau.iter_mut().zip(&self.mu_time) {
            let u = t - mu;
            *tau = exp_nonpositive(-(u * u * self.a_time));
        }
        // The Gaussian nearest to any t ∈ [0, 1] is at most half a spacing away (e^−¼), so
        // the sum is positive there; outside [0, 1] it stays positive down to underflow.
        let total: f64 = tau[..r].iter().sum::<f64>().max(f64::MIN_POSITIVE);
        tau[..r].iter_mut().for_each(|v| *v /= total);
        DenseTimePoint { t, tau }
    }

    /// The ranges of `b1` and `b2` in the flat parameters.
    pub(super) fn bias_ranges(&self) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let blocks = self.config.param_blocks(self.layout.len());
        (blocks[1].1.clone(), blocks[3].1.clone())
    }
}
