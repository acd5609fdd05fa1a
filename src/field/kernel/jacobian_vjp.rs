//! The reverse pass of the field's Jacobian: what training by the exact-discrete likelihood
//! needs, since the log-determinant of an RK4 step is built from the stage Jacobians `∂v/∂x`.
//!
//! Given cotangents `v̄` (length n = N·D) for `v` and `J̄` (n × n, row-major, entry `a·n + b`
//! for `∂v_a/∂x_b`) for the Jacobian, the scalar `L = v̄·v + Σ_ab J̄_ab ∂v_a/∂x_b` is
//! differentiated with respect to x and the parameters. The divergence's reverse pass
//! ([`super::vjp`]) is the case `J̄ = div̄·I`.
//!
//! # Derivation
//!
//! One unordered pair i < j (`r = x_i − x_j`, `d = sqrt(|r|² + ε_d)`) adds `φ r` to `v_i` and
//! `−φ r` to `v_j`, so it adds the D × D block `B = φ I + (φ'/d) r rᵀ` to the Jacobian at
//! (i, i) and (j, j) and `−B` at (i, j) and (j, i). With `M = J̄_ii + J̄_jj − J̄_ij − J̄_ji` (the
//! blocks of J̄), `u = v̄_i − v̄_j` and `P = u·r`, the pair's part of L is
//!
//! ```text
//! L_p = φ P + φ tr M + φ' rᵀM r / d,
//! ```
//!
//! of the same form `α φ + β φ'` as the divergence's reverse pass, with `α = P + tr M` and
//! `β = rᵀM r/d`: its parameter part is that pass's kernel loop unchanged. In the configuration,
//!
//! ```text
//! ∂L_p/∂r = φ u + [φ' (P + tr M)/d + φ'' rᵀM r/d² − φ' rᵀM r/d³] r + φ' (M + Mᵀ) r / d,
//! ```
//!
//! added to `x̄_i` and subtracted from `x̄_j` (with `J̄ = div̄·I`, `M = 2 div̄ I`, this is the
//! divergence pass's `∂L_p/∂r`). Cost per pair: the divergence pass's, plus O(D²) to gather M.

use super::KernelField;
use super::pairs::EPS_D;
use super::vjp::radial_second;
use super::vjp::{ParamAccumulator, TimePart, TimePoint, VjpScratch, accumulate_kernels};
use crate::geometry::MAX_DIM;
use crate::species::MAX_PAIR_TYPES;

impl KernelField {
    /// The pair part of the Jacobian's VJP at a precomputed time point: accumulates `x_bar`,
    /// the time-local `w̄` (per pair type, as [`KernelField::vjp_pairs_at`]) and `ā` into `acc`,
    /// and returns this evaluation's `c̄` per pair type. Finish with
    /// [`KernelField::unfold_time`]. No size checks: the caller sized everything (`jac_bar`
    /// n × n with n = N·D).
    #[allow(clippy::too_many_arguments)] // internal: the reverse pass's buffers, unpacked
    pub(crate) fn jacobian_vjp_pairs_at(
        &self,
        x: &[f64],
        point: &TimePoint,
        v_bar: &[f64],
        jac_bar: &[f64],
        x_bar: &mut [f64],
        w_bar: &mut [f64],
        acc: &mut [ParamAccumulator],
        scratch: &mut VjpScratch,
    ) -> [f64; MAX_PAIR_TYPES] {
        let len = x.len();
        debug_assert_eq!(len, self.layout().len());
        debug_assert_eq!(jac_bar.len(), len * len);
        debug_assert_eq!(w_bar.len(), self.n_pair_types() * self.mu_padded().len());
        let dim = self.layout().dim;
        let n = len / dim;
        let n_dist = self.param_layout().n_dist;
        let mu = self.mu_padded();
        let kp = mu.len();
        let parts: &[TimePart] = point.parts();
        let mut c_bar = [0.0; MAX_PAIR_TYPES];
        for i in 0..n {
            for j in i + 1..n {
                let ty = self.species().map_or(0, |s| s.pair_type_of_particles(i, j));
                let a = &self.block(ty).a_pad[..];
                let slice = &parts[ty].slice;
                let w = &slice.w[..kp];
                let mut r = [0.0; MAX_DIM];
                let mut u = [0.0; MAX_DIM];
                let mut r2 = 0.0;
                let mut p = 0.0;
                for k in 0..dim {
                    r[k] = x[i * dim + k] - x[j * dim + k];
                    u[k] = v_bar[i * dim + k] - v_bar[j * dim + k];
                    r2 += r[k] * r[k];
                    p += u[k] * r[k];
                }
                // M r, Mᵀ r, tr M and rᵀ M r, with M gathered from the four blocks of J̄.
                let (mut mr, mut mtr) = ([0.0; MAX_DIM], [0.0; MAX_DIM]);
                let mut trace = 0.0;
                for ra in 0..dim {
                    let (row_i, row_j) = ((i * dim + ra) * len, (j * dim + ra) * len);
                    for cb in 0..dim {
                        let m = jac_bar[row_i + i * dim + cb] + jac_bar[row_j + j * dim + cb]
                            - jac_bar[row_i + j * dim + cb]
                            - jac_bar[row_j + i * dim + cb];
                        mr[ra] += m * r[cb];
                        mtr[cb] += m * r[ra];
                        if ra == cb {
                            trace += m;
                        }
                    }
                }
                let rmr: f64 = (0..dim).map(|k| r[k] * mr[k]).sum();
                let d = (r2 + EPS_D).sqrt();
                let rad = radial_second(d, mu, a, w, scratch);
                let phi = rad.phi0 + slice.c;
                let inv_d = 1.0 / d;

                let coef = rad.dphi * (p + trace) * inv_d + rad.d2phi * rmr * inv_d * inv_d
                    - rad.dphi * rmr * inv_d * inv_d * inv_d;
                let sym = rad.dphi * inv_d;
                for k in 0..dim {
                    let gr = phi * u[k] + coef * r[k] + sym * (mr[k] + mtr[k]);
                    x_bar[i * dim + k] += gr;
                    x_bar[j * dim + k] -= gr;
                }

                let alpha = p + trace;
                let beta = rmr * inv_d;
                c_bar[ty] += alpha;
                accumulate_kernels(
                    n_dist,
                    w,
                    alpha,
                    beta,
                    &rad,
                    scratch,
                    &mut w_bar[ty * kp..(ty + 1) * kp],
                    &mut acc[ty].a,
                );
            }
        }
        c_bar
    }
}
