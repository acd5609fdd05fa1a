//! Benchmark systems as data: an energy specification, kT and the matching kernel preset
//! (DESIGN.md §2), serialisable into model files and selectable by name in the CLI.

use serde::{Deserialize, Serialize};

use crate::boltzmann::Kt;
use crate::energy::{DoubleWell, Energy, LennardJones};
use crate::error::{Error, Result};
use crate::field::envpair::{EnvPairConfig, EnvPairField};
use crate::field::{Field, KernelConfig, KernelField};
use crate::flow::Flow;
use crate::geometry::Layout;
use crate::integrate::Integrator;
use crate::prior::Prior;

/// A potential energy by its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EnergySpec {
    /// Per unordered pair `a(d−d0) + b(d−d0)² + c(d−d0)⁴`.
    DoubleWell {
        n_particles: usize,
        dim: usize,
        a: f64,
        b: f64,
        c: f64,
        d0: f64,
    },
    /// `ε Σ_{i<j} [(r_m/d)¹² − 2(r_m/d)⁶] + (k/2) Σ_i |x_i − x̄|²`.
    LennardJones {
        n_particles: usize,
        dim: usize,
        epsilon: f64,
        r_m: f64,
        oscillator_k: f64,
    },
}

impl EnergySpec {
    /// Builds the energy, validating the parameters.
    pub fn build(&self) -> Result<Box<dyn Energy>> {
        Ok(match *self {
            EnergySpec::DoubleWell {
                n_particles,
                dim,
                a,
                b,
                c,
                d0,
            } => Box::new(DoubleWell::new(n_particles, dim, a, b, c, d0)?),
            EnergySpec::LennardJones {
                n_particles,
                dim,
                epsilon,
                r_m,
                oscillator_k,
            } => Box::new(LennardJones::new(
                n_particles,
                dim,
                epsilon,
                r_m,
                oscillator_k,
            )?),
        })
    }

    /// `(N, D)` of the configurations this energy takes.
    #[must_use]
    pub fn shape(&self) -> (usize, usize) {
        match *self {
            EnergySpec::DoubleWell {
                n_particles, dim, ..
            }
            | EnergySpec::LennardJones {
                n_particles, dim, ..
            } => (n_particles, dim),
        }
    }
}

/// A named system: energy, temperature and the kernel preset a flow for it starts from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct System {
    /// Short name (`dw2`, `dw4`, `lj13`, or a user's).
    pub name: String,
    pub energy: EnergySpec,
    /// kT in the energy's units; reduced energies are `U/kT`.
    pub kt: f64,
    /// The units the energy and lengths are in (`reduced` for the benchmark systems).
    pub units: String,
}

impl System {
    /// The benchmark systems of DESIGN.md §2 by name: `dw2`, `dw4` or `lj13`.
    pub fn preset(name: &str) -> Result<System> {
        let dw = |n| EnergySpec::DoubleWell {
            n_particles: n,
            dim: 2,
            a: 0.0,
            b: -4.0,
            c: 0.9,
            d0: 4.0,
        };
        let energy = match name {
            "dw2" => dw(2),
            "dw4" => dw(4),
            "lj13" => EnergySpec::LennardJones {
                n_particles: 13,
                dim: 3,
                epsilon: 2.0,
                r_m: 1.0,
                oscillator_k: 1.0,
            },
            other => {
                return Err(Error::invalid(format!(
                    "unknown system '{other}' (known: dw2, dw4, lj13)"
                )));
            }
        };
        Ok(System {
            name: name.to_string(),
            energy,
            kt: 1.0,
            units: "reduced".to_string(),
        })
    }

    /// The kernel preset of the paper's code for this kind of system.
    #[must_use]
    pub fn kernels(&self) -> KernelConfig {
        match self.energy {
            EnergySpec::DoubleWell { .. } => KernelConfig::double_well(),
            EnergySpec::LennardJones { .. } => KernelConfig::lennard_jones(),
        }
    }

    /// An untrained flow for this system: the paper's kernel field with this system's kernel
    /// preset and its initialisation from `seed`, a unit prior, and the default integrator
    /// (what `eqflow train` starts from).
    ///
    /// # Errors
    ///
    /// An invalid system shape.
    pub fn untrained_flow(&self, seed: u64) -> Result<Flow> {
        let (n_particles, dim) = self.energy.shape();
        let layout = Layout::new(n_particles, dim)?;
        let field = KernelField::initialise(layout, self.kernels(), seed)?;
        Flow::from_parts(Prior::new(layout, 1.0)?, field, Integrator::default())
    }

    /// An untrained flow as [`System::untrained_flow`], with a field of the registered family
    /// `family` (`"kernel"` or `"envpair"`) in this system's preset.
    ///
    /// # Errors
    ///
    /// An unknown family name; an invalid system shape.
    pub fn untrained_flow_of(&self, family: &str, seed: u64) -> Result<Flow> {
        let (n_particles, dim) = self.energy.shape();
        let layout = Layout::new(n_particles, dim)?;
        let field: Field = match family {
            "kernel" => KernelField::initialise(layout, self.kernels(), seed)?.into(),
            "envpair" => {
                let config = match self.energy {
                    EnergySpec::DoubleWell { .. } => EnvPairConfig::double_well(),
                    EnergySpec::LennardJones { .. } => EnvPairConfig::lennard_jones(),
                };
                EnvPairField::initialise(layout, config, seed)?.into()
            }
            other => {
                return Err(Error::invalid(format!(
                    "unknown field family '{other}' (known: {:?})",
                    Field::FAMILIES
                )));
            }
        };
        Flow::from_parts(Prior::new(layout, 1.0)?, field, Integrator::default())
    }

    /// Checks kT and the energy parameters.
    pub fn validate(&self) -> Result<()> {
        Kt::new(self.kt)?;
        self.energy.build().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_benchmark_conventions() {
        let lj = System::preset("lj13").unwrap();
        let e = lj.energy.build().unwrap();
        assert_eq!((e.n_particles(), e.dim()), (13, 3));
        // The LJ-13 convention's pair minimum is −ε = −2 at d = r_m.
        let pair = EnergySpec::LennardJones {
            n_particles: 2,
            dim: 3,
            epsilon: 2.0,
            r_m: 1.0,
            oscillator_k: 0.0,
        }
        .build()
        .unwrap();
        assert!((pair.energy(&[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]) + 2.0).abs() < 1e-12);
        let dw4 = System::preset("dw4").unwrap();
        assert_eq!(dw4.energy.shape(), (4, 2));
        assert_eq!(dw4.kernels(), KernelConfig::double_well());
        assert_eq!(lj.kernels(), KernelConfig::lennard_jones());
        assert!(System::preset("argon").is_err());
        let json = serde_json::to_string(&lj).unwrap();
        assert_eq!(serde_json::from_str::<System>(&json).unwrap(), lj);
    }
}
