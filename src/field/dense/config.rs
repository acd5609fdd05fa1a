//! The settings of a dense (non-equivariant) field and the layout of its parameters.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::field::linspace;

/// The largest hidden width H.
pub const MAX_HIDDEN: usize = 1024;

/// The largest number of time features R (bounds the stack buffer of the time basis).
pub const MAX_TIME_FEATURES: usize = 64;

/// Sizes and input scale of a [`super::DenseField`].
///
/// The time features are R unnormalised Gaussians `exp(−((t − μ_r)/γ)²)` with centres
/// `μ = linspace(0, 1, R)` and `γ` their spacing, normalised to sum to 1 (as the other families'
/// time bases); they enter as time-dependent biases of the hidden and the output layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseConfig {
    /// Hidden width H (1 ..= [`MAX_HIDDEN`]).
    pub n_hidden: usize,
    /// Number of time features R (2 ..= [`MAX_TIME_FEATURES`]).
    pub n_time: usize,
    /// Length scale ℓ the centred coordinates are divided by before the first layer (length
    /// units, in [1e-6, 1e6]): keeps the pre-activations of order one for the initial weights.
    pub length_scale: f64,
}

impl DenseConfig {
    /// The double-well preset (DW-4: 1,456 parameters): H = 64, R = 6, ℓ = 2 (the
    /// coordinates of DW-4 configurations are of order 2 about their centre).
    #[must_use]
    pub fn double_well() -> Self {
        DenseConfig {
            n_hidden: 64,
            n_time: 6,
            length_scale: 2.0,
        }
    }

    /// The Lennard-Jones preset (σ = 1 units; LJ-13: 10,986 parameters): H = 128, R = 6, ℓ = 1.
    #[must_use]
    pub fn lennard_jones() -> Self {
        DenseConfig {
            n_hidden: 128,
            n_time: 6,
            length_scale: 1.0,
        }
    }

    /// Checks every setting.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_HIDDEN).contains(&self.n_hidden) {
            return Err(Error::invalid(format!(
                "dense n_hidden = {} is outside [1, {MAX_HIDDEN}]",
                self.n_hidden
            )));
        }
        if !(2..=MAX_TIME_FEATURES).contains(&self.n_time) {
            return Err(Error::invalid(format!(
                "dense n_time = {} is outside [2, {MAX_TIME_FEATURES}]",
                self.n_time
            )));
        }
        if !(self.length_scale.is_finite() && (1e-6..=1e6).contains(&self.length_scale)) {
            return Err(Error::invalid(format!(
                "dense length_scale = {} is outside [1e-6, 1e6]",
                self.length_scale
            )));
        }
        Ok(())
    }

    /// The time centres.
    #[must_use]
    pub fn time_centres(&self) -> Vec<f64> {
        linspace(0.0, 1.0, self.n_time)
    }

    /// `1/γ²` of the time Gaussians (γ the spacing of the centres).
    #[must_use]
    pub fn time_inv_width_sq(&self) -> f64 {
        let gamma = 1.0 / (self.n_time - 1) as f64;
        1.0 / (gamma * gamma)
    }

    /// Total number of parameters for `n = N·D` coordinates: `2·H·n + H·R + n·R`.
    #[must_use]
    pub fn n_params(&self, n: usize) -> usize {
        let (h, r) = (self.n_hidden, self.n_time);
        2 * h * n + h * r + n * r
    }

    /// Names and ranges of the parameter blocks for `n = N·D` coordinates: `w1` (H × n,
    /// row-major: entry `h·n + i`), `b1` (H × R), `w2` (n × H) and `b2` (n × R).
    #[must_use]
    pub fn param_blocks(&self, n: usize) -> Vec<(&'static str, Range<usize>)> {
        let (h, r) = (self.n_hidden, self.n_time);
        let w1 = 0..h * n;
        let b1 = w1.end..w1.end + h * r;
        let w2 = b1.end..b1.end + n * h;
        let b2 = w2.end..w2.end + n * r;
        vec![("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)]
    }
}
