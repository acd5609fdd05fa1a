//! The settings of an environment-modulated pair field and the layout of its parameters.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::field::linspace;

/// The largest width of any layer (and the largest number of RBFs): bounds the stack buffers
/// of the per-pair loops so that no field evaluation allocates per pair.
pub const MAX_WIDTH: usize = 64;

/// Sizes of the networks and the fixed bases of an [`super::EnvPairField`].
///
/// Distances enter through `n_rbf` unnormalised Gaussians `g_k(d) = exp(−((d − μ_k)/γ)²)` with
/// `μ = linspace(rbf_min, rbf_max, n_rbf)` and `γ` the spacing of the centres; flow time
/// through `n_time` Gaussians `μ = linspace(0, 1, n_time)`, `γ = 1/(n_time − 1)`, normalised
/// to sum to 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvPairConfig {
    /// Number of distance Gaussians K (2 ..= [`MAX_WIDTH`]).
    pub n_rbf: usize,
    /// Centre of the first distance Gaussian (length units, ≥ 0).
    pub rbf_min: f64,
    /// Centre of the last distance Gaussian (> `rbf_min`).
    pub rbf_max: f64,
    /// Number of time Gaussians R (2 ..= [`MAX_WIDTH`]).
    pub n_time: usize,
    /// Width E of a particle's environment features `h_i` (1 ..= [`MAX_WIDTH`]).
    pub env_width: usize,
    /// Hidden width of the message and node networks (1 ..= [`MAX_WIDTH`]).
    pub message_hidden: usize,
    /// Hidden width H of the pair network's two hidden layers (1 ..= [`MAX_WIDTH`]).
    pub hidden: usize,
}

impl EnvPairConfig {
    /// The double-well preset: distance Gaussians on [0, 8].
    #[must_use]
    pub fn double_well() -> Self {
        Self::with_range(0.0, 8.0)
    }

    /// The Lennard-Jones preset: distance Gaussians on [0.6, 4] (σ = 1 units).
    #[must_use]
    pub fn lennard_jones() -> Self {
        Self::with_range(0.6, 4.0)
    }

    /// Widths E = 16, Hm = H = 32 (5,191 parameters): on DW-4 0.13 nats better in test NLL
    /// than half the widths at ~4× the cost (docs/field_families.md).
    fn with_range(rbf_min: f64, rbf_max: f64) -> Self {
        EnvPairConfig {
            n_rbf: 16,
            rbf_min,
            rbf_max,
            n_time: 6,
            env_width: 16,
            message_hidden: 32,
            hidden: 32,
        }
    }

    /// Checks every setting.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        for (what, value, min) in [
            ("n_rbf", self.n_rbf, 2),
            ("n_time", self.n_time, 2),
            ("env_width", self.env_width, 1),
            ("message_hidden", self.message_hidden, 1),
            ("hidden", self.hidden, 1),
        ] {
            if !(min..=MAX_WIDTH).contains(&value) {
                return Err(Error::invalid(format!(
                    "envpair {what} = {value} is outside [{min}, {MAX_WIDTH}]"
                )));
            }
        }
        // Centres and spacing in a range where the Gaussians are meaningful in f64.
        let ok = |v: f64| v.is_finite() && (0.0..=1e6).contains(&v);
        if !ok(self.rbf_min) || !ok(self.rbf_max) || self.rbf_max - self.rbf_min < 1e-6 {
            return Err(Error::invalid(format!(
                "envpair RBF range [{}, {}] must satisfy 0 ≤ rbf_min < rbf_max ≤ 1e6 \
                 (by at least 1e-6)",
                self.rbf_min, self.rbf_max
            )));
        }
        Ok(())
    }

    /// The distance centres μ_k.
    #[must_use]
    pub fn rbf_centres(&self) -> Vec<f64> {
        linspace(self.rbf_min, self.rbf_max, self.n_rbf)
    }

    /// `1/γ²` of the distance Gaussians (γ = spacing of the centres).
    #[must_use]
    pub fn rbf_inv_width_sq(&self) -> f64 {
        let gamma = (self.rbf_max - self.rbf_min) / (self.n_rbf - 1) as f64;
        1.0 / (gamma * gamma)
    }

    /// The time centres μ_r.
    #[must_use]
    pub fn time_centres(&self) -> Vec<f64> {
        linspace(0.0, 1.0, self.n_time)
    }

    /// `1/γ²` of the time Gaussians.
    #[must_use]
    pub fn time_inv_width_sq(&self) -> f64 {
        let gamma = 1.0 / (self.n_time - 1) as f64;
        1.0 / (gamma * gamma)
    }
}

/// Where each block lives in the flat parameter vector. Matrices are row-major with the
/// *input* index first (`W[i*out + o]`), so a forward product is a sum of scaled rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocks {
    /// K, R, E, message/node hidden, pair hidden.
    pub k: usize,
    pub r: usize,
    pub e: usize,
    pub hm: usize,
    pub h: usize,
    offsets: [usize; 16],
}

/// Block names in order, with their (rows, cols) as functions of the sizes.
const NAMES: [&str; 15] = [
    "message_w0",
    "message_b0",
    "message_w1",
    "message_b1",
    "node_w0",
    "node_b0",
    "node_w1",
    "node_b1",
    "pair_w0",
    "pair_b0",
    "pair_w1",
    "pair_b1",
    "pair_w2",
    "pair_b2",
    "tail",
];

impl Blocks {
    /// The layout for `config` (assumed valid).
    #[must_use]
    pub fn new(config: &EnvPairConfig) -> Self {
        let (k, r, e, hm, h) = (
            config.n_rbf,
            config.n_time,
            config.env_width,
            config.message_hidden,
            config.hidden,
        );
        let sizes = [
            (k + r) * hm,
            hm,
            hm * e,
            e,
            e * hm,
            hm,
            hm * e,
            e,
            (k + r + 2 * e) * h,
            h,
            h * h,
            h,
            h,
            1,
            r,
        ];
        let mut offsets = [0; 16];
        for (i, s) in sizes.iter().enumerate() {
            offsets[i + 1] = offsets[i] + s;
        }
        Blocks {
            k,
            r,
            e,
            hm,
            h,
            offsets,
        }
    }

    /// Total number of parameters.
    #[must_use]
    pub fn len(&self) -> usize {
        self.offsets[15]
    }

    /// Never true: every block is non-empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    fn at(&self, i: usize) -> Range<usize> {
        self.offsets[i]..self.offsets[i + 1]
    }

    /// Names and ranges of all blocks, in order.
    #[must_use]
    pub fn named(&self) -> Vec<(&'static str, Range<usize>)> {
        NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, self.at(i)))
            .collect()
    }

    /// Message network, layer 0: (K + R) × Hm weights and Hm biases.
    #[must_use]
    pub fn message_w0(&self) -> Range<usize> {
        self.at(0)
    }
    #[must_use]
    pub fn message_b0(&self) -> Range<usize> {
        self.at(1)
    }
    /// Message network, layer 1: Hm × E and E.
    #[must_use]
    pub fn message_w1(&self) -> Range<usize> {
        self.at(2)
    }
    #[must_use]
    pub fn message_b1(&self) -> Range<usize> {
        self.at(3)
    }
    /// Node network (residual): E × Hm, Hm, Hm × E, E.
    #[must_use]
    pub fn node_w0(&self) -> Range<usize> {
        self.at(4)
    }
    #[must_use]
    pub fn node_b0(&self) -> Range<usize> {
        self.at(5)
    }
    #[must_use]
    pub fn node_w1(&self) -> Range<usize> {
        self.at(6)
    }
    #[must_use]
    pub fn node_b1(&self) -> Range<usize> {
        self.at(7)
    }
    /// Pair network: (K + R + 2E) × H, H, H × H, H, H (output weights), 1 (output bias).
    #[must_use]
    pub fn pair_w0(&self) -> Range<usize> {
        self.at(8)
    }
    #[must_use]
    pub fn pair_b0(&self) -> Range<usize> {
        self.at(9)
    }
    #[must_use]
    pub fn pair_w1(&self) -> Range<usize> {
        self.at(10)
    }
    #[must_use]
    pub fn pair_b1(&self) -> Range<usize> {
        self.at(11)
    }
    #[must_use]
    pub fn pair_w2(&self) -> Range<usize> {
        self.at(12)
    }
    #[must_use]
    pub fn pair_b2(&self) -> Range<usize> {
        self.at(13)
    }
    /// The tail coefficient `c(t) = Σ_r τ_r c_r`, one per time Gaussian.
    #[must_use]
    pub fn tail(&self) -> Range<usize> {
        self.at(14)
    }
}
