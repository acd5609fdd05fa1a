//! Bounds of a field on a ball of configurations: what the per-configuration certificate
//! (`integrate::certify_pull_back`) reads where the global bounds of
//! [`crate::field::FieldFamily::lipschitz_bounds`] are too pessimistic.
//!
//! A global bound is a supremum over every configuration, including ones no sample ever
//! visits (overlapping particles, distances past the data's range), and one stiff corner of
//! the field sets it for the whole space. The per-configuration certificate needs the field
//! only near one configuration: its growth (`‖v(x)‖ ≤ a + b·‖x − x̄‖` everywhere) places every
//! preimage of that configuration in a ball, and bounds on that ball then decide whether the
//! step is one-to-one there.

/// Bounds of `v(·, t)` valid at every configuration of a ball `‖x − centre‖ ≤ radius`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BallBounds {
    /// `≥ ‖v(x, t)‖`.
    pub magnitude: f64,
    /// `≥ ‖∂v/∂x (x, t)‖₂`.
    pub lipschitz: f64,
    /// `≥ max(0, −λ_min(sym ∂v/∂x (x, t)))`.
    pub compression: f64,
}

/// A field family's bounds on balls at a fixed list of times (the stage times of an RK4
/// grid, `integrate::certificate_times`), precomputed once per field so that each
/// configuration costs only a pass over its pairs.
pub trait LocalBounds: Send + Sync {
    /// `(a, b)` with `‖v(x, t_k)‖ ≤ a + b·‖x − x̄‖` for every configuration x (x̄: its centre
    /// of mass), at the `k`-th time.
    fn growth(&self, k: usize) -> (f64, f64);

    /// Bounds at the `k`-th time valid on the ball `‖x − centre‖ ≤ radius` (Euclidean norm
    /// over all N·D coordinates; `centre` has zero centre of mass). `scratch` is the caller's
    /// reusable buffer.
    fn on_ball(&self, k: usize, centre: &[f64], radius: f64, scratch: &mut Vec<f64>) -> BallBounds;
}
