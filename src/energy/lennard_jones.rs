//! Lennard-Jones clusters held together by a harmonic oscillator: the LJ-13 benchmark
//! (DESIGN.md §2).

use super::{Energy, add_pair_gradient, coordinate_mean, finish_gradient, squared_distance};
use crate::error::Compact;
use crate::{Error, Result};

/// Lennard-Jones pair potential plus a harmonic tether to the centre of mass,
///
/// `U = ε Σ_{i<j} [(r_m/d_ij)¹² − 2 (r_m/d_ij)⁶] + (k/2) Σ_i |x_i − x̄|²`,
///
/// with `d_ij` the plain Euclidean distance and `x̄` the mean particle position. Each pair has its
/// minimum `−ε` at `d = r_m`; the oscillator keeps the cluster from evaporating without breaking
/// translation, rotation, reflection or permutation invariance.
///
/// **Why ε = 2 in [`LennardJones::lj13`].** The reference implementation of the paper summed the
/// pair term over *ordered* pairs without a factor ½, which doubles ε, and the public LJ-13 data
/// sets were sampled with that energy; ε = 2 over unordered pairs reproduces it. With ε = 1 and
/// k = 0 the 13-particle Mackay icosahedron is the known global minimum, `U = −44.326801`
/// (for r_m = 2^(1/6), i.e. σ = 1).
///
/// **Overlaps.** Coincident particles (`d = 0`) give `U = +∞`, as do distances so small that the
/// pair term overflows; never NaN. The gradient of such a pair, whose direction is undefined or
/// whose size is not representable, contributes zero, so the gradient stays finite; it is not
/// meaningful when `U = +∞`. Any finite coordinates are handled, up to `±f64::MAX` (a
/// difference of coordinates that overflows, a centre of mass whose sum overflows); where `U` is
/// finite but a pair's derivative overflows, the gradient is filled with NaN (not representable),
/// which [`super::energies_gradients_into`] reports as an error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LennardJones {
    n_particles: usize,
    dim: usize,
    epsilon: f64,
    r_m: f64,
    oscillator_k: f64,
}

impl LennardJones {
    /// A Lennard-Jones cluster of `n_particles` in `dim` dimensions with well depth `epsilon`,
    /// pair-minimum distance `r_m` and oscillator constant `oscillator_k` (0 switches it off).
    ///
    /// # Errors
    ///
    /// [`Error::NonFinite`] if a parameter is NaN or infinite; [`Error::InvalidArgument`] if
    /// `n_particles` or `dim` is zero (or their product overflows), if `epsilon ≤ 0` (overlapping
    /// particles must cost `+∞`), if `r_m ≤ 0` or `r_m²` is not a positive finite number, or if
    /// `oscillator_k < 0`.
    pub fn new(
        n_particles: usize,
        dim: usize,
        epsilon: f64,
        r_m: f64,
        oscillator_k: f64,
    ) -> Result<Self> {
        if n_particles == 0 {
            return Err(Error::invalid(
                "LennardJones: n_particles must be at least 1",
            ));
        }
        if dim == 0 {
            return Err(Error::invalid("LennardJones: dim must be at least 1"));
        }
        if n_particles.checked_mul(dim).is_none() {
            return Err(Error::invalid(
                "LennardJones: n_particles * dim overflows usize",
            ));
        }
        for (name, value) in [
            ("epsilon", epsilon),
            ("r_m", r_m),
            ("oscillator_k", oscillator_k),
        ] {
            if !value.is_finite() {
                return Err(Error::non_finite(format!("LennardJones: {name} = {value}")));
            }
        }
        if epsilon <= 0.0 {
            return Err(Error::invalid(format!(
                "LennardJones: epsilon must be positive, got {}",
                Compact(epsilon)
            )));
        }
        // The pair term is evaluated through r_m², which must neither overflow nor vanish.
        let r_m2 = r_m * r_m;
        if r_m <= 0.0 || !r_m2.is_finite() || r_m2 == 0.0 {
            return Err(Error::invalid(format!(
                "LennardJones: r_m must be positive with a finite positive square, got {}",
                Compact(r_m)
            )));
        }
        if oscillator_k < 0.0 {
            return Err(Error::invalid(format!(
                "LennardJones: oscillator_k must be non-negative, got {}",
                Compact(oscillator_k)
            )));
        }
        Ok(Self {
            n_particles,
            dim,
            epsilon,
            r_m,
            oscillator_k,
        })
    }

    /// LJ-13: 13 particles in three dimensions, `ε = 2`, `r_m = 1`, `k = 1` (see the type docs
    /// for why ε = 2).
    #[must_use]
    pub fn lj13() -> Self {
        Self {
            n_particles: 13,
            dim: 3,
            epsilon: 2.0,
            r_m: 1.0,
            oscillator_k: 1.0,
        }
    }

    /// Well depth ε of the pair potential.
    #[must_use]
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

    /// Distance `r_m` of the pair minimum.
    #[must_use]
    pub fn r_m(&self) -> f64 {
        self.r_m
    }

    /// Spring constant `k` of the harmonic tether to the centre of mass.
    #[must_use]
    pub fn oscillator_k(&self) -> f64 {
        self.oscillator_k
    }

    /// `(r_m/d)⁶` from the squared distance, so that no square root is needed for the energy.
    /// `d² = 0` gives `+∞` (`r_m² > 0` is guaranteed by the constructor).
    #[inline]
    fn inverse_sixth(&self, d2: f64) -> f64 {
        let s = self.r_m * self.r_m / d2;
        s * s * s
    }

    /// `Σ_i |x_i − x̄|²`, one component at a time so that `x̄` needs no buffer.
    fn oscillator_sum(&self, x: &[f64]) -> f64 {
        let (n, dim) = (self.n_particles, self.dim);
        let mut sum = 0.0;
        for k in 0..dim {
            let mean = coordinate_mean(x, n, dim, k);
            sum += (0..n)
                .map(|i| (x[i * dim + k] - mean) * (x[i * dim + k] - mean))
                .sum::<f64>();
        }
        sum
    }
}

impl Energy for LennardJones {
    fn n_particles(&self) -> usize {
        self.n_particles
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn energy(&self, x: &[f64]) -> f64 {
        let (n, dim) = (self.n_particles, self.dim);
        debug_assert_eq!(x.len(), n * dim);
        let mut pairs = 0.0;
        for i in 0..n {
            let xi = &x[i * dim..(i + 1) * dim];
            for j in i + 1..n {
                let s6 = self.inverse_sixth(squared_distance(xi, &x[j * dim..(j + 1) * dim]));
                // s6·(s6 − 2) rather than s6² − 2·s6: once s6 overflows the latter is ∞ − ∞.
                pairs += s6 * (s6 - 2.0);
            }
        }
        let mut u = self.epsilon * pairs;
        // Skipped at k = 0 so that a far-flung configuration cannot produce 0·∞.
        if self.oscillator_k > 0.0 {
            u += 0.5 * self.oscillator_k * self.oscillator_sum(x);
        }
        u
    }

    fn energy_gradient_into(&self, x: &[f64], gradient: &mut [f64]) -> f64 {
        let (n, dim) = (self.n_particles, self.dim);
        debug_assert_eq!(x.len(), n * dim);
        debug_assert_eq!(gradient.len(), n * dim);

        // The oscillator gradient k(x_i − x̄) initialises the buffer; the Σ_j (x_j − x̄) = 0 term
        // of the exact derivative vanishes identically.
        let mut oscillator = 0.0;
        if self.oscillator_k > 0.0 {
            for k in 0..dim {
                let mean = coordinate_mean(x, n, dim, k);
                let mut sum = 0.0;
                for i in 0..n {
                    let dev = x[i * dim + k] - mean;
                    sum += dev * dev;
                    gradient[i * dim + k] = self.oscillator_k * dev;
                }
                oscillator += sum;
            }
        } else {
            gradient.fill(0.0);
        }

        let mut pairs = 0.0;
        let mut overflowed = false;
        for i in 0..n {
            for j in i + 1..n {
                let d2 = squared_distance(&x[i * dim..(i + 1) * dim], &x[j * dim..(j + 1) * dim]);
                let s6 = self.inverse_sixth(d2);
                pairs += s6 * (s6 - 2.0);
                let d = d2.sqrt();
                // dU/dd = (12ε/d)(s6 − s6²). Non-finite at d = 0 or when it overflows: the pair
                // is left out (∞·0 in a zero component, ∞ − ∞ across pairs would be NaN) and
                // `finish_gradient` decides what the gradient then is. A squared distance that
                // overflows gives s6 = 0, dU/dd = 0: no contribution.
                let dudd = pair_derivative(self.epsilon, s6, d);
                if dudd.is_finite() {
                    add_pair_gradient(x, gradient, dim, (i, j), d, dudd);
                } else {
                    overflowed = true;
                }
            }
        }
        // Skipped at k = 0 like in `energy`, so that both return the same U.
        let u = if self.oscillator_k > 0.0 {
            self.epsilon * pairs + 0.5 * self.oscillator_k * oscillator
        } else {
            self.epsilon * pairs
        };
        finish_gradient(u, gradient, overflowed);
        u
    }
}

/// dU/dd = (12ε/d)(s6 − s6²) of one pair at distance `d` (`s6 = (r_m/d)⁶`), non-finite only
/// where it overflows (or at d = 0). Evaluated left to right as always; where that gives a
/// non-finite value the factor 12 = 16 · 0.75 is split so that 0.75·ε cannot overflow: an ε
/// above f64::MAX / 12 (which the constructors accept) made 12ε infinite before s6(1 − s6)/d
/// could scale it down, and the gradient was refused as overflowing at any distance, even 0
/// at the pair minimum (∞ · 0).
#[inline]
pub(super) fn pair_derivative(epsilon: f64, s6: f64, d: f64) -> f64 {
    let dudd = 12.0 * epsilon * s6 * (1.0 - s6) / d;
    if dudd.is_finite() {
        return dudd;
    }
    16.0 * (0.75 * epsilon * s6 * (1.0 - s6) / d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn energy_and_gradient(e: &LennardJones, x: &[f64]) -> (f64, Vec<f64>) {
        let mut g = vec![f64::NAN; x.len()];
        let u = e.energy_gradient_into(x, &mut g);
        (u, g)
    }

    /// Two particles at distance `d` along the unit vector (2, −1, 2)/3, off the origin.
    fn pair_at(d: f64) -> [f64; 6] {
        pair_from([0.3, -0.2, 0.1], d)
    }

    /// Two particles at distance `d` along the unit vector (2, −1, 2)/3, the first at `origin`.
    fn pair_from(origin: [f64; 3], d: f64) -> [f64; 6] {
        let dir = [2.0 / 3.0, -1.0 / 3.0, 2.0 / 3.0];
        [
            origin[0],
            origin[1],
            origin[2],
            origin[0] + d * dir[0],
            origin[1] + d * dir[1],
            origin[2] + d * dir[2],
        ]
    }

    #[test]
    fn pair_minimum_is_minus_epsilon_at_r_m() {
        let e = LennardJones::new(2, 3, 1.7, 1.3, 0.0).unwrap();
        let x = pair_at(1.3);
        let (u, g) = energy_and_gradient(&e, &x);
        assert!((u - (-1.7)).abs() < 1e-13, "U = {u}");
        assert!((e.energy(&x) - u).abs() < 1e-15);
        assert!(
            g.iter().all(|gk| gk.abs() < 1e-12),
            "gradient at minimum: {g:?}"
        );
        for delta in [-1e-3, 1e-3] {
            assert!(e.energy(&pair_at(1.3 + delta)) > u);
        }
    }

    #[test]
    fn pair_at_twice_r_m_by_hand() {
        // (1/2)¹² − 2(1/2)⁶ = 1/4096 − 128/4096; dU/dd = (12ε/d)(2⁻⁶ − 2⁻¹²) > 0 (attractive).
        let (eps, r_m) = (0.8, 1.1);
        let e = LennardJones::new(2, 3, eps, r_m, 0.0).unwrap();
        let d = 2.0 * r_m;
        let x = pair_at(d);
        let (u, g) = energy_and_gradient(&e, &x);
        assert!((u - eps * (1.0 - 128.0) / 4096.0).abs() < 1e-15);
        let dudd = 12.0 * eps / d * (1.0 / 64.0 - 1.0 / 4096.0);
        // Gradient on particle 0 is dU/dd times the unit vector from particle 1 to particle 0.
        let dir = [2.0 / 3.0, -1.0 / 3.0, 2.0 / 3.0];
        for k in 0..3 {
            assert!((g[k] - (-dudd * dir[k])).abs() < 1e-14, "{g:?}");
            assert!((g[3 + k] - dudd * dir[k]).abs() < 1e-14, "{g:?}");
        }
    }

    #[test]
    fn oscillator_term_by_hand() {
        // Two particles at distance r_m: pair term −ε; Σ|x_i − x̄|² = 2(d/2)² = d²/2.
        let (eps, r_m, k) = (1.0, 1.5, 3.0);
        let e = LennardJones::new(2, 3, eps, r_m, k).unwrap();
        let x = pair_at(r_m);
        let (u, g) = energy_and_gradient(&e, &x);
        let expected = -eps + 0.5 * k * r_m * r_m / 2.0;
        assert!((u - expected).abs() < 1e-13, "U = {u}, expected {expected}");
        assert!((e.energy(&x) - expected).abs() < 1e-13);
        // Pair gradient vanishes at r_m; the oscillator pulls each particle to the centre.
        let dir = [2.0 / 3.0, -1.0 / 3.0, 2.0 / 3.0];
        for kk in 0..3 {
            assert!((g[kk] - (-k * r_m / 2.0 * dir[kk])).abs() < 1e-12, "{g:?}");
            assert!((g[3 + kk] - k * r_m / 2.0 * dir[kk]).abs() < 1e-12, "{g:?}");
        }
    }

    #[test]
    fn coincident_particles_give_infinity_and_finite_gradient() {
        let e = LennardJones::lj13();
        let mut x: Vec<f64> = (0..39).map(|i| (i as f64 * 0.37).sin() * 2.0).collect();
        x.copy_within(5 * 3..6 * 3, 7 * 3);
        assert_eq!(e.energy(&x), f64::INFINITY);
        let (u, g) = energy_and_gradient(&e, &x);
        assert_eq!(u, f64::INFINITY);
        assert!(g.iter().all(|gk| gk.is_finite()), "{g:?}");
    }

    #[test]
    fn tiny_distances_overflow_to_infinity_not_nan() {
        // 1e-30: (r_m/d)⁶ finite, its square overflows; 1e-60: (r_m/d)⁶ itself overflows;
        // 1e-170: d² underflows to zero. The first particle sits at the origin because next to
        // a coordinate of order 1 such offsets would round away and test plain coincidence.
        for k in [0.0, 1.0] {
            let e = LennardJones::new(2, 3, 2.0, 1.0, k).unwrap();
            for d in [1e-30, 1e-60, 1e-170] {
                let x = pair_from([0.0; 3], d);
                assert!(x[3..].iter().all(|&c| c != 0.0));
                assert_eq!(e.energy(&x), f64::INFINITY, "d = {d}, k = {k}");
                let (u, g) = energy_and_gradient(&e, &x);
                assert_eq!(u, f64::INFINITY, "d = {d}, k = {k}");
                assert!(g.iter().all(|gk| gk.is_finite()), "d = {d}: {g:?}");
            }
        }
    }

    #[test]
    fn lj13_preset() {
        let e = LennardJones::lj13();
        assert_eq!((e.n_particles(), e.dim()), (13, 3));
        assert_eq!((e.epsilon(), e.r_m(), e.oscillator_k()), (2.0, 1.0, 1.0));
        assert_eq!(LennardJones::new(13, 3, 2.0, 1.0, 1.0).unwrap(), e);
    }

    #[test]
    fn constructor_rejects_bad_input() {
        let invalid = |r: Result<LennardJones>| matches!(r, Err(Error::InvalidArgument { .. }));
        let non_finite = |r: Result<LennardJones>| matches!(r, Err(Error::NonFinite { .. }));
        assert!(invalid(LennardJones::new(0, 3, 1.0, 1.0, 1.0)));
        assert!(invalid(LennardJones::new(13, 0, 1.0, 1.0, 1.0)));
        assert!(invalid(LennardJones::new(usize::MAX, 3, 1.0, 1.0, 1.0)));
        assert!(invalid(LennardJones::new(13, 3, 0.0, 1.0, 1.0)));
        assert!(invalid(LennardJones::new(13, 3, -1.0, 1.0, 1.0)));
        assert!(invalid(LennardJones::new(13, 3, 1.0, 0.0, 1.0)));
        assert!(invalid(LennardJones::new(13, 3, 1.0, -1.0, 1.0)));
        assert!(invalid(LennardJones::new(13, 3, 1.0, 1e200, 1.0)));
        assert!(invalid(LennardJones::new(13, 3, 1.0, 1e-200, 1.0)));
        assert!(invalid(LennardJones::new(13, 3, 1.0, 1.0, -0.5)));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(non_finite(LennardJones::new(13, 3, bad, 1.0, 1.0)));
            assert!(non_finite(LennardJones::new(13, 3, 1.0, bad, 1.0)));
            assert!(non_finite(LennardJones::new(13, 3, 1.0, 1.0, bad)));
        }
        assert!(LennardJones::new(13, 3, 1.0, 1.0, 0.0).is_ok());
    }

    #[test]
    fn coordinates_near_f64_max_give_no_nan() {
        // Differences that overflow (2e308), a centre of mass whose plain sum overflows, and
        // pairs whose squared distance overflows: U is finite or +∞, the gradient finite.
        let cases: [&[f64]; 3] = [
            &[-1e308, 0.0, 1e308, 0.0, 1.0, 1.0, 2.0, 2.0],
            &[1e308, 0.0, 1e308, 1.0, 1e308, 2.0, 1e308, 3.0],
            &[1e200, 0.0, -1e200, 0.0, 0.0, 1e200, 0.0, 0.0],
        ];
        for k in [0.0, 1.0, 1e300] {
            let e = LennardJones::new(4, 2, 1.0, 1.0, k).unwrap();
            for x in cases {
                let (u, g) = energy_and_gradient(&e, x);
                assert!(
                    !u.is_nan() && u != f64::NEG_INFINITY,
                    "k = {k}, {x:?}: U = {u}"
                );
                assert_eq!(e.energy(x).to_bits(), u.to_bits(), "k = {k}, {x:?}");
                assert!(g.iter().all(|gk| gk.is_finite()), "k = {k}, {x:?}: {g:?}");
            }
        }
        // Four particles on a line at 1e308 (y = 0..3): the mean of x is 1e308, not +∞, so
        // the oscillator is that of the y spread alone.
        let e = LennardJones::new(4, 2, 1.0, 1.0, 1.0).unwrap();
        let (u, g) = energy_and_gradient(&e, cases[1]);
        let shifted = [0.0, 0.0, 0.0, 1.0, 0.0, 2.0, 0.0, 3.0];
        let (u_ref, g_ref) = energy_and_gradient(&e, &shifted);
        assert!((u - u_ref).abs() < 1e-12, "{u} vs {u_ref}");
        for (a, b) in g.iter().zip(&g_ref) {
            assert!((a - b).abs() < 1e-12, "{g:?} vs {g_ref:?}");
        }
    }

    /// The gradient is linear in ε: at ε up to f64::MAX it is ε times the gradient at ε = 1
    /// wherever that product is finite (it was refused as overflowing above ε ≈ 1.5e307, even
    /// at the pair minimum, where it is 0), for both Lennard-Jones energies.
    #[test]
    fn the_gradient_at_an_epsilon_near_f64_max_is_epsilon_times_the_unit_one() {
        use crate::energy::SpeciesLennardJones;
        use crate::species::Species;
        let unit = LennardJones::new(2, 1, 1.0, 1.0, 0.0).unwrap();
        for epsilon in [1e300, 1.4e307, 1.6e307, 1e308, f64::MAX] {
            let big = LennardJones::new(2, 1, epsilon, 1.0, 0.0).unwrap();
            let species = SpeciesLennardJones::new(
                1,
                Species::new(1, vec![0, 0]).unwrap(),
                vec![epsilon],
                vec![1.0],
                0.0,
            )
            .unwrap();
            for d in [1.0, 1.5, 2.0, 10.0, 1e3, 1e10, 1e100] {
                let x = [0.0, d];
                let (_, g1) = energy_and_gradient(&unit, &x);
                let expected = g1[1] * epsilon;
                if !expected.is_finite() {
                    continue;
                }
                for e in [&big as &dyn Energy, &species] {
                    let mut g = [f64::NAN; 2];
                    let u = e.energy_gradient_into(&x, &mut g);
                    assert!(u.is_finite(), "ε = {epsilon}, d = {d}: U = {u}");
                    assert!(
                        (g[1] - expected).abs() <= 1e-14 * expected.abs() && g[0] == -g[1],
                        "ε = {epsilon}, d = {d}: {g:?}, expected {expected}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_finite_energy_with_an_overflowing_gradient_is_marked_not_representable() {
        // At d = 1e-3 (r_m = 1): s6 = 1e18, U = ε·s6·(s6 − 2) ≈ 1e306 is finite but
        // dU/dd = 12ε·s6(1 − s6)/d ≈ −1.2e310 overflows: the pair is not silently dropped.
        let e = LennardJones::new(2, 1, 1e270, 1.0, 0.0).unwrap();
        let x = [0.0, 1e-3];
        let (u, g) = energy_and_gradient(&e, &x);
        assert!(u.is_finite(), "U = {u}");
        assert!(g.iter().all(|gk| gk.is_nan()), "{g:?}");
        let mut u_batch = [0.0];
        let mut g_batch = [7.0; 2];
        let error =
            super::super::energies_gradients_into(&e, &x, &mut u_batch, &mut g_batch).unwrap_err();
        assert!(matches!(error, Error::NonFinite { .. }), "{error}");
        assert!(error.to_string().contains("gradient[0]"), "{error}");
        assert_eq!((u_batch, g_batch), ([0.0], [7.0; 2]), "nothing written");
    }
}
