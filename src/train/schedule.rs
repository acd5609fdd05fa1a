//! The λ schedule of the mixed loss `λ·ML + (1 − λ)·KL`, one value per epoch.

use crate::error::{Error, Result};

/// How the ML weight λ ∈ [0, 1] of the mixed loss changes over the epochs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LambdaSchedule {
    /// The same λ in every epoch (1 = pure ML, 0 = pure reverse KL).
    Constant(f64),
    /// λ moves linearly from `start` in the first epoch to `end` in the last:
    /// `λ(e) = start + (end − start)·e/(n_epochs − 1)` for epochs `e = 0..n_epochs`
    /// (`start` when there is a single epoch).
    Linear { start: f64, end: f64 },
}

impl Default for LambdaSchedule {
    /// Pure maximum likelihood, the first phase of the paper's protocol.
    fn default() -> Self {
        LambdaSchedule::Constant(1.0)
    }
}

impl LambdaSchedule {
    /// The ML+KL phase of the paper's protocol: λ from 1 down to 0.5.
    #[must_use]
    pub fn paper_ml_kl() -> Self {
        LambdaSchedule::Linear {
            start: 1.0,
            end: 0.5,
        }
    }

    /// λ in epoch `epoch` (0-based) of `n_epochs`.
    #[must_use]
    pub fn at(&self, epoch: usize, n_epochs: usize) -> f64 {
        match *self {
            LambdaSchedule::Constant(l) => l,
            LambdaSchedule::Linear { start, end } => {
                if n_epochs <= 1 {
                    start
                } else {
                    let f = epoch.min(n_epochs - 1) as f64 / (n_epochs - 1) as f64;
                    start + (end - start) * f
                }
            }
        }
    }

    /// True if some epoch has λ < 1, i.e. the KL term (and so an energy) is needed.
    #[must_use]
    pub fn needs_kl(&self) -> bool {
        match *self {
            LambdaSchedule::Constant(l) => l < 1.0,
            LambdaSchedule::Linear { start, end } => start < 1.0 || end < 1.0,
        }
    }

    /// Checks that every λ lies in [0, 1].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] otherwise (NaN included).
    pub fn validate(&self) -> Result<()> {
        let values = match *self {
            LambdaSchedule::Constant(l) => [l, l],
            LambdaSchedule::Linear { start, end } => [start, end],
        };
        if let Some(l) = values.iter().find(|l| !(0.0..=1.0).contains(*l)) {
            return Err(Error::invalid(format!("λ must lie in [0, 1], got {l:e}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_schedule_hits_both_ends_and_moves_evenly() {
        let s = LambdaSchedule::paper_ml_kl();
        assert_eq!(s.at(0, 50), 1.0);
        assert_eq!(s.at(49, 50), 0.5);
        assert!((s.at(1, 50) - (1.0 - 0.5 / 49.0)).abs() < 1e-15);
        let l: Vec<f64> = (0..5).map(|e| s.at(e, 5)).collect();
        assert_eq!(l, vec![1.0, 0.875, 0.75, 0.625, 0.5]);
        assert_eq!(s.at(0, 1), 1.0);
        assert!(s.needs_kl());
        let c = LambdaSchedule::Constant(0.3);
        assert_eq!(c.at(7, 10), 0.3);
        assert!(!LambdaSchedule::default().needs_kl());
    }

    #[test]
    fn lambdas_outside_the_unit_interval_are_rejected() {
        assert!(LambdaSchedule::Constant(1.5).validate().is_err());
        assert!(LambdaSchedule::Constant(f64::NAN).validate().is_err());
        assert!(
            LambdaSchedule::Linear {
                start: 1.0,
                end: -0.1
            }
            .validate()
            .is_err()
        );
        assert!(LambdaSchedule::paper_ml_kl().validate().is_ok());
    }
}
