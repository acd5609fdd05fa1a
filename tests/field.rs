//! The RBF field: finite-difference checks of ∂φ/∂d, the Jacobian and the divergence, and its
//! symmetries as properties.

mod common;

use common::*;
use eqflow::field::{KernelConfig, KernelField, VectorField};

fn systems() -> Vec<(usize, usize, KernelConfig)> {
    vec![
        (2, 2, KernelConfig::double_well()),
        (4, 2, KernelConfig::double_well()),
        (13, 3, KernelConfig::lennard_jones()),
        (5, 1, KernelConfig::double_well()),
    ]
}

#[test]
fn radial_derivative_matches_finite_differences() {
    for (_, _, kernels) in systems() {
        let field = random_field(3, 3, kernels, 11);
        for &t in &[0.0, 0.37, 1.0] {
            for &d in &[1e-3, 0.2, 0.9, 1.7, 3.3, 6.1] {
                let h = 1e-6;
                let (_, dphi) = field.radial(d, t);
                let fd = (field.radial(d + h, t).0 - field.radial(d - h, t).0) / (2.0 * h);
                let scale = dphi.abs().max(1e-3);
                assert!(
                    (dphi - fd).abs() < 1e-6 * scale.max(1.0),
                    "d={d} t={t}: {dphi} vs {fd}"
                );
            }
        }
    }
}

#[test]
fn jacobian_and_divergence_match_finite_differences() {
    let mut r = rng(1);
    for (n, dim, kernels) in systems() {
        let field = random_field(n, dim, kernels, 2);
        for trial in 0..3 {
            let x = random_config(&mut r, n * dim, 2.0);
            let t = 0.13 + 0.3 * trial as f64;
            let len = n * dim;
            let mut v = vec![0.0; len];
            let mut jac = vec![0.0; len * len];
            let div = field.velocity_jacobian_into(&x, t, &mut v, &mut jac);
            let fd = fd_jacobian(|y| velocity(&field, y, t), &x, 1e-6);
            let scale = jac.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let err = max_abs_diff(&jac, &fd);
            assert!(err < 1e-7 * scale, "{n}x{dim}: Jacobian error {err}");
            let trace: f64 = (0..len).map(|a| jac[a * len + a]).sum();
            let fd_trace: f64 = (0..len).map(|a| fd[a * len + a]).sum();
            assert!((div - trace).abs() < 1e-12 * scale * len as f64);
            assert!((div - fd_trace).abs() < 1e-6 * scale, "{div} vs {fd_trace}");
            // velocity_into gives the same v and divergence as the Jacobian path, bit for bit.
            let mut v2 = vec![0.0; len];
            assert_eq!(field.velocity_into(&x, t, &mut v2), div);
            assert_eq!(v, v2);
        }
    }
}

/// `∇ div v`, from `φ''`, against central differences of the divergence, for the exact and the
/// tabulated field, at tabulated times and between them (the exact fallback), with one
/// particle far out so that some pairs lie past the table (its exact fallback); and the same
/// bits in v, the Jacobian and the divergence as `velocity_jacobian_into`.
#[test]
fn divergence_gradient_matches_finite_differences() {
    let mut r = rng(21);
    for (n, dim, kernels) in systems() {
        let field = random_field(n, dim, kernels, 22);
        let times = eqflow::integrate::rk4_stage_times(4);
        let tabulated = eqflow::field::TabulatedField::new(&field, &times).unwrap();
        let len = n * dim;
        for far in [false, true] {
            let mut x = random_config(&mut r, len, 2.0);
            if far {
                x[0] += 60.0;
            }
            for f in [&field as &dyn VectorField, &tabulated] {
                for t in [times[3], 0.5 * (times[3] + times[4])] {
                    let (mut v, mut jac, mut grad) =
                        (vec![0.0; len], vec![0.0; len * len], vec![0.0; len]);
                    let div = f
                        .velocity_jacobian_divgrad_into(&x, t, &mut v, &mut jac, &mut grad)
                        .expect("the RBF field provides ∇ div v");
                    let (mut v2, mut jac2) = (vec![0.0; len], vec![0.0; len * len]);
                    let div2 = f.velocity_jacobian_into(&x, t, &mut v2, &mut jac2);
                    assert_eq!(div.to_bits(), div2.to_bits());
                    assert_eq!(v, v2);
                    assert_eq!(jac, jac2);
                    let h = 1e-6;
                    let mut y = x.clone();
                    let mut scratch = vec![0.0; len];
                    for b in 0..len {
                        y[b] = x[b] + h;
                        let up = f.velocity_into(&y, t, &mut scratch);
                        y[b] = x[b] - h;
                        let down = f.velocity_into(&y, t, &mut scratch);
                        y[b] = x[b];
                        let fd = (up - down) / (2.0 * h);
                        assert!(
                            (grad[b] - fd).abs() < 1e-6 * fd.abs().max(1.0),
                            "{n}x{dim}, far {far}, t {t}, component {b}: {} vs {fd}",
                            grad[b]
                        );
                    }
                }
            }
        }
    }
}

/// v is the gradient of a pair potential, so ∂v/∂x is symmetric; the assembled Jacobian is so
/// bit for bit, for the exact and the tabulated field, as both declare
/// (`symmetric_jacobian`, on which the exact-discrete inverse applies its chord matrix as Aᵀ·r).
#[test]
fn jacobian_is_exactly_symmetric() {
    let mut r = rng(3);
    for (n, dim, kernels) in systems() {
        let field = random_field(n, dim, kernels, 4);
        let times = eqflow::integrate::rk4_stage_times(4);
        let tabulated = eqflow::field::TabulatedField::new(&field, &times).unwrap();
        let len = n * dim;
        let x = random_config(&mut r, len, 2.0);
        for f in [&field as &dyn VectorField, &tabulated] {
            assert!(f.symmetric_jacobian());
            let mut v = vec![0.0; len];
            let mut jac = vec![0.0; len * len];
            f.velocity_jacobian_into(&x, times[3], &mut v, &mut jac);
            for a in 0..len {
                for b in 0..a {
                    assert_eq!(
                        jac[a * len + b].to_bits(),
                        jac[b * len + a].to_bits(),
                        "{n}x{dim}: ({a}, {b})"
                    );
                }
            }
        }
    }
}

#[test]
fn divergence_is_exact_even_for_coincident_particles() {
    // ε_d keeps d > 0 when two particles coincide; the divergence is still the Jacobian trace.
    let field = random_field(3, 2, KernelConfig::double_well(), 4);
    let x = [0.5, 0.5, 0.5, 0.5, -1.0, 0.3];
    let fd = fd_jacobian(|y| velocity(&field, y, 0.4), &x, 1e-7);
    let fd_trace: f64 = (0..6).map(|a| fd[a * 6 + a]).sum();
    let mut v = vec![0.0; 6];
    let div = field.velocity_into(&x, 0.4, &mut v);
    assert!(
        (div - fd_trace).abs() < 1e-5 * div.abs().max(1.0),
        "{div} vs {fd_trace}"
    );
}

#[test]
fn field_is_equivariant_and_conserves_the_centre_of_mass() {
    let mut r = rng(5);
    for (n, dim, kernels) in systems() {
        let field = random_field(n, dim, kernels, 6);
        let x = random_config(&mut r, n * dim, 2.0);
        let t = 0.6;
        let v = velocity(&field, &x, t);
        for k in 0..dim {
            let s: f64 = v.iter().skip(k).step_by(dim).sum();
            assert!(s.abs() < 1e-12, "Σ v_i = {s}");
        }
        for reflect in [false, true] {
            let q = random_orthogonal(&mut r, dim, reflect);
            let vq = velocity(&field, &rotate(&x, dim, &q), t);
            assert!(max_abs_diff(&vq, &rotate(&v, dim, &q)) < 1e-11);
        }
        let perm: Vec<usize> = (0..n).rev().collect();
        let vp = velocity(&field, &permute(&x, dim, &perm), t);
        assert!(max_abs_diff(&vp, &permute(&v, dim, &perm)) < 1e-12);
        let shifted: Vec<f64> = x.iter().map(|v| v + 3.25).collect();
        assert!(max_abs_diff(&velocity(&field, &shifted, t), &v) < 1e-11);
    }
}

#[test]
fn paper_configuration_has_620_parameters() {
    let layout = eqflow::geometry::Layout::new(4, 2).unwrap();
    let field = KernelField::initialise(layout, KernelConfig::double_well(), 0).unwrap();
    assert_eq!(field.params().len(), 620);
    let pl = field.param_layout();
    // W ~ N(0, 1/K): the sample variance of 500 draws is near 1/50.
    let w = &field.params()[pl.w()];
    let var = w.iter().map(|v| v * v).sum::<f64>() / w.len() as f64;
    assert!((var - 0.02).abs() < 0.005, "{var}");
    assert!(field.params()[pl.b()].iter().all(|v| *v == 0.0));
    assert!(field.params()[pl.s()].iter().all(|v| *v == 0.0));
    assert!((field.params()[pl.log_inv_gamma_dist()][0] + 0.5f64.ln()).abs() < 1e-15);
    // Different seeds give different W, the same seed the same.
    let again = KernelField::initialise(layout, KernelConfig::double_well(), 0).unwrap();
    let other = KernelField::initialise(layout, KernelConfig::double_well(), 1).unwrap();
    assert_eq!(field, again);
    assert_ne!(field.params(), other.params());
}

#[test]
fn set_params_rejects_bad_input_and_keeps_the_old_parameters() {
    let mut field = random_field(4, 2, KernelConfig::double_well(), 9);
    let before = field.clone();
    assert!(field.set_params(&[0.0; 3]).is_err());
    let mut p = field.params().to_vec();
    p[7] = f64::NAN;
    assert!(field.set_params(&p).is_err());
    let mut p = field.params().to_vec();
    let i = field.param_layout().log_inv_gamma_dist().start;
    p[i] = 1e5;
    assert!(field.set_params(&p).is_err());
    assert_eq!(field, before);
}

#[test]
fn tabulated_field_is_close_to_the_exact_one_and_its_derivatives_are_its_own() {
    use eqflow::field::TabulatedField;
    let mut r = rng(41);
    for (n, dim, kernels) in systems() {
        let field = random_field(n, dim, kernels, 43);
        let times = eqflow::integrate::rk4_stage_times(20);
        let tab = TabulatedField::new(&field, &times).expect("table fits");
        // Close to the exact radial function at every tabulated time, across the range.
        let (mut worst_phi, mut worst_dphi) = (0.0f64, 0.0f64);
        for &t in times.iter().step_by(7) {
            for i in 0..400 {
                let d = 1e-3 + 0.025 * i as f64;
                let (p, dp) = tab.radial(d, t);
                let (pe, dpe) = field.radial(d, t);
                let scale = field.radial(d, t).0.abs().max(0.01);
                worst_phi = worst_phi.max((p - pe).abs() / scale);
                worst_dphi = worst_dphi.max((dp - dpe).abs() / dpe.abs().max(0.1));
            }
        }
        assert!(worst_phi < 2e-7, "{n}x{dim}: φ error {worst_phi:e}");
        assert!(worst_dphi < 2e-5, "{n}x{dim}: φ' error {worst_dphi:e}");
        // Off-grid times fall back to the exact field, bit for bit.
        assert_eq!(tab.radial(1.3, 0.123), field.radial(1.3, 0.123));
        // The divergence and Jacobian are the exact derivatives of the tabulated field.
        let x = random_config(&mut r, n * dim, 2.0);
        let t = times[5];
        let len = n * dim;
        let mut v = vec![0.0; len];
        let mut jac = vec![0.0; len * len];
        let div = tab.velocity_jacobian_into(&x, t, &mut v, &mut jac);
        let fd = fd_jacobian(|y| velocity(&tab, y, t), &x, 1e-6);
        let scale = jac.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        assert!(max_abs_diff(&jac, &fd) < 1e-7 * scale);
        let fd_trace: f64 = (0..len).map(|a| fd[a * len + a]).sum();
        assert!((div - fd_trace).abs() < 1e-6 * scale, "{div} vs {fd_trace}");
    }
}
