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

/// The exact-discrete inverse's cost per step, as measured: DW-4's backward RK4 predictor is
/// close enough for the first-order log-determinant correction, so most steps need no chord
/// evaluation; LJ-13 (narrow time kernels) iterates the chord (its matrix evaluated, not
/// extrapolated) until the correction is small enough. A wrong prediction shows up as more
/// field values or as Newton steps that repeat the full step (4 Jacobians each).
#[test]
fn exact_inverse_stays_as_cheap_as_measured() {
    let mut r = rng(37);
    let n_steps = 20;
    let integ = rk4(n_steps, DensityMode::ExactDiscrete);
    // (system, Jacobians of v per step at most, field values per step at most); measured on
    // these samples: DW-4 4.05 and 7.45 (11.25 when the chord iterated to round-off), LJ-13
    // 5.04 and 15.54 (5.00 and 19.39).
    for (n, dim, kernels, max_jac, max_eval) in [
        (4, 2, KernelConfig::double_well(), 4.2, 7.8),
        (13, 3, KernelConfig::lennard_jones(), 5.15, 16.2),
    ] {
        let field = eqflow::field::KernelField::initialise(
            eqflow::geometry::Layout::new(n, dim).unwrap(),
            kernels,
            0,
        )
        .unwrap();
        let len = n * dim;
        let mut ws = Workspace::new(len);
        let (mut n_jac, mut n_eval, mut n_corrected) = (0, 0, 0);
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
            n_corrected += stats.n_corrected;
        }
        let per_step = |c: u64| c as f64 / (samples * n_steps) as f64;
        eprintln!(
            "{n} particles: {:.2} Jacobians and {:.2} values per step, {:.2} corrected",
            per_step(n_jac),
            per_step(n_eval),
            per_step(n_corrected)
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
        assert!(
            per_step(n_corrected) > 0.9,
            "{n} particles: correction unused"
        );
    }
}

/// A field that hides its divergence gradient: the exact-discrete inverse then iterates every
/// step to round-off and takes the log-determinant at the solution itself.
struct WithoutDivergenceGradient<'a>(&'a dyn VectorField);

impl VectorField for WithoutDivergenceGradient<'_> {
    fn state_len(&self) -> usize {
        self.0.state_len()
    }
    fn velocity_into(&self, x: &[f64], t: f64, v: &mut [f64]) -> f64 {
        self.0.velocity_into(x, t, v)
    }
    fn velocity_only_into(&self, x: &[f64], t: f64, v: &mut [f64]) {
        self.0.velocity_only_into(x, t, v)
    }
    fn velocity_jacobian_into(&self, x: &[f64], t: f64, v: &mut [f64], jac: &mut [f64]) -> f64 {
        self.0.velocity_jacobian_into(x, t, v, jac)
    }
    fn symmetric_jacobian(&self) -> bool {
        self.0.symmetric_jacobian()
    }
}

/// The first-order correction of the log-determinant (one Newton step from the solution)
/// against the forward map's, computed at the exact points: they agree to round-off, on both
/// presets, exact and tabulated; so does z. The same inverse without the correction (the
/// field hiding its divergence gradient: every step iterated to round-off, the log-determinant
/// taken where the residual reached the round-off floor) was measured up to 1.6e−12 off; with
/// the correction's sign flipped, up to 1e−9.
#[test]
fn the_corrected_log_determinant_is_the_forward_one() {
    let mut r = rng(41);
    let n_steps = 20;
    let integ = rk4(n_steps, DensityMode::ExactDiscrete);
    for (n, dim, kernels) in [
        (4, 2, KernelConfig::double_well()),
        (13, 3, KernelConfig::lennard_jones()),
    ] {
        let field = eqflow::field::KernelField::initialise(
            eqflow::geometry::Layout::new(n, dim).unwrap(),
            kernels,
            3,
        )
        .unwrap();
        let tabulated = eqflow::field::TabulatedField::new(
            &field,
            &eqflow::integrate::rk4_stage_times(n_steps),
        )
        .unwrap();
        let len = n * dim;
        let mut ws = Workspace::new(len);
        for f in [&field as &dyn VectorField, &tabulated] {
            let (mut worst_z, mut worst_log_det, mut corrected) = (0.0f64, 0.0f64, 0);
            for _ in 0..10 {
                let z = random_config(&mut r, len, 1.0);
                let mut x = z.clone();
                let (forward, _) = integ.forward(f, &mut x, &mut ws).unwrap();
                let (inverse, stats) = integ.inverse(f, &mut x, &mut ws).unwrap();
                corrected += stats.n_corrected;
                worst_z = worst_z.max(max_abs_diff(&x, &z));
                worst_log_det = worst_log_det.max((forward + inverse).abs());
                // Without the gradient: no correction, the same solution.
                let mut y = z.clone();
                integ.forward(f, &mut y, &mut ws).unwrap();
                let (_, stats) = integ
                    .inverse(&WithoutDivergenceGradient(f), &mut y, &mut ws)
                    .unwrap();
                assert_eq!(stats.n_corrected, 0);
                assert!(max_abs_diff(&y, &z) < 1e-13);
            }
            eprintln!("{n} particles: |Δz| {worst_z:.1e}, |Δ log det| {worst_log_det:.1e}");
            assert!(
                corrected >= 10 * (n_steps as u64 - 1),
                "{corrected} steps corrected"
            );
            assert!(worst_z < 1e-13, "{n} particles: z differs by {worst_z}");
            assert!(
                worst_log_det < 5e-14,
                "{n} particles: log det differs by {worst_log_det}"
            );
        }
    }
}

/// Where the field blows up (x₀ > 1) in [`Poisoned`].
#[derive(Clone, Copy, Debug)]
enum Poison {
    /// v and its divergence.
    Values,
    /// One off-diagonal Jacobian entry.
    JacobianEntry,
    /// The gradient of the divergence (which only the exact-discrete inverse uses).
    DivergenceGradient,
}

struct Poisoned {
    poison: Poison,
}

impl VectorField for Poisoned {
    fn state_len(&self) -> usize {
        2
    }
    fn velocity_into(&self, x: &[f64], _t: f64, v: &mut [f64]) -> f64 {
        let bad = matches!(self.poison, Poison::Values) && x[0] > 1.0;
        v[0] = if bad { f64::NAN } else { x[0] };
        v[1] = x[1];
        if bad { f64::NAN } else { 2.0 }
    }
    fn velocity_jacobian_into(&self, x: &[f64], t: f64, v: &mut [f64], jac: &mut [f64]) -> f64 {
        let nan_if = |poison: bool, v: f64| if poison && x[0] > 1.0 { f64::NAN } else { v };
        jac.copy_from_slice(&[
            nan_if(matches!(self.poison, Poison::Values), 1.0),
            nan_if(matches!(self.poison, Poison::JacobianEntry), 0.0),
            0.0,
            1.0,
        ]);
        self.velocity_into(x, t, v)
    }
    fn velocity_jacobian_divgrad_into(
        &self,
        x: &[f64],
        t: f64,
        v: &mut [f64],
        jacobian: &mut [f64],
        div_gradient: &mut [f64],
    ) -> Option<f64> {
        let bad = matches!(self.poison, Poison::DivergenceGradient) && x[0] > 1.0;
        div_gradient.fill(if bad { f64::NAN } else { 0.0 });
        Some(self.velocity_jacobian_into(x, t, v, jacobian))
    }
}

#[test]
fn a_field_that_blows_up_is_reported_as_non_finite_in_every_mode_and_direction() {
    // Where the field is finite (x₀ stays below 1 from 0.1 within a factor e), every solve
    // succeeds; where it is not, every solve that uses the failing part reports `NonFinite`:
    // never a "not invertible" fold, nor a converged inverse built on the finite components, nor
    // a log-determinant that skipped the NaN entry or a NaN correction.
    let mut ws = Workspace::new(2);
    for poison in [
        Poison::Values,
        Poison::JacobianEntry,
        Poison::DivergenceGradient,
    ] {
        let field = Poisoned { poison };
        // A Jacobian entry matters only to the exact-discrete mode, the divergence gradient
        // only to its inverse.
        let (integrators, directions) = match poison {
            Poison::Values => (
                vec![
                    rk4(20, DensityMode::ExactDiscrete),
                    rk4(20, DensityMode::Continuous),
                    dopri(1e-8, 1e-10),
                ],
                &[true, false][..],
            ),
            Poison::JacobianEntry => (
                vec![rk4(20, DensityMode::ExactDiscrete)],
                &[true, false][..],
            ),
            Poison::DivergenceGradient => (vec![rk4(20, DensityMode::ExactDiscrete)], &[false][..]),
        };
        for integ in integrators {
            for &forward in directions {
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
                    "{poison:?}, {:?}, forward {forward}: {err}",
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
