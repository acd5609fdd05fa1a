//! The flow: exact-discrete consistency, normalisation by quadrature, invariance of log q,
//! determinism across thread counts, and input validation.

mod common;

use common::*;
use eqflow::field::{KernelConfig, KernelField};
use eqflow::geometry::Layout;
use eqflow::integrate::{DensityMode, Dopri5Config, Integrator, Method};
use eqflow::prior::Prior;
use eqflow::{Error, Flow};
use rand::RngExt;

fn flow_with(n: usize, dim: usize, kernels: KernelConfig, seed: u64, integ: Integrator) -> Flow {
    let field = random_field(n, dim, kernels, seed);
    let prior = Prior::new(Layout::new(n, dim).unwrap(), 1.0).unwrap();
    let mut flow = Flow::from_parts(prior, field, integ).unwrap();
    // Strict mode off: these strong random fields (not certified at 20 steps) test the map's
    // exactness and symmetries where the step certificate cannot vouch for it.
    flow.set_require_certificate(false);
    flow
}

fn continuous_rk4(n_steps: usize) -> Integrator {
    Integrator::new(Method::Rk4 { n_steps }, DensityMode::Continuous).unwrap()
}

#[test]
fn sample_log_q_equals_log_density_to_round_off_in_exact_discrete_mode() {
    for (n, dim, kernels) in [
        (4, 2, KernelConfig::double_well()),
        (13, 3, KernelConfig::lennard_jones()),
    ] {
        let flow = flow_with(n, dim, kernels, 3, Integrator::default());
        let (x, log_q) = flow.sample(42, 64).unwrap();
        let again = flow.log_density(&x).unwrap();
        let worst = max_abs_diff(&log_q, &again);
        assert!(worst <= 1e-10, "{n}x{dim}: |Δ log q| = {worst}");
        // Samples are CoM-free.
        for xi in x.chunks_exact(n * dim) {
            for k in 0..dim {
                let s: f64 = xi.iter().skip(k).step_by(dim).sum();
                assert!(s.abs() < 1e-12);
            }
        }
    }
}

#[test]
fn continuous_mode_disagrees_at_the_discretisation_level_only() {
    let flow = flow_with(4, 2, KernelConfig::double_well(), 3, continuous_rk4(20));
    let (x, log_q) = flow.sample(1, 32).unwrap();
    let again = flow.log_density(&x).unwrap();
    let worst = max_abs_diff(&log_q, &again);
    assert!(worst < 1e-2 && worst > 0.0, "{worst}");
    let mut fine = flow.clone();
    fine.set_integrator(
        Integrator::new(
            Method::Dopri5(Dopri5Config {
                rtol: 1e-9,
                atol: 1e-11,
                ..Dopri5Config::default()
            }),
            DensityMode::Continuous,
        )
        .unwrap(),
    );
    let (x, log_q) = fine.sample(1, 8).unwrap();
    let again = fine.log_density(&x).unwrap();
    assert!(max_abs_diff(&log_q, &again) < 1e-6);
}

#[test]
fn log_q_is_invariant_under_rotations_reflections_permutations_and_translations() {
    let mut r = rng(12);
    for (n, dim, kernels) in [
        (4, 2, KernelConfig::double_well()),
        (13, 3, KernelConfig::lennard_jones()),
    ] {
        for integ in [Integrator::default(), continuous_rk4(20)] {
            let flow = flow_with(n, dim, kernels.clone(), 5, integ);
            let (x, _) = flow.sample(9, 4).unwrap();
            let base = flow.log_density(&x).unwrap();
            let len = n * dim;
            let mut transformed = Vec::new();
            for xi in x.chunks_exact(len) {
                let q = random_orthogonal(&mut r, dim, true);
                let mut y = rotate(xi, dim, &q);
                let perm: Vec<usize> = (0..n).map(|i| (i * 5 + 3) % n).collect();
                y = permute(&y, dim, &perm);
                for v in y.iter_mut() {
                    *v += 7.5;
                }
                transformed.extend(y);
            }
            let moved = flow.log_density(&transformed).unwrap();
            assert!(max_abs_diff(&base, &moved) < 1e-9, "{base:?} vs {moved:?}");
        }
    }
}

/// ∫ q over the 2-D CoM-free plane of DW-2, parametrised isometrically by u ∈ R²:
/// x(u) = (u/√2, −u/√2).
fn dw2_density(flow: &Flow, u: &[(f64, f64)]) -> Vec<f64> {
    let s = std::f64::consts::FRAC_1_SQRT_2;
    let x: Vec<f64> = u
        .iter()
        .flat_map(|&(a, b)| [a * s, b * s, -a * s, -b * s])
        .collect();
    flow.log_density(&x)
        .unwrap()
        .into_iter()
        .map(f64::exp)
        .collect()
}

#[test]
fn dw2_density_integrates_to_one_over_its_com_free_plane() {
    for (integ, tol) in [(Integrator::default(), 1e-7), (continuous_rk4(20), 1e-3)] {
        let flow = flow_with(2, 2, KernelConfig::double_well(), 17, integ);
        // Radial quadrature (q is rotation invariant; checked above), Simpson on [0, 12]:
        // the integrand 2πρ·q(ρ) has a non-zero slope at 0, which the trapezoid rule would
        // turn into an O(h²) error.
        let m = 2400;
        let rmax = 12.0;
        let dr = rmax / m as f64;
        let pts: Vec<(f64, f64)> = (0..=m).map(|i| (i as f64 * dr, 0.0)).collect();
        let q = dw2_density(&flow, &pts);
        assert!(q[m] < 1e-20, "tail {}", q[m]);
        let mut total = 0.0;
        for (i, qi) in q.iter().enumerate() {
            let w = if i == 0 || i == m {
                1.0
            } else if i % 2 == 1 {
                4.0
            } else {
                2.0
            };
            total += w / 3.0 * 2.0 * std::f64::consts::PI * (i as f64 * dr) * qi * dr;
        }
        assert!(
            (total - 1.0).abs() < tol,
            "{:?}: ∫q = {total}",
            flow.integrator()
        );
        // A genuinely two-dimensional grid agrees, without assuming the symmetry.
        let g = 100;
        let half = 9.0;
        let h = 2.0 * half / g as f64;
        let grid: Vec<(f64, f64)> = (0..=g)
            .flat_map(|i| (0..=g).map(move |j| (-half + i as f64 * h, -half + j as f64 * h)))
            .collect();
        let total_2d: f64 = dw2_density(&flow, &grid).iter().sum::<f64>() * h * h;
        // The softened distance bends q on a 1e−3 scale at u = 0, which a coarse grid does not
        // resolve: this check is coarser than the radial one.
        assert!(
            (total_2d - 1.0).abs() < tol.max(1e-5),
            "2-D grid: ∫q = {total_2d}"
        );
    }
}

#[test]
fn results_are_bit_identical_for_any_thread_count_and_seed_dependent() {
    let flow = flow_with(
        13,
        3,
        KernelConfig::lennard_jones(),
        2,
        Integrator::default(),
    );
    let run = |threads: usize| {
        pool(threads).install(|| {
            let (x, log_q) = flow.sample(77, 24).unwrap();
            let again = flow.log_density(&x).unwrap();
            (x, log_q, again)
        })
    };
    let one = run(1);
    let two = run(2);
    let three = run(3);
    assert_eq!(one, two);
    assert_eq!(one, three);
    // A prefix of a larger batch is the smaller batch: streams belong to sample indices.
    let (x8, _) = flow.sample(77, 8).unwrap();
    assert_eq!(&x8[..], &one.0[..8 * 39]);
    let (other, _) = flow.sample(78, 8).unwrap();
    assert_ne!(x8, other);
}

#[test]
fn untrained_flow_constructor_uses_the_dw_preset() {
    let flow = Flow::new(4, 2, 0).unwrap();
    assert_eq!((flow.n_particles(), flow.dim()), (4, 2));
    assert_eq!(
        flow.field().as_kernel().unwrap().kernels(),
        &KernelConfig::double_well()
    );
    assert_eq!(flow.integrator(), Integrator::default());
    assert_eq!(flow.integrator().method(), Method::Rk4 { n_steps: 20 });
    assert_eq!(flow.integrator().mode(), DensityMode::ExactDiscrete);
    assert!(Flow::new(1, 2, 0).is_err());
    assert!(Flow::new(4, 0, 0).is_err());
    let layout = Layout::new(4, 2).unwrap();
    let field = KernelField::initialise(layout, KernelConfig::double_well(), 0).unwrap();
    let other = Prior::new(Layout::new(5, 2).unwrap(), 1.0).unwrap();
    assert!(Flow::from_parts(other, field, Integrator::default()).is_err());
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let flow = Flow::new(4, 2, 0).unwrap();
    let mut log_q = vec![0.0; 2];
    let err = flow.log_density_into(&[0.0; 15], &mut log_q).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DimensionMismatch {
                expected: 16,
                found: 15,
                ..
            }
        ),
        "{err}"
    );
    let mut x = vec![0.5; 16];
    x[3] = f64::NAN;
    assert!(matches!(
        flow.log_density_into(&x, &mut log_q),
        Err(Error::NonFinite { .. })
    ));
    x[3] = f64::INFINITY;
    assert!(matches!(
        flow.log_density_into(&x, &mut log_q),
        Err(Error::NonFinite { .. })
    ));
    let mut out = vec![0.0; 15];
    assert!(flow.sample_into(1, &mut out, &mut log_q).is_err());
    // Zero samples is fine.
    assert!(flow.sample_into(1, &mut [], &mut []).is_ok());
}

#[test]
fn latents_returned_by_sampling_and_density_agree() {
    let flow = flow_with(4, 2, KernelConfig::double_well(), 4, Integrator::default());
    let n = 5;
    let mut z = vec![0.0; n * 8];
    let mut x = vec![0.0; n * 8];
    let mut log_q = vec![0.0; n];
    let stats = flow
        .sample_full_into(3, Some(&mut z), &mut x, &mut log_q)
        .unwrap();
    assert_eq!(stats.n_eval, 80 * n as u64);
    let mut z_back = vec![0.0; n * 8];
    let mut log_q_back = vec![0.0; n];
    let stats = flow
        .log_density_full_into(&x, Some(&mut z_back), &mut log_q_back)
        .unwrap();
    assert!(max_abs_diff(&z, &z_back) < 1e-12);
    assert!(stats.n_newton >= 20 * n as u64);
}

#[test]
fn concurrent_first_use_of_a_flow_from_many_threads_does_not_deadlock() {
    // Tables are built lazily inside a OnceLock; several host threads hitting a fresh flow at
    // once (each going through the rayon pool) once deadlocked through work stealing.
    // The C ABI runs every batch call inside its own pool: do the same here.
    let flow = std::sync::Arc::new(Flow::new(13, 3, 1).unwrap());
    let pool = std::sync::Arc::new(pool(2));
    let (done, finished) = std::sync::mpsc::channel();
    for t in 0..4u64 {
        let flow = flow.clone();
        let pool = pool.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let result = pool.install(|| flow.sample(t, 16).map(|(_, log_q)| log_q.len()));
            done.send(result).ok();
        });
    }
    for _ in 0..4 {
        let result = finished
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("a sampling thread did not finish: deadlock");
        assert_eq!(result.unwrap(), 16);
    }
}

/// Finite coordinates far beyond any physical range (a configuration translated by 1e300, or
/// particles 1e200 apart): the density is a finite number or an error, never NaN with success;
/// and a translation the CoM removal can represent gives the untranslated value.
#[test]
fn extreme_finite_coordinates_give_finite_densities_or_errors() {
    let lj = eqflow::system::System::preset("lj13").unwrap();
    let dw = eqflow::system::System::preset("dw4").unwrap();
    let flows = [
        lj.untrained_flow(1).unwrap(),
        dw.untrained_flow(2).unwrap(),
        dw.untrained_flow_of("envpair", 3).unwrap(),
        dw.untrained_flow_of("coordkernel", 4).unwrap(),
        lj.untrained_flow_of("coordkernel", 5).unwrap(),
    ];
    let mut r = rng(44);
    for mut flow in flows {
        // The paper's draw, mostly uncertified at 20 steps: the subject is the arithmetic.
        flow.set_require_certificate(false);
        let len = flow.layout().len();
        let dim = flow.layout().dim;
        let (x, log_q) = flow.sample(3, 1).unwrap();
        for shift in [1e6, 1e15, 1e300, -1e308] {
            let moved: Vec<f64> = x.iter().map(|v| v + shift).collect();
            let mut out = [0.0];
            match flow.log_density_into(&moved, &mut out) {
                Ok(()) => {
                    assert!(
                        out[0].is_finite(),
                        "shift {shift}: OK with log q {}",
                        out[0]
                    );
                    if shift.abs() <= 1e6 {
                        assert!((out[0] - log_q[0]).abs() < 1e-6, "shift {shift}");
                    }
                }
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
        // Spread particles: finite, possibly huge.
        for scale in [1e50, 1e200, 1e300] {
            let spread: Vec<f64> = (0..len)
                .map(|i| scale * (i % dim + 1) as f64 * if r.random_bool(0.5) { 1.0 } else { -1.0 })
                .collect();
            let mut out = [0.0];
            if flow.log_density_into(&spread, &mut out).is_ok() {
                assert!(
                    out[0].is_finite(),
                    "spread {scale}: OK with log q {}",
                    out[0]
                );
            }
        }
    }
}

/// A DW-4 flow with `n_steps` exact-discrete RK4 steps and strict mode on.
fn strict_dw4(n_steps: usize, seed: u64) -> Flow {
    let mut flow = Flow::new(4, 2, seed).unwrap();
    flow.set_integrator(
        Integrator::new(Method::Rk4 { n_steps }, DensityMode::ExactDiscrete).unwrap(),
    );
    flow.set_require_certificate(true);
    flow
}

#[test]
fn strict_mode_samples_a_certified_grid_and_refuses_an_uncertified_one() {
    let needed = Flow::new(4, 2, 7).unwrap().certified_step_count().unwrap();
    assert!(needed > 1, "the test needs a grid that is not certified");
    // Certified: the same bits as without strict mode.
    let certified = strict_dw4(needed, 7);
    assert!(certified.certificate().unwrap().is_certified());
    let mut plain = certified.clone();
    plain.set_require_certificate(false);
    let (x, log_q) = certified.sample(3, 8).unwrap();
    assert_eq!((x.clone(), log_q.clone()), plain.sample(3, 8).unwrap());
    assert_eq!(
        certified.log_density(&x).unwrap(),
        plain.log_density(&x).unwrap()
    );
    // Uncertified: every entry point refuses with a typed error naming the step count.
    let strict = strict_dw4(needed - 1, 7);
    let before = strict.clone();
    let expect_refusal = |err: Error| match &err {
        Error::Uncertified {
            n_steps,
            certified_steps,
            ..
        } => {
            assert_eq!((*n_steps, *certified_steps), (needed - 1, Some(needed)));
            assert!(
                err.to_string()
                    .contains(&format!("certified with {needed} RK4 steps")),
                "{err}"
            );
        }
        other => panic!("expected Error::Uncertified, got {other:?}"),
    };
    expect_refusal(strict.sample(3, 8).unwrap_err());
    expect_refusal(strict.log_density(&x).unwrap_err());
    expect_refusal(strict.log_density_each(&x).unwrap_err());
    let mut out = vec![f64::NAN; x.len()];
    let mut out_q = vec![f64::NAN; 8];
    expect_refusal(strict.sample_into(3, &mut out, &mut out_q).unwrap_err());
    assert!(
        out.iter().chain(&out_q).all(|v| v.is_nan()),
        "nothing written"
    );
    let mut one = x[..8].to_vec();
    expect_refusal(
        strict
            .pull_back(&mut one, &mut strict.workspace())
            .unwrap_err(),
    );
    assert_eq!(one, x[..8], "input untouched");
    let mut mv =
        eqflow::flow_move::FlowMove::new(std::sync::Arc::new(strict.clone()), 1.0, 0).unwrap();
    expect_refusal(mv.propose(&x[..8], 0.0).unwrap_err());
    assert_eq!(mv.stats().n_proposed, 0);
    assert_eq!(strict, before, "the flow is unchanged");
    // Strict mode has no effect in the continuous mode.
    let mut continuous = strict.clone();
    continuous.set_integrator(continuous_rk4(needed - 1));
    assert!(continuous.sample(3, 8).is_ok());
    // A change of parameters is seen: a certified strict flow whose field grows is refused.
    let mut grown = strict_dw4(needed, 7);
    grown.sample(1, 1).unwrap();
    let p: Vec<f64> = grown.field().params().iter().map(|v| 3.0 * v).collect();
    grown.set_params(&p).unwrap();
    assert!(!grown.certificate().unwrap().is_certified());
    assert!(matches!(grown.sample(1, 1), Err(Error::Uncertified { .. })));
}

#[test]
fn absurd_sample_counts_are_resource_errors_not_aborts() {
    // Issue 14: the allocating conveniences check their need instead of aborting the process.
    let flow = Flow::new(4, 2, 0).unwrap();
    for n in [usize::MAX / 8, 1 << 60, 1 << 40] {
        match flow.sample(0, n) {
            Err(Error::Resource {
                need_bytes,
                limit_bytes,
                ..
            }) => {
                assert_eq!(limit_bytes, eqflow::alloc::MAX_ALLOCATION_BYTES);
                // x (n·8 doubles) overflows or is refused before log q is asked for.
                let expected = (n as u128)
                    .checked_mul(64)
                    .filter(|_| n.checked_mul(8).is_some());
                assert_eq!(need_bytes, expected.unwrap_or(u128::MAX), "n = {n}");
            }
            other => panic!("n = {n}: expected a resource error, got {other:?}"),
        }
    }
}

/// Multiplies the parameters the field's output is linear in by `factor`: a field as much
/// stiffer, whose certified step count grows with it.
fn scale_output(flow: &mut Flow, factor: f64) {
    let mut params = flow.field().params().to_vec();
    for block in flow.field().output_linear_blocks() {
        for p in &mut params[block] {
            *p *= factor;
        }
    }
    flow.set_params(&params).unwrap();
}

/// A refusal names the certified step count only up to `MAX_STEP_GROWTH` times the flow's
/// own: a field that needs more says so without searching further (a loose bound's search to
/// 30,000 steps cost 25 s per refused call).
#[test]
fn a_refusal_searches_step_counts_up_to_sixteen_times_the_flows_own() {
    let mut flow = Flow::new(4, 2, 0).unwrap();
    scale_output(&mut flow, 200.0);
    let needed = flow
        .certified_step_count()
        .expect("a finite bound certifies some count");
    let limit = 20 * eqflow::flow::MAX_STEP_GROWTH;
    assert!(
        needed > limit,
        "the test needs a field beyond the search: {needed}"
    );
    assert_eq!(flow.certified_step_count_up_to(limit), None);
    assert_eq!(flow.certified_step_count_up_to(needed), Some(needed));
    match flow.sample(1, 2) {
        Err(Error::Uncertified {
            n_steps,
            certified_steps,
            searched_steps,
            ..
        }) => assert_eq!(
            (n_steps, certified_steps, searched_steps),
            (20, None, limit)
        ),
        other => panic!("{other:?}"),
    }
    let message = flow.sample(1, 2).unwrap_err().to_string();
    assert!(
        message.contains(&format!("up to {limit} certifies")),
        "{message}"
    );
}

/// Reports (`Flow::certified_step_count`, `eqf_flow_certificate`, the CLI) search up to 16
/// times the flow's own step count or `MIN_STEP_SEARCH`, whichever is larger: a loose bound
/// no longer costs a search to 100,000 steps (15.7 s on an envpair model) for a count no one
/// would run.
#[test]
fn reports_search_step_counts_up_to_a_limit_that_grows_with_the_flows_own() {
    use eqflow::flow::{MAX_STEP_GROWTH, MIN_STEP_SEARCH};
    use eqflow::integrate::{DensityMode, Dopri5Config, Integrator, MAX_RK4_STEPS, Method};
    let mut flow = Flow::new(4, 2, 0).unwrap();
    let with = |flow: &mut Flow, method| {
        let mode = match method {
            Method::Rk4 { .. } => DensityMode::ExactDiscrete,
            Method::Dopri5(_) => DensityMode::Continuous,
        };
        flow.set_integrator(Integrator::new(method, mode).unwrap());
        flow.step_search_limit()
    };
    assert_eq!(
        with(&mut flow, Method::Rk4 { n_steps: 20 }),
        MIN_STEP_SEARCH
    );
    assert_eq!(
        with(&mut flow, Method::Rk4 { n_steps: 1_000 }),
        1_000 * MAX_STEP_GROWTH
    );
    assert_eq!(
        with(&mut flow, Method::Rk4 { n_steps: 10_000 }),
        MAX_RK4_STEPS
    );
    let dopri = Method::Dopri5(Dopri5Config::default());
    assert_eq!(with(&mut flow, dopri), MIN_STEP_SEARCH);
    // A field scaled until it needs more than the limit at 20 steps: reported as none.
    with(&mut flow, Method::Rk4 { n_steps: 20 });
    scale_output(&mut flow, 800.0);
    let needed = flow
        .certified_step_count_up_to(MAX_RK4_STEPS)
        .expect("a finite bound certifies some count");
    assert!(
        needed > MIN_STEP_SEARCH,
        "the test needs a field beyond the limit: {needed}"
    );
    assert_eq!(flow.certified_step_count(), None);
    // With enough steps of its own the limit reaches the count and the report finds it.
    let own = needed.div_ceil(MAX_STEP_GROWTH);
    with(&mut flow, Method::Rk4 { n_steps: own });
    assert_eq!(flow.certified_step_count(), Some(needed));
}
