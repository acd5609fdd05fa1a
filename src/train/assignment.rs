//! Minimum-cost perfect assignment (the Hungarian method, in the shortest-augmenting-path form
//! of Jonker and Volgenant): pairs particles of two configurations, and configurations of two
//! batches, for flow matching's optimal-transport pairing.

/// The assignment `col[i]` of rows to columns of the square `n × n` cost matrix `cost`
/// (row-major) that minimises `Σ_i cost[i][col[i]]`. O(n³), exact for finite costs; ties are
/// broken deterministically (lowest index first).
///
/// # Panics
///
/// Never for `cost.len() == n * n`; a shorter slice is a caller bug (debug assertion).
#[must_use]
pub fn min_cost_assignment(cost: &[f64], n: usize) -> Vec<usize> {
    debug_assert_eq!(cost.len(), n * n);
    // Potentials u (rows), v (columns); p[j] = row matched to column j (1-based, 0 = none).
    let mut u = vec![0.0; n + 1];
    let mut v = vec![0.0; n + 1];
    let mut p = vec![0usize; n + 1];
    let mut way = vec![0usize; n + 1];
    let mut min_to = vec![0.0; n + 1];
    let mut used = vec![false; n + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        min_to.fill(f64::INFINITY);
        used.fill(false);
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0;
            for j in 1..=n {
                if !used[j] {
                    let reduced = cost[(i0 - 1) * n + (j - 1)] - u[i0] - v[j];
                    if reduced < min_to[j] {
                        min_to[j] = reduced;
                        way[j] = j0;
                    }
                    if min_to[j] < delta {
                        delta = min_to[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    min_to[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        // Augment along the alternating path.
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut col = vec![0; n];
    for j in 1..=n {
        if p[j] > 0 {
            col[p[j] - 1] = j - 1;
        }
    }
    col
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn total(cost: &[f64], n: usize, col: &[usize]) -> f64 {
        (0..n).map(|i| cost[i * n + col[i]]).sum()
    }

    /// Every permutation of 0..n (Heap's algorithm).
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        fn heap(k: usize, a: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            if k <= 1 {
                out.push(a.clone());
                return;
            }
            for i in 0..k {
                heap(k - 1, a, out);
                let j = if k.is_multiple_of(2) { i } else { 0 };
                a.swap(j, k - 1);
            }
        }
        let mut out = Vec::new();
        heap(n, &mut (0..n).collect(), &mut out);
        out
    }

    #[test]
    fn matches_brute_force_on_random_matrices() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for n in 1..=7 {
            let all = permutations(n);
            for _ in 0..20 {
                let cost: Vec<f64> = (0..n * n).map(|_| rng.random_range(-5.0..5.0)).collect();
                let col = min_cost_assignment(&cost, n);
                let mut seen = col.clone();
                seen.sort_unstable();
                assert_eq!(seen, (0..n).collect::<Vec<_>>(), "a permutation");
                let best = all
                    .iter()
                    .map(|p| total(&cost, n, p))
                    .fold(f64::INFINITY, f64::min);
                assert!((total(&cost, n, &col) - best).abs() < 1e-12, "n = {n}");
            }
        }
    }

    #[test]
    fn recovers_a_hidden_permutation() {
        // cost[i][j] = (i − π(j))²: the optimum is the inverse of π, at zero cost.
        let pi = [3, 0, 4, 1, 2];
        let n = pi.len();
        let cost: Vec<f64> = (0..n * n)
            .map(|k| {
                let (i, j) = (k / n, k % n);
                (i as f64 - pi[j] as f64).powi(2)
            })
            .collect();
        let col = min_cost_assignment(&cost, n);
        for (i, &j) in col.iter().enumerate() {
            assert_eq!(pi[j], i);
        }
        assert!(min_cost_assignment(&[], 0).is_empty());
    }
}
