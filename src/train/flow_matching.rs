//! One flow-matching step of the trainer: the prior side of the batch, its times, the pairing,
//! and the gradient of the conditional flow-matching loss.

use rand::RngExt;

use super::losses::Losses;
use super::pairing::{OtBuffers, aligned_pairs_into, equivariant_ot_pairs_in};
use super::pool::parallel;
use super::trainer::Pairing;
use crate::alloc;
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
    // The batch is the caller's (up to the whole training set): every buffer sized by it is
    // allocated fallibly, on the calling thread, before any work.
    let what = format!("the flow-matching pairs of a batch of {n}");
    let mut prior = alloc::zeros(Some(data.len()), &what)?;
    let mut t = alloc::with_capacity(Some(n), &what)?;
    let mut targets = alloc::with_capacity(Some(data.len()), &what)?;
    let mut paired = alloc::zeros(
        Some(if pairing == Pairing::InOrder {
            0
        } else {
            data.len()
        }),
        &what,
    )?;
    let mut ot = match pairing {
        Pairing::EquivariantOt => Some(OtBuffers::new(n, layout)?),
        _ => None,
    };
    for z in prior.chunks_exact_mut(len) {
        flow.draw_latent_into(&mut rng, z);
    }
    t.extend((0..n).map(|_| rng.random::<f64>()));
    targets.extend_from_slice(data);
    for x in targets.chunks_exact_mut(len) {
        remove_center_of_mass(x, layout.dim);
    }
    match (pairing, ot.as_mut()) {
        (Pairing::Aligned, _) => {
            parallel(|| aligned_pairs_into(&prior, &targets, layout, &mut paired));
            targets = paired;
        }
        (Pairing::EquivariantOt, Some(ot)) => {
            parallel(|| equivariant_ot_pairs_in(ot, &prior, &targets, layout, &mut paired));
            targets = paired;
        }
        _ => {}
    }
    losses.flow_matching_gradient_into(&prior, &targets, &t, Some(gradient))
}
