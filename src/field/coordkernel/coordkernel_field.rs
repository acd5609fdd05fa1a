//! `CoordKernelField`: the coordination-modulated kernel field with its parameters and the
//! per-time precomputation.

use rand_distr::{Distribution, Normal};

use super::config::{CoordKernelConfig, MAX_BASIS};
use crate::error::{Error, Result};
use crate::field::exp::exp_nonpositive;
use crate::field::family::check_network_params;
use crate::geometry::Layout;
use crate::rng::{self, Stream};

/// The most particles a coordkernel field accepts: its derivatives keep per-pair state and
/// the Jacobian's factors (O(N²·A·D) memory per thread, ~22 MB at 256 particles in 3-D with
/// the presets' A = 4) and its dense Jacobian costs O(N³·A·D²).
pub const MAX_COORDKERNEL_PARTICLES: usize = 256;

/// The largest number of pair features `Q = 1 + 2A`.
pub(super) const MAX_FEATURES: usize = 1 + 2 * MAX_BASIS;

/// Vector lanes of the radial fold: `M(t)ᵀ` rows are padded with zeros to a multiple of it.
pub(super) const FOLD_LANES: usize = 8;

/// [`MAX_FEATURES`] rounded up to whole lanes.
pub(super) const MAX_FEATURES_PADDED: usize = MAX_FEATURES.div_ceil(FOLD_LANES) * FOLD_LANES;

/// A coordination-modulated kernel field (see the module documentation for the formula).
///
/// Immutable once built; parameters change through [`CoordKernelField::set_params`].
#[derive(Debug, Clone, PartialEq)]
pub struct CoordKernelField {
    pub(super) layout: Layout,
    pub(super) config: CoordKernelConfig,
    pub(super) params: Vec<f64>,
    pub(super) mu: Vec<f64>,
    pub(super) a_rbf: f64,
    pub(super) nu: Vec<f64>,
    pub(super) a_shell: f64,
    pub(super) mu_time: Vec<f64>,
    pub(super) a_time: f64,
}

/// What an evaluation at one flow time needs: the normalised time basis and the time-folded
/// coefficients `M_qk(t) = Σ_r V_qkr τ_r(t)` (row q of Q, K columns).
#[derive(Debug, Clone, PartialEq)]
pub struct CoordKernelTimePoint {
    /// Flow time.
    pub t: f64,
    /// `τ_r(t)`, summing to 1 (first R entries).
    pub tau: [f64; MAX_BASIS],
    /// `M(t)`, Q × K row-major.
    pub m: Vec<f64>,
    /// `M(t)` transposed, K × Q_pad (rows padded with zeros to whole `FOLD_LANES`): the
    /// per-pair loop sums scaled rows of it, so that the Q coefficients accumulate side by side
    /// in vector registers rather than as Q serial dot products; each coefficient is still
    /// summed in k order.
    pub m_t: Vec<f64>,
}

impl CoordKernelField {
    /// A field with explicit parameters (length [`CoordKernelConfig::n_params`]).
    ///
    /// # Errors
    ///
    /// An invalid config, a layout with fewer than 2 or more than
    /// [`MAX_COORDKERNEL_PARTICLES`] particles, or parameters of the wrong length, non-finite,
    /// or larger than 1e6 in magnitude.
    pub fn new(layout: Layout, config: CoordKernelConfig, params: Vec<f64>) -> Result<Self> {
        config.validate()?;
        if !(2..=MAX_COORDKERNEL_PARTICLES).contains(&layout.n_particles) {
            return Err(Error::invalid(format!(
                "a coordkernel field needs 2 ..= {MAX_COORDKERNEL_PARTICLES} particles, not {}",
                layout.n_particles
            )));
        }
        let mut field = CoordKernelField {
            layout,
            params: vec![0.0; config.n_params()],
            mu: config.rbf_centres(),
            a_rbf: config.rbf_inv_width_sq(),
            nu: config.shell_centres(),
            a_shell: config.shell_inv_width_sq(),
            mu_time: config.time_centres(),
            a_time: config.time_inv_width_sq(),
            config,
        };
        field.set_params(&params)?;
        Ok(field)
    }

    /// A fresh field from `seed`: the pair block `~ N(0, 0.01/K)`, the coordination blocks
    /// `~ N(0, 10⁻⁴/K)`, so that the field starts small and nearly pairwise.
    ///
    /// # Errors
    ///
    /// As [`CoordKernelField::new`].
    pub fn initialise(layout: Layout, config: CoordKernelConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut params = vec![0.0; config.n_params()];
        let mut rng = rng::stream(seed, Stream::FieldInit);
        let k = config.n_rbf as f64;
        for (block, range) in config.param_blocks() {
            let scale = if block == "pair" { 0.1 } else { 0.01 };
            let normal =
                Normal::new(0.0, scale / k.sqrt()).map_err(|e| Error::invalid(e.to_string()))?;
            for p in &mut params[range] {
                *p = normal.sample(&mut rng);
            }
        }
        Self::new(layout, config, params)
    }

    /// Replaces the parameters; on error `self` is unchanged.
    ///
    /// # Errors
    ///
    /// A wrong length, non-finite values, or magnitudes above 1e6.
    pub fn set_params(&mut self, params: &[f64]) -> Result<()> {
        check_network_params("coordkernel", params, self.config.n_params())?;
        self.params.copy_from_slice(params);
        Ok(())
    }

    /// The particle layout.
    #[must_use]
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &CoordKernelConfig {
        &self.config
    }

    /// The flat parameters.
    #[must_use]
    pub fn params(&self) -> &[f64] {
        &self.params
    }

    /// The normalised time basis `τ_r(t)` (first R entries).
    pub(super) fn time_basis(&self, t: f64) -> [f64; MAX_BASIS] {
        let mut tau = [0.0; MAX_BASIS];
        let r = self.config.n_time;
        for (tau, mu) in tau.iter_mut().zip(&self.mu_time) {
            let u = t - mu;
            *tau = exp_nonpositive(-(u * u * self.a_time));
        }
        // The Gaussian nearest to any t ∈ [0, 1] is at most half a spacing away (e^−¼), so
        // the sum is positive there; outside [0, 1] it stays positive down to underflow.
        let total: f64 = tau[..r].iter().sum::<f64>().max(f64::MIN_POSITIVE);
        tau[..r].iter_mut().for_each(|v| *v /= total);
        tau
    }

    /// The precomputation at flow time `t`.
    #[must_use]
    pub fn time_point(&self, t: f64) -> CoordKernelTimePoint {
        let tau = self.time_basis(t);
        let r = self.config.n_time;
        let m: Vec<f64> = self
            .params
            .chunks_exact(r)
            .map(|row| row.iter().zip(&tau[..r]).map(|(v, w)| v * w).sum())
            .collect();
        let (nq, k) = (self.config.n_features(), self.config.n_rbf);
        let qp = nq.div_ceil(FOLD_LANES) * FOLD_LANES;
        let mut m_t = vec![0.0; qp * k];
        for q in 0..nq {
            for kk in 0..k {
                m_t[kk * qp + q] = m[q * k + kk];
            }
        }
        CoordKernelTimePoint { t, tau, m, m_t }
    }

    /// The distance Gaussians `B_k(d)` with their first derivatives in d, and the second
    /// derivatives into `b2` if given.
    #[inline]
    pub(super) fn rbf_into(&self, d: f64, b: &mut [f64], b1: &mut [f64], b2: Option<&mut [f64]>) {
        let a = self.a_rbf;
        for ((b, b1), mu) in b.iter_mut().zip(b1.iter_mut()).zip(&self.mu) {
            let e = d - mu;
            *b = exp_nonpositive(-(e * e * a));
            *b1 = -2.0 * a * e * *b;
        }
        if let Some(b2) = b2 {
            for ((b2, b), mu) in b2.iter_mut().zip(b.iter()).zip(&self.mu) {
                let e = d - mu;
                *b2 = 2.0 * a * b * (2.0 * a * e * e - 1.0);
            }
        }
    }

    /// All shells at distance d: `c_a(d)` into `c` and `c'_a(d)` into `c1` (one loop the
    /// compiler vectorises; the same bits as [`CoordKernelField::shell`]).
    #[inline(always)]
    pub(super) fn shells_into(&self, d: f64, c: &mut [f64], c1: &mut [f64]) {
        let s = self.a_shell;
        for ((c, c1), nu) in c.iter_mut().zip(c1.iter_mut()).zip(&self.nu) {
            let e = d - nu;
            *c = exp_nonpositive(-(e * e * s));
            *c1 = -2.0 * s * e * *c;
        }
    }

    /// Shell `a` at distance d: `(c, c', c'')`.
    #[inline(always)]
    pub(super) fn shell(&self, a: usize, d: f64) -> (f64, f64, f64) {
        let s = self.a_shell;
        let e = d - self.nu[a];
        let c = exp_nonpositive(-(e * e * s));
        (c, -2.0 * s * e * c, 2.0 * s * c * (2.0 * s * e * e - 1.0))
    }
}
