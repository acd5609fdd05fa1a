//! Training a flow from C: an opaque `eqf_train_options` object with setters, and
//! `eqf_flow_train` (maximum likelihood on host samples, reverse KL with a built-in energy or a
//! host energy-and-gradient callback).
//!
//! ABI growth: options are an opaque object, so new settings are new setters; the two structs
//! that cross the boundary (`eqf_train_epoch`, `eqf_train_summary`) begin with their size in
//! bytes and only ever grow by appending fields, all 8 bytes wide so that no padding can hide
//! an appended field.

// cbindgen emits functions in the order it meets their modules, so `options` before `run` keeps
// the header's order: the options' functions, then the entry point.
mod callback;
mod options;
mod run;
mod summary;

#[cfg(test)]
mod tests;
