//! Experiment 5 (paper §7, Fig. 7 and Table 1): how many distinct metastable states (local
//! minima of the energy) a sampler's configurations minimise to.
//!
//! Every configuration is minimised ([`eqflow::minima::minimize`], L-BFGS to a gradient norm
//! of 1e-6), the converged ends are grouped by their sorted pair-distance lists (largest
//! difference below [`THRESHOLD`] length units), and each group's first member is checked by
//! its Hessian (central differences of the analytic gradient, the rigid-body zero modes left
//! out): groups with a negative eigenvalue are saddles and are not counted.
//!
//! **DW-4.** One minimum (minimised from an MCMC sample) plus Gaussian noise of σ = 0.1 is the
//! whole training set of the default (kernel-field) flow; the distinct minima of its samples
//! are set beside the system's full list, enumerated by minimising many MCMC and random starts.
//! The paper's non-equivariant baseline is the field family `dense`, used if this build has
//! it ([`BASELINE_FAMILY`]).
//!
//! **LJ-13 (Table 1).** Per round: a training trajectory, an independent short one of the same
//! length, and a long one (reference MCMC); the default LJ-13 flow trained on the training
//! trajectory and sampled; the distinct minima of each set counted in the energy windows
//! (−70, −60), (−80, −70), (−∞, −80) of this code's LJ-13 (ε = 2, r_m = 1, k = 1: the
//! convention of the paper's benchmark). Mean ± sd over the rounds.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use serde_json::{Value, json};

use eqflow::geometry::remove_center_of_mass;
use eqflow::minima::{DistinctMinima, MinimizerConfig, SaddleFilter, curvature, minimize};
use eqflow::reference_mcmc::{self, InitialState, McmcConfig};
use eqflow::system::System;
use eqflow::train::{TrainConfig, Trainer};
use eqflow::{Energy, Flow, Result};

use super::{RunArgs, cell, check_outputs, create_out_dir, table, write_csv};
use crate::plot::{self, Panel, Series};
use crate::report_table as report;

/// Two minima are the same state when their sorted pair distances differ by less than this
/// everywhere (length units; the benchmark systems' length scale is 1). Minimisation to a
/// gradient norm of 1e-6 places a minimum to ~1e-6/λ_min, far inside it.
pub(super) const THRESHOLD: f64 = 1e-3;
/// The field family of the paper's non-equivariant baseline, when this build registers it.
pub(super) const BASELINE_FAMILY: &str = "dense";
/// Table 1's energy windows (lower, upper), open intervals.
const WINDOWS: [(f64, f64); 3] = [(-70.0, -60.0), (-80.0, -70.0), (f64::NEG_INFINITY, -80.0)];
const WINDOW_NAMES: [&str; 3] = ["(-70, -60)", "(-80, -70)", "(-inf, -80)"];
/// The paper's Table 1 (mean, sd) per window, by our source names.
const PAPER: [(&str, [(f64, f64); 3]); 4] = [
    ("training", [(0.0, 0.0), (7.0, 0.0), (0.0, 0.0)]),
    ("short_mcmc", [(2.70, 3.80), (7.70, 3.23), (0.90, 0.30)]),
    ("long_mcmc", [(64.60, 6.11), (48.60, 4.13), (1.00, 0.00)]),
    ("flow", [(38.30, 2.49), (41.50, 2.50), (1.00, 0.00)]),
];

/// Sizes of a run.
pub(super) struct Plan {
    // DW-4
    pub(super) dw4_n_reference_mcmc: usize,
    pub(super) dw4_n_reference_random: usize,
    pub(super) dw4_n_train: usize,
    pub(super) dw4_noise: f64,
    pub(super) dw4_epochs: usize,
    pub(super) dw4_n_samples: usize,
    // LJ-13
    pub(super) lj13_rounds: usize,
    pub(super) lj13_n_short: usize,
    pub(super) lj13_n_long: usize,
    pub(super) lj13_epochs: usize,
    pub(super) lj13_n_samples: usize,
}

pub(super) const FULL: Plan = Plan {
    dw4_n_reference_mcmc: 2_000,
    dw4_n_reference_random: 2_000,
    dw4_n_train: 1_000,
    dw4_noise: 0.1,
    dw4_epochs: 50,
    dw4_n_samples: 10_000,
    lj13_rounds: 10,
    lj13_n_short: 1_000,
    lj13_n_long: 100_000,
    lj13_epochs: 20,
    lj13_n_samples: 1_000,
};

pub(super) const QUICK: Plan = Plan {
    dw4_n_reference_mcmc: 300,
    dw4_n_reference_random: 300,
    dw4_n_train: 300,
    dw4_noise: 0.1,
    dw4_epochs: 4,
    dw4_n_samples: 1_000,
    lj13_rounds: 1,
    lj13_n_short: 200,
    lj13_n_long: 2_000,
    lj13_epochs: 2,
    lj13_n_samples: 200,
};

/// A distinct minimum that passed the saddle filter, with what the CSV files report.
struct Found {
    x: Vec<f64>,
    energy: f64,
    n_hits: usize,
    n_negative: usize,
    lowest_eigenvalue: f64,
}

/// How a set of configurations fared on the way to its distinct minima.
#[derive(Default, Clone, Copy)]
struct Census {
    n_samples: usize,
    /// Minimisations that reached the gradient tolerance.
    n_converged: usize,
    /// Starts with an infinite energy (overlapping particles): nothing to minimise.
    n_infinite: usize,
    /// Converged configurations whose group was a saddle.
    n_saddle_hits: usize,
    n_saddle_states: usize,
}

/// Minimises every configuration in `xs` (rayon over configurations, each sequential), groups
/// the converged ends, and filters the groups' Hessians.
fn distinct_minima(energy: &dyn Energy, xs: &[f64]) -> Result<(Vec<Found>, Census)> {
    let len = energy.n_particles() * energy.dim();
    let config = MinimizerConfig::default();
    let ends: Vec<Option<eqflow::minima::Minimized>> = xs
        .par_chunks_exact(len)
        .map(|x| match minimize(energy, x, &config) {
            Ok(m) => Ok(Some(m)),
            Err(eqflow::Error::NonFinite { .. }) => Ok(None),
            Err(e) => Err(e),
        })
        .collect::<Result<_>>()?;
    let mut census = Census {
        n_samples: ends.len(),
        ..Census::default()
    };
    let mut set = DistinctMinima::new(energy.dim(), THRESHOLD)?;
    for end in &ends {
        match end {
            None => census.n_infinite += 1,
            Some(m) if m.converged => {
                census.n_converged += 1;
                set.insert(&m.x, m.energy)?;
            }
            Some(_) => {}
        }
    }
    let filter = SaddleFilter::default();
    let curvatures = set
        .members()
        .par_iter()
        .map(|m| curvature(energy, &m.x, &filter))
        .collect::<Result<Vec<_>>>()?;
    let mut found = Vec::new();
    for (m, c) in set.members().iter().zip(curvatures) {
        if c.is_minimum() {
            found.push(Found {
                x: m.x.clone(),
                energy: m.energy,
                n_hits: m.n_hits,
                n_negative: c.n_negative,
                lowest_eigenvalue: c.lowest,
            });
        } else {
            census.n_saddle_hits += m.n_hits;
            census.n_saddle_states += 1;
        }
    }
    found.sort_by(|a, b| a.energy.total_cmp(&b.energy));
    Ok((found, census))
}

fn mcmc(system: &System, energy: &dyn Energy, n: usize, seed: u64) -> Result<Vec<f64>> {
    let config = McmcConfig {
        kt: system.kt,
        n_chains: 16.min(n),
        n_burnin: 5_000,
        n_samples: n,
        thin: 10,
        seed,
        initial: InitialState::Lattice {
            spacing: system.neighbour_distance(),
            jitter: 0.1,
        },
        ..McmcConfig::default()
    };
    Ok(reference_mcmc::run(energy, &config)?.x)
}

/// Trains `flow` by maximum likelihood on `train` (the paper's protocol otherwise); returns a
/// line for the report.
fn train(flow: &mut Flow, train: &[f64], epochs: usize, kt: f64, seed: u64) -> Result<String> {
    let config = TrainConfig {
        n_epochs: epochs,
        kt,
        seed,
        ..TrainConfig::default()
    };
    let summary = Trainer::new(config, train).run(flow, |_| true)?;
    let last = summary.epochs.last().map_or(f64::NAN, |e| e.train_nll);
    Ok(format!(
        "{epochs} epochs of ML, final training NLL {last:.3}, {:.1} s",
        summary.wall_time.as_secs_f64()
    ))
}

/// The non-equivariant baseline's minima, or why there are none.
enum Baseline {
    NotAvailable(String),
    Ran {
        found: Vec<Found>,
        census: Census,
        provenance: String,
    },
}

struct Dw4Result {
    reference: Vec<Found>,
    reference_census: Census,
    training_minimum: Found,
    flow: Vec<Found>,
    flow_census: Census,
    flow_provenance: String,
    /// Per flow minimum, the index of the reference minimum it matches.
    flow_in_reference: Vec<Option<usize>>,
    baseline: Baseline,
}

fn index_in(reference: &[Found], x: &[f64], dim: usize) -> Result<Option<usize>> {
    let mut set = DistinctMinima::new(dim, THRESHOLD)?;
    for r in reference {
        set.insert(&r.x, r.energy)?;
    }
    set.find(x)
}

fn run_dw4(plan: &Plan, seed: u64, quiet: bool) -> Result<Dw4Result> {
    let system = System::preset("dw4")?;
    let energy = system.energy.build()?;
    let energy = energy.as_ref();
    let len = 8;
    // The reference list: MCMC samples and random starts, all minimised.
    let mut starts = mcmc(&system, energy, plan.dw4_n_reference_mcmc, seed)?;
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x005e_edd4);
    let spread = Normal::new(0.0, 3.0).map_err(|e| eqflow::Error::Internal {
        what: e.to_string(),
    })?;
    starts.extend((0..plan.dw4_n_reference_random * len).map(|_| spread.sample(&mut rng)));
    let (reference, reference_census) = distinct_minima(energy, &starts)?;
    if !quiet {
        eprintln!(
            "metastable: DW-4 has {} distinct minima from {} starts",
            reference.len(),
            reference_census.n_samples
        );
    }
    // The training minimum: the first MCMC sample's, as minimised.
    let (first, _) = distinct_minima(energy, &starts[..len])?;
    let training_minimum = first
        .into_iter()
        .next()
        .ok_or_else(|| eqflow::Error::NotConverged {
            what: "DW-4: the first MCMC sample did not minimise to a minimum".into(),
            residual: f64::NAN,
        })?;
    let noise = Normal::new(0.0, plan.dw4_noise).map_err(|e| eqflow::Error::Internal {
        what: e.to_string(),
    })?;
    let mut data = Vec::with_capacity(plan.dw4_n_train * len);
    for _ in 0..plan.dw4_n_train {
        let mut x: Vec<f64> = training_minimum
            .x
            .iter()
            .map(|v| v + noise.sample(&mut rng))
            .collect();
        remove_center_of_mass(&mut x, 2);
        data.extend(x);
    }
    let sample_minima = |flow: &Flow, what: &str| -> Result<(Vec<Found>, Census)> {
        let (x, _) = flow.sample(seed.wrapping_add(1), plan.dw4_n_samples)?;
        let out = distinct_minima(energy, &x)?;
        if !quiet {
            eprintln!(
                "metastable: DW-4 {what} flow: {} distinct minima",
                out.0.len()
            );
        }
        Ok(out)
    };
    let mut flow = super::untrained_as_published(&system, "kernel", seed)?;
    let flow_provenance = train(&mut flow, &data, plan.dw4_epochs, system.kt, seed)?;
    let (flow_found, flow_census) = sample_minima(&flow, "equivariant")?;
    let flow_in_reference = flow_found
        .iter()
        .map(|f| index_in(&reference, &f.x, 2))
        .collect::<Result<Vec<_>>>()?;
    // The baseline, picked up by name once a build registers the family.
    let baseline = match super::untrained_as_published(&system, BASELINE_FAMILY, seed) {
        Err(e) => Baseline::NotAvailable(format!("not available in this build ({e})")),
        Ok(mut dense) => match train(&mut dense, &data, plan.dw4_epochs, system.kt, seed) {
            Err(e) => Baseline::NotAvailable(format!("training failed: {e}")),
            Ok(provenance) => {
                let (found, census) = sample_minima(&dense, BASELINE_FAMILY)?;
                Baseline::Ran {
                    found,
                    census,
                    provenance,
                }
            }
        },
    };
    Ok(Dw4Result {
        reference,
        reference_census,
        training_minimum,
        flow: flow_found,
        flow_census,
        flow_provenance,
        flow_in_reference,
        baseline,
    })
}

/// The LJ-13 sources in Table 1's order.
const SOURCES: [&str; 4] = ["training", "short_mcmc", "long_mcmc", "flow"];

struct Lj13Round {
    /// Per source ([`SOURCES`] order).
    found: Vec<Vec<Found>>,
    census: Vec<Census>,
    flow_provenance: String,
}

fn window_counts(found: &[Found]) -> [usize; 3] {
    WINDOWS.map(|(lo, hi)| {
        found
            .iter()
            .filter(|f| f.energy > lo && f.energy < hi)
            .count()
    })
}

fn run_lj13_round(plan: &Plan, seed: u64, round: usize, quiet: bool) -> Result<Lj13Round> {
    let system = System::preset("lj13")?;
    let energy = system.energy.build()?;
    let energy = energy.as_ref();
    let round_seed = seed.wrapping_add(1_000 * (round as u64 + 1));
    let training = mcmc(&system, energy, plan.lj13_n_short, round_seed)?;
    let short = mcmc(&system, energy, plan.lj13_n_short, round_seed + 1)?;
    let long = mcmc(&system, energy, plan.lj13_n_long, round_seed + 2)?;
    let mut flow = super::untrained_as_published(&system, "kernel", round_seed)?;
    let flow_provenance = train(
        &mut flow,
        &training,
        plan.lj13_epochs,
        system.kt,
        round_seed,
    )?;
    let (flow_x, _) = flow.sample(round_seed + 3, plan.lj13_n_samples)?;
    let mut found = Vec::new();
    let mut census = Vec::new();
    for (name, xs) in SOURCES.iter().zip([&training, &short, &long, &flow_x]) {
        let t = std::time::Instant::now();
        let (f, c) = distinct_minima(energy, xs)?;
        if !quiet {
            eprintln!(
                "metastable: LJ-13 round {round} {name}: {} distinct minima from {} samples \
                 ({} converged), windows {:?}, {:.1} s",
                f.len(),
                c.n_samples,
                c.n_converged,
                window_counts(&f),
                t.elapsed().as_secs_f64()
            );
        }
        found.push(f);
        census.push(c);
    }
    Ok(Lj13Round {
        found,
        census,
        flow_provenance,
    })
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    // Population sd over rounds, as the paper's 1.00 ± 0.00 and 0.90 ± 0.30 (0.9 of 10) imply.
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

fn census_json(c: &Census) -> Value {
    json!({"n_samples": c.n_samples, "n_converged": c.n_converged, "n_infinite_start": c.n_infinite,
           "n_saddle_hits": c.n_saddle_hits, "n_saddle_states": c.n_saddle_states})
}

fn minima_row(source: &str, k: usize, f: &Found, reference: Option<usize>) -> Vec<String> {
    let mut row = vec![
        source.to_string(),
        k.to_string(),
        cell(f.energy),
        f.n_hits.to_string(),
        f.n_negative.to_string(),
        cell(f.lowest_eigenvalue),
        reference.map_or("nan".to_string(), |r| r.to_string()),
    ];
    row.extend(f.x.iter().map(|v| cell(*v)));
    row
}

/// The experiment's files under `--out`.
const METASTABLE_DW4_MINIMA_CSV: &str = "metastable_dw4_minima.csv";
const METASTABLE_LJ13_COUNTS_CSV: &str = "metastable_lj13_counts.csv";
const METASTABLE_LJ13_MINIMA_CSV: &str = "metastable_lj13_minima.csv";
const METASTABLE_PNG: &str = "metastable.png";
const OUTPUTS: [&str; 4] = [
    METASTABLE_DW4_MINIMA_CSV,
    METASTABLE_LJ13_COUNTS_CSV,
    METASTABLE_LJ13_MINIMA_CSV,
    METASTABLE_PNG,
];

pub(super) fn run(a: &RunArgs, plan: &Plan) -> Result<()> {
    let start = std::time::Instant::now();
    check_outputs(&a.out, &OUTPUTS, &[])?;
    create_out_dir(&a.out)?;
    if plan.lj13_rounds == 0 || plan.lj13_n_long == 0 || plan.lj13_epochs == 0 {
        return Err(eqflow::Error::InvalidArgument {
            what: "metastable: --rounds, --n-long and --lj13-epochs must be at least 1".into(),
        });
    }
    let quiet = a.common.quiet;

    // DW-4.
    let t_dw4 = std::time::Instant::now();
    let dw4 = run_dw4(plan, a.seed, quiet)?;
    let dw4_seconds = t_dw4.elapsed().as_secs_f64();
    let mut rows = Vec::new();
    for (k, f) in dw4.reference.iter().enumerate() {
        rows.push(minima_row("reference", k, f, Some(k)));
    }
    rows.push(minima_row(
        "training",
        0,
        &dw4.training_minimum,
        index_in(&dw4.reference, &dw4.training_minimum.x, 2)?,
    ));
    for (k, (f, r)) in dw4.flow.iter().zip(&dw4.flow_in_reference).enumerate() {
        rows.push(minima_row("flow", k, f, *r));
    }
    if let Baseline::Ran { found, .. } = &dw4.baseline {
        for (k, f) in found.iter().enumerate() {
            rows.push(minima_row(
                BASELINE_FAMILY,
                k,
                f,
                index_in(&dw4.reference, &f.x, 2)?,
            ));
        }
    }
    let dw4_path = a.out.join(METASTABLE_DW4_MINIMA_CSV);
    let mut header = vec![
        "source",
        "minimum",
        "energy",
        "n_hits",
        "n_negative_modes",
        "lowest_eigenvalue",
        "reference_index",
    ];
    header.extend(["x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7"]);
    write_csv(&dw4_path, &header, &rows)?;

    // LJ-13.
    let t_lj13 = std::time::Instant::now();
    let mut rounds = Vec::new();
    for r in 0..plan.lj13_rounds {
        rounds.push(run_lj13_round(plan, a.seed, r, quiet)?);
    }
    let lj13_seconds = t_lj13.elapsed().as_secs_f64();
    let counts_path = a.out.join(METASTABLE_LJ13_COUNTS_CSV);
    let minima_path = a.out.join(METASTABLE_LJ13_MINIMA_CSV);
    let mut count_rows = Vec::new();
    let mut minima_rows = Vec::new();
    for (r, round) in rounds.iter().enumerate() {
        for (s, name) in SOURCES.iter().enumerate() {
            let w = window_counts(&round.found[s]);
            let c = &round.census[s];
            count_rows.push(vec![
                r.to_string(),
                name.to_string(),
                c.n_samples.to_string(),
                c.n_converged.to_string(),
                c.n_saddle_states.to_string(),
                round.found[s].len().to_string(),
                w[0].to_string(),
                w[1].to_string(),
                w[2].to_string(),
            ]);
            for f in &round.found[s] {
                minima_rows.push(vec![
                    r.to_string(),
                    name.to_string(),
                    cell(f.energy),
                    f.n_hits.to_string(),
                    f.n_negative.to_string(),
                    cell(f.lowest_eigenvalue),
                ]);
            }
        }
    }
    write_csv(
        &counts_path,
        &[
            "round",
            "source",
            "n_samples",
            "n_converged",
            "n_saddle_states",
            "n_distinct",
            "window_70_60",
            "window_80_70",
            "window_below_80",
        ],
        &count_rows,
    )?;
    write_csv(
        &minima_path,
        &[
            "round",
            "source",
            "energy",
            "n_hits",
            "n_negative_modes",
            "lowest_eigenvalue",
        ],
        &minima_rows,
    )?;

    // The summary over rounds.
    let mut table_rows = Vec::new();
    let mut sources_json = Vec::new();
    for (s, name) in SOURCES.iter().enumerate() {
        let stats: Vec<(f64, f64)> = (0..3)
            .map(|w| {
                let v: Vec<f64> = rounds
                    .iter()
                    .map(|r| window_counts(&r.found[s])[w] as f64)
                    .collect();
                mean_sd(&v)
            })
            .collect();
        let n_samples = rounds[0].census[s].n_samples;
        let paper = PAPER[s].1;
        let mut row = vec![name.to_string(), n_samples.to_string()];
        for (w, (m, sd)) in stats.iter().enumerate() {
            row.push(format!("{m:.2} ± {sd:.2} ({:.2})", paper[w].0));
        }
        table_rows.push(row);
        sources_json.push(json!({"source": name, "n_samples": n_samples,
            "mean": stats.iter().map(|v| v.0).collect::<Vec<_>>(),
            "sd": stats.iter().map(|v| v.1).collect::<Vec<_>>(),
            "paper_mean": paper.iter().map(|v| v.0).collect::<Vec<_>>(),
            "census": rounds.iter().map(|r| census_json(&r.census[s])).collect::<Vec<_>>()}));
    }

    let figure = a.out.join(METASTABLE_PNG);
    draw(&figure, &dw4, &rounds).map_err(|what| eqflow::Error::Io { what })?;

    let seconds = start.elapsed().as_secs_f64();
    let found_json = |f: &[Found]| f.iter().map(|m| m.energy).collect::<Vec<_>>();
    let (baseline_json, baseline_text) = match &dw4.baseline {
        Baseline::NotAvailable(why) => (
            json!({"family": BASELINE_FAMILY, "available": false, "reason": why}),
            format!("non-equivariant baseline (`{BASELINE_FAMILY}`): {why}"),
        ),
        Baseline::Ran {
            found,
            census,
            provenance,
        } => (
            json!({"family": BASELINE_FAMILY, "available": true, "n_distinct": found.len(),
                   "energies": found_json(found), "census": census_json(census),
                   "training": provenance}),
            format!(
                "non-equivariant baseline (`{BASELINE_FAMILY}`, {provenance}): {} distinct minima",
                found.len()
            ),
        ),
    };
    let n_matched = dw4.flow_in_reference.iter().filter(|r| r.is_some()).count();
    let energies = |f: &[Found]| {
        f.iter()
            .map(|m| format!("{:.3}", m.energy))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = table(
        &[
            "LJ-13 source",
            "samples",
            "(−70, −60)",
            "(−80, −70)",
            "(−∞, −80)",
        ],
        &table_rows,
    );
    report(
        &a.common,
        json!({"command": "repro", "experiment": "metastable", "quick": a.quick,
               "threshold": THRESHOLD,
               "dw4": {"n_reference_minima": dw4.reference.len(),
                       "reference_energies": found_json(&dw4.reference),
                       "reference_census": census_json(&dw4.reference_census),
                       "training_minimum_energy": dw4.training_minimum.energy,
                       "flow": {"n_distinct": dw4.flow.len(), "energies": found_json(&dw4.flow),
                                "n_in_reference": n_matched, "census": census_json(&dw4.flow_census),
                                "training": dw4.flow_provenance},
                       "baseline": baseline_json, "seconds": dw4_seconds},
               "lj13": {"n_rounds": rounds.len(), "windows": WINDOW_NAMES, "sources": sources_json,
                        "flow_training": rounds.iter().map(|r| r.flow_provenance.clone()).collect::<Vec<_>>(),
                        "seconds": lj13_seconds},
               "dw4_csv": dw4_path, "lj13_counts_csv": counts_path, "lj13_minima_csv": minima_path,
               "figure": figure, "seconds": seconds}),
        format!(
            "DW-4: {} distinct minima of the system (from {} starts), energies {}\n\
             equivariant flow trained on one minimum (U = {:.3}) + noise σ = {} ({}): {} distinct \
             minima from {} samples ({} of them in the reference list), energies {}\n{baseline_text}\n\
             LJ-13: distinct minima per energy window, mean ± sd over {} round(s) (paper's mean in \
             brackets)\n{text}CSV: {}, {}, {}\nfigure: {}\n{seconds:.1} s (DW-4 {dw4_seconds:.1} s, \
             LJ-13 {lj13_seconds:.1} s)\n",
            dw4.reference.len(),
            dw4.reference_census.n_samples,
            energies(&dw4.reference),
            dw4.training_minimum.energy,
            plan.dw4_noise,
            dw4.flow_provenance,
            dw4.flow.len(),
            dw4.flow_census.n_samples,
            n_matched,
            energies(&dw4.flow),
            rounds.len(),
            dw4_path.display(),
            counts_path.display(),
            minima_path.display(),
            figure.display()
        ),
    )
}

fn draw(path: &Path, dw4: &Dw4Result, rounds: &[Lj13Round]) -> std::result::Result<(), String> {
    use plotters::style::{BLACK, BLUE, RED, RGBColor};
    // a) DW-4: every reference minimum's energy, and how many flow samples reached it.
    let total: usize = dw4.flow.iter().map(|f| f.n_hits).sum::<usize>().max(1);
    let mut flow_points: Vec<(f64, f64)> = dw4
        .flow
        .iter()
        .map(|f| (f.energy, f.n_hits as f64 / total as f64))
        .collect();
    flow_points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let reference_points: Vec<(f64, f64)> = dw4.reference.iter().map(|f| (f.energy, 0.0)).collect();
    let mut series = vec![
        Series {
            name: "system's minima (reference)".into(),
            points: reference_points,
            color: BLACK,
            markers: true,
        },
        Series {
            name: "equivariant flow: fraction of samples".into(),
            points: flow_points,
            color: BLUE,
            markers: true,
        },
    ];
    if let Baseline::Ran { found, .. } = &dw4.baseline {
        let total: usize = found.iter().map(|f| f.n_hits).sum::<usize>().max(1);
        series.push(Series {
            name: format!("{BASELINE_FAMILY} flow: fraction of samples"),
            points: found
                .iter()
                .map(|f| (f.energy, f.n_hits as f64 / total as f64))
                .collect(),
            color: RED,
            markers: true,
        });
    }
    let dw4_panel = Panel {
        title: "a) DW-4 minima reached from flow samples".into(),
        x_desc: "energy of the minimum".into(),
        y_desc: "fraction of minimised samples".into(),
        log_x: false,
        log_y: false,
        series,
    };
    // b) LJ-13, first round: the number of distinct minima below each energy.
    let colors = [RGBColor(150, 150, 150), RGBColor(0, 150, 0), BLACK, BLUE];
    let lj13_series = SOURCES
        .iter()
        .enumerate()
        .map(|(s, name)| {
            let mut e: Vec<f64> = rounds[0].found[s]
                .iter()
                .map(|f| f.energy)
                .filter(|e| *e < -55.0)
                .collect();
            e.sort_by(f64::total_cmp);
            Series {
                name: name.to_string(),
                points: e
                    .iter()
                    .enumerate()
                    .map(|(k, e)| (*e, (k + 1) as f64))
                    .collect(),
                color: colors[s],
                markers: false,
            }
        })
        .collect();
    let lj13_panel = Panel {
        title: "b) LJ-13 distinct minima below U (round 0)".into(),
        x_desc: "energy U of the minimum".into(),
        y_desc: "number of distinct minima with energy ≤ U".into(),
        log_x: false,
        log_y: false,
        series: lj13_series,
    };
    plot::panels(path, &[dw4_panel, lj13_panel])
}
