//! The named random streams: every use of randomness in eqflow draws from
//! [`stream`]`(seed, Stream::…)`, so which numbers a use sees is decided here, in one place.
//!
//! A stream is a ChaCha20 generator keyed by a 64-bit key (the user's seed, or the seed mixed
//! with a constant) and one of its 2⁶⁴ stream numbers. Per-sample streams are what makes
//! results bit-identical for any thread count: sample `i` of a call always draws from its own
//! stream, whichever thread computes it.
//!
//! | stream | key | stream number | user |
//! |---|---|---|---|
//! | [`Stream::Sample`]`(i)` | seed | i | flow samples, reverse-KL latents (sample `i` of a batch) |
//! | [`Stream::McmcChain`]`(c)` | seed | c | reference Metropolis chain `c` |
//! | [`Stream::MoveProposal`]`(k)` | seed | 2⁶³ + k | the flow move's k-th proposal (latent, then its uniform) |
//! | [`Stream::Shuffle`]`(e)` | seed ⊕ `SHUFFLE_KEY` | e | the training data order of epoch `e` |
//! | [`Stream::FieldInit`] | seed | 0 | a field's initial weights |
//! | [`Stream::FlowMatching`]`(k)` | seed ⊕ `FLOW_MATCHING_KEY` | k | step k's prior samples and times |
//! | [`Stream::HutchinsonProbe`]`(k)` | seed ⊕ `PROBE_KEY` | k | the probes of `eqflow repro`'s Hutchinson estimates (never a density) |
//! | [`Stream::TrainingProbe`]`(i)` | seed ⊕ `TRAINING_PROBE_KEY` | i | the Hutchinson probe of training configuration `i` (step k, batch B: i = k·B + position) |
//!
//! The reverse-KL loss shares [`Stream::Sample`] with sampling on purpose: KL sample `i` with
//! seed `s` is the flow sample `i` with seed `s`. Move proposals are disjoint from every
//! per-sample stream below 2⁶³, so a move and a batch with the same seed never propose the
//! same configurations. Sample, MCMC-chain and field-initialisation streams do overlap in
//! numbering; they serve different calls, each seeded by its user.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// The key mixed into the user's seed for the training shuffles, so that they never share a
/// stream with the KL latents of the same seed.
const SHUFFLE_KEY: u64 = 0x5348_5546_464c_4521;

/// The key mixed into the user's seed for flow matching's prior samples and times.
const FLOW_MATCHING_KEY: u64 = 0x464c_4f57_4d41_5443;

/// The key mixed into the user's seed for Hutchinson probes, so that an experiment comparing
/// the estimator with the exact divergence on flow samples never reuses a sample's numbers as
/// its probe.
const PROBE_KEY: u64 = 0x4855_5443_4849_4e53;

/// The key mixed into the user's seed for the Hutchinson probes of training, apart from the
/// repro experiments' probes and from every sample stream.
const TRAINING_PROBE_KEY: u64 = 0x5452_4e50_524f_4245;

/// The first stream number of the move's proposals.
const MOVE_STREAMS: u64 = 1 << 63;

/// What a random stream is for; see the [module docs](self) for the numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Sample `i` of a batch (flow samples and reverse-KL latents).
    Sample(u64),
    /// Reference Metropolis chain `c`.
    McmcChain(u64),
    /// The flow move's proposal number `k` (0-based count of proposals made).
    MoveProposal(u64),
    /// The order of the training data in epoch `e`.
    Shuffle(u64),
    /// The initial parameters of a field.
    FieldInit,
    /// The prior samples and times of flow-matching step `k`.
    FlowMatching(u64),
    /// The probe vectors of Hutchinson trace estimate set `k` (the `eqflow repro` experiments
    /// that measure the estimator against the exact divergence; no density uses it).
    HutchinsonProbe(u64),
    /// The Hutchinson probe of training configuration `i` (counted over the run's steps).
    TrainingProbe(u64),
}

/// The generator of `stream` for the user's `seed`.
#[must_use]
pub fn stream(seed: u64, stream: Stream) -> ChaCha20Rng {
    let (key, number) = match stream {
        Stream::Sample(i) | Stream::McmcChain(i) => (seed, i),
        // Proposal counts never reach 2⁶³, so the OR is an addition.
        Stream::MoveProposal(k) => (seed, MOVE_STREAMS | k),
        Stream::Shuffle(epoch) => (seed ^ SHUFFLE_KEY, epoch),
        Stream::FieldInit => (seed, 0),
        Stream::FlowMatching(k) => (seed ^ FLOW_MATCHING_KEY, k),
        Stream::HutchinsonProbe(k) => (seed ^ PROBE_KEY, k),
        Stream::TrainingProbe(i) => (seed ^ TRAINING_PROBE_KEY, i),
    };
    let mut rng = ChaCha20Rng::seed_from_u64(key);
    rng.set_stream(number);
    rng
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    fn first(seed: u64, s: Stream) -> u64 {
        stream(seed, s).random()
    }

    #[test]
    fn streams_are_keyed_and_numbered_as_documented() {
        let raw = |key: u64, number: u64| {
            let mut rng = ChaCha20Rng::seed_from_u64(key);
            rng.set_stream(number);
            rng.random::<u64>()
        };
        assert_eq!(first(7, Stream::Sample(3)), raw(7, 3));
        assert_eq!(first(7, Stream::McmcChain(3)), raw(7, 3));
        assert_eq!(first(7, Stream::MoveProposal(3)), raw(7, (1 << 63) + 3));
        assert_eq!(first(7, Stream::Shuffle(3)), raw(7 ^ SHUFFLE_KEY, 3));
        assert_eq!(first(7, Stream::HutchinsonProbe(3)), raw(7 ^ PROBE_KEY, 3));
        assert_eq!(
            first(7, Stream::TrainingProbe(3)),
            raw(7 ^ TRAINING_PROBE_KEY, 3)
        );
        // The field initialisation is the unnumbered generator of the seed.
        assert_eq!(
            first(7, Stream::FieldInit),
            ChaCha20Rng::seed_from_u64(7).random::<u64>()
        );
    }

    #[test]
    fn move_proposals_and_shuffles_never_meet_samples() {
        for k in 0..64 {
            for i in 0..64 {
                assert_ne!(
                    first(1, Stream::MoveProposal(k)),
                    first(1, Stream::Sample(i))
                );
                assert_ne!(first(1, Stream::Shuffle(k)), first(1, Stream::Sample(i)));
            }
        }
    }
}
