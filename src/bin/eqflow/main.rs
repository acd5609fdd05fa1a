//! The `eqflow` command line: reference data, training, evaluation and sampling of
//! equivariant-flow Boltzmann generators. Every subcommand has `--help`; `--json` prints a
//! machine-readable summary on stdout instead of the human-readable one.
//!
//! Counts that size memory (`mcmc -n`, `sample -n`, `eval --n-samples`) are checked before
//! anything is allocated: a run that would hold more than [`MAX_MEMORY_BYTES`] of samples fails
//! with a message giving the need and the limit.
//!
//! Parallel work runs in rayon's global pool, built here explicitly with one thread per core or
//! `RAYON_NUM_THREADS`, capped by [`eqflow::thread_count`] (the rule of the library's pool for
//! C hosts): left to rayon, `RAYON_NUM_THREADS=5000` started 5000
//! threads, which took half a minute and then aborted the process. Results are bit-identical
//! for any thread count.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use eqflow::boltzmann::{kish_ess, log_weights_into};
use eqflow::energy::energies_into;
use eqflow::flow::MAX_STEP_GROWTH;
use eqflow::free_energy::{self, Estimate};
use eqflow::geometry::Layout;
use eqflow::io::{self, ConfigShape, Dtype, model};
use eqflow::reference_mcmc::{self, InitialState, McmcConfig};
use eqflow::species::Species;
use eqflow::system::System;
use eqflow::thread_count::{
    MAX_POOL_THREADS, RAYON_ENV_VAR, THREAD_STACK_BYTES, THREADS_PER_CORE, cores,
    parse_rayon_threads, thread_cap,
};
use eqflow::train::{
    LambdaSchedule, LrSchedule, Objective, Pairing, Probe, TrainConfig, TrainSummary, Trainer,
};
use eqflow::{Error, Flow, Result};

mod args;
mod demo;
mod output;
mod plot;
mod repro;

/// Largest memory the samples of one command may take: 16 GiB (for DW-4, about 190 million
/// samples; for LJ-13, 44 million).
const MAX_MEMORY_BYTES: u64 = 16 * (1 << 30);

/// Checks that `n` items of `doubles_per_item` doubles each fit in [`MAX_MEMORY_BYTES`]
/// (overflow-checked, before anything is allocated).
fn check_memory(what: &str, n: usize, doubles_per_item: usize) -> Result<()> {
    let need = (n as u128)
        .saturating_mul(doubles_per_item as u128)
        .saturating_mul(8);
    if need > u128::from(MAX_MEMORY_BYTES) {
        return Err(eqflow::Error::Resource {
            what: format!("{what} = {n} ({doubles_per_item} doubles each)"),
            need_bytes: need,
            limit_bytes: MAX_MEMORY_BYTES,
        });
    }
    Ok(())
}

/// An empty vector with room for `n` items, or [`eqflow::Error::Resource`] naming `what` when
/// the system refuses the memory. The command's own buffers, under [`MAX_MEMORY_BYTES`] by
/// [`check_memory`], must not abort the process either (a plain `vec!` does when refused).
fn reserved<T>(n: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| eqflow::Error::Resource {
            what: format!("{what} (the system refused the memory)"),
            need_bytes: (n as u128).saturating_mul(std::mem::size_of::<T>() as u128),
            limit_bytes: MAX_MEMORY_BYTES,
        })?;
    Ok(v)
}

/// `n` zeros, allocated as [`reserved`].
fn zeros(n: usize, what: &str) -> Result<Vec<f64>> {
    let mut v = reserved(n, what)?;
    v.resize(n, 0.0);
    Ok(v)
}

/// The size of the global pool: `requested` (`RAYON_NUM_THREADS`, if a positive integer) or
/// `cores`, capped by [`thread_cap`]. Returns the size and, when the request was capped, the
/// cap.
fn pool_size(requested: Option<usize>, cores: usize) -> (usize, Option<usize>) {
    let cap = thread_cap(cores);
    let wanted = requested.unwrap_or(cores).max(1);
    (wanted.min(cap), (wanted > cap).then_some(cap))
}

/// Whether a `RAYON_NUM_THREADS` value is one rayon reads as a count: blank, or a non-negative
/// integer (0 is rayon's "the default").
fn is_thread_count(value: &str) -> bool {
    let value = value.trim();
    value.is_empty() || value.parse::<usize>().is_ok()
}

/// Builds rayon's global pool with the capped thread count before any parallel work, so that
/// rayon never builds it implicitly from an uncapped `RAYON_NUM_THREADS`.
///
/// # Errors
///
/// [`Error::Resource`] if the system refuses to start the threads, with the count and the
/// system's reason.
fn start_thread_pool() -> Result<()> {
    let value = std::env::var(RAYON_ENV_VAR).ok();
    let requested = parse_rayon_threads(value.as_deref());
    let (size, capped) = pool_size(requested, cores());
    if let Some(text) = value.as_deref().filter(|v| !is_thread_count(v)) {
        // rayon ignores such a value silently; a typo should not pass for a setting.
        warn(&format!(
            "RAYON_NUM_THREADS={text:?} is not a number of threads (a non-negative integer; 0 \
             or unset means the default): using the default, {size}"
        ));
    }
    if let (Some(cap), Some(requested)) = (capped, requested) {
        warn(&format!(
            "RAYON_NUM_THREADS={requested} is capped at {cap} threads ({THREADS_PER_CORE} per \
             core, at most {MAX_POOL_THREADS}); results do not depend on the count"
        ));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(size)
        .build_global()
        .map_err(|e| Error::Resource {
            what: format!(
                "the stacks of {size} worker threads (RAYON_NUM_THREADS = {}; the system \
                     refused to start them: {e})",
                value.as_deref().unwrap_or("unset")
            ),
            need_bytes: size as u128 * u128::from(THREAD_STACK_BYTES),
            limit_bytes: MAX_POOL_THREADS as u64 * THREAD_STACK_BYTES,
        })
}

#[derive(Parser)]
#[command(
    name = "eqflow",
    version,
    about = "Equivariant normalizing flows as exact Boltzmann-generator Monte Carlo moves"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reference data by random-walk Metropolis (many chains in parallel).
    Mcmc(McmcArgs),
    /// Draw samples from a trained flow, with log q and (given a system) log w.
    Sample(SampleArgs),
    /// Mean NLL of data under a flow; with a system, the ESS of fresh samples against the
    /// energy, log Z of the target and the data's entropy (the NLL's floor).
    Eval(EvalArgs),
    /// Train a flow on reference data (maximum likelihood, optionally then ML + reverse KL).
    Train(Box<TrainArgs>),
    /// The whole pipeline on DW-4 in about a minute: reference data, training, sampling,
    /// reweighting, a free-energy difference, and an energy-histogram plot.
    Demo(DemoArgs),
    /// Reproduce an experiment of the paper (Köhler, Klein & Noé 2020): CSV files, a PNG
    /// figure and a table; `--quick` for a reduced run of a few seconds.
    Repro(repro::ReproArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// System: a built-in name (dw2, dw4, lj13, lj55) or the path of a JSON or TOML system file
    /// (see systems/ and README.md); gives the energy, kT and the kernel preset.
    #[arg(long)]
    system: String,
    /// Training data (.npy or .xyz); samples after the first --n-train are used for validation.
    #[arg(long, value_parser = args::path)]
    data: PathBuf,
    /// Output model file (JSON).
    #[arg(long, value_parser = args::path)]
    out: PathBuf,
    /// Training samples (the first n of the file; at least 1).
    #[arg(long, default_value_t = 1000, value_parser = args::positive_count,
          allow_negative_numbers = true)]
    n_train: usize,
    /// Validation samples (the next ones in the file, if any; 0 for none; default 1000): the
    /// best epoch is kept.
    #[arg(long, allow_negative_numbers = true)]
    n_val: Option<usize>,
    /// Field family: `kernel` (the paper's pairwise RBF field; trains by every objective),
    /// `coordkernel` (pair coefficients modulated by both particles' coordination numbers;
    /// every objective), `envpair` (environment-modulated pair field; fm, fm-align or fm-ot
    /// only), `kernelcoord` (the paper's field plus a coordination correction that starts at
    /// zero; every objective) or `dense` (the non-equivariant baseline: a tanh network of the
    /// flattened coordinates; every objective but ml-discrete).
    #[arg(long, default_value = "kernel")]
    field: String,
    /// Epochs of the first phase, whose objective --objective chooses (1 to 1,000,000).
    /// Default: 150 for the kernel field's recipes on DW-4 (`ml-discrete` through 5 RK4 steps,
    /// see --rk4-steps) and LJ-13 (`ml` through 20), otherwise the paper's 50.
    #[arg(long, value_parser = args::epochs, allow_negative_numbers = true)]
    epochs: Option<usize>,
    /// Objective of the first phase (default: the recipe of the system and field, see
    /// --rk4-steps): `ml` (maximum likelihood through the RK4 map, of the continuous-mode
    /// density: the paper's loss), `ml-discrete` (maximum likelihood of the exact-discrete
    /// density of the RK4 map, the density the model reports; its KL epochs too; every family
    /// but envpair and dense), `fm`
    /// (conditional flow matching from the prior, pairs in order), `fm-align` (pairs in order,
    /// each aligned over permutations and rotations/reflections), `fm-ot` (flow matching
    /// with equivariant optimal-transport pairs: alignment and a batch assignment) or
    /// `ml-hutchinson` / `ml-hutchinson-gaussian` (`ml` with the divergence replaced by its
    /// Hutchinson estimate, one Rademacher or Gaussian probe per configuration and step: how
    /// the paper trained its baseline; dense field only; validation stays exact).
    #[arg(long)]
    objective: Option<String>,
    /// Epochs of maximum likelihood after a flow-matching first phase (fine-tuning; at most
    /// 1,000,000).
    #[arg(long, default_value_t = 0, value_parser = args::extra_epochs,
          allow_negative_numbers = true)]
    finetune_epochs: usize,
    /// Further epochs of the mixed loss λ·ML + (1−λ)·KL (needs the energy's gradient; at most
    /// 1,000,000).
    #[arg(long, default_value_t = 0, value_parser = args::extra_epochs,
          allow_negative_numbers = true)]
    kl_epochs: usize,
    /// ML weight λ of the mixed loss over the KL epochs, as in the library and the C API:
    /// `const:L` or `linear:L0:L1` (default, the paper's: linear:1:0.5).
    #[arg(long)]
    lambda_schedule: Option<String>,
    /// Deprecated spelling that takes the KL weight 1−λ instead of λ (`const:W` or
    /// `linear:W0:W1`); use --lambda-schedule.
    #[arg(long, conflicts_with = "lambda_schedule")]
    kl_weight_schedule: Option<String>,
    /// Minibatch size (at least 1).
    #[arg(long, default_value_t = 64, value_parser = args::positive_count,
          allow_negative_numbers = true)]
    batch_size: usize,
    /// AdamW learning rate (positive, at most 1e6). Default: 1e-2 for DW-4's recipe (as for
    /// --epochs), otherwise the paper's 5e-3.
    #[arg(long, value_parser = args::learning_rate, allow_hyphen_values = true)]
    lr: Option<f64>,
    /// RK4 steps of the trained map: training differentiates through this many steps, and the
    /// model file samples and evaluates densities with them (exact-discrete). Fewer steps make
    /// every sample and density proportionally cheaper; train them with `--objective
    /// ml-discrete`, whose loss is the exact-discrete density itself (the continuous-mode loss
    /// and the map part ways at few steps). Default, with --objective, the best recipe measured
    /// (docs/field_families.md, "Training by the exact-discrete likelihood"): DW-4 with the
    /// kernel field `ml-discrete` at 5 steps (the same NLL and ESS as 20 steps, 3.8× the
    /// samples per second); otherwise `ml` at 20 steps. At most 100,000.
    #[arg(long, value_parser = args::rk4_steps, allow_negative_numbers = true)]
    rk4_steps: Option<usize>,
    /// Fail, writing nothing, if the trained field is not certified at its step count (pair
    /// with --lipschitz-penalty, or more --rk4-steps). Without it, the model file asks for a
    /// step certificate (strict mode: exact-discrete sampling and densities refuse uncertified
    /// grids) and an uncertified trained field gets the smallest RK4 step count that
    /// certifies it (a warning says so).
    #[arg(long, conflicts_with = "allow_uncertified")]
    require_certificate: bool,
    /// Opt out of strict mode: the model keeps its RK4 step count even if the trained field
    /// is not certified at it, and samples and evaluates densities anyway.
    #[arg(long)]
    allow_uncertified: bool,
    /// Learning rate over the first phase: `const` or `cosine:F` (decay to F·lr at the last
    /// step, F in (0, 1]).
    #[arg(long, default_value = "const")]
    lr_schedule: String,
    /// Epochs between validation NLLs of the first phase (default 1; the last epoch is always
    /// validated; the best validated epoch is kept).
    #[arg(long, value_parser = args::validate_every, allow_negative_numbers = true)]
    validate_every: Option<usize>,
    /// Random seed (initial weights, shuffles, KL latents).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    seed: u64,
    /// Weight of the step-certificate penalty in every phase (0: off): keeps the field's
    /// Lipschitz bound, the one `eqflow eval` certifies with, low enough that every RK4 step of
    /// the trained map is a bijection (kernel, coordkernel, kernelcoord and dense fields); a
    /// certified epoch is kept over any uncertified one. Default: 1 for the kernel field on DW-4
    /// and LJ-13 (their models come out certified at their step count, measured at +0.01 to
    /// +0.34 nats of held-out NLL: docs/field_families.md, "Certified by default"), 0 elsewhere
    /// (the bound grows with N: on LJ-55 the penalty cost 27 nats; other families' loose bounds
    /// would cost most of their fit).
    #[arg(long, value_parser = args::non_negative, allow_hyphen_values = true)]
    lipschitz_penalty: Option<f64>,
    /// The increment bound the penalty aims below, in (0, 1): the certificate needs < 1
    /// (default 0.9).
    #[arg(long, value_parser = args::open_unit, allow_hyphen_values = true)]
    lipschitz_target: Option<f64>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct DemoArgs {
    /// Directory for the data, the model and the plot.
    #[arg(long, value_parser = args::path, default_value = "eqflow-demo")]
    out_dir: PathBuf,
    /// Random seed.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    seed: u64,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct Common {
    /// Print a machine-readable JSON summary on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct McmcArgs {
    /// System: a built-in name (dw2, dw4, lj13, lj55) or the path of a JSON or TOML system file
    /// (see systems/ and README.md).
    #[arg(long)]
    system: String,
    /// Number of samples to write (at least 1, at most 16 GiB of samples and energies).
    #[arg(short = 'n', long = "n-samples", default_value_t = 10_000,
          value_parser = args::positive_count, allow_negative_numbers = true)]
    n: usize,
    /// Output file (.npy, float64, shape (n, N·D); or .xyz; a name without an extension is
    /// written as .npy; other extensions are refused).
    #[arg(long, value_parser = args::path)]
    out: PathBuf,
    /// Random seed.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    seed: u64,
    /// Independent chains (at least 1; at most -n are used).
    #[arg(long, default_value_t = 64, value_parser = args::positive_count,
          allow_negative_numbers = true)]
    chains: usize,
    /// Burn-in steps per chain (step size adapted here only). Burn-in and production steps
    /// together are at most 10^12 per chain.
    #[arg(long, default_value_t = 10_000, value_parser = args::steps,
          allow_negative_numbers = true)]
    burnin: usize,
    /// Steps between kept samples (at least 1).
    #[arg(long, default_value_t = 100, value_parser = args::thin, allow_negative_numbers = true)]
    thin: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct SampleArgs {
    /// Model file (JSON) written by `eqflow train` or `eqf_flow_save`.
    #[arg(long, value_parser = args::path)]
    model: PathBuf,
    /// Number of samples (at least 1, at most 16 GiB of samples, log q, energies and log w).
    #[arg(short = 'n', long = "n-samples", default_value_t = 10_000,
          value_parser = args::positive_count, allow_negative_numbers = true)]
    n: usize,
    /// Output file for the configurations (.npy or .xyz; other extensions are refused); log q
    /// goes to `<stem>_log_q.npy` and, with a system, log w to `<stem>_log_w.npy`. All are
    /// written or none.
    #[arg(long, value_parser = args::path)]
    out: PathBuf,
    /// Random seed.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    seed: u64,
    /// System for the importance weights, a built-in name or a system file (default: the one
    /// recorded in the model file).
    #[arg(long)]
    system: Option<String>,
    /// Strict mode, even for a model file that opts out of it: refuse (with an error naming
    /// the step count that would be certified) unless the step certificate proves every RK4
    /// step of the model a bijection (exact-discrete mode only). The default unless the model
    /// file says `"require_certificate": false`.
    #[arg(long, conflicts_with = "allow_uncertified")]
    require_certificate: bool,
    /// Opt out of strict mode: use the model's RK4 map even where the step certificate does
    /// not prove it one-to-one.
    #[arg(long)]
    allow_uncertified: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct EvalArgs {
    /// Model file (JSON).
    #[arg(long, value_parser = args::path)]
    model: PathBuf,
    /// Data to evaluate (.npy with shape (n, N·D) or (n, N, D), or .xyz).
    #[arg(long, value_parser = args::path)]
    data: PathBuf,
    /// Also draw fresh samples and report the ESS of their importance weights against this
    /// system's energy (a built-in name or a system file), and log Z of the target by bridge sampling between
    /// them and the data (assumed independent samples of the target), hence the data's entropy
    /// S = <U/kT> + log Z and NLL − S = KL(data‖flow), in the NLL's CoM-free convention.
    /// log Z by importance sampling is reported beside it; when the two differ by more than 3
    /// combined standard errors a warning goes to stderr (`log_z_consistent`: false in JSON).
    /// The system must have the model's N and D.
    #[arg(long)]
    system: Option<String>,
    /// Fresh samples for the ESS and log Z, with --system (default 10,000; at least 1, at
    /// most 16 GiB of samples, log q, energies and log w).
    #[arg(long, value_parser = args::positive_count, allow_negative_numbers = true)]
    n_samples: Option<usize>,
    /// Seed of the fresh samples, with --system (default 0).
    #[arg(long, allow_negative_numbers = true)]
    seed: Option<u64>,
    /// Fail if any configuration cannot be evaluated (by default such configurations are
    /// counted and reported, and the NLL is over the others).
    #[arg(long)]
    strict: bool,
    /// Strict mode, even for a model file that opts out of it: refuse (with an error naming
    /// the step count that would be certified) unless the step certificate proves every RK4
    /// step of the model a bijection (exact-discrete mode only). The default unless the model
    /// file says `"require_certificate": false`.
    #[arg(long, conflicts_with = "allow_uncertified")]
    require_certificate: bool,
    /// Opt out of strict mode: use the model's RK4 map even where the step certificate does
    /// not prove it one-to-one.
    #[arg(long)]
    allow_uncertified: bool,
    /// Also certify each configuration: prove that it has exactly one preimage under the RK4
    /// map (so that its density is exact) from the field's bounds on a ball around its
    /// pull-back, where the global step certificate fails (see docs/embedding.md, "Step
    /// certificate"). Reports how many configurations are certified; costs about 10 density
    /// evaluations per configuration on DW-4 and 6 on LJ-13 when the global certificate
    /// fails, one or two when it holds.
    #[arg(long)]
    certify_each: bool,
    #[command(flatten)]
    common: Common,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Ctrl-C or SIGTERM mid-write: no target is ever half-written (each is a temporary renamed
    // over it), but the temporary itself would stay behind under a name no later run reuses.
    // The handler runs on its own thread, removes the unfinished temporaries and exits as a
    // shell reports an interrupt (128 + SIGINT). An interrupt that comes while a set of
    // finished outputs is being renamed into place waits for the set to be complete
    // (`eqflow::io::uninterrupted`), so the run exits 130 with every output written. Without a
    // handler (one could not be installed) the default action applies, as before.
    let _ = ctrlc::set_handler(|| eqflow::io::remove_unfinished_and_exit(130));
    let result = start_thread_pool().and_then(|()| match cli.command {
        Command::Mcmc(a) => run_mcmc(a),
        Command::Sample(a) => run_sample(a),
        Command::Eval(a) => run_eval(a),
        Command::Train(a) => run_train(*a),
        Command::Demo(a) => demo::run(a),
        Command::Repro(a) => repro::run(a),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!, which panics when stderr is a closed pipe.
            let _ = writeln!(std::io::stderr(), "eqflow: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A warning on stderr (never a panic, whatever stderr is).
fn warn(text: &str) {
    let _ = writeln!(std::io::stderr(), "warning: {text}");
}

fn progress(len: u64, quiet: bool, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Prints the summary of a command: `value` with `--json`, else `text`.
///
/// # Errors
///
/// [`eqflow::Error::Internal`] if `text` reports a number as NaN (a result that is not a
/// number must never be reported as one, with success); what [`report_table`] reports.
fn report(common: &Common, value: Value, text: String) -> Result<()> {
    if reports_nan(&text, &value) {
        return Err(eqflow::Error::Internal {
            what: format!("a result is not a number: {}", text.trim_end()),
        });
    }
    report_table(common, value, text)
}

/// Whether `text` shows a number as NaN: a word that is exactly `NaN` (as `{}` formats one)
/// once the strings of `value` (paths, names and messages, which the text repeats) are taken
/// out. `BaNaNa.npy`, `NaN_samples.npy` or a folder named `NaN` are the user's names, not
/// results: a plain search for "NaN" failed such runs as internal errors after they had
/// written their outputs. (A name that is exactly `NaN` hides a NaN result: this is a last
/// check, not the one that keeps NaN out of results.)
fn reports_nan(text: &str, value: &Value) -> bool {
    fn strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::String(s) if !s.is_empty() => out.push(s),
            Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
            Value::Object(map) => map.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let mut names = Vec::new();
    strings(value, &mut names);
    // Longest first, so that a name containing another is taken out whole.
    names.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut rest = text.to_string();
    for name in names {
        rest = rest.replace(name, " ");
    }
    rest.split(|c: char| c.is_whitespace() || "(),;:=[]{}±%".contains(c))
        .any(|word| matches!(word, "NaN" | "-NaN" | "+NaN"))
}

/// As [`report`], for the tables of `eqflow repro`, whose cells may be non-finite on purpose
/// (a diverged run).
///
/// # Errors
///
/// [`eqflow::Error::Io`] if stdout cannot be written (a closed pipe, say; `println!` would
/// panic).
fn report_table(common: &Common, value: Value, text: String) -> Result<()> {
    let out = if common.json {
        format!("{value}\n")
    } else {
        text
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| eqflow::Error::Io {
            what: format!("cannot write the results to stdout: {e}"),
        })
}

fn is_xyz(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("xyz"))
}

/// Whether `extension` names one of the two configuration formats (`.npy`, `.xyz`).
fn is_data_extension(extension: &std::ffi::OsStr) -> bool {
    extension.eq_ignore_ascii_case("npy") || extension.eq_ignore_ascii_case("xyz")
}

/// Refuses an output of configurations whose extension names another format than the two
/// eqflow writes: `--out samples.txt` or `.csv` would otherwise get a NumPy file under a text
/// name. A name without an extension gets a .npy file.
fn check_configurations_output(flag: &str, path: &Path) -> Result<()> {
    match path.extension() {
        Some(e) if !is_data_extension(e) => Err(Error::InvalidArgument {
            what: format!(
                "{flag} {}: eqflow writes configurations as .npy (NumPy) or .xyz \
                     (extended XYZ), not .{}",
                path.display(),
                e.to_string_lossy()
            ),
        }),
        _ => Ok(()),
    }
}

/// Refuses a model output named like a data file (`.npy`, `.xyz`): a model file is JSON, and
/// a later `--data` given that name would fail to parse it.
fn check_model_output(flag: &str, path: &Path) -> Result<()> {
    match path.extension() {
        Some(e) if is_data_extension(e) => Err(Error::InvalidArgument {
            what: format!(
                "{flag} {}: a model file is JSON (for example .json), not .{}",
                path.display(),
                e.to_string_lossy()
            ),
        }),
        _ => Ok(()),
    }
}

/// The atom count of an XYZ file's first frame (its first non-blank line, within the first
/// 4 KiB), if it is one.
fn xyz_first_atom_count(path: &Path) -> Option<usize> {
    use std::io::{BufRead as _, Read as _};
    let file = std::fs::File::open(path).ok()?;
    std::io::BufReader::new(file.take(4096))
        .lines()
        .map_while(std::result::Result::ok)
        .find(|l| !l.trim().is_empty())
        .and_then(|l| l.trim().parse().ok())
}

/// Reads configurations from .npy or .xyz. An XYZ file's species column, when it has one, must
/// give every particle the species `species` gives it (all 0 for identical particles): a file
/// of another system, or with its particles in another order, is refused, not read as this one.
fn read_data(path: &Path, layout: Layout, species: Option<&Species>) -> Result<Vec<f64>> {
    if is_xyz(path) {
        // A file of another system usually fails on its first atom line (a third coordinate
        // where 2-D is read), which said nothing of its particle count: a count that differs
        // from the model's is the error then, with the reader's as a detail.
        let traj =
            io::read_xyz(path, layout.dim).map_err(|e| match xyz_first_atom_count(path) {
                Some(n) if n != layout.n_particles => eqflow::Error::DimensionMismatch {
                    what: format!(
                        "particles per frame in {} (a file of another system? read as {}-D it \
                         also fails: {e})",
                        path.display(),
                        layout.dim
                    ),
                    expected: layout.n_particles,
                    found: n,
                },
                _ => e,
            })?;
        if traj.layout != layout {
            return Err(eqflow::Error::DimensionMismatch {
                what: format!("particles per frame in {}", path.display()),
                expected: layout.n_particles,
                found: traj.layout.n_particles,
            });
        }
        if let Some(in_file) = &traj.species {
            let expected = |i: usize| species.map_or(0, |s| s.of_particle()[i]);
            if let Some(i) = (0..in_file.len()).find(|&i| in_file[i] != expected(i)) {
                return Err(eqflow::Error::InvalidArgument {
                    what: format!(
                        "{}: particle {i} has {} {}, but it is of species {} here{}",
                        path.display(),
                        io::xyz::SPECIES_INDEX,
                        in_file[i],
                        expected(i),
                        if species.is_none() {
                            " (the particles are identical: one species, index 0)"
                        } else {
                            ""
                        }
                    ),
                });
            }
        }
        Ok(traj.x)
    } else {
        io::read_configurations(path, layout)
    }
}

/// Writes configurations to `path` in the format of `target`'s extension (`path` may be a
/// temporary that becomes `target`); XYZ files of several species get their species column.
fn write_data(
    target: &Path,
    path: &Path,
    x: &[f64],
    (layout, species): (Layout, Option<&Species>),
    props: &[(&str, &[f64])],
) -> Result<()> {
    if is_xyz(target) {
        io::write_xyz_with_species(path, x, layout, species, props)
    } else {
        io::write_configurations(path, x, layout, Dtype::F64, ConfigShape::Flat)
    }
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let stem = path.file_stem().map_or_else(
        || "samples".to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    path.with_file_name(format!("{stem}_{suffix}.npy"))
}

/// Mean and standard error of the mean; no standard error from fewer than two values (one
/// value says nothing about the spread, and `± 0` would claim an exact result). Computed in
/// units of the largest |value|, so that both are finite whenever they are representable:
/// NLLs of 1e300 (configurations far outside the flow's support) would overflow the sums of
/// squares and lose a standard error that exists.
fn mean_and_se(values: &[f64]) -> (f64, Option<f64>) {
    let n = values.len() as f64;
    let scale = values.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    if !scale.is_finite() || scale == 0.0 {
        // Infinite or NaN values (no spread to speak of), or all zeros (an exact 0 ± 0).
        let mean = values.iter().sum::<f64>() / n;
        let se = (values.len() >= 2 && scale == 0.0).then_some(0.0);
        return (mean, se);
    }
    let mean = values.iter().map(|v| v / scale).sum::<f64>() / n;
    if values.len() < 2 {
        return (mean * scale, None);
    }
    let var = values
        .iter()
        .map(|v| (v / scale - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0);
    let se = (var / n).sqrt() * scale;
    (mean * scale, Some(se).filter(|se| se.is_finite()))
}

/// `value ± se` with `decimals` decimals, `± n/a` without a standard error.
fn plus_minus(value: f64, se: Option<f64>, decimals: usize) -> String {
    match se {
        Some(se) => format!("{} ± {}", num(value, decimals), num(se, decimals)),
        None => format!("{} ± n/a", num(value, decimals)),
    }
}

/// An estimate with its standard error, for the text reports.
fn estimate(e: &Estimate) -> String {
    plus_minus(e.value, Some(e.standard_error), 4)
}

/// A number for the text reports: `decimals` places, in scientific notation when it is at
/// least 1e9 in size or nonzero below the last place (fixed notation would print 1e300 with
/// 300 digits, and 1e-9 as 0.0000).
fn num(value: f64, decimals: usize) -> String {
    let size = value.abs();
    let smallest = 10f64.powi(-i32::try_from(decimals).unwrap_or(i32::MAX));
    if value.is_finite() && (size >= 1e9 || (size > 0.0 && size < smallest)) {
        format!("{value:.decimals$e}")
    } else {
        format!("{value:.decimals$}")
    }
}

/// Loads a model file; every error names the file.
pub(crate) fn load_model(path: &Path) -> Result<(Flow, model::ModelFile)> {
    model::load(path).map_err(|e| {
        let shown = path.display().to_string();
        if e.to_string().contains(&shown) {
            return e;
        }
        let context = format!("model file {shown}");
        match e {
            eqflow::Error::Format { .. }
            | eqflow::Error::InvalidArgument { .. }
            | eqflow::Error::NonFinite { .. }
            | eqflow::Error::Io { .. }
            | eqflow::Error::Resource { .. }
            | eqflow::Error::DimensionMismatch { .. } => e.in_context(&context),
            other => eqflow::Error::Format {
                what: format!("{context}: {other}"),
            },
        }
    })
}

/// Refuses a system (given as `--system name`) whose configurations are not the model's:
/// another N or D. Checked before any sample is drawn. Species may differ: the flow is a
/// normalised density on the same space whatever species it was built for, so its importance
/// weights against the system's energy stay exact.
fn check_system_matches(flow: &Flow, system: &System, name: &str, model: &Path) -> Result<()> {
    let (n, d) = system.energy.shape();
    if (n, d) != (flow.n_particles(), flow.dim()) {
        return Err(eqflow::Error::InvalidArgument {
            what: format!(
                "--system {name} has {n} particles in {d} dimensions, but the model file {} is \
                 for {} particles in {} dimensions",
                model.display(),
                flow.n_particles(),
                flow.dim()
            ),
        });
    }
    Ok(())
}

/// The path of a `--system` argument that is a file (a built-in name is not), for the check
/// that no output overwrites it.
fn system_file(name: &str) -> Option<&Path> {
    (!System::PRESETS.contains(&name)).then(|| Path::new(name))
}

fn run_mcmc(a: McmcArgs) -> Result<()> {
    let system = System::from_name_or_file(&a.system)?;
    let energy = system.energy.build()?;
    let layout = Layout::new(energy.n_particles(), energy.dim())?;
    check_memory("mcmc -n", a.n, layout.len() + 1)?;
    let n_chains = a.chains.min(a.n);
    check_mcmc_steps(a.burnin, a.n.div_ceil(n_chains), a.thin)?;
    let inputs: Vec<(&str, &Path)> = system_file(&a.system)
        .map(|p| ("--system", p))
        .into_iter()
        .collect();
    output::check_output("--out", &a.out, &inputs)?;
    check_configurations_output("--out", &a.out)?;
    let config = McmcConfig {
        n_chains,
        n_burnin: a.burnin,
        n_samples: a.n,
        thin: a.thin,
        seed: a.seed,
        ..mcmc_in_units_of(&system)
    };
    let bar = progress(1000, a.common.quiet, "mcmc");
    let start = Instant::now();
    let out = reference_mcmc::run_with_progress(energy.as_ref(), &config, &|p| {
        bar.set_position(1000 * p.steps_done / p.steps_total.max(1));
    })
    // A chain that cannot start is the system's doing (its lattice at the neighbour distance
    // overlaps, say): the message names it.
    .map_err(|e| e.in_context(&format!("--system {}", a.system)))?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    write_data(
        &a.out,
        &a.out,
        &out.x,
        (layout, system.species()),
        &[("energy", &out.energies)],
    )?;
    let (mean_u, se_u) = mean_and_se(&out.energies);
    let acceptance = out.stats.acceptance();
    if acceptance < MIN_MCMC_ACCEPTANCE {
        warn(&format!(
            "the chains accepted {:.2} % of their moves: the samples are nearly copies of the \
             starting configurations (a longer --burnin lets the step size adapt)",
            100.0 * acceptance
        ));
    }
    let se_text = se_u.map_or("n/a".to_string(), |se| num(se, 4));
    report(
        &a.common,
        json!({"command": "mcmc", "system": a.system, "system_name": system.name,
               "n_samples": a.n, "out": a.out,
               "mean_energy": mean_u, "mean_energy_se_iid": se_u, "acceptance": acceptance,
               "chains": config.n_chains, "seconds": seconds}),
        format!(
            "{} samples of {} written to {}\nmean energy {} (± {se_text} if independent)\n\
             acceptance {acceptance:.3} over {} chains, {seconds:.1} s\n",
            a.n,
            system.name,
            a.out.display(),
            num(mean_u, 4),
            config.n_chains
        ),
    )
}

/// The reference MCMC settings of `system` in its own units: its kT, chains started from a
/// jittered lattice at its neighbour distance, and the default initial step scaled by its
/// length (0.1 is in the benchmark systems' units; a system of r_m = 1e-10 would adapt from it
/// for millions of steps with nothing accepted). The rest are the defaults.
pub(crate) fn mcmc_in_units_of(system: &System) -> McmcConfig {
    let defaults = McmcConfig::default();
    McmcConfig {
        kt: system.kt,
        initial_step: defaults.initial_step * system.length_scale(),
        initial: InitialState::Lattice {
            spacing: system.neighbour_distance(),
            jitter: 0.1,
        },
        ..defaults
    }
}

/// Below this production acceptance `eqflow mcmc` warns that the chains barely moved.
const MIN_MCMC_ACCEPTANCE: f64 = 0.01;

/// Refuses chains longer than [`args::MAX_MCMC_STEPS`]: `burnin` steps, then `per_chain`
/// samples `thin` steps apart.
fn check_mcmc_steps(burnin: usize, per_chain: usize, thin: usize) -> Result<()> {
    let steps = (per_chain as u128) * (thin as u128) + burnin as u128;
    if steps > u128::from(args::MAX_MCMC_STEPS) {
        return Err(eqflow::Error::InvalidArgument {
            what: format!(
                "--burnin {burnin} + {per_chain} samples per chain (-n / --chains) × --thin \
                 {thin} = {steps} Metropolis steps per chain, beyond the limit of {} (10^12)",
                args::MAX_MCMC_STEPS
            ),
        });
    }
    Ok(())
}

fn system_for(name: Option<&str>, file: &model::ModelFile) -> Result<Option<System>> {
    match name {
        Some(n) => System::from_name_or_file(n).map(Some),
        None => Ok(file.system.clone()),
    }
}

fn run_sample(a: SampleArgs) -> Result<()> {
    let (mut flow, file) = load_model(&a.model)?;
    if a.require_certificate {
        flow.set_require_certificate(true);
    }
    if a.allow_uncertified {
        flow.set_require_certificate(false);
    }
    let system = system_for(a.system.as_deref(), &file)?;
    if let (Some(system), Some(name)) = (&system, &a.system) {
        check_system_matches(&flow, system, name, &a.model)?;
    }
    check_memory("sample -n", a.n, flow.layout().len() + 3)?;
    let (log_q_path, log_w_path) = (sidecar(&a.out, "log_q"), sidecar(&a.out, "log_w"));
    let mut inputs = vec![("--model", a.model.as_path())];
    if let Some(path) = a.system.as_deref().and_then(system_file) {
        inputs.push(("--system", path));
    }
    output::check_output("--out", &a.out, &inputs)?;
    check_configurations_output("--out", &a.out)?;
    output::check_output("--out (its log q file)", &log_q_path, &inputs)?;
    if system.is_some() {
        output::check_output("--out (its log w file)", &log_w_path, &inputs)?;
    }
    let start = Instant::now();
    let (x, log_q) = flow.sample(a.seed, a.n)?;
    let seconds = start.elapsed().as_secs_f64();
    let mut props: Vec<(&str, &[f64])> = vec![("log_q", &log_q)];
    let mut log_w = zeros(a.n, "the log weights of the samples")?;
    let mut ess = None;
    // All outputs or none: a failure leaves every target as it was.
    let mut staged = output::Staged::new();
    if let Some(system) = &system {
        let energy = system.energy.build()?;
        let mut u = zeros(a.n, "the energies of the samples")?;
        energies_into(energy.as_ref(), &x, &mut u)?;
        log_weights_into(&u, &log_q, system.kt, &mut log_w)?;
        ess = Some(kish_ess(&log_w));
        staged.write(&log_w_path, |tmp| io::write_values(tmp, &log_w, Dtype::F64))?;
        props.push(("log_w", &log_w));
    }
    staged.write(&a.out, |tmp| {
        write_data(
            &a.out,
            tmp,
            &x,
            (flow.layout(), flow.field().species()),
            &props,
        )
    })?;
    staged.write(&log_q_path, |tmp| io::write_values(tmp, &log_q, Dtype::F64))?;
    staged.commit()?;
    if system.is_none() && log_w_path.exists() {
        // Not removed (eqflow deletes no file it did not write in this run), but named: it
        // holds the weights of earlier samples, not of these.
        warn(&format!(
            "{} is from an earlier run and does not belong to these samples (without a system \
             no log weights are written)",
            log_w_path.display()
        ));
    }
    let certificate = warn_if_uncertified(&flow);
    let ess_text = ess.map_or(String::new(), |e| {
        format!("Kish ESS {e:.1} ({:.2}% of n)\n", 100.0 * e / a.n as f64)
    });
    let log_w_text = if system.is_some() {
        format!(", log w in {}", log_w_path.display())
    } else {
        String::new()
    };
    report(
        &a.common,
        json!({"command": "sample", "n_samples": a.n, "out": a.out, "ess": ess,
               "seconds": seconds, "certificate": certificate}),
        format!(
            "{} samples written to {} (log q in {}{log_w_text}), {seconds:.2} s\n{ess_text}",
            a.n,
            a.out.display(),
            log_q_path.display()
        ),
    )
}

/// What `eqflow eval` measures.
struct Evaluation {
    /// Mean NLL and its standard error over the configurations that could be evaluated (none
    /// from a single configuration).
    nll: f64,
    nll_se: Option<f64>,
    /// Configurations evaluated, and those that could not be (with the first error).
    n_evaluated: usize,
    n_failed: usize,
    first_failure: Option<eqflow::Error>,
    /// Kish ESS of fresh samples against the system's energy, if a system was given.
    ess: Option<f64>,
    /// With a system: log Z, the data's entropy and the KL from data to flow, or why they could
    /// not be estimated.
    free_energy: Option<std::result::Result<FreeEnergy, eqflow::Error>>,
}

/// The target's log Z and what follows from it, in the convention of the NLL: densities on the
/// centre-of-mass-free subspace, with the prior's normaliser.
struct FreeEnergy {
    /// log Z by bridge sampling between the fresh flow samples and the evaluated data.
    log_z: Estimate,
    /// log Z by importance sampling over the fresh flow samples alone.
    log_z_is: Estimate,
    /// The data's entropy S = ⟨U/kT⟩_data + log Z: the floor of the NLL.
    entropy: Estimate,
    /// NLL − S = KL(data‖flow), with the error of the difference (not of the two terms).
    kl: Estimate,
}

/// How many combined standard errors the two log Z estimates may differ by before they are
/// reported as inconsistent: at 3, independent Gaussian errors trip it in 0.3 % of runs.
const LOG_Z_AGREEMENT: f64 = 3.0;

impl FreeEnergy {
    /// Whether bridge and importance sampling agree within [`LOG_Z_AGREEMENT`] combined
    /// standard errors. They estimate the same log Z, so a larger gap means that one of them
    /// is wrong: the flow misses part of the target (importance sampling, biased low), the data
    /// are not independent samples of the target, or too few samples overlap.
    fn log_z_consistent(&self) -> bool {
        let gap = (self.log_z.value - self.log_z_is.value).abs();
        let se = self
            .log_z
            .standard_error
            .hypot(self.log_z_is.standard_error);
        gap <= LOG_Z_AGREEMENT * se
    }
}

/// log Z, entropy and KL from the log weights of fresh flow samples and of the evaluated data
/// configurations (`x_data`, with their flow densities `log_q_data`).
fn free_energy_of(
    energy: &dyn eqflow::Energy,
    kt: f64,
    log_w_flow: &[f64],
    x_data: &[f64],
    log_q_data: &[f64],
) -> Result<FreeEnergy> {
    let n = log_q_data.len();
    let mut u = zeros(n, "the energies of the data")?;
    energies_into(energy, x_data, &mut u)?;
    let mut log_w_data = zeros(n, "the log weights of the data")?;
    log_weights_into(&u, log_q_data, kt, &mut log_w_data)?;
    let bridge = free_energy::bridge_sampling(log_w_flow, &log_w_data)?;
    let mut reduced = zeros(n, "the reduced energies of the data")?;
    for (r, v) in reduced.iter_mut().zip(&u) {
        *r = v / kt;
    }
    Ok(FreeEnergy {
        log_z: bridge.log_z(),
        log_z_is: free_energy::importance_log_z(log_w_flow)?,
        entropy: bridge.entropy(&reduced)?,
        kl: bridge.kl_target_to_flow(),
    })
}

/// Mean NLL with standard error, and (with a system) the Kish ESS of fresh samples. With
/// `strict`, a configuration that cannot be evaluated fails the whole evaluation.
fn evaluate(
    flow: &Flow,
    data: &[f64],
    system: Option<&System>,
    n_samples: usize,
    seed: u64,
    strict: bool,
) -> Result<Evaluation> {
    let len = flow.layout().len();
    let mut nll = reserved(data.len() / len, "the NLL of each configuration")?;
    // The configurations that evaluate, for the energies of the entropy estimate: it must be
    // over the same configurations as the NLL, or NLL − S would not be a KL divergence.
    let mut x_evaluated = reserved(
        if system.is_some() { data.len() } else { 0 },
        "the evaluated configurations",
    )?;
    let (mut n_failed, mut first_failure) = (0, None);
    for (i, outcome) in flow.log_density_each(data)?.into_iter().enumerate() {
        match outcome {
            Ok(log_q) => {
                nll.push(-log_q);
                if system.is_some() {
                    x_evaluated.extend_from_slice(&data[i * len..(i + 1) * len]);
                }
            }
            Err(e) if strict => {
                return Err(eqflow::Error::InvalidArgument {
                    what: format!("configuration {i} cannot be evaluated (--strict): {e}"),
                });
            }
            Err(e) => {
                n_failed += 1;
                first_failure.get_or_insert(e);
            }
        }
    }
    if nll.is_empty() {
        return Err(eqflow::Error::InvalidArgument {
            what: format!(
                "none of the {n_failed} configurations could be evaluated; the first: {}",
                first_failure.map_or(String::new(), |e| e.to_string())
            ),
        });
    }
    let (mean, se) = mean_and_se(&nll);
    if !mean.is_finite() {
        return Err(eqflow::Error::NonFinite {
            what: format!("the mean NLL of {} configurations is {mean}", nll.len()),
        });
    }
    let (ess, free_energy) = match system {
        Some(system) => {
            let energy = system.energy.build()?;
            let (x, log_q) = flow.sample(seed, n_samples)?;
            let mut u = zeros(n_samples, "the energies of the flow samples")?;
            energies_into(energy.as_ref(), &x, &mut u)?;
            let mut log_w = zeros(n_samples, "the log weights of the flow samples")?;
            log_weights_into(&u, &log_q, system.kt, &mut log_w)?;
            let mut log_q_data = zeros(nll.len(), "the log densities of the data")?;
            for (q, v) in log_q_data.iter_mut().zip(&nll) {
                *q = -v;
            }
            // Not fatal: without overlap (or with fewer than two samples) log Z has no estimate,
            // but the NLL and the ESS still stand.
            let fe = free_energy_of(
                energy.as_ref(),
                system.kt,
                &log_w,
                &x_evaluated,
                &log_q_data,
            );
            (Some(kish_ess(&log_w)), Some(fe))
        }
        None => (None, None),
    };
    Ok(Evaluation {
        nll: mean,
        nll_se: se,
        n_evaluated: nll.len(),
        n_failed,
        first_failure,
        ess,
        free_energy,
    })
}

/// The per-configuration certificates of `data` for the report: JSON and a line of text.
fn configuration_certificate_report(flow: &Flow, data: &[f64]) -> Result<(Value, String)> {
    let certs = flow.certify_configurations(data)?;
    let ok: Vec<_> = certs.iter().filter_map(|c| c.as_ref().ok()).collect();
    let certified = ok.iter().filter(|c| c.is_certified()).count();
    let failed = certs.len() - ok.len();
    let worst = ok
        .iter()
        .map(|c| c.max_step_bound)
        .fold(f64::NEG_INFINITY, f64::max);
    let locally: usize = ok.iter().map(|c| c.locally_certified_steps).sum();
    // −∞: no configuration was pulled back.
    let worst_text = if worst == f64::NEG_INFINITY {
        "n/a".to_string()
    } else {
        num(worst, 3)
    };
    Ok((
        json!({"n": certs.len(), "certified": certified, "not_certified": ok.len() - certified,
               "not_pulled_back": failed, "worst_step_bound": worst.is_finite().then_some(worst),
               "steps_certified_locally": locally}),
        format!(
            "per-configuration certificate: {certified} of {} configurations have exactly one \
             preimage ({} not proved, {failed} not pulled back; worst step bound {worst_text}; \
             {locally} steps certified by local bounds only)\n",
            certs.len(),
            ok.len() - certified
        ),
    ))
}

/// For a flow whose densities are those of the discrete RK4 map: a warning on stderr when
/// its steps are not certified one-to-one (strict mode off, or it would have refused), since
/// every log q it reported assumes a single preimage. Returns the certificate's JSON.
fn warn_if_uncertified(flow: &Flow) -> Value {
    if flow.integrator().mode() != eqflow::integrate::DensityMode::ExactDiscrete {
        return json!(null);
    }
    let Some(cert) = flow.certificate() else {
        return json!(null);
    };
    let needed = flow.certified_step_count();
    if let Some(warning) = cert.uncertified_warning(needed, flow.step_search_limit()) {
        warn(&format!(
            "this flow: {warning}; `eqflow eval --certify-each` checks configurations one by \
             one, `--require-certificate` refuses such flows"
        ));
    }
    certificate_report_of(&cert, needed, flow.step_search_limit()).0
}

/// The epoch of a run with the certificate penalty that fitted better than the certified epoch
/// the run kept (by more than 0.01 nats of validation NLL), as `(epoch, validation NLL)`: the
/// price of the certificate, which `eqflow train` states (a run whose later epochs all exceed
/// the bound keeps an early, poorly fitted certified epoch). `None` when the kept epoch is the
/// best or is itself uncertified (no epoch was certified: the certificate report says so).
fn better_uncertified_epoch(summary: &TrainSummary) -> Option<(usize, f64)> {
    let kept = summary.epochs.get(summary.best_epoch)?;
    let kept_nll = kept.validation_nll.filter(|v| v.is_finite())?;
    if kept.certified != Some(true) {
        return None;
    }
    summary
        .epochs
        .iter()
        .filter(|e| e.certified == Some(false))
        .filter_map(|e| Some((e.epoch, e.validation_nll.filter(|v| v.is_finite())?)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .filter(|(_, nll)| *nll < kept_nll - 0.01)
}

/// The step certificate of `flow` for the report: JSON and a line of text.
fn certificate_report(flow: &Flow) -> (serde_json::Value, String) {
    let Some(cert) = flow.certificate() else {
        return (
            json!(null),
            "step certificate: none (adaptive method)\n".to_string(),
        );
    };
    certificate_report_of(&cert, flow.certified_step_count(), flow.step_search_limit())
}

/// [`certificate_report`] from the certificate and the certified step count `needed` found by
/// a search up to `searched` steps.
fn certificate_report_of(
    cert: &eqflow::integrate::StepCertificate,
    needed: Option<usize>,
    searched: usize,
) -> (serde_json::Value, String) {
    let verdict = if cert.is_certified() { "yes" } else { "no" };
    (
        json!({"n_steps": cert.n_steps, "certified": cert.is_certified(),
               "max_step_contraction": cert.max_contraction,
               "worst_step_start": cert.worst_step_start,
               "max_lipschitz_bound": cert.max_lipschitz,
               "max_compression_bound": cert.max_compression,
               "max_increment_lipschitz": cert.max_increment_lipschitz,
               "certified_from_steps": needed, "certified_steps_searched": searched}),
        format!(
            "step certificate ({} RK4 steps): every step a bijection: {verdict} (worst step's \
             bound {} at t = {:.3}, needs < 1; field Lipschitz bound up to {}, compression \
             bound up to {}); certified from {}\n",
            cert.n_steps,
            num(cert.max_contraction, 3),
            cert.worst_step_start,
            num(cert.max_lipschitz, 3),
            num(cert.max_compression, 3),
            eqflow::integrate::needed_steps_text(needed, searched)
        ),
    )
}

/// The log Z, entropy and KL part of the eval report: JSON fields (all null without a system,
/// or with `free_energy_error` when they could not be estimated) and lines of text.
fn free_energy_report(
    fe: Option<&std::result::Result<FreeEnergy, eqflow::Error>>,
    n_samples: usize,
) -> (Value, String) {
    let fields = |fe: Option<&FreeEnergy>, error: Option<String>| {
        let v = |f: fn(&FreeEnergy) -> f64| fe.map(f);
        json!({"log_z": v(|f| f.log_z.value), "log_z_se": v(|f| f.log_z.standard_error),
               "log_z_is": v(|f| f.log_z_is.value),
               "log_z_is_se": v(|f| f.log_z_is.standard_error),
               "entropy": v(|f| f.entropy.value), "entropy_se": v(|f| f.entropy.standard_error),
               "kl_data_flow": v(|f| f.kl.value), "kl_data_flow_se": v(|f| f.kl.standard_error),
               "log_z_consistent": fe.map(FreeEnergy::log_z_consistent),
               "free_energy_error": error})
    };
    match fe {
        None => (fields(None, None), String::new()),
        Some(Err(e)) => (
            fields(None, Some(e.to_string())),
            format!("log Z and entropy: not estimated ({e})\n"),
        ),
        Some(Ok(f)) => (
            fields(Some(f), None),
            format!(
                "log Z (CoM-free, bridge sampling with {n_samples} fresh samples) {}; \
                 importance sampling {}{}\n\
                 entropy of the data S = <U/kT> + log Z {} (the NLL's floor); \
                 NLL − S = KL(data‖flow) {}\n",
                estimate(&f.log_z),
                estimate(&f.log_z_is),
                if f.log_z_consistent() {
                    ""
                } else {
                    " (inconsistent: see the warning)"
                },
                estimate(&f.entropy),
                estimate(&f.kl),
            ),
        ),
    }
}

/// Fresh samples `eqflow eval --system` draws unless `--n-samples` says otherwise.
const EVAL_SAMPLES: usize = 10_000;

fn run_eval(a: EvalArgs) -> Result<()> {
    if a.system.is_none() && (a.n_samples.is_some() || a.seed.is_some()) {
        // Without a system there are no fresh samples: a user who asked for some should hear
        // that the numbers below are not theirs.
        warn(
            "--n-samples and --seed set the fresh samples for the ESS and log Z, which need \
             --system: ignored (only the data's NLL is computed)",
        );
    }
    let n_samples = a.n_samples.unwrap_or(EVAL_SAMPLES);
    let seed = a.seed.unwrap_or(0);
    let (mut flow, _) = load_model(&a.model)?;
    if a.require_certificate {
        flow.set_require_certificate(true);
    }
    if a.allow_uncertified {
        flow.set_require_certificate(false);
    }
    let system = a
        .system
        .as_deref()
        .map(System::from_name_or_file)
        .transpose()?;
    if let (Some(system), Some(name)) = (&system, &a.system) {
        check_system_matches(&flow, system, name, &a.model)?;
        check_memory("eval --n-samples", n_samples, flow.layout().len() + 3)?;
    }
    let data = read_data(&a.data, flow.layout(), flow.field().species())?;
    if data.is_empty() {
        return Err(eqflow::Error::InvalidArgument {
            what: format!(
                "{} holds no configurations: nothing to evaluate",
                a.data.display()
            ),
        });
    }
    let start = Instant::now();
    let e = evaluate(&flow, &data, system.as_ref(), n_samples, seed, a.strict)?;
    let seconds = start.elapsed().as_secs_f64();
    let (mut certificate, mut certificate_text) = certificate_report(&flow);
    if a.certify_each {
        let (each, text) = configuration_certificate_report(&flow, &data)?;
        if let Value::Object(map) = &mut certificate {
            map.insert("each".into(), each);
        }
        certificate_text.push_str(&text);
    }
    let (nll, se, ess, n) = (e.nll, e.nll_se, e.ess, e.n_evaluated);
    let ess_text = ess.map_or(String::new(), |e| {
        format!(
            "Kish ESS of {} fresh samples: {e:.1} ({:.2}%)\n",
            n_samples,
            100.0 * e / n_samples as f64
        )
    });
    let failed_text = match &e.first_failure {
        Some(first) => format!(
            "{} configurations could not be evaluated (not in the NLL); the first: {first}\n",
            e.n_failed
        ),
        None => String::new(),
    };
    if let Some(Ok(f)) = &e.free_energy
        && !f.log_z_consistent()
    {
        warn(&format!(
            "the two estimates of log Z disagree beyond {LOG_Z_AGREEMENT} combined standard \
             errors (bridge sampling {}, importance sampling {}): at least one is wrong; are \
             the data independent samples of this system at its kT, and does the flow cover \
             it? log Z, the entropy and the KL are not to be trusted",
            estimate(&f.log_z),
            estimate(&f.log_z_is)
        ));
    }
    if let Some(Ok(f)) = &e.free_energy
        && f.kl.value < -LOG_Z_AGREEMENT * f.kl.standard_error
    {
        // KL(data‖flow) ≥ 0 always: a clearly negative estimate means the estimate, not the
        // flow, is off (data that are not samples of this system at its kT, say).
        warn(&format!(
            "the estimate of KL(data‖flow) is {}, below 0 by more than {LOG_Z_AGREEMENT} \
             standard errors, which no flow can give: are the data independent samples of this \
             system at its kT? The entropy and the KL are not to be trusted",
            estimate(&f.kl)
        ));
    }
    let (free_energy, free_energy_text) = free_energy_report(e.free_energy.as_ref(), n_samples);
    let mut value = json!({"command": "eval", "n_data": n + e.n_failed, "n_evaluated": n,
               "n_failed": e.n_failed, "nll": nll, "nll_se": se,
               "ess": ess, "ess_fraction": ess.map(|e| e / n_samples as f64),
               "certificate": certificate, "seconds": seconds});
    if let (Value::Object(map), Value::Object(more)) = (&mut value, free_energy) {
        map.extend(more);
    }
    report(
        &a.common,
        value,
        format!(
            "NLL per sample {} (−log q with normaliser, CoM removed, n = {n})\n\
             {failed_text}{ess_text}{free_energy_text}{certificate_text}",
            plus_minus(nll, se, 4)
        ),
    )
}

/// Parses `const:A` or `linear:A0:A1` into a λ schedule: the numbers are λ itself, or with
/// `kl_weights` the KL weights 1 − λ (the deprecated `--kl-weight-schedule`).
fn parse_schedule(flag: &str, text: &str, kl_weights: bool) -> Result<LambdaSchedule> {
    let bad = || eqflow::Error::InvalidArgument {
        what: format!("{flag} '{text}': expected const:A or linear:A0:A1 with numbers in [0, 1]"),
    };
    let parts: Vec<&str> = text.split(':').collect();
    let num = |s: &str| {
        let a = s.parse::<f64>().map_err(|_| bad())?;
        Ok::<f64, eqflow::Error>(if kl_weights { 1.0 - a } else { a })
    };
    let schedule = match parts.as_slice() {
        ["const", a] => LambdaSchedule::Constant(num(a)?),
        ["linear", a0, a1] => LambdaSchedule::Linear {
            start: num(a0)?,
            end: num(a1)?,
        },
        _ => return Err(bad()),
    };
    schedule.validate().map_err(|_| bad())?;
    Ok(schedule)
}

/// The λ schedule of the KL epochs from `--lambda-schedule`, or from the deprecated
/// `--kl-weight-schedule` (with a note on stderr).
fn lambda_schedule(a: &TrainArgs) -> Result<LambdaSchedule> {
    match &a.kl_weight_schedule {
        Some(text) => {
            eprintln!(
                "note: --kl-weight-schedule is deprecated (it takes 1−λ); use --lambda-schedule, \
                 which takes λ like the library and the C API"
            );
            parse_schedule("--kl-weight-schedule", text, true)
        }
        None => parse_schedule(
            "--lambda-schedule",
            a.lambda_schedule
                .as_deref()
                .unwrap_or(PAPER_LAMBDA_SCHEDULE),
            false,
        ),
    }
}

/// `--lipschitz-target`'s default: the increment bound the certificate penalty aims below
/// (docs/field_families.md, "Certified by default": 0.97 and 0.99 fitted no better).
const LIPSCHITZ_TARGET: f64 = 0.9;

/// A λ schedule as `--lambda-schedule` writes it (`const:L`, `linear:A:B`), whichever flag
/// gave it.
fn schedule_text(lambda: LambdaSchedule) -> String {
    match lambda {
        LambdaSchedule::Constant(l) => format!("const:{l}"),
        LambdaSchedule::Linear { start, end } => format!("linear:{start}:{end}"),
    }
}

/// `--n-val`'s default.
const DEFAULT_N_VAL: usize = 1000;

/// Warns when the validation set is not what the flags asked for: `--n-val` larger than what
/// the file holds after the training samples, or `--validate-every` with no validation
/// samples at all.
fn warn_short_validation(a: &TrainArgs, n_val: usize, n_total: usize) {
    if let Some(asked) = a.n_val
        && asked > n_val
    {
        warn(&format!(
            "--n-val {asked}, but {} holds {n_total} samples and --n-train takes {}: \
             validating on {n_val}",
            a.data.display(),
            a.n_train
        ));
    }
    if n_val == 0 && a.validate_every.is_some() {
        warn("--validate-every is given, but there are no validation samples: ignored");
    }
}

/// The paper's λ schedule over the KL epochs, `--lambda-schedule`'s default.
const PAPER_LAMBDA_SCHEDULE: &str = "linear:1:0.5";

/// Warns about `eqflow train` flags that the run will not use (they are still checked): a
/// user who set them should not believe they shaped the model.
fn warn_unused_train_flags(a: &TrainArgs, lambda: LambdaSchedule, lipschitz_penalty: f64) {
    if a.kl_epochs == 0 && (a.lambda_schedule.is_some() || a.kl_weight_schedule.is_some()) {
        warn(
            "--lambda-schedule / --kl-weight-schedule apply to the KL epochs, and --kl-epochs \
             is 0: ignored",
        );
    }
    // λ = 1 is pure maximum likelihood: KL epochs that never go below it train no KL term
    // (the paper's schedule over a single epoch is its first value, 1).
    if a.kl_epochs > 0 && (0..a.kl_epochs).all(|e| lambda.at(e, a.kl_epochs) >= 1.0) {
        warn(&format!(
            "λ is 1 in all {} KL epochs (λ schedule {}), so they train by maximum likelihood \
             alone: no KL term (λ = 1 is pure ML; a schedule going below 1, or more epochs of \
             linear:1:0.5, mixes the KL in)",
            a.kl_epochs,
            schedule_text(lambda)
        ));
    }
    if lipschitz_penalty == 0.0 && a.lipschitz_target.is_some() {
        warn(
            "--lipschitz-target is the certificate penalty's target, and the penalty is 0: ignored",
        );
    }
}

/// Trains `flow` on `train` (validation optional) with one phase of the protocol, showing an
/// epoch progress bar; returns the summary.
fn train_phase(
    flow: &mut Flow,
    config: TrainConfig,
    train: &[f64],
    validation: Option<&[f64]>,
    energy: Option<&dyn eqflow::Energy>,
    quiet: bool,
    label: &str,
) -> Result<TrainSummary> {
    let bar = progress(config.n_epochs as u64, quiet, label);
    let mut trainer = Trainer::new(config, train);
    if let Some(v) = validation {
        trainer = trainer.with_validation(v);
    }
    if let Some(e) = energy {
        trainer = trainer.with_energy(e);
    }
    let summary = trainer.run(flow, |r| {
        bar.set_position(r.epoch as u64 + 1);
        bar.set_message(format!(
            "{label} {}",
            num(r.validation_nll.unwrap_or(r.train_nll), 3)
        ));
        true
    })?;
    bar.finish_and_clear();
    Ok(summary)
}

/// A training phase as recorded in the model file: what was fitted, epoch by epoch, and no
/// wall-clock time, so that one seed gives one file byte for byte (the command's report gives
/// the time).
fn summary_json(s: &TrainSummary) -> Value {
    json!({
        "epochs": s.epochs.iter().map(|e| json!({
            "epoch": e.epoch, "lambda": e.lambda, "train_nll": e.train_nll,
            "train_kl": e.train_kl, "validation_nll": e.validation_nll,
            "certified": e.certified})).collect::<Vec<_>>(),
        "initial_validation_nll": s.initial_validation_nll,
        "best_epoch": s.best_epoch,
        "n_steps": s.n_steps,
    })
}

/// What `eqflow train` does when the flags are not given: the best recipe measured for the
/// system (the built-in one it is, [`System::builtin_equivalent`], so a system file with DW-4's
/// energy trains as `--system dw4` does) and field family.
struct Recipe {
    objective: &'static str,
    rk4_steps: usize,
    /// Epochs and learning rate of the first phase, the recipe's when it runs with the
    /// recipe's objective and step count, else the paper's ([`PAPER_SCHEDULE`]): they were
    /// measured for that pair.
    epochs: usize,
    lr: f64,
}

/// The paper's first phase: 50 epochs at learning rate 5e-3.
const PAPER_SCHEDULE: (usize, f64) = (50, 5e-3);

/// The default recipe (see [`Recipe`]). DW-4 with the kernel field trains the exact-discrete
/// density of a 5-step map (docs/field_families.md, "Training by the exact-discrete
/// likelihood": the 20-step continuous-mode recipe's NLL and ESS at 3.8× the samples per
/// core-second), for 150 epochs at learning rate 1e-2 (session 29, seeds 0–2: held-out NLL
/// 8.60–8.66 and Kish ESS 13.0–14.0 % of 10,000 against the paper's 50 epochs at 5e-3,
/// 8.63–8.71 and 11.6–13.3 %; about a minute on two cores). LJ-13 with the kernel field
/// trains the paper's continuous-mode ML through 20 steps at 5e-3, for 150 epochs (session
/// 29, seeds 0 and 1: held-out NLL 21.23 and 21.21 against 21.34 and 21.32 after 50 epochs;
/// 4–8 minutes on two cores): the exact-discrete loss gave the same NLL at 20 steps for 6× the
/// training time. Elsewhere the paper's protocol (continuous-mode ML through 20 steps, 50
/// epochs at 5e-3) stays: other systems were not measured, and other families have no
/// reverse pass of their Jacobian.
fn default_recipe(system: Option<&str>, field: &str) -> Recipe {
    match (system, field) {
        (Some("dw4"), "kernel") => Recipe {
            objective: "ml-discrete",
            rk4_steps: 5,
            epochs: 150,
            lr: 1e-2,
        },
        (Some("lj13"), "kernel") => Recipe {
            objective: "ml",
            rk4_steps: 20,
            epochs: 150,
            lr: PAPER_SCHEDULE.1,
        },
        _ => Recipe {
            objective: "ml",
            rk4_steps: 20,
            epochs: PAPER_SCHEDULE.0,
            lr: PAPER_SCHEDULE.1,
        },
    }
}

impl Recipe {
    /// The first phase's default epochs and learning rate for `objective` through `rk4_steps`.
    fn schedule(&self, objective: &str, rk4_steps: usize) -> (usize, f64) {
        if objective == self.objective && rk4_steps == self.rk4_steps {
            (self.epochs, self.lr)
        } else {
            PAPER_SCHEDULE
        }
    }
}

/// The certificate penalty `eqflow train` uses when `--lipschitz-penalty` is not given: 1 for
/// the kernel field on DW-4 and LJ-13, where it certifies the trained map at its step count for
/// little fit (DW-4 at 5 steps +0.26–0.34 nats, at 20 steps +0.01; LJ-13 at 20 steps +0.05:
/// docs/field_families.md, "Certified by default"), and 0 elsewhere: the kernel field's bound
/// grows with the number of particles (LJ-55: 27 nats worse after 5 epochs, and still not
/// certified at 20 steps), and the other families' looser bounds would cost most of their fit
/// (coordkernel: +3.9 nats on DW-4).
fn default_lipschitz_penalty(system: Option<&str>, field: &str) -> f64 {
    match (system, field) {
        (Some("dw4" | "lj13"), "kernel") => 1.0,
        _ => 0.0,
    }
}

/// `const` or `cosine:F`.
fn parse_lr_schedule(text: &str) -> Result<LrSchedule> {
    let bad = || eqflow::Error::InvalidArgument {
        what: format!("--lr-schedule '{text}': expected const or cosine:F with F in (0, 1]"),
    };
    match text.split_once(':') {
        None if text == "const" => Ok(LrSchedule::Constant),
        Some(("cosine", f)) => {
            let final_fraction: f64 = f.parse().map_err(|_| bad())?;
            if final_fraction > 0.0 && final_fraction <= 1.0 {
                Ok(LrSchedule::Cosine { final_fraction })
            } else {
                Err(bad())
            }
        }
        _ => Err(bad()),
    }
}

fn run_train(a: TrainArgs) -> Result<()> {
    let system = System::from_name_or_file(&a.system)?;
    let energy = system.energy.build()?;
    let layout = Layout::new(energy.n_particles(), energy.dim())?;
    let mut inputs = vec![("--data", a.data.as_path())];
    if let Some(path) = system_file(&a.system) {
        inputs.push(("--system", path));
    }
    output::check_output("--out", &a.out, &inputs)?;
    check_model_output("--out", &a.out)?;
    // Checked up front, also when no KL epoch will use it: a typo is an error, not ignored.
    let lambda = lambda_schedule(&a)?;
    let data = read_data(&a.data, layout, system.species())?;
    let len = layout.len();
    let n_total = data.len() / len;
    if a.n_train == 0 || a.n_train > n_total {
        return Err(eqflow::Error::InvalidArgument {
            what: format!(
                "--n-train {} but {} holds {n_total} samples",
                a.n_train,
                a.data.display()
            ),
        });
    }
    let train = &data[..a.n_train * len];
    let n_val = a.n_val.unwrap_or(DEFAULT_N_VAL).min(n_total - a.n_train);
    warn_short_validation(&a, n_val, n_total);
    let validation = (n_val > 0).then(|| &data[a.n_train * len..(a.n_train + n_val) * len]);
    let mut flow = system
        .untrained_flow_of(&a.field, a.seed)
        .map_err(|e| e.in_context(&format!("--system {}", a.system)))?;
    // A system whose flow no model file can hold (a prior width out of the file's range, say)
    // is refused now, not after the training.
    model::ModelFile::from_flow(&flow, Some(system.clone()), None)
        .to_flow()
        .map_err(|e| eqflow::Error::InvalidArgument {
            what: format!(
                "--system {}: a model of this system could not be saved ({e}); nothing was \
                 trained",
                a.system
            ),
        })?;
    // The built-in system this one is, whatever it is called: its recipe is the default.
    let builtin = system.builtin_equivalent();
    let recipe = default_recipe(builtin, &a.field);
    let objective_name = a.objective.as_deref().unwrap_or(recipe.objective);
    let (objective, phase_name, label) = match objective_name {
        "ml" => (Objective::MaximumLikelihood, "ml", "ML"),
        "ml-discrete" => (
            Objective::DiscreteLikelihood,
            "ml_discrete",
            "ML (exact-discrete)",
        ),
        "ml-hutchinson" => (
            Objective::HutchinsonLikelihood {
                probe: Probe::Rademacher,
            },
            "ml_hutchinson",
            "ML (Hutchinson)",
        ),
        "ml-hutchinson-gaussian" => (
            Objective::HutchinsonLikelihood {
                probe: Probe::Gaussian,
            },
            "ml_hutchinson_gaussian",
            "ML (Hutchinson, Gaussian)",
        ),
        "fm" => (
            Objective::FlowMatching {
                pairing: Pairing::InOrder,
            },
            "flow_matching",
            "FM",
        ),
        "fm-align" => (
            Objective::FlowMatching {
                pairing: Pairing::Aligned,
            },
            "flow_matching_aligned",
            "FM-align",
        ),
        "fm-ot" => (
            Objective::FlowMatching {
                pairing: Pairing::EquivariantOt,
            },
            "flow_matching_ot",
            "FM-OT",
        ),
        other => {
            return Err(eqflow::Error::InvalidArgument {
                what: format!(
                    "--objective '{other}': expected ml, ml-discrete, ml-hutchinson, \
                     ml-hutchinson-gaussian, fm, fm-align or fm-ot"
                ),
            });
        }
    };
    let likelihood = matches!(
        objective,
        Objective::MaximumLikelihood
            | Objective::DiscreteLikelihood
            | Objective::HutchinsonLikelihood { .. }
    );
    if a.finetune_epochs > 0 && likelihood {
        return Err(eqflow::Error::InvalidArgument {
            what: "--finetune-epochs follows a flow-matching phase (--objective fm, fm-ot or \
                   fm-align)"
                .into(),
        });
    }
    if a.field == "envpair" && (likelihood || a.finetune_epochs > 0 || a.kl_epochs > 0) {
        return Err(eqflow::Error::InvalidArgument {
            what: "--field envpair trains by flow matching only (--objective fm, fm-ot or \
                   fm-align, no --finetune-epochs or --kl-epochs): its divergence has no \
                   reverse pass"
                .into(),
        });
    }
    let rk4_steps = a.rk4_steps.unwrap_or(recipe.rk4_steps);
    let (default_epochs, default_lr) = recipe.schedule(objective_name, rk4_steps);
    let (epochs, lr) = (
        a.epochs.unwrap_or(default_epochs),
        a.lr.unwrap_or(default_lr),
    );
    let lipschitz_penalty = a
        .lipschitz_penalty
        .unwrap_or_else(|| default_lipschitz_penalty(builtin, &a.field));
    warn_unused_train_flags(&a, lambda, lipschitz_penalty);
    let mut config = TrainConfig {
        n_epochs: epochs,
        batch_size: a.batch_size,
        kt: system.kt,
        seed: a.seed,
        objective,
        validate_every: a.validate_every.unwrap_or(1),
        lr_schedule: parse_lr_schedule(&a.lr_schedule)?,
        lipschitz_penalty,
        lipschitz_target: a.lipschitz_target.unwrap_or(LIPSCHITZ_TARGET),
        n_rk4_steps: rk4_steps,
        ..TrainConfig::default()
    };
    config.optimizer.lr = lr;
    // The model samples with the map it was trained as.
    flow.set_integrator(eqflow::integrate::Integrator::new(
        eqflow::integrate::Method::Rk4 { n_steps: rk4_steps },
        eqflow::integrate::DensityMode::ExactDiscrete,
    )?);
    let start = Instant::now();
    let first = train_phase(
        &mut flow,
        config,
        train,
        validation,
        None,
        a.common.quiet,
        label,
    )?;
    let mut phases = vec![json!({"phase": phase_name, "summary": summary_json(&first)})];
    let mut last = first;
    // Later phases: ML at a constant rate, validated every epoch; of the exact-discrete
    // density if the first phase trained it.
    let config = TrainConfig {
        objective: if objective == Objective::DiscreteLikelihood {
            Objective::DiscreteLikelihood
        } else {
            Objective::MaximumLikelihood
        },
        validate_every: 1,
        lr_schedule: LrSchedule::Constant,
        ..config
    };
    // A later phase never leaves a certified flow uncertified when the penalty is on: its
    // kept epoch is certified whenever one of its epochs was, and if none was, the flow goes
    // back to where the phase started (the KL term pulls harder than the penalty at times:
    // DW-4 at 5 steps, 2 of 20 KL epochs certified).
    let certified = |flow: &Flow| flow.certificate().is_some_and(|c| c.is_certified());
    let guard_certified = |flow: &mut Flow, start: (Vec<f64>, bool)| -> Result<bool> {
        let revert = lipschitz_penalty > 0.0 && start.1 && !certified(flow);
        if revert {
            flow.set_params(&start.0)?;
        }
        Ok(revert)
    };
    if a.finetune_epochs > 0 {
        let start_params = (flow.field().params().to_vec(), certified(&flow));
        let finetune = TrainConfig {
            n_epochs: a.finetune_epochs,
            seed: a.seed.wrapping_add(2),
            ..config
        };
        let ml = train_phase(
            &mut flow,
            finetune,
            train,
            validation,
            None,
            a.common.quiet,
            "ML fine-tune",
        )?;
        let reverted = guard_certified(&mut flow, start_params)?;
        phases.push(json!({"phase": "ml", "summary": summary_json(&ml),
                           "reverted_uncertified": reverted}));
        if !reverted {
            last = ml;
        }
    }
    if a.kl_epochs > 0 {
        let start_params = (flow.field().params().to_vec(), certified(&flow));
        let kl_config = TrainConfig {
            n_epochs: a.kl_epochs,
            lambda,
            seed: a.seed.wrapping_add(1),
            ..config
        };
        let kl = train_phase(
            &mut flow,
            kl_config,
            train,
            validation,
            Some(energy.as_ref()),
            a.common.quiet,
            "ML+KL",
        )?;
        let lambda = schedule_text(kl_config.lambda);
        let reverted = guard_certified(&mut flow, start_params)?;
        phases.push(json!({"phase": "ml_kl", "lambda_schedule": lambda,
                           "summary": summary_json(&kl), "reverted_uncertified": reverted}));
        if !reverted {
            last = kl;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let training = json!({"data": a.data, "n_train": a.n_train, "n_validation": n_val,
                          "batch_size": a.batch_size, "lr": lr, "seed": a.seed,
                          "lipschitz_penalty": lipschitz_penalty,
                          "lipschitz_target": config.lipschitz_target,
                          "phases": phases});
    let mut training = training;
    if a.require_certificate {
        flow.check_certified()
            .map_err(|e| eqflow::Error::InvalidArgument {
                what: format!(
                    "--require-certificate: the trained model is not certified, so nothing was \
                 written ({e}); train with --lipschitz-penalty or more --rk4-steps"
                ),
            })?;
    } else if a.allow_uncertified {
        flow.set_require_certificate(false);
    } else {
        // Strict mode, the default: the steps grow with the field (within bounds), so that the
        // model samples.
        match flow.raise_to_certified_steps(rk4_steps.saturating_mul(MAX_STEP_GROWTH)) {
            Ok(Some(needed)) => {
                warn(&format!(
                    "the trained field is not certified at {rk4_steps} RK4 steps: the model \
                     samples with {needed}, the smallest certified count (--allow-uncertified \
                     keeps {rk4_steps}; --lipschitz-penalty trains for a certified field)"
                ));
                training["certified_rk4_steps"] = json!(needed);
            }
            Ok(None) => {}
            Err(e) => warn(&format!(
                "the trained field is not certified at {rk4_steps} RK4 steps, nor at up to \
                 {MAX_STEP_GROWTH} times as many: the model keeps {rk4_steps} and, in strict \
                 mode, refuses to sample and evaluate ({e}); --allow-uncertified saves it with \
                 strict mode off"
            )),
        }
    }
    model::save(&flow, Some(system), Some(training), &a.out)?;
    let best = last.epochs[last.best_epoch].validation_nll;
    let better_uncertified = better_uncertified_epoch(&last);
    if let Some((epoch, nll)) = better_uncertified {
        warn(&format!(
            "kept epoch {} of the last phase, the best certified one (validation NLL {}); epoch \
             {epoch} fitted better ({}) but was not certified at {} RK4 steps: train with \
             a lower --lipschitz-target, a higher --lipschitz-penalty or more --rk4-steps",
            last.best_epoch,
            best.map_or("n/a".to_string(), |v| num(v, 4)),
            num(nll, 4),
            rk4_steps,
        ));
    }
    let (certificate, certificate_text) = certificate_report(&flow);
    report(
        &a.common,
        json!({"command": "train", "out": a.out, "best_validation_nll": best,
               "better_uncertified_epoch": better_uncertified
                   .map(|(epoch, nll)| json!({"epoch": epoch, "validation_nll": nll})),
               "seconds": seconds, "certificate": certificate}),
        format!(
            "trained on {} samples in {seconds:.1} s; best validation NLL {}\nmodel written to {}\n\
             {certificate_text}",
            a.n_train,
            best.map_or("n/a".to_string(), |v| num(v, 4)),
            a.out.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::{
        MAX_POOL_THREADS, PAPER_SCHEDULE, better_uncertified_epoch, default_recipe, mean_and_se,
        num, plus_minus, pool_size, reports_nan, reserved, zeros,
    };

    /// The command's own buffers fail with a resource error naming them where a `vec!` would
    /// abort (here a count whose bytes overflow, refused before the system is asked).
    #[test]
    fn buffers_the_system_cannot_give_are_resource_errors() {
        let error = zeros(usize::MAX / 4, "the energies of the samples").unwrap_err();
        assert!(matches!(error, eqflow::Error::Resource { .. }), "{error:?}");
        assert!(
            error.to_string().contains("the energies of the samples"),
            "{error}"
        );
        assert!(reserved::<u8>(isize::MAX as usize + 1, "bytes").is_err());
        assert_eq!(zeros(3, "three").unwrap(), [0.0; 3]);
    }

    /// DW-4's kernel-field recipe trains 150 epochs at 1e-2 and LJ-13's 150 at 5e-3, through
    /// their own objective and steps only; any other objective, step count, field or system
    /// gets the paper's 50 at 5e-3.
    #[test]
    fn the_recipe_schedule_belongs_to_the_recipe() {
        let dw4 = default_recipe(Some("dw4"), "kernel");
        assert_eq!((dw4.objective, dw4.rk4_steps), ("ml-discrete", 5));
        assert_eq!(dw4.schedule("ml-discrete", 5), (150, 1e-2));
        assert_eq!(dw4.schedule("ml", 5), PAPER_SCHEDULE);
        assert_eq!(dw4.schedule("ml-discrete", 20), PAPER_SCHEDULE);
        let lj13 = default_recipe(Some("lj13"), "kernel");
        assert_eq!((lj13.objective, lj13.rk4_steps), ("ml", 20));
        assert_eq!(lj13.schedule("ml", 20), (150, 5e-3));
        assert_eq!(lj13.schedule("ml", 10), PAPER_SCHEDULE);
        assert_eq!(lj13.schedule("ml-discrete", 20), PAPER_SCHEDULE);
        for (system, field) in [
            (Some("lj55"), "kernel"),
            (Some("lj13"), "kernelcoord"),
            (Some("dw4"), "coordkernel"),
            (None, "kernel"),
        ] {
            let recipe = default_recipe(system, field);
            assert_eq!((recipe.objective, recipe.rk4_steps), ("ml", 20));
            assert_eq!(recipe.schedule("ml", 20), PAPER_SCHEDULE);
        }
        assert_eq!(PAPER_SCHEDULE, (50, 5e-3));
    }

    /// The mean and its standard error exist for values near the largest f64 and keep their
    /// value at ordinary scales.
    #[test]
    fn mean_and_standard_error_do_not_overflow() {
        let (mean, se) = mean_and_se(&[1.0, 2.0, 3.0, 4.0]);
        assert!((mean - 2.5).abs() < 1e-15);
        assert!((se.unwrap() - (5.0_f64 / 12.0).sqrt()).abs() < 1e-15);
        let huge = [7.5e300, -3.0e300, 1.0e308, 2.0e300];
        let (mean, se) = mean_and_se(&huge);
        assert!(
            mean.is_finite() && se.is_some_and(f64::is_finite),
            "{mean} {se:?}"
        );
        // Exact against the same formula at a scale where nothing overflows.
        let small: Vec<f64> = huge.iter().map(|v| v * 1e-300).collect();
        let (m, e) = mean_and_se(&small);
        assert!((mean * 1e-300 - m).abs() <= 1e-12 * m.abs());
        assert!((se.unwrap() * 1e-300 - e.unwrap()).abs() <= 1e-12 * e.unwrap());
        assert_eq!(mean_and_se(&[0.0, 0.0]), (0.0, Some(0.0)));
        assert_eq!(mean_and_se(&[5.0]), (5.0, None));
        assert_eq!(mean_and_se(&[f64::INFINITY, 1.0]).1, None);
    }
    use eqflow::train::{EpochReport, TrainSummary};
    use std::time::Duration;

    /// A NaN result in a report is caught; the user's names that contain "NaN" are not.
    #[test]
    fn a_nan_result_is_caught_and_names_with_nan_in_them_are_not() {
        let value = serde_json::json!({"out": "runs/NaN/BaNaNa_NaN.npy", "system": "NaNo",
                                       "error": "log Z = 3 ± NaN", "n": 3, "list": ["NaN.json"]});
        for text in [
            "3 samples of NaNo written to runs/NaN/BaNaNa_NaN.npy\nmean energy -2.5000\n",
            "model NaN.json: log Z = 3 ± NaN\n",
            "NaNocluster, NaN_samples.npy, model_NaN.json, BaNaNa: 1.5 ± 0.1\n",
        ] {
            assert!(!reports_nan(text, &value), "{text}");
        }
        for text in [
            "mean energy NaN (± n/a if independent)\n",
            "NLL per sample 3.2 ± NaN (n = 3)\n",
            "Kish ESS NaN (NaN% of n)\n",
            "written to runs/NaN/BaNaNa_NaN.npy\nKL -NaN\n",
            "log Z (bridge sampling) NaN; importance sampling 2.0\n",
        ] {
            assert!(reports_nan(text, &value), "{text}");
        }
        assert!(reports_nan("x = NaN", &serde_json::json!({"empty": ""})));
    }

    /// Text reports print any finite number in a few characters: fixed notation in the usual
    /// range, scientific where fixed would print hundreds of digits or only zeros.
    #[test]
    fn numbers_in_reports_stay_short_and_keep_their_value() {
        assert_eq!(num(8.66951, 4), "8.6695");
        assert_eq!(num(-21.3, 2), "-21.30");
        assert_eq!(num(0.0, 4), "0.0000");
        assert_eq!(num(123_456_789.0, 1), "123456789.0");
        assert_eq!(num(1e300, 4), "1.0000e300");
        assert_eq!(num(-1.6e42, 4), "-1.6000e42");
        assert_eq!(num(2.5e-9, 4), "2.5000e-9");
        assert_eq!(num(f64::INFINITY, 4), "inf");
        assert_eq!(num(f64::MIN_POSITIVE, 3), "2.225e-308");
        assert_eq!(plus_minus(1e30, Some(1e-30), 4), "1.0000e30 ± 1.0000e-30");
        for x in [1.5e308, -1.5e308, 1e-320, 7.0, 1e9, 999_999_999.9] {
            let text = num(x, 4);
            assert!(text.len() <= 16, "{x}: {text}");
            let back: f64 = text.parse().unwrap();
            assert!((back - x).abs() <= 1e-4 * x.abs(), "{x}: {text}");
        }
    }

    fn summary(epochs: &[(Option<f64>, Option<bool>)], best_epoch: usize) -> TrainSummary {
        TrainSummary {
            epochs: epochs
                .iter()
                .enumerate()
                .map(|(epoch, &(validation_nll, certified))| EpochReport {
                    epoch,
                    n_epochs: epochs.len(),
                    lambda: 1.0,
                    n_steps: 1,
                    train_nll: 0.0,
                    train_kl: None,
                    train_loss: 0.0,
                    validation_nll,
                    certified,
                    elapsed: Duration::ZERO,
                })
                .collect(),
            initial_validation_nll: None,
            best_epoch,
            stopped_early: false,
            n_steps: epochs.len() as u64,
            wall_time: Duration::ZERO,
        }
    }

    /// The note names the best-fitting uncertified epoch only when the run kept a certified
    /// epoch that fits worse by more than 0.01 nats (the session-23 run that kept epoch 0 at
    /// 13.88 over epoch 48 at 8.59).
    #[test]
    fn a_kept_certified_epoch_is_compared_with_the_best_uncertified_one() {
        let (c, u) = (Some(true), Some(false));
        let kept_early = summary(&[(Some(13.88), c), (Some(9.1), u), (Some(8.59), u)], 0);
        assert_eq!(better_uncertified_epoch(&kept_early), Some((2, 8.59)));
        // Within 0.01 nats: no note; a better certified epoch kept: no note.
        let close = summary(&[(Some(8.60), c), (Some(8.595), u)], 0);
        assert_eq!(better_uncertified_epoch(&close), None);
        let best_kept = summary(&[(Some(9.0), u), (Some(8.5), c)], 1);
        assert_eq!(better_uncertified_epoch(&best_kept), None);
        // No epoch certified (the kept one is not): the certificate report says so instead.
        let none_certified = summary(&[(Some(9.0), u), (Some(8.5), u)], 1);
        assert_eq!(better_uncertified_epoch(&none_certified), None);
        // Without the penalty (`certified` None) or without validation: no note; an
        // unevaluable (+∞) uncertified epoch is never the better one.
        let no_penalty = summary(&[(Some(9.0), None), (Some(8.5), None)], 0);
        assert_eq!(better_uncertified_epoch(&no_penalty), None);
        let no_validation = summary(&[(None, c), (None, u)], 0);
        assert_eq!(better_uncertified_epoch(&no_validation), None);
        let infinite = summary(&[(Some(9.0), c), (Some(f64::INFINITY), u)], 0);
        assert_eq!(better_uncertified_epoch(&infinite), None);
    }

    /// `RAYON_NUM_THREADS=5000` used to start 5000 threads and abort after ~26 s.
    #[test]
    fn the_global_pool_is_capped_at_four_threads_per_core_and_1024() {
        assert_eq!(pool_size(None, 2), (2, None));
        assert_eq!(pool_size(Some(3), 2), (3, None));
        assert_eq!(pool_size(Some(8), 2), (8, None));
        assert_eq!(pool_size(Some(5000), 2), (8, Some(8)));
        assert_eq!(
            pool_size(Some(20_000), 512),
            (MAX_POOL_THREADS, Some(MAX_POOL_THREADS))
        );
        assert_eq!(
            pool_size(None, 2048),
            (MAX_POOL_THREADS, Some(MAX_POOL_THREADS))
        );
        assert_eq!(pool_size(None, 0), (1, None));
    }
}
