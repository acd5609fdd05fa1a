//! Tables of coordkernel's functions of one distance: the fast path of the fixed-grid
//! integrators.
//!
//! At a fixed flow time every pair quantity of the field is a function of one scalar, the pair
//! distance `d`: the Q radial coefficients `a_q(d, t) = Σ_k B_k(d) M_qk(t)` (K Gaussians and a
//! K-term fold each, per pair) and the A coordination shells `c_a(d)` (time-independent). So a
//! grid form tabulates them once per stage time (the shells once) and evaluates a pair by Q + A
//! cubics instead of K + A exponentials and the fold.
//!
//! Each table is a piecewise cubic **Hermite** interpolant of the exact values and slopes at
//! equally spaced nodes: C¹, and the evaluation uses the interpolant's own derivative, so the
//! divergence and the Jacobian stay the *exact* derivatives of the field actually integrated.
//! What changes is the field itself, by the interpolation error (about 1e−6 of the functions'
//! scale at the node spacing chosen here; tested), not the exactness of any density. Past the
//! last node (8 widths beyond the last centre, where every Gaussian is below e⁻⁶⁴) the exact
//! functions are evaluated instead.

/// Nodes per width of the narrowest Gaussian: the Hermite error of a Gaussian is about
/// `(h/γ)⁴/32` of its height, so 16 nodes keep it near 1e−6 (measured on the velocity: ~1e−6 of
/// its scale). Finer tables cost more in cache misses than they save: 32 nodes made DW-4 sampling
/// slower than the exact functions.
const NODES_PER_WIDTH: f64 = 16.0;
/// The tables reach this many widths past the last centre.
const REACH_IN_WIDTHS: f64 = 8.0;
/// Tables with more intervals than this are not built (the exact functions are used instead).
pub(super) const MAX_INTERVALS: usize = 40_000;

/// `width` functions of `d ∈ [0, n_intervals·h]` as piecewise cubics in `u = d/h − j` on
/// interval `j`.
#[derive(Debug, Clone)]
pub(super) struct FunctionTable {
    inv_h: f64,
    n_intervals: usize,
    width: usize,
    /// Coefficient `c` of function `q` on interval `j` at `(j·4 + c)·width + q`: the four
    /// coefficients of all functions on one interval are contiguous, each as a row over the
    /// functions, so the cubics of one pair evaluate side by side in vector lanes.
    coef: Vec<f64>,
}

/// The node spacing and interval count for functions of Gaussian width `min_width` reaching
/// `reach` widths of `max_width` past `last_centre`; `None` if that is more than
/// [`MAX_INTERVALS`] (or not finite).
pub(super) fn spacing(min_width: f64, max_width: f64, last_centre: f64) -> Option<(f64, usize)> {
    let h = min_width / NODES_PER_WIDTH;
    let n = ((last_centre + REACH_IN_WIDTHS * max_width) / h).ceil();
    (n.is_finite() && h > 0.0 && n >= 1.0 && n <= MAX_INTERVALS as f64).then_some((h, n as usize))
}

impl FunctionTable {
    /// The table of the `width` functions that `exact(d, values, slopes)` evaluates, on
    /// `n_intervals` intervals of length `h` from 0.
    pub(super) fn new(
        h: f64,
        n_intervals: usize,
        width: usize,
        mut exact: impl FnMut(f64, &mut [f64], &mut [f64]),
    ) -> Self {
        let mut coef = vec![0.0; n_intervals * 4 * width];
        let (mut p0, mut m0) = (vec![0.0; width], vec![0.0; width]);
        let (mut p1, mut m1) = (vec![0.0; width], vec![0.0; width]);
        exact(0.0, &mut p0, &mut m0);
        for (j, cubic) in coef.chunks_exact_mut(4 * width).enumerate() {
            exact((j + 1) as f64 * h, &mut p1, &mut m1);
            let (c0, rest) = cubic.split_at_mut(width);
            let (c1, rest) = rest.split_at_mut(width);
            let (c2, c3) = rest.split_at_mut(width);
            for q in 0..width {
                // Hermite in u ∈ [0, 1]: values p0, p1 and slopes h·m0, h·m1 at the ends.
                let (s0, s1) = (h * m0[q], h * m1[q]);
                c0[q] = p0[q];
                c1[q] = s0;
                c2[q] = 3.0 * (p1[q] - p0[q]) - 2.0 * s0 - s1;
                c3[q] = 2.0 * (p0[q] - p1[q]) + s0 + s1;
            }
            std::mem::swap(&mut p0, &mut p1);
            std::mem::swap(&mut m0, &mut m1);
        }
        FunctionTable {
            inv_h: 1.0 / h,
            n_intervals,
            width,
            coef,
        }
    }

    /// Bytes of a table of `width` functions on `n_intervals` intervals.
    pub(super) fn bytes(n_intervals: usize, width: usize) -> Option<usize> {
        n_intervals
            .checked_mul(4 * width)?
            .checked_mul(std::mem::size_of::<f64>())
    }

    /// The values and `d`-slopes of all functions at `d` into `values` and `slopes` (the first
    /// `width` entries); false, with nothing written, if `d` lies past the table (or is NaN).
    #[inline(always)]
    pub(super) fn eval(&self, d: f64, values: &mut [f64], slopes: &mut [f64]) -> bool {
        let s = d * self.inv_h;
        // A saturating cast (+∞ gives usize::MAX); NaN and negative d are refused explicitly.
        let j = s as usize;
        if s.is_nan() || s < 0.0 || j >= self.n_intervals {
            return false;
        }
        let u = s - j as f64;
        let w = self.width;
        let cubic = &self.coef[j * 4 * w..(j + 1) * 4 * w];
        let (c0, rest) = cubic.split_at(w);
        let (c1, rest) = rest.split_at(w);
        let (c2, c3) = rest.split_at(w);
        let inv_h = self.inv_h;
        for q in 0..w {
            values[q] = c0[q] + u * (c1[q] + u * (c2[q] + u * c3[q]));
            slopes[q] = (c1[q] + u * (2.0 * c2[q] + u * (3.0 * c3[q]))) * inv_h;
        }
        true
    }
}
