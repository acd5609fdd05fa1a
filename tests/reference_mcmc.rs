//! Random-walk Metropolis reference data: the DW-2 pair-distance distribution against quadrature,
//! the energy statistics of the external validation sets, determinism across thread counts, and
//! every error path.

use std::path::PathBuf;
use std::sync::Mutex;

use eqflow::energy::energies_into;
use eqflow::geometry::Layout;
use eqflow::reference_mcmc::{self, InitialState, McmcConfig, McmcOutput, McmcProgress};
use eqflow::{DoubleWell, Energy, Error, LennardJones};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Pair distance of every DW-2 sample (two particles in 2-D).
fn pair_distances(out: &McmcOutput) -> Vec<f64> {
    out.x
        .chunks_exact(4)
        .map(|s| ((s[0] - s[2]).powi(2) + (s[1] - s[3]).powi(2)).sqrt())
        .collect()
}

/// The exact CDF of the DW-2 pair distance at kT = 1 on a fine grid: the CoM-free relative
/// vector r ∈ R² has density ∝ exp(−u(|r|)), so its length has density ∝ d·exp(−u(d)) (the
/// Jacobian of polar coordinates). Trapezoid rule on [0, 10] (u(10) = 1022: nothing beyond).
/// With `jacobian = false` the factor d is left out: a deliberately wrong reference.
struct RadialCdf {
    h: f64,
    cdf: Vec<f64>,
}

impl RadialCdf {
    fn dw2(jacobian: bool) -> Self {
        let e = DoubleWell::dw2();
        let n = 200_000;
        let h = 10.0 / n as f64;
        let density = |d: f64| {
            let u = e.energy(&[0.0, 0.0, d, 0.0]);
            (if jacobian { d } else { 1.0 }) * (-u).exp()
        };
        let mut cdf = vec![0.0; n + 1];
        for i in 1..=n {
            let (a, b) = ((i - 1) as f64 * h, i as f64 * h);
            cdf[i] = cdf[i - 1] + 0.5 * h * (density(a) + density(b));
        }
        let total = cdf[n];
        cdf.iter_mut().for_each(|c| *c /= total);
        RadialCdf { h, cdf }
    }

    fn at(&self, d: f64) -> f64 {
        let t = d / self.h;
        let i = t.floor() as usize;
        if i + 1 >= self.cdf.len() {
            return 1.0;
        }
        let frac = t - i as f64;
        self.cdf[i] * (1.0 - frac) + self.cdf[i + 1] * frac
    }

    /// E[d] = ∫ (1 − F(d)) dd.
    fn mean(&self) -> f64 {
        self.cdf.iter().map(|c| (1.0 - c) * self.h).sum()
    }
}

/// Kolmogorov–Smirnov statistic of `samples` against the CDF `f`.
fn ks_statistic(samples: &[f64], f: impl Fn(f64) -> f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len() as f64;
    s.iter().enumerate().fold(0.0f64, |d, (i, &x)| {
        let fx = f(x);
        d.max((i as f64 + 1.0) / n - fx).max(fx - i as f64 / n)
    })
}

/// Mean and standard error of the per-chain means of `values` (one value per sample): the
/// chains are independent, so their means are i.i.d. whatever the autocorrelation inside a
/// chain, and the spread of the chain means is an honest error estimate.
fn chain_mean_and_se(out: &McmcOutput, values: &[f64]) -> (f64, f64) {
    let means: Vec<f64> = (0..out.stats.chains.len())
        .map(|c| {
            let r = out.stats.chain_samples(c);
            let n = r.len() as f64;
            values[r].iter().sum::<f64>() / n
        })
        .collect();
    mean_and_se(&means)
}

/// Mean and standard error of the mean of i.i.d. values.
fn mean_and_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

fn shared_data() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipped: ../shared/data not found");
        None
    }
}

/// Mean energy of a validation file and an honest standard error: the larger of two estimates,
/// each blind to one kind of correlation between rows. Batch means over 20 contiguous blocks see
/// rows stored in chain order (the LJ-13 set: its block error is 1.5× the naive one); treating
/// identical rows as one cluster sees duplicates scattered through a shuffled file (the DW-4
/// set: 23 % of its rows are copies of others, left by rejected steps of the chain that made it).
fn validation_energy<E: Energy>(path: &std::path::Path, energy: &E) -> (f64, f64) {
    let layout = Layout::new(energy.n_particles(), energy.dim()).unwrap();
    let x = eqflow::io::read_configurations(path, layout).unwrap();
    let n = x.len() / layout.len();
    let mut u = vec![0.0; n];
    energies_into(energy, &x, &mut u).unwrap();
    let mean = u.iter().sum::<f64>() / n as f64;

    let blocks: Vec<f64> = u
        .chunks_exact(n / 20)
        .map(|b| b.iter().sum::<f64>() / b.len() as f64)
        .collect();
    let block_se = mean_and_se(&blocks).1;

    // Cluster-robust: Var(mean) = Σ_clusters (m_c·(u_c − mean))² / n².
    let mut rows: Vec<(Vec<u64>, f64)> = x
        .chunks_exact(layout.len())
        .zip(&u)
        .map(|(row, &ui)| (bits(row), ui))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut sum_sq = 0.0;
    for cluster in rows.chunk_by(|a, b| a.0 == b.0) {
        sum_sq += (cluster.len() as f64 * (cluster[0].1 - mean)).powi(2);
    }
    let cluster_se = sum_sq.sqrt() / n as f64;
    (mean, block_se.max(cluster_se))
}

/// The chains' mean energy, its standard error and the standard error of its difference from
/// the validation set's mean, printed beside the latter.
fn mcmc_mean_energy(
    label: &str,
    out: &McmcOutput,
    data_mean: f64,
    data_se: f64,
) -> (f64, f64, f64) {
    let (mean, se) = chain_mean_and_se(out, &out.energies);
    let combined = (se * se + data_se * data_se).sqrt();
    eprintln!(
        "{label}: validation set <U> = {data_mean:.3} ± {data_se:.3}; MCMC <U> = {mean:.3} ± \
         {se:.3} (acceptance {:.3}); difference {:.2} standard errors",
        out.stats.acceptance(),
        (mean - data_mean) / combined
    );
    (mean, se, combined)
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn assert_identical(a: &McmcOutput, b: &McmcOutput) {
    assert_eq!(bits(&a.x), bits(&b.x));
    assert_eq!(bits(&a.energies), bits(&b.energies));
    assert_eq!(a.stats, b.stats);
}

fn small_dw4() -> McmcConfig {
    McmcConfig {
        n_chains: 6,
        n_burnin: 500,
        n_samples: 40,
        thin: 7,
        initial_step: 0.3,
        seed: 11,
        initial: InitialState::Lattice {
            spacing: 3.0,
            jitter: 0.2,
        },
        ..McmcConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Distributions against exact references

#[test]
fn dw2_pair_distance_of_independent_chains_passes_ks_against_quadrature() {
    // One sample per chain: the samples are independent, so the KS critical value is exact.
    let n = 4000;
    let config = McmcConfig {
        n_chains: n,
        n_samples: n,
        n_burnin: 3000,
        thin: 1,
        initial_step: 0.5,
        seed: 2024,
        initial: InitialState::Lattice {
            spacing: 3.0,
            jitter: 0.5,
        },
        ..McmcConfig::default()
    };
    let out = reference_mcmc::run(&DoubleWell::dw2(), &config).unwrap();
    let d = pair_distances(&out);
    let exact = RadialCdf::dw2(true);
    let ks = ks_statistic(&d, |x| exact.at(x));
    // P(D > c/√n) ≈ 2·exp(−2c²) = 1e-3 for c = 1.949.
    let critical = 1.949 / (n as f64).sqrt();
    eprintln!(
        "DW-2 KS: D = {ks:.4} (critical {critical:.4}), acceptance {:.3}",
        out.stats.acceptance()
    );
    assert!(ks < critical, "D = {ks}, critical {critical}");
    // The test has power: the density without the radial Jacobian d is clearly rejected.
    let wrong = RadialCdf::dw2(false);
    let ks_wrong = ks_statistic(&d, |x| wrong.at(x));
    assert!(ks_wrong > 3.0 * critical, "D vs wrong density = {ks_wrong}");
}

#[test]
fn dw2_thinned_production_chains_match_quadrature() {
    // Long thinned chains: the production path. Well occupancy (d < 4 is the inner well) and
    // mean distance against quadrature, errors from the spread of the independent chains.
    let config = McmcConfig {
        n_chains: 32,
        n_samples: 32 * 1000,
        n_burnin: 2000,
        thin: 20,
        initial_step: 0.5,
        seed: 7,
        initial: InitialState::Lattice {
            spacing: 3.0,
            jitter: 0.5,
        },
        ..McmcConfig::default()
    };
    let out = reference_mcmc::run(&DoubleWell::dw2(), &config).unwrap();
    let d = pair_distances(&out);
    let exact = RadialCdf::dw2(true);

    let inner: Vec<f64> = d.iter().map(|&x| f64::from(u8::from(x < 4.0))).collect();
    let (p_inner, se_inner) = chain_mean_and_se(&out, &inner);
    let (mean_d, se_d) = chain_mean_and_se(&out, &d);
    eprintln!(
        "DW-2 chains: P(d < 4) = {p_inner:.4} ± {se_inner:.4} (exact {:.4}); E[d] = {mean_d:.4} ± \
         {se_d:.4} (exact {:.4}); acceptance {:.3}",
        exact.at(4.0),
        exact.mean(),
        out.stats.acceptance()
    );
    assert!((p_inner - exact.at(4.0)).abs() < 4.0 * se_inner);
    assert!((mean_d - exact.mean()).abs() < 4.0 * se_d);
    // Precise enough to mean something: a 3 % error in the occupancy would be seen.
    assert!(se_inner < 0.01, "{se_inner}");
}

#[test]
fn infinite_energies_are_always_rejected() {
    // DW-2 with a hard core: U = +∞ for d < 3.5, which cuts through the inner well, so many
    // proposals are infinite.
    struct HardCore(DoubleWell);
    impl Energy for HardCore {
        fn n_particles(&self) -> usize {
            2
        }
        fn dim(&self) -> usize {
            2
        }
        fn energy(&self, x: &[f64]) -> f64 {
            let d = ((x[0] - x[2]).powi(2) + (x[1] - x[3]).powi(2)).sqrt();
            if d < 3.5 {
                f64::INFINITY
            } else {
                self.0.energy(x)
            }
        }
        fn energy_gradient_into(&self, _: &[f64], _: &mut [f64]) -> f64 {
            unimplemented!("not used by Metropolis")
        }
    }
    let config = McmcConfig {
        n_chains: 4,
        n_samples: 4000,
        n_burnin: 1000,
        thin: 2,
        initial_step: 1.0,
        initial: InitialState::Configurations(vec![0.0, 0.0, 5.0, 0.0]),
        ..McmcConfig::default()
    };
    let out = reference_mcmc::run(&HardCore(DoubleWell::dw2()), &config).unwrap();
    let d = pair_distances(&out);
    assert!(
        d.iter().all(|&x| x >= 3.5),
        "{:?}",
        d.iter().copied().fold(f64::INFINITY, f64::min)
    );
    assert!(out.energies.iter().all(|u| u.is_finite()));
    // Samples close to the wall exist: the chains press against it rather than avoid it.
    assert!(d.iter().any(|&x| x < 3.7));
}

// ---------------------------------------------------------------------------------------------
// The external validation sets

#[test]
fn dw4_mean_energy_matches_the_validation_set() {
    let Some(dir) = shared_data() else { return };
    let energy = DoubleWell::dw4();
    let (data_mean, data_se) = validation_energy(&dir.join("dw4_val_10000.npy"), &energy);
    // 150,000 steps per chain. The slowest mode, switching between the configurations with two
    // and with four pairs in the inner well, happens every ~5,000 steps (measured: about 20
    // switches in each production chain), so burn-in forgets the start and the chains mix.
    let config = McmcConfig {
        n_chains: 64,
        n_samples: 64 * 500,
        n_burnin: 50_000,
        thin: 200,
        initial_step: 0.5,
        seed: 4,
        initial: InitialState::Lattice {
            spacing: 3.0,
            jitter: 0.5,
        },
        ..McmcConfig::default()
    };
    let out = reference_mcmc::run(&energy, &config).unwrap();
    let (mean, se, combined) = mcmc_mean_energy("DW-4", &out, data_mean, data_se);
    // Our energy is the data's convention (the issue quotes ≈ −22.46 for this set).
    assert!((data_mean + 22.46).abs() < 3.0 * data_se, "{data_mean}");
    assert!((mean - data_mean).abs() < 4.0 * combined);
    assert!(
        se < 0.03,
        "MCMC standard error {se} too large to test anything"
    );
}

#[test]
fn lj13_mean_energy_matches_the_validation_set() {
    let Some(dir) = shared_data() else { return };
    let energy = LennardJones::lj13();
    let (data_mean, data_se) = validation_energy(&dir.join("lj13_val_10000.npy"), &energy);
    // The energy decorrelates in a few thousand steps at acceptance 0.25 (the random-walk
    // optimum in many dimensions), so 200 samples 1000 steps apart per chain are nearly
    // independent; 32 chains give a standard error comparable to the data's.
    let config = McmcConfig {
        n_chains: 32,
        n_samples: 32 * 200,
        n_burnin: 20_000,
        thin: 1000,
        initial_step: 0.05,
        target_acceptance: 0.25,
        seed: 13,
        initial: InitialState::Lattice {
            spacing: 1.0,
            jitter: 0.05,
        },
        ..McmcConfig::default()
    };
    let out = reference_mcmc::run(&energy, &config).unwrap();
    let (mean, se, combined) = mcmc_mean_energy("LJ-13", &out, data_mean, data_se);
    // The benchmark convention (ε = 2 over unordered pairs); ε = 1 would give about half.
    assert!((data_mean + 43.1).abs() < 3.0 * data_se, "{data_mean}");
    assert!((mean - data_mean).abs() < 4.0 * combined);
    assert!(
        se < 0.3,
        "MCMC standard error {se} too large to test anything"
    );
}

// ---------------------------------------------------------------------------------------------
// Adaptation, layout of the output, progress

#[test]
fn burnin_adapts_the_step_towards_the_target_then_freezes_it() {
    let energy = DoubleWell::dw4();
    let mut steps = Vec::new();
    for target in [0.25, 0.6] {
        let config = McmcConfig {
            target_acceptance: target,
            initial_step: 3.0,
            n_burnin: 5000,
            n_samples: 6 * 500,
            thin: 4,
            ..small_dw4()
        };
        let out = reference_mcmc::run(&energy, &config).unwrap();
        for c in &out.stats.chains {
            assert_eq!(c.n_burnin, 5000);
            assert_eq!(c.n_proposed, c.n_samples as u64 * 4);
            assert!(
                (c.acceptance() - target).abs() < 0.1,
                "target {target}: production acceptance {}",
                c.acceptance()
            );
        }
        let total: u64 = out.stats.chains.iter().map(|c| c.n_proposed).sum();
        let accepted: u64 = out.stats.chains.iter().map(|c| c.n_accepted).sum();
        assert_eq!(out.stats.acceptance(), accepted as f64 / total as f64);
        steps.push(out.stats.chains[0].step);
    }
    // Adaptation happened (from σ₀ = 3) and in the right direction: lower target, larger step.
    assert!(steps[0] > steps[1] && steps[0] < 3.0, "{steps:?}");
}

#[test]
fn samples_are_com_free_chain_major_with_their_energies() {
    let energy = DoubleWell::dw4();
    // A start far from the origin: the CoM is removed before the first step.
    let start = vec![100.0, 50.0, 103.0, 50.0, 103.0, 53.0, 100.0, 53.0];
    let config = McmcConfig {
        n_chains: 3,
        n_samples: 10,
        initial: InitialState::Configurations(start),
        ..small_dw4()
    };
    let out = reference_mcmc::run(&energy, &config).unwrap();
    assert_eq!(out.layout, Layout::new(4, 2).unwrap());
    assert_eq!((out.x.len(), out.energies.len()), (80, 10));
    let counts: Vec<usize> = out.stats.chains.iter().map(|c| c.n_samples).collect();
    assert_eq!(counts, vec![4, 3, 3]);
    assert_eq!(out.stats.chain_samples(1), 4..7);
    for (s, u) in out.x.chunks_exact(8).zip(&out.energies) {
        let cx: f64 = s.iter().step_by(2).sum();
        let cy: f64 = s.iter().skip(1).step_by(2).sum();
        assert!(cx.abs() < 1e-12 && cy.abs() < 1e-12, "CoM ({cx}, {cy})");
        assert_eq!(energy.energy(s), *u);
    }
}

#[test]
fn per_chain_starting_configurations_are_used() {
    // Two chains, one start each, no burn-in, huge thin and tiny step: each chain's first sample
    // stays next to its own start.
    let energy = DoubleWell::dw2();
    let config = McmcConfig {
        n_chains: 2,
        n_samples: 2,
        n_burnin: 0,
        thin: 1,
        initial_step: 1e-6,
        initial: InitialState::Configurations(vec![0.0, 0.0, 2.5, 0.0, 0.0, 0.0, 0.0, 5.5]),
        ..McmcConfig::default()
    };
    let out = reference_mcmc::run(&energy, &config).unwrap();
    let d = pair_distances(&out);
    assert!(
        (d[0] - 2.5).abs() < 1e-4 && (d[1] - 5.5).abs() < 1e-4,
        "{d:?}"
    );
}

#[test]
fn progress_reports_every_step_exactly_once() {
    let calls = Mutex::new(Vec::new());
    let config = McmcConfig {
        n_burnin: 5000,
        ..small_dw4()
    };
    let out = reference_mcmc::run_with_progress(&DoubleWell::dw4(), &config, &|p: McmcProgress| {
        calls.lock().unwrap().push(p);
    })
    .unwrap();
    let calls = calls.into_inner().unwrap();
    let total = 6 * 5000 + 40 * 7;
    assert!(calls.iter().all(|p| p.steps_total == total));
    assert_eq!(calls.iter().filter(|p| p.steps_done == total).count(), 1);
    assert_eq!(calls.iter().map(|p| p.steps_done).max(), Some(total));
    // Intermediate reports, not just one per chain.
    assert!(calls.len() > 6, "{}", calls.len());
    // The callback does not change the result.
    assert_identical(
        &out,
        &reference_mcmc::run(&DoubleWell::dw4(), &config).unwrap(),
    );
}

// ---------------------------------------------------------------------------------------------
// Determinism

#[test]
fn results_are_bit_identical_for_one_and_two_threads() {
    let config = small_dw4();
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                reference_mcmc::run(
                    &LennardJones::lj13(),
                    &McmcConfig {
                        initial_step: 0.05,
                        initial: InitialState::default(),
                        ..config.clone()
                    },
                )
            })
            .unwrap()
    };
    let one = run(1);
    let two = run(2);
    assert_identical(&one, &two);
    assert!(one.stats.acceptance() > 0.05);
}

#[test]
fn same_seed_same_samples_other_seed_other_samples() {
    let energy = DoubleWell::dw4();
    let a = reference_mcmc::run(&energy, &small_dw4()).unwrap();
    let b = reference_mcmc::run(&energy, &small_dw4()).unwrap();
    assert_identical(&a, &b);
    let c = reference_mcmc::run(
        &energy,
        &McmcConfig {
            seed: 12,
            ..small_dw4()
        },
    )
    .unwrap();
    assert_ne!(bits(&a.x), bits(&c.x));
    // Chains differ from one another too: each has its own stream.
    assert_ne!(a.x[..8], a.x[a.stats.chain_samples(1).start * 8..][..8]);
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn invalid_configurations_are_errors_not_panics() {
    let energy = DoubleWell::dw4();
    let base = small_dw4();
    let invalid = |c: McmcConfig| {
        matches!(
            reference_mcmc::run(&energy, &c),
            Err(Error::InvalidArgument { .. })
        )
    };
    for kt in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(invalid(McmcConfig { kt, ..base.clone() }), "kt {kt}");
    }
    assert!(invalid(McmcConfig {
        n_chains: 0,
        ..base.clone()
    }));
    assert!(
        invalid(McmcConfig {
            n_samples: 5,
            ..base.clone()
        }),
        "fewer samples than chains"
    );
    assert!(invalid(McmcConfig {
        thin: 0,
        ..base.clone()
    }));
    for initial_step in [0.0, -0.1, f64::NAN, f64::INFINITY] {
        assert!(
            invalid(McmcConfig {
                initial_step,
                ..base.clone()
            }),
            "step {initial_step}"
        );
    }
    for target_acceptance in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
        assert!(invalid(McmcConfig {
            target_acceptance,
            ..base.clone()
        }));
    }
    assert!(invalid(McmcConfig {
        n_burnin: usize::MAX,
        thin: usize::MAX,
        ..base.clone()
    }));
    assert!(invalid(McmcConfig {
        n_chains: 1,
        n_samples: usize::MAX,
        ..base.clone()
    }));
    for (spacing, jitter) in [
        (0.0, 0.1),
        (f64::NAN, 0.1),
        (1.0, -0.1),
        (1.0, f64::INFINITY),
    ] {
        assert!(invalid(McmcConfig {
            initial: InitialState::Lattice { spacing, jitter },
            ..base.clone()
        }));
    }
    // Wrong number of starting values: neither one configuration nor one per chain.
    assert!(matches!(
        reference_mcmc::run(
            &energy,
            &McmcConfig {
                initial: InitialState::Configurations(vec![0.0; 9]),
                ..base.clone()
            }
        ),
        Err(Error::DimensionMismatch {
            expected: 48,
            found: 9,
            ..
        })
    ));
    let mut nan_start = vec![0.0, 0.0, 3.0, 0.0, 3.0, 3.0, 0.0, 3.0];
    nan_start[5] = f64::NAN;
    assert!(matches!(
        reference_mcmc::run(
            &energy,
            &McmcConfig {
                initial: InitialState::Configurations(nan_start),
                ..base.clone()
            }
        ),
        Err(Error::NonFinite { .. })
    ));
    // A system that is not one: a single particle.
    let lonely = DoubleWell::new(1, 2, 0.0, -4.0, 0.9, 4.0).unwrap();
    assert!(matches!(
        reference_mcmc::run(&lonely, &base),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn bad_energies_are_errors() {
    /// DW-2 whose energy is NaN beyond a distance, or everywhere, or +∞ everywhere.
    struct Broken {
        nan_beyond: f64,
        value: f64,
    }
    impl Energy for Broken {
        fn n_particles(&self) -> usize {
            2
        }
        fn dim(&self) -> usize {
            2
        }
        fn energy(&self, x: &[f64]) -> f64 {
            let d = ((x[0] - x[2]).powi(2) + (x[1] - x[3]).powi(2)).sqrt();
            if d > self.nan_beyond {
                self.value
            } else {
                DoubleWell::dw2().energy(x)
            }
        }
        fn energy_gradient_into(&self, _: &[f64], _: &mut [f64]) -> f64 {
            unimplemented!("not used by Metropolis")
        }
    }
    let config = McmcConfig {
        n_chains: 3,
        n_samples: 30,
        n_burnin: 2000,
        initial_step: 1.0,
        initial: InitialState::Configurations(vec![0.0, 0.0, 3.0, 0.0]),
        ..McmcConfig::default()
    };
    let run = |nan_beyond, value| reference_mcmc::run(&Broken { nan_beyond, value }, &config);
    // NaN once a proposal wanders beyond d = 4.5 (the outer well): an error naming a proposal.
    match run(4.5, f64::NAN) {
        Err(Error::NonFinite { what }) => assert!(what.contains("proposal"), "{what}"),
        other => panic!("{other:?}"),
    }
    // −∞ is as improper as NaN.
    assert!(matches!(
        run(4.5, f64::NEG_INFINITY),
        Err(Error::NonFinite { .. })
    ));
    // NaN or +∞ at the start.
    assert!(matches!(run(1.0, f64::NAN), Err(Error::NonFinite { .. })));
    match run(1.0, f64::INFINITY) {
        Err(Error::InvalidArgument { what }) => assert!(what.contains("chain 0 starts"), "{what}"),
        other => panic!("{other:?}"),
    }
    // +∞ beyond the outer well is merely a wall: fine.
    assert!(run(6.5, f64::INFINITY).is_ok());
}

/// At a kT so small that β = 1/kT overflows (5e-324), random-walk Metropolis is a descent: no
/// proposal that raises the energy may be accepted, and equal energies (0·∞ in the old
/// formula) must not produce NaN. A pin of the shared `boltzmann` test, not a regression: the
/// old code got this right by accident (`NaN.min(1.0)` is 1).
#[test]
fn tiny_temperature_chains_never_go_uphill() {
    for kt in [1e-300, 5e-324] {
        let config = McmcConfig {
            kt,
            n_chains: 2,
            n_burnin: 200,
            n_samples: 400,
            thin: 1,
            initial_step: 0.3,
            initial: InitialState::Configurations(vec![0.0, 0.0, 3.0, 0.5]),
            ..McmcConfig::default()
        };
        let out = reference_mcmc::run(&DoubleWell::dw2(), &config).unwrap();
        for c in 0..2 {
            let u = &out.energies[out.stats.chain_samples(c)];
            assert!(u.windows(2).all(|w| w[1] <= w[0]), "kT {kt:e}: {u:?}");
        }
        assert!(out.stats.acceptance() > 0.0, "kT {kt:e}");
    }
}
