//! The one SIMD-intrinsics kernel of the crate: the 8 × 16 register block of the step-Jacobian
//! product [`super::linalg::gemm_acc`] with AVX-512, chosen at run time.
//!
//! Why intrinsics: written in safe Rust (`linalg::gemm_block`, its scalar twin), the compiler
//! keeps the 16 accumulators in registers but reloads the block's pointers and bounds from the
//! stack in every k iteration and copies accumulators between registers, which held the 165 × 165
//! product of LJ-55 to about half the FMA throughput. Here the accumulators are named vectors and
//! the loop body is two loads, eight broadcasts and sixteen FMAs.
//!
//! Bits: every entry is `acc = fma(a_ik, b_kj, acc)` over k in order from 0, then
//! `c = fma(alpha, acc, c)`: the same exactly rounded operations in the same order as the safe
//! block, so the same bits (`linalg`'s tests compare both against a scalar loop).

/// Rows of the block.
const MR: usize = 8;
/// Columns of the block (two vectors of 8).
const NR: usize = 16;

/// `c[r][col] = fma(alpha, Σ_k a[i + r][k]·b[k][j + col], c[r][col])` for the rows `i..i + 8`
/// from `i_done` and the columns `j..j + 16` from `j_done` of the n × n row-major matrices, with
/// AVX-512 if this CPU has it. Returns `false` (and does nothing) otherwise, so the caller runs
/// the scalar twin.
///
/// # Panics
///
/// If the block does not lie inside the matrices (`i + 8 ≤ n`, `j + 16 ≤ n`, `i ≤ i_done ≤
/// i + 8`, `j ≤ j_done ≤ j + 16`, each slice at least n² long): the bounds the kernel's
/// unchecked loads and stores rely on.
#[inline]
pub(super) fn gemm_block16(
    n: usize,
    alpha: f64,
    (a, b, c): (&[f64], &[f64], &mut [f64]),
    (i, i_done): (usize, usize),
    (j, j_done): (usize, usize),
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let nn = n.checked_mul(n).expect("n² fits in usize");
        assert!(
            i + MR <= n
                && j + NR <= n
                && (i..=i + MR).contains(&i_done)
                && (j..=j + NR).contains(&j_done)
                && a.len() >= nn
                && b.len() >= nn
                && c.len() >= nn,
            "gemm block ({i}, {j}) outside an n = {n} product"
        );
        // SAFETY: the CPU has AVX-512F (detected just above), and the assertion bounds every
        // index the kernel touches: a[(i + r)·n + k] and b[k·n + j + col] for r < 8, col < 16,
        // k < n, c[(i + r)·n + j + col] for the same r and col, all below n² ≤ the lengths.
        unsafe {
            x86::block16(
                n,
                alpha,
                a.as_ptr(),
                b.as_ptr(),
                c.as_mut_ptr(),
                (i, i_done),
                (j, j_done),
            )
        };
        return true;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (n, alpha, a, b, c, i, i_done, j, j_done);
    false
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        _mm512_fmadd_pd, _mm512_loadu_pd, _mm512_set1_pd, _mm512_setzero_pd, _mm512_storeu_pd,
    };

    use super::{MR, NR};

    /// The AVX-512 block of [`super::gemm_block16`].
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512F, and every index named in [`super::gemm_block16`]'s
    /// assertion must lie inside the three buffers.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block16(
        n: usize,
        alpha: f64,
        a: *const f64,
        b: *const f64,
        c: *mut f64,
        (i, i_done): (usize, usize),
        (j, j_done): (usize, usize),
    ) {
        let mut lo = [_mm512_setzero_pd(); MR];
        let mut hi = [_mm512_setzero_pd(); MR];
        // SAFETY: rows i..i + 8 of a and columns j..j + 16 of b lie inside the buffers (the
        // caller's contract), so every offset below is in bounds.
        unsafe {
            let a_block = a.add(i * n);
            let mut b_row = b.add(j);
            for k in 0..n {
                let b_lo = _mm512_loadu_pd(b_row);
                let b_hi = _mm512_loadu_pd(b_row.add(8));
                for r in 0..MR {
                    let a_rk = _mm512_set1_pd(*a_block.add(r * n + k));
                    lo[r] = _mm512_fmadd_pd(a_rk, b_lo, lo[r]);
                    hi[r] = _mm512_fmadd_pd(a_rk, b_hi, hi[r]);
                }
                b_row = b_row.add(n);
            }
        }
        let alpha_v = _mm512_set1_pd(alpha);
        for r in i_done - i..MR {
            // SAFETY: row i + r < n and columns j..j + 16 ≤ n of c (the caller's contract).
            let row = unsafe { c.add((i + r) * n + j) };
            if j_done == j {
                // SAFETY: as above; two whole vectors of the row.
                unsafe {
                    let c_lo = _mm512_loadu_pd(row);
                    let c_hi = _mm512_loadu_pd(row.add(8));
                    _mm512_storeu_pd(row, _mm512_fmadd_pd(alpha_v, lo[r], c_lo));
                    _mm512_storeu_pd(row.add(8), _mm512_fmadd_pd(alpha_v, hi[r], c_hi));
                }
            } else {
                // A block shifted back: only the columns from j_done on are added.
                let mut acc = [0.0f64; NR];
                // SAFETY: a local array of 16 doubles, two vectors.
                unsafe {
                    _mm512_storeu_pd(acc.as_mut_ptr(), lo[r]);
                    _mm512_storeu_pd(acc.as_mut_ptr().add(8), hi[r]);
                }
                for (col, acc) in acc.iter().enumerate().skip(j_done - j) {
                    // SAFETY: column j + col < j + 16 ≤ n of row i + r.
                    unsafe {
                        let x = row.add(col);
                        *x = alpha.mul_add(*acc, *x);
                    }
                }
            }
        }
    }
}
