//! A flow described by its settings rather than by a benchmark preset: field family, the range
//! of the distance kernels in the host's length unit, the numbers of distance and time kernels,
//! the prior σ, the integrator and the seed of the initial weights; and the scales of a host's
//! own configurations, from which the range and σ can be derived ([`fit_scales`]).
//!
//! The defaults are exactly the flow of [`Flow::new`] (the double-well kernel preset of
//! DESIGN.md §2), so a configuration only says what differs from it.

use crate::error::{Error, Result, check_finite};
use crate::field::Preset;
use crate::flow::Flow;
use crate::geometry::{Layout, remove_center_of_mass};
use crate::integrate::Integrator;
use crate::io::model::{MAX_PRIOR_SIGMA, MIN_PRIOR_SIGMA};
use crate::prior::Prior;
use crate::species::Species;

pub use crate::field::MAX_DISTANCE;

/// Lower quantile of the pair distances that [`fit_scales`] takes as the start of the data.
pub const FIT_LOW_QUANTILE: f64 = 0.001;
/// Upper quantile of the pair distances that [`fit_scales`] takes as the end of the data.
pub const FIT_HIGH_QUANTILE: f64 = 0.999;
/// Padding of the fitted range on either side, as a fraction of the quantile range.
pub const FIT_PADDING: f64 = 0.25;
/// At most this many pair distances enter the quantiles (whole configurations, evenly spaced
/// through the input), which bounds the memory and time of a fit on a long trajectory.
pub const FIT_MAX_DISTANCES: usize = 1 << 21;

pub use crate::field::Family;

/// The settings of an untrained flow. Build with struct-update syntax from
/// [`FlowConfig::default`]; [`FlowConfig::validate`] checks every combination, and
/// [`FlowConfig::build`] makes the flow.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowConfig {
    pub family: Family,
    /// Centres of the first and the last distance kernel, in the host's length unit
    /// (`0 ≤ min < max ≤` [`MAX_DISTANCE`]). Default `(0, 8)`.
    pub distance_range: (f64, f64),
    /// Numbers of distance and time kernels; `None` for the family's defaults
    /// ([`Family::default_counts`]).
    pub kernel_counts: Option<(usize, usize)>,
    /// σ of the Gaussian prior, in length units (default 1).
    pub prior_sigma: f64,
    pub integrator: Integrator,
    /// Seed of the random initial weights.
    pub seed: u64,
    /// The species of every particle (one index per particle, checked against the layout by
    /// [`FlowConfig::build`]); `None` (the default) for identical particles. Several species
    /// need the kernel family.
    pub species: Option<Species>,
    /// Strict mode ([`Flow::set_require_certificate`]): the flow refuses exact-discrete work
    /// unless its step certificate proves every RK4 step a bijection. Default true, and then
    /// [`FlowConfig::build`] makes the untrained flow certified
    /// ([`Flow::certify_initial_field`]); false is the opt-out, with the paper's initial
    /// weights as drawn.
    pub require_certificate: bool,
}

impl Default for FlowConfig {
    /// The flow of [`Flow::new`]: kernel field, distance centres `linspace(0, 8, 50)` with
    /// `γ = 0.5`, 10 time kernels with `γ = 0.3`, σ = 1, RK4 with 20 steps, exact-discrete
    /// density, seed 0.
    fn default() -> Self {
        FlowConfig {
            family: Family::Kernel,
            distance_range: (0.0, 8.0),
            kernel_counts: None,
            prior_sigma: 1.0,
            integrator: Integrator::default(),
            seed: 0,
            species: None,
            require_certificate: true,
        }
    }
}

impl FlowConfig {
    /// The numbers of distance and time kernels this configuration uses.
    #[must_use]
    pub fn kernel_counts(&self) -> (usize, usize) {
        self.kernel_counts
            .unwrap_or_else(|| self.family.default_counts())
    }

    /// The family-neutral request the family turns into its settings
    /// ([`crate::field::FieldFamily::preset_config`]): this range and these counts.
    #[must_use]
    pub fn preset(&self) -> Preset {
        Preset::Range {
            range: self.distance_range,
            counts: self.kernel_counts,
        }
    }

    /// Checks the distance range, the kernel counts for the family and the prior σ.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_PRIOR_SIGMA..=MAX_PRIOR_SIGMA).contains(&self.prior_sigma) {
            return Err(Error::invalid(format!(
                "prior sigma = {:e} is outside [{MIN_PRIOR_SIGMA:e}, {MAX_PRIOR_SIGMA:e}]",
                self.prior_sigma
            )));
        }
        if let Some(species) = &self.species {
            self.family.check_species(species)?;
        }
        self.family.check_preset(&self.preset())
    }

    /// An untrained flow for `layout` with these settings.
    ///
    /// # Errors
    ///
    /// What [`FlowConfig::validate`] reports.
    pub fn build(&self, layout: Layout) -> Result<Flow> {
        self.validate()?;
        let species = match &self.species {
            Some(species) => {
                species.check_count(layout.n_particles)?;
                species.clone()
            }
            None => Species::single(layout.n_particles),
        };
        let field = self
            .family
            .untrained(layout, &self.preset(), species, self.seed)?;
        let mut flow = Flow::from_parts(
            Prior::new(layout, self.prior_sigma)?,
            field,
            self.integrator,
        )?;
        flow.set_require_certificate(self.require_certificate);
        if self.require_certificate {
            flow.certify_initial_field()?;
        }
        // Settings each in range can still make a field outside the solvers' ranges (a
        // distance range of (0, 7e-4) asks for bandwidths below the smallest a model file
        // may hold): refused here by the loader's own checks, which `eqf_flow_save` applies.
        let file = crate::io::model::ModelFile::from_flow(&flow, None, None);
        crate::io::model::check_loads(&file.to_json()).map_err(|e| {
            Error::invalid(format!(
                "these flow settings (distance range {:e} to {:e}) make a field outside the \
                 usable ranges: {e}",
                self.distance_range.0, self.distance_range.1
            ))
        })?;
        Ok(flow)
    }
}

/// Length scales of a set of configurations, as [`fit_scales`] derives them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scales {
    /// The range of the distance kernels: the [`FIT_LOW_QUANTILE`] and [`FIT_HIGH_QUANTILE`]
    /// quantiles of the pair distances, each padded outwards by [`FIT_PADDING`] of their
    /// difference (the lower end at least 0).
    pub distance_range: (f64, f64),
    /// The prior σ whose CoM-free Gaussian has the configurations' mean square displacement
    /// from their centre of mass: `σ² = Σ |x_i − x̄|² / (n·(N−1)·D)`.
    pub prior_sigma: f64,
}

/// The scales of `n` configurations `x` (particle-major, `n·N·D` values, any centre of mass):
/// the range over which the distance kernels should lie and the prior σ of matching spread.
///
/// The flow transports prior samples to configurations like these, so its kernels must
/// resolve the distances they have (the quantiles keep a few outliers from stretching the
/// range; the padding leaves room for the distances the flow passes through), and a prior of
/// the same spread keeps the transport short.
///
/// # Errors
///
/// [`Error::DimensionMismatch`] if `x` is not a whole number of configurations, or empty;
/// [`Error::NonFinite`] for a NaN or infinite coordinate; [`Error::InvalidArgument`] if the
/// configurations have no spread (all particles on top of each other) or their scales fall
/// outside what a flow accepts; [`Error::Resource`] if the pair distances of one
/// configuration would not fit in memory (see [`crate::alloc::MAX_ALLOCATION_BYTES`]).
pub fn fit_scales(layout: Layout, x: &[f64]) -> Result<Scales> {
    let len = layout.len();
    if x.is_empty() || !x.len().is_multiple_of(len) {
        return Err(Error::size(
            format!("configurations to fit scales to (a positive multiple of N·D = {len})"),
            len * (x.len() / len).max(1),
            x.len(),
        ));
    }
    check_finite(x, "configurations to fit scales to")?;
    let n = x.len() / len;
    let (n_particles, dim) = (layout.n_particles, layout.dim);
    let n_pairs = n_particles * (n_particles - 1) / 2;
    // Whole configurations, evenly spaced, so that long trajectories are thinned uniformly.
    let stride = (n * n_pairs).div_ceil(FIT_MAX_DISTANCES).max(1);
    // One configuration of many particles alone has ~N²/2 pairs (5·10¹¹ at N = 10⁶): checked.
    let mut distances = crate::alloc::with_capacity(
        n.div_ceil(stride).checked_mul(n_pairs),
        "the pair distances of the configurations to fit scales to",
    )?;
    // Squares of lengths near 1e-300 underflow to 0 (and near 1e200 overflow), which made
    // configurations of tiny spread look like ones of none: lengths are divided by a power of
    // two near the largest coordinate before they are squared, and multiplied back after the
    // square root. Scaling by a power of two is exact, so where the squares neither underflow
    // nor overflow the result is bit for bit the unscaled one.
    //
    // Each configuration is taken relative to its first particle before its centre of mass is
    // removed: a naive mean of coordinates far from the origin (a square of side 16 offset by
    // 1e17, every coordinate exact) rounds to a spacing of the offset and gave σ = 13.06
    // instead of 9.24, while the differences to one particle are exact there. The power of two
    // is chosen near the largest of these relative coordinates, which is what is squared.
    let largest = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let largest_relative = x.chunks_exact(len).fold(0.0f64, |m, config| {
        config
            .iter()
            .enumerate()
            .fold(m, |m, (i, v)| m.max((v - config[i % dim]).abs()))
    });
    let unit = power_of_two_near(largest_relative);
    let mut sum_sq = 0.0;
    let mut centred = vec![0.0; len];
    for (s, config) in x.chunks_exact(len).enumerate() {
        for (i, (c, v)) in centred.iter_mut().zip(config).enumerate() {
            *c = v - config[i % dim];
        }
        remove_center_of_mass(&mut centred, dim);
        sum_sq += centred.iter().map(|v| (v / unit).powi(2)).sum::<f64>();
        if s % stride != 0 {
            continue;
        }
        for i in 0..n_particles {
            for j in i + 1..n_particles {
                let d2: f64 = (0..dim)
                    .map(|k| ((centred[i * dim + k] - centred[j * dim + k]) / unit).powi(2))
                    .sum();
                distances.push(unit * d2.sqrt());
            }
        }
    }
    distances.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        let position = q * (distances.len() - 1) as f64;
        let (below, frac) = (position.floor() as usize, position.fract());
        let above = (below + 1).min(distances.len() - 1);
        distances[below] + frac * (distances[above] - distances[below])
    };
    let (low, high) = (quantile(FIT_LOW_QUANTILE), quantile(FIT_HIGH_QUANTILE));
    let prior_sigma = unit * (sum_sq / (n * (n_particles - 1) * dim) as f64).sqrt();
    // Finite coordinates can still overflow a distance (particles at -1.7e308 and 1.7e308): no
    // scale to fit then either, but for another reason.
    if !(high.is_finite() && prior_sigma.is_finite()) {
        return Err(Error::invalid(format!(
            "the {n} configurations' pair distances or spread overflow (coordinates up to \
             {largest:e} in magnitude): no length scale to fit"
        )));
    }
    if !(high > 0.0 && prior_sigma > 0.0) {
        return Err(Error::invalid(format!(
            "the {n} configurations have no spread (pair distances up to {high:e}, RMS \
             displacement from the centre of mass {prior_sigma:e}): no length scale to fit"
        )));
    }
    let pad = FIT_PADDING * (high - low);
    // A range too narrow for the kernels (a rigid configuration) is widened around its middle
    // to a tenth of the typical distance.
    let pad = pad.max(0.05 * high);
    let scales = Scales {
        distance_range: ((low - pad).max(0.0), high + pad),
        prior_sigma,
    };
    let check = FlowConfig {
        distance_range: scales.distance_range,
        prior_sigma,
        ..FlowConfig::default()
    };
    check.validate().map_err(|e| {
        Error::invalid(format!(
            "the scales fitted to the {n} configurations (pair distances up to {high:e}, RMS \
             displacement from the centre of mass {prior_sigma:e}) are unusable: {e}"
        ))
    })?;
    Ok(scales)
}

/// The power of two nearest `value` from below (at most 2^1023, at least 2^-1022), 1 for 0:
/// dividing by it is exact, and brings `value` into [1, 2) (below 1 for subnormal values).
fn power_of_two_near(value: f64) -> f64 {
    if value == 0.0 || !value.is_finite() {
        return 1.0;
    }
    // The biased exponent of a normal number; 0 for a subnormal, taken as that of 2^-1022.
    let biased = ((value.to_bits() >> 52) & 0x7ff).max(1);
    f64::from_bits(biased << 52)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::envpair::EnvPairField;
    use crate::field::{FieldFamily, KernelConfig, KernelField};

    #[test]
    fn the_default_configuration_is_the_flow_of_flow_new() {
        let layout = Layout::new(4, 2).unwrap();
        let config = FlowConfig {
            seed: 5,
            ..FlowConfig::default()
        };
        assert_eq!(
            KernelField::preset_config(&config.preset()).unwrap(),
            KernelConfig::double_well()
        );
        let built = config.build(layout).unwrap();
        let preset = Flow::new(4, 2, 5).unwrap();
        assert_eq!(built.field().params(), preset.field().params());
        assert_eq!(built.field().spec(), preset.field().spec());
        assert_eq!(built.prior().sigma(), 1.0);
    }

    /// Every flow the settings build can be saved and loaded back, over distance ranges from
    /// far too narrow to far too wide and every family: the narrow ones (bandwidths below
    /// the smallest a model file may hold) are refused when built, naming the range.
    #[test]
    fn every_flow_the_settings_build_saves_and_loads_back() {
        let layout = Layout::new(3, 2).unwrap();
        let path = std::env::temp_dir().join(format!(
            "eqflow_flow_config_{}_save.json",
            std::process::id()
        ));
        let mut refused = 0;
        for &family in Family::ALL {
            for hi in [1e-6, 3e-4, 7e-4, 1e-2, 1.0, 1e3, 1e6] {
                let config = FlowConfig {
                    family,
                    distance_range: (0.0, hi),
                    ..FlowConfig::default()
                };
                match config.build(layout) {
                    Ok(flow) => {
                        crate::io::model::save(&flow, None, None, &path)
                            .unwrap_or_else(|e| panic!("{family:?}, range to {hi}: {e}"));
                        let (back, _) = crate::io::model::load(&path).unwrap();
                        assert_eq!(back, flow);
                    }
                    Err(e) => {
                        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
                        // The kernel family's refusal is the new check's: it names the range.
                        let e = e.to_string();
                        assert!(
                            family != Family::Kernel || e.contains("distance range"),
                            "{e}"
                        );
                        refused += 1;
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&path);
        assert!(refused > 0, "the narrowest ranges must be refused");
    }

    #[test]
    fn ranges_counts_and_sigma_are_applied_and_validated() {
        let layout = Layout::new(3, 3).unwrap();
        let config = FlowConfig {
            distance_range: (0.2, 1.2),
            kernel_counts: Some((11, 4)),
            prior_sigma: 0.3,
            ..FlowConfig::default()
        };
        let kernels = KernelField::preset_config(&config.preset()).unwrap();
        assert_eq!(kernels.n_dist(), 11);
        assert!((kernels.mu_dist[10] - 1.2).abs() < 1e-15);
        // Widths in the preset's proportion to the spacing (0.1 here).
        assert!((kernels.gamma_dist[0] - 0.5 * 0.1 * 49.0 / 8.0).abs() < 1e-12);
        assert_eq!(config.build(layout).unwrap().prior().sigma(), 0.3);
        let envpair = FlowConfig {
            family: Family::EnvPair,
            ..config.clone()
        };
        let spec = EnvPairField::preset_config(&envpair.preset()).unwrap();
        assert_eq!((spec.n_rbf, spec.n_time), (11, 4));
        assert_eq!((spec.rbf_min, spec.rbf_max), (0.2, 1.2));
        envpair.build(layout).unwrap();

        for bad in [
            FlowConfig {
                distance_range: (1.0, 1.0),
                ..FlowConfig::default()
            },
            FlowConfig {
                distance_range: (-0.1, 1.0),
                ..FlowConfig::default()
            },
            FlowConfig {
                distance_range: (0.0, f64::NAN),
                ..FlowConfig::default()
            },
            FlowConfig {
                prior_sigma: 0.0,
                ..FlowConfig::default()
            },
            FlowConfig {
                kernel_counts: Some((1, 10)),
                ..FlowConfig::default()
            },
            FlowConfig {
                kernel_counts: Some((129, 10)),
                ..FlowConfig::default()
            },
            FlowConfig {
                family: Family::EnvPair,
                kernel_counts: Some((65, 6)),
                ..FlowConfig::default()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(Error::InvalidArgument { .. })),
                "{bad:?}"
            );
        }
        assert!(Family::from_name("graph").is_err());
    }

    #[test]
    fn fitted_scales_follow_the_configurations_in_any_unit() {
        let layout = Layout::new(3, 2).unwrap();
        // Equilateral triangles of side 1 (and a CoM shift): σ² = Σ|x − x̄|²/((N−1)D) = 1/4.
        let h = 3f64.sqrt() / 2.0;
        let triangle = [0.0, 0.0, 1.0, 0.0, 0.5, h];
        let x: Vec<f64> = (0..10)
            .flat_map(|s| triangle.map(|v| v + f64::from(s)))
            .collect();
        let scales = fit_scales(layout, &x).unwrap();
        assert!((scales.prior_sigma - 0.5).abs() < 1e-12);
        // All distances 1: the range is widened to a tenth of it on either side.
        let (min, max) = scales.distance_range;
        assert!((min - 0.95).abs() < 1e-12 && (max - 1.05).abs() < 1e-12);
        // Scaling the unit scales the result.
        let nm: Vec<f64> = x.iter().map(|v| v * 0.1).collect();
        let scaled = fit_scales(layout, &nm).unwrap();
        assert!((scaled.prior_sigma - 0.05).abs() < 1e-12);
        assert!((scaled.distance_range.1 - 0.105).abs() < 1e-12);

        assert!(matches!(
            fit_scales(layout, &x[..5]),
            Err(Error::DimensionMismatch { .. })
        ));
        assert!(matches!(
            fit_scales(layout, &[]),
            Err(Error::DimensionMismatch { .. })
        ));
        let mut bad = x.clone();
        bad[3] = f64::NAN;
        assert!(matches!(
            fit_scales(layout, &bad),
            Err(Error::NonFinite { .. })
        ));
        assert!(matches!(
            fit_scales(layout, &[2.0; 6]),
            Err(Error::InvalidArgument { .. })
        ));
        // Finite coordinates whose distances overflow: said so, not "no spread … NaN".
        let mut huge = x[..6].to_vec();
        huge[0] = -f64::MAX;
        huge[2] = f64::MAX;
        let e = fit_scales(layout, &huge).unwrap_err().to_string();
        assert!(e.contains("overflow") && !e.contains("NaN"), "{e}");
    }

    /// Issue from the C-ABI sweep: configurations at 1e-300 were refused (rightly: no flow
    /// has such scales) as having "no spread (pair distances up to 0e0 …)", because the
    /// squared distances underflowed. Refused now with the distances and spread they have;
    /// likewise at 1e300, where the squares overflowed. Ordinary scales are unchanged bit for
    /// bit (the lengths are scaled by a power of two).
    #[test]
    fn tiny_and_huge_configurations_are_refused_with_their_real_scales() {
        let layout = Layout::new(4, 2).unwrap();
        // Four particles on a line, 1 apart: pair distances 1 to 3.
        let line = [0.0, 0.0, 1.0, 0.0, 2.0, 0.0, 3.0, 0.0];
        let unit = fit_scales(layout, &line).unwrap();
        for factor in [1e-300, 1e-200, 1e300] {
            let scaled: Vec<f64> = line.iter().map(|v| v * factor).collect();
            let e = fit_scales(layout, &scaled).unwrap_err().to_string();
            assert!(e.contains("are unusable"), "{factor:e}: {e}");
            // The number after `what` in the message, in units of `factor`.
            let quoted = |what: &str| -> f64 {
                let at = e.find(what).unwrap() + what.len();
                let number: String = e[at..]
                    .chars()
                    .take_while(|c| !matches!(c, ' ' | ',' | ')'))
                    .collect();
                number.parse::<f64>().unwrap() / factor
            };
            // The high quantile of the distances 1, 1, 1, 2, 2, 3; the spread of the line.
            let distance = quoted("pair distances up to ");
            assert!(distance > 2.0 && distance <= 3.0, "{factor:e}: {e}");
            let sigma = quoted("centre of mass ");
            assert!(
                (sigma / unit.prior_sigma - 1.0).abs() < 1e-3,
                "{factor:e}: {e}"
            );
        }
        // Exact scaling: a configuration 2^-10 the size gives 2^-10 the scales, bit for bit.
        let small: Vec<f64> = line.iter().map(|v| v * 2f64.powi(-10)).collect();
        let scales = fit_scales(layout, &small).unwrap();
        assert_eq!(scales.prior_sigma, unit.prior_sigma * 2f64.powi(-10));
        assert_eq!(power_of_two_near(3.0), 2.0);
        assert_eq!(power_of_two_near(1e-310), 2f64.powi(-1022));
        assert_eq!(power_of_two_near(f64::MAX), 2f64.powi(1023));
    }

    /// Sweep 29: four particles on a square of side 16 offset by 1e17 (every coordinate
    /// exact) gave σ = 13.06 instead of 9.24: the naive centre of mass rounded to the offset's
    /// spacing. Configurations are centred relative to their first particle now, so any exact
    /// offset gives the scales of the square at the origin, bit for bit.
    #[test]
    fn configurations_far_from_the_origin_have_the_scales_of_their_shape() {
        let layout = Layout::new(4, 2).unwrap();
        let square = [0.0, 0.0, 16.0, 0.0, 0.0, 16.0, 16.0, 16.0];
        let at_origin = fit_scales(layout, &square).unwrap();
        // σ² = 8 coordinates of ±8, squared, over (N−1)·D = 6.
        assert!((at_origin.prior_sigma - (512.0f64 / 6.0).sqrt()).abs() < 1e-12);
        for offset in [1e15, 1e17, -1e17, 2f64.powi(56)] {
            let shifted: Vec<f64> = square.iter().map(|v| v + offset).collect();
            assert!(shifted.iter().zip(&square).all(|(s, v)| s - offset == *v));
            assert_eq!(
                fit_scales(layout, &shifted).unwrap(),
                at_origin,
                "offset {offset:e}"
            );
        }
    }
}
