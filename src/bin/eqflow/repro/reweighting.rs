//! Experiment 2 (paper Fig. 3b): the DW-2 free-energy profile along the pair distance d,
//! exact and from importance-reweighted flow samples, with exact and with Hutchinson-estimated
//! log-densities.
//!
//! **Exact profile.** Two particles in 2-D with the CoM removed live on the 2-D subspace U =
//! {x₁ + x₂ = 0}, with the isometric coordinate y = (x₁ − x₂)/√2 (|x|² = |y|²), and the pair
//! distance d = |x₁ − x₂| = √2|y|. The Boltzmann density on U is p(y) ∝ exp(−U(√2|y|)/kT); in
//! polar coordinates dy = |y| d|y| dθ, and d is linear in |y|, so
//!
//! ```text
//! p(d) = d·exp(−U(d)/kT) / Z,     Z = ∫₀^∞ d·exp(−U(d)/kT) dd,     F(d) = −kT log p(d)
//! ```
//!
//! computed by composite Simpson quadrature (the radial measure d is what makes F differ from
//! U by −kT log d). All profiles are of the same normalised density p(d), binned, so they are
//! compared without any shift.
//!
//! **Flow profiles.** Flow samples `x = F(z)` reweighted by self-normalised `w ∝ exp(−u − log q)`:
//! - exact: the library's `log q` (the exact density of the RK4 map, DESIGN.md §1);
//! - Hutchinson: `log q = log ρ(z) − ∫₀¹ εᵀ(∂v/∂x)ε dt`, the log-density ODE integrated with the
//!   estimator along the same RK4 grid (one probe ε per sample, fixed over the trajectory, as in
//!   FFJORD), on the exact (untabulated) field; alongside, the same integration with the exact
//!   divergence (`log q` continuous), so the difference between the two is the estimator's alone.
//!   Several independent probe sets give the spread the estimator adds.

use rayon::prelude::*;
use serde_json::json;

use eqflow::Result;
use eqflow::boltzmann::{kish_ess, log_weights_into, relative_weights_into};
use eqflow::field::{KernelField, TrainableField};
use eqflow::flow::sample_rng;
use eqflow::integrate::Method;
use eqflow::reference_mcmc::{self, InitialState, McmcConfig};
use eqflow::rng::{self, Stream};
use eqflow::system::System;
use eqflow::train::{TrainConfig, Trainer};
use eqflow::{Energy, Flow};

use super::hutchinson::{Hutchinson, Probe};
use super::{RunArgs, cell, check_outputs, create_out_dir, table, write_csv};
use crate::plot::{self, Panel, Series};
use crate::report_table as report;

/// The pair-distance range of the profile: both wells (d ≈ 2.5 and 5.5) and the barrier.
const D_RANGE: (f64, f64) = (1.0, 7.0);
/// Bins whose exact free energy is within this many kT of the minimum enter the error
/// measures (beyond it, even the exact weights see few samples).
const F_WINDOW: f64 = 5.0;
/// RK4 steps of the Hutchinson and continuous integrations when the model's integrator is
/// adaptive.
const DEFAULT_RK4_STEPS: usize = 20;

/// Sizes of a run.
struct Plan {
    n_train: usize,
    n_validation: usize,
    n_burnin: usize,
    thin: usize,
    n_epochs: usize,
    n_samples: usize,
    n_probe_sets: usize,
    n_bins: usize,
}

const FULL: Plan = Plan {
    n_train: 1_000,
    n_validation: 1_000,
    n_burnin: 5_000,
    thin: 50,
    n_epochs: 50,
    n_samples: 100_000,
    n_probe_sets: 5,
    n_bins: 40,
};

const QUICK: Plan = Plan {
    n_train: 500,
    n_validation: 200,
    n_burnin: 1_000,
    thin: 20,
    n_epochs: 8,
    n_samples: 4_000,
    n_probe_sets: 3,
    n_bins: 24,
};

/// One flow sample's log-densities by every route.
struct SampleRecord {
    /// Pair distance and reduced energy of the flow's sample (the library's RK4 map).
    d: f64,
    u: f64,
    log_q_exact: f64,
    /// Pair distance and reduced energy at the end of the untabulated RK4 integration.
    d_rk4: f64,
    u_rk4: f64,
    log_q_continuous: f64,
    /// Per probe kind ([`Probe::ALL`] order), per probe set.
    log_q_hutchinson: [Vec<f64>; 2],
}

fn pair_distance(x: &[f64]) -> f64 {
    ((x[0] - x[2]).powi(2) + (x[1] - x[3]).powi(2)).sqrt()
}

/// The trained or loaded DW-2 flow, and how it came to be (for the report).
fn dw2_flow(
    system: &System,
    energy: &dyn Energy,
    plan: &Plan,
    seed: u64,
    model: Option<&std::path::Path>,
    quiet: bool,
) -> Result<(Flow, Vec<f64>, String)> {
    // A given model is checked before the reference data are drawn, so a wrong file fails fast.
    let loaded = match model {
        Some(path) => {
            let (flow, _) = crate::load_model(path)?;
            if flow.layout() != eqflow::geometry::Layout::new(2, 2)?
                || flow.field().as_kernel().is_none()
            {
                return Err(eqflow::Error::InvalidArgument {
                    what: format!(
                        "{}: the reweighting experiment needs a DW-2 model (2 particles in 2-D) with \
                         the kernel field, whose reverse pass the Hutchinson estimate uses",
                        path.display()
                    ),
                });
            }
            Some((flow, format!("loaded from {}", path.display())))
        }
        None => None,
    };
    let config = McmcConfig {
        kt: system.kt,
        n_chains: 16,
        n_burnin: plan.n_burnin,
        n_samples: plan.n_train + plan.n_validation,
        thin: plan.thin,
        seed,
        initial: InitialState::Lattice {
            spacing: 3.0,
            jitter: 0.1,
        },
        ..McmcConfig::default()
    };
    let data = reference_mcmc::run(energy, &config)?;
    // The reference data: the training set, or with a given model only the MCMC profile.
    if let Some((flow, provenance)) = loaded {
        return Ok((flow, data.x, provenance));
    }
    let (train, validation) = data.x.split_at(plan.n_train * 4);
    let mut flow = super::untrained_as_published(system, "kernel", seed)?;
    let train_config = TrainConfig {
        n_epochs: plan.n_epochs,
        kt: system.kt,
        seed,
        ..TrainConfig::default()
    };
    let summary = Trainer::new(train_config, train)
        .with_validation(validation)
        .run(&mut flow, |r| {
            if !quiet {
                eprintln!(
                    "reweighting: epoch {} validation NLL {:.4}",
                    r.epoch + 1,
                    r.validation_nll.unwrap_or(f64::NAN)
                );
            }
            true
        })?;
    let nll = summary.epochs[summary.best_epoch]
        .validation_nll
        .unwrap_or(f64::NAN);
    Ok((
        flow,
        data.x,
        format!(
            "trained here: {} epochs of ML on {} MCMC samples, best validation NLL {nll:.4}, {:.1} s",
            plan.n_epochs,
            plan.n_train,
            summary.wall_time.as_secs_f64()
        ),
    ))
}

/// What every sample's routes to `log q` share.
struct Routes<'a> {
    flow: &'a Flow,
    /// The flow's field, untabulated: what the Hutchinson route integrates.
    field: &'a KernelField,
    /// The field's time points at the grid's 2·n_steps + 1 stage times.
    points: Vec<<KernelField as TrainableField>::TimePoint>,
    n_steps: usize,
    energy: &'a dyn Energy,
    kt: f64,
    seed: u64,
    n_sets: usize,
}

impl Routes<'_> {
    /// Every route to `log q` for sample `index`: the library's exact density, and the
    /// untabulated RK4 integration with the exact and the Hutchinson divergences.
    fn record(&self, index: u64) -> Result<SampleRecord> {
        let Routes {
            flow,
            field,
            ref points,
            n_steps,
            energy,
            kt,
            seed,
            n_sets,
        } = *self;
        let len = 4;
        let mut z = vec![0.0; len];
        flow.draw_latent_into(&mut sample_rng(seed, index), &mut z);
        let log_prior = flow.prior().log_density(&z);
        let mut x_flow = z.clone();
        let (log_q_exact, _) = flow.push_forward(&mut x_flow, &mut flow.workspace())?;

        let probes: Vec<(usize, Vec<f64>)> = Probe::ALL
            .iter()
            .enumerate()
            .flat_map(|(k, &probe)| {
                (0..n_sets).map(move |s| {
                    let stream = (index * 2 + k as u64) * n_sets as u64 + s as u64;
                    let mut eps = vec![0.0; len];
                    probe.draw_into(
                        &mut rng::stream(seed, Stream::HutchinsonProbe(stream)),
                        &mut eps,
                    );
                    (k, eps)
                })
            })
            .collect();
        let mut hutch = Hutchinson::new(field);
        let mut x = z;
        let mut stage = vec![0.0; len];
        let mut k = [
            vec![0.0; len],
            vec![0.0; len],
            vec![0.0; len],
            vec![0.0; len],
        ];
        let mut ell = 0.0;
        let mut ell_h = vec![0.0; probes.len()];
        let mut div_h = vec![[0.0; 4]; probes.len()];
        let h = 1.0 / n_steps as f64;
        for step in 0..n_steps {
            // Stage points: start, middle (twice), end, as the grid of time points is laid out.
            let stage_points = [2 * step, 2 * step + 1, 2 * step + 1, 2 * step + 2];
            let mut div = [0.0; 4];
            for s in 0..4 {
                stage.copy_from_slice(&x);
                if s > 0 {
                    let a = if s == 3 { h } else { 0.5 * h };
                    for ((y, x0), kk) in stage.iter_mut().zip(&x).zip(&k[s - 1]) {
                        *y = x0 + a * kk;
                    }
                }
                let point = &points[stage_points[s]];
                div[s] = field.velocity_at_into(&stage, point, &mut k[s]);
                for (p, (_, eps)) in probes.iter().enumerate() {
                    div_h[p][s] = hutch.estimate_at(&stage, point, eps);
                }
            }
            for i in 0..len {
                x[i] += h / 6.0 * (k[0][i] + 2.0 * k[1][i] + 2.0 * k[2][i] + k[3][i]);
            }
            let rk4 = |d: [f64; 4]| h / 6.0 * (d[0] + 2.0 * d[1] + 2.0 * d[2] + d[3]);
            ell += rk4(div);
            for (e, d) in ell_h.iter_mut().zip(&div_h) {
                *e += rk4(*d);
            }
        }
        let mut log_q_hutchinson = [Vec::new(), Vec::new()];
        for ((kind, _), e) in probes.iter().zip(&ell_h) {
            log_q_hutchinson[*kind].push(log_prior - e);
        }
        Ok(SampleRecord {
            d: pair_distance(&x_flow),
            u: energy.energy(&x_flow) / kt,
            log_q_exact,
            d_rk4: pair_distance(&x),
            u_rk4: energy.energy(&x) / kt,
            log_q_continuous: log_prior - ell,
            log_q_hutchinson,
        })
    }
}

/// `∫_a^b f` by composite Simpson with `n` (even) intervals.
fn simpson(f: impl Fn(f64) -> f64, a: f64, b: f64, n: usize) -> f64 {
    let h = (b - a) / n as f64;
    let inner: f64 = (1..n)
        .map(|i| f(a + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 })
        .sum();
    h / 3.0 * (f(a) + f(b) + inner)
}

/// The exact binned profile `F_bin = −log(P_bin / width)` of `p(d) ∝ d·exp(−U(d)/kT)`.
fn quadrature_profile(energy: &dyn Energy, kt: f64, n_bins: usize) -> Vec<f64> {
    let density = |d: f64| d * (-energy.energy(&[0.0, 0.0, d, 0.0]) / kt).exp();
    // U grows as c·d⁴: beyond d = 20 the density is below e^(−10⁵).
    let z = simpson(density, 0.0, 20.0, 200_000);
    let width = (D_RANGE.1 - D_RANGE.0) / n_bins as f64;
    (0..n_bins)
        .map(|b| {
            let lo = D_RANGE.0 + b as f64 * width;
            -(simpson(density, lo, lo + width, 200) / z / width).ln()
        })
        .collect()
}

/// The profile of the samples `d` with (relative) weights `w`, normalised over all samples
/// (also those outside the range), so that it estimates the same `F_bin` as the quadrature.
/// Empty bins are NaN.
fn histogram_profile(d: &[f64], w: Option<&[f64]>, n_bins: usize) -> Vec<f64> {
    let width = (D_RANGE.1 - D_RANGE.0) / n_bins as f64;
    let mut h = vec![0.0; n_bins];
    let mut total = 0.0;
    for (i, &di) in d.iter().enumerate() {
        let wi = w.map_or(1.0, |w| w[i]);
        total += wi;
        let b = ((di - D_RANGE.0) / width).floor();
        if b >= 0.0 && (b as usize) < n_bins {
            h[b as usize] += wi;
        }
    }
    h.iter()
        .map(|&p| {
            if p > 0.0 {
                -(p / total / width).ln()
            } else {
                f64::NAN
            }
        })
        .collect()
}

/// Self-normalised relative weights and the Kish ESS fraction of reduced energies `u` and
/// log-densities `log_q`.
fn weights(u: &[f64], log_q: &[f64]) -> Result<(Vec<f64>, f64)> {
    let mut log_w = vec![0.0; u.len()];
    log_weights_into(u, log_q, 1.0, &mut log_w)?;
    let mut w = vec![0.0; u.len()];
    relative_weights_into(&log_w, &mut w)?;
    Ok((w, kish_ess(&log_w) / u.len() as f64))
}

/// Error of a profile against the exact one over the bins within [`F_WINDOW`] of its minimum:
/// (rms, max |ΔF|, bins the estimate left empty).
fn profile_error(estimate: &[f64], exact: &[f64]) -> (f64, f64, usize) {
    let f_min = exact.iter().copied().fold(f64::INFINITY, f64::min);
    let (mut sum_sq, mut max, mut n, mut missing) = (0.0, 0.0_f64, 0, 0);
    for (e, x) in estimate.iter().zip(exact) {
        if *x > f_min + F_WINDOW {
            continue;
        }
        if e.is_finite() {
            sum_sq += (e - x).powi(2);
            max = max.max((e - x).abs());
            n += 1;
        } else {
            missing += 1;
        }
    }
    ((sum_sq / n.max(1) as f64).sqrt(), max, missing)
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// How an estimator got its log-densities.
#[derive(Clone, Copy)]
enum Route {
    Unweighted,
    Exact,
    Continuous,
    Hutchinson(Probe),
}

impl Route {
    /// The estimator's name in CSV files and JSON.
    fn key(self) -> &'static str {
        match self {
            Route::Unweighted => "flow_unweighted",
            Route::Exact => "reweighted_exact",
            Route::Continuous => "reweighted_continuous",
            Route::Hutchinson(Probe::Gaussian) => "reweighted_hutchinson_gaussian",
            Route::Hutchinson(Probe::Rademacher) => "reweighted_hutchinson_rademacher",
        }
    }
}

/// One row of the summary: an estimator of the profile and how it fared.
struct Estimator {
    name: &'static str,
    kind: Route,
    profile: Vec<f64>,
    /// Per-bin standard deviation over probe sets (Hutchinson only).
    profile_sd: Option<Vec<f64>>,
    ess_fraction: f64,
    /// Mean and sd over samples of `log q − log q_continuous` (Hutchinson only).
    log_q_error: Option<(f64, f64)>,
}

/// The experiment's files under `--out`.
const REWEIGHTING_PROFILE_CSV: &str = "reweighting_profile.csv";
const REWEIGHTING_SAMPLES_CSV: &str = "reweighting_samples.csv";
const REWEIGHTING_SUMMARY_CSV: &str = "reweighting_summary.csv";
const REWEIGHTING_PNG: &str = "reweighting.png";
const OUTPUTS: [&str; 4] = [
    REWEIGHTING_PROFILE_CSV,
    REWEIGHTING_SAMPLES_CSV,
    REWEIGHTING_SUMMARY_CSV,
    REWEIGHTING_PNG,
];

pub(super) fn run(a: &RunArgs, model_path: Option<&std::path::Path>) -> Result<()> {
    let start = std::time::Instant::now();
    let plan = if a.quick { &QUICK } else { &FULL };
    // Before the flow is trained (seconds), creating nothing: the folder itself comes after
    // the model is checked.
    let model_input = model_path.map(|m| ("--model", m));
    check_outputs(&a.out, &OUTPUTS, model_input.as_slice())?;
    let system = System::preset("dw2")?;
    let energy = system.energy.build()?;
    let kt = system.kt;
    let (flow, mcmc_x, provenance) = dw2_flow(
        &system,
        energy.as_ref(),
        plan,
        a.seed,
        model_path,
        a.common.quiet,
    )?;
    // After the model is checked: a refused model leaves no empty output folder behind.
    create_out_dir(&a.out)?;
    let field = flow
        .field()
        .as_kernel()
        .ok_or_else(|| eqflow::Error::InvalidArgument {
            what: "the reweighting experiment needs a kernel-field flow".into(),
        })?;
    let n_steps = match flow.integrator().method() {
        Method::Rk4 { n_steps } => n_steps,
        Method::Dopri5(_) => DEFAULT_RK4_STEPS,
    };
    // The grid's time points, start and middle of every step and the end: 2n + 1 of them.
    let routes = Routes {
        flow: &flow,
        field,
        points: (0..=2 * n_steps)
            .map(|i| field.time_point(i as f64 / (2 * n_steps) as f64))
            .collect(),
        n_steps,
        energy: energy.as_ref(),
        kt,
        seed: a.seed.wrapping_add(1),
        n_sets: plan.n_probe_sets,
    };
    let t_sample = std::time::Instant::now();
    let records = (0..plan.n_samples as u64)
        .into_par_iter()
        .map(|i| routes.record(i))
        .collect::<Result<Vec<_>>>()?;
    let sample_seconds = t_sample.elapsed().as_secs_f64();

    let n_bins = plan.n_bins;
    let exact = quadrature_profile(energy.as_ref(), kt, n_bins);
    let d: Vec<f64> = records.iter().map(|r| r.d).collect();
    let u: Vec<f64> = records.iter().map(|r| r.u).collect();
    let d_rk4: Vec<f64> = records.iter().map(|r| r.d_rk4).collect();
    let u_rk4: Vec<f64> = records.iter().map(|r| r.u_rk4).collect();
    let log_q_exact: Vec<f64> = records.iter().map(|r| r.log_q_exact).collect();
    let log_q_cont: Vec<f64> = records.iter().map(|r| r.log_q_continuous).collect();
    let mcmc_d: Vec<f64> = mcmc_x.chunks_exact(4).map(pair_distance).collect();
    // How far the untabulated continuous integration is from the library's exact density:
    // what the Hutchinson route would carry even with a perfect estimator.
    let route_gap = records
        .iter()
        .map(|r| (r.log_q_continuous - r.log_q_exact).abs())
        .fold(0.0, f64::max);

    let mut estimators = Vec::new();
    estimators.push(Estimator {
        name: "flow (unweighted)",
        kind: Route::Unweighted,
        profile: histogram_profile(&d, None, n_bins),
        profile_sd: None,
        ess_fraction: 1.0,
        log_q_error: None,
    });
    let (w, ess) = weights(&u, &log_q_exact)?;
    estimators.push(Estimator {
        name: "reweighted, exact log q",
        kind: Route::Exact,
        profile: histogram_profile(&d, Some(&w), n_bins),
        profile_sd: None,
        ess_fraction: ess,
        log_q_error: None,
    });
    let (w, ess) = weights(&u_rk4, &log_q_cont)?;
    estimators.push(Estimator {
        name: "reweighted, continuous log q",
        kind: Route::Continuous,
        profile: histogram_profile(&d_rk4, Some(&w), n_bins),
        profile_sd: None,
        ess_fraction: ess,
        log_q_error: None,
    });
    for (k, probe) in Probe::ALL.iter().enumerate() {
        let mut profiles = Vec::new();
        let mut ess_sum = 0.0;
        for s in 0..plan.n_probe_sets {
            let log_q: Vec<f64> = records.iter().map(|r| r.log_q_hutchinson[k][s]).collect();
            let (w, ess) = weights(&u_rk4, &log_q)?;
            ess_sum += ess;
            profiles.push(histogram_profile(&d_rk4, Some(&w), n_bins));
        }
        let errors: Vec<f64> = records
            .iter()
            .map(|r| r.log_q_hutchinson[k][0] - r.log_q_continuous)
            .collect();
        let sd = (0..n_bins)
            .map(|b| {
                let v: Vec<f64> = profiles
                    .iter()
                    .map(|p| p[b])
                    .filter(|f| f.is_finite())
                    .collect();
                if v.len() > 1 { mean_sd(&v).1 } else { f64::NAN }
            })
            .collect();
        estimators.push(Estimator {
            name: match probe {
                Probe::Gaussian => "reweighted, Hutchinson (Gaussian)",
                Probe::Rademacher => "reweighted, Hutchinson (Rademacher)",
            },
            kind: Route::Hutchinson(*probe),
            profile: profiles.swap_remove(0),
            profile_sd: Some(sd),
            ess_fraction: ess_sum / plan.n_probe_sets as f64,
            log_q_error: Some(mean_sd(&errors)),
        });
    }
    let mcmc_profile = histogram_profile(&mcmc_d, None, n_bins);

    // CSV: the profiles.
    let width = (D_RANGE.1 - D_RANGE.0) / n_bins as f64;
    let profile_path = a.out.join(REWEIGHTING_PROFILE_CSV);
    let rows: Vec<Vec<String>> = (0..n_bins)
        .map(|b| {
            let est = |i: usize| cell(estimators[i].profile[b]);
            let sd = |i: usize| cell(estimators[i].profile_sd.as_ref().map_or(f64::NAN, |s| s[b]));
            vec![
                cell(D_RANGE.0 + (b as f64 + 0.5) * width),
                cell(exact[b]),
                cell(mcmc_profile[b]),
                est(0),
                est(1),
                est(2),
                est(3),
                sd(3),
                est(4),
                sd(4),
            ]
        })
        .collect();
    write_csv(
        &profile_path,
        &[
            "d",
            "f_quadrature",
            "f_mcmc",
            "f_flow",
            "f_reweighted_exact",
            "f_reweighted_continuous",
            "f_reweighted_hutchinson_gaussian",
            "f_reweighted_hutchinson_gaussian_sd",
            "f_reweighted_hutchinson_rademacher",
            "f_reweighted_hutchinson_rademacher_sd",
        ],
        &rows,
    )?;
    // CSV: per-sample log-densities (first probe set).
    let samples_path = a.out.join(REWEIGHTING_SAMPLES_CSV);
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                cell(r.d),
                cell(r.u),
                cell(r.log_q_exact),
                cell(r.log_q_continuous),
                cell(r.log_q_hutchinson[0][0]),
                cell(r.log_q_hutchinson[1][0]),
            ]
        })
        .collect();
    write_csv(
        &samples_path,
        &[
            "d",
            "reduced_energy",
            "log_q_exact",
            "log_q_continuous",
            "log_q_hutchinson_gaussian",
            "log_q_hutchinson_rademacher",
        ],
        &rows,
    )?;
    // CSV: the summary.
    let summary_path = a.out.join(REWEIGHTING_SUMMARY_CSV);
    let mut summary_rows = Vec::new();
    let mut table_rows = Vec::new();
    let mut summary_json = Vec::new();
    for e in &estimators {
        let (rms, max, missing) = profile_error(&e.profile, &exact);
        let (lq_mean, lq_sd) = e.log_q_error.unwrap_or((0.0, 0.0));
        summary_rows.push(vec![
            e.kind.key().to_string(),
            cell(rms),
            cell(max),
            missing.to_string(),
            cell(e.ess_fraction),
            cell(lq_mean),
            cell(lq_sd),
        ]);
        table_rows.push(vec![
            e.name.to_string(),
            format!("{rms:.3}"),
            format!("{max:.3}"),
            missing.to_string(),
            format!("{:.1}%", 100.0 * e.ess_fraction),
            e.log_q_error
                .map_or("—".to_string(), |(m, s)| format!("{m:+.3} ± {s:.3}")),
        ]);
        summary_json.push(json!({"estimator": e.kind.key(), "rms_delta_f": rms, "max_abs_delta_f": max,
            "n_missing_bins": missing, "ess_fraction": e.ess_fraction,
            "log_q_error_mean": e.log_q_error.map(|v| v.0), "log_q_error_sd": e.log_q_error.map(|v| v.1)}));
    }
    write_csv(
        &summary_path,
        &[
            "estimator",
            "rms_delta_f",
            "max_abs_delta_f",
            "n_missing_bins",
            "ess_fraction",
            "log_q_error_mean",
            "log_q_error_sd",
        ],
        &summary_rows,
    )?;

    let figure = a.out.join(REWEIGHTING_PNG);
    draw(
        &figure,
        &exact,
        &mcmc_profile,
        &estimators,
        &records,
        n_bins,
    )
    .map_err(|what| eqflow::Error::Io { what })?;

    let seconds = start.elapsed().as_secs_f64();
    let text = table(
        &[
            "estimator",
            "rms ΔF (kT)",
            "max |ΔF|",
            "empty bins",
            "ESS",
            "log q error",
        ],
        &table_rows,
    );
    report(
        &a.common,
        json!({"command": "repro", "experiment": "reweighting", "quick": a.quick,
               "flow": provenance, "n_samples": plan.n_samples, "n_probe_sets": plan.n_probe_sets,
               "max_log_q_route_gap": route_gap, "estimators": summary_json,
               "profile_csv": profile_path, "samples_csv": samples_path,
               "summary_csv": summary_path, "figure": figure,
               "sample_seconds": sample_seconds, "seconds": seconds}),
        format!(
            "DW-2 free energy along d, {} flow samples (flow {provenance}); ΔF against quadrature \
             over the bins within {F_WINDOW} kT of the minimum; log q error = Hutchinson − exact \
             divergence on the same trajectory (mean ± sd over samples)\n{text}\
             largest |log q (continuous RK4) − log q (library, exact-discrete)|: {route_gap:.2e}\n\
             CSV: {}, {}, {}\nfigure: {}\n{seconds:.1} s (sampling {sample_seconds:.1} s)\n",
            plan.n_samples,
            profile_path.display(),
            samples_path.display(),
            summary_path.display(),
            figure.display()
        ),
    )
}

fn draw(
    path: &std::path::Path,
    exact: &[f64],
    mcmc: &[f64],
    estimators: &[Estimator],
    records: &[SampleRecord],
    n_bins: usize,
) -> std::result::Result<(), String> {
    use plotters::style::{BLACK, BLUE, RED, RGBColor};
    let width = (D_RANGE.1 - D_RANGE.0) / n_bins as f64;
    let centre = |b: usize| D_RANGE.0 + (b as f64 + 0.5) * width;
    // Bins far above the minimum are where nothing is sampled; they would set the scale.
    let f_max = exact.iter().copied().fold(f64::INFINITY, f64::min) + 3.0 * F_WINDOW;
    let curve = |f: &[f64]| {
        (0..n_bins)
            .map(|b| (centre(b), if f[b] <= f_max { f[b] } else { f64::NAN }))
            .collect::<Vec<_>>()
    };
    let grey = RGBColor(150, 150, 150);
    let green = RGBColor(0, 150, 0);
    let orange = RGBColor(230, 140, 0);
    let series = |name: &str, color, f: &[f64], markers| Series {
        name: name.to_string(),
        points: curve(f),
        color,
        markers,
    };
    let mut lines = vec![
        series("exact (quadrature)", BLACK, exact, false),
        series("MCMC (training data)", grey, mcmc, false),
    ];
    for e in estimators {
        let color = match e.kind {
            Route::Unweighted => orange,
            Route::Exact => BLUE,
            // Indistinguishable from the exact route (the table gives the difference).
            Route::Continuous => continue,
            Route::Hutchinson(Probe::Gaussian) => RED,
            Route::Hutchinson(Probe::Rademacher) => green,
        };
        lines.push(series(e.name, color, &e.profile, true));
    }
    let profile = Panel {
        title: "b) DW-2 free energy along the pair distance".into(),
        x_desc: "pair distance d".into(),
        y_desc: "F(d) = −log p(d)  (kT)".into(),
        log_x: false,
        log_y: false,
        series: lines,
    };
    // The distribution of the log-density error the estimator adds, per probe kind, over the
    // central 99% (a few samples stray much further; the CSV has them all).
    let errors = |k: usize| -> Vec<f64> {
        records
            .iter()
            .map(|r| r.log_q_hutchinson[k][0] - r.log_q_continuous)
            .collect()
    };
    let (ge, re) = (errors(0), errors(1));
    let mut sorted: Vec<f64> = ge.iter().chain(&re).copied().collect();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p) as usize];
    let spread = q(0.005).abs().max(q(0.995).abs()).max(1e-6);
    let (lo, hi, nb) = (-spread, spread, 50);
    let hist = |e: &[f64]| {
        let w = (hi - lo) / nb as f64;
        let mut h = vec![0.0; nb];
        for v in e {
            if *v >= lo && *v < hi {
                h[((v - lo) / w) as usize] += 1.0 / (e.len() as f64 * w);
            }
        }
        (0..nb)
            .map(|b| (lo + (b as f64 + 0.5) * w, h[b]))
            .collect::<Vec<_>>()
    };
    let error_panel = Panel {
        title: "log q error of the Hutchinson estimate (per sample)".into(),
        x_desc: "log q (Hutchinson) − log q (exact divergence)".into(),
        y_desc: "density".into(),
        log_x: false,
        log_y: false,
        series: vec![
            Series {
                name: "Gaussian probe".into(),
                points: hist(&ge),
                color: RED,
                markers: false,
            },
            Series {
                name: "Rademacher probe".into(),
                points: hist(&re),
                color: green,
                markers: false,
            },
        ],
    };
    plot::panels(path, &[profile, error_panel])
}
