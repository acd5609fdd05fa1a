//! The envpair field family: exact Jacobian, divergence and reverse pass against finite
//! differences, its symmetries as properties, its Lipschitz bound against the Jacobian's
//! spectral norm, and the family end to end (model files, exact-discrete densities, flow-
//! matching training, the refusal of ML training).

mod common;

use common::*;
use eqflow::Flow;
use eqflow::field::envpair::{EnvPairConfig, EnvPairField};
use eqflow::field::{Cotangent, TrainableField, VectorField};
use eqflow::geometry::Layout;
use eqflow::integrate::Integrator;
use eqflow::prior::Prior;
use rand::RngExt;

/// A small config, so that finite differences over every parameter stay quick.
fn small(rbf_min: f64, rbf_max: f64) -> EnvPairConfig {
    EnvPairConfig {
        n_rbf: 6,
        rbf_min,
        rbf_max,
        n_time: 3,
        env_width: 3,
        message_hidden: 4,
        hidden: 5,
    }
}

/// A field whose parameters are all clearly non-zero (biases, tail and output layers too), so
/// that no term of a derivative hides behind a zero.
fn random_envpair(n: usize, dim: usize, config: EnvPairConfig, seed: u64) -> EnvPairField {
    let layout = Layout::new(n, dim).unwrap();
    let base = EnvPairField::initialise(layout, config.clone(), seed).unwrap();
    let mut r = rng(seed ^ 0xe17);
    let p: Vec<f64> = base
        .params()
        .iter()
        .map(|v| v + r.random_range(-0.4..0.4))
        .collect();
    EnvPairField::new(layout, config, p).unwrap()
}

fn cases() -> Vec<(&'static str, EnvPairField, f64)> {
    vec![
        ("dw4 small", random_envpair(4, 2, small(0.0, 4.0), 1), 1.5),
        ("lj5 small", random_envpair(5, 3, small(0.6, 3.0), 2), 1.0),
        (
            "dw4 preset",
            random_envpair(4, 2, EnvPairConfig::double_well(), 3),
            1.5,
        ),
        (
            "lj13 preset",
            random_envpair(13, 3, EnvPairConfig::lennard_jones(), 4),
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

#[test]
fn reverse_pass_matches_the_jacobian_and_parameter_differences() {
    let mut r = rng(7);
    for (name, field, spread) in cases().into_iter().take(2) {
        let n = field.layout().len();
        let t = 0.63;
        let x = random_config(&mut r, n, spread);
        let v_bar: Vec<f64> = (0..n).map(|_| r.random_range(-1.0..1.0)).collect();
        let point = field.time_point(t);
        let mut x_bar = vec![0.0; n];
        let mut adjoint = Vec::new();
        let mut scratch = field.new_scratch();
        field.adjoint_reset(&mut adjoint, 1);
        let cot = Cotangent {
            v: &v_bar,
            div: 0.0,
        };
        field.vjp_at(&x, &point, 0, cot, &mut x_bar, &mut adjoint, &mut scratch);
        let mut theta_bar = vec![0.0; field.params().len()];
        field.adjoint_finish(&[point], &mut adjoint, &mut theta_bar);
        // x̄ = Jᵀ v̄.
        let (_, jac, _) = jacobian(&field, &x, t);
        let jt_v: Vec<f64> = (0..n)
            .map(|b| (0..n).map(|a| jac[a * n + b] * v_bar[a]).sum())
            .collect();
        assert!(max_abs_diff(&x_bar, &jt_v) < 1e-10, "{name}: x̄");
        // θ̄ against central differences of v̄·v over every parameter.
        let loss = |p: &[f64]| {
            let mut f = field.clone();
            f.set_params(p).unwrap();
            let v = velocity(&f, &x, t);
            v.iter().zip(&v_bar).map(|(a, b)| a * b).sum::<f64>()
        };
        let p0 = field.params().to_vec();
        let h = 1e-6;
        let mut worst: f64 = 0.0;
        for i in 0..p0.len() {
            let mut p = p0.clone();
            p[i] = p0[i] + h;
            let up = loss(&p);
            p[i] = p0[i] - h;
            let down = loss(&p);
            let fd = (up - down) / (2.0 * h);
            worst = worst.max((fd - theta_bar[i]).abs() / (1.0 + fd.abs()));
        }
        assert!(worst < 1e-6, "{name}: θ̄ error {worst}");
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
    let mut bad = EnvPairConfig::double_well();
    bad.env_width = 0;
    assert!(EnvPairField::initialise(layout, bad, 0).is_err());
    let mut bad = EnvPairConfig::double_well();
    bad.rbf_max = bad.rbf_min;
    assert!(EnvPairField::initialise(layout, bad, 0).is_err());
    let mut bad = EnvPairConfig::double_well();
    bad.hidden = 10_000;
    assert!(EnvPairField::initialise(layout, bad, 0).is_err());
    let mut field = EnvPairField::initialise(layout, EnvPairConfig::double_well(), 0).unwrap();
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

fn envpair_flow(seed: u64) -> Flow {
    let layout = Layout::new(4, 2).unwrap();
    let field = random_envpair(4, 2, EnvPairConfig::double_well(), seed);
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
    families::check_model_round_trip(&envpair_flow(9), "envpair");
}

#[test]
fn thread_count_does_not_change_a_bit() {
    families::check_thread_independence(&envpair_flow(10));
}

#[test]
fn particle_counts_beyond_the_family_limit_are_refused() {
    use eqflow::field::envpair::MAX_ENVPAIR_PARTICLES;
    let ok = Layout::new(MAX_ENVPAIR_PARTICLES, 3).unwrap();
    assert!(EnvPairField::initialise(ok, EnvPairConfig::lennard_jones(), 0).is_ok());
    let big = Layout::new(MAX_ENVPAIR_PARTICLES + 1, 3).unwrap();
    let err = EnvPairField::initialise(big, EnvPairConfig::lennard_jones(), 0).unwrap_err();
    assert!(err.to_string().contains("particles"), "{err}");
}
