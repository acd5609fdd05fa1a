//! Checks every field family must pass, written once and run by each family's test file:
//! exact Jacobian and divergence, symmetries as properties, the Lipschitz bound, model files
//! and thread independence.

use eqflow::Flow;
use eqflow::field::{Field, FieldFamily, TrainableField, VectorField};
use eqflow::geometry::Layout;
use eqflow::io::model;
use nalgebra::DMatrix;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::*;

/// `(v, J, div)` at `x`, `t`.
pub fn jacobian_of(field: &dyn VectorField, x: &[f64], t: f64) -> (Vec<f64>, Vec<f64>, f64) {
    let n = x.len();
    let mut v = vec![0.0; n];
    let mut jac = vec![0.0; n * n];
    let div = field.velocity_jacobian_into(x, t, &mut v, &mut jac);
    (v, jac, div)
}

/// The dense Jacobian against central differences, the divergence equal to its trace and
/// bit-identical in the continuous path, the velocity the same bits in every entry point.
pub fn check_jacobian_and_divergence(
    name: &str,
    field: &dyn VectorField,
    spread: f64,
    r: &mut ChaCha8Rng,
) {
    let n = field.state_len();
    for t in [0.0, 0.41, 1.0] {
        for _ in 0..3 {
            let x = random_config(r, n, spread);
            let (v, jac, div) = jacobian_of(field, &x, t);
            assert_eq!(v, velocity(field, &x, t), "{name}: same velocity bits");
            let fd = fd_jacobian(|y| velocity(field, y, t), &x, 1e-5);
            let scale = jac.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let err = max_abs_diff(&jac, &fd);
            assert!(
                err < 1e-7 * scale,
                "{name} t={t}: Jacobian error {err} (scale {scale})"
            );
            let trace: f64 = (0..n).map(|a| jac[a * n + a]).sum();
            assert!(
                (div - trace).abs() < 1e-11 * scale * n as f64,
                "{name} t={t}: div {div} vs trace {trace}"
            );
            // The divergence alone (continuous mode) is the same number, bit for bit.
            let mut w = vec![0.0; n];
            assert_eq!(field.velocity_into(&x, t, &mut w).to_bits(), div.to_bits());
            let mut w2 = vec![0.0; n];
            field.velocity_only_into(&x, t, &mut w2);
            assert_eq!(w2, v, "{name}: velocity_only_into gives the same bits");
        }
    }
}

/// CoM conservation, translation invariance, permutation and O(D) equivariance, O(D)-invariant
/// divergence, at random times and configurations.
pub fn check_symmetries(
    name: &str,
    field: &dyn VectorField,
    layout: Layout,
    spread: f64,
    r: &mut ChaCha8Rng,
) {
    let (n_p, dim) = (layout.n_particles, layout.dim);
    for _ in 0..4 {
        let t = r.random_range(0.0..1.0);
        let x = random_config(r, layout.len(), spread);
        let (v, _, div) = jacobian_of(field, &x, t);
        let tol = 1e-10 * v.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        // Centre of mass conserved.
        for c in 0..dim {
            let s: f64 = v.iter().skip(c).step_by(dim).sum();
            assert!(s.abs() < tol * n_p as f64, "{name}: Σ v = {s}");
        }
        // Translation invariance.
        let shift: Vec<f64> = (0..dim).map(|_| r.random_range(-3.0..3.0)).collect();
        let xs: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v + shift[i % dim])
            .collect();
        assert!(
            max_abs_diff(&velocity(field, &xs, t), &v) < tol,
            "{name}: translation"
        );
        // Permutation equivariance.
        let mut perm: Vec<usize> = (0..n_p).collect();
        for i in (1..n_p).rev() {
            perm.swap(i, r.random_range(0..=i));
        }
        let vp = velocity(field, &permute(&x, dim, &perm), t);
        assert!(
            max_abs_diff(&vp, &permute(&v, dim, &perm)) < tol,
            "{name}: permutation"
        );
        // Rotation and reflection equivariance, divergence invariant.
        for reflect in [false, true] {
            let q = random_orthogonal(r, dim, reflect);
            let (vq, _, divq) = jacobian_of(field, &rotate(&x, dim, &q), t);
            assert!(
                max_abs_diff(&vq, &rotate(&v, dim, &q)) < tol,
                "{name}: O(D)"
            );
            assert!(
                (divq - div).abs() < 1e-9 * div.abs().max(1.0),
                "{name}: div O(D)"
            );
        }
    }
}

/// The family's global Lipschitz bound is finite and at least the Jacobian's spectral norm, from
/// compressed to widely spread configurations.
pub fn check_lipschitz_bound<F: FieldFamily>(name: &str, field: &F, r: &mut ChaCha8Rng) {
    let n = field.state_len();
    for t in [0.0, 0.5, 1.0] {
        let bound = field.lipschitz_bound(t);
        let compression = field.compression_bounds(&[t])[0];
        assert!(bound.is_finite() && bound > 0.0, "{name}: {bound}");
        assert!(
            (0.0..=bound).contains(&compression),
            "{name}: compression bound {compression} outside [0, L = {bound}]"
        );
        for spread in [0.2, 1.0, 3.0, 8.0, 40.0] {
            let x = random_config(r, n, spread);
            let (_, jac, _) = jacobian_of(field, &x, t);
            let m = DMatrix::from_row_slice(n, n, &jac);
            let norm = m.singular_values().max();
            assert!(
                norm <= bound,
                "{name} t={t} spread={spread}: ‖J‖ {norm} > {bound}"
            );
            let sym = (&m + m.transpose()) * 0.5;
            let lowest = sym.symmetric_eigenvalues().min();
            assert!(
                -lowest <= compression,
                "{name} t={t} spread={spread}: −λ_min(sym J) {} > μ {compression}",
                -lowest
            );
        }
    }
}

/// A model file round trip keeps the family and the field; sampled log q equals evaluated
/// log q (exact-discrete mode); the generic registry rebuilds the same field.
pub fn check_model_round_trip(flow: &Flow, family: &str) {
    let dir = std::env::temp_dir().join(format!("eqflow-{family}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{family}.json"));
    model::save(flow, None, None, &path).unwrap();
    let (loaded, _) = model::load(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(loaded.field().family(), family);
    assert_eq!(loaded.field(), flow.field());
    let (x, log_q) = loaded.sample(3, 64).unwrap();
    let evaluated = loaded.log_density(&x).unwrap();
    let err = max_abs_diff(&log_q, &evaluated);
    assert!(err < 1e-8, "sampled vs evaluated log q: {err}");
    let again = Field::from_spec(
        flow.field().layout(),
        &flow.field().spec(),
        flow.field().params().to_vec(),
    )
    .unwrap();
    assert_eq!(&again, flow.field());
}

/// The same samples and log q, bit for bit, on 1 and 2 threads.
pub fn check_thread_independence(flow: &Flow) {
    let a = pool(1).install(|| flow.sample(5, 32).unwrap());
    let b = pool(2).install(|| flow.sample(5, 32).unwrap());
    assert_eq!(a.0, b.0);
    assert_eq!(a.1, b.1);
}

/// The gradient of `Σ_t w_t L(t)` (random weights `w`, returned) from
/// [`FieldFamily::lipschitz_bounds_vjp`] against central differences in every parameter, and
/// the bounds it returns equal to [`FieldFamily::lipschitz_bounds`]. Returns `w`, the largest
/// gradient entry (for the caller's check that the comparison is not vacuous) and the objective.
pub fn check_lipschitz_bound_gradient<F: TrainableField + Clone>(
    name: &str,
    field: &F,
    times: &[f64],
) -> (Vec<f64>, f64, f64) {
    check_bound_gradient(name, field, times, Bound::Lipschitz)
}

/// [`check_lipschitz_bound_gradient`] for the compression bounds
/// ([`FieldFamily::compression_bounds`], [`TrainableField::compression_bounds_vjp`]).
pub fn check_compression_bound_gradient<F: TrainableField + Clone>(
    name: &str,
    field: &F,
    times: &[f64],
) -> (Vec<f64>, f64, f64) {
    check_bound_gradient(name, field, times, Bound::Compression)
}

/// Which of a family's two certificate bounds a check reads.
#[derive(Clone, Copy)]
enum Bound {
    Lipschitz,
    Compression,
}

impl Bound {
    fn values<F: TrainableField>(self, f: &F, times: &[f64]) -> Vec<f64> {
        match self {
            Bound::Lipschitz => f.lipschitz_bounds(times),
            Bound::Compression => f.compression_bounds(times),
        }
    }
}

fn check_bound_gradient<F: TrainableField + Clone>(
    name: &str,
    field: &F,
    times: &[f64],
    which: Bound,
) -> (Vec<f64>, f64, f64) {
    let mut r = rng(0xb0b);
    let bounds_bar: Vec<f64> = times.iter().map(|_| r.random_range(0.2..1.5)).collect();
    let objective = |f: &F| -> f64 {
        which
            .values(f, times)
            .iter()
            .zip(&bounds_bar)
            .map(|(l, w)| l * w)
            .sum()
    };
    let p = field.params().to_vec();
    let mut grad = vec![0.0; p.len()];
    let bounds = match which {
        Bound::Lipschitz => field.lipschitz_bounds_vjp(times, &bounds_bar, &mut grad),
        Bound::Compression => field.compression_bounds_vjp(times, &bounds_bar, &mut grad),
    }
    .unwrap();
    assert_eq!(bounds, which.values(field, times), "{name}");
    let scale = objective(field);
    let h = 1e-6;
    let mut worst = 0.0f64;
    for i in 0..p.len() {
        let at = |delta: f64| {
            let mut q = p.clone();
            q[i] += delta;
            let mut f = field.clone();
            f.set_params(&q).unwrap();
            objective(&f)
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        worst = worst.max((fd - grad[i]).abs());
    }
    assert!(
        worst < 1e-6 * scale.max(1.0),
        "{name}: max |fd − vjp| = {worst}, bound {scale}"
    );
    let max_grad = grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    (bounds_bar, max_grad, scale)
}

/// Checks `x̄` and `θ̄` against central differences of `loss(field, x)` in every coordinate
/// and every parameter (relative error below 1e-6).
pub fn assert_gradients<F: FieldFamily + Clone>(
    name: &str,
    field: &F,
    x: &[f64],
    loss: impl Fn(&F, &[f64]) -> f64,
    x_bar: &[f64],
    theta_bar: &[f64],
) {
    let h = 1e-6;
    let mut worst: f64 = 0.0;
    for b in 0..x.len() {
        let mut y = x.to_vec();
        y[b] = x[b] + h;
        let up = loss(field, &y);
        y[b] = x[b] - h;
        let down = loss(field, &y);
        let fd = (up - down) / (2.0 * h);
        worst = worst.max((fd - x_bar[b]).abs() / (1.0 + fd.abs()));
    }
    assert!(worst < 1e-6, "{name}: x̄ error {worst}");
    let p0 = field.params().to_vec();
    let mut worst: f64 = 0.0;
    for i in 0..p0.len() {
        let mut f = field.clone();
        let mut p = p0.clone();
        p[i] = p0[i] + h;
        f.set_params(&p).unwrap();
        let up = loss(&f, x);
        p[i] = p0[i] - h;
        f.set_params(&p).unwrap();
        let down = loss(&f, x);
        let fd = (up - down) / (2.0 * h);
        worst = worst.max((fd - theta_bar[i]).abs() / (1.0 + fd.abs()));
    }
    assert!(worst < 1e-6, "{name}: θ̄ error {worst}");
}
