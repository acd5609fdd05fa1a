//! Training by the exact-discrete likelihood: the Jacobian reverse passes (kernel, coordkernel,
//! kernelcoord) and the exact-discrete ML loss and gradient, against central differences and
//! against the density the integrator computes for the same map.

mod common;

use common::*;
use eqflow::Species;
use eqflow::field::coordkernel::{CoordKernelConfig, CoordKernelField};
use eqflow::field::dense::{DenseConfig, DenseField};
use eqflow::field::kernelcoord::{KernelCoordConfig, KernelCoordField};
use eqflow::field::{FieldFamily, KernelConfig, KernelField, TrainableField, VectorField};
use eqflow::geometry::Layout;
use eqflow::integrate::{DensityMode, Integrator, Method, Workspace};
use eqflow::prior::Prior;
use eqflow::train::discrete_ml::{DiscreteMlWorkspace, discrete_ml_sample};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// Kernel fields with random parameters in every block: DW-4, LJ-13 and a two-species LJ-6.
fn cases() -> Vec<(&'static str, KernelField, f64)> {
    let species = Species::new(2, vec![0, 0, 0, 0, 1, 1]).unwrap();
    let base = KernelField::initialise_with_species(
        Layout::new(6, 3).unwrap(),
        KernelConfig::lennard_jones(),
        species.clone(),
        9,
    )
    .unwrap();
    let mut r = rng(99);
    let p: Vec<f64> = base
        .params()
        .iter()
        .map(|v| v + r.random_range(-0.2..0.2))
        .collect();
    let two = KernelField::with_species(
        Layout::new(6, 3).unwrap(),
        KernelConfig::lennard_jones(),
        species,
        p,
    )
    .unwrap();
    vec![
        (
            "dw4",
            random_field(4, 2, KernelConfig::double_well(), 1),
            1.5,
        ),
        (
            "lj13",
            random_field(13, 3, KernelConfig::lennard_jones(), 2),
            1.2,
        ),
        ("two species", two, 1.0),
    ]
}

/// `v̄·v + Σ J̄_ab ∂v_a/∂x_b` at `x`, `t`.
fn scalar(field: &dyn VectorField, x: &[f64], t: f64, v_bar: &[f64], jac_bar: &[f64]) -> f64 {
    let n = x.len();
    let mut v = vec![0.0; n];
    let mut jac = vec![0.0; n * n];
    field.velocity_jacobian_into(x, t, &mut v, &mut jac);
    v.iter().zip(v_bar).map(|(a, b)| a * b).sum::<f64>()
        + jac.iter().zip(jac_bar).map(|(a, b)| a * b).sum::<f64>()
}

/// Central differences of `f` in every parameter of `field` (or every `stride`-th).
fn fd_params<F: FieldFamily>(
    field: &F,
    stride: usize,
    h: f64,
    f: impl Fn(&F) -> f64,
) -> Vec<(usize, f64)> {
    let p0 = field.params().to_vec();
    (0..p0.len())
        .step_by(stride)
        .map(|i| {
            let mut g = field.clone();
            let mut p = p0.clone();
            p[i] = p0[i] + h;
            g.set_params(&p).unwrap();
            let up = f(&g);
            p[i] = p0[i] - h;
            g.set_params(&p).unwrap();
            let down = f(&g);
            (i, (up - down) / (2.0 * h))
        })
        .collect()
}

/// Checks `jacobian_vjp_at` of `field` at a random configuration against central differences
/// of `v̄·v + Σ J̄_ab J_ab` in every coordinate and every parameter.
fn check_jacobian_reverse<F: TrainableField>(
    name: &str,
    field: &F,
    spread: f64,
    r: &mut ChaCha8Rng,
) {
    let n = field.layout().len();
    let t = 0.37;
    let x = random_config(r, n, spread);
    let v_bar: Vec<f64> = (0..n).map(|_| r.random_range(-1.0..1.0)).collect();
    let jac_bar: Vec<f64> = (0..n * n).map(|_| r.random_range(-1.0..1.0)).collect();
    let point = field.time_point(t);
    let mut x_bar = vec![0.0; n];
    let mut adjoint = Default::default();
    let mut scratch = field.new_scratch();
    // Two time points, the evaluation at the second: θ̄ must come from its own τ.
    field.adjoint_reset(&mut adjoint, 2);
    field
        .jacobian_vjp_at(
            &x,
            &point,
            1,
            &v_bar,
            &jac_bar,
            &mut x_bar,
            &mut adjoint,
            &mut scratch,
        )
        .unwrap();
    let mut theta_bar = vec![0.0; field.params().len()];
    field.adjoint_finish(
        &[field.time_point(0.9), point],
        &mut adjoint,
        &mut theta_bar,
    );

    let h = 1e-6;
    let mut worst: f64 = 0.0;
    for b in 0..n {
        let mut y = x.clone();
        y[b] = x[b] + h;
        let up = scalar(field, &y, t, &v_bar, &jac_bar);
        y[b] = x[b] - h;
        let down = scalar(field, &y, t, &v_bar, &jac_bar);
        let fd = (up - down) / (2.0 * h);
        worst = worst.max((fd - x_bar[b]).abs() / (1.0 + fd.abs()));
    }
    assert!(worst < 1e-6, "{name}: x̄ error {worst}");
    let mut worst: f64 = 0.0;
    for (i, fd) in fd_params(field, 1, h, |f| scalar(f, &x, t, &v_bar, &jac_bar)) {
        worst = worst.max((fd - theta_bar[i]).abs() / (1.0 + fd.abs()));
    }
    assert!(worst < 1e-6, "{name}: θ̄ error {worst}");
    assert!(
        theta_bar.iter().any(|g| g.abs() > 1e-3),
        "{name}: θ̄ is not trivial"
    );
}

#[test]
fn kernel_jacobian_reverse_pass_matches_finite_differences() {
    let mut r = rng(3);
    for (name, field, spread) in cases() {
        check_jacobian_reverse(name, &field, spread, &mut r);
    }
}

/// Coordkernel fields with random parameters in every block (the shells where the random
/// configurations' distances fall, so every coordination varies).
fn coordkernel_cases() -> Vec<(&'static str, CoordKernelField, f64)> {
    let mut r = rng(41);
    [("dw4", 4, 2, 1.5), ("lj6", 6, 3, 1.0)]
        .into_iter()
        .map(|(name, n, dim, spread)| {
            let config = CoordKernelConfig {
                n_rbf: 5,
                n_time: 3,
                n_shells: 2,
                rbf_min: 0.0,
                rbf_max: 4.0,
                shell_min: 0.5,
                shell_max: 2.5,
            };
            let len = config.n_params();
            let p: Vec<f64> = (0..len).map(|_| r.random_range(-0.5..0.5)).collect();
            let field = CoordKernelField::new(Layout::new(n, dim).unwrap(), config, p).unwrap();
            (name, field, spread)
        })
        .collect()
}

#[test]
fn coordkernel_jacobian_reverse_pass_matches_finite_differences() {
    let mut r = rng(5);
    for (name, field, spread) in coordkernel_cases() {
        check_jacobian_reverse(name, &field, spread, &mut r);
    }
}

#[test]
fn kernelcoord_jacobian_reverse_pass_matches_finite_differences() {
    let mut r = rng(8);
    let kernel = random_field(4, 2, KernelConfig::double_well(), 4);
    for (name, coord, spread) in coordkernel_cases().into_iter().take(1) {
        let config = KernelCoordConfig {
            kernel: KernelConfig::double_well(),
            coord: coord.config().clone(),
        };
        let params = [kernel.params(), coord.params()].concat();
        let field = KernelCoordField::new(kernel.layout(), config, params).unwrap();
        check_jacobian_reverse(name, &field, spread, &mut r);
    }
}

/// At `J̄ = δ I` the Jacobian's reverse pass is the divergence's (`div = tr J`): two
/// independent derivations of the same numbers.
#[test]
fn coordkernel_jacobian_reverse_at_a_multiple_of_the_identity_is_the_divergence_reverse() {
    let mut r = rng(6);
    for (name, field, spread) in coordkernel_cases() {
        let n = field.layout().len();
        let x = random_config(&mut r, n, spread);
        let v_bar: Vec<f64> = (0..n).map(|_| r.random_range(-1.0..1.0)).collect();
        let delta = 0.7;
        let mut jac_bar = vec![0.0; n * n];
        for a in 0..n {
            jac_bar[a * n + a] = delta;
        }
        let point = field.time_point(0.55);
        let mut scratch = field.new_scratch();
        let (mut x_jac, mut x_div) = (vec![0.0; n], vec![0.0; n]);
        let (mut adj_jac, mut adj_div) = (Vec::new(), Vec::new());
        field.adjoint_reset(&mut adj_jac, 1);
        field.adjoint_reset(&mut adj_div, 1);
        field
            .jacobian_vjp_at(
                &x,
                &point,
                0,
                &v_bar,
                &jac_bar,
                &mut x_jac,
                &mut adj_jac,
                &mut scratch,
            )
            .unwrap();
        field.vjp_at(
            &x,
            &point,
            0,
            eqflow::field::Cotangent {
                v: &v_bar,
                div: delta,
            },
            &mut x_div,
            &mut adj_div,
            &mut scratch,
        );
        let scale = 1.0
            + x_div
                .iter()
                .chain(&adj_div)
                .fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(max_abs_diff(&x_jac, &x_div) < 1e-12 * scale, "{name}: x̄");
        assert!(
            max_abs_diff(&adj_jac, &adj_div) < 1e-12 * scale,
            "{name}: M̄"
        );
    }
}

/// Configurations the map produces: prior samples pushed forward by the exact-discrete map.
fn mapped_samples<F: VectorField>(
    field: &F,
    prior: &Prior,
    n_steps: usize,
    count: usize,
    r: &mut ChaCha8Rng,
) -> Vec<Vec<f64>> {
    let integrator = Integrator::new(Method::Rk4 { n_steps }, DensityMode::ExactDiscrete).unwrap();
    let mut ws = Workspace::new(field.state_len());
    (0..count)
        .map(|_| {
            let mut z = vec![0.0; field.state_len()];
            prior.sample_into(r, &mut z);
            integrator.forward(field, &mut z, &mut ws).unwrap();
            z
        })
        .collect()
}

/// `−log q(x)` of the exact-discrete map by the integrator (the density a model reports).
fn integrator_nll<F: VectorField>(field: &F, prior: &Prior, n_steps: usize, x: &[f64]) -> f64 {
    let integrator = Integrator::new(Method::Rk4 { n_steps }, DensityMode::ExactDiscrete).unwrap();
    let mut ws = Workspace::new(field.state_len());
    let mut z = x.to_vec();
    let (log_det, _) = integrator.inverse(field, &mut z, &mut ws).unwrap();
    -(prior.log_density(&z) + log_det)
}

fn loss<F: TrainableField>(field: &F, prior: &Prior, n_steps: usize, x: &[f64]) -> f64 {
    let mut ws = DiscreteMlWorkspace::<F>::new(x.len(), n_steps).unwrap();
    discrete_ml_sample(field, prior, x, &mut ws, None).unwrap()
}

/// The exact-discrete loss of `field` at samples of its own map equals the integrator's
/// `−log q`, reuses its workspace without carrying anything over, and its gradient matches
/// central differences in every (`stride`-th) parameter.
fn check_discrete_loss<F: TrainableField>(name: &str, field: &F, r: &mut ChaCha8Rng) {
    let layout = field.layout();
    let prior = Prior::new(layout, 1.0).unwrap();
    // Few steps (where the exact-discrete density differs from the continuous one most) and
    // the default count.
    for n_steps in [3, 20] {
        let xs = mapped_samples(field, &prior, n_steps, 2, r);
        let mut ws = DiscreteMlWorkspace::<F>::new(layout.len(), n_steps).unwrap();
        for x in &xs {
            let mut theta_bar = vec![0.0; field.params().len()];
            let value =
                discrete_ml_sample(field, &prior, x, &mut ws, Some(&mut theta_bar)).unwrap();
            let reference = integrator_nll(field, &prior, n_steps, x);
            assert!(
                (value - reference).abs() < 1e-9 * (1.0 + reference.abs()),
                "{name}, {n_steps} steps: loss {value} vs the integrator's {reference}"
            );
            // The same workspace again gives the same bits (nothing carried over).
            let mut again = vec![0.0; theta_bar.len()];
            let value2 = discrete_ml_sample(field, &prior, x, &mut ws, Some(&mut again)).unwrap();
            assert_eq!(value.to_bits(), value2.to_bits());
            assert_eq!(theta_bar, again, "{name}: reused workspace");

            let stride = if layout.len() > 20 { 5 } else { 1 };
            let mut worst: f64 = 0.0;
            for (i, fd) in fd_params(field, stride, 1e-6, |f| loss(f, &prior, n_steps, x)) {
                worst = worst.max((fd - theta_bar[i]).abs() / (1.0 + fd.abs()));
            }
            assert!(worst < 1e-5, "{name}, {n_steps} steps: θ̄ error {worst}");
        }
    }
}

#[test]
fn exact_discrete_loss_is_the_models_density_and_its_gradient_matches_finite_differences() {
    let mut r = rng(11);
    for (name, field, _) in cases() {
        check_discrete_loss(name, &field, &mut r);
    }
}

#[test]
fn coordkernel_exact_discrete_loss_and_gradient_match_the_density_and_differences() {
    let mut r = rng(13);
    let (name, mut field, _) = coordkernel_cases().remove(0);
    // Weaker than the Jacobian tests' field, so that 3 RK4 steps stay invertible.
    let weaker: Vec<f64> = field.params().iter().map(|p| 0.2 * p).collect();
    field.set_params(&weaker).unwrap();
    check_discrete_loss(name, &field, &mut r);
}

#[test]
fn the_loss_is_invariant_under_translations_and_a_family_without_the_reverse_pass_is_refused() {
    let field = random_field(4, 2, KernelConfig::double_well(), 5);
    let prior = Prior::new(field.layout(), 1.0).unwrap();
    let mut r = rng(12);
    let x = mapped_samples(&field, &prior, 10, 1, &mut r).remove(0);
    let shifted: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, v)| v + if i % 2 == 0 { 3.0 } else { -1.0 })
        .collect();
    let a = loss(&field, &prior, 10, &x);
    let b = loss(&field, &prior, 10, &shifted);
    assert!((a - b).abs() < 1e-10, "{a} vs {b}");

    let dense =
        DenseField::initialise(Layout::new(4, 2).unwrap(), DenseConfig::double_well(), 1).unwrap();
    let mut ws = DiscreteMlWorkspace::<DenseField>::new(8, 10).unwrap();
    let mut g = vec![0.0; dense.params().len()];
    let err = discrete_ml_sample(&dense, &prior, &x, &mut ws, Some(&mut g)).unwrap_err();
    assert!(
        err.to_string().contains("dense") && err.to_string().contains("exact-discrete"),
        "{err}"
    );
    assert!(g.iter().all(|v| *v == 0.0), "nothing written on error");
    // Without a gradient the loss exists for every family.
    assert!(
        discrete_ml_sample(&dense, &prior, &x, &mut ws, None)
            .unwrap()
            .is_finite()
    );

    // Wrong sizes are errors, not panics.
    let mut ws = DiscreteMlWorkspace::<KernelField>::new(8, 10).unwrap();
    assert!(discrete_ml_sample(&field, &prior, &x[..6], &mut ws, None).is_err());
    let mut short = vec![0.0; 3];
    assert!(discrete_ml_sample(&field, &prior, &x, &mut ws, Some(&mut short)).is_err());
    let nan = vec![f64::NAN; 8];
    assert!(discrete_ml_sample(&field, &prior, &nan, &mut ws, None).is_err());
}
