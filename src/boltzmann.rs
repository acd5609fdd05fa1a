//! Boltzmann-generator weights: `log w(x) = −U(x)/kT − log q(x)`, and the Kish effective sample
//! size of self-normalised importance sampling.

use crate::error::{Error, Result};

/// Writes `log w_i = −U_i/kT − log q_i`. An energy of +∞ gives weight 0 (`log w = −∞`); NaN
/// energies or log-densities, and non-finite log q, are errors.
pub fn log_weights_into(energy: &[f64], log_q: &[f64], kt: f64, log_w: &mut [f64]) -> Result<()> {
    if !(kt.is_finite() && kt > 0.0) {
        return Err(Error::invalid(format!(
            "kT must be positive and finite, got {kt}"
        )));
    }
    if energy.len() != log_q.len() {
        return Err(Error::size("energies", log_q.len(), energy.len()));
    }
    if log_w.len() != log_q.len() {
        return Err(Error::size("log weights", log_q.len(), log_w.len()));
    }
    if let Some(i) = energy
        .iter()
        .position(|u| u.is_nan() || *u == f64::NEG_INFINITY)
    {
        return Err(Error::non_finite(format!("energy[{i}] = {}", energy[i])));
    }
    crate::error::check_finite(log_q, "log q")?;
    for ((w, u), lq) in log_w.iter_mut().zip(energy).zip(log_q) {
        *w = -u / kt - lq;
    }
    Ok(())
}

/// Kish effective sample size `(Σw)²/Σw²` of log weights, computed stably (max-shifted).
/// Returns 0 for an empty slice or when every weight is 0.
#[must_use]
pub fn kish_ess(log_w: &[f64]) -> f64 {
    let max = log_w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return 0.0;
    }
    let (mut s1, mut s2) = (0.0, 0.0);
    for lw in log_w {
        let w = (lw - max).exp();
        s1 += w;
        s2 += w * w;
    }
    s1 * s1 / s2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ess_of_equal_weights_is_n_and_of_one_dominant_weight_is_one() {
        assert_eq!(kish_ess(&[3.0; 10]), 10.0);
        assert!((kish_ess(&[0.0, -1000.0, -1000.0]) - 1.0).abs() < 1e-12);
        // Two weights 1 and e⁻¹: (1 + e⁻¹)²/(1 + e⁻²).
        let e = (-1f64).exp();
        assert!((kish_ess(&[5.0, 4.0]) - (1.0 + e).powi(2) / (1.0 + e * e)).abs() < 1e-12);
        assert_eq!(kish_ess(&[]), 0.0);
        assert_eq!(kish_ess(&[f64::NEG_INFINITY; 3]), 0.0);
        // Shift invariance: huge log weights do not overflow.
        assert_eq!(kish_ess(&[1e300, 1e300]), 2.0);
    }

    #[test]
    fn log_weights_follow_the_sign_convention_and_reject_nan() {
        let mut lw = [0.0; 2];
        log_weights_into(&[2.0, f64::INFINITY], &[-1.0, 0.5], 2.0, &mut lw).unwrap();
        assert_eq!(lw[0], -1.0 + 1.0);
        assert_eq!(lw[1], f64::NEG_INFINITY);
        assert!(log_weights_into(&[f64::NAN, 0.0], &[0.0, 0.0], 1.0, &mut lw).is_err());
        assert!(log_weights_into(&[0.0, 0.0], &[0.0, f64::NAN], 1.0, &mut lw).is_err());
        assert!(log_weights_into(&[0.0, 0.0], &[0.0, 0.0], 0.0, &mut lw).is_err());
        assert!(log_weights_into(&[0.0], &[0.0, 0.0], 1.0, &mut lw).is_err());
    }
}
