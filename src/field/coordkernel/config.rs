//! The settings of a coordination-modulated kernel field and the layout of its parameters.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{Compact, Error, Result};
use crate::field::linspace;

/// The largest number of Gaussians in any basis (distance, time or coordination shells):
/// bounds the stack buffers of the per-pair loops, so that no evaluation allocates per pair.
pub const MAX_BASIS: usize = 64;

/// Sizes and fixed bases of a [`super::CoordKernelField`].
///
/// Every basis is a set of unnormalised Gaussians `exp(−((x − μ)/γ)²)` with evenly spaced
/// centres `μ = linspace(min, max, n)` and `γ` the spacing: distances through `n_rbf` of them on
/// `[rbf_min, rbf_max]`, coordination shells through `n_shells` on `[shell_min, shell_max]`, and
/// flow time through `n_time` on `[0, 1]`, normalised to sum to 1. None of the bases is
/// trained: the field is linear in its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordKernelConfig {
    /// Number of distance Gaussians K (2 ..= [`MAX_BASIS`]).
    pub n_rbf: usize,
    /// Centre of the first distance Gaussian (length units, ≥ 0).
    pub rbf_min: f64,
    /// Centre of the last distance Gaussian (> `rbf_min`).
    pub rbf_max: f64,
    /// Number of time Gaussians R (2 ..= [`MAX_BASIS`]).
    pub n_time: usize,
    /// Number of coordination shells A (2 ..= [`MAX_BASIS`]).
    pub n_shells: usize,
    /// Centre of the first shell (length units, ≥ 0).
    pub shell_min: f64,
    /// Centre of the last shell (> `shell_min`).
    pub shell_max: f64,
}

impl CoordKernelConfig {
    /// The double-well preset: distances on [0, 8], shells on [2, 6].
    #[must_use]
    pub fn double_well() -> Self {
        Self::with_ranges((0.0, 8.0), (2.0, 6.0))
    }

    /// The Lennard-Jones preset (σ = 1 units): distances on [0.6, 4], shells on [0.9, 3].
    #[must_use]
    pub fn lennard_jones() -> Self {
        Self::with_ranges((0.6, 4.0), (0.9, 3.0))
    }

    /// K = 16 distance, R = 6 time Gaussians and A = 4 shells: 864 parameters.
    fn with_ranges(rbf: (f64, f64), shells: (f64, f64)) -> Self {
        CoordKernelConfig {
            n_rbf: 16,
            rbf_min: rbf.0,
            rbf_max: rbf.1,
            n_time: 6,
            n_shells: 4,
            shell_min: shells.0,
            shell_max: shells.1,
        }
    }

    /// Checks every setting.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        for (what, value) in [
            ("n_rbf", self.n_rbf),
            ("n_time", self.n_time),
            ("n_shells", self.n_shells),
        ] {
            if !(2..=MAX_BASIS).contains(&value) {
                return Err(Error::invalid(format!(
                    "coordkernel {what} = {value} is outside [2, {MAX_BASIS}]"
                )));
            }
        }
        // Centres and spacings in a range where the Gaussians are meaningful in f64.
        let ok = |v: f64| v.is_finite() && (0.0..=1e6).contains(&v);
        for (what, lo, hi) in [
            ("RBF", self.rbf_min, self.rbf_max),
            ("shell", self.shell_min, self.shell_max),
        ] {
            if !ok(lo) || !ok(hi) || hi - lo < 1e-6 {
                return Err(Error::invalid(format!(
                    "coordkernel {what} range [{}, {}] must satisfy 0 ≤ min < max ≤ 1e6 \
                     (by at least 1e-6)",
                    Compact(lo),
                    Compact(hi)
                )));
            }
        }
        Ok(())
    }

    /// The distance centres μ_k.
    #[must_use]
    pub fn rbf_centres(&self) -> Vec<f64> {
        linspace(self.rbf_min, self.rbf_max, self.n_rbf)
    }

    /// `1/γ²` of the distance Gaussians.
    #[must_use]
    pub fn rbf_inv_width_sq(&self) -> f64 {
        inv_spacing_sq(self.rbf_min, self.rbf_max, self.n_rbf)
    }

    /// The shell centres ν_a.
    #[must_use]
    pub fn shell_centres(&self) -> Vec<f64> {
        linspace(self.shell_min, self.shell_max, self.n_shells)
    }

    /// `1/η²` of the shells.
    #[must_use]
    pub fn shell_inv_width_sq(&self) -> f64 {
        inv_spacing_sq(self.shell_min, self.shell_max, self.n_shells)
    }

    /// The time centres.
    #[must_use]
    pub fn time_centres(&self) -> Vec<f64> {
        linspace(0.0, 1.0, self.n_time)
    }

    /// `1/γ²` of the time Gaussians.
    #[must_use]
    pub fn time_inv_width_sq(&self) -> f64 {
        inv_spacing_sq(0.0, 1.0, self.n_time)
    }

    /// The number of pair features Q = 1 + 2A: the constant, `h_i + h_j` and `h_i ⊙ h_j`.
    #[must_use]
    pub fn n_features(&self) -> usize {
        1 + 2 * self.n_shells
    }

    /// Total number of parameters, Q·K·R.
    #[must_use]
    pub fn n_params(&self) -> usize {
        self.n_features() * self.n_rbf * self.n_time
    }

    /// Names and ranges of the parameter blocks: the paper-like pair kernel (feature 0), then
    /// the coefficients of `h_i + h_j` and of `h_i ⊙ h_j`. Parameter `(q, k, r)` is at
    /// `(q·K + k)·R + r`.
    #[must_use]
    pub fn param_blocks(&self) -> Vec<(&'static str, Range<usize>)> {
        let kr = self.n_rbf * self.n_time;
        let a = self.n_shells;
        vec![
            ("pair", 0..kr),
            ("shell_sum", kr..(1 + a) * kr),
            ("shell_product", (1 + a) * kr..(1 + 2 * a) * kr),
        ]
    }
}

/// `1/γ²` for `n ≥ 2` centres evenly spaced on `[lo, hi]`, γ the spacing.
fn inv_spacing_sq(lo: f64, hi: f64, n: usize) -> f64 {
    let gamma = (hi - lo) / (n - 1) as f64;
    1.0 / (gamma * gamma)
}
