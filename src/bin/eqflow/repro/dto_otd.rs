//! Paper Fig. 4: discretise-then-optimise (DTO) against optimise-then-discretise (OTD) for
//! training the DW-4 kernel flow by maximum likelihood.
//!
//! - **DTO**: the field integrated by fixed-grid RK4 and the gradient back-propagated through
//!   its steps (the trainer's tape, `train::Losses`): the exact gradient of the discrete map's
//!   loss.
//! - **OTD**: the field integrated by adaptive Dormand–Prince (atol 1e-10, rtol 1e-5, the
//!   paper's setting) and the gradient from the continuous adjoint ODE, integrated backwards by
//!   the same solver (`train::adjoint`): the gradient of the continuous loss, to the solver's
//!   tolerance.
//!
//! Both start from the same untrained field, see the same batches in the same order and take
//! AdamW steps with the same settings (with weight decay). Recorded per iteration: the batch
//! NLL, the field evaluations of the forward (x → z) and reverse passes, wall time; every few
//! iterations the held-out NLL, evaluated the same way for both (continuous mode,
//! Dormand–Prince at the paper's tolerances).

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use serde_json::json;

use eqflow::Result;
use eqflow::flow::Flow;
use eqflow::integrate::{DensityMode, Dopri5Config, Integrator, Method};
use eqflow::system::System;
use eqflow::train::adjoint::adjoint_ml_gradient_into;
use eqflow::train::{AdamW, AdamWConfig, Losses};

use super::{RunArgs, cell, check_outputs, create_out_dir, table, write_csv};
use crate::plot::{self, Panel, Series};
use crate::report_table as report;

/// Sizes of one run.
struct Plan {
    n_train: usize,
    n_test: usize,
    batch: usize,
    iterations: usize,
    /// Held-out NLL every this many iterations (and after the last).
    eval_every: usize,
    /// RK4 steps of the DTO map (the trainer's default).
    rk4_steps: usize,
    /// MCMC thinning of the reference data.
    thin: usize,
}

const FULL: Plan = Plan {
    n_train: 1_000,
    n_test: 1_000,
    batch: 64,
    iterations: 1_000,
    eval_every: 50,
    rk4_steps: 20,
    thin: 20,
};

const QUICK: Plan = Plan {
    n_train: 24,
    n_test: 8,
    batch: 8,
    iterations: 3,
    eval_every: 2,
    rk4_steps: 10,
    thin: 5,
};

/// AdamW's decoupled weight decay for both schemes unless `--weight-decay` says otherwise.
pub(super) const DEFAULT_WEIGHT_DECAY: f64 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Dto,
    Otd,
}

impl Scheme {
    const ALL: [Scheme; 2] = [Scheme::Dto, Scheme::Otd];

    fn name(self) -> &'static str {
        match self {
            Scheme::Dto => "dto",
            Scheme::Otd => "otd",
        }
    }
}

/// One training iteration of one scheme.
struct Row {
    scheme: Scheme,
    iteration: usize,
    batch_nll: f64,
    forward_evals: u64,
    reverse_evals: u64,
    seconds: f64,
    /// Held-out NLL after this iteration, where evaluated.
    test_nll: Option<f64>,
}

/// The paper's evaluation solver: Dormand–Prince, atol 1e-10, rtol 1e-5.
fn dopri5() -> Dopri5Config {
    Dopri5Config::default()
}

/// Mean held-out NLL in the continuous mode by Dormand–Prince (the same for both schemes).
fn test_nll(flow: &Flow, test: &[f64]) -> Result<f64> {
    let mut eval = flow.clone();
    eval.set_integrator(Integrator::new(
        Method::Dopri5(dopri5()),
        DensityMode::Continuous,
    )?);
    let log_q = eval.log_density(test)?;
    Ok(-log_q.iter().sum::<f64>() / log_q.len() as f64)
}

fn train(
    scheme: Scheme,
    weight_decay: f64,
    start: &Flow,
    train_set: &[f64],
    test: &[f64],
    plan: &Plan,
    seed: u64,
) -> Result<Vec<Row>> {
    let mut flow = start.clone();
    let len = flow.layout().len();
    let n_train = train_set.len() / len;
    let mut params = flow.field().params().to_vec();
    let mut gradient = vec![0.0; params.len()];
    let mut adam = AdamW::new(
        AdamWConfig {
            weight_decay,
            ..AdamWConfig::default()
        },
        params.len(),
    )?;
    let mut order: Vec<usize> = (0..n_train).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0xd70);
    order.shuffle(&mut rng);
    let mut batch = vec![0.0; plan.batch * len];
    let mut rows = Vec::with_capacity(plan.iterations);
    let clock = std::time::Instant::now();
    for iteration in 1..=plan.iterations {
        for (b, slot) in batch.chunks_exact_mut(len).enumerate() {
            let i = order[((iteration - 1) * plan.batch + b) % n_train];
            slot.copy_from_slice(&train_set[i * len..(i + 1) * len]);
        }
        let (batch_nll, forward_evals, reverse_evals) = match scheme {
            Scheme::Dto => {
                let nll =
                    Losses::new(&flow, plan.rk4_steps)?.ml_gradient_into(&batch, &mut gradient)?;
                // Per sample: 4 evaluations per step forward, one VJP per evaluation back.
                let evals = (plan.batch * 4 * plan.rk4_steps) as u64;
                (nll, evals, evals)
            }
            Scheme::Otd => {
                let loss = adjoint_ml_gradient_into(&flow, &batch, &dopri5(), &mut gradient)?;
                (loss.nll, loss.n_eval_forward, loss.n_eval_adjoint)
            }
        };
        adam.step(&mut params, &gradient)?;
        flow.set_params(&params)?;
        let evaluate = iteration % plan.eval_every == 0 || iteration == plan.iterations;
        rows.push(Row {
            scheme,
            iteration,
            batch_nll,
            forward_evals,
            reverse_evals,
            seconds: clock.elapsed().as_secs_f64(),
            test_nll: if evaluate {
                Some(test_nll(&flow, test)?)
            } else {
                None
            },
        });
    }
    Ok(rows)
}

/// The experiment's files under `--out`.
const DTO_OTD_CSV: &str = "dto_otd.csv";
const DTO_OTD_PNG: &str = "dto_otd.png";
const OUTPUTS: [&str; 2] = [DTO_OTD_CSV, DTO_OTD_PNG];

pub(super) fn run(a: &RunArgs, weight_decay: f64, iterations: Option<usize>) -> Result<()> {
    let clock = std::time::Instant::now();
    // The optimiser's settings are checked before the output folder and the data exist.
    AdamWConfig {
        weight_decay,
        ..AdamWConfig::default()
    }
    .validate()?;
    check_outputs(&a.out, &OUTPUTS, &[])?;
    create_out_dir(&a.out)?;
    let base = if a.quick { QUICK } else { FULL };
    let plan = &Plan {
        iterations: iterations.unwrap_or(base.iterations),
        ..base
    };
    if plan.iterations == 0 {
        return Err(eqflow::Error::InvalidArgument {
            what: "dto-otd needs at least one iteration".into(),
        });
    }
    let system = System::preset("dw4")?;
    let energy = system.energy.build()?;
    let train_set =
        super::baseline::mcmc(&system, energy.as_ref(), plan.n_train, plan.thin, a.seed)?;
    let test = super::baseline::mcmc(
        &system,
        energy.as_ref(),
        plan.n_test,
        plan.thin,
        a.seed.wrapping_add(1),
    )?;
    let start = super::untrained_as_published(&system, "kernel", a.seed)?;
    let initial_nll = test_nll(&start, &test)?;
    let mut rows = Vec::new();
    for scheme in Scheme::ALL {
        rows.extend(train(
            scheme,
            weight_decay,
            &start,
            &train_set,
            &test,
            plan,
            a.seed,
        )?);
        if !a.common.quiet {
            eprintln!(
                "dto-otd: {} done ({:.1} s)",
                scheme.name(),
                clock.elapsed().as_secs_f64()
            );
        }
    }

    let csv = a.out.join(DTO_OTD_CSV);
    let csv_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.scheme.name().to_string(),
                r.iteration.to_string(),
                cell(r.batch_nll),
                r.forward_evals.to_string(),
                r.reverse_evals.to_string(),
                cell(r.seconds),
                r.test_nll.map_or("nan".to_string(), cell),
            ]
        })
        .collect();
    write_csv(
        &csv,
        &[
            "scheme",
            "iteration",
            "batch_nll",
            "forward_evals",
            "reverse_evals",
            "seconds",
            "test_nll",
        ],
        &csv_rows,
    )?;
    let figure = a.out.join(DTO_OTD_PNG);
    draw(&figure, &rows, initial_nll).map_err(|what| eqflow::Error::Io { what })?;

    let summary: Vec<Vec<String>> = Scheme::ALL
        .iter()
        .map(|&s| {
            let mine: Vec<&Row> = rows.iter().filter(|r| r.scheme == s).collect();
            let n = mine.len().max(1) as f64;
            let last = mine.last();
            vec![
                s.name().to_string(),
                format!(
                    "{:.0}",
                    mine.iter().map(|r| r.forward_evals as f64).sum::<f64>()
                        / n
                        / plan.batch as f64
                ),
                format!(
                    "{:.0}",
                    mine.iter().map(|r| r.reverse_evals as f64).sum::<f64>()
                        / n
                        / plan.batch as f64
                ),
                last.and_then(|r| r.test_nll)
                    .map_or(String::new(), |v| format!("{v:.3}")),
                last.map_or(String::new(), |r| format!("{:.1}", r.seconds)),
            ]
        })
        .collect();
    let text = table(
        &[
            "scheme",
            "fwd evals/sample",
            "rev evals/sample",
            "final test NLL",
            "train s",
        ],
        &summary,
    );
    let seconds = clock.elapsed().as_secs_f64();
    report(
        &a.common,
        json!({"command": "repro", "experiment": "dto-otd", "quick": a.quick, "csv": csv,
               "figure": figure, "initial_test_nll": initial_nll, "weight_decay": weight_decay,
               "iterations": plan.iterations, "seconds": seconds}),
        format!(
            "DTO (RK4, {} steps, backpropagation) against OTD (Dormand–Prince atol 1e-10, rtol \
             1e-5, continuous adjoint), DW-4 kernel flow, {} training and {} test samples, \
             batch {}, {} iterations, AdamW weight decay {weight_decay:e}; test NLL before \
             training {initial_nll:.3}\n{text}CSV: {}\nfigure: {}\n{seconds:.1} s\n",
            plan.rk4_steps,
            plan.n_train,
            plan.n_test,
            plan.batch,
            plan.iterations,
            csv.display(),
            figure.display()
        ),
    )
}

fn draw(path: &std::path::Path, rows: &[Row], initial_nll: f64) -> std::result::Result<(), String> {
    use plotters::style::{BLUE, RED, RGBColor};
    let color = |s: Scheme| -> RGBColor {
        match s {
            Scheme::Dto => BLUE,
            Scheme::Otd => RED,
        }
    };
    let mine = |s: Scheme| rows.iter().filter(move |r| r.scheme == s);
    let mut nll = Vec::new();
    let mut evals = Vec::new();
    for s in Scheme::ALL {
        // Held-out NLL from the common start (the batch NLL is in the CSV: too noisy to read
        // two runs from).
        nll.push(Series {
            name: format!("{} test NLL", s.name().to_uppercase()),
            points: std::iter::once((0.0, initial_nll))
                .chain(mine(s).filter_map(|r| r.test_nll.map(|y| (r.iteration as f64, y))))
                .collect(),
            color: color(s),
            markers: true,
        });
        evals.push(Series {
            name: format!("{} forward + reverse", s.name().to_uppercase()),
            points: mine(s)
                .map(|r| {
                    (
                        r.iteration as f64,
                        (r.forward_evals + r.reverse_evals) as f64,
                    )
                })
                .collect(),
            color: color(s),
            markers: false,
        });
    }
    plot::panels(
        path,
        &[
            Panel {
                title: "a) DW-4 held-out NLL during training".into(),
                x_desc: "iteration".into(),
                y_desc: "NLL (nats, Dormand–Prince)".into(),
                log_x: false,
                log_y: false,
                series: nll,
            },
            Panel {
                title: "b) field evaluations per iteration".into(),
                x_desc: "iteration".into(),
                y_desc: "log10 evaluations (whole batch)".into(),
                log_x: false,
                log_y: true,
                series: evals,
            },
        ],
    )
}
