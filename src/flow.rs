//! `Flow` = prior + field + integrator: sampling with exact log q, and log q of given
//! configurations, for batches in parallel.
//!
//! Determinism: sample `i` of a call with seed `s` draws its latent from its own ChaCha20 stream
//! (key from `s`, stream `i`) and is computed sequentially by one thread, so results are
//! bit-identical for any number of threads and any batch split.

use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;

use crate::error::{Error, Result, check_finite};
use std::sync::{Arc, OnceLock};

use crate::field::{Field, KernelConfig, KernelField, VectorField};
use crate::geometry::{Layout, remove_center_of_mass};
use crate::integrate::{
    ConfigurationCertificate, DensityMode, FieldBounds, Integrator, MAX_RK4_STEPS, Method, Stats,
    StepCertificate, Workspace, certificate_times, certify_pull_back, certify_rk4, rk4_stage_times,
    step_bound, steps_needed,
};
use crate::prior::Prior;
use crate::rng::{self, Stream};

/// A flow for N particles in D dimensions, with a field of any registered family ([`Field`]):
/// equivariant unless the field is the `dense` baseline. Immutable and `Sync`: share it across threads freely.
///
/// With a fixed-grid method the field may be evaluated through a faster form at the grid's
/// stage times ([`crate::field::FieldFamily::grid_dynamics`]: for the kernel field, per-time
/// tables of the radial function), built on first use after the flow is assembled or its
/// parameters change (so a training loop that sets parameters every step never pays for
/// them); densities are exact for that form, which is what the flow integrates.
///
/// Strict mode ([`Flow::set_require_certificate`], on by default) makes the exact-discrete
/// mode refuse a step grid that the flow's [`Flow::certificate`] does not cover.
#[derive(Clone)]
pub struct Flow {
    prior: Prior,
    field: Field,
    integrator: Integrator,
    tabulate: bool,
    tabulated: OnceLock<Option<Arc<dyn VectorField + Send>>>,
    require_certificate: bool,
    /// Strict mode's verdict for the current field and integrator (`Some`: the refusal),
    /// computed on first use like the tables, so a move's per-proposal check is a load.
    refusal: OnceLock<Option<Error>>,
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow")
            .field("prior", &self.prior)
            .field("field", &self.field)
            .field("integrator", &self.integrator)
            .field("tabulate", &self.tabulate)
            .field("require_certificate", &self.require_certificate)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Flow {
    /// Equal definitions (the tables are derived from them).
    fn eq(&self, other: &Flow) -> bool {
        self.prior == other.prior
            && self.field == other.field
            && self.integrator == other.integrator
            && self.tabulate == other.tabulate
            && self.require_certificate == other.require_certificate
    }
}

/// At most this many times its own step count does training give an uncertified flow in
/// strict mode ([`Flow::raise_to_certified_steps`]): past it the sampling cost would be out of
/// proportion, and the flow keeps its steps and refuses exact-discrete work, naming the count,
/// until the host decides. Measured: the kernel field trained without the certificate penalty
/// needs 6× its 20 steps on DW-4 (the paper's protocol), 5× on LJ-13 and 10.7× on LJ-55, all
/// within; the looser bounds of the coordkernel (41×) and envpair (3,300×) fields are not.
pub const MAX_STEP_GROWTH: usize = 16;

/// The smallest limit of [`Flow::certified_step_count`]'s search: trained kernel fields need
/// 5–11 times their 20 steps, a coordkernel field 41 times (824 steps); 4,096 covers those.
/// On the envpair model of `tests/cli.rs` (4 epochs), whose certified count is 65,892, the
/// search to 4,096 takes 0.013 s and the search that finds 65,892 took 15.7 s.
pub const MIN_STEP_SEARCH: usize = 4_096;

/// The random stream of sample `index` for a call with `seed`: [`rng::Stream::Sample`].
#[must_use]
pub fn sample_rng(seed: u64, index: u64) -> ChaCha20Rng {
    rng::stream(seed, Stream::Sample(index))
}

impl Flow {
    /// An untrained flow: the double-well kernel preset, `W ~ N(0, 1/K)` drawn from `seed`, a unit
    /// prior, RK4 with 20 steps and the exact-discrete density.
    ///
    /// Strict mode is on, so the initial weights are damped where needed to make the flow
    /// certified at its 20 steps ([`Flow::certify_initial_field`]): from N = 4 the paper's
    /// draw is not (25 steps needed at N = 4, 83 at N = 13).
    pub fn new(n_particles: usize, dim: usize, seed: u64) -> Result<Flow> {
        let layout = Layout::new(n_particles, dim)?;
        let field = KernelField::initialise(layout, KernelConfig::double_well(), seed)?;
        let mut flow = Flow::from_parts(Prior::new(layout, 1.0)?, field, Integrator::default())?;
        flow.certify_initial_field()?;
        Ok(flow)
    }

    /// Assembles a flow, checking that prior and field describe the same particles.
    pub fn from_parts(
        prior: Prior,
        field: impl Into<Field>,
        integrator: Integrator,
    ) -> Result<Flow> {
        let field = field.into();
        if prior.layout() != field.layout() {
            return Err(Error::invalid(format!(
                "prior is for {:?} but the field for {:?}",
                prior.layout(),
                field.layout()
            )));
        }
        Ok(Flow {
            prior,
            field,
            integrator,
            tabulate: true,
            tabulated: OnceLock::new(),
            require_certificate: true,
            refusal: OnceLock::new(),
        })
    }

    /// Drops what is derived from the field and integrator (the radial tables, strict mode's
    /// verdict); they are rebuilt on next use.
    fn retabulate(&mut self) {
        self.tabulated = OnceLock::new();
        self.refusal = OnceLock::new();
    }

    /// The field's grid form for the current field and integrator, built on first use.
    fn tables(&self) -> Option<&dyn VectorField> {
        self.tabulated
            .get_or_init(|| match self.integrator.method() {
                Method::Rk4 { n_steps } if self.tabulate => {
                    self.field.grid_dynamics(&rk4_stage_times(n_steps))
                }
                _ => None,
            })
            .as_deref()
            .map(|t| t as &dyn VectorField)
    }

    /// The field the integrator actually runs: the grid form where there is one. Batch methods
    /// call it once before going parallel, so the grid form is built by the calling thread.
    fn dynamics(&self) -> &dyn VectorField {
        match self.tables() {
            Some(t) => t,
            None => self.field.as_vector_field(),
        }
    }

    #[must_use]
    pub fn n_particles(&self) -> usize {
        self.prior.layout().n_particles
    }

    #[must_use]
    pub fn dim(&self) -> usize {
        self.prior.layout().dim
    }

    #[must_use]
    pub fn layout(&self) -> Layout {
        self.prior.layout()
    }

    #[must_use]
    pub fn prior(&self) -> &Prior {
        &self.prior
    }

    #[must_use]
    pub fn field(&self) -> &Field {
        &self.field
    }

    #[must_use]
    pub fn integrator(&self) -> Integrator {
        self.integrator
    }

    /// Replaces the integrator (method and density mode).
    pub fn set_integrator(&mut self, integrator: Integrator) {
        self.integrator = integrator;
        self.retabulate();
    }

    /// Chooses between the tabulated radial function (the default with RK4: fast, and exact
    /// densities for the tabulated field) and the exact RBF sums everywhere (what training
    /// differentiates; for comparisons with the training code).
    pub fn set_tabulated(&mut self, tabulate: bool) {
        self.tabulate = tabulate;
        self.retabulate();
    }

    /// Whether fixed-grid integration uses radial tables (see [`Flow::set_tabulated`]).
    #[must_use]
    pub fn is_tabulated(&self) -> bool {
        self.tabulate
    }

    /// Replaces the field parameters; on error the flow is unchanged.
    pub fn set_params(&mut self, params: &[f64]) -> Result<()> {
        self.field.set_params(params)?;
        self.retabulate();
        Ok(())
    }

    /// The certificate that every step of this flow's fixed-grid RK4 map is a bijection
    /// (see [`crate::integrate::certify_rk4`]), from the field family's Lipschitz and
    /// compression bounds;
    /// `None` for an adaptive method, which is not a fixed map. Costs 2·n_steps + 1 bound
    /// evaluations, batched (a few milliseconds for the kernel field).
    #[must_use]
    pub fn certificate(&self) -> Option<StepCertificate> {
        match self.integrator.method() {
            Method::Rk4 { n_steps } => Some(certify_rk4(&|t| self.certificate_bounds(t), n_steps)),
            Method::Dopri5(_) => None,
        }
    }

    /// The field's two bounds at `times` that the step certificate reads (its Lipschitz and
    /// compression bounds; [`crate::integrate::certify_rk4`]).
    #[must_use]
    pub fn certificate_bounds(&self, times: &[f64]) -> FieldBounds {
        let (lipschitz, compression) = self.field.certificate_bounds(times);
        FieldBounds {
            lipschitz,
            compression,
        }
    }

    /// A certificate for each configuration in `x` (n·N·D, any centre of mass) that it has
    /// exactly one preimage under this flow's RK4 map, so that the exact-discrete density at
    /// it is the push-forward density even where [`Flow::certificate`] fails for the whole
    /// space (see [`ConfigurationCertificate`] and `src/integrate/local_certificate.rs` for
    /// what is proved). Each configuration is pulled back through the map as for its density
    /// and has its own outcome: non-finite coordinates or an inverse that fails give that
    /// configuration's error. The field's bounds are tabulated once per call; configurations
    /// run in parallel, each on one thread (results do not depend on the thread count).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an adaptive method (not a fixed map);
    /// [`Error::DimensionMismatch`] if `x` is not whole configurations; [`Error::Resource`]
    /// if the bound tables cannot be allocated.
    pub fn certify_configurations(
        &self,
        x: &[f64],
    ) -> Result<Vec<Result<ConfigurationCertificate>>> {
        let Method::Rk4 { n_steps } = self.integrator.method() else {
            return Err(Error::invalid(
                "per-configuration certificates are for the fixed-grid RK4 map; this flow \
                 uses an adaptive method",
            ));
        };
        let len = self.whole_configurations(x, "certify_configurations")?;
        let times = certificate_times(n_steps);
        let global = self.certificate_bounds(&times);
        let local = self.field.local_bounds(&times)?;
        let local = local.as_deref();
        let dynamics = self.dynamics();
        // One certificate per configuration: as many as the caller passed, allocated fallibly.
        crate::alloc::collect_indexed(
            x.par_chunks(len).map_init(
                || (self.workspace(), vec![0.0; len]),
                |(ws, z), xi| {
                    check_finite(xi, "configuration")?;
                    z.copy_from_slice(xi);
                    remove_center_of_mass(z, self.dim());
                    certify_pull_back(dynamics, local, &global, z, n_steps, ws)
                },
            ),
            "the per-configuration certificates",
        )
    }

    /// The length of one configuration, after checking that `x` (the input of `method`) holds
    /// whole ones.
    fn whole_configurations(&self, x: &[f64], method: &str) -> Result<usize> {
        let len = self.layout().len();
        if !x.len().is_multiple_of(len) {
            return Err(Error::size(
                format!("{method} input x (whole configurations)"),
                len * (x.len() / len + 1),
                x.len(),
            ));
        }
        Ok(len)
    }

    /// The smallest RK4 step count up to [`Flow::step_search_limit`] whose grid this flow's
    /// field certifies, if any: what reports and warnings name.
    #[must_use]
    pub fn certified_step_count(&self) -> Option<usize> {
        self.certified_step_count_up_to(self.step_search_limit())
    }

    /// How far [`Flow::certified_step_count`] searches: [`MAX_STEP_GROWTH`] times the flow's
    /// own RK4 step count, at least [`MIN_STEP_SEARCH`], at most [`MAX_RK4_STEPS`]. The
    /// search's cost grows with the count it reaches; a count far beyond the flow's own would
    /// multiply the cost of every sample and density by as much, so "none up to" this limit
    /// tells a user what they need.
    #[must_use]
    pub fn step_search_limit(&self) -> usize {
        let own = match self.integrator.method() {
            Method::Rk4 { n_steps } => n_steps,
            Method::Dopri5(_) => 1,
        };
        grown_step_count(own).max(MIN_STEP_SEARCH)
    }

    /// [`Flow::certified_step_count`] searched only up to `max_steps`: `None` also when the
    /// count is larger. A field with a loose bound (tens of thousands of steps) costs a search
    /// to that count of seconds to a minute; a caller that would not use such a count anyway
    /// (a refusal, a raise capped at [`MAX_STEP_GROWTH`]) stops early.
    #[must_use]
    pub fn certified_step_count_up_to(&self, max_steps: usize) -> Option<usize> {
        let bounds = self.field.certificate_bounder();
        steps_needed(
            &|t| {
                let (lipschitz, compression) = bounds(t);
                FieldBounds {
                    lipschitz,
                    compression,
                }
            },
            max_steps.clamp(1, MAX_RK4_STEPS),
        )
        .filter(|&n| n <= max_steps)
    }

    /// Strict mode: with `true` (the default), sampling and density evaluation in the
    /// exact-discrete mode fail with [`Error::Uncertified`] (naming
    /// [`Flow::certified_step_count`]) unless [`Flow::certificate`] proves every RK4 step a
    /// bijection, so that no density this flow reports can silently miss a second preimage.
    /// `false` is the explicit opt-out (an uncertified grid is usually still invertible where
    /// the samples are; BENCHMARKS.md, "Session 8"). No effect in the continuous mode, whose
    /// densities are approximate anyway. Saved in model files.
    pub fn set_require_certificate(&mut self, require: bool) {
        self.require_certificate = require;
    }

    /// Makes an untrained flow certified at its own RK4 step count, for strict mode: if
    /// [`Flow::certificate`] fails, the field's output is damped
    /// ([`crate::field::FieldFamily::output_linear_blocks`]: those blocks scaled by the
    /// largest factor of the form 2^(−k/8) that certifies), or, for a family whose field is
    /// linear in no block, the step count is raised to [`Flow::certified_step_count`].
    /// Nothing changes for a certified flow or a flow without a fixed grid. Returns the
    /// factor applied to the output (1 when none).
    ///
    /// Why damp rather than add steps: an untrained flow is made to be trained, and its
    /// initial scale is arbitrary (the paper's `N(0, 1/K)`), whereas extra steps would stay
    /// with the trained flow and slow every sample.
    ///
    /// # Errors
    ///
    /// [`Error::Uncertified`] if neither makes the flow certified (a step count beyond
    /// [`MAX_RK4_STEPS`]).
    pub fn certify_initial_field(&mut self) -> Result<f64> {
        let Some(cert) = self.certificate() else {
            return Ok(1.0);
        };
        if cert.is_certified() {
            return Ok(1.0);
        }
        let blocks = self.field.output_linear_blocks();
        if blocks.is_empty() {
            self.raise_to_certified_steps(MAX_RK4_STEPS)?;
            return Ok(1.0);
        }
        let original = self.field.params().to_vec();
        let n_steps = cert.n_steps;
        let factor = |k: u32| (-f64::from(k) / 8.0).exp2();
        // Sets the parameters damped by factor(k).
        let apply = |flow: &mut Flow, k: u32| -> Result<()> {
            let mut damped = original.clone();
            for range in &blocks {
                for d in &mut damped[range.clone()] {
                    *d *= factor(k);
                }
            }
            flow.set_params(&damped)
        };
        let certifies = |flow: &mut Flow, k: u32| -> Result<bool> {
            apply(flow, k)?;
            Ok(flow.certificate().is_some_and(|c| c.is_certified()))
        };
        // The result is the smallest k in 1..=480 (2^(-60): an error, not a loop) whose factor
        // certifies. The field's bounds are linear in the factor and the step bound increases
        // with them, so one evaluation of the bounds predicts that k; a bound evaluation costs
        // as much as a certificate (about 4 ms at N = 1,000), so this takes about three instead
        // of one per k (67 for the paper's draw at N = 1,000). Real certificates check the
        // prediction both ways and walk from it if rounding moved the edge.
        let predicted = {
            let times = certificate_times(n_steps);
            let base = self.certificate_bounds(&times);
            let h = 1.0 / n_steps as f64;
            let scaled_certifies = |k: u32| {
                let f = factor(k);
                let scaled =
                    |v: &[f64], s: usize| [f * v[2 * s], f * v[2 * s + 1], f * v[2 * s + 2]];
                (0..n_steps).all(|s| {
                    step_bound(scaled(&base.lipschitz, s), scaled(&base.compression, s), h) < 1.0
                })
            };
            (1..=480).find(|&k| scaled_certifies(k)).unwrap_or(480)
        };
        let search = |flow: &mut Flow| -> Result<Option<u32>> {
            let mut k = predicted;
            if certifies(flow, k)? {
                while k > 1 && certifies(flow, k - 1)? {
                    k -= 1;
                }
                // The walk may have left the parameters of the uncertified k - 1.
                apply(flow, k)?;
                return Ok(Some(k));
            }
            while k < 480 {
                k += 1;
                if certifies(flow, k)? {
                    return Ok(Some(k));
                }
            }
            Ok(None)
        };
        let outcome = search(self);
        if let Ok(Some(k)) = outcome {
            return Ok(factor(k));
        }
        self.set_params(&original)?;
        outcome?;
        Err(self.refusal_now().unwrap_or_else(|| {
            Error::invalid("the untrained field cannot be certified by damping its output")
        }))
    }

    /// Raises the RK4 step count to [`Flow::certified_step_count`] if the flow is not
    /// certified at its own and that count is at most `max_steps`: what training does in
    /// strict mode (a step count that grows with the field, up to [`MAX_STEP_GROWTH`] times
    /// the trained one). Returns the new step count, `None` when nothing changed (certified,
    /// or not a fixed grid).
    ///
    /// # Errors
    ///
    /// [`Error::Uncertified`] (the flow unchanged), naming the certified count, if it is
    /// above `max_steps` or there is none up to [`MAX_RK4_STEPS`].
    pub fn raise_to_certified_steps(&mut self, max_steps: usize) -> Result<Option<usize>> {
        let Some(cert) = self.certificate() else {
            return Ok(None);
        };
        if cert.is_certified() {
            return Ok(None);
        }
        let Some(needed) = self.certified_step_count_up_to(max_steps) else {
            // The search just done is the refusal's: no count up to `max_steps`.
            let searched = max_steps.clamp(1, MAX_RK4_STEPS);
            return Err(uncertified(&cert, None, searched));
        };
        let integrator = Integrator::new(Method::Rk4 { n_steps: needed }, self.integrator.mode())?;
        self.set_integrator(integrator);
        Ok(Some(needed))
    }

    /// Whether strict mode is on ([`Flow::set_require_certificate`]).
    #[must_use]
    pub fn requires_certificate(&self) -> bool {
        self.require_certificate
    }

    /// Strict mode's check: `Ok` unless strict mode is on, the density mode is exact-discrete
    /// and the certificate fails. Every sampling and density method calls it before it writes
    /// anything; the first call after a change of field or integrator computes the certificate
    /// (and, if it fails, the certified step count), later calls reuse the verdict.
    ///
    /// # Errors
    ///
    /// [`Error::Uncertified`].
    pub fn check_certified(&self) -> Result<()> {
        if !self.require_certificate || self.integrator.mode() != DensityMode::ExactDiscrete {
            return Ok(());
        }
        match self.refusal.get_or_init(|| self.refusal_now()) {
            None => Ok(()),
            Some(e) => Err(e.clone()),
        }
    }

    /// The refusal of strict mode for the current grid, if its certificate fails.
    fn refusal_now(&self) -> Option<Error> {
        let cert = self.certificate()?;
        if cert.is_certified() {
            return None;
        }
        // A refusal names counts the host could use: up to MAX_STEP_GROWTH times its own, the
        // raise's limit (searching a loose bound's 30,000 steps took 25 s per refusal).
        let searched_steps = grown_step_count(cert.n_steps);
        let certified_steps = self.certified_step_count_up_to(searched_steps);
        Some(uncertified(&cert, certified_steps, searched_steps))
    }

    /// A workspace sized for this flow (one per thread when calling the single-sample methods).
    #[must_use]
    pub fn workspace(&self) -> Workspace {
        Workspace::new(self.layout().len())
    }

    /// Draws a latent `z` (CoM-free, from the prior) from `rng` into `z`: the one latent
    /// draw of sampling, the move and the reverse-KL loss.
    pub fn draw_latent_into(&self, rng: &mut ChaCha20Rng, z: &mut [f64]) {
        self.prior.sample_into(rng, z);
    }

    /// Draws a latent from `rng` into `x` and pushes it through the flow in place: one flow
    /// sample with its `log q` (see [`Flow::push_forward`]).
    pub fn sample_one_into(
        &self,
        rng: &mut ChaCha20Rng,
        x: &mut [f64],
        ws: &mut Workspace,
    ) -> Result<(f64, Stats)> {
        // Before the draw, so that a refusal leaves `x` and `rng` as they were.
        self.check_certified()?;
        self.draw_latent_into(rng, x);
        self.push_forward(x, ws)
    }

    /// Pushes a CoM-free latent `z` through the flow in place (it becomes x) and returns
    /// `log q(x) = log ρ(z) − log|det ∂x/∂z|`.
    pub fn push_forward(&self, z: &mut [f64], ws: &mut Workspace) -> Result<(f64, Stats)> {
        self.check_certified()?;
        let log_prior = self.prior.log_density(z);
        let (log_det, stats) = self.integrator.forward(self.dynamics(), z, ws)?;
        Ok((log_prior - log_det, stats))
    }

    /// Pulls a configuration `x` (any centre of mass) back to its latent in place (it becomes
    /// the CoM-free z) and returns `log q(x) = log ρ(z) + log|det ∂z/∂x|`.
    pub fn pull_back(&self, x: &mut [f64], ws: &mut Workspace) -> Result<(f64, Stats)> {
        if x.len() != self.layout().len() {
            return Err(Error::size("configuration", self.layout().len(), x.len()));
        }
        check_finite(x, "configuration")?;
        self.check_certified()?;
        remove_center_of_mass(x, self.dim());
        let (log_det, stats) = self.integrator.inverse(self.dynamics(), x, ws)?;
        Ok((self.prior.log_density(x) + log_det, stats))
    }

    /// Draws `n = log_q.len()` samples into `x` (n·N·D, CoM-free) with their `log q`.
    pub fn sample_into(&self, seed: u64, x: &mut [f64], log_q: &mut [f64]) -> Result<()> {
        self.sample_full_into(seed, None, x, log_q).map(|_| ())
    }

    /// As [`Flow::sample_into`], also returning the latents (if `z` is given, n·N·D) and the
    /// summed solver statistics.
    pub fn sample_full_into(
        &self,
        seed: u64,
        z: Option<&mut [f64]>,
        x: &mut [f64],
        log_q: &mut [f64],
    ) -> Result<Stats> {
        let n = log_q.len();
        let layout = self.layout();
        let len = layout.len();
        layout.check_batch("sample output x", x, n)?;
        if let Some(z) = &z {
            layout.check_batch("sample output z", z, n)?;
        }
        self.check_certified()?;
        self.dynamics();
        // One outcome per sample, allocated fallibly before any output is written.
        let results = crate::alloc::collect_indexed(
            x.par_chunks_mut(len)
                .zip(log_q.par_iter_mut())
                .enumerate()
                .map_init(
                    || self.workspace(),
                    |ws, (i, (xi, lq))| {
                        let (value, stats) =
                            self.sample_one_into(&mut sample_rng(seed, i as u64), xi, ws)?;
                        *lq = value;
                        Ok(stats)
                    },
                ),
            "the per-sample outcomes of sampling",
        )?;
        let stats = first_error(results)?;
        if let Some(z) = z {
            // Latents are regenerated rather than stored per sample: the same streams, cheap.
            z.par_chunks_mut(len).enumerate().for_each(|(i, zi)| {
                self.draw_latent_into(&mut sample_rng(seed, i as u64), zi);
            });
        }
        Ok(stats)
    }

    /// `log q` of `n = log_q.len()` configurations `x` (n·N·D, any centre of mass).
    pub fn log_density_into(&self, x: &[f64], log_q: &mut [f64]) -> Result<()> {
        self.log_density_full_into(x, None, log_q).map(|_| ())
    }

    /// As [`Flow::log_density_into`], also returning the latents (if `z` is given) and the
    /// summed solver statistics.
    pub fn log_density_full_into(
        &self,
        x: &[f64],
        z: Option<&mut [f64]>,
        log_q: &mut [f64],
    ) -> Result<Stats> {
        let n = log_q.len();
        let layout = self.layout();
        let len = layout.len();
        layout.check_batch("log_density input x", x, n)?;
        check_finite(x, "log_density input x")?;
        self.check_certified()?;
        // The copy of the caller's configurations and one outcome per configuration are sized
        // by the caller: allocated fallibly, before `z` or `log_q` is written.
        let mut own;
        let z = match z {
            Some(z) => {
                layout.check_batch("log_density output z", z, n)?;
                z
            }
            None => {
                own = crate::alloc::zeros(
                    Some(x.len()),
                    &format!("the working copy of {n} configurations to evaluate"),
                )?;
                &mut own[..]
            }
        };
        let mut results = crate::alloc::with_capacity(
            Some(n),
            "the per-configuration outcomes of the densities",
        )?;
        z.copy_from_slice(x);
        self.dynamics();
        results.par_extend(z.par_chunks_mut(len).zip(log_q.par_iter_mut()).map_init(
            || self.workspace(),
            |ws, (zi, lq)| {
                let (value, stats) = self.pull_back(zi, ws)?;
                *lq = value;
                Ok(stats)
            },
        ));
        first_error(results)
    }

    /// `log q` of each configuration in `x` (n·N·D, any centre of mass), each with its own
    /// outcome: a configuration that cannot be evaluated (non-finite coordinates, an inverse
    /// that fails) gives its error without failing the others. For a data set that must be
    /// evaluated whole, use [`Flow::log_density_into`].
    ///
    /// # Errors
    ///
    /// [`Error::DimensionMismatch`] if `x` is not whole configurations.
    pub fn log_density_each(&self, x: &[f64]) -> Result<Vec<Result<f64>>> {
        let len = self.whole_configurations(x, "log_density")?;
        self.check_certified()?;
        self.dynamics();
        // One outcome per configuration: as many as the caller passed, allocated fallibly.
        crate::alloc::collect_indexed(
            x.par_chunks(len).map_init(
                || (self.workspace(), vec![0.0; len]),
                |(ws, z), xi| {
                    z.copy_from_slice(xi);
                    self.pull_back(z, ws).map(|(log_q, _)| log_q)
                },
            ),
            "the per-configuration densities",
        )
    }

    /// Allocating convenience: `(x, log_q)` of `n` samples.
    ///
    /// # Errors
    ///
    /// [`Error::Resource`] if the memory for `n` samples cannot be had (checked and allocated
    /// fallibly); those of [`Flow::sample_into`].
    pub fn sample(&self, seed: u64, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        let len = self.layout().len();
        let mut x = crate::alloc::zeros(n.checked_mul(len), "sample output x")?;
        let mut log_q = crate::alloc::zeros(Some(n), "sample output log_q")?;
        self.sample_into(seed, &mut x, &mut log_q)?;
        Ok((x, log_q))
    }

    /// Allocating convenience: `log q` of the configurations in `x`.
    ///
    /// # Errors
    ///
    /// [`Error::Resource`] if the memory for the result cannot be had; those of
    /// [`Flow::log_density_into`].
    pub fn log_density(&self, x: &[f64]) -> Result<Vec<f64>> {
        let n = x.len() / self.layout().len();
        let mut log_q = crate::alloc::zeros(Some(n), "log_density output log_q")?;
        self.log_density_into(x, &mut log_q)?;
        Ok(log_q)
    }
}

/// The first error in index order (deterministic whatever the scheduling), else summed stats.
fn first_error(results: Vec<Result<Stats>>) -> Result<Stats> {
    let mut total = Stats::default();
    for r in results {
        total += r?;
    }
    Ok(total)
}

/// [`MAX_STEP_GROWTH`] times `n_steps`, within `1..=MAX_RK4_STEPS`: the largest count a
/// refusal names, and the base of the reports' search limit.
fn grown_step_count(n_steps: usize) -> usize {
    n_steps
        .saturating_mul(MAX_STEP_GROWTH)
        .clamp(1, MAX_RK4_STEPS)
}

/// Strict mode's refusal of the grid `cert` covers, with the certified step count found by a
/// search up to `searched_steps` (`None`: none up to it).
fn uncertified(
    cert: &StepCertificate,
    certified_steps: Option<usize>,
    searched_steps: usize,
) -> Error {
    Error::Uncertified {
        what: format!(
            "this flow requires a step certificate, and its worst RK4 step (from t = {:.3}) \
             has bound {:.4} (needs < 1; field Lipschitz bound up to {:.4}, compression bound \
             up to {:.4})",
            cert.worst_step_start, cert.max_contraction, cert.max_lipschitz, cert.max_compression
        ),
        n_steps: cert.n_steps,
        certified_steps,
        searched_steps,
    }
}
