//! Benchmark and user systems as data: an energy specification, kT and the matching kernel
//! preset (DESIGN.md §2), serialisable into model files, selectable by name in the CLI or read
//! from a system file ([`System::from_file`]).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::boltzmann::Kt;
use crate::energy::{DoubleWell, Energy, LennardJones, SpeciesLennardJones};
use crate::error::{Compact, Error, Result};
use crate::field::{Family, Interaction, Preset};
use crate::flow::Flow;
use crate::geometry::Layout;
use crate::integrate::Integrator;
use crate::prior::Prior;
use crate::species::{MAX_SPECIES, Species};

/// A potential energy by its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
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
    /// Lennard-Jones with one ε and one `r_m` per unordered species pair (pair-type order of
    /// [`crate::species`]): [`SpeciesLennardJones`].
    LennardJonesSpecies {
        n_particles: usize,
        dim: usize,
        species: Species,
        epsilon: Vec<f64>,
        r_m: Vec<f64>,
        oscillator_k: f64,
    },
}

/// The largest energy scale a system may have, in its own energy units: what the sum of one
/// parameter's pair terms reaches at the system's length scale (see [`EnergySpec::build`]).
/// Far below the overflow of `f64` (1.8e308), so that sums over pairs, gradients, squares in
/// the training losses and `U/kT` stay representable.
pub const MAX_ENERGY_SCALE: f64 = 1e100;

/// The tree of a TOML system file as the JSON tree [`System::from_value`] checks. JSON has no
/// infinities, NaN or dates, which a generic conversion turns into `null` or an internal
/// object that the field checks would then report as "found null"; they are refused here,
/// naming the field (`path`, `energy.epsilon[0][1]`) and what was written.
fn toml_to_json(value: &toml::Value, path: &str) -> std::result::Result<serde_json::Value, String> {
    use serde_json::Value as J;
    let field = |what: &str| format!("field `{path}` {what}");
    Ok(match value {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) if f.is_finite() => {
            serde_json::Number::from_f64(*f).map_or(J::Null, J::Number)
        }
        toml::Value::Float(f) => {
            return Err(field(&format!(
                "is {f}: a system file's numbers are finite (and its names and labels text)"
            )));
        }
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => {
            return Err(field(&format!(
                "is the date or time {d}, not a number or text"
            )));
        }
        toml::Value::Array(items) => J::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| toml_to_json(v, &format!("{path}[{i}]")))
                .collect::<std::result::Result<_, _>>()?,
        ),
        toml::Value::Table(table) => J::Object(
            table
                .iter()
                .map(|(k, v)| {
                    let inner = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    Ok((k.clone(), toml_to_json(v, &inner)?))
                })
                .collect::<std::result::Result<_, String>>()?,
        ),
    })
}

/// The largest system file read, in bytes: 64 MiB holds a species list for the largest flow
/// (a few bytes per particle) many times over; larger is a wrong file, refused before reading.
pub const MAX_SYSTEM_FILE_BYTES: u64 = 64 << 20;

/// The range of the length parameters (`r_m`, `|d0|`): configurations of that size keep their
/// squared distances far from overflow and underflow.
pub const LENGTH_RANGE: (f64, f64) = (1e-50, 1e50);

impl EnergySpec {
    /// Builds the energy, validating the parameters: those of the energy's constructor, and
    /// that the energy defines a Boltzmann distribution whose numbers are representable:
    ///
    /// - a double well must confine the particles: `c > 0`, or `c = 0` with `b > 0`, or
    ///   `b = c = 0` with `a > 0` (otherwise the energy is flat or unbounded below and
    ///   `exp(−U/kT)` has no normalisation);
    /// - a Lennard-Jones cluster must be tethered, `oscillator_k > 0` (otherwise a particle
    ///   that leaves feels a constant energy over an infinite volume: no normalisation);
    /// - lengths (`r_m`, `|d0|`) lie in [`LENGTH_RANGE`];
    /// - each energy parameter's pair terms, summed over all pairs at the system's length scale
    ///   (for the double well the largest of 1, `|d0|` and the wells' offset from `d0`; for
    ///   Lennard-Jones `ε` per pair and `k·N·(N·r_m)²` for the tether), stay below
    ///   [`MAX_ENERGY_SCALE`].
    ///
    /// # Errors
    ///
    /// Those of the energy's constructor; [`Error::InvalidArgument`] naming the field
    /// (`energy.c`, …) for an energy that does not confine or whose scale is out of range.
    pub fn build(&self) -> Result<Box<dyn Energy>> {
        let energy = self.build_unchecked()?;
        self.check_usable().map_err(Error::invalid)?;
        Ok(energy)
    }

    /// The checks of [`EnergySpec::build`] beyond the constructor's, as a message naming the
    /// field.
    fn check_usable(&self) -> std::result::Result<(), String> {
        let (n_particles, _) = self.shape();
        let n = n_particles as f64;
        let n_pairs = n * (n - 1.0) / 2.0;
        let length = |name: &str, value: f64| {
            let (lo, hi) = LENGTH_RANGE;
            if (name == "d0" && value == 0.0) || (lo..=hi).contains(&value.abs()) {
                Ok(())
            } else {
                Err(format!(
                    "field `energy.{name}` = {} is outside the length range [{}, {}] (in \
                     magnitude): squared distances at that scale leave the range of f64",
                    Compact(value),
                    Compact(lo),
                    Compact(hi)
                ))
            }
        };
        let scale = |name: &str, value: f64, term: &str, reach: f64| {
            // A NaN reach (never expected) is refused too.
            if reach.is_nan() || reach > MAX_ENERGY_SCALE {
                return Err(format!(
                    "field `energy.{name}` = {} makes energies too large: {term} reaches {} \
                     over the system's {} pairs at its length scale, beyond the limit of {} \
                     (energies, their sums and U/kT would overflow)",
                    Compact(value),
                    Compact(reach),
                    n_pairs,
                    Compact(MAX_ENERGY_SCALE)
                ));
            }
            Ok(())
        };
        // A cluster without its tether is not a Boltzmann distribution: a particle that
        // leaves feels an energy that tends to a constant over an infinite volume, so Z is
        // infinite and log Z, the entropy and the KL that `eval` reports have no meaning.
        let untethered = |k: f64| {
            if k > 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "field `energy.oscillator_k` = {}: without the harmonic tether nothing \
                     holds the cluster together (the pair energy tends to 0 as particles \
                     separate), so exp(−U/kT) has no normalisation; it must be > 0 (LJ-13 \
                     uses 1)",
                    Compact(k)
                ))
            }
        };
        match *self {
            EnergySpec::DoubleWell { a, b, c, d0, .. } => {
                let unconfined = |fields: &str, why: &str| {
                    Err(format!(
                        "{fields}: {why}, so the energy has no minimum and exp(−U/kT) no \
                         normalisation; a double well confines for c > 0, or c = 0 with b > 0"
                    ))
                };
                if c < 0.0 {
                    return unconfined(
                        &format!("field `energy.c` = {} is negative", Compact(c)),
                        "the quartic term falls without bound as particles separate",
                    );
                }
                if c == 0.0 && b < 0.0 {
                    return unconfined(
                        &format!(
                            "field `energy.b` = {} is negative with `energy.c` = 0",
                            Compact(b)
                        ),
                        "the quadratic term falls without bound as particles separate",
                    );
                }
                if c == 0.0 && b == 0.0 && a <= 0.0 {
                    return unconfined(
                        &format!(
                            "field `energy.a` = {} with `energy.b` = `energy.c` = 0",
                            Compact(a)
                        ),
                        "the pair energy is flat or falls as particles separate",
                    );
                }
                length("d0", d0)?;
                // Where the pairs sit: around d0, within the wells' offset from it.
                let mut reach = d0.abs().max(1.0);
                if c > 0.0 {
                    reach = reach.max((b.abs() / c).sqrt()).max((a.abs() / c).cbrt());
                } else if b > 0.0 {
                    reach = reach.max(a.abs() / b);
                }
                for (name, value, power, term) in [
                    ("a", a, 1, "a·(d − d0)"),
                    ("b", b, 2, "b·(d − d0)²"),
                    ("c", c, 4, "c·(d − d0)⁴"),
                ] {
                    if value != 0.0 {
                        scale(name, value, term, n_pairs * value.abs() * reach.powi(power))?;
                    }
                }
            }
            EnergySpec::LennardJones {
                epsilon,
                r_m,
                oscillator_k,
                ..
            } => {
                untethered(oscillator_k)?;
                length("r_m", r_m)?;
                scale("epsilon", epsilon, "the well depth ε", n_pairs * epsilon)?;
                scale(
                    "oscillator_k",
                    oscillator_k,
                    "the tether k·N·(N·r_m)²",
                    oscillator_k * n * (n * r_m).powi(2),
                )?;
            }
            EnergySpec::LennardJonesSpecies {
                ref epsilon,
                ref r_m,
                oscillator_k,
                ..
            } => {
                untethered(oscillator_k)?;
                for &r in r_m {
                    length("r_m", r)?;
                }
                let eps = epsilon.iter().copied().fold(0.0, f64::max);
                let r_max = r_m.iter().copied().fold(0.0, f64::max);
                scale("epsilon", eps, "the well depth ε", n_pairs * eps)?;
                scale(
                    "oscillator_k",
                    oscillator_k,
                    "the tether k·N·(N·r_m)²",
                    oscillator_k * n * (n * r_max).powi(2),
                )?;
            }
        }
        Ok(())
    }

    /// The energy with its constructor's checks only.
    fn build_unchecked(&self) -> Result<Box<dyn Energy>> {
        if let EnergySpec::LennardJonesSpecies {
            n_particles,
            dim,
            species,
            epsilon,
            r_m,
            oscillator_k,
        } = self
        {
            species.check_count(*n_particles)?;
            return Ok(Box::new(SpeciesLennardJones::new(
                *dim,
                species.clone(),
                epsilon.clone(),
                r_m.clone(),
                *oscillator_k,
            )?));
        }
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
            EnergySpec::LennardJonesSpecies { .. } => unreachable!("built above"),
        })
    }

    /// The species of the particles, `None` for identical particles.
    #[must_use]
    pub fn species(&self) -> Option<&Species> {
        match self {
            EnergySpec::LennardJonesSpecies { species, .. } => Some(species),
            _ => None,
        }
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
            }
            | EnergySpec::LennardJonesSpecies {
                n_particles, dim, ..
            } => (n_particles, dim),
        }
    }
}

/// A named system: energy, temperature and the kernel preset a flow for it starts from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// The names of the built-in systems.
    pub const PRESETS: &'static [&'static str] = &["dw2", "dw4", "lj13", "lj55"];

    /// The benchmark systems of DESIGN.md §2 by name: `dw2`, `dw4`, `lj13`, and `lj55` (55
    /// particles with the LJ-13 parameters ε = 2, r_m = 1, k = 1: the convention of Klein et
    /// al. 2023).
    pub fn preset(name: &str) -> Result<System> {
        let dw = |n| EnergySpec::DoubleWell {
            n_particles: n,
            dim: 2,
            a: 0.0,
            b: -4.0,
            c: 0.9,
            d0: 4.0,
        };
        let lj = |n| EnergySpec::LennardJones {
            n_particles: n,
            dim: 3,
            epsilon: 2.0,
            r_m: 1.0,
            oscillator_k: 1.0,
        };
        let energy = match name {
            "dw2" => dw(2),
            "dw4" => dw(4),
            "lj13" => lj(13),
            "lj55" => lj(55),
            other => {
                return Err(Error::invalid(format!(
                    "unknown system '{other}' (known: {})",
                    Self::PRESETS.join(", ")
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

    /// The built-in system ([`System::PRESETS`]) this one is, whatever it is called: the one
    /// with the same energy (form and every parameter) and kT. The name, description and units
    /// label do not count, so `systems/lj13.json` is `lj13`, and a file that calls itself
    /// `dw4` with other parameters is none.
    #[must_use]
    pub fn builtin_equivalent(&self) -> Option<&'static str> {
        Self::PRESETS.iter().copied().find(|name| {
            Self::preset(name).is_ok_and(|b| b.energy == self.energy && b.kt == self.kt)
        })
    }

    /// A built-in system by name ([`System::PRESETS`]), or else the system file at that path
    /// ([`System::from_file`]). A file whose name is a built-in one is reached as `./name`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a name that is neither built in nor an existing file;
    /// what [`System::from_file`] reports.
    pub fn from_name_or_file(name: &str) -> Result<System> {
        if Self::PRESETS.contains(&name) {
            return System::preset(name);
        }
        let path = Path::new(name);
        if !path.exists() {
            return Err(Error::invalid(format!(
                "unknown system '{name}': neither a built-in system ({}) nor an existing system \
                 file",
                Self::PRESETS.join(", ")
            )));
        }
        System::from_file(path)
    }

    /// Reads a system file: a JSON object (or, in a file named `*.toml`, a TOML table with
    /// the same fields: [`System::from_toml`]) with
    ///
    /// - `n_particles`, `dim`: N and D (integers; may instead, or also, be given inside
    ///   `energy`, as model files record them, and then must agree);
    /// - `kt`: kT in the energy's units (positive);
    /// - `energy`: `{"kind": "lennard_jones", "epsilon": .., "r_m": .., "oscillator_k": ..}`
    ///   (`ε Σ_{i<j} [(r_m/d)¹² − 2(r_m/d)⁶] + (k/2) Σ_i |x_i − x̄|²`, the harmonic confinement
    ///   `k` may be 0) or `{"kind": "double_well", "a": .., "b": .., "c": .., "d0": ..}`;
    /// - optional `species`: one species index per particle (`[0, 0, 1, …]`, S species when the
    ///   largest index is S − 1), for a Lennard-Jones energy only; its `epsilon` and `r_m` are
    ///   then each a number (every species pair alike) or a symmetric S × S array of numbers
    ///   (`epsilon[a][b]` for species a and b), and the flow built for the system has one
    ///   radial function per species pair ([`crate::species`]);
    /// - optional `name` (default: the file's stem), `units` (a label, default `reduced`) and
    ///   `description` (free text, ignored).
    ///
    /// Unknown fields are refused, so that a misspelt parameter is not silently defaulted, and
    /// so is a field given twice (JSON parsers keep one of the two silently).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the file cannot be read or is not a regular file (a FIFO, a device: read
    /// to the end they block or never end); [`Error::Resource`] for a file larger than
    /// [`MAX_SYSTEM_FILE_BYTES`]; [`Error::Format`] naming the file and the
    /// field for invalid JSON, a missing, unknown, repeated or mistyped field, a blank `name`,
    /// N and D that contradict each other, a non-positive kT, or energy parameters that are
    /// unusable (see [`EnergySpec::build`]: a double well that does not confine, energies
    /// beyond [`MAX_ENERGY_SCALE`], lengths outside [`LENGTH_RANGE`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<System> {
        let path = path.as_ref();
        let text = crate::io::read_text_bounded(path, "system file", MAX_SYSTEM_FILE_BYTES)?;
        let stem = path.file_stem().map_or_else(
            || "system".to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        let origin = path.display().to_string();
        let is_toml = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
        if is_toml {
            System::from_toml(&text, &origin, &stem)
        } else {
            System::from_json(&text, &origin, &stem)
        }
    }

    /// Parses the text of a TOML system file: the fields of [`System::from_file`] as TOML keys
    /// (`kt = 1.0`, an `[energy]` table, `epsilon = [[1.0, 1.5], [1.5, 1.0]]`), checked exactly
    /// as the JSON form is, since both become the same tree. TOML itself refuses a key given
    /// twice; a date or time where a number belongs is a mistyped field.
    ///
    /// # Errors
    ///
    /// As [`System::from_file`]; [`Error::Format`] naming the file for invalid TOML.
    pub fn from_toml(text: &str, origin: &str, default_name: &str) -> Result<System> {
        let fail = |what: String| Error::Format {
            what: format!("system file {origin}: {what}"),
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(String::new(), |span| {
                let start = span.start.min(text.len());
                let line = text.as_bytes()[..start]
                    .iter()
                    .filter(|&&c| c == b'\n')
                    .count()
                    + 1;
                format!(" (line {line})")
            });
            fail(format!("not valid TOML{line}: {}", e.message().trim_end()))
        })?;
        let value = toml_to_json(&toml::Value::Table(table), "").map_err(fail)?;
        System::from_value(&value, origin, default_name)
    }

    /// Parses the text of a system file (see [`System::from_file`]); `origin` names it in
    /// messages and `default_name` is the name when the file gives none.
    ///
    /// # Errors
    ///
    /// As [`System::from_file`].
    pub fn from_json(text: &str, origin: &str, default_name: &str) -> Result<System> {
        let fail = |what: String| Error::Format {
            what: format!("system file {origin}: {what}"),
        };
        let value = crate::io::json::parse_unique(text).map_err(|e| {
            // A repeated key is a data error of the parse; anything else is bad syntax.
            if e.is_data() {
                fail(e.to_string())
            } else {
                fail(format!(
                    "not valid JSON: {e} (a TOML system file is read as TOML when its name ends \
                     in .toml)"
                ))
            }
        })?;
        System::from_value(&value, origin, default_name)
    }

    /// A system from the parsed tree of a system file, JSON or TOML.
    fn from_value(value: &serde_json::Value, origin: &str, default_name: &str) -> Result<System> {
        let fail = |what: String| Error::Format {
            what: format!("system file {origin}: {what}"),
        };
        let top = value
            .as_object()
            .ok_or_else(|| fail("expected a JSON object at the top level".into()))?;
        let fields = Fields {
            map: top,
            prefix: "",
            fail: &fail,
        };
        fields.only(&[
            "name",
            "description",
            "units",
            "kt",
            "n_particles",
            "dim",
            "energy",
            "species",
        ])?;
        let name = fields.string("name")?.unwrap_or(default_name).to_string();
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            return Err(fail(format!(
                "field `name` = {:?} must be a non-blank name without control characters",
                name
            )));
        }
        let units = fields.string("units")?.unwrap_or("reduced").to_string();
        fields.string("description")?;
        let kt = fields.number("kt")?;
        if !(kt.is_finite() && kt > 0.0) {
            return Err(fail(format!(
                "field `kt` must be positive and finite, got {}",
                Compact(kt)
            )));
        }
        let energy = fields.object("energy")?;
        let energy = Fields {
            map: energy,
            prefix: "energy.",
            fail: &fail,
        };
        let mut shape = [0; 2];
        for (slot, key) in shape.iter_mut().zip(["n_particles", "dim"]) {
            *slot = match (fields.count(key)?, energy.count(key)?) {
                (Some(a), Some(b)) if a != b => {
                    return Err(fail(format!(
                        "field `{key}` = {a} contradicts `energy.{key}` = {b}"
                    )));
                }
                (Some(a), _) | (None, Some(a)) => a,
                (None, None) => return Err(fail(format!("missing field `{key}`"))),
            };
        }
        let [n_particles, dim] = shape;
        Layout::new(n_particles, dim)
            .map_err(|e| fail(format!("fields `n_particles` and `dim`: {e}")))?;
        let kind = energy
            .string("kind")?
            .ok_or_else(|| fail("missing field `energy.kind`".into()))?;
        let species = fields.species(n_particles)?;
        if species.is_some() && kind != "lennard_jones" {
            return Err(fail(format!(
                "field `species` is given, but `energy.kind` = \"{kind}\" has no species \
                 (only lennard_jones has)"
            )));
        }
        let energy = match kind {
            "lennard_jones" => {
                energy.only(&[
                    "kind",
                    "n_particles",
                    "dim",
                    "epsilon",
                    "r_m",
                    "oscillator_k",
                ])?;
                let oscillator_k = energy.number("oscillator_k")?;
                match species {
                    None => {
                        // A matrix belongs to a species system: say what is missing rather
                        // than that a number was expected.
                        for key in ["epsilon", "r_m"] {
                            if energy.map.get(key).is_some_and(Value::is_array) {
                                return Err((energy.fail)(format!(
                                    "field `energy.{key}` is a matrix (one value per species \
                                     pair), which needs the top-level `species` list (one \
                                     species index per particle); without it, give a number"
                                )));
                            }
                        }
                        EnergySpec::LennardJones {
                            n_particles,
                            dim,
                            epsilon: energy.number("epsilon")?,
                            r_m: energy.number("r_m")?,
                            oscillator_k,
                        }
                    }
                    Some(species) => EnergySpec::LennardJonesSpecies {
                        n_particles,
                        dim,
                        epsilon: energy.pair_matrix("epsilon", &species)?,
                        r_m: energy.pair_matrix("r_m", &species)?,
                        species,
                        oscillator_k,
                    },
                }
            }
            "double_well" => {
                energy.only(&["kind", "n_particles", "dim", "a", "b", "c", "d0"])?;
                EnergySpec::DoubleWell {
                    n_particles,
                    dim,
                    a: energy.number("a")?,
                    b: energy.number("b")?,
                    c: energy.number("c")?,
                    d0: energy.number("d0")?,
                }
            }
            other => {
                return Err(fail(format!(
                    "field `energy.kind` = \"{other}\" is not a known energy (known: \
                     lennard_jones, double_well)"
                )));
            }
        };
        energy
            .build_unchecked()
            .map_err(|e| fail(format!("field `energy`: {e}")))?;
        energy.check_usable().map_err(fail)?;
        Ok(System {
            name,
            energy,
            kt,
            units,
        })
    }

    /// The length unit of the system's presets: `r_m` for Lennard-Jones (the smallest of the
    /// species pairs' with several species), `d0/4` for the
    /// double well (1 for the benchmark systems, whose presets are in these units).
    #[must_use]
    pub fn length_scale(&self) -> f64 {
        match self.energy {
            EnergySpec::LennardJones { r_m, .. } => r_m,
            // The closest contact the kernels must resolve.
            EnergySpec::LennardJonesSpecies { ref r_m, .. } => {
                r_m.iter().copied().fold(f64::INFINITY, f64::min)
            }
            EnergySpec::DoubleWell { d0, .. } if d0 > 0.0 => d0 / 4.0,
            EnergySpec::DoubleWell { .. } => 1.0,
        }
    }

    /// A typical nearest-neighbour distance: the lattice spacing reference MCMC starts from
    /// (`r_m` for Lennard-Jones, `3·d0/4` for the double well).
    #[must_use]
    pub fn neighbour_distance(&self) -> f64 {
        match self.energy {
            EnergySpec::LennardJones { .. } | EnergySpec::LennardJonesSpecies { .. } => {
                self.length_scale()
            }
            EnergySpec::DoubleWell { .. } => 3.0 * self.length_scale(),
        }
    }

    /// The family-neutral preset of this kind of system: the benchmark preset of its
    /// interaction (the paper's kernels for the kernel field), with lengths in units of
    /// [`System::length_scale`] (so exactly the paper's for the benchmark systems).
    #[must_use]
    pub fn field_preset(&self) -> Preset {
        let interaction = match self.energy {
            EnergySpec::DoubleWell { .. } => Interaction::DoubleWell,
            EnergySpec::LennardJones { .. } | EnergySpec::LennardJonesSpecies { .. } => {
                Interaction::LennardJones
            }
        };
        Preset::Benchmark {
            interaction,
            length_scale: self.length_scale(),
        }
    }

    /// An untrained flow for this system: the paper's kernel field with this system's kernel
    /// preset and its initialisation from `seed`, a prior of σ = [`System::length_scale`] (1
    /// for the benchmark systems), and the default integrator (what `eqflow train` starts
    /// from). Strict mode is on, with the paper's initial weights as drawn, which from N = 4
    /// are usually not certified at 20 steps: training makes the flow certified
    /// (`eqflow train` by its certificate penalty or more steps), or
    /// [`Flow::certify_initial_field`] damps them first.
    ///
    /// # Errors
    ///
    /// An invalid system shape.
    pub fn untrained_flow(&self, seed: u64) -> Result<Flow> {
        self.untrained_flow_of("kernel", seed)
    }

    /// The species of the system's particles (`None` for identical particles).
    #[must_use]
    pub fn species(&self) -> Option<&Species> {
        self.energy.species()
    }

    fn prior(&self, layout: Layout) -> Result<Prior> {
        Prior::new(layout, self.length_scale())
    }

    /// An untrained flow as [`System::untrained_flow`], with a field of the registered family
    /// `family` (`"kernel"`, `"coordkernel"`, `"envpair"`, `"kernelcoord"` or `"dense"`) in this
    /// system's preset.
    ///
    /// # Errors
    ///
    /// An unknown family name; an invalid system shape.
    pub fn untrained_flow_of(&self, family: &str, seed: u64) -> Result<Flow> {
        let family = Family::from_name(family)?;
        let (n_particles, dim) = self.energy.shape();
        let layout = Layout::new(n_particles, dim)?;
        let species = match self.species() {
            Some(species) => {
                family.check_species(species).map_err(|e| match e {
                    Error::InvalidArgument { what } => {
                        Error::invalid(format!("system '{}': {what}", self.name))
                    }
                    other => other,
                })?;
                species.clone()
            }
            None => Species::single(n_particles),
        };
        let field = family.untrained(layout, &self.field_preset(), species, seed)?;
        Flow::from_parts(self.prior(layout)?, field, Integrator::default())
    }

    /// Checks kT and the energy parameters.
    pub fn validate(&self) -> Result<()> {
        Kt::new(self.kt)?;
        self.energy.build().map(|_| ())
    }
}

/// The fields of one JSON object of a system file, read with messages that name them.
struct Fields<'a, F: Fn(String) -> Error> {
    map: &'a Map<String, Value>,
    /// `""` at the top level, `"energy."` inside the energy.
    prefix: &'a str,
    fail: &'a F,
}

impl<'a, F: Fn(String) -> Error> Fields<'a, F> {
    /// Refuses fields outside `known`.
    fn only(&self, known: &[&str]) -> Result<()> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(key) => Err((self.fail)(format!(
                "unknown field `{}{key}` (known here: {})",
                self.prefix,
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }

    fn mistyped(&self, key: &str, expected: &str, found: &Value) -> Error {
        (self.fail)(format!(
            "field `{}{key}` must be {expected}, found {found}",
            self.prefix
        ))
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        self.map
            .get(key)
            .map(|v| v.as_str().ok_or_else(|| self.mistyped(key, "a string", v)))
            .transpose()
    }

    fn number(&self, key: &str) -> Result<f64> {
        let v = self
            .map
            .get(key)
            .ok_or_else(|| (self.fail)(format!("missing field `{}{key}`", self.prefix)))?;
        v.as_f64().ok_or_else(|| self.mistyped(key, "a number", v))
    }

    fn count(&self, key: &str) -> Result<Option<usize>> {
        self.map
            .get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| self.mistyped(key, "a non-negative integer", v))
            })
            .transpose()
    }

    /// The optional top-level `species`: one index per particle (S species for a largest
    /// index S − 1).
    fn species(&self, n_particles: usize) -> Result<Option<Species>> {
        let Some(v) = self.map.get("species") else {
            return Ok(None);
        };
        let list = v
            .as_array()
            .ok_or_else(|| self.mistyped("species", "an array of species indices", v))?;
        if list.len() != n_particles {
            return Err((self.fail)(format!(
                "field `species` has {} entries, but `n_particles` = {n_particles}: give one \
                 species index per particle",
                list.len()
            )));
        }
        let mut indices = Vec::with_capacity(list.len());
        for (i, s) in list.iter().enumerate() {
            let index = s
                .as_u64()
                .and_then(|s| u32::try_from(s).ok())
                .filter(|s| (*s as usize) < MAX_SPECIES)
                .ok_or_else(|| {
                    (self.fail)(format!(
                        "field `species[{i}]` must be a species index in 0..{MAX_SPECIES}, \
                         found {s}"
                    ))
                })?;
            indices.push(index);
        }
        let n_species = indices.iter().max().map_or(1, |m| *m as usize + 1);
        Species::new(n_species, indices)
            .map(Some)
            .map_err(|e| (self.fail)(format!("field `species`: {e}")))
    }

    /// A per-species-pair parameter: a number (every pair alike) or a symmetric S × S array;
    /// returned in pair-type order.
    fn pair_matrix(&self, key: &str, species: &Species) -> Result<Vec<f64>> {
        let n = species.n_species();
        let v = self
            .map
            .get(key)
            .ok_or_else(|| (self.fail)(format!("missing field `{}{key}`", self.prefix)))?;
        if let Some(x) = v.as_f64() {
            return Ok(vec![x; species.n_pair_types()]);
        }
        let expected = format!("a number or a {n} × {n} array of numbers (one row per species)");
        let rows = v
            .as_array()
            .ok_or_else(|| self.mistyped(key, &expected, v))?;
        if rows.len() != n {
            return Err((self.fail)(format!(
                "field `{}{key}` has {} rows, but `species` uses species indices 0..={} ({n} \
                 species): give one row and one column per species",
                self.prefix,
                rows.len(),
                n - 1
            )));
        }
        let mut m = vec![0.0; n * n];
        for (a, row) in rows.iter().enumerate() {
            let row = row
                .as_array()
                .filter(|r| r.len() == n)
                .ok_or_else(|| self.mistyped(key, &expected, v))?;
            for (b, x) in row.iter().enumerate() {
                m[a * n + b] = x.as_f64().ok_or_else(|| self.mistyped(key, &expected, v))?;
            }
        }
        let mut per_type = Vec::with_capacity(species.n_pair_types());
        for a in 0..n {
            for b in a..n {
                if m[a * n + b].to_bits() != m[b * n + a].to_bits() {
                    return Err((self.fail)(format!(
                        "field `{}{key}` contradicts itself: [{a}][{b}] = {} but [{b}][{a}] = {} \
                         (a species pair is unordered, so the array must be symmetric)",
                        self.prefix,
                        m[a * n + b],
                        m[b * n + a]
                    )));
                }
                per_type.push(m[a * n + b]);
            }
        }
        Ok(per_type)
    }

    fn object(&self, key: &str) -> Result<&'a Map<String, Value>> {
        let v = self
            .map
            .get(key)
            .ok_or_else(|| (self.fail)(format!("missing field `{}{key}`", self.prefix)))?;
        v.as_object()
            .ok_or_else(|| self.mistyped(key, "an object", v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::{FieldFamily, KernelConfig, KernelField};

    /// The kernel field's settings for a system's preset.
    fn kernels(system: &System) -> KernelConfig {
        KernelField::preset_config(&system.field_preset()).unwrap()
    }

    #[test]
    fn presets_match_the_benchmark_conventions() {
        let lj = System::preset("lj13").unwrap();
        let e = lj.energy.build().unwrap();
        assert_eq!((e.n_particles(), e.dim()), (13, 3));
        // The LJ-13 convention's pair minimum is −ε = −2 at d = r_m.
        let pair = LennardJones::new(2, 3, 2.0, 1.0, 0.0).unwrap();
        assert!((pair.energy(&[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]) + 2.0).abs() < 1e-12);
        let dw4 = System::preset("dw4").unwrap();
        assert_eq!(dw4.energy.shape(), (4, 2));
        assert_eq!(kernels(&dw4), KernelConfig::double_well());
        assert_eq!(kernels(&lj), KernelConfig::lennard_jones());
        assert!(System::preset("argon").is_err());
        let json = serde_json::to_string(&lj).unwrap();
        assert_eq!(serde_json::from_str::<System>(&json).unwrap(), lj);
    }

    #[test]
    fn lj55_uses_the_lj13_convention() {
        let lj55 = System::preset("lj55").unwrap();
        assert_eq!(lj55.energy.shape(), (55, 3));
        let EnergySpec::LennardJones {
            epsilon,
            r_m,
            oscillator_k,
            ..
        } = lj55.energy
        else {
            panic!("not Lennard-Jones");
        };
        assert_eq!((epsilon, r_m, oscillator_k, lj55.kt), (2.0, 1.0, 1.0, 1.0));
        assert_eq!(kernels(&lj55), KernelConfig::lennard_jones());
        let message = System::preset("argon").unwrap_err().to_string();
        assert!(message.contains("lj55"), "{message}");
    }

    fn shipped(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("systems")
            .join(name)
    }

    /// A TOML system file is the JSON one's twin: the same system from the same fields, and
    /// the same refusals (with TOML's own for its syntax and repeated keys).
    #[test]
    fn toml_system_files_read_like_json_ones() {
        let json = System::from_file(shipped("lj_binary.json")).unwrap();
        let toml = System::from_file(shipped("lj_binary.toml")).unwrap();
        assert_eq!(toml, json);
        let dw = r#"
            kt = 1
            n_particles = 4
            dim = 2
            [energy]
            kind = "double_well"
            a = 0
            b = -4
            c = 0.9
            d0 = 4
        "#;
        let system = System::from_toml(dw, "dw.toml", "dw").unwrap();
        assert_eq!(system.name, "dw");
        assert_eq!(system.energy.shape(), (4, 2));
        let cases = [
            (
                dw.replace("c = 0.9", "c = -0.9"),
                "field `energy.c` = -0.9 is negative",
            ),
            (dw.replace("kt = 1", "kt = 1\nkt = 2"), "line 3"),
            (
                dw.replace("kt = 1", "kt = 1979-05-27"),
                "field `kt` is the date or time 1979-05-27",
            ),
            (dw.replace("kt = 1", "kt = inf"), "field `kt` is inf"),
            (dw.replace("kt = 1", "kt = nan"), "field `kt` is NaN"),
            (
                dw.replace("d0 = 4", "d0 = -inf"),
                "field `energy.d0` is -inf",
            ),
            (
                dw.replace("kt = 1", "kt = 1\nname = nan"),
                "field `name` is NaN: a system file's numbers are finite (and its names and \
                 labels text)",
            ),
            (dw.replace("kt = 1", "kt = \"1\""), "`kt`"),
            (dw.replace("kt = 1", "temperature = 1"), "temperature"),
            (dw.replace("[energy]", "[energy"), "not valid TOML (line"),
            (
                dw.replace("kt = 1", "kt = 0"),
                "field `kt` must be positive",
            ),
        ];
        for (text, needle) in cases {
            let error = System::from_toml(&text, "bad.toml", "bad").unwrap_err();
            let message = error.to_string();
            assert!(matches!(error, Error::Format { .. }), "{message}");
            assert!(
                message.contains("system file bad.toml") && message.contains(needle),
                "{needle}: {message}"
            );
        }
        // A TOML file under another name is read as JSON, and the message says why it failed.
        let message = System::from_json(dw, "dw.json", "dw")
            .unwrap_err()
            .to_string();
        assert!(message.contains(".toml"), "{message}");
    }

    #[test]
    fn the_shipped_lj13_file_is_the_builtin_system() {
        let file = System::from_file(shipped("lj13.json")).unwrap();
        assert_eq!(file, System::preset("lj13").unwrap());
        let lj38 = System::from_file(shipped("lj38.json")).unwrap();
        assert_eq!(lj38.energy.shape(), (38, 3));
        assert_eq!(lj38.name, "lj38");
        // A model file's record of a system (N and D inside the energy) reads back too.
        let recorded = serde_json::to_string(&lj38).unwrap();
        assert_eq!(System::from_json(&recorded, "x", "y").unwrap(), lj38);
        // Builtin names win; anything else is a path.
        assert_eq!(System::from_name_or_file("lj13").unwrap().name, "lj13");
        // Built-ins are recognised by their energy and kT, not by their name.
        for name in System::PRESETS {
            let mut renamed = System::preset(name).unwrap();
            assert_eq!(renamed.builtin_equivalent(), Some(*name));
            renamed.name = "mine".into();
            renamed.units = "eV".into();
            assert_eq!(renamed.builtin_equivalent(), Some(*name));
            renamed.kt = 1.5;
            assert_eq!(renamed.builtin_equivalent(), None);
        }
        let mut other = System::preset("lj13").unwrap();
        if let EnergySpec::LennardJones { epsilon, .. } = &mut other.energy {
            *epsilon = 1.0;
        }
        assert_eq!(other.builtin_equivalent(), None);
        let path = shipped("lj38.json");
        let by_path = System::from_name_or_file(path.to_str().unwrap()).unwrap();
        assert_eq!(by_path, lj38);
        let message = System::from_name_or_file("lj38").unwrap_err().to_string();
        assert!(message.contains("neither a built-in system"), "{message}");
    }

    #[test]
    fn a_system_in_other_units_scales_its_presets() {
        let text = r#"{"n_particles": 5, "dim": 3, "kt": 2.5, "units": "kJ/mol, nm",
            "energy": {"kind": "lennard_jones", "epsilon": 1.0, "r_m": 0.38,
                       "oscillator_k": 10.0}}"#;
        let system = System::from_json(text, "argon.json", "argon").unwrap();
        assert_eq!(system.name, "argon");
        assert_eq!(system.units, "kJ/mol, nm");
        assert_eq!(system.length_scale(), 0.38);
        let preset = KernelConfig::lennard_jones();
        let kernels = kernels(&system);
        assert!((kernels.mu_dist[49] - 0.38 * preset.mu_dist[49]).abs() < 1e-12);
        let flow = system.untrained_flow(1).unwrap();
        assert_eq!(flow.prior().sigma(), 0.38);
        system.untrained_flow_of("envpair", 1).unwrap();
        system.untrained_flow_of("coordkernel", 1).unwrap();
        let dense = system.untrained_flow_of("dense", 1).unwrap();
        let spec = dense.field().spec();
        assert_eq!(spec.family, "dense");
        assert_eq!(spec.config["length_scale"], 0.38 * 1.0);
    }

    #[test]
    fn bad_system_files_name_the_file_and_the_field() {
        let lj =
            r#""energy": {"kind": "lennard_jones", "epsilon": 2, "r_m": 1, "oscillator_k": 1}"#;
        let cases = [
            ("[1, 2]".to_string(), "JSON object"),
            ("{".to_string(), "not valid JSON"),
            (
                format!(r#"{{"dim": 3, "kt": 1, {lj}}}"#),
                "missing field `n_particles`",
            ),
            (
                format!(r#"{{"n_particles": 3, "dim": 3, {lj}}}"#),
                "missing field `kt`",
            ),
            (
                format!(r#"{{"n_particles": 3, "dim": 3, "kt": 0, {lj}}}"#),
                "field `kt` must be positive",
            ),
            (
                format!(r#"{{"n_particles": 3, "dim": 3, "kt": -1, {lj}}}"#),
                "field `kt` must be positive",
            ),
            (
                format!(r#"{{"n_particles": 3, "dim": 3, "kt": 1, "kT": 1, {lj}}}"#),
                "unknown field `kT`",
            ),
            (
                r#"{"n_particles": 3, "dim": 3, "kt": 1}"#.to_string(),
                "missing field `energy`",
            ),
            (
                format!(r#"{{"n_particles": "3", "dim": 3, "kt": 1, {lj}}}"#),
                "field `n_particles` must be a non-negative integer",
            ),
            (
                format!(r#"{{"n_particles": 3.5, "dim": 3, "kt": 1, {lj}}}"#),
                "field `n_particles` must be a non-negative integer",
            ),
            (
                format!(r#"{{"n_particles": 1, "dim": 3, "kt": 1, {lj}}}"#),
                "`n_particles` and `dim`",
            ),
            (
                format!(r#"{{"n_particles": 3, "dim": 4, "kt": 1, {lj}}}"#),
                "`n_particles` and `dim`",
            ),
            (
                r#"{"n_particles": 3, "dim": 3, "kt": 1, "energy": {"kind": "lennard_jones",
                    "n_particles": 4, "epsilon": 2, "r_m": 1, "oscillator_k": 1}}"#
                    .to_string(),
                "field `n_particles` = 3 contradicts `energy.n_particles` = 4",
            ),
            (
                r#"{"n_particles": 3, "dim": 3, "kt": 1, "energy": {"kind": "lennard_jones",
                    "epsilon": 2, "r_m": 1}}"#
                    .to_string(),
                "missing field `energy.oscillator_k`",
            ),
            (
                r#"{"n_particles": 3, "dim": 3, "kt": 1, "energy": {"kind": "lennard_jones",
                    "epsilon": 2, "r_m": 1, "oscillator_k": 1, "sigma": 1}}"#
                    .to_string(),
                "unknown field `energy.sigma`",
            ),
            (
                r#"{"n_particles": 3, "dim": 3, "kt": 1, "energy": {"kind": "lennard_jones",
                    "epsilon": -2, "r_m": 1, "oscillator_k": 1}}"#
                    .to_string(),
                "epsilon must be positive",
            ),
            (
                r#"{"n_particles": 3, "dim": 3, "kt": 1, "energy": {"kind": "morse"}}"#.to_string(),
                "`energy.kind` = \"morse\" is not a known energy",
            ),
            (
                r#"{"n_particles": 3, "dim": 3, "kt": 1, "energy": {"epsilon": 1}}"#.to_string(),
                "missing field `energy.kind`",
            ),
            (
                r#"{"n_particles": 3, "dim": 3, "kt": 1, "energy": {"kind": "double_well",
                    "a": 0, "b": "-4", "c": 0.9, "d0": 4}}"#
                    .to_string(),
                "field `energy.b` must be a number",
            ),
        ];
        for (text, needle) in cases {
            let error = System::from_json(&text, "bad.json", "bad").unwrap_err();
            assert!(matches!(error, Error::Format { .. }), "{error:?}");
            let message = error.to_string();
            assert!(message.contains("system file bad.json: "), "{message}");
            assert!(message.contains(needle), "{needle:?} not in {message:?}");
        }
        let missing = System::from_file("/nonexistent/system.json").unwrap_err();
        assert!(matches!(missing, Error::Io { .. }), "{missing:?}");
        assert!(missing.to_string().contains("/nonexistent/system.json"));
    }

    #[test]
    fn repeated_fields_blank_names_unconfined_and_overflowing_energies_are_refused() {
        let dw = |a: &str, b: &str, c: &str| {
            format!(
                r#"{{"n_particles": 4, "dim": 2, "kt": 1, "energy": {{"kind": "double_well",
                    "a": {a}, "b": {b}, "c": {c}, "d0": 4}}}}"#
            )
        };
        let lj = |epsilon: &str, r_m: &str, k: &str| {
            format!(
                r#"{{"n_particles": 13, "dim": 3, "kt": 1, "energy": {{"kind": "lennard_jones",
                    "epsilon": {epsilon}, "r_m": {r_m}, "oscillator_k": {k}}}}}"#
            )
        };
        let cases = [
            (
                r#"{"n_particles": 4, "dim": 2, "kt": 1, "kt": 100, "energy": {"kind":
                    "double_well", "a": 0, "b": -4, "c": 0.9, "d0": 4}}"#
                    .to_string(),
                "field `kt` is given twice",
            ),
            (
                r#"{"n_particles": 13, "dim": 3, "kt": 1, "energy": {"kind": "lennard_jones",
                    "epsilon": 2, "r_m": 1, "epsilon": 3, "oscillator_k": 1}}"#
                    .to_string(),
                "field `energy.epsilon` is given twice",
            ),
            (
                r#"{"name": " ", "n_particles": 4, "dim": 2, "kt": 1, "energy": {"kind":
                    "double_well", "a": 0, "b": -4, "c": 0.9, "d0": 4}}"#
                    .to_string(),
                "field `name`",
            ),
            (
                r#"{"name": "", "n_particles": 4, "dim": 2, "kt": 1, "energy": {"kind":
                    "double_well", "a": 0, "b": -4, "c": 0.9, "d0": 4}}"#
                    .to_string(),
                "field `name`",
            ),
            (dw("0", "-4", "-0.9"), "field `energy.c` = -0.9 is negative"),
            (dw("0", "-4", "0"), "field `energy.b` = -4 is negative"),
            (dw("0", "0", "0"), "field `energy.a` = 0"),
            (dw("-1", "0", "0"), "field `energy.a` = -1"),
            (dw("0", "-4", "1e300"), "field `energy.c` = 1e300"),
            (dw("0", "-1e200", "0.9"), "field `energy.b` = -1e200"),
            (lj("1e308", "1", "1"), "field `energy.epsilon` = 1e308"),
            (lj("1e99", "1", "1"), "field `energy.epsilon` = 1e99"),
            (lj("2", "1", "1e98"), "field `energy.oscillator_k` = 1e98"),
            (lj("2", "1e60", "1"), "field `energy.r_m` = 1e60"),
            (
                lj("2", "1", "0"),
                "field `energy.oscillator_k` = 0: without the harmonic tether",
            ),
            (
                lj("2", &format!("{:?}", -(0.1 + 0.2)), "1"),
                "r_m must be positive with a finite positive square, got -0.3",
            ),
        ];
        for (text, needle) in cases {
            let error = System::from_json(&text, "bad.json", "bad").unwrap_err();
            assert!(matches!(error, Error::Format { .. }), "{error:?}");
            let message = error.to_string();
            assert!(message.contains("system file bad.json: "), "{message}");
            assert!(message.contains(needle), "{needle:?} not in {message:?}");
            assert!(message.len() < 400, "long message: {message}");
        }
        // Confining edge cases stay valid: a harmonic pair (c = 0, b > 0), a linear one
        // (b = c = 0, a > 0), and the benchmark scale with room to spare.
        for text in [
            dw("1", "2", "0"),
            dw("1.5", "0", "0"),
            lj("1e90", "1", "1e80"),
        ] {
            System::from_json(&text, "ok.json", "ok").unwrap();
        }
        // A model file's record of a system is checked alike.
        let spec = EnergySpec::DoubleWell {
            n_particles: 4,
            dim: 2,
            a: 0.0,
            b: -4.0,
            c: -1.0,
            d0: 4.0,
        };
        let message = spec.build().err().unwrap().to_string();
        assert!(message.contains("`energy.c`"), "{message}");
    }
}
