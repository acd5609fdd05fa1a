//! Issue 14: an absurd count passed through the C ABI fails with a status, never by aborting the
//! host, and the failed call writes nothing. The counts stay within `EQF_MAX_ELEMENTS` (beyond
//! it they are `EQF_ERR_INVALID_ARGUMENT` at once), so what is tested is the memory check:
//! every temporary above `MAX_ALLOCATION_BYTES` (1 TiB) is refused before the host's arrays are
//! read, which is also why the tiny arrays passed here are sound (they are never touched).

use super::energy::{eqf_energy, eqf_energy_eval, eqf_energy_free, eqf_energy_lennard_jones};
use super::flow::{eqf_flow_log_density, eqf_flow_sample};
use super::flow_options::{
    eqf_flow_options_fit_scales, eqf_flow_options_scales, eqf_flow_options_set_species,
};
use super::test_handles::{FlowHandle, FlowOptionsHandle};
use super::weights::eqf_log_weights;
use super::{EQF_ERR_INVALID_ARGUMENT, EQF_ERR_RESOURCE, EQF_OK, with_last_error};

fn message() -> String {
    with_last_error(str::to_owned)
}

/// Asserts `EQF_ERR_RESOURCE` whose message gives `need` bytes and the 1 TiB limit.
fn assert_resource(status: i32, need: u128) {
    assert_eq!(status, EQF_ERR_RESOURCE, "{}", message());
    let message = message();
    assert!(
        message.contains(&format!("needs {need} bytes"))
            && message.contains("limit is 1099511627776 bytes"),
        "{message}"
    );
}

#[test]
fn sampling_an_absurd_number_of_samples_is_a_resource_error() {
    let flow = FlowHandle::new(4, 2, 0);
    // 2^37 samples of N·D = 8: exactly EQF_MAX_ELEMENTS doubles, 8 TiB.
    let n = 1i64 << 37;
    let (mut x, mut log_q) = ([f64::NAN; 8], [f64::NAN; 1]);
    // SAFETY: live handle; the outputs are never written because the call fails first.
    let status = unsafe { eqf_flow_sample(flow.0, 0, n, x.as_mut_ptr(), log_q.as_mut_ptr()) };
    assert_resource(status, 8 << 40);
    assert!(
        x.iter().chain(&log_q).all(|v| v.is_nan()),
        "nothing written"
    );
}

#[test]
fn densities_of_an_absurd_number_of_configurations_are_a_resource_error() {
    let flow = FlowHandle::new(2, 1, 0);
    // 2^39 configurations of N·D = 2: log q alone needs 4 TiB.
    let n = 1i64 << 39;
    let (x, mut log_q) = ([0.0; 2], [f64::NAN; 1]);
    // SAFETY: live handle; `x` is never read and `log_q` never written (the call fails first).
    let status = unsafe { eqf_flow_log_density(flow.0, n, x.as_ptr(), log_q.as_mut_ptr()) };
    assert_resource(status, 4 << 40);
    assert!(log_q[0].is_nan());
}

#[test]
fn energies_and_weights_of_absurd_counts_are_resource_errors() {
    let mut energy: *mut eqf_energy = std::ptr::null_mut();
    // SAFETY: a valid pointer slot.
    let status = unsafe { eqf_energy_lennard_jones(2, 1, 1.0, 1.0, 0.0, &raw mut energy) };
    assert_eq!(status, EQF_OK, "{}", message());
    let (x, mut u) = ([0.0; 2], [f64::NAN; 1]);
    // SAFETY: live handle; `x` is never read and `u` never written (the call fails first).
    let status = unsafe {
        eqf_energy_eval(
            energy,
            1 << 39,
            x.as_ptr(),
            u.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    };
    assert_resource(status, 4 << 40);
    assert!(u[0].is_nan());
    // SAFETY: freed once.
    assert_eq!(unsafe { eqf_energy_free(energy) }, EQF_OK);

    let (energies, log_q, mut log_w) = ([0.0; 1], [0.0; 1], [f64::NAN; 1]);
    // SAFETY: the inputs are never read and `log_w` never written (the call fails first).
    let status = unsafe {
        eqf_log_weights(
            1 << 40,
            energies.as_ptr(),
            log_q.as_ptr(),
            1.0,
            log_w.as_mut_ptr(),
        )
    };
    assert_resource(status, 8 << 40);
    assert!(log_w[0].is_nan());
}

impl FlowOptionsHandle {
    fn scales(&self) -> [f64; 3] {
        let mut s = [0.0; 3];
        // SAFETY: live options; three valid output slots.
        let status =
            unsafe { eqf_flow_options_scales(self.0, &raw mut s[0], &raw mut s[1], &raw mut s[2]) };
        assert_eq!(status, EQF_OK);
        s
    }
}

#[test]
fn fitting_scales_to_a_million_particles_is_a_resource_error() {
    // One configuration of 10^6 particles has ~5·10^11 pair distances, 4 TB: the buffer was
    // reserved infallibly and aborted the host.
    let options = FlowOptionsHandle::new();
    let before = options.scales();
    let x: Vec<f64> = (0..3_000_000).map(|i| f64::from(i % 1013) * 0.01).collect();
    // SAFETY: live options; `x` holds 1·N·D doubles.
    let status = unsafe { eqf_flow_options_fit_scales(options.0, 1_000_000, 3, x.as_ptr(), 1) };
    let pairs = 1_000_000u128 * 999_999 / 2;
    assert_resource(status, pairs * 8);
    assert_eq!(options.scales(), before, "options unchanged");
}

#[test]
fn species_of_too_many_particles_are_refused_before_the_indices_are_copied() {
    // The indices were copied for n_particles (up to 2^40) before the particle limit was
    // checked: a count past the host's array read beyond it.
    let options = FlowOptionsHandle::new();
    let species = [0u32; 1];
    // SAFETY: live options; `species` is never read (the count is refused first).
    let status = unsafe { eqf_flow_options_set_species(options.0, species.as_ptr(), 1 << 40, 1) };
    assert_eq!(status, EQF_ERR_INVALID_ARGUMENT, "{}", message());
    assert!(message().contains("EQF_MAX_PARTICLES"), "{}", message());
}
