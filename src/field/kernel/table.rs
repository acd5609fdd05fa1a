//! Per-time tables of the radial function: the fast path of the fixed-grid integrators.
//!
//! At a fixed time the field depends on a pair only through one scalar, `d`, so `φ(·, t)` can be
//! tabulated once per grid time and evaluated per pair by a cubic instead of K Gaussians. The
//! table is a piecewise cubic **Hermite** interpolant of the exact `φ` and `φ'` at equally spaced
//! nodes: it is C¹, and the pair loops use its own derivative, so the divergence and Jacobian
//! remain the *exact* derivatives of the field actually integrated. What changes is the field
//! itself, by the interpolation error (below 1e−8 relative for the node spacing chosen here,
//! tested), not the exactness of any density.
//!
//! Beyond the table's last node (`d_max`, several bandwidths past the last centre) the exact
//! function is evaluated instead.

use super::kernel_field::KernelField;
use super::pairs::{
    velocity_jacobian_divgrad_pairs, velocity_jacobian_pairs, velocity_only_pairs, velocity_pairs,
};
use super::radial::{ExactRadial, RadialFn, Scratch, TimeSlice};
use crate::field::VectorField;

/// Node spacing as a fraction of the smallest distance bandwidth: the Hermite error scales as
/// (h/γ)⁴, and 1/50 keeps it near 1e−9 of the weights.
const NODES_PER_BANDWIDTH: f64 = 50.0;
/// Tables larger than this many intervals are not built (the exact path is used instead).
const MAX_INTERVALS: usize = 40_000;
/// The table reaches this many of the largest bandwidths past the last centre.
const REACH_IN_BANDWIDTHS: f64 = 8.0;
/// The most memory all tables of one flow may take. Tables are per distinct stage time (2n + 1
/// of them for n RK4 steps), so without a cap a flow with 100,000 steps would need hundreds of
/// GB; past it the flow integrates the exact field instead (slower, equally exact).
pub const MAX_TABLE_BYTES: usize = 256 << 20;

/// The four coefficients of one interval, aligned so that a lookup touches one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Cubic([f64; 4]);

impl Cubic {
    /// `φ` at position `u` in the interval.
    #[inline(always)]
    fn value(&self, u: f64) -> f64 {
        let [c0, c1, c2, c3] = self.0;
        c0 + u * (c1 + u * (c2 + u * c3))
    }

    /// `∂φ/∂u` at `u` (times `1/h` is `∂φ/∂d`).
    #[inline(always)]
    fn slope(&self, u: f64) -> f64 {
        let [_, c1, c2, c3] = self.0;
        c1 + u * (2.0 * c2 + u * (3.0 * c3))
    }

    /// `∂²φ/∂u²` at `u` (times `1/h²` is `∂²φ/∂d²`; the interpolant is C¹, so this jumps at
    /// nodes, where either side's value is an exact derivative of the field integrated).
    #[inline(always)]
    fn curvature(&self, u: f64) -> f64 {
        let [_, _, c2, c3] = self.0;
        2.0 * c2 + u * (6.0 * c3)
    }
}

/// The radial function at one time as a piecewise cubic in `u = d/h − j` on interval `j`.
#[derive(Clone)]
pub(crate) struct RadialTable {
    inv_h: f64,
    n_intervals: usize,
    /// `[c0, c1, c2, c3]` of `φ = c0 + c1 u + c2 u² + c3 u³` per interval.
    coef: Vec<Cubic>,
    /// The exact function's folded time basis, for distances past the table.
    slice: TimeSlice,
}

impl RadialTable {
    /// The interval of `d`, clamped to the table, and the position `u` in it; sets `past` if
    /// `d` lies beyond the table (where the exact function is used instead). Branch-free, for
    /// the block loops.
    #[inline(always)]
    fn interval(&self, d: f64, past: &mut bool) -> (usize, f64) {
        let last = self.n_intervals as i32 - 1;
        let s = d * self.inv_h;
        let j = s as i32;
        *past |= j > last;
        let j = j.min(last);
        (j as usize, s - j as f64)
    }
}

/// The radial function of a table, with the exact fallback.
pub(crate) struct TableRadial<'a> {
    table: &'a RadialTable,
    exact: ExactRadial<'a>,
}

impl RadialFn for TableRadial<'_> {
    // The exact function's 2 KiB of kernel buffers are needed only past the table, which pair
    // distances rarely reach: created there, not zeroed for every evaluation.
    type Scratch = ();

    fn scratch(&self) {}

    #[inline(always)]
    fn eval(&self, d: f64, _: &mut ()) -> (f64, f64) {
        let mut past = false;
        let (j, u) = self.table.interval(d, &mut past);
        if past {
            return self.exact.eval(d, &mut Scratch::new());
        }
        let cubic = self.table.coef[j];
        (cubic.value(u), cubic.slope(u) * self.table.inv_h)
    }

    #[inline(always)]
    fn eval_block(&self, d: &[f64], phi: &mut [f64], dphi: &mut [f64], _: &mut ()) {
        // Branch-free over the block (the index is clamped), so the pairs' lookups overlap;
        // distances past the table are redone exactly afterwards. The arithmetic is that of
        // `eval`, so the bits are too.
        let (coef, inv_h) = (&self.table.coef[..self.table.n_intervals], self.table.inv_h);
        let mut past = false;
        for ((d, phi), dphi) in d.iter().zip(phi.iter_mut()).zip(dphi.iter_mut()) {
            let (j, u) = self.table.interval(*d, &mut past);
            *phi = coef[j].value(u);
            *dphi = coef[j].slope(u) * inv_h;
        }
        if past {
            self.redo_past_table(d, |p, d, scratch| {
                (phi[p], dphi[p]) = self.exact.eval(d, scratch);
            });
        }
    }

    fn eval2(&self, d: f64, _: &mut ()) -> (f64, f64, f64) {
        let mut past = false;
        let (j, u) = self.table.interval(d, &mut past);
        if past {
            return self.exact.eval2(d, &mut Scratch::new());
        }
        let (cubic, inv_h) = (self.table.coef[j], self.table.inv_h);
        (
            cubic.value(u),
            cubic.slope(u) * inv_h,
            cubic.curvature(u) * (inv_h * inv_h),
        )
    }

    #[inline(always)]
    fn eval2_block(
        &self,
        d: &[f64],
        phi: &mut [f64],
        dphi: &mut [f64],
        d2phi: &mut [f64],
        _: &mut (),
    ) {
        // As `eval_block`, with the same bits as `eval2`.
        let (coef, inv_h) = (&self.table.coef[..self.table.n_intervals], self.table.inv_h);
        let mut past = false;
        for (((d, phi), dphi), d2phi) in d.iter().zip(&mut *phi).zip(&mut *dphi).zip(&mut *d2phi) {
            let (j, u) = self.table.interval(*d, &mut past);
            *phi = coef[j].value(u);
            *dphi = coef[j].slope(u) * inv_h;
            *d2phi = coef[j].curvature(u) * (inv_h * inv_h);
        }
        if past {
            self.redo_past_table(d, |p, d, scratch| {
                (phi[p], dphi[p], d2phi[p]) = self.exact.eval2(d, scratch);
            });
        }
    }

    #[inline(always)]
    fn value_block(&self, d: &[f64], phi: &mut [f64], _: &mut ()) {
        let coef = &self.table.coef[..self.table.n_intervals];
        let mut past = false;
        for (d, phi) in d.iter().zip(phi.iter_mut()) {
            let (j, u) = self.table.interval(*d, &mut past);
            *phi = coef[j].value(u);
        }
        if past {
            self.redo_past_table(d, |p, d, scratch| phi[p] = self.exact.eval(d, scratch).0);
        }
    }
}

impl TableRadial<'_> {
    /// Calls `redo(p, d, scratch)` for the distances `d` of a block that lie past the table
    /// (where the exact function stands in for it), `p` their index in the block.
    #[cold]
    fn redo_past_table(&self, d: &[f64], mut redo: impl FnMut(usize, f64, &mut Scratch)) {
        let mut scratch = Scratch::new();
        for (p, &d) in d.iter().enumerate() {
            let mut past = false;
            self.table.interval(d, &mut past);
            if past {
                redo(p, d, &mut scratch);
            }
        }
    }
}

/// The field with tables at a fixed set of times (the stage times of a fixed-grid integrator,
/// [`crate::integrate::rk4_stage_times`]); other times use the exact field.
#[derive(Clone)]
pub struct TabulatedField {
    field: KernelField,
    times: Vec<f64>,
    /// `(t − times[0])·index_scale`, rounded, is the index of `t` when the times are equally
    /// spaced (as a grid's stage times are): found in O(1), checked bitwise.
    index_scale: f64,
    /// One table per time and pair type: `tables[time_index · n_pair_types + ty]`.
    tables: Vec<RadialTable>,
}

impl std::fmt::Debug for TabulatedField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TabulatedField")
            .field("n_times", &self.times.len())
            .field(
                "n_intervals",
                &self.tables.first().map_or(0, |t| t.n_intervals),
            )
            .finish()
    }
}

impl TabulatedField {
    /// Tables of `field` at `times` (any order; duplicates are merged). Returns `None` when the
    /// bandwidths are so small that one table would be unreasonably large, or when all tables
    /// together would exceed `MAX_TABLE_BYTES` (256 MB; many steps).
    #[must_use]
    pub fn new(field: &KernelField, times: &[f64]) -> Option<Self> {
        let (h, n_intervals) = spacing(field)?;
        let mut times = times.to_vec();
        times.sort_by(f64::total_cmp);
        times.dedup_by(|a, b| a.to_bits() == b.to_bits());
        let n_types = field.n_pair_types();
        let bytes = times
            .len()
            .checked_mul(n_types)?
            .checked_mul(n_intervals)?
            .checked_mul(std::mem::size_of::<Cubic>())?;
        if bytes > MAX_TABLE_BYTES {
            return None;
        }
        // Sequential on purpose: flows build their tables inside a `OnceLock` initialiser, and
        // a rayon join there could steal a job that waits on the same lock (a deadlock).
        let tables = times
            .iter()
            .flat_map(|&t| (0..n_types).map(move |ty| build_table(field, ty, t, h, n_intervals)))
            .collect();
        let span = times.last().copied().unwrap_or(0.0) - times.first().copied().unwrap_or(0.0);
        let index_scale = if span > 0.0 {
            (times.len() - 1) as f64 / span
        } else {
            0.0
        };
        Some(TabulatedField {
            field: field.clone(),
            times,
            index_scale,
            tables,
        })
    }

    /// The exact field the tables approximate.
    #[must_use]
    pub fn field(&self) -> &KernelField {
        &self.field
    }

    /// The index of `t` among the tabulated times (bitwise), if it is one.
    fn time_index(&self, t: f64) -> Option<usize> {
        // Called once per field evaluation, so the index is computed from `t` first and
        // searched for only if that misses (see docs/numerics.md §"Per-time tables").
        let first = *self.times.first()?;
        // Rounded by a saturating cast (`f64::round` is a library call on baseline x86-64);
        // a wrong guess, whatever its cause, fails the bitwise check below.
        let guess = ((t - first) * self.index_scale + 0.5) as usize;
        let i = match self.times.get(guess) {
            Some(g) if g.to_bits() == t.to_bits() => guess,
            _ => self
                .times
                .binary_search_by(|probe| probe.total_cmp(&t))
                .ok()?,
        };
        Some(i)
    }

    /// Pair type `ty`'s table radial function at the tabulated time of index `i`.
    fn table_radial_at(&self, i: usize, ty: usize) -> TableRadial<'_> {
        let table = &self.tables[i * self.field.n_pair_types() + ty];
        TableRadial {
            table,
            exact: self.field.exact_radial(ty, &table.slice),
        }
    }

    /// The tabulated radial function of pair type 0 at `t`, if `t` is one of the tabulated
    /// times (bitwise).
    #[cfg(test)]
    fn table_radial(&self, t: f64) -> Option<TableRadial<'_>> {
        self.time_index(t).map(|i| self.table_radial_at(i, 0))
    }

    /// Calls `f` with every pair type's tabulated radial function at `t` (on the stack for one
    /// species), or returns `None` when `t` has no table.
    fn with_table_radials<T>(&self, t: f64, f: impl FnOnce(&[TableRadial<'_>]) -> T) -> Option<T> {
        let i = self.time_index(t)?;
        if self.field.species().is_none() {
            Some(f(&[self.table_radial_at(i, 0)]))
        } else {
            let radials: Vec<TableRadial<'_>> = (0..self.field.n_pair_types())
                .map(|ty| self.table_radial_at(i, ty))
                .collect();
            Some(f(&radials))
        }
    }

    /// `(φ, φ')` of the field as implemented at `(d, t)`: the table where there is one (pair
    /// type 0).
    #[must_use]
    pub fn radial(&self, d: f64, t: f64) -> (f64, f64) {
        self.radial_of(0, d, t)
    }

    /// `(φ, φ')` of pair type `ty` as implemented at `(d, t)`.
    #[must_use]
    pub fn radial_of(&self, ty: usize, d: f64, t: f64) -> (f64, f64) {
        match self.time_index(t) {
            Some(i) => self.table_radial_at(i, ty).eval(d, &mut ()),
            None => self.field.radial_of(ty, d, t),
        }
    }
}

impl VectorField for TabulatedField {
    fn state_len(&self) -> usize {
        self.field.state_len()
    }

    /// Pairwise in the differences `x_i − x_j`: translation invariant.
    fn translation_axes(&self) -> Option<usize> {
        Some(self.field.layout().dim)
    }

    /// v is the gradient of a pair potential and the pair loops assemble its Jacobian
    /// symmetrically (tested in `tests/field.rs`).
    fn symmetric_jacobian(&self) -> bool {
        true
    }

    fn velocity_into(&self, x: &[f64], t: f64, v: &mut [f64]) -> f64 {
        let (dim, species) = (self.field.layout().dim, self.field.species());
        // `v` is reborrowed inside the closure; the fallback runs only when it did not.
        let tabulated =
            self.with_table_radials(t, |radials| velocity_pairs(x, dim, species, radials, v));
        match tabulated {
            Some(div) => div,
            None => self.field.velocity_into(x, t, v),
        }
    }

    fn velocity_only_into(&self, x: &[f64], t: f64, v: &mut [f64]) {
        let (dim, species) = (self.field.layout().dim, self.field.species());
        let tabulated = self.with_table_radials(t, |radials| {
            velocity_only_pairs(x, dim, species, radials, v);
        });
        if tabulated.is_none() {
            self.field.velocity_only_into(x, t, v);
        }
    }

    fn velocity_jacobian_into(
        &self,
        x: &[f64],
        t: f64,
        v: &mut [f64],
        jacobian: &mut [f64],
    ) -> f64 {
        let (dim, species) = (self.field.layout().dim, self.field.species());
        let tabulated = self.with_table_radials(t, |radials| {
            velocity_jacobian_pairs(x, dim, species, radials, v, jacobian)
        });
        match tabulated {
            Some(div) => div,
            None => self.field.velocity_jacobian_into(x, t, v, jacobian),
        }
    }

    fn velocity_jacobian_divgrad_into(
        &self,
        x: &[f64],
        t: f64,
        v: &mut [f64],
        jacobian: &mut [f64],
        div_gradient: &mut [f64],
    ) -> Option<f64> {
        let (dim, species) = (self.field.layout().dim, self.field.species());
        let tabulated = self.with_table_radials(t, |radials| {
            velocity_jacobian_divgrad_pairs(x, dim, species, radials, v, jacobian, div_gradient)
        });
        match tabulated {
            Some(div) => Some(div),
            None => self
                .field
                .velocity_jacobian_divgrad_into(x, t, v, jacobian, div_gradient),
        }
    }
}

/// Node spacing and interval count for the current bandwidths (of every pair type: one grid
/// for all tables).
fn spacing(field: &KernelField) -> Option<(f64, usize)> {
    let pl = field.param_layout();
    // γ = exp(−p).
    let gammas = || {
        (0..field.n_pair_types()).flat_map(move |ty| {
            field.block_params(ty)[pl.log_inv_gamma_dist()]
                .iter()
                .map(|p| (-p).exp())
        })
    };
    let gamma_min = gammas().fold(f64::INFINITY, f64::min);
    let gamma_max = gammas().fold(0.0, f64::max);
    let mu_max = field.kernels().mu_dist.iter().copied().fold(0.0, f64::max);
    let reach = mu_max + REACH_IN_BANDWIDTHS * gamma_max;
    let h = gamma_min / NODES_PER_BANDWIDTH;
    let n = (reach / h).ceil();
    if !(n.is_finite() && n >= 1.0 && n <= MAX_INTERVALS as f64) {
        return None;
    }
    Some((h, n as usize))
}

fn build_table(field: &KernelField, ty: usize, t: f64, h: f64, n_intervals: usize) -> RadialTable {
    let slice = field.time_slice_of(ty, t);
    let exact = field.exact_radial(ty, &slice);
    let mut scratch = Scratch::new();
    let nodes: Vec<(f64, f64)> = (0..=n_intervals)
        .map(|j| exact.eval(j as f64 * h, &mut scratch))
        .collect();
    let coef = nodes
        .windows(2)
        .map(|w| {
            let (p0, d0) = w[0];
            let (p1, d1) = w[1];
            let (m0, m1) = (h * d0, h * d1);
            Cubic([
                p0,
                m0,
                3.0 * (p1 - p0) - 2.0 * m0 - m1,
                2.0 * (p0 - p1) + m0 + m1,
            ])
        })
        .collect();
    RadialTable {
        inv_h: 1.0 / h,
        n_intervals,
        coef,
        slice,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::KernelConfig;
    use crate::geometry::Layout;

    #[test]
    fn block_evaluation_has_the_bits_of_single_evaluation_inside_and_past_the_table() {
        let layout = Layout::new(4, 2).unwrap();
        let field = KernelField::initialise(layout, KernelConfig::double_well(), 3).unwrap();
        let tab = TabulatedField::new(&field, &[0.25]).unwrap();
        let radial = tab.table_radial(0.25).unwrap();
        let d_max = radial.table.n_intervals as f64 / radial.table.inv_h;
        // Inside, exactly on nodes, and past the end (the exact fallback), mixed in one block.
        let d: Vec<f64> = (0..40)
            .map(|i| match i % 4 {
                0 => 1e-3 + 0.37 * i as f64,
                1 => (i / 4) as f64 / radial.table.inv_h,
                2 => d_max * (1.0 + 0.01 * i as f64),
                _ => 0.5 * d_max + 0.013 * i as f64,
            })
            .collect();
        assert!(d.iter().any(|&d| d > d_max) && d.iter().any(|&d| d < d_max));
        let (mut phi, mut dphi, mut value) = (vec![0.0; 40], vec![0.0; 40], vec![0.0; 40]);
        radial.eval_block(&d, &mut phi, &mut dphi, &mut ());
        radial.value_block(&d, &mut value, &mut ());
        let (mut phi2, mut dphi2, mut d2phi2) = (vec![0.0; 40], vec![0.0; 40], vec![0.0; 40]);
        radial.eval2_block(&d, &mut phi2, &mut dphi2, &mut d2phi2, &mut ());
        let exact = field.exact_radial(0, &radial.table.slice);
        for (k, &d) in d.iter().enumerate() {
            let (p, dp) = radial.eval(d, &mut ());
            assert_eq!(phi[k].to_bits(), p.to_bits(), "φ at d = {d}");
            assert_eq!(dphi[k].to_bits(), dp.to_bits(), "φ' at d = {d}");
            assert_eq!(value[k].to_bits(), p.to_bits(), "value at d = {d}");
            let (p2, dp2, ddp2) = radial.eval2(d, &mut ());
            assert_eq!((p2.to_bits(), dp2.to_bits()), (p.to_bits(), dp.to_bits()));
            assert_eq!(phi2[k].to_bits(), p.to_bits(), "eval2_block φ at d = {d}");
            assert_eq!(
                dphi2[k].to_bits(),
                dp.to_bits(),
                "eval2_block φ' at d = {d}"
            );
            assert_eq!(d2phi2[k].to_bits(), ddp2.to_bits(), "φ'' at d = {d}");
            if d > d_max {
                assert_eq!(ddp2, exact.eval2(d, &mut Scratch::new()).2);
            }
            if d > d_max {
                let exact = field.radial(d, 0.25);
                assert_eq!(
                    (p, dp),
                    exact,
                    "past the table the function is the exact one"
                );
            }
        }
    }

    /// `φ''` of the table (inside an interval: the interpolant is C¹, its curvature jumps at
    /// nodes) and of the exact function (past the table) against central differences of `φ'`.
    #[test]
    fn curvature_matches_finite_differences_of_the_slope() {
        let layout = Layout::new(4, 2).unwrap();
        for kernels in [KernelConfig::double_well(), KernelConfig::lennard_jones()] {
            let field = KernelField::initialise(layout, kernels, 7).unwrap();
            let tab = TabulatedField::new(&field, &[0.3]).unwrap();
            let radial = tab.table_radial(0.3).unwrap();
            let node = 1.0 / radial.table.inv_h;
            let d_max = radial.table.n_intervals as f64 * node;
            let exact = field.exact_radial(0, &radial.table.slice);
            // Mid-interval points inside the table, then points past it.
            let inside = (1..12).map(|i| (0.37 + 97.0 * i as f64).floor() * node + 0.5 * node);
            let past = (1..6).map(|i| d_max * (1.0 + 0.2 * i as f64));
            for d in inside.chain(past) {
                let h = 1e-3 * node;
                let slope = |d: f64| radial.eval(d, &mut ()).1;
                let fd = (slope(d + h) - slope(d - h)) / (2.0 * h);
                let (_, _, curvature) = radial.eval2(d, &mut ());
                assert!(
                    (curvature - fd).abs() < 1e-6 * fd.abs().max(1.0),
                    "d = {d} (table ends at {d_max}): {curvature} vs {fd}"
                );
                let fd_exact = (exact.eval(d + h, &mut Scratch::new()).1
                    - exact.eval(d - h, &mut Scratch::new()).1)
                    / (2.0 * h);
                let (_, _, exact_curvature) = exact.eval2(d, &mut Scratch::new());
                assert!(
                    (exact_curvature - fd_exact).abs() < 1e-6 * fd_exact.abs().max(1.0),
                    "exact, d = {d}: {exact_curvature} vs {fd_exact}"
                );
            }
        }
    }

    #[test]
    fn the_table_of_a_time_is_found_for_grid_and_irregular_time_sets() {
        let layout = Layout::new(3, 2).unwrap();
        let field = KernelField::initialise(layout, KernelConfig::double_well(), 5).unwrap();
        let grid = crate::integrate::rk4_stage_times(7);
        let irregular = [0.0, 0.013, 0.2, 0.21, 0.7, 1.0];
        for times in [&grid[..], &irregular[..]] {
            let tab = TabulatedField::new(&field, times).unwrap();
            for &t in times {
                // The table found must be the one built for t: compare with a table of t alone.
                let alone = TabulatedField::new(&field, &[t]).unwrap();
                for d in [0.3, 1.7, 4.2] {
                    assert_eq!(tab.radial(d, t), alone.radial(d, t), "t = {t}");
                }
                assert!(tab.table_radial(t).is_some());
            }
            // Between and beyond the tabulated times: no table, the exact function.
            for t in [0.5 * (times[1] + times[2]), -0.1, 1.1] {
                assert!(tab.table_radial(t).is_none(), "t = {t}");
            }
        }
    }

    #[test]
    fn many_steps_integrate_the_exact_field_instead_of_growing_tables() {
        let layout = Layout::new(4, 2).unwrap();
        let field = KernelField::initialise(layout, KernelConfig::double_well(), 1).unwrap();
        let few = crate::integrate::rk4_stage_times(20);
        assert!(TabulatedField::new(&field, &few).is_some());
        // 100,000 steps: 200,001 stage times would need far more than the cap.
        let many = crate::integrate::rk4_stage_times(100_000);
        assert!(TabulatedField::new(&field, &many).is_none());
        let (h, n) = spacing(&field).unwrap();
        assert!(h > 0.0);
        let per_table = n * std::mem::size_of::<Cubic>();
        let fits = MAX_TABLE_BYTES / per_table;
        assert!(TabulatedField::new(&field, &many[..fits]).is_some());
        assert!(TabulatedField::new(&field, &many[..fits + 1]).is_none());
    }
}
