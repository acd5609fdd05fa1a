//! Maximum likelihood of the exact-discrete density: the density of the RK4 map that a model
//! samples and evaluates with, differentiated in the parameters.
//!
//! The continuous-mode loss ([`super::ml_sample`]) differentiates the RK4 integral of the
//! divergence, which is the model's density only as h → 0; at few steps training then lowers a
//! number the model does not have (docs/field_families.md, "Fewer RK4 steps"). Here the loss is
//! the density of the map itself.
//!
//! # Derivation
//!
//! The map is `y_{k+1} = Φ_k(y_k; θ)`, k = 0 … n − 1, from the latent `y_0 = z` to the data
//! configuration `y_n = x`, and
//!
//! ```text
//! L(θ) = −log q(x) = −log ρ(y_0) + Σ_k log det J_k,     J_k = ∂Φ_k/∂y (y_k)
//! ```
//!
//! (`integrate::discrete` builds `J_k` from the four stage Jacobians). The y_k depend on θ
//! through the inverse map, with x fixed: `dy_k = J_k⁻¹ (dy_{k+1} − P_k dθ)`, `P_k = ∂Φ_k/∂θ`.
//! With `g_k = ∂L/∂y_k` at fixed θ (the prior's gradient at k = 0 plus `∂ log det J_k/∂y_k`),
//! the recursion from the latent end
//!
//! ```text
//! s_0 = g_0,   u_k = J_k⁻ᵀ s_k,   s_{k+1} = g_{k+1} + u_k
//! ```
//!
//! gives `dL/dθ = Σ_k ∂ log det J_k/∂θ |_{y_k} − Σ_k u_kᵀ P_k`, since `dy_n = 0`. Per step, two
//! reverse passes through the RK4 step at y_k:
//! - **A**, with the cotangent `J_k⁻ᵀ` of the step Jacobian (`∂ log det J/∂J = J⁻ᵀ`): through
//!   `J = I + h/6 (D₁ + 2D₂ + 2D₃ + D₄)`, `D_s = F_s (I + c_s D_{s−1})` to the stage Jacobians
//!   `F_s = ∂v/∂x (x_s, t_s)`, then through the field's Jacobian
//!   ([`TrainableField::jacobian_vjp_at`]) and the stage points to `g_k` and θ;
//! - **B**, with the cotangent `−u_k` of the step's output, through the step's velocities
//!   ([`TrainableField::vjp_at`]) to θ only (its y part is `−J_kᵀ u_k = −s_k`, already used).
//!
//! The trajectory `y_0 … y_n` is found by the same inverse as a model's density
//! (`integrate::discrete::inverse_step`, with its fallback), so the loss equals `−log q` of
//! the exact-discrete mode of the same field to round-off.

use super::losses::check_configurations;
use crate::error::{Error, Result};
use crate::field::{Cotangent, TrainableField};
use crate::geometry::remove_center_of_mass;
use crate::integrate::Workspace;
use crate::integrate::discrete::{InverseCarry, inverse_step};
use crate::integrate::linalg::{gemm_acc, lu_factor, lu_solve, matvec};
use crate::integrate::rk4::{axpy_into, grid_stage_times};
use crate::prior::Prior;

/// The RK4 stage offsets `c_s` (the stage point is `y + c_s·h·k_{s−1}`) and weights.
const SHIFT: [f64; 4] = [0.0, 0.5, 0.5, 1.0];
const WEIGHT: [f64; 4] = [1.0, 2.0, 2.0, 1.0];

/// Buffers of one sample's exact-discrete loss and gradient, for states of length n and a
/// fixed step count. One per thread; nothing allocates per sample after the first.
#[derive(Debug, Clone)]
pub struct DiscreteMlWorkspace<F: TrainableField> {
    n: usize,
    n_steps: usize,
    ws: Workspace,
    /// `y_0 … y_n`, n_steps + 1 states.
    trajectory: Vec<f64>,
    stage: [Vec<f64>; 4],
    k: [Vec<f64>; 4],
    /// Stage Jacobians F_s, then their cotangents.
    jac: [Vec<f64>; 4],
    jac_bar: [Vec<f64>; 4],
    /// D_s and their cotangents.
    dk: [Vec<f64>; 4],
    dk_bar: [Vec<f64>; 4],
    /// The step Jacobian's LU factors, pivots, and `J⁻ᵀ`.
    lu: Vec<f64>,
    pivots: Vec<usize>,
    inv_t: Vec<f64>,
    transposed: Vec<f64>,
    k_bar: [Vec<f64>; 4],
    x_bar: Vec<f64>,
    y_bar: Vec<f64>,
    s: Vec<f64>,
    u: Vec<f64>,
    /// Where pass B's y cotangent goes (discarded: it is `−s_k`).
    discarded: Vec<f64>,
    /// Time points at the stage times, index `3k + s'` for step k's times `[t, t + h/2,
    /// t + h]`, reused while the field's time-point key is the same.
    points: Vec<F::TimePoint>,
    key: Vec<f64>,
    key_scratch: Vec<f64>,
    adjoint: F::Adjoint,
    scratch: Option<F::Scratch>,
}

impl<F: TrainableField> DiscreteMlWorkspace<F> {
    /// Buffers for states of length `n` (N·D) and `n_steps` RK4 steps.
    ///
    /// # Errors
    ///
    /// [`Error::Resource`] if the trajectory or the matrices would exceed the allocation limit.
    pub fn new(n: usize, n_steps: usize) -> Result<Self> {
        let square = n.checked_mul(n);
        let trajectory = crate::alloc::zeros(
            n_steps.checked_add(1).and_then(|s| s.checked_mul(n)),
            "the exact-discrete training trajectory",
        )?;
        let mat = || crate::alloc::zeros(square, "an exact-discrete training matrix");
        let vec = || vec![0.0; n];
        Ok(DiscreteMlWorkspace {
            n,
            n_steps,
            ws: Workspace::new(n),
            trajectory,
            stage: [vec(), vec(), vec(), vec()],
            k: [vec(), vec(), vec(), vec()],
            jac: [mat()?, mat()?, mat()?, mat()?],
            jac_bar: [mat()?, mat()?, mat()?, mat()?],
            dk: [mat()?, mat()?, mat()?, mat()?],
            dk_bar: [mat()?, mat()?, mat()?, mat()?],
            lu: mat()?,
            pivots: vec![0; n],
            inv_t: mat()?,
            transposed: mat()?,
            k_bar: [vec(), vec(), vec(), vec()],
            x_bar: vec(),
            y_bar: vec(),
            s: vec(),
            u: vec(),
            discarded: vec(),
            points: Vec::new(),
            key: Vec::new(),
            key_scratch: Vec::new(),
            adjoint: F::Adjoint::default(),
            scratch: None,
        })
    }

    /// The step count the buffers are for.
    #[must_use]
    pub fn n_steps(&self) -> usize {
        self.n_steps
    }

    /// Makes `points` hold the field's time points at every stage time of the grid.
    ///
    /// # Errors
    ///
    /// [`Error::Resource`] if the system refuses the memory of the points and their reverse-pass
    /// sums (3 per step, [`TrainableField::time_point_bytes`] each), asked for before any is
    /// built (as the RK4 tape's grid).
    fn prepare_points(&mut self, field: &F) -> Result<()> {
        self.key_scratch.clear();
        field.time_point_key(&mut self.key_scratch);
        let same = self.points.len() == 3 * self.n_steps
            && self.key.len() == self.key_scratch.len()
            && self
                .key
                .iter()
                .zip(&self.key_scratch)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            let (points, n_steps) = (&mut self.points, self.n_steps);
            crate::alloc::probed_build(
                super::tape::grid_bytes(field, n_steps),
                "the exact-discrete training grid of time points (3 per RK4 step)",
                || {
                    points.clear();
                    for k in 0..n_steps {
                        for t in grid_stage_times(k, n_steps, true) {
                            points.push(field.time_point(t));
                        }
                    }
                },
            )?;
            std::mem::swap(&mut self.key, &mut self.key_scratch);
        }
        Ok(())
    }
}

/// Exact-discrete ML loss of one configuration `x` (any centre of mass; it is removed first):
/// `−log q(x)` of the RK4 map of `ws.n_steps()` steps on [0, 1], in nats. If `theta_bar` is
/// given, `∂(−log q)/∂θ` is *added* to it (see the module docs), only once everything has
/// succeeded: on an error `theta_bar` is unchanged.
///
/// # Errors
///
/// [`Error::DimensionMismatch`] for wrong sizes; [`Error::InvalidArgument`] for a family
/// without [`TrainableField::JACOBIAN_REVERSE`] when a gradient is asked for; what the
/// inverse reports ([`Error::NotConverged`], [`Error::NotInvertible`]) for a configuration the
/// map cannot pull back; [`Error::NonFinite`] for a non-finite loss.
pub fn discrete_ml_sample<F: TrainableField>(
    field: &F,
    prior: &Prior,
    x: &[f64],
    ws: &mut DiscreteMlWorkspace<F>,
    theta_bar: Option<&mut [f64]>,
) -> Result<f64> {
    let n = ws.n;
    check_configurations(x, n, "exact-discrete ML configuration")?;
    if x.len() != n || field.state_len() != n || prior.layout().len() != n {
        return Err(Error::size("exact-discrete ML sample", n, x.len()));
    }
    if let Some(t) = &theta_bar
        && t.len() != field.params().len()
    {
        return Err(Error::size(
            "exact-discrete ML gradient",
            field.params().len(),
            t.len(),
        ));
    }
    if theta_bar.is_some() && !F::JACOBIAN_REVERSE {
        return Err(crate::field::no_jacobian_reverse::<F>());
    }
    let n_steps = ws.n_steps;
    let h = 1.0 / n_steps as f64;
    let dim = prior.layout().dim;

    // The trajectory, from x back to the latent.
    let (rest, last) = ws.trajectory.split_at_mut(n_steps * n);
    last.copy_from_slice(x);
    remove_center_of_mass(last, dim);
    let y = &mut ws.s;
    y.copy_from_slice(last);
    let mut carry = InverseCarry::new();
    for k in (0..n_steps).rev() {
        let times = grid_stage_times(k, n_steps, true);
        inverse_step(field, y, times, h, &mut carry, true, &mut ws.ws)?;
        rest[k * n..(k + 1) * n].copy_from_slice(y);
    }
    let mut loss = -prior.log_density(&ws.trajectory[..n]);

    let with_gradient = theta_bar.is_some();
    if with_gradient {
        ws.prepare_points(field)?;
        field.adjoint_reserve(&mut ws.adjoint, 3 * n_steps)?;
        field.adjoint_reset(&mut ws.adjoint, 3 * n_steps);
        // u_{−1} is the prior's gradient, so that s_0 = g_0 + ∇(−log ρ)(z), with
        // −log ρ(z) = |z − z̄|²/(2σ²) + const.
        let z = &ws.trajectory[..n];
        let inv_var = 1.0 / (prior.sigma() * prior.sigma());
        ws.u.copy_from_slice(z);
        remove_center_of_mass(&mut ws.u, dim);
        ws.u.iter_mut().for_each(|u| *u *= inv_var);
    }
    for k in 0..n_steps {
        let times = grid_stage_times(k, n_steps, true);
        loss += step_log_det(field, k, times, h, ws)?;
        if with_gradient {
            step_reverse(field, k, h, ws)?;
        }
    }
    if !loss.is_finite() {
        return Err(Error::non_finite(
            "exact-discrete −log q of a configuration",
        ));
    }
    if let Some(theta_bar) = theta_bar {
        field.adjoint_finish(&ws.points, &mut ws.adjoint, theta_bar);
    }
    Ok(loss)
}

/// Step k forward at `y_k`: the stage points, velocities and Jacobians, the D_s, the step
/// Jacobian's LU factors; returns `log det J_k`.
fn step_log_det<F: TrainableField>(
    field: &F,
    k: usize,
    times: [f64; 3],
    h: f64,
    ws: &mut DiscreteMlWorkspace<F>,
) -> Result<f64> {
    let n = ws.n;
    let y = &ws.trajectory[k * n..(k + 1) * n];
    let stage_times = [times[0], times[1], times[1], times[2]];
    for s in 0..4 {
        if s == 0 {
            ws.stage[0].copy_from_slice(y);
        } else {
            axpy_into(&mut ws.stage[s], y, SHIFT[s] * h, &ws.k[s - 1]);
        }
        field.velocity_jacobian_into(&ws.stage[s], stage_times[s], &mut ws.k[s], &mut ws.jac[s]);
        // D_s = F_s + c_s h F_s D_{s−1}.
        let (done, todo) = ws.dk.split_at_mut(s);
        todo[0].copy_from_slice(&ws.jac[s]);
        if s > 0 {
            gemm_acc(n, SHIFT[s] * h, &ws.jac[s], &done[s - 1], &mut todo[0]);
        }
    }
    ws.lu.fill(0.0);
    for (s, dk) in ws.dk.iter().enumerate() {
        let c = WEIGHT[s] * h / 6.0;
        for (l, d) in ws.lu.iter_mut().zip(dk) {
            *l += c * d;
        }
    }
    for i in 0..n {
        ws.lu[i * n + i] += 1.0;
    }
    if ws.lu.iter().any(|v| !v.is_finite()) {
        return Err(Error::non_finite(format!(
            "the RK4 step Jacobian at t = {} (the field blew up)",
            times[0]
        )));
    }
    let (log_abs, sign) = lu_factor(n, &mut ws.lu, &mut ws.pivots);
    if sign <= 0.0 || !log_abs.is_finite() {
        return Err(Error::NotInvertible {
            what: format!(
                "the RK4 step at t = {} has a Jacobian with determinant sign {sign}: the step \
                 is too large for this field (use more steps)",
                times[0]
            ),
        });
    }
    Ok(log_abs)
}

/// Step k's part of the gradient (module docs): pass A, the recursion's `u_k`, pass B. On
/// entry `ws.u` holds `u_{k−1}` (or the prior's gradient at k = 0); on exit `u_k`.
fn step_reverse<F: TrainableField>(
    field: &F,
    k: usize,
    h: f64,
    ws: &mut DiscreteMlWorkspace<F>,
) -> Result<()> {
    let n = ws.n;
    // J⁻ᵀ, row by row: row c of J⁻ᵀ is column c of J⁻¹, the solution of J x = e_c.
    for c in 0..n {
        let row = &mut ws.inv_t[c * n..(c + 1) * n];
        row.fill(0.0);
        row[c] = 1.0;
        lu_solve(n, &ws.lu, &ws.pivots, row);
    }

    // Pass A: D̄_s = w_s h/6 · J⁻ᵀ, then backwards through D_s = F_s (I + c_s h D_{s−1}):
    // F̄_s = D̄_s (I + c_s h D_{s−1})ᵀ and D̄_{s−1} += c_s h F_sᵀ D̄_s.
    for (bar, weight) in ws.dk_bar.iter_mut().zip(WEIGHT) {
        let c = weight * h / 6.0;
        for (b, g) in bar.iter_mut().zip(&ws.inv_t) {
            *b = c * g;
        }
    }
    for s in (0..4).rev() {
        ws.jac_bar[s].copy_from_slice(&ws.dk_bar[s]);
        if s > 0 {
            let shift = SHIFT[s] * h;
            transpose_into(n, &ws.dk[s - 1], &mut ws.transposed);
            let (bar_done, bar_s) = ws.dk_bar.split_at_mut(s);
            gemm_acc(n, shift, &bar_s[0], &ws.transposed, &mut ws.jac_bar[s]);
            transpose_into(n, &ws.jac[s], &mut ws.transposed);
            gemm_acc(n, shift, &ws.transposed, &bar_s[0], &mut bar_done[s - 1]);
        }
    }
    let base = 3 * k;
    let point_index = [base, base + 1, base + 1, base + 2];
    let scratch = ws.scratch.get_or_insert_with(|| field.new_scratch());
    ws.y_bar.fill(0.0);
    ws.k_bar.iter_mut().for_each(|kb| kb.fill(0.0));
    for s in (0..4).rev() {
        ws.x_bar.fill(0.0);
        let index = point_index[s];
        field.jacobian_vjp_at(
            &ws.stage[s],
            &ws.points[index],
            index,
            &ws.k_bar[s],
            &ws.jac_bar[s],
            &mut ws.x_bar,
            &mut ws.adjoint,
            scratch,
        )?;
        stage_point_reverse(s, h, &ws.x_bar, &mut ws.y_bar, &mut ws.k_bar);
    }

    // s_k = g_k + u_{k−1}; u_k = J⁻ᵀ s_k.
    for (s, (g, u)) in ws.s.iter_mut().zip(ws.y_bar.iter().zip(&ws.u)) {
        *s = g + u;
    }
    matvec(n, &ws.inv_t, &ws.s, &mut ws.u);

    // Pass B: output cotangent −u_k; k̄_s = −w_s h/6 · u_k, then backwards through the stages.
    for (k_bar, weight) in ws.k_bar.iter_mut().zip(WEIGHT) {
        let c = -weight * h / 6.0;
        for (kb, u) in k_bar.iter_mut().zip(&ws.u) {
            *kb = c * u;
        }
    }
    for s in (0..4).rev() {
        ws.x_bar.fill(0.0);
        let index = point_index[s];
        let cotangent = Cotangent {
            v: &ws.k_bar[s],
            div: 0.0,
        };
        field.vjp_at(
            &ws.stage[s],
            &ws.points[index],
            index,
            cotangent,
            &mut ws.x_bar,
            &mut ws.adjoint,
            scratch,
        );
        stage_point_reverse(s, h, &ws.x_bar, &mut ws.discarded, &mut ws.k_bar);
    }
    Ok(())
}

/// The reverse of stage s's point `x_s = y + c_s h k_{s−1}`: `ȳ += x̄_s`,
/// `k̄_{s−1} += c_s h x̄_s`.
fn stage_point_reverse(
    s: usize,
    h: f64,
    x_bar: &[f64],
    y_bar: &mut [f64],
    k_bar: &mut [Vec<f64>; 4],
) {
    for (y, x) in y_bar.iter_mut().zip(x_bar) {
        *y += x;
    }
    if s > 0 {
        let shift = SHIFT[s] * h;
        for (kb, x) in k_bar[s - 1].iter_mut().zip(x_bar) {
            *kb += shift * x;
        }
    }
}

fn transpose_into(n: usize, a: &[f64], out: &mut [f64]) {
    for i in 0..n {
        for j in 0..n {
            out[j * n + i] = a[i * n + j];
        }
    }
}
