//! Several particle species in the kernel field: one radial function per unordered species
//! pair. Exact Jacobian, divergence and its gradient, reverse pass and ML gradient against
//! central differences; equivariance under permutations *within* a species (and a test that a
//! swap across species is not a symmetry); rotations, reflections, translations; the Lipschitz
//! bound; sampled = evaluated log q; model files; single-species results unchanged; bad input.

mod common;

use common::*;
use eqflow::field::{
    Cotangent, Field, FieldFamily, KernelConfig, KernelField, TabulatedField, TrainableField,
    VectorField, VjpScratch,
};
use eqflow::flow_config::{Family, FlowConfig};
use eqflow::geometry::Layout;
use eqflow::integrate::{DensityMode, Integrator, Method};
use eqflow::io::model;
use eqflow::prior::Prior;
use eqflow::train::Losses;
use eqflow::{Error, Flow, Species};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// Two species: `n_b` particles of species 1 at the end.
fn two_species(n: usize, n_b: usize) -> Species {
    Species::new(2, (0..n).map(|i| u32::from(i >= n - n_b)).collect()).unwrap()
}

/// A field with random parameters in every block (so every pair type differs in every
/// parameter block and all of them matter).
fn species_field(
    n: usize,
    dim: usize,
    kernels: KernelConfig,
    species: Species,
    seed: u64,
) -> KernelField {
    let layout = Layout::new(n, dim).unwrap();
    let base = KernelField::initialise_with_species(layout, kernels.clone(), species.clone(), seed)
        .unwrap();
    let mut r = rng(seed ^ 0x5eed);
    let pl = base.param_layout();
    let mut p = base.params().to_vec();
    for ty in 0..base.n_pair_types() {
        let block = &mut p[base.block_range(ty)];
        for v in &mut block[pl.b()] {
            *v = r.random_range(-0.3..0.3);
        }
        for v in &mut block[pl.s()] {
            *v = r.random_range(-0.3..0.3);
        }
        for v in &mut block[pl.log_inv_gamma_dist().start..pl.log_inv_gamma_time().end] {
            *v += r.random_range(-0.2..0.2);
        }
    }
    KernelField::with_species(layout, kernels, species, p).unwrap()
}

/// The systems of the tests: (N, D, kernels, species, spread).
fn cases() -> Vec<(&'static str, KernelField, f64)> {
    vec![
        (
            "DW-4, 2 species",
            species_field(4, 2, KernelConfig::double_well(), two_species(4, 2), 3),
            2.5,
        ),
        (
            "LJ-13, 2 species",
            species_field(13, 3, KernelConfig::lennard_jones(), two_species(13, 5), 4),
            1.5,
        ),
        (
            "6 in 2-D, 3 species",
            species_field(
                6,
                2,
                KernelConfig::double_well(),
                Species::new(3, vec![2, 0, 1, 2, 0, 2]).unwrap(),
                5,
            ),
            2.5,
        ),
    ]
}

fn flow_of(field: KernelField, sigma: f64, mode: DensityMode) -> Flow {
    let layout = field.layout();
    let integrator = Integrator::new(Method::Rk4 { n_steps: 20 }, mode).unwrap();
    let mut flow = Flow::from_parts(Prior::new(layout, sigma).unwrap(), field, integrator).unwrap();
    // Strict mode off: these strong random fields (not certified at their steps) test the
    // map's exactness and symmetries where the step certificate cannot vouch for it.
    flow.set_require_certificate(false);
    flow
}

/// A random permutation that maps every particle to one of its own species.
fn within_species_permutation(species: &Species, r: &mut ChaCha8Rng) -> Vec<usize> {
    let n = species.n_particles();
    let mut perm: Vec<usize> = (0..n).collect();
    for s in 0..species.n_species() as u32 {
        let members: Vec<usize> = (0..n).filter(|&i| species.of_particle()[i] == s).collect();
        let mut shuffled = members.clone();
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, r.random_range(0..=i));
        }
        for (a, b) in members.iter().zip(&shuffled) {
            perm[*a] = *b;
        }
    }
    perm
}

#[test]
fn jacobian_divergence_and_its_gradient_match_finite_differences() {
    let mut r = rng(1);
    for (name, field, spread) in cases() {
        families::check_jacobian_and_divergence(name, &field, spread, &mut r);
        let times = eqflow::integrate::rk4_stage_times(4);
        let tabulated = TabulatedField::new(&field, &times).unwrap();
        families::check_jacobian_and_divergence(name, &tabulated, spread, &mut r);
        // ∇ div v against central differences of the divergence, exact and tabulated, with a
        // particle of the last species far out (past the tables).
        let len = field.state_len();
        let dim = field.layout().dim;
        let mut x = random_config(&mut r, len, spread);
        x[len - dim] += 60.0;
        for f in [&field as &dyn VectorField, &tabulated] {
            let t = times[3];
            let (mut v, mut jac, mut grad) = (vec![0.0; len], vec![0.0; len * len], vec![0.0; len]);
            let div = f
                .velocity_jacobian_divgrad_into(&x, t, &mut v, &mut jac, &mut grad)
                .unwrap();
            let (mut v2, mut jac2) = (vec![0.0; len], vec![0.0; len * len]);
            assert_eq!(
                div.to_bits(),
                f.velocity_jacobian_into(&x, t, &mut v2, &mut jac2)
                    .to_bits()
            );
            assert_eq!((v, jac.clone()), (v2, jac2));
            for a in 0..len {
                for b in 0..a {
                    assert_eq!(jac[a * len + b].to_bits(), jac[b * len + a].to_bits());
                }
            }
            let h = 1e-6;
            let mut y = x.clone();
            let mut scratch = vec![0.0; len];
            for b in 0..len {
                y[b] = x[b] + h;
                let up = f.velocity_into(&y, t, &mut scratch);
                y[b] = x[b] - h;
                let down = f.velocity_into(&y, t, &mut scratch);
                y[b] = x[b];
                let fd = (up - down) / (2.0 * h);
                assert!(
                    (grad[b] - fd).abs() < 1e-6 * fd.abs().max(1.0),
                    "{name}, component {b}: {} vs {fd}",
                    grad[b]
                );
            }
        }
    }
}

/// Each pair uses its own pair type's radial function: the velocity of two particles alone is
/// `φ_ab(d) r` for exactly the pair type of their species.
#[test]
fn each_pair_uses_the_radial_function_of_its_species_pair() {
    let species = Species::new(3, vec![0, 1, 2]).unwrap();
    let field = species_field(3, 2, KernelConfig::double_well(), species.clone(), 8);
    let t = 0.37;
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        let mut x = vec![0.0; 6];
        x[2 * j] = 1.3;
        x[2 * j + 1] = -0.4;
        let v = velocity(&field, &x, t);
        // v_i = Σ_k φ_{ik}(d_ik) r_ik: recompute from `radial_of` per pair.
        let mut expected = vec![0.0; 6];
        for a in 0..3 {
            for b in a + 1..3 {
                let r = [x[2 * a] - x[2 * b], x[2 * a + 1] - x[2 * b + 1]];
                let d = (r[0] * r[0] + r[1] * r[1] + eqflow::field::EPS_D).sqrt();
                let ty = species.pair_type_of_particles(a, b);
                let (phi, _) = field.radial_of(ty, d, t);
                for k in 0..2 {
                    expected[2 * a + k] += phi * r[k];
                    expected[2 * b + k] -= phi * r[k];
                }
            }
        }
        let err = max_abs_diff(&v, &expected);
        assert!(err < 1e-12, "pair ({i}, {j}): {err}");
        // And the pair types really differ.
        let (p01, _) = field.radial_of(species.pair_type(0, 1), 1.0, t);
        let (p02, _) = field.radial_of(species.pair_type(0, 2), 1.0, t);
        assert_ne!(p01, p02);
    }
}

#[test]
fn equivariant_under_permutations_within_a_species_rotations_and_translations() {
    let mut r = rng(2);
    for (name, field, spread) in cases() {
        let layout = field.layout();
        let species = field.species().unwrap().clone();
        let (n_p, dim) = (layout.n_particles, layout.dim);
        for _ in 0..4 {
            let t = r.random_range(0.0..1.0);
            let x = random_config(&mut r, layout.len(), spread);
            let (v, _, div) = families::jacobian_of(&field, &x, t);
            let tol = 1e-10 * v.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for c in 0..dim {
                let s: f64 = v.iter().skip(c).step_by(dim).sum();
                assert!(s.abs() < tol * n_p as f64, "{name}: Σ v = {s}");
            }
            let shift: Vec<f64> = (0..dim).map(|_| r.random_range(-3.0..3.0)).collect();
            let xs: Vec<f64> = x
                .iter()
                .enumerate()
                .map(|(i, v)| v + shift[i % dim])
                .collect();
            assert!(max_abs_diff(&velocity(&field, &xs, t), &v) < tol, "{name}");
            let perm = within_species_permutation(&species, &mut r);
            let (vp, _, divp) = families::jacobian_of(&field, &permute(&x, dim, &perm), t);
            assert!(
                max_abs_diff(&vp, &permute(&v, dim, &perm)) < tol,
                "{name}: permutation within species"
            );
            assert!((divp - div).abs() < 1e-9 * div.abs().max(1.0));
            for reflect in [false, true] {
                let q = random_orthogonal(&mut r, dim, reflect);
                let (vq, _, divq) = families::jacobian_of(&field, &rotate(&x, dim, &q), t);
                assert!(
                    max_abs_diff(&vq, &rotate(&v, dim, &q)) < tol,
                    "{name}: O(D)"
                );
                assert!((divq - div).abs() < 1e-9 * div.abs().max(1.0));
            }
        }
    }
}

/// log q is invariant when two particles of one species swap places, and changes when two of
/// different species do (the field is not assumed symmetric across species). The same swap
/// with a single-species field is a symmetry, so the difference is the species'.
#[test]
fn log_q_is_invariant_within_a_species_and_not_across() {
    let n = 6;
    let species = two_species(n, 3);
    let mut field = species_field(n, 2, KernelConfig::double_well(), species, 12);
    // Make the unlike pair type clearly different: scale its weights.
    let mut p = field.params().to_vec();
    let pl = field.param_layout();
    let offset = field.block_range(1).start;
    for v in &mut p[offset + pl.w().start..offset + pl.w().end] {
        *v *= 2.5;
    }
    field.set_params(&p).unwrap();
    let single = KernelField::initialise(field.layout(), KernelConfig::double_well(), 12).unwrap();
    let flow = flow_of(field, 1.5, DensityMode::ExactDiscrete);
    let single = flow_of(single, 1.5, DensityMode::ExactDiscrete);
    let (x, log_q) = flow.sample(4, 8).unwrap();
    let len = 2 * n;
    let swap = |x: &[f64], a: usize, b: usize| {
        let mut y = x.to_vec();
        for k in 0..2 {
            y.swap(a * 2 + k, b * 2 + k);
        }
        y
    };
    let mut largest_across = 0.0f64;
    for s in 0..8 {
        let xs = &x[s * len..(s + 1) * len];
        // Within species 0 (particles 0..3) and within species 1 (3..6).
        for (a, b) in [(0, 2), (3, 5), (1, 2)] {
            let lq = flow.log_density(&swap(xs, a, b)).unwrap()[0];
            assert!(
                (lq - log_q[s]).abs() < 1e-9 * log_q[s].abs().max(1.0),
                "sample {s}, swap ({a}, {b}) within a species: {lq} vs {}",
                log_q[s]
            );
        }
        // Across species: 0 ↔ 3.
        let across = swap(xs, 0, 3);
        let lq = flow.log_density(&across).unwrap()[0];
        largest_across = largest_across.max((lq - log_q[s]).abs());
        // For identical particles the same swap is a symmetry.
        let l1 = single.log_density(xs).unwrap()[0];
        let l2 = single.log_density(&across).unwrap()[0];
        assert!((l1 - l2).abs() < 1e-9 * l1.abs().max(1.0));
    }
    assert!(
        largest_across > 1e-3,
        "swapping unlike particles left log q unchanged ({largest_across:e})"
    );
}

#[test]
fn reverse_pass_matches_finite_differences_for_x_and_every_parameter() {
    let mut r = rng(3);
    let (name, field, spread) = cases().remove(0);
    let len = field.state_len();
    let mut scratch = VjpScratch::new();
    for (t, div_bar) in [(0.0, 0.7), (0.41, 0.0), (1.0, -1.3)] {
        let x = random_config(&mut r, len, spread);
        let v_bar: Vec<f64> = (0..len).map(|_| r.random_range(-1.0..1.0)).collect();
        let objective = |f: &KernelField, x: &[f64]| {
            let mut v = vec![0.0; len];
            let div = f.velocity_into(x, t, &mut v);
            v.iter().zip(&v_bar).map(|(a, b)| a * b).sum::<f64>() + div_bar * div
        };
        let (mut x_bar, mut theta_bar) = (vec![0.0; len], vec![0.0; field.n_params()]);
        let cot = Cotangent {
            v: &v_bar,
            div: div_bar,
        };
        field
            .vjp_into(&x, t, cot, &mut x_bar, &mut theta_bar, &mut scratch)
            .unwrap();
        let h = 1e-6;
        for a in 0..len {
            let mut y = x.clone();
            y[a] += h;
            let up = objective(&field, &y);
            y[a] -= 2.0 * h;
            let fd = (up - objective(&field, &y)) / (2.0 * h);
            assert!(
                (fd - x_bar[a]).abs() < 1e-6 * (1.0 + fd.abs()),
                "{name} t={t}: x̄[{a}] {} vs {fd}",
                x_bar[a]
            );
        }
        let p0 = field.params().to_vec();
        let h = 1e-5;
        for (i, tb) in theta_bar.iter().enumerate() {
            let mut f = field.clone();
            let mut p = p0.clone();
            p[i] += h;
            f.set_params(&p).unwrap();
            let up = objective(&f, &x);
            p[i] -= 2.0 * h;
            f.set_params(&p).unwrap();
            let fd = (up - objective(&f, &x)) / (2.0 * h);
            assert!(
                (fd - tb).abs() < 1e-6 * (1.0 + fd.abs()),
                "{name} t={t}: θ̄[{i}] {tb} vs {fd}"
            );
        }
    }
}

/// The ML loss's gradient through the training tape (per pair type accumulators and time
/// unfolds) against central differences of the flow's own continuous log density.
#[test]
fn ml_gradient_through_the_tape_matches_finite_differences() {
    let field = species_field(5, 2, KernelConfig::double_well(), two_species(5, 2), 21);
    let mut flow = flow_of(field, 1.2, DensityMode::Continuous);
    flow.set_tabulated(false);
    let (mut x, _) = flow.sample(5, 4).unwrap();
    let mut r = rng(6);
    x.iter_mut()
        .for_each(|v| *v += r.random_range(-0.2..0.2) + 0.7);
    let losses = Losses::new(&flow, 20).unwrap();
    let mut g = vec![0.0; losses.n_params()];
    let loss = losses.ml_gradient_into(&x, &mut g).unwrap();
    let nll = |f: &Flow| {
        let n = x.len() / f.layout().len();
        -f.log_density(&x).unwrap().iter().sum::<f64>() / n as f64
    };
    assert!((loss - nll(&flow)).abs() < 1e-12 * loss.abs().max(1.0));
    let p0 = flow.field().params().to_vec();
    let h = 1e-5;
    let scale = g.iter().fold(1e-8f64, |m, v| m.max(v.abs()));
    for i in 0..p0.len() {
        let mut f = flow.clone();
        let mut p = p0.clone();
        p[i] += h;
        f.set_params(&p).unwrap();
        let up = nll(&f);
        p[i] -= 2.0 * h;
        f.set_params(&p).unwrap();
        let fd = (up - nll(&f)) / (2.0 * h);
        assert!(
            (fd - g[i]).abs() < 1e-6 * scale,
            "parameter {i}: {} vs {fd}",
            g[i]
        );
    }
}

#[test]
fn lipschitz_bound_dominates_the_jacobian_and_its_gradient_is_right() {
    let mut r = rng(4);
    for (name, field, _) in cases() {
        families::check_lipschitz_bound(name, &field, &mut r);
    }
    // The gradient of the bound (the largest pair type's) against central differences.
    let (_, field, _) = cases().remove(0);
    let times = [0.0, 0.3, 0.8];
    let weights = [0.4, -1.0, 0.9];
    let mut grad = vec![0.0; field.n_params()];
    let bounds = field
        .lipschitz_bounds_vjp(&times, &weights, &mut grad)
        .unwrap();
    assert_eq!(bounds, field.lipschitz_bounds(&times));
    let value = |p: &[f64]| {
        let mut f = field.clone();
        f.set_params(p).unwrap();
        f.lipschitz_bounds(&times)
            .iter()
            .zip(&weights)
            .map(|(l, w)| l * w)
            .sum::<f64>()
    };
    let p0 = field.params().to_vec();
    let scale = grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    assert!(scale > 0.0);
    let eps = 1e-6;
    for i in 0..p0.len() {
        let mut p = p0.clone();
        p[i] += eps;
        let up = value(&p);
        p[i] -= 2.0 * eps;
        let fd = (up - value(&p)) / (2.0 * eps);
        assert!(
            (fd - grad[i]).abs() < 1e-5 * scale,
            "parameter {i}: {} vs {fd}",
            grad[i]
        );
    }
}

#[test]
fn sampled_equals_evaluated_log_q_and_model_files_record_the_species() {
    for (name, field, _) in cases() {
        let flow = flow_of(field, 1.0, DensityMode::ExactDiscrete);
        let (x, log_q) = flow.sample(3, 32).unwrap();
        let err = max_abs_diff(&log_q, &flow.log_density(&x).unwrap());
        assert!(err < 1e-8, "{name}: sampled vs evaluated log q {err}");
        families::check_thread_independence(&flow);

        let dir = std::env::temp_dir().join(format!("eqflow-species-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("species.json");
        model::save(&flow, None, None, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"species\""), "{name}: species not recorded");
        let (loaded, file) = model::load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(loaded.field(), flow.field(), "{name}");
        assert_eq!(file.species.as_ref(), flow.field().species());
        let (x2, log_q2) = loaded.sample(3, 32).unwrap();
        assert_eq!(
            (x2, log_q2),
            (x, log_q),
            "{name}: the same bits after loading"
        );

        // Without its species the file describes another field: refused (parameter count).
        let mut stripped = file.clone();
        stripped.species = None;
        assert!(matches!(
            stripped.to_flow().unwrap_err(),
            Error::DimensionMismatch { .. }
        ));
        // Species that do not match n_particles: a format error naming both.
        let mut wrong = file.clone();
        wrong.species = Some(Species::new(2, vec![0, 1]).unwrap());
        let e = wrong.to_flow().unwrap_err();
        assert!(matches!(e, Error::Format { .. }), "{e}");
        assert!(e.to_string().contains("n_particles"), "{e}");
        // The registry without species refuses the multi-block parameters too.
        assert!(
            Field::from_spec(
                flow.field().layout(),
                &flow.field().spec(),
                flow.field().params().to_vec()
            )
            .is_err()
        );
    }
}

#[test]
fn single_species_files_and_fields_are_unchanged() {
    // The shipped models (written before species existed) load as single-species flows and
    // write no species key.
    for path in ["models/dw4.json", "models/lj13.json"] {
        let (flow, file) = model::load(std::path::Path::new(path)).unwrap();
        assert!(file.species.is_none());
        assert!(flow.field().species().is_none());
        assert!(
            !model::ModelFile::from_flow(&flow, None, None)
                .to_json()
                .contains("\"species\"")
        );
    }
    // One declared species is the paper's field, bit for bit.
    let layout = Layout::new(5, 3).unwrap();
    let plain = KernelField::initialise(layout, KernelConfig::lennard_jones(), 9).unwrap();
    let one = KernelField::initialise_with_species(
        layout,
        KernelConfig::lennard_jones(),
        Species::single(5),
        9,
    )
    .unwrap();
    assert_eq!(plain, one);
    assert_eq!(plain.n_params(), 620);
    // A two-species field's first block has the bits of the single-species initialisation.
    let two = KernelField::initialise_with_species(
        layout,
        KernelConfig::lennard_jones(),
        two_species(5, 2),
        9,
    )
    .unwrap();
    assert_eq!(two.n_params(), 3 * 620);
    assert_eq!(&two.params()[..620], plain.params());
    assert_eq!(two.param_blocks().len(), 15);
}

#[test]
fn bad_species_input_gives_typed_errors() {
    // Unknown species index.
    let e = Species::new(2, vec![0, 1, 2, 0]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(e.to_string().contains("particle 2"), "{e}");
    // Species count that does not match N.
    let layout = Layout::new(4, 2).unwrap();
    let e = KernelField::initialise_with_species(
        layout,
        KernelConfig::double_well(),
        two_species(5, 2),
        0,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::DimensionMismatch {
                expected: 4,
                found: 5,
                ..
            }
        ),
        "{e}"
    );
    let config = FlowConfig {
        species: Some(two_species(5, 2)),
        ..FlowConfig::default()
    };
    assert!(matches!(
        config.build(layout).unwrap_err(),
        Error::DimensionMismatch { .. }
    ));
    // Families without species refuse several, by name.
    for family in [Family::CoordKernel, Family::EnvPair] {
        let config = FlowConfig {
            family,
            species: Some(two_species(4, 2)),
            ..FlowConfig::default()
        };
        let e = config.build(layout).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        assert!(e.to_string().contains("kernel"), "{e}");
    }
    let coord = FlowConfig {
        family: Family::CoordKernel,
        ..FlowConfig::default()
    }
    .build(layout)
    .unwrap();
    let e = Field::from_spec_with_species(
        layout,
        &coord.field().spec(),
        two_species(4, 2),
        coord.field().params().to_vec(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    // A single declared species is fine for every family.
    let config = FlowConfig {
        family: Family::CoordKernel,
        species: Some(Species::single(4)),
        ..FlowConfig::default()
    };
    assert!(config.build(layout).is_ok());
    // A species field keeps its parameters on a failed set_params.
    let mut field = species_field(4, 2, KernelConfig::double_well(), two_species(4, 2), 1);
    let before = field.clone();
    let mut p = field.params().to_vec();
    p[1500] = f64::NAN;
    assert!(matches!(
        field.set_params(&p).unwrap_err(),
        Error::NonFinite { .. }
    ));
    assert!(field.set_params(&p[..620]).is_err());
    assert_eq!(field, before);
}
