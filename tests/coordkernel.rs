//! The coordkernel field family: exact Jacobian, divergence and reverse pass (of the velocity
//! and of the divergence) against finite differences, its symmetries as properties, its
//! Lipschitz bound against the Jacobian's spectral norm, and the family end to end (model
//! files, exact-discrete densities, thread counts, maximum-likelihood training).

mod common;

use common::*;
use eqflow::Flow;
use eqflow::field::coordkernel::{CoordKernelConfig, CoordKernelField};
use eqflow::field::{Cotangent, FieldFamily, TrainableField, VectorField};
use eqflow::geometry::Layout;
use eqflow::integrate::Integrator;
use eqflow::prior::Prior;
use rand::RngExt;

/// A small config, so that finite differences over every parameter stay quick.
fn small(rbf_min: f64, rbf_max: f64) -> CoordKernelConfig {
    CoordKernelConfig {
        n_rbf: 6,
        rbf_min,
        rbf_max,
        n_time: 3,
        n_shells: 2,
        shell_min: rbf_min + 0.3,
        shell_max: 0.5 * (rbf_min + rbf_max),
    }
}

/// A field whose parameters are all clearly non-zero (the coordination blocks too), so that no
/// term of a derivative hides behind a zero.
fn random_coordkernel(
    n: usize,
    dim: usize,
    config: CoordKernelConfig,
    seed: u64,
) -> CoordKernelField {
    let layout = Layout::new(n, dim).unwrap();
    let base = CoordKernelField::initialise(layout, config.clone(), seed).unwrap();
    let mut r = rng(seed ^ 0xe17);
    let p: Vec<f64> = base
        .params()
        .iter()
        .map(|v| v + r.random_range(-0.4..0.4))
        .collect();
    CoordKernelField::new(layout, config, p).unwrap()
}

fn cases() -> Vec<(&'static str, CoordKernelField, f64)> {
    vec![
        (
            "dw4 small",
            random_coordkernel(4, 2, small(0.0, 4.0), 1),
            1.5,
        ),
        (
            "lj5 small",
            random_coordkernel(5, 3, small(0.6, 3.0), 2),
            1.0,
        ),
        (
            "dw4 preset",
            random_coordkernel(4, 2, CoordKernelConfig::double_well(), 3),
            1.5,
        ),
        (
            "lj13 preset",
            random_coordkernel(13, 3, CoordKernelConfig::lennard_jones(), 4),
            1.2,
        ),
    ]
}

fn jacobian(field: &dyn VectorField, x: &[f64], t: f64) -> (Vec<f64>, Vec<f64>, f64) {
    families::jacobian_of(field, x, t)
}

#[test]
fn jacobian_and_divergence_match_finite_differences() {
    let mut r = rng(5);
    for (name, field, spread) in cases() {
        families::check_jacobian_and_divergence(name, &field, spread, &mut r);
    }
}

#[test]
fn symmetries_hold_as_properties() {
    let mut r = rng(6);
    for (name, field, spread) in cases() {
        families::check_symmetries(name, &field, field.layout(), spread, &mut r);
    }
}

/// `v̄·v + δ·div` at `x`, `t`.
fn scalar_loss(field: &CoordKernelField, x: &[f64], t: f64, v_bar: &[f64], delta: f64) -> f64 {
    let mut v = vec![0.0; x.len()];
    let div = field.velocity_into(x, t, &mut v);
    v.iter().zip(v_bar).map(|(a, b)| a * b).sum::<f64>() + delta * div
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
            let point = field.time_point(t);
            let mut x_bar = vec![0.0; n];
            let mut adjoint = Vec::new();
            let mut scratch = field.new_scratch();
            // Two time points, the evaluation at the second: θ̄ must come from its own τ.
            field.adjoint_reset(&mut adjoint, 2);
            let cot = Cotangent {
                v: &v_bar,
                div: delta,
            };
            field.vjp_at(&x, &point, 1, cot, &mut x_bar, &mut adjoint, &mut scratch);
            let mut theta_bar = vec![0.0; field.params().len()];
            field.adjoint_finish(
                &[field.time_point(0.1), point],
                &mut adjoint,
                &mut theta_bar,
            );
            if delta == 0.0 {
                // x̄ = Jᵀ v̄ exactly (up to round-off).
                let (_, jac, _) = jacobian(&field, &x, t);
                let jt_v: Vec<f64> = (0..n)
                    .map(|b| (0..n).map(|a| jac[a * n + b] * v_bar[a]).sum())
                    .collect();
                assert!(max_abs_diff(&x_bar, &jt_v) < 1e-10, "{name}: x̄");
            }
            // x̄ and θ̄ against central differences of the scalar.
            families::assert_gradients(
                &format!("{name} δ={delta}"),
                &field,
                &x,
                |f: &CoordKernelField, y: &[f64]| scalar_loss(f, y, t, &v_bar, delta),
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

#[test]
fn invalid_settings_and_parameters_are_refused() {
    let layout = Layout::new(4, 2).unwrap();
    let mut bad = CoordKernelConfig::double_well();
    bad.n_shells = 1;
    assert!(CoordKernelField::initialise(layout, bad, 0).is_err());
    let mut bad = CoordKernelConfig::double_well();
    bad.rbf_max = bad.rbf_min;
    assert!(CoordKernelField::initialise(layout, bad, 0).is_err());
    let mut bad = CoordKernelConfig::double_well();
    bad.shell_min = f64::NAN;
    assert!(CoordKernelField::initialise(layout, bad, 0).is_err());
    let mut bad = CoordKernelConfig::double_well();
    bad.n_rbf = 10_000;
    assert!(CoordKernelField::initialise(layout, bad, 0).is_err());
    let mut field =
        CoordKernelField::initialise(layout, CoordKernelConfig::double_well(), 0).unwrap();
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
}

fn coordkernel_flow(seed: u64) -> Flow {
    let layout = Layout::new(4, 2).unwrap();
    let field = random_coordkernel(4, 2, CoordKernelConfig::double_well(), seed);
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
    families::check_model_round_trip(&coordkernel_flow(9), "coordkernel");
}

#[test]
fn thread_count_does_not_change_a_bit() {
    families::check_thread_independence(&coordkernel_flow(10));
}

#[test]
fn particle_counts_beyond_the_family_limit_are_refused() {
    use eqflow::field::coordkernel::MAX_COORDKERNEL_PARTICLES;
    let ok = Layout::new(MAX_COORDKERNEL_PARTICLES, 3).unwrap();
    assert!(CoordKernelField::initialise(ok, CoordKernelConfig::lennard_jones(), 0).is_ok());
    let big = Layout::new(MAX_COORDKERNEL_PARTICLES + 1, 3).unwrap();
    let err = CoordKernelField::initialise(big, CoordKernelConfig::lennard_jones(), 0).unwrap_err();
    assert!(err.to_string().contains("particles"), "{err}");
}

/// The bound's gradient against central differences in every parameter (the bound is linear
/// in V between sign changes of the folded coefficients M(t), far away at random parameters),
/// the bounds it returns, and the subgradient 0 where a row of M(t) vanishes.
#[test]
fn lipschitz_bound_gradient_matches_finite_differences() {
    use eqflow::integrate::certificate_times;
    let mut times = certificate_times(3);
    times.extend([0.37, 0.81]);
    for (name, field, _) in cases() {
        let (bounds_bar, max_grad, scale) =
            families::check_lipschitz_bound_gradient(name, &field, &times);
        assert!(
            max_grad > 1.0,
            "{name}: gradient {max_grad} (bound {scale})"
        );
        // A field whose first row of V is zero: M_0k(t) = 0 at every time, subgradient 0.
        let p = field.params();
        let r_len = field.config().n_time;
        let mut q = p.to_vec();
        q[..r_len].iter_mut().for_each(|v| *v = 0.0);
        let mut zeroed = field.clone();
        zeroed.set_params(&q).unwrap();
        let mut grad = vec![0.0; p.len()];
        zeroed
            .lipschitz_bounds_vjp(&times, &bounds_bar, &mut grad)
            .unwrap();
        assert!(grad[..r_len].iter().all(|g| *g == 0.0), "{name}: {grad:?}");
        assert!(grad[r_len..2 * r_len].iter().any(|g| *g != 0.0), "{name}");
        // Wrong sizes are refused.
        assert!(
            field
                .lipschitz_bounds_vjp(&times, &bounds_bar[1..], &mut grad)
                .is_err()
        );
    }
}

/// The grid form (what a fixed-grid flow integrates) tabulates the radial coefficients and the
/// shells per stage time: its Jacobian and divergence are still the exact derivatives of the
/// field it integrates, and that field is the trained one to about 1e−6 of its scale.
#[test]
fn grid_form_is_close_to_the_field_and_differentiated_exactly() {
    let mut r = rng(12);
    let times = eqflow::integrate::rk4_stage_times(20);
    for (name, field, spread) in cases() {
        let grid = field.grid_dynamics(&times).unwrap();
        families::check_jacobian_and_divergence(name, grid.as_ref(), spread, &mut r);
        let n = field.state_len();
        let mut worst = 0.0f64;
        for &t in &times {
            let x = random_config(&mut r, n, spread);
            let (v, v_grid) = (velocity(&field, &x, t), velocity(grid.as_ref(), &x, t));
            let scale = v.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            worst = worst.max(max_abs_diff(&v, &v_grid) / scale);
        }
        assert!(worst < 1e-5, "{name}: grid form deviates by {worst:e}");
        // A tabulated field, not a copy of the exact one (this would pass vacuously otherwise).
        assert!(worst > 0.0, "{name}: grid form is the exact field");
        eprintln!("{name}: grid form relative deviation {worst:e}");
    }
}
