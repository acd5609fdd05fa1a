//! The Boltzmann rules, once: the temperature, which energies are admissible, the log importance
//! weight, the Metropolis test in log space, relative (self-normalised) weights and the Kish
//! effective sample size (DESIGN.md §1). The free-energy estimates built on these weights (log Z,
//! entropy, ΔF between states) are in [`crate::free_energy`].
//!
//! # Conventions
//!
//! The temperature kT is in the energy units of U, β = 1/kT, and the reduced energy is
//! `u = U/kT`. The log importance weight of a configuration drawn from a flow with log-density
//! `log q` is `log w(x) = −U(x)/kT − log q(x)`.
//!
//! # Admissible energies
//!
//! An energy is a finite number or `+∞`. `U = +∞` (overlapping particles, a hard wall) is a
//! valid energy of weight zero, `log w = −∞`: such a configuration is never accepted and gets
//! no weight. `U = NaN` is a failed evaluation and `U = −∞` an improper distribution; both are
//! errors ([`Error::NonFinite`]), never silently weighted.
//!
//! # Overflow
//!
//! `U/kT` leaves the range of `f64` long before the physics does: at kT = 1e-300 an energy of
//! 1e10 already gives `−U/kT = −∞`, and at the smallest positive kT (5e-324) every energy of
//! magnitude above ~1e-16 does. Two consequences:
//!
//! * a single log weight that is not representable is an error ([`log_weight`]), because
//!   reporting it as ±∞ would claim a weight of 0 or ∞ that the numbers do not support;
//! * the Metropolis test never needs the weights themselves, only their ratio, so
//!   [`log_weight_ratio`] and [`log_boltzmann_ratio`] compute the *difference* directly when the
//!   individual terms overflow, and [`metropolis`] takes the exponential of a non-positive
//!   number only. Downhill moves are accepted and uphill ones rejected at any kT, and no NaN
//!   can arise from admissible inputs.

use crate::error::Compact;
use crate::error::{Error, Result, check_finite};

/// A temperature kT, in the energy units of U: positive and finite, checked once on
/// construction so that no other code needs to check it again.
///
/// Tiny temperatures are valid: β = 1/kT is then `+∞` for kT below about 5.6e-309, and the
/// functions of this module stay correct (see the module docs on overflow).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Kt(f64);

impl Kt {
    /// Checks that `kt` is positive and finite.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] ("kT must be positive and finite, got …") otherwise.
    pub fn new(kt: f64) -> Result<Kt> {
        if kt.is_finite() && kt > 0.0 {
            Ok(Kt(kt))
        } else {
            Err(Error::invalid(format!(
                "kT must be positive and finite, got {}",
                Compact(kt)
            )))
        }
    }

    /// kT in the energy units of U.
    #[must_use]
    pub fn get(self) -> f64 {
        self.0
    }

    /// β = 1/kT; `+∞` when kT is below about 5.6e-309.
    #[must_use]
    pub fn beta(self) -> f64 {
        1.0 / self.0
    }
}

impl TryFrom<f64> for Kt {
    type Error = Error;

    fn try_from(kt: f64) -> Result<Kt> {
        Kt::new(kt)
    }
}

/// Whether `u` is an admissible energy: finite or `+∞` (weight zero); NaN and `−∞` are not.
#[must_use]
pub fn is_admissible_energy(u: f64) -> bool {
    !u.is_nan() && u != f64::NEG_INFINITY
}

/// Fails with [`Error::NonFinite`] ("{what}: U = …") unless `u` is an admissible energy.
///
/// # Errors
///
/// [`Error::NonFinite`] for NaN or `−∞`.
pub fn check_energy(u: f64, what: &str) -> Result<()> {
    if is_admissible_energy(u) {
        Ok(())
    } else {
        Err(Error::non_finite(format!("{what}: U = {u}")))
    }
}

/// `−U/kT − log q` in plain IEEE arithmetic: the one place the formula is written. It is `−∞`
/// for `U = +∞`, and also `±∞` when a finite term overflows, which the callers must tell apart.
fn log_weight_unchecked(kt: Kt, u: f64, log_q: f64) -> f64 {
    -u / kt.0 - log_q
}

/// The log importance weight `log w = −U/kT − log q` of one configuration; `−∞` (weight zero)
/// for `U = +∞`.
///
/// # Errors
///
/// [`Error::NonFinite`] if `U` is NaN or `−∞`, if `log q` is not finite, or if the weight of a
/// finite energy is not representable (`−U/kT − log q` overflows, e.g. `U = −1e308` at
/// kT = 1e-10): returning `±∞` there would claim a weight of ∞ or exactly 0.
pub fn log_weight(kt: Kt, u: f64, log_q: f64) -> Result<f64> {
    check_energy(u, "energy")?;
    if !log_q.is_finite() {
        return Err(Error::non_finite(format!("log q = {log_q}")));
    }
    let log_w = log_weight_unchecked(kt, u, log_q);
    if log_w.is_finite() || u == f64::INFINITY {
        Ok(log_w)
    } else {
        Err(Error::non_finite(format!(
            "log weight −U/kT − log q = {log_w} is not representable (U = {}, kT = {}, \
             log q = {}); use a larger kT or shift the energy",
            Compact(u),
            Compact(kt.0),
            Compact(log_q)
        )))
    }
}

/// Writes `log w_i = −U_i/kT − log q_i` ([`log_weight`]). An energy of +∞ gives weight 0
/// (`log w = −∞`).
///
/// # Errors
///
/// [`Error::InvalidArgument`] if `kt` is not positive and finite; [`Error::DimensionMismatch`]
/// for slices of different lengths; [`Error::NonFinite`] for a NaN or `−∞` energy, a
/// non-finite log q, or a log weight that is not representable. Inputs are checked before
/// anything is written; only the last error leaves `log_w` partly written.
pub fn log_weights_into(energy: &[f64], log_q: &[f64], kt: f64, log_w: &mut [f64]) -> Result<()> {
    let kt = Kt::new(kt)?;
    if energy.len() != log_q.len() {
        return Err(Error::size("energies", log_q.len(), energy.len()));
    }
    if log_w.len() != log_q.len() {
        return Err(Error::size("log weights", log_q.len(), log_w.len()));
    }
    if let Some(i) = energy.iter().position(|u| !is_admissible_energy(*u)) {
        return Err(Error::non_finite(format!("energy[{i}] = {}", energy[i])));
    }
    check_finite(log_q, "log q")?;
    for (i, ((w, u), lq)) in log_w.iter_mut().zip(energy).zip(log_q).enumerate() {
        *w = log_weight(kt, *u, *lq).map_err(|e| match e {
            Error::NonFinite { what } => Error::non_finite(format!("sample {i}: {what}")),
            other => other,
        })?;
    }
    Ok(())
}

/// The log Metropolis–Hastings ratio `log w(x') − log w(x)` of an independence proposal, from
/// the energies and log-densities of the current state `x` and the proposal `x'`.
///
/// Energies must be admissible ([`check_energy`]) and log-densities finite. Then the result is
/// never NaN, and:
///
/// * `U(x') = +∞`: `−∞` (a proposal of weight zero is never accepted, whatever the current
///   state, including a current state of weight zero: the chain then stays where it is);
/// * otherwise `U(x) = +∞`: `+∞`. The current state has weight zero (`log w(x) = −∞`), the
///   ratio w(x')/w(x) is infinite and any proposal of finite energy is accepted with
///   certainty. This is the only way `log w(x) = −∞` arises here; a finite energy whose `U/kT`
///   overflows is handled by the next case;
/// * both log weights representable: their difference, in the exact arithmetic the move has
///   always used, so that its decisions stay bit for bit what they were (it overflows to ±∞
///   with the right sign when the weights are far apart; its absolute error is about one ulp
///   of the larger log weight, so at kT = 1e-10 and U ≈ 1e10 a log q difference of order 1 is
///   lost in rounding, as it is in the weights themselves);
/// * otherwise (tiny kT, huge energies): `−(U' − U)/kT − (log q' − log q)` computed from halved
///   differences, which cannot overflow before the division, so the sign is always right: a
///   downhill move at kT = 5e-324 gives `+∞`, an uphill one `−∞`, equal energies leave the
///   decision to `log q`.
#[must_use]
pub fn log_weight_ratio(
    kt: Kt,
    u_current: f64,
    log_q_current: f64,
    u_proposed: f64,
    log_q_proposed: f64,
) -> f64 {
    if u_proposed == f64::INFINITY {
        return f64::NEG_INFINITY;
    }
    if u_current == f64::INFINITY {
        return f64::INFINITY;
    }
    let log_w_proposed = log_weight_unchecked(kt, u_proposed, log_q_proposed);
    let log_w_current = log_weight_unchecked(kt, u_current, log_q_current);
    if log_w_proposed.is_finite() && log_w_current.is_finite() {
        return log_w_proposed - log_w_current;
    }
    // Halves of finite numbers never overflow when subtracted; the division may, to ±∞ of the
    // right sign, and the finite log q term cannot turn that into NaN.
    let half_delta_u = 0.5 * u_proposed - 0.5 * u_current;
    let half_delta_log_q = 0.5 * log_q_proposed - 0.5 * log_q_current;
    2.0 * (-(half_delta_u / kt.0) - half_delta_log_q)
}

/// The log Metropolis ratio `−(U' − U)/kT` of a symmetric proposal (random-walk Metropolis).
///
/// Energies must be admissible. `U' = +∞` gives `−∞` (never accepted); otherwise `U = +∞`
/// gives `+∞`; equal energies give 0 even when β = 1/kT overflows to ∞ (no `0·∞`). Otherwise it
/// is `−(U' − U)·β`, whose overflow to ±∞ keeps the right sign. Never NaN.
#[must_use]
pub fn log_boltzmann_ratio(kt: Kt, u_current: f64, u_proposed: f64) -> f64 {
    if u_proposed == f64::INFINITY {
        return f64::NEG_INFINITY;
    }
    if u_current == f64::INFINITY {
        return f64::INFINITY;
    }
    let delta_u = u_proposed - u_current;
    if delta_u == 0.0 {
        return 0.0;
    }
    -delta_u * kt.beta()
}

/// The outcome of a Metropolis test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metropolis {
    /// Whether the proposal is accepted.
    pub accepted: bool,
    /// The acceptance probability `min(1, exp(log α))`, in [0, 1].
    pub probability: f64,
}

/// The Metropolis test in log space: accepts with probability `min(1, exp(log_acceptance))`,
/// given a uniform variate `uniform` in [0, 1).
///
/// The exponential is taken of `min(log α, 0)` only, so it cannot overflow, and its underflow to
/// 0 for very negative `log α` is the right decision. The test is `uniform < min(1, exp(log α))`
/// rather than `log(uniform) < log α` so that the decisions are bit-for-bit those eqflow has
/// always made. A NaN `log α` (which the ratio functions of this module never produce) rejects.
#[must_use]
pub fn metropolis(log_acceptance: f64, uniform: f64) -> Metropolis {
    let probability = if log_acceptance >= 0.0 {
        1.0
    } else if log_acceptance < 0.0 {
        log_acceptance.exp()
    } else {
        0.0
    };
    Metropolis {
        accepted: uniform < probability,
        probability,
    }
}

/// Fails with [`Error::NonFinite`] ("log_w\[i\] = …") if a log weight is NaN or `+∞`; `−∞`
/// (weight zero) is a valid log weight.
///
/// # Errors
///
/// [`Error::NonFinite`] for the first NaN or `+∞`.
pub fn check_log_weights(log_w: &[f64]) -> Result<()> {
    match log_w.iter().position(|w| w.is_nan() || *w == f64::INFINITY) {
        None => Ok(()),
        Some(i) => Err(Error::non_finite(format!("log_w[{i}] = {}", log_w[i]))),
    }
}

/// Writes the weights relative to the largest, `w_i = exp(log w_i − max_j log w_j)` in [0, 1],
/// for self-normalised estimates `Σ w O / Σ w` (which do not depend on the scale of w). Weights
/// that are all zero (every `log w = −∞`), or an empty slice, give zeros.
///
/// # Errors
///
/// [`Error::DimensionMismatch`] if the lengths differ; [`Error::NonFinite`] for a NaN or `+∞`
/// log weight.
pub fn relative_weights_into(log_w: &[f64], weights: &mut [f64]) -> Result<()> {
    if weights.len() != log_w.len() {
        return Err(Error::size("weights", log_w.len(), weights.len()));
    }
    check_log_weights(log_w)?;
    let max = log_w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        weights.fill(0.0);
        return Ok(());
    }
    for (w, lw) in weights.iter_mut().zip(log_w) {
        *w = (lw - max).exp();
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

    fn kt(value: f64) -> Kt {
        Kt::new(value).unwrap()
    }

    #[test]
    fn kt_must_be_positive_and_finite() {
        for bad in [0.0, -0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = Kt::new(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument { .. }), "{bad}");
            assert!(
                err.to_string()
                    .contains("kT must be positive and finite, got"),
                "{err}"
            );
        }
        for good in [5e-324, 1e-300, 1.0, f64::MAX] {
            assert_eq!(Kt::new(good).unwrap().get(), good);
        }
        assert_eq!(kt(5e-324).beta(), f64::INFINITY);
        assert_eq!(kt(0.5).beta(), 2.0);
        assert_eq!(Kt::try_from(2.0), Ok(kt(2.0)));
    }

    #[test]
    fn infinity_is_the_only_admissible_non_finite_energy() {
        assert!(is_admissible_energy(f64::INFINITY));
        assert!(is_admissible_energy(-f64::MAX));
        assert!(!is_admissible_energy(f64::NAN));
        assert!(!is_admissible_energy(f64::NEG_INFINITY));
        assert!(check_energy(f64::INFINITY, "U").is_ok());
        assert!(matches!(
            check_energy(f64::NAN, "U"),
            Err(Error::NonFinite { .. })
        ));
    }

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
        assert_eq!(log_weight(kt(2.0), 2.0, -1.0), Ok(0.0));
        assert_eq!(
            log_weight(kt(1e-300), f64::INFINITY, 3.0),
            Ok(f64::NEG_INFINITY)
        );
    }

    #[test]
    fn unrepresentable_log_weights_are_errors_not_infinities() {
        let mut lw = [0.0; 2];
        // −U/kT = +1e318: not a weight of +∞.
        let err = log_weights_into(&[1.0, -1e308], &[0.0, 0.0], 1e-10, &mut lw).unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }), "{err}");
        assert!(err.to_string().contains("sample 1"), "{err}");
        assert!(err.to_string().contains("not representable"), "{err}");
        // −U/kT = −1e318 from a finite energy: not a weight of exactly 0 either.
        assert!(log_weight(kt(1e-10), 1e308, 0.0).is_err());
        // The sum overflows although each term is finite.
        assert!(log_weight(kt(1.0), -f64::MAX, -f64::MAX).is_err());
    }

    #[test]
    fn the_weight_ratio_is_the_plain_difference_for_ordinary_inputs() {
        let (u, lq, u2, lq2) = (1.25, -3.5, 0.75, 2.0);
        let t = kt(0.7);
        let expected = (-u2 / 0.7 - lq2) - (-u / 0.7 - lq);
        assert_eq!(
            log_weight_ratio(t, u, lq, u2, lq2).to_bits(),
            expected.to_bits()
        );
        assert_eq!(
            log_boltzmann_ratio(t, u, u2).to_bits(),
            (-(u2 - u) * (1.0 / 0.7)).to_bits()
        );
    }

    #[test]
    fn downhill_is_accepted_and_uphill_rejected_at_any_temperature() {
        for t in [1e-10, 1e-300, 3e-308, 5e-324] {
            let t = kt(t);
            for (u, u2) in [
                (1e10, 1e9),
                (-1e9, -1e10),
                (1.0, 0.5),
                (1e300, -1e300),
                (f64::MAX, -f64::MAX),
            ] {
                for (lq, lq2) in [(0.0, 0.0), (-50.0, 80.0), (80.0, -50.0)] {
                    let down = log_weight_ratio(t, u, lq, u2, lq2);
                    let up = log_weight_ratio(t, u2, lq2, u, lq);
                    assert!(down > 1e9, "kT {t:?}: {u} -> {u2}: {down}");
                    assert!(up < -1e9, "kT {t:?}: {u2} -> {u}: {up}");
                    assert!(metropolis(down, 0.999_999).accepted);
                    assert_eq!(metropolis(up, 0.0).probability, 0.0);
                    assert!(!metropolis(up, 0.0).accepted);
                }
                assert!(log_boltzmann_ratio(t, u, u2) > 1e9);
                assert!(log_boltzmann_ratio(t, u2, u) < -1e9);
            }
            // Equal energies leave the decision to log q, also where U/kT overflows (at
            // kT = 1e-10 the plain difference of two log weights of −1e20 would round the log q
            // difference away: the price of bit-identical decisions in the representable range).
            if t.get() < 1e-200 {
                assert_eq!(log_weight_ratio(t, 1e10, -2.0, 1e10, 1.0), -3.0);
            }
            assert_eq!(log_boltzmann_ratio(t, 1e10, 1e10), 0.0);
        }
    }

    #[test]
    fn weight_ratio_overflow_keeps_the_sign_for_huge_negative_energies_at_kt_one() {
        // Both log weights are +∞ in IEEE arithmetic (−U − log q overflows).
        let r = log_weight_ratio(kt(1.0), -f64::MAX, -f64::MAX, -f64::MAX, -1e308);
        assert!(r < 0.0 && !r.is_nan(), "{r}");
        let r = log_weight_ratio(kt(1.0), -f64::MAX, -1e308, -f64::MAX, -f64::MAX);
        assert!(r > 0.0, "{r}");
    }

    #[test]
    fn infinite_energies_have_weight_zero() {
        let t = kt(1.0);
        let inf = f64::INFINITY;
        assert_eq!(log_weight_ratio(t, 0.0, 0.0, inf, 0.0), f64::NEG_INFINITY);
        assert_eq!(log_weight_ratio(t, inf, 0.0, 1e300, 0.0), f64::INFINITY);
        assert_eq!(log_weight_ratio(t, inf, 0.0, inf, 0.0), f64::NEG_INFINITY);
        assert_eq!(log_boltzmann_ratio(t, 0.0, inf), f64::NEG_INFINITY);
        assert_eq!(log_boltzmann_ratio(t, inf, 0.0), f64::INFINITY);
    }

    #[test]
    fn the_metropolis_test_is_min_one_exp() {
        let m = metropolis(0.3, 0.999_999);
        assert_eq!(m.probability, 1.0);
        assert!(m.accepted);
        let m = metropolis(-1.0, 0.3);
        assert_eq!(m.probability, (-1f64).exp());
        assert!(m.accepted);
        assert!(!metropolis(-1.0, 0.4).accepted);
        assert_eq!(metropolis(f64::NEG_INFINITY, 0.0).probability, 0.0);
        assert!(!metropolis(f64::NEG_INFINITY, 0.0).accepted);
        assert!(metropolis(f64::INFINITY, 0.999_999).accepted);
        assert!(!metropolis(f64::NAN, 0.0).accepted);
    }

    #[test]
    fn relative_weights_are_shifted_by_the_maximum() {
        let mut w = [0.0; 3];
        relative_weights_into(&[1e300, 1e300 - 1e285, f64::NEG_INFINITY], &mut w).unwrap();
        assert_eq!(w, [1.0, 0.0, 0.0]);
        relative_weights_into(&[-2.0, -3.0, f64::NEG_INFINITY], &mut w).unwrap();
        assert_eq!(w, [1.0, (-1f64).exp(), 0.0]);
        relative_weights_into(&[f64::NEG_INFINITY; 3], &mut w).unwrap();
        assert_eq!(w, [0.0; 3]);
        assert!(relative_weights_into(&[0.0, f64::NAN, 0.0], &mut w).is_err());
        assert!(relative_weights_into(&[0.0], &mut w).is_err());
    }
}
