//! The continuous adjoint method (Chen et al., "Neural ordinary differential equations", 2018):
//! the gradient of the continuous-mode NLL from an adjoint ODE integrated by adaptive
//! Dormand–Prince, *optimise-then-discretise* (OTD). The trainer differentiates the fixed RK4
//! grid itself instead (*discretise-then-optimise*, DTO, [`super::tape`]); the paper (§5, Fig. 4)
//! compares the two, and `eqflow repro dto-otd` reruns that comparison with this module.
//!
//! In reversed time `s = 1 − t` the data point is the fixed initial condition,
//! `dx/ds = −v(x, 1 − s)`, and the loss is a terminal cost plus a running cost:
//! `L = −log ρ(x(s = 1)) + ∫₀¹ div v(x(s), 1 − s) ds`. Pontryagin's adjoint `λ(s) = ∂L/∂x(s)`
//! has `λ(1) = ∇(−log ρ)(z) = (z − z̄)/σ²` and `dλ/ds = (∂v/∂x)ᵀλ − ∇div v`, and
//! `dL/dθ = ∫₀¹ [−(∂v/∂θ)ᵀλ + ∂div v/∂θ] ds`. Back in flow time both integrands are one
//! vector–Jacobian product of the field with cotangent `(v̄, div̄) = (−λ, 1)`
//! ([`TrainableField::vjp_at`]): from `t = 0` to `1`, with `x(0) = z`, `λ(0)` as above and
//! `G(0) = 0`, integrate
//!
//! `dx/dt = v(x, t)`, `dλ/dt = −λᵀ∂v/∂x + ∇div v`, `dG/dt = −λᵀ∂v/∂θ + ∂div v/∂θ`,
//!
//! and `G(1)` is the gradient. The augmented state `(x, λ, G)` is integrated by the same
//! Dormand–Prince solver as the forward map, with its error control over every component, so
//! the gradient is exact only to the solver's tolerance (and `x(1)` returns to the data only
//! that closely): that inexactness is what the paper's comparison is about.

use rayon::prelude::*;

use super::losses::check_configurations;
use super::pool::parallel;
use crate::error::{Error, Result, check_finite};
use crate::field::{Cotangent, TrainableField, with_family};
use crate::flow::Flow;
use crate::geometry::{MAX_DIM, remove_center_of_mass};
use crate::integrate::Dopri5Config;
use crate::integrate::dopri5::{integrate, integrate_rhs};
use crate::integrate::{Stats, Workspace};
use crate::prior::Prior;

/// The mean NLL of a batch and what its adjoint gradient cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdjointLoss {
    /// Mean `−log q(x)` of the batch in the continuous mode (Dormand–Prince), nats.
    pub nll: f64,
    /// Field evaluations of the backward solves `x → z` (all samples).
    pub n_eval_forward: u64,
    /// Field evaluations of the adjoint solves, each with a vector–Jacobian product.
    pub n_eval_adjoint: u64,
}

/// `−log q(x)` of one configuration (any centre of mass) by Dormand–Prince, and its θ-gradient
/// by the continuous adjoint method *added* to `theta_bar`; returns the loss and the two
/// solves' statistics.
///
/// # Errors
///
/// [`Error::InvalidArgument`] for a family without the divergence's reverse pass;
/// [`Error::DimensionMismatch`] for wrong sizes; the solver's errors (non-finite field,
/// `max_steps` reached).
pub fn adjoint_ml_sample<F: TrainableField>(
    field: &F,
    prior: &Prior,
    x: &[f64],
    cfg: &Dopri5Config,
    theta_bar: &mut [f64],
) -> Result<(f64, Stats, Stats)> {
    if !F::DIVERGENCE_REVERSE {
        return Err(Error::invalid(format!(
            "the {} field family has no reverse pass of its divergence: the adjoint method \
             cannot differentiate the likelihood",
            F::NAME
        )));
    }
    cfg.validate()?;
    let layout = prior.layout();
    let (len, dim, p) = (layout.len(), layout.dim, field.params().len());
    if x.len() != len {
        return Err(Error::size("adjoint ML sample", len, x.len()));
    }
    if theta_bar.len() != p {
        return Err(Error::size(
            "adjoint parameter cotangents",
            p,
            theta_bar.len(),
        ));
    }
    // x → z (t = 1 → 0): ℓ(0) − ℓ(1) = −∫ div v dt, so log q(x) = log ρ(z) + that.
    let mut z = x.to_vec();
    remove_center_of_mass(&mut z, dim);
    let (log_det, backward) = integrate(field, cfg, &mut z, 1.0, 0.0, &mut Workspace::new(len))?;
    let nll = -(prior.log_density(&z) + log_det);
    if !nll.is_finite() {
        return Err(Error::non_finite("log q of a training configuration"));
    }

    // The augmented state (x, λ, G) at t = 0.
    let mut state = vec![0.0; 2 * len + p];
    state[..len].copy_from_slice(&z);
    let mut mean = [0.0; MAX_DIM];
    for particle in z.chunks_exact(dim) {
        for (m, c) in mean.iter_mut().zip(particle) {
            *m += c / layout.n_particles as f64;
        }
    }
    let inv_var = 1.0 / (prior.sigma() * prior.sigma());
    for (l, c) in state[len..2 * len]
        .chunks_exact_mut(dim)
        .zip(z.chunks_exact(dim))
    {
        for k in 0..dim {
            l[k] = (c[k] - mean[k]) * inv_var;
        }
    }
    let mut scratch = field.new_scratch();
    let mut adjoint = F::Adjoint::default();
    let mut neg_lambda = vec![0.0; len];
    let mut rhs = |s: &[f64], t: f64, ds: &mut [f64]| -> f64 {
        let point = field.time_point(t);
        let (dx, rest) = ds.split_at_mut(len);
        let (dlambda, dg) = rest.split_at_mut(len);
        let div = field.velocity_at_into(&s[..len], &point, dx);
        for (n, l) in neg_lambda.iter_mut().zip(&s[len..2 * len]) {
            *n = -l;
        }
        dlambda.fill(0.0);
        dg.fill(0.0);
        field.adjoint_reset(&mut adjoint, 1);
        let cotangent = Cotangent {
            v: &neg_lambda,
            div: 1.0,
        };
        field.vjp_at(
            &s[..len],
            &point,
            0,
            cotangent,
            dlambda,
            &mut adjoint,
            &mut scratch,
        );
        field.adjoint_finish(std::slice::from_ref(&point), &mut adjoint, dg);
        div
    };
    let (_, forward) = integrate_rhs(
        &mut rhs,
        cfg,
        &mut state,
        0.0,
        1.0,
        &mut Workspace::new(2 * len + p),
    )?;
    let gradient = &state[2 * len..];
    check_finite(gradient, "adjoint gradient")?;
    for (t, g) in theta_bar.iter_mut().zip(gradient) {
        *t += g;
    }
    Ok((nll, backward, forward))
}

/// Mean NLL of the configurations in `x` (n·N·D) under `flow`'s prior and field integrated by
/// Dormand–Prince with `cfg`, and its mean gradient by the continuous adjoint method written
/// to `gradient` (length: the field's parameters). Samples run in parallel and are summed in
/// index order: bit-identical for any number of threads.
///
/// # Errors
///
/// [`Error::DimensionMismatch`] for an empty or ragged `x` or a wrong `gradient` length;
/// [`Error::NonFinite`] for non-finite data; as [`adjoint_ml_sample`], the first failing
/// sample in index order deciding; [`Error::Resource`] when the per-configuration gradients
/// (n·P doubles) exceed the allocation limit or the system refuses them. `gradient` is
/// unchanged on error.
pub fn adjoint_ml_gradient_into(
    flow: &Flow,
    x: &[f64],
    cfg: &Dopri5Config,
    gradient: &mut [f64],
) -> Result<AdjointLoss> {
    let len = flow.layout().len();
    let n = check_configurations(x, len, "training configurations")?;
    let p = flow.field().params().len();
    if gradient.len() != p {
        return Err(Error::size("loss gradient", p, gradient.len()));
    }
    let prior = flow.prior();
    // One gradient per configuration, summed below in index order: n·P doubles, checked
    // before any is made, each allocated fallibly, as are the result slots.
    let what = format!("the adjoint gradients of {n} configurations ({p} parameters each)");
    crate::alloc::check_need(
        n.checked_mul(p)
            .and_then(|d| d.checked_mul(8))
            .map(|b| b as u128),
        &what,
    )?;
    // Per sample: its loss, the two solves' statistics and its gradient.
    type Sample = (f64, Stats, Stats, Vec<f64>);
    let results: Vec<Result<Sample>> = with_family!(flow.field(), field => {
        parallel(|| {
            crate::alloc::collect_indexed(
                x.par_chunks_exact(len).map(|xi| {
                    let mut g = crate::alloc::zeros(Some(p), &what)?;
                    let (nll, backward, forward) = adjoint_ml_sample(field, prior, xi, cfg, &mut g)?;
                    Ok((nll, backward, forward, g))
                }),
                &what,
            )
        })
    })?;
    let results = results.into_iter().collect::<Result<Vec<_>>>()?;
    let mut loss = AdjointLoss {
        nll: 0.0,
        n_eval_forward: 0,
        n_eval_adjoint: 0,
    };
    gradient.fill(0.0);
    for (nll, backward, forward, g) in results {
        loss.nll += nll;
        loss.n_eval_forward += backward.n_eval;
        loss.n_eval_adjoint += forward.n_eval;
        for (a, b) in gradient.iter_mut().zip(&g) {
            *a += b;
        }
    }
    loss.nll /= n as f64;
    for g in gradient.iter_mut() {
        *g /= n as f64;
    }
    Ok(loss)
}
