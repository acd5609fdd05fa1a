//! The ranges in which a kernel field's settings and parameters are usable: what the
//! model-file loader refuses although it is finite ([`crate::field::FieldFamily::check_usable`]).
//!
//! | what | accepted | why |
//! |---|---|---|
//! | `mu_dist`, `mu_time` | `|μ| ≤` [`MAX_KERNEL_CENTRE`] | `(d − μ)²` cannot overflow |
//! | `params` (every block) | `|p| ≤` [`MAX_PARAM`] | a plain sanity bound |
//! | `params` `log_inv_gamma_*` | `|p| ≤` [`MAX_LOG_INV_GAMMA`] | bandwidths γ in [4.5e-5, 2.2e4] |
//! | `params` `w`, `b`, `s` together | step strength `≤` [`MAX_STEP_STRENGTH`] | see below |
//!
//! The radial bound `B = max_r [ max_k |W_kr| + Σ_k s_k² |W_kr| + |b_r| ]` bounds `|φ(d, t)|` for
//! every d and t (the normalised bases ρ and τ are non-negative and sum to at most 1), so
//! `(N − 1)·B` bounds the rate at which the field can stretch a configuration. The step
//! strength is `h·min(N − 1, 12)·B` (the cap, [`MAX_NEIGHBOURS`], keeps large systems with
//! ordinary weights loadable: their kernels reach only nearby particles). RK4 on `y' = λy` is
//! stable for `h·|λ| < 2.785`; measured on DW-4 and LJ-13 with every `b_r = c`, proposal and
//! evaluated log-densities agree to 1e-13 at strength 1.5 and by nothing at strength 3 and
//! above, while the shipped trained models have strengths of 0.74 (DW-4) and 1.6 (LJ-13). The
//! bound is a sanity check, not a proof: the step certificate
//! ([`crate::integrate::certify_rk4`]) is the proof where it holds, and the inverse's residual
//! check stays the guard of every single evaluation.

use super::{KernelField, ParamLayout};
use crate::error::{Error, Result};

/// Largest magnitude of a kernel centre (`mu_dist`, `mu_time`).
pub const MAX_KERNEL_CENTRE: f64 = 1e6;
/// Largest magnitude of any parameter.
pub const MAX_PARAM: f64 = 1e6;
/// Largest magnitude of a log inverse bandwidth `−log γ`.
pub const MAX_LOG_INV_GAMMA: f64 = 10.0;
/// The neighbour count `N − 1` of the step strength is capped here (the kissing number in 3-D),
/// so that a large system's flow saved with ordinary weights loads back.
pub const MAX_NEIGHBOURS: usize = 12;
/// Largest step strength `h·min(N − 1, 12)·max_r [max_k |W_kr| + Σ_k s_k² |W_kr| + |b_r|]`
/// (see the module documentation).
pub const MAX_STEP_STRENGTH: f64 = 2.5;

/// The ranges of the module documentation for a field integrated with steps of size `h`.
pub(super) fn check_usable(field: &KernelField, h: f64) -> Result<()> {
    let out_of_range = |what: String| Err(Error::invalid(what));
    let k = field.kernels();
    for (name, values) in [("mu_dist", &k.mu_dist), ("mu_time", &k.mu_time)] {
        if let Some((i, m)) = values
            .iter()
            .enumerate()
            .find(|(_, m)| m.abs() > MAX_KERNEL_CENTRE)
        {
            return out_of_range(format!(
                "kernels.{name}[{i}] = {m:e} exceeds {MAX_KERNEL_CENTRE:e} in magnitude"
            ));
        }
    }
    for ty in 0..field.n_pair_types() {
        check_block(field, ty, h)?;
    }
    Ok(())
}

/// The parameter ranges for pair type `ty`'s block (the whole vector for one species).
fn check_block(field: &KernelField, ty: usize, h: f64) -> Result<()> {
    let out_of_range = |what: String| Err(Error::invalid(what));
    let pl: ParamLayout = field.param_layout();
    let offset = field.block_range(ty).start;
    let params = field.block_params(ty);
    // Named only when there are several pair types, so single-species messages are unchanged.
    let of_type = if field.n_pair_types() > 1 {
        format!(" of species-pair type {ty}")
    } else {
        String::new()
    };
    for (block, range) in pl.blocks() {
        let bound = if block.starts_with("log_inv_gamma") {
            MAX_LOG_INV_GAMMA
        } else {
            MAX_PARAM
        };
        if let Some((i, p)) = params[range.clone()]
            .iter()
            .enumerate()
            .find(|(_, p)| p.abs() > bound)
        {
            return out_of_range(format!(
                "params[{}] (block {block}{of_type}, element {i}) = {p:e} exceeds {bound:e} in \
                 magnitude",
                offset + range.start + i
            ));
        }
    }
    let (w, b, s) = (&params[pl.w()], &params[pl.b()], &params[pl.s()]);
    let pairs = field
        .layout()
        .n_particles
        .saturating_sub(1)
        .min(MAX_NEIGHBOURS) as f64;
    for r in 0..pl.n_time {
        let column = (0..pl.n_dist).map(|k| w[k * pl.n_time + r].abs());
        let max_w = column.clone().fold(0.0, f64::max);
        let offsets: f64 = column.zip(s).map(|(w, s)| s * s * w).sum();
        let radial = max_w + offsets + b[r].abs();
        let strength = h * pairs * radial;
        if strength.is_nan() || strength > MAX_STEP_STRENGTH {
            return out_of_range(format!(
                "params w, b, s{of_type}: time kernel r = {r} has the radial bound max_k |W_kr| + \
                 Σ_k s_k² |W_kr| + |b_r| = {radial:e}, so the step strength h·min(N − 1, 12)·bound \
                 = {strength:e} exceeds {MAX_STEP_STRENGTH}: a field this strong makes the \
                 integrator's flow map meaningless (use more steps or smaller weights)"
            ));
        }
    }
    Ok(())
}
