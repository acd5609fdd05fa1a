//! What an untrained field is built from, said without naming a family: the request that
//! `System` (a benchmark's preset) and `FlowConfig` (a host's own distance range and counts)
//! make, and that every family turns into its own settings ([`super::FieldFamily::preset_config`]).
//!
//! Keeping the request family-neutral is what lets a new family become selectable from the CLI,
//! the C flow options and system files by its registration line alone.

use crate::error::{Compact, Error, Result};

/// Largest upper end of a [`Preset::Range`] (length units): beyond it the Gaussians of a
/// distance basis stop being meaningful in f64.
pub const MAX_DISTANCE: f64 = 1e6;

/// Largest length scale of a [`Preset::Benchmark`]: the benchmark presets' distances times it
/// stay below [`MAX_DISTANCE`].
pub const MAX_LENGTH_SCALE: f64 = 1e5;

/// The interaction a benchmark preset is tuned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    /// Double-well pair potentials (DW-2, DW-4): distances of order 1–8.
    DoubleWell,
    /// Lennard-Jones clusters in units of σ (LJ-13, LJ-55, species mixtures): distances from
    /// about 0.9 (the repulsive wall) to a few σ.
    LennardJones,
}

/// A family-neutral description of an untrained field's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Preset {
    /// The family's preset for a benchmark `interaction`, every length in it multiplied by
    /// `length_scale` (1 for the benchmark systems).
    Benchmark {
        interaction: Interaction,
        length_scale: f64,
    },
    /// Distance bases spanning `range` (the host's length unit) with `counts` = (distance, time)
    /// basis sizes, `None` for the family's [`super::FieldFamily::default_counts`]; the rest of
    /// the family's double-well preset scaled alike.
    Range {
        range: (f64, f64),
        counts: Option<(usize, usize)>,
    },
}

impl Preset {
    /// Checks what every family needs of a request: a benchmark's length scale finite and in
    /// (0, [`MAX_LENGTH_SCALE`]]; a range with 0 ≤ min < max ≤ [`MAX_DISTANCE`] (by at least
    /// 1e-6) and counts, when given, at least 1. Each family checks its own limits on the counts
    /// on top ([`super::FieldFamily::validate_config`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Preset::Benchmark { length_scale, .. } => {
                if !(length_scale > 0.0 && length_scale <= MAX_LENGTH_SCALE) {
                    return Err(Error::invalid(format!(
                        "preset length scale {} must be in (0, {MAX_LENGTH_SCALE:e}]",
                        Compact(length_scale)
                    )));
                }
            }
            Preset::Range { range, counts } => {
                let (min, max) = range;
                let ok = |v: f64| v.is_finite() && (0.0..=MAX_DISTANCE).contains(&v);
                if !ok(min) || !ok(max) || max - min < 1e-6 {
                    return Err(Error::invalid(format!(
                        "distance range [{min}, {max}] must satisfy 0 ≤ min < max ≤ \
                         {MAX_DISTANCE:e} (by at least 1e-6)"
                    )));
                }
                if let Some((k, r)) = counts
                    && (k == 0 || r == 0)
                {
                    return Err(Error::invalid(format!(
                        "kernel counts ({k}, {r}) must both be at least 1"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The counts of a [`Preset::Range`] request, or `default` when it has none (or for a
    /// benchmark preset, whose counts are the family's own).
    #[must_use]
    pub fn counts_or(&self, default: (usize, usize)) -> (usize, usize) {
        match *self {
            Preset::Range {
                counts: Some(counts),
                ..
            } => counts,
            _ => default,
        }
    }
}
