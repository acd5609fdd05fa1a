//! Scratch buffers for one integration, sized once per state length and reused across samples,
//! so that no step allocates.

/// Buffers for every integrator; create one per thread (rayon `for_each_init`) and reuse it.
#[derive(Debug, Clone)]
pub struct Workspace {
    n: usize,
    /// Stage velocities (RK4 uses 4, Dormand–Prince 7).
    pub(crate) k: [Vec<f64>; 7],
    /// Stage state, trial state, error estimate, target of an inverse step.
    pub(crate) stage: Vec<f64>,
    pub(crate) trial: Vec<f64>,
    pub(crate) error: Vec<f64>,
    pub(crate) target: Vec<f64>,
    /// Matrix–vector products of the exact-discrete inverse.
    pub(crate) product: Vec<f64>,
    /// n × n: a stage Jacobian of v, the previous and current stage derivative, the step Jacobian.
    pub(crate) jac: Vec<f64>,
    pub(crate) dk_prev: Vec<f64>,
    pub(crate) dk: Vec<f64>,
    pub(crate) step_jac: Vec<f64>,
    /// n × n: `h·∂v/∂x` extrapolated to the middle of the next inverse step (its chord matrix).
    pub(crate) chord: Vec<f64>,
    pub(crate) pivots: Vec<usize>,
    /// The exact-discrete inverse's first-order log-determinant correction: `∇ div v` at a
    /// stage, the gradient of the step's divergence quadrature, the predictor's point.
    pub(crate) div_gradient: Vec<f64>,
    pub(crate) quadrature_gradient: Vec<f64>,
    pub(crate) predicted: Vec<f64>,
}

impl Workspace {
    /// Buffers for states of length `n`. The n × n matrices are only touched by the
    /// exact-discrete mode.
    #[must_use]
    pub fn new(n: usize) -> Self {
        let v = || vec![0.0; n];
        let m = || vec![0.0; n * n];
        Workspace {
            n,
            k: [v(), v(), v(), v(), v(), v(), v()],
            stage: v(),
            trial: v(),
            error: v(),
            target: v(),
            product: v(),
            jac: m(),
            dk_prev: m(),
            dk: m(),
            step_jac: m(),
            chord: m(),
            pivots: vec![0; n],
            div_gradient: v(),
            quadrature_gradient: v(),
            predicted: v(),
        }
    }

    /// The state length these buffers serve.
    #[must_use]
    pub fn state_len(&self) -> usize {
        self.n
    }
}
