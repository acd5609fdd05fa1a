//! The versioned structs that report a training run to C, `eqf_train_epoch` and
//! `eqf_train_summary`, and the check of the `size` a caller passes in.

use crate::train::{EpochReport, TrainSummary};
use crate::{Error, Result};

/// The report of one training epoch, passed to an `eqf_train_progress_fn`.
///
/// Filled by the library; `size` is `sizeof(eqf_train_epoch)` of the library that filled it.
/// Later versions only append fields, so a program compiled against a newer header reads a
/// field only if it lies within `size` (`offsetof(eqf_train_epoch, field) + 8 <= size`).
/// Losses are in nats per configuration.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(non_camel_case_types)]
pub struct eqf_train_epoch {
    /// Size in bytes of this struct as filled by the library.
    pub size: u64,
    /// 0-based index of the epoch that just finished.
    pub epoch: i64,
    /// Number of epochs the run was configured for.
    pub n_epochs: i64,
    /// Optimiser steps taken in this epoch.
    pub n_steps: i64,
    /// ML weight lambda of this epoch (loss = lambda NLL + (1 - lambda) KL).
    pub lambda: f64,
    /// Mean -log q of the training configurations over the epoch's minibatches (each with the
    /// parameters of its step).
    pub train_nll: f64,
    /// Mean reverse-KL loss u(F(z)) - log|det dF/dz| over the epoch's steps; NaN when the
    /// epoch had no KL term (lambda = 1).
    pub train_kl: f64,
    /// Mean mixed loss over the epoch's steps.
    pub train_loss: f64,
    /// Mean -log q of the validation set with the parameters at the end of the epoch; NaN
    /// without a validation set.
    pub validation_nll: f64,
    /// Wall time since the training call started, in seconds.
    pub elapsed_seconds: f64,
}

/// What a training run did, written by `eqf_flow_train`.
///
/// The caller sets `size = sizeof(eqf_train_summary)` before the call; the library writes only
/// the fields that fit in that many bytes (so a program compiled against an older header is
/// never overrun) and sets `size` to the number of bytes it wrote (so a program compiled against
/// a newer header can tell which fields an older library filled). `size` must be at least 80,
/// the size of the first version of this struct.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(non_camel_case_types)]
pub struct eqf_train_summary {
    /// In: the size of the caller's struct in bytes. Out: the number of bytes written.
    pub size: u64,
    /// Epochs completed (the number of progress reports).
    pub n_epochs: i64,
    /// The 0-based epoch whose parameters are now in the flow: the lowest validation NLL
    /// (earliest on ties) with a validation set, else the last completed epoch.
    pub best_epoch: i64,
    /// Optimiser steps taken in total.
    pub n_steps: i64,
    /// 1 if the progress callback stopped the run early, else 0.
    pub stopped_early: i64,
    /// Validation NLL of the flow before training; NaN without a validation set. Like every
    /// NLL of the run, it is the density of the map training differentiates
    /// (`eqf_train_options_set_rk4_steps`, `..._set_objective`), which differs from the flow's
    /// own `eqf_flow_log_density` when its integrator differs.
    pub initial_validation_nll: f64,
    /// Validation NLL of the best epoch (the parameters now in the flow), through training's
    /// map as above; NaN without a validation set.
    pub best_validation_nll: f64,
    /// Validation NLL after the last completed epoch; NaN without a validation set.
    pub final_validation_nll: f64,
    /// Training NLL of the last completed epoch (see `eqf_train_epoch.train_nll`).
    pub final_train_nll: f64,
    /// Wall time of the training call in seconds.
    pub wall_seconds: f64,
}

/// The size of the first version of `eqf_train_summary`: the smallest `size` a caller can
/// pass. It never changes when fields are appended.
pub(super) const SUMMARY_V1_SIZE: usize = 80;

impl From<&EpochReport> for eqf_train_epoch {
    fn from(report: &EpochReport) -> Self {
        eqf_train_epoch {
            size: size_of::<eqf_train_epoch>() as u64,
            epoch: saturating_i64(report.epoch),
            n_epochs: saturating_i64(report.n_epochs),
            n_steps: saturating_i64(report.n_steps),
            lambda: report.lambda,
            train_nll: report.train_nll,
            train_kl: report.train_kl.unwrap_or(f64::NAN),
            train_loss: report.train_loss,
            validation_nll: report.validation_nll.unwrap_or(f64::NAN),
            elapsed_seconds: report.elapsed.as_secs_f64(),
        }
    }
}

impl From<&TrainSummary> for eqf_train_summary {
    fn from(summary: &TrainSummary) -> Self {
        let last = summary.epochs.last();
        let best = summary.epochs.get(summary.best_epoch);
        eqf_train_summary {
            size: size_of::<eqf_train_summary>() as u64,
            n_epochs: saturating_i64(summary.epochs.len()),
            best_epoch: saturating_i64(summary.best_epoch),
            n_steps: i64::try_from(summary.n_steps).unwrap_or(i64::MAX),
            stopped_early: i64::from(summary.stopped_early),
            initial_validation_nll: summary.initial_validation_nll.unwrap_or(f64::NAN),
            best_validation_nll: best.and_then(|e| e.validation_nll).unwrap_or(f64::NAN),
            final_validation_nll: last.and_then(|e| e.validation_nll).unwrap_or(f64::NAN),
            final_train_nll: last.map_or(f64::NAN, |e| e.train_nll),
            wall_seconds: summary.wall_time.as_secs_f64(),
        }
    }
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Reads and checks the `size` the caller put in its summary struct: the number of bytes the
/// library may write.
///
/// # Safety
/// `summary` must be NULL or point to at least the `size` field of an `eqf_train_summary`.
pub(super) unsafe fn summary_bytes(summary: *const eqf_train_summary) -> Result<Option<usize>> {
    if summary.is_null() {
        return Ok(None);
    }
    if !summary.is_aligned() {
        return Err(Error::invalid(
            "summary is not aligned for eqf_train_summary",
        ));
    }
    // SAFETY: non-NULL and aligned (checked above); the first 8 bytes are the caller's `size`
    // field (this function's contract). Only that field is read: the caller's struct may be
    // shorter than this library's.
    let size = unsafe { summary.cast::<u64>().read() };
    if size < SUMMARY_V1_SIZE as u64 {
        return Err(Error::invalid(format!(
            "summary->size = {size} is smaller than the first version of eqf_train_summary \
             ({SUMMARY_V1_SIZE} bytes); set it to sizeof(eqf_train_summary)"
        )));
    }
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    Ok(Some(size.min(size_of::<eqf_train_summary>())))
}
