//! Small dense linear algebra on flat row-major buffers, allocation-free, for the step
//! Jacobians of the exact-discrete mode (at most a few hundred rows).

use std::ops::Range;

use multiversion::multiversion;

/// Replaces the n × n matrix `a` (row-major) by the matrix of the map it induces on the
/// quotient by translations, in place in its first m × m entries, m = n − `dim`, and returns
/// m; the state is n / `dim` particles in `dim` axes, particle-major.
///
/// For `a = I + M` with M mapping every translation to zero, the coordinates
/// `q_i = x_i − x_last` of the quotient give `ã_ab = a_ab − a_(last, α(a)) b` for a, b < m,
/// where `(last, α(a))` is the row of the last particle's axis of row a: `(a·x)_i − (a·x)_last`
/// with `x_last = 0`. The translations are an invariant subspace on which `a` is the
/// identity, so `det a = det ã`. (The identity's entries in the last particle's columns and
/// rows drop out: `δ_ab − δ_(last, α) b = δ_ab` for b < m.)
pub(crate) fn quotient_by_translations(n: usize, dim: usize, a: &mut [f64]) -> usize {
    let m = n - dim;
    // The last particle's rows are never written (m² ≤ m·n); each row is moved to no later
    // place than it starts at, so the rows above it are done and it is read before it is
    // overwritten.
    let (head, last) = a[..n * n].split_at_mut(m * n);
    for i in 0..m {
        head.copy_within(i * n..i * n + m, i * m);
        let axis = i % dim;
        let subtracted = &last[axis * n..axis * n + m];
        for (a, l) in head[i * m..i * m + m].iter_mut().zip(subtracted) {
            *a -= l;
        }
    }
    m
}

/// `c += alpha · a · b` for n × n row-major matrices.
///
/// Written out rather than handed to a BLAS-like crate: at these sizes (n ≤ a few hundred,
/// usually 8–40) a general kernel's packing buffers cost an allocation per call, and its choice
/// of FMA or not by CPU would make the exact-discrete log-determinant differ in the last bits
/// between machines. Here every entry is `acc = fma(a_ik, b_kj, acc)` over k in order from 0,
/// then `c = fma(alpha, acc, c)`, on every machine and whichever block computes it: fused
/// multiply-adds are exactly rounded, so vector FMA instructions, NEON and the scalar fallback
/// (where `f64::mul_add` is the C library's `fma`, slower but exact) give the same bits.
///
/// The work is done in 8 × 16 register blocks (8 × 8 where fewer than 16 columns remain),
/// which the compiler vectorises along rows of b: 16 accumulator vectors of 8 lanes under
/// AVX-512 keep the two FMA ports busy, where 8 × 8 was bound by its loads. When n is not a
/// multiple of the block, the last block row and column are shifted back to end at n and
/// overlap the previous ones; the overlapped entries are computed again (the same bits) but
/// added to c only once.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
pub(crate) fn gemm_acc(n: usize, alpha: f64, a: &[f64], b: &[f64], c: &mut [f64]) {
    let (a, b, c) = (&a[..n * n], &b[..n * n], &mut c[..n * n]);
    if n < MR {
        for i in 0..n {
            for j in 0..n {
                let mut acc = 0.0f64;
                for k in 0..n {
                    acc = a[i * n + k].mul_add(b[k * n + j], acc);
                }
                c[i * n + j] = alpha.mul_add(acc, c[i * n + j]);
            }
        }
        return;
    }
    for (width, rows, cols) in blocks(0, n) {
        match width {
            Width::Wide => wide_block(n, alpha, (a, b, &mut *c), rows, cols),
            Width::Narrow => gemm_block::<MR>(n, alpha, a, b, c, rows, cols),
        }
    }
}

/// The two widths of a register block: [`NR`] or [`MR`] columns.
#[derive(Clone, Copy)]
enum Width {
    Wide,
    Narrow,
}

/// The register blocks `(width, (i, i_done), (j, j_done))` that tile rows and columns `lo..n`
/// (at least [`MR`] of them), for [`gemm_acc`] and the LU's [`schur_update`].
///
/// Block origins are multiples of the block size from `lo`, the last one moved back to end at
/// n; a block writes only from `i_done` and `j_done` on, where the previous one stopped, so an
/// entry that two blocks compute (the same bits) is written once. In each block row: wide
/// blocks, then the rest in one wide block moved back if it is wider than a narrow one and
/// fits, else narrow blocks (the last one moved back). An iterator rather than a walker taking
/// a closure: the callers' arithmetic stays in their bodies, which `multiversion` compiles with
/// FMA (a closure body would not be, and would call the C library's `fma`).
#[inline(always)]
fn blocks(lo: usize, n: usize) -> impl Iterator<Item = (Width, (usize, usize), (usize, usize))> {
    let m = n - lo;
    (0..m.div_ceil(MR)).flat_map(move |q| {
        let rows = (lo + (q * MR).min(m - MR), lo + q * MR);
        let mut j = lo;
        std::iter::from_fn(move || {
            let (width, cols) = if j + NR <= n {
                j += NR;
                (Width::Wide, (j - NR, j - NR))
            } else if j >= n {
                return None;
            } else if n - j > MR && m >= NR {
                let done = j;
                j = n;
                (Width::Wide, (n - NR, done))
            } else {
                j += MR;
                (Width::Narrow, ((j - MR).min(n - MR), j - MR))
            };
            Some((width, rows, cols))
        })
    })
}

/// An `MR × NR` block of [`gemm_acc`]: the AVX-512 kernel where the CPU has it, else the same
/// operations in safe Rust ([`gemm_block`], its twin; the same bits).
#[inline(always)]
fn wide_block(
    n: usize,
    alpha: f64,
    (a, b, c): (&[f64], &[f64], &mut [f64]),
    rows: (usize, usize),
    cols: (usize, usize),
) {
    if !super::simd::gemm_block16(n, alpha, (a, b, &mut *c), rows, cols) {
        gemm_block::<NR>(n, alpha, a, b, c, rows, cols);
    }
}

/// Rows of a register block of [`gemm_acc`] (and its narrow width).
const MR: usize = 8;
/// Columns of a wide register block of [`gemm_acc`].
const NR: usize = 16;

/// One `MR × W` block of [`gemm_acc`] at rows `i..i + MR`, columns `j..j + W`, adding to c only
/// rows from `i_done` and columns from `j_done` on. Inlined into each of `gemm_acc`'s
/// instruction-set versions.
#[inline(always)]
fn gemm_block<const W: usize>(
    n: usize,
    alpha: f64,
    a: &[f64],
    b: &[f64],
    c: &mut [f64],
    (i, i_done): (usize, usize),
    (j, j_done): (usize, usize),
) {
    let acc = block_products::<W>(n, 0..n, (a, b), i, j);
    for (r, acc) in acc.iter().enumerate().skip(i_done - i) {
        let row = &mut c[(i + r) * n + j_done..(i + r) * n + j + W];
        for (c, acc) in row.iter_mut().zip(&acc[j_done - j..]) {
            *c = alpha.mul_add(*acc, *c);
        }
    }
}

/// `Σ_{k ∈ ks} a[i + r][k]·b[k][j + col]` for the `MR × W` block at rows `i..`, columns `j..`
/// of n × n row-major matrices, each entry a fused multiply-add chain over k in order: the
/// register block of [`gemm_block`] and of the LU's [`schur_block`].
#[inline(always)]
fn block_products<const W: usize>(
    n: usize,
    ks: Range<usize>,
    (a, b): (&[f64], &[f64]),
    i: usize,
    j: usize,
) -> [[f64; W]; MR] {
    let mut acc = [[0.0f64; W]; MR];
    for k in ks {
        let bk: &[f64; W] = b[k * n + j..k * n + j + W].try_into().unwrap();
        for (r, acc) in acc.iter_mut().enumerate() {
            let aik = a[(i + r) * n + k];
            for (acc, b) in acc.iter_mut().zip(bk) {
                *acc = aik.mul_add(*b, *acc);
            }
        }
    }
    acc
}

/// `Σ ln|p|` over a sequence of pivots `p`, with one logarithm for the whole sequence instead of
/// one per pivot: each normal `|p| = m·2^e` (m in [1, 2)) adds e to an integer exponent and
/// multiplies m into a running mantissa product, renormalised before it can overflow; at the
/// end `ln(product) + exponent·ln 2` (ln 2 in fdlibm's two parts, so that the exponent's term
/// keeps full precision however large the exponent). Subnormal pivots take their own
/// logarithm. On small Jacobians (DW-4: 8 × 8) the per-pivot logarithms were a tenth of the
/// sampling time.
struct LogAbsProduct {
    mantissa: f64,
    exponent: i64,
    rest: f64,
}

impl LogAbsProduct {
    /// The high part of ln 2 (its low 21 significand bits zero, so that `e · LN2_HI` is exact
    /// for |e| < 2²¹) and the rest (fdlibm's split).
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000); // 6.93147180369123816490e-1
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76); // 1.90821492927058770002e-10
    /// Bits of an f64's significand.
    const SIGNIFICAND: u64 = (1 << 52) - 1;
    /// The exponent field of 1.0.
    const ONE: u64 = 1023 << 52;
    /// 2⁵¹²: the product is renormalised once it reaches it.
    const RENORMALISE: f64 = f64::from_bits((1023 + 512) << 52);

    fn new() -> Self {
        LogAbsProduct {
            mantissa: 1.0,
            exponent: 0,
            rest: 0.0,
        }
    }

    /// `(m, e)` with `x = m·2^e` and m in [1, 2), for a positive normal `x`.
    #[inline(always)]
    fn split(x: f64) -> (f64, i64) {
        let bits = x.to_bits();
        let e = ((bits >> 52) & 0x7ff) as i64 - 1023;
        (f64::from_bits((bits & Self::SIGNIFICAND) | Self::ONE), e)
    }

    /// Adds `ln|p|` for a finite non-zero `p`.
    #[inline(always)]
    fn add(&mut self, p: f64) {
        let a = p.abs();
        if !a.is_normal() {
            self.rest += a.ln();
            return;
        }
        let (m, e) = Self::split(a);
        self.exponent += e;
        self.mantissa *= m;
        // Each factor is below 2, so the product cannot overflow before the next check.
        if self.mantissa >= Self::RENORMALISE {
            let (m, e) = Self::split(self.mantissa);
            self.mantissa = m;
            self.exponent += e;
        }
    }

    /// The sum of the logarithms added.
    fn value(&self) -> f64 {
        let e = self.exponent as f64;
        self.mantissa.ln() + e * Self::LN2_LO + e * Self::LN2_HI + self.rest
    }
}

/// In-place LU factorisation with partial pivoting of the n × n row-major matrix `a`.
///
/// Returns `(log|det a|, sign of det a)`; sign 0 means singular (a zero pivot). `piv[i]` is the
/// row swapped into row i.
///
/// Right-looking and blocked by panels of [`LU_PANEL`] columns once n reaches
/// [`LU_BLOCKED_MIN`]: a panel is factored column by column (pivot search, whole-row swaps,
/// elimination within the panel), its rows of U to the right are solved with the panel's unit
/// lower triangle, and the rest of the matrix gets the panel's rank-[`LU_PANEL`] update in
/// register blocks ([`schur_update`]). Column by column, each of the n pivots would sweep the
/// whole trailing matrix through the cache (at n = 165, 218 kB: L2, not L1); by panels it is
/// swept once per [`LU_PANEL`] columns, with the panel's multipliers held in registers.
/// Below [`LU_BLOCKED_MIN`] the panel is the whole matrix, i.e. the classical column-by-column
/// elimination, whose bits earlier versions had. Every element's arithmetic is fixed by the
/// code (no FMA contraction by the compiler, the same order in every block shape), so the
/// result is the same on every machine.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
pub(crate) fn lu_factor(n: usize, a: &mut [f64], piv: &mut [usize]) -> (f64, f64) {
    let panel = if n >= LU_BLOCKED_MIN { LU_PANEL } else { n };
    lu_factor_by_panels(n, panel, a, piv)
}

/// [`lu_factor`] with panels of `panel` columns (≥ 1; n: column by column).
#[inline(always)]
fn lu_factor_by_panels(n: usize, panel: usize, a: &mut [f64], piv: &mut [usize]) -> (f64, f64) {
    let a = &mut a[..n * n];
    let mut log_abs = LogAbsProduct::new();
    let mut sign = 1.0;
    let mut p = 0;
    while p < n {
        let pe = (p + panel).min(n);
        // The pivot of the next column, found while eliminating this one (the same scan of
        // the same values as a separate search: rows in order, the first strictly largest).
        let mut found = None;
        for col in p..pe {
            let (best, best_abs) = found.take().unwrap_or_else(|| pivot_search(n, a, col));
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
            log_abs.add(pivot);
            let inv = 1.0 / pivot;
            let next = col + 1;
            let mut candidate = (next, f64::NAN);
            for row in next..n {
                let factor = a[row * n + col] * inv;
                a[row * n + col] = factor;
                if factor != 0.0 {
                    let (upper, lower) = a.split_at_mut(row * n);
                    let pivot_row = &upper[col * n + next..col * n + pe];
                    for (x, p) in lower[next..pe].iter_mut().zip(pivot_row) {
                        *x -= factor * p;
                    }
                }
                if next < pe {
                    let v = a[row * n + next].abs();
                    if row == next || v > candidate.1 {
                        candidate = (row, v);
                    }
                }
            }
            if next < pe {
                found = Some(candidate);
            }
        }
        if pe < n {
            // U's rows of this panel, right of it: forward substitution with the panel's unit
            // lower triangle, in the order the column-by-column elimination would apply it.
            for r in p + 1..pe {
                let (upper, lower) = a.split_at_mut(r * n);
                for k in p..r {
                    let factor = lower[k];
                    if factor != 0.0 {
                        let pivot_row = &upper[k * n + pe..k * n + n];
                        for (x, u) in lower[pe..n].iter_mut().zip(pivot_row) {
                            *x -= factor * u;
                        }
                    }
                }
            }
            schur_update(n, p, pe, a);
        }
        p = pe;
    }
    (log_abs.value(), sign)
}

/// Size from which [`lu_factor`] works by panels.
const LU_BLOCKED_MIN: usize = 48;
/// Columns of one panel of [`lu_factor`].
const LU_PANEL: usize = 8;

/// The first row from `col` on whose entry in column `col` has the largest magnitude, and that
/// magnitude (NaN entries are never chosen unless the diagonal is NaN).
#[inline(always)]
fn pivot_search(n: usize, a: &[f64], col: usize) -> (usize, f64) {
    let mut best = (col, a[col * n + col].abs());
    for row in col + 1..n {
        let v = a[row * n + col].abs();
        if v > best.1 {
            best = (row, v);
        }
    }
    best
}

/// `a[i][j] −= Σ_{k ∈ p..pe} a[i][k]·a[k][j]` for `i, j ≥ pe`: the trailing matrix's update by
/// the panel `p..pe` of [`lu_factor`] (L below it, U right of it). Every element is
/// `a − acc`, `acc` the fused multiply-add chain over k in order from p, whichever block
/// computes it. Register blocks of 8 × 16 (8 × 8 where fewer columns remain); as in
/// [`gemm_acc`], the last block row and column are shifted back to end at n, and the entries
/// they share with the previous blocks are recomputed (from L and U, which this update does not
/// change) but subtracted only once. A trailing matrix smaller than one block is done element
/// by element.
#[inline(always)]
fn schur_update(n: usize, p: usize, pe: usize, a: &mut [f64]) {
    let m = n - pe;
    if m < MR {
        for i in pe..n {
            for j in pe..n {
                let acc = (p..pe).fold(0.0f64, |acc, k| a[i * n + k].mul_add(a[k * n + j], acc));
                a[i * n + j] -= acc;
            }
        }
        return;
    }
    for (width, rows, cols) in blocks(pe, n) {
        match width {
            Width::Wide => schur_block::<NR>(n, p..pe, a, rows, cols),
            Width::Narrow => schur_block::<MR>(n, p..pe, a, rows, cols),
        }
    }
}

/// One `MR × W` block of [`schur_update`] at rows `i..i + MR`, columns `j..j + W`, over the
/// panel columns `ks`, subtracting only in rows from `i_done` and columns from `j_done` on.
#[inline(always)]
fn schur_block<const W: usize>(
    n: usize,
    ks: Range<usize>,
    a: &mut [f64],
    (i, i_done): (usize, usize),
    (j, j_done): (usize, usize),
) {
    let acc = block_products::<W>(n, ks, (a, a), i, j);
    for (r, acc) in acc.iter().enumerate().skip(i_done - i) {
        let row = &mut a[(i + r) * n + j_done..(i + r) * n + j + W];
        for (x, acc) in row.iter_mut().zip(&acc[j_done - j..]) {
            *x -= *acc;
        }
    }
}

/// `y = a·x` for the n × n row-major `a`.
///
/// Each row's dot product is summed in 8 lanes (element k into lane k mod 8, then the lanes in
/// a fixed order), which the compiler vectorises; the order is part of the code, so the result
/// is the same on every machine.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
pub(crate) fn matvec(n: usize, a: &[f64], x: &[f64], y: &mut [f64]) {
    const LANES: usize = 8;
    let x = &x[..n];
    for (yi, row) in y.iter_mut().zip(a.chunks_exact(n)) {
        let mut lanes = [0.0; LANES];
        let (row_body, row_tail) = row.split_at(n - n % LANES);
        let (x_body, x_tail) = x.split_at(n - n % LANES);
        for (r, x) in row_body.chunks_exact(LANES).zip(x_body.chunks_exact(LANES)) {
            for l in 0..LANES {
                lanes[l] += r[l] * x[l];
            }
        }
        for (l, (r, x)) in row_tail.iter().zip(x_tail).enumerate() {
            lanes[l] += r * x;
        }
        *yi = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
            + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    }
}

/// `y ← y + a·x`, element-wise: the n × n accumulations of the step Jacobian, compiled for the
/// machine's vector width (each element's operations are the same on every machine).
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
pub(crate) fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `y ← a·x`, element-wise (see [`axpy`]).
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
pub(crate) fn scale_into(a: f64, x: &[f64], y: &mut [f64]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = a * x;
    }
}

/// `y ← a·y`, element-wise (see [`axpy`]), returning whether every result is finite: the
/// step Jacobian's finiteness check rides on the pass that scales it, instead of a pass of its
/// own (the LU alone would not notice every NaN: it skips rows whose multiplier is 0).
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
pub(crate) fn scale(a: f64, y: &mut [f64]) -> bool {
    let mut finite = true;
    for y in y.iter_mut() {
        *y *= a;
        finite &= y.is_finite();
    }
    finite
}

/// `y = aᵀ·x` for the n × n row-major `a`, as `Σ_k x_k·(row k of a)`: contiguous rows, sums
/// over k in order for every element, vectorised across y. For a symmetric `a` it is `a·x`
/// without the horizontal sums of [`matvec`]'s row dot products. Blocks of 8 elements of y stay
/// in registers over the whole sum instead of going through memory for every row (timings in
/// docs/numerics.md §"Exact density of the discrete RK4 map").
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
pub(crate) fn matvec_transposed(n: usize, a: &[f64], x: &[f64], y: &mut [f64]) {
    const NR: usize = 8;
    let (a, x, y) = (&a[..n * n], &x[..n], &mut y[..n]);
    if n < NR {
        for (j, y) in y.iter_mut().enumerate() {
            let mut acc = 0.0;
            for (k, xk) in x.iter().enumerate() {
                acc += a[k * n + j] * xk;
            }
            *y = acc;
        }
        return;
    }
    // The last block is moved back to end at n, recomputing (the same bits) what the previous
    // block wrote.
    for q in 0..n.div_ceil(NR) {
        let j = (q * NR).min(n - NR);
        let mut acc = [0.0f64; NR];
        for (k, xk) in x.iter().enumerate() {
            let row: &[f64; NR] = a[k * n + j..k * n + j + NR].try_into().unwrap();
            for (acc, r) in acc.iter_mut().zip(row) {
                *acc += r * xk;
            }
        }
        y[j..j + NR].copy_from_slice(&acc);
    }
}

/// Solves `a x = b` in place (`b` becomes x) with the factors from [`lu_factor`].
///
/// Column-oriented: once an unknown is final it is eliminated from every remaining row, so the
/// rows' updates are independent (row-oriented dot products form one dependency chain per
/// row), and the diagonal's reciprocals do not wait for the unknowns.
pub(crate) fn lu_solve(n: usize, lu: &[f64], piv: &[usize], b: &mut [f64]) {
    if n == SMALL {
        lu_solve_small(&lu[..n * n], piv, &mut b[..n]);
    } else {
        lu_solve_general(n, lu, piv, b);
    }
}

/// [`lu_solve`] for any n.
fn lu_solve_general(n: usize, lu: &[f64], piv: &[usize], b: &mut [f64]) {
    let (lu, b) = (&lu[..n * n], &mut b[..n]);
    for (i, &p) in piv[..n].iter().enumerate() {
        b.swap(i, p);
    }
    // L has a unit diagonal: column k of it below the diagonal updates the rows after k.
    for k in 0..n {
        let (done, rest) = b.split_at_mut(k + 1);
        let bk = done[k];
        for (bi, row) in rest.iter_mut().zip(lu.chunks_exact(n).skip(k + 1)) {
            *bi -= row[k] * bk;
        }
    }
    for k in (0..n).rev() {
        let (rest, done) = b.split_at_mut(k);
        let bk = done[0] * (1.0 / lu[k * n + k]);
        done[0] = bk;
        for (bi, row) in rest.iter_mut().zip(lu.chunks_exact(n)) {
            *bi -= row[k] * bk;
        }
    }
}

/// The system size [`lu_solve`] solves with constant loop bounds (DW-4's n).
const SMALL: usize = 8;

/// [`lu_solve`] for n = [`SMALL`]: with constant bounds the loops unroll and the unknowns stay
/// in registers, where the general loops pass each one through memory (a store-to-load
/// latency per update; timings in docs/numerics.md §"Exact density of the discrete RK4 map"). The
/// same operations in the same order as [`lu_solve_general`], so the same bits.
fn lu_solve_small(lu: &[f64], piv: &[usize], b: &mut [f64]) {
    let (rows, _) = lu.as_chunks::<SMALL>();
    let a: &[[f64; SMALL]; SMALL] = rows.try_into().expect("an n × n matrix");
    let b: &mut [f64; SMALL] = b.try_into().expect("n unknowns");
    let mut y = *b;
    for (i, &p) in piv[..SMALL].iter().enumerate() {
        y.swap(i, p);
    }
    for k in 0..SMALL {
        for i in k + 1..SMALL {
            y[i] -= a[i][k] * y[k];
        }
    }
    for k in (0..SMALL).rev() {
        y[k] *= 1.0 / a[k][k];
        for i in 0..k {
            y[i] -= a[i][k] * y[k];
        }
    }
    *b = y;
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
        for n in [1, 2, 5, 8, 13, 39] {
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

    /// `I + M` with M mapping translations to zero (M = A·C for a random A and the centring
    /// C, which annihilates every translation) has the determinant of its quotient by
    /// translations, and the quotient is the map on `q_i = x_i − x_last`.
    #[test]
    fn quotient_by_translations_keeps_the_determinant() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (n_particles, dim) in [(2, 1), (2, 2), (4, 2), (13, 3), (3, 3)] {
            let n = n_particles * dim;
            let a: Vec<f64> = (0..n * n).map(|_| rng.random_range(-0.4..0.4)).collect();
            // Centring: C_bc = δ_bc − δ_(axis b, axis c)/N.
            let centring = |b: usize, c: usize| {
                f64::from(u8::from(b == c))
                    - f64::from(u8::from(b % dim == c % dim)) / n_particles as f64
            };
            let mut full = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..n {
                    let m: f64 = (0..n).map(|k| a[i * n + k] * centring(k, j)).sum();
                    full[i * n + j] = f64::from(u8::from(i == j)) + m;
                }
            }
            let det = DMatrix::from_row_slice(n, n, &full).determinant();
            let mut quotient = full.clone();
            let m = quotient_by_translations(n, dim, &mut quotient);
            assert_eq!(m, n - dim);
            let reduced = DMatrix::from_row_slice(m, m, &quotient[..m * m]);
            assert!(
                (reduced.determinant() - det).abs() <= 1e-12 * det.abs().max(1.0),
                "N = {n_particles}, D = {dim}: {} vs {det}",
                reduced.determinant()
            );
            // The map on differences: x with x_last = 0, (full·x)_i − (full·x)_last.
            let x: Vec<f64> = (0..n)
                .map(|b| {
                    if b < m {
                        rng.random_range(-1.0..1.0)
                    } else {
                        0.0
                    }
                })
                .collect();
            let image: Vec<f64> = (0..n)
                .map(|i| (0..n).map(|k| full[i * n + k] * x[k]).sum())
                .collect();
            for i in 0..m {
                let expected = image[i] - image[m + i % dim];
                let got: f64 = (0..m).map(|k| quotient[i * m + k] * x[k]).sum();
                assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
            }
        }
    }

    /// The one-logarithm sum agrees with the sum of the pivots' logarithms (compensated, so
    /// that the reference's own rounding does not count: a plain sum of 5,000 equal terms is
    /// off by 2e-10) to round-off relative to their magnitudes, from subnormal to huge pivots,
    /// through the mantissa product's renormalisation (thousands of factors near 2) and the
    /// exponent's growth.
    #[test]
    fn the_log_of_the_product_is_the_sum_of_the_logs() {
        let mut rng = ChaCha8Rng::seed_from_u64(16);
        let cases: Vec<Vec<f64>> = vec![
            vec![1.0],
            vec![-0.5, 3.0, -7.25],
            vec![1.999_999_999; 5_000],
            vec![1e300, 1e300, 1e-300, 5e-324, -2.2e-308, 1.7e308],
            (0..200)
                .map(|_| {
                    let m: f64 = rng.random_range(-2.0..2.0);
                    m * 10f64.powi(rng.random_range(-300..300))
                })
                .collect(),
            (0..165).map(|_| rng.random_range(0.5..1.5)).collect(),
        ];
        for pivots in cases {
            let mut product = LogAbsProduct::new();
            // Neumaier's compensated sum of the logarithms.
            let (mut sum, mut lost) = (0.0_f64, 0.0_f64);
            let mut scale = 0.0;
            for &p in &pivots {
                product.add(p);
                let term = p.abs().ln();
                let next = sum + term;
                lost += if sum.abs() >= term.abs() {
                    (sum - next) + term
                } else {
                    (term - next) + sum
                };
                sum = next;
                scale += term.abs();
            }
            let sum = sum + lost;
            let got = product.value();
            assert!(
                (got - sum).abs() <= 1e-15 * scale.max(1.0) * 4.0,
                "{} pivots: {got} against {sum}",
                pivots.len()
            );
        }
    }

    #[test]
    fn blocked_factors_reproduce_the_permuted_matrix() {
        // P·A = L·U to round-off for panels of every width against trailing matrices with
        // every kind of tail (a double-subtracted overlap of the shifted-back blocks, or a
        // missed entry, breaks it by O(1)), and the determinant agrees with nalgebra's.
        let mut rng = ChaCha8Rng::seed_from_u64(15);
        for n in (44..=75).chain([100, 165]) {
            let a: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let det_ln = DMatrix::from_row_slice(n, n, &a)
                .lu()
                .determinant()
                .abs()
                .ln();
            for panel in [1, 3, 8, LU_PANEL, 16, 32, n] {
                let mut lu = a.clone();
                let mut piv = vec![0; n];
                let (log_abs, sign) = if panel == LU_PANEL {
                    lu_factor(n, &mut lu, &mut piv)
                } else {
                    lu_factor_by_panels(n, panel, &mut lu, &mut piv)
                };
                assert!(sign != 0.0);
                assert!((log_abs - det_ln).abs() < 1e-10, "n = {n}, panel {panel}");
                let mut pa = a.clone();
                for (i, &p) in piv.iter().enumerate() {
                    for k in 0..n {
                        pa.swap(i * n + k, p * n + k);
                    }
                }
                for i in 0..n {
                    for j in 0..n {
                        let l_u: f64 = (0..=i.min(j))
                            .map(|k| if k == i { 1.0 } else { lu[i * n + k] } * lu[k * n + j])
                            .sum();
                        assert!(
                            (l_u - pa[i * n + j]).abs() < 1e-12 * n as f64,
                            "n = {n}, panel {panel}, ({i}, {j}): {l_u} vs {}",
                            pa[i * n + j]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_pivots_are_those_of_the_column_by_column_search() {
        // Panels of one column search every pivot separately and update by one product per
        // entry and panel (`x − l·u`, as the column-by-column elimination does), so panels of
        // width 1 and width n (the pivot found while eliminating the previous column) must give
        // the same bits everywhere, and panels of LU_PANEL columns those bits in U's first
        // panel rows.
        let mut rng = ChaCha8Rng::seed_from_u64(16);
        for n in [48, 57, 165] {
            // Entries −1, 0, 1 and a first column of ones: the multipliers are dyadic, so
            // the eliminated columns keep exact ties (which a `≥` would break differently).
            let a: Vec<f64> = (0..n * n)
                .map(|e| {
                    if e % n == 0 {
                        1.0
                    } else {
                        f64::from(rng.random_range(-1i32..=1))
                    }
                })
                .collect();
            let factor = |panel| {
                let (mut lu, mut piv) = (a.clone(), vec![0; n]);
                let (_, sign) = lu_factor_by_panels(n, panel, &mut lu, &mut piv);
                assert!(sign != 0.0, "n = {n}: singular test matrix");
                (lu, piv)
            };
            let (separate, whole, blocked) = (factor(1), factor(n), factor(LU_PANEL));
            assert_eq!(separate.1, whole.1, "n = {n}");
            assert_eq!(separate.0, whole.0, "n = {n}");
            assert_eq!(blocked.1[..LU_PANEL], whole.1[..LU_PANEL], "n = {n}");
            assert_eq!(
                blocked.0[..LU_PANEL * n],
                whole.0[..LU_PANEL * n],
                "n = {n}"
            );
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
        // Full blocks only, tails only, both.
        for n in [1, 3, 7, 8, 13, 16, 39] {
            let a: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut c: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let expected = DMatrix::from_row_slice(n, n, &c)
                + 0.5 * DMatrix::from_row_slice(n, n, &a) * DMatrix::from_row_slice(n, n, &b);
            gemm_acc(n, 0.5, &a, &b, &mut c);
            for i in 0..n {
                for j in 0..n {
                    assert!((c[i * n + j] - expected[(i, j)]).abs() < 1e-13, "n = {n}");
                }
            }
        }
    }

    #[test]
    fn gemm_has_the_bits_of_the_scalar_fused_sum_for_every_size() {
        // Every entry, whichever block (wide, narrow, shifted back) computes it, is
        // fma(alpha, Σ_k fma-chained a_ik·b_kj in k order, c): sizes below one block, between
        // the narrow and the wide block, multiples of both, and with every kind of tail.
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for n in (1..=48).chain([63, 64, 65, 165]) {
            let a: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let c0: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let alpha = rng.random_range(-2.0..2.0);
            let mut c = c0.clone();
            gemm_acc(n, alpha, &a, &b, &mut c);
            for i in 0..n {
                for j in 0..n {
                    let acc = (0..n).fold(0.0f64, |s, k| a[i * n + k].mul_add(b[k * n + j], s));
                    let expected = alpha.mul_add(acc, c0[i * n + j]);
                    assert_eq!(
                        c[i * n + j].to_bits(),
                        expected.to_bits(),
                        "n = {n}, ({i}, {j})"
                    );
                }
            }
        }
    }

    #[test]
    fn the_simd_block_has_the_bits_of_its_safe_twin() {
        // Whole blocks and blocks shifted back (adding only from i_done, j_done on), at sizes
        // with and without tails. On a CPU without AVX-512 the kernel declines and there is
        // nothing to compare; the CI machine has it.
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        for n in [16, 17, 39, 165] {
            let a: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let c0: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let last = (n - MR, n - NR);
            for (rows, cols) in [
                ((0, 0), (0, 0)),
                ((last.0, last.0), (last.1, last.1)),
                ((last.0, n - 3), (last.1, n - 5)),
                ((last.0, last.0 + 1), (0, 7)),
            ] {
                let alpha = rng.random_range(-2.0..2.0);
                let (mut simd, mut safe) = (c0.clone(), c0.clone());
                if !crate::integrate::simd::gemm_block16(n, alpha, (&a, &b, &mut simd), rows, cols)
                {
                    return;
                }
                gemm_block::<NR>(n, alpha, &a, &b, &mut safe, rows, cols);
                for (e, (x, y)) in simd.iter().zip(&safe).enumerate() {
                    assert_eq!(
                        x.to_bits(),
                        y.to_bits(),
                        "n = {n}, block {rows:?} {cols:?}, {e}"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "outside an n = 20 product")]
    fn the_simd_block_refuses_a_block_outside_the_matrix() {
        let m = vec![0.0; 400];
        let mut c = m.clone();
        if !crate::integrate::simd::gemm_block16(20, 1.0, (&m, &m, &mut c), (12, 12), (5, 5)) {
            panic!("outside an n = 20 product (no AVX-512 here: nothing to check)");
        }
    }

    #[test]
    fn element_wise_kernels_have_the_bits_of_scalar_loops() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        for n in [1, 7, 8, 64, 1521] {
            let x: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let y0: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let a = rng.random_range(-2.0..2.0);
            let (mut y1, mut y2, mut y3) = (y0.clone(), y0.clone(), y0.clone());
            axpy(a, &x, &mut y1);
            scale_into(a, &x, &mut y2);
            assert!(scale(a, &mut y3));
            for i in 0..n {
                assert_eq!(y1[i].to_bits(), (y0[i] + a * x[i]).to_bits());
                assert_eq!(y2[i].to_bits(), (a * x[i]).to_bits());
                assert_eq!(y3[i].to_bits(), (y0[i] * a).to_bits());
            }
            // Any non-finite element, wherever it sits, is reported.
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                let mut y4 = y0.clone();
                y4[n / 2] = bad;
                assert!(!scale(a, &mut y4), "n = {n}, {bad}");
            }
        }
    }

    #[test]
    fn the_fixed_size_solve_has_the_bits_of_the_general_one() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        for _ in 0..20 {
            let n = SMALL;
            let mut lu: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut piv = vec![0; n];
            lu_factor(n, &mut lu, &mut piv);
            let (mut small, mut general) = (b.clone(), b.clone());
            lu_solve(n, &lu, &piv, &mut small);
            lu_solve_general(n, &lu, &piv, &mut general);
            for (s, g) in small.iter().zip(&general) {
                assert_eq!(s.to_bits(), g.to_bits());
            }
        }
    }

    #[test]
    fn the_transposed_product_sums_in_row_order_for_every_element() {
        // Blocks of 8 elements, the last one shifted back to end at n: every element, whichever
        // block computes it (last), is Σ_k a_kj·x_k summed in k order.
        let mut rng = ChaCha8Rng::seed_from_u64(14);
        for n in [3, 8, 13, 39] {
            let a: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let x: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut y = vec![0.0; n];
            matvec_transposed(n, &a, &x, &mut y);
            for (j, y) in y.iter().enumerate() {
                let serial = (0..n).fold(0.0, |s, k| s + a[k * n + j] * x[k]);
                assert_eq!(y.to_bits(), serial.to_bits(), "n = {n}, element {j}");
            }
        }
    }

    /// `matvec` and `matvec_transposed`.
    type Product = fn(usize, &[f64], &[f64], &mut [f64]);

    #[test]
    fn matrix_vector_products_match_nalgebra() {
        let mut rng = ChaCha8Rng::seed_from_u64(10);
        // Tail only, body only, both (for `matvec`'s 8 lanes).
        for n in [1, 3, 8, 13, 16, 39] {
            let a: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let x: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let m = DMatrix::from_row_slice(n, n, &a);
            let xv = nalgebra::DVector::from_vec(x.clone());
            let products: [(Product, _); 2] =
                [(matvec, &m * &xv), (matvec_transposed, m.transpose() * &xv)];
            for (product, expected) in products {
                let mut y = vec![0.0; n];
                product(n, &a, &x, &mut y);
                for (y, e) in y.iter().zip(expected.iter()) {
                    assert!((y - e).abs() < 1e-13, "n = {n}: {y} vs {e}");
                }
            }
        }
    }
}
