//! The Hutchinson trace estimator of a field's divergence, for the experiments that measure
//! what it costs in accuracy: `div v = E_ε[εᵀ (∂v/∂x) ε]` for probes with `E[εεᵀ] = I`.
//!
//! It lives here, in the reproduction command, and not in the library on purpose: every
//! density eqflow reports uses the exact divergence (DESIGN.md §1); this estimator, for any
//! family, exists only to show why (paper Fig. 3). (Training with the estimate, the paper's
//! recipe for its baseline, is the library's `Objective::HutchinsonLikelihood`, through the
//! dense family's closed-form probe pass; the probe distributions live in the library for it.)
//! The product `εᵀ ∂v/∂x` is the field family's exact reverse pass
//! ([`TrainableField::vjp_at`], one vector–Jacobian product, what an AD framework's single
//! backward pass gives), never a finite difference.
//!
//! It is generic over [`TrainableField`], so it serves the non-equivariant `dense` baseline
//! unchanged (the paper estimated its baseline's divergence this way during LJ-13 training,
//! §7.3); the test below checks it on that family against the closed-form divergence.

use eqflow::field::{Cotangent, TrainableField};

pub use eqflow::train::Probe;

/// One field's Hutchinson estimator with its reverse-pass buffers (one per thread).
pub struct Hutchinson<'a, F: TrainableField> {
    field: &'a F,
    adjoint: F::Adjoint,
    scratch: F::Scratch,
    x_bar: Vec<f64>,
}

impl<'a, F: TrainableField> Hutchinson<'a, F> {
    pub fn new(field: &'a F) -> Self {
        Hutchinson {
            field,
            adjoint: F::Adjoint::default(),
            scratch: field.new_scratch(),
            x_bar: vec![0.0; field.layout().len()],
        }
    }

    /// `εᵀ (∂v/∂x)(x, t) ε`: one unbiased estimate of `div v(x, t)` by one reverse pass. The
    /// time point is rebuilt per call so that its cost is counted like the closed form's,
    /// which folds the time basis on every evaluation too.
    pub fn estimate(&mut self, x: &[f64], t: f64, eps: &[f64]) -> f64 {
        let point = self.field.time_point(t);
        self.estimate_at(x, &point, eps)
    }

    /// As [`Hutchinson::estimate`] at a precomputed time point.
    pub fn estimate_at(&mut self, x: &[f64], point: &F::TimePoint, eps: &[f64]) -> f64 {
        self.x_bar.iter_mut().for_each(|v| *v = 0.0);
        // The parameter cotangent is accumulated too (the family's reverse pass does both);
        // it is discarded, as a CNF trained with Hutchinson would need it anyway.
        self.field.adjoint_reset(&mut self.adjoint, 1);
        self.field.vjp_at(
            x,
            point,
            0,
            Cotangent { v: eps, div: 0.0 },
            &mut self.x_bar,
            &mut self.adjoint,
            &mut self.scratch,
        );
        self.x_bar.iter().zip(eps).map(|(a, b)| a * b).sum()
    }

    /// The brute-force trace of an AD framework: `Σ_a e_aᵀ (∂v/∂x) e_a` by n reverse passes,
    /// one per unit cotangent `e_a` (`unit` is a buffer of length n). Exact, and n times the
    /// cost of [`Hutchinson::estimate`]: the baseline of paper Fig. 3c.
    pub fn reverse_mode_trace(&mut self, x: &[f64], t: f64, unit: &mut [f64]) -> f64 {
        let point = self.field.time_point(t);
        let mut trace = 0.0;
        for a in 0..unit.len() {
            unit.iter_mut().for_each(|v| *v = 0.0);
            unit[a] = 1.0;
            self.x_bar.iter_mut().for_each(|v| *v = 0.0);
            self.field.adjoint_reset(&mut self.adjoint, 1);
            self.field.vjp_at(
                x,
                &point,
                0,
                Cotangent { v: unit, div: 0.0 },
                &mut self.x_bar,
                &mut self.adjoint,
                &mut self.scratch,
            );
            trace += self.x_bar[a];
        }
        trace
    }
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use eqflow::field::VectorField;
    use eqflow::field::dense::{DenseConfig, DenseField};
    use eqflow::geometry::Layout;

    /// On the dense baseline: the reverse-mode trace is the closed-form divergence to
    /// round-off, and the mean of many estimates is within 5 standard errors of it (the
    /// standard error from the exact variance of [`Probe::variance`]), for both probes.
    #[test]
    fn estimates_the_dense_baselines_divergence_without_bias() {
        let layout = Layout::new(4, 2).unwrap();
        let field = DenseField::initialise(layout, DenseConfig::double_well(), 3).unwrap();
        let n = layout.len();
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        let x: Vec<f64> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        let t = 0.3;
        let mut v = vec![0.0; n];
        let mut jac = vec![0.0; n * n];
        let exact = field.velocity_jacobian_into(&x, t, &mut v, &mut jac);
        let mut hutch = Hutchinson::new(&field);
        let mut unit = vec![0.0; n];
        let trace = hutch.reverse_mode_trace(&x, t, &mut unit);
        assert!(
            (trace - exact).abs() < 1e-12 * exact.abs().max(1.0),
            "{trace} vs {exact}"
        );
        let n_probes = 20_000;
        let mut eps = vec![0.0; n];
        for probe in Probe::ALL {
            let var = probe.variance(&jac, n);
            assert!(var > 0.0);
            let mut sum = 0.0;
            for _ in 0..n_probes {
                probe.draw_into(&mut rng, &mut eps);
                sum += hutch.estimate(&x, t, &eps);
            }
            let mean = sum / n_probes as f64;
            let se = (var / n_probes as f64).sqrt();
            assert!(
                (mean - exact).abs() < 5.0 * se,
                "{}: mean {mean}, exact {exact}, standard error {se}",
                probe.name()
            );
        }
    }
}
