//! The dense-layer arithmetic of the envpair networks: SiLU and its slope, and the three
//! products a layer needs (forward rows, backward rows, outer-product accumulation). Matrices
//! are row-major with the input index first, so every loop runs over contiguous rows.

use crate::field::exp::exp_nonpositive;

/// The logistic function `1/(1 + e^−z)`, through `e^−|z|` so that the exponential never
/// overflows (and vectorises).
#[inline]
pub(super) fn sigmoid(z: f64) -> f64 {
    let e = exp_nonpositive(-z.abs());
    if z >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

/// `silu(z) = z·σ(z)` and its derivative `σ(z)·(1 + z·(1 − σ(z)))`.
#[inline]
pub(super) fn silu_and_slope(z: f64) -> (f64, f64) {
    let s = sigmoid(z);
    (z * s, s * (1.0 + z * (1.0 - s)))
}

/// The largest |silu'| over the real line (attained near z ≈ ±2.4: 1.0998 and −0.0998),
/// rounded up: the slope bound the Lipschitz bounds use.
pub(super) const SILU_SLOPE_MAX: f64 = 1.1;

/// `out += Σ_i x_i · W[i, :]` (W has `x.len()` rows of `out.len()`).
#[inline]
pub(super) fn add_rows(x: &[f64], w: &[f64], out: &mut [f64]) {
    let m = out.len();
    for (xi, row) in x.iter().zip(w.chunks_exact(m)) {
        if *xi != 0.0 {
            for (o, wv) in out.iter_mut().zip(row) {
                *o += xi * wv;
            }
        }
    }
}

/// `out[i] = W[i, :] · y` (W has `out.len()` rows of `y.len()`).
#[inline]
pub(super) fn dot_rows(w: &[f64], y: &[f64], out: &mut [f64]) {
    for (o, row) in out.iter_mut().zip(w.chunks_exact(y.len())) {
        *o = row.iter().zip(y).map(|(a, b)| a * b).sum();
    }
}

/// `W̄[i, :] += x_i · y` (W̄ has `x.len()` rows of `y.len()`).
#[inline]
pub(super) fn add_outer(x: &[f64], y: &[f64], w_bar: &mut [f64]) {
    for (xi, row) in x.iter().zip(w_bar.chunks_exact_mut(y.len())) {
        if *xi != 0.0 {
            for (o, yv) in row.iter_mut().zip(y) {
                *o += xi * yv;
            }
        }
    }
}

/// `a · b`.
#[inline]
pub(super) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_slope_is_the_derivative_and_bounded() {
        for i in -400..=400 {
            let z = f64::from(i) * 0.05;
            let (_, slope) = silu_and_slope(z);
            let h = 1e-6;
            let fd = (silu_and_slope(z + h).0 - silu_and_slope(z - h).0) / (2.0 * h);
            assert!((slope - fd).abs() < 1e-8, "z = {z}: {slope} vs {fd}");
            assert!(slope.abs() <= SILU_SLOPE_MAX);
        }
        // Far tails stay finite and exact.
        assert_eq!(silu_and_slope(-1e6).0, 0.0);
        assert_eq!(silu_and_slope(1e6).0, 1e6);
    }
}
