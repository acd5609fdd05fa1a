//! The training losses and their gradients, per sample and as deterministic parallel batch means.
//!
//! See the [module docs](super) for the definitions and sign conventions.

use rayon::prelude::*;

use super::reverse::{Rk4Tape, check_n_steps};
use crate::energy::Energy;
use crate::error::{Error, Result, check_finite};
use crate::field::KernelField;
use crate::flow::{Flow, sample_rng};
use crate::geometry::{MAX_DIM, remove_center_of_mass};
use crate::prior::Prior;

/// Buffers of one sample's loss and gradient: the RK4 tape and state-sized scratch. One per
/// thread; nothing allocates after creation.
#[derive(Debug, Clone)]
pub struct LossWorkspace {
    tape: Rk4Tape,
    state: Vec<f64>,
    x_bar: Vec<f64>,
    latent: Vec<f64>,
}

impl LossWorkspace {
    /// Buffers for states of length `len` (N·D) and `n_steps` RK4 steps.
    ///
    /// # Errors
    ///
    /// As [`Rk4Tape::new`].
    pub fn new(len: usize, n_steps: usize) -> Result<Self> {
        Ok(LossWorkspace {
            tape: Rk4Tape::new(len, n_steps)?,
            state: vec![0.0; len],
            x_bar: vec![0.0; len],
            latent: vec![0.0; len],
        })
    }
}

/// The target of the reverse-KL loss: an energy `U` (same particles as the flow) at temperature
/// `kT` (same energy units), so that `u = U/kT`.
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

/// ML loss of one configuration `x` (any centre of mass; it is removed first):
/// `−log q(x) = −log ρ(z) − log|det ∂z/∂x|` with `z` from continuous-mode RK4 from t = 1 to 0.
/// If `theta_bar` is given, `∂(−log q)/∂θ` is *added* to it. In nats.
///
/// # Errors
///
/// [`Error::DimensionMismatch`] for wrong sizes, [`Error::NonFinite`] if the integration or
/// `log q` is not finite.
pub fn ml_sample(
    field: &KernelField,
    prior: &Prior,
    x: &[f64],
    ws: &mut LossWorkspace,
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
pub fn kl_sample(
    field: &KernelField,
    target: KlTarget<'_>,
    z: &[f64],
    ws: &mut LossWorkspace,
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
    if !u.is_finite() {
        return Err(Error::non_finite(format!(
            "energy U(F(z)) = {u} of a flow sample in the KL loss (overlapping particles?); \
             the KL gradient is undefined there"
        )));
    }
    let loss = u / target.kt - log_det;
    if let Some(theta_bar) = theta_bar {
        let inv_kt = 1.0 / target.kt;
        ws.x_bar.iter_mut().for_each(|g| *g *= inv_kt);
        check_finite(&ws.x_bar, "energy gradient of a flow sample in the KL loss")?;
        ws.tape.backward(field, &ws.x_bar, -1.0, theta_bar)?;
    }
    Ok(loss)
}

/// Batch losses of one flow with continuous-mode RK4 of `n_steps` steps. The flow's own
/// integrator (method and density mode) is not used: training differentiates this map.
///
/// Batches run in parallel over samples; each sample's loss and gradient are computed
/// sequentially by one thread and then summed in index order, so results are bit-identical
/// for any number of threads.
#[derive(Debug, Clone, Copy)]
pub struct Losses<'a> {
    field: &'a KernelField,
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
        check_n_steps(n_steps)?;
        Ok(Losses {
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
        let n = self.check_data(x)?;
        let len = self.prior.layout().len();
        self.batch(n, None, |i, ws, g| {
            ml_sample(self.field, self.prior, &x[i * len..(i + 1) * len], ws, g)
        })
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
        let n = self.check_data(x)?;
        let len = self.prior.layout().len();
        self.batch(n, Some(gradient), |i, ws, g| {
            ml_sample(self.field, self.prior, &x[i * len..(i + 1) * len], ws, g)
        })
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
        self.kl_batch(target, seed, first_index, n, Some(gradient))
    }

    /// The mean reverse-KL loss alone (see [`Losses::kl_gradient_into`]).
    ///
    /// # Errors
    ///
    /// As [`Losses::kl_gradient_into`].
    pub fn kl(&self, target: KlTarget<'_>, seed: u64, first_index: u64, n: usize) -> Result<f64> {
        self.kl_batch(target, seed, first_index, n, None)
    }

    fn kl_batch(
        &self,
        target: KlTarget<'_>,
        seed: u64,
        first_index: u64,
        n: usize,
        gradient: Option<&mut [f64]>,
    ) -> Result<f64> {
        check_target(self.prior, target)?;
        if n == 0 {
            return Err(Error::invalid("KL loss needs at least one prior sample"));
        }
        self.batch(n, gradient, |i, ws, g| {
            let index = first_index.wrapping_add(i as u64);
            // The latent buffer is taken out of the workspace so that it can be read while the
            // workspace is borrowed mutably, and put back afterwards.
            let mut z = std::mem::take(&mut ws.latent);
            self.prior.sample_into(&mut sample_rng(seed, index), &mut z);
            let result = kl_sample(self.field, target, &z, ws, g);
            ws.latent = z;
            result.map_err(|e| match e {
                Error::NonFinite { what } => Error::NonFinite {
                    what: format!("{what} (prior sample seed {seed}, index {index})"),
                },
                other => other,
            })
        })
    }

    fn check_data(&self, x: &[f64]) -> Result<usize> {
        let len = self.prior.layout().len();
        if x.is_empty() || x.len() % len != 0 {
            return Err(Error::size(
                "training configurations (a positive multiple of N·D)",
                len * (x.len() / len).max(1),
                x.len(),
            ));
        }
        check_finite(x, "training configurations")?;
        Ok(x.len() / len)
    }

    /// Runs `f(i, ws, gradient_i)` for samples `0..n` in parallel; returns the mean loss and
    /// writes the mean gradient, both reduced in index order.
    fn batch<F>(&self, n: usize, gradient: Option<&mut [f64]>, f: F) -> Result<f64>
    where
        F: Fn(usize, &mut LossWorkspace, Option<&mut [f64]>) -> Result<f64> + Sync,
    {
        let p = self.n_params();
        let len = self.prior.layout().len();
        let n_steps = self.n_steps;
        let init = || LossWorkspace::new(len, n_steps);
        let mut losses = vec![0.0; n];
        let results: Vec<Result<()>> = if let Some(gradient) = gradient {
            if gradient.len() != p {
                return Err(Error::size("loss gradient", p, gradient.len()));
            }
            let mut per_sample = vec![0.0; n * p];
            let results = per_sample
                .par_chunks_mut(p)
                .zip(losses.par_iter_mut())
                .enumerate()
                .map_init(init, |ws, (i, (g, l))| {
                    let ws = ws.as_mut().map_err(|e| e.clone())?;
                    *l = f(i, ws, Some(g))?;
                    Ok(())
                })
                .collect();
            gradient.fill(0.0);
            for g in per_sample.chunks_exact(p) {
                for (a, b) in gradient.iter_mut().zip(g) {
                    *a += b;
                }
            }
            let inv = 1.0 / n as f64;
            gradient.iter_mut().for_each(|a| *a *= inv);
            results
        } else {
            losses
                .par_iter_mut()
                .enumerate()
                .map_init(init, |ws, (i, l)| {
                    let ws = ws.as_mut().map_err(|e| e.clone())?;
                    *l = f(i, ws, None)?;
                    Ok(())
                })
                .collect()
        };
        results.into_iter().collect::<Result<Vec<()>>>()?;
        Ok(losses.iter().sum::<f64>() / n as f64)
    }
}

fn check_target(prior: &Prior, target: KlTarget<'_>) -> Result<()> {
    if !(target.kt.is_finite() && target.kt > 0.0) {
        return Err(Error::invalid(format!(
            "kT must be positive and finite, got {}",
            target.kt
        )));
    }
    let layout = prior.layout();
    if target.energy.n_particles() != layout.n_particles || target.energy.dim() != layout.dim {
        return Err(Error::invalid(format!(
            "KL energy is for {} particles in {} dimensions, the flow for {} in {}",
            target.energy.n_particles(),
            target.energy.dim(),
            layout.n_particles,
            layout.dim
        )));
    }
    Ok(())
}
