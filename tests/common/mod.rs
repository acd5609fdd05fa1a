//! Shared helpers for the integration tests: random configurations, rotations, finite
//! differences.
#![allow(dead_code)]

pub mod families;

use eqflow::field::{KernelConfig, KernelField, VectorField};
use eqflow::geometry::Layout;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A random configuration with particles spread over a box of half-width `spread`.
pub fn random_config(rng: &mut ChaCha8Rng, len: usize, spread: f64) -> Vec<f64> {
    (0..len)
        .map(|_| rng.random_range(-spread..spread))
        .collect()
}

/// A field with random (not just initial) parameters, so every parameter block matters.
pub fn random_field(n: usize, dim: usize, kernels: KernelConfig, seed: u64) -> KernelField {
    let layout = Layout::new(n, dim).unwrap();
    let base = KernelField::initialise(layout, kernels.clone(), seed).unwrap();
    let mut r = rng(seed ^ 0x5eed);
    let pl = base.param_layout();
    let mut p = base.params().to_vec();
    for v in &mut p[pl.b()] {
        *v = r.random_range(-0.3..0.3);
    }
    for v in &mut p[pl.s()] {
        *v = r.random_range(-0.3..0.3);
    }
    for v in &mut p[pl.log_inv_gamma_dist().start..pl.log_inv_gamma_time().end] {
        *v += r.random_range(-0.2..0.2);
    }
    KernelField::new(layout, kernels, p).unwrap()
}

/// Central finite-difference Jacobian of `f: R^n → R^m`, row-major m × n.
pub fn fd_jacobian(f: impl Fn(&[f64]) -> Vec<f64>, x: &[f64], h: f64) -> Vec<f64> {
    let n = x.len();
    let m = f(x).len();
    let mut jac = vec![0.0; m * n];
    let mut xp = x.to_vec();
    for b in 0..n {
        xp[b] = x[b] + h;
        let fp = f(&xp);
        xp[b] = x[b] - h;
        let fm = f(&xp);
        xp[b] = x[b];
        for a in 0..m {
            jac[a * n + b] = (fp[a] - fm[a]) / (2.0 * h);
        }
    }
    jac
}

pub fn velocity(field: &dyn VectorField, x: &[f64], t: f64) -> Vec<f64> {
    let mut v = vec![0.0; x.len()];
    field.velocity_into(x, t, &mut v);
    v
}

/// A random orthogonal D × D matrix (rotation, or reflection if `reflect`).
pub fn random_orthogonal(rng: &mut ChaCha8Rng, dim: usize, reflect: bool) -> Vec<f64> {
    let m = nalgebra::DMatrix::from_fn(dim, dim, |_, _| rng.random_range(-1.0..1.0));
    let q = m.qr().q();
    let mut q: Vec<f64> = (0..dim * dim).map(|i| q[(i / dim, i % dim)]).collect();
    let det = nalgebra::DMatrix::from_row_slice(dim, dim, &q).determinant();
    if (det < 0.0) != reflect {
        for v in q.iter_mut().take(dim) {
            *v = -*v;
        }
    }
    q
}

/// Applies the D × D matrix `q` to every particle.
pub fn rotate(x: &[f64], dim: usize, q: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for (p, o) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        for a in 0..dim {
            o[a] = (0..dim).map(|b| q[a * dim + b] * p[b]).sum();
        }
    }
    out
}

/// Reorders particles: particle `i` of the output is particle `perm[i]` of the input.
pub fn permute(x: &[f64], dim: usize, perm: &[usize]) -> Vec<f64> {
    perm.iter()
        .flat_map(|&p| x[p * dim..(p + 1) * dim].iter().copied())
        .collect()
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
}

/// log|det| of a dense row-major matrix via nalgebra's LU.
pub fn log_abs_det(m: &[f64], n: usize) -> f64 {
    nalgebra::DMatrix::from_row_slice(n, n, m)
        .determinant()
        .abs()
        .ln()
}

/// Removes C `/* ... */` and `// ...` comments (no string literal in our headers contains
/// either sequence).
pub fn strip_c_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let block = rest.find("/*");
        let line = rest.find("//");
        match (block, line) {
            (Some(b), l) if l.is_none_or(|l| b < l) => {
                out.push_str(&rest[..b]);
                let end = rest[b..].find("*/").expect("unterminated comment");
                rest = &rest[b + end + 2..];
            }
            (_, Some(l)) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |end| &rest[l + end..]);
            }
            (None, None) => {
                out.push_str(rest);
                return out;
            }
            (Some(_), None) => unreachable!("handled by the first arm"),
        }
    }
}

/// A rayon pool of `threads` threads, for the tests that compare results across thread counts.
pub fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}
