//! Kernel configurations: centres and initial bandwidths of the distance and time RBF bases,
//! with the presets of the paper's code (DESIGN.md §2).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::field::linspace;

/// The largest number of distance kernels (K) a field may have; bounds the stack buffers of
/// the pair loop so that no field evaluation allocates.
pub const MAX_DIST_KERNELS: usize = 128;
/// The largest number of time kernels (R).
pub const MAX_TIME_KERNELS: usize = 64;

/// Centres `μ` (fixed) and initial bandwidths `γ` (trainable through `−log γ`) of both bases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelConfig {
    /// Distance centres μ_k (K of them), in length units.
    pub mu_dist: Vec<f64>,
    /// Initial distance bandwidths γ_k (> 0).
    pub gamma_dist: Vec<f64>,
    /// Time centres μ_r (R of them), in flow time, t ∈ [0, 1].
    pub mu_time: Vec<f64>,
    /// Initial time bandwidths γ_r (> 0).
    pub gamma_time: Vec<f64>,
}

impl KernelConfig {
    /// The double-well preset: `μ = linspace(0, 8, 50)`, `γ = 0.5`; time `μ = linspace(0, 1, 10)`,
    /// `γ = 0.3`.
    #[must_use]
    pub fn double_well() -> Self {
        KernelConfig {
            mu_dist: linspace(0.0, 8.0, 50),
            gamma_dist: vec![0.5; 50],
            mu_time: linspace(0.0, 1.0, 10),
            gamma_time: vec![0.3; 10],
        }
    }

    /// The LJ-13 preset: quadratically spaced distance centres, `m = linspace(0, 16, 50)`,
    /// `μ = sort(2·((m/16 − 1.5/16)/2)²·16)`, `γ = 0.3 + 3·((μ/16 − 1.5/16)/2)²·16`; time centres
    /// `linspace(0, 1, 10)` with `γ = gain/√10`, `gain = 0.3 + 2((μ_t − 0.5)/2)²`.
    #[must_use]
    pub fn lennard_jones() -> Self {
        let mut mu_dist: Vec<f64> = linspace(0.0, 16.0, 50)
            .into_iter()
            .map(|m| {
                let u = (m / 16.0 - 1.5 / 16.0) / 2.0;
                2.0 * u * u * 16.0
            })
            .collect();
        mu_dist.sort_by(f64::total_cmp);
        let gamma_dist = mu_dist
            .iter()
            .map(|mu| {
                let u = (mu / 16.0 - 1.5 / 16.0) / 2.0;
                0.3 + 3.0 * u * u * 16.0
            })
            .collect();
        let mu_time = linspace(0.0, 1.0, 10);
        let gamma_time = mu_time
            .iter()
            .map(|mu| {
                let u = (mu - 0.5) / 2.0;
                (0.3 + 2.0 * u * u) / 10f64.sqrt()
            })
            .collect();
        KernelConfig {
            mu_dist,
            gamma_dist,
            mu_time,
            gamma_time,
        }
    }

    /// Number of distance kernels K.
    #[must_use]
    pub fn n_dist(&self) -> usize {
        self.mu_dist.len()
    }

    /// Number of time kernels R.
    #[must_use]
    pub fn n_time(&self) -> usize {
        self.mu_time.len()
    }

    /// Checks sizes, bounds and finiteness.
    pub fn validate(&self) -> Result<()> {
        let (k, r) = (self.n_dist(), self.n_time());
        if k == 0 || k > MAX_DIST_KERNELS {
            return Err(Error::invalid(format!(
                "number of distance kernels must be 1..={MAX_DIST_KERNELS}, got {k}"
            )));
        }
        if r == 0 || r > MAX_TIME_KERNELS {
            return Err(Error::invalid(format!(
                "number of time kernels must be 1..={MAX_TIME_KERNELS}, got {r}"
            )));
        }
        if self.gamma_dist.len() != k {
            return Err(Error::size("gamma_dist", k, self.gamma_dist.len()));
        }
        if self.gamma_time.len() != r {
            return Err(Error::size("gamma_time", r, self.gamma_time.len()));
        }
        for (name, values) in [("mu_dist", &self.mu_dist), ("mu_time", &self.mu_time)] {
            crate::error::check_finite(values, name)?;
        }
        for (name, values) in [
            ("gamma_dist", &self.gamma_dist),
            ("gamma_time", &self.gamma_time),
        ] {
            if let Some(g) = values.iter().find(|g| !(g.is_finite() && **g > 0.0)) {
                return Err(Error::invalid(format!(
                    "{name} must be positive and finite, found {g}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_have_the_paper_sizes() {
        for c in [KernelConfig::double_well(), KernelConfig::lennard_jones()] {
            c.validate().unwrap();
            assert_eq!((c.n_dist(), c.n_time()), (50, 10));
        }
        let dw = KernelConfig::double_well();
        assert_eq!(dw.mu_dist[49], 8.0);
        assert!((dw.mu_dist[1] - 8.0 / 49.0).abs() < 1e-15);
        let lj = KernelConfig::lennard_jones();
        // m = 1.5 gives the smallest centre, 0; the largest is at m = 16.
        let u: f64 = (1.0 - 1.5 / 16.0) / 2.0;
        assert!((lj.mu_dist[49] - 32.0 * u * u).abs() < 1e-12);
        assert!(lj.mu_dist.windows(2).all(|w| w[0] <= w[1]));
        assert!((lj.gamma_time[0] - (0.3 + 2.0 * 0.0625) / 10f64.sqrt()).abs() < 1e-15);
    }

    #[test]
    fn validation_catches_bad_configs() {
        let mut c = KernelConfig::double_well();
        c.gamma_dist[3] = 0.0;
        assert!(c.validate().is_err());
        let mut c = KernelConfig::double_well();
        c.gamma_time.pop();
        assert!(c.validate().is_err());
        let mut c = KernelConfig::double_well();
        c.mu_dist[0] = f64::NAN;
        assert!(c.validate().is_err());
    }
}
