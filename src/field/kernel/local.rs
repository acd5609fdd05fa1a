//! The kernel field's bounds on a ball of configurations ([`crate::field::LocalBounds`]): the
//! global bounds of `bound.rs` with the maximum over all distances replaced by one per pair,
//! over the distances the pair can reach inside the ball.
//!
//! With `φ = c + ψ` (`c(t)` the constant the radial function tends to past its last kernel),
//! `v_i = Σ_j c·r_ij + Σ_j ψ(d_ij)·r_ij`. The first part is `(L_c ⊗ I)x` with `L_c` the
//! Laplacian of the complete graph weighted by the pairs' constants; it vanishes on the
//! centre of mass, so its norm is at most `‖L_c‖·‖x − x̄‖ ≤ N·max|c|·‖x − x̄‖` (one species:
//! exactly `|c|·N·‖x − x̄‖`). So
//!
//! ```text
//! ‖v(x)‖ ≤ N·max|c|·‖x − x̄‖ + sqrt(Σ_i G_i²),   G_i = Σ_{j≠i} sup d|ψ_ij(d)|   (|r_ij| ≤ d_ij)
//! ```
//!
//! with the supremum over all d and pair types (the growth bound: `G_i = (N − 1)·sup d|ψ|`)
//! or over the pair's reachable distances and its own type (on a ball). With several species
//! each pair type has its own grid and tables. Inside the ball `‖x − y‖ ≤ ρ` a pair's softened
//! distance moves by at most `|(x_i − x_j) − (y_i − y_j)| ≤ √2·ρ`. The Jacobian is
//! `Σ_{i<j} (e_i − e_j)(e_i − e_j)ᵀ ⊗ B_ij` (`bound.rs`), so with `M_ij` the largest
//! eigenvalue magnitude of `B_ij` over the pair's reachable distances,
//! `|uᵀJu| ≤ Σ_{i<j} M_ij |u_i − u_j|² ≤ λ_max(weighted Laplacian)·|u|²`, and the weighted
//! Laplacian's largest eigenvalue is at most both `N·max M_ij` (as in the global bound) and
//! `2·max_i Σ_j M_ij` (Gershgorin); the compression bound is the same sum over the negative
//! eigenvalues only.
//!
//! Each maximum over a distance interval is taken on the global bound's grid, with its
//! first-order slope margin per grid cell (`bound.rs`): the same footing as the global bound
//! (not interval arithmetic), and never above it. The per-cell envelopes of the three
//! quantities are tabulated once per time, with range-maximum tables: a query costs at most
//! two partial blocks of cells and two lookups.

use super::KernelField;
use super::bound::{Side, cell_candidate};
use super::pairs::EPS_D;
use crate::Result;
use crate::alloc;
use crate::field::local::{BallBounds, LocalBounds};
use crate::species::Species;

/// Grid cells per block of an envelope's block maxima.
const BLOCK: usize = 16;

/// Largest table (cells × times) built; a larger one (bandwidths thousands of times apart, or
/// tens of thousands of steps) is refused and the certificate falls back to the global bounds.
const MAX_TABLE_CELLS: usize = 1 << 24;

/// The larger of two values, NaN if either is: a NaN bound must never certify.
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || a > b { a } else { b }
}

/// An upper envelope of a function sampled on the grid: per cell `[d_i, d_{i+1}]`, the global
/// bound's candidate for that cell (`bound::cell_candidate`: the larger end value plus half the
/// largest change over the cell and its two neighbours), with the maxima of blocks of [`BLOCK`] cells and a sparse
/// table over the blocks, so that a maximum over any range costs at most two partial blocks
/// and two table lookups.
struct Envelope {
    cells: Vec<f64>,
    /// `levels[j][b]`: the maximum of blocks `b..b + 2^j`.
    levels: Vec<Vec<f64>>,
}

impl Envelope {
    fn new(f: &[f64]) -> Result<Envelope> {
        const WHAT: &str = "the local bound tables";
        let n_cells = f.len().saturating_sub(1).max(1);
        let mut cells = alloc::with_capacity(Some(n_cells), WHAT)?;
        if f.len() < 2 {
            // One point: φ is constant on the whole grid.
            cells.push(f[0]);
        } else {
            cells.extend((0..n_cells).map(|i| cell_candidate(f, i).0));
        }
        let n_blocks = n_cells.div_ceil(BLOCK);
        let mut blocks = alloc::with_capacity(Some(n_blocks), WHAT)?;
        blocks.extend(
            cells
                .chunks(BLOCK)
                .map(|c| c.iter().copied().fold(f64::NEG_INFINITY, nan_max)),
        );
        let mut levels = vec![blocks];
        let mut width = 1;
        while 2 * width <= n_blocks {
            let below = &levels[levels.len() - 1];
            let mut level = alloc::with_capacity(Some(n_blocks + 1 - 2 * width), WHAT)?;
            level.extend((0..=n_blocks - 2 * width).map(|b| nan_max(below[b], below[b + width])));
            levels.push(level);
            width *= 2;
        }
        Ok(Envelope { cells, levels })
    }

    /// The maximum over blocks `lo..=hi` (`lo ≤ hi`).
    fn blocks_max(&self, lo: usize, hi: usize) -> f64 {
        let j = (hi - lo + 1).ilog2() as usize;
        let level = &self.levels[j];
        nan_max(level[lo], level[hi + 1 - (1 << j)])
    }

    /// The envelope's maximum over cells `lo..=hi`.
    fn max_over(&self, lo: usize, hi: usize) -> f64 {
        let (lo_block, hi_block) = (lo / BLOCK, hi / BLOCK);
        let cells = |range: std::ops::RangeInclusive<usize>| {
            self.cells[range]
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, nan_max)
        };
        if lo_block == hi_block {
            return cells(lo..=hi);
        }
        let mut m = nan_max(
            cells(lo..=(lo_block + 1) * BLOCK - 1),
            cells(hi_block * BLOCK..=hi),
        );
        if lo_block + 1 < hi_block {
            m = nan_max(m, self.blocks_max(lo_block + 1, hi_block - 1));
        }
        m
    }

    /// The maximum over all cells.
    fn max(&self) -> f64 {
        self.blocks_max(0, self.levels[0].len() - 1)
    }
}

/// One time's envelopes of one pair type: the pair block's eigenvalue magnitude (Lipschitz),
/// its negated most negative eigenvalue (compression), and `d·|ψ(d)|` (magnitude).
struct TimeTable {
    lipschitz: Envelope,
    compression: Envelope,
    pull: Envelope,
    /// `c(t)`, the radial function's constant.
    c: f64,
}

/// One pair type's grid and its tables at every time.
struct TypeTables {
    step: f64,
    /// The grid's first distance ([`BoundGrid`]'s).
    origin: f64,
    n_cells: usize,
    times: Vec<TimeTable>,
}

impl TypeTables {
    /// The grid cell holding distance `d` (clamped to the grid: past its end φ is constant,
    /// which the last cell covers).
    fn cell(&self, d: f64) -> usize {
        let x = ((d - self.origin) / self.step).floor();
        if x.is_nan() || x >= (self.n_cells - 1) as f64 {
            // NaN: a non-finite configuration; the last cell is as good as any (the caller
            // checks the configuration before).
            self.n_cells - 1
        } else if x <= 0.0 {
            0
        } else {
            x as usize
        }
    }
}

/// The kernel field's [`LocalBounds`] at a list of times.
pub(crate) struct KernelLocalBounds {
    n_particles: usize,
    dim: usize,
    /// `None` for a single species.
    species: Option<Species>,
    /// One per pair type.
    types: Vec<TypeTables>,
}

impl KernelField {
    /// The tables of [`KernelLocalBounds`] at `times`; `None` for grids too large to tabulate
    /// (the per-configuration certificate then uses the global bounds).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Resource`] if the tables cannot be allocated.
    pub(crate) fn local_bound_tables(&self, times: &[f64]) -> Result<Option<KernelLocalBounds>> {
        const WHAT: &str = "the local bound tables";
        let mut types = alloc::with_capacity(Some(self.n_pair_types()), WHAT)?;
        let mut cells_total = 0_usize;
        for ty in 0..self.n_pair_types() {
            let Some(grid) = self.bound_grid(ty) else {
                return Ok(None);
            };
            let n_cells = grid.n_points.saturating_sub(1).max(1);
            cells_total = cells_total.saturating_add(n_cells.saturating_mul(times.len()));
            if cells_total > MAX_TABLE_CELLS {
                return Ok(None);
            }
            let n = grid.n_points;
            let mut f_both = alloc::zeros(Some(n), WHAT)?;
            let mut f_compression = alloc::zeros(Some(n), WHAT)?;
            let mut f_pull = alloc::zeros(Some(n), WHAT)?;
            let mut phi = alloc::zeros(Some(n), WHAT)?;
            let mut slope = alloc::zeros(Some(n), WHAT)?;
            let mut tables = alloc::with_capacity(Some(times.len()), WHAT)?;
            for &t in times {
                let slice = self.time_slice_of(ty, t);
                grid.fill(
                    &self.grid_weights(ty, &grid, &slice, t),
                    &mut phi,
                    &mut slope,
                );
                for i in 0..n {
                    let d = grid.distance(i);
                    let (phi, slope) = (phi[i], slope[i]);
                    f_both[i] = Side::Both.value(phi, slope);
                    f_compression[i] = Side::Compression.value(phi, slope);
                    f_pull[i] = d * (phi - slice.c).abs();
                }
                tables.push(TimeTable {
                    lipschitz: Envelope::new(&f_both)?,
                    compression: Envelope::new(&f_compression)?,
                    pull: Envelope::new(&f_pull)?,
                    c: slice.c,
                });
            }
            types.push(TypeTables {
                step: grid.step,
                origin: grid.origin,
                n_cells,
                times: tables,
            });
        }
        let layout = self.layout();
        Ok(Some(KernelLocalBounds {
            n_particles: layout.n_particles,
            dim: layout.dim,
            species: self.species().cloned(),
            types,
        }))
    }
}

impl KernelLocalBounds {
    /// The tables of the pair `i < j`.
    fn tables_of(&self, i: usize, j: usize) -> &TypeTables {
        match &self.species {
            None => &self.types[0],
            Some(species) => &self.types[species.pair_type_of_particles(i, j)],
        }
    }

    /// `N·max |c|` over the pair types at time `k`: the norm of the constant part's linear
    /// map on centre-of-mass-free configurations (module docs).
    fn linear_norm(&self, k: usize) -> f64 {
        let c = self
            .types
            .iter()
            .map(|t| t.times[k].c.abs())
            .fold(0.0, nan_max);
        c * self.n_particles as f64
    }
}

impl LocalBounds for KernelLocalBounds {
    fn growth(&self, k: usize) -> (f64, f64) {
        let n = self.n_particles as f64;
        let pull = self
            .types
            .iter()
            .map(|t| t.times[k].pull.max())
            .fold(0.0, nan_max);
        (n.sqrt() * (n - 1.0) * pull, self.linear_norm(k))
    }

    fn on_ball(&self, k: usize, centre: &[f64], radius: f64, scratch: &mut Vec<f64>) -> BallBounds {
        let (n, dim) = (self.n_particles, self.dim);
        scratch.clear();
        scratch.resize(3 * n, 0.0);
        let (row_lipschitz, rest) = scratch.split_at_mut(n);
        let (row_compression, row_pull) = rest.split_at_mut(n);
        let reach = std::f64::consts::SQRT_2 * radius;
        let (mut max_lipschitz, mut max_compression) = (0.0_f64, 0.0_f64);
        for i in 0..n {
            for j in i + 1..n {
                let r2: f64 = (0..dim)
                    .map(|a| {
                        let r = centre[i * dim + a] - centre[j * dim + a];
                        r * r
                    })
                    .sum();
                let d = (r2 + EPS_D).sqrt();
                let tables = self.tables_of(i, j);
                let table = &tables.times[k];
                let (lo, hi) = (tables.cell(d - reach), tables.cell(d + reach));
                let m = table.lipschitz.max_over(lo, hi);
                let mc = nan_max(table.compression.max_over(lo, hi), 0.0);
                let g = table.pull.max_over(lo, hi);
                max_lipschitz = nan_max(max_lipschitz, m);
                max_compression = nan_max(max_compression, mc);
                for p in [i, j] {
                    row_lipschitz[p] += m;
                    row_compression[p] += mc;
                    row_pull[p] += g;
                }
            }
        }
        let nf = n as f64;
        let row_max = |row: &[f64]| row.iter().copied().fold(0.0, nan_max);
        let centre_norm = centre.iter().map(|x| x * x).sum::<f64>().sqrt();
        let pull = row_pull.iter().map(|g| g * g).sum::<f64>().sqrt();
        BallBounds {
            magnitude: self.linear_norm(k) * (centre_norm + radius) + pull,
            lipschitz: laplacian_bound(nf * max_lipschitz, 2.0 * row_max(row_lipschitz)),
            compression: laplacian_bound(nf * max_compression, 2.0 * row_max(row_compression)),
        }
    }
}

/// The smaller of the weighted Laplacian's two eigenvalue bounds (module docs), NaN if either
/// is.
fn laplacian_bound(complete_graph: f64, gershgorin: f64) -> f64 {
    if complete_graph.is_nan() || gershgorin.is_nan() {
        f64::NAN
    } else {
        complete_graph.min(gershgorin)
    }
}
