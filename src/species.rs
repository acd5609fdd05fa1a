//! Particle species: which particles are identical.
//!
//! A configuration of N particles may hold several species (two sizes of atom, say). Each
//! particle has a species index `0..n_species`; only particles of the same species are
//! interchangeable, so fields are equivariant under permutations *within* a species and pair
//! functions depend on the **unordered** species pair of the two particles. Unordered pairs
//! `(a, b)`, `a ≤ b`, are numbered row by row of the upper triangle:
//! `(0,0), (0,1), …, (0,S−1), (1,1), …, (S−1,S−1)`, so with S species there are S(S+1)/2 pair
//! types and a single species has exactly one (type 0, today's field).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest number of species (36 pair types).
pub const MAX_SPECIES: usize = 8;
/// The largest number of unordered species pairs, `MAX_SPECIES·(MAX_SPECIES + 1)/2`.
pub const MAX_PAIR_TYPES: usize = MAX_SPECIES * (MAX_SPECIES + 1) / 2;

/// The species index of every particle, validated: `1 ≤ n_species ≤ MAX_SPECIES` and every
/// index below `n_species`. In files: `{"n_species": 2, "of_particle": [0, 0, 1, …]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SpeciesFile", into = "SpeciesFile")]
pub struct Species {
    n_species: usize,
    of_particle: Vec<u32>,
    /// `pair_type[a·S + b]`, symmetric.
    pair_type: Vec<u8>,
}

/// The file form of [`Species`], validated on the way in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpeciesFile {
    n_species: usize,
    of_particle: Vec<u32>,
}

impl TryFrom<SpeciesFile> for Species {
    type Error = Error;
    fn try_from(file: SpeciesFile) -> Result<Species> {
        Species::new(file.n_species, file.of_particle)
    }
}

impl From<Species> for SpeciesFile {
    fn from(s: Species) -> SpeciesFile {
        SpeciesFile {
            n_species: s.n_species,
            of_particle: s.of_particle,
        }
    }
}

impl Species {
    /// Validates `1 ≤ n_species ≤` [`MAX_SPECIES`] and every index `< n_species`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the first bad particle (or the bad count).
    pub fn new(n_species: usize, of_particle: Vec<u32>) -> Result<Species> {
        if !(1..=MAX_SPECIES).contains(&n_species) {
            return Err(Error::invalid(format!(
                "n_species must be between 1 and {MAX_SPECIES}, got {n_species}"
            )));
        }
        if let Some((i, s)) = of_particle
            .iter()
            .enumerate()
            .find(|(_, s)| **s as usize >= n_species)
        {
            return Err(Error::invalid(format!(
                "species index {s} of particle {i} is not below n_species = {n_species}"
            )));
        }
        let mut pair_type = vec![0u8; n_species * n_species];
        let mut next = 0u8;
        for a in 0..n_species {
            for b in a..n_species {
                pair_type[a * n_species + b] = next;
                pair_type[b * n_species + a] = next;
                next += 1;
            }
        }
        Ok(Species {
            n_species,
            of_particle,
            pair_type,
        })
    }

    /// One species for `n_particles` particles (the default everywhere).
    #[must_use]
    pub fn single(n_particles: usize) -> Species {
        Species {
            n_species: 1,
            of_particle: vec![0; n_particles],
            pair_type: vec![0],
        }
    }

    /// Checks that there is one index per particle.
    ///
    /// # Errors
    ///
    /// [`Error::DimensionMismatch`] otherwise.
    pub fn check_count(&self, n_particles: usize) -> Result<()> {
        if self.of_particle.len() != n_particles {
            return Err(Error::size(
                "species indices (one per particle)",
                n_particles,
                self.of_particle.len(),
            ));
        }
        Ok(())
    }

    #[must_use]
    pub fn n_species(&self) -> usize {
        self.n_species
    }

    /// The species index of each particle.
    #[must_use]
    pub fn of_particle(&self) -> &[u32] {
        &self.of_particle
    }

    #[must_use]
    pub fn n_particles(&self) -> usize {
        self.of_particle.len()
    }

    /// `n_species == 1`: every particle identical.
    #[must_use]
    pub fn is_single(&self) -> bool {
        self.n_species == 1
    }

    /// The number of unordered species pairs, S(S+1)/2.
    #[must_use]
    pub fn n_pair_types(&self) -> usize {
        n_pair_types(self.n_species)
    }

    /// The pair type of species `a` and `b` (symmetric; numbering in the module docs).
    #[must_use]
    #[inline(always)]
    pub fn pair_type(&self, a: u32, b: u32) -> usize {
        self.pair_type[a as usize * self.n_species + b as usize] as usize
    }

    /// The pair type of particles `i` and `j`.
    #[must_use]
    #[inline(always)]
    pub fn pair_type_of_particles(&self, i: usize, j: usize) -> usize {
        self.pair_type(self.of_particle[i], self.of_particle[j])
    }

    /// The species pair `(a, b)`, `a ≤ b`, of pair type `ty`.
    #[must_use]
    pub fn species_of_pair_type(&self, ty: usize) -> Option<(usize, usize)> {
        (0..self.n_species)
            .flat_map(|a| (a..self.n_species).map(move |b| (a, b)))
            .nth(ty)
    }

    /// The number of particles of each species.
    #[must_use]
    pub fn counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.n_species];
        for s in &self.of_particle {
            counts[*s as usize] += 1;
        }
        counts
    }
}

/// S(S+1)/2.
#[must_use]
pub fn n_pair_types(n_species: usize) -> usize {
    n_species * (n_species + 1) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_types_are_numbered_row_by_row_and_symmetric() {
        let s = Species::new(3, vec![0, 1, 2, 2]).unwrap();
        assert_eq!(s.n_pair_types(), 6);
        let expected = [
            (0, 0, 0),
            (0, 1, 1),
            (0, 2, 2),
            (1, 1, 3),
            (1, 2, 4),
            (2, 2, 5),
        ];
        for (a, b, ty) in expected {
            assert_eq!(s.pair_type(a, b), ty);
            assert_eq!(s.pair_type(b, a), ty);
            assert_eq!(s.species_of_pair_type(ty), Some((a as usize, b as usize)));
        }
        assert_eq!(s.pair_type_of_particles(1, 3), 4);
        assert_eq!(s.counts(), vec![1, 1, 2]);
    }

    #[test]
    fn bad_species_are_refused_with_the_particle_named() {
        let e = Species::new(2, vec![0, 2, 1]).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }));
        assert!(e.to_string().contains("particle 1"), "{e}");
        assert!(Species::new(0, vec![]).is_err());
        assert!(Species::new(MAX_SPECIES + 1, vec![0]).is_err());
        let e = Species::single(3).check_count(4).unwrap_err();
        assert!(matches!(
            e,
            Error::DimensionMismatch {
                expected: 4,
                found: 3,
                ..
            }
        ));
        let parsed: std::result::Result<Species, _> =
            serde_json::from_str(r#"{"n_species": 2, "of_particle": [0, 5]}"#);
        assert!(parsed.unwrap_err().to_string().contains("particle 1"));
    }
}
