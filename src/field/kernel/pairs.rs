//! The pair loops: velocity, divergence and Jacobian from any radial function `φ(d)`.
//!
//! Each unordered pair is visited once in a fixed order, so the sums are deterministic. The
//! loops are compiled for several instruction sets and dispatched at run time; every version
//! performs the same operations in the same order (Rust never contracts into FMA), so results
//! are identical on every machine.

use multiversion::multiversion;

use super::radial::RadialFn;
use crate::geometry::MAX_DIM;
use crate::species::Species;

/// Which pairs a pass of the pair loops visits: all of them (one species, one radial function)
/// or those of one species-pair type. A generic parameter, so that the single-species loops
/// compile to exactly the code (and the bits) they had before species existed.
pub(crate) trait PairFilter {
    /// Whether pair `i < j` has pair type `ty`.
    fn accept(&self, i: usize, j: usize, ty: usize) -> bool;
}

/// Every pair, of type 0.
pub(crate) struct AllPairs;

impl PairFilter for AllPairs {
    #[inline(always)]
    fn accept(&self, _: usize, _: usize, _: usize) -> bool {
        true
    }
}

impl PairFilter for Species {
    #[inline(always)]
    fn accept(&self, i: usize, j: usize, ty: usize) -> bool {
        self.pair_type_of_particles(i, j) == ty
    }
}

/// Softening of pair distances in the field, `d = sqrt(|r|² + EPS_D)` (not used by energies).
pub const EPS_D: f64 = 1e-6;

/// Pairs per block of the pair loops: two AVX-512 vectors, enough for the pairs' latency chains
/// to overlap (other sizes: see docs/numerics.md §"Pair loops").
const BLOCK: usize = 16;
/// The block for systems with at most this many pairs (DW-4 has 6): the block's buffers are
/// zeroed once per field evaluation, a visible cost for DW-4 at 16 (docs/numerics.md
/// §"Pair loops").
const SMALL_BLOCK: usize = 8;

/// A block of consecutive pairs `i < j` in row order, in structure-of-arrays form.
///
/// The loops run in two phases per block: first everything that depends on one pair only (the
/// separation and the distance while filling, then the table lookup and the polynomial of φ,
/// the divergence term), element-wise over the block so that the pairs' latency chains overlap
/// and the compiler vectorises what it can; then the accumulation into v (and the Jacobian),
/// pair by pair in the same order as a plain double loop. Each pair's values are computed by
/// the same operations as in a scalar loop, so the results have the same bits.
///
/// The dimension `D` is a constant so that the per-component loops unroll (the dispatchers at
/// the end of this file pick it from the layout, which allows 1 ≤ D ≤ MAX_DIM).
struct PairBlock<const B: usize, const D: usize> {
    len: usize,
    i: [u32; B],
    j: [u32; B],
    /// Components of `r = x_i − x_j`.
    r: [[f64; B]; D],
    r2: [f64; B],
    d: [f64; B],
    phi: [f64; B],
    dphi: [f64; B],
}

impl<const B: usize, const D: usize> PairBlock<B, D> {
    fn new() -> Self {
        PairBlock {
            len: 0,
            i: [0; B],
            j: [0; B],
            r: [[0.0; B]; D],
            r2: [0.0; B],
            d: [0.0; B],
            phi: [0.0; B],
            dphi: [0.0; B],
        }
    }

    /// Fills the block with the pairs of type `ty` (all pairs for [`AllPairs`]) from the cursor
    /// `(i, j)` on, advancing it; returns false when there were none left.
    #[inline(always)]
    fn fill<P: PairFilter>(
        &mut self,
        x: &[[f64; D]],
        pairs: &P,
        ty: usize,
        cursor: &mut (usize, usize),
    ) -> bool {
        let n = x.len();
        let (mut i, mut j) = *cursor;
        let mut m = 0;
        while m < B && i + 1 < n {
            if !pairs.accept(i, j, ty) {
                j += 1;
                if j == n {
                    i += 1;
                    j = i + 1;
                }
                continue;
            }
            self.i[m] = i as u32;
            self.j[m] = j as u32;
            let mut r2 = 0.0;
            let (xi, xj) = (&x[i], &x[j]);
            for k in 0..D {
                let r = xi[k] - xj[k];
                self.r[k][m] = r;
                r2 += r * r;
            }
            self.r2[m] = r2;
            // Here rather than in a loop over the block afterwards: that loop reloads `r2`
            // from the stack as a vector after scalar stores (a store-forwarding stall), or
            // runs serially when the block is not full (DW-4: 6 pairs in 8 lanes).
            self.d[m] = (r2 + EPS_D).sqrt();
            m += 1;
            j += 1;
            if j == n {
                i += 1;
                j = i + 1;
            }
        }
        *cursor = (i, j);
        self.len = m;
        m > 0
    }

    /// Adds pair `p`'s terms `±φ·r` to the velocities of its two particles.
    #[inline(always)]
    fn add_velocity(&self, p: usize, v: &mut [[f64; D]]) {
        let (i, j, phi) = (self.i[p] as usize, self.j[p] as usize, self.phi[p]);
        for (k, r) in self.r.iter().enumerate() {
            let term = phi * r[p];
            v[i][k] += term;
            v[j][k] -= term;
        }
    }
}

/// Writes `v` and returns `div v`.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
fn velocity_pairs_in<R: RadialFn, P: PairFilter, const B: usize, const D: usize>(
    x: &[f64],
    pairs: &P,
    radials: &[R],
    v: &mut [f64],
) -> f64 {
    v.fill(0.0);
    // Per particle, so that a pair costs one bounds check per particle, not per component.
    let (x_p, _) = x.as_chunks::<D>();
    let (v_p, _) = v.as_chunks_mut::<D>();
    let mut div = 0.0;
    let mut b = PairBlock::<B, D>::new();
    let dim_f = D as f64;
    for (ty, radial) in radials.iter().enumerate() {
        let mut scratch = radial.scratch();
        let mut cursor = (0, 1);
        while b.fill(x_p, pairs, ty, &mut cursor) {
            let m = b.len;
            radial.eval_block(&b.d[..m], &mut b.phi[..m], &mut b.dphi[..m], &mut scratch);
            // Both ordered pairs contribute D·φ + φ'·|r|²/d to the trace (kept in `dphi`'s place).
            for (((dphi, phi), r2), d) in b.dphi[..m]
                .iter_mut()
                .zip(&b.phi[..m])
                .zip(&b.r2[..m])
                .zip(&b.d[..m])
            {
                *dphi = 2.0 * (dim_f * phi + *dphi * r2 / d);
            }
            for p in 0..m {
                b.add_velocity(p, v_p);
                div += b.dphi[p];
            }
        }
    }
    div
}

/// Writes `v` only: what an iterative solve needs, without the divergence (which costs a
/// division and `φ'` per pair). `v` has the same bits as from [`velocity_pairs`].
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
fn velocity_only_pairs_in<R: RadialFn, P: PairFilter, const B: usize, const D: usize>(
    x: &[f64],
    pairs: &P,
    radials: &[R],
    v: &mut [f64],
) {
    v.fill(0.0);
    // Per particle, so that a pair costs one bounds check per particle, not per component.
    let (x_p, _) = x.as_chunks::<D>();
    let (v_p, _) = v.as_chunks_mut::<D>();
    let mut b = PairBlock::<B, D>::new();
    for (ty, radial) in radials.iter().enumerate() {
        let mut scratch = radial.scratch();
        let mut cursor = (0, 1);
        while b.fill(x_p, pairs, ty, &mut cursor) {
            let m = b.len;
            radial.value_block(&b.d[..m], &mut b.phi[..m], &mut scratch);
            for p in 0..m {
                b.add_velocity(p, v_p);
            }
        }
    }
}

/// Writes `v` and the dense row-major Jacobian `∂v/∂x`, and returns `div v`; with `GRAD`,
/// also `∇(div v)` into `div_gradient` (untouched otherwise). `v`, the Jacobian and the
/// divergence have the same bits either way.
///
/// Every off-diagonal block belongs to exactly one pair and is written once (no zeroing of the
/// n × n matrix first); only the diagonal blocks accumulate.
///
/// The gradient: a pair contributes `T(d) = 2·(D·φ + φ'·|r|²/d)` to the divergence, with
/// `|r|² = d² − ε_d`, so `T'(d)/d = 2·((D + 1)·q + φ'' + (ε_d/d²)·(q − φ''))` with `q = φ'/d`,
/// and `±(T'/d)·r` to the gradient at its two particles.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
fn velocity_jacobian_pairs_in<
    R: RadialFn,
    P: PairFilter,
    const B: usize,
    const D: usize,
    const GRAD: bool,
>(
    x: &[f64],
    pairs: &P,
    radials: &[R],
    v: &mut [f64],
    jac: &mut [f64],
    div_gradient: &mut [f64],
) -> f64 {
    let len = x.len();
    let n = len / D;
    v.fill(0.0);
    let (x_p, _) = x.as_chunks::<D>();
    let (v_p, _) = v.as_chunks_mut::<D>();
    let (grad_p, _) = div_gradient.as_chunks_mut::<D>();
    if GRAD {
        grad_p[..n].fill([0.0; D]);
    }
    // The Jacobian as n·D rows of n blocks of D: entry (row, j·D + s) is jac_p[row·n + j][s].
    let (jac_p, _) = jac[..len * len].as_chunks_mut::<D>();
    for i in 0..n {
        for p in 0..D {
            jac_p[(i * D + p) * n + i] = [0.0; D];
        }
    }
    let mut div = 0.0;
    let mut b = PairBlock::<B, D>::new();
    let dim_f = D as f64;
    // φ'/d per pair, then the divergence term in `dphi`'s place; with GRAD, φ'' and then T'/d.
    let mut q = [0.0; B];
    let mut g = [0.0; B];
    for (ty, radial) in radials.iter().enumerate() {
        let mut scratch = radial.scratch();
        let mut cursor = (0, 1);
        while b.fill(x_p, pairs, ty, &mut cursor) {
            let m = b.len;
            if GRAD {
                radial.eval2_block(
                    &b.d[..m],
                    &mut b.phi[..m],
                    &mut b.dphi[..m],
                    &mut g[..m],
                    &mut scratch,
                );
            } else {
                radial.eval_block(&b.d[..m], &mut b.phi[..m], &mut b.dphi[..m], &mut scratch);
            }
            for (((((q, g), dphi), phi), r2), d) in q[..m]
                .iter_mut()
                .zip(&mut g[..m])
                .zip(&mut b.dphi[..m])
                .zip(&b.phi[..m])
                .zip(&b.r2[..m])
                .zip(&b.d[..m])
            {
                *q = *dphi / d;
                if GRAD {
                    // `g` holds φ''.
                    let e = EPS_D / (r2 + EPS_D);
                    *g = 2.0 * ((dim_f + 1.0) * *q + *g + e * (*q - *g));
                }
                *dphi = 2.0 * (dim_f * phi + *dphi * r2 / d);
            }
            for p in 0..m {
                b.add_velocity(p, v_p);
                let (i, j, phi, q) = (b.i[p] as usize, b.j[p] as usize, b.phi[p], q[p]);
                let r: [f64; D] = std::array::from_fn(|k| b.r[k][p]);
                // ∂v_i/∂x_i gains B = φ I + (φ'/d) r rᵀ, ∂v_i/∂x_j is −B, and symmetrically for j.
                // `q·(r_p·r_s)` is the same bits for (p, s) and (s, p): the assembled Jacobian is
                // exactly symmetric, as the exact-discrete inverse's chord products assume.
                for p in 0..D {
                    let (row_i, row_j) = ((i * D + p) * n, (j * D + p) * n);
                    for s in 0..D {
                        let mut b = q * (r[p] * r[s]);
                        if p == s {
                            b += phi;
                        }
                        jac_p[row_i + i][s] += b;
                        jac_p[row_j + j][s] += b;
                        jac_p[row_i + j][s] = -b;
                        jac_p[row_j + i][s] = -b;
                    }
                }
                if GRAD {
                    for (k, r) in r.iter().enumerate() {
                        let term = g[p] * r;
                        grad_p[i][k] += term;
                        grad_p[j][k] -= term;
                    }
                }
                div += b.dphi[p];
            }
        }
    }
    div
}

/// Calls `$f::<R, P, B, D>(x, pairs, radials, ...)` (or `$f::<R, P, B, D, $flag>`) with the
/// block size for the system's pair count and the dimension as a constant, for all pairs
/// (`species` `None`, one radial function) or per species-pair type (one radial function per
/// type, in the numbering of [`crate::species`]).
macro_rules! dispatch {
    ($f:ident $(, $flag:literal)?; $x:expr, $dim:expr, $species:expr, $radials:expr, $($arg:expr),*) => {{
        let (x, dim, radials) = ($x, $dim, $radials);
        let n = x.len() / dim;
        let few = n * n.saturating_sub(1) / 2 <= SMALL_BLOCK;
        match $species {
            None => {
                debug_assert_eq!(radials.len(), 1);
                dispatch!(@dim $f $(, $flag)?; few, dim, AllPairs, x, &AllPairs, radials, $($arg),*)
            }
            Some(species) => {
                debug_assert_eq!(radials.len(), species.n_pair_types());
                dispatch!(@dim $f $(, $flag)?; few, dim, Species, x, species, radials, $($arg),*)
            }
        }
    }};
    (@dim $f:ident $(, $flag:literal)?; $few:expr, $dim:expr, $p:ty, $($arg:expr),*) => {{
        match ($few, $dim) {
            (true, 1) => $f::<R, $p, SMALL_BLOCK, 1 $(, $flag)?>($($arg),*),
            (true, 2) => $f::<R, $p, SMALL_BLOCK, 2 $(, $flag)?>($($arg),*),
            (true, 3) => $f::<R, $p, SMALL_BLOCK, 3 $(, $flag)?>($($arg),*),
            (false, 1) => $f::<R, $p, BLOCK, 1 $(, $flag)?>($($arg),*),
            (false, 2) => $f::<R, $p, BLOCK, 2 $(, $flag)?>($($arg),*),
            (false, 3) => $f::<R, $p, BLOCK, 3 $(, $flag)?>($($arg),*),
            (_, dim) => unreachable!("Layout admits 1 ≤ dim ≤ {MAX_DIM}, not {dim}"),
        }
    }};
}

/// Writes `v` and returns `div v`. `species` `None`: one radial function for all pairs;
/// otherwise one per species-pair type (here and below).
pub(crate) fn velocity_pairs<R: RadialFn>(
    x: &[f64],
    dim: usize,
    species: Option<&Species>,
    radials: &[R],
    v: &mut [f64],
) -> f64 {
    dispatch!(velocity_pairs_in; x, dim, species, radials, v)
}

/// Writes `v` only (see [`velocity_only_pairs_in`]).
pub(crate) fn velocity_only_pairs<R: RadialFn>(
    x: &[f64],
    dim: usize,
    species: Option<&Species>,
    radials: &[R],
    v: &mut [f64],
) {
    dispatch!(velocity_only_pairs_in; x, dim, species, radials, v)
}

/// Writes `v` and the dense Jacobian and returns `div v` (see [`velocity_jacobian_pairs_in`]).
pub(crate) fn velocity_jacobian_pairs<R: RadialFn>(
    x: &[f64],
    dim: usize,
    species: Option<&Species>,
    radials: &[R],
    v: &mut [f64],
    jac: &mut [f64],
) -> f64 {
    dispatch!(velocity_jacobian_pairs_in, false; x, dim, species, radials, v, jac, &mut [])
}

/// As [`velocity_jacobian_pairs`], also writing `∇(div v)` (see [`velocity_jacobian_pairs_in`]).
pub(crate) fn velocity_jacobian_divgrad_pairs<R: RadialFn>(
    x: &[f64],
    dim: usize,
    species: Option<&Species>,
    radials: &[R],
    v: &mut [f64],
    jac: &mut [f64],
    div_gradient: &mut [f64],
) -> f64 {
    dispatch!(velocity_jacobian_pairs_in, true; x, dim, species, radials, v, jac, div_gradient)
}
