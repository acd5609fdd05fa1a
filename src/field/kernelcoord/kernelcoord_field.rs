//! `KernelCoordField`: the two parts, their settings, and the sums that make one field of them.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::field::coordkernel::{CoordKernelConfig, CoordKernelField, CoordKernelScratch};
use crate::field::kernel::{KernelConfig, KernelField, ParamLayout, VjpScratch};
use crate::field::{FieldFamily, VectorField};
use crate::geometry::Layout;
use crate::species::Species;

/// The settings of both parts, as stored in a model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelCoordConfig {
    /// The paper's kernels (centres and initial bandwidths of the pair part).
    pub kernel: KernelConfig,
    /// The fixed bases of the coordination correction.
    pub coord: CoordKernelConfig,
}

/// The paper's kernel field plus a coordination correction (module documentation).
///
/// The parameters are the kernel part's, then the correction's, in one vector.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelCoordField {
    pub(super) kernel: KernelField,
    pub(super) coord: CoordKernelField,
    pub(super) params: Vec<f64>,
}

/// Per-thread buffers of one reverse pass: each part's own.
#[derive(Clone)]
pub struct KernelCoordScratch {
    pub(super) kernel: VjpScratch,
    pub(super) coord: CoordKernelScratch,
}

impl std::fmt::Debug for KernelCoordScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelCoordScratch { .. }")
    }
}

impl KernelCoordField {
    /// A field from its settings and the parameters of both parts (the kernel part's first).
    ///
    /// # Errors
    ///
    /// What either part refuses (settings, layout, parameter values); a parameter vector whose
    /// length is not the two parts' together ([`Error::DimensionMismatch`]).
    pub fn new(layout: Layout, config: KernelCoordConfig, params: Vec<f64>) -> Result<Self> {
        // The settings first: the parameter counts below are products of them, which
        // settings out of range would overflow.
        config.kernel.validate()?;
        config.coord.validate()?;
        let n_kernel =
            ParamLayout::new(config.kernel.mu_dist.len(), config.kernel.mu_time.len()).len();
        let n_coord = config.coord.n_params();
        if params.len() != n_kernel + n_coord {
            return Err(Error::size(
                "kernelcoord parameters (kernel part, then coordination part)",
                n_kernel + n_coord,
                params.len(),
            ));
        }
        let kernel = KernelField::new(layout, config.kernel, params[..n_kernel].to_vec())?;
        let coord = CoordKernelField::new(layout, config.coord, params[n_kernel..].to_vec())?;
        Ok(KernelCoordField {
            kernel,
            coord,
            params,
        })
    }

    /// An untrained field: the kernel part as an untrained kernel field of `seed`, the
    /// correction zero, so that it starts as exactly the paper's field.
    ///
    /// # Errors
    ///
    /// As [`KernelCoordField::new`].
    pub fn initialise(layout: Layout, config: KernelCoordConfig, seed: u64) -> Result<Self> {
        let kernel = KernelField::initialise_with_species(
            layout,
            config.kernel,
            Species::single(layout.n_particles),
            seed,
        )?;
        let coord = CoordKernelField::new(
            layout,
            config.coord.clone(),
            vec![0.0; config.coord.n_params()],
        )?;
        let params = [FieldFamily::params(&kernel), FieldFamily::params(&coord)].concat();
        Ok(KernelCoordField {
            kernel,
            coord,
            params,
        })
    }

    /// The paper's pair part.
    #[must_use]
    pub fn kernel(&self) -> &KernelField {
        &self.kernel
    }

    /// The coordination correction.
    #[must_use]
    pub fn coord(&self) -> &CoordKernelField {
        &self.coord
    }

    /// Number of parameters of the kernel part (they come first).
    #[must_use]
    pub fn n_kernel_params(&self) -> usize {
        FieldFamily::params(&self.kernel).len()
    }

    /// Replaces the parameters of both parts; on error the field is unchanged.
    ///
    /// # Errors
    ///
    /// As [`KernelCoordField::new`].
    pub fn set_params(&mut self, params: &[f64]) -> Result<()> {
        let n_kernel = self.n_kernel_params();
        let n_total = self.params.len();
        if params.len() != n_total {
            return Err(Error::size("kernelcoord parameters", n_total, params.len()));
        }
        let mut kernel = self.kernel.clone();
        let mut coord = self.coord.clone();
        FieldFamily::set_params(&mut kernel, &params[..n_kernel])?;
        FieldFamily::set_params(&mut coord, &params[n_kernel..])?;
        self.kernel = kernel;
        self.coord = coord;
        self.params.copy_from_slice(params);
        Ok(())
    }
}

thread_local! {
    /// The second part's velocity and Jacobian, added into the first's: grown once per
    /// thread and size, so evaluations do not allocate.
    static SECOND: RefCell<(Vec<f64>, Vec<f64>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `a + b` at `(x, t)`: velocity into `v`, returns the divergence.
pub(crate) fn sum_velocity(
    a: &dyn VectorField,
    b: &dyn VectorField,
    x: &[f64],
    t: f64,
    v: &mut [f64],
    with_div: bool,
) -> f64 {
    SECOND.with(|s| {
        let (w, _) = &mut *s.borrow_mut();
        crate::field::grow_scratch(w, v.len());
        let w = &mut w[..v.len()];
        let div = if with_div {
            a.velocity_into(x, t, v) + b.velocity_into(x, t, w)
        } else {
            a.velocity_only_into(x, t, v);
            b.velocity_only_into(x, t, w);
            0.0
        };
        v.iter_mut().zip(&*w).for_each(|(v, w)| *v += w);
        div
    })
}

/// `a + b` at `(x, t)`: velocity into `v`, Jacobian into `jacobian`, returns the divergence.
pub(crate) fn sum_velocity_jacobian(
    a: &dyn VectorField,
    b: &dyn VectorField,
    x: &[f64],
    t: f64,
    v: &mut [f64],
    jacobian: &mut [f64],
) -> f64 {
    SECOND.with(|s| {
        let (w, jw) = &mut *s.borrow_mut();
        crate::field::grow_scratch(w, v.len());
        crate::field::grow_scratch(jw, jacobian.len());
        let (w, jw) = (&mut w[..v.len()], &mut jw[..jacobian.len()]);
        let div =
            a.velocity_jacobian_into(x, t, v, jacobian) + b.velocity_jacobian_into(x, t, w, jw);
        v.iter_mut().zip(&*w).for_each(|(v, w)| *v += w);
        jacobian.iter_mut().zip(&*jw).for_each(|(j, w)| *j += w);
        div
    })
}

/// Adds `w` into `v` (the second part's contribution of a sum).
pub(crate) fn add_second(v: &mut [f64], second: impl FnOnce(&mut [f64]) -> f64) -> f64 {
    SECOND.with(|s| {
        let (w, _) = &mut *s.borrow_mut();
        crate::field::grow_scratch(w, v.len());
        let w = &mut w[..v.len()];
        let div = second(w);
        v.iter_mut().zip(&*w).for_each(|(v, w)| *v += w);
        div
    })
}

impl VectorField for KernelCoordField {
    fn state_len(&self) -> usize {
        FieldFamily::layout(&self.kernel).len()
    }

    /// The sum of two translation-invariant fields.
    fn translation_axes(&self) -> Option<usize> {
        self.kernel
            .translation_axes()
            .filter(|&d| self.coord.translation_axes() == Some(d))
    }

    fn velocity_into(&self, x: &[f64], t: f64, v: &mut [f64]) -> f64 {
        sum_velocity(&self.kernel, &self.coord, x, t, v, true)
    }

    fn velocity_only_into(&self, x: &[f64], t: f64, v: &mut [f64]) {
        sum_velocity(&self.kernel, &self.coord, x, t, v, false);
    }

    fn velocity_jacobian_into(
        &self,
        x: &[f64],
        t: f64,
        v: &mut [f64],
        jacobian: &mut [f64],
    ) -> f64 {
        sum_velocity_jacobian(&self.kernel, &self.coord, x, t, v, jacobian)
    }
}

/// The sum of two fields' fixed-grid forms (what [`FieldFamily::grid_dynamics`] returns).
pub(super) struct SumDynamics {
    pub a: std::sync::Arc<dyn VectorField + Send>,
    pub b: std::sync::Arc<dyn VectorField + Send>,
}

impl VectorField for SumDynamics {
    fn state_len(&self) -> usize {
        self.a.state_len()
    }

    /// Translation invariant if both terms are.
    fn translation_axes(&self) -> Option<usize> {
        self.a
            .translation_axes()
            .filter(|&d| self.b.translation_axes() == Some(d))
    }

    fn velocity_into(&self, x: &[f64], t: f64, v: &mut [f64]) -> f64 {
        sum_velocity(&*self.a, &*self.b, x, t, v, true)
    }

    fn velocity_only_into(&self, x: &[f64], t: f64, v: &mut [f64]) {
        sum_velocity(&*self.a, &*self.b, x, t, v, false);
    }

    fn velocity_jacobian_into(
        &self,
        x: &[f64],
        t: f64,
        v: &mut [f64],
        jacobian: &mut [f64],
    ) -> f64 {
        sum_velocity_jacobian(&*self.a, &*self.b, x, t, v, jacobian)
    }
}
