//! Status codes returned by every fallible C function.
//!
//! One code per [`crate::Error`] variant, mapped by [`status_of`]: the core error type knows
//! nothing of C status numbers. The list is
//! append-only: a code, once published, keeps its number and meaning forever, so a host compiled
//! against an older header still understands every code it knows about.

use crate::Error;

/// The call succeeded. Every other status is a failure; the calling thread's message is then
/// available from `eqf_last_error_message`.
pub const EQF_OK: i32 = 0;

/// A NULL pointer was passed where an object or an array was required. The message names the
/// argument.
pub const EQF_ERR_NULL_POINTER: i32 = 1;

/// An argument is outside its valid range: a negative or absurdly large count (see
/// `EQF_MAX_ELEMENTS`), an unusable parameter value, a misaligned array.
pub const EQF_ERR_INVALID_ARGUMENT: i32 = 2;

/// An array or configuration has the wrong size, for example an energy built for another number
/// of particles than the flow.
pub const EQF_ERR_DIMENSION_MISMATCH: i32 = 3;

/// A NaN or infinity was found where a finite number is required (in an input configuration, or
/// in a result that would be meaningless).
pub const EQF_ERR_NON_FINITE: i32 = 4;

/// An iterative solve (the inverse of the discrete flow map, an adaptive integration) did not
/// reach its tolerance. No result is returned rather than a wrong one.
pub const EQF_ERR_NOT_CONVERGED: i32 = 5;

/// A map that must be a bijection is not locally invertible at this configuration.
pub const EQF_ERR_NOT_INVERTIBLE: i32 = 6;

/// The call is valid only in another state of the object (for example accepting a move that
/// was never proposed).
pub const EQF_ERR_INVALID_STATE: i32 = 7;

/// A host callback reported failure or returned an unusable value.
pub const EQF_ERR_CALLBACK: i32 = 8;

/// A file could not be read or written.
pub const EQF_ERR_IO: i32 = 9;

/// A file was read but its contents are malformed.
pub const EQF_ERR_FORMAT: i32 = 10;

/// A bug inside eqflow (an internal panic caught at the C boundary). Please report it with the
/// message from `eqf_last_error_message`. The library stays usable.
pub const EQF_ERR_INTERNAL: i32 = 11;

/// The call would need more memory than eqflow allows for it (see `EQF_MAX_WORKSPACE_BYTES`)
/// or than the system could provide. The message gives the need and the limit in bytes. Nothing
/// was allocated and every object is as it was.
pub const EQF_ERR_RESOURCE: i32 = 12;

/// The flow requires its step certificate (`eqf_flow_with_require_certificate`) and its
/// exact-discrete RK4 grid is not certified to be a bijection step by step. The message names
/// the step count that would be certified. Nothing was written.
pub const EQF_ERR_UNCERTIFIED: i32 = 13;

/// The C status of an error: one code per [`Error`] variant. The match is exhaustive inside
/// the crate, so adding a variant to `Error` without a code here fails to compile.
pub(crate) fn status_of(error: &Error) -> i32 {
    match error {
        Error::NullPointer { .. } => EQF_ERR_NULL_POINTER,
        Error::InvalidArgument { .. } => EQF_ERR_INVALID_ARGUMENT,
        Error::DimensionMismatch { .. } => EQF_ERR_DIMENSION_MISMATCH,
        Error::NonFinite { .. } => EQF_ERR_NON_FINITE,
        Error::NotConverged { .. } => EQF_ERR_NOT_CONVERGED,
        Error::NotInvertible { .. } => EQF_ERR_NOT_INVERTIBLE,
        Error::InvalidState { .. } => EQF_ERR_INVALID_STATE,
        Error::Callback { .. } => EQF_ERR_CALLBACK,
        Error::Io { .. } => EQF_ERR_IO,
        Error::Format { .. } => EQF_ERR_FORMAT,
        Error::Internal { .. } => EQF_ERR_INTERNAL,
        Error::Resource { .. } => EQF_ERR_RESOURCE,
        Error::Uncertified { .. } => EQF_ERR_UNCERTIFIED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn one_of_each_variant() -> Vec<Error> {
        let what = || "w".to_owned();
        vec![
            Error::NullPointer { what: what() },
            Error::InvalidArgument { what: what() },
            Error::DimensionMismatch {
                what: what(),
                expected: 1,
                found: 2,
            },
            Error::NonFinite { what: what() },
            Error::NotConverged {
                what: what(),
                residual: 1.0,
            },
            Error::NotInvertible { what: what() },
            Error::InvalidState { what: what() },
            Error::Callback { what: what() },
            Error::Io { what: what() },
            Error::Format { what: what() },
            Error::Internal { what: what() },
            Error::Resource {
                what: what(),
                need_bytes: 2,
                limit_bytes: 1,
            },
            Error::Uncertified {
                what: what(),
                n_steps: 20,
                certified_steps: Some(40),
                searched_steps: 320,
            },
        ]
    }

    #[test]
    fn every_variant_has_its_own_nonzero_code() {
        let errors = one_of_each_variant();
        for error in &errors {
            assert_ne!(status_of(error), EQF_OK, "{error:?}");
        }
        // One-to-one: no two variants share a code, and the codes are exactly 1..=count (the
        // append-only numbering leaves no holes).
        let mut codes: Vec<i32> = errors.iter().map(status_of).collect();
        codes.sort_unstable();
        let expected: Vec<i32> = (1..=i32::try_from(errors.len()).unwrap()).collect();
        assert_eq!(codes, expected);
    }

    #[test]
    fn published_values_never_change() {
        // Append-only: these numbers are compiled into host programs.
        assert_eq!(
            [
                EQF_OK,
                EQF_ERR_NULL_POINTER,
                EQF_ERR_INVALID_ARGUMENT,
                EQF_ERR_DIMENSION_MISMATCH,
                EQF_ERR_NON_FINITE,
                EQF_ERR_NOT_CONVERGED,
                EQF_ERR_NOT_INVERTIBLE,
                EQF_ERR_INVALID_STATE,
                EQF_ERR_CALLBACK,
                EQF_ERR_IO,
                EQF_ERR_FORMAT,
                EQF_ERR_INTERNAL,
                EQF_ERR_RESOURCE,
                EQF_ERR_UNCERTIFIED,
            ],
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
        );
    }
}
