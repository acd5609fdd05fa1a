//! The dense (non-equivariant) baseline family: exact Jacobian, divergence, divergence
//! gradient and reverse pass (of the velocity and of the divergence) against finite
//! differences; the symmetries it keeps (translations, the centre of mass) and the ones it
//! does not (permutations, rotations) as properties; its Lipschitz bound and the bound's
//! gradient; and the family end to end (model files, exact-discrete densities, thread counts).

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::*;
use eqflow::Flow;
use eqflow::field::dense::{DenseConfig, DenseField, MAX_DENSE_PARTICLES};
use eqflow::field::{Cotangent, FieldFamily, TrainableField, VectorField};
use eqflow::geometry::Layout;
use eqflow::integrate::Integrator;
use eqflow::prior::Prior;
use rand::RngExt;

/// A small config, so that finite differences over every parameter stay quick.
fn small() -> DenseConfig {
    DenseConfig {
        n_hidden: 7,
        n_time: 3,
        length_scale: 1.5,
    }
}

/// A field whose parameters are all clearly non-zero (the output biases and the second layer
/// too, which the initialisation sets to zero or small), so that no term of a derivative hides
/// behind a zero.
fn random_dense(n: usize, dim: usize, config: DenseConfig, seed: u64) -> DenseField {
    let layout = Layout::new(n, dim).unwrap();
    let base = DenseField::initialise(layout, config.clone(), seed).unwrap();
    let mut r = rng(seed ^ 0xde5e);
    let p: Vec<f64> = base
        .params()
        .iter()
        .map(|v| v + r.random_range(-0.5..0.5))
        .collect();
    DenseField::new(layout, config, p).unwrap()
}

fn cases() -> Vec<(&'static str, DenseField, f64)> {
    vec![
        ("dw4 small", random_dense(4, 2, small(), 1), 1.5),
        ("lj5 small", random_dense(5, 3, small(), 2), 1.0),
        (
            "dw4 preset",
            random_dense(4, 2, DenseConfig::double_well(), 3),
            1.5,
        ),
        (
            "lj13 preset",
            random_dense(13, 3, DenseConfig::lennard_jones(), 4),
            1.2,
        ),
    ]
}

#[test]
fn jacobian_and_divergence_match_finite_differences() {
    let mut r = rng(5);
    for (name, field, spread) in cases() {
        families::check_jacobian_and_divergence(name, &field, spread, &mut r);
    }
}

#[test]
fn divergence_gradient_matches_finite_differences() {
    let mut r = rng(15);
    for (name, field, spread) in cases() {
        let n = field.state_len();
        for t in [0.0, 0.55, 1.0] {
            let x = random_config(&mut r, n, spread);
            let (mut v, mut jac, mut g) = (vec![0.0; n], vec![0.0; n * n], vec![0.0; n]);
            let div = field
                .velocity_jacobian_divgrad_into(&x, t, &mut v, &mut jac, &mut g)
                .unwrap();
            let (v0, jac0, div0) = families::jacobian_of(&field, &x, t);
            assert_eq!(
                (v, jac, div.to_bits()),
                (v0, jac0, div0.to_bits()),
                "{name}"
            );
            let div_at = |y: &[f64]| {
                let mut w = vec![0.0; n];
                field.velocity_into(y, t, &mut w)
            };
            let fd = fd_jacobian(|y| vec![div_at(y)], &x, 1e-5);
            let scale = g.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let err = max_abs_diff(&g, &fd);
            assert!(err < 1e-7 * scale, "{name} t={t}: ∂div/∂x error {err}");
        }
    }
}

/// Translation invariance and CoM conservation hold; permutation and rotation equivariance do
/// not (by a wide margin for generic parameters), so the family is described honestly.
#[test]
fn translations_and_the_centre_of_mass_are_kept_but_not_permutations_or_rotations() {
    let mut r = rng(6);
    for (name, field, spread) in cases() {
        let layout = field.layout();
        let (n_p, dim) = (layout.n_particles, layout.dim);
        for _ in 0..4 {
            let t = r.random_range(0.0..1.0);
            let x = random_config(&mut r, layout.len(), spread);
            let (v, jac, div) = families::jacobian_of(&field, &x, t);
            let vmax = v.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let tol = 1e-12 * vmax * layout.len() as f64;
            for c in 0..dim {
                let s: f64 = v.iter().skip(c).step_by(dim).sum();
                assert!(s.abs() < tol, "{name}: Σ v = {s}");
                // The Jacobian maps into the CoM-free subspace and ignores CoM shifts.
                let n = layout.len();
                for b in 0..n {
                    let col: f64 = (0..n_p).map(|i| jac[(i * dim + c) * n + b]).sum();
                    let row: f64 = (0..n_p).map(|i| jac[b * n + i * dim + c]).sum();
                    assert!(col.abs() < tol && row.abs() < tol, "{name}: {col} {row}");
                }
            }
            let shift: Vec<f64> = (0..dim).map(|_| r.random_range(-3.0..3.0)).collect();
            let xs: Vec<f64> = x
                .iter()
                .enumerate()
                .map(|(i, v)| v + shift[i % dim])
                .collect();
            let (vs, _, divs) = families::jacobian_of(&field, &xs, t);
            assert!(max_abs_diff(&vs, &v) < 1e-10 * vmax, "{name}: translation");
            assert!((divs - div).abs() < 1e-10 * div.abs().max(1.0), "{name}");
            // Swapping two particles: the field is not permutation equivariant.
            let mut perm: Vec<usize> = (0..n_p).collect();
            perm.swap(0, 1);
            let vp = velocity(&field, &permute(&x, dim, &perm), t);
            let broken = max_abs_diff(&vp, &permute(&v, dim, &perm));
            assert!(
                broken > 1e-3 * vmax,
                "{name}: permutation error only {broken}"
            );
            // A rotation (and a reflection): not O(D) equivariant either.
            for reflect in [false, true] {
                let q = random_orthogonal(&mut r, dim, reflect);
                let vq = velocity(&field, &rotate(&x, dim, &q), t);
                let broken = max_abs_diff(&vq, &rotate(&v, dim, &q));
                assert!(broken > 1e-3 * vmax, "{name}: O(D) error only {broken}");
            }
        }
    }
}

/// `v̄·v + δ·div` at `x`, `t`.
fn scalar_loss(field: &DenseField, x: &[f64], t: f64, v_bar: &[f64], delta: f64) -> f64 {
    let mut v = vec![0.0; x.len()];
    let div = field.velocity_into(x, t, &mut v);
    v.iter().zip(v_bar).map(|(a, b)| a * b).sum::<f64>() + delta * div
}

/// The reverse pass's `(x̄, θ̄)` at `x`, `t` with cotangents `v̄`, `δ`.
fn reverse(
    field: &DenseField,
    x: &[f64],
    t: f64,
    v_bar: &[f64],
    delta: f64,
) -> (Vec<f64>, Vec<f64>) {
    let n = x.len();
    let point = field.time_point(t);
    let mut x_bar = vec![0.0; n];
    let mut adjoint = Vec::new();
    let mut scratch = field.new_scratch();
    field.adjoint_reset(&mut adjoint, 2);
    let cot = Cotangent {
        v: v_bar,
        div: delta,
    };
    field.vjp_at(x, &point, 1, cot, &mut x_bar, &mut adjoint, &mut scratch);
    let mut theta_bar = vec![0.0; field.params().len()];
    field.adjoint_finish(
        &[field.time_point(0.1), point],
        &mut adjoint,
        &mut theta_bar,
    );
    (x_bar, theta_bar)
}

#[test]
fn reverse_pass_matches_finite_differences_in_x_and_every_parameter() {
    let mut r = rng(7);
    for (name, field, spread) in cases() {
        let n = field.layout().len();
        let t = 0.63;
        let x = random_config(&mut r, n, spread);
        let v_bar: Vec<f64> = (0..n).map(|_| r.random_range(-1.0..1.0)).collect();
        for delta in [0.0, 0.7, -1.3] {
            let (x_bar, theta_bar) = reverse(&field, &x, t, &v_bar, delta);
            if delta == 0.0 {
                // x̄ = Jᵀ v̄ exactly (up to round-off).
                let (_, jac, _) = families::jacobian_of(&field, &x, t);
                let jt_v: Vec<f64> = (0..n)
                    .map(|b| (0..n).map(|a| jac[a * n + b] * v_bar[a]).sum())
                    .collect();
                assert!(max_abs_diff(&x_bar, &jt_v) < 1e-10, "{name}: x̄");
            }
            let loss = |f: &DenseField, y: &[f64]| scalar_loss(f, y, t, &v_bar, delta);
            families::assert_gradients(
                &format!("{name} δ={delta}"),
                &field,
                &x,
                loss,
                &x_bar,
                &theta_bar,
            );
        }
    }
}

#[test]
fn lipschitz_bound_dominates_the_jacobian() {
    let mut r = rng(8);
    for (name, field, _) in cases() {
        families::check_lipschitz_bound(name, &field, &mut r);
    }
}

/// With a single hidden unit the Jacobian is `s(a)·B Aᵀ`, rank one, with `s(0) = 1`: at a
/// configuration where the unit's pre-activation is 0 the bound `|A||B|` is attained, so it is
/// tight, not just valid.
#[test]
fn lipschitz_bound_is_attained_by_one_hidden_unit() {
    let config = DenseConfig {
        n_hidden: 1,
        ..small()
    };
    let field = random_dense(3, 2, config.clone(), 21);
    let (n, r) = (field.state_len(), config.n_time);
    let t = 0.3;
    let p = field.params();
    // A = P w1 / ℓ (w1 is the first n parameters); a = A·x + b1·τ(t).
    let mut a_row = p[..n].to_vec();
    for c in 0..2 {
        let mean = a_row.iter().skip(c).step_by(2).sum::<f64>() / 3.0;
        a_row.iter_mut().skip(c).step_by(2).for_each(|v| *v -= mean);
    }
    a_row.iter_mut().for_each(|v| *v /= config.length_scale);
    let tau = field.time_point(t).tau;
    let a0: f64 = p[n..n + r].iter().zip(&tau[..r]).map(|(w, t)| w * t).sum();
    let norm2: f64 = a_row.iter().map(|v| v * v).sum();
    let x: Vec<f64> = a_row.iter().map(|v| -a0 * v / norm2).collect();
    let (_, jac, _) = families::jacobian_of(&field, &x, t);
    let norm = nalgebra::DMatrix::from_row_slice(n, n, &jac)
        .singular_values()
        .max();
    let bound = field.lipschitz_bound(t);
    assert!(
        (norm - bound).abs() < 1e-12 * bound,
        "‖J‖ {norm}, bound {bound}"
    );
}

/// The bound's gradient against central differences in every parameter, the bounds it
/// returns, and refusals of wrong sizes.
#[test]
fn lipschitz_bound_gradient_matches_finite_differences() {
    let times = [0.0, 0.37, 1.0];
    for (name, field, _) in cases() {
        let (bounds_bar, max_grad, _) =
            families::check_lipschitz_bound_gradient(name, &field, &times);
        assert!(max_grad > 0.1, "{name}: gradient {max_grad}");
        let mut grad = vec![0.0; field.params().len()];
        assert!(
            field
                .lipschitz_bounds_vjp(&times, &bounds_bar[1..], &mut grad)
                .is_err()
        );
        assert!(
            field
                .lipschitz_bounds_vjp(&times, &bounds_bar, &mut grad[1..])
                .is_err()
        );
    }
}

#[test]
fn invalid_settings_and_parameters_are_refused() {
    let layout = Layout::new(4, 2).unwrap();
    for bad in [
        DenseConfig {
            n_hidden: 0,
            ..small()
        },
        DenseConfig {
            n_hidden: 100_000,
            ..small()
        },
        DenseConfig {
            n_time: 1,
            ..small()
        },
        DenseConfig {
            length_scale: f64::NAN,
            ..small()
        },
        DenseConfig {
            length_scale: 0.0,
            ..small()
        },
    ] {
        assert!(DenseField::initialise(layout, bad, 0).is_err());
    }
    let mut field = DenseField::initialise(layout, DenseConfig::double_well(), 0).unwrap();
    let before = field.clone();
    let mut p = field.params().to_vec();
    p[3] = f64::NAN;
    assert!(field.set_params(&p).is_err());
    p[3] = 1e300;
    assert!(field.set_params(&p).is_err());
    assert!(field.set_params(&p[1..]).is_err());
    assert_eq!(
        field, before,
        "a failed set_params leaves the field unchanged"
    );
    let big = Layout::new(MAX_DENSE_PARTICLES + 1, 3).unwrap();
    let err = DenseField::initialise(big, small(), 0).unwrap_err();
    assert!(err.to_string().contains("particles"), "{err}");
}

/// The parameter layout: the blocks tile the flat vector with the documented sizes, and the
/// DW-4 preset has the documented count.
#[test]
fn parameter_blocks_have_the_documented_sizes() {
    let layout = Layout::new(4, 2).unwrap();
    let field = DenseField::initialise(layout, DenseConfig::double_well(), 0).unwrap();
    assert_eq!(field.params().len(), 1456);
    let blocks = field.param_blocks();
    let sizes: Vec<(&str, usize)> = blocks.iter().map(|(n, r)| (*n, r.len())).collect();
    assert_eq!(
        sizes,
        vec![
            ("w1", 64 * 8),
            ("b1", 64 * 6),
            ("w2", 8 * 64),
            ("b2", 8 * 6)
        ]
    );
    let lj = Layout::new(13, 3).unwrap();
    let field = DenseField::initialise(lj, DenseConfig::lennard_jones(), 0).unwrap();
    assert_eq!(field.params().len(), 10_986);
}

fn dense_flow(seed: u64) -> Flow {
    let layout = Layout::new(4, 2).unwrap();
    let field = random_dense(4, 2, DenseConfig::double_well(), seed);
    let mut flow = Flow::from_parts(
        Prior::new(layout, 1.0).unwrap(),
        field,
        Integrator::default(),
    )
    .unwrap();
    // Strict mode off: these strong random fields (not certified at 20 steps) test the map's
    // exactness and symmetries where the step certificate cannot vouch for it.
    flow.set_require_certificate(false);
    flow
}

#[test]
fn model_files_round_trip_and_densities_are_exact() {
    families::check_model_round_trip(&dense_flow(9), "dense");
}

#[test]
fn thread_count_does_not_change_a_bit() {
    families::check_thread_independence(&dense_flow(10));
}

/// The density is not permutation invariant (the flow is not equivariant) but is invariant to
/// the centre of mass of the input, as for every family.
#[test]
fn log_density_ignores_the_centre_of_mass_but_not_the_labels() {
    let flow = dense_flow(11);
    let (x, _) = flow.sample(12, 4).unwrap();
    let log_q = flow.log_density(&x).unwrap();
    let shifted: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, v)| v + if i % 2 == 0 { 1.7 } else { -0.6 })
        .collect();
    let log_q_shifted = flow.log_density(&shifted).unwrap();
    assert!(max_abs_diff(&log_q, &log_q_shifted) < 1e-9);
    let swapped: Vec<f64> = x
        .chunks_exact(8)
        .flat_map(|c| permute(c, 2, &[1, 0, 2, 3]))
        .collect();
    let log_q_swapped = flow.log_density(&swapped).unwrap();
    assert!(max_abs_diff(&log_q, &log_q_swapped) > 1e-3);
}

/// A field with one deliberate error, to show that the shared checks above catch it.
struct Mutated {
    field: DenseField,
    /// Scale of the divergence (1 is the field itself).
    div_scale: f64,
    /// Scale of one off-diagonal Jacobian entry.
    jac_scale: f64,
}

impl VectorField for Mutated {
    fn state_len(&self) -> usize {
        self.field.state_len()
    }
    fn velocity_into(&self, x: &[f64], t: f64, v: &mut [f64]) -> f64 {
        self.field.velocity_into(x, t, v) * self.div_scale
    }
    fn velocity_jacobian_into(
        &self,
        x: &[f64],
        t: f64,
        v: &mut [f64],
        jacobian: &mut [f64],
    ) -> f64 {
        let div = self.field.velocity_jacobian_into(x, t, v, jacobian);
        jacobian[1] *= self.jac_scale;
        div * self.div_scale
    }
}

#[test]
fn the_checks_catch_a_divergence_or_jacobian_off_by_a_little() {
    let (_, field, spread) = cases().remove(0);
    for (div_scale, jac_scale) in [(1.0, 1.0), (0.999, 1.0), (1.0, 0.999)] {
        let mutated = Mutated {
            field: field.clone(),
            div_scale,
            jac_scale,
        };
        let caught = catch_unwind(AssertUnwindSafe(|| {
            families::check_jacobian_and_divergence("mutated", &mutated, spread, &mut rng(5));
        }))
        .is_err();
        assert_eq!(
            caught,
            (div_scale, jac_scale) != (1.0, 1.0),
            "div ×{div_scale}, J ×{jac_scale}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The Hutchinson estimate (training only): its value, its mean, its reverse pass.

/// `v(x, t)` and the probe estimate `εᵀ(∂v/∂x)ε` by the family's probe pass.
fn probed(field: &DenseField, x: &[f64], t: f64, eps: &[f64]) -> (Vec<f64>, f64) {
    let mut v = vec![0.0; x.len()];
    let est = field.probe_velocity_at_into(x, &field.time_point(t), eps, &mut v);
    (v, est)
}

#[test]
fn probe_estimate_is_the_quadratic_form_of_the_jacobian_and_averages_to_the_divergence() {
    let mut r = rng(21);
    for (name, field, spread) in cases() {
        let n = field.layout().len();
        let t = 0.41;
        let x = random_config(&mut r, n, spread);
        let (v_exact, jac, div) = families::jacobian_of(&field, &x, t);
        for _ in 0..3 {
            let eps: Vec<f64> = (0..n).map(|_| r.random_range(-2.0..2.0)).collect();
            let (v, est) = probed(&field, &x, t, &eps);
            assert_eq!(v, v_exact, "{name}: the same velocity bits");
            let quad: f64 = (0..n)
                .map(|a| {
                    (0..n)
                        .map(|b| eps[a] * jac[a * n + b] * eps[b])
                        .sum::<f64>()
                })
                .sum();
            assert!(
                (est - quad).abs() < 1e-10 * (1.0 + quad.abs()),
                "{name}: {est} vs {quad}"
            );
        }
        // Over all 2ⁿ Rademacher sign patterns the mean is the trace exactly (DW-4: 256).
        if n <= 10 {
            let mut sum = 0.0;
            for bits in 0u32..1 << n {
                let eps: Vec<f64> = (0..n)
                    .map(|a| if bits >> a & 1 == 1 { 1.0 } else { -1.0 })
                    .collect();
                sum += probed(&field, &x, t, &eps).1;
            }
            let mean = sum / f64::from(1u32 << n);
            assert!(
                (mean - div).abs() < 1e-10 * (1.0 + div.abs()),
                "{name}: {mean} vs {div}"
            );
        }
    }
}

/// `v̄·v + δ·εᵀ(∂v/∂x)ε` at `x`, `t`.
fn probe_loss(
    field: &DenseField,
    x: &[f64],
    t: f64,
    eps: &[f64],
    v_bar: &[f64],
    delta: f64,
) -> f64 {
    let (v, est) = probed(field, x, t, eps);
    v.iter().zip(v_bar).map(|(a, b)| a * b).sum::<f64>() + delta * est
}

#[test]
fn probe_reverse_pass_matches_finite_differences_in_x_and_every_parameter() {
    let mut r = rng(22);
    for (name, field, spread) in cases().into_iter().take(3) {
        let n = field.layout().len();
        let t = 0.27;
        let x = random_config(&mut r, n, spread);
        let eps: Vec<f64> = (0..n).map(|_| r.random_range(-1.5..1.5)).collect();
        let v_bar: Vec<f64> = (0..n).map(|_| r.random_range(-1.0..1.0)).collect();
        let delta = 0.9;
        let point = field.time_point(t);
        let mut x_bar = vec![0.0; n];
        let mut adjoint = Vec::new();
        let mut scratch = field.new_scratch();
        field.adjoint_reset(&mut adjoint, 1);
        let cot = Cotangent {
            v: &v_bar,
            div: delta,
        };
        field
            .probe_vjp_at(
                &x,
                &point,
                0,
                &eps,
                cot,
                &mut x_bar,
                &mut adjoint,
                &mut scratch,
            )
            .unwrap();
        let mut theta_bar = vec![0.0; field.params().len()];
        field.adjoint_finish(&[point], &mut adjoint, &mut theta_bar);
        let loss = |f: &DenseField, y: &[f64]| probe_loss(f, y, t, &eps, &v_bar, delta);
        families::assert_gradients(name, &field, &x, loss, &x_bar, &theta_bar);
    }
}
