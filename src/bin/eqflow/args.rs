//! Parsers of the numbers on the command line: each refuses, at parse time and naming the
//! flag (clap prefixes its message with it), a value that makes no sense or that would run
//! for ever, so no command starts work it cannot finish or reports a number it cannot mean.
//!
//! Counts that size memory (`-n`, `--n-samples`) have no fixed bound here: they are checked
//! against the memory limit once the system's size is known (`check_memory` in `main.rs`).

use eqflow::error::Compact;

/// Most epochs of one training phase (`--epochs`, `--finetune-epochs`, `--kl-epochs`).
pub const MAX_EPOCHS: usize = 1_000_000;

/// Most Metropolis steps one MCMC chain may take (`--burnin` plus the production steps of
/// `-n`, `--chains` and `--thin`): about a day per chain on DW-4.
pub const MAX_MCMC_STEPS: u64 = 1_000_000_000_000;

/// Largest learning rate: beyond it AdamW only diverges (and its weight decay leaves its range).
pub const MAX_LR: f64 = 1e6;

fn count(text: &str) -> Result<usize, String> {
    text.parse::<usize>()
        .map_err(|e| format!("expected a non-negative integer ({e})"))
}

fn number(text: &str) -> Result<f64, String> {
    let x = text
        .parse::<f64>()
        .map_err(|e| format!("expected a number ({e})"))?;
    if x.is_finite() {
        Ok(x)
    } else {
        Err("must be finite".into())
    }
}

/// A file or folder path. Taken as text, so that a name that is not UTF-8 is refused by the
/// parser with a clear message: the JSON reports (`--json`) and the derived file names
/// (`_log_q.npy`) are text, and such a name used to pass here and panic after the work was done.
pub fn path(text: &str) -> Result<std::path::PathBuf, String> {
    if text.is_empty() {
        return Err("the path is empty".into());
    }
    Ok(std::path::PathBuf::from(text))
}

/// A count of at least 1.
pub fn positive_count(text: &str) -> Result<usize, String> {
    match count(text)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// Epochs of the first phase: 1 to [`MAX_EPOCHS`].
pub fn epochs(text: &str) -> Result<usize, String> {
    let n = positive_count(text)?;
    extra_epochs(text).map(|_| n)
}

/// Epochs of an optional phase: 0 (off) to [`MAX_EPOCHS`].
pub fn extra_epochs(text: &str) -> Result<usize, String> {
    let n = count(text)?;
    if n > MAX_EPOCHS {
        return Err(format!("must be at most {MAX_EPOCHS} epochs"));
    }
    Ok(n)
}

/// MCMC steps (burn-in, thinning): 0 to [`MAX_MCMC_STEPS`]; their sum per chain is checked
/// again with the other counts.
pub fn steps(text: &str) -> Result<usize, String> {
    let n = count(text)?;
    if n as u64 > MAX_MCMC_STEPS {
        return Err(format!("must be at most {MAX_MCMC_STEPS} steps"));
    }
    Ok(n)
}

/// Steps between kept samples: 1 to [`MAX_MCMC_STEPS`].
pub fn thin(text: &str) -> Result<usize, String> {
    positive_count(text)?;
    steps(text)
}

/// RK4 steps of a trained map: 1 to the integrator's maximum.
pub fn rk4_steps(text: &str) -> Result<usize, String> {
    let n = count(text)?;
    let max = eqflow::integrate::MAX_RK4_STEPS;
    if n == 0 || n > max {
        return Err(format!("the map's RK4 n_steps must be in 1..={max}"));
    }
    Ok(n)
}

/// Most training iterations of `repro dto-otd` (as [`MAX_EPOCHS`]).
pub const MAX_ITERATIONS: usize = MAX_EPOCHS;

/// Most rounds of `repro metastable` (each trains a flow and runs two MCMC chains).
pub const MAX_ROUNDS: usize = 10_000;

/// Most samples of `repro metastable`'s long LJ-13 chain, all kept in memory (3.1 GB).
pub const MAX_LONG_SAMPLES: usize = 10_000_000;

/// A count from 1 to `max` of `unit`.
fn count_up_to(text: &str, max: usize, unit: &str) -> Result<usize, String> {
    let n = positive_count(text)?;
    if n > max {
        return Err(format!("must be at most {max} {unit}"));
    }
    Ok(n)
}

/// Training iterations: 1 to [`MAX_ITERATIONS`].
pub fn iterations(text: &str) -> Result<usize, String> {
    count_up_to(text, MAX_ITERATIONS, "iterations")
}

/// Experiment rounds: 1 to [`MAX_ROUNDS`].
pub fn rounds(text: &str) -> Result<usize, String> {
    count_up_to(text, MAX_ROUNDS, "rounds")
}

/// Samples of a long chain kept in memory: 1 to [`MAX_LONG_SAMPLES`].
pub fn long_samples(text: &str) -> Result<usize, String> {
    count_up_to(text, MAX_LONG_SAMPLES, "samples")
}

/// Epochs between validations: at least 1.
pub fn validate_every(text: &str) -> Result<usize, String> {
    positive_count(text).map_err(|e| format!("{e} (validate_every: epochs between validations)"))
}

/// A learning rate: positive, finite, at most [`MAX_LR`].
pub fn learning_rate(text: &str) -> Result<f64, String> {
    let x = number(text)?;
    if x > 0.0 && x <= MAX_LR {
        Ok(x)
    } else {
        Err(format!("must be positive and at most {}", Compact(MAX_LR)))
    }
}

/// A finite number ≥ 0.
pub fn non_negative(text: &str) -> Result<f64, String> {
    let x = number(text)?;
    if x >= 0.0 {
        Ok(x)
    } else {
        Err("must be finite and ≥ 0".into())
    }
}

/// A number strictly between 0 and 1.
pub fn open_unit(text: &str) -> Result<f64, String> {
    let x = number(text)?;
    if x > 0.0 && x < 1.0 {
        Ok(x)
    } else {
        Err("must lie strictly between 0 and 1".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_refuse_what_makes_no_sense() {
        assert_eq!(positive_count("3"), Ok(3));
        for bad in ["0", "-1", "1e3", "x", ""] {
            assert!(positive_count(bad).is_err(), "{bad}");
        }
        assert_eq!(extra_epochs("0"), Ok(0));
        assert!(epochs("0").is_err());
        assert!(epochs("1000001").is_err());
        assert!(steps("1000000000000000000").is_err());
        assert_eq!(steps("0"), Ok(0));
        assert!(thin("0").is_err());
        assert!(rk4_steps("0").is_err());
        assert!(rk4_steps("100001").is_err());
        for bad in ["-1", "0", "nan", "inf", "-inf", "1e7"] {
            assert!(learning_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(learning_rate("5e-3"), Ok(5e-3));
        for bad in ["-0.1", "nan", "inf"] {
            assert!(non_negative(bad).is_err(), "{bad}");
        }
        for bad in ["0", "-3", "1000001"] {
            assert!(iterations(bad).is_err(), "{bad}");
        }
        assert_eq!(iterations("1000000"), Ok(1_000_000));
        assert!(rounds("10001").is_err());
        assert!(long_samples("10000001").is_err());
        assert_eq!(long_samples("2000"), Ok(2000));
        for bad in ["0", "1", "1.5", "-0.5", "nan"] {
            assert!(open_unit(bad).is_err(), "{bad}");
        }
    }
}
