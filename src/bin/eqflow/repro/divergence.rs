//! Experiment 1 (paper Fig. 3a, 3c): the Hutchinson estimator against the exact divergence
//! of the kernel field as the particle number N grows, and what each way of getting the
//! divergence costs per field evaluation.
//!
//! The field is the LJ preset's kernel field (3-D, K = 50, R = 10) with its random
//! initialisation, evaluated at t = 0.5 on random configurations at the LJ-13 density: the
//! first N sites of a simple cubic lattice of spacing 1 (= r_m), each coordinate displaced
//! uniformly by up to ±0.15, centre of mass removed. Four ways to the divergence:
//!
//! - closed form: `velocity_into` (DESIGN.md §1, O(N²));
//! - dense Jacobian: `velocity_jacobian_into` (closed-form pair blocks, O(N²D²)), its trace;
//! - reverse-mode trace: n = N·D vector–Jacobian products with unit cotangents, what an AD
//!   framework's brute force costs (the paper's "brute force");
//! - Hutchinson: one VJP with a random probe (Gaussian or Rademacher), `εᵀ(∂v/∂x)ε`.

use serde_json::json;

use eqflow::Result;
use eqflow::field::{KernelConfig, KernelField, VectorField};
use eqflow::geometry::{Layout, remove_center_of_mass};
use eqflow::rng::{self, Stream};
use rand::RngExt;

use super::hutchinson::{Hutchinson, Probe};
use super::{RunArgs, cell, check_outputs, create_out_dir, seconds_per_call, table, write_csv};
use crate::plot::{self, Panel, Series};
use crate::report_table as report;

/// Dimension of the configurations (the LJ preset is 3-D).
const DIM: usize = 3;
/// Flow time of every evaluation: mid-flow, where both time kernels and radial kernels mix.
const TIME: f64 = 0.5;
/// Lattice spacing of the configurations, the LJ pair-minimum distance r_m = 1.
const SPACING: f64 = 1.0;
/// Largest uniform displacement of each coordinate, as a fraction of the spacing.
const JITTER: f64 = 0.15;

/// Sizes of a run.
struct Plan {
    n_particles: &'static [usize],
    n_configs: usize,
    n_draws: usize,
    min_timing_seconds: f64,
}

const FULL: Plan = Plan {
    n_particles: &[4, 8, 16, 32, 64, 100],
    n_configs: 10,
    n_draws: 1_000,
    min_timing_seconds: 0.3,
};

const QUICK: Plan = Plan {
    n_particles: &[4, 8, 16, 32],
    n_configs: 4,
    n_draws: 200,
    min_timing_seconds: 0.01,
};

/// A random configuration of `n` particles at the LJ density, from sample stream `index`.
fn configuration(n: usize, seed: u64, index: u64) -> Vec<f64> {
    let side = (1..).find(|s: &usize| s.pow(DIM as u32) >= n).unwrap_or(n);
    let mut rng = rng::stream(seed, Stream::Sample(index));
    let mut x = vec![0.0; n * DIM];
    for (i, xi) in x.chunks_exact_mut(DIM).enumerate() {
        let mut site = i;
        for c in xi.iter_mut() {
            let jitter: f64 = rng.random_range(-JITTER..JITTER);
            *c = SPACING * ((site % side) as f64 + jitter);
            site /= side;
        }
    }
    remove_center_of_mass(&mut x, DIM);
    x
}

/// The error statistics of one probe kind at one N.
struct ErrorRow {
    n_particles: usize,
    probe: Probe,
    exact_rms: f64,
    bias: f64,
    bias_se: f64,
    rms_error: f64,
    predicted_rms_error: f64,
    max_trace_discrepancy: f64,
}

/// Seconds per field evaluation of each way to the divergence at one N.
struct TimingRow {
    n_particles: usize,
    closed_form: f64,
    hutchinson: f64,
    dense_jacobian: f64,
    reverse_mode: f64,
}

fn errors_at(
    field: &KernelField,
    n: usize,
    n_index: usize,
    plan: &Plan,
    seed: u64,
) -> Vec<ErrorRow> {
    let len = n * DIM;
    let mut v = vec![0.0; len];
    let mut jac = vec![0.0; len * len];
    let mut eps = vec![0.0; len];
    let mut unit = vec![0.0; len];
    let mut hutch = Hutchinson::new(field);
    let configs: Vec<Vec<f64>> = (0..plan.n_configs)
        .map(|c| configuration(n, seed, (n_index * plan.n_configs + c) as u64))
        .collect();
    let mut exact = Vec::with_capacity(configs.len());
    let mut discrepancy: f64 = 0.0;
    let mut variances = [Vec::new(), Vec::new()];
    for x in &configs {
        let div = field.velocity_into(x, TIME, &mut v);
        let dense = field.velocity_jacobian_into(x, TIME, &mut v, &mut jac);
        let reverse = hutch.reverse_mode_trace(x, TIME, &mut unit);
        // The three exact traces must agree to round-off relative to the trace's terms.
        let scale = 1.0 + (0..len).map(|a| jac[a * len + a].abs()).sum::<f64>();
        discrepancy = discrepancy
            .max((dense - div).abs() / scale)
            .max((reverse - div).abs() / scale);
        for (k, probe) in Probe::ALL.iter().enumerate() {
            variances[k].push(probe.variance(&jac, len));
        }
        exact.push(div);
    }
    let exact_rms = (exact.iter().map(|d| d * d).sum::<f64>() / exact.len() as f64).sqrt();
    Probe::ALL
        .iter()
        .enumerate()
        .map(|(k, &probe)| {
            let (mut sum, mut sum_sq, mut count) = (0.0, 0.0, 0.0);
            for (c, x) in configs.iter().enumerate() {
                let stream = ((n_index * 2 + k) * plan.n_configs + c) as u64;
                let mut rng = rng::stream(seed, Stream::HutchinsonProbe(stream));
                for _ in 0..plan.n_draws {
                    probe.draw_into(&mut rng, &mut eps);
                    let e = hutch.estimate(x, TIME, &eps) - exact[c];
                    sum += e;
                    sum_sq += e * e;
                    count += 1.0;
                }
            }
            let bias = sum / count;
            let var = (sum_sq / count - bias * bias).max(0.0);
            ErrorRow {
                n_particles: n,
                probe,
                exact_rms,
                bias,
                bias_se: (var / count).sqrt(),
                rms_error: (sum_sq / count).sqrt(),
                predicted_rms_error: (variances[k].iter().sum::<f64>() / plan.n_configs as f64)
                    .sqrt(),
                max_trace_discrepancy: discrepancy,
            }
        })
        .collect()
}

fn timing_at(field: &KernelField, n: usize, n_index: usize, plan: &Plan, seed: u64) -> TimingRow {
    let len = n * DIM;
    let x = configuration(n, seed, (n_index * plan.n_configs) as u64);
    let mut v = vec![0.0; len];
    let mut jac = vec![0.0; len * len];
    let mut eps = vec![0.0; len];
    let mut unit = vec![0.0; len];
    Probe::Rademacher.draw_into(
        &mut rng::stream(seed, Stream::HutchinsonProbe(u64::MAX)),
        &mut eps,
    );
    let mut hutch = Hutchinson::new(field);
    let min = plan.min_timing_seconds;
    let closed_form = seconds_per_call(min, || field.velocity_into(&x, TIME, &mut v));
    let hutchinson = seconds_per_call(min, || {
        field.velocity_only_into(&x, TIME, &mut v);
        hutch.estimate(&x, TIME, &eps)
    });
    let dense_jacobian = seconds_per_call(min, || {
        field.velocity_jacobian_into(&x, TIME, &mut v, &mut jac)
    });
    let reverse_mode = seconds_per_call(min, || {
        field.velocity_only_into(&x, TIME, &mut v);
        hutch.reverse_mode_trace(&x, TIME, &mut unit)
    });
    TimingRow {
        n_particles: n,
        closed_form,
        hutchinson,
        dense_jacobian,
        reverse_mode,
    }
}

/// The experiment's files under `--out`.
const DIVERGENCE_ERROR_CSV: &str = "divergence_error.csv";
const DIVERGENCE_TIMING_CSV: &str = "divergence_timing.csv";
const DIVERGENCE_PNG: &str = "divergence.png";
const OUTPUTS: [&str; 3] = [DIVERGENCE_ERROR_CSV, DIVERGENCE_TIMING_CSV, DIVERGENCE_PNG];

pub(super) fn run(a: &RunArgs) -> Result<()> {
    let start = std::time::Instant::now();
    check_outputs(&a.out, &OUTPUTS, &[])?;
    create_out_dir(&a.out)?;
    let plan = if a.quick { &QUICK } else { &FULL };
    let mut errors = Vec::new();
    let mut timings = Vec::new();
    for (n_index, &n) in plan.n_particles.iter().enumerate() {
        // One field for all N: its 620 parameters do not depend on N.
        let field =
            KernelField::initialise(Layout::new(n, DIM)?, KernelConfig::lennard_jones(), a.seed)?;
        errors.extend(errors_at(&field, n, n_index, plan, a.seed));
        timings.push(timing_at(&field, n, n_index, plan, a.seed));
        if !a.common.quiet {
            eprintln!(
                "divergence: N = {n} done ({:.1} s)",
                start.elapsed().as_secs_f64()
            );
        }
    }

    let error_path = a.out.join(DIVERGENCE_ERROR_CSV);
    let error_rows: Vec<Vec<String>> = errors
        .iter()
        .map(|r| {
            vec![
                r.n_particles.to_string(),
                r.probe.name().to_string(),
                plan.n_configs.to_string(),
                plan.n_draws.to_string(),
                cell(r.exact_rms),
                cell(r.bias),
                cell(r.bias_se),
                cell(r.rms_error),
                cell(r.predicted_rms_error),
                cell(r.rms_error / r.exact_rms),
                cell(r.max_trace_discrepancy),
            ]
        })
        .collect();
    write_csv(
        &error_path,
        &[
            "n_particles",
            "probe",
            "n_configs",
            "n_draws_per_config",
            "exact_div_rms",
            "bias",
            "bias_se",
            "rms_error",
            "predicted_rms_error",
            "relative_rms_error",
            "max_trace_discrepancy",
        ],
        &error_rows,
    )?;
    let timing_path = a.out.join(DIVERGENCE_TIMING_CSV);
    let timing_rows: Vec<Vec<String>> = timings
        .iter()
        .map(|r| {
            vec![
                r.n_particles.to_string(),
                cell(r.closed_form),
                cell(r.hutchinson),
                cell(r.dense_jacobian),
                cell(r.reverse_mode),
            ]
        })
        .collect();
    write_csv(
        &timing_path,
        &[
            "n_particles",
            "closed_form_seconds",
            "hutchinson_seconds",
            "dense_jacobian_seconds",
            "reverse_mode_trace_seconds",
        ],
        &timing_rows,
    )?;

    let figure = a.out.join(DIVERGENCE_PNG);
    draw(&figure, &errors, &timings).map_err(|what| eqflow::Error::Io { what })?;

    let seconds = start.elapsed().as_secs_f64();
    let mut rows = Vec::new();
    for t in &timings {
        let of = |p: Probe| {
            errors
                .iter()
                .find(|r| r.n_particles == t.n_particles && r.probe == p)
        };
        let (g, r) = (of(Probe::Gaussian), of(Probe::Rademacher));
        let us = |s: f64| format!("{:.1}", s * 1e6);
        rows.push(vec![
            t.n_particles.to_string(),
            g.map_or(String::new(), |g| format!("{:.3}", g.exact_rms)),
            g.map_or(String::new(), |g| format!("{:.3}", g.rms_error)),
            r.map_or(String::new(), |r| format!("{:.3}", r.rms_error)),
            us(t.closed_form),
            us(t.hutchinson),
            us(t.dense_jacobian),
            us(t.reverse_mode),
        ]);
    }
    let text = table(
        &[
            "N",
            "|div| rms",
            "err gauss",
            "err radem",
            "closed µs",
            "hutch µs",
            "dense µs",
            "reverse µs",
        ],
        &rows,
    );
    report(
        &a.common,
        json!({"command": "repro", "experiment": "divergence", "quick": a.quick,
               "error_csv": error_path, "timing_csv": timing_path, "figure": figure,
               "seconds": seconds}),
        format!(
            "Divergence of the kernel field (LJ preset, D = 3, t = {TIME}): Hutchinson error \
             (rms over {} configurations × {} probes) and time per field evaluation\n{text}\
             CSV: {}, {}\nfigure: {}\n{seconds:.1} s\n",
            plan.n_configs,
            plan.n_draws,
            error_path.display(),
            timing_path.display(),
            figure.display()
        ),
    )
}

fn draw(
    path: &std::path::Path,
    errors: &[ErrorRow],
    timings: &[TimingRow],
) -> std::result::Result<(), String> {
    use plotters::style::{BLACK, BLUE, GREEN, RED, RGBColor};
    let line = |name: &str, color: RGBColor, points: Vec<(f64, f64)>| Series {
        name: name.to_string(),
        points,
        color,
        markers: true,
    };
    let err_of = |p: Probe, f: fn(&ErrorRow) -> f64| {
        errors
            .iter()
            .filter(|r| r.probe == p)
            .map(|r| (r.n_particles as f64, f(r)))
            .collect::<Vec<_>>()
    };
    let orange = RGBColor(230, 140, 0);
    let error_panel = Panel {
        title: "a) divergence error of one Hutchinson probe".into(),
        x_desc: "log10 N (particles, D = 3)".into(),
        y_desc: "log10 rms (estimate − exact)".into(),
        log_x: true,
        log_y: true,
        series: vec![
            line(
                "exact |div v| (rms)",
                BLACK,
                err_of(Probe::Gaussian, |r| r.exact_rms),
            ),
            line(
                "Gaussian probe",
                BLUE,
                err_of(Probe::Gaussian, |r| r.rms_error),
            ),
            line(
                "Rademacher probe",
                RED,
                err_of(Probe::Rademacher, |r| r.rms_error),
            ),
            line(
                "Gaussian, predicted 2‖J‖²",
                GREEN,
                err_of(Probe::Gaussian, |r| r.predicted_rms_error),
            ),
            line(
                "Rademacher, predicted",
                orange,
                err_of(Probe::Rademacher, |r| r.predicted_rms_error),
            ),
        ],
    };
    let time_of = |f: fn(&TimingRow) -> f64| {
        timings
            .iter()
            .map(|r| (r.n_particles as f64, f(r)))
            .collect::<Vec<_>>()
    };
    let time_panel = Panel {
        title: "c) wall-clock per field evaluation".into(),
        x_desc: "log10 N (particles, D = 3)".into(),
        y_desc: "log10 seconds".into(),
        log_x: true,
        log_y: true,
        series: vec![
            line(
                "reverse-mode trace (N·D VJPs)",
                RED,
                time_of(|r| r.reverse_mode),
            ),
            line(
                "dense Jacobian, trace",
                orange,
                time_of(|r| r.dense_jacobian),
            ),
            line("Hutchinson (v + 1 VJP)", BLUE, time_of(|r| r.hutchinson)),
            line("closed form (v + div)", BLACK, time_of(|r| r.closed_form)),
        ],
    };
    plot::panels(path, &[error_panel, time_panel])
}
