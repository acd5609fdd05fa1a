//! Layout helpers: configurations are particle-major, `x[i * dim + k]` (C `double x[N][D]`,
//! Fortran `x(D, N)`); a batch adds the slowest index.

use crate::error::{Error, Result};

/// The largest spatial dimension eqflow supports (1, 2 and 3 are physical).
pub const MAX_DIM: usize = 3;

/// The largest number of particles eqflow accepts. Pair fields and energies cost O(N²) per
/// evaluation (10¹² pairs here), and each per-thread buffer of one configuration stays below
/// 24 MB; larger counts are almost always a corrupted input.
pub const MAX_PARTICLES: usize = 1_000_000;

/// Number of particles and spatial dimension of one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub n_particles: usize,
    pub dim: usize,
}

impl Layout {
    /// Validates `2 ≤ n_particles ≤ MAX_PARTICLES` (a pair field needs pairs) and
    /// `1 ≤ dim ≤ MAX_DIM`.
    pub fn new(n_particles: usize, dim: usize) -> Result<Self> {
        if !(2..=MAX_PARTICLES).contains(&n_particles) {
            return Err(Error::invalid(format!(
                "n_particles must be between 2 and {MAX_PARTICLES}, got {n_particles}"
            )));
        }
        if dim == 0 || dim > MAX_DIM {
            return Err(Error::invalid(format!(
                "dim must be between 1 and {MAX_DIM}, got {dim}"
            )));
        }
        Ok(Layout { n_particles, dim })
    }

    /// Length of one configuration, N·D.
    #[must_use]
    pub fn len(&self) -> usize {
        self.n_particles * self.dim
    }

    /// Always false: a valid layout has at least two particles.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Dimension of the centre-of-mass-free subspace U, (N − 1)·D.
    #[must_use]
    pub fn com_free_dim(&self) -> usize {
        (self.n_particles - 1) * self.dim
    }

    /// Checks that a batch buffer holds exactly `n` configurations.
    pub fn check_batch(&self, what: &str, values: &[f64], n: usize) -> Result<()> {
        let expected = n
            .checked_mul(self.len())
            .ok_or_else(|| Error::invalid(format!("{what}: batch of {n} is too large")))?;
        if values.len() != expected {
            return Err(Error::size(what, expected, values.len()));
        }
        Ok(())
    }
}

/// Writes the centre of mass (particle mean) of `x` into `com` (length `dim`).
pub fn center_of_mass_into(x: &[f64], dim: usize, com: &mut [f64]) {
    com.fill(0.0);
    for particle in x.chunks_exact(dim) {
        for (c, xi) in com.iter_mut().zip(particle) {
            *c += xi;
        }
    }
    let n = (x.len() / dim) as f64;
    for c in com.iter_mut() {
        *c /= n;
    }
    // Coordinates near the f64 range can overflow the sum although their mean is finite: then
    // average the scaled values instead (the common case keeps its bits).
    if com.iter().any(|c| !c.is_finite()) && x.iter().all(|v| v.is_finite()) {
        com.fill(0.0);
        for particle in x.chunks_exact(dim) {
            for (c, xi) in com.iter_mut().zip(particle) {
                *c += xi / n;
            }
        }
    }
}

/// Subtracts the particle mean from every particle, in place.
pub fn remove_center_of_mass(x: &mut [f64], dim: usize) {
    let mut com = [0.0; MAX_DIM];
    let com = &mut com[..dim];
    center_of_mass_into(x, dim, com);
    com.iter_mut().for_each(|c| *c = -*c);
    translate(x, dim, com);
}

/// Adds `shift` (length `dim`) to every particle, in place.
pub fn translate(x: &mut [f64], dim: usize, shift: &[f64]) {
    for particle in x.chunks_exact_mut(dim) {
        for (xi, s) in particle.iter_mut().zip(shift) {
            *xi += s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn com_removal_zeroes_the_mean() {
        let mut x = vec![1.0, 2.0, 3.0, 5.0, -1.0, 4.0];
        remove_center_of_mass(&mut x, 2);
        let mut com = [0.0; 2];
        center_of_mass_into(&x, 2, &mut com);
        assert!(com.iter().all(|c| c.abs() < 1e-15), "{com:?}");
        assert_eq!(x[0], 1.0 - 1.0);
        assert!((x[1] - (2.0 - 11.0 / 3.0)).abs() < 1e-15);
    }

    #[test]
    fn layout_rejects_degenerate_sizes() {
        assert!(Layout::new(1, 2).is_err());
        assert!(Layout::new(4, 0).is_err());
        assert!(Layout::new(4, 4).is_err());
        let l = Layout::new(13, 3).unwrap();
        assert_eq!((l.len(), l.com_free_dim()), (39, 36));
        assert!(l.check_batch("x", &[0.0; 78], 2).is_ok());
        assert!(l.check_batch("x", &[0.0; 77], 2).is_err());
    }
}
