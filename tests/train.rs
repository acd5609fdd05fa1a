//! Training: the field's reverse pass and the loss gradients against central finite differences
//! of independent forward code, AdamW and the λ schedule by hand, determinism across thread
//! counts, and a short training run whose NLL falls.

mod common;

use common::*;
use eqflow::field::{Cotangent, KernelConfig, KernelField, VectorField, VjpScratch};
use rand::RngExt;

/// `L = v̄·v(x, t) + div̄·div v(x, t)` by the forward code path.
fn field_objective(field: &KernelField, x: &[f64], t: f64, v_bar: &[f64], div_bar: f64) -> f64 {
    let mut v = vec![0.0; x.len()];
    let div = field.velocity_into(x, t, &mut v);
    v.iter().zip(v_bar).map(|(a, b)| a * b).sum::<f64>() + div_bar * div
}

/// Largest |a − b| over a block, relative to the largest |b| in it (at least `floor`).
fn block_error(a: &[f64], b: &[f64], floor: f64) -> f64 {
    let scale = b.iter().fold(floor, |m, v| m.max(v.abs()));
    max_abs_diff(a, b) / scale
}

#[test]
fn field_vjp_matches_finite_differences_for_x_and_every_parameter_block() {
    let mut r = rng(21);
    for (n, dim, kernels, spread) in [
        (4, 2, KernelConfig::double_well(), 2.5),
        (13, 3, KernelConfig::lennard_jones(), 1.5),
        (2, 2, KernelConfig::double_well(), 2.0),
        (5, 1, KernelConfig::double_well(), 3.0),
    ] {
        let field = random_field(n, dim, kernels.clone(), 31);
        let len = n * dim;
        let mut scratch = VjpScratch::new();
        for (trial, t) in [0.0, 0.37, 0.55, 1.0].into_iter().enumerate() {
            let x = random_config(&mut r, len, spread);
            let v_bar: Vec<f64> = (0..len).map(|_| r.random_range(-1.0..1.0)).collect();
            let div_bar = if trial == 1 {
                0.0
            } else {
                r.random_range(-1.0..1.0)
            };
            let mut x_bar = vec![0.0; len];
            let mut theta_bar = vec![0.0; field.params().len()];
            let cot = Cotangent {
                v: &v_bar,
                div: div_bar,
            };
            field
                .vjp_into(&x, t, cot, &mut x_bar, &mut theta_bar, &mut scratch)
                .unwrap();

            let h = 1e-6;
            let fd_x: Vec<f64> = (0..len)
                .map(|a| {
                    let mut xp = x.clone();
                    xp[a] += h;
                    let lp = field_objective(&field, &xp, t, &v_bar, div_bar);
                    xp[a] -= 2.0 * h;
                    let lm = field_objective(&field, &xp, t, &v_bar, div_bar);
                    (lp - lm) / (2.0 * h)
                })
                .collect();
            let err = block_error(&x_bar, &fd_x, 1e-3);
            println!("vjp {n}x{dim} t={t}: x rel err {err:.2e}");
            assert!(err < 1e-6, "{n}x{dim} t={t}: x̄ error {err}");

            let h = 1e-5;
            let p0 = field.params().to_vec();
            let fd_theta: Vec<f64> = (0..p0.len())
                .map(|a| {
                    let mut f = field.clone();
                    let mut p = p0.clone();
                    p[a] += h;
                    f.set_params(&p).unwrap();
                    let lp = field_objective(&f, &x, t, &v_bar, div_bar);
                    p[a] -= 2.0 * h;
                    f.set_params(&p).unwrap();
                    let lm = field_objective(&f, &x, t, &v_bar, div_bar);
                    (lp - lm) / (2.0 * h)
                })
                .collect();
            for (name, range) in field.param_layout().blocks() {
                let err = block_error(&theta_bar[range.clone()], &fd_theta[range], 1e-3);
                println!("vjp {n}x{dim} t={t}: {name} rel err {err:.2e}");
                assert!(err < 1e-6, "{n}x{dim} t={t}: {name} error {err}");
            }
        }
    }
}
