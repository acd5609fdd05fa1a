//! Equivariant optimal-transport pairing for flow matching (Klein, Krämer & Noé 2023): each
//! data configuration is aligned to a prior sample by the permutation of identical particles
//! and the orthogonal transformation (rotation or reflection) that bring it closest, and the
//! batch is then paired by a minimum-cost assignment on the aligned squared distances. The
//! straight paths between such pairs are short and cross little, which is what makes the
//! regressed field easy to learn and to integrate.

use nalgebra::DMatrix;
use rayon::prelude::*;

use super::assignment::min_cost_assignment;
use crate::alloc;
use crate::error::Result;
use crate::geometry::Layout;

/// Alternations of permutation and Kabsch in one alignment; each cannot increase the distance,
/// and in practice they settle within a few.
const MAX_ROUNDS: usize = 8;

/// Aligns `y` to `x` (both CoM-free, one configuration each): writes into `out` the
/// configuration `R·y_{π(i)}` (particle i of `out` is particle π(i) of y, rotated or reflected
/// by the orthogonal R) that minimises `|x − out|²` over π and R, and returns `|x − out|²`.
///
/// The joint problem has local optima, so it is solved from several starts: the identity and
/// every sign choice of the rotation that maps y's principal axes onto x's (2^D of them,
/// reflections included). From each, the optimal permutation for fixed R (a minimum-cost
/// assignment) and the optimal R for fixed π (Kabsch, reflections allowed) alternate until the
/// distance stops falling. The best result is kept: never worse than `y`'s best permutation.
pub fn align_into(x: &[f64], y: &[f64], layout: Layout, out: &mut [f64]) -> f64 {
    let dim = layout.dim;
    let mut starts = vec![DMatrix::<f64>::identity(dim, dim)];
    let (ex, ey) = (principal_axes(x, dim), principal_axes(y, dim));
    for signs in 0..(1usize << dim) {
        let s = DMatrix::from_fn(dim, dim, |a, b| match (a == b, signs >> a & 1) {
            (false, _) => 0.0,
            (true, 0) => 1.0,
            (true, _) => -1.0,
        });
        starts.push(&ex * s * ey.transpose());
    }
    let mut best = f64::INFINITY;
    let mut candidate = vec![0.0; out.len()];
    for start in starts {
        let d = align_from(x, y, layout, start, &mut candidate);
        if d < best {
            best = d;
            out.copy_from_slice(&candidate);
        }
    }
    best
}

/// The eigenvectors of `Σ_i x_i x_iᵀ` as columns, by decreasing eigenvalue.
fn principal_axes(x: &[f64], dim: usize) -> DMatrix<f64> {
    let mut c = DMatrix::<f64>::zeros(dim, dim);
    for p in x.chunks_exact(dim) {
        for a in 0..dim {
            for b in 0..dim {
                c[(a, b)] += p[a] * p[b];
            }
        }
    }
    let eigen = c.symmetric_eigen();
    let mut order: Vec<usize> = (0..dim).collect();
    order.sort_by(|&i, &j| eigen.eigenvalues[j].total_cmp(&eigen.eigenvalues[i]));
    DMatrix::from_fn(dim, dim, |a, k| eigen.eigenvectors[(a, order[k])])
}

/// One alternation of permutation and Kabsch from the orthogonal `r`; see [`align_into`].
fn align_from(x: &[f64], y: &[f64], layout: Layout, mut r: DMatrix<f64>, out: &mut [f64]) -> f64 {
    let (n, dim) = (layout.n_particles, layout.dim);
    let mut rotated = vec![0.0; n * dim];
    let mut cost = vec![0.0; n * n];
    let mut best = f64::INFINITY;
    out.copy_from_slice(y);
    for _ in 0..MAX_ROUNDS {
        // Permutation for the current R.
        for j in 0..n {
            for a in 0..dim {
                rotated[j * dim + a] = (0..dim).map(|b| r[(a, b)] * y[j * dim + b]).sum();
            }
        }
        for i in 0..n {
            for j in 0..n {
                cost[i * n + j] = (0..dim)
                    .map(|a| (x[i * dim + a] - rotated[j * dim + a]).powi(2))
                    .sum();
            }
        }
        let col = min_cost_assignment(&cost, n);
        let distance: f64 = (0..n).map(|i| cost[i * n + col[i]]).sum();
        if distance < best {
            best = distance;
            for (i, &j) in col.iter().enumerate() {
                out[i * dim..(i + 1) * dim].copy_from_slice(&rotated[j * dim..(j + 1) * dim]);
            }
        } else {
            break;
        }
        // Kabsch for that permutation: R maximising Σ x_i·R y_π(i) is V Uᵀ from the SVD of
        // H = Σ y_π(i) x_iᵀ (no determinant correction: reflections are symmetries too).
        let mut h = DMatrix::<f64>::zeros(dim, dim);
        for (i, &j) in col.iter().enumerate() {
            for a in 0..dim {
                for b in 0..dim {
                    h[(a, b)] += y[j * dim + a] * x[i * dim + b];
                }
            }
        }
        let svd = h.svd(true, true);
        let (Some(u), Some(v_t)) = (svd.u, svd.v_t) else {
            break;
        };
        r = v_t.transpose() * u.transpose();
    }
    best
}

/// Pairs a batch: `data` and `prior` hold `n` configurations each (CoM-free). Every data
/// configuration is aligned to every prior sample ([`align_into`]), the batch is assigned by
/// minimum total aligned distance, and `paired[i]` receives the data configuration paired with
/// prior sample `i`, aligned to it. Returns the data index chosen for each prior sample.
/// O(n²) alignments: meant for minibatches.
///
/// # Errors
///
/// [`crate::Error::Resource`] if the n² aligned configurations cannot be held (above
/// [`crate::alloc::MAX_ALLOCATION_BYTES`], or refused by the system); `paired` is untouched
/// then.
pub fn equivariant_ot_pairs_into(
    prior: &[f64],
    data: &[f64],
    layout: Layout,
    paired: &mut [f64],
) -> Result<Vec<usize>> {
    let mut buffers = OtBuffers::new(prior.len() / layout.len(), layout)?;
    Ok(equivariant_ot_pairs_in(
        &mut buffers,
        prior,
        data,
        layout,
        paired,
    ))
}

/// The n² alignments of a batch of n and their costs, allocated fallibly up front (the batch
/// is the caller's: 640 GB at n = 10⁵ for DW-4 used to abort the host).
pub(crate) struct OtBuffers {
    aligned: Vec<f64>,
    cost: Vec<f64>,
}

impl OtBuffers {
    /// Room for the alignments of a batch of `n` configurations of `layout`.
    pub(crate) fn new(n: usize, layout: Layout) -> Result<Self> {
        let pairs = n.checked_mul(n);
        let what = format!("the equivariant-OT alignments of a batch of {n} ({n}² pairs)");
        Ok(OtBuffers {
            aligned: alloc::zeros(pairs.and_then(|p| p.checked_mul(layout.len())), &what)?,
            cost: alloc::zeros(pairs, &what)?,
        })
    }
}

/// [`equivariant_ot_pairs_into`] in `buffers` (made by [`OtBuffers::new`] for this batch
/// size).
pub(crate) fn equivariant_ot_pairs_in(
    buffers: &mut OtBuffers,
    prior: &[f64],
    data: &[f64],
    layout: Layout,
    paired: &mut [f64],
) -> Vec<usize> {
    let len = layout.len();
    let n = prior.len() / len;
    let OtBuffers { aligned, cost } = buffers;
    // Each alignment is independent and deterministic: any thread count gives the same bits.
    aligned
        .par_chunks_mut(len)
        .zip(cost.par_iter_mut())
        .enumerate()
        .for_each(|(ij, (out, cost))| {
            let (i, j) = (ij / n, ij % n);
            *cost = align_into(
                &prior[i * len..(i + 1) * len],
                &data[j * len..(j + 1) * len],
                layout,
                out,
            );
        });
    let col = min_cost_assignment(cost, n);
    for (i, &j) in col.iter().enumerate() {
        let slot = (i * n + j) * len;
        paired[i * len..(i + 1) * len].copy_from_slice(&aligned[slot..slot + len]);
    }
    col
}

/// Pairs in order, each data configuration aligned to its prior sample: `paired[i]` is
/// `data[i]` permuted and rotated or reflected onto `prior[i]` ([`align_into`]). O(n)
/// alignments, in parallel; the same bits for any thread count.
pub fn aligned_pairs_into(prior: &[f64], data: &[f64], layout: Layout, paired: &mut [f64]) {
    let len = layout.len();
    paired
        .par_chunks_mut(len)
        .zip(prior.par_chunks(len).zip(data.par_chunks(len)))
        .for_each(|(out, (x, y))| {
            align_into(x, y, layout, out);
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_com_free(rng: &mut ChaCha8Rng, layout: Layout) -> Vec<f64> {
        let mut x: Vec<f64> = (0..layout.len())
            .map(|_| rng.random_range(-2.0..2.0))
            .collect();
        crate::geometry::remove_center_of_mass(&mut x, layout.dim);
        x
    }

    /// A random orthogonal matrix (a reflection half the time), from Gram–Schmidt.
    fn random_orthogonal(rng: &mut ChaCha8Rng, dim: usize) -> DMatrix<f64> {
        let m = DMatrix::from_fn(dim, dim, |_, _| rng.random_range(-1.0..1.0));
        let q = m.qr().q();
        if rng.random_bool(0.5) {
            let mut f = DMatrix::identity(dim, dim);
            f[(0, 0)] = -1.0;
            q * f
        } else {
            q
        }
    }

    #[test]
    fn a_permuted_rotated_copy_is_aligned_back_exactly() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for (n, dim) in [(4, 2), (13, 3), (5, 3)] {
            let layout = Layout::new(n, dim).unwrap();
            for _ in 0..10 {
                let x = random_com_free(&mut rng, layout);
                let q = random_orthogonal(&mut rng, dim);
                let mut perm: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    perm.swap(i, rng.random_range(0..=i));
                }
                // y_j = Q x_perm[j]: a relabelled, rotated (or reflected) copy of x.
                let mut y = vec![0.0; n * dim];
                for j in 0..n {
                    for a in 0..dim {
                        y[j * dim + a] = (0..dim).map(|b| q[(a, b)] * x[perm[j] * dim + b]).sum();
                    }
                }
                let mut out = vec![0.0; n * dim];
                let d = align_into(&x, &y, layout, &mut out);
                // The alternation may stop in a local optimum from the identity start; a
                // relabelled rotated copy of random points is found exactly in practice.
                assert!(d < 1e-20, "n = {n}, dim = {dim}: distance² {d}");
            }
        }
    }

    #[test]
    fn alignment_never_increases_the_distance_and_keeps_the_shape() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let layout = Layout::new(13, 3).unwrap();
        for _ in 0..20 {
            let x = random_com_free(&mut rng, layout);
            let y = random_com_free(&mut rng, layout);
            let mut out = vec![0.0; y.len()];
            let d = align_into(&x, &y, layout, &mut out);
            let raw: f64 = x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum();
            assert!(d <= raw + 1e-12);
            let direct: f64 = x.iter().zip(&out).map(|(a, b)| (a - b).powi(2)).sum();
            assert!((direct - d).abs() < 1e-9 * d.max(1.0));
            // An isometry and a relabelling: the sorted pair distances are unchanged.
            let pairs = |c: &[f64]| {
                let mut p = Vec::new();
                for i in 0..13 {
                    for j in 0..i {
                        p.push(
                            (0..3)
                                .map(|a| (c[i * 3 + a] - c[j * 3 + a]).powi(2))
                                .sum::<f64>(),
                        );
                    }
                }
                p.sort_by(f64::total_cmp);
                p
            };
            for (a, b) in pairs(&y).iter().zip(pairs(&out)) {
                assert!((a - b).abs() < 1e-9 * a.max(1.0));
            }
        }
    }

    #[test]
    fn batch_pairing_is_a_permutation_that_does_not_lose_to_the_identity_pairing() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let layout = Layout::new(4, 2).unwrap();
        let n = 16;
        let prior: Vec<f64> = (0..n)
            .flat_map(|_| random_com_free(&mut rng, layout))
            .collect();
        let data: Vec<f64> = (0..n)
            .flat_map(|_| random_com_free(&mut rng, layout))
            .collect();
        let mut paired = vec![0.0; data.len()];
        let col = equivariant_ot_pairs_into(&prior, &data, layout, &mut paired).unwrap();
        let mut seen = col.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
        let len = layout.len();
        let total =
            |a: &[f64], b: &[f64]| -> f64 { a.iter().zip(b).map(|(p, q)| (p - q).powi(2)).sum() };
        let mut identity = vec![0.0; len];
        let mut identity_total = 0.0;
        for i in 0..n {
            let s = i * len..(i + 1) * len;
            identity_total += align_into(&prior[s.clone()], &data[s], layout, &mut identity);
        }
        assert!(total(&prior, &paired) <= identity_total + 1e-12);
    }
}
