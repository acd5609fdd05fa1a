//! Model files: a versioned, human-readable JSON description of a trained flow.
//!
//! ```json
//! { "format": "eqflow-model", "version": 1, "n_particles": 4, "dim": 2,
//!   "prior_sigma": 1.0, "kernels": { "mu_dist": [...], ... },
//!   "param_order": ["w", "b", "s", "log_inv_gamma_dist", "log_inv_gamma_time"],
//!   "params": [...], "integrator": { "method": "rk4", "n_steps": 20, "density": "exact_discrete" },
//!   "system": { ... } | null, "training": { ... } | null }
//! ```
//!
//! Numbers are written in the shortest form that reads back to the same `f64`, and read with
//! exact rounding, so save → load is bit-exact. Loading validates everything (format, version,
//! sizes, finiteness, kernel and integrator settings) and says what is wrong.
//!
//! Numbers that are finite but far outside the range in which the solvers' guarantees mean
//! anything are refused too, naming the field ([`Error::InvalidArgument`]):
//!
//! | field | accepted | why |
//! |---|---|---|
//! | `prior_sigma` | [`MIN_PRIOR_SIGMA`]..=[`MAX_PRIOR_SIGMA`] | `σ²` and `log 2πσ²` stay normal numbers |
//! | `kernels.mu_dist`, `kernels.mu_time` | `|μ| ≤` [`MAX_KERNEL_CENTRE`] | `(d − μ)²` cannot overflow |
//! | `params` (every block) | `|p| ≤` [`MAX_PARAM`] | a plain sanity bound |
//! | `params` `log_inv_gamma_*` | `|p| ≤` [`MAX_LOG_INV_GAMMA`] | bandwidths γ in [4.5e-5, 2.2e4] |
//! | `params` `w`, `b`, `s` together | step strength `≤` [`MAX_STEP_STRENGTH`] | see below |
//!
//! The radial bound `B = max_r [ max_k |W_kr| + Σ_k s_k² |W_kr| + |b_r| ]` bounds `|φ(d, t)|` for
//! every d and t (the normalised bases ρ and τ are non-negative and sum to at most 1), so
//! `(N − 1)·B` bounds the rate at which the field can stretch a configuration. The step strength
//! is `h·min(N − 1, 12)·B` (the cap, [`MAX_NEIGHBOURS`], keeps large systems with ordinary weights
//! loadable: their kernels reach only nearby particles) with `h = 1/n_steps` for RK4 and `h = 1/20` for Dormand–Prince (whose steps
//! adapt, but whose output must not overflow either). RK4 on `y' = λy` is stable for
//! `h·|λ| < 2.785`; measured on DW-4 and LJ-13 with every `b_r = c`, proposal and evaluated
//! log-densities agree to 1e-13 at strength 1.5 and by nothing at strength 3 and above, while the
//! shipped trained models have strengths of 0.74 (DW-4) and 1.6 (LJ-13). The bound is a sanity
//! check, not a proof: the inverse's residual check stays the guard of every single evaluation.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::field::{KernelConfig, KernelField, ParamLayout};
use crate::flow::Flow;
use crate::geometry::Layout;
use crate::integrate::{DensityMode, Dopri5Config, Integrator, Method};
use crate::prior::Prior;
use crate::system::System;

/// The `format` field of every model file.
pub const FORMAT: &str = "eqflow-model";
/// The newest format version this build reads and the one it writes.
pub const VERSION: u32 = 1;

/// Smallest `prior_sigma` a model file may have.
pub const MIN_PRIOR_SIGMA: f64 = 1e-6;
/// Largest `prior_sigma` a model file may have.
pub const MAX_PRIOR_SIGMA: f64 = 1e6;
/// Largest magnitude of a kernel centre (`mu_dist`, `mu_time`).
pub const MAX_KERNEL_CENTRE: f64 = 1e6;
/// Largest magnitude of any parameter.
pub const MAX_PARAM: f64 = 1e6;
/// Largest magnitude of a log inverse bandwidth `−log γ`.
pub const MAX_LOG_INV_GAMMA: f64 = 10.0;
/// The neighbour count `N − 1` of the step strength is capped here (the kissing number in 3-D),
/// so that a large system's flow saved with ordinary weights loads back.
pub const MAX_NEIGHBOURS: usize = 12;
/// Largest step strength `h·min(N − 1, 12)·max_r [max_k |W_kr| + Σ_k s_k² |W_kr| + |b_r|]` (see the
/// module documentation).
pub const MAX_STEP_STRENGTH: f64 = 2.5;

/// Integrator settings as stored in a model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
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

/// Kernel centres and initial bandwidths as stored in a model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelSpec {
    pub mu_dist: Vec<f64>,
    pub gamma_dist: Vec<f64>,
    pub mu_time: Vec<f64>,
    pub gamma_time: Vec<f64>,
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
    pub kernels: KernelSpec,
    pub param_order: Vec<String>,
    pub params: Vec<f64>,
    pub integrator: IntegratorSpec,
    /// The system (energy, kT, units) the flow was trained for, if any.
    pub system: Option<System>,
    /// A free-form training summary (losses per epoch, settings, timings), if any.
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
        let k = flow.field().kernels();
        ModelFile {
            format: FORMAT.to_string(),
            version: VERSION,
            n_particles: flow.n_particles(),
            dim: flow.dim(),
            prior_sigma: flow.prior().sigma(),
            kernels: KernelSpec {
                mu_dist: k.mu_dist.clone(),
                gamma_dist: k.gamma_dist.clone(),
                mu_time: k.mu_time.clone(),
                gamma_time: k.gamma_time.clone(),
            },
            param_order: flow
                .field()
                .param_layout()
                .blocks()
                .iter()
                .map(|(name, _)| name.to_string())
                .collect(),
            params: flow.field().params().to_vec(),
            integrator: IntegratorSpec::from_integrator(&flow.integrator()),
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
        let kernels = KernelConfig {
            mu_dist: self.kernels.mu_dist.clone(),
            gamma_dist: self.kernels.gamma_dist.clone(),
            mu_time: self.kernels.mu_time.clone(),
            gamma_time: self.kernels.gamma_time.clone(),
        };
        kernels.validate()?;
        let pl = ParamLayout::new(kernels.n_dist(), kernels.n_time());
        let expected: Vec<String> = pl.blocks().iter().map(|(n, _)| n.to_string()).collect();
        if self.param_order != expected {
            return Err(bad(format!(
                "param_order is {:?}, expected {expected:?}",
                self.param_order
            )));
        }
        if self.params.len() != pl.len() {
            return Err(Error::size("params", pl.len(), self.params.len()));
        }
        if let Some(system) = &self.system {
            system.validate()?;
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
        self.check_ranges(pl)?;
        let field = KernelField::new(layout, kernels, self.params.clone())?;
        let prior = Prior::new(layout, self.prior_sigma)?;
        Flow::from_parts(prior, field, self.integrator.to_integrator()?)
    }

    /// The ranges of the module documentation; sizes were checked before.
    fn check_ranges(&self, pl: ParamLayout) -> Result<()> {
        let out_of_range = |what: String| Err(Error::invalid(what));
        let sigma = self.prior_sigma;
        if !(MIN_PRIOR_SIGMA..=MAX_PRIOR_SIGMA).contains(&sigma) {
            return out_of_range(format!(
                "prior_sigma = {sigma:e} is outside [{MIN_PRIOR_SIGMA:e}, {MAX_PRIOR_SIGMA:e}]"
            ));
        }
        for (name, values) in [
            ("kernels.mu_dist", &self.kernels.mu_dist),
            ("kernels.mu_time", &self.kernels.mu_time),
        ] {
            if let Some((i, m)) = values
                .iter()
                .enumerate()
                .find(|(_, m)| m.abs() > MAX_KERNEL_CENTRE)
            {
                return out_of_range(format!(
                    "{name}[{i}] = {m:e} exceeds {MAX_KERNEL_CENTRE:e} in magnitude"
                ));
            }
        }
        crate::error::check_finite(&self.params, "params")?;
        for (block, range) in pl.blocks() {
            let bound = if block.starts_with("log_inv_gamma") {
                MAX_LOG_INV_GAMMA
            } else {
                MAX_PARAM
            };
            if let Some((i, p)) = self.params[range.clone()]
                .iter()
                .enumerate()
                .find(|(_, p)| p.abs() > bound)
            {
                return out_of_range(format!(
                    "params[{}] (block {block}, element {i}) = {p:e} exceeds {bound:e} in \
                     magnitude",
                    range.start + i
                ));
            }
        }
        let (w, b, s) = (
            &self.params[pl.w()],
            &self.params[pl.b()],
            &self.params[pl.s()],
        );
        let h = match self.integrator {
            IntegratorSpec::Rk4 { n_steps, .. } => 1.0 / n_steps.max(1) as f64,
            IntegratorSpec::Dopri5 { .. } => 1.0 / 20.0,
        };
        let pairs = self.n_particles.saturating_sub(1).min(MAX_NEIGHBOURS) as f64;
        for r in 0..pl.n_time {
            let column = (0..pl.n_dist).map(|k| w[k * pl.n_time + r].abs());
            let max_w = column.clone().fold(0.0, f64::max);
            let offsets: f64 = column.zip(s).map(|(w, s)| s * s * w).sum();
            let radial = max_w + offsets + b[r].abs();
            let strength = h * pairs * radial;
            if strength.is_nan() || strength > MAX_STEP_STRENGTH {
                return out_of_range(format!(
                    "params w, b, s: time kernel r = {r} has the radial bound max_k |W_kr| + \
                     Σ_k s_k² |W_kr| + |b_r| = {radial:e}, so the step strength h·min(N − 1, 12)·bound \
                     = {strength:e} exceeds {MAX_STEP_STRENGTH}: a field this strong makes the \
                     integrator's flow map meaningless (use more steps or smaller weights)"
                ));
            }
        }
        Ok(())
    }

    /// Parses JSON text.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::Format {
            what: format!("model file: {e}"),
        })
    }

    /// Pretty-printed JSON text.
    #[must_use]
    pub fn to_json(&self) -> String {
        // Serialising plain data with finite floats cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Reads and parses a model file (does not build the flow; see [`load`]). Only a regular
    /// file is read (see [`super::open_regular`]).
    pub fn read(path: &Path) -> Result<Self> {
        let mut text = String::new();
        super::open_regular(path, "model file")?
            .read_to_string(&mut text)
            .map_err(|e| Error::Io {
                what: format!("cannot read model file {}: {e}", path.display()),
            })?;
        Self::from_json(&text)
    }

    /// Writes the model file atomically (see [`super::write_atomically`]): a reader sees the old
    /// file or the whole new one, and a failed write leaves `path` as it was.
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = self.to_json();
        super::write_atomically(path, "model file", |w| w.write_all(json.as_bytes()))
    }
}

/// Loads a flow and its description from a model file.
pub fn load(path: &Path) -> Result<(Flow, ModelFile)> {
    let file = ModelFile::read(path)?;
    let flow = file.to_flow()?;
    Ok((flow, file))
}

/// Saves `flow` (with optional system and training summary) to `path`.
pub fn save(
    flow: &Flow,
    system: Option<System>,
    training: Option<serde_json::Value>,
    path: &Path,
) -> Result<()> {
    ModelFile::from_flow(flow, system, training).write(path)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        f.kernels.gamma_dist[0] = -1.0;
        expect_err(f, "gamma_dist");
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
        f.kernels.mu_dist[2] = 1e300;
        expect_invalid(f, "kernels.mu_dist[2]");
        let mut f = sample_file();
        f.kernels.mu_time[0] = -2e6;
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
}
