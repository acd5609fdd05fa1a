//! One flow-matching step of the trainer: the prior side of the batch, its times, the pairing,
//! and the gradient of the conditional flow-matching loss.

use rand::RngExt;

use super::losses::Losses;
use super::pairing::{aligned_pairs_into, equivariant_ot_pairs_into};
use super::pool::parallel;
use super::trainer::Pairing;
use crate::error::Result;
use crate::flow::Flow;
use crate::geometry::remove_center_of_mass;
use crate::rng::{self, Stream};

/// Draws one prior sample and then one time `t ~ U[0, 1)` per configuration of `data` from
/// `stream`, pairs them (by equivariant OT, or in order), and writes the mean flow-matching
/// gradient into `gradient`; returns the mean loss. The data are taken CoM-free.
pub(super) fn flow_matching_step(
    losses: &Losses<'_>,
    flow: &Flow,
    data: &[f64],
    stream: Stream,
    seed: u64,
    pairing: Pairing,
    gradient: &mut [f64],
) -> Result<f64> {
    let layout = flow.layout();
    let len = layout.len();
    let n = data.len() / len;
    let mut rng = rng::stream(seed, stream);
    let mut prior = vec![0.0; data.len()];
    for z in prior.chunks_exact_mut(len) {
        flow.draw_latent_into(&mut rng, z);
    }
    let t: Vec<f64> = (0..n).map(|_| rng.random::<f64>()).collect();
    let mut targets = data.to_vec();
    for x in targets.chunks_exact_mut(len) {
        remove_center_of_mass(x, layout.dim);
    }
    match pairing {
        Pairing::InOrder => {}
        Pairing::Aligned => {
            let mut paired = vec![0.0; targets.len()];
            parallel(|| aligned_pairs_into(&prior, &targets, layout, &mut paired));
            targets = paired;
        }
        Pairing::EquivariantOt => {
            let mut paired = vec![0.0; targets.len()];
            parallel(|| equivariant_ot_pairs_into(&prior, &targets, layout, &mut paired));
            targets = paired;
        }
    }
    losses.flow_matching_gradient_into(&prior, &targets, &t, Some(gradient))
}
