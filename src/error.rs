//! One typed error for the whole crate.
//!
//! Every variant maps one-to-one onto a C status code (`ffi::status::status_of`); the codes are
//! append-only, so a host compiled against an older header still understands every code it knows.

use std::fmt;

/// What went wrong. Carries enough context for a message a simulation developer can act on.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// An argument is outside its valid range (a count, a tolerance, a kernel setting).
    InvalidArgument { what: String },
    /// An array or configuration has the wrong size.
    DimensionMismatch {
        what: String,
        expected: usize,
        found: usize,
    },
    /// A NaN or infinity where a finite number is required.
    NonFinite { what: String },
    /// An iterative solve (the exact-discrete inverse, an adaptive integration) did not reach
    /// its tolerance; the result would be wrong, so none is returned.
    NotConverged { what: String, residual: f64 },
    /// A map that must be a bijection is not locally invertible here (a step Jacobian with
    /// non-positive determinant).
    NotInvertible { what: String },
    /// A call that is valid only in another state (accept without propose).
    InvalidState { what: String },
    /// A host callback reported failure or returned an unusable value.
    Callback { what: String },
    /// A file could not be read or written.
    Io { what: String },
    /// A file was read but its contents are malformed.
    Format { what: String },
    /// A NULL pointer where an object or array was required (C ABI only).
    NullPointer { what: String },
    /// A bug inside eqflow: a panic caught at the C boundary.
    Internal { what: String },
    /// A call would need more memory than eqflow allows for it (or than the system could
    /// give): nothing was allocated. `need_bytes` saturates at `u128::MAX` when the need does not
    /// even fit a number.
    Resource {
        what: String,
        need_bytes: u128,
        limit_bytes: u64,
    },
    /// A flow that requires its step certificate (strict mode,
    /// [`crate::Flow::set_require_certificate`]) was asked to sample or evaluate densities in
    /// the exact-discrete mode with a step grid its certificate does not cover.
    /// `certified_steps` is the smallest RK4 step count the field certifies, if any up to
    /// `searched_steps`.
    Uncertified {
        what: String,
        n_steps: usize,
        certified_steps: Option<usize>,
        searched_steps: usize,
    },
}

/// Shorthand used across the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn invalid(what: impl Into<String>) -> Self {
        Error::InvalidArgument { what: what.into() }
    }

    pub(crate) fn non_finite(what: impl Into<String>) -> Self {
        Error::NonFinite { what: what.into() }
    }

    pub(crate) fn resource(what: impl Into<String>, need_bytes: u128, limit_bytes: u64) -> Self {
        Error::Resource {
            what: what.into(),
            need_bytes,
            limit_bytes,
        }
    }

    pub(crate) fn size(what: impl Into<String>, expected: usize, found: usize) -> Self {
        Error::DimensionMismatch {
            what: what.into(),
            expected,
            found,
        }
    }

    /// The same error (same variant, so the same C status) with its message prefixed by
    /// `context: `: where a caller knows what a library error is about (the system file whose
    /// length scale is out of range, say) and the library does not.
    #[must_use]
    pub fn in_context(mut self, context: &str) -> Self {
        // Every variant carries its message in `what`.
        let (Error::InvalidArgument { what }
        | Error::DimensionMismatch { what, .. }
        | Error::NonFinite { what }
        | Error::NotConverged { what, .. }
        | Error::NotInvertible { what }
        | Error::InvalidState { what }
        | Error::Callback { what }
        | Error::Io { what }
        | Error::Format { what }
        | Error::NullPointer { what }
        | Error::Internal { what }
        | Error::Resource { what, .. }
        | Error::Uncertified { what, .. }) = &mut self;
        *what = format!("{context}: {what}");
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument { what } => write!(f, "invalid argument: {what}"),
            Error::DimensionMismatch {
                what,
                expected,
                found,
            } => write!(f, "{what}: expected {expected}, found {found}"),
            Error::NonFinite { what } => write!(f, "non-finite value: {what}"),
            Error::NotConverged { what, residual } => {
                write!(f, "not converged: {what} (residual {residual:e})")
            }
            Error::NotInvertible { what } => write!(f, "not invertible: {what}"),
            Error::InvalidState { what } => write!(f, "invalid state: {what}"),
            Error::Callback { what } => write!(f, "host callback failed: {what}"),
            Error::Io { what } => write!(f, "i/o error: {what}"),
            Error::Format { what } => write!(f, "malformed file: {what}"),
            Error::NullPointer { what } => write!(f, "null pointer: {what}"),
            Error::Internal { what } => write!(f, "internal error (please report): {what}"),
            Error::Resource {
                what,
                need_bytes,
                limit_bytes,
            } => {
                const GIB: f64 = (1u64 << 30) as f64;
                write!(
                    f,
                    "resource limit: {what} needs {need_bytes} bytes ({:.3} GiB), the limit is \
                     {limit_bytes} bytes ({:.3} GiB)",
                    *need_bytes as f64 / GIB,
                    *limit_bytes as f64 / GIB
                )
            }
            Error::Uncertified {
                what,
                n_steps,
                certified_steps,
                searched_steps,
            } => {
                write!(f, "uncertified step grid: {what}; ")?;
                match certified_steps {
                    Some(n) => write!(
                        f,
                        "the field is certified with {n} RK4 steps (this flow has {n_steps})"
                    ),
                    None => write!(
                        f,
                        "no RK4 step count up to {searched_steps} certifies the field (this \
                         flow has {n_steps})"
                    ),
                }?;
                write!(
                    f,
                    "; or opt out of strict mode (C: eqf_flow_with_require_certificate with 0; \
                     CLI: --allow-uncertified)"
                )
            }
        }
    }
}

impl std::error::Error for Error {}

/// Fails with [`Error::NonFinite`] if any element of `values` is NaN or infinite.
pub(crate) fn check_finite(values: &[f64], what: &str) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::non_finite(format!("{what}[{i}] = {}", values[i]))),
    }
}

/// A number for a message: at most six significant digits with trailing zeros dropped, in
/// exponent notation outside `[1e-4, 1e6)`. `0.1 + 0.2` reads `0.3` and `1e308` reads `1e308`
/// (`{}` would write 0.30000000000000004 and 309 digits). Not for messages whose point is a
/// difference in the last digits.
#[derive(Debug, Clone, Copy)]
pub struct Compact(pub f64);

impl std::fmt::Display for Compact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let x = self.0;
        if !x.is_finite() || x == 0.0 {
            return write!(f, "{x}");
        }
        let trim = |m: &str| -> String {
            if m.contains('.') {
                m.trim_end_matches('0').trim_end_matches('.').to_string()
            } else {
                m.to_string()
            }
        };
        if (1e-4..1e6).contains(&x.abs()) {
            let decimals = (5 - x.abs().log10().floor() as i32).max(0) as usize;
            f.write_str(&trim(&format!("{x:.decimals$}")))
        } else {
            let text = format!("{x:.5e}");
            let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
            write!(f, "{}e{exponent}", trim(mantissa))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Compact, Error};

    /// Context changes the message of every variant, nothing else.
    #[test]
    fn context_prefixes_the_message_and_keeps_the_variant() {
        let errors = [
            Error::invalid("a"),
            Error::size("b", 3, 4),
            Error::non_finite("c"),
            Error::NotConverged {
                what: "d".into(),
                residual: 0.5,
            },
            Error::NotInvertible { what: "e".into() },
            Error::InvalidState { what: "f".into() },
            Error::Callback { what: "g".into() },
            Error::Io { what: "h".into() },
            Error::Format { what: "i".into() },
            Error::NullPointer { what: "j".into() },
            Error::Internal { what: "k".into() },
            Error::resource("l", 10, 5),
            Error::Uncertified {
                what: "m".into(),
                n_steps: 20,
                certified_steps: Some(40),
                searched_steps: 320,
            },
        ];
        for e in errors {
            let plain = e.to_string();
            let inner = plain.split(':').next().unwrap_or("");
            let with = e.clone().in_context("--system s.json");
            assert_eq!(
                std::mem::discriminant(&with),
                std::mem::discriminant(&e),
                "{plain}"
            );
            let text = with.to_string();
            assert!(text.contains("--system s.json: "), "{text}");
            assert_eq!(text.replace("--system s.json: ", ""), plain, "{inner}");
        }
    }

    #[test]
    fn compact_numbers_are_short() {
        let cases = [
            (0.1 + 0.2, "0.3"),
            (-(0.1 + 0.2), "-0.3"),
            (1e308, "1e308"),
            (-1.5e-300, "-1.5e-300"),
            (123_456.7, "123457"),
            (2.0, "2"),
            (0.000_125, "0.000125"),
            (0.0, "0"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-inf"),
        ];
        for (x, text) in cases {
            assert_eq!(Compact(x).to_string(), text, "{x:e}");
        }
    }
}
