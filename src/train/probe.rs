//! The probe distributions of Hutchinson's trace estimator, `tr A = E_ε[εᵀ A ε]` for any ε
//! with `E[εεᵀ] = I`: what maximum-likelihood training with a stochastic divergence draws
//! ([`crate::train::Objective::HutchinsonLikelihood`], the paper's training of its
//! non-equivariant baseline, §7.3) and what `eqflow repro` measures against the exact
//! divergence. No density eqflow reports uses it (DESIGN.md §1).
//!
//! Variance of one estimate with `S = (A + Aᵀ)/2` (only the symmetric part enters `εᵀAε`):
//! Gaussian probes `2‖S‖_F²`, Rademacher probes `2(‖S‖_F² − Σ_a S_aa²)`.

use rand::{Rng, RngExt};
use rand_distr::{Distribution, StandardNormal};

/// The distribution of the probe vector ε.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// ε ~ N(0, I).
    Gaussian,
    /// ε_a = ±1 with probability ½ each (the smaller variance of the two).
    Rademacher,
}

impl Probe {
    pub const ALL: [Probe; 2] = [Probe::Gaussian, Probe::Rademacher];

    /// The name in CSV files and tables.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Probe::Gaussian => "gaussian",
            Probe::Rademacher => "rademacher",
        }
    }

    /// Fills `eps` with one probe drawn from `rng`.
    pub fn draw_into<R: Rng + ?Sized>(self, rng: &mut R, eps: &mut [f64]) {
        for e in eps.iter_mut() {
            *e = match self {
                Probe::Gaussian => StandardNormal.sample(rng),
                Probe::Rademacher => {
                    if rng.random::<bool>() {
                        1.0
                    } else {
                        -1.0
                    }
                }
            };
        }
    }

    /// The variance of one estimate, from the field's dense Jacobian `jacobian` (row-major
    /// n × n) at the point of the estimate.
    #[must_use]
    pub fn variance(self, jacobian: &[f64], n: usize) -> f64 {
        let (mut frob, mut diag) = (0.0, 0.0);
        for a in 0..n {
            for b in 0..n {
                let s = 0.5 * (jacobian[a * n + b] + jacobian[b * n + a]);
                frob += s * s;
            }
            diag += jacobian[a * n + a].powi(2);
        }
        match self {
            Probe::Gaussian => 2.0 * frob,
            Probe::Rademacher => 2.0 * (frob - diag),
        }
    }
}
