//! Model files: a versioned, human-readable JSON description of a trained flow.
//!
//! ```json
//! { "format": "eqflow-model", "version": 2, "n_particles": 4, "dim": 2,
//!   "prior_sigma": 1.0,
//!   "field": { "family": "kernel", "config": { "mu_dist": [...], ... } },
//!   "param_order": ["w", "b", "s", "log_inv_gamma_dist", "log_inv_gamma_time"],
//!   "params": [...], "integrator": { "method": "rk4", "n_steps": 20, "density": "exact_discrete" },
//!   "system": { ... } | null, "training": { ... } | null }
//! ```
//!
//! An optional `"species": {"n_species": 2, "of_particle": [0, 0, 1, …]}` records the species
//! of every particle ([`crate::species`]); it is written only for several species, and a file
//! without it (every file written before species existed) is a single-species flow. With
//! several species `param_order` lists the five block names once per species-pair type.
//!
//! An optional `"require_certificate": false` turns strict mode off
//! ([`Flow::set_require_certificate`], on by default): it is written only when off, and a file
//! without it (every file written before strict mode became the default) loads with strict
//! mode on, so an uncertified model refuses exact-discrete work until its step count is raised
//! or the host opts out. Files of the builds in which strict mode was opt-in carry
//! `"require_certificate": true` when on, which still reads. Builds older than strict mode
//! refuse a file that has the key (unknown key).
//!
//! Version 1 (written before field families existed) had the kernel field's settings in a
//! top-level `"kernels"` object instead of `"field"`; it is still read, as the `kernel`
//! family. `param_order` names the family's parameter blocks
//! ([`crate::field::FieldFamily::param_blocks`]).
//!
//! Numbers are written in the shortest form that reads back to the same `f64`, and read with
//! exact rounding, so save → load is bit-exact. Loading validates everything (format, version,
//! sizes, finiteness, kernel and integrator settings) and says what is wrong.
//!
//! Numbers that are finite but far outside the range in which the solvers' guarantees mean
//! anything are refused too, naming the field ([`Error::InvalidArgument`]): `prior_sigma` in
//! [`MIN_PRIOR_SIGMA`]..=[`MAX_PRIOR_SIGMA`] (so that `σ²` and `log 2πσ²` stay normal numbers),
//! and the family's own ranges for its settings and parameters at the model's step size
//! ([`crate::field::FieldFamily::check_usable`]; for the kernel field see
//! [`crate::field::kernel`]'s limits).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::field::{Field, FieldFamily, FieldSpec, KernelConfig, KernelField};
use crate::flow::Flow;
use crate::geometry::Layout;
use crate::integrate::{DensityMode, Dopri5Config, Integrator, Method};
use crate::prior::Prior;
use crate::species::Species;
use crate::system::System;

/// Largest model file eqflow reads: 1 GiB. The largest field a model can hold (a `dense` field
/// at its size limits: 1,024 particles in 3-D and 1,024 hidden units, about 6.3 million
/// parameters) needs well under that at the ~40 bytes per number of pretty-printed JSON; a
/// larger file is not a model, and reading it whole would only risk the host's memory.
pub const MAX_MODEL_FILE_BYTES: u64 = 1 << 30;

/// The `format` field of every model file.
pub const FORMAT: &str = "eqflow-model";
/// The newest format version this build reads and the one it writes.
pub const VERSION: u32 = 2;

/// Smallest `prior_sigma` a model file may have.
pub const MIN_PRIOR_SIGMA: f64 = 1e-6;
/// Largest `prior_sigma` a model file may have.
pub const MAX_PRIOR_SIGMA: f64 = 1e6;
/// Integrator settings as stored in a model file. A key a method does not have is refused (a
/// `"density": "exact_discrete"` beside Dormand–Prince used to load, as the continuous mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum IntegratorSpec {
    Rk4 {
        n_steps: usize,
        density: DensitySpec,
    },
    Dopri5 {
        rtol: f64,
        atol: f64,
        max_steps: usize,
    },
}

/// Density mode as stored in a model file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DensitySpec {
    ExactDiscrete,
    Continuous,
}

impl IntegratorSpec {
    fn from_integrator(i: &Integrator) -> Self {
        match i.method() {
            Method::Rk4 { n_steps } => IntegratorSpec::Rk4 {
                n_steps,
                density: match i.mode() {
                    DensityMode::ExactDiscrete => DensitySpec::ExactDiscrete,
                    DensityMode::Continuous => DensitySpec::Continuous,
                },
            },
            Method::Dopri5(c) => IntegratorSpec::Dopri5 {
                rtol: c.rtol,
                atol: c.atol,
                max_steps: c.max_steps,
            },
        }
    }

    fn to_integrator(&self) -> Result<Integrator> {
        match *self {
            IntegratorSpec::Rk4 { n_steps, density } => Integrator::new(
                Method::Rk4 { n_steps },
                match density {
                    DensitySpec::ExactDiscrete => DensityMode::ExactDiscrete,
                    DensitySpec::Continuous => DensityMode::Continuous,
                },
            ),
            IntegratorSpec::Dopri5 {
                rtol,
                atol,
                max_steps,
            } => Integrator::new(
                Method::Dopri5(Dopri5Config {
                    rtol,
                    atol,
                    max_steps,
                }),
                DensityMode::Continuous,
            ),
        }
    }
}

fn is_true(value: &bool) -> bool {
    *value
}

/// Strict mode's value in a file that does not name it: on.
fn strict_by_default() -> bool {
    true
}

/// Everything in a model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub format: String,
    pub version: u32,
    pub n_particles: usize,
    pub dim: usize,
    pub prior_sigma: f64,
    /// The field family and its settings (version ≥ 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<FieldSpec>,
    /// Version 1 only: the kernel field's settings. Read, never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernels: Option<KernelConfig>,
    /// The species of every particle; absent for a single species.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub species: Option<Species>,
    pub param_order: Vec<String>,
    pub params: Vec<f64>,
    pub integrator: IntegratorSpec,
    /// Strict mode ([`Flow::set_require_certificate`]); absent means on.
    #[serde(default = "strict_by_default", skip_serializing_if = "is_true")]
    pub require_certificate: bool,
    /// The system (energy, kT, units) the flow was trained for, if any.
    pub system: Option<System>,
    /// A free-form training summary (losses per epoch, settings), if any: no wall-clock
    /// times, so that one seed gives one file byte for byte.
    pub training: Option<serde_json::Value>,
}

impl ModelFile {
    /// Describes `flow`, with the optional system and training summary.
    #[must_use]
    pub fn from_flow(
        flow: &Flow,
        system: Option<System>,
        training: Option<serde_json::Value>,
    ) -> Self {
        ModelFile {
            format: FORMAT.to_string(),
            version: VERSION,
            n_particles: flow.n_particles(),
            dim: flow.dim(),
            prior_sigma: flow.prior().sigma(),
            field: Some(flow.field().spec()),
            kernels: None,
            species: flow.field().species().cloned(),
            param_order: flow
                .field()
                .param_blocks()
                .iter()
                .map(|(name, _)| name.to_string())
                .collect(),
            params: flow.field().params().to_vec(),
            integrator: IntegratorSpec::from_integrator(&flow.integrator()),
            require_certificate: flow.requires_certificate(),
            system,
            training,
        }
    }

    /// Validates the description and builds the flow.
    pub fn to_flow(&self) -> Result<Flow> {
        let bad = |what: String| Error::Format { what };
        if self.format != FORMAT {
            return Err(bad(format!(
                "format is '{}', expected '{FORMAT}'",
                self.format
            )));
        }
        if self.version == 0 || self.version > VERSION {
            return Err(bad(format!(
                "format version {} is not supported by this build (reads 1..={VERSION})",
                self.version
            )));
        }
        let layout = Layout::new(self.n_particles, self.dim)?;
        let species = match &self.species {
            Some(species) => {
                species.check_count(self.n_particles).map_err(|e| {
                    bad(format!(
                        "\"species\" does not match \"n_particles\" = {}: {e}",
                        self.n_particles
                    ))
                })?;
                species.clone()
            }
            None => Species::single(self.n_particles),
        };
        let field = match (self.version, &self.field, &self.kernels) {
            (1, None, Some(kernels)) => Field::Kernel(KernelField::from_config_with_species(
                layout,
                kernels.clone(),
                species,
                self.params.clone(),
            )?),
            (1, _, _) => {
                return Err(bad(
                    "a version 1 model file has a \"kernels\" object and no \"field\"".into(),
                ));
            }
            (_, Some(spec), None) => {
                Field::from_spec_with_species(layout, spec, species, self.params.clone())?
            }
            _ => {
                return Err(bad(format!(
                    "a version {} model file has a \"field\" object and no \"kernels\"",
                    self.version
                )));
            }
        };
        let expected: Vec<&str> = field.param_blocks().iter().map(|(n, _)| *n).collect();
        if self.param_order != expected {
            return Err(bad(format!(
                "param_order is {:?}, expected {expected:?}",
                self.param_order
            )));
        }
        if let Some(system) = &self.system {
            system.validate()?;
            let system_species = system.species().filter(|s| !s.is_single());
            if system_species != field.species() {
                return Err(bad(format!(
                    "system '{}' has {} species, the flow's field {} (\"species\" and \
                     \"system\" contradict each other)",
                    system.name,
                    system_species.map_or(1, Species::n_species),
                    field.species().map_or(1, Species::n_species)
                )));
            }
            if system.energy.shape() != (self.n_particles, self.dim) {
                return Err(bad(format!(
                    "system '{}' is for {:?} particles×dims, the flow for ({}, {})",
                    system.name,
                    system.energy.shape(),
                    self.n_particles,
                    self.dim
                )));
            }
        }
        self.check_prior_sigma()?;
        // The integrator first: a step count out of range is named as such, not as the step
        // strength it would give (0 steps read as one).
        let integrator = self.integrator.to_integrator()?;
        check_usable_with(&field, &integrator)?;
        let prior = Prior::new(layout, self.prior_sigma)?;
        let mut flow = Flow::from_parts(prior, field, integrator)?;
        flow.set_require_certificate(self.require_certificate);
        Ok(flow)
    }

    /// Refuses a prior width whose `σ²` or `log 2πσ²` would not be a normal number.
    fn check_prior_sigma(&self) -> Result<()> {
        let sigma = self.prior_sigma;
        if !(MIN_PRIOR_SIGMA..=MAX_PRIOR_SIGMA).contains(&sigma) {
            return Err(Error::invalid(format!(
                "prior_sigma = {sigma:e} is outside [{MIN_PRIOR_SIGMA:e}, {MAX_PRIOR_SIGMA:e}]"
            )));
        }
        Ok(())
    }

    /// Parses JSON text.
    ///
    /// # Errors
    ///
    /// [`Error::Format`] for text that is not JSON, a key given twice in any object (free-form
    /// parts included: see [`super::json`]), or a missing, unknown or mistyped field;
    /// [`Error::Resource`] when the system refuses the memory the parse may take.
    pub fn from_json(text: &str) -> Result<Self> {
        let malformed = |e: serde_json::Error| Error::Format {
            what: format!("model file: {e}"),
        };
        let n_values = super::json::check_unique(text).map_err(malformed)?;
        crate::alloc::probed_build(
            super::json::parse_bytes(n_values),
            &format!("parsing the model file ({n_values} JSON values)"),
            || serde_json::from_str(text),
        )?
        .map_err(malformed)
    }

    /// Pretty-printed JSON text.
    #[must_use]
    pub fn to_json(&self) -> String {
        // Serialising plain data with finite floats cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Reads and parses a model file (does not build the flow; see [`load`]). Only a regular
    /// file is read (see `io::open_regular`), and at most [`MAX_MODEL_FILE_BYTES`] of it.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] for a file that cannot be read or is not a regular file;
    /// [`Error::Resource`] for a file larger than [`MAX_MODEL_FILE_BYTES`] (refused before it is
    /// read, and again if it grows while being read); [`Error::Format`] for malformed JSON.
    pub fn read(path: &Path) -> Result<Self> {
        let text = super::read_text_bounded(path, "model file", MAX_MODEL_FILE_BYTES)?;
        Self::from_json(&text)
    }

    /// Writes the model file atomically (see `io::write_atomically`): a reader sees the old
    /// file or the whole new one, and a failed write leaves `path` as it was.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_json(path, &self.to_json())
    }
}

/// Refuses a field too strong for the steps of `integrator` ([`crate::field::FieldFamily::check_usable`]
/// at its step size): what the loader refuses, so that a flow given another integrator
/// (`eqf_flow_with_integrator`) is one that could be saved and loaded back.
///
/// # Errors
///
/// [`Error::InvalidArgument`] naming the setting or parameter.
pub(crate) fn check_usable_with(
    field: &crate::field::Field,
    integrator: &Integrator,
) -> Result<()> {
    let h = match integrator.method() {
        Method::Rk4 { n_steps } => 1.0 / n_steps.max(1) as f64,
        // Dormand–Prince adapts its steps, but its output must not overflow either.
        Method::Dopri5(_) => 1.0 / 20.0,
    };
    field.check_usable(h)
}

/// Loads a flow and its description from a model file.
pub fn load(path: &Path) -> Result<(Flow, ModelFile)> {
    let file = ModelFile::read(path)?;
    let flow = file.to_flow()?;
    Ok((flow, file))
}

/// Saves `flow` (with optional system and training summary) to `path`.
///
/// # Errors
///
/// [`Error::InvalidArgument`] if the loader would refuse the file (parameters outside the
/// usable ranges, e.g. after training drove a step strength past its limit): nothing is
/// written then, so every saved model loads back. I/O errors otherwise.
pub fn save(
    flow: &Flow,
    system: Option<System>,
    training: Option<serde_json::Value>,
    path: &Path,
) -> Result<()> {
    let file = ModelFile::from_flow(flow, system, training);
    let json = file.to_json();
    check_loads(&json).map_err(|e| {
        Error::invalid(format!(
            "refusing to save a model that could not be loaded back: {e}"
        ))
    })?;
    write_json(path, &json)
}

/// Writes a model file's JSON text atomically (see `io::write_atomically`).
fn write_json(path: &Path, json: &str) -> Result<()> {
    super::write_atomically(path, "model file", |w| w.write_all(json.as_bytes()))
}

/// Whether the model file `json` loads, by the loader itself: parsing checks settings (a
/// coordkernel shell range, say) that building a flow from the parsed file no longer sees.
pub(crate) fn check_loads(json: &str) -> Result<()> {
    ModelFile::from_json(json)?.to_flow().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::ParamLayout;
    use crate::field::kernel::limits::{MAX_LOG_INV_GAMMA, MAX_PARAM, MAX_STEP_STRENGTH};

    fn sample_file() -> ModelFile {
        let flow = Flow::new(4, 2, 3).unwrap();
        ModelFile::from_flow(&flow, Some(System::preset("dw4").unwrap()), None)
    }

    #[test]
    fn json_round_trip_is_bit_exact() {
        let mut flow = Flow::new(13, 3, 5).unwrap();
        // Awkward numbers: every bit must survive.
        let mut p = flow.field().params().to_vec();
        p[0] = 0.1 + 0.2;
        p[1] = 1.0 / 3.0;
        p[2] = -5e-300;
        flow.set_params(&p).unwrap();
        let file = ModelFile::from_flow(&flow, None, Some(serde_json::json!({"epochs": 3})));
        let back = ModelFile::from_json(&file.to_json()).unwrap();
        assert_eq!(back, file);
        let flow_back = back.to_flow().unwrap();
        assert_eq!(flow_back, flow);
        for (a, b) in flow_back.field().params().iter().zip(flow.field().params()) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let expect_err = |f: ModelFile, needle: &str| {
            let e = f.to_flow().unwrap_err().to_string();
            assert!(e.contains(needle), "'{e}' should mention '{needle}'");
        };
        let mut f = sample_file();
        f.format = "other".into();
        expect_err(f, "format");
        let mut f = sample_file();
        f.version = 99;
        expect_err(f, "version");
        let mut f = sample_file();
        f.params.pop();
        expect_err(f, "params");
        let mut f = sample_file();
        f.params[10] = f64::NAN;
        expect_err(f, "non-finite");
        let mut f = sample_file();
        f.field.as_mut().unwrap().config["gamma_dist"][0] = (-1.0).into();
        expect_err(f, "gamma_dist");
        let mut f = sample_file();
        f.field.as_mut().unwrap().family = "no-such-family".into();
        expect_err(f, "unknown field family");
        let mut f = sample_file();
        f.version = 1;
        expect_err(f, "kernels");
        let mut f = sample_file();
        f.n_particles = 5;
        expect_err(f, "system");
        let mut f = sample_file();
        f.param_order.swap(0, 1);
        expect_err(f, "param_order");
        let mut f = sample_file();
        f.integrator = IntegratorSpec::Rk4 {
            n_steps: 0,
            density: DensitySpec::Continuous,
        };
        expect_err(f, "n_steps");
        // Weights strong enough that one step (what 0 steps was read as) is too strong: the
        // step count is still what is named, not the step strength.
        let mut f = sample_file();
        for w in &mut f.params[..500] {
            *w *= 8.0;
        }
        f.integrator = IntegratorSpec::Rk4 {
            n_steps: 0,
            density: DensitySpec::ExactDiscrete,
        };
        expect_err(f, "n_steps");
    }

    #[test]
    fn finite_but_meaningless_values_are_refused_naming_the_field() {
        let expect_invalid = |f: ModelFile, needle: &str| match f.to_flow() {
            Err(Error::InvalidArgument { what }) => {
                assert!(what.contains(needle), "'{what}' should mention '{needle}'");
            }
            other => panic!("expected an invalid argument about {needle}, got {other:?}"),
        };
        for sigma in [1e-300, 5e-7, 2e6, 1e300] {
            let mut f = sample_file();
            f.prior_sigma = sigma;
            expect_invalid(f, "prior_sigma");
        }
        let pl = ParamLayout::new(50, 10);
        // One weight of 1e6 (the issue's case: sampling and density disagreed by 1e19) or 1.8e19.
        for w in [1e6, 1.8e19, -1e3] {
            let mut f = sample_file();
            f.params[pl.w().start] = w;
            expect_invalid(
                f,
                if w.abs() > MAX_PARAM {
                    "exceeds"
                } else {
                    "step strength"
                },
            );
        }
        let mut f = sample_file();
        f.params[pl.b().start + 3] = 20.0;
        expect_invalid(f, "time kernel r = 3");
        // More steps allow a stronger field.
        let mut f = sample_file();
        f.params[pl.b().start + 3] = 20.0;
        f.integrator = IntegratorSpec::Rk4 {
            n_steps: 40,
            density: DensitySpec::ExactDiscrete,
        };
        f.to_flow().unwrap();
        // s enters squared and multiplies every weight of the column.
        let mut f = sample_file();
        f.params[pl.s().start] = 30.0;
        expect_invalid(f, "step strength");
        for block in [pl.log_inv_gamma_dist(), pl.log_inv_gamma_time()] {
            let mut f = sample_file();
            f.params[block.start] = -11.0;
            expect_invalid(f, "log_inv_gamma");
        }
        let mut f = sample_file();
        f.field.as_mut().unwrap().config["mu_dist"][2] = 1e300.into();
        expect_invalid(f, "kernels.mu_dist[2]");
        let mut f = sample_file();
        f.field.as_mut().unwrap().config["mu_time"][0] = (-2e6).into();
        expect_invalid(f, "kernels.mu_time[0]");
    }

    #[test]
    fn the_accepted_ranges_include_their_edges_and_the_shipped_models() {
        let mut f = sample_file();
        f.prior_sigma = MIN_PRIOR_SIGMA;
        f.to_flow().unwrap();
        f.prior_sigma = MAX_PRIOR_SIGMA;
        f.to_flow().unwrap();
        let pl = ParamLayout::new(50, 10);
        let mut f = sample_file();
        f.params[pl.w()].fill(0.0);
        // DW-4 with 20 steps: h·(N − 1) = 0.15.
        f.params[pl.b()].fill(MAX_STEP_STRENGTH / 0.15 * (1.0 - 1e-12));
        f.params[pl.log_inv_gamma_dist()].fill(MAX_LOG_INV_GAMMA);
        f.to_flow().unwrap();
        for name in ["dw4", "lj13"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/{name}.json"));
            load(&path).unwrap();
        }
    }

    #[test]
    fn a_flow_the_loader_would_refuse_is_not_saved() {
        let pl = ParamLayout::new(50, 10);
        let mut f = sample_file();
        f.params[pl.w()].fill(0.0);
        f.params[pl.b()].fill(MAX_STEP_STRENGTH / 0.15 * (1.0 - 1e-12));
        let flow = f.to_flow().unwrap();
        // Past the step-strength limit: a finite field the loader refuses.
        let mut params = flow.field().params().to_vec();
        params[pl.b()].fill(MAX_STEP_STRENGTH / 0.15 * 1.01);
        let mut too_strong = flow.clone();
        too_strong.set_params(&params).unwrap();
        let dir = std::env::temp_dir().join(format!("eqflow-save-refused-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.json");
        let err = save(&too_strong, None, None, &path).unwrap_err();
        assert!(
            err.to_string().contains("could not be loaded back"),
            "{err}"
        );
        assert!(!path.exists(), "nothing written");
        save(&flow, None, None, &path).unwrap();
        load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_and_truncated_text_is_a_format_error() {
        let text = sample_file().to_json();
        for cut in [0, 1, text.len() / 3, text.len() - 2] {
            let err = ModelFile::from_json(&text[..cut]).unwrap_err();
            assert!(matches!(err, Error::Format { .. }), "{err}");
        }
        let err = ModelFile::from_json(&text.replace("\"params\"", "\"parameters\"")).unwrap_err();
        assert!(matches!(err, Error::Format { .. }));
        // NaN is not JSON.
        assert!(ModelFile::from_json(&text.replacen("0.", "NaN", 1)).is_err());
    }

    #[test]
    fn a_key_given_twice_is_refused_at_any_depth() {
        let text = ModelFile::from_flow(
            &Flow::new(4, 2, 3).unwrap(),
            None,
            Some(serde_json::json!({"epochs": 3})),
        )
        .to_json();
        ModelFile::from_json(&text).unwrap();
        // Top level (a typed field), inside the field's free-form settings (the last value
        // would win there, building another field than the file shows), inside the
        // training summary.
        for (key, twice) in [
            ("\"prior_sigma\":", "\"prior_sigma\": 2.0, \"prior_sigma\":"),
            ("\"mu_time\":", "\"mu_time\": [0.5], \"mu_time\":"),
            ("\"epochs\":", "\"epochs\": 1, \"epochs\":"),
        ] {
            assert!(text.contains(key), "{key}");
            let err = ModelFile::from_json(&text.replacen(key, twice, 1)).unwrap_err();
            assert!(matches!(err, Error::Format { .. }), "{err}");
            let name = key.trim_end_matches(':').trim_matches('"');
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    /// A file of many values whose parse the system would refuse memory for is a resource
    /// error before the parse (under `ulimit -v`, a 20 MB file with five million extra
    /// parameters aborted the process: the duplicate-key check built a whole value tree).
    #[test]
    fn a_parse_the_system_refuses_memory_for_is_a_resource_error() {
        let text = sample_file().to_json();
        let padded = text.replacen(
            "\"params\": [",
            &format!("\"params\": [{}", "0.0,".repeat(100_000)),
            1,
        );
        let n_values = crate::io::json::check_unique(&padded).unwrap();
        assert!(n_values > 100_000, "{n_values}");
        let error =
            crate::alloc::test_seam::refusing_above(1 << 20, || ModelFile::from_json(&padded))
                .unwrap_err();
        assert!(matches!(error, Error::Resource { .. }), "{error:?}");
        assert!(error.to_string().contains("the model file"), "{error}");
        // Given the memory, the same file is a size mismatch of the parameters, as before.
        let error = ModelFile::from_json(&padded)
            .unwrap()
            .to_flow()
            .unwrap_err();
        assert!(error.to_string().contains("param"), "{error}");
        // The check holds no value tree: the count of a flat array is its length plus one.
        assert_eq!(crate::io::json::check_unique("[1, 2, 3]").unwrap(), 4);
        assert_eq!(
            crate::io::json::check_unique("{\"a\": [{}, null]}").unwrap(),
            4
        );
        let twice = crate::io::json::check_unique("{\"a\": [{\"b\": 1, \"b\": 2}]}").unwrap_err();
        assert!(
            twice.to_string().contains("field `a[0].b` is given twice"),
            "{twice}"
        );
    }

    #[test]
    fn strict_mode_is_the_default_and_only_its_opt_out_is_saved() {
        // On (the default): written as before strict mode existed, and such files load on.
        let text = sample_file().to_json();
        assert!(!text.contains("require_certificate"), "{text}");
        let flow = ModelFile::from_json(&text).unwrap().to_flow().unwrap();
        assert!(flow.requires_certificate());
        // The opt-out is recorded and read back.
        let mut lax = Flow::new(4, 2, 3).unwrap();
        lax.set_require_certificate(false);
        let text = ModelFile::from_flow(&lax, None, None).to_json();
        assert!(text.contains("\"require_certificate\": false"), "{text}");
        let back = ModelFile::from_json(&text).unwrap().to_flow().unwrap();
        assert!(!back.requires_certificate());
        assert_eq!(back, lax);
        // The files of the opt-in builds still read.
        let old = text.replace(
            "\"require_certificate\": false",
            "\"require_certificate\": true",
        );
        let back = ModelFile::from_json(&old).unwrap().to_flow().unwrap();
        assert!(back.requires_certificate());
        let err = ModelFile::from_json(&text.replace("false", "0")).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{err}");
    }

    /// Every section refuses keys it does not have, as the top level and the field do: the
    /// integrator and system sections used to ignore them, so that Dormand–Prince with
    /// `"density": "exact_discrete"` (which the C API refuses) loaded as the continuous mode.
    #[test]
    fn unknown_keys_in_the_integrator_and_system_sections_are_refused() {
        let mut value: serde_json::Value = serde_json::from_str(&sample_file().to_json()).unwrap();
        value["integrator"] = serde_json::json!({"method": "dopri5", "rtol": 1e-5,
            "atol": 1e-10, "max_steps": 100});
        ModelFile::from_json(&value.to_string())
            .unwrap()
            .to_flow()
            .unwrap();
        let cases = [
            (
                "/integrator",
                "density",
                serde_json::json!("exact_discrete"),
            ),
            ("/integrator", "bogus", serde_json::json!(1)),
            ("/system", "bogus", serde_json::json!(1)),
            ("/system/energy", "bogus", serde_json::json!(1)),
        ];
        for (section, key, extra) in cases {
            let mut bad = value.clone();
            bad.pointer_mut(section).unwrap()[key] = extra;
            let err = ModelFile::from_json(&bad.to_string()).unwrap_err();
            assert!(
                matches!(err, Error::Format { .. }),
                "{section}.{key}: {err:?}"
            );
            assert!(err.to_string().contains(key), "{section}.{key}: {err}");
        }
        // RK4 has no tolerances.
        let mut bad = value.clone();
        bad["integrator"] = serde_json::json!({"method": "rk4", "n_steps": 20,
            "density": "exact_discrete", "rtol": -1});
        let err = ModelFile::from_json(&bad.to_string()).unwrap_err();
        assert!(err.to_string().contains("rtol"), "{err}");
    }

    #[test]
    fn a_dormand_prince_setting_that_cannot_finish_is_refused_at_load() {
        // Before: tolerances of 5e-324 ("> 0, finite") and max_steps = 1e12 loaded, and every
        // sample then ran ~10^12 zero-length steps.
        let with = |rtol: f64, atol: f64, max_steps: usize| {
            let mut f = sample_file();
            f.integrator = IntegratorSpec::Dopri5 {
                rtol,
                atol,
                max_steps,
            };
            ModelFile::from_json(&f.to_json()).unwrap().to_flow()
        };
        for (rtol, atol, max_steps, name) in [
            (5e-324, 5e-324, 100_000, "rtol"),
            (1e-5, 5e-324, 100_000, "atol"),
            (1e-5, 1e-10, 1_000_000_000_000, "max_steps"),
            // Loaded until session 30: a density off by up to the tolerance.
            (1e300, 1e-10, 100_000, "rtol"),
            (1e-5, 1.0, 100_000, "atol"),
        ] {
            let err = with(rtol, atol, max_steps).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
        with(1e-5, 1e-10, 100_000).unwrap();
    }
}
