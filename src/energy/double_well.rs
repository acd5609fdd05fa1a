//! The pairwise double-well potential of the DW-2 and DW-4 benchmarks (DESIGN.md §2).

use super::{Energy, add_pair_gradient, distance, finish_gradient};
use crate::{Error, Result};

/// Double-well pair potential: for every unordered pair at distance `d` (plain Euclidean distance,
/// no softening),
///
/// `U = Σ_{i<j} a(d − d0) + b(d − d0)² + c(d − d0)⁴`.
///
/// With `a = 0`, `b < 0`, `c > 0` each pair has two minima at `d = d0 ± sqrt(−b/(2c))`, of depth
/// `−b²/(4c)`. The energy is invariant under translations, rotations, reflections and
/// permutations of the particles.
///
/// At `d = 0` the direction of the pair gradient is undefined and the pair contributes zero to
/// the gradient (its energy is still counted). Distances are exact to rounding for any finite
/// coordinates (no intermediate square overflows). At astronomically large distances (beyond
/// ~1e77 for the benchmark parameters) the energy overflows to `±∞` (the sign of the leading
/// coefficient, never NaN for a single pair); a pair whose derivative overflows contributes zero
/// to the gradient. Where `U = +∞` the gradient is finite but meaningless; where `U` is finite
/// but a pair's derivative overflows the gradient is filled with NaN (not representable), and a
/// `−∞` energy or opposite infinities across pairs (NaN) are not valid energies: the checked
/// helper [`super::energies_gradients_into`] reports all of these as errors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DoubleWell {
    n_particles: usize,
    dim: usize,
    a: f64,
    b: f64,
    c: f64,
    d0: f64,
}

impl DoubleWell {
    /// A double well for `n_particles` particles in `dim` dimensions with the pair coefficients
    /// `a`, `b`, `c` and reference distance `d0`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `n_particles` or `dim` is zero or their product overflows,
    /// [`Error::NonFinite`] if a parameter is NaN or infinite.
    pub fn new(n_particles: usize, dim: usize, a: f64, b: f64, c: f64, d0: f64) -> Result<Self> {
        if n_particles == 0 {
            return Err(Error::invalid("DoubleWell: n_particles must be at least 1"));
        }
        if dim == 0 {
            return Err(Error::invalid("DoubleWell: dim must be at least 1"));
        }
        if n_particles.checked_mul(dim).is_none() {
            return Err(Error::invalid(
                "DoubleWell: n_particles * dim overflows usize",
            ));
        }
        for (name, value) in [("a", a), ("b", b), ("c", c), ("d0", d0)] {
            if !value.is_finite() {
                return Err(Error::non_finite(format!("DoubleWell: {name} = {value}")));
            }
        }
        Ok(Self {
            n_particles,
            dim,
            a,
            b,
            c,
            d0,
        })
    }

    /// DW-2: two particles in two dimensions, `a = 0, b = −4, c = 0.9, d0 = 4`.
    #[must_use]
    pub fn dw2() -> Self {
        Self::benchmark(2)
    }

    /// DW-4: four particles in two dimensions, `a = 0, b = −4, c = 0.9, d0 = 4`.
    #[must_use]
    pub fn dw4() -> Self {
        Self::benchmark(4)
    }

    fn benchmark(n_particles: usize) -> Self {
        Self {
            n_particles,
            dim: 2,
            a: 0.0,
            b: -4.0,
            c: 0.9,
            d0: 4.0,
        }
    }

    /// Coefficient of the linear term.
    #[must_use]
    pub fn a(&self) -> f64 {
        self.a
    }

    /// Coefficient of the quadratic term.
    #[must_use]
    pub fn b(&self) -> f64 {
        self.b
    }

    /// Coefficient of the quartic term.
    #[must_use]
    pub fn c(&self) -> f64 {
        self.c
    }

    /// Reference distance the polynomial is centred on.
    #[must_use]
    pub fn d0(&self) -> f64 {
        self.d0
    }

    /// Pair energy in Horner form `s(a + s(b + c s²))`: for huge `s` it overflows to `±∞`
    /// instead of producing `∞ − ∞` from separately overflowing terms.
    /// At `s = +∞` (a distance beyond `f64::MAX`) the limit, `±∞` by the sign of the leading
    /// non-zero coefficient: Horner's form would make `0·∞ = NaN` from a zero coefficient.
    #[inline]
    fn pair(&self, d: f64) -> f64 {
        let s = d - self.d0;
        if s.is_infinite() {
            return Self::limit(&[self.c, self.b, self.a], 0.0);
        }
        s * (self.a + s * (self.b + self.c * s * s))
    }

    /// Derivative of the pair energy with respect to `d` (its limit at `s = +∞`, as for
    /// [`DoubleWell::pair`]).
    #[inline]
    fn pair_derivative(&self, d: f64) -> f64 {
        let s = d - self.d0;
        if s.is_infinite() {
            return Self::limit(&[self.c, self.b], self.a);
        }
        self.a + s * (2.0 * self.b + 4.0 * self.c * s * s)
    }

    /// The limit at `s → +∞` of a polynomial with the coefficients `growing` of its positive
    /// powers (highest first) and the constant `constant`.
    fn limit(growing: &[f64], constant: f64) -> f64 {
        match growing.iter().find(|c| **c != 0.0) {
            Some(c) => c.signum() * f64::INFINITY,
            None => constant,
        }
    }
}

impl Energy for DoubleWell {
    fn n_particles(&self) -> usize {
        self.n_particles
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn energy(&self, x: &[f64]) -> f64 {
        let (n, dim) = (self.n_particles, self.dim);
        debug_assert_eq!(x.len(), n * dim);
        let mut u = 0.0;
        for i in 0..n {
            let xi = &x[i * dim..(i + 1) * dim];
            for j in i + 1..n {
                let d = distance(xi, &x[j * dim..(j + 1) * dim]);
                u += self.pair(d);
            }
        }
        u
    }

    fn energy_gradient_into(&self, x: &[f64], gradient: &mut [f64]) -> f64 {
        let (n, dim) = (self.n_particles, self.dim);
        debug_assert_eq!(x.len(), n * dim);
        debug_assert_eq!(gradient.len(), n * dim);
        gradient.fill(0.0);
        let mut u = 0.0;
        let mut overflowed = false;
        for i in 0..n {
            for j in i + 1..n {
                let d = distance(&x[i * dim..(i + 1) * dim], &x[j * dim..(j + 1) * dim]);
                u += self.pair(d);
                let dudd = self.pair_derivative(d);
                // d == 0: no direction to push along; non-finite dudd: left out (∞·0 in a zero
                // component would poison the gradient with NaN) and `finish_gradient` decides.
                if !dudd.is_finite() {
                    overflowed = true;
                } else if d > 0.0 {
                    add_pair_gradient(x, gradient, dim, (i, j), d, dudd);
                }
            }
        }
        finish_gradient(u, gradient, overflowed);
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn energy_and_gradient(e: &DoubleWell, x: &[f64]) -> (f64, Vec<f64>) {
        let mut g = vec![f64::NAN; x.len()];
        let u = e.energy_gradient_into(x, &mut g);
        (u, g)
    }

    #[test]
    fn dw2_at_distance_five_by_hand() {
        // d = 5, s = d − d0 = 1: U = b + c = −3.1; dU/dd = 2b + 4c = −4.4;
        // unit vector from particle 1 to particle 0 is (−0.6, −0.8).
        let e = DoubleWell::dw2();
        let x = [0.0, 0.0, 3.0, 4.0];
        assert!((e.energy(&x) - (-3.1)).abs() < 1e-14);
        let (u, g) = energy_and_gradient(&e, &x);
        assert!((u - (-3.1)).abs() < 1e-14);
        let expected = [2.64, 3.52, -2.64, -3.52];
        for (gk, ek) in g.iter().zip(expected) {
            assert!((gk - ek).abs() < 1e-13, "{g:?} vs {expected:?}");
        }
    }

    #[test]
    fn linear_term_by_hand() {
        // a = 1.5, b = c = 0, d0 = 1, one pair at d = 3 along the first axis of D = 3.
        let e = DoubleWell::new(2, 3, 1.5, 0.0, 0.0, 1.0).unwrap();
        let x = [3.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let (u, g) = energy_and_gradient(&e, &x);
        assert_eq!(u, 3.0);
        assert_eq!(g, vec![1.5, 0.0, 0.0, -1.5, 0.0, 0.0]);
    }

    #[test]
    fn pair_minima_at_d0_plus_minus_sqrt_of_minus_b_over_2c() {
        let e = DoubleWell::dw2();
        let offset = (-e.b() / (2.0 * e.c())).sqrt();
        let depth = -e.b() * e.b() / (4.0 * e.c());
        for d_min in [e.d0() - offset, e.d0() + offset] {
            let x = [0.0, 0.0, d_min, 0.0];
            let (u, g) = energy_and_gradient(&e, &x);
            assert!(
                (u - depth).abs() < 1e-12,
                "U({d_min}) = {u}, expected {depth}"
            );
            assert!(
                g.iter().all(|gk| gk.abs() < 1e-12),
                "gradient at minimum: {g:?}"
            );
            for delta in [-1e-3, 1e-3] {
                assert!(e.energy(&[0.0, 0.0, d_min + delta, 0.0]) > u);
            }
        }
        // The barrier between them sits at d0 with height 0.
        assert_eq!(e.energy(&[0.0, 0.0, e.d0(), 0.0]), 0.0);
    }

    #[test]
    fn dw4_square_sums_all_six_pairs() {
        // Square of side 3: four pairs at d = 3 (s = −1), two diagonals at d = 3√2.
        let e = DoubleWell::dw4();
        let x = [0.0, 0.0, 3.0, 0.0, 3.0, 3.0, 0.0, 3.0];
        let pair = |d: f64| {
            let s = d - 4.0;
            -4.0 * s * s + 0.9 * s.powi(4)
        };
        let expected = 4.0 * pair(3.0) + 2.0 * pair(3.0 * 2f64.sqrt());
        assert!((e.energy(&x) - expected).abs() < 1e-12);
        // Every particle is pulled symmetrically: gradients sum to zero.
        let (_, g) = energy_and_gradient(&e, &x);
        let (sx, sy) = (g[0] + g[2] + g[4] + g[6], g[1] + g[3] + g[5] + g[7]);
        assert!(sx.abs() < 1e-12 && sy.abs() < 1e-12);
    }

    #[test]
    fn coincident_particles_give_zero_pair_gradient_not_nan() {
        let e = DoubleWell::dw2();
        let x = [1.0, -2.0, 1.0, -2.0];
        let (u, g) = energy_and_gradient(&e, &x);
        // d = 0: s = −4, U = −4·16 + 0.9·256.
        assert!((u - (-64.0 + 230.4)).abs() < 1e-12);
        assert_eq!(g, vec![0.0; 4]);
    }

    #[test]
    fn huge_distances_give_no_nan() {
        let e = DoubleWell::dw2();
        for far in [1e80, 1e160, 1e300] {
            let x = [0.0, 0.0, far, 0.0];
            let (u, g) = energy_and_gradient(&e, &x);
            assert_eq!(u, f64::INFINITY, "d = {far}");
            assert!(g.iter().all(|gk| gk.is_finite()), "d = {far}: {g:?}");
        }
    }

    #[test]
    fn constructor_rejects_bad_input() {
        assert!(matches!(
            DoubleWell::new(0, 2, 0.0, -4.0, 0.9, 4.0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            DoubleWell::new(2, 0, 0.0, -4.0, 0.9, 4.0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            DoubleWell::new(usize::MAX, 2, 0.0, -4.0, 0.9, 4.0),
            Err(Error::InvalidArgument { .. })
        ));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(matches!(
                DoubleWell::new(2, 2, bad, -4.0, 0.9, 4.0),
                Err(Error::NonFinite { .. })
            ));
            assert!(matches!(
                DoubleWell::new(2, 2, 0.0, bad, 0.9, 4.0),
                Err(Error::NonFinite { .. })
            ));
            assert!(matches!(
                DoubleWell::new(2, 2, 0.0, -4.0, bad, 4.0),
                Err(Error::NonFinite { .. })
            ));
            assert!(matches!(
                DoubleWell::new(2, 2, 0.0, -4.0, 0.9, bad),
                Err(Error::NonFinite { .. })
            ));
        }
        assert_eq!(
            DoubleWell::new(4, 2, 0.0, -4.0, 0.9, 4.0).unwrap(),
            DoubleWell::dw4()
        );
    }

    #[test]
    fn overflowing_distances_give_no_nan() {
        // Every sign pattern of the coefficients, with zeros: Horner's form used to give
        // 0·∞ = NaN once the distance (or its square) overflowed.
        let far: [&[f64]; 3] = [
            &[0.0, 0.0, 1e200, 0.0],
            &[-1e308, 0.0, 1e308, 0.0],
            &[1e308, 1e308, -1e308, -1e308],
        ];
        for a in [-1.0, 0.0, 1.0] {
            for b in [-4.0, 0.0, 4.0] {
                for c in [-0.9, 0.0, 0.9] {
                    let e = DoubleWell::new(2, 2, a, b, c, 4.0).unwrap();
                    for x in far {
                        let (u, g) = energy_and_gradient(&e, x);
                        assert!(!u.is_nan(), "{a} {b} {c} {x:?}");
                        assert_eq!(e.energy(x).to_bits(), u.to_bits());
                        if u.is_finite() || u == f64::INFINITY {
                            assert!(g.iter().all(|gk| gk.is_finite()), "{a} {b} {c}: {g:?}");
                        }
                    }
                }
            }
        }
        // d = 1e200 exactly, not +∞: a linear pair has U = d − d0 and a unit gradient.
        let e = DoubleWell::new(2, 2, 1.0, 0.0, 0.0, 0.0).unwrap();
        let (u, g) = energy_and_gradient(&e, far[0]);
        assert_eq!(u, 1e200);
        assert_eq!(g, vec![-1.0, 0.0, 1.0, 0.0]);
        // Subnormal separations: the distance does not underflow to 0.
        let (u, g) = energy_and_gradient(&e, &[0.0, 0.0, 3e-320, 4e-320]);
        assert!((u - 5e-320).abs() <= 1e-323, "{u:e}");
        assert!(
            (g[2] - 0.6).abs() < 1e-2 && (g[3] - 0.8).abs() < 1e-2,
            "{g:?}"
        );
    }
}
