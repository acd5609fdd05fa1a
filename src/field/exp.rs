//! A branch-free `exp` for non-positive arguments that the compiler can vectorise.
//!
//! The pair loop of the field is bound by the Gaussian RBFs, one `exp` per kernel and pair; libm's
//! `exp` is a call per element that no compiler vectorises. This version is plain arithmetic
//! (Cody–Waite range reduction, a degree-13 Taylor polynomial, the power of two assembled in the
//! exponent bits), so a loop over kernels becomes SIMD code. It uses no fused multiply-add, so
//! results are bit-identical on every x86-64 and aarch64 machine whatever the vector width.
//!
//! Arguments below [`UNDERFLOW`] return exactly 0: such a Gaussian would only contribute a
//! subnormal, and the field *as implemented* is defined with that contribution set to zero (the
//! divergence and Jacobian use the same values, so they stay its exact derivatives).

/// Arguments below this return 0 (e^−708 ≈ 3.3e−308 is the smallest normal result used).
pub const UNDERFLOW: f64 = -708.0;

const LOG2E: f64 = std::f64::consts::LOG2_E;
// ln 2 split so that n·LN2_HI is exact for |n| < 2^20 (fdlibm's constants).
const LN2_HI: f64 = 6.931_471_803_691_238_164_9e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;
// 1.5·2^52: adding it rounds to an integer, and that integer sits in the low mantissa bits.
const SHIFT: f64 = 6_755_399_441_055_744.0;

// 1/k! for k = 2..13; the remainder after degree 13 on |r| ≤ ln2/2 is below 5e−18 relative.
const C: [f64; 12] = [
    1.0 / 2.0,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
    1.0 / 40320.0,
    1.0 / 362_880.0,
    1.0 / 3_628_800.0,
    1.0 / 39_916_800.0,
    1.0 / 479_001_600.0,
    1.0 / 6_227_020_800.0,
];

/// `e^x` for `x ≤ 0` to within 2 ulp; exactly 0 for `x <` [`UNDERFLOW`] (including −∞).
/// Positive arguments are outside the contract (they are clamped to 0, giving 1).
#[inline(always)]
#[must_use]
pub fn exp_nonpositive(x: f64) -> f64 {
    let xc = x.clamp(UNDERFLOW, 0.0);
    let kd = xc * LOG2E + SHIFT;
    let n = kd - SHIFT;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = C[11];
    for &c in C[..11].iter().rev() {
        p = p * r + c;
    }
    let p = (p * r + 1.0) * r + 1.0;
    // kd's bit pattern is SHIFT's plus n, for n in [−1022, 0].
    let n_int = kd.to_bits().wrapping_sub(SHIFT.to_bits()) as i64;
    let scale = f64::from_bits(((n_int + 1023) as u64) << 52);
    if x < UNDERFLOW { 0.0 } else { p * scale }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulp_distance(a: f64, b: f64) -> u64 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs()
    }

    #[test]
    fn agrees_with_libm_to_two_ulp() {
        let mut worst = 0;
        let n = 200_000;
        for i in 0..=n {
            let x = UNDERFLOW * (i as f64 / n as f64);
            worst = worst.max(ulp_distance(exp_nonpositive(x), x.exp()));
        }
        // Near zero, where Gaussians of nearby kernels live.
        for i in 0..=n {
            let x = -3.0 * (i as f64 / n as f64);
            worst = worst.max(ulp_distance(exp_nonpositive(x), x.exp()));
        }
        assert!(worst <= 2, "worst ulp distance {worst}");
    }

    #[test]
    fn exact_at_zero_and_zero_below_underflow() {
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-0.0), 1.0);
        assert_eq!(exp_nonpositive(-708.5), 0.0);
        assert_eq!(exp_nonpositive(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(-1e300), 0.0);
        assert!(exp_nonpositive(UNDERFLOW) > 0.0);
        assert!(exp_nonpositive(UNDERFLOW).is_normal());
    }
}
