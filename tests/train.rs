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

use eqflow::energy::Energy;
use eqflow::energy::SerialEnergy;
use eqflow::flow::sample_rng;
use eqflow::geometry::Layout;
use eqflow::integrate::{DensityMode, Integrator, Method};
use eqflow::prior::Prior;
use eqflow::train::{
    AdamWConfig, EpochReport, KlTarget, LambdaSchedule, LossWorkspace, Losses, LrSchedule,
    Objective, Pairing, Rk4Tape, TrainConfig, Trainer, kl_sample,
};
use eqflow::{DoubleWell, Error, Flow, LennardJones};

const N_STEPS: usize = 20;

fn continuous_flow(n: usize, dim: usize, kernels: KernelConfig, seed: u64) -> Flow {
    continuous_flow_sigma(n, dim, kernels, seed, 1.0)
}

fn continuous_flow_sigma(
    n: usize,
    dim: usize,
    kernels: KernelConfig,
    seed: u64,
    sigma: f64,
) -> Flow {
    let field = random_field(n, dim, kernels, seed);
    let prior = Prior::new(Layout::new(n, dim).unwrap(), sigma).unwrap();
    let integ = Integrator::new(Method::Rk4 { n_steps: N_STEPS }, DensityMode::Continuous).unwrap();
    let mut flow = Flow::from_parts(prior, field, integ).unwrap();
    // Training differentiates the exact RBF field; compare with the flow evaluated on it.
    flow.set_tabulated(false);
    flow
}

fn with_params(flow: &Flow, params: &[f64]) -> Flow {
    let mut f = flow.clone();
    f.set_params(params).unwrap();
    f
}

/// Mean −log q by `Flow::log_density_into` (continuous RK4): independent of the training code.
fn reference_nll(flow: &Flow, x: &[f64]) -> f64 {
    let n = x.len() / flow.layout().len();
    let mut log_q = vec![0.0; n];
    // A measurement of whatever map training made: strict mode's refusal has no place here.
    let mut flow = flow.clone();
    flow.set_require_certificate(false);
    flow.log_density_into(x, &mut log_q).unwrap();
    -log_q.iter().sum::<f64>() / n as f64
}

/// Mean KL loss `U(x)/kT − log|det ∂x/∂z|` from `Flow::sample_full_into` (continuous RK4):
/// `log|det| = log ρ(z) − log q(x)`.
fn reference_kl(flow: &Flow, energy: &dyn Energy, kt: f64, seed: u64, n: usize) -> f64 {
    let len = flow.layout().len();
    let (mut z, mut x, mut log_q) = (vec![0.0; n * len], vec![0.0; n * len], vec![0.0; n]);
    flow.sample_full_into(seed, Some(&mut z), &mut x, &mut log_q)
        .unwrap();
    let mut total = 0.0;
    for i in 0..n {
        let log_det = flow.prior().log_density(&z[i * len..(i + 1) * len]) - log_q[i];
        total += energy.energy(&x[i * len..(i + 1) * len]) / kt - log_det;
    }
    total / n as f64
}

/// Checks a gradient against central differences of `loss`: every parameter of each block when
/// `full`, else a random direction in each block plus its three largest entries. Errors are
/// relative to the largest gradient entry of the block. Returns the worst error per block.
fn check_gradient(
    name: &str,
    flow: &Flow,
    gradient: &[f64],
    loss: impl Fn(&Flow) -> f64,
    h: f64,
    full: bool,
    tol: f64,
) {
    let p0 = flow.field().params().to_vec();
    let mut r = rng(99);
    let fd = |dir: &[(usize, f64)]| {
        let mut p = p0.clone();
        for &(i, u) in dir {
            p[i] += h * u;
        }
        let lp = loss(&with_params(flow, &p));
        for &(i, u) in dir {
            p[i] -= 2.0 * h * u;
        }
        let lm = loss(&with_params(flow, &p));
        (lp - lm) / (2.0 * h)
    };
    for (block, range) in flow.field().param_blocks() {
        let g = &gradient[range.clone()];
        let scale = g.iter().fold(1e-8f64, |m, v| m.max(v.abs()));
        let mut worst = 0.0f64;
        let mut indices: Vec<usize> = range.clone().collect();
        if !full {
            indices.sort_by(|&a, &b| gradient[b].abs().total_cmp(&gradient[a].abs()));
            indices.truncate(3);
        }
        for &i in &indices {
            worst = worst.max((fd(&[(i, 1.0)]) - gradient[i]).abs() / scale);
        }
        // A random unit direction in the block: every entry contributes.
        let dir: Vec<(usize, f64)> = range
            .clone()
            .map(|i| (i, r.random_range(-1.0..1.0)))
            .collect();
        let norm = dir.iter().map(|(_, u)| u * u).sum::<f64>().sqrt();
        let dir: Vec<(usize, f64)> = dir.into_iter().map(|(i, u)| (i, u / norm)).collect();
        let analytic: f64 = dir.iter().map(|&(i, u)| gradient[i] * u).sum();
        let g_norm = g.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-8);
        worst = worst.max((fd(&dir) - analytic).abs() / g_norm);
        println!("{name}: {block} rel err {worst:.2e} (|g|∞ = {scale:.3e})");
        assert!(worst < tol, "{name}: {block} gradient error {worst}");
    }
}

/// Mean `|v(x_t, t) − (x1 − x0)|²` from the field's own forward evaluation: independent of the
/// flow-matching code's arithmetic.
fn reference_flow_matching(flow: &Flow, x0: &[f64], x1: &[f64], t: &[f64]) -> f64 {
    let len = flow.layout().len();
    let mut total = 0.0;
    for (i, &ti) in t.iter().enumerate() {
        let s = i * len..(i + 1) * len;
        let xt: Vec<f64> = x0[s.clone()]
            .iter()
            .zip(&x1[s.clone()])
            .map(|(a, b)| (1.0 - ti) * a + ti * b)
            .collect();
        let v = velocity(flow.field(), &xt, ti);
        total += v
            .iter()
            .zip(x0[s.clone()].iter().zip(&x1[s]))
            .map(|(v, (a, b))| (v - (b - a)).powi(2))
            .sum::<f64>();
    }
    total / t.len() as f64
}

#[test]
fn flow_matching_gradient_matches_finite_differences() {
    for (n, dim, kernels, n_pairs, full) in [
        (4, 2, KernelConfig::double_well(), 5, true),
        (13, 3, KernelConfig::lennard_jones(), 3, false),
    ] {
        let flow = continuous_flow(n, dim, kernels, 23);
        let (x1, _) = flow.sample(8, n_pairs).unwrap();
        let (x0, _) = flow.sample(9, n_pairs).unwrap();
        let mut r = rng(10);
        let t: Vec<f64> = (0..n_pairs).map(|_| r.random_range(0.0..1.0)).collect();
        let losses = Losses::new(&flow, N_STEPS).unwrap();
        let mut g = vec![0.0; losses.n_params()];
        let loss = losses
            .flow_matching_gradient_into(&x0, &x1, &t, Some(&mut g))
            .unwrap();
        let reference = reference_flow_matching(&flow, &x0, &x1, &t);
        assert!(
            (loss - reference).abs() <= 1e-12 * reference,
            "{loss} vs {reference}"
        );
        assert_eq!(
            losses
                .flow_matching_gradient_into(&x0, &x1, &t, None)
                .unwrap(),
            loss
        );
        check_gradient(
            &format!("FM {n}x{dim}"),
            &flow,
            &g,
            |f| reference_flow_matching(f, &x0, &x1, &t),
            1e-5,
            full,
            1e-6,
        );
    }
    // Times outside [0, 1] and mismatched sizes are errors.
    let flow = continuous_flow(4, 2, KernelConfig::double_well(), 1);
    let losses = Losses::new(&flow, N_STEPS).unwrap();
    let x = vec![0.1; 16];
    assert!(
        losses
            .flow_matching_gradient_into(&x, &x, &[0.5, 1.5], None)
            .is_err()
    );
    assert!(
        losses
            .flow_matching_gradient_into(&x, &x, &[0.5], None)
            .is_err()
    );
}

#[test]
fn ml_loss_gradient_matches_finite_differences_of_flow_log_density() {
    // (N, D, kernels, samples, prior σ, every parameter?): σ ≠ 1 checks the prior's gradient.
    for (n, dim, kernels, n_samples, sigma, full) in [
        (4, 2, KernelConfig::double_well(), 6, 1.0, true),
        (13, 3, KernelConfig::lennard_jones(), 3, 1.3, false),
    ] {
        let flow = continuous_flow_sigma(n, dim, kernels, 17, sigma);
        // Data: flow samples moved off the flow's own manifold a little and given a CoM, so
        // the CoM removal and a generic z are exercised.
        let (mut x, _) = flow.sample(5, n_samples).unwrap();
        let mut r = rng(6);
        x.iter_mut()
            .for_each(|v| *v += r.random_range(-0.2..0.2) + 0.7);
        let losses = Losses::new(&flow, N_STEPS).unwrap();
        let mut g = vec![0.0; losses.n_params()];
        let loss = losses.ml_gradient_into(&x, &mut g).unwrap();
        // The training forward pass is the flow's continuous RK4 map, bit for bit.
        assert_eq!(loss, reference_nll(&flow, &x));
        assert_eq!(losses.nll(&x).unwrap(), loss);
        check_gradient(
            &format!("ML {n}x{dim}"),
            &flow,
            &g,
            |f| reference_nll(f, &x),
            1e-5,
            full,
            1e-6,
        );
    }
}

struct KlCase<'a> {
    energy: &'a dyn Energy,
    kernels: KernelConfig,
    /// Seed of the prior latents.
    seed: u64,
    kt: f64,
    /// Prior standard deviation.
    sigma: f64,
    /// Factor on W, b and s of the random field.
    scale: f64,
    /// Check every parameter (else a direction and the three largest entries per block).
    full: bool,
}

#[test]
fn kl_loss_gradient_matches_finite_differences_for_dw4_and_lj13() {
    let dw4 = DoubleWell::dw4();
    let lj13 = LennardJones::lj13();
    // The random
    // field contracts LJ-13 clusters into near-overlaps (U/kT ~ 1e8, one pair dominating);
    // the second LJ-13 case has a wider prior and a gentler field, so its energies (~1e5) are
    // those of Gaussian clusters with a close pair or two, as at the start of KL training.
    let cases = [
        KlCase {
            energy: &dw4,
            kernels: KernelConfig::double_well(),
            seed: 3,
            kt: 1.0,
            sigma: 1.0,
            scale: 1.0,
            full: true,
        },
        KlCase {
            energy: &lj13,
            kernels: KernelConfig::lennard_jones(),
            seed: 12,
            kt: 2.0,
            sigma: 1.0,
            scale: 1.0,
            full: false,
        },
        KlCase {
            energy: &lj13,
            kernels: KernelConfig::lennard_jones(),
            seed: 11,
            kt: 1.0,
            sigma: 1.6,
            scale: 0.2,
            full: false,
        },
    ];
    for KlCase {
        energy,
        kernels,
        seed,
        kt,
        sigma,
        scale,
        full,
    } in cases
    {
        let (n, dim) = (energy.n_particles(), energy.dim());
        let flow = continuous_flow_sigma(n, dim, kernels, 23, sigma);
        // W, b and s scaled: every block still nonzero, bandwidths still perturbed.
        let mut p = flow.field().params().to_vec();
        let pl = flow.field().as_kernel().unwrap().param_layout();
        p[..pl.s().end].iter_mut().for_each(|v| *v *= scale);
        let flow = with_params(&flow, &p);
        let target = KlTarget { energy, kt };
        let n_samples = 4;
        let losses = Losses::new(&flow, N_STEPS).unwrap();
        let mut g = vec![0.0; losses.n_params()];
        let loss = losses
            .kl_gradient_into(target, seed, 0, n_samples, &mut g)
            .unwrap();
        let reference = reference_kl(&flow, energy, kt, seed, n_samples);
        assert!(
            (loss - reference).abs() <= 1e-12 * reference.abs().max(1.0),
            "{loss} vs {reference}"
        );
        assert_eq!(losses.kl(target, seed, 0, n_samples).unwrap(), loss);
        check_gradient(
            &format!("KL {n}x{dim} (U/kT = {loss:.3e})"),
            &flow,
            &g,
            |f| reference_kl(f, energy, kt, seed, n_samples),
            1e-5,
            full,
            1e-5,
        );
    }
}

#[test]
fn tape_gradient_with_respect_to_the_start_state_matches_finite_differences() {
    let flow = continuous_flow(4, 2, KernelConfig::double_well(), 8);
    let field = flow.field().as_kernel().unwrap();
    let mut r = rng(3);
    let x0 = random_config(&mut r, 8, 2.0);
    let c: Vec<f64> = (0..8).map(|_| r.random_range(-1.0..1.0)).collect();
    let c_ell = 0.7;
    for forward in [true, false] {
        let mut tape = Rk4Tape::new(8, 7).unwrap();
        let objective = |tape: &mut Rk4Tape<KernelField>, x: &[f64]| {
            let mut y = x.to_vec();
            let ell = tape.integrate(field, &mut y, forward).unwrap();
            y.iter().zip(&c).map(|(a, b)| a * b).sum::<f64>() + c_ell * ell
        };
        objective(&mut tape, &x0);
        let mut theta_bar = vec![0.0; field.params().len()];
        let x_bar = tape
            .backward(field, &c, c_ell, &mut theta_bar)
            .unwrap()
            .to_vec();
        let fd_tape = Rk4Tape::new(8, 7).unwrap();
        let fd = fd_jacobian(|y| vec![objective(&mut fd_tape.clone(), y)], &x0, 1e-6);
        let err = block_error(&x_bar, &fd, 1e-3);
        println!("tape x̄ (forward = {forward}) rel err {err:.2e}");
        assert!(err < 1e-7, "forward = {forward}: {err}");
    }
    // Backward before any integration is a state error, not a panic.
    let mut tape = Rk4Tape::new(8, 3).unwrap();
    let mut theta_bar = vec![0.0; field.params().len()];
    assert!(matches!(
        tape.backward(field, &c, 1.0, &mut theta_bar),
        Err(Error::InvalidState { .. })
    ));
}

/// An energy that is +∞ everywhere: the KL loss must refuse it, naming the sample.
struct Infinite;
impl Energy for Infinite {
    fn n_particles(&self) -> usize {
        4
    }
    fn dim(&self) -> usize {
        2
    }
    fn energy(&self, _: &[f64]) -> f64 {
        f64::INFINITY
    }
    fn energy_gradient_into(&self, _: &[f64], g: &mut [f64]) -> f64 {
        g.fill(0.0);
        f64::INFINITY
    }
}

#[test]
fn infinite_kl_energies_are_errors_that_name_the_sample() {
    let flow = continuous_flow(4, 2, KernelConfig::double_well(), 1);
    let losses = Losses::new(&flow, 4).unwrap();
    let mut g = vec![0.0; losses.n_params()];
    let target = KlTarget {
        energy: &Infinite,
        kt: 1.0,
    };
    match losses.kl_gradient_into(target, 9, 40, 3, &mut g) {
        Err(Error::NonFinite { what }) => assert!(what.contains("index 40"), "{what}"),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    // Mismatched energies and temperatures are argument errors.
    let lj = LennardJones::lj13();
    let bad = KlTarget {
        energy: &lj,
        kt: 1.0,
    };
    assert!(losses.kl_gradient_into(bad, 0, 0, 2, &mut g).is_err());
    let bad_kt = KlTarget {
        energy: &Infinite,
        kt: 0.0,
    };
    assert!(losses.kl_gradient_into(bad_kt, 0, 0, 2, &mut g).is_err());
}

/// An energy of 1e308 everywhere: each sample's KL loss is finite, their sum is not.
struct Huge;
impl Energy for Huge {
    fn n_particles(&self) -> usize {
        4
    }
    fn dim(&self) -> usize {
        2
    }
    fn energy(&self, _: &[f64]) -> f64 {
        1e308
    }
    fn energy_gradient_into(&self, _: &[f64], g: &mut [f64]) -> f64 {
        g.fill(0.0);
        1e308
    }
}

/// Finite per-sample KL losses whose mean overflows are an error, not a loss of ±∞ (which an
/// optimiser would turn into NaN parameters), and the caller's gradient is left as it was.
#[test]
fn a_kl_batch_whose_sum_overflows_is_an_error() {
    let flow = continuous_flow(4, 2, KernelConfig::double_well(), 1);
    let losses = Losses::new(&flow, 4).unwrap();
    let target = || KlTarget {
        energy: &Huge,
        kt: 1.0,
    };
    // One sample is finite (the same energy is not refused as such).
    assert!(losses.kl(target(), 9, 0, 1).unwrap().is_finite());
    let mut g = vec![7.0; losses.n_params()];
    for result in [
        losses.kl(target(), 9, 0, 3),
        losses.kl_gradient_into(target(), 9, 0, 3, &mut g),
    ] {
        match result {
            Err(Error::NonFinite { what }) => assert!(what.contains("overflow"), "{what}"),
            other => panic!("expected NonFinite, got {other:?}"),
        }
    }
    assert!(g.iter().all(|&v| v == 7.0), "the gradient was written");
}

/// DW-4 configurations from a random-walk Metropolis chain at kT = 1 (thinned), with their
/// centres of mass left in place.
fn dw4_mcmc(n_samples: usize, seed: u64) -> Vec<f64> {
    let energy = DoubleWell::dw4();
    let mut r = rng(seed);
    // A square of side 4 around the origin: every pair near the d ≈ 4 ± 1.5 wells.
    let mut x = vec![-2.0, -2.0, 2.0, -2.0, 2.0, 2.0, -2.0, 2.0];
    let mut u = energy.energy(&x);
    let mut out = Vec::with_capacity(n_samples * 8);
    let (burn_in, thin) = (2000, 20);
    let mut step = 0;
    while out.len() < n_samples * 8 {
        let i = r.random_range(0..4);
        let old = [x[2 * i], x[2 * i + 1]];
        x[2 * i] += r.random_range(-0.6..0.6);
        x[2 * i + 1] += r.random_range(-0.6..0.6);
        let u_new = energy.energy(&x);
        if u_new <= u || r.random_range(0.0..1.0) < (u - u_new).exp() {
            u = u_new;
        } else {
            x[2 * i] = old[0];
            x[2 * i + 1] = old[1];
        }
        step += 1;
        if step > burn_in && step % thin == 0 {
            out.extend_from_slice(&x);
        }
    }
    out
}

#[test]
fn training_is_bit_identical_for_one_and_two_threads() {
    let data = dw4_mcmc(40, 1);
    let validation = dw4_mcmc(10, 2);
    let energy = DoubleWell::dw4();
    let config = TrainConfig {
        n_epochs: 2,
        batch_size: 16,
        n_rk4_steps: 8,
        lambda: LambdaSchedule::Linear {
            start: 0.9,
            end: 0.5,
        },
        n_kl_samples: 8,
        seed: 77,
        ..TrainConfig::default()
    };
    let run = |threads: usize| {
        pool(threads).install(|| {
            let mut flow = Flow::new(4, 2, 3).unwrap();
            let summary = Trainer::new(config, &data)
                .with_validation(&validation)
                .with_energy(&energy)
                .run(&mut flow, |_| true)
                .unwrap();
            (flow.field().params().to_vec(), summary)
        })
    };
    let (p1, s1) = run(1);
    let (p2, s2) = run(2);
    assert_eq!(p1, p2);
    assert_ne!(p1, Flow::new(4, 2, 3).unwrap().field().params());
    assert_eq!(s1.n_steps, 6);
    assert_eq!(s1.epochs.len(), 2);
    for (a, b) in s1.epochs.iter().zip(&s2.epochs) {
        assert_eq!(a.train_nll, b.train_nll);
        assert_eq!(a.train_kl, b.train_kl);
        assert_eq!(a.validation_nll, b.validation_nll);
        assert!(a.train_kl.is_some());
    }
    assert_eq!(s1.epochs[1].lambda, 0.5);

    // Pure reverse KL (λ = 0) trains too: the NLL is still reported, from the forward pass.
    let kl_only = TrainConfig {
        n_epochs: 1,
        lambda: LambdaSchedule::Constant(0.0),
        ..config
    };
    let mut flow = Flow::new(4, 2, 3).unwrap();
    let summary = Trainer::new(kl_only, &data)
        .with_energy(&energy)
        .run(&mut flow, |_| true)
        .unwrap();
    let report = &summary.epochs[0];
    assert!(report.train_kl.is_some() && report.train_nll.is_finite());
    assert_eq!(report.train_loss, report.train_kl.unwrap());
    assert_ne!(
        flow.field().params(),
        Flow::new(4, 2, 3).unwrap().field().params()
    );
}

#[test]
fn training_on_dw4_samples_lowers_the_validation_nll() {
    let data = dw4_mcmc(512, 10);
    let validation = dw4_mcmc(256, 11);
    let config = TrainConfig {
        n_epochs: 6,
        batch_size: 32,
        seed: 5,
        ..TrainConfig::default()
    };
    let mut flow = Flow::new(4, 2, 0).unwrap();
    let mut seen = Vec::new();
    let summary = Trainer::new(config, &data)
        .with_validation(&validation)
        .run(&mut flow, |report| {
            seen.push(report.validation_nll.unwrap());
            true
        })
        .unwrap();
    let initial = summary.initial_validation_nll.unwrap();
    let best = summary.epochs[summary.best_epoch].validation_nll.unwrap();
    println!(
        "DW-4 validation NLL: initial {initial:.4}, per epoch {seen:.4?}, best {best:.4} (epoch {}), {:?}",
        summary.best_epoch, summary.wall_time
    );
    assert_eq!(seen.len(), 6);
    assert!(best < initial - 0.5, "NLL {initial} → {best}");
    // The flow holds the best epoch's parameters: its NLL on the validation set is `best`, the
    // exact density of the RK4-20 map it samples with (exact-discrete, its own tables).
    let mut eval = flow.clone();
    eval.set_integrator(
        Integrator::new(Method::Rk4 { n_steps: 20 }, DensityMode::ExactDiscrete).unwrap(),
    );
    let exact = reference_nll(&eval, &validation);
    assert!(
        (exact - best).abs() <= 1e-12 * best.abs(),
        "{exact} vs {best}"
    );
    // A callback returning false stops after that epoch.
    let mut flow = Flow::new(4, 2, 0).unwrap();
    let summary = Trainer::new(config, &data)
        .run(&mut flow, |r| r.epoch < 1)
        .unwrap();
    assert!(summary.stopped_early);
    assert_eq!(summary.epochs.len(), 2);
}

#[test]
fn trainer_rejects_bad_input_and_leaves_the_flow_unchanged() {
    let data = dw4_mcmc(8, 1);
    let mut flow = Flow::new(4, 2, 0).unwrap();
    let before = flow.clone();
    let kl = TrainConfig {
        lambda: LambdaSchedule::paper_ml_kl(),
        ..TrainConfig::default()
    };
    // λ < 1 without an energy.
    assert!(Trainer::new(kl, &data).run(&mut flow, |_| true).is_err());
    // An energy for other particles.
    let lj = LennardJones::lj13();
    assert!(
        Trainer::new(kl, &data)
            .with_energy(&lj)
            .run(&mut flow, |_| true)
            .is_err()
    );
    // Ragged or non-finite data.
    let cfg = TrainConfig::default();
    assert!(
        Trainer::new(cfg, &data[..7])
            .run(&mut flow, |_| true)
            .is_err()
    );
    let mut nan = data.clone();
    nan[3] = f64::NAN;
    assert!(Trainer::new(cfg, &nan).run(&mut flow, |_| true).is_err());
    // A KL energy that is +∞ stops training with an error.
    let inf = TrainConfig {
        lambda: LambdaSchedule::Constant(0.5),
        n_kl_samples: 2,
        n_epochs: 1,
        ..TrainConfig::default()
    };
    assert!(matches!(
        Trainer::new(inf, &data)
            .with_energy(&Infinite)
            .run(&mut flow, |_| true),
        Err(Error::NonFinite { .. })
    ));
    let bad_opt = TrainConfig {
        optimizer: AdamWConfig {
            lr: -1.0,
            ..AdamWConfig::default()
        },
        ..TrainConfig::default()
    };
    assert!(
        Trainer::new(bad_opt, &data)
            .run(&mut flow, |_| true)
            .is_err()
    );
    assert_eq!(flow, before);
}

/// A DW-4 energy seen through the `SerialEnergy` trait, recording the threads it was called
/// on (a `Cell`: serial energies need not be `Sync`) and failing at call `fail_at`.
struct SerialDw4 {
    energy: DoubleWell,
    calls: std::cell::Cell<usize>,
    threads: std::cell::RefCell<Vec<std::thread::ThreadId>>,
    fail_at: usize,
}

impl SerialDw4 {
    fn new(fail_at: usize) -> Self {
        SerialDw4 {
            energy: DoubleWell::dw4(),
            calls: std::cell::Cell::new(0),
            threads: std::cell::RefCell::new(Vec::new()),
            fail_at,
        }
    }

    fn only_on_this_thread(&self) -> bool {
        let me = std::thread::current().id();
        self.threads.borrow().iter().all(|&t| t == me)
    }
}

impl SerialEnergy for SerialDw4 {
    fn n_particles(&self) -> usize {
        4
    }
    fn dim(&self) -> usize {
        2
    }
    fn energy_gradient_into(&self, x: &[f64], gradient: &mut [f64]) -> Result<f64, Error> {
        let call = self.calls.get();
        self.calls.set(call + 1);
        self.threads.borrow_mut().push(std::thread::current().id());
        if call == self.fail_at {
            return Err(Error::Callback {
                what: "host energy failed".into(),
            });
        }
        Ok(self.energy.energy_gradient_into(x, gradient))
    }
}

/// The three-phase KL batch (forward, energies, reverse) must give exactly what the fused
/// per-sample loss `kl_sample` gives, summed in index order, whatever the thread count and
/// whether the energy is evaluated in parallel or serially on the calling thread.
#[test]
fn kl_batch_equals_the_per_sample_loss_bit_for_bit_for_both_kinds_of_energy() {
    let flow = continuous_flow(4, 2, KernelConfig::double_well(), 31);
    let energy = DoubleWell::dw4();
    let target = KlTarget {
        energy: &energy,
        kt: 1.3,
    };
    let (seed, first, n) = (17, 5, 7);
    let losses = Losses::new(&flow, 9).unwrap();
    let p = losses.n_params();

    let mut ws = LossWorkspace::new(8, 9).unwrap();
    let (mut total, mut sum) = (0.0, vec![0.0; p]);
    let mut per_sample = vec![vec![0.0; p]; n];
    let mut z = vec![0.0; 8];
    for (i, g) in per_sample.iter_mut().enumerate() {
        flow.prior()
            .sample_into(&mut sample_rng(seed, first + i as u64), &mut z);
        total += kl_sample(
            flow.field().as_kernel().unwrap(),
            target,
            &z,
            &mut ws,
            Some(g),
        )
        .unwrap();
    }
    for g in &per_sample {
        for (a, b) in sum.iter_mut().zip(g) {
            *a += b;
        }
    }
    let reference_loss = total / n as f64;
    let reference_gradient: Vec<f64> = sum.iter().map(|a| a * (1.0 / n as f64)).collect();

    for threads in [1, 2] {
        pool(threads).install(|| {
            let mut g = vec![0.0; p];
            let loss = losses
                .kl_gradient_into(target, seed, first, n, &mut g)
                .unwrap();
            assert_eq!(loss.to_bits(), reference_loss.to_bits());
            assert_eq!(g, reference_gradient);
            assert_eq!(losses.kl(target, seed, first, n).unwrap(), loss);

            let serial = SerialDw4::new(usize::MAX);
            let mut g = vec![0.0; p];
            let loss = losses
                .kl_serial_gradient_into(&serial, 1.3, seed, first, n, &mut g)
                .unwrap();
            assert_eq!(loss.to_bits(), reference_loss.to_bits());
            assert_eq!(g, reference_gradient);
            assert_eq!(serial.calls.get(), n);
            assert!(serial.only_on_this_thread());
        });
    }
}

#[test]
fn trainer_with_a_serial_energy_equals_the_parallel_one_and_stops_at_its_first_error() {
    let data = dw4_mcmc(40, 21);
    let validation = dw4_mcmc(10, 22);
    let energy = DoubleWell::dw4();
    let config = TrainConfig {
        n_epochs: 2,
        batch_size: 16,
        n_rk4_steps: 6,
        lambda: LambdaSchedule::Linear {
            start: 0.8,
            end: 0.4,
        },
        n_kl_samples: 5,
        seed: 3,
        ..TrainConfig::default()
    };
    let mut parallel = Flow::new(4, 2, 6).unwrap();
    let expected = Trainer::new(config, &data)
        .with_validation(&validation)
        .with_energy(&energy)
        .run(&mut parallel, |_| true)
        .unwrap();
    for threads in [1, 2] {
        let mut flow = Flow::new(4, 2, 6).unwrap();
        // A serial energy is not `Sync`: it lives on the thread that runs the trainer.
        let summary = pool(threads).install(|| {
            let serial = SerialDw4::new(usize::MAX);
            let summary = Trainer::new(config, &data)
                .with_validation(&validation)
                .with_serial_energy(&serial)
                .run(&mut flow, |_| true)
                .unwrap();
            assert_eq!(
                serial.calls.get(),
                6 * 5,
                "3 steps per epoch, 5 KL samples each"
            );
            assert!(serial.only_on_this_thread());
            summary
        });
        assert_eq!(flow.field().params(), parallel.field().params());
        // Everything but the wall times is identical.
        let without_time = |r: &EpochReport| {
            let bits = |v: Option<f64>| v.map(f64::to_bits);
            (
                (r.epoch, r.n_steps, r.lambda.to_bits()),
                (
                    r.train_nll.to_bits(),
                    bits(r.train_kl),
                    r.train_loss.to_bits(),
                ),
                bits(r.validation_nll),
            )
        };
        let a: Vec<_> = summary.epochs.iter().map(without_time).collect();
        let b: Vec<_> = expected.epochs.iter().map(without_time).collect();
        assert_eq!(a, b);
        assert_eq!(summary.best_epoch, expected.best_epoch);
    }

    // An error of the serial energy stops the run at once and leaves the flow unchanged.
    let failing = SerialDw4::new(7);
    let mut flow = Flow::new(4, 2, 6).unwrap();
    let before = flow.clone();
    let result = Trainer::new(config, &data)
        .with_serial_energy(&failing)
        .run(&mut flow, |_| true);
    match result {
        Err(Error::Callback { what }) => {
            assert!(what.contains("host energy failed"), "{what}");
            assert!(what.contains("index 7"), "{what}");
        }
        other => panic!("expected a callback error, got {other:?}"),
    }
    assert_eq!(failing.calls.get(), 8);
    assert_eq!(flow, before);
}

fn envpair_dw4(seed: u64) -> Flow {
    let system = eqflow::system::System::preset("dw4").unwrap();
    system.untrained_flow_of("envpair", seed).unwrap()
}

#[test]
fn envpair_trains_by_flow_matching_and_refuses_maximum_likelihood() {
    let data = dw4_mcmc(200, 20);
    let validation = dw4_mcmc(64, 21);
    let config = TrainConfig {
        n_epochs: 8,
        batch_size: 50,
        seed: 3,
        objective: Objective::FlowMatching {
            pairing: Pairing::Aligned,
        },
        validate_every: 4,
        lr_schedule: LrSchedule::Cosine {
            final_fraction: 0.1,
        },
        ..TrainConfig::default()
    };
    let run = |threads: usize| {
        pool(threads).install(|| {
            let mut flow = envpair_dw4(1);
            let summary = Trainer::new(config, &data)
                .with_validation(&validation)
                .run(&mut flow, |_| true)
                .unwrap();
            (flow, summary)
        })
    };
    let (flow, summary) = run(2);
    let (flow1, summary1) = run(1);
    assert_eq!(
        flow.field().params(),
        flow1.field().params(),
        "thread count"
    );
    assert_eq!(summary.n_steps, 32);
    // Validated at epochs 4 and 8 only; the best of those is kept.
    let validated: Vec<usize> = summary
        .epochs
        .iter()
        .filter(|e| e.validation_nll.is_some())
        .map(|e| e.epoch)
        .collect();
    assert_eq!(validated, vec![3, 7]);
    assert!(validated.contains(&summary.best_epoch));
    let initial = summary.initial_validation_nll.unwrap();
    let best = summary.epochs[summary.best_epoch].validation_nll.unwrap();
    assert!(
        best < initial - 0.5,
        "flow matching: NLL {initial} → {best}"
    );
    assert_eq!(summary1.epochs[7].train_loss, summary.epochs[7].train_loss);

    // Maximum likelihood needs the divergence's reverse pass, which envpair lacks: a clear
    // error, and the flow unchanged.
    let mut flow = envpair_dw4(1);
    let before = flow.field().params().to_vec();
    let ml = TrainConfig {
        n_epochs: 1,
        ..TrainConfig::default()
    };
    let err = Trainer::new(ml, &data)
        .run(&mut flow, |_| true)
        .unwrap_err();
    assert!(err.to_string().contains("flow matching"), "{err}");
    assert_eq!(flow.field().params(), &before[..]);
}

/// An epoch whose RK4 map is not invertible at a validation configuration is never kept: its
/// validation NLL is +∞ (the continuous-mode NLL there can fall below the data's entropy).
#[test]
fn validation_is_the_exact_density_and_non_invertible_epochs_are_never_kept() {
    let data = dw4_mcmc(64, 30);
    let validation = dw4_mcmc(32, 31);
    // Two RK4 steps and lr 0.03: two epochs train, then the map folds (measured: NLL 13.45,
    // 11.89, then +∞).
    let config = TrainConfig {
        n_epochs: 12,
        batch_size: 16,
        n_rk4_steps: 2,
        seed: 9,
        ..TrainConfig::default()
    };
    let mut probe = config;
    probe.optimizer.lr = 0.03;
    let mut flow = Flow::new(4, 2, 0).unwrap();
    let summary = Trainer::new(probe, &data)
        .with_validation(&validation)
        .run(&mut flow, |_| true)
        .unwrap();
    let nlls: Vec<f64> = summary
        .epochs
        .iter()
        .map(|e| e.validation_nll.unwrap())
        .collect();
    println!("validation NLLs with 2 RK4 steps: {nlls:?}");
    assert!(
        nlls.iter().any(|v| v.is_infinite()),
        "the map folds: {nlls:?}"
    );
    let best = nlls[summary.best_epoch];
    assert!(
        best.is_finite(),
        "the kept epoch is invertible on the validation set"
    );
    assert!(nlls.iter().all(|v| *v >= best));
    let mut eval = flow.clone();
    eval.set_integrator(
        Integrator::new(Method::Rk4 { n_steps: 2 }, DensityMode::ExactDiscrete).unwrap(),
    );
    eval.set_require_certificate(false); // the folding map is the subject
    assert!(
        eval.log_density_each(&validation)
            .unwrap()
            .iter()
            .all(Result::is_ok)
    );
    // With a learning rate that folds the map in the first epoch, no epoch can be kept: an
    // error, and the flow unchanged. (0.5: at 0.2 one folded epoch's map now pulls the whole
    // validation set back, since the inverse's damped Newton fallback finds preimages the fast
    // solve missed; whether they are the only ones is the step certificate's question.)
    let mut folding = probe;
    folding.optimizer.lr = 0.5;
    let mut flow = Flow::new(4, 2, 0).unwrap();
    let before = flow.field().params().to_vec();
    let err = Trainer::new(folding, &data)
        .with_validation(&validation)
        .run(&mut flow, |_| true)
        .unwrap_err();
    assert!(matches!(err, Error::NotInvertible { .. }), "{err}");
    assert_eq!(flow.field().params(), &before[..]);
}

#[test]
fn cosine_schedule_and_validation_interval_are_checked() {
    let s = LrSchedule::Cosine {
        final_fraction: 0.02,
    };
    assert_eq!(s.factor(0, 101), 1.0);
    assert!((s.factor(50, 101) - 0.51).abs() < 1e-12);
    assert!((s.factor(100, 101) - 0.02).abs() < 1e-12);
    assert_eq!(LrSchedule::Constant.factor(7, 10), 1.0);
    let data = dw4_mcmc(16, 4);
    for bad in [
        TrainConfig {
            validate_every: 0,
            ..TrainConfig::default()
        },
        TrainConfig {
            lr_schedule: LrSchedule::Cosine {
                final_fraction: 0.0,
            },
            ..TrainConfig::default()
        },
    ] {
        let mut flow = Flow::new(4, 2, 0).unwrap();
        assert!(Trainer::new(bad, &data).run(&mut flow, |_| true).is_err());
    }
}

#[test]
fn the_lipschitz_penalty_trains_a_certified_flow_and_needs_the_bound_gradient() {
    let data = dw4_mcmc(256, 12);
    let validation = dw4_mcmc(128, 13);
    let config = TrainConfig {
        n_epochs: 4,
        batch_size: 32,
        seed: 5,
        ..TrainConfig::default()
    };
    let train = |config: TrainConfig| {
        let mut flow = Flow::new(4, 2, 0).unwrap();
        Trainer::new(config, &data)
            .with_validation(&validation)
            .run(&mut flow, |_| true)
            .unwrap();
        flow
    };
    let plain = train(config);
    let penalised = train(TrainConfig {
        lipschitz_penalty: 1.0,
        ..config
    });
    let (plain_cert, cert) = (
        plain.certificate().unwrap(),
        penalised.certificate().unwrap(),
    );
    println!("certificate without the penalty {plain_cert:?}, with it {cert:?}");
    assert!(!plain_cert.is_certified(), "{plain_cert:?}");
    assert!(cert.is_certified(), "{cert:?}");
    // Bad settings are refused before anything runs.
    let mut flow = Flow::new(4, 2, 0).unwrap();
    for bad in [
        TrainConfig {
            lipschitz_penalty: -1.0,
            ..config
        },
        TrainConfig {
            lipschitz_penalty: 1.0,
            lipschitz_target: 1.0,
            ..config
        },
    ] {
        assert!(Trainer::new(bad, &data).run(&mut flow, |_| true).is_err());
    }
    assert_eq!(flow, Flow::new(4, 2, 0).unwrap());
    // The envpair family has no gradient of its bound: refused, with the flow unchanged.
    let layout = eqflow::geometry::Layout::new(4, 2).unwrap();
    let field = eqflow::field::envpair::EnvPairField::initialise(
        layout,
        eqflow::field::envpair::EnvPairConfig::double_well(),
        1,
    )
    .unwrap();
    let mut flow = Flow::from_parts(
        eqflow::prior::Prior::new(layout, 1.0).unwrap(),
        field,
        Integrator::default(),
    )
    .unwrap();
    let before = flow.clone();
    let fm = TrainConfig {
        lipschitz_penalty: 1.0,
        objective: eqflow::train::Objective::FlowMatching {
            pairing: eqflow::train::Pairing::InOrder,
        },
        ..config
    };
    let err = Trainer::new(fm, &data)
        .run(&mut flow, |_| true)
        .unwrap_err();
    assert!(err.to_string().contains("Lipschitz penalty"), "{err}");
    assert_eq!(flow, before);
    // A finite weight whose weighted gradient overflows names the penalty, not the energy,
    // kT or the learning rate. From the unpenalised (uncertified) flow, where the penalty
    // pulls.
    let mut flow = plain.clone();
    let huge = TrainConfig {
        lipschitz_penalty: 1e308,
        ..config
    };
    let err = Trainer::new(huge, &data)
        .run(&mut flow, |_| true)
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("certificate penalty") && message.contains("lower lipschitz_penalty"),
        "{message}"
    );
    assert_eq!(flow, plain);
}

#[test]
fn exact_discrete_likelihood_trains_the_models_own_density_and_refuses_families_without_it() {
    let data = dw4_mcmc(256, 30);
    let validation = dw4_mcmc(128, 31);
    let energy = DoubleWell::dw4();
    // Few steps, where the continuous-mode loss and the model's map part ways.
    let n_steps = 6;
    let config = TrainConfig {
        n_epochs: 4,
        batch_size: 32,
        n_rk4_steps: n_steps,
        seed: 8,
        objective: Objective::DiscreteLikelihood,
        ..TrainConfig::default()
    };
    let run = |threads: usize, config: TrainConfig| {
        pool(threads).install(|| {
            let mut flow = Flow::new(4, 2, 0).unwrap();
            flow.set_integrator(
                Integrator::new(Method::Rk4 { n_steps }, DensityMode::ExactDiscrete).unwrap(),
            );
            let summary = Trainer::new(config, &data)
                .with_validation(&validation)
                .with_energy(&energy)
                .run(&mut flow, |_| true)
                .unwrap();
            (flow, summary)
        })
    };
    let (flow, summary) = run(2, config);
    let (flow1, summary1) = run(1, config);
    assert_eq!(
        flow.field().params(),
        flow1.field().params(),
        "thread count"
    );
    assert_eq!(summary.epochs[3].train_nll, summary1.epochs[3].train_nll);
    let initial = summary.initial_validation_nll.unwrap();
    let best = summary.epochs[summary.best_epoch].validation_nll.unwrap();
    assert!(best < initial - 0.5, "NLL {initial} → {best}");
    // The training NLL is the exact-discrete NLL of the training batches: the first epoch's
    // mean is that of the data under the parameters as they moved, so compare the last
    // epoch's to the flow's own density on the training set only loosely, and the kept
    // parameters' validation NLL exactly.
    let exact = reference_nll(&flow, &validation);
    assert!(
        (exact - best).abs() < 1e-6 * best.abs(),
        "{exact} vs {best}"
    );
    let train_now = reference_nll(&flow, &data);
    let last = summary.epochs[summary.best_epoch].train_nll;
    assert!((train_now - last).abs() < 0.5, "{train_now} vs {last}");

    // Mixed with reverse KL it trains too.
    let mixed = TrainConfig {
        n_epochs: 2,
        lambda: LambdaSchedule::Linear {
            start: 0.9,
            end: 0.5,
        },
        n_kl_samples: 8,
        ..config
    };
    let (_, summary) = run(2, mixed);
    assert!(summary.epochs[1].train_kl.is_some());
    assert!(summary.epochs[1].train_nll.is_finite());

    // A family without the Jacobian's reverse pass is refused before anything runs.
    let system = eqflow::system::System::preset("dw4").unwrap();
    let mut coord = system.untrained_flow_of("dense", 1).unwrap();
    let before = coord.field().params().to_vec();
    let err = Trainer::new(config, &data)
        .run(&mut coord, |_| panic!("no epoch may run"))
        .unwrap_err();
    assert!(
        err.to_string().contains("dense") && err.to_string().contains("exact-discrete"),
        "{err}"
    );
    assert_eq!(coord.field().params(), &before[..]);
}

#[test]
fn exact_discrete_training_goes_on_through_folds_and_keeps_a_usable_epoch() {
    // One RK4 step: the map soon folds at some training configurations (their loss falls
    // back to the continuous mode's) and some epochs' fields are too strong for a model file
    // or not invertible on the validation set (+∞, never kept).
    let data = dw4_mcmc(128, 40);
    let validation = dw4_mcmc(64, 41);
    let config = TrainConfig {
        n_epochs: 8,
        batch_size: 16,
        n_rk4_steps: 1,
        seed: 2,
        objective: Objective::DiscreteLikelihood,
        optimizer: eqflow::train::AdamWConfig {
            lr: 0.01,
            ..eqflow::train::AdamWConfig::default()
        },
        ..TrainConfig::default()
    };
    let mut flow = Flow::new(4, 2, 0).unwrap();
    let summary = Trainer::new(config, &data)
        .with_validation(&validation)
        .run(&mut flow, |_| true)
        .unwrap();
    let refused = summary
        .epochs
        .iter()
        .filter(|e| e.validation_nll == Some(f64::INFINITY))
        .count();
    assert!(
        refused > 0,
        "the scenario must reach the limit: {:?}",
        summary.epochs
    );
    let best = summary.epochs[summary.best_epoch].validation_nll.unwrap();
    assert!(best.is_finite());
    flow.field().check_usable(1.0).unwrap();
    flow.set_integrator(
        Integrator::new(Method::Rk4 { n_steps: 1 }, DensityMode::ExactDiscrete).unwrap(),
    );
    let exact = reference_nll(&flow, &validation);
    assert!(
        (exact - best).abs() < 1e-6 * best.abs(),
        "{exact} vs {best}"
    );
}

// ---------------------------------------------------------------------------------------------
// Maximum likelihood with the Hutchinson estimate (the paper's training of its baseline).

/// A small dense DW-4 field whose parameters are all clearly non-zero.
fn small_dense(seed: u64) -> eqflow::field::dense::DenseField {
    use eqflow::field::dense::{DenseConfig, DenseField};
    let layout = eqflow::geometry::Layout::new(4, 2).unwrap();
    let config = DenseConfig {
        n_hidden: 6,
        n_time: 3,
        length_scale: 2.0,
    };
    let base = DenseField::initialise(layout, config.clone(), seed).unwrap();
    let mut r = rng(seed ^ 0x4b);
    let p: Vec<f64> = base
        .params()
        .iter()
        .map(|v| v + r.random_range(-0.4..0.4))
        .collect();
    DenseField::new(layout, config, p).unwrap()
}

#[test]
fn probed_tape_gradient_matches_finite_differences_and_other_families_refuse_a_probe() {
    use eqflow::field::dense::DenseField;
    let field = small_dense(5);
    let mut r = rng(6);
    let x0 = random_config(&mut r, 8, 2.0);
    let c: Vec<f64> = (0..8).map(|_| r.random_range(-1.0..1.0)).collect();
    let eps: Vec<f64> = (0..8)
        .map(|_| if r.random::<bool>() { 1.0 } else { -1.0 })
        .collect();
    let c_ell = -0.8;
    let objective = |field: &DenseField, x: &[f64]| {
        let mut tape = Rk4Tape::new(8, 5).unwrap();
        tape.set_probe(Some(&eps)).unwrap();
        let mut y = x.to_vec();
        let ell = tape.integrate(field, &mut y, false).unwrap();
        y.iter().zip(&c).map(|(a, b)| a * b).sum::<f64>() + c_ell * ell
    };
    let mut tape = Rk4Tape::new(8, 5).unwrap();
    tape.set_probe(Some(&eps)).unwrap();
    let mut y = x0.clone();
    let ell = tape.integrate(&field, &mut y, false).unwrap();
    // The estimate differs from the exact log-determinant (a probe is not the trace).
    let mut exact_tape = Rk4Tape::new(8, 5).unwrap();
    let exact = exact_tape
        .integrate(&field, &mut x0.clone(), false)
        .unwrap();
    assert!((ell - exact).abs() > 1e-6, "{ell} vs {exact}");
    let mut theta_bar = vec![0.0; field.params().len()];
    let x_bar = tape
        .backward(&field, &c, c_ell, &mut theta_bar)
        .unwrap()
        .to_vec();
    let fd = fd_jacobian(|y| vec![objective(&field, y)], &x0, 1e-6);
    let err = block_error(&x_bar, &fd, 1e-3);
    assert!(err < 1e-7, "x̄ {err}");
    let p0 = field.params().to_vec();
    let fd = fd_jacobian(
        |p| {
            let f = DenseField::new(field.layout(), field.config().clone(), p.to_vec()).unwrap();
            vec![objective(&f, &x0)]
        },
        &p0,
        1e-6,
    );
    let err = block_error(&theta_bar, &fd, 1e-3);
    assert!(err < 1e-7, "θ̄ {err}");
    // Without a probe again: the exact log-determinant.
    tape.set_probe(None).unwrap();
    let again = tape.integrate(&field, &mut x0.clone(), false).unwrap();
    assert_eq!(again, exact);
    // Bad probes are refused; a family without the estimate refuses a probed integration.
    assert!(tape.set_probe(Some(&eps[..7])).is_err());
    let mut nan = eps.clone();
    nan[3] = f64::NAN;
    assert!(tape.set_probe(Some(&nan)).is_err());
    let flow = continuous_flow(4, 2, KernelConfig::double_well(), 8);
    let kernel = flow.field().as_kernel().unwrap();
    let mut ktape = Rk4Tape::new(8, 5).unwrap();
    ktape.set_probe(Some(&eps)).unwrap();
    let err = ktape.integrate(kernel, &mut x0.clone(), false).unwrap_err();
    assert!(err.to_string().contains("Hutchinson"), "{err}");
}

#[test]
fn hutchinson_training_lowers_the_exact_nll_is_thread_independent_and_refuses_misuse() {
    use eqflow::train::Probe;
    let data = dw4_mcmc(256, 40);
    let validation = dw4_mcmc(128, 41);
    let config = TrainConfig {
        n_epochs: 4,
        batch_size: 32,
        n_rk4_steps: 8,
        seed: 3,
        objective: Objective::HutchinsonLikelihood {
            probe: Probe::Rademacher,
        },
        ..TrainConfig::default()
    };
    let system = eqflow::system::System::preset("dw4").unwrap();
    let run = |threads: usize, config: TrainConfig| {
        pool(threads).install(|| {
            let mut flow = system.untrained_flow_of("dense", 2).unwrap();
            let summary = Trainer::new(config, &data)
                .with_validation(&validation)
                .run(&mut flow, |_| true);
            (flow, summary)
        })
    };
    let (flow, summary) = run(2, config);
    let summary = summary.unwrap();
    let (flow1, summary1) = run(1, config);
    let summary1 = summary1.unwrap();
    assert_eq!(flow.field().params(), flow1.field().params(), "threads");
    assert_eq!(summary.epochs[3].train_nll, summary1.epochs[3].train_nll);
    let initial = summary.initial_validation_nll.unwrap();
    let best = summary.epochs[summary.best_epoch].validation_nll.unwrap();
    assert!(
        best < initial - 0.5,
        "exact validation NLL {initial} → {best}"
    );
    // Another probe distribution, or exact ML, is another run.
    let gaussian = TrainConfig {
        objective: Objective::HutchinsonLikelihood {
            probe: Probe::Gaussian,
        },
        ..config
    };
    let exact = TrainConfig {
        objective: Objective::MaximumLikelihood,
        ..config
    };
    for other in [gaussian, exact] {
        let (f, s) = run(2, other);
        s.unwrap();
        assert_ne!(f.field().params(), flow.field().params());
    }
    // Refused before anything runs: with a KL term, and for a family without the estimate.
    let mixed = TrainConfig {
        lambda: LambdaSchedule::Linear {
            start: 1.0,
            end: 0.5,
        },
        n_kl_samples: 4,
        ..config
    };
    let (_, s) = run(2, mixed);
    assert!(s.unwrap_err().to_string().contains("Hutchinson"));
    let mut kernel = system.untrained_flow_of("kernel", 1).unwrap();
    let before = kernel.field().params().to_vec();
    let err = Trainer::new(config, &data)
        .run(&mut kernel, |_| panic!("no epoch may run"))
        .unwrap_err();
    assert!(err.to_string().contains("Hutchinson"), "{err}");
    assert_eq!(kernel.field().params(), &before[..]);
}
