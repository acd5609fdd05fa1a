//! The pair loops: velocity, divergence and Jacobian from any radial function `φ(d)`.
//!
//! Each unordered pair is visited once in a fixed order, so the sums are deterministic. The
//! loops are compiled for several instruction sets and dispatched at run time; every version
//! performs the same operations in the same order (Rust never contracts into FMA), so results
//! are identical on every machine.

use multiversion::multiversion;

use super::radial::RadialFn;
use crate::geometry::MAX_DIM;

/// Softening of pair distances in the field, `d = sqrt(|r|² + EPS_D)` (not used by energies).
pub const EPS_D: f64 = 1e-6;

/// `r = x_i − x_j` and `|r|²`.
#[inline(always)]
fn separation(x: &[f64], dim: usize, i: usize, j: usize) -> ([f64; MAX_DIM], f64) {
    let mut r = [0.0; MAX_DIM];
    let mut r2 = 0.0;
    for k in 0..dim {
        r[k] = x[i * dim + k] - x[j * dim + k];
        r2 += r[k] * r[k];
    }
    (r, r2)
}

/// Writes `v` and returns `div v`.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
pub(crate) fn velocity_pairs<R: RadialFn>(x: &[f64], dim: usize, radial: &R, v: &mut [f64]) -> f64 {
    let n = x.len() / dim;
    v.fill(0.0);
    let mut div = 0.0;
    let mut scratch = radial.scratch();
    for i in 0..n {
        for j in i + 1..n {
            let (r, r2) = separation(x, dim, i, j);
            let d = (r2 + EPS_D).sqrt();
            let (phi, dphi) = radial.eval(d, &mut scratch);
            for k in 0..dim {
                v[i * dim + k] += phi * r[k];
                v[j * dim + k] -= phi * r[k];
            }
            // Both ordered pairs contribute D·φ + φ'·|r|²/d to the trace.
            div += 2.0 * (dim as f64 * phi + dphi * r2 / d);
        }
    }
    div
}

/// Writes `v` only: what an iterative solve needs, without the divergence (which costs a
/// division and `φ'` per pair). `v` has the same bits as from [`velocity_pairs`].
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
pub(crate) fn velocity_only_pairs<R: RadialFn>(x: &[f64], dim: usize, radial: &R, v: &mut [f64]) {
    let n = x.len() / dim;
    v.fill(0.0);
    let mut scratch = radial.scratch();
    for i in 0..n {
        for j in i + 1..n {
            let (r, r2) = separation(x, dim, i, j);
            let d = (r2 + EPS_D).sqrt();
            let phi = radial.value(d, &mut scratch);
            for k in 0..dim {
                v[i * dim + k] += phi * r[k];
                v[j * dim + k] -= phi * r[k];
            }
        }
    }
}

/// Writes `v` and the dense row-major Jacobian `∂v/∂x`, and returns `div v`.
///
/// Every off-diagonal block belongs to exactly one pair and is written once (no zeroing of the
/// n × n matrix first); only the diagonal blocks accumulate.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
pub(crate) fn velocity_jacobian_pairs<R: RadialFn>(
    x: &[f64],
    dim: usize,
    radial: &R,
    v: &mut [f64],
    jac: &mut [f64],
) -> f64 {
    let len = x.len();
    let n = len / dim;
    v.fill(0.0);
    for i in 0..n {
        for p in 0..dim {
            let row = (i * dim + p) * len + i * dim;
            jac[row..row + dim].fill(0.0);
        }
    }
    let mut div = 0.0;
    let mut scratch = radial.scratch();
    for i in 0..n {
        for j in i + 1..n {
            let (r, r2) = separation(x, dim, i, j);
            let d = (r2 + EPS_D).sqrt();
            let (phi, dphi) = radial.eval(d, &mut scratch);
            let q = dphi / d;
            for k in 0..dim {
                v[i * dim + k] += phi * r[k];
                v[j * dim + k] -= phi * r[k];
            }
            // ∂v_i/∂x_i gains B = φ I + (φ'/d) r rᵀ, ∂v_i/∂x_j is −B, and symmetrically for j.
            for p in 0..dim {
                for s in 0..dim {
                    let mut b = q * r[p] * r[s];
                    if p == s {
                        b += phi;
                    }
                    jac[(i * dim + p) * len + i * dim + s] += b;
                    jac[(j * dim + p) * len + j * dim + s] += b;
                    jac[(i * dim + p) * len + j * dim + s] = -b;
                    jac[(j * dim + p) * len + i * dim + s] = -b;
                }
            }
            div += 2.0 * (dim as f64 * phi + dphi * r2 / d);
        }
    }
    div
}
