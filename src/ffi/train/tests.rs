use std::cell::Cell;
use std::ffi::c_void;
use std::sync::PoisonError;

use super::options::*;
use super::run::eqf_flow_train;
use super::summary::{SUMMARY_V1_SIZE, eqf_train_epoch, eqf_train_summary};
use crate::energy::DoubleWell;
use crate::ffi::energy::{eqf_energy_double_well, eqf_energy_free, eqf_energy_lennard_jones};
use crate::ffi::flow::{eqf_flow, eqf_flow_new, eqf_flow_sample};
use crate::ffi::test_handles::FlowHandle;
use crate::ffi::threads::eqf_set_num_threads;
use crate::ffi::{
    EQF_ERR_CALLBACK, EQF_ERR_INVALID_ARGUMENT, EQF_ERR_NON_FINITE, EQF_ERR_NULL_POINTER, EQF_OK,
    with_last_error,
};
use crate::reference_mcmc::{McmcConfig, run};
use crate::train::{AdamWConfig, LambdaSchedule, TrainConfig, Trainer};
use crate::{Energy, Flow};

/// DW-4 configurations from random-walk Metropolis at kT = 1, centres of mass left in place.
fn dw4_data(n_samples: usize, seed: u64) -> Vec<f64> {
    let config = McmcConfig {
        n_chains: 4,
        n_burnin: 500,
        n_samples,
        thin: 5,
        seed,
        ..McmcConfig::default()
    };
    run(&DoubleWell::dw4(), &config).unwrap().x
}

/// Owned options, freed on drop.
struct Options(*mut eqf_train_options);

impl Options {
    fn new() -> Options {
        let mut out = std::ptr::null_mut();
        // SAFETY: a valid pointer slot.
        assert_eq!(unsafe { eqf_train_options_new(&raw mut out) }, EQF_OK);
        Options(out)
    }

    /// Small DW-4 settings: 2 epochs of batch 16, RK4 with 6 steps.
    fn small() -> Options {
        let options = Options::new();
        // SAFETY: live options.
        unsafe {
            assert_eq!(eqf_train_options_set_epochs(options.0, 2), EQF_OK);
            assert_eq!(eqf_train_options_set_batch_size(options.0, 16), EQF_OK);
            assert_eq!(eqf_train_options_set_rk4_steps(options.0, 6), EQF_OK);
            assert_eq!(eqf_train_options_set_seed(options.0, 21), EQF_OK);
        }
        options
    }

    fn config(&self) -> TrainConfig {
        // SAFETY: live options.
        unsafe { (*self.0).snapshot().config }
    }
}

impl Drop for Options {
    fn drop(&mut self) {
        // SAFETY: created by `eqf_train_options_new`, freed once.
        assert_eq!(unsafe { eqf_train_options_free(self.0) }, EQF_OK);
    }
}

/// DW-4 flows (N = 4, D = 2) train here.
impl FlowHandle {
    /// Trains with `data` (and `validation`), returning the status and the summary.
    fn train(
        &self,
        options: &Options,
        data: &[f64],
        validation: &[f64],
    ) -> (i32, eqf_train_summary) {
        let mut summary = sentinel_summary();
        // SAFETY: live handles; arrays of whole DW-4 configurations; a full summary.
        let status = unsafe {
            eqf_flow_train(
                self.0,
                options.0,
                (data.len() / 8) as i64,
                data.as_ptr(),
                (validation.len() / 8) as i64,
                validation.as_ptr(),
                &raw mut summary,
            )
        };
        (status, summary)
    }
}

/// A summary whose size is set and whose other fields hold a recognisable sentinel.
fn sentinel_summary() -> eqf_train_summary {
    eqf_train_summary {
        size: size_of::<eqf_train_summary>() as u64,
        n_epochs: -7,
        best_epoch: -7,
        n_steps: -7,
        stopped_early: -7,
        initial_validation_nll: -7.0,
        best_validation_nll: -7.0,
        final_validation_nll: -7.0,
        final_train_nll: -7.0,
        wall_seconds: -7.0,
    }
}

fn message() -> String {
    with_last_error(str::to_owned)
}

/// Records every progress report; stops when `stop_after` epochs are done.
struct Progress {
    reports: Vec<eqf_train_epoch>,
    stop_after: usize,
}

unsafe extern "C" fn progress(user: *mut c_void, report: *const eqf_train_epoch) -> i32 {
    // SAFETY: the tests pass a live `Progress`; eqflow passes a live report.
    let (progress, report) = unsafe { (&mut *user.cast::<Progress>(), *report) };
    progress.reports.push(report);
    i32::from(progress.reports.len() >= progress.stop_after)
}

/// The host energy of the tests: DW-4, with a record of its calls and a failure mode.
struct Host {
    energy: DoubleWell,
    thread: std::thread::ThreadId,
    calls: Cell<usize>,
    in_call: Cell<bool>,
    foreign_thread_or_reentrant: Cell<bool>,
    /// After this many good calls, misbehave as `failure` says.
    fail_after: usize,
    failure: Failure,
}

#[derive(Clone, Copy)]
enum Failure {
    Status,
    StatusWithMessage,
    NanEnergy,
    NanGradient,
    MissingGradient,
    InfiniteEnergy,
    /// A finite energy of the given value, with the DW-4 gradient.
    Energy(f64),
}

impl Host {
    fn new(fail_after: usize, failure: Failure) -> Host {
        Host {
            energy: DoubleWell::dw4(),
            thread: std::thread::current().id(),
            calls: Cell::new(0),
            in_call: Cell::new(false),
            foreign_thread_or_reentrant: Cell::new(false),
            fail_after,
            failure,
        }
    }

    fn user(&self) -> *mut c_void {
        std::ptr::from_ref(self).cast_mut().cast()
    }
}

unsafe extern "C" fn host_energy(
    user: *mut c_void,
    n_particles: i64,
    dim: i64,
    x: *const f64,
    u: *mut f64,
    gradient: *mut f64,
) -> i32 {
    // SAFETY: the tests pass a live `Host`. Its `Cell`s are only touched here; if eqflow
    // called from another thread the thread check below records it.
    let host = unsafe { &*user.cast::<Host>() };
    if std::thread::current().id() != host.thread || host.in_call.replace(true) {
        host.foreign_thread_or_reentrant.set(true);
    }
    let len = (n_particles * dim) as usize;
    // SAFETY: eqflow passes N*D readable and writable doubles and one writable double.
    let (x, gradient) = unsafe {
        (
            std::slice::from_raw_parts(x, len),
            std::slice::from_raw_parts_mut(gradient, len),
        )
    };
    let calls = host.calls.get();
    host.calls.set(calls + 1);
    let failing = calls >= host.fail_after;
    let mut value = if failing && matches!(host.failure, Failure::MissingGradient) {
        host.energy.energy(x)
    } else {
        host.energy.energy_gradient_into(x, gradient)
    };
    let mut status = 0;
    if failing {
        match host.failure {
            Failure::Status => status = 3,
            Failure::StatusWithMessage => {
                // SAFETY: a valid C string.
                unsafe {
                    crate::ffi::callback_error::eqf_set_callback_error(c"bond 2-3 broken".as_ptr())
                };
                status = 4;
            }
            Failure::NanEnergy => value = f64::NAN,
            Failure::NanGradient => gradient[5] = f64::NAN,
            Failure::MissingGradient => {}
            Failure::InfiniteEnergy => value = f64::INFINITY,
            Failure::Energy(u) => value = u,
        }
    }
    // SAFETY: a writable double (see above).
    unsafe { u.write(value) };
    host.in_call.set(false);
    status
}

/// A setter call that must fail with EQF_ERR_INVALID_ARGUMENT and a message containing
/// `needle`.
#[track_caller]
fn rejected(status: i32, needle: &str) {
    assert_eq!(status, EQF_ERR_INVALID_ARGUMENT, "{needle}");
    let message = message();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

#[test]
fn options_start_at_the_paper_defaults_and_setters_validate() {
    let options = Options::new();
    assert_eq!(options.config(), TrainConfig::default());
    let o = options.0;
    let null = std::ptr::null_mut();
    // SAFETY: live options or NULL (rejected).
    unsafe {
        assert_eq!(
            eqf_train_options_new(std::ptr::null_mut()),
            EQF_ERR_NULL_POINTER
        );
        assert_eq!(eqf_train_options_free(std::ptr::null_mut()), EQF_OK);

        // Valid values are applied.
        assert_eq!(eqf_train_options_set_epochs(o, 3), EQF_OK);
        assert_eq!(eqf_train_options_set_batch_size(o, 5), EQF_OK);
        assert_eq!(eqf_train_options_set_rk4_steps(o, 7), EQF_OK);
        assert_eq!(eqf_train_options_set_learning_rate(o, 1e-3), EQF_OK);
        assert_eq!(eqf_train_options_set_weight_decay(o, 0.5), EQF_OK);
        assert_eq!(eqf_train_options_set_seed(o, u64::MAX), EQF_OK);
        assert_eq!(eqf_train_options_set_kT(o, 2.5), EQF_OK);
        assert_eq!(eqf_train_options_set_kl_samples(o, 9), EQF_OK);
        assert_eq!(eqf_train_options_set_lambda_linear(o, 1.0, 0.25), EQF_OK);
        let expected = TrainConfig {
            n_epochs: 3,
            batch_size: 5,
            n_rk4_steps: 7,
            optimizer: AdamWConfig {
                lr: 1e-3,
                weight_decay: 0.5,
                ..AdamWConfig::default()
            },
            lambda: LambdaSchedule::Linear {
                start: 1.0,
                end: 0.25,
            },
            n_kl_samples: 9,
            kt: 2.5,
            seed: u64::MAX,
            ..TrainConfig::default()
        };
        assert_eq!(options.config(), expected);
        assert_eq!(eqf_train_options_set_lambda(o, 0.0), EQF_OK);
        assert_eq!(options.config().lambda, LambdaSchedule::Constant(0.0));

        // Every rejected value names the setting and leaves the options unchanged. (The
        // status argument is evaluated right before `rejected` reads the message.)
        let before = options.config();
        rejected(
            eqf_train_options_set_epochs(o, 0),
            "n_epochs must be at least 1",
        );
        rejected(
            eqf_train_options_set_epochs(o, -2),
            "n_epochs = -2 is negative",
        );
        rejected(eqf_train_options_set_batch_size(o, 0), "batch_size");
        rejected(
            eqf_train_options_set_batch_size(o, i64::MAX),
            "EQF_MAX_ELEMENTS",
        );
        rejected(eqf_train_options_set_rk4_steps(o, 0), "n_steps");
        rejected(eqf_train_options_set_rk4_steps(o, 100_001), "1..=100000");
        rejected(eqf_train_options_set_learning_rate(o, 0.0), "lr");
        rejected(eqf_train_options_set_learning_rate(o, f64::NAN), "lr");
        rejected(eqf_train_options_set_learning_rate(o, f64::INFINITY), "lr");
        // lr · weight_decay must stay below 1 (the weight decay is 0.5 here).
        rejected(eqf_train_options_set_learning_rate(o, 2.0), "weight_decay");
        rejected(eqf_train_options_set_weight_decay(o, -1e-3), "weight_decay");
        rejected(
            eqf_train_options_set_weight_decay(o, f64::NAN),
            "weight_decay",
        );
        rejected(eqf_train_options_set_weight_decay(o, 1e4), "weight_decay");
        rejected(eqf_train_options_set_kT(o, 0.0), "kT must be positive");
        rejected(eqf_train_options_set_kT(o, -1.0), "kT must be positive");
        rejected(
            eqf_train_options_set_kT(o, f64::INFINITY),
            "kT must be positive",
        );
        rejected(eqf_train_options_set_kl_samples(o, 0), "n_kl_samples");
        rejected(eqf_train_options_set_kl_samples(o, -1), "n_kl_samples");
        rejected(
            eqf_train_options_set_lambda(o, 1.5),
            "λ must lie in [0, 1], got 1.5e0",
        );
        rejected(
            eqf_train_options_set_lambda(o, -0.1),
            "λ must lie in [0, 1]",
        );
        rejected(eqf_train_options_set_lambda(o, f64::NAN), "got NaN");
        rejected(
            eqf_train_options_set_lambda_linear(o, 1.0, f64::NAN),
            "got NaN",
        );
        rejected(eqf_train_options_set_lambda_linear(o, 1.2, 0.5), "got 1.2");
        assert_eq!(options.config(), before);

        // NULL options are rejected by every setter.
        for status in [
            eqf_train_options_set_epochs(null, 1),
            eqf_train_options_set_batch_size(null, 1),
            eqf_train_options_set_rk4_steps(null, 1),
            eqf_train_options_set_learning_rate(null, 1e-3),
            eqf_train_options_set_weight_decay(null, 0.0),
            eqf_train_options_set_seed(null, 1),
            eqf_train_options_set_kT(null, 1.0),
            eqf_train_options_set_kl_samples(null, 1),
            eqf_train_options_set_lambda(null, 1.0),
            eqf_train_options_set_lambda_linear(null, 1.0, 0.5),
            eqf_train_options_set_progress(null, Some(progress), null.cast()),
            eqf_train_options_set_kl_energy(null, std::ptr::null()),
            eqf_train_options_set_kl_energy_fn(null, Some(host_energy), null.cast()),
        ] {
            assert_eq!(status, EQF_ERR_NULL_POINTER);
        }
        assert!(message().contains("options"));

        // Callbacks and energies are set and removed (NULL).
        assert_eq!(
            eqf_train_options_set_progress(o, Some(progress), null.cast()),
            EQF_OK
        );
        assert!((*o).snapshot().progress.is_some());
        assert_eq!(eqf_train_options_set_progress(o, None, null.cast()), EQF_OK);
        assert!((*o).snapshot().progress.is_none());
        let fn_set = eqf_train_options_set_kl_energy_fn(o, Some(host_energy), null.cast());
        assert_eq!(fn_set, EQF_OK);
        assert!(matches!(
            (*o).snapshot().kl_energy,
            Some(KlTargetEnergy::Callback { .. })
        ));
        assert_eq!(eqf_train_options_set_kl_energy(o, std::ptr::null()), EQF_OK);
        assert!((*o).snapshot().kl_energy.is_none());
    }
}

#[test]
fn ml_training_matches_the_rust_trainer_and_fills_the_summary() {
    let data = dw4_data(48, 1);
    let validation = dw4_data(16, 2);
    let options = Options::small();
    let flow = FlowHandle::new(4, 2, 3);
    let before = flow.params();
    let (status, summary) = flow.train(&options, &data, &validation);
    assert_eq!(status, EQF_OK, "{}", message());

    let mut reference = Flow::new(4, 2, 3).unwrap();
    let expected = Trainer::new(options.config(), &data)
        .with_validation(&validation)
        .run(&mut reference, |_| true)
        .unwrap();
    assert_eq!(flow.params(), reference.field().params());
    assert_ne!(flow.params(), before);
    assert_eq!(summary.size, size_of::<eqf_train_summary>() as u64);
    assert_eq!(summary.n_epochs, 2);
    assert_eq!(summary.n_steps, 6, "2 epochs of ceil(48/16) steps");
    assert_eq!(summary.stopped_early, 0);
    assert_eq!(summary.best_epoch, expected.best_epoch as i64);
    let best = &expected.epochs[expected.best_epoch];
    assert_eq!(summary.best_validation_nll, best.validation_nll.unwrap());
    assert_eq!(
        summary.initial_validation_nll,
        expected.initial_validation_nll.unwrap()
    );
    assert_eq!(
        summary.final_validation_nll,
        expected.epochs[1].validation_nll.unwrap()
    );
    assert_eq!(summary.final_train_nll, expected.epochs[1].train_nll);
    assert!(summary.wall_seconds > 0.0);

    // Without a validation set its NLLs are NaN and the last epoch is kept.
    let flow = FlowHandle::new(4, 2, 3);
    let (status, summary) = flow.train(&options, &data, &[]);
    assert_eq!(status, EQF_OK);
    assert!(summary.initial_validation_nll.is_nan());
    assert!(summary.best_validation_nll.is_nan());
    assert!(summary.final_validation_nll.is_nan());
    assert_eq!(summary.best_epoch, 1);
}

#[test]
fn summary_sizes_are_honoured_in_both_directions() {
    let data = dw4_data(16, 3);
    let options = Options::small();
    // SAFETY: live options.
    unsafe { assert_eq!(eqf_train_options_set_epochs(options.0, 1), EQF_OK) };
    let flow = FlowHandle::new(4, 2, 4);
    let n = (data.len() / 8) as i64;

    // A caller compiled against a newer header: a larger struct. Only this library's
    // fields are written, and `size` says how many bytes.
    let mut bigger = [f64::to_bits(-7.0); 14];
    bigger[0] = 14 * 8;
    // SAFETY: live handles; `bigger` is an aligned buffer of 112 bytes whose first 8 hold
    // its size, as eqflow reads them.
    let status = unsafe {
        eqf_flow_train(
            flow.0,
            options.0,
            n,
            data.as_ptr(),
            0,
            std::ptr::null(),
            bigger.as_mut_ptr().cast(),
        )
    };
    assert_eq!(status, EQF_OK, "{}", message());
    assert_eq!(bigger[0], 80);
    assert_eq!(bigger[1], 1, "n_epochs");
    assert!(
        bigger[10..].iter().all(|&b| b == f64::to_bits(-7.0)),
        "overrun"
    );

    // Too small a size is rejected before any work: flow and struct unchanged.
    let before = flow.params();
    let mut small = sentinel_summary();
    small.size = 72;
    // SAFETY: as above, with a full summary.
    let status = unsafe {
        eqf_flow_train(
            flow.0,
            options.0,
            n,
            data.as_ptr(),
            0,
            std::ptr::null(),
            &raw mut small,
        )
    };
    assert_eq!(status, EQF_ERR_INVALID_ARGUMENT);
    assert!(
        message().contains("sizeof(eqf_train_summary)"),
        "{}",
        message()
    );
    assert_eq!(small.n_epochs, -7);
    assert_eq!(flow.params(), before);

    // NULL: no summary wanted.
    // SAFETY: live handles and data.
    let status = unsafe {
        eqf_flow_train(
            flow.0,
            options.0,
            n,
            data.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null_mut(),
        )
    };
    assert_eq!(status, EQF_OK);
    assert_ne!(flow.params(), before);
    assert_eq!(SUMMARY_V1_SIZE, size_of::<eqf_train_summary>());
    assert_eq!(size_of::<eqf_train_epoch>(), 80);
}

#[test]
fn progress_reports_every_epoch_and_can_stop_early() {
    let data = dw4_data(32, 4);
    let validation = dw4_data(8, 5);
    let options = Options::small();
    let mut record = Progress {
        reports: Vec::new(),
        stop_after: usize::MAX,
    };
    // SAFETY: live options; `record` outlives the training calls below.
    unsafe {
        assert_eq!(eqf_train_options_set_epochs(options.0, 3), EQF_OK);
        let user = (&raw mut record).cast();
        assert_eq!(
            eqf_train_options_set_progress(options.0, Some(progress), user),
            EQF_OK
        );
    }
    let flow = FlowHandle::new(4, 2, 5);
    let (status, summary) = flow.train(&options, &data, &validation);
    assert_eq!(status, EQF_OK);
    assert_eq!(summary.stopped_early, 0);
    assert_eq!(record.reports.len(), 3);
    for (e, report) in record.reports.iter().enumerate() {
        assert_eq!(report.size, size_of::<eqf_train_epoch>() as u64);
        assert_eq!(
            (report.epoch, report.n_epochs, report.n_steps),
            (e as i64, 3, 2)
        );
        assert_eq!(report.lambda, 1.0);
        assert!(report.train_kl.is_nan(), "no KL term with λ = 1");
        assert_eq!(report.train_loss, report.train_nll);
        assert!(report.validation_nll.is_finite());
        assert!(report.elapsed_seconds >= 0.0);
    }
    assert_eq!(
        summary.final_validation_nll,
        record.reports[2].validation_nll
    );

    // Non-zero from the callback stops after that epoch: a success, not an error.
    record.reports.clear();
    record.stop_after = 2;
    let flow = FlowHandle::new(4, 2, 5);
    let (status, summary) = flow.train(&options, &data, &validation);
    assert_eq!(status, EQF_OK);
    assert_eq!(record.reports.len(), 2);
    assert_eq!(
        (summary.stopped_early, summary.n_epochs, summary.n_steps),
        (1, 2, 4)
    );
}

/// Options for a short ML+KL run on DW-4.
fn ml_kl_options() -> Options {
    let options = Options::small();
    // SAFETY: live options.
    unsafe {
        assert_eq!(
            eqf_train_options_set_lambda_linear(options.0, 0.9, 0.5),
            EQF_OK
        );
        assert_eq!(eqf_train_options_set_kl_samples(options.0, 8), EQF_OK);
    }
    options
}

/// Gives `options` the built-in DW-4 energy as its KL energy, the handle freed at once (the
/// options keep it alive).
fn set_double_well_kl_energy(options: &Options) {
    let mut energy = std::ptr::null_mut();
    // SAFETY: valid pointer slot; live options; the energy handle is freed once.
    unsafe {
        let status = eqf_energy_double_well(4, 2, 0.0, -4.0, 0.9, 4.0, &raw mut energy);
        assert_eq!(status, EQF_OK);
        assert_eq!(eqf_train_options_set_kl_energy(options.0, energy), EQF_OK);
        assert_eq!(eqf_energy_free(energy), EQF_OK);
    }
}

#[test]
fn kl_callback_runs_on_the_calling_thread_and_matches_the_builtin_energy_bit_for_bit() {
    let data = dw4_data(32, 6);
    let validation = dw4_data(8, 7);
    let options = ml_kl_options();
    // λ < 1 without a KL energy is refused, naming the setters.
    let flow = FlowHandle::new(4, 2, 8);
    let (status, _) = flow.train(&options, &data, &validation);
    assert_eq!(status, EQF_ERR_INVALID_ARGUMENT);
    assert!(
        message().contains("eqf_train_options_set_kl_energy"),
        "{}",
        message()
    );

    // The built-in energy.
    set_double_well_kl_energy(&options);
    let builtin = FlowHandle::new(4, 2, 8);
    let (status, builtin_summary) = builtin.train(&options, &data, &validation);
    assert_eq!(status, EQF_OK, "{}", message());

    // The same numbers from a host callback.
    let host = Host::new(usize::MAX, Failure::Status);
    // SAFETY: live options; `host` outlives the training call.
    let status =
        unsafe { eqf_train_options_set_kl_energy_fn(options.0, Some(host_energy), host.user()) };
    assert_eq!(status, EQF_OK);
    let callback = FlowHandle::new(4, 2, 8);
    let (status, callback_summary) = callback.train(&options, &data, &validation);
    assert_eq!(status, EQF_OK, "{}", message());
    assert_eq!(callback.params(), builtin.params());
    assert_eq!(
        callback_summary.final_train_nll.to_bits(),
        builtin_summary.final_train_nll.to_bits()
    );
    assert_eq!(
        host.calls.get(),
        4 * 8,
        "one call per KL sample of 2 epochs of 2 steps"
    );
    assert!(
        !host.foreign_thread_or_reentrant.get(),
        "the callback ran on another thread or concurrently"
    );

    // And both are the Rust trainer's result with the Rust energy.
    let mut reference = Flow::new(4, 2, 8).unwrap();
    Trainer::new(options.config(), &data)
        .with_validation(&validation)
        .with_energy(&DoubleWell::dw4())
        .run(&mut reference, |_| true)
        .unwrap();
    assert_eq!(callback.params(), reference.field().params());
}

#[test]
fn callback_failures_stop_training_and_leave_the_flow_and_summary_unchanged() {
    let data = dw4_data(32, 8);
    let options = ml_kl_options();
    let cases = [
        (Failure::Status, EQF_ERR_CALLBACK, "callback returned 3"),
        (
            Failure::StatusWithMessage,
            EQF_ERR_CALLBACK,
            "callback returned 4: bond 2-3 broken",
        ),
        (Failure::NanEnergy, EQF_ERR_CALLBACK, "U = NaN"),
        (Failure::NanGradient, EQF_ERR_CALLBACK, "component 5 is NaN"),
        (
            Failure::MissingGradient,
            EQF_ERR_CALLBACK,
            "non-finite gradient",
        ),
        (Failure::InfiniteEnergy, EQF_ERR_NON_FINITE, "U(F(z)) = inf"),
    ];
    for (failure, expected, needle) in cases {
        // Fail in the second step, on its third sample (index 8 + 2 = 10).
        let host = Host::new(10, failure);
        // SAFETY: live options; `host` outlives the training call.
        unsafe {
            let user = host.user();
            let status = eqf_train_options_set_kl_energy_fn(options.0, Some(host_energy), user);
            assert_eq!(status, EQF_OK);
        }
        let flow = FlowHandle::new(4, 2, 9);
        let before = flow.params();
        let (status, summary) = flow.train(&options, &data, &[]);
        assert_eq!(status, expected, "{}", message());
        let message = message();
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        assert!(message.contains("index 10"), "{message}");
        assert_eq!(host.calls.get(), 11, "no call after the failing sample");
        assert_eq!(flow.params(), before);
        assert_eq!(summary, sentinel_summary());
    }
}

/// A move energy that sets the message "MOVE-INNER" and returns the DW-4 energy (success).
unsafe extern "C" fn move_energy_with_message(
    _: *mut c_void,
    n_particles: i64,
    dim: i64,
    x: *const f64,
    u: *mut f64,
) -> i32 {
    // SAFETY: a valid C string; eqflow passes N*D doubles and a writable double.
    unsafe {
        crate::ffi::callback_error::eqf_set_callback_error(c"MOVE-INNER".as_ptr());
        let x = std::slice::from_raw_parts(x, (n_particles * dim) as usize);
        u.write(DoubleWell::dw4().energy(x));
    }
    0
}

/// A KL energy that sets the message "KL-OUTER", runs a step of the move `user` points to
/// (whose callback sets "MOVE-INNER" and succeeds), and fails.
unsafe extern "C" fn kl_energy_nesting_a_step(
    user: *mut c_void,
    n_particles: i64,
    dim: i64,
    x: *const f64,
    u: *mut f64,
    _: *mut f64,
) -> i32 {
    // SAFETY: a valid C string; the test passes a live move as `user`; eqflow passes N*D
    // doubles and a writable double; the nested step gets buffers of the right sizes.
    unsafe {
        crate::ffi::callback_error::eqf_set_callback_error(c"KL-OUTER".as_ptr());
        let mut y = std::slice::from_raw_parts(x, (n_particles * dim) as usize).to_vec();
        let mut u_y = DoubleWell::dw4().energy(&y);
        let mut accepted = -7;
        let status = crate::ffi::flow_move::eqf_move_step(
            user.cast(),
            y.as_mut_ptr(),
            &raw mut u_y,
            Some(move_energy_with_message),
            std::ptr::null_mut(),
            &raw mut accepted,
        );
        assert_eq!(status, EQF_OK);
        u.write(0.0);
    }
    1
}

/// Issue F1 of the C-ABI sweep, from a KL energy: its message "KL-OUTER" was replaced by the
/// message of the move callback it ran (which succeeded, so its message is discarded).
#[test]
fn a_kl_callback_keeps_its_message_across_a_nested_move_step() {
    let data = dw4_data(16, 8);
    let options = ml_kl_options();
    let mut flow_for_move = std::ptr::null_mut();
    let mut mv = std::ptr::null_mut();
    // SAFETY: valid pointer slots; live options; the move outlives the training call.
    unsafe {
        assert_eq!(eqf_flow_new(4, 2, 5, &raw mut flow_for_move), EQF_OK);
        assert_eq!(
            crate::ffi::flow_move::eqf_move_new(flow_for_move, 1.0, 3, &raw mut mv),
            EQF_OK
        );
        let status = eqf_train_options_set_kl_energy_fn(
            options.0,
            Some(kl_energy_nesting_a_step),
            mv.cast(),
        );
        assert_eq!(status, EQF_OK);
    }
    let flow = FlowHandle::new(4, 2, 9);
    let before = flow.params();
    let (status, _) = flow.train(&options, &data, &[]);
    assert_eq!(status, EQF_ERR_CALLBACK, "{}", message());
    let message = message();
    assert!(
        message.contains("returned 1: KL-OUTER") && !message.contains("MOVE-INNER"),
        "{message}"
    );
    assert_eq!(flow.params(), before);
    // SAFETY: created above, freed once.
    unsafe {
        assert_eq!(crate::ffi::flow_move::eqf_move_free(mv), EQF_OK);
        assert_eq!(crate::ffi::flow::eqf_flow_free(flow_for_move), EQF_OK);
    }
}

/// A DW-4-sized flow (N = 4, D = 2) whose particles are of the given species.
fn species_flow(species: &[u32; 4], n_species: i64) -> FlowHandle {
    let options = crate::ffi::test_handles::FlowOptionsHandle::new();
    let mut out = std::ptr::null_mut();
    // SAFETY: live options; four indices; a valid pointer slot.
    unsafe {
        let status = crate::ffi::flow_options::eqf_flow_options_set_species(
            options.0,
            species.as_ptr(),
            4,
            n_species,
        );
        assert_eq!(status, EQF_OK, "{}", message());
        let status =
            crate::ffi::flow_options::eqf_flow_new_with_options(4, 2, options.0, &raw mut out);
        assert_eq!(status, EQF_OK, "{}", message());
    }
    FlowHandle(out)
}

/// A Lennard-Jones energy of four particles in 2-D of the given species (pair minima at 4,
/// as in DW-4; unlike species pairs bound more weakly), to be freed by the caller.
fn species_energy(species: &[u32; 4], n_species: usize) -> *mut crate::ffi::energy::eqf_energy {
    let s = n_species;
    let epsilon: Vec<f64> = (0..s * s)
        .map(|k| if k / s == k % s { 1.0 } else { 0.5 })
        .collect();
    let r_m = vec![4.0; s * s];
    let mut out = std::ptr::null_mut();
    // SAFETY: four indices, S×S parameter arrays and a valid pointer slot.
    let status = unsafe {
        crate::ffi::energy::eqf_energy_lennard_jones_species(
            4,
            2,
            species.as_ptr(),
            s as i64,
            epsilon.as_ptr(),
            r_m.as_ptr(),
            1.0,
            &raw mut out,
        )
    };
    assert_eq!(status, EQF_OK, "{}", message());
    out
}

/// Issue G of the C-ABI sweep: a KL energy whose species differ from the flow's was accepted
/// (only N and D were checked), training the flow towards a system it does not describe. An
/// energy with several species needs exactly the flow's species; an energy of identical
/// particles suits any flow.
#[test]
fn a_kl_energy_of_other_species_than_the_flows_is_refused() {
    let data = dw4_data(16, 8);
    let options = ml_kl_options();
    let binary = [0, 0, 1, 1];
    let mut double_well = std::ptr::null_mut();
    // SAFETY: a valid pointer slot.
    let status = unsafe { eqf_energy_double_well(4, 2, 0.0, -4.0, 0.9, 4.0, &raw mut double_well) };
    assert_eq!(status, EQF_OK);
    let cases = [
        // (flow species, energy, None if accepted or what the refusal says)
        (
            Some(binary),
            species_energy(&[0, 1, 0, 1], 2),
            Some("particle 1 is of species 1, the flow's of species 0"),
        ),
        (
            Some(binary),
            species_energy(&[0, 0, 1, 2], 3),
            Some("KL energy has 3 species, the flow 2"),
        ),
        (
            None,
            species_energy(&binary, 2),
            Some("the flow treats all particles as one species"),
        ),
        (Some(binary), species_energy(&binary, 2), None),
        (Some(binary), double_well, None),
        (Some(binary), species_energy(&[0; 4], 1), None),
        (None, species_energy(&[0; 4], 1), None),
    ];
    for (i, (flow_species, energy, refusal)) in cases.into_iter().enumerate() {
        let flow = match flow_species {
            Some(species) => species_flow(&species, 2),
            None => FlowHandle::new(4, 2, 9),
        };
        // SAFETY: live options and energy; the options keep the energy, freed here once.
        unsafe {
            assert_eq!(eqf_train_options_set_kl_energy(options.0, energy), EQF_OK);
            assert_eq!(eqf_energy_free(energy), EQF_OK);
        }
        let before = flow.params();
        let (status, summary) = flow.train(&options, &data, &[]);
        let message = message();
        match refusal {
            Some(needle) => {
                assert_eq!(status, EQF_ERR_INVALID_ARGUMENT, "case {i}: {message}");
                assert!(
                    message.contains(needle),
                    "case {i}: {message:?} lacks {needle:?}"
                );
                assert_eq!(flow.params(), before, "case {i}");
                assert_eq!(summary, sentinel_summary(), "case {i}");
            }
            None => {
                assert_eq!(status, EQF_OK, "case {i}: {message}");
                assert_ne!(flow.params(), before, "case {i}");
            }
        }
    }
}

#[test]
fn bad_arguments_are_rejected_before_training() {
    let data = dw4_data(16, 9);
    let options = Options::small();
    let flow = FlowHandle::new(4, 2, 10);
    let before = flow.params();
    let n = (data.len() / 8) as i64;
    let x = data.as_ptr();
    let null = std::ptr::null::<f64>();
    let no_summary = std::ptr::null_mut();
    // SAFETY: live handles and arrays, or NULLs (rejected); counts never exceed the data.
    unsafe {
        let train = |flow: *mut eqf_flow,
                     options: *const eqf_train_options,
                     n_train: i64,
                     x_train: *const f64,
                     n_val: i64,
                     x_val: *const f64| {
            eqf_flow_train(flow, options, n_train, x_train, n_val, x_val, no_summary)
        };
        let null_flow = std::ptr::null_mut();
        let status = train(null_flow, options.0.cast_const(), n, x, 0, null);
        assert_eq!(status, EQF_ERR_NULL_POINTER);
        assert!(message().contains("flow"));
        let status = train(flow.0, std::ptr::null(), n, x, 0, null);
        assert_eq!(status, EQF_ERR_NULL_POINTER);
        assert!(message().contains("options"));
        let status = train(flow.0, options.0, n, null, 0, null);
        assert_eq!(status, EQF_ERR_NULL_POINTER);
        assert!(message().contains("x_train"));
        let status = train(flow.0, options.0, n, x, 2, null);
        assert_eq!(status, EQF_ERR_NULL_POINTER);
        assert!(message().contains("x_validation"));
        assert_eq!(
            train(flow.0, options.0, 0, x, 0, null),
            EQF_ERR_INVALID_ARGUMENT
        );
        assert!(message().contains("n_train = 0"));
        assert_eq!(
            train(flow.0, options.0, -1, x, 0, null),
            EQF_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            train(flow.0, options.0, n, x, -1, null),
            EQF_ERR_INVALID_ARGUMENT
        );
        let status = train(flow.0, options.0, i64::MAX, x, 0, null);
        assert_eq!(status, EQF_ERR_INVALID_ARGUMENT);
        let mut bad = data.clone();
        bad[13] = f64::NAN;
        let status = train(flow.0, options.0, n, bad.as_ptr(), 0, null);
        assert_eq!(status, EQF_ERR_NON_FINITE);
        let status = train(flow.0, options.0, n, x, 1, bad[8..].as_ptr());
        assert_eq!(status, EQF_ERR_NON_FINITE);
        assert!(message().contains("validation"), "{}", message());

        // A KL energy for other particles.
        let mut lj = std::ptr::null_mut();
        assert_eq!(
            eqf_energy_lennard_jones(13, 3, 2.0, 1.0, 1.0, &raw mut lj),
            EQF_OK
        );
        assert_eq!(eqf_train_options_set_kl_energy(options.0, lj), EQF_OK);
        assert_eq!(eqf_energy_free(lj), EQF_OK);
        assert_eq!(eqf_train_options_set_lambda(options.0, 0.5), EQF_OK);
        assert_eq!(
            train(flow.0, options.0, n, x, 0, null),
            EQF_ERR_INVALID_ARGUMENT
        );
        assert!(message().contains("13 particles"), "{}", message());

        // A misaligned summary.
        let mut buffer = [0_u64; 12];
        let misaligned = buffer.as_mut_ptr().cast::<u8>().wrapping_add(4).cast();
        let status = eqf_flow_train(flow.0, options.0, n, x, 0, null, misaligned);
        assert_eq!(status, EQF_ERR_INVALID_ARGUMENT);
    }
    assert_eq!(flow.params(), before);
}

#[test]
fn training_is_bit_identical_for_one_and_two_threads() {
    // The pool size is process-wide: hold the lock the thread-count tests share.
    let _guard = crate::ffi::log::tests::INSTALLS
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let data = dw4_data(32, 10);
    let validation = dw4_data(8, 11);
    let options = ml_kl_options();
    let host = Host::new(usize::MAX, Failure::Status);
    // SAFETY: live options; `host` outlives the training calls.
    unsafe {
        let user = host.user();
        let status = eqf_train_options_set_kl_energy_fn(options.0, Some(host_energy), user);
        assert_eq!(status, EQF_OK);
    }
    let mut results = Vec::new();
    for threads in [1, 2] {
        assert_eq!(eqf_set_num_threads(threads), EQF_OK);
        let flow = FlowHandle::new(4, 2, 11);
        let (status, summary) = flow.train(&options, &data, &validation);
        assert_eq!(status, EQF_OK, "{}", message());
        results.push((flow.params(), summary.best_validation_nll.to_bits()));
    }
    assert_eq!(eqf_set_num_threads(0), EQF_OK);
    assert_eq!(results[0], results[1]);
    assert!(!host.foreign_thread_or_reentrant.get());
}

#[test]
fn sampling_after_training_uses_the_new_parameters() {
    let data = dw4_data(32, 12);
    let options = Options::small();
    let flow = FlowHandle::new(4, 2, 13);
    let sample = |flow: &FlowHandle| {
        let (mut x, mut log_q) = (vec![0.0; 5 * 8], vec![0.0; 5]);
        // SAFETY: live handle; buffers of 5 configurations and 5 doubles.
        let status = unsafe { eqf_flow_sample(flow.0, 4, 5, x.as_mut_ptr(), log_q.as_mut_ptr()) };
        assert_eq!(status, EQF_OK);
        (x, log_q)
    };
    // Sampling first builds the flow's radial tables for the untrained parameters.
    let untrained = sample(&flow);
    let (status, _) = flow.train(&options, &data, &[]);
    assert_eq!(status, EQF_OK);
    let trained = sample(&flow);
    assert_ne!(trained, untrained);
    let mut reference = Flow::new(4, 2, 13).unwrap();
    reference.set_params(&flow.params()).unwrap();
    assert_eq!(trained, reference.sample(4, 5).unwrap());
}

#[test]
fn objective_is_set_and_validated() {
    let options = Options::new();
    let o = options.0;
    // SAFETY: live options and flow handles; valid pointers.
    unsafe {
        assert_eq!(
            eqf_train_options_set_objective(o, EQF_OBJECTIVE_FLOW_MATCHING_OT),
            EQF_OK
        );
        assert_eq!(
            options.config().objective,
            crate::train::Objective::FlowMatching {
                pairing: crate::train::Pairing::EquivariantOt
            }
        );
        // Unknown objectives and flow matching with λ < 1 are refused, options unchanged.
        let before = options.config();
        assert_eq!(
            eqf_train_options_set_objective(o, 7),
            EQF_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            eqf_train_options_set_lambda(o, 0.5),
            EQF_ERR_INVALID_ARGUMENT
        );
        assert_eq!(options.config(), before);
        assert_eq!(
            eqf_train_options_set_objective(std::ptr::null_mut(), 0),
            EQF_ERR_NULL_POINTER
        );
        assert_eq!(
            eqf_train_options_set_objective(o, EQF_OBJECTIVE_MAXIMUM_LIKELIHOOD),
            EQF_OK
        );
        assert_eq!(
            options.config().objective,
            crate::train::Objective::MaximumLikelihood
        );
        assert_eq!(
            eqf_train_options_set_objective(o, EQF_OBJECTIVE_DISCRETE_LIKELIHOOD),
            EQF_OK
        );
        assert_eq!(
            options.config().objective,
            crate::train::Objective::DiscreteLikelihood
        );
        for (constant, probe) in [
            (
                EQF_OBJECTIVE_HUTCHINSON_RADEMACHER,
                crate::train::Probe::Rademacher,
            ),
            (
                EQF_OBJECTIVE_HUTCHINSON_GAUSSIAN,
                crate::train::Probe::Gaussian,
            ),
        ] {
            assert_eq!(eqf_train_options_set_objective(o, constant), EQF_OK);
            assert_eq!(
                options.config().objective,
                crate::train::Objective::HutchinsonLikelihood { probe }
            );
        }
    }
}

#[test]
fn the_lipschitz_penalty_setter_validates_and_leaves_the_options_unchanged_on_error() {
    let options = Options::new();
    let o = options.0;
    // SAFETY: live options or NULL (rejected).
    unsafe {
        assert_eq!(
            eqf_train_options_set_lipschitz_penalty(std::ptr::null_mut(), 1.0, 0.9),
            EQF_ERR_NULL_POINTER
        );
        assert_eq!(eqf_train_options_set_lipschitz_penalty(o, 2.0, 0.8), EQF_OK);
        let good = options.config();
        assert_eq!((good.lipschitz_penalty, good.lipschitz_target), (2.0, 0.8));
        rejected(
            eqf_train_options_set_lipschitz_penalty(o, -1.0, 0.9),
            "lipschitz_penalty",
        );
        rejected(
            eqf_train_options_set_lipschitz_penalty(o, f64::NAN, 0.9),
            "lipschitz_penalty",
        );
        rejected(
            eqf_train_options_set_lipschitz_penalty(o, 1.0, 1.0),
            "lipschitz_target",
        );
        assert_eq!(options.config(), good);
    }
}

/// Asserts `EQF_ERR_RESOURCE` with the need and the 1 TiB limit in the message.
fn assert_resource(status: i32, needle: &str) {
    assert_eq!(status, crate::ffi::EQF_ERR_RESOURCE, "{}", message());
    let message = message();
    assert!(
        message.contains(needle)
            && message.contains("needs")
            && message.contains("limit is 1099511627776 bytes"),
        "{message}"
    );
}

#[test]
fn an_absurd_epoch_count_is_not_allocated_up_front() {
    // Issue 14: the epoch reports were reserved for all n_epochs at once, so 2^40 epochs
    // aborted the host before the first epoch ran.
    let data = dw4_data(32, 4);
    let options = Options::small();
    let mut record = Progress {
        reports: Vec::new(),
        stop_after: 1,
    };
    // SAFETY: live options; `record` outlives the training call below.
    unsafe {
        assert_eq!(eqf_train_options_set_epochs(options.0, 1 << 40), EQF_OK);
        let user = (&raw mut record).cast();
        assert_eq!(
            eqf_train_options_set_progress(options.0, Some(progress), user),
            EQF_OK
        );
    }
    let flow = FlowHandle::new(4, 2, 5);
    let (status, summary) = flow.train(&options, &data, &[]);
    assert_eq!(status, EQF_OK, "{}", message());
    assert_eq!((summary.stopped_early, summary.n_epochs), (1, 1));
    assert_eq!(record.reports[0].n_epochs, 1 << 40);
}

#[test]
fn an_absurd_kl_sample_count_is_a_resource_error_and_leaves_the_flow_unchanged() {
    let data = dw4_data(32, 4);
    let options = ml_kl_options();
    set_double_well_kl_energy(&options);
    // SAFETY: live options.
    unsafe {
        assert_eq!(eqf_train_options_set_kl_samples(options.0, 1 << 40), EQF_OK);
    }
    let flow = FlowHandle::new(4, 2, 5);
    let before = flow.params();
    let (status, summary) = flow.train(&options, &data, &[]);
    // 2^40 trajectories of 4·6 steps·8 coordinates (and more) each.
    assert_resource(
        status,
        "one training step (1099511627776 KL samples of 6 RK4 steps",
    );
    assert_eq!(flow.params(), before);
    assert_eq!(summary.n_epochs, -7, "summary not written");
}

#[test]
fn equivariant_ot_on_a_huge_batch_is_a_resource_error() {
    // 2^17 configurations in one batch: 2^34 alignments of N·D = 8 coordinates, 1.2 TiB.
    let n_train = 1usize << 17;
    let data: Vec<f64> = (0..n_train * 8).map(|i| ((i % 97) as f64).sin()).collect();
    let options = Options::small();
    // SAFETY: live options.
    unsafe {
        assert_eq!(eqf_train_options_set_batch_size(options.0, 1 << 40), EQF_OK);
        assert_eq!(
            eqf_train_options_set_objective(options.0, EQF_OBJECTIVE_FLOW_MATCHING_OT),
            EQF_OK
        );
    }
    let flow = FlowHandle::new(4, 2, 5);
    let before = flow.params();
    let (status, _) = flow.train(&options, &data, &[]);
    assert_resource(status, "batch of 131072");
    assert_eq!(flow.params(), before);
}

#[test]
fn an_rk4_tape_beyond_the_limit_is_a_resource_error() {
    // N·D = 400,000 coordinates and 10^5 steps: a tape of 4·10^5·4·10^5 doubles, 1.28 TB.
    let mut flow = std::ptr::null_mut();
    // SAFETY: a valid pointer slot.
    let status = unsafe { eqf_flow_new(200_000, 2, 0, &raw mut flow) };
    assert_eq!(status, EQF_OK);
    let flow = FlowHandle(flow);
    let options = Options::small();
    // SAFETY: live options.
    let status = unsafe { eqf_train_options_set_rk4_steps(options.0, 100_000) };
    assert_eq!(status, EQF_OK);
    let data: Vec<f64> = (0..400_000).map(|i| ((i % 89) as f64).cos()).collect();
    let before = flow.params();
    let mut summary = sentinel_summary();
    // SAFETY: live handles; one configuration of N·D doubles; a full summary.
    let status = unsafe {
        eqf_flow_train(
            flow.0,
            options.0,
            1,
            data.as_ptr(),
            0,
            std::ptr::null(),
            &raw mut summary,
        )
    };
    assert_resource(status, "the RK4 tape of training");
    assert_eq!(flow.params(), before);
    assert_eq!(summary.n_epochs, -7);
}

/// Installs `host`'s KL energy and a progress callback that records into `reports`; both must
/// outlive the training calls made with `options`.
fn install_energy_and_progress(options: &Options, host: &Host, reports: &mut Progress) {
    // SAFETY: live options; the caller keeps `host` and `reports` alive through training.
    unsafe {
        let user = host.user();
        let status = eqf_train_options_set_kl_energy_fn(options.0, Some(host_energy), user);
        assert_eq!(status, EQF_OK);
        let user = std::ptr::from_mut(reports).cast();
        assert_eq!(
            eqf_train_options_set_progress(options.0, Some(progress), user),
            EQF_OK
        );
    }
}

#[test]
fn a_diverged_kl_loss_fails_and_leaves_the_flow_unchanged() {
    // Finite U = -1e308 with a finite gradient: each sample's loss is finite, but the mean of
    // the step (a sum over its KL samples) overflows to -inf.
    let data = dw4_data(32, 8);
    let options = ml_kl_options();
    // From the third sample of the second step on (index 8 + 2 = 10).
    let host = Host::new(10, Failure::Energy(-1e308));
    let mut reports = Progress {
        reports: Vec::new(),
        stop_after: usize::MAX,
    };
    install_energy_and_progress(&options, &host, &mut reports);
    let flow = FlowHandle::new(4, 2, 9);
    let before = flow.params();
    let (status, summary) = flow.train(&options, &data, &[]);
    assert_eq!(status, EQF_ERR_NON_FINITE, "{}", message());
    let message = message();
    assert!(
        message.contains("training diverged at epoch 0 step 1")
            && message.contains("mean loss of a batch of 8 samples is -inf")
            && message.contains("overflow"),
        "{message}"
    );
    assert_eq!(flow.params(), before);
    assert_eq!(summary, sentinel_summary());
    assert!(reports.reports.is_empty(), "no report of the failed epoch");

    // The Rust trainer (and so the CLI) says the same.
    let mut reference = Flow::new(4, 2, 9).unwrap();
    let params = reference.field().params().to_vec();
    struct Diverging;
    impl crate::energy::SerialEnergy for Diverging {
        fn n_particles(&self) -> usize {
            4
        }
        fn dim(&self) -> usize {
            2
        }
        fn energy_gradient_into(&self, x: &[f64], gradient: &mut [f64]) -> crate::Result<f64> {
            DoubleWell::dw4().energy_gradient_into(x, gradient);
            Ok(-1e308)
        }
    }
    let error = Trainer::new(options.config(), &data)
        .with_serial_energy(&Diverging)
        .run(&mut reference, |_| true)
        .unwrap_err();
    let error = error.to_string();
    assert!(
        error.contains("training diverged at epoch 0 step 0")
            && error.contains("mean loss of a batch of 8 samples is -inf"),
        "{error}"
    );
    assert_eq!(reference.field().params(), &params[..]);
}

/// Sweep 29: at kT = 1e-300 the built-in KL loss (~1e302) and its gradient (~1e299) are
/// finite, but the gradient's square overflows AdamW's second moment, so every update was 0,
/// the flow only weight-decayed, and the run returned OK. It is a diverged run naming the
/// overflow and kT, and the flow is unchanged.
#[test]
fn a_gradient_whose_square_overflows_the_optimiser_is_a_diverged_run_naming_kt() {
    let data = dw4_data(32, 8);
    let options = ml_kl_options();
    set_double_well_kl_energy(&options);
    // SAFETY: live options.
    unsafe {
        assert_eq!(eqf_train_options_set_kT(options.0, 1e-300), EQF_OK);
    }
    let flow = FlowHandle::new(4, 2, 9);
    let before = flow.params();
    let (status, summary) = flow.train(&options, &data, &[]);
    let message = message();
    assert_eq!(status, EQF_ERR_NON_FINITE, "{message}");
    assert!(
        message.contains("training diverged at epoch 0 step 0")
            && message.contains("square overflows AdamW's second moment")
            && message.contains("kT = 1e-300")
            && message.contains("the flow is unchanged"),
        "{message}"
    );
    assert_eq!(flow.params(), before);
    assert_eq!(summary, sentinel_summary());
}

/// Session 23: a learning rate within the setter's range (1e3 here, 1e6 in the CLI report)
/// can throw the parameters out of the field's usable ranges in one step; the error says the
/// run diverged and names the learning rate (it read "log inverse bandwidth 1000.69 gives an
/// unusable 1/γ²"), and the flow is unchanged.
#[test]
fn a_step_that_leaves_the_usable_ranges_is_a_diverged_run_naming_the_learning_rate() {
    let data = dw4_data(32, 8);
    let options = Options::small();
    // SAFETY: live options.
    unsafe { assert_eq!(eqf_train_options_set_learning_rate(options.0, 1e3), EQF_OK) };
    let flow = FlowHandle::new(4, 2, 9);
    let before = flow.params();
    let (status, _) = flow.train(&options, &data, &[]);
    let message = message();
    assert_eq!(status, EQF_ERR_NON_FINITE, "{message}");
    assert!(
        message.contains("training diverged") && message.contains("learning rate 1e3"),
        "{message}"
    );
    assert_eq!(flow.params(), before);
}

#[test]
fn a_large_but_finite_kl_loss_trains_with_finite_reports() {
    // One KL sample per step of loss ~1e308: every step is finite, but the plain sum of the
    // epoch's KL losses would overflow.
    let data = dw4_data(32, 8);
    let options = ml_kl_options();
    // SAFETY: live options.
    unsafe { assert_eq!(eqf_train_options_set_kl_samples(options.0, 1), EQF_OK) };
    let host = Host::new(0, Failure::Energy(1e308));
    let mut reports = Progress {
        reports: Vec::new(),
        stop_after: usize::MAX,
    };
    install_energy_and_progress(&options, &host, &mut reports);
    let flow = FlowHandle::new(4, 2, 9);
    let (status, summary) = flow.train(&options, &data, &[]);
    assert_eq!(status, EQF_OK, "{}", message());
    assert_eq!(summary.n_epochs, 2);
    assert_eq!(reports.reports.len(), 2);
    for report in &reports.reports {
        for value in [report.train_nll, report.train_kl, report.train_loss] {
            assert!(value.is_finite(), "{value}");
        }
        assert!(report.train_kl > 9e307, "{}", report.train_kl);
    }
}

/// What the gated progress callback shares with the test: it reports that training has
/// reached an epoch's end, then waits until told to go on.
struct TrainGate {
    inside: std::sync::mpsc::Sender<()>,
    go: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

unsafe extern "C" fn gated_progress(user: *mut c_void, _: *const eqf_train_epoch) -> i32 {
    // SAFETY: the test passes a live `TrainGate` that outlives training.
    let gate = unsafe { &*user.cast::<TrainGate>() };
    gate.inside.send(()).unwrap();
    gate.go.lock().unwrap().recv().unwrap();
    0
}

/// Another thread may sample from a flow while `eqf_flow_train` retrains it: it sees the old
/// flow, bit for bit, until the call ends, and the trained one after (no torn read).
#[test]
fn other_threads_read_the_old_flow_until_training_commits() {
    let data = dw4_data(32, 8);
    let options = Options::small();
    let (inside_tx, inside_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let gate = TrainGate {
        inside: inside_tx,
        go: std::sync::Mutex::new(go_rx),
    };
    // SAFETY: live options; the gate outlives training.
    unsafe {
        let user = std::ptr::from_ref(&gate).cast_mut().cast::<c_void>();
        let status = eqf_train_options_set_progress(options.0, Some(gated_progress), user);
        assert_eq!(status, EQF_OK);
    }
    let flow = FlowHandle::new(4, 2, 9);
    let before = flow.params();
    let sample = |flow: *const eqf_flow| {
        let (mut x, mut log_q) = (vec![0.0; 8], [0.0]);
        // SAFETY: a live flow; outputs of one DW-4 sample.
        let status = unsafe { eqf_flow_sample(flow, 5, 1, x.as_mut_ptr(), log_q.as_mut_ptr()) };
        assert_eq!(status, EQF_OK, "{}", message());
        (x, log_q[0])
    };
    let old_sample = sample(flow.0);
    let address = flow.0.expose_provenance();
    let options_address = options.0.expose_provenance();
    let data = &data;
    std::thread::scope(|scope| {
        let trainer = scope.spawn(move || {
            let flow = std::ptr::with_exposed_provenance_mut::<eqf_flow>(address);
            let options = std::ptr::with_exposed_provenance::<eqf_train_options>(options_address);
            let mut summary = sentinel_summary();
            // SAFETY: live handles; whole DW-4 configurations; a full summary.
            unsafe {
                eqf_flow_train(
                    flow,
                    options,
                    32,
                    data.as_ptr(),
                    0,
                    std::ptr::null(),
                    &raw mut summary,
                )
            }
        });
        for _ in 0..2 {
            // Training is held inside an epoch's report: the flow is the old one.
            inside_rx.recv().unwrap();
            assert_eq!(sample(flow.0), old_sample);
            go_tx.send(()).unwrap();
        }
        assert_eq!(trainer.join().unwrap(), EQF_OK);
    });
    assert_ne!(flow.params(), before, "trained");
    assert_ne!(sample(flow.0), old_sample);
}

/// The commit of a trained flow waits for readers on other threads; from a thread that itself
/// holds a flow's read lock (a log callback inside a call) it refuses instead of waiting for
/// itself, and `eqf_flow_train` refuses before training.
#[test]
fn a_commit_from_inside_a_flow_call_on_the_same_thread_is_refused() {
    let flow = FlowHandle::new(4, 2, 9);
    let other = crate::Flow::new(4, 2, 10).unwrap();
    let data = dw4_data(32, 8);
    let options = Options::small();
    // SAFETY: a live handle.
    let handle = unsafe { &*flow.0 };
    let reading = handle.flow();
    assert!(matches!(
        handle.replace(other.clone()),
        Err(crate::Error::InvalidState { .. })
    ));
    let (status, summary) = flow.train(&options, &data, &[]);
    assert_eq!(status, crate::ffi::EQF_ERR_INVALID_STATE);
    assert!(message().contains("from a callback"), "{}", message());
    assert_eq!(summary, sentinel_summary());
    drop(reading);
    handle.replace(other.clone()).unwrap();
    assert_eq!(flow.params(), other.field().params());
}

/// What [`train_from_log`] trains, and the statuses it got.
struct TrainFromLog {
    /// The test's thread: messages of other tests' calls (on other threads) are ignored.
    thread: std::thread::ThreadId,
    flow: *mut eqf_flow,
    options: *const eqf_train_options,
    data: Vec<f64>,
    statuses: std::sync::Mutex<Vec<i32>>,
}

/// A log callback that trains `user`'s flow (a `TrainFromLog`) on every message of its test's
/// thread.
unsafe extern "C" fn train_from_log(user: *mut c_void, _: i32, _: *const std::ffi::c_char) {
    // SAFETY: the test installs this callback with a live `TrainFromLog`, shared read-only
    // apart from its lock, and removes it before that is dropped.
    let train = unsafe { &*user.cast::<TrainFromLog>() };
    if std::thread::current().id() != train.thread {
        return;
    }
    // SAFETY: live handles; whole DW-4 configurations.
    let status = unsafe {
        eqf_flow_train(
            train.flow,
            train.options,
            (train.data.len() / 8) as i64,
            train.data.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null_mut(),
        )
    };
    train.statuses.lock().unwrap().push(status);
}

/// Issue F4 of the C-ABI sweep: the report of a failed call that reads a flow went to the log
/// callback after the call had let go of the flow, so `eqf_flow_train` from that callback
/// trained the flow while the outer call had not returned, against the documented rule. Now
/// every message of such a call, its failure report included, is sent as from inside it;
/// the report of a call that reads no flow still lets the callback train.
#[test]
fn a_log_callback_cannot_train_from_the_failure_report_of_a_flow_call() {
    use crate::ffi::log::{eqf_set_log_callback, tests::INSTALLS};
    let _installs = INSTALLS.lock().unwrap_or_else(PoisonError::into_inner);
    let data = dw4_data(16, 8);
    let options = Options::small();
    let flow = FlowHandle::new(4, 2, 9);
    let before = flow.params();
    let train = TrainFromLog {
        thread: std::thread::current().id(),
        flow: flow.0,
        options: options.0,
        data: data.clone(),
        statuses: std::sync::Mutex::new(Vec::new()),
    };
    let take_statuses = || std::mem::take(&mut *train.statuses.lock().unwrap());
    // SAFETY: `train_from_log` is thread-safe (it acts on this thread only) and `train`
    // outlives its installation (removed below).
    unsafe { eqf_set_log_callback(Some(train_from_log), (&raw const train).cast_mut().cast()) };

    // A density at a NaN coordinate fails after reading the flow.
    let mut x = data[..8].to_vec();
    x[3] = f64::NAN;
    let mut log_q = [0.0];
    // SAFETY: live handle; one configuration and one output.
    let status = unsafe {
        crate::ffi::flow::eqf_flow_log_density(flow.0, 1, x.as_ptr(), log_q.as_mut_ptr())
    };
    let density_failed = (status, take_statuses(), flow.params() == before);
    // A training run of the flow that fails (NaN data): its report must not train it either.
    let (status, _) = flow.train(&options, &x, &[]);
    let training_failed = (status, take_statuses(), flow.params() == before);
    // A failure of a call that reads no flow: training from its report is fine.
    let status = crate::ffi::catch(|| Err(crate::Error::invalid("no flow read")));
    let other_failed = (status, take_statuses(), flow.params() == before);

    // SAFETY: removing the callback is always allowed.
    unsafe { eqf_set_log_callback(None, std::ptr::null_mut()) };
    // (The failed run sends two messages; each is refused.)
    for (status, nested, unchanged) in [density_failed, training_failed] {
        assert_eq!(status, EQF_ERR_NON_FINITE);
        assert!(!nested.is_empty(), "no message");
        assert!(
            nested
                .iter()
                .all(|s| *s == crate::ffi::EQF_ERR_INVALID_STATE),
            "{nested:?}"
        );
        assert!(unchanged, "trained from the failure report");
    }
    assert_eq!(
        other_failed,
        (EQF_ERR_INVALID_ARGUMENT, vec![EQF_OK], false)
    );
}

unsafe extern "C" fn shorten_options(user: *mut c_void, _: *const eqf_train_epoch) -> i32 {
    // SAFETY: the test passes its live options as `user`.
    let status = unsafe { eqf_train_options_set_epochs(user.cast(), 1) };
    assert_eq!(status, EQF_OK);
    0
}

/// A training call works on the options as they were when it started: a progress callback
/// that changes them (to one epoch) changes later calls only.
#[test]
fn options_changed_during_training_apply_to_later_calls() {
    let data = dw4_data(32, 8);
    let options = Options::small();
    // SAFETY: live options, which outlive both training calls.
    unsafe {
        let user = options.0.cast::<c_void>();
        let status = eqf_train_options_set_progress(options.0, Some(shorten_options), user);
        assert_eq!(status, EQF_OK);
    }
    let flow = FlowHandle::new(4, 2, 9);
    let (status, summary) = flow.train(&options, &data, &[]);
    assert_eq!(status, EQF_OK, "{}", message());
    assert_eq!(summary.n_epochs, 2, "the epochs set when the call started");
    assert_eq!(options.config().n_epochs, 1);
    let (status, summary) = flow.train(&options, &data, &[]);
    assert_eq!(status, EQF_OK, "{}", message());
    assert_eq!(summary.n_epochs, 1);
}

/// What [`train_again`] needs: the flow it trains and what that call returned.
struct Nested {
    flow: *mut eqf_flow,
    options: *const eqf_train_options,
    data: Vec<f64>,
    status: Option<i32>,
}

unsafe extern "C" fn train_again(user: *mut c_void, _: *const eqf_train_epoch) -> i32 {
    // SAFETY: the test passes its live `Nested` as `user`, used by this callback only.
    let nested = unsafe { &mut *user.cast::<Nested>() };
    // SAFETY: live handles; the data are whole DW-4 configurations.
    let status = unsafe {
        eqf_flow_train(
            nested.flow,
            nested.options,
            (nested.data.len() / 8) as i64,
            nested.data.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null_mut(),
        )
    };
    nested.status.get_or_insert(status);
    0
}

/// A progress callback that trains the flow being trained is refused (before: it trained,
/// and the outer run's commit then silently replaced the inner run's result); after the run,
/// the flow trains again.
#[test]
fn training_a_flow_from_its_own_training_run_is_refused() {
    let data = dw4_data(32, 8);
    let flow = FlowHandle::new(4, 2, 9);
    let inner_options = Options::small();
    let mut nested = Nested {
        flow: flow.0,
        options: inner_options.0,
        data: data.clone(),
        status: None,
    };
    let options = Options::small();
    // SAFETY: live options; `nested` outlives the training call that uses it.
    unsafe {
        let user = (&raw mut nested).cast::<c_void>();
        let status = eqf_train_options_set_progress(options.0, Some(train_again), user);
        assert_eq!(status, EQF_OK);
    }
    let (status, _) = flow.train(&options, &data, &[]);
    assert_eq!(status, EQF_OK, "{}", message());
    assert_eq!(nested.status, Some(crate::ffi::EQF_ERR_INVALID_STATE));
    let (status, _) = flow.train(&inner_options, &data, &[]);
    assert_eq!(status, EQF_OK, "{}", message());
}
