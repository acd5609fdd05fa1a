//! Lennard-Jones clusters of several species: one well depth and one pair-minimum distance per
//! unordered species pair (a binary LJ cluster, say), with the harmonic tether of
//! [`super::LennardJones`].

use super::lennard_jones::pair_derivative;
use super::{Energy, add_pair_gradient, coordinate_mean, finish_gradient, squared_distance};
use crate::error::Compact;
use crate::species::Species;
use crate::{Error, Result};

/// `U = Σ_{i<j} ε_{s_i s_j} [(r_{s_i s_j}/d_ij)¹² − 2 (r_{s_i s_j}/d_ij)⁶] + (k/2) Σ_i |x_i − x̄|²`.
///
/// The conventions of [`super::LennardJones`] (plain distances, the pair minimum `−ε_ab` at
/// `d = r_ab`, ε = 2 for the LJ-13 data convention, `U = +∞` for overlaps and no NaN) hold per
/// species pair. `epsilon` and `r_m` are given per unordered species pair in the pair-type
/// order of [`crate::species`] (`(0,0), (0,1), …, (1,1), …`); `r_m = 2^(1/6)·σ`. Any finite
/// coordinates are handled, and the gradient follows the rules of [`super::LennardJones`]
/// (finite but meaningless where `U = +∞`, NaN where `U` is finite but the gradient overflows). With every
/// `ε_ab` and `r_ab` equal it is [`super::LennardJones`] (to rounding: ε multiplies each pair
/// here, the sum there).
#[derive(Debug, Clone, PartialEq)]
pub struct SpeciesLennardJones {
    dim: usize,
    species: Species,
    epsilon: Vec<f64>,
    r_m: Vec<f64>,
    /// `r_ab²` per pair type.
    r_m2: Vec<f64>,
    oscillator_k: f64,
}

impl SpeciesLennardJones {
    /// A cluster of `species.n_particles()` particles in `dim` dimensions.
    ///
    /// # Errors
    ///
    /// [`Error::DimensionMismatch`] if `epsilon` or `r_m` does not have one value per
    /// unordered species pair (`S(S+1)/2`); [`Error::NonFinite`] for a NaN or infinite
    /// parameter; [`Error::InvalidArgument`] for fewer than one particle, `dim` zero, an
    /// `ε_ab ≤ 0`, an `r_ab ≤ 0` (or one whose square is not a positive finite number) or
    /// `oscillator_k < 0`. Each message names the species pair.
    pub fn new(
        dim: usize,
        species: Species,
        epsilon: Vec<f64>,
        r_m: Vec<f64>,
        oscillator_k: f64,
    ) -> Result<Self> {
        let n = species.n_particles();
        if n == 0 || dim == 0 || n.checked_mul(dim).is_none() {
            return Err(Error::invalid(format!(
                "SpeciesLennardJones: needs at least one particle and dimension, got {n} and \
                 {dim}"
            )));
        }
        let n_types = species.n_pair_types();
        for (name, values) in [("epsilon", &epsilon), ("r_m", &r_m)] {
            if values.len() != n_types {
                return Err(Error::size(
                    format!(
                        "SpeciesLennardJones: {name} (one per unordered pair of {} species)",
                        species.n_species()
                    ),
                    n_types,
                    values.len(),
                ));
            }
        }
        if !oscillator_k.is_finite() {
            return Err(Error::non_finite(format!(
                "SpeciesLennardJones: oscillator_k = {oscillator_k}"
            )));
        }
        if oscillator_k < 0.0 {
            return Err(Error::invalid(format!(
                "SpeciesLennardJones: oscillator_k must be non-negative, got {}",
                Compact(oscillator_k)
            )));
        }
        for ty in 0..n_types {
            let (a, b) = species.species_of_pair_type(ty).unwrap_or_default();
            let (eps, r) = (epsilon[ty], r_m[ty]);
            for (name, value) in [("epsilon", eps), ("r_m", r)] {
                if !value.is_finite() {
                    return Err(Error::non_finite(format!(
                        "SpeciesLennardJones: {name} of species pair ({a}, {b}) = {value}"
                    )));
                }
            }
            if eps <= 0.0 {
                return Err(Error::invalid(format!(
                    "SpeciesLennardJones: epsilon of species pair ({a}, {b}) must be positive, \
                     got {}",
                    Compact(eps)
                )));
            }
            let r2 = r * r;
            if r <= 0.0 || !r2.is_finite() || r2 == 0.0 {
                return Err(Error::invalid(format!(
                    "SpeciesLennardJones: r_m of species pair ({a}, {b}) must be positive with \
                     a finite positive square, got {}",
                    Compact(r)
                )));
            }
        }
        let r_m2 = r_m.iter().map(|r| r * r).collect();
        Ok(SpeciesLennardJones {
            dim,
            species,
            epsilon,
            r_m,
            r_m2,
            oscillator_k,
        })
    }

    /// The species of every particle.
    #[must_use]
    pub fn species(&self) -> &Species {
        &self.species
    }

    /// ε per unordered species pair (pair-type order).
    #[must_use]
    pub fn epsilon(&self) -> &[f64] {
        &self.epsilon
    }

    /// `r_m` per unordered species pair (pair-type order).
    #[must_use]
    pub fn r_m(&self) -> &[f64] {
        &self.r_m
    }

    /// Spring constant `k` of the harmonic tether to the centre of mass.
    #[must_use]
    pub fn oscillator_k(&self) -> f64 {
        self.oscillator_k
    }

    /// `Σ_i |x_i − x̄|²` and, with `gradient`, `k (x_i − x̄)` written into it.
    fn oscillator(&self, x: &[f64], mut gradient: Option<&mut [f64]>) -> f64 {
        let (n, dim) = (self.species.n_particles(), self.dim);
        let mut sum = 0.0;
        for k in 0..dim {
            let mean = coordinate_mean(x, n, dim, k);
            for i in 0..n {
                let dev = x[i * dim + k] - mean;
                sum += dev * dev;
                if let Some(g) = gradient.as_deref_mut() {
                    g[i * dim + k] = self.oscillator_k * dev;
                }
            }
        }
        sum
    }

    /// The pair sum, and with `gradient` its gradient added; whether a pair was left out of
    /// the gradient because its derivative is not finite.
    fn pairs(&self, x: &[f64], mut gradient: Option<&mut [f64]>) -> (f64, bool) {
        let (n, dim) = (self.species.n_particles(), self.dim);
        let mut u = 0.0;
        let mut overflowed = false;
        for i in 0..n {
            let xi = &x[i * dim..(i + 1) * dim];
            for j in i + 1..n {
                let ty = self.species.pair_type_of_particles(i, j);
                let (eps, r2m) = (self.epsilon[ty], self.r_m2[ty]);
                let d2 = squared_distance(xi, &x[j * dim..(j + 1) * dim]);
                let s = r2m / d2;
                let s6 = s * s * s;
                // s6·(s6 − 2): once s6 overflows, s6² − 2·s6 would be ∞ − ∞.
                u += eps * (s6 * (s6 - 2.0));
                if let Some(g) = gradient.as_deref_mut() {
                    let d = d2.sqrt();
                    // dU/dd = (12ε/d)(s6 − s6²); dropped where not finite (U is +∞ or huge
                    // there), as in `LennardJones`.
                    let dudd = pair_derivative(eps, s6, d);
                    if dudd.is_finite() {
                        add_pair_gradient(x, g, dim, (i, j), d, dudd);
                    } else {
                        overflowed = true;
                    }
                }
            }
        }
        (u, overflowed)
    }
}

impl Energy for SpeciesLennardJones {
    fn n_particles(&self) -> usize {
        self.species.n_particles()
    }

    fn species(&self) -> Option<&Species> {
        Some(&self.species)
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn energy(&self, x: &[f64]) -> f64 {
        debug_assert_eq!(x.len(), self.n_particles() * self.dim);
        let (mut u, _) = self.pairs(x, None);
        // Skipped at k = 0 so that a far-flung configuration cannot produce 0·∞.
        if self.oscillator_k > 0.0 {
            u += 0.5 * self.oscillator_k * self.oscillator(x, None);
        }
        u
    }

    fn energy_gradient_into(&self, x: &[f64], gradient: &mut [f64]) -> f64 {
        debug_assert_eq!(x.len(), self.n_particles() * self.dim);
        debug_assert_eq!(gradient.len(), x.len());
        let mut oscillator = 0.0;
        if self.oscillator_k > 0.0 {
            oscillator = self.oscillator(x, Some(gradient));
        } else {
            gradient.fill(0.0);
        }
        let (pairs, overflowed) = self.pairs(x, Some(gradient));
        let u = if self.oscillator_k > 0.0 {
            pairs + 0.5 * self.oscillator_k * oscillator
        } else {
            pairs
        };
        finish_gradient(u, gradient, overflowed);
        u
    }
}

#[cfg(test)]
mod hostile_tests {
    use super::*;

    #[test]
    fn coordinates_near_f64_max_give_no_nan() {
        let species = Species::new(2, vec![0, 1, 0, 1]).unwrap();
        for k in [0.0, 1.0] {
            let e =
                SpeciesLennardJones::new(2, species.clone(), vec![1.0, 2.0, 1.5], vec![1.0; 3], k)
                    .unwrap();
            for x in [
                [-1e308, 0.0, 1e308, 0.0, 1.0, 1.0, 2.0, 2.0],
                [1e308, 0.0, 1e308, 1.0, 1e308, 2.0, 1e308, 3.0],
            ] {
                let mut g = [f64::NAN; 8];
                let u = e.energy_gradient_into(&x, &mut g);
                assert!(!u.is_nan() && u != f64::NEG_INFINITY, "k = {k}: U = {u}");
                assert_eq!(e.energy(&x).to_bits(), u.to_bits());
                assert!(g.iter().all(|gk| gk.is_finite()), "k = {k}, {x:?}: {g:?}");
            }
        }
    }
}
