//! A certificate for one configuration: that it has exactly one preimage under the RK4 map,
//! so that the single-preimage density the exact-discrete mode reports at it is its
//! push-forward density, where the global certificate (`certificate.rs`) cannot say so for
//! the whole space.
//!
//! **What is proved.** Let one forward step be `Φ(x) = x + Δ(x)`, `Δ = h/6·(k1 + 2k2 + 2k3 + k4)`
//! (`certificate.rs`), and `y` a configuration (centre of mass zero, as the field conserves it).
//!
//! 1. *Every preimage of y lies in a ball `B(y, R)`.* The field family bounds the field's
//!    growth, `‖v(x, t)‖ ≤ a(t) + b(t)·‖x − x̄‖` for all x ([`LocalBounds::growth`]). Through
//!    the four stages this gives `‖Δ(x)‖ ≤ A + B·‖x − x̄‖`, and a preimage x′ satisfies
//!    `x′ − y = −Δ(x′)`, so `e = ‖x′ − y‖ ≤ A + B(‖y‖ + e)`: `R₀ = (A + B‖y‖)/(1 − B)` when
//!    `B < 1`. Then repeatedly: if every preimage is in `B(y, R)`, its stage points are in
//!    balls around y of radii `R`, `R + h/2·M₁`, `R + h/2·M₂`, `R + h·M₃`, with `M_s` a bound
//!    of the field's magnitude on the stage's ball: the smaller of the family's
//!    ([`LocalBounds::on_ball`]) and `‖v(y, t_s)‖ + L_s·r_s` (the field's value at the centre
//!    plus its Lipschitz bound on the ball times the radius). So every preimage is in
//!    `B(y, h/6·(M₁ + 2M₂ + 2M₃ + M₄))`, and in `B(y, ‖Δ(y)‖ + c_L·R)` with `c_L` the
//!    increment's Lipschitz bound on the ball (`‖x′ − y‖ = ‖Δ(x′)‖ ≤ ‖Δ(y)‖ + c_L‖x′ − y‖`);
//!    R shrinks to the smaller while it shrinks by more than 0.1 %.
//! 2. *Φ is one-to-one on `B(y, R)`.* With the field's Lipschitz and compression bounds on
//!    the same stage balls in place of the global ones, the derivation of `certificate.rs`
//!    holds at every point of the ball (the stage points of a point in the ball lie in the
//!    stage balls), so `⟨Φ(x) − Φ(x′), x − x′⟩ ≥ (1 − c)|x − x′|²` for x, x′ in the ball
//!    (convex, so the segment between them stays in it), with `c` the step bound of
//!    [`step_bound`] from the local bounds. If `c < 1`, Φ is injective on the ball.
//! 3. Together: y has at most one preimage. The inverse found one (to its residual tolerance),
//!    so it has exactly one. Applied at each step along the pull-back (the step's output
//!    configuration is the pulled-back point of the step after it), the configuration has
//!    exactly one preimage under the whole map, and its density is the push-forward density.
//!
//! A step whose global bound is below 1 is certified everywhere and its local bound is not
//! computed; for the others the certificate takes the smaller of the two bounds. Without
//! local bounds (a family that provides none) the certificate is the global one.
//!
//! This is a uniqueness proof around the solution the inverse found, not a statement about
//! Newton's basin: it needs no second derivatives, and it rules out a second preimage
//! anywhere, not only near the first. Its soundness rests on the family's bounds; for the
//! kernel field those are grid maxima with a slope margin (`field::kernel`), not interval
//! arithmetic.

use super::certificate::{FieldBounds, step_bound};
use super::discrete::{InverseCarry, inverse_step};
use super::rk4::grid_stage_times;
use super::workspace::Workspace;
use crate::error::Result;
use crate::field::{BallBounds, LocalBounds, VectorField};

/// Largest number of times the ball holding the preimages is shrunk (item 1 of the module
/// docs); it typically settles within 3.
const MAX_REFINEMENTS: usize = 8;

/// The certificate of one configuration (module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfigurationCertificate {
    /// Steps of the grid on [0, 1].
    pub n_steps: usize,
    /// The largest over the steps of the step's bound `c`, the smaller of its global bound and
    /// its bound on the ball holding the preimages of the configuration's pulled-back point:
    /// the configuration has exactly one preimage when it is below 1.
    pub max_step_bound: f64,
    /// Start time of the step with the largest bound.
    pub worst_step_start: f64,
    /// Steps certified by their local bound that the global bound does not certify.
    pub locally_certified_steps: usize,
    /// The largest radius of the ball holding every preimage, over the steps whose local
    /// bound was computed: those the global bound does not certify (0 if there are none;
    /// +∞ when the field family has no local bounds or its growth bound is too weak to place
    /// the preimages).
    pub max_radius: f64,
}

impl ConfigurationCertificate {
    /// True when the configuration is certified to have exactly one preimage.
    #[must_use]
    pub fn is_certified(&self) -> bool {
        self.max_step_bound < 1.0
    }
}

/// The smaller of two bounds, treating NaN (no bound) as +∞.
fn min_bound(a: f64, b: f64) -> f64 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => f64::INFINITY,
        (true, false) => b,
        (false, true) => a,
        (false, false) => a.min(b),
    }
}

/// `R₀` of item 1 of the module docs: the growth bounds at the step's start, middle and end
/// (`growth`), taken affine in `ρ = ‖x − x̄‖` through the four stages; +∞ if `B ≥ 1`.
fn growth_radius(growth: [(f64, f64); 3], y_norm: f64, h: f64) -> f64 {
    let [(a1, b1), (am, bm), (a4, b4)] = growth;
    // Each stage's field value as α + β·ρ, from its stage point's ‖z − z̄‖ ≤ ρ + s·k.
    let k1 = (a1, b1);
    let at = |(a, b): (f64, f64), (alpha, beta): (f64, f64), s: f64| {
        (a + b * s * alpha, b * (1.0 + s * beta))
    };
    let k2 = at((am, bm), k1, 0.5 * h);
    let k3 = at((am, bm), k2, 0.5 * h);
    let k4 = at((a4, b4), k3, h);
    let big_a = h / 6.0 * (k1.0 + 2.0 * k2.0 + 2.0 * k3.0 + k4.0);
    let big_b = h / 6.0 * (k1.1 + 2.0 * k2.1 + 2.0 * k3.1 + k4.1);
    if big_b.is_nan() || big_b >= 1.0 {
        return f64::INFINITY;
    }
    let r = (big_a + big_b * y_norm) / (1.0 - big_b);
    if r.is_nan() { f64::INFINITY } else { r }
}

/// What the certificate evaluates of the field at the centre y of a step's balls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CentreValues {
    /// `‖v(y, t)‖` at the step's start, middle and end times.
    pub speed: [f64; 3],
    /// `‖Δ(y)‖`, the norm of the step's increment at y.
    pub increment: f64,
}

/// The bounds on the four stage balls of a step whose preimages lie in `B(y, r)` (item 1),
/// with each magnitude bound the smaller of the family's and the one from the centre's
/// value; `k` is the index of the step's start time, `k + 1` its middle, `k + 2` its end.
fn stage_bounds(
    local: &dyn LocalBounds,
    k: usize,
    (y, centre): (&[f64], &CentreValues),
    r: f64,
    h: f64,
    scratch: &mut Vec<f64>,
) -> [BallBounds; 4] {
    let mut ball = |k: usize, speed: f64, radius: f64| {
        let mut b = local.on_ball(k, y, radius, scratch);
        b.magnitude = min_bound(b.magnitude, speed + b.lipschitz * radius);
        b
    };
    let [s_start, s_middle, s_end] = centre.speed;
    let b1 = ball(k, s_start, r);
    let b2 = ball(k + 1, s_middle, r + 0.5 * h * b1.magnitude);
    let b3 = ball(k + 1, s_middle, r + 0.5 * h * b2.magnitude);
    let b4 = ball(k + 2, s_end, r + h * b3.magnitude);
    [b1, b2, b3, b4]
}

/// The step's bounds from its four stage balls: `[L]` and `[μ]` at start, middle (the larger
/// of the two middle stages') and end.
fn step_inputs(b: &[BallBounds; 4]) -> ([f64; 3], [f64; 3]) {
    (
        [
            b[0].lipschitz,
            b[1].lipschitz.max(b[2].lipschitz),
            b[3].lipschitz,
        ],
        [
            b[0].compression,
            b[1].compression.max(b[2].compression),
            b[3].compression,
        ],
    )
}

/// The bound `c` of step `s` (of `h = 1/n_steps`) on the ball holding every preimage of `y`
/// (CoM-free), and that ball's radius: items 1 and 2 of the module docs. `local` holds its
/// tables at `certificate_times(n_steps)`; `centre` is the field evaluated at y.
/// `(+∞, +∞)` when the preimages cannot be placed.
pub fn local_step_bound(
    local: &dyn LocalBounds,
    s: usize,
    (y, centre): (&[f64], &CentreValues),
    h: f64,
    scratch: &mut Vec<f64>,
) -> (f64, f64) {
    let k = 2 * s;
    let y_norm = y.iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut r = growth_radius(
        [local.growth(k), local.growth(k + 1), local.growth(k + 2)],
        y_norm,
        h,
    );
    if !r.is_finite() {
        return (f64::INFINITY, f64::INFINITY);
    }
    let mut stages = stage_bounds(local, k, (y, centre), r, h, scratch);
    for _ in 0..MAX_REFINEMENTS {
        let [m1, m2, m3, m4] = stages.map(|b| b.magnitude);
        let (l, _) = step_inputs(&stages);
        let by_magnitude = h / 6.0 * (m1 + 2.0 * m2 + 2.0 * m3 + m4);
        let by_lipschitz = centre.increment + step_bound(l, l, h) * r;
        let shrunk = min_bound(by_magnitude, by_lipschitz);
        // A NaN radius stops the refinement (the last valid one stays).
        if shrunk.is_nan() || shrunk >= r * (1.0 - 1e-3) {
            break;
        }
        r = shrunk;
        stages = stage_bounds(local, k, (y, centre), r, h, scratch);
    }
    let (l, m) = step_inputs(&stages);
    let c = step_bound(l, m, h);
    (if c.is_nan() { f64::INFINITY } else { c }, r)
}

/// Buffers for [`centre_values`].
struct CentreScratch {
    k: [Vec<f64>; 4],
    z: Vec<f64>,
    v: Vec<f64>,
}

impl CentreScratch {
    fn new(len: usize) -> Self {
        CentreScratch {
            k: std::array::from_fn(|_| vec![0.0; len]),
            z: vec![0.0; len],
            v: vec![0.0; len],
        }
    }
}

/// The field at the centre y of step `times` (of size h): [`CentreValues`].
fn centre_values<F: VectorField + ?Sized>(
    field: &F,
    y: &[f64],
    times: [f64; 3],
    h: f64,
    b: &mut CentreScratch,
) -> CentreValues {
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let [t0, tm, t1] = times;
    let CentreScratch { k, z, v } = b;
    field.velocity_only_into(y, t0, &mut k[0]);
    for (stage, (t, a)) in [(tm, 0.5 * h), (tm, 0.5 * h), (t1, h)]
        .into_iter()
        .enumerate()
    {
        for ((z, y), k) in z.iter_mut().zip(y).zip(&k[stage]) {
            *z = y + a * k;
        }
        field.velocity_only_into(z, t, &mut k[stage + 1]);
    }
    let increment = (0..y.len())
        .map(|i| h / 6.0 * (k[0][i] + 2.0 * k[1][i] + 2.0 * k[2][i] + k[3][i]))
        .map(|d| d * d)
        .sum::<f64>()
        .sqrt();
    let speed_start = norm(&k[0]);
    field.velocity_only_into(y, tm, v);
    let speed_middle = norm(v);
    field.velocity_only_into(y, t1, v);
    CentreValues {
        speed: [speed_start, speed_middle, norm(v)],
        increment,
    }
}

/// Pulls the CoM-free configuration `x` back through the RK4 grid of `n_steps` steps in place
/// (as the exact-discrete density does) and certifies it on the way (module docs): at each
/// step the global bound (`global`, at `certificate_times(n_steps)`) or, where that is not
/// below 1, the smaller of it and the bound on the ball holding the preimages of the step's
/// output (`local`, tabulated at the same times; `None`: global bounds only).
///
/// # Errors
///
/// Those of the exact-discrete inverse (a step that cannot be inverted).
pub(crate) fn certify_pull_back<F: VectorField + ?Sized>(
    field: &F,
    local: Option<&dyn LocalBounds>,
    global: &FieldBounds,
    x: &mut [f64],
    n_steps: usize,
    ws: &mut Workspace,
) -> Result<ConfigurationCertificate> {
    // The inverse's matrices first: an oversized state fails with `Error::Resource` at once,
    // not after the local bounds' O(N²) pair work (about ten minutes at N = 50,000).
    ws.reserve_exact_discrete()?;
    let n = n_steps.max(1);
    let h = 1.0 / n as f64;
    let mut carry = InverseCarry::new();
    let mut scratch = Vec::new();
    let mut centre = CentreScratch::new(x.len());
    let mut cert = ConfigurationCertificate {
        n_steps: n,
        max_step_bound: f64::NEG_INFINITY,
        worst_step_start: 0.0,
        locally_certified_steps: 0,
        max_radius: 0.0,
    };
    for s in (0..n).rev() {
        let pick = |v: &[f64]| [v[2 * s], v[2 * s + 1], v[2 * s + 2]];
        let global_c = step_bound(pick(&global.lipschitz), pick(&global.compression), h);
        let times = grid_stage_times(s, n, true);
        // A step the global bound certifies needs nothing local (the local bound could only
        // lower a bound that is already below 1).
        let globally_certified = global_c < 1.0;
        let c = match local {
            Some(local) if !globally_certified => {
                let values = centre_values(field, x, times, h, &mut centre);
                let (local_c, radius) = local_step_bound(local, s, (x, &values), h, &mut scratch);
                cert.max_radius = cert.max_radius.max(radius);
                if local_c < 1.0 {
                    cert.locally_certified_steps += 1;
                }
                min_bound(global_c, local_c)
            }
            _ if globally_certified => global_c,
            _ => {
                cert.max_radius = f64::INFINITY;
                min_bound(global_c, f64::INFINITY)
            }
        };
        if c.is_nan() || c > cert.max_step_bound {
            cert.max_step_bound = c;
            cert.worst_step_start = s as f64 * h;
        }
        inverse_step(field, x, times, h, &mut carry, true, ws)?;
    }
    Ok(cert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrate::certificate_times;

    /// The ball of each step holds the preimage the inverse finds (item 1 of the module
    /// docs), along the pull-backs of samples of an uncertified model, and it is not vacuous:
    /// its radius is typically within a few times the step's displacement.
    #[test]
    fn the_ball_holds_the_preimage_found() {
        let path = std::path::Path::new("tests/data/dw4_v1_unpenalised.json");
        let (mut flow, _) = crate::io::model::load(path).unwrap();
        flow.set_require_certificate(false); // its uncertified map is the subject
        let field = flow.field().as_vector_field();
        let (n, h) = (20, 0.05);
        let local = flow
            .field()
            .local_bounds(&certificate_times(n))
            .unwrap()
            .unwrap();
        let (mut x, _) = flow.sample(3, 20).unwrap();
        let len = flow.layout().len();
        let mut ws = flow.workspace();
        let (mut centre, mut scratch) = (CentreScratch::new(len), Vec::new());
        let mut ratios = Vec::new();
        for y in x.chunks_mut(len) {
            let mut carry = InverseCarry::new();
            for s in (0..n).rev() {
                let times = grid_stage_times(s, n, true);
                let values = centre_values(field, y, times, h, &mut centre);
                let (_, radius) =
                    local_step_bound(local.as_ref(), s, (y, &values), h, &mut scratch);
                let before = y.to_vec();
                inverse_step(field, y, times, h, &mut carry, true, &mut ws).unwrap();
                let moved = before
                    .iter()
                    .zip(y.iter())
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f64>()
                    .sqrt();
                assert!(
                    moved <= radius,
                    "step {s}: preimage {moved} away, radius {radius}"
                );
                // The increment centre_values computes is the map's: at the preimage it is
                // the displacement.
                let at_preimage = centre_values(field, y, times, h, &mut centre).increment;
                assert!(
                    (moved - at_preimage).abs() < 1e-8 * moved,
                    "{moved} {at_preimage}"
                );
                ratios.push(radius / moved);
            }
        }
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        assert!(
            median < 4.0,
            "radius {median} times the displacement (median)"
        );
    }
}
