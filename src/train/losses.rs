//! The training losses and their gradients, per sample and as deterministic parallel batch means.
//!
//! See the [module docs](super) for the definitions and sign conventions.

use rayon::prelude::*;

use super::discrete_ml::{DiscreteMlWorkspace, discrete_ml_sample};
use super::pool::parallel;
use super::probe::Probe;
use super::tape::Rk4Tape;
use crate::alloc;
use crate::boltzmann::Kt;
use crate::energy::{Energy, SerialEnergy};
use crate::error::{Error, Result, check_finite};
use crate::field::{Cotangent, Field, TrainableField, with_family};
use crate::flow::{Flow, sample_rng};
use crate::geometry::{Layout, MAX_DIM, remove_center_of_mass};
use crate::integrate::check_rk4_steps;
use crate::prior::Prior;
use crate::rng::{self, Stream};
use crate::species::Species;

/// Buffers of one sample's loss and gradient: the RK4 tape and state-sized scratch. One per
/// thread; nothing allocates after creation.
#[derive(Debug, Clone)]
pub struct LossWorkspace<F: TrainableField> {
    /// The field's VJP buffers and adjoint for single evaluations (flow matching).
    vjp: Option<F::Scratch>,
    adjoint: F::Adjoint,
    tape: Rk4Tape<F>,
    state: Vec<f64>,
    x_bar: Vec<f64>,
    latent: Vec<f64>,
    /// A Hutchinson probe ([`Losses::hutchinson_ml_gradient_into`]).
    probe: Vec<f64>,
    /// The exact-discrete loss's buffers, made on first use.
    discrete: Option<DiscreteMlWorkspace<F>>,
}

impl<F: TrainableField> LossWorkspace<F> {
    /// Buffers for states of length `len` (N·D) and `n_steps` RK4 steps.
    ///
    /// # Errors
    ///
    /// As [`Rk4Tape::new`].
    pub fn new(len: usize, n_steps: usize) -> Result<Self> {
        Ok(LossWorkspace {
            vjp: None,
            adjoint: F::Adjoint::default(),
            tape: Rk4Tape::new(len, n_steps)?,
            state: vec![0.0; len],
            x_bar: vec![0.0; len],
            latent: vec![0.0; len],
            probe: vec![0.0; len],
            discrete: None,
        })
    }
}

/// The target of the reverse-KL loss: an energy `U` (same particles as the flow) at temperature
/// `kT` (same energy units), so that `u = U/kT`.
///
/// The KL target appears under three names, one concept held in three ways that cannot be
/// merged without breaking a boundary: this public pair `(U, kT)` for the per-sample loss and
/// the parallel batch ([`Losses::kl_gradient_into`]); the crate's `KlEnergy`, which says *how*
/// a batch calls `U` (in parallel for an [`Energy`], in index order on the calling thread for
/// a [`SerialEnergy`]) and carries no kT, because the trainer's kT is part of its config; and
/// the C options' `KlTargetEnergy`, which *owns* the energy across calls (a shared built-in
/// energy, or a host callback with its user pointer) and becomes a `KlEnergy` only when a run
/// starts and the flow's shape turns the callback into a [`SerialEnergy`]. Holding a
/// `KlEnergy` here would put a crate-private type in a public field; holding the C callback in
/// `train/` would make training depend on the C API.
#[derive(Clone, Copy)]
pub struct KlTarget<'a> {
    /// The potential energy `U(x)`, with gradient `+∂U/∂x`.
    pub energy: &'a dyn Energy,
    /// kT in the energy's units (> 0).
    pub kt: f64,
}

impl std::fmt::Debug for KlTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KlTarget")
            .field("n_particles", &self.energy.n_particles())
            .field("dim", &self.energy.dim())
            .field("kt", &self.kt)
            .finish()
    }
}

/// Where the reverse-KL loss gets the energies of its batch from: how `U` is called, not the
/// whole target (kT comes separately; see [`KlTarget`] for how the three names relate).
#[derive(Clone, Copy)]
pub(crate) enum KlEnergy<'a> {
    /// A thread-safe Rust energy: the batch is evaluated in parallel, one sample per task.
    Parallel(&'a dyn Energy),
    /// A serial energy (a host callback): the batch is evaluated sample by sample, in index
    /// order, on the thread that called the loss, stopping at the first failing sample.
    Serial(&'a dyn SerialEnergy),
}

impl KlEnergy<'_> {
    /// Checks that the energy is for the flow's particles, of `layout` and `species` (the
    /// field's): the one home of that rule, for the trainer (before a run) and for every KL
    /// batch. See [`check_kl_species`] for the species.
    pub(crate) fn check_for(&self, layout: Layout, species: Option<&Species>) -> Result<()> {
        let (n_particles, dim, energy_species) = match self {
            KlEnergy::Parallel(e) => (e.n_particles(), e.dim(), e.species()),
            // A host callback says nothing about species: the host's responsibility.
            KlEnergy::Serial(e) => (e.n_particles(), e.dim(), None),
        };
        if n_particles != layout.n_particles || dim != layout.dim {
            return Err(Error::invalid(format!(
                "KL energy is for {n_particles} particles in {dim} dimensions, the flow for {} \
                 in {}",
                layout.n_particles, layout.dim
            )));
        }
        check_kl_species(energy_species, species)
    }
}

/// Which species a KL energy and a flow may have. An energy of identical particles (no
/// species, or one) suits any flow: a flow that tells species apart can learn a target that
/// does not. An energy that tells species apart needs a flow with exactly its species: a flow
/// of identical particles is symmetric under swaps the target is not, so it cannot represent
/// it, and a flow with other species (other counts, or particles of another species) would be
/// trained towards a system it does not describe.
fn check_kl_species(energy: Option<&Species>, flow: Option<&Species>) -> Result<()> {
    fn several(s: Option<&Species>) -> Option<&Species> {
        s.filter(|s| !s.is_single())
    }
    let (energy, flow) = match (several(energy), several(flow)) {
        (None, _) => return Ok(()),
        (Some(energy), Some(flow)) if energy == flow => return Ok(()),
        (Some(energy), flow) => (energy, flow),
    };
    let Some(flow) = flow else {
        return Err(Error::invalid(format!(
            "KL energy tells {} species apart, the flow treats all particles as one species: \
             it cannot learn the target (train a flow with the energy's species)",
            energy.n_species()
        )));
    };
    if energy.n_species() != flow.n_species() {
        return Err(Error::invalid(format!(
            "KL energy has {} species, the flow {}: the flow's species must be the energy's",
            energy.n_species(),
            flow.n_species()
        )));
    }
    let differs = energy
        .of_particle()
        .iter()
        .zip(flow.of_particle())
        .enumerate()
        .find(|(_, (a, b))| a != b);
    Err(Error::invalid(match differs {
        Some((i, (a, b))) => format!(
            "KL energy's particle {i} is of species {a}, the flow's of species {b}: the \
             flow's species must be the energy's"
        ),
        None => "KL energy's species differ from the flow's".to_owned(),
    }))
}

/// ML loss of one configuration `x` (any centre of mass; it is removed first):
/// `−log q(x) = −log ρ(z) − log|det ∂z/∂x|` with `z` from continuous-mode RK4 from t = 1 to 0.
/// If `theta_bar` is given, `∂(−log q)/∂θ` is *added* to it. In nats.
///
/// # Errors
///
/// [`Error::DimensionMismatch`] for wrong sizes, [`Error::NonFinite`] if the integration or
/// `log q` is not finite.
pub fn ml_sample<F: TrainableField>(
    field: &F,
    prior: &Prior,
    x: &[f64],
    ws: &mut LossWorkspace<F>,
    theta_bar: Option<&mut [f64]>,
) -> Result<f64> {
    if x.len() != ws.state.len() {
        return Err(Error::size("ML sample", ws.state.len(), x.len()));
    }
    let dim = prior.layout().dim;
    ws.state.copy_from_slice(x);
    remove_center_of_mass(&mut ws.state, dim);
    let log_det = ws.tape.integrate(field, &mut ws.state, false)?;
    let log_q = prior.log_density(&ws.state) + log_det;
    if !log_q.is_finite() {
        return Err(Error::non_finite("log q of a training configuration"));
    }
    if let Some(theta_bar) = theta_bar {
        // −log ρ(z) = |z − z̄|²/(2σ²) + const (the prior projects the CoM out), so its
        // gradient is (z − z̄)/σ²; the loss carries ℓ with sign −1.
        let mut mean = [0.0; MAX_DIM];
        let n = prior.layout().n_particles as f64;
        for p in ws.state.chunks_exact(dim) {
            for (m, z) in mean.iter_mut().zip(p) {
                *m += z;
            }
        }
        let inv_var = 1.0 / (prior.sigma() * prior.sigma());
        for (zb, z) in ws
            .x_bar
            .chunks_exact_mut(dim)
            .zip(ws.state.chunks_exact(dim))
        {
            for k in 0..dim {
                zb[k] = (z[k] - mean[k] / n) * inv_var;
            }
        }
        ws.tape.backward(field, &ws.x_bar, -1.0, theta_bar)?;
    }
    Ok(-log_q)
}

/// Reverse-KL loss of one CoM-free prior sample `z`: `u(F(z)) − log|det ∂F/∂z|`
/// = `U(x)/kT − ℓ_forward` with `x = F(z)` by continuous-mode RK4 from t = 0 to 1 (it omits
/// `log ρ(z)`, which does not depend on θ; adding it gives `−log w(x)`). If `theta_bar` is
/// given, the θ-gradient is *added* to it, through `+∂U/∂x / kT` at x and through ℓ.
///
/// # Errors
///
/// [`Error::NonFinite`] if `U(F(z))` is not finite (e.g. `+∞` for two Lennard-Jones particles
/// the flow placed on top of each other: training does not clamp it, it stops and says so),
/// if its gradient is not finite, or if the integration fails; [`Error::DimensionMismatch`] for
/// wrong sizes.
pub fn kl_sample<F: TrainableField>(
    field: &F,
    target: KlTarget<'_>,
    z: &[f64],
    ws: &mut LossWorkspace<F>,
    theta_bar: Option<&mut [f64]>,
) -> Result<f64> {
    if z.len() != ws.state.len() {
        return Err(Error::size("KL sample", ws.state.len(), z.len()));
    }
    ws.state.copy_from_slice(z);
    let log_det = ws.tape.integrate(field, &mut ws.state, true)?;
    let u = match theta_bar {
        Some(_) => target.energy.energy_gradient_into(&ws.state, &mut ws.x_bar),
        None => target.energy.energy(&ws.state),
    };
    let x_bar = theta_bar.is_some().then_some(&mut ws.x_bar[..]);
    let loss = kl_value(u, target.kt, log_det, x_bar)?;
    if let Some(theta_bar) = theta_bar {
        ws.tape.backward(field, &ws.x_bar, -1.0, theta_bar)?;
    }
    Ok(loss)
}

/// Conditional flow-matching loss of one pair: `|v(x_t, t) − (x1 − x0)|²` with
/// `x_t = (1 − t)·x0 + t·x1`, the squared error of the field against the straight path's
/// velocity (summed over the N·D coordinates). If `theta_bar` is given, its gradient is *added*
/// to it (one vector–Jacobian product with cotangent `2(v − u)` and none for the divergence).
/// No integration: flow matching trains the field directly.
///
/// # Errors
///
/// [`Error::DimensionMismatch`] for wrong sizes; [`Error::NonFinite`] for a non-finite loss.
pub fn flow_matching_sample<F: TrainableField>(
    field: &F,
    x0: &[f64],
    x1: &[f64],
    t: f64,
    ws: &mut LossWorkspace<F>,
    theta_bar: Option<&mut [f64]>,
) -> Result<f64> {
    let len = ws.state.len();
    for (what, found) in [
        ("flow matching x0", x0.len()),
        ("flow matching x1", x1.len()),
    ] {
        if found != len {
            return Err(Error::size(what, len, found));
        }
    }
    for ((xt, a), b) in ws.state.iter_mut().zip(x0).zip(x1) {
        *xt = (1.0 - t) * a + t * b;
    }
    let point = field.time_point(t);
    let v = &mut ws.latent;
    field.velocity_at_into(&ws.state, &point, v);
    let mut loss = 0.0;
    for ((r, v), (a, b)) in ws.x_bar.iter_mut().zip(v.iter()).zip(x0.iter().zip(x1)) {
        let residual = v - (b - a);
        loss += residual * residual;
        *r = 2.0 * residual;
    }
    if !loss.is_finite() {
        return Err(Error::non_finite(format!("flow-matching loss at t = {t}")));
    }
    if let Some(theta_bar) = theta_bar {
        let scratch = ws.vjp.get_or_insert_with(|| field.new_scratch());
        field.adjoint_reset(&mut ws.adjoint, 1);
        // x̄ is not needed: the latent buffer takes it (v is no longer used).
        ws.latent.fill(0.0);
        let cotangent = Cotangent {
            v: &ws.x_bar,
            div: 0.0,
        };
        field.vjp_at(
            &ws.state,
            &point,
            0,
            cotangent,
            &mut ws.latent,
            &mut ws.adjoint,
            scratch,
        );
        field.adjoint_finish(std::slice::from_ref(&point), &mut ws.adjoint, theta_bar);
    }
    Ok(loss)
}

/// The KL loss `U/kT − ℓ` of a flow sample from its energy `u` and log-determinant `log_det`;
/// with `x_bar` (the energy gradient `+∂U/∂x` of the sample) it becomes the cotangent of the
/// sample, `+∂U/∂x / kT`, in place. Shared by [`kl_sample`] and the batch so that both do the
/// same arithmetic.
fn kl_value(u: f64, kt: f64, log_det: f64, x_bar: Option<&mut [f64]>) -> Result<f64> {
    if !u.is_finite() {
        // +∞ is what overlapping particles give; NaN and −∞ are never energies.
        let why = if u == f64::INFINITY {
            "overlapping particles?"
        } else {
            "not an energy"
        };
        return Err(Error::non_finite(format!(
            "energy U(F(z)) = {u} of a flow sample in the KL loss ({why}); the KL gradient is \
             undefined there"
        )));
    }
    let loss = u / kt - log_det;
    // A finite energy can still give an infinite loss (U = −1e308 at kT = 1e-10, say).
    if !loss.is_finite() {
        return Err(Error::non_finite(format!(
            "KL loss U/kT − log|det| = {loss} of a flow sample (U = {u:e}, kT = {kt:e}) is not \
             finite"
        )));
    }
    if let Some(x_bar) = x_bar {
        let inv_kt = 1.0 / kt;
        x_bar.iter_mut().for_each(|g| *g *= inv_kt);
        check_finite(x_bar, "energy gradient of a flow sample in the KL loss")?;
    }
    Ok(loss)
}

/// What the forward phase of a KL batch keeps of one sample until its energy is known.
struct KlForward {
    /// `x = F(z)`.
    x: Vec<f64>,
    /// `log|det ∂F/∂z|`.
    log_det: f64,
    /// The RK4 trajectory for the reverse pass (empty without gradient).
    trajectory: Vec<f64>,
}

/// Names the prior sample in the message of an error of the KL loss.
fn name_sample(error: Error, seed: u64, index: u64) -> Error {
    let name = |what: String| format!("{what} (prior sample seed {seed}, index {index})");
    match error {
        Error::NonFinite { what } => Error::NonFinite { what: name(what) },
        Error::Callback { what } => Error::Callback { what: name(what) },
        other => other,
    }
}

/// Batch losses of one flow with continuous-mode RK4 of `n_steps` steps. The flow's own
/// integrator (method and density mode) is not used: training differentiates this map.
///
/// Batches run in parallel over samples; each sample's loss and gradient are computed
/// sequentially by one thread and then summed in index order, so results are bit-identical
/// for any number of threads.
#[derive(Debug, Clone, Copy)]
pub struct Losses<'a> {
    flow: &'a Flow,
    field: &'a Field,
    prior: &'a Prior,
    n_steps: usize,
}

impl<'a> Losses<'a> {
    /// The losses of `flow`'s prior and field under continuous RK4 with `n_steps` steps.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `n_steps` is outside `1..=100000`.
    pub fn new(flow: &'a Flow, n_steps: usize) -> Result<Self> {
        check_rk4_steps(n_steps)?;
        Ok(Losses {
            flow,
            field: flow.field(),
            prior: flow.prior(),
            n_steps,
        })
    }

    /// Number of trainable parameters (length of gradients).
    #[must_use]
    pub fn n_params(&self) -> usize {
        self.field.params().len()
    }

    /// Mean ML loss (NLL, nats) of the configurations in `x` (n·N·D, any centres of mass),
    /// without gradient. Equal to the mean of `−Flow::log_density` in continuous RK4 mode.
    ///
    /// # Errors
    ///
    /// As [`Losses::ml_gradient_into`].
    pub fn nll(&self, x: &[f64]) -> Result<f64> {
        self.ml_batch(x, None)
    }

    /// Mean ML loss of the configurations in `x`, with its mean gradient written to `gradient`
    /// (overwritten, length [`Losses::n_params`]).
    ///
    /// # Errors
    ///
    /// [`Error::DimensionMismatch`] if `x` is empty or not whole configurations, or `gradient`
    /// has the wrong length; [`Error::NonFinite`] for non-finite input or results. The first
    /// failing sample in index order decides the error. `gradient` is unspecified on error.
    pub fn ml_gradient_into(&self, x: &[f64], gradient: &mut [f64]) -> Result<f64> {
        self.ml_batch(x, Some(gradient))
    }

    /// The ML batch for whatever family the field is.
    fn ml_batch(&self, x: &[f64], gradient: Option<&mut [f64]>) -> Result<f64> {
        let n = self.check_data(x)?;
        let len = self.prior.layout().len();
        with_family!(self.field, field => self.batch(field, n, gradient, |i, ws, g| {
            ml_sample(field, self.prior, &x[i * len..(i + 1) * len], ws, g)
        }))
    }

    /// Mean ML loss of the configurations in `x` with the divergence replaced by its Hutchinson
    /// estimate `εᵀ(∂v/∂x)ε` (one probe per configuration, the same at every stage: the paper's
    /// training of its non-equivariant baseline, §7.3), with its mean gradient written to
    /// `gradient`. Configuration `i` draws its probe from stream
    /// [`Stream::TrainingProbe`]`(first_index + i)` of `seed`, so results are bit-identical for
    /// any thread count. The path does not depend on the probe and `ℓ` is linear in the
    /// per-stage estimates, so the loss is an unbiased estimate of the continuous-mode NLL
    /// ([`Losses::nll`]) over probes: a training signal, not a density.
    ///
    /// # Errors
    ///
    /// As [`Losses::ml_gradient_into`]; [`Error::InvalidArgument`] for a field family without
    /// the estimate ([`crate::field::TrainableField::PROBE_DIVERGENCE`]: the dense baseline has
    /// it).
    pub fn hutchinson_ml_gradient_into(
        &self,
        x: &[f64],
        probe: Probe,
        seed: u64,
        first_index: u64,
        gradient: &mut [f64],
    ) -> Result<f64> {
        let n = self.check_data(x)?;
        let len = self.prior.layout().len();
        with_family!(self.field, field => self.batch(field, n, Some(gradient), |i, ws, g| {
            let index = first_index.wrapping_add(i as u64);
            probe.draw_into(&mut rng::stream(seed, Stream::TrainingProbe(index)), &mut ws.probe);
            ws.tape.set_probe(Some(&ws.probe))?;
            let loss = ml_sample(field, self.prior, &x[i * len..(i + 1) * len], ws, g);
            ws.tape.set_probe(None)?;
            loss
        }))
    }

    /// Mean exact-discrete ML loss (NLL, nats) of the configurations in `x`: `−log q` of the
    /// RK4 map of `n_steps` steps, the density a model with that grid reports in its
    /// exact-discrete mode (of the field itself; a model may integrate a tabulated form of it
    /// that agrees to ~1e−6). See [`super::discrete_ml`]. A configuration the map cannot pull
    /// back (a step folds there) contributes its continuous-mode loss instead
    /// ([`ml_sample`]), so that training goes on; the trainer never keeps parameters whose
    /// map fails on the validation set.
    ///
    /// # Errors
    ///
    /// As [`Losses::discrete_ml_gradient_into`].
    pub fn discrete_nll(&self, x: &[f64]) -> Result<f64> {
        self.discrete_ml_batch(x, None)
    }

    /// Mean exact-discrete ML loss of the configurations in `x`, with its mean gradient
    /// written to `gradient` (overwritten, length [`Losses::n_params`]).
    ///
    /// # Errors
    ///
    /// As [`Losses::ml_gradient_into`]; also [`Error::InvalidArgument`] for a field family
    /// without the Jacobian's reverse pass, and what the inverse of the map reports for a
    /// configuration it cannot pull back. `gradient` is unspecified on error.
    pub fn discrete_ml_gradient_into(&self, x: &[f64], gradient: &mut [f64]) -> Result<f64> {
        self.discrete_ml_batch(x, Some(gradient))
    }

    fn discrete_ml_batch(&self, x: &[f64], gradient: Option<&mut [f64]>) -> Result<f64> {
        let n = self.check_data(x)?;
        let len = self.prior.layout().len();
        let n_steps = self.n_steps;
        with_family!(self.field, field => self.batch(field, n, gradient, |i, ws, g| {
            let mut discrete = match ws.discrete.take() {
                Some(d) => d,
                None => DiscreteMlWorkspace::new(len, n_steps)?,
            };
            let xi = &x[i * len..(i + 1) * len];
            let mut g = g;
            let loss = discrete_ml_sample(field, self.prior, xi, &mut discrete, g.as_deref_mut());
            ws.discrete = Some(discrete);
            match loss {
                // Where the map cannot pull x back (a step folds there, so the exact-discrete
                // density is not defined by one preimage), the continuous-mode loss, the
                // density of the flow the steps approximate, stands in: it still pulls the
                // field towards the data instead of stopping the run. Nothing was added to
                // the gradient by the failed attempt (it adds only at its end).
                Err(Error::NotInvertible { .. } | Error::NotConverged { .. }) => {
                    ml_sample(field, self.prior, xi, ws, g)
                }
                other => other,
            }
        }))
    }

    /// Mean conditional flow-matching loss of the pairs `(x0_i, x1_i)` at times `t_i`
    /// (`x0`, `x1`: n·N·D, `t`: n, in [0, 1]) and, if `gradient` is given, its mean gradient
    /// (overwritten). See [`flow_matching_sample`]; pairs are usually prior samples and data
    /// aligned by [`crate::train::pairing::equivariant_ot_pairs_into`].
    ///
    /// # Errors
    ///
    /// [`Error::DimensionMismatch`] for inconsistent sizes; [`Error::InvalidArgument`] for a
    /// time outside [0, 1]; as [`flow_matching_sample`] otherwise.
    pub fn flow_matching_gradient_into(
        &self,
        x0: &[f64],
        x1: &[f64],
        t: &[f64],
        gradient: Option<&mut [f64]>,
    ) -> Result<f64> {
        let n = self.check_data(x1)?;
        let len = self.prior.layout().len();
        if x0.len() != x1.len() || t.len() != n {
            return Err(Error::size("flow matching pairs and times", n, t.len()));
        }
        check_finite(x0, "flow matching x0")?;
        if let Some(bad) = t.iter().find(|t| !(0.0..=1.0).contains(*t)) {
            return Err(Error::invalid(format!(
                "flow matching time {bad} is outside [0, 1]"
            )));
        }
        with_family!(self.field, field => self.batch(field, n, gradient, |i, ws, g| {
            let s = i * len..(i + 1) * len;
            flow_matching_sample(field, &x0[s.clone()], &x1[s], t[i], ws, g)
        }))
    }

    /// Mean reverse-KL loss of `n` prior samples and its mean gradient (overwritten). Sample
    /// `i` draws its latent from [`sample_rng`]`(seed, first_index + i)` with
    /// [`Prior::sample_into`], exactly as [`Flow::sample_into`] draws sample `first_index + i`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for `n = 0`, a non-positive or non-finite `kT`, or an energy
    /// for other particles; otherwise as [`kl_sample`] (the error names the sample index).
    pub fn kl_gradient_into(
        &self,
        target: KlTarget<'_>,
        seed: u64,
        first_index: u64,
        n: usize,
        gradient: &mut [f64],
    ) -> Result<f64> {
        let energy = KlEnergy::Parallel(target.energy);
        self.kl_batch(energy, target.kt, seed, first_index, n, Some(gradient))
    }

    /// As [`Losses::kl_gradient_into`], with an energy that is evaluated sample by sample, in
    /// index order, on the calling thread (never concurrently): a host callback that is not
    /// thread-safe. The integrations and reverse passes still run in parallel, and the result
    /// is bit-identical to [`Losses::kl_gradient_into`] with an [`Energy`] that computes the
    /// same numbers.
    ///
    /// # Errors
    ///
    /// As [`Losses::kl_gradient_into`], plus the errors `energy` returns (the first failing
    /// sample stops the batch; later samples are not evaluated).
    pub fn kl_serial_gradient_into(
        &self,
        energy: &dyn SerialEnergy,
        kt: f64,
        seed: u64,
        first_index: u64,
        n: usize,
        gradient: &mut [f64],
    ) -> Result<f64> {
        let energy = KlEnergy::Serial(energy);
        self.kl_batch(energy, kt, seed, first_index, n, Some(gradient))
    }

    /// The mean reverse-KL loss alone (see [`Losses::kl_gradient_into`]).
    ///
    /// # Errors
    ///
    /// As [`Losses::kl_gradient_into`].
    pub fn kl(&self, target: KlTarget<'_>, seed: u64, first_index: u64, n: usize) -> Result<f64> {
        let energy = KlEnergy::Parallel(target.energy);
        self.kl_batch(energy, target.kt, seed, first_index, n, None)
    }

    /// The KL batch in three phases, so that a serial energy is only ever called from this
    /// thread: (a) the forward integrations, in parallel, keeping each sample's trajectory;
    /// (b) the energies and gradients of the whole batch, in parallel for an [`Energy`] and in
    /// index order on this thread for a [`SerialEnergy`]; (c) the reverse passes, in parallel.
    /// Each sample's arithmetic is that of [`kl_sample`], and the per-sample gradients are
    /// reduced in index order, so results are bit-identical for any number of threads and
    /// either kind of energy. The first failing sample in index order decides the error.
    ///
    /// Memory: the trajectories of the batch, `n·4·n_steps·N·D` numbers.
    pub(crate) fn kl_batch(
        &self,
        energy: KlEnergy<'_>,
        kt: f64,
        seed: u64,
        first_index: u64,
        n: usize,
        gradient: Option<&mut [f64]>,
    ) -> Result<f64> {
        with_family!(self.field, field => {
            self.kl_batch_of(field, energy, kt, seed, first_index, n, gradient)
        })
    }

    /// [`Losses::kl_batch`] for a field of family `F`.
    #[allow(clippy::too_many_arguments)] // kl_batch's arguments and the concrete field
    fn kl_batch_of<F: TrainableField>(
        &self,
        field: &F,
        energy: KlEnergy<'_>,
        kt: f64,
        seed: u64,
        first_index: u64,
        n: usize,
        gradient: Option<&mut [f64]>,
    ) -> Result<f64> {
        Kt::new(kt)?;
        energy.check_for(self.prior.layout(), field.species())?;
        if n == 0 {
            return Err(Error::invalid("KL loss needs at least one prior sample"));
        }
        let p = self.n_params();
        if let Some(g) = &gradient
            && g.len() != p
        {
            return Err(Error::size("loss gradient", p, g.len()));
        }
        let with_gradient = gradient.is_some();
        let len = self.prior.layout().len();
        let index = |i: usize| first_index.wrapping_add(i as u64);
        let init = || LossWorkspace::<F>::new(len, self.n_steps);

        // (a) x = F(z) and log|det ∂F/∂z| of every sample, with the trajectory if needed. The
        // sample count is the caller's: every buffer sized by it is allocated fallibly, on the
        // calling thread before the samples run (the trajectories, one per sample, inside).
        // The largest, the per-sample gradients, first: a refusal costs no integration.
        let mut per_sample = alloc::zeros(
            if with_gradient {
                n.checked_mul(p)
            } else {
                Some(0)
            },
            &format!("the per-sample gradients of {n} KL samples ({p} parameters each)"),
        )?;
        let mut forward: Vec<Result<KlForward>> =
            alloc::with_capacity(Some(n), "the forward passes of the KL samples")?;
        parallel(|| {
            forward.par_extend((0..n).into_par_iter().map_init(init, |ws, i| {
                let ws = ws.as_mut().map_err(|e| e.clone())?;
                self.flow
                    .draw_latent_into(&mut sample_rng(seed, index(i)), &mut ws.latent);
                ws.state.copy_from_slice(&ws.latent);
                let log_det = ws.tape.integrate(field, &mut ws.state, true)?;
                let trajectory = if with_gradient {
                    let t = ws.tape.trajectory()?;
                    let mut kept = alloc::with_capacity(Some(t.len()), "a KL sample's trajectory")?;
                    kept.extend_from_slice(t);
                    kept
                } else {
                    Vec::new()
                };
                let mut x = alloc::with_capacity(Some(len), "a KL sample")?;
                x.extend_from_slice(&ws.state);
                Ok(KlForward {
                    x,
                    log_det,
                    trajectory,
                })
            }));
        });
        // Energies are needed only up to the first sample whose integration failed: its error
        // is reported unless an earlier sample fails in (b).
        let n_ok = forward.iter().position(Result::is_err).unwrap_or(n);
        let mut samples: Vec<&KlForward> =
            alloc::with_capacity(Some(n_ok), "the KL samples of a batch")?;
        samples.extend(forward[..n_ok].iter().flatten());

        // (b) U and +∂U/∂x / kT of every sample, and its loss.
        let mut x_bar = alloc::zeros(
            if with_gradient {
                n_ok.checked_mul(len)
            } else {
                Some(0)
            },
            "the energy gradients of the KL samples",
        )?;
        let mut losses = alloc::zeros(Some(n_ok), "the KL losses of a batch")?;
        {
            // Each sample's cotangent, none without a gradient.
            let mut cotangents: Vec<Option<&mut [f64]>> =
                alloc::with_capacity(Some(n_ok), "the KL samples' cotangents")?;
            if with_gradient {
                cotangents.extend(x_bar.chunks_exact_mut(len).map(Some));
            } else {
                cotangents.extend((0..n_ok).map(|_| None));
            }
            let loss_of = |i: usize, u: f64, x_bar: Option<&mut [f64]>| {
                kl_value(u, kt, samples[i].log_det, x_bar)
                    .map_err(|e| name_sample(e, seed, index(i)))
            };
            match energy {
                KlEnergy::Parallel(energy) => {
                    let mut u = alloc::zeros(Some(n_ok), "the energies of the KL samples")?;
                    parallel(|| {
                        u.par_iter_mut()
                            .zip(samples.par_iter())
                            .zip(cotangents.par_iter_mut())
                            .for_each(|((u, s), g)| {
                                *u = match g {
                                    Some(g) => energy.energy_gradient_into(&s.x, g),
                                    None => energy.energy(&s.x),
                                };
                            });
                    });
                    for (i, g) in cotangents.into_iter().enumerate() {
                        losses[i] = loss_of(i, u[i], g)?;
                    }
                }
                KlEnergy::Serial(energy) => {
                    // A serial energy always writes a gradient; without one it goes here.
                    let mut scratch = vec![0.0; if with_gradient { 0 } else { len }];
                    for (i, mut g) in cotangents.into_iter().enumerate() {
                        let gradient = g.as_deref_mut().unwrap_or(&mut scratch);
                        let u = energy
                            .energy_gradient_into(&samples[i].x, gradient)
                            .map_err(|e| name_sample(e, seed, index(i)))?;
                        losses[i] = loss_of(i, u, g)?;
                    }
                }
            }
        }
        if let Some(Err(e)) = forward.get(n_ok) {
            return Err(name_sample(e.clone(), seed, index(n_ok)));
        }

        // (c) the reverse passes, reduced in index order.
        if let Some(gradient) = gradient {
            let mut results = outcomes(n)?;
            parallel(|| {
                results.par_extend(
                    per_sample
                        .par_chunks_mut(p)
                        .zip(x_bar.par_chunks(len))
                        .zip(samples.par_iter())
                        .map_init(init, |ws, ((g, x_bar), s)| {
                            let ws = ws.as_mut().map_err(|e| e.clone())?;
                            ws.tape.restore(true, &s.trajectory)?;
                            ws.tape.backward(field, x_bar, -1.0, g)?;
                            Ok(())
                        }),
                );
            });
            first_failure(results)?;
            return batch_mean(&losses, Some((&per_sample, gradient)));
        }
        batch_mean(&losses, None)
    }

    fn check_data(&self, x: &[f64]) -> Result<usize> {
        check_configurations(x, self.prior.layout().len(), "training configurations")
    }

    /// Runs `f(i, ws, gradient_i)` for samples `0..n` in parallel; returns the mean loss and
    /// writes the mean gradient, both reduced in index order.
    fn batch<F, G>(&self, _field: &F, n: usize, gradient: Option<&mut [f64]>, f: G) -> Result<f64>
    where
        F: TrainableField,
        G: Fn(usize, &mut LossWorkspace<F>, Option<&mut [f64]>) -> Result<f64> + Sync,
    {
        let p = self.n_params();
        let len = self.prior.layout().len();
        let n_steps = self.n_steps;
        let init = || LossWorkspace::<F>::new(len, n_steps);
        if let Some(gradient) = &gradient
            && gradient.len() != p
        {
            return Err(Error::size("loss gradient", p, gradient.len()));
        }
        // The batch is the caller's (up to the whole training set): every buffer sized by it
        // is allocated fallibly, here on the calling thread, before any sample runs.
        let mut losses = alloc::zeros(Some(n), "the per-sample losses of a batch")?;
        let mut results = outcomes(n)?;
        if let Some(gradient) = gradient {
            let mut per_sample = alloc::zeros(
                n.checked_mul(p),
                &format!("the per-sample gradients of a batch of {n} ({p} parameters each)"),
            )?;
            parallel(|| {
                results.par_extend(
                    per_sample
                        .par_chunks_mut(p)
                        .zip(losses.par_iter_mut())
                        .enumerate()
                        .map_init(init, |ws, (i, (g, l))| {
                            let ws = ws.as_mut().map_err(|e| e.clone())?;
                            *l = f(i, ws, Some(g))?;
                            Ok(())
                        }),
                );
            });
            first_failure(results)?;
            batch_mean(&losses, Some((&per_sample, gradient)))
        } else {
            parallel(|| {
                results.par_extend(losses.par_iter_mut().enumerate().map_init(
                    init,
                    |ws, (i, l)| {
                        let ws = ws.as_mut().map_err(|e| e.clone())?;
                        *l = f(i, ws, None)?;
                        Ok(())
                    },
                ));
            });
            first_failure(results)?;
            batch_mean(&losses, None)
        }
    }
}

/// Room for the outcomes of `n` samples, allocated fallibly (`n` is the caller's batch).
fn outcomes(n: usize) -> Result<Vec<Result<()>>> {
    alloc::with_capacity(Some(n), "the per-sample outcomes of a batch")
}

/// The first failure among per-sample outcomes, in index order.
fn first_failure(outcomes: Vec<Result<()>>) -> Result<()> {
    outcomes.into_iter().find(Result::is_err).unwrap_or(Ok(()))
}

/// Number of configurations of length `len` in `x`, after checking it holds whole, finite
/// configurations: the rule for every batch of data a loss or the trainer is given.
///
/// # Errors
///
/// [`Error::DimensionMismatch`] for an empty or ragged `x`; [`Error::NonFinite`] naming `what`.
pub(crate) fn check_configurations(x: &[f64], len: usize, what: &str) -> Result<usize> {
    if x.is_empty() || !x.len().is_multiple_of(len) {
        return Err(Error::size(
            format!("{what} (a positive multiple of N·D)"),
            len * (x.len() / len).max(1),
            x.len(),
        ));
    }
    check_finite(x, what)?;
    Ok(x.len() / len)
}

/// The mean of a batch's per-sample losses and, with `gradient = (per_sample, out)`, the mean
/// of its per-sample gradients written into `out`, only if both are finite. Each per-sample
/// value is finite (checked where it is made), but their sum can still overflow; a loss or
/// gradient of ±∞ must not reach the optimiser, and a failed batch leaves `out` as it was.
fn batch_mean(losses: &[f64], gradient: Option<(&[f64], &mut [f64])>) -> Result<f64> {
    let mean = losses.iter().sum::<f64>() / losses.len() as f64;
    if !mean.is_finite() {
        return Err(Error::non_finite(format!(
            "the mean loss of a batch of {} samples is {mean}: their finite losses overflow \
             when summed",
            losses.len()
        )));
    }
    if let Some((per_sample, out)) = gradient {
        let mut mean_gradient = vec![0.0; out.len()];
        reduce_mean(per_sample, &mut mean_gradient);
        check_finite(
            &mean_gradient,
            "the batch's mean loss gradient (finite per-sample gradients that overflow when summed)",
        )?;
        out.copy_from_slice(&mean_gradient);
    }
    Ok(mean)
}

/// Writes the mean of the per-sample gradients (`gradient.len()` numbers each) into
/// `gradient`, summed in index order.
fn reduce_mean(per_sample: &[f64], gradient: &mut [f64]) {
    let p = gradient.len();
    gradient.fill(0.0);
    for g in per_sample.chunks_exact(p) {
        for (a, b) in gradient.iter_mut().zip(g) {
            *a += b;
        }
    }
    let inv = 1.0 / (per_sample.len() / p) as f64;
    gradient.iter_mut().for_each(|a| *a *= inv);
}

#[cfg(test)]
mod tests {
    use super::kl_value;

    /// Each way a sample's KL loss cannot be a number is named: +∞ (overlapping particles), an
    /// energy that is none (−∞, NaN), and a finite energy whose U/kT overflows.
    #[test]
    fn a_sample_kl_loss_that_is_not_a_number_is_named() {
        let message = |u: f64, kt: f64| kl_value(u, kt, 0.5, None).unwrap_err().to_string();
        assert!(message(f64::INFINITY, 1.0).contains("overlapping particles"));
        for u in [f64::NEG_INFINITY, f64::NAN] {
            let m = message(u, 1.0);
            assert!(
                m.contains("not an energy") && !m.contains("overlapping"),
                "{m}"
            );
        }
        let m = message(-1e308, 1e-10);
        assert!(
            m.contains("is not finite") && m.contains("kT = 1e-10"),
            "{m}"
        );
        assert_eq!(kl_value(2.0, 0.5, 0.5, None).unwrap(), 3.5);
    }
}
