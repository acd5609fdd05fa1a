//! The Boltzmann-generator Monte Carlo move (`eqflow::flow_move`): statistical exactness on DW-2,
//! consistency of the densities it uses, conservation of the centre of mass, and the promise that
//! a failed call changes nothing.

use std::sync::Arc;

use eqflow::geometry::center_of_mass_into;
use eqflow::integrate::{DensityMode, Integrator, Method};
use eqflow::{DoubleWell, Energy, Error, Flow, FlowMove};

fn pair_distance(x: &[f64]) -> f64 {
    ((x[0] - x[2]).powi(2) + (x[1] - x[3]).powi(2)).sqrt()
}

/// CDF of the DW-2 pair distance at temperature `kt`, p(d) ∝ d·exp(−u(d)/kT) (in 2-D the
/// centre-of-mass-free plane of two particles carries the radial Jacobian d), tabulated by
/// trapezoidal quadrature on a fine grid and interpolated linearly.
struct ReferenceCdf {
    h: f64,
    cdf: Vec<f64>,
}

impl ReferenceCdf {
    fn new(kt: f64) -> Self {
        Self::with_jacobian_power(kt, 1)
    }

    /// The same with the radial factor d^power (power = 1 is right in 2-D).
    fn with_jacobian_power(kt: f64, power: i32) -> Self {
        let energy = DoubleWell::dw2();
        let (d_max, n) = (12.0, 240_000);
        let h = d_max / n as f64;
        let density: Vec<f64> = (0..=n)
            .map(|i| {
                let d = i as f64 * h;
                d.powi(power) * (-energy.energy(&[0.0, 0.0, d, 0.0]) / kt).exp()
            })
            .collect();
        let mut cdf = vec![0.0; n + 1];
        for i in 1..=n {
            cdf[i] = cdf[i - 1] + 0.5 * h * (density[i - 1] + density[i]);
        }
        let total = cdf[n];
        cdf.iter_mut().for_each(|c| *c /= total);
        ReferenceCdf { h, cdf }
    }

    fn at(&self, d: f64) -> f64 {
        let s = d / self.h;
        let i = s.floor() as usize;
        if i + 1 >= self.cdf.len() {
            return 1.0;
        }
        let t = s - i as f64;
        self.cdf[i] * (1.0 - t) + self.cdf[i + 1] * t
    }

    /// The smallest tabulated d with CDF ≥ p.
    fn quantile(&self, p: f64) -> f64 {
        self.cdf.partition_point(|&c| c < p) as f64 * self.h
    }
}

/// Kolmogorov–Smirnov distance between the empirical CDF of `sorted` and `cdf`.
fn ks_distance(sorted: &[f64], cdf: &ReferenceCdf) -> f64 {
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let f = cdf.at(d);
            (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
        })
        .fold(0.0, f64::max)
}

/// Integrated autocorrelation time of the indicator `d < threshold` by batch means (batches far
/// longer than the correlation time), pooled over chains.
fn autocorrelation_time(chains: &[Vec<f64>], threshold: f64, n_batches: usize) -> f64 {
    let indicator = |d: f64| if d < threshold { 1.0 } else { 0.0 };
    let all: Vec<f64> = chains.iter().flatten().map(|&d| indicator(d)).collect();
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    let variance = mean * (1.0 - mean);
    let mut batch_means = Vec::new();
    let mut batch_len = 0;
    for chain in chains {
        batch_len = chain.len() / n_batches;
        for batch in chain.chunks_exact(batch_len) {
            batch_means.push(batch.iter().map(|&d| indicator(d)).sum::<f64>() / batch_len as f64);
        }
    }
    let var_means = batch_means.iter().map(|m| (m - mean).powi(2)).sum::<f64>()
        / (batch_means.len() - 1) as f64;
    (batch_len as f64 * var_means / variance).max(1.0)
}

/// Runs a chain of flow moves only on DW-2 from a fixed start and returns the pair distance after
/// every step past the burn-in, and the acceptance rate. With `ignore_log_q` the host feeds the
/// move `U − kT·log q` instead of `U`, which cancels `log q` out of the Metropolis test: the
/// classic bug of accepting on energies alone, whose chain samples ∝ exp(−U/kT)·q instead.
fn dw2_chain(
    flow: &Arc<Flow>,
    seed: u64,
    n_burn_in: usize,
    n_steps: usize,
    ignore_log_q: bool,
) -> (Vec<f64>, f64) {
    let energy = DoubleWell::dw2();
    let mut mv = FlowMove::new(Arc::clone(flow), 1.0, seed).unwrap();
    let mut x = vec![1.0, 0.5, -1.5, 0.2];
    let fed = |y: &[f64]| {
        let u = energy.energy(y);
        if ignore_log_q {
            u - flow.log_density(y).unwrap()[0]
        } else {
            u
        }
    };
    let mut u = fed(&x);
    let mut distances = Vec::with_capacity(n_steps);
    for step in 0..n_burn_in + n_steps {
        mv.step(&mut x, &mut u, |y| Ok(fed(y))).unwrap();
        if step >= n_burn_in {
            distances.push(pair_distance(&x));
        }
    }
    (distances, mv.stats().acceptance_rate())
}

/// √n_eff times the KS distance of pooled chains from `reference`, n_eff = N/τ with τ the
/// largest integrated autocorrelation time of the indicators at the reference quartiles.
fn scaled_ks(chains: &[Vec<f64>], reference: &ReferenceCdf) -> (f64, f64, f64) {
    let tau = [0.25, 0.5, 0.75]
        .iter()
        .map(|&p| autocorrelation_time(chains, reference.quantile(p), 30))
        .fold(1.0, f64::max);
    let mut sorted: Vec<f64> = chains.iter().flatten().copied().collect();
    sorted.sort_by(f64::total_cmp);
    let n_eff = sorted.len() as f64 / tau;
    let ks = ks_distance(&sorted, reference);
    (ks * n_eff.sqrt(), ks, n_eff)
}

/// The main correctness test. An untrained flow overlaps poorly with DW-2 (acceptance ≈ 10 %,
/// long sojourns in high-weight states) but is exact, so a chain of nothing but flow moves must
/// converge to p(d). Two chains (one per core) of 150,000 steps each after burn-in; the KS
/// distance D is judged with the effective sample size n_eff = N/τ; the bound √n_eff·D < 1.63
/// is the 1 % level of the Kolmogorov distribution.
///
/// The test can fail: the same statistic rejects a chain that accepts on energies alone
/// (log q left out of the Metropolis test), and rejects the correct chain when the reference
/// lacks the radial Jacobian d.
#[test]
fn dw2_chain_of_flow_moves_samples_the_exact_pair_distance_distribution() {
    let flow = Arc::new(Flow::new(2, 2, 0).unwrap());
    let run = |seed: u64, n_steps: usize, ignore_log_q: bool| {
        dw2_chain(&flow, seed, 5_000, n_steps, ignore_log_q)
    };
    let (chains, acceptance): (Vec<Vec<f64>>, Vec<f64>) = std::thread::scope(|scope| {
        let handles: Vec<_> = [101_u64, 202]
            .into_iter()
            .map(|seed| scope.spawn(move || run(seed, 150_000, false)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).unzip()
    });
    let reference = ReferenceCdf::new(1.0);
    let (statistic, ks, n_eff) = scaled_ks(&chains, &reference);

    // Negative controls: the statistic must reject wrong answers.
    let (no_jacobian, ..) = scaled_ks(&chains, &ReferenceCdf::with_jacobian_power(1.0, 0));
    let (buggy, _) = run(303, 5_000, true);
    let (buggy_statistic, buggy_ks, buggy_n_eff) = scaled_ks(&[buggy], &reference);

    println!(
        "DW-2, flow moves only: acceptance {acceptance:?}, n_eff = {n_eff:.0}, KS D = {ks:.4}, \
         sqrt(n_eff)·D = {statistic:.3} (bound 1.63, the 1 % level); reference without the \
         radial Jacobian: {no_jacobian:.3}; chain ignoring log q: D = {buggy_ks:.3}, n_eff = \
         {buggy_n_eff:.0}, sqrt(n_eff)·D = {buggy_statistic:.3}"
    );
    assert!(
        statistic < 1.63,
        "sqrt(n_eff)·D = {statistic} (D = {ks}, n_eff = {n_eff})"
    );
    assert!(
        no_jacobian > 1.63,
        "no power against a wrong reference: {no_jacobian}"
    );
    assert!(
        buggy_statistic > 1.63,
        "no power against the bug: {buggy_statistic}"
    );
    assert!(
        acceptance.iter().all(|&a| a > 0.02 && a < 0.5),
        "{acceptance:?}"
    );
}

fn dw4_setup(flow_seed: u64) -> (Arc<Flow>, DoubleWell, Vec<f64>) {
    let flow = Arc::new(Flow::new(4, 2, flow_seed).unwrap());
    // A typical flow sample (so that proposals are accepted now and then), with its centre of
    // mass moved far from the origin.
    let (mut x, _) = flow.sample(99, 1).unwrap();
    x.chunks_exact_mut(2).for_each(|p| {
        p[0] += 3.0;
        p[1] -= 2.0;
    });
    (flow, DoubleWell::dw4(), x)
}

#[test]
fn proposal_and_evaluation_densities_agree_to_round_off() {
    let (flow, energy, mut x) = dw4_setup(1);
    let mut mv = FlowMove::new(Arc::clone(&flow), 1.0, 5).unwrap();
    let mut u = energy.energy(&x);
    let mut worst: f64 = 0.0;
    let mut n_accepted = 0;
    for step in 0..200 {
        let proposal = mv.propose(&x, u).unwrap().to_vec();
        let log_q_proposal = mv.pending_log_density().unwrap();
        // The density of the proposal as reported by the push-forward, and as evaluated by
        // pulling the same configuration (with its centre of mass) back through the flow.
        let log_q_evaluated = flow.log_density(&proposal).unwrap()[0];
        worst = worst.max((log_q_proposal - log_q_evaluated).abs());
        let u_proposal = energy.energy(&proposal);
        if mv.accept(u_proposal).unwrap() {
            n_accepted += 1;
            x = proposal;
            u = u_proposal;
            // The accepted proposal's log q is the current state's: no re-evaluation needed.
            assert_eq!(mv.current_log_density(), Some(log_q_proposal));
        }
        if step % 10 == 0 {
            // The host moves the state (here: a tiny translation, which changes the bits but
            // not the density): the cache is recomputed, and agrees.
            let before = mv.current_log_density().unwrap();
            x.iter_mut().for_each(|v| *v += 1e-3);
            mv.propose(&x, u).unwrap();
            let after = mv.current_log_density().unwrap();
            worst = worst.max((before - after).abs());
        }
    }
    println!("max |log q(proposal) - log q(evaluated)| = {worst:.2e}, {n_accepted} accepted");
    assert!(worst < 1e-9, "{worst:e}");
    assert!(n_accepted > 0);
}

#[test]
fn continuous_mode_densities_differ_beyond_round_off() {
    // Why exact-discrete is the default: in the continuous mode the density of a proposal and
    // its re-evaluation differ by the integration error, which would bias the chain.
    let (flow, energy, x) = dw4_setup(1);
    let mut continuous = (*flow).clone();
    continuous.set_integrator(
        Integrator::new(Method::Rk4 { n_steps: 20 }, DensityMode::Continuous).unwrap(),
    );
    let continuous = Arc::new(continuous);
    let mut mv = FlowMove::new(Arc::clone(&continuous), 1.0, 5).unwrap();
    let proposal = mv.propose(&x, energy.energy(&x)).unwrap().to_vec();
    let difference =
        (mv.pending_log_density().unwrap() - continuous.log_density(&proposal).unwrap()[0]).abs();
    assert!(difference > 1e-9, "{difference:e}");
}

#[test]
fn the_centre_of_mass_never_changes() {
    let (flow, energy, mut x) = dw4_setup(2);
    let mut com0 = [0.0; 2];
    center_of_mass_into(&x, 2, &mut com0);
    let mut mv = FlowMove::new(flow, 1.0, 8).unwrap();
    let mut u = energy.energy(&x);
    for _ in 0..300 {
        mv.step(&mut x, &mut u, |y| {
            let mut com = [0.0; 2];
            center_of_mass_into(y, 2, &mut com);
            assert!((com[0] - com0[0]).abs() < 1e-12 && (com[1] - com0[1]).abs() < 1e-12);
            Ok(energy.energy(y))
        })
        .unwrap();
    }
    let mut com = [0.0; 2];
    center_of_mass_into(&x, 2, &mut com);
    assert!(mv.stats().n_accepted > 0, "{:?}", mv.stats());
    assert!((com[0] - com0[0]).abs() < 1e-12 && (com[1] - com0[1]).abs() < 1e-12);
}

/// Runs `n` good steps on `mv`, interleaving every kind of failure before each; the result must
/// equal that of a move that never saw a failure.
#[test]
fn failures_leave_state_statistics_and_random_stream_untouched() {
    let (flow, energy, start) = dw4_setup(3);
    let mut reference = FlowMove::new(Arc::clone(&flow), 1.0, 21).unwrap();
    let mut disturbed = FlowMove::new(Arc::clone(&flow), 1.0, 21).unwrap();
    let (mut x_ref, mut u_ref) = (start.clone(), energy.energy(&start));
    let (mut x, mut u) = (x_ref.clone(), u_ref);
    for step in 0..40 {
        let accepted_ref = reference
            .step(&mut x_ref, &mut u_ref, |y| Ok(energy.energy(y)))
            .unwrap();

        let stats = disturbed.stats();
        let (x_before, u_before) = (x.clone(), u);
        // A NaN energy of the proposal.
        let error = disturbed
            .step(&mut x, &mut u, |_| Ok(f64::NAN))
            .unwrap_err();
        assert!(matches!(error, Error::NonFinite { .. }), "{error}");
        // −∞ is no energy either.
        assert!(
            disturbed
                .step(&mut x, &mut u, |_| Ok(f64::NEG_INFINITY))
                .is_err()
        );
        // A failing host callback.
        let error = disturbed
            .step(&mut x, &mut u, |_| {
                Err(Error::Callback {
                    what: "host".into(),
                })
            })
            .unwrap_err();
        assert!(matches!(error, Error::Callback { .. }), "{error}");
        // NaN and infinite coordinates, a NaN current energy, a wrong length.
        let mut bad = x.clone();
        bad[step % 8] = if step % 2 == 0 {
            f64::NAN
        } else {
            f64::INFINITY
        };
        let mut u_bad = u;
        assert!(matches!(
            disturbed.step(&mut bad, &mut u_bad, |y| Ok(energy.energy(y))),
            Err(Error::NonFinite { .. })
        ));
        assert!(disturbed.propose(&bad, u).is_err());
        let mut u_nan = f64::NAN;
        assert!(
            disturbed
                .step(&mut x, &mut u_nan, |y| Ok(energy.energy(y)))
                .is_err()
        );
        assert!(matches!(
            disturbed.propose(&x[..6], u),
            Err(Error::DimensionMismatch { .. })
        ));
        // Accept without a pending proposal.
        assert!(matches!(
            disturbed.accept(0.0),
            Err(Error::InvalidState { .. })
        ));
        assert_eq!(disturbed.stats(), stats);
        assert_eq!(x, x_before);
        assert_eq!(u.to_bits(), u_before.to_bits());

        // Two-phase with a NaN energy, then the real decision, on odd steps; one call on even.
        let accepted = if step % 2 == 1 {
            let proposal = disturbed.propose(&x, u).unwrap().to_vec();
            assert!(disturbed.accept(f64::NAN).is_err());
            assert_eq!(disturbed.pending_proposal(), Some(&proposal[..]));
            let u_proposal = energy.energy(&proposal);
            let accepted = disturbed.accept(u_proposal).unwrap();
            if accepted {
                x = proposal;
                u = u_proposal;
            }
            accepted
        } else {
            disturbed
                .step(&mut x, &mut u, |y| Ok(energy.energy(y)))
                .unwrap()
        };
        assert_eq!(accepted, accepted_ref, "step {step}");
        assert_eq!(x, x_ref, "step {step}");
        assert_eq!(u.to_bits(), u_ref.to_bits());
        assert_eq!(disturbed.stats(), reference.stats());
    }
    assert!(reference.stats().n_accepted > 0);
}

#[test]
fn moves_sharing_one_flow_on_threads_match_a_sequential_run() {
    let (flow, energy, start) = dw4_setup(4);
    let run = |seed: u64| {
        let mut mv = FlowMove::new(Arc::clone(&flow), 1.0, seed).unwrap();
        let (mut x, mut u) = (start.clone(), energy.energy(&start));
        for _ in 0..50 {
            mv.step(&mut x, &mut u, |y| Ok(energy.energy(y))).unwrap();
        }
        (x, u.to_bits(), mv.stats())
    };
    let sequential: Vec<_> = (0..4).map(run).collect();
    let threaded: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4).map(|seed| scope.spawn(move || run(seed))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(sequential, threaded);
    // Different seeds, different chains.
    assert_ne!(sequential[0].0, sequential[1].0);
}

/// DW-4 state: number of the six pair distances in the inner well (d < d0 = 4).
fn dw4_state(x: &[f64]) -> usize {
    let mut k = 0;
    for i in 0..4 {
        for j in i + 1..4 {
            let d2 = (x[2 * i] - x[2 * j]).powi(2) + (x[2 * i + 1] - x[2 * j + 1]).powi(2);
            k += usize::from(d2 < 16.0);
        }
    }
    k
}

/// Mean and standard error over independent chains of each state's population.
fn populations_with_errors(per_chain: &[[f64; 7]]) -> ([f64; 7], [f64; 7]) {
    let n = per_chain.len() as f64;
    let mut mean = [0.0; 7];
    let mut se = [0.0; 7];
    for s in 0..7 {
        mean[s] = per_chain.iter().map(|p| p[s]).sum::<f64>() / n;
        let var = per_chain
            .iter()
            .map(|p| (p[s] - mean[s]).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        se[s] = (var / n).sqrt();
    }
    (mean, se)
}

#[test]
fn dw4_local_plus_shipped_flow_moves_reproduce_long_mcmc_state_populations() {
    use rand::{RngExt, SeedableRng};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/dw4.json");
    let (flow, _) = eqflow::io::model::load(std::path::Path::new(path)).unwrap();
    let flow = Arc::new(flow);
    let energy = DoubleWell::dw4();

    // Host chains: 8 single-particle random-walk moves, then one flow move, per cycle.
    let (n_chains, n_cycles) = (8usize, 6_000usize);
    let results: Vec<([f64; 7], u64, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n_chains)
            .map(|c| {
                let flow = flow.clone();
                let energy = &energy;
                scope.spawn(move || {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1000 + c as u64);
                    let mut mv = FlowMove::new(flow.clone(), 1.0, c as u64).unwrap();
                    let (mut x, _) = flow.sample(500 + c as u64, 1).unwrap();
                    let mut u = energy.energy(&x);
                    let mut counts = [0.0; 7];
                    for _ in 0..n_cycles {
                        for _ in 0..8 {
                            let i = rng.random_range(0..4);
                            let old = [x[2 * i], x[2 * i + 1]];
                            x[2 * i] += rng.random_range(-0.6..0.6);
                            x[2 * i + 1] += rng.random_range(-0.6..0.6);
                            let u_new = energy.energy(&x);
                            if rng.random::<f64>() < (u - u_new).exp() {
                                u = u_new;
                            } else {
                                x[2 * i] = old[0];
                                x[2 * i + 1] = old[1];
                            }
                        }
                        mv.step(&mut x, &mut u, |y| Ok(energy.energy(y))).unwrap();
                        counts[dw4_state(&x)] += 1.0;
                    }
                    counts.iter_mut().for_each(|p| *p /= n_cycles as f64);
                    let stats = mv.stats();
                    (counts, stats.n_accepted, stats.n_proposed)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (accepted, proposed) = results.iter().fold((0, 0), |(a, p), r| (a + r.1, p + r.2));
    let acceptance = accepted as f64 / proposed as f64;
    let per_chain: Vec<[f64; 7]> = results.iter().map(|r| r.0).collect();
    let (p_mixed, se_mixed) = populations_with_errors(&per_chain);

    // Reference: long plain random-walk MCMC, errors from groups of independent chains.
    let config = eqflow::reference_mcmc::McmcConfig {
        n_chains: 64,
        n_burnin: 5_000,
        n_samples: 64 * 2_000,
        thin: 50,
        seed: 7,
        initial: eqflow::reference_mcmc::InitialState::Lattice {
            spacing: 3.0,
            jitter: 0.1,
        },
        ..eqflow::reference_mcmc::McmcConfig::default()
    };
    let reference = eqflow::reference_mcmc::run(&energy, &config).unwrap();
    let per_group: Vec<[f64; 7]> = (0..16)
        .map(|g| {
            let start = reference.stats.chain_samples(4 * g).start;
            let end = reference.stats.chain_samples(4 * g + 3).end;
            let mut p = [0.0; 7];
            for x in reference.x[start * 8..end * 8].chunks_exact(8) {
                p[dw4_state(x)] += 1.0;
            }
            p.iter_mut().for_each(|v| *v /= (end - start) as f64);
            p
        })
        .collect();
    let (p_mcmc, se_mcmc) = populations_with_errors(&per_group);

    eprintln!(
        "DW-4 flow-move acceptance {acceptance:.3}; populations (states 2, 3, 4): mixed \
         {:.4}±{:.4} {:.4}±{:.4} {:.4}±{:.4}, MCMC {:.4}±{:.4} {:.4}±{:.4} {:.4}±{:.4}",
        p_mixed[2],
        se_mixed[2],
        p_mixed[3],
        se_mixed[3],
        p_mixed[4],
        se_mixed[4],
        p_mcmc[2],
        se_mcmc[2],
        p_mcmc[3],
        se_mcmc[3],
        p_mcmc[4],
        se_mcmc[4]
    );
    assert!(
        acceptance > 0.05,
        "the trained flow should be accepted often: {acceptance}"
    );
    for s in 0..7 {
        let tol = 4.0 * (se_mixed[s].powi(2) + se_mcmc[s].powi(2)).sqrt() + 1e-3;
        assert!(
            (p_mixed[s] - p_mcmc[s]).abs() < tol,
            "state {s}: mixed {} vs MCMC {} (tolerance {tol})",
            p_mixed[s],
            p_mcmc[s]
        );
    }
}

/// Issue 14: at a tiny kT, `U/kT` overflows for ordinary energies (at kT = 5e-324 already for
/// U = 1), and the move used to compare two infinite log weights: a downhill proposal whose log
/// weight overflowed to −∞ was rejected, and one between two +∞ log weights gave NaN and was
/// rejected too. Whatever the proposal and its `log q`, downhill must be accepted and uphill
/// rejected.
#[test]
fn tiny_temperatures_accept_downhill_and_reject_uphill() {
    let flow = Arc::new(Flow::new(4, 2, 3).unwrap());
    let (x0, _) = flow.sample(1, 1).unwrap();
    for kt in [1e-300, 5e-324] {
        for (u_from, u_to) in [(1e10, 1e9), (-1e9, -1e10), (1.0, 0.5), (-0.5, -1.0)] {
            for seed in 0..4 {
                // One call: downhill accepted, then straight back uphill rejected.
                let mut mv = FlowMove::new(Arc::clone(&flow), kt, seed).unwrap();
                let (mut x, mut u) = (x0.clone(), u_from);
                let accepted = mv.step(&mut x, &mut u, |_| Ok(u_to)).unwrap();
                assert!(
                    accepted,
                    "kT {kt:e}, seed {seed}: {u_from} -> {u_to} rejected"
                );
                assert_eq!(u, u_to);
                let accepted = mv.step(&mut x, &mut u, |_| Ok(u_from)).unwrap();
                assert!(
                    !accepted,
                    "kT {kt:e}, seed {seed}: {u_to} -> {u_from} accepted"
                );
                assert_eq!(u, u_to);

                // Two phases: the same decisions.
                let mut mv = FlowMove::new(Arc::clone(&flow), kt, seed).unwrap();
                mv.propose(&x0, u_from).unwrap();
                assert!(
                    mv.accept(u_to).unwrap(),
                    "two-phase, kT {kt:e}, seed {seed}"
                );
                mv.propose(&x0, u_to).unwrap();
                assert!(
                    !mv.accept(u_from).unwrap(),
                    "two-phase, kT {kt:e}, seed {seed}"
                );
            }
        }
    }
}
