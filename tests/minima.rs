//! The minimiser, the saddle filter and the fingerprints of `eqflow::minima` on cases with known
//! answers.

use eqflow::minima::{
    DistinctMinima, Fingerprint, MinimizerConfig, SaddleFilter, curvature, minimize, n_zero_modes,
};
use eqflow::{DoubleWell, Energy, LennardJones};

fn pair_distance(x: &[f64], dim: usize, i: usize, j: usize) -> f64 {
    (0..dim)
        .map(|k| (x[i * dim + k] - x[j * dim + k]).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn lj2_minimises_to_the_pair_minimum_distance() {
    // ε = 1.5, r_m = 1.2, no oscillator: the only minimum is d = r_m with U = −ε.
    let lj = LennardJones::new(2, 3, 1.5, 1.2, 0.0).unwrap();
    let x0 = [0.0, 0.0, 0.0, 1.6, 0.3, -0.2];
    let m = minimize(&lj, &x0, &MinimizerConfig::default()).unwrap();
    assert!(m.converged, "{m:?}");
    assert!(m.gradient_norm < 1e-6);
    assert!((pair_distance(&m.x, 3, 0, 1) - 1.2).abs() < 1e-7, "{m:?}");
    assert!((m.energy + 1.5).abs() < 1e-12, "{}", m.energy);
}

#[test]
fn dw2_minimises_to_the_inner_well_and_its_curvature_is_known() {
    // U(d) = −4(d − 4)² + 0.9(d − 4)⁴: minima at d = 4 ± √(4/1.8), depth −4²/(4·0.9).
    let dw = DoubleWell::dw2();
    let m = minimize(&dw, &[0.0, 0.0, 3.0, 0.1], &MinimizerConfig::default()).unwrap();
    assert!(m.converged);
    let d_min = 4.0 - (4.0_f64 / 1.8).sqrt();
    assert!((pair_distance(&m.x, 2, 0, 1) - d_min).abs() < 1e-7);
    assert!((m.energy + 16.0 / 3.6).abs() < 1e-12);
    // The one internal mode (the pair distance) has Hessian eigenvalue 2·U''(d) = 2·16.
    let c = curvature(&dw, &m.x, &SaddleFilter::default()).unwrap();
    assert!(c.is_minimum(), "{c:?}");
    assert!((c.lowest - 32.0).abs() < 1e-4, "{c:?}");
    assert!(c.largest_zero_mode < 1e-4, "{c:?}");
    assert_eq!(c.eigenvalues.len(), 4);
}

#[test]
fn the_dw2_barrier_top_is_flagged_as_a_saddle() {
    // d = d0 is stationary with U''(d0) = 2b = −8: one negative mode, eigenvalue −16.
    let dw = DoubleWell::dw2();
    let x = [-2.0, 0.0, 2.0, 0.0];
    let mut g = [0.0; 4];
    dw.energy_gradient_into(&x, &mut g);
    assert!(g.iter().all(|v| v.abs() < 1e-12));
    let c = curvature(&dw, &x, &SaddleFilter::default()).unwrap();
    assert_eq!(c.n_negative, 1, "{c:?}");
    assert!((c.lowest + 16.0).abs() < 1e-4, "{c:?}");
    assert!(!c.is_minimum());
}

#[test]
fn a_linear_lj3_chain_is_a_saddle_and_the_triangle_a_minimum() {
    let lj = LennardJones::new(3, 3, 1.0, 1.0, 0.0).unwrap();
    // Collinear start: the gradient stays on the line, so the minimiser ends at the linear
    // stationary point, whose bending modes are negative.
    let line = [-1.1, 0.0, 0.0, 0.0, 0.0, 0.0, 1.05, 0.0, 0.0];
    let m = minimize(&lj, &line, &MinimizerConfig::default()).unwrap();
    assert!(m.converged);
    assert!(
        m.x.chunks(3)
            .all(|p| p[1].abs() < 1e-12 && p[2].abs() < 1e-12)
    );
    let c = curvature(&lj, &m.x, &SaddleFilter::default()).unwrap();
    assert!(c.n_negative >= 1, "{c:?}");
    // Bent start: the equilateral triangle of side r_m, U = −3ε.
    let bent = [-1.0, 0.0, 0.0, 0.0, 0.3, 0.0, 1.0, 0.0, 0.1];
    let m = minimize(&lj, &bent, &MinimizerConfig::default()).unwrap();
    assert!(m.converged);
    assert!((m.energy + 3.0).abs() < 1e-10, "{}", m.energy);
    let c = curvature(&lj, &m.x, &SaddleFilter::default()).unwrap();
    assert!(c.is_minimum(), "{c:?}");
    assert!(c.lowest > 0.1, "{c:?}");
}

/// The 13-atom Mackay icosahedron (centre and 12 vertices) with nearest-neighbour distance
/// about `edge`.
fn icosahedron(edge: f64) -> Vec<f64> {
    let phi = (1.0 + 5.0_f64.sqrt()) / 2.0;
    let mut x = vec![0.0, 0.0, 0.0];
    for &(a, b) in &[(1.0, phi), (1.0, -phi), (-1.0, phi), (-1.0, -phi)] {
        x.extend([0.0, a, b]);
        x.extend([a, b, 0.0]);
        x.extend([b, 0.0, a]);
    }
    // The vertices above have edge 2 and circumradius √(1 + φ²) ≈ 1.90.
    x.iter().map(|v| v * edge / 2.0).collect()
}

#[test]
fn lj13_icosahedron_reaches_the_published_global_minimum() {
    // Standard LJ-13 global minimum −44.326801 ε (Wales & Doye 1997); our pair term is 2× it
    // with ε = 2 and r_m = 1, so without the oscillator U = −88.653602.
    let lj = LennardJones::new(13, 3, 2.0, 1.0, 0.0).unwrap();
    let m = minimize(&lj, &icosahedron(1.0), &MinimizerConfig::default()).unwrap();
    assert!(m.converged);
    assert!((m.energy + 88.653602).abs() < 1e-5, "{}", m.energy);
    let c = curvature(&lj, &m.x, &SaddleFilter::default()).unwrap();
    assert!(c.is_minimum(), "{c:?}");
    assert_eq!(n_zero_modes(13, 3), 6);
    // With the benchmark's oscillator the icosahedron is still a minimum, somewhat compressed.
    let lj13 = LennardJones::lj13();
    let m = minimize(&lj13, &icosahedron(1.0), &MinimizerConfig::default()).unwrap();
    assert!(m.converged);
    assert!(m.energy < -80.0 && m.energy > -88.66, "{}", m.energy);
    assert!(
        curvature(&lj13, &m.x, &SaddleFilter::default())
            .unwrap()
            .is_minimum()
    );
}

#[test]
fn fingerprints_match_permuted_rotated_reflected_copies_only() {
    let x = icosahedron(1.0);
    // A random-ish distortion so that the pair distances are all different.
    let x: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, v)| v + 0.05 * ((i * 7 % 11) as f64 / 11.0 - 0.5))
        .collect();
    let (c, s) = (0.3_f64.cos(), 0.3_f64.sin());
    let mut y = Vec::new();
    // Reverse the particle order, rotate about z, reflect y, translate.
    for p in x.chunks(3).rev() {
        y.extend([
            c * p[0] - s * p[1] + 5.0,
            -(s * p[0] + c * p[1]) - 2.0,
            p[2] + 1.0,
        ]);
    }
    let fx = Fingerprint::of(&x, 3).unwrap();
    let fy = Fingerprint::of(&y, 3).unwrap();
    assert_eq!(fx.distances().len(), 78);
    assert!(fx.distance(&fy) < 1e-12);
    assert!(fx.matches(&fy, 1e-9));
    let mut z = x.clone();
    z[3] += 0.01;
    let fz = Fingerprint::of(&z, 3).unwrap();
    assert!(fx.distance(&fz) > 1e-3);
    assert!(!fx.matches(&fz, 1e-3));
    assert!(Fingerprint::of(&x, 4).is_err());

    let mut set = DistinctMinima::new(3, 1e-3).unwrap();
    assert_eq!(set.insert(&x, -50.0).unwrap(), 0);
    assert_eq!(set.insert(&z, -65.0).unwrap(), 1);
    assert_eq!(set.insert(&y, -50.0).unwrap(), 0);
    assert_eq!(set.len(), 2);
    assert_eq!(set.members()[0].n_hits, 2);
    assert_eq!(set.find(&y).unwrap(), Some(0));
    assert_eq!(set.count_in(-70.0, -60.0), 1);
    assert_eq!(set.count_in(f64::NEG_INFINITY, -80.0), 0);
    assert!(DistinctMinima::new(3, 0.0).is_err());
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let lj = LennardJones::lj13();
    let config = MinimizerConfig::default();
    assert!(minimize(&lj, &[0.0; 38], &config).is_err());
    // All particles on one spot: U = +∞, nothing to follow.
    assert!(minimize(&lj, &[0.0; 39], &config).is_err());
    let mut x = icosahedron(1.0);
    x[4] = f64::NAN;
    assert!(minimize(&lj, &x, &config).is_err());
    let bad = MinimizerConfig {
        gradient_tolerance: 0.0,
        ..config
    };
    assert!(minimize(&lj, &icosahedron(1.0), &bad).is_err());
    let bad = SaddleFilter {
        step: -1.0,
        ..SaddleFilter::default()
    };
    assert!(curvature(&lj, &icosahedron(1.0), &bad).is_err());
}
