//! The prior: an isotropic Gaussian on the centre-of-mass-free subspace U.
//!
//! Sampling draws `z ~ N(0, σ²I)` in R^(N·D) and subtracts the particle mean, which is exactly the
//! orthogonal projection onto U, so the result is isotropic with variance σ² on U. The density is
//! normalised on U (dimension (N−1)·D), and that constant is part of every reported log q.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};
use crate::geometry::{Layout, remove_center_of_mass};

/// Centre-of-mass-free isotropic Gaussian with standard deviation `sigma`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prior {
    layout: Layout,
    sigma: f64,
}

impl Prior {
    /// A prior for `layout` with standard deviation `sigma > 0`.
    pub fn new(layout: Layout, sigma: f64) -> Result<Self> {
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(Error::invalid(format!(
                "prior sigma must be positive and finite, got {sigma}"
            )));
        }
        Ok(Prior { layout, sigma })
    }

    #[must_use]
    pub fn layout(&self) -> Layout {
        self.layout
    }

    #[must_use]
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// Draws one CoM-free configuration into `z` (length N·D).
    pub fn sample_into<R: Rng + ?Sized>(&self, rng: &mut R, z: &mut [f64]) {
        for zi in z.iter_mut() {
            let e: f64 = StandardNormal.sample(rng);
            *zi = self.sigma * e;
        }
        remove_center_of_mass(z, self.layout.dim);
    }

    /// `log ρ(z) = −|z|²/(2σ²) − ((N−1)D/2)·log(2πσ²)` for CoM-free `z`.
    ///
    /// The CoM is projected out of the norm first (without touching `z`), so a `z` that carries
    /// round-off CoM from an inverse integration is still evaluated on U.
    #[must_use]
    pub fn log_density(&self, z: &[f64]) -> f64 {
        let dim = self.layout.dim;
        let mut mean = [0.0; crate::geometry::MAX_DIM];
        crate::geometry::center_of_mass_into(z, dim, &mut mean[..dim]);
        // |z − z̄|² summed directly: the one-pass |z|² − N|z̄|² cancels catastrophically for a
        // configuration far from the origin (and overflows to ∞ − ∞ beyond 1e154).
        let norm_sq: f64 = z
            .chunks_exact(dim)
            .map(|p| {
                p.iter()
                    .zip(&mean)
                    .map(|(a, m)| (a - m) * (a - m))
                    .sum::<f64>()
            })
            .sum();
        let var = self.sigma * self.sigma;
        -norm_sq / (2.0 * var)
            - 0.5 * self.layout.com_free_dim() as f64 * (2.0 * std::f64::consts::PI * var).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn samples_are_com_free_with_variance_sigma_squared_on_u() {
        let layout = Layout::new(4, 2).unwrap();
        let prior = Prior::new(layout, 1.5).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut z = vec![0.0; 8];
        let n = 20_000;
        let mut mean_sq = 0.0;
        for _ in 0..n {
            prior.sample_into(&mut rng, &mut z);
            let sx: f64 = z.iter().step_by(2).sum();
            assert!(sx.abs() < 1e-12);
            mean_sq += z.iter().map(|v| v * v).sum::<f64>();
        }
        mean_sq /= n as f64;
        // E|z|² = (N−1)·D·σ² = 6 · 2.25
        let expected = 6.0 * 2.25;
        assert!((mean_sq - expected).abs() < 0.05 * expected, "{mean_sq}");
    }

    #[test]
    fn log_density_of_origin_is_the_normaliser_and_ignores_com() {
        let layout = Layout::new(3, 2).unwrap();
        let prior = Prior::new(layout, 1.0).unwrap();
        let expected = -2.0 * (2.0 * std::f64::consts::PI).ln();
        assert!((prior.log_density(&[0.0; 6]) - expected).abs() < 1e-14);
        let shifted = [1.0, 2.0, 1.0, 2.0, 1.0, 2.0];
        assert!((prior.log_density(&shifted) - expected).abs() < 1e-13);
        assert!(Prior::new(layout, 0.0).is_err());
        assert!(Prior::new(layout, f64::NAN).is_err());
    }
}
