//! Buffers sized by the caller's batch, sample or configuration count that the system refuses
//! below [`crate::alloc::MAX_ALLOCATION_BYTES`] (Linux refuses a request it judges beyond RAM
//! and swap: 640 GB of equivariant-OT alignments for a DW-4 batch of 10^5) are
//! [`Error::Resource`] with every object as it was; each used to be a plain `vec!` or
//! `collect` whose refusal aborted the host. The refusal is made to happen here, on the test's
//! thread, by [`crate::alloc::test_seam`], at sizes any machine has.

use crate::alloc::test_seam::refusing_above;
use crate::energy::DoubleWell;
use crate::integrate::Stats;
use crate::train::{LambdaSchedule, Objective, Pairing, TrainConfig, Trainer};
use crate::{Error, Flow};

/// `n` DW-4 configurations near a square of side 4.
fn dw4_data(n: usize) -> Vec<f64> {
    let square = [-2.0, -2.0, 2.0, -2.0, 2.0, 2.0, -2.0, 2.0];
    (0..n)
        .flat_map(|i| {
            square
                .iter()
                .enumerate()
                .map(move |(k, v)| v + 0.1 * ((i * 8 + k) as f64 * 0.77).sin())
        })
        .collect()
}

/// Asserts a refusal of the system naming `what`.
fn assert_refused(error: &Error, what: &str) {
    assert!(
        matches!(error, Error::Resource { .. }),
        "expected a resource error, got {error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(what) && message.contains("the system refused the memory"),
        "{message}"
    );
}

fn config() -> TrainConfig {
    TrainConfig {
        n_epochs: 1,
        batch_size: 64,
        n_rk4_steps: 4,
        ..TrainConfig::default()
    }
}

/// Trains a fresh DW-4 flow with the system refusing above `limit` bytes; returns the error
/// after checking that the flow kept its parameters.
fn refused_training(config: TrainConfig, data: &[f64], limit: u128) -> Error {
    let mut flow = Flow::new(4, 2, 3).unwrap();
    let before = flow.field().params().to_vec();
    let energy = DoubleWell::dw4();
    let trainer = Trainer::new(config, data).with_energy(&energy);
    let error = refusing_above(limit, || trainer.run(&mut flow, |_| true)).unwrap_err();
    assert_eq!(flow.field().params(), &before[..], "the flow is unchanged");
    error
}

fn n_params() -> usize {
    Flow::new(4, 2, 3).unwrap().field().params().len()
}

#[test]
fn refused_equivariant_ot_alignments_are_a_resource_error() {
    // 64² alignments of 8 doubles: 262 KB, refused; everything else of the step is smaller.
    let config = TrainConfig {
        objective: Objective::FlowMatching {
            pairing: Pairing::EquivariantOt,
        },
        ..config()
    };
    let error = refused_training(config, &dw4_data(64), 100_000);
    assert_refused(&error, "the equivariant-OT alignments of a batch of 64");
    // The Rust function allocates them fallibly too; `paired` is untouched.
    let layout = crate::geometry::Layout::new(4, 2).unwrap();
    let data = dw4_data(64);
    let mut paired = vec![f64::NAN; data.len()];
    let error = refusing_above(100_000, || {
        crate::train::pairing::equivariant_ot_pairs_into(&data, &data, layout, &mut paired)
    })
    .unwrap_err();
    assert_refused(&error, "equivariant-OT alignments");
    assert!(paired.iter().all(|v| v.is_nan()));
}

#[test]
fn refused_per_sample_gradients_of_a_batch_are_a_resource_error() {
    // 64 gradients of P doubles, refused one byte short; the rest of the step is smaller.
    let per_sample = (64 * n_params() * 8) as u128;
    let error = refused_training(config(), &dw4_data(64), per_sample - 1);
    assert_refused(&error, "the per-sample gradients of a batch of 64");
}

#[test]
fn refused_per_sample_gradients_of_the_kl_samples_are_a_resource_error() {
    // A data batch of 4 passes; the 64 KL samples' gradients are refused.
    let config = TrainConfig {
        batch_size: 4,
        lambda: LambdaSchedule::Constant(0.5),
        n_kl_samples: 64,
        ..config()
    };
    let limit = (32 * n_params() * 8) as u128;
    let error = refused_training(config, &dw4_data(4), limit);
    assert_refused(&error, "the per-sample gradients of 64 KL samples");
}

#[test]
fn refused_copies_and_outcomes_of_densities_are_resource_errors() {
    let flow = Flow::new(4, 2, 3).unwrap();
    let n = 1000;
    let x = dw4_data(n);
    // The working copy of the configurations (64 KB).
    let mut log_q = vec![f64::NAN; n];
    let error = refusing_above(32_000, || flow.log_density_into(&x, &mut log_q)).unwrap_err();
    assert_refused(&error, "the working copy of 1000 configurations");
    assert!(log_q.iter().all(|v| v.is_nan()), "log_q untouched");
    // With the caller's z, one outcome per configuration; z untouched.
    let outcomes = (n * std::mem::size_of::<crate::Result<Stats>>()) as u128;
    let mut z = vec![f64::NAN; x.len()];
    let error = refusing_above(outcomes - 1, || {
        flow.log_density_full_into(&x, Some(&mut z), &mut log_q)
    })
    .unwrap_err();
    assert_refused(&error, "the per-configuration outcomes of the densities");
    assert!(
        z.iter().chain(&log_q).all(|v| v.is_nan()),
        "nothing written"
    );
    // Each configuration's own outcome.
    let each = (n * std::mem::size_of::<crate::Result<f64>>()) as u128;
    let error = refusing_above(each - 1, || flow.log_density_each(&x)).unwrap_err();
    assert_refused(&error, "the per-configuration densities");
}

#[test]
fn refused_outcomes_of_sampling_and_certificates_are_resource_errors() {
    let flow = Flow::new(4, 2, 3).unwrap();
    let n = 1000;
    let outcomes = (n * std::mem::size_of::<crate::Result<Stats>>()) as u128;
    let (mut x, mut log_q) = (vec![f64::NAN; n * 8], vec![f64::NAN; n]);
    let error =
        refusing_above(outcomes - 1, || flow.sample_into(1, &mut x, &mut log_q)).unwrap_err();
    assert_refused(&error, "the per-sample outcomes of sampling");
    assert!(
        x.iter().chain(&log_q).all(|v| v.is_nan()),
        "nothing written"
    );

    let x = dw4_data(n);
    let certificates = (n * std::mem::size_of::<
        crate::Result<crate::integrate::ConfigurationCertificate>,
    >()) as u128;
    let error = refusing_above(certificates - 1, || flow.certify_configurations(&x)).unwrap_err();
    assert_refused(&error, "the per-configuration certificates");
}

#[test]
fn refused_adjoint_gradients_are_a_resource_error() {
    // One result slot per configuration, with its gradient, was a plain `collect`.
    let flow = Flow::new(4, 2, 3).unwrap();
    let n = 1000;
    let x = dw4_data(n);
    let slots = (n * std::mem::size_of::<crate::Result<(f64, Stats, Stats, Vec<f64>)>>()) as u128;
    let mut gradient = vec![f64::NAN; n_params()];
    let cfg = crate::integrate::Dopri5Config::default();
    let error = refusing_above(slots - 1, || {
        crate::train::adjoint::adjoint_ml_gradient_into(&flow, &x, &cfg, &mut gradient)
    })
    .unwrap_err();
    assert_refused(&error, "the adjoint gradients of 1000 configurations");
    assert!(gradient.iter().all(|v| v.is_nan()), "gradient untouched");
}

#[test]
fn refused_training_grids_are_a_resource_error() {
    // 20,000 RK4 steps: 60,000 time points of the kernel field (about 2 KB each with their
    // reverse-pass sums) were built one small allocation at a time, and under `ulimit -v` one
    // of them was refused and aborted the host (the sweep ran `eqf_flow_train` at 100,000).
    let flow = Flow::new(4, 2, 3).unwrap();
    let field = flow.field().as_kernel().unwrap();
    let n_steps = 20_000;
    let grid = 3 * n_steps * crate::field::TrainableField::time_point_bytes(field);
    assert!(grid > 60_000 * 2_000, "{grid}");
    let mut tape = crate::train::tape::Rk4Tape::new(8, n_steps).unwrap();
    let mut x = dw4_data(1);
    let before = x.clone();
    let error =
        refusing_above((grid - 1) as u128, || tape.integrate(field, &mut x, true)).unwrap_err();
    assert_refused(&error, "the training grid of time points");
    assert_eq!(x, before, "the state is untouched");
    // The exact-discrete objective's grid, likewise.
    let mut ws = crate::train::discrete_ml::DiscreteMlWorkspace::new(8, n_steps).unwrap();
    let mut theta_bar = vec![0.0; field.params().len()];
    let error = refusing_above((grid - 1) as u128, || {
        crate::train::discrete_ml::discrete_ml_sample(
            field,
            flow.prior(),
            &before,
            &mut ws,
            Some(&mut theta_bar),
        )
    })
    .unwrap_err();
    assert_refused(&error, "the exact-discrete training grid of time points");
    // The reverse pass's sums per time point (the probe above asked for them with the grid;
    // another thread's allocations may take the room in between): reserved fallibly.
    let mut adjoint = crate::field::kernel::KernelAdjoint::default();
    let sums = 3 * n_steps * field.mu_padded().len() * 8;
    let error = refusing_above((sums - 1) as u128, || {
        crate::field::TrainableField::adjoint_reserve(field, &mut adjoint, 3 * n_steps)
    })
    .unwrap_err();
    assert_refused(
        &error,
        "the kernel field's reverse-pass sums per time point",
    );
}
