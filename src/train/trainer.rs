//! The training loop: epochs of shuffled minibatches, the mixed loss with its λ schedule, AdamW,
//! validation NLL per epoch and the best parameters kept.

use std::time::{Duration, Instant};

use rand::RngExt;

use super::adamw::{AdamW, AdamWConfig};
use super::flow_matching::flow_matching_step;
use super::losses::{KlEnergy, Losses, check_configurations};
use super::schedule::LambdaSchedule;
use crate::boltzmann::Kt;
use crate::energy::{Energy, SerialEnergy};
use crate::error::{Error, Result};
use crate::flow::Flow;
use crate::integrate::{DensityMode, Integrator, Method};
use crate::integrate::{FieldBounds, certificate_penalty, certificate_times, certify_rk4};
use crate::rng::{self, Stream};

/// Settings of a training run. `Default` is the paper's DW-4 protocol (DESIGN.md §2): 50 epochs,
/// batch 64, RK4 with 20 steps, AdamW lr 5e-3 with AMSGrad and weight decay 1e-12, pure ML
/// (λ = 1); for the ML+KL phase set `lambda` to [`LambdaSchedule::paper_ml_kl`] and give an
/// energy (64 prior samples per KL term).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training set (≥ 1).
    pub n_epochs: usize,
    /// Training configurations per optimiser step (≥ 1); the last batch of an epoch may be
    /// smaller.
    pub batch_size: usize,
    /// RK4 steps on [0, 1] of the map the losses differentiate (continuous mode).
    pub n_rk4_steps: usize,
    /// The optimiser.
    pub optimizer: AdamWConfig,
    /// ML weight λ of the mixed loss per epoch.
    pub lambda: LambdaSchedule,
    /// Prior samples per KL term (≥ 1 when some λ < 1).
    pub n_kl_samples: usize,
    /// Temperature of the KL target, in the energy's units (> 0).
    pub kt: f64,
    /// Seeds the shuffles and the KL latents; the whole run is a function of it.
    pub seed: u64,
    /// What the data term minimises: maximum likelihood (the default) or flow matching.
    pub objective: Objective,
    /// Epochs between validation NLLs (≥ 1; the last epoch is always validated). The best
    /// parameters are chosen among validated epochs. Flow matching runs many cheap epochs
    /// whose validation (an integration with divergences per configuration) would dominate.
    pub validate_every: usize,
    /// The learning rate over the run's steps (a multiple of `optimizer.lr`).
    pub lr_schedule: LrSchedule,
    /// Weight of the certificate penalty (≥ 0; 0, the default, is off): each optimiser step
    /// adds `lipschitz_penalty · P` to the loss, with P the [`crate::integrate::certificate_penalty`]
    /// of the field's Lipschitz bounds (the ones the step certificate uses) on the RK4 grid of
    /// `n_rk4_steps`, so that training keeps the field certifiable at the step count it trains.
    /// Needs a family whose bound has a gradient
    /// ([`crate::field::TrainableField::lipschitz_bounds_vjp`]: the kernel and coordkernel fields).
    pub lipschitz_penalty: f64,
    /// The increment bound the penalty aims below, in (0, 1) (default 0.9): a margin under the
    /// certificate's 1.
    pub lipschitz_target: f64,
}

/// The learning rate over a run, as a factor of the optimiser's `lr`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum LrSchedule {
    /// `lr` throughout (the paper's protocol).
    #[default]
    Constant,
    /// Cosine decay from `lr` at the first step to `final_fraction·lr` (in (0, 1]) at the last:
    /// `lr·(f + (1 − f)·(1 + cos(π·s/S))/2)` at step s of S.
    Cosine { final_fraction: f64 },
}

impl LrSchedule {
    /// The factor at step `step` of `total` (0-based).
    #[must_use]
    pub fn factor(&self, step: u64, total: u64) -> f64 {
        match *self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Cosine { final_fraction: f } => {
                let x = step as f64 / total.saturating_sub(1).max(1) as f64;
                f + (1.0 - f) * 0.5 * (1.0 + (std::f64::consts::PI * x.min(1.0)).cos())
            }
        }
    }
}

/// The data term of training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Objective {
    /// Maximum likelihood through the RK4 map, mixed with reverse KL by the λ schedule: the
    /// continuous-mode density (the divergence integrated by RK4), the paper's loss.
    #[default]
    MaximumLikelihood,
    /// Maximum likelihood of the exact-discrete density of the RK4 map of `n_rk4_steps`
    /// steps (the density the model samples and evaluates with; [`super::discrete_ml`]),
    /// mixed with reverse KL like [`Objective::MaximumLikelihood`]. Needs a family with the
    /// Jacobian's reverse pass ([`crate::field::TrainableField::JACOBIAN_REVERSE`]: the kernel,
    /// coordkernel and kernelcoord fields).
    DiscreteLikelihood,
    /// Maximum likelihood through the continuous-mode RK4 map with the divergence replaced by
    /// its Hutchinson estimate `εᵀ(∂v/∂x)ε`, one probe per training configuration and step
    /// (stream [`Stream::TrainingProbe`]): how the paper trained its non-equivariant baseline
    /// (§7.3). The epoch's `train_nll` is the estimate's mean; validation NLLs use the exact
    /// density as for every objective. Alone only (λ = 1), and for a family with the estimate
    /// ([`crate::field::TrainableField::PROBE_DIVERGENCE`]: the dense baseline).
    HutchinsonLikelihood { probe: crate::train::Probe },
    /// Conditional flow matching from the prior: each step draws one prior sample and one
    /// time per data configuration of the batch (stream [`Stream::FlowMatching`]) and regresses
    /// the field on the straight path between them, the pairs chosen by `pairing`. Trains
    /// without integrating; the epoch's `train_nll` is NaN (no likelihood is computed), the
    /// validation NLL is. Alone only (λ = 1): fine-tune with ML or ML+KL in a second run.
    FlowMatching { pairing: Pairing },
}

/// How flow matching pairs prior samples with data configurations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pairing {
    /// In the order drawn: independent coupling.
    #[default]
    InOrder,
    /// Each data configuration aligned to its prior sample by the permutation and rotation or
    /// reflection that bring it closest ([`crate::train::pairing::align_into`]): O(batch)
    /// alignments.
    Aligned,
    /// Equivariant optimal transport (Klein et al. 2023): every data configuration aligned to
    /// every prior sample, then a minimum-cost assignment of the batch
    /// ([`crate::train::pairing::equivariant_ot_pairs_into`]): O(batch²) alignments.
    EquivariantOt,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            n_epochs: 50,
            batch_size: 64,
            n_rk4_steps: 20,
            optimizer: AdamWConfig::default(),
            lambda: LambdaSchedule::default(),
            n_kl_samples: 64,
            kt: 1.0,
            seed: 0,
            objective: Objective::MaximumLikelihood,
            validate_every: 1,
            lr_schedule: LrSchedule::Constant,
            lipschitz_penalty: 0.0,
            lipschitz_target: 0.9,
        }
    }
}

impl TrainConfig {
    /// Checks every setting.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the offending setting.
    pub fn validate(&self) -> Result<()> {
        if self.n_epochs == 0 {
            return Err(Error::invalid("n_epochs must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("batch_size must be at least 1"));
        }
        crate::integrate::check_rk4_steps(self.n_rk4_steps)?;
        self.optimizer.validate()?;
        self.lambda.validate()?;
        if self.lambda.needs_kl() && self.n_kl_samples == 0 {
            return Err(Error::invalid(
                "n_kl_samples must be at least 1 when λ < 1 in some epoch",
            ));
        }
        Kt::new(self.kt)?;
        if self.validate_every == 0 {
            return Err(Error::invalid("validate_every must be at least 1"));
        }
        if let LrSchedule::Cosine { final_fraction } = self.lr_schedule
            && !(final_fraction > 0.0 && final_fraction <= 1.0)
        {
            return Err(Error::invalid(format!(
                "cosine learning-rate final fraction {final_fraction:e} is outside (0, 1]"
            )));
        }
        if !(self.lipschitz_penalty >= 0.0 && self.lipschitz_penalty.is_finite()) {
            return Err(Error::invalid(format!(
                "lipschitz_penalty {:e} must be finite and ≥ 0",
                self.lipschitz_penalty
            )));
        }
        if !(self.lipschitz_target > 0.0 && self.lipschitz_target < 1.0) {
            return Err(Error::invalid(format!(
                "lipschitz_target {:e} is outside (0, 1): the certificate needs increment bounds \
                 below 1",
                self.lipschitz_target
            )));
        }
        if matches!(self.objective, Objective::FlowMatching { .. }) && self.lambda.needs_kl() {
            return Err(Error::invalid(
                "flow matching trains alone (λ = 1); add the KL term in a second, ML+KL run",
            ));
        }
        if matches!(self.objective, Objective::HutchinsonLikelihood { .. })
            && self.lambda.needs_kl()
        {
            return Err(Error::invalid(
                "the Hutchinson likelihood trains alone (λ = 1): its KL term would need the \
                 exact divergence; add it in a second, ML+KL run",
            ));
        }
        Ok(())
    }
}

/// What one epoch did; passed to the progress callback and kept in the [`TrainSummary`].
/// Losses are in nats (per configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    /// 0-based epoch index.
    pub epoch: usize,
    /// Epochs the run was configured for.
    pub n_epochs: usize,
    /// ML weight λ of this epoch.
    pub lambda: f64,
    /// Optimiser steps taken in this epoch.
    pub n_steps: usize,
    /// Mean `−log q` of the training configurations over the epoch's minibatches, each taken
    /// with the parameters of its step (the parameters move during the epoch).
    pub train_nll: f64,
    /// Mean KL loss `u(F(z)) − log|det ∂F/∂z|` over the epoch's steps, if λ < 1.
    pub train_kl: Option<f64>,
    /// Mean mixed loss `λ·NLL + (1 − λ)·KL` over the epoch's steps.
    pub train_loss: f64,
    /// Mean `−log q` of the validation set with the parameters at the end of the epoch, if a
    /// validation set was given and this epoch was validated: the exact density of the RK4 map
    /// with `n_rk4_steps` (exact-discrete), +∞ if that map is not invertible at some
    /// validation configuration or if the field is too strong for the step to be saved
    /// ([`crate::field::FieldFamily::check_usable`]): such an epoch is never kept.
    pub validation_nll: Option<f64>,
    /// With the certificate penalty on ([`TrainConfig::lipschitz_penalty`] > 0): whether the
    /// field at the end of the epoch is certified at `n_rk4_steps`
    /// ([`crate::integrate::certify_rk4`], the certificate a model file reports). A run with the
    /// penalty keeps a certified epoch over any uncertified one. `None` without the penalty.
    pub certified: Option<bool>,
    /// Wall time since training started.
    pub elapsed: Duration,
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// One report per completed epoch.
    pub epochs: Vec<EpochReport>,
    /// Validation NLL of the parameters before training, if a validation set was given.
    pub initial_validation_nll: Option<f64>,
    /// The epoch whose parameters were left in the flow: the lowest validation NLL (earliest
    /// on ties) if a validation set was given, else the last completed epoch. With the
    /// certificate penalty on, certified epochs come first: the best (or last) certified
    /// epoch, and an uncertified one only if no epoch was certified.
    pub best_epoch: usize,
    /// True if the progress callback stopped the run.
    pub stopped_early: bool,
    /// Total optimiser steps.
    pub n_steps: u64,
    /// Wall time of the whole run.
    pub wall_time: Duration,
}

/// A training run over a data set, optionally with a validation set and a KL target energy.
///
/// Deterministic: for a given flow, data, energy and config, the parameters after training are
/// bit-identical for any number of rayon threads (samples of a batch run in parallel, each
/// sequentially, and gradients are reduced in index order; shuffles and KL latents come from
/// streams derived from `config.seed`), and for either kind of KL energy
/// ([`Trainer::with_energy`], [`Trainer::with_serial_energy`]) computing the same numbers.
///
/// The loop itself (optimiser steps, the progress callback, a serial energy) runs on the thread
/// that calls [`Trainer::run`]; only the per-sample work of each batch runs in parallel.
#[derive(Clone, Copy)]
pub struct Trainer<'a> {
    config: TrainConfig,
    train: &'a [f64],
    validation: Option<&'a [f64]>,
    energy: Option<KlEnergy<'a>>,
}

impl std::fmt::Debug for Trainer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("train_len", &self.train.len())
            .field("validation_len", &self.validation.map(<[f64]>::len))
            .field("energy", &self.energy.is_some())
            .finish()
    }
}

impl<'a> Trainer<'a> {
    /// A run on the training configurations `train` (n·N·D, particle-major, any centres of
    /// mass: each is removed before use).
    #[must_use]
    pub fn new(config: TrainConfig, train: &'a [f64]) -> Self {
        Trainer {
            config,
            train,
            validation: None,
            energy: None,
        }
    }

    /// Adds a held-out set, evaluated after every epoch; the best epoch's parameters are kept.
    #[must_use]
    pub fn with_validation(mut self, validation: &'a [f64]) -> Self {
        self.validation = Some(validation);
        self
    }

    /// Adds the target energy of the KL term (needed when some λ < 1); `u = U/config.kt`. The
    /// energies of a KL batch are evaluated in parallel. Replaces an energy set before.
    #[must_use]
    pub fn with_energy(mut self, energy: &'a dyn Energy) -> Self {
        self.energy = Some(KlEnergy::Parallel(energy));
        self
    }

    /// Adds the target energy of the KL term as a [`SerialEnergy`] (a host callback that is not
    /// thread-safe): it is called only on the thread that calls [`Trainer::run`], one sample
    /// at a time, in index order, never concurrently, and the first error it returns stops the
    /// run (the flow unchanged). Training is otherwise as with [`Trainer::with_energy`], bit
    /// for bit. Replaces an energy set before.
    #[must_use]
    pub fn with_serial_energy(mut self, energy: &'a dyn SerialEnergy) -> Self {
        self.energy = Some(KlEnergy::Serial(energy));
        self
    }

    /// Trains `flow` and leaves the best parameters in it (see [`TrainSummary::best_epoch`]).
    /// `progress` is called after every epoch; returning `false` stops the run (the summary
    /// then says `stopped_early`). The flow's integrator is not changed: training
    /// differentiates RK4 with `config.n_rk4_steps` steps, in the continuous mode or, for
    /// [`Objective::DiscreteLikelihood`], the exact-discrete one.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an invalid config, a missing or mismatched energy;
    /// [`Error::DimensionMismatch`] / [`Error::NonFinite`] for malformed data; any error of the
    /// losses during training (e.g. a KL sample with `U = +∞`), or parameters the field
    /// rejects after a step; [`Error::NotInvertible`] if a validation set was given and no
    /// validated epoch's RK4 map is invertible on all of it; [`Error::Resource`] if one step
    /// would hold more than [`crate::alloc::MAX_ALLOCATION_BYTES`] (checked before training) or
    /// the memory is refused. On error the flow is unchanged.
    pub fn run<F>(&self, flow: &mut Flow, mut progress: F) -> Result<TrainSummary>
    where
        F: FnMut(&EpochReport) -> bool,
    {
        let start = Instant::now();
        let c = self.config;
        let (n_train, energy) = self.check_inputs(flow)?;
        let mut run = Run::new(c, flow, n_train, energy)?;
        let initial_validation_nll = self.validation_nll(&run.work)?;
        let mut batches = Minibatches::new(run.n_train, c.batch_size, run.len)?;
        // Grows with the epochs actually run: `n_epochs` is the host's number (up to 2^40 from
        // C), and a progress callback may stop long before it.
        let mut epochs = Vec::new();
        let mut kept = KeptParams::default();
        let mut stopped_early = false;
        for epoch in 0..c.n_epochs {
            let report = self.epoch(&mut run, &mut batches, epoch, start)?;
            kept.record(self.validation.is_some(), &report, &run.params);
            let keep_going = progress(&report);
            epochs.push(report);
            if !keep_going {
                stopped_early = true;
                break;
            }
        }
        if kept.best_nll() == Some(f64::INFINITY) {
            return Err(Error::NotInvertible {
                what: format!(
                    "no validated epoch gives an RK4 map ({} steps) that is invertible on the \
                     whole validation set with a field a model file accepts for that step; the \
                     flow is unchanged (use more RK4 steps or a smaller learning rate)",
                    c.n_rk4_steps
                ),
            });
        }
        let (best_epoch, best_params) = kept.choice();
        flow.set_params(&best_params)?;
        Ok(TrainSummary {
            epochs,
            initial_validation_nll,
            best_epoch,
            stopped_early,
            n_steps: run.step_index,
            wall_time: start.elapsed(),
        })
    }

    /// Checks the config, the data and the energy against `flow` before anything runs;
    /// returns the number of training configurations and the KL energy, if the run has one.
    fn check_inputs(&self, flow: &Flow) -> Result<(usize, Option<KlEnergy<'a>>)> {
        let c = self.config;
        c.validate()?;
        if c.lipschitz_penalty > 0.0 {
            // The family must have the bound's gradient (the default refuses at once).
            let times = certificate_times(c.n_rk4_steps);
            let mut scratch = vec![0.0; flow.field().params().len()];
            let zeros = vec![0.0; times.len()];
            flow.field()
                .lipschitz_bounds_vjp(&times, &zeros, &mut scratch)?;
            flow.field()
                .compression_bounds_vjp(&times, &zeros, &mut scratch)?;
        }
        crate::field::with_family!(flow.field(), f => check_family_trains_by(f, c.objective))?;
        let len = flow.layout().len();
        let n_train = check_configurations(self.train, len, "training set")?;
        if let Some(v) = self.validation {
            check_configurations(v, len, "validation set")?;
        }
        let energy = match (self.energy, c.lambda.needs_kl()) {
            (Some(e), _) => Some(e),
            (None, false) => None,
            (None, true) => {
                return Err(Error::invalid(
                    "the λ schedule has λ < 1, so the KL term needs an energy (with_energy)",
                ));
            }
        };
        if let Some(e) = energy {
            e.check_for(flow.layout(), flow.field().species())?;
        }
        check_step_memory(&c, len, flow.field().params().len(), n_train)?;
        Ok((n_train, energy))
    }

    /// The mean NLL of the validation set under `flow`, if there is one: the exact density of
    /// the fixed-grid RK4 map with the training's step count (exact-discrete mode, what a
    /// sampler with these settings proposes from), **+∞** if that map is not invertible at some
    /// validation configuration.
    ///
    /// Why not the continuous-mode NLL the loss uses: training can drive the field to where the
    /// RK4 map is no longer a bijection, and there the continuous log-determinant keeps
    /// rewarding it (validation NLLs below the data's entropy, measured in BENCHMARKS.md); such
    /// an epoch must never be the one kept.
    fn validation_nll(&self, flow: &Flow) -> Result<Option<f64>> {
        let Some(v) = self.validation else {
            return Ok(None);
        };
        // Parameters a model file would refuse (a field too strong for the step) are never
        // kept: their map is not one a host may run, whatever its NLL.
        if flow
            .field()
            .check_usable(1.0 / self.config.n_rk4_steps as f64)
            .is_err()
        {
            return Ok(Some(f64::INFINITY));
        }
        let mut exact = flow.clone();
        // A measurement of the map, not a proposal: strict mode's refusal has no place here.
        exact.set_require_certificate(false);
        exact.set_integrator(Integrator::new(
            Method::Rk4 {
                n_steps: self.config.n_rk4_steps,
            },
            DensityMode::ExactDiscrete,
        )?);
        let each = super::pool::parallel(|| exact.log_density_each(v))?;
        let mut sum = 0.0;
        for log_q in &each {
            match log_q {
                Ok(log_q) => sum -= log_q,
                Err(Error::NotInvertible { .. } | Error::NotConverged { .. }) => {
                    return Ok(Some(f64::INFINITY));
                }
                Err(e) => return Err(e.clone()),
            }
        }
        Ok(Some(sum / each.len() as f64))
    }

    /// One pass over the shuffled training set, then the validation NLL if this epoch is
    /// validated.
    fn epoch(
        &self,
        run: &mut Run<'a>,
        batches: &mut Minibatches,
        epoch: usize,
        start: Instant,
    ) -> Result<EpochReport> {
        let c = self.config;
        let len = run.len;
        let lambda = c.lambda.at(epoch, c.n_epochs);
        shuffled_order(&mut batches.order, run.n_train, c.seed, epoch as u64);
        let (mut mean_nll, mut mean_kl, mut mean_loss) =
            (Mean::default(), Mean::default(), Mean::default());
        let mut n_steps = 0;
        let (n_train, steps_in_epoch) = (
            run.n_train as f64,
            run.n_train.div_ceil(c.batch_size) as f64,
        );
        for chunk in batches.order.chunks(c.batch_size) {
            let xb = &mut batches.batch[..chunk.len() * len];
            for (dst, &i) in xb.chunks_exact_mut(len).zip(chunk) {
                dst.copy_from_slice(&self.train[i * len..(i + 1) * len]);
            }
            let (nll, kl, loss) = self.step(run, xb, lambda, (epoch, n_steps))?;
            mean_nll.add(nll, chunk.len() as f64, n_train);
            mean_kl.add(kl.unwrap_or(0.0), 1.0, steps_in_epoch);
            mean_loss.add(loss, 1.0, steps_in_epoch);
            n_steps += 1;
        }
        let validate = (epoch + 1).is_multiple_of(c.validate_every) || epoch + 1 == c.n_epochs;
        let validation_nll = if validate {
            self.validation_nll(&run.work)?
        } else {
            None
        };
        // Cheap beside an epoch: the penalty evaluates the same bounds at every step.
        let certified = (c.lipschitz_penalty > 0.0).then(|| {
            let flow = &run.work;
            certify_rk4(&|t| flow.certificate_bounds(t), c.n_rk4_steps).is_certified()
        });
        let has_nll = !matches!(c.objective, Objective::FlowMatching { .. });
        let train_nll = mean_nll.value(n_train);
        let train_kl =
            (run.energy.is_some() && lambda < 1.0).then(|| mean_kl.value(n_steps as f64));
        let train_loss = mean_loss.value(n_steps as f64);
        // Finite step losses have a finite mean (`Mean`); this only guards the last rounding.
        for (what, value) in [
            ("the mean training NLL", has_nll.then_some(train_nll)),
            ("the mean KL loss", train_kl),
            ("the mean training loss", Some(train_loss)),
        ] {
            if let Some(value) = value {
                check_converging(what, value, format_args!("of epoch {epoch}"))?;
            }
        }
        Ok(EpochReport {
            epoch,
            n_epochs: c.n_epochs,
            lambda,
            n_steps,
            train_nll: if has_nll { train_nll } else { f64::NAN },
            train_kl,
            train_loss,
            validation_nll,
            certified,
            elapsed: start.elapsed(),
        })
    }

    /// One optimiser step on the minibatch `xb` with ML weight `lambda`: the data term's
    /// gradient, the KL term's if λ < 1, their mix, AdamW. Returns the data term (the NLL, or
    /// the flow-matching loss), the KL loss, if computed, and the mixed loss.
    ///
    /// A loss or gradient that is not finite (NaN, or ±∞ from a sum that overflowed) is a
    /// diverged run, [`Error::NonFinite`] naming the term, the epoch and the step `at` (both
    /// 0-based), before the optimiser moves: the parameters are unchanged.
    fn step(
        &self,
        run: &mut Run<'a>,
        xb: &[f64],
        lambda: f64,
        (epoch, step): (usize, usize),
    ) -> Result<(f64, Option<f64>, f64)> {
        let c = self.config;
        let at = |what: &str, value: f64| {
            check_converging(what, value, format_args!("at epoch {epoch} step {step}"))
        };
        let losses = Losses::new(&run.work, c.n_rk4_steps)?;
        let g = &mut run.gradients;
        let data = match c.objective {
            Objective::FlowMatching { .. } => "flow-matching loss",
            _ => "NLL",
        };
        let data_gradient = lambda > 0.0
            || matches!(
                c.objective,
                Objective::FlowMatching { .. } | Objective::HutchinsonLikelihood { .. }
            );
        // A loss that cannot be computed in floating point (a batch whose finite per-sample
        // losses overflow when summed, an infinite energy at a sample) says where it happened.
        let diverged = |e: Error| match e {
            Error::NonFinite { what } => Error::non_finite(format!(
                "training diverged at epoch {epoch} step {step}: {what}; the flow is unchanged"
            )),
            e => e,
        };
        let nll = match c.objective {
            Objective::MaximumLikelihood if lambda > 0.0 => losses.ml_gradient_into(xb, &mut g.ml),
            Objective::MaximumLikelihood => losses.nll(xb),
            Objective::DiscreteLikelihood if lambda > 0.0 => {
                losses.discrete_ml_gradient_into(xb, &mut g.ml)
            }
            Objective::DiscreteLikelihood => losses.discrete_nll(xb),
            Objective::HutchinsonLikelihood { probe } => {
                // λ = 1 always (validated): every step has the gradient.
                let first = run.step_index.wrapping_mul(c.batch_size as u64);
                losses.hutchinson_ml_gradient_into(xb, probe, c.seed, first, &mut g.ml)
            }
            Objective::FlowMatching { pairing } => {
                // The "NLL" slot carries the flow-matching loss: the data term.
                flow_matching_step(
                    &losses,
                    &run.work,
                    xb,
                    Stream::FlowMatching(run.step_index),
                    c.seed,
                    pairing,
                    &mut g.ml,
                )
            }
        }
        .map_err(diverged)?;
        let kl = match run.energy {
            Some(energy) if lambda < 1.0 => {
                let first = run.step_index.wrapping_mul(c.n_kl_samples as u64);
                Some(
                    losses
                        .kl_batch(energy, c.kt, c.seed, first, c.n_kl_samples, Some(&mut g.kl))
                        .map_err(diverged)?,
                )
            }
            _ => None,
        };
        at(&format!("the {data}"), nll)?;
        if data_gradient {
            check_gradient(&format!("the {data}"), &g.ml, (epoch, step), &USUAL_CAUSES)?;
        }
        if let Some(kl) = kl {
            at("the KL loss", kl)?;
            check_gradient("the KL loss", &g.kl, (epoch, step), &USUAL_CAUSES)?;
        }
        let loss = match kl {
            Some(k) => lambda * nll + (1.0 - lambda) * k,
            None => nll,
        };
        at("the mixed loss", loss)?;
        g.mix(lambda, kl.is_some());
        check_gradient("the training loss", &g.mixed, (epoch, step), &USUAL_CAUSES)?;
        if c.lipschitz_penalty > 0.0 {
            add_certificate_penalty(&run.work, &c, &mut g.mixed)?;
            // Finite before the penalty, not after: the penalty's weight is the cause.
            check_gradient(
                "the training loss with the certificate penalty",
                &g.mixed,
                (epoch, step),
                // Formatted only on failure: this runs at every optimiser step.
                &format_args!(
                    "the penalty's weight {:e} is too large: lower lipschitz_penalty",
                    c.lipschitz_penalty
                ),
            )?;
        }
        let lr = c.optimizer.lr * c.lr_schedule.factor(run.step_index, run.total_steps);
        run.optimizer.set_lr(lr)?;
        run.optimizer
            .step(&mut run.params, &g.mixed)
            .map_err(|e| match e {
                // A finite gradient too large for the optimiser: it used to make every update
                // 0 (the square overflowed the second moment) and the run reported success.
                Error::NonFinite { what } => {
                    let remedy = match kl {
                        Some(kl) if kl.abs() >= nll.abs() => format!(
                            "the KL loss is {kl:e} at kT = {:e}: kT is far below the energy's \
                             scale; raise kT, or give the energy in units near kT",
                            c.kt
                        ),
                        _ => format!(
                            "the {data} is {nll:e}: check the data's scale, the energy and kT"
                        ),
                    };
                    Error::non_finite(format!(
                        "training diverged at epoch {epoch} step {step}: the training loss's \
                         {what}; the flow is unchanged ({remedy})"
                    ))
                }
                e => e,
            })?;
        // The step itself can leave the usable ranges (a bandwidth whose 1/γ² overflows after
        // a step at a huge learning rate): a diverged run, said as such.
        run.work.set_params(&run.params).map_err(|e| {
            Error::non_finite(format!(
                "training diverged: the optimiser step at epoch {epoch} step {step} (learning \
                 rate {lr:e}) left the field's usable ranges ({e}); the flow is unchanged \
                 (lower the learning rate)"
            ))
        })?;
        run.step_index += 1;
        Ok((nll, kl, loss))
    }
}

/// Fails with [`Error::NonFinite`], "training diverged", if `value` (the loss `what`, `at`
/// where) is NaN or infinite.
fn check_converging(what: &str, value: f64, at: std::fmt::Arguments<'_>) -> Result<()> {
    if value.is_finite() {
        return Ok(());
    }
    Err(Error::non_finite(format!(
        "training diverged: {what} {at} is {value}; the flow is unchanged (check the energy, \
         kT and the learning rate)"
    )))
}

/// What a diverged gradient usually comes from, for [`check_gradient`]'s message.
const USUAL_CAUSES: &str = "check the energy, kT and the learning rate";

/// Fails with [`Error::NonFinite`], "training diverged", at the first component of the
/// gradient of `what` that is NaN or infinite; the message ends with `remedy`.
fn check_gradient(
    what: &str,
    gradient: &[f64],
    (epoch, step): (usize, usize),
    remedy: &dyn std::fmt::Display,
) -> Result<()> {
    match gradient.iter().position(|g| !g.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::non_finite(format!(
            "training diverged: the gradient of {what} at epoch {epoch} step {step} has \
             parameter component {i} = {}; the flow is unchanged ({remedy})",
            gradient[i]
        ))),
    }
}

/// The mean of an epoch's per-step values, which stays finite when they are: the plain
/// weighted sum divided by the total (bit for bit what the reports always gave), unless that
/// sum overflows; then the sum of the terms each divided by the total first.
#[derive(Default)]
struct Mean {
    sum: f64,
    scaled: f64,
}

impl Mean {
    /// Adds `value` with `weight`, of weights summing to `total` over the epoch.
    fn add(&mut self, value: f64, weight: f64, total: f64) {
        self.sum += value * weight;
        self.scaled += value * (weight / total);
    }

    /// The mean, the weights having summed to `total`.
    fn value(&self, total: f64) -> f64 {
        let mean = self.sum / total;
        if mean.is_finite() { mean } else { self.scaled }
    }
}

/// Adds `config.lipschitz_penalty · ∇P` (the certificate penalty of the field's Lipschitz and
/// compression bounds on the training grid) to `gradient`; returns P. On an error `gradient`
/// is unchanged.
fn add_certificate_penalty(flow: &Flow, config: &TrainConfig, gradient: &mut [f64]) -> Result<f64> {
    let times = certificate_times(config.n_rk4_steps);
    let mut value = 0.0;
    flow.field().certificate_bounds_vjp(
        &times,
        &mut |lipschitz, compression| {
            let bounds = FieldBounds {
                lipschitz: lipschitz.to_vec(),
                compression: compression.to_vec(),
            };
            let (p, bar) =
                certificate_penalty(&bounds, config.n_rk4_steps, config.lipschitz_target);
            value = p;
            let weighted = |v: &[f64]| -> Vec<f64> {
                v.iter().map(|b| config.lipschitz_penalty * b).collect()
            };
            (weighted(&bar.lipschitz), weighted(&bar.compression))
        },
        gradient,
    )?;
    Ok(value)
}

/// The state of a run: the flow being trained (a copy: the caller's is set only at the end),
/// its parameters, the optimiser and the gradient buffers.
struct Run<'a> {
    /// The KL target energy (checked against the flow), if any.
    energy: Option<KlEnergy<'a>>,
    /// Configurations in the training set.
    n_train: usize,
    /// Numbers per configuration, N·D.
    len: usize,
    work: Flow,
    params: Vec<f64>,
    optimizer: AdamW,
    gradients: Gradients,
    /// Optimiser steps taken so far; also names the step's random streams.
    step_index: u64,
    /// Optimiser steps of the whole run, for the learning-rate schedule.
    total_steps: u64,
}

impl<'a> Run<'a> {
    /// A run of `config` from `flow`'s parameters, on `n_train` configurations.
    fn new(
        config: TrainConfig,
        flow: &Flow,
        n_train: usize,
        energy: Option<KlEnergy<'a>>,
    ) -> Result<Self> {
        let work = flow.clone();
        let params = work.field().params().to_vec();
        let n_params = params.len();
        let optimizer = AdamW::new(config.optimizer, n_params)?;
        let len = flow.layout().len();
        let steps_per_epoch = n_train.div_ceil(config.batch_size) as u64;
        Ok(Run {
            energy,
            n_train,
            len,
            work,
            params,
            optimizer,
            gradients: Gradients {
                ml: vec![0.0; n_params],
                kl: vec![0.0; n_params],
                mixed: vec![0.0; n_params],
            },
            step_index: 0,
            // Both factors come from the host (up to 2^40 each through C).
            total_steps: steps_per_epoch.saturating_mul(config.n_epochs as u64),
        })
    }
}

/// Fails with [`Error::Resource`] if one optimiser step would hold more than
/// [`crate::alloc::MAX_ALLOCATION_BYTES`] at once, before anything is allocated.
///
/// The counts are the host's (`n_kl_samples` and `batch_size` up to 2^40 through C) and the
/// memory is spread over one buffer per sample, which no single fallible allocation guards:
/// every KL sample keeps its RK4 trajectory (4·n_steps·N·D), its state and cotangent (2·N·D) and
/// its parameter gradient (P); every minibatch sample its parameter gradient (P); equivariant-OT
/// flow matching aligns every pair of the batch (batch²·(N·D + 1)). One thread's RK4 tape is
/// checked where it is allocated (`Rk4Tape::new`).
fn check_step_memory(c: &TrainConfig, len: usize, n_params: usize, n_train: usize) -> Result<()> {
    let (len, p) = (len as u128, n_params as u128);
    let batch = c.batch_size.min(n_train) as u128;
    // Through C every factor is below 2^41 (counts) or 2^22 (N·D, steps) and no product
    // overflows u128; the Rust API takes any usize, so checked: `None` is reported as a need
    // that does not fit a number.
    let kl = if c.lambda.needs_kl() {
        (4 * c.n_rk4_steps as u128)
            .checked_mul(len)
            .and_then(|t| t.checked_add(2 * len + p))
            .and_then(|per| per.checked_mul(c.n_kl_samples as u128))
    } else {
        Some(0)
    };
    let ml = batch.checked_mul(p);
    let ot = match c.objective {
        Objective::FlowMatching {
            pairing: Pairing::EquivariantOt,
        } => batch
            .checked_mul(batch)
            .and_then(|b2| b2.checked_mul(len + 1)),
        _ => Some(0),
    };
    let doubles = kl
        .zip(ml)
        .and_then(|(kl, ml)| kl.checked_add(ml))
        .zip(ot)
        .and_then(|(a, ot)| a.checked_add(ot));
    crate::alloc::check_need(
        doubles.and_then(|d| d.checked_mul(8)),
        &format!(
            "one training step ({} KL samples of {} RK4 steps, batch of {batch}, N·D = {len}, \
             {p} parameters)",
            if c.lambda.needs_kl() {
                c.n_kl_samples
            } else {
                0
            },
            c.n_rk4_steps
        ),
    )
}

/// Refuses, before anything runs, an objective whose reverse pass the family lacks: the
/// Jacobian's for exact-discrete training, the Hutchinson estimate's for Hutchinson training.
/// (A family without the divergence's reverse pass is refused by the tape at the first step.)
fn check_family_trains_by<F: crate::field::TrainableField>(
    _field: &F,
    objective: Objective,
) -> Result<()> {
    match objective {
        Objective::DiscreteLikelihood if !F::JACOBIAN_REVERSE => {
            Err(crate::field::no_jacobian_reverse::<F>())
        }
        Objective::HutchinsonLikelihood { .. } if !F::PROBE_DIVERGENCE => {
            Err(crate::field::no_probe_divergence::<F>())
        }
        _ => Ok(()),
    }
}

/// The gradients of one step: of the data term, of the KL term, and their mix that the
/// optimiser takes.
struct Gradients {
    ml: Vec<f64>,
    kl: Vec<f64>,
    mixed: Vec<f64>,
}

impl Gradients {
    /// `mixed = λ·ml + (1 − λ)·kl`, or `ml` alone without a KL term; `kl` alone at λ = 0
    /// (where `ml` was not computed).
    fn mix(&mut self, lambda: f64, has_kl: bool) {
        if !has_kl {
            self.mixed.copy_from_slice(&self.ml);
        } else if lambda == 0.0 {
            self.mixed.copy_from_slice(&self.kl);
        } else {
            for ((g, a), b) in self.mixed.iter_mut().zip(&self.ml).zip(&self.kl) {
                *g = lambda * a + (1.0 - lambda) * b;
            }
        }
    }
}

/// An epoch's order of the training set and the buffer its minibatches are copied into.
struct Minibatches {
    order: Vec<usize>,
    batch: Vec<f64>,
}

impl Minibatches {
    /// Fails with [`Error::Resource`] if the order or the batch (sizes the caller chose) cannot
    /// be allocated.
    fn new(n_train: usize, batch_size: usize, len: usize) -> Result<Self> {
        Ok(Minibatches {
            order: crate::alloc::with_capacity(Some(n_train), "the training set's order")?,
            batch: crate::alloc::zeros(
                batch_size.min(n_train).checked_mul(len),
                "the minibatch buffer",
            )?,
        })
    }
}

/// Which epoch's parameters the run leaves in the flow: the lowest validation NLL among
/// validated epochs (the earliest on ties); without a validation set, or if the run stopped
/// before its first validation, the last epoch's. Epochs known to be uncertified
/// ([`EpochReport::certified`] `Some(false)`, only with the certificate penalty on) rank after
/// every other epoch: a run that aims at a certified field keeps one whenever it met one.
#[derive(Default)]
struct KeptParams {
    /// Rank, validation NLL, epoch and parameters of the best validated epoch.
    best: Option<(Rank, f64, usize, Vec<f64>)>,
    /// Rank, epoch and parameters of the preferred epoch without validation: the last one
    /// of the best rank.
    last: Option<(Rank, usize, Vec<f64>)>,
}

/// How an epoch ranks before its NLL is compared: certified (or not asked) before
/// uncertified, and both before a map that failed validation (+∞), which is never kept.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Eligible,
    Uncertified,
    Unusable,
}

impl Rank {
    fn of(report: &EpochReport) -> Self {
        if report.validation_nll == Some(f64::INFINITY) {
            Rank::Unusable
        } else if report.certified == Some(false) {
            Rank::Uncertified
        } else {
            Rank::Eligible
        }
    }
}

impl KeptParams {
    /// Records the epoch of `report`, which ended with `params`.
    fn record(&mut self, has_validation: bool, report: &EpochReport, params: &[f64]) {
        let rank = Rank::of(report);
        if has_validation && let Some(v) = report.validation_nll {
            let better = match &self.best {
                Some((r, b, _, _)) => rank < *r || (rank == *r && v < *b),
                None => true,
            };
            if better {
                self.best = Some((rank, v, report.epoch, params.to_vec()));
            }
        }
        if self.last.as_ref().is_none_or(|(r, _, _)| rank <= *r) {
            self.last = Some((rank, report.epoch, params.to_vec()));
        }
    }

    /// The validation NLL of the best validated epoch, if any was validated.
    fn best_nll(&self) -> Option<f64> {
        self.best.as_ref().map(|(_, nll, _, _)| *nll)
    }

    /// The epoch and parameters to keep.
    fn choice(self) -> (usize, Vec<f64>) {
        match (self.best, self.last) {
            (Some((_, _, epoch, params)), _) | (None, Some((_, epoch, params))) => (epoch, params),
            (None, None) => unreachable!("at least one epoch runs"),
        }
    }
}

/// `order` becomes a permutation of `0..n` that depends only on `(seed, epoch)` (Fisher–Yates).
fn shuffled_order(order: &mut Vec<usize>, n: usize, seed: u64, epoch: u64) {
    order.clear();
    order.extend(0..n);
    let mut rng = rng::stream(seed, Stream::Shuffle(epoch));
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffles_are_permutations_fixed_by_seed_and_epoch() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        shuffled_order(&mut a, 100, 7, 3);
        shuffled_order(&mut b, 100, 7, 3);
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        shuffled_order(&mut b, 100, 7, 4);
        assert_ne!(a, b);
        shuffled_order(&mut b, 100, 8, 3);
        assert_ne!(a, b);
    }

    #[test]
    fn default_config_is_the_paper_protocol_and_validation_catches_bad_settings() {
        let c = TrainConfig::default();
        c.validate().unwrap();
        assert_eq!((c.n_epochs, c.batch_size, c.n_rk4_steps), (50, 64, 20));
        assert_eq!(c.optimizer.lr, 5e-3);
        assert!(c.optimizer.amsgrad);
        assert_eq!(c.optimizer.weight_decay, 1e-12);
        assert_eq!(c.n_kl_samples, 64);
        for bad in [
            TrainConfig { n_epochs: 0, ..c },
            TrainConfig { batch_size: 0, ..c },
            TrainConfig {
                n_rk4_steps: 0,
                ..c
            },
            TrainConfig { kt: 0.0, ..c },
            TrainConfig {
                lambda: LambdaSchedule::paper_ml_kl(),
                n_kl_samples: 0,
                ..c
            },
            TrainConfig {
                lambda: LambdaSchedule::Constant(2.0),
                ..c
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_field_too_strong_for_the_step_is_never_a_kept_epoch() {
        // DW-4 configurations on a square of side 4 (every pair near the wells).
        let square = [-2.0, -2.0, 2.0, -2.0, 2.0, 2.0, -2.0, 2.0];
        let data: Vec<f64> = (0..4)
            .flat_map(|i| square.iter().map(move |v| v + 0.01 * f64::from(i)))
            .collect();
        let config = TrainConfig {
            n_epochs: 1,
            ..TrainConfig::default()
        };
        let trainer = Trainer::new(config, &data).with_validation(&data);
        let mut flow = Flow::new(4, 2, 0).unwrap();
        let usable = trainer.validation_nll(&flow).unwrap().unwrap();
        assert!(usable.is_finite());
        // The same field, its time weights scaled by the first power of 2 at which a model
        // file refuses it at 20 steps (step strength above 2.5), while its map is still
        // invertible on the data: only the model limit makes the epoch unkeepable.
        let w = flow
            .field()
            .param_blocks()
            .into_iter()
            .find(|(name, _)| *name == "w")
            .unwrap()
            .1;
        let base = flow.field().params().to_vec();
        let mut factor = 1.0;
        while flow.field().check_usable(1.0 / 20.0).is_ok() {
            factor *= 2.0;
            let mut p = base.clone();
            p[w.clone()].iter_mut().for_each(|v| *v *= factor);
            flow.set_params(&p).unwrap();
        }
        let mut exact = flow.clone();
        exact.set_integrator(
            Integrator::new(Method::Rk4 { n_steps: 20 }, DensityMode::ExactDiscrete).unwrap(),
        );
        exact.set_require_certificate(false); // the uncertified map is the subject
        let each = exact.log_density_each(&data).unwrap();
        assert!(
            each.iter().all(|r| r.as_ref().is_ok_and(|q| q.is_finite())),
            "at ×{factor} the map must still be invertible: {each:?}"
        );
        assert_eq!(trainer.validation_nll(&flow).unwrap(), Some(f64::INFINITY));
    }
    /// A report of `epoch` with `nll` and `certified`, the rest irrelevant to the choice.
    fn report(epoch: usize, nll: Option<f64>, certified: Option<bool>) -> EpochReport {
        EpochReport {
            epoch,
            n_epochs: 10,
            lambda: 1.0,
            n_steps: 1,
            train_nll: 0.0,
            train_kl: None,
            train_loss: 0.0,
            validation_nll: nll,
            certified,
            elapsed: Duration::ZERO,
        }
    }

    /// The epoch `KeptParams` keeps from `(validation NLL, certified)` per epoch.
    fn kept(validation: bool, epochs: &[(Option<f64>, Option<bool>)]) -> usize {
        let mut kept = KeptParams::default();
        for (e, &(nll, cert)) in epochs.iter().enumerate() {
            kept.record(validation, &report(e, nll, cert), &[e as f64]);
        }
        let (epoch, params) = kept.choice();
        assert_eq!(params, [epoch as f64], "the epoch's own parameters");
        epoch
    }

    #[test]
    fn a_certified_epoch_is_kept_over_a_better_uncertified_one() {
        let (yes, no, inf) = (Some(true), Some(false), Some(f64::INFINITY));
        // Without the penalty (no certificates): the lowest NLL, the earliest on ties.
        assert_eq!(
            kept(
                true,
                &[(Some(3.0), None), (Some(2.0), None), (Some(2.0), None)]
            ),
            1
        );
        // With it: the best certified epoch, although an uncertified one fits better.
        assert_eq!(
            kept(true, &[(Some(3.0), yes), (Some(1.0), no), (Some(2.5), yes)]),
            2
        );
        assert_eq!(
            kept(true, &[(Some(1.0), no), (Some(3.0), yes), (Some(2.0), no)]),
            1
        );
        // No certified epoch: the best uncertified one.
        assert_eq!(
            kept(true, &[(Some(3.0), no), (Some(1.0), no), (Some(2.0), no)]),
            1
        );
        // A map that failed validation is never preferred, certified or not.
        assert_eq!(kept(true, &[(inf, yes), (Some(5.0), no)]), 1);
        // Unvalidated epochs do not compete with validated ones.
        assert_eq!(
            kept(true, &[(Some(5.0), no), (None, yes), (Some(6.0), no)]),
            0
        );
        // Without validation: the last epoch, or the last certified one.
        assert_eq!(kept(false, &[(None, None), (None, None), (None, None)]), 2);
        assert_eq!(kept(false, &[(None, yes), (None, yes), (None, no)]), 1);
        assert_eq!(kept(false, &[(None, no), (None, no)]), 1);
        assert_eq!(kept(false, &[(None, no), (None, yes), (None, no)]), 1);
    }
}
