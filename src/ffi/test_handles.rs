//! Owned handles for the C-ABI tests: made through the exported functions and freed through
//! them on drop, exactly once, even when an assertion fails. Each test module adds the methods
//! it needs (sampling, training, …) in its own `impl` block.

use super::EQF_OK;
use super::flow::{eqf_flow, eqf_flow_free, eqf_flow_new};
use super::flow_options::{eqf_flow_options, eqf_flow_options_free, eqf_flow_options_new};

/// A flow made by `eqf_flow_new`, freed on drop.
pub(super) struct FlowHandle(pub(super) *mut eqf_flow);

impl FlowHandle {
    /// The default flow of `n_particles` in `dim` dimensions from `seed`.
    pub(super) fn new(n_particles: i64, dim: i64, seed: u64) -> FlowHandle {
        let mut flow = std::ptr::null_mut();
        // SAFETY: a valid pointer slot.
        let status = unsafe { eqf_flow_new(n_particles, dim, seed, &raw mut flow) };
        assert_eq!(status, EQF_OK);
        FlowHandle(flow)
    }

    /// The field's parameters.
    pub(super) fn params(&self) -> Vec<f64> {
        // SAFETY: live handle, not used by other threads.
        unsafe { (*self.0).flow().field().params().to_vec() }
    }
}

impl Drop for FlowHandle {
    fn drop(&mut self) {
        // SAFETY: created by `eqf_flow_new` (or handed over as such), freed once.
        assert_eq!(unsafe { eqf_flow_free(self.0) }, EQF_OK);
    }
}

/// Flow options made by `eqf_flow_options_new`, freed on drop.
pub(super) struct FlowOptionsHandle(pub(super) *mut eqf_flow_options);

impl FlowOptionsHandle {
    /// Default options.
    pub(super) fn new() -> FlowOptionsHandle {
        let mut out = std::ptr::null_mut();
        // SAFETY: a valid pointer slot.
        assert_eq!(unsafe { eqf_flow_options_new(&raw mut out) }, EQF_OK);
        FlowOptionsHandle(out)
    }
}

impl Drop for FlowOptionsHandle {
    fn drop(&mut self) {
        // SAFETY: created by `eqf_flow_options_new`, freed once.
        assert_eq!(unsafe { eqf_flow_options_free(self.0) }, EQF_OK);
    }
}
