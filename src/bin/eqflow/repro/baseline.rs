//! Experiment 4 (paper §7.3–7.4, Fig. 5 and 6): the equivariant flow against a
//! non-equivariant baseline, with and without data augmentation, as the training set grows.
//!
//! **Models.** Three flows per system and training-set size, all trained by maximum likelihood
//! through the same RK4 map (the system's recommended step count, exact-discrete densities):
//! - `kernel`: the paper's equivariant field (620 parameters);
//! - `dense`: the non-equivariant baseline, a tanh network of the flattened coordinates and time
//!   (the `dense` field family, docs/field_families.md), trained with the exact divergence, or
//!   with its Hutchinson estimate (`--divergence hutchinson`: one Rademacher probe per
//!   configuration and step, the paper's recipe for its baseline);
//! - `dense_aug`: the same family trained on the training set with every configuration replaced
//!   by [`Plan::n_copies`] random copies, each rotated or reflected about its centre of mass by
//!   a Haar-random orthogonal matrix and its particles relabelled by a uniform permutation
//!   ([`augment`]): the paper's "aug neq".
//!
//! **Training budget.** A fixed number of optimiser steps per system (batch 64, or the whole set
//! when smaller), whatever the set's size: an epoch count would give the 10-sample sets ~nothing
//! and the 10,000-sample ones hours. Validation is on the training set itself ([`train`]): no
//! test data choose the kept epoch, so a model that overfits shows it (the paper's point at
//! small sizes).
//!
//! **Measures.** Train NLL (on the un-augmented training set, at most [`Plan::n_train_eval`] of
//! it) and test NLL (a held-out MCMC set drawn by an independent run) of the exact-discrete
//! density; configurations whose density cannot be evaluated (an inverse that fails) are counted
//! and left out of the mean, not fatal. Then, for DW-4, samples of the three flows trained on
//! [`Plan::histogram_size`] configurations: energy histograms raw and reweighted by the
//! self-normalised importance weights `w ∝ exp(−u − log q)`, beside the test data's, and the
//! Kish ESS of each flow's weights.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde_json::{Value, json};

use eqflow::boltzmann::{kish_ess, log_weights_into, relative_weights_into};
use eqflow::energy::energies_into;
use eqflow::flow::sample_rng;
use eqflow::integrate::{DensityMode, Integrator, Method};
use eqflow::reference_mcmc::{self, McmcConfig};
use eqflow::system::System;
use eqflow::train::{Objective, Probe, TrainConfig, Trainer};
use eqflow::{Energy, Flow, Result};

use super::{RunArgs, cell, check_outputs, create_out_dir, table, write_csv};
use crate::plot::{self, Panel, Series};
use crate::report_table as report;

/// The three models, in table order: (key, field family, augmented).
const MODELS: [(&str, &str, bool); 3] = [
    ("kernel", "kernel", false),
    ("dense", "dense", false),
    ("dense_aug", "dense", true),
];

/// Per-system sizes of a run.
#[derive(Clone, Copy)]
pub(super) struct SystemPlan {
    pub(super) name: &'static str,
    /// Optimiser steps of every model, whatever the training-set size.
    pub(super) n_steps: usize,
    /// Configurations per step (or the whole set when smaller).
    pub(super) batch_size: usize,
    /// Held-out test configurations.
    pub(super) n_test: usize,
    /// MCMC steps between kept configurations.
    pub(super) thin: usize,
}

/// Sizes of a run.
pub(super) struct Plan {
    pub(super) systems: &'static [SystemPlan],
    pub(super) sizes: &'static [usize],
    /// Random copies of each training configuration in the augmented set (K).
    pub(super) n_copies: usize,
    /// Training configurations whose NLL is reported (the first ones of the set).
    pub(super) n_train_eval: usize,
    /// The DW-4 training-set size whose flows are sampled for the energy histograms.
    pub(super) histogram_size: usize,
    pub(super) n_samples: usize,
    pub(super) n_bins: usize,
}

pub(super) const FULL: Plan = Plan {
    systems: &[
        SystemPlan {
            name: "dw4",
            n_steps: 1_000,
            batch_size: 64,
            n_test: 2_000,
            thin: 50,
        },
        SystemPlan {
            name: "lj13",
            n_steps: 200,
            batch_size: 32,
            n_test: 1_000,
            thin: 50,
        },
    ],
    sizes: &[10, 100, 1_000, 10_000],
    n_copies: 10,
    n_train_eval: 1_000,
    histogram_size: 1_000,
    n_samples: 10_000,
    n_bins: 50,
};

pub(super) const QUICK: Plan = Plan {
    systems: &[SystemPlan {
        name: "dw4",
        n_steps: 120,
        batch_size: 32,
        n_test: 300,
        thin: 20,
    }],
    sizes: &[10, 100],
    n_copies: 4,
    n_train_eval: 100,
    histogram_size: 100,
    n_samples: 500,
    n_bins: 30,
};

/// The mean NLL of a set and how many of its configurations could not be evaluated.
#[derive(Clone, Copy)]
struct Nll {
    mean: f64,
    n_failed: usize,
}

/// One trained model at one training-set size.
struct Row {
    model: &'static str,
    n_train: usize,
    /// Configurations the model was trained on (K·n_train for the augmented baseline).
    n_train_set: usize,
    n_steps: u64,
    train: Nll,
    test: Nll,
    seconds: f64,
}

/// What a system's run gives.
struct SystemResult {
    name: &'static str,
    n_steps: usize,
    batch_size: usize,
    n_params: [usize; 3],
    n_test: usize,
    rows: Vec<Row>,
}

/// The energy histograms of the DW-4 flows.
struct Histograms {
    lo: f64,
    width: f64,
    test: Vec<f64>,
    /// Per model: raw and reweighted densities, ESS (count), failed samples.
    models: Vec<(Vec<f64>, Vec<f64>, f64, usize)>,
}

/// `copies` random copies of every configuration of `x` (layout `dim`-dimensional, particle
/// major): each rotated or reflected about its centre of mass by a Haar-random orthogonal
/// matrix and its particles relabelled by a uniform random permutation. Deterministic in `seed`.
pub(super) fn augment(
    x: &[f64],
    dim: usize,
    n_particles: usize,
    copies: usize,
    seed: u64,
) -> Vec<f64> {
    let len = dim * n_particles;
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x0a06_3e47);
    let mut out = Vec::with_capacity(x.len() * copies);
    let mut perm: Vec<usize> = (0..n_particles).collect();
    for xi in x.chunks_exact(len) {
        let mut centre = vec![0.0; dim];
        for p in xi.chunks_exact(dim) {
            for (c, v) in centre.iter_mut().zip(p) {
                *c += v / n_particles as f64;
            }
        }
        for _ in 0..copies {
            let q = haar_orthogonal(dim, &mut rng);
            perm.shuffle(&mut rng);
            for &p in &perm {
                let r = &xi[p * dim..(p + 1) * dim];
                for a in 0..dim {
                    let rotated: f64 = (0..dim).map(|b| q[a * dim + b] * (r[b] - centre[b])).sum();
                    out.push(centre[a] + rotated);
                }
            }
        }
    }
    out
}

/// A Haar-random `dim × dim` orthogonal matrix (row-major): the Q of a Gaussian matrix's QR
/// decomposition (Gram–Schmidt on its columns) with the signs fixed so that R has a positive
/// diagonal, which makes Q uniform on O(dim): rotations and reflections alike.
fn haar_orthogonal(dim: usize, rng: &mut ChaCha20Rng) -> Vec<f64> {
    loop {
        let g: Vec<f64> = (0..dim * dim).map(|_| StandardNormal.sample(rng)).collect();
        // Columns of g, orthonormalised in order: column j of Q is the normalised part of g's
        // column j orthogonal to the earlier ones (R_jj = its norm > 0).
        let mut q = vec![0.0; dim * dim];
        let mut degenerate = false;
        for j in 0..dim {
            let mut v: Vec<f64> = (0..dim).map(|i| g[i * dim + j]).collect();
            // Two passes: one loses orthogonality to round-off when the column is nearly in
            // the span of the earlier ones; a second restores it to machine precision.
            for _ in 0..2 {
                for k in 0..j {
                    let dot: f64 = (0..dim).map(|i| q[i * dim + k] * v[i]).sum();
                    for (i, vi) in v.iter_mut().enumerate() {
                        *vi -= dot * q[i * dim + k];
                    }
                }
            }
            let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            if norm < 1e-12 {
                degenerate = true;
                break;
            }
            for (i, vi) in v.iter().enumerate() {
                q[i * dim + j] = vi / norm;
            }
        }
        if !degenerate {
            return q;
        }
    }
}

/// Reference configurations by MCMC: `n` of them from 16 chains.
pub(super) fn mcmc(
    system: &System,
    energy: &dyn Energy,
    n: usize,
    thin: usize,
    seed: u64,
) -> Result<Vec<f64>> {
    let config = McmcConfig {
        n_chains: 16.min(n),
        n_burnin: 5_000,
        n_samples: n,
        thin,
        seed,
        ..crate::mcmc_in_units_of(system)
    };
    Ok(reference_mcmc::run(energy, &config)?.x)
}

/// Mean NLL of `x` under `flow`, the configurations that cannot be evaluated counted apart.
fn nll(flow: &Flow, x: &[f64]) -> Result<Nll> {
    let each = flow.log_density_each(x)?;
    let (mut sum, mut n_ok, mut n_failed) = (0.0, 0_usize, 0_usize);
    for log_q in each {
        match log_q {
            Ok(v) if v.is_finite() => {
                sum -= v;
                n_ok += 1;
            }
            _ => n_failed += 1,
        }
    }
    Ok(Nll {
        mean: if n_ok > 0 {
            sum / n_ok as f64
        } else {
            f64::NAN
        },
        n_failed,
    })
}

/// An untrained flow of `family` for `system` with the exact-discrete RK4 map it trains as.
fn untrained(system: &System, family: &str, seed: u64) -> Result<Flow> {
    let mut flow = super::untrained_as_published(system, family, seed)?;
    flow.set_integrator(Integrator::new(
        Method::Rk4 {
            n_steps: rk4_steps(system),
        },
        DensityMode::ExactDiscrete,
    )?);
    Ok(flow)
}

/// The baselines' ML objective for `--divergence` (`exact` or `hutchinson`).
///
/// # Errors
///
/// [`eqflow::Error::InvalidArgument`] naming the flag for anything else.
fn baseline_objective(divergence: &str) -> Result<Objective> {
    match divergence {
        "exact" => Ok(Objective::MaximumLikelihood),
        "hutchinson" => Ok(Objective::HutchinsonLikelihood {
            probe: Probe::Rademacher,
        }),
        other => Err(eqflow::Error::InvalidArgument {
            what: format!("--divergence '{other}': expected exact or hutchinson"),
        }),
    }
}

/// Trains `flow` by ML (`objective`) on `train` for about `sp.n_steps` optimiser steps of
/// batch `sp.batch_size` (whole epochs, so the count is rounded up to one), validated on
/// `validation` (a slice of the un-augmented training set, about 50 times per run); returns
/// the steps taken.
///
/// Why validate on training data: the kept parameters are the epoch whose exact-discrete RK4
/// map fits the training slice best, so an epoch whose map stopped being invertible (which the
/// continuous-mode loss cannot see) is never kept, while overfitting, which lowers the training
/// NLL, still shows on the test set.
fn train(
    flow: &mut Flow,
    system: &System,
    train: &[f64],
    validation: &[f64],
    sp: &SystemPlan,
    seed: u64,
    objective: Objective,
) -> Result<u64> {
    let n = train.len() / flow.layout().len();
    let (n_steps, batch_size) = (sp.n_steps, sp.batch_size.min(n).max(1));
    let per_epoch = n.div_ceil(batch_size);
    let n_epochs = n_steps.div_ceil(per_epoch).max(1);
    let config = TrainConfig {
        n_epochs,
        batch_size,
        kt: system.kt,
        seed,
        n_rk4_steps: rk4_steps(system),
        validate_every: n_epochs.div_ceil(50),
        objective,
        ..TrainConfig::default()
    };
    Ok(Trainer::new(config, train)
        .with_validation(validation)
        .run(flow, |_| true)?
        .n_steps)
}

fn run_system(
    plan: &Plan,
    sp: &SystemPlan,
    seed: u64,
    baseline: Objective,
    quiet: bool,
) -> Result<(SystemResult, Vec<Flow>, Vec<f64>)> {
    let system = System::preset(sp.name)?;
    let energy = system.energy.build()?;
    let (n_particles, dim) = (energy.n_particles(), energy.dim());
    let len = n_particles * dim;
    let n_max = plan.sizes.iter().copied().max().unwrap_or(0);
    let mut pool = mcmc(&system, energy.as_ref(), n_max, sp.thin, seed)?;
    // Nested training sets as prefixes of one shuffled set: the chains' order does not matter.
    let mut order: Vec<usize> = (0..n_max).collect();
    order.shuffle(&mut ChaCha20Rng::seed_from_u64(seed ^ 0x5f1e));
    pool = order
        .iter()
        .flat_map(|&i| pool[i * len..(i + 1) * len].to_vec())
        .collect();
    let test = mcmc(
        &system,
        energy.as_ref(),
        sp.n_test,
        sp.thin,
        seed.wrapping_add(1),
    )?;
    let n_params = [
        untrained(&system, "kernel", seed)?.field().params().len(),
        untrained(&system, "dense", seed)?.field().params().len(),
        untrained(&system, "dense", seed)?.field().params().len(),
    ];
    let mut rows = Vec::new();
    let mut kept = Vec::new();
    for &n in plan.sizes {
        let train_set = &pool[..n * len];
        let augmented = augment(train_set, dim, n_particles, plan.n_copies, seed ^ n as u64);
        let eval_set = &train_set[..n.min(plan.n_train_eval) * len];
        for (model, family, aug) in MODELS {
            let start = std::time::Instant::now();
            let data = if aug { &augmented[..] } else { train_set };
            let mut flow = untrained(&system, family, seed)?;
            let objective = if family == "dense" {
                baseline
            } else {
                Objective::MaximumLikelihood
            };
            let n_steps = train(&mut flow, &system, data, eval_set, sp, seed, objective)?;
            let row = Row {
                model,
                n_train: n,
                n_train_set: data.len() / len,
                n_steps,
                train: nll(&flow, eval_set)?,
                test: nll(&flow, &test)?,
                seconds: start.elapsed().as_secs_f64(),
            };
            if !quiet {
                eprintln!(
                    "baseline: {} n = {n} {model}: {n_steps} steps, train NLL {:.3}, test NLL {:.3} ({} failed), {:.1} s",
                    sp.name, row.train.mean, row.test.mean, row.test.n_failed, row.seconds
                );
            }
            rows.push(row);
            if sp.name == "dw4" && n == plan.histogram_size {
                kept.push(flow);
            }
        }
    }
    Ok((
        SystemResult {
            name: sp.name,
            n_steps: sp.n_steps,
            batch_size: sp.batch_size,
            n_params,
            n_test: sp.n_test,
            rows,
        },
        kept,
        test,
    ))
}

/// Normalised histogram (a density) of `values` with optional weights.
fn histogram(
    values: &[f64],
    weights: Option<&[f64]>,
    lo: f64,
    width: f64,
    n_bins: usize,
) -> Vec<f64> {
    let mut h = vec![0.0; n_bins];
    let mut total = 0.0;
    for (i, v) in values.iter().enumerate() {
        let w = weights.map_or(1.0, |w| w[i]);
        total += w;
        let b = ((v - lo) / width).floor();
        if b >= 0.0 && b < n_bins as f64 {
            h[b as usize] += w;
        }
    }
    if total > 0.0 {
        h.iter_mut().for_each(|x| *x /= total * width);
    }
    h
}

/// Samples each DW-4 flow, histograms their energies raw and reweighted against the test
/// data's. Samples whose map fails (or lands at infinite energy) are counted and left out.
fn energy_histograms(flows: &[Flow], test: &[f64], plan: &Plan, seed: u64) -> Result<Histograms> {
    let system = System::preset("dw4")?;
    let energy = system.energy.build()?;
    let len = 8;
    let mut u_test = vec![0.0; test.len() / len];
    energies_into(energy.as_ref(), test, &mut u_test)?;
    let mut sorted = u_test.clone();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p) as usize];
    let (lo, hi) = (q(0.0), q(0.995));
    let pad = 0.1 * (hi - lo);
    let (lo, hi) = (lo - pad, hi + pad);
    let width = (hi - lo) / plan.n_bins as f64;
    let test_hist = histogram(&u_test, None, lo, width, plan.n_bins);
    let mut models = Vec::new();
    for flow in flows {
        let samples: Vec<Option<(Vec<f64>, f64)>> = (0..plan.n_samples as u64)
            .into_par_iter()
            .map(|i| {
                let mut x = vec![0.0; len];
                let mut ws = flow.workspace();
                flow.sample_one_into(&mut sample_rng(seed, i), &mut x, &mut ws)
                    .ok()
                    .filter(|(log_q, _)| log_q.is_finite())
                    .map(|(log_q, _)| (x, log_q))
            })
            .collect();
        let n_failed = samples.iter().filter(|s| s.is_none()).count();
        let ok: Vec<&(Vec<f64>, f64)> = samples.iter().flatten().collect();
        let xs: Vec<f64> = ok.iter().flat_map(|(x, _)| x.iter().copied()).collect();
        let mut log_q: Vec<f64> = ok.iter().map(|(_, l)| *l).collect();
        let mut u = vec![0.0; log_q.len()];
        energies_into(energy.as_ref(), &xs, &mut u)?;
        // Samples at infinite energy have weight 0; the weights need finite energies.
        let finite: Vec<bool> = u.iter().map(|v| v.is_finite()).collect();
        let n_infinite = finite.iter().filter(|f| !**f).count();
        u.retain(|v| v.is_finite());
        let mut i = 0;
        log_q.retain(|_| {
            i += 1;
            finite[i - 1]
        });
        let mut log_w = vec![0.0; u.len()];
        log_weights_into(&u, &log_q, system.kt, &mut log_w)?;
        let mut w = vec![0.0; u.len()];
        relative_weights_into(&log_w, &mut w)?;
        models.push((
            histogram(&u, None, lo, width, plan.n_bins),
            histogram(&u, Some(&w), lo, width, plan.n_bins),
            kish_ess(&log_w),
            n_failed + n_infinite,
        ));
    }
    Ok(Histograms {
        lo,
        width,
        test: test_hist,
        models,
    })
}

/// The experiment's files under `--out`.
const BASELINE_NLL_CSV: &str = "baseline_nll.csv";
const BASELINE_DW4_ENERGY_CSV: &str = "baseline_dw4_energy.csv";
const BASELINE_PNG: &str = "baseline.png";
const OUTPUTS: [&str; 3] = [BASELINE_NLL_CSV, BASELINE_DW4_ENERGY_CSV, BASELINE_PNG];

pub(super) fn run(a: &RunArgs, divergence: &str) -> Result<()> {
    let start = std::time::Instant::now();
    let baseline = baseline_objective(divergence)?;
    check_outputs(&a.out, &OUTPUTS, &[])?;
    create_out_dir(&a.out)?;
    let plan = if a.quick { &QUICK } else { &FULL };
    let mut results = Vec::new();
    let mut histograms = None;
    for sp in plan.systems {
        let (result, flows, test) = run_system(plan, sp, a.seed, baseline, a.common.quiet)?;
        if sp.name == "dw4" && flows.len() == MODELS.len() {
            histograms = Some(energy_histograms(
                &flows,
                &test,
                plan,
                a.seed.wrapping_add(7),
            )?);
        }
        results.push(result);
    }

    // CSV: NLL against training-set size.
    let nll_path = a.out.join(BASELINE_NLL_CSV);
    let mut csv_rows = Vec::new();
    let mut table_rows = Vec::new();
    let mut systems_json = Vec::new();
    for s in &results {
        let mut rows_json = Vec::new();
        for r in &s.rows {
            let k = MODELS.iter().position(|m| m.0 == r.model).unwrap_or(0);
            csv_rows.push(vec![
                s.name.to_string(),
                r.model.to_string(),
                s.n_params[k].to_string(),
                r.n_train.to_string(),
                r.n_train_set.to_string(),
                r.n_steps.to_string(),
                cell(r.train.mean),
                r.train.n_failed.to_string(),
                cell(r.test.mean),
                r.test.n_failed.to_string(),
                cell(r.seconds),
            ]);
            table_rows.push(vec![
                s.name.to_string(),
                r.model.to_string(),
                s.n_params[k].to_string(),
                r.n_train.to_string(),
                r.n_train_set.to_string(),
                format!("{:.3}", r.train.mean),
                format!("{:.3}", r.test.mean),
                format!("{}/{}", r.test.n_failed, s.n_test),
                format!("{:.0}", r.seconds),
            ]);
            rows_json.push(json!({"model": r.model, "n_train": r.n_train,
                "n_train_set": r.n_train_set, "n_steps": r.n_steps,
                "train_nll": finite_or_null(r.train.mean), "n_train_failed": r.train.n_failed,
                "test_nll": finite_or_null(r.test.mean), "n_test_failed": r.test.n_failed,
                "seconds": r.seconds}));
        }
        let params: Value = MODELS
            .iter()
            .zip(s.n_params)
            .map(|(m, p)| (m.0.to_string(), json!(p)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        systems_json.push(
            json!({"system": s.name, "n_test": s.n_test, "n_params": params,
                   "n_steps": s.n_steps, "batch_size": s.batch_size, "rows": rows_json}),
        );
    }
    write_csv(
        &nll_path,
        &[
            "system",
            "model",
            "n_params",
            "n_train",
            "n_train_set",
            "n_steps",
            "train_nll",
            "n_train_failed",
            "test_nll",
            "n_test_failed",
            "seconds",
        ],
        &csv_rows,
    )?;

    // CSV: the DW-4 energy histograms.
    let hist_path = a.out.join(BASELINE_DW4_ENERGY_CSV);
    let mut hist_json = Value::Null;
    let mut ess_text = String::new();
    if let Some(h) = &histograms {
        let mut header = vec!["energy".to_string(), "test".to_string()];
        for (m, ..) in MODELS {
            header.push(format!("{m}_raw"));
            header.push(format!("{m}_reweighted"));
        }
        let rows: Vec<Vec<String>> = (0..plan.n_bins)
            .map(|b| {
                let mut row = vec![cell(h.lo + (b as f64 + 0.5) * h.width), cell(h.test[b])];
                for m in &h.models {
                    row.push(cell(m.0[b]));
                    row.push(cell(m.1[b]));
                }
                row
            })
            .collect();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        write_csv(&hist_path, &header, &rows)?;
        let models: Vec<Value> = MODELS
            .iter()
            .zip(&h.models)
            .map(|(m, (_, _, ess, failed))| {
                json!({"model": m.0, "ess": ess, "ess_fraction": ess / plan.n_samples as f64,
                       "n_failed": failed})
            })
            .collect();
        for (m, (_, _, ess, failed)) in MODELS.iter().zip(&h.models) {
            ess_text.push_str(&format!(
                "  {}: ESS {:.1} of {} ({:.2} %), {failed} failed\n",
                m.0,
                ess,
                plan.n_samples,
                100.0 * ess / plan.n_samples as f64
            ));
        }
        hist_json = json!({"n_train": plan.histogram_size, "n_samples": plan.n_samples,
                           "csv": hist_path, "models": models});
    }

    let figure = a.out.join(BASELINE_PNG);
    draw(&figure, &results, histograms.as_ref()).map_err(|what| eqflow::Error::Io { what })?;

    let seconds = start.elapsed().as_secs_f64();
    let text = table(
        &[
            "system",
            "model",
            "params",
            "n_train",
            "trained on",
            "train NLL",
            "test NLL",
            "test failed",
            "s",
        ],
        &table_rows,
    );
    report(
        &a.common,
        json!({"command": "repro", "experiment": "baseline", "quick": a.quick, "seed": a.seed,
               "baseline_divergence": divergence, "n_copies": plan.n_copies,
               "sizes": plan.sizes, "systems": systems_json, "histograms": hist_json,
               "nll_csv": nll_path, "figure": figure, "seconds": seconds}),
        format!(
            "equivariant flow (kernel) against the non-equivariant baseline (dense) and the \
             baseline trained on {} random rotations/reflections and permutations of each \
             configuration (dense_aug), both trained with the {divergence} divergence; NLL of \
             the exact-discrete density, train on the un-augmented set\n\
             {text}{}{ess_text}CSV: {}{}\nfigure: {}\n{seconds:.1} s\n",
            plan.n_copies,
            if histograms.is_some() {
                format!(
                    "DW-4 flows trained on {} configurations, {} samples each:\n",
                    plan.histogram_size, plan.n_samples
                )
            } else {
                String::new()
            },
            nll_path.display(),
            if histograms.is_some() {
                format!(", {}", hist_path.display())
            } else {
                String::new()
            },
            figure.display()
        ),
    )
}

fn finite_or_null(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}

fn draw(
    path: &std::path::Path,
    results: &[SystemResult],
    histograms: Option<&Histograms>,
) -> std::result::Result<(), String> {
    use plotters::style::{BLACK, BLUE, RED, RGBColor};
    let green = RGBColor(0, 150, 0);
    let colors = [BLUE, RED, green];
    let light = [
        RGBColor(140, 170, 255),
        RGBColor(255, 150, 150),
        RGBColor(130, 210, 130),
    ];
    let mut panels = Vec::new();
    for s in results {
        let mut series = Vec::new();
        for (k, (model, ..)) in MODELS.iter().enumerate() {
            let rows: Vec<&Row> = s.rows.iter().filter(|r| r.model == *model).collect();
            // No dashed lines in the plot module: train is the lighter line with markers.
            series.push(Series {
                name: format!("{model} train"),
                points: rows
                    .iter()
                    .map(|r| (r.n_train as f64, r.train.mean))
                    .collect(),
                color: light[k],
                markers: true,
            });
            series.push(Series {
                name: format!("{model} test"),
                points: rows
                    .iter()
                    .map(|r| (r.n_train as f64, r.test.mean))
                    .collect(),
                color: colors[k],
                markers: false,
            });
        }
        panels.push(Panel {
            title: format!("{}: NLL against training-set size", s.name.to_uppercase()),
            x_desc: "log10 training-set size".into(),
            y_desc: "NLL (nats)".into(),
            log_x: true,
            log_y: false,
            series,
        });
    }
    if let Some(h) = histograms {
        let centre = |b: usize| h.lo + (b as f64 + 0.5) * h.width;
        let curve = |v: &[f64]| {
            v.iter()
                .enumerate()
                .map(|(b, y)| (centre(b), *y))
                .collect::<Vec<_>>()
        };
        for (reweighted, title) in [(false, "raw"), (true, "reweighted")] {
            let mut series = vec![Series {
                name: "test data (MCMC)".into(),
                points: curve(&h.test),
                color: BLACK,
                markers: false,
            }];
            for (k, (model, ..)) in MODELS.iter().enumerate() {
                let m = &h.models[k];
                series.push(Series {
                    name: (*model).to_string(),
                    points: curve(if reweighted { &m.1 } else { &m.0 }),
                    color: colors[k],
                    markers: false,
                });
            }
            panels.push(Panel {
                title: format!("DW-4 energy of flow samples, {title}"),
                x_desc: "energy u (kT)".into(),
                y_desc: "density".into(),
                log_x: false,
                log_y: false,
                series,
            });
        }
    }
    plot::panels(path, &panels)
}

/// RK4 steps of the experiment's maps: 10 for the double well (as fine as 20 within its
/// 1,000-step budget, at half the cost; docs/field_families.md, "Measured, session 9"), 20 (the
/// paper's) otherwise.
fn rk4_steps(system: &System) -> usize {
    match system.energy {
        eqflow::system::EnergySpec::DoubleWell { .. } => 10,
        _ => 20,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted_pair_distances(x: &[f64], dim: usize) -> Vec<f64> {
        let n = x.len() / dim;
        let mut d = Vec::new();
        for i in 0..n {
            for j in i + 1..n {
                let s: f64 = (0..dim)
                    .map(|a| (x[i * dim + a] - x[j * dim + a]).powi(2))
                    .sum();
                d.push(s.sqrt());
            }
        }
        d.sort_by(f64::total_cmp);
        d
    }

    /// Every copy is the original rotated or reflected about its centre of mass and relabelled:
    /// the centre and the multiset of pair distances are kept, the labelled distances are not
    /// (some copy is permuted), and the whole is a function of the seed.
    #[test]
    fn augmented_copies_are_relabelled_isometries_about_the_centre() {
        for (dim, n) in [(2, 4), (3, 13)] {
            let mut rng = ChaCha20Rng::seed_from_u64(5);
            let x: Vec<f64> = (0..2 * n * dim)
                .map(|_| StandardNormal.sample(&mut rng))
                .collect();
            let copies = 6;
            let out = augment(&x, dim, n, copies, 11);
            assert_eq!(out.len(), x.len() * copies);
            assert_eq!(out, augment(&x, dim, n, copies, 11));
            assert_ne!(out, augment(&x, dim, n, copies, 12));
            let len = n * dim;
            let centre = |c: &[f64]| -> Vec<f64> {
                (0..dim)
                    .map(|a| c.chunks_exact(dim).map(|p| p[a]).sum::<f64>() / n as f64)
                    .collect()
            };
            let mut d01 = Vec::new();
            for (k, copy) in out.chunks_exact(len).enumerate() {
                let original = &x[(k / copies) * len..(k / copies + 1) * len];
                for (a, b) in centre(copy).iter().zip(centre(original)) {
                    assert!((a - b).abs() < 1e-12, "copy {k}: centre moved");
                }
                let (da, db) = (
                    sorted_pair_distances(copy, dim),
                    sorted_pair_distances(original, dim),
                );
                for (a, b) in da.iter().zip(&db) {
                    assert!((a - b).abs() < 1e-12, "copy {k}: {a} vs {b}");
                }
                if k < copies {
                    d01.push(sorted_pair_distances(&copy[..2 * dim], dim)[0]);
                }
            }
            d01.sort_by(f64::total_cmp);
            d01.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
            assert!(d01.len() > 1, "no copy was relabelled: {d01:?}");
        }
    }

    /// The matrices are orthogonal, and rotations and reflections come about equally often
    /// (1,000 draws: 6 standard deviations around one half).
    #[test]
    fn haar_matrices_are_orthogonal_with_both_determinant_signs() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        for dim in [2, 3] {
            let mut n_reflections = 0;
            for _ in 0..1_000 {
                let q = haar_orthogonal(dim, &mut rng);
                for i in 0..dim {
                    for j in 0..dim {
                        let dot: f64 = (0..dim).map(|k| q[k * dim + i] * q[k * dim + j]).sum();
                        let expected = if i == j { 1.0 } else { 0.0 };
                        assert!((dot - expected).abs() < 1e-12);
                    }
                }
                let det = if dim == 2 {
                    q[0] * q[3] - q[1] * q[2]
                } else {
                    q[0] * (q[4] * q[8] - q[5] * q[7]) - q[1] * (q[3] * q[8] - q[5] * q[6])
                        + q[2] * (q[3] * q[7] - q[4] * q[6])
                };
                assert!((det.abs() - 1.0).abs() < 1e-12);
                if det < 0.0 {
                    n_reflections += 1;
                }
            }
            assert!(
                (400..=600).contains(&n_reflections),
                "{dim}: {n_reflections}"
            );
        }
    }
}
