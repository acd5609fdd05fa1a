//! `eqflow repro <experiment>`: the paper's experiments (Köhler, Klein & Noé 2020) rerun by
//! this code on this machine. Each writes CSV files and a PNG figure under `--out`, prints a
//! short table (or, with `--json`, one JSON object), and has a `--quick` form, seconds long,
//! that the test suite runs so that none of this rots. docs/REPRODUCTION.md sets every figure
//! beside the paper's claim.
//!
//! | experiment | paper | module |
//! |---|---|---|
//! | `divergence` | Fig. 3a, 3c | [`divergence`] |
//! | `reweighting` | Fig. 3b | [`reweighting`] |
//! | `dto-otd` | Fig. 4 | [`dto_otd`] |
//! | `baseline` | Fig. 5, 6 | [`baseline`] |
//! | `metastable` | Fig. 7, Table 1 | [`metastable`] |

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Subcommand};

use eqflow::Result;

use super::{Common, args};

mod baseline;
mod divergence;
mod dto_otd;
mod hutchinson;
mod metastable;
mod reweighting;

#[derive(Args)]
pub struct ReproArgs {
    #[command(subcommand)]
    experiment: Experiment,
}

#[derive(Subcommand)]
enum Experiment {
    /// Paper Fig. 3a and 3c: the Hutchinson estimator's error against the exact divergence
    /// as N grows, and the wall-clock time per field evaluation of the reverse-mode trace, the
    /// dense Jacobian's trace, one Hutchinson estimate and the closed form.
    Divergence(RunArgs),
    /// Paper Fig. 3b: the DW-2 free-energy profile along the pair distance: exact (quadrature),
    /// the flow reweighted with exact log-densities, and with Hutchinson-estimated ones.
    Reweighting(ReweightingArgs),
    /// Paper Fig. 4: DW-4 maximum-likelihood training with the gradient back-propagated
    /// through fixed-grid RK4 (DTO) against adaptive Dormand–Prince with the continuous adjoint
    /// method (OTD): NLL during training and field evaluations per iteration.
    DtoOtd(DtoOtdArgs),
    /// Paper Fig. 5 and 6: train and test NLL against training-set size (10 to 10,000) of the
    /// equivariant flow, the non-equivariant baseline (`dense` field) and the baseline trained
    /// on randomly rotated, reflected and permuted copies, on DW-4 and LJ-13; DW-4 energy
    /// histograms of their samples, raw and reweighted, with their ESS.
    Baseline(BaselineArgs),
    /// Paper Fig. 7 and Table 1: distinct metastable states (energy minima, saddles filtered
    /// out) reached from flow samples against MCMC: DW-4 from a flow trained on one minimum,
    /// LJ-13 per energy window against short and long MCMC trajectories.
    Metastable(MetastableArgs),
}

/// What every experiment takes.
#[derive(Args)]
struct RunArgs {
    /// Directory for the CSV files and the figure (created if missing).
    #[arg(long, value_parser = args::path)]
    out: PathBuf,
    /// The reduced form: the same steps at small sizes, a few seconds (what the tests run).
    #[arg(long)]
    quick: bool,
    /// Random seed of everything the experiment draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct ReweightingArgs {
    #[command(flatten)]
    run: RunArgs,
    /// A trained DW-2 model file (kernel field) to use instead of training one here.
    #[arg(long, value_parser = args::path)]
    model: Option<PathBuf>,
}

#[derive(Args)]
struct BaselineArgs {
    #[command(flatten)]
    run: RunArgs,
    /// How the two baselines' maximum likelihood treats the divergence: `exact` (the closed
    /// form) or `hutchinson` (one Rademacher probe per configuration and step, as the paper
    /// trained its baseline). The equivariant flow always trains with the exact divergence, and
    /// every NLL reported is of the exact density.
    #[arg(long, default_value = "exact")]
    divergence: String,
}

#[derive(Args)]
struct DtoOtdArgs {
    #[command(flatten)]
    run: RunArgs,
    /// AdamW's decoupled weight decay for both schemes (the paper regularises W by weight
    /// decay; how much decides whether DTO's fixed grid stays a faithful ODE solution).
    /// (≥ 0, with learning rate × weight decay below 1).
    #[arg(long, default_value_t = dto_otd::DEFAULT_WEIGHT_DECAY,
          value_parser = args::non_negative, allow_negative_numbers = true)]
    weight_decay: f64,
    /// Training iterations (default 1,000, or 3 with --quick; at most 10⁶).
    #[arg(long, value_parser = args::iterations, allow_negative_numbers = true)]
    iterations: Option<usize>,
}

#[derive(Args)]
struct MetastableArgs {
    #[command(flatten)]
    run: RunArgs,
    /// LJ-13 rounds (default 10, or 1 with --quick; at most 10,000).
    #[arg(long, value_parser = args::rounds, allow_negative_numbers = true)]
    rounds: Option<usize>,
    /// Samples of the long LJ-13 MCMC trajectory (default 100,000, or 2,000 with --quick; at
    /// most 10⁷, all kept in memory).
    #[arg(long, value_parser = args::long_samples, allow_negative_numbers = true)]
    n_long: Option<usize>,
    /// ML epochs of each LJ-13 flow (default 20, or 2 with --quick; at most 10⁶).
    #[arg(long, value_parser = args::epochs, allow_negative_numbers = true)]
    lj13_epochs: Option<usize>,
}

pub fn run(a: ReproArgs) -> Result<()> {
    // An experiment writes its CSV files and figure as it goes: they replace the earlier
    // run's together, only once the whole experiment has succeeded.
    crate::output::all_or_none(|| run_experiment(a))
}

fn run_experiment(a: ReproArgs) -> Result<()> {
    match a.experiment {
        Experiment::Divergence(r) => divergence::run(&r),
        Experiment::Reweighting(r) => reweighting::run(&r.run, r.model.as_deref()),
        Experiment::DtoOtd(r) => dto_otd::run(&r.run, r.weight_decay, r.iterations),
        Experiment::Baseline(b) => baseline::run(&b.run, &b.divergence),
        Experiment::Metastable(m) => {
            let base = if m.run.quick {
                metastable::QUICK
            } else {
                metastable::FULL
            };
            let plan = metastable::Plan {
                lj13_rounds: m.rounds.unwrap_or(base.lj13_rounds),
                lj13_n_long: m.n_long.unwrap_or(base.lj13_n_long),
                lj13_epochs: m.lj13_epochs.unwrap_or(base.lj13_epochs),
                ..base
            };
            metastable::run(&m.run, &plan)
        }
    }
}

/// Creates the output directory.
/// An untrained flow of `family` for `system` as the reproductions measure it: strict mode
/// off. A reproduction measures whatever RK4 map the paper's protocol trains, at the grid the
/// protocol names, certified or not (docs/REPRODUCTION.md); strict mode would refuse to
/// measure most of them (the dense baseline's bound needs thousands of steps).
fn untrained_as_published(
    system: &eqflow::system::System,
    family: &str,
    seed: u64,
) -> Result<eqflow::Flow> {
    let mut flow = system.untrained_flow_of(family, seed)?;
    flow.set_require_certificate(false);
    Ok(flow)
}

/// Checks, creating nothing, that [`create_out_dir`] can make `dir` (it is a folder, or the
/// nearest part of its path that exists is one) and that every one of the experiment's output
/// files `names` can be written there: none is a folder or a special file, or one of the
/// command's `inputs` ([`crate::output::check_output`]). Called before any work, so that an
/// experiment does not train for minutes and then fail on its output, or fail half-way with
/// some of its files already replaced.
fn check_outputs(dir: &Path, names: &[&str], inputs: &[(&str, &Path)]) -> Result<()> {
    let mut path = dir;
    loop {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                let why = format!("{} is not a folder", path.display());
                return Err(out_dir_refused(dir, why));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => path = parent,
                _ => break,
            },
            Err(e) => return Err(out_dir_refused(dir, e)),
        }
    }
    // Files can only be in the way when the folder exists already.
    if dir.is_dir() {
        for name in names {
            crate::output::check_output("--out", &dir.join(name), inputs)?;
        }
    }
    Ok(())
}

fn create_out_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| out_dir_refused(dir, e))
}

/// The error of an output folder `--out dir` that cannot be made, and why.
fn out_dir_refused(dir: &Path, why: impl std::fmt::Display) -> eqflow::Error {
    eqflow::Error::Io {
        what: format!(
            "cannot create the output folder --out {}: {why}",
            dir.display()
        ),
    }
}

/// Writes a CSV file: a header line, then one line per row. Non-finite values are written
/// `nan`, which the tests and common readers (numpy, pandas) parse. The file is replaced
/// atomically: a failure leaves no half-written file at `path`.
fn write_csv(path: &Path, header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut text = header.join(",");
    text.push('\n');
    for row in rows {
        text.push_str(&row.join(","));
        text.push('\n');
    }
    // Atomically: a failed write leaves no half-written file at `path`.
    crate::output::write_atomically(path, text.as_bytes())
}

/// A number for a CSV cell: full precision, `nan` for anything non-finite.
fn cell(v: f64) -> String {
    if v.is_finite() {
        format!("{v:e}")
    } else {
        "nan".to_string()
    }
}

/// Mean seconds per call of `f`: one warm-up call, then batches of doubling size until one
/// batch lasts `min_seconds` (at least one call even if that call alone is longer).
fn seconds_per_call(min_seconds: f64, mut f: impl FnMut() -> f64) -> f64 {
    std::hint::black_box(f());
    let mut reps = 1_u64;
    loop {
        let start = Instant::now();
        let mut sink = 0.0;
        for _ in 0..reps {
            sink += f();
        }
        std::hint::black_box(sink);
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= min_seconds || reps >= 1 << 30 {
            return elapsed / reps as f64;
        }
        reps *= 2;
    }
}

/// Formats a table of strings with columns padded to their widest entry.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let n = header.len();
    let width: Vec<usize> = (0..n)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in std::iter::once(header.iter().map(|h| h.to_string()).collect::<Vec<_>>())
        .chain(rows.iter().cloned())
    {
        for (c, text) in line.iter().enumerate() {
            let pad = width[c] - text.chars().count();
            let _ = write!(out, "{}{text}  ", " ".repeat(pad));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    out
}
