//! The registered field families: [`Field`], one variant per family, and the dispatch that lets
//! the flow, model files and training use any of them.
//!
//! Adding a family is one folder under `src/field/` (a type implementing [`VectorField`],
//! [`FieldFamily`] and [`TrainableField`], with its tests) plus its line in the
//! `field_families!` list below, which generates the enum, its `From` conversions, the
//! model-file dispatch, the user-facing [`Family`] (name, default counts, untrained fields from
//! a family-neutral [`Preset`]) and `with_family!`. Outside `src/field/` no code names a
//! family: the CLI, the C flow options, `System` and `FlowConfig` go through [`Family`].

use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::LocalBounds;
use super::Preset;
use super::VectorField;
use super::coordkernel::CoordKernelField;
use super::dense::DenseField;
use super::envpair::EnvPairField;
use super::family::{FieldFamily, TrainableField};
use super::kernel::KernelField;
use super::kernelcoord::KernelCoordField;
use crate::error::{Error, Result};
use crate::geometry::Layout;
use crate::species::Species;

/// Generates [`Field`] (one variant per family), its `From` conversions, [`Field::FAMILIES`],
/// the model-file dispatch `from_family_spec` and `with_family!` from one list. `$d` is a `$`
/// token, so that the generated `with_family!` can have metavariables of its own.
macro_rules! field_families {
    ($d:tt; $( $(#[$doc:meta])* $variant:ident($ty:ty) ),+ $(,)?) => {
        /// A vector field of any registered family.
        #[derive(Debug, Clone, PartialEq)]
        #[non_exhaustive]
        pub enum Field {
            $( $(#[$doc])* $variant($ty), )+
        }

        $( impl From<$ty> for Field {
            fn from(f: $ty) -> Field {
                Field::$variant(f)
            }
        } )+

        impl Field {
            /// The names of all registered families, for messages and `--help`.
            pub const FAMILIES: &'static [&'static str] = &[$( <$ty as FieldFamily>::NAME ),+];
        }

        /// A registered field family, as a user chooses one (CLI `--field`, the C flow
        /// options, `FlowConfig`); the first registered, the paper's kernel field, is the
        /// default.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum Family {
            $( $(#[$doc])* $variant, )+
        }

        impl Family {
            /// Every registered family, in registration order.
            pub const ALL: &'static [Family] = &[$( Family::$variant ),+];

            /// The family's name in model files ([`FieldFamily::NAME`]).
            #[must_use]
            pub fn name(self) -> &'static str {
                match self {
                    $( Family::$variant => <$ty as FieldFamily>::NAME, )+
                }
            }

            /// Whether the family tells particle species apart ([`FieldFamily::SPECIES`]).
            #[must_use]
            pub fn takes_species(self) -> bool {
                match self {
                    $( Family::$variant => <$ty as FieldFamily>::SPECIES, )+
                }
            }

            /// See [`FieldFamily::default_counts`].
            #[must_use]
            pub fn default_counts(self) -> (usize, usize) {
                match self {
                    $( Family::$variant => <$ty as FieldFamily>::default_counts(), )+
                }
            }

            /// Checks that the family can build a field for `preset`, without building one.
            ///
            /// # Errors
            ///
            /// What [`Preset::validate`], the family's [`FieldFamily::preset_config`] and
            /// [`FieldFamily::validate_config`] report.
            pub fn check_preset(self, preset: &Preset) -> Result<()> {
                preset.validate()?;
                match self {
                    $( Family::$variant => {
                        <$ty as FieldFamily>::validate_config(
                            &<$ty as FieldFamily>::preset_config(preset)?,
                        )
                        .map_err(|e| derived_from(e, self, preset))
                    } )+
                }
            }

            /// An untrained field of this family for `preset` ([`FieldFamily::untrained`]).
            ///
            /// # Errors
            ///
            /// As [`Family::check_preset`]; species the family cannot take.
            pub fn untrained(
                self,
                layout: Layout,
                preset: &Preset,
                species: Species,
                seed: u64,
            ) -> Result<Field> {
                preset.validate()?;
                match self {
                    $( Family::$variant => {
                        let config = <$ty as FieldFamily>::preset_config(preset)?;
                        <$ty as FieldFamily>::validate_config(&config)
                            .map_err(|e| derived_from(e, self, preset))?;
                        <$ty as FieldFamily>::untrained(layout, config, species, seed)
                            .map(Field::$variant)
                    } )+
                }
            }
        }

        /// The field of the family named in `spec`, if one is registered under that name.
        fn from_family_spec(
            layout: Layout,
            spec: &FieldSpec,
            species: Species,
            params: Vec<f64>,
        ) -> Option<Result<Field>> {
            $( if spec.family == <$ty as FieldFamily>::NAME {
                return Some(
                    from_spec_of::<$ty>(layout, spec, species, params).map(Field::$variant),
                );
            } )+
            None
        }

        /// Runs `$body` with `$f` bound to the concrete field of whatever family `$field`
        /// holds, so that generic code (`fn g<F: TrainableField>(f: &F)`) is monomorphised per
        /// family.
        macro_rules! with_family {
            ($d field:expr, $d f:ident => $d body:expr) => {
                match $d field {
                    $( $crate::field::Field::$variant($d f) => $d body, )+
                }
            };
        }
    };
}

field_families! {$;
    /// The paper's pairwise RBF kernel field (Köhler, Klein & Noé 2020).
    Kernel(KernelField),
    /// The environment-modulated pair field (`src/field/envpair/`).
    EnvPair(EnvPairField),
    /// The coordination-modulated kernel field (`src/field/coordkernel/`).
    CoordKernel(CoordKernelField),
    /// The non-equivariant dense baseline (`src/field/dense/`).
    Dense(DenseField),
    /// The paper's kernel field plus a coordination correction (`src/field/kernelcoord/`).
    KernelCoord(KernelCoordField),
}
pub(crate) use with_family;

impl Default for Family {
    /// The first registered family: the paper's kernel field.
    fn default() -> Family {
        Family::ALL[0]
    }
}

/// The error of a family without species (`name`) asked for several.
pub(crate) fn several_species_refused(name: &str, species: &Species) -> Error {
    let with: Vec<&str> = Family::ALL
        .iter()
        .filter(|f| f.takes_species())
        .map(|f| f.name())
        .collect();
    Error::invalid(format!(
        "the {name} field family treats all particles as one species; {} species need the {} \
         family",
        species.n_species(),
        with.join(" or ")
    ))
}

impl Family {
    /// Refuses several species for a family that treats all particles as one.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the families that take species.
    pub fn check_species(self, species: &Species) -> Result<()> {
        if species.is_single() || self.takes_species() {
            Ok(())
        } else {
            Err(several_species_refused(self.name(), species))
        }
    }

    /// The family registered under `name`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for another name, listing the known ones.
    pub fn from_name(name: &str) -> Result<Family> {
        Family::ALL
            .iter()
            .copied()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown field family '{name}' (known: {:?})",
                    Field::FAMILIES
                ))
            })
    }
}

/// The family part of a model file: `{"family": NAME, "config": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// [`FieldFamily::NAME`] of the family.
    pub family: String,
    /// The family's [`FieldFamily::Config`], as JSON.
    pub config: serde_json::Value,
}

/// Builds a field of family `F` from a spec whose family name matched.
fn from_spec_of<F: FieldFamily>(
    layout: Layout,
    spec: &FieldSpec,
    species: Species,
    params: Vec<f64>,
) -> Result<F> {
    let config: F::Config =
        serde_json::from_value(spec.config.clone()).map_err(|e| Error::Format {
            what: format!("field config of family '{}': {e}", F::NAME),
        })?;
    F::from_config_with_species(layout, config, species, params)
}

fn spec_of<F: FieldFamily>(field: &F) -> FieldSpec {
    FieldSpec {
        family: F::NAME.to_string(),
        // Plain data with finite floats: serialising cannot fail.
        config: serde_json::to_value(field.config()).unwrap_or_default(),
    }
}

impl Field {
    /// A field from a model file's family section and parameters.
    ///
    /// # Errors
    ///
    /// [`Error::Format`] for an unknown family or a config that does not parse; the family's
    /// own validation errors otherwise.
    pub fn from_spec(layout: Layout, spec: &FieldSpec, params: Vec<f64>) -> Result<Field> {
        Self::from_spec_with_species(layout, spec, Species::single(layout.n_particles), params)
    }

    /// [`Field::from_spec`] for particles of the given species.
    ///
    /// # Errors
    ///
    /// As [`Field::from_spec`]; a family without species refuses several
    /// ([`FieldFamily::from_config_with_species`]).
    pub fn from_spec_with_species(
        layout: Layout,
        spec: &FieldSpec,
        species: Species,
        params: Vec<f64>,
    ) -> Result<Field> {
        from_family_spec(layout, spec, species, params).unwrap_or_else(|| {
            Err(Error::Format {
                what: format!(
                    "unknown field family '{}' (this build knows {:?})",
                    spec.family,
                    Field::FAMILIES
                ),
            })
        })
    }

    /// The family section of a model file for this field.
    #[must_use]
    pub fn spec(&self) -> FieldSpec {
        with_family!(self, f => spec_of(f))
    }

    /// The family's model-file name.
    #[must_use]
    pub fn family(&self) -> &'static str {
        fn name<F: FieldFamily>(_: &F) -> &'static str {
            F::NAME
        }
        with_family!(self, f => name(f))
    }

    /// The particle species, `None` when all particles are identical.
    #[must_use]
    pub fn species(&self) -> Option<&Species> {
        with_family!(self, f => FieldFamily::species(f))
    }

    /// The particle layout.
    #[must_use]
    pub fn layout(&self) -> Layout {
        with_family!(self, f => FieldFamily::layout(f))
    }

    /// The trainable parameters (flat).
    #[must_use]
    pub fn params(&self) -> &[f64] {
        with_family!(self, f => FieldFamily::params(f))
    }

    /// Replaces the parameters; on error the field is unchanged.
    ///
    /// # Errors
    ///
    /// As the family's [`FieldFamily::set_params`].
    pub fn set_params(&mut self, params: &[f64]) -> Result<()> {
        with_family!(self, f => FieldFamily::set_params(f, params))
    }

    /// Names and ranges of the parameter blocks.
    #[must_use]
    pub fn param_blocks(&self) -> Vec<(&'static str, Range<usize>)> {
        with_family!(self, f => f.param_blocks())
    }

    /// See [`FieldFamily::output_linear_blocks`].
    #[must_use]
    pub fn output_linear_blocks(&self) -> Vec<Range<usize>> {
        with_family!(self, f => f.output_linear_blocks())
    }

    /// See [`FieldFamily::check_usable`].
    ///
    /// # Errors
    ///
    /// As the family's.
    pub fn check_usable(&self, h: f64) -> Result<()> {
        with_family!(self, f => f.check_usable(h))
    }

    /// See [`FieldFamily::lipschitz_bound`].
    #[must_use]
    pub fn lipschitz_bound(&self, t: f64) -> f64 {
        with_family!(self, f => f.lipschitz_bound(t))
    }

    /// See [`FieldFamily::lipschitz_bounds`].
    #[must_use]
    pub fn lipschitz_bounds(&self, times: &[f64]) -> Vec<f64> {
        with_family!(self, f => f.lipschitz_bounds(times))
    }

    /// See [`TrainableField::lipschitz_bounds_vjp`].
    ///
    /// # Errors
    ///
    /// As the family's (the default refuses).
    pub fn lipschitz_bounds_vjp(
        &self,
        times: &[f64],
        bounds_bar: &[f64],
        theta_bar: &mut [f64],
    ) -> Result<Vec<f64>> {
        with_family!(self, f => TrainableField::lipschitz_bounds_vjp(f, times, bounds_bar, theta_bar))
    }

    /// See [`FieldFamily::local_bounds`].
    ///
    /// # Errors
    ///
    /// [`crate::Error::Resource`] if the tables cannot be allocated.
    pub fn local_bounds(&self, times: &[f64]) -> Result<Option<Box<dyn LocalBounds>>> {
        with_family!(self, f => f.local_bounds(times))
    }

    /// See [`FieldFamily::compression_bounds`].
    #[must_use]
    pub fn compression_bounds(&self, times: &[f64]) -> Vec<f64> {
        with_family!(self, f => f.compression_bounds(times))
    }

    /// See [`FieldFamily::certificate_bounds`].
    #[must_use]
    pub fn certificate_bounds(&self, times: &[f64]) -> (Vec<f64>, Vec<f64>) {
        with_family!(self, f => f.certificate_bounds(times))
    }

    /// See [`FieldFamily::certificate_bounder`].
    #[must_use]
    pub fn certificate_bounder(&self) -> crate::field::CertificateBounder<'_> {
        with_family!(self, f => f.certificate_bounder())
    }

    /// See [`TrainableField::compression_bounds_vjp`].
    ///
    /// # Errors
    ///
    /// As the family's (the default refuses).
    pub fn compression_bounds_vjp(
        &self,
        times: &[f64],
        bounds_bar: &[f64],
        theta_bar: &mut [f64],
    ) -> Result<Vec<f64>> {
        with_family!(self, f => TrainableField::compression_bounds_vjp(f, times, bounds_bar, theta_bar))
    }

    /// See [`TrainableField::certificate_bounds_vjp`].
    ///
    /// # Errors
    ///
    /// As the family's.
    pub fn certificate_bounds_vjp(
        &self,
        times: &[f64],
        bars: &mut crate::field::BoundCotangents<'_>,
        theta_bar: &mut [f64],
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        with_family!(self, f => TrainableField::certificate_bounds_vjp(f, times, bars, theta_bar))
    }

    /// See [`FieldFamily::grid_dynamics`].
    #[must_use]
    pub fn grid_dynamics(&self, times: &[f64]) -> Option<Arc<dyn VectorField + Send>> {
        with_family!(self, f => f.grid_dynamics(times))
    }

    /// The paper's kernel field, if this is one.
    #[must_use]
    pub fn as_kernel(&self) -> Option<&KernelField> {
        if let Field::Kernel(k) = self {
            Some(k)
        } else {
            None
        }
    }

    /// The field as the integrators see it.
    #[must_use]
    pub fn as_vector_field(&self) -> &dyn VectorField {
        with_family!(self, f => f)
    }
}

// Forwarded so that the enum can be integrated directly; `symmetric_jacobian` and the
// divergence gradient must be forwarded too, or the exact-discrete inverse would take its
// slower generic path for every family.
impl VectorField for Field {
    fn state_len(&self) -> usize {
        self.as_vector_field().state_len()
    }
    fn velocity_into(&self, x: &[f64], t: f64, v: &mut [f64]) -> f64 {
        self.as_vector_field().velocity_into(x, t, v)
    }
    fn velocity_only_into(&self, x: &[f64], t: f64, v: &mut [f64]) {
        self.as_vector_field().velocity_only_into(x, t, v);
    }
    fn velocity_jacobian_into(
        &self,
        x: &[f64],
        t: f64,
        v: &mut [f64],
        jacobian: &mut [f64],
    ) -> f64 {
        self.as_vector_field()
            .velocity_jacobian_into(x, t, v, jacobian)
    }
    fn velocity_jacobian_divgrad_into(
        &self,
        x: &[f64],
        t: f64,
        v: &mut [f64],
        jacobian: &mut [f64],
        div_gradient: &mut [f64],
    ) -> Option<f64> {
        self.as_vector_field()
            .velocity_jacobian_divgrad_into(x, t, v, jacobian, div_gradient)
    }
    fn symmetric_jacobian(&self) -> bool {
        self.as_vector_field().symmetric_jacobian()
    }
    fn translation_axes(&self) -> Option<usize> {
        self.as_vector_field().translation_axes()
    }
}

/// A family's refusal of the settings it derived from a distance range and kernel counts
/// (a dense length scale a quarter of the range's end, coordkernel shells in its middle half):
/// the message names the range and counts, which the host set, next to the derived value,
/// which it never did.
fn derived_from(error: crate::Error, family: Family, preset: &Preset) -> crate::Error {
    match (error, preset) {
        (crate::Error::InvalidArgument { what }, Preset::Range { range, .. }) => {
            let (k, r) = preset.counts_or(family.default_counts());
            crate::Error::invalid(format!(
                "{what} (the {} family derives its settings from the distance range [{}, {}] \
                 and the kernel counts ({k}, {r}))",
                family.name(),
                crate::error::Compact(range.0),
                crate::error::Compact(range.1)
            ))
        }
        (error, _) => error,
    }
}
