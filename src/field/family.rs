//! What a field family provides: the contract between one folder under `src/field/` and the
//! rest of the crate (flow, model files, training, the step certificate).
//!
//! A family is a concrete type implementing [`VectorField`] (what integrators see),
//! [`FieldFamily`] (parameters, model-file section, Lipschitz bound, grid dynamics) and
//! [`TrainableField`] (the reverse pass the training tape drives). It becomes selectable by one
//! registration line in [`super::registry`].

use std::fmt::Debug;
use std::ops::Range;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Cotangent, LocalBounds, Preset, VectorField};
use crate::error::Result;
use crate::geometry::Layout;
use crate::species::Species;

/// The check of a family without species: `species` has one index per particle, all the same.
///
/// # Errors
///
/// [`crate::Error::DimensionMismatch`] for a wrong count; [`crate::Error::InvalidArgument`]
/// for several species.
pub(crate) fn single_species<F: FieldFamily>(layout: Layout, species: &Species) -> Result<()> {
    species.check_count(layout.n_particles)?;
    if species.is_single() {
        Ok(())
    } else {
        Err(super::registry::several_species_refused(F::NAME, species))
    }
}

/// The training objectives family `F` accepts, as the CLI's `--objective` names them (the C
/// API's `EQF_OBJECTIVE_*` constants are the same objectives): what each refusal of an
/// objective offers instead, so that it never names one the family refuses too.
fn accepted_objectives<F: TrainableField>() -> String {
    let mut names = Vec::new();
    if F::DIVERGENCE_REVERSE {
        names.push("ml (the continuous-mode likelihood)");
    }
    if F::JACOBIAN_REVERSE {
        names.push("ml-discrete");
    }
    if F::PROBE_DIVERGENCE {
        names.push("ml-hutchinson");
    }
    names.push("flow matching (fm, fm-align, fm-ot)");
    let last = names.pop().unwrap_or_default();
    if names.is_empty() {
        format!("it trains by {last} only")
    } else {
        format!("it trains by {} or {last}", names.join(", "))
    }
}

/// The refusal of a family without [`TrainableField::jacobian_vjp_at`] to be trained by the
/// exact-discrete likelihood.
pub(crate) fn no_jacobian_reverse<F: TrainableField>() -> crate::Error {
    crate::Error::invalid(format!(
        "the {} field family has no reverse pass of its Jacobian: it cannot be trained by \
         the exact-discrete likelihood (objective ml-discrete); {}",
        F::NAME,
        accepted_objectives::<F>()
    ))
}

/// The refusal of a Hutchinson probe by a family without
/// [`TrainableField::PROBE_DIVERGENCE`].
pub(crate) fn no_probe_divergence<F: TrainableField>() -> crate::Error {
    crate::Error::invalid(format!(
        "the '{}' field family has no Hutchinson estimate of its divergence (objectives \
         ml-hutchinson, ml-hutchinson-gaussian; the estimate exists for the dense baseline); {}",
        F::NAME,
        accepted_objectives::<F>()
    ))
}

/// The largest magnitude a network family's parameter may have (coordkernel, envpair, dense):
/// beyond it the activations are far outside any trained regime and a Lipschitz bound built
/// from the weights is meaningless.
pub(crate) const MAX_NETWORK_PARAM: f64 = 1e6;

/// The checks a network family's `set_params` makes before it keeps anything: `expected`
/// parameters, all finite and at most [`MAX_NETWORK_PARAM`] in magnitude.
///
/// # Errors
///
/// [`crate::Error::DimensionMismatch`], [`crate::Error::NonFinite`] or
/// [`crate::Error::InvalidArgument`] naming the family and the parameter.
pub(crate) fn check_network_params(name: &str, params: &[f64], expected: usize) -> Result<()> {
    if params.len() != expected {
        return Err(crate::Error::size(
            format!("{name} field params"),
            expected,
            params.len(),
        ));
    }
    crate::error::check_finite(params, &format!("{name} field parameters"))?;
    match params
        .iter()
        .enumerate()
        .find(|(_, p)| p.abs() > MAX_NETWORK_PARAM)
    {
        Some((i, p)) => Err(crate::Error::invalid(format!(
            "{name} field parameter {i} = {p} exceeds {MAX_NETWORK_PARAM:e} in magnitude"
        ))),
        None => Ok(()),
    }
}

/// Both bounds of the step certificate, (Lipschitz, compression), at any list of times:
/// [`FieldFamily::certificate_bounder`].
pub type CertificateBounder<'a> = Box<dyn Fn(&[f64]) -> (Vec<f64>, Vec<f64>) + 'a>;

/// The cotangents of a field's certificate bounds as a function of the bounds:
/// `(L, μ) ↦ (L̄, μ̄)`, one entry per time each ([`TrainableField::certificate_bounds_vjp`]).
pub type BoundCotangents<'a> = dyn FnMut(&[f64], &[f64]) -> (Vec<f64>, Vec<f64>) + 'a;

/// A family of vector fields for a fixed particle layout, with its trainable parameters in one
/// flat vector.
///
/// Contract for every family: `v` is translation invariant and `Σ_i v_i = 0` (the centre of
/// mass is conserved, so the flow stays on the subspace the prior lives on and the full-space
/// trace of the Jacobian is the trace there); [`VectorField`] gives the exact divergence and
/// Jacobian of the field as implemented, and [`TrainableField`] its exact reverse pass. Every
/// family except the `dense` baseline is also equivariant under permutations of identical
/// particles and under rotations and reflections; `dense` is not, by design (it is what shows
/// what equivariance buys), so its densities are not permutation or rotation invariant.
pub trait FieldFamily: VectorField + Clone + Debug + PartialEq + Send + Sync + 'static {
    /// The family's name in model files (`"field": {"family": NAME, …}`); never changes once
    /// released, so that old model files stay loadable.
    const NAME: &'static str;

    /// Whether the family's fields tell particle species apart (override
    /// [`FieldFamily::from_config_with_species`] and [`FieldFamily::species`] with it).
    const SPECIES: bool = false;

    /// Everything that defines a field of this family except the layout and the trainable
    /// parameters (kernel centres, sizes, …), as stored in a model file.
    type Config: Serialize + DeserializeOwned + Clone + Debug + PartialEq;

    /// The particle layout the field is for.
    fn layout(&self) -> Layout;

    /// The family settings of this field.
    fn config(&self) -> Self::Config;

    /// A field from its settings and parameters, validating both (the model-file loader's
    /// entry point).
    ///
    /// # Errors
    ///
    /// A typed error naming the setting or parameter block that is wrong.
    fn from_config(layout: Layout, config: Self::Config, params: Vec<f64>) -> Result<Self>;

    /// [`FieldFamily::from_config`] for particles of the given species. Default: a single
    /// species is `from_config`; several are refused, for families whose fields treat every
    /// particle as identical.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidArgument`] for several species in a family without them;
    /// [`crate::Error::DimensionMismatch`] if `species` does not have one index per particle.
    fn from_config_with_species(
        layout: Layout,
        config: Self::Config,
        species: Species,
        params: Vec<f64>,
    ) -> Result<Self> {
        single_species::<Self>(layout, &species)?;
        Self::from_config(layout, config, params)
    }

    /// The (distance, time) basis sizes of a [`Preset::Range`] request that gives none (for
    /// a family without bases, the two sizes it takes in their place, documented there).
    fn default_counts() -> (usize, usize);

    /// This family's settings for a family-neutral request: the benchmark presets of
    /// `System`, the host's range and counts of `FlowConfig`.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidArgument`] for counts the family cannot place (settings it can
    /// place but not accept are [`FieldFamily::validate_config`]'s to refuse).
    fn preset_config(preset: &Preset) -> Result<Self::Config>;

    /// Checks settings without building a field.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidArgument`] naming the setting.
    fn validate_config(config: &Self::Config) -> Result<()>;

    /// An untrained field: `config` validated, the initial parameters drawn from the
    /// `FieldInit` stream of `seed` (bit for bit the same for the same arguments).
    ///
    /// # Errors
    ///
    /// What [`FieldFamily::validate_config`] reports; a species list of the wrong length, or
    /// several species in a family without them.
    fn untrained(layout: Layout, config: Self::Config, species: Species, seed: u64)
    -> Result<Self>;

    /// The particle species, `None` when all particles are identical (the default).
    fn species(&self) -> Option<&Species> {
        None
    }

    /// The trainable parameters, one flat vector (the layout of [`FieldFamily::param_blocks`]).
    fn params(&self) -> &[f64];

    /// Replaces the parameters; on error the field is unchanged.
    ///
    /// # Errors
    ///
    /// A wrong length, non-finite values, or values outside the family's valid range.
    fn set_params(&mut self, params: &[f64]) -> Result<()>;

    /// Names and ranges of the parameter blocks, in order, covering `0..params().len()`.
    fn param_blocks(&self) -> Vec<(&'static str, Range<usize>)>;

    /// The parameter ranges in which the field is jointly linear: scaling all of them by c
    /// scales `v(x, t)` by c everywhere, and so the Lipschitz and compression bounds. An
    /// untrained flow damps them to be certified at its step count
    /// ([`crate::Flow::certify_initial_field`]). Empty (the default): none, and such a flow
    /// raises its step count instead.
    fn output_linear_blocks(&self) -> Vec<Range<usize>> {
        Vec::new()
    }

    /// Refuses settings and parameters that are finite but so extreme that a flow integrated
    /// with steps of size `h` would be meaningless (the model-file loader calls it). Default:
    /// everything [`FieldFamily::from_config`] accepts is usable.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidArgument`] naming the setting or parameter.
    fn check_usable(&self, h: f64) -> Result<()> {
        let _ = h;
        Ok(())
    }

    /// Upper bounds `L(t)` on the spectral norm of the Jacobian `∂v/∂x` of `self` at each of
    /// `times`, valid for every configuration x (a global Lipschitz constant of `v(·, t)`);
    /// the grid form of [`FieldFamily::grid_dynamics`] agrees with it to its own approximation
    /// error. An RK4 step of size h is a bijection when `h·L` is small enough: the family's
    /// part of the step certificate (`integrate::certify_rk4`). Batched because a family may
    /// share work across times.
    fn lipschitz_bounds(&self, times: &[f64]) -> Vec<f64>;

    /// [`FieldFamily::lipschitz_bounds`] at one time.
    fn lipschitz_bound(&self, t: f64) -> f64 {
        self.lipschitz_bounds(&[t])[0]
    }

    /// Upper bounds `μ(t) ≥ 0` on how fast `v(·, t)` can bring two configurations together:
    /// `uᵀ(∂v/∂x)u ≥ −μ(t)·|u|²` for every configuration x and direction u (that is,
    /// `μ ≥ −λ_min` of the Jacobian's symmetric part), at each of `times`. The step
    /// certificate needs only this one-sided bound for the first-order part of a forward RK4
    /// step (`integrate::certify_rk4`): a field that expands strongly but compresses weakly
    /// certifies with fewer steps. The default, [`FieldFamily::lipschitz_bounds`], is always
    /// valid (`−λ_min ≤ ‖∂v/∂x‖`); a family with a tighter bound overrides this together
    /// with [`TrainableField::compression_bounds_and_vjp`], so that the penalty differentiates
    /// the bound the certificate uses.
    fn compression_bounds(&self, times: &[f64]) -> Vec<f64> {
        self.lipschitz_bounds(times)
    }

    /// Both bounds of the step certificate at `times`: ([`FieldFamily::lipschitz_bounds`],
    /// [`FieldFamily::compression_bounds`]), the same numbers. A family may share the work
    /// of the two (the kernel field evaluates φ once per time for both).
    fn certificate_bounds(&self, times: &[f64]) -> (Vec<f64>, Vec<f64>) {
        (self.lipschitz_bounds(times), self.compression_bounds(times))
    }

    /// [`FieldFamily::certificate_bounds`] as a function of the times, for a caller that asks
    /// in many calls (the step-count search): a family may tabulate once what does not
    /// depend on time (the kernel field its distance grids), with the same numbers.
    fn certificate_bounder(&self) -> CertificateBounder<'_> {
        Box::new(move |times| self.certificate_bounds(times))
    }

    /// Bounds of the field on balls of configurations at each of `times`, tabulated once
    /// ([`LocalBounds`]), for the per-configuration certificate where the global bounds are
    /// too pessimistic (`integrate::certify_pull_back`). `Ok(None)` (the default): the family
    /// has none, and that certificate is the global one.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Resource`] if the tables cannot be allocated.
    fn local_bounds(&self, times: &[f64]) -> Result<Option<Box<dyn LocalBounds>>> {
        let _ = times;
        Ok(None)
    }

    /// A faster field that agrees with `self` at the flow times `times` (the stage times of a
    /// fixed grid) and is what a fixed-grid flow integrates there: e.g. tabulated radial
    /// functions. `None` (the default): integrate `self`.
    fn grid_dynamics(&self, times: &[f64]) -> Option<Arc<dyn VectorField + Send>> {
        let _ = times;
        None
    }
}

/// The reverse pass of a field family, in the shape the RK4 training tape drives it.
///
/// An integration visits few distinct flow times (about 2n + 1 for n RK4 steps), so a family
/// may precompute per time ([`TrainableField::TimePoint`]) and may sum the parameter
/// cotangents of all evaluations at one time before turning them into θ̄ (when that part is
/// linear), once per time at [`TrainableField::adjoint_finish`].
pub trait TrainableField: FieldFamily {
    /// What an evaluation at one flow time needs precomputed (forward and reverse).
    type TimePoint: Clone + Debug + Send + Sync;
    /// The parameter cotangents of one reverse pass, accumulated over its evaluations.
    type Adjoint: Clone + Debug + Send + Default;
    /// Per-thread buffers of one vector–Jacobian product.
    type Scratch: Clone + Debug + Send;

    /// Whether [`TrainableField::vjp_at`] differentiates the divergence too (a non-zero
    /// `cotangent.div`), which maximum likelihood and the KL loss need. A family without it
    /// trains by flow matching only; the training tape refuses to run its reverse pass with a
    /// divergence cotangent rather than return a wrong gradient.
    const DIVERGENCE_REVERSE: bool = true;

    /// The precomputation at flow time `t`.
    fn time_point(&self, t: f64) -> Self::TimePoint;

    /// Bytes one time point takes, its heap parts included, with what the reverse pass sums
    /// per time point ([`TrainableField::adjoint_reset`]). A training grid holds two or three
    /// per RK4 step, so at 10⁵ steps a kernel field's grid is ~0.4 GB per thread: the tape asks
    /// the system for that much, fallibly, before building one. The default is the inline size,
    /// right for a time point without heap parts whose reverse pass keeps nothing per time.
    fn time_point_bytes(&self) -> usize {
        std::mem::size_of::<Self::TimePoint>()
    }

    /// The family's Lipschitz bounds at `times` ([`FieldFamily::lipschitz_bounds`], the same
    /// numbers) and their vector–Jacobian product: adds `Σ_t bounds_bar[t]·∂L(t)/∂θ` to
    /// `theta_bar` (flat parameter layout). What a Lipschitz penalty in training needs to keep
    /// the trained field certifiable at its step count (`train::TrainConfig::lipschitz_penalty`).
    ///
    /// Provided once for every family (do not override): it checks the sizes, asks the family
    /// for the bounds and their gradient ([`TrainableField::lipschitz_bounds_and_vjp`], into a
    /// scratch vector), checks that the bounds are finite, and only then adds the gradient to
    /// `theta_bar`, so that on an error `theta_bar` is unchanged.
    ///
    /// # Errors
    ///
    /// [`crate::Error::DimensionMismatch`] unless `bounds_bar` has one entry per time and
    /// `theta_bar` one per parameter; [`crate::Error::NonFinite`] for a bound that is not
    /// finite; what the family's gradient reports (the default refuses).
    fn lipschitz_bounds_vjp(
        &self,
        times: &[f64],
        bounds_bar: &[f64],
        theta_bar: &mut [f64],
    ) -> Result<Vec<f64>> {
        checked_bounds_vjp(self, "Lipschitz", times, bounds_bar, theta_bar, |g| {
            self.lipschitz_bounds_and_vjp(times, bounds_bar, g)
        })
    }

    /// [`TrainableField::lipschitz_bounds_vjp`] for the compression bounds
    /// ([`FieldFamily::compression_bounds`], the same numbers), with the same checks and the
    /// same guarantee: on an error `theta_bar` is unchanged. Provided (do not override).
    ///
    /// # Errors
    ///
    /// As [`TrainableField::lipschitz_bounds_vjp`].
    fn compression_bounds_vjp(
        &self,
        times: &[f64],
        bounds_bar: &[f64],
        theta_bar: &mut [f64],
    ) -> Result<Vec<f64>> {
        checked_bounds_vjp(self, "compression", times, bounds_bar, theta_bar, |g| {
            self.compression_bounds_and_vjp(times, bounds_bar, g)
        })
    }

    /// The bounds [`FieldFamily::lipschitz_bounds`]`(times)` (the same numbers), computed once,
    /// and `Σ_t bounds_bar[t]·∂L(t)/∂θ` added to `gradient` (zeros, one per parameter; the
    /// sizes are checked by [`TrainableField::lipschitz_bounds_vjp`], which discards
    /// `gradient` unless every bound is finite).
    ///
    /// # Errors
    ///
    /// The default refuses ([`crate::Error::InvalidArgument`]): a family whose bound has no
    /// gradient cannot be trained with the penalty.
    fn lipschitz_bounds_and_vjp(
        &self,
        times: &[f64],
        bounds_bar: &[f64],
        gradient: &mut [f64],
    ) -> Result<Vec<f64>> {
        let _ = (times, bounds_bar, gradient);
        Err(crate::Error::invalid(format!(
            "the {} field family has no gradient of its Lipschitz bound: it cannot be trained \
             with a Lipschitz penalty (use more RK4 steps to certify it instead)",
            Self::NAME
        )))
    }

    /// Both bounds the step certificate reads, `(L, μ)` at `times`, and, with cotangents
    /// `bars(L, μ) -> (L̄, μ̄)` computed from them (the certificate penalty's), their
    /// vector–Jacobian product added to `gradient`. Provided once for every family with the
    /// checks (do not override): see [`TrainableField::certificate_bounds_and_vjp`].
    ///
    /// # Errors
    ///
    /// [`crate::Error::DimensionMismatch`] unless `theta_bar` has one entry per parameter and
    /// the cotangents one per time; [`crate::Error::NonFinite`] for a bound that is not finite;
    /// what the family's gradients report. On an error `theta_bar` is unchanged.
    fn certificate_bounds_vjp(
        &self,
        times: &[f64],
        bars: &mut BoundCotangents<'_>,
        theta_bar: &mut [f64],
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        if theta_bar.len() != self.params().len() {
            return Err(crate::Error::size(
                format!("{} parameter cotangents", Self::NAME),
                self.params().len(),
                theta_bar.len(),
            ));
        }
        let mut sizes_ok = true;
        let mut checked = |l: &[f64], m: &[f64]| {
            let (l_bar, m_bar) = bars(l, m);
            if l_bar.len() != times.len() || m_bar.len() != times.len() {
                sizes_ok = false;
                return (vec![0.0; times.len()], vec![0.0; times.len()]);
            }
            (l_bar, m_bar)
        };
        let mut gradient = vec![0.0; theta_bar.len()];
        let (l, m) = self.certificate_bounds_and_vjp(times, &mut checked, &mut gradient)?;
        if !sizes_ok {
            return Err(crate::Error::invalid(
                "certificate bound cotangents need one entry per time",
            ));
        }
        if let Some(b) = l.iter().chain(&m).find(|b| !b.is_finite()) {
            return Err(crate::Error::non_finite(format!(
                "the {} field's certificate bound ({b})",
                Self::NAME
            )));
        }
        for (t, g) in theta_bar.iter_mut().zip(&gradient) {
            *t += g;
        }
        Ok((l, m))
    }

    /// [`TrainableField::certificate_bounds_vjp`] without the checks, into `gradient` (zeros,
    /// one per parameter). The default computes the bounds, then each one's reverse pass
    /// (which computes its bound again), skipping a pass whose cotangents are all zero; a
    /// family may share the work (the kernel field takes both bounds and both gradients from
    /// one pass over its distance grid).
    ///
    /// # Errors
    ///
    /// As [`TrainableField::lipschitz_bounds_and_vjp`].
    fn certificate_bounds_and_vjp(
        &self,
        times: &[f64],
        bars: &mut BoundCotangents<'_>,
        gradient: &mut [f64],
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let (l, m) = self.certificate_bounds(times);
        let (l_bar, m_bar) = bars(&l, &m);
        if l_bar.iter().any(|b| *b != 0.0) {
            self.lipschitz_bounds_and_vjp(times, &l_bar, gradient)?;
        }
        if m_bar.iter().any(|b| *b != 0.0) {
            self.compression_bounds_and_vjp(times, &m_bar, gradient)?;
        }
        Ok((l, m))
    }

    /// [`TrainableField::lipschitz_bounds_and_vjp`] for [`FieldFamily::compression_bounds`].
    /// The default is the Lipschitz bound's, matching the default compression bound; a family
    /// that overrides one overrides both (the shared family tests compare their values).
    ///
    /// # Errors
    ///
    /// As [`TrainableField::lipschitz_bounds_and_vjp`].
    fn compression_bounds_and_vjp(
        &self,
        times: &[f64],
        bounds_bar: &[f64],
        gradient: &mut [f64],
    ) -> Result<Vec<f64>> {
        self.lipschitz_bounds_and_vjp(times, bounds_bar, gradient)
    }

    /// Appends to `key` the numbers that [`TrainableField::time_point`] depends on (bitwise),
    /// so that a tape can reuse its time points across samples while they stay the same.
    fn time_point_key(&self, key: &mut Vec<f64>);

    /// Fresh scratch for [`TrainableField::vjp_at`].
    fn new_scratch(&self) -> Self::Scratch;

    /// `v(x, t)` into `v`, returning `div v(x, t)`: the same bits as
    /// [`VectorField::velocity_into`] at the point's time.
    fn velocity_at_into(&self, x: &[f64], point: &Self::TimePoint, v: &mut [f64]) -> f64;

    /// Starts a reverse pass whose evaluations happen at `n_times` distinct time points.
    fn adjoint_reset(&self, adjoint: &mut Self::Adjoint, n_times: usize);

    /// Reserves, fallibly, what [`TrainableField::adjoint_reset`] will hold for `n_times` time
    /// points, so that the reset allocates nothing: a training grid of 10⁵ RK4 steps needs
    /// ~90 MB of sums per thread for the kernel field, and a refusal there aborted the host.
    /// The default reserves nothing, for families whose sums do not grow with the time points.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Resource`] when the system refuses the memory.
    fn adjoint_reserve(&self, adjoint: &mut Self::Adjoint, n_times: usize) -> crate::Result<()> {
        let _ = (adjoint, n_times);
        Ok(())
    }

    /// The vector–Jacobian product of one evaluation at `x` and time point `time_index` (of the
    /// points given to [`TrainableField::adjoint_finish`]): adds `v̄ᵀ∂v/∂x + div̄ ∂div/∂x` to
    /// `x_bar` and accumulates the parameter part in `adjoint`. No size checks: the tape sized
    /// everything. `cotangent.div` is 0 unless [`TrainableField::DIVERGENCE_REVERSE`].
    #[allow(clippy::too_many_arguments)] // the reverse pass's buffers, unpacked
    fn vjp_at(
        &self,
        x: &[f64],
        point: &Self::TimePoint,
        time_index: usize,
        cotangent: Cotangent<'_>,
        x_bar: &mut [f64],
        adjoint: &mut Self::Adjoint,
        scratch: &mut Self::Scratch,
    );

    /// Whether [`TrainableField::jacobian_vjp_at`] exists: the reverse pass of the field's
    /// whole Jacobian, which training by the exact-discrete likelihood needs (the step
    /// log-determinants of the RK4 map are built from stage Jacobians).
    const JACOBIAN_REVERSE: bool = false;

    /// The vector–Jacobian product of one evaluation's velocity *and Jacobian* at `x`: with
    /// `v_bar` (length n = N·D) the cotangent of `v` and `jac_bar` (n × n, row-major like
    /// [`VectorField::velocity_jacobian_into`]) the cotangent of `∂v/∂x`, adds
    /// `∂/∂x [v̄·v + Σ_ab J̄_ab ∂v_a/∂x_b]` to `x_bar` and accumulates the parameter part in
    /// `adjoint`, as [`TrainableField::vjp_at`] does (the same time points and finish).
    ///
    /// # Errors
    ///
    /// The default refuses ([`crate::Error::InvalidArgument`]): a family without it cannot be
    /// trained by the exact-discrete likelihood. No size checks otherwise: the caller sized
    /// everything.
    #[allow(clippy::too_many_arguments)] // the reverse pass's buffers, unpacked
    fn jacobian_vjp_at(
        &self,
        x: &[f64],
        point: &Self::TimePoint,
        time_index: usize,
        v_bar: &[f64],
        jac_bar: &[f64],
        x_bar: &mut [f64],
        adjoint: &mut Self::Adjoint,
        scratch: &mut Self::Scratch,
    ) -> Result<()> {
        let _ = (
            x, point, time_index, v_bar, jac_bar, x_bar, adjoint, scratch,
        );
        Err(no_jacobian_reverse::<Self>())
    }

    /// Whether the family has a Hutchinson estimate of its divergence with its reverse pass
    /// ([`TrainableField::probe_velocity_at_into`], [`TrainableField::probe_vjp_at`]): what
    /// maximum-likelihood training with a stochastic trace needs (the paper's non-equivariant
    /// baseline, §7.3). Never used for a density: every density eqflow reports has the exact
    /// divergence. The training tape refuses a probe for a family without it.
    const PROBE_DIVERGENCE: bool = false;

    /// `v(x, t)` into `v`, returning the Hutchinson estimate `εᵀ(∂v/∂x)ε` of the divergence
    /// for the probe `probe` (length N·D). Called only when
    /// [`TrainableField::PROBE_DIVERGENCE`]; the default (never called) returns NaN, which
    /// the integration would report as non-finite.
    fn probe_velocity_at_into(
        &self,
        x: &[f64],
        point: &Self::TimePoint,
        probe: &[f64],
        v: &mut [f64],
    ) -> f64 {
        let _ = probe;
        self.velocity_at_into(x, point, v);
        f64::NAN
    }

    /// [`TrainableField::vjp_at`] with `cotangent.div` the cotangent of the probe's estimate
    /// `εᵀ(∂v/∂x)ε` instead of the divergence. Called only when
    /// [`TrainableField::PROBE_DIVERGENCE`]; the default refuses.
    ///
    /// # Errors
    ///
    /// The default refuses ([`crate::Error::InvalidArgument`]).
    #[allow(clippy::too_many_arguments)] // the reverse pass's buffers, unpacked
    fn probe_vjp_at(
        &self,
        x: &[f64],
        point: &Self::TimePoint,
        time_index: usize,
        probe: &[f64],
        cotangent: Cotangent<'_>,
        x_bar: &mut [f64],
        adjoint: &mut Self::Adjoint,
        scratch: &mut Self::Scratch,
    ) -> Result<()> {
        let _ = (
            x, point, time_index, probe, cotangent, x_bar, adjoint, scratch,
        );
        Err(no_probe_divergence::<Self>())
    }

    /// Ends a reverse pass: adds the accumulated parameter cotangent to `theta_bar` (flat
    /// parameter layout). `points` are the time points the evaluations used, by index.
    fn adjoint_finish(
        &self,
        points: &[Self::TimePoint],
        adjoint: &mut Self::Adjoint,
        theta_bar: &mut [f64],
    );
}

/// The checks of [`TrainableField::lipschitz_bounds_vjp`] and
/// [`TrainableField::compression_bounds_vjp`] around the family's `bounds_and_vjp` (into a
/// scratch gradient): sizes first, finite bounds after, and `theta_bar` touched only on success.
fn checked_bounds_vjp<F: TrainableField>(
    field: &F,
    which: &str,
    times: &[f64],
    bounds_bar: &[f64],
    theta_bar: &mut [f64],
    bounds_and_vjp: impl FnOnce(&mut [f64]) -> Result<Vec<f64>>,
) -> Result<Vec<f64>> {
    if bounds_bar.len() != times.len() {
        return Err(crate::Error::size(
            format!("{which} bound cotangents"),
            times.len(),
            bounds_bar.len(),
        ));
    }
    if theta_bar.len() != field.params().len() {
        return Err(crate::Error::size(
            format!("{} parameter cotangents", F::NAME),
            field.params().len(),
            theta_bar.len(),
        ));
    }
    let mut gradient = vec![0.0; theta_bar.len()];
    let bounds = bounds_and_vjp(&mut gradient)?;
    if let Some(b) = bounds.iter().find(|b| !b.is_finite()) {
        return Err(crate::Error::non_finite(format!(
            "the {} field's {which} bound ({b})",
            F::NAME
        )));
    }
    for (t, g) in theta_bar.iter_mut().zip(&gradient) {
        *t += g;
    }
    Ok(bounds)
}

/// The ranges of the blocks named in `names`, for [`FieldFamily::output_linear_blocks`].
pub(crate) fn named_blocks(
    blocks: Vec<(&'static str, Range<usize>)>,
    names: &[&str],
) -> Vec<Range<usize>> {
    blocks
        .into_iter()
        .filter(|(name, _)| names.contains(name))
        .map(|(_, range)| range)
        .collect()
}

#[cfg(test)]
mod objective_refusal_tests {
    use super::{no_jacobian_reverse, no_probe_divergence};
    use crate::field::KernelField;
    use crate::field::coordkernel::CoordKernelField;
    use crate::field::dense::DenseField;
    use crate::field::envpair::EnvPairField;

    /// Sweep 29: envpair refused ml-discrete with "(train by the continuous-mode likelihood
    /// instead)" and the Hutchinson objectives with "(objective ml or ml-discrete)", both of
    /// which envpair cannot use either. Each refusal names what the family does accept.
    #[test]
    fn each_refusal_of_an_objective_names_only_objectives_the_family_accepts() {
        let envpair = no_jacobian_reverse::<EnvPairField>().to_string();
        assert!(
            envpair.contains("it trains by flow matching (fm, fm-align, fm-ot) only")
                && !envpair.contains("continuous-mode"),
            "{envpair}"
        );
        let envpair = no_probe_divergence::<EnvPairField>().to_string();
        assert!(
            envpair.contains("it trains by flow matching (fm, fm-align, fm-ot) only")
                && !envpair.contains("ml or ml-discrete"),
            "{envpair}"
        );
        let dense = no_jacobian_reverse::<DenseField>().to_string();
        assert!(
            dense.contains(
                "it trains by ml (the continuous-mode likelihood), ml-hutchinson or flow matching"
            ) && !dense.contains("ml-discrete,"),
            "{dense}"
        );
        for kernel in [
            no_probe_divergence::<KernelField>().to_string(),
            no_probe_divergence::<CoordKernelField>().to_string(),
        ] {
            assert!(
                kernel.contains(
                    "it trains by ml (the continuous-mode likelihood), ml-discrete or flow \
                     matching"
                ),
                "{kernel}"
            );
        }
    }
}
