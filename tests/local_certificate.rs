//! The per-configuration certificate (src/integrate/local_certificate.rs): the kernel field's
//! bounds on a ball against its exact value and Jacobian inside the ball, a folded step that
//! must never be certified, and the flow-level certificate against the global one.

mod common;

use common::families::jacobian_of;
use common::*;
use eqflow::Flow;
use eqflow::field::{Field, KernelConfig, KernelField, VectorField};
use eqflow::geometry::{Layout, remove_center_of_mass};
use eqflow::integrate::{DensityMode, Integrator, Method, certificate_times};
use eqflow::io::model;
use eqflow::prior::Prior;
use nalgebra::{DMatrix, SymmetricEigen};
use rand::RngExt;

/// `(‖v‖, ‖J‖₂, −λ_min(sym J))` at `x`, `t`.
fn exact(field: &dyn VectorField, x: &[f64], t: f64) -> (f64, f64, f64) {
    let (v, jac, _) = jacobian_of(field, x, t);
    let n = x.len();
    let m = DMatrix::from_row_slice(n, n, &jac);
    let eig = SymmetricEigen::new((&m + m.transpose()) * 0.5).eigenvalues;
    let norm = eig.iter().fold(0.0f64, |a, e| a.max(e.abs()));
    (
        v.iter().map(|a| a * a).sum::<f64>().sqrt(),
        norm,
        -eig.min(),
    )
}

/// `n` configurations like the data: samples of the shipped model of `system` (the tests do
/// not read ../shared/data, which a clone does not have).
fn data_like(system: &str, n: usize) -> Vec<f64> {
    let (flow, _) = model::load(format!("models/{system}.json").as_ref()).unwrap();
    flow.sample(17, n).unwrap().0
}

/// A point of the ball around `centre` of radius `r`: a random direction (CoM-free, so that
/// the point stays in the field's configuration space) scaled to a random length, half of
/// them on the sphere.
fn point_in_ball(
    r: &mut rand_chacha::ChaCha8Rng,
    centre: &[f64],
    radius: f64,
    dim: usize,
) -> Vec<f64> {
    let mut u = random_config(r, centre.len(), 1.0);
    remove_center_of_mass(&mut u, dim);
    let norm = u.iter().map(|a| a * a).sum::<f64>().sqrt();
    let length = if r.random_bool(0.5) {
        radius
    } else {
        radius * r.random_range(0.0..1.0)
    };
    centre
        .iter()
        .zip(&u)
        .map(|(c, u)| c + u * length / norm)
        .collect()
}

/// Every bound on a ball dominates the field's magnitude, Jacobian norm and compression at
/// points of that ball (on its sphere and inside), and the growth bound dominates the
/// magnitude anywhere; at data-like configurations of the unpenalised DW-4 model (whose
/// global bound comes from a spike past the data's distances) and the shipped LJ-13 model, and
/// at random ones of random fields of one and of two species.
#[test]
fn ball_bounds_dominate_the_field_in_the_ball() {
    let mut r = rng(3);
    let mut fields: Vec<(String, Field, Vec<f64>)> = Vec::new();
    for (path, data) in [
        ("tests/data/dw4_v1_unpenalised.json", "dw4"),
        ("models/lj13.json", "lj13"),
    ] {
        let (flow, _) = model::load(path.as_ref()).unwrap();
        let x = data_like(data, 6);
        fields.push((path.into(), flow.field().clone(), x));
    }
    for (n, dim, kernels, seed) in [
        (4, 2, KernelConfig::double_well(), 5),
        (13, 3, KernelConfig::lennard_jones(), 6),
    ] {
        let field = random_field(n, dim, kernels, seed);
        let x = random_config(&mut r, 6 * n * dim, 1.5);
        fields.push((format!("random {n}x{dim}"), field.into(), x));
    }
    // Two species: three pair types, each with its own radial function.
    let layout = Layout::new(5, 2).unwrap();
    let species = eqflow::Species::new(2, vec![0, 1, 0, 1, 1]).unwrap();
    let base = KernelField::initialise_with_species(
        layout,
        KernelConfig::double_well(),
        species.clone(),
        4,
    )
    .unwrap();
    let p: Vec<f64> = base
        .params()
        .iter()
        .map(|v| v + r.random_range(-0.3..0.3))
        .collect();
    let field = KernelField::with_species(layout, KernelConfig::double_well(), species, p).unwrap();
    let x = random_config(&mut r, 6 * layout.len(), 2.5);
    fields.push(("two species".into(), field.into(), x));
    let times = [0.0, 0.35, 1.0];
    let mut scratch = Vec::new();
    for (name, field, x) in &fields {
        let layout = field.layout();
        let local = field.local_bounds(&times).unwrap().expect("kernel tables");
        for centre in x.chunks(layout.len()) {
            let mut centre = centre.to_vec();
            remove_center_of_mass(&mut centre, layout.dim);
            for (k, &t) in times.iter().enumerate() {
                let (a, b) = local.growth(k);
                for radius in [0.0, 0.05, 0.3, 1.0, 4.0] {
                    let bounds = local.on_ball(k, &centre, radius, &mut scratch);
                    assert!(bounds.lipschitz <= field.lipschitz_bounds(&[t])[0] * (1.0 + 1e-12));
                    for _ in 0..6 {
                        let p = point_in_ball(&mut r, &centre, radius, layout.dim);
                        let (speed, norm, compression) = exact(field, &p, t);
                        let tol = 1.0 + 1e-9;
                        assert!(
                            speed <= bounds.magnitude * tol,
                            "{name} t={t} r={radius}: ‖v‖ {speed} > {}",
                            bounds.magnitude
                        );
                        assert!(
                            norm <= bounds.lipschitz * tol,
                            "{name} t={t} r={radius}: ‖J‖ {norm} > {}",
                            bounds.lipschitz
                        );
                        assert!(
                            compression <= bounds.compression * tol + 1e-12,
                            "{name} t={t} r={radius}: −λ_min {compression} > {}",
                            bounds.compression
                        );
                        let spread = p.iter().map(|a| a * a).sum::<f64>().sqrt();
                        assert!(speed <= (a + b * spread) * tol, "{name}: growth");
                    }
                }
            }
        }
    }
}

/// For two particles the Jacobian has one pair block, so the bound on a ball of radius 0 is
/// the block's largest eigenvalue magnitude up to the grid's slope margin: a wrong
/// aggregation factor (N, 2, √2) shows here.
#[test]
fn ball_bound_of_a_single_pair_is_tight() {
    let field: Field = random_field(2, 3, KernelConfig::lennard_jones(), 9).into();
    let local = field.local_bounds(&[0.5]).unwrap().unwrap();
    let mut scratch = Vec::new();
    for s in [0.4, 0.9, 1.3, 2.2, 3.7] {
        let centre = [0.5 * s, 0.0, 0.0, -0.5 * s, 0.0, 0.0];
        let bounds = local.on_ball(0, &centre, 0.0, &mut scratch);
        let (_, norm, _) = exact(&field, &centre, 0.5);
        assert!(
            bounds.lipschitz <= 1.1 * norm && norm <= bounds.lipschitz,
            "s = {s}: bound {} against ‖J‖ {norm}",
            bounds.lipschitz
        );
    }
}

/// A 1-D pair whose radial function has a deep well: one RK4 step folds the separation axis
/// (Φ is not monotone), so configurations in the fold have three preimages. None of them may
/// be certified; configurations far from the well are.
#[test]
fn a_folded_step_is_never_certified() {
    let layout = Layout::new(2, 1).unwrap();
    let kernels = KernelConfig::double_well();
    let base = KernelField::initialise(layout, kernels.clone(), 1).unwrap();
    let pl = base.param_layout();
    let mut p = base.params().to_vec();
    for v in &mut p[pl.w()] {
        *v = 0.0;
    }
    for range in [pl.b(), pl.s()] {
        p[range].fill(0.0);
    }
    // The distance kernel nearest d = 3: a well pulling pairs there together.
    let n_time = pl.b().len();
    let k = kernels
        .mu_dist
        .iter()
        .enumerate()
        .min_by(|a, b| (a.1 - 3.0).abs().total_cmp(&(b.1 - 3.0).abs()))
        .unwrap()
        .0;
    for r in 0..n_time {
        p[pl.w().start + k * n_time + r] = -6.0;
    }
    let field = KernelField::new(layout, kernels, p).unwrap();
    // The step map by hand (the flow itself refuses to push through a fold: its step
    // Jacobian's determinant changes sign there).
    let map = |s: f64| {
        let v = |x: &[f64], t: f64| velocity(&field, x, t);
        let y = [0.5 * s, -0.5 * s];
        let at = |k: &[f64], a: f64| [y[0] + a * k[0], y[1] + a * k[1]];
        let k1 = v(&y, 0.0);
        let k2 = v(&at(&k1, 0.5), 0.5);
        let k3 = v(&at(&k2, 0.5), 0.5);
        let k4 = v(&at(&k3, 1.0), 1.0);
        let out: Vec<f64> = (0..2)
            .map(|i| y[i] + (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]) / 6.0)
            .collect();
        out[0] - out[1]
    };
    let integrator =
        Integrator::new(Method::Rk4 { n_steps: 1 }, DensityMode::ExactDiscrete).unwrap();
    let flow =
        Flow::from_parts(Prior::new(layout, 1.0).unwrap(), field.clone(), integrator).unwrap();
    let config = |s: f64| vec![0.5 * s, -0.5 * s];
    let grid: Vec<f64> = (1..=1600).map(|i| i as f64 * 0.005).collect();
    let image: Vec<f64> = grid.iter().map(|&s| map(s)).collect();
    // A local maximum followed by a local minimum of Φ: every value between them is hit three
    // times.
    let top = (1..image.len() - 1)
        .find(|&i| image[i] > image[i - 1] && image[i] >= image[i + 1])
        .expect("the step folds");
    let bottom = (top + 1..image.len() - 1)
        .find(|&i| image[i] < image[i - 1] && image[i] <= image[i + 1])
        .expect("and unfolds");
    let (high, low) = (image[top], image[bottom]);
    assert!(high > low + 0.05, "fold from {low} to {high}");
    let mut pulled_back = 0;
    for j in 1..10 {
        let y = low + (high - low) * j as f64 / 10.0;
        // A pull-back may fail in the fold (an error, not a wrong number); one that succeeds
        // must not be certified.
        for c in flow
            .certify_configurations(&config(y))
            .unwrap()
            .into_iter()
            .flatten()
        {
            assert!(!c.is_certified(), "y = {y} in the fold certified: {c:?}");
            pulled_back += 1;
        }
    }
    assert!(pulled_back >= 5, "{pulled_back} of 9 pulled back");
    // Far from the well the step is certified per configuration, though not globally.
    assert!(!flow.certificate().unwrap().is_certified());
    let far = flow.certify_configurations(&config(60.0)).unwrap();
    let far = far[0].as_ref().unwrap();
    assert!(far.is_certified(), "{far:?}");
    assert_eq!(far.locally_certified_steps, 1);
}

/// On a globally certified flow every configuration is certified with at most the global
/// bound; on the unpenalised DW-4 model (global bound 38 at 20 steps) the local bounds
/// certify most steps of held-out configurations and lower every configuration's bound, and
/// results do not depend on the thread count.
#[test]
fn configuration_certificates_refine_the_global_one() {
    let (shipped, _) = model::load("models/dw4.json".as_ref()).unwrap();
    let x = data_like("dw4", 50);
    let global = shipped.certificate().unwrap();
    assert!(global.is_certified());
    for cert in shipped.certify_configurations(&x).unwrap() {
        let cert = cert.unwrap();
        assert!(cert.is_certified());
        assert!(cert.max_step_bound <= global.max_contraction);
        assert_eq!(cert.locally_certified_steps, 0);
    }
    let (old, _) = model::load("tests/data/dw4_v1_unpenalised.json".as_ref()).unwrap();
    let global = old.certificate().unwrap();
    assert!(!global.is_certified());
    let certs: Vec<_> = old
        .certify_configurations(&x)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let locally: usize = certs.iter().map(|c| c.locally_certified_steps).sum();
    assert!(
        locally > certs.len() * global.n_steps / 3,
        "{locally} steps certified locally"
    );
    for c in &certs {
        assert!(c.max_step_bound < global.max_contraction / 10.0, "{c:?}");
        assert!(c.max_radius.is_finite() && c.max_radius > 0.0);
    }
    let one = pool(1).install(|| old.certify_configurations(&x).unwrap());
    let two = pool(2).install(|| old.certify_configurations(&x).unwrap());
    assert_eq!(one, two);
}

#[test]
fn bad_input_is_an_error_per_call_or_per_configuration() {
    let (mut flow, _) = model::load("models/dw4.json".as_ref()).unwrap();
    let len = flow.layout().len();
    assert!(flow.certify_configurations(&vec![0.0; len + 1]).is_err());
    let mut x = data_like("dw4", 2);
    x[len + 1] = f64::NAN;
    let certs = flow.certify_configurations(&x).unwrap();
    assert!(certs[0].is_ok() && certs[1].is_err());
    assert!(flow.certify_configurations(&[]).unwrap().is_empty());
    flow.set_integrator(
        Integrator::new(Method::Dopri5(Default::default()), DensityMode::Continuous).unwrap(),
    );
    assert!(flow.certify_configurations(&x[..len]).is_err());
    // The tables cover every stage time of the grid.
    assert_eq!(certificate_times(20).len(), 41);
}

/// An oversized state (N·D = 150,000, the N = 50,000 in 3-D) is refused with a
/// resource error, before any per-configuration work: checked first, it takes milliseconds;
/// checked after the local bounds' pair work, it took 583 s in release builds.
#[test]
fn an_oversized_flow_is_a_resource_error_at_once() {
    let flow = eqflow::flow_config::FlowConfig::default()
        .build(Layout::new(50_000, 3).unwrap())
        .unwrap();
    let certs = flow.certify_configurations(&vec![0.5; 150_000]).unwrap();
    assert!(
        matches!(certs[0], Err(eqflow::Error::Resource { .. })),
        "{:?}",
        certs[0]
    );
}
