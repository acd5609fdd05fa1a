//! Small dense linear algebra on flat row-major buffers, allocation-free, for the step
//! Jacobians of the exact-discrete mode (at most a few hundred rows).

use multiversion::multiversion;
use nalgebra::{DMatrixView, DMatrixViewMut};

/// `c += alpha · a · b` for n × n row-major matrices, through nalgebra (which hands sizes above
/// 5 to the `matrixmultiply` kernels). nalgebra is column-major, and a row-major buffer read
/// column-major is the transpose, so this computes `cᵀ += alpha · bᵀ · aᵀ`.
pub(crate) fn gemm_acc(n: usize, alpha: f64, a: &[f64], b: &[f64], c: &mut [f64]) {
    let a_t = DMatrixView::from_slice(a, n, n);
    let b_t = DMatrixView::from_slice(b, n, n);
    DMatrixViewMut::from_slice(c, n, n).gemm(alpha, &b_t, &a_t, 1.0);
}

/// In-place LU factorisation with partial pivoting of the n × n row-major matrix `a`.
///
/// Returns `(log|det a|, sign of det a)`; sign 0 means singular (a zero pivot). `piv[i]` is the
/// row swapped into row i.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
pub(crate) fn lu_factor(n: usize, a: &mut [f64], piv: &mut [usize]) -> (f64, f64) {
    let mut log_abs = 0.0;
    let mut sign = 1.0;
    for col in 0..n {
        let mut best = col;
        let mut best_abs = a[col * n + col].abs();
        for row in col + 1..n {
            let v = a[row * n + col].abs();
            if v > best_abs {
                best = row;
                best_abs = v;
            }
        }
        piv[col] = best;
        if best_abs == 0.0 || !best_abs.is_finite() {
            return (f64::NEG_INFINITY, 0.0);
        }
        if best != col {
            for k in 0..n {
                a.swap(col * n + k, best * n + k);
            }
            sign = -sign;
        }
        let pivot = a[col * n + col];
        if pivot < 0.0 {
            sign = -sign;
        }
        log_abs += pivot.abs().ln();
        let inv = 1.0 / pivot;
        for row in col + 1..n {
            let factor = a[row * n + col] * inv;
            a[row * n + col] = factor;
            if factor != 0.0 {
                let (upper, lower) = a.split_at_mut(row * n);
                let pivot_row = &upper[col * n + col + 1..col * n + n];
                for (x, p) in lower[col + 1..n].iter_mut().zip(pivot_row) {
                    *x -= factor * p;
                }
            }
        }
    }
    (log_abs, sign)
}

/// Solves `a x = b` in place (`b` becomes x) with the factors from [`lu_factor`].
pub(crate) fn lu_solve(n: usize, lu: &[f64], piv: &[usize], b: &mut [f64]) {
    for (i, &p) in piv.iter().enumerate().take(n) {
        b.swap(i, p);
    }
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= lu[i * n + k] * b[k];
        }
        b[i] = s;
    }
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= lu[i * n + k] * b[k];
        }
        b[i] = s / lu[i * n + i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::DMatrix;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn determinant_and_solve_agree_with_nalgebra() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for n in [1, 2, 5, 13, 39] {
            let a: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let m = DMatrix::from_row_slice(n, n, &a);
            let det = m.determinant();
            let mut lu = a.clone();
            let mut piv = vec![0; n];
            let (log_abs, sign) = lu_factor(n, &mut lu, &mut piv);
            assert!((sign * log_abs.exp() - det).abs() <= 1e-10 * det.abs().max(1.0));
            let mut x = b.clone();
            lu_solve(n, &lu, &piv, &mut x);
            let expected = m.lu().solve(&nalgebra::DVector::from_vec(b)).unwrap();
            for (x, e) in x.iter().zip(expected.iter()) {
                assert!((x - e).abs() < 1e-9 * e.abs().max(1.0), "{x} vs {e}");
            }
        }
    }

    #[test]
    fn singular_matrix_has_sign_zero() {
        let mut a = vec![1.0, 2.0, 2.0, 4.0];
        let mut piv = vec![0; 2];
        assert_eq!(lu_factor(2, &mut a, &mut piv).1, 0.0);
    }

    #[test]
    fn gemm_matches_nalgebra() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let n = 7;
        let a: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let b: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut c: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let expected = DMatrix::from_row_slice(n, n, &c)
            + 0.5 * DMatrix::from_row_slice(n, n, &a) * DMatrix::from_row_slice(n, n, &b);
        gemm_acc(n, 0.5, &a, &b, &mut c);
        for i in 0..n {
            for j in 0..n {
                assert!((c[i * n + j] - expected[(i, j)]).abs() < 1e-14);
            }
        }
    }
}
