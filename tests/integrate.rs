//! Integrators: known solutions, the sign convention of the log-determinant, the exact-discrete
//! log-determinant against a finite-difference Jacobian of the whole map, and round trips.

mod common;

use common::*;
use eqflow::field::{KernelConfig, VectorField};
use eqflow::integrate::{DensityMode, Dopri5Config, Integrator, Method, Workspace};
use nalgebra::DMatrix;

/// v = A·x with a constant matrix: div = tr A, Jacobian = A.
struct Linear {
    a: Vec<f64>,
    n: usize,
}

impl VectorField for Linear {
    fn state_len(&self) -> usize {
        self.n
    }
    fn velocity_into(&self, x: &[f64], _t: f64, v: &mut [f64]) -> f64 {
        for (v, row) in v.iter_mut().zip(self.a.chunks_exact(self.n)) {
            *v = row.iter().zip(x).map(|(a, x)| a * x).sum();
        }
        (0..self.n).map(|i| self.a[i * self.n + i]).sum()
    }
    fn velocity_jacobian_into(&self, x: &[f64], t: f64, v: &mut [f64], jac: &mut [f64]) -> f64 {
        jac.copy_from_slice(&self.a);
        self.velocity_into(x, t, v)
    }
}

/// dx/dt = x² in one dimension: x(t) = 1/(1/x₀ − t), div = 2x, ∫div = −2 log(1 − x₀ t).
struct Riccati;

impl VectorField for Riccati {
    fn state_len(&self) -> usize {
        1
    }
    fn velocity_into(&self, x: &[f64], _t: f64, v: &mut [f64]) -> f64 {
        v[0] = x[0] * x[0];
        2.0 * x[0]
    }
    fn velocity_jacobian_into(&self, x: &[f64], t: f64, v: &mut [f64], jac: &mut [f64]) -> f64 {
        jac[0] = 2.0 * x[0];
        self.velocity_into(x, t, v)
    }
}

/// dx/dt = cos(t)·x: x(t) = x₀·exp(sin t), ∫div = n·sin t (time-dependent).
struct Breathing {
    n: usize,
}

impl VectorField for Breathing {
    fn state_len(&self) -> usize {
        self.n
    }
    fn velocity_into(&self, x: &[f64], t: f64, v: &mut [f64]) -> f64 {
        for (v, x) in v.iter_mut().zip(x) {
            *v = t.cos() * x;
        }
        self.n as f64 * t.cos()
    }
    fn velocity_jacobian_into(&self, x: &[f64], t: f64, v: &mut [f64], jac: &mut [f64]) -> f64 {
        jac.fill(0.0);
        for i in 0..self.n {
            jac[i * self.n + i] = t.cos();
        }
        self.velocity_into(x, t, v)
    }
}

fn rk4(n_steps: usize, mode: DensityMode) -> Integrator {
    Integrator::new(Method::Rk4 { n_steps }, mode).unwrap()
}

fn dopri(rtol: f64, atol: f64) -> Integrator {
    let cfg = Dopri5Config {
        rtol,
        atol,
        ..Dopri5Config::default()
    };
    Integrator::new(Method::Dopri5(cfg), DensityMode::Continuous).unwrap()
}

#[test]
fn log_det_sign_convention_on_a_linear_field() {
    // A expanding-and-shearing map: forward log-det is +tr A (volume grows when tr A > 0).
    let n = 3;
    let a = vec![0.3, 0.5, 0.0, -0.2, 0.1, 0.4, 0.0, 0.3, 0.2];
    let field = Linear { a: a.clone(), n };
    let trace = 0.6;
    let x0 = vec![1.0, -2.0, 0.5];
    let mut ws = Workspace::new(n);

    let mut x = x0.clone();
    let (ld, _) = rk4(20, DensityMode::Continuous)
        .forward(&field, &mut x, &mut ws)
        .unwrap();
    assert!((ld - trace).abs() < 1e-14, "continuous forward {ld}");
    let (ld_inv, _) = rk4(20, DensityMode::Continuous)
        .inverse(&field, &mut x, &mut ws)
        .unwrap();
    assert!(
        (ld_inv + trace).abs() < 1e-14,
        "continuous inverse {ld_inv}"
    );

    // The discrete map is P(hA)^20 with P(M) = I + M + M²/2 + M³/6 + M⁴/24.
    let m = DMatrix::from_row_slice(n, n, &a) * (1.0 / 20.0);
    let eye = DMatrix::<f64>::identity(n, n);
    let m2 = &m * &m;
    let m3 = &m2 * &m;
    let m4 = &m3 * &m;
    let p = &eye + &m + m2 * 0.5 + m3 / 6.0 + m4 / 24.0;
    let expected = 20.0 * p.determinant().ln();
    let mut x = x0.clone();
    let (ld, _) = rk4(20, DensityMode::ExactDiscrete)
        .forward(&field, &mut x, &mut ws)
        .unwrap();
    assert!((ld - expected).abs() < 1e-13, "{ld} vs {expected}");
    // It differs from the continuous value only at O(h⁴)·…: small but not zero.
    assert!((ld - trace).abs() > 0.0);
    let (ld_inv, _) = rk4(20, DensityMode::ExactDiscrete)
        .inverse(&field, &mut x, &mut ws)
        .unwrap();
    assert!((ld_inv + expected).abs() < 1e-13);
    assert!(max_abs_diff(&x, &x0) < 1e-14);
}

#[test]
fn dormand_prince_matches_known_solutions_in_both_directions() {
    let mut ws = Workspace::new(1);
    let x0 = 0.5;
    let mut x = vec![x0];
    let (ld, stats) = dopri(1e-10, 1e-12)
        .forward(&Riccati, &mut x, &mut ws)
        .unwrap();
    assert!((x[0] - 1.0).abs() < 1e-8, "x(1) = {}", x[0]);
    assert!((ld - 2.0 * 2f64.ln()).abs() < 1e-8, "{ld}");
    assert!(stats.n_eval > 10 && stats.n_steps > 2);
    let (ld_inv, _) = dopri(1e-10, 1e-12)
        .inverse(&Riccati, &mut x, &mut ws)
        .unwrap();
    assert!((x[0] - x0).abs() < 1e-8);
    assert!((ld_inv + 2.0 * 2f64.ln()).abs() < 1e-8);

    let field = Breathing { n: 4 };
    let mut ws = Workspace::new(4);
    let mut x = vec![1.0, -1.0, 2.0, 0.25];
    let (ld, _) = dopri(1e-9, 1e-12).forward(&field, &mut x, &mut ws).unwrap();
    let g = 1f64.sin().exp();
    assert!(max_abs_diff(&x, &[g, -g, 2.0 * g, 0.25 * g]) < 1e-7);
    assert!((ld - 4.0 * 1f64.sin()).abs() < 1e-7);
}

#[test]
fn dormand_prince_error_shrinks_with_tolerance_and_costs_more() {
    let mut ws = Workspace::new(1);
    let mut errors = Vec::new();
    let mut evals = Vec::new();
    for rtol in [1e-4, 1e-7, 1e-10] {
        let mut x = vec![0.5];
        let (_, stats) = dopri(rtol, rtol * 1e-2)
            .forward(&Riccati, &mut x, &mut ws)
            .unwrap();
        errors.push((x[0] - 1.0).abs());
        evals.push(stats.n_eval);
    }
    assert!(errors[2] < errors[0], "{errors:?}");
    assert!(evals[0] < evals[1] && evals[1] < evals[2], "{evals:?}");
}

#[test]
fn dormand_prince_fails_cleanly_when_steps_run_out() {
    // x² from x₀ = 0.99 blows up at t ≈ 1.0101: reachable only with many tiny steps.
    let cfg = Dopri5Config {
        rtol: 1e-12,
        atol: 1e-14,
        max_steps: 5,
    };
    let integ = Integrator::new(Method::Dopri5(cfg), DensityMode::Continuous).unwrap();
    let mut ws = Workspace::new(1);
    let err = integ.forward(&Riccati, &mut [0.99], &mut ws).unwrap_err();
    assert!(matches!(err, eqflow::Error::NotConverged { .. }), "{err}");
}

#[test]
fn invalid_integrator_settings_are_rejected() {
    assert!(Integrator::new(Method::Rk4 { n_steps: 0 }, DensityMode::Continuous).is_err());
    let dp = Method::Dopri5(Dopri5Config::default());
    assert!(Integrator::new(dp, DensityMode::ExactDiscrete).is_err());
    let bad = Method::Dopri5(Dopri5Config {
        rtol: -1.0,
        ..Dopri5Config::default()
    });
    assert!(Integrator::new(bad, DensityMode::Continuous).is_err());
}

#[test]
fn exact_discrete_log_det_matches_finite_difference_jacobian_of_the_whole_map() {
    let mut r = rng(21);
    for (n, dim, kernels, spread) in [
        (4, 2, KernelConfig::double_well(), 2.0),
        (13, 3, KernelConfig::lennard_jones(), 1.2),
    ] {
        let field = random_field(n, dim, kernels, 3);
        let len = n * dim;
        let integ = rk4(20, DensityMode::ExactDiscrete);
        let mut ws = Workspace::new(len);
        let z = random_config(&mut r, len, spread);
        let mut x = z.clone();
        let (log_det, stats) = integ.forward(&field, &mut x, &mut ws).unwrap();
        assert_eq!(stats.n_eval, 80);
        // The continuous-mode RK4 map is the same map.
        let mut x_cont = z.clone();
        rk4(20, DensityMode::Continuous)
            .forward(&field, &mut x_cont, &mut ws)
            .unwrap();
        assert!(max_abs_diff(&x, &x_cont) < 1e-14);
        let map = |y: &[f64]| {
            let mut y = y.to_vec();
            let mut ws = Workspace::new(len);
            rk4(20, DensityMode::Continuous)
                .forward(&field, &mut y, &mut ws)
                .unwrap();
            y
        };
        let fd = fd_jacobian(map, &z, 1e-5);
        let fd_log_det = log_abs_det(&fd, len);
        assert!(
            (log_det - fd_log_det).abs() < 1e-7 * log_det.abs().max(1.0),
            "{n}x{dim}: exact {log_det} vs finite differences {fd_log_det}"
        );
    }
}

#[test]
fn round_trips_in_every_mode() {
    let mut r = rng(31);
    for (n, dim, kernels, spread) in [
        (4, 2, KernelConfig::double_well(), 2.0),
        (13, 3, KernelConfig::lennard_jones(), 1.2),
    ] {
        let field = random_field(n, dim, kernels, 8);
        let len = n * dim;
        let mut ws = Workspace::new(len);
        let z = random_config(&mut r, len, spread);
        for (integ, tol_x, tol_ld) in [
            (rk4(20, DensityMode::ExactDiscrete), 1e-12, 1e-11),
            (rk4(20, DensityMode::Continuous), 1e-3, 1e-2),
            (rk4(200, DensityMode::Continuous), 1e-6, 1e-5),
            (dopri(1e-8, 1e-10), 1e-6, 1e-5),
        ] {
            let mut x = z.clone();
            let (fwd, _) = integ.forward(&field, &mut x, &mut ws).unwrap();
            let (inv, stats) = integ.inverse(&field, &mut x, &mut ws).unwrap();
            let dx = max_abs_diff(&x, &z);
            assert!(dx < tol_x, "{:?}: round trip error {dx}", integ.method());
            assert!(
                (fwd + inv).abs() < tol_ld,
                "{:?}: {fwd} vs {inv}",
                integ.method()
            );
            assert!(stats.n_eval > 0);
        }
    }
}

/// The exact-discrete inverse takes its chord matrix from the previous step's stage Jacobians
/// where the contraction is strong (DW-4) and evaluates it where it is not (LJ-13, narrow time
/// kernels); either way it must stay as cheap as measured and exact. A wrong extrapolation
/// shows up as more map evaluations (or as the evaluated path taking over).
#[test]
fn exact_inverse_reuses_the_extrapolated_chord_matrix_only_where_it_costs_nothing() {
    let mut r = rng(37);
    let n_steps = 20;
    let integ = rk4(n_steps, DensityMode::ExactDiscrete);
    // (system, Jacobians of v per step at most, field values per step at most); measured on
    // these samples: DW-4 4.05 and 11.25 (4.99 and 12.19 when the chord matrix is J at the
    // step's end alone), LJ-13 5.00 and 19.39.
    for (n, dim, kernels, max_jac, max_eval) in [
        (4, 2, KernelConfig::double_well(), 4.2, 11.6),
        (13, 3, KernelConfig::lennard_jones(), 5.0, 20.0),
    ] {
        let field = eqflow::field::KernelField::initialise(
            eqflow::geometry::Layout::new(n, dim).unwrap(),
            kernels,
            0,
        )
        .unwrap();
        let len = n * dim;
        let mut ws = Workspace::new(len);
        let (mut n_jac, mut n_eval) = (0, 0);
        let samples = 20;
        for _ in 0..samples {
            let z = random_config(&mut r, len, 1.0);
            let mut x = z.clone();
            let (fwd, _) = integ.forward(&field, &mut x, &mut ws).unwrap();
            let (inv, stats) = integ.inverse(&field, &mut x, &mut ws).unwrap();
            assert!(max_abs_diff(&x, &z) < 1e-12);
            assert!((fwd + inv).abs() < 1e-11, "{fwd} vs {inv}");
            n_jac += stats.n_jacobian;
            n_eval += stats.n_eval;
        }
        let per_step = |c: u64| c as f64 / (samples * n_steps) as f64;
        eprintln!(
            "{n} particles: {:.2} Jacobians and {:.2} values per step",
            per_step(n_jac),
            per_step(n_eval)
        );
        // Every step's full step costs 4 Jacobians; a chord matrix evaluated costs one more.
        assert!(
            per_step(n_jac) <= max_jac,
            "{n} particles: {} Jacobians per step",
            per_step(n_jac)
        );
        assert!(
            per_step(n_eval) <= max_eval,
            "{n} particles: {} values per step",
            per_step(n_eval)
        );
    }
}

#[test]
fn a_step_that_is_not_a_bijection_is_reported_not_integrated() {
    // One RK4 step of size 1 on v = y² is a polynomial map of degree 16 that folds over
    // somewhere: find a point where its derivative is negative by scanning, then check that
    // the exact-discrete mode refuses to report a density there.
    let integ = rk4(1, DensityMode::ExactDiscrete);
    let cont = rk4(1, DensityMode::Continuous);
    let mut ws = Workspace::new(1);
    let phi = |y: f64, ws: &mut Workspace| {
        let mut x = vec![y];
        cont.forward(&Riccati, &mut x, ws).unwrap();
        x[0]
    };
    let folded = (0..2000)
        .map(|i| -6.0 + 7.0 * i as f64 / 2000.0)
        .find(|&y| phi(y + 1e-6, &mut ws) < phi(y - 1e-6, &mut ws))
        .expect("the step map folds somewhere in [-6, 1]");
    let result = integ.forward(&Riccati, &mut [folded], &mut ws);
    assert!(
        matches!(result, Err(eqflow::Error::NotInvertible { .. })),
        "{result:?}"
    );
    // Where it is monotone, the same call succeeds.
    assert!(integ.forward(&Riccati, &mut [0.1], &mut ws).is_ok());
}

/// v = x where x₀ ≤ 1. Where x₀ > 1 the field has blown up: with `values`, v₀ and ∂v₀/∂x₀
/// are NaN; without, only the off-diagonal ∂v₀/∂x₁ is, and the values stay finite.
struct Poisoned {
    values: bool,
}

impl VectorField for Poisoned {
    fn state_len(&self) -> usize {
        2
    }
    fn velocity_into(&self, x: &[f64], _t: f64, v: &mut [f64]) -> f64 {
        let bad = self.values && x[0] > 1.0;
        v[0] = if bad { f64::NAN } else { x[0] };
        v[1] = x[1];
        if bad { f64::NAN } else { 2.0 }
    }
    fn velocity_jacobian_into(&self, x: &[f64], t: f64, v: &mut [f64], jac: &mut [f64]) -> f64 {
        let nan_if = |bad: bool, v: f64| if bad && x[0] > 1.0 { f64::NAN } else { v };
        jac.copy_from_slice(&[
            nan_if(self.values, 1.0),
            nan_if(!self.values, 0.0),
            0.0,
            1.0,
        ]);
        self.velocity_into(x, t, v)
    }
}

#[test]
fn a_field_that_blows_up_is_reported_as_non_finite_in_every_mode_and_direction() {
    // Where the field is finite (x₀ stays below 1 from 0.1 within a factor e), every solve
    // succeeds; where it is not, every solve that uses the failing part reports `NonFinite`:
    // never a "not invertible" fold, nor a converged inverse built on the finite components, nor
    // a log-determinant that skipped the NaN entry.
    let mut ws = Workspace::new(2);
    for values in [true, false] {
        let field = Poisoned { values };
        let integrators = if values {
            vec![
                rk4(20, DensityMode::ExactDiscrete),
                rk4(20, DensityMode::Continuous),
                dopri(1e-8, 1e-10),
            ]
        } else {
            // A Jacobian entry alone matters only to the exact-discrete mode.
            vec![rk4(20, DensityMode::ExactDiscrete)]
        };
        for integ in integrators {
            for forward in [true, false] {
                let solve = |x: &mut [f64], ws: &mut Workspace| {
                    if forward {
                        integ.forward(&field, x, ws)
                    } else {
                        integ.inverse(&field, x, ws)
                    }
                };
                assert!(solve(&mut [0.1, 0.2], &mut ws).is_ok());
                let err = solve(&mut [2.0, 0.2], &mut ws).unwrap_err();
                assert!(
                    matches!(err, eqflow::Error::NonFinite { .. }),
                    "NaN values {values}, {:?}, forward {forward}: {err}",
                    integ.mode()
                );
            }
        }
    }
}

/// Records every time at which it is evaluated (the field itself is the breathing one).
struct TimeRecorder {
    inner: Breathing,
    times: std::sync::Mutex<Vec<f64>>,
}

impl TimeRecorder {
    fn record(&self, t: f64) {
        self.times.lock().unwrap().push(t);
    }
}

impl VectorField for TimeRecorder {
    fn state_len(&self) -> usize {
        self.inner.state_len()
    }
    fn velocity_into(&self, x: &[f64], t: f64, v: &mut [f64]) -> f64 {
        self.record(t);
        self.inner.velocity_into(x, t, v)
    }
    fn velocity_only_into(&self, x: &[f64], t: f64, v: &mut [f64]) {
        self.record(t);
        self.inner.velocity_into(x, t, v);
    }
    fn velocity_jacobian_into(&self, x: &[f64], t: f64, v: &mut [f64], jac: &mut [f64]) -> f64 {
        self.record(t);
        self.inner.velocity_jacobian_into(x, t, v, jac)
    }
}

#[test]
fn fixed_grid_solves_evaluate_the_field_only_at_the_tabulated_times() {
    // The tabulated field has tables at `rk4_stage_times` only; an evaluation anywhere else
    // (even one ulp away) silently takes the slow exact path. Every RK4 solve, in both
    // directions and both modes, must stay on the table times, and there are 2n + 1 of them.
    for n_steps in [1, 3, 7, 20, 33] {
        let tabulated = eqflow::integrate::rk4_stage_times(n_steps);
        assert_eq!(tabulated.len(), 2 * n_steps + 1);
        for mode in [DensityMode::Continuous, DensityMode::ExactDiscrete] {
            let field = TimeRecorder {
                inner: Breathing { n: 3 },
                times: std::sync::Mutex::new(Vec::new()),
            };
            let integ = rk4(n_steps, mode);
            let mut ws = Workspace::new(3);
            let mut x = vec![0.3, -0.2, 0.5];
            integ.forward(&field, &mut x, &mut ws).unwrap();
            integ.inverse(&field, &mut x, &mut ws).unwrap();
            let times = field.times.into_inner().unwrap();
            assert!(
                times.len() >= 8 * n_steps,
                "{mode:?}: {} evaluations",
                times.len()
            );
            for t in times {
                assert!(
                    tabulated.iter().any(|s| s.to_bits() == t.to_bits()),
                    "{mode:?}, {n_steps} steps: evaluated at t = {t:e}, not a table time"
                );
            }
        }
    }
}
