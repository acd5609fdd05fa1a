//! The kernelcoord field family (the paper's kernel field plus a coordination correction): the
//! sum is exactly the sum of its parts, an untrained field is exactly the paper's field, and
//! the family passes every check a family must (Jacobian, divergence and reverse pass against
//! finite differences, symmetries as properties, Lipschitz bound and its gradient, model files,
//! exact-discrete densities, thread counts).

mod common;

use common::*;
use eqflow::Flow;
use eqflow::field::coordkernel::{CoordKernelConfig, CoordKernelField};
use eqflow::field::kernel::KernelField;
use eqflow::field::kernelcoord::{KernelCoordConfig, KernelCoordField};
use eqflow::field::{Cotangent, FieldFamily, Preset, TrainableField, VectorField};
use eqflow::geometry::Layout;
use eqflow::integrate::Integrator;
use eqflow::prior::Prior;
use rand::RngExt;

/// Small bases, so that finite differences over every parameter stay quick.
fn small(range: (f64, f64)) -> KernelCoordConfig {
    let kernel = KernelField::preset_config(&Preset::Range {
        range,
        counts: Some((6, 3)),
    })
    .unwrap();
    KernelCoordConfig {
        kernel,
        coord: CoordKernelConfig {
            n_rbf: 5,
            rbf_min: range.0,
            rbf_max: range.1,
            n_time: 3,
            n_shells: 2,
            shell_min: range.0 + 0.3,
            shell_max: 0.5 * (range.0 + range.1),
        },
    }
}

/// A field whose both parts have clearly non-zero, non-initial parameters.
fn random_kernelcoord(
    n: usize,
    dim: usize,
    config: KernelCoordConfig,
    seed: u64,
) -> KernelCoordField {
    let layout = Layout::new(n, dim).unwrap();
    let kernel = random_field(n, dim, config.kernel.clone(), seed);
    let coord = CoordKernelField::initialise(layout, config.coord.clone(), seed).unwrap();
    let mut r = rng(seed ^ 0xc0);
    let coord_params: Vec<f64> = coord
        .params()
        .iter()
        .map(|v| v + r.random_range(-0.4..0.4))
        .collect();
    let params = [kernel.params(), &coord_params[..]].concat();
    KernelCoordField::new(layout, config, params).unwrap()
}

fn lj_preset() -> KernelCoordConfig {
    KernelCoordField::preset_config(&Preset::Benchmark {
        interaction: eqflow::field::Interaction::LennardJones,
        length_scale: 1.0,
    })
    .unwrap()
}

fn cases() -> Vec<(&'static str, KernelCoordField, f64)> {
    vec![
        (
            "dw4 small",
            random_kernelcoord(4, 2, small((0.0, 4.0)), 1),
            1.5,
        ),
        (
            "lj5 small",
            random_kernelcoord(5, 3, small((0.6, 3.0)), 2),
            1.0,
        ),
        (
            "lj13 preset",
            random_kernelcoord(13, 3, lj_preset(), 3),
            1.2,
        ),
    ]
}

#[test]
fn the_field_is_the_sum_of_its_parts_bit_for_bit() {
    let mut r = rng(4);
    for (name, field, spread) in cases() {
        let n = field.state_len();
        for t in [0.0, 0.37, 1.0] {
            let x = random_config(&mut r, n, spread);
            let (v, jac, div) = families::jacobian_of(&field, &x, t);
            let (va, ja, da) = families::jacobian_of(field.kernel(), &x, t);
            let (vb, jb, db) = families::jacobian_of(field.coord(), &x, t);
            let sum = |a: &[f64], b: &[f64]| -> Vec<f64> {
                a.iter().zip(b).map(|(a, b)| a + b).collect()
            };
            assert_eq!(v, sum(&va, &vb), "{name}");
            assert_eq!(jac, sum(&ja, &jb), "{name}");
            assert_eq!(div.to_bits(), (da + db).to_bits(), "{name}");
            let point = field.time_point(t);
            let mut w = vec![0.0; n];
            let div_at = field.velocity_at_into(&x, &point, &mut w);
            assert_eq!(w, v, "{name}: velocity at a time point");
            assert_eq!(div_at.to_bits(), div.to_bits(), "{name}");
        }
    }
}

/// The correction starts at zero: an untrained field is the untrained paper's field of the same
/// seed, velocity and divergence bit for bit, and it has no certificate cost of its own.
#[test]
fn an_untrained_field_is_the_papers_field() {
    let layout = Layout::new(13, 3).unwrap();
    let config = lj_preset();
    let field = KernelCoordField::untrained(
        layout,
        config.clone(),
        eqflow::species::Species::single(13),
        7,
    )
    .unwrap();
    let kernel = KernelField::untrained(
        layout,
        config.kernel,
        eqflow::species::Species::single(13),
        7,
    )
    .unwrap();
    assert_eq!(&field.params()[..kernel.params().len()], kernel.params());
    assert!(
        field.params()[kernel.params().len()..]
            .iter()
            .all(|p| *p == 0.0)
    );
    let mut r = rng(5);
    let x = random_config(&mut r, 39, 1.2);
    for t in [0.0, 0.5, 1.0] {
        let (mut v, mut w) = (vec![0.0; 39], vec![0.0; 39]);
        let d = field.velocity_into(&x, t, &mut v);
        let dk = kernel.velocity_into(&x, t, &mut w);
        assert_eq!(v, w);
        assert_eq!(d.to_bits(), dk.to_bits());
        assert_eq!(field.lipschitz_bound(t), kernel.lipschitz_bound(t));
    }
}

#[test]
fn jacobian_and_divergence_match_finite_differences() {
    let mut r = rng(6);
    for (name, field, spread) in cases() {
        families::check_jacobian_and_divergence(name, &field, spread, &mut r);
    }
}

#[test]
fn symmetries_hold_as_properties() {
    let mut r = rng(7);
    for (name, field, spread) in cases() {
        families::check_symmetries(name, &field, field.layout(), spread, &mut r);
    }
}

/// `v̄·v + δ·div` at `x`, `t`.
fn scalar_loss(field: &KernelCoordField, x: &[f64], t: f64, v_bar: &[f64], delta: f64) -> f64 {
    let mut v = vec![0.0; x.len()];
    let div = field.velocity_into(x, t, &mut v);
    v.iter().zip(v_bar).map(|(a, b)| a * b).sum::<f64>() + delta * div
}

/// The reverse pass of velocity and divergence against central differences in x and in every
/// parameter of both parts (the small cases; the LJ-13 preset in x and a spread of parameters).
#[test]
fn reverse_pass_matches_finite_differences_in_x_and_every_parameter() {
    let mut r = rng(8);
    for (name, field, spread) in cases() {
        let n = field.layout().len();
        let t = 0.63;
        let x = random_config(&mut r, n, spread);
        let v_bar: Vec<f64> = (0..n).map(|_| r.random_range(-1.0..1.0)).collect();
        for delta in [0.0, 0.7, -1.3] {
            let point = field.time_point(t);
            let mut x_bar = vec![0.0; n];
            let mut adjoint = Default::default();
            let mut scratch = field.new_scratch();
            // Two time points, the evaluation at the second: θ̄ must come from its own time.
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
            let h = 1e-6;
            let mut worst: f64 = 0.0;
            for b in 0..n {
                let mut y = x.clone();
                y[b] = x[b] + h;
                let up = scalar_loss(&field, &y, t, &v_bar, delta);
                y[b] = x[b] - h;
                let down = scalar_loss(&field, &y, t, &v_bar, delta);
                let fd = (up - down) / (2.0 * h);
                worst = worst.max((fd - x_bar[b]).abs() / (1.0 + fd.abs()));
            }
            assert!(worst < 1e-6, "{name} δ={delta}: x̄ error {worst}");
            let p0 = field.params().to_vec();
            let stride = if p0.len() > 400 { 7 } else { 1 };
            let mut worst: f64 = 0.0;
            let mut largest: f64 = 0.0;
            for i in (0..p0.len()).step_by(stride) {
                let mut f = field.clone();
                let mut p = p0.clone();
                p[i] = p0[i] + h;
                f.set_params(&p).unwrap();
                let up = scalar_loss(&f, &x, t, &v_bar, delta);
                p[i] = p0[i] - h;
                f.set_params(&p).unwrap();
                let down = scalar_loss(&f, &x, t, &v_bar, delta);
                let fd = (up - down) / (2.0 * h);
                largest = largest.max(fd.abs());
                worst = worst.max((fd - theta_bar[i]).abs() / (1.0 + fd.abs()));
            }
            assert!(largest > 1e-3, "{name}: vacuous parameter check");
            assert!(worst < 1e-6, "{name} δ={delta}: θ̄ error {worst}");
        }
    }
}

#[test]
fn lipschitz_bound_dominates_the_jacobian_and_its_gradient_is_exact() {
    let mut r = rng(9);
    let mut times = eqflow::integrate::certificate_times(3);
    times.push(0.37);
    for (name, field, _) in cases() {
        families::check_lipschitz_bound(name, &field, &mut r);
        let bounds = field.lipschitz_bounds(&times);
        let (a, b) = (
            field.kernel().lipschitz_bounds(&times),
            field.coord().lipschitz_bounds(&times),
        );
        for ((l, a), b) in bounds.iter().zip(&a).zip(&b) {
            assert_eq!(*l, a + b, "{name}: the sum of the parts' bounds");
        }
        let compression = field.compression_bounds(&times);
        let (a, b) = (
            field.kernel().compression_bounds(&times),
            field.coord().compression_bounds(&times),
        );
        for ((m, a), b) in compression.iter().zip(&a).zip(&b) {
            assert_eq!(
                *m,
                a + b,
                "{name}: the sum of the parts' compression bounds"
            );
        }
        if field.params().len() < 400 {
            let (_, max_grad, scale) =
                families::check_lipschitz_bound_gradient(name, &field, &times);
            assert!(
                max_grad > 1.0,
                "{name}: gradient {max_grad} (bound {scale})"
            );
            let (_, max_grad, scale) =
                families::check_compression_bound_gradient(name, &field, &times);
            assert!(
                max_grad > 1.0,
                "{name}: compression gradient {max_grad} (bound {scale})"
            );
            // The penalty's combined pass (the trait's default here) is the two passes.
            let (lb, mb): (Vec<f64>, Vec<f64>) = (
                times.iter().map(|t| 0.5 + t).collect(),
                times.iter().map(|t| 1.0 - t).collect(),
            );
            let mut both = vec![0.0; field.params().len()];
            let (l, m) = field
                .certificate_bounds_vjp(&times, &mut |_, _| (lb.clone(), mb.clone()), &mut both)
                .unwrap();
            assert_eq!((l, m), (bounds.clone(), compression.clone()));
            let mut apart = vec![0.0; field.params().len()];
            field.lipschitz_bounds_vjp(&times, &lb, &mut apart).unwrap();
            field
                .compression_bounds_vjp(&times, &mb, &mut apart)
                .unwrap();
            // The same sums in another order: equal to round-off.
            let scale = apart.iter().fold(0.0f64, |a, g| a.max(g.abs()));
            for (b, a) in both.iter().zip(&apart) {
                assert!((b - a).abs() <= 1e-12 * scale, "{name}: {b} vs {a}");
            }
        }
    }
}

#[test]
fn invalid_settings_and_parameters_are_refused_and_change_nothing() {
    let layout = Layout::new(4, 2).unwrap();
    let mut bad = small((0.0, 4.0));
    bad.coord.n_shells = 1;
    assert!(KernelCoordField::initialise(layout, bad, 0).is_err());
    let mut bad = small((0.0, 4.0));
    bad.kernel.gamma_dist[0] = f64::NAN;
    assert!(KernelCoordField::initialise(layout, bad, 0).is_err());
    let mut field = random_kernelcoord(4, 2, small((0.0, 4.0)), 3);
    let before = field.clone();
    let n_kernel = field.kernel().params().len();
    let mut p = field.params().to_vec();
    // A bad value in the second part must not leave the first part changed.
    p[0] += 0.5;
    p[n_kernel + 2] = f64::NAN;
    assert!(field.set_params(&p).is_err());
    assert_eq!(
        field, before,
        "a failed set_params leaves the field unchanged"
    );
    assert!(field.set_params(&p[1..]).is_err());
    assert!(KernelCoordField::new(layout, small((0.0, 4.0)), p[1..].to_vec()).is_err());
    // Settings whose parameter count overflows (a corrupt model file) are refused by name,
    // before any count is computed: no arithmetic overflow, no size mismatch of 10^18.
    for (n_rbf, n_shells) in [
        (4_000_000_000_000_000_000, 4),
        (16, 1_000_000_000_000_000_000),
    ] {
        let mut bad = small((0.0, 4.0));
        bad.coord.n_rbf = n_rbf;
        bad.coord.n_shells = n_shells;
        let message = KernelCoordField::new(layout, bad, p.clone())
            .unwrap_err()
            .to_string();
        assert!(message.contains("is outside [2, 64]"), "{message}");
    }
    // Several species: the correction has none, so the family refuses them.
    let two = eqflow::species::Species::new(2, vec![0, 1, 0, 1]).unwrap();
    assert!(KernelCoordField::untrained(layout, small((0.0, 4.0)), two, 0).is_err());
}

fn kernelcoord_flow(seed: u64) -> Flow {
    let layout = Layout::new(4, 2).unwrap();
    let field = random_kernelcoord(4, 2, small((0.0, 4.0)), seed);
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
    families::check_model_round_trip(&kernelcoord_flow(10), "kernelcoord");
}

#[test]
fn thread_count_does_not_change_a_bit() {
    families::check_thread_independence(&kernelcoord_flow(11));
}

/// The fixed-grid form sums the parts' grid forms (the kernel part tabulated): exactly
/// differentiated, and the field to the tables' accuracy.
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
    }
}
