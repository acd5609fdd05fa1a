//! Integration tests of the energy module: finite-difference gradients, symmetries, the LJ-13
//! reference minimum, overlaps, and the checked batch helpers.

use eqflow::energy::{energies_gradients_into, energies_into};
use eqflow::{DoubleWell, Energy, Error, LennardJones};
use nalgebra::{DMatrix, DVector};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

const SEEDS: [u64; 5] = [1, 2, 3, 42, 2024];

/// A configuration of `n` particles uniform in `[-half_width, half_width]^dim`, no two closer than
/// `min_distance` (random sequential addition). Keeping particles apart keeps finite differences
/// away from the kink of `|x_i − x_j|` at 0 and from the steep LJ core.
fn random_configuration(
    rng: &mut ChaCha8Rng,
    n: usize,
    dim: usize,
    half_width: f64,
    min_distance: f64,
) -> Vec<f64> {
    let mut x: Vec<f64> = Vec::with_capacity(n * dim);
    while x.len() < n * dim {
        let candidate: Vec<f64> = (0..dim)
            .map(|_| rng.random_range(-half_width..half_width))
            .collect();
        let far_enough = x.chunks_exact(dim).all(|other| {
            let d2: f64 = other
                .iter()
                .zip(&candidate)
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            d2.sqrt() >= min_distance
        });
        if far_enough {
            x.extend(candidate);
        }
    }
    x
}

fn gradient(e: &dyn Energy, x: &[f64]) -> (f64, Vec<f64>) {
    let mut g = vec![f64::NAN; x.len()];
    let u = e.energy_gradient_into(x, &mut g);
    (u, g)
}

/// Central differences `(U(x + h e_m) − U(x − h e_m)) / 2h`.
fn finite_difference_gradient(e: &dyn Energy, x: &[f64], h: f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|m| {
            xp[m] = x[m] + h;
            let up = e.energy(&xp);
            xp[m] = x[m] - h;
            let um = e.energy(&xp);
            xp[m] = x[m];
            (up - um) / (2.0 * h)
        })
        .collect()
}

/// Largest deviation relative to the largest gradient entry (floored at 1, so an entry near
/// zero is not judged against itself).
fn relative_error(reference: &[f64], value: &[f64]) -> f64 {
    let scale = reference.iter().fold(1.0_f64, |m, v| m.max(v.abs()));
    let err = reference
        .iter()
        .zip(value)
        .fold(0.0_f64, |m, (r, v)| m.max((r - v).abs()));
    err / scale
}

/// Energies under test, with the half-width of the sampling box and the minimum pair distance
/// used for their random configurations.
fn systems() -> Vec<(&'static str, Box<dyn Energy>, f64, f64)> {
    vec![
        ("DW-2", Box::new(DoubleWell::dw2()), 3.0, 0.1),
        ("DW-4", Box::new(DoubleWell::dw4()), 3.0, 0.1),
        (
            "DW N=5 D=3 with linear term",
            Box::new(DoubleWell::new(5, 3, 0.7, -2.5, 0.6, 2.0).unwrap()),
            2.5,
            0.1,
        ),
        (
            "DW N=4 D=1",
            Box::new(DoubleWell::new(4, 1, -0.3, 1.0, 0.2, 1.5).unwrap()),
            4.0,
            0.1,
        ),
        ("LJ-13", Box::new(LennardJones::lj13()), 1.6, 0.85),
        (
            "LJ N=7 D=2 k=2.5",
            Box::new(LennardJones::new(7, 2, 1.3, 1.2, 2.5).unwrap()),
            2.0,
            1.0,
        ),
        (
            "LJ N=6 D=4 k=0",
            Box::new(LennardJones::new(6, 4, 0.7, 0.9, 0.0).unwrap()),
            1.2,
            0.8,
        ),
    ]
}

#[test]
fn gradients_match_central_finite_differences() {
    for (name, e, half_width, min_distance) in systems() {
        for seed in SEEDS {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let x =
                random_configuration(&mut rng, e.n_particles(), e.dim(), half_width, min_distance);
            let (u, g) = gradient(e.as_ref(), &x);
            assert_eq!(
                u,
                e.energy(&x),
                "{name}: the two entry points disagree on U"
            );
            let fd = finite_difference_gradient(e.as_ref(), &x, 1e-5);
            let err = relative_error(&fd, &g);
            assert!(err <= 1e-6, "{name}, seed {seed}: relative error {err:e}");
        }
    }
}

#[test]
fn oscillator_gradient_matches_finite_differences_on_its_own_scale() {
    // Particles far apart: the LJ term is negligible, so the oscillator alone sets the gradient
    // and an error in it cannot hide behind a large pair gradient.
    let e = LennardJones::new(5, 3, 1.0, 1.0, 0.8).unwrap();
    for seed in SEEDS {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x = random_configuration(&mut rng, 5, 3, 30.0, 8.0);
        let (_, g) = gradient(&e, &x);
        let fd = finite_difference_gradient(&e, &x, 1e-4);
        let err = relative_error(&fd, &g);
        assert!(err <= 1e-6, "seed {seed}: relative error {err:e}");
        // Sanity of the premise: the gradient is oscillator-sized (k·|x_i − x̄| ~ 10).
        assert!(g.iter().any(|v| v.abs() > 1.0));
    }
}

/// A random orthogonal matrix (Haar-distributed up to the sign convention of the QR), which may
/// be a rotation or a reflection.
fn random_orthogonal(rng: &mut ChaCha8Rng, dim: usize) -> DMatrix<f64> {
    let a = DMatrix::from_fn(dim, dim, |_, _| rng.sample::<f64, _>(StandardNormal));
    a.qr().q()
}

fn transform(x: &[f64], dim: usize, q: &DMatrix<f64>, shift: &DVector<f64>) -> Vec<f64> {
    x.chunks_exact(dim)
        .flat_map(|xi| {
            (q * DVector::from_column_slice(xi) + shift)
                .as_slice()
                .to_vec()
        })
        .collect()
}

#[test]
fn energy_is_invariant_and_gradient_equivariant_under_rigid_motions() {
    for (name, e, half_width, min_distance) in systems() {
        let dim = e.dim();
        for case in 0..20u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(1000 + case);
            let x = random_configuration(&mut rng, e.n_particles(), dim, half_width, min_distance);
            let q = random_orthogonal(&mut rng, dim);
            let shift = DVector::from_fn(dim, |_, _| rng.random_range(-5.0..5.0));
            let y = transform(&x, dim, &q, &shift);
            let (ux, gx) = gradient(e.as_ref(), &x);
            let (uy, gy) = gradient(e.as_ref(), &y);
            assert!(
                (ux - uy).abs() <= 1e-12 * ux.abs().max(1.0),
                "{name}, case {case}: U = {ux} vs {uy} after rotation+translation"
            );
            let rotated = transform(&gx, dim, &q, &DVector::zeros(dim));
            let err = relative_error(&rotated, &gy);
            assert!(
                err <= 1e-11,
                "{name}, case {case}: gradient not equivariant, {err:e}"
            );
        }
    }
}

#[test]
fn energy_is_invariant_and_gradient_equivariant_under_permutations() {
    for (name, e, half_width, min_distance) in systems() {
        let (n, dim) = (e.n_particles(), e.dim());
        for case in 0..20u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(2000 + case);
            let x = random_configuration(&mut rng, n, dim, half_width, min_distance);
            let mut perm: Vec<usize> = (0..n).collect();
            perm.shuffle(&mut rng);
            let y: Vec<f64> = perm
                .iter()
                .flat_map(|&p| x[p * dim..(p + 1) * dim].iter().copied())
                .collect();
            let (ux, gx) = gradient(e.as_ref(), &x);
            let (uy, gy) = gradient(e.as_ref(), &y);
            assert!(
                (ux - uy).abs() <= 1e-12 * ux.abs().max(1.0),
                "{name}, case {case}: U = {ux} vs {uy} after permutation {perm:?}"
            );
            let permuted: Vec<f64> = perm
                .iter()
                .flat_map(|&p| gx[p * dim..(p + 1) * dim].iter().copied())
                .collect();
            let err = relative_error(&permuted, &gy);
            assert!(
                err <= 1e-12,
                "{name}, case {case}: gradient not equivariant, {err:e}"
            );
        }
    }
}

/// Centre plus the 12 vertices `(0, ±1, ±φ)` and their cyclic permutations, scaled so that the
/// centre–vertex distance is `radius`.
fn icosahedron(radius: f64) -> Vec<f64> {
    let phi = (1.0 + 5f64.sqrt()) / 2.0;
    let scale = radius / (1.0 + phi * phi).sqrt();
    let mut x = vec![0.0; 3];
    for s1 in [-1.0, 1.0] {
        for s2 in [-1.0, 1.0] {
            let v = [0.0, s1, s2 * phi];
            for shift in 0..3 {
                x.extend((0..3).map(|k| scale * v[(k + shift) % 3]));
            }
        }
    }
    x
}

struct Minimum {
    x: Vec<f64>,
    energy: f64,
    max_gradient: f64,
}

/// Dense BFGS with an Armijo backtracking line search. Stops when the largest gradient entry is
/// below `tolerance` or when no step decreases U any more (round-off floor).
fn minimise_bfgs(e: &dyn Energy, x0: &[f64], tolerance: f64) -> Minimum {
    let n = x0.len();
    let max_abs = |g: &DVector<f64>| g.amax();
    let mut x = DVector::from_column_slice(x0);
    let mut g = DVector::zeros(n);
    let mut u = e.energy_gradient_into(x.as_slice(), g.as_mut_slice());
    let mut h = DMatrix::<f64>::identity(n, n);
    let mut first = true;
    for _ in 0..10_000 {
        if max_abs(&g) < tolerance {
            break;
        }
        let mut p = -(&h * &g);
        let mut slope = p.dot(&g);
        if slope >= 0.0 {
            h = DMatrix::identity(n, n);
            p = -g.clone();
            slope = p.dot(&g);
        }
        let mut t = 1.0;
        let (x_new, u_new) = loop {
            let x_try = &x + t * &p;
            let u_try = e.energy(x_try.as_slice());
            if u_try <= u + 1e-4 * t * slope {
                break (x_try, u_try);
            }
            t *= 0.5;
            if t < 1e-30 {
                return Minimum {
                    max_gradient: max_abs(&g),
                    x: x.as_slice().to_vec(),
                    energy: u,
                };
            }
        };
        let mut g_new = DVector::zeros(n);
        e.energy_gradient_into(x_new.as_slice(), g_new.as_mut_slice());
        let s = &x_new - &x;
        let y = &g_new - &g;
        let sy = s.dot(&y);
        if sy > 1e-300 {
            if first {
                h *= sy / y.dot(&y);
                first = false;
            }
            let rho = 1.0 / sy;
            let identity = DMatrix::<f64>::identity(n, n);
            let left = &identity - rho * &s * y.transpose();
            let right = &identity - rho * &y * s.transpose();
            h = &left * &h * &right + rho * &s * s.transpose();
        }
        x = x_new;
        g = g_new;
        u = u_new;
        debug_assert!(u.is_finite());
    }
    Minimum {
        max_gradient: max_abs(&g),
        x: x.as_slice().to_vec(),
        energy: u,
    }
}

#[test]
fn lj13_icosahedron_is_the_reference_minimum() {
    // ε = 1, σ = 1 (r_m = 2^(1/6)), no oscillator: the Cambridge Cluster Database value.
    const REFERENCE: f64 = -44.326801;
    let r_m = 2f64.powf(1.0 / 6.0);
    let e = LennardJones::new(13, 3, 1.0, r_m, 0.0).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    // Start off-symmetric so the minimiser works in all 39 coordinates, not only the breathing
    // mode that an exact icosahedron would be confined to.
    let start: Vec<f64> = icosahedron(r_m)
        .into_iter()
        .map(|c| c + rng.random_range(-0.03..0.03))
        .collect();
    assert!(
        e.energy(&start) > REFERENCE + 0.01,
        "the start is not already minimal"
    );

    let min = minimise_bfgs(&e, &start, 1e-9);
    assert!(
        min.max_gradient < 1e-6,
        "not converged: max |gradient| = {:e}",
        min.max_gradient
    );
    assert!(
        (min.energy - REFERENCE).abs() <= 1e-6,
        "minimum energy {:.9}, reference {REFERENCE}",
        min.energy
    );

    // It is still an icosahedron: one particle with twelve neighbours at one distance.
    let distances_from = |c: usize| -> Vec<f64> {
        (0..13)
            .filter(|&j| j != c)
            .map(|j| {
                (0..3)
                    .map(|k| (min.x[3 * c + k] - min.x[3 * j + k]).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect()
    };
    let centre = distances_from(0);
    let (lo, hi) = centre
        .iter()
        .fold((f64::INFINITY, 0.0_f64), |(lo, hi), &d| {
            (lo.min(d), hi.max(d))
        });
    assert!(hi - lo < 1e-5, "centre distances range over [{lo}, {hi}]");
}

#[test]
fn coincident_lj_particles_are_plus_infinity_never_nan() {
    let e = LennardJones::lj13();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut x = random_configuration(&mut rng, 13, 3, 1.6, 0.85);
    let clean = x.clone();
    x.copy_within(0..3, 12 * 3);
    x.extend(clean);
    let mut u = [f64::NAN; 2];
    let mut g = vec![f64::NAN; x.len()];
    energies_gradients_into(&e, &x, &mut u, &mut g).unwrap();
    assert_eq!(u[0], f64::INFINITY);
    assert!(u[1].is_finite());
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    let mut u_only = [f64::NAN; 2];
    energies_into(&e, &x, &mut u_only).unwrap();
    assert_eq!(u_only[0], f64::INFINITY);
    assert_eq!(u_only[1], u[1]);
    // Every pair coincident, with and without the oscillator.
    for k in [0.0, 1.0] {
        let e = LennardJones::new(13, 3, 2.0, 1.0, k).unwrap();
        let x = vec![0.25; 39];
        let (u, g) = gradient(&e, &x);
        assert_eq!(u, f64::INFINITY);
        assert_eq!(e.energy(&x), f64::INFINITY);
        assert!(g.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn batch_helpers_agree_with_single_evaluations() {
    for (name, e, half_width, min_distance) in systems() {
        let per = e.n_particles() * e.dim();
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let x: Vec<f64> = (0..9)
            .flat_map(|_| {
                random_configuration(&mut rng, e.n_particles(), e.dim(), half_width, min_distance)
            })
            .collect();
        let mut u = vec![f64::NAN; 9];
        let mut u2 = vec![f64::NAN; 9];
        let mut g = vec![f64::NAN; x.len()];
        energies_into(e.as_ref(), &x, &mut u).unwrap();
        energies_gradients_into(e.as_ref(), &x, &mut u2, &mut g).unwrap();
        for s in 0..9 {
            let (us, gs) = gradient(e.as_ref(), &x[s * per..(s + 1) * per]);
            assert_eq!(u[s].to_bits(), us.to_bits(), "{name}, sample {s}");
            assert_eq!(u2[s].to_bits(), us.to_bits(), "{name}, sample {s}");
            assert_eq!(
                &g[s * per..(s + 1) * per],
                gs.as_slice(),
                "{name}, sample {s}"
            );
        }
    }
}

#[test]
fn batch_helpers_reject_wrong_sizes_without_writing() {
    let e = DoubleWell::dw4(); // 8 coordinates per sample
    let x = vec![0.5; 24];
    let sentinel = -123.0;

    let mut u = vec![sentinel; 3];
    let err = energies_into(&e, &x[..23], &mut u).unwrap_err();
    assert_eq!(
        err,
        Error::DimensionMismatch {
            what: "x (batch of configurations)".into(),
            expected: 24,
            found: 23
        }
    );
    assert!(u.iter().all(|&v| v == sentinel));

    let mut u = vec![sentinel; 2];
    assert!(matches!(
        energies_into(&e, &x, &mut u),
        Err(Error::DimensionMismatch {
            expected: 16,
            found: 24,
            ..
        })
    ));
    assert!(u.iter().all(|&v| v == sentinel));

    let mut u = vec![sentinel; 3];
    let mut g = vec![sentinel; 23];
    assert!(matches!(
        energies_gradients_into(&e, &x, &mut u, &mut g),
        Err(Error::DimensionMismatch {
            expected: 24,
            found: 23,
            ..
        })
    ));
    let mut g_long = vec![sentinel; 25];
    assert!(matches!(
        energies_gradients_into(&e, &x, &mut u, &mut g_long),
        Err(Error::DimensionMismatch {
            expected: 24,
            found: 25,
            ..
        })
    ));
    let mut u_short = vec![sentinel; 2];
    let mut g_ok = vec![sentinel; 24];
    assert!(matches!(
        energies_gradients_into(&e, &x, &mut u_short, &mut g_ok),
        Err(Error::DimensionMismatch { .. })
    ));
    assert!(
        u.iter()
            .chain(&g)
            .chain(&g_long)
            .chain(&u_short)
            .chain(&g_ok)
            .all(|&v| v == sentinel)
    );

    // An empty batch is valid and touches nothing.
    energies_into(&e, &[], &mut []).unwrap();
    energies_gradients_into(&e, &[], &mut [], &mut []).unwrap();
}

#[test]
fn batch_helpers_reject_non_finite_input_without_writing() {
    let e = LennardJones::lj13();
    let sentinel = -123.0;
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut x = vec![0.0; 3 * 39];
        for (m, v) in x.iter_mut().enumerate() {
            *v = m as f64 * 0.7; // finite, well separated
        }
        x[2 * 39 + 17] = bad;
        let mut u = vec![sentinel; 3];
        let mut g = vec![sentinel; x.len()];
        let err = energies_into(&e, &x, &mut u).unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&format!("x[{}]", 2 * 39 + 17)),
            "{err}"
        );
        let err = energies_gradients_into(&e, &x, &mut u, &mut g).unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }), "{err:?}");
        assert!(u.iter().chain(&g).all(|&v| v == sentinel));
    }
}

/// An energy that claims zero coordinates per sample: the batch helpers must refuse it rather
/// than divide a batch into zero-sized chunks.
struct Degenerate;

impl Energy for Degenerate {
    fn n_particles(&self) -> usize {
        0
    }
    fn dim(&self) -> usize {
        3
    }
    fn energy(&self, _: &[f64]) -> f64 {
        0.0
    }
    fn energy_gradient_into(&self, _: &[f64], _: &mut [f64]) -> f64 {
        0.0
    }
}

#[test]
fn batch_helpers_reject_degenerate_energies_and_accept_trait_objects() {
    let mut u = [0.0; 2];
    assert!(matches!(
        energies_into(&Degenerate, &[], &mut u),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        energies_gradients_into(&Degenerate, &[], &mut u, &mut []),
        Err(Error::InvalidArgument { .. })
    ));
    let boxed: Box<dyn Energy> = Box::new(DoubleWell::dw2());
    let mut u = [0.0; 1];
    energies_into(boxed.as_ref(), &[0.0, 0.0, 3.0, 4.0], &mut u).unwrap();
    assert!((u[0] - (-3.1)).abs() < 1e-14);
}

#[test]
fn batch_results_are_bit_identical_for_one_and_two_threads() {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let two = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let n_samples = 301;
    for (name, e, half_width, _) in systems() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        // No minimum distance: include strongly repulsive and near-overlapping samples too.
        let x: Vec<f64> = (0..n_samples * e.n_particles() * e.dim())
            .map(|_| rng.random_range(-half_width..half_width))
            .collect();
        let run = |pool: &rayon::ThreadPool| {
            let mut u = vec![0.0; n_samples];
            let mut u_only = vec![0.0; n_samples];
            let mut g = vec![0.0; x.len()];
            pool.install(|| {
                energies_gradients_into(e.as_ref(), &x, &mut u, &mut g).unwrap();
                energies_into(e.as_ref(), &x, &mut u_only).unwrap();
            });
            let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<u64>>();
            (bits(&u), bits(&u_only), bits(&g))
        };
        let (a, b) = (run(&one), run(&two));
        assert!(a == b, "{name}: results depend on the thread count");
        assert_eq!(
            a.0, a.1,
            "{name}: energies_into and energies_gradients_into disagree"
        );
    }
}

/// Binary and ternary Lennard-Jones clusters with per-species-pair ε and r_m.
fn species_systems() -> Vec<(&'static str, eqflow::energy::SpeciesLennardJones, f64, f64)> {
    use eqflow::Species;
    use eqflow::energy::SpeciesLennardJones;
    let binary = Species::new(2, vec![0, 0, 1, 0, 1, 1, 0, 0, 1]).unwrap();
    let ternary = Species::new(3, vec![2, 0, 1, 2, 0, 1]).unwrap();
    vec![
        (
            "binary LJ N=9 D=3",
            SpeciesLennardJones::new(3, binary, vec![2.0, 2.5, 1.5], vec![1.0, 1.1, 1.25], 1.0)
                .unwrap(),
            1.6,
            0.9,
        ),
        (
            "ternary LJ N=6 D=2 k=0",
            SpeciesLennardJones::new(
                2,
                ternary,
                vec![1.0, 0.7, 1.3, 2.0, 0.9, 1.1],
                vec![1.0, 1.2, 0.9, 1.1, 1.05, 1.3],
                0.0,
            )
            .unwrap(),
            2.0,
            0.9,
        ),
    ]
}

#[test]
fn species_lj_gradients_match_central_finite_differences() {
    for (name, e, half_width, min_distance) in species_systems() {
        for seed in SEEDS {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let x =
                random_configuration(&mut rng, e.n_particles(), e.dim(), half_width, min_distance);
            let (u, g) = gradient(&e, &x);
            assert_eq!(u, e.energy(&x), "{name}");
            let err = relative_error(&finite_difference_gradient(&e, &x, 1e-5), &g);
            assert!(err <= 1e-6, "{name}, seed {seed}: relative error {err:e}");
        }
    }
}

/// Each pair has its own species pair's minimum `−ε_ab` at `d = r_ab`.
#[test]
fn species_lj_pairs_have_their_own_minimum() {
    use eqflow::Species;
    use eqflow::energy::SpeciesLennardJones;
    let eps = [2.0, 2.5, 1.5];
    let r_m = [1.0, 1.1, 1.25];
    for (a, b, ty) in [(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 2)] {
        let species = Species::new(2, vec![a, b]).unwrap();
        let e = SpeciesLennardJones::new(3, species, eps.to_vec(), r_m.to_vec(), 0.0).unwrap();
        let x = [0.0, 0.0, 0.0, r_m[ty], 0.0, 0.0];
        assert!((e.energy(&x) + eps[ty]).abs() < 1e-12, "({a}, {b})");
        let (_, g) = gradient(&e, &x);
        assert!(g.iter().all(|g| g.abs() < 1e-12), "({a}, {b}): {g:?}");
    }
}

/// With every ε and r_m equal, the species energy is the plain Lennard-Jones energy (to
/// rounding: ε multiplies each pair there, the sum here), gradient included; permuting
/// particles within a species leaves it invariant, and across species does not.
#[test]
fn species_lj_with_equal_pairs_is_plain_lj_and_only_within_species_permutations_are_symmetries() {
    use eqflow::Species;
    use eqflow::energy::SpeciesLennardJones;
    let species = Species::new(2, vec![0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1]).unwrap();
    let equal =
        SpeciesLennardJones::new(3, species.clone(), vec![2.0; 3], vec![1.0; 3], 1.0).unwrap();
    let plain = LennardJones::lj13();
    let unequal = SpeciesLennardJones::new(
        3,
        species.clone(),
        vec![2.0, 2.5, 1.5],
        vec![1.0, 1.1, 1.25],
        1.0,
    )
    .unwrap();
    for seed in SEEDS {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x = random_configuration(&mut rng, 13, 3, 1.6, 0.85);
        let (u1, g1) = gradient(&equal, &x);
        let (u2, g2) = gradient(&plain, &x);
        assert!((u1 - u2).abs() < 1e-12 * u2.abs().max(1.0), "{u1} vs {u2}");
        assert!(relative_error(&g2, &g1) < 1e-12);
        // Swap particles 0 and 2 (species 0) and 1 and 3 (species 1): invariant; 0 and 1: not.
        let swap = |x: &[f64], a: usize, b: usize| {
            let mut y = x.to_vec();
            for k in 0..3 {
                y.swap(3 * a + k, 3 * b + k);
            }
            y
        };
        let u = unequal.energy(&x);
        for (a, b) in [(0, 2), (1, 3), (5, 11)] {
            let us = unequal.energy(&swap(&x, a, b));
            assert!((us - u).abs() < 1e-12 * u.abs().max(1.0), "({a}, {b})");
        }
        let across = unequal.energy(&swap(&x, 0, 1));
        assert!(
            (across - u).abs() > 1e-6,
            "swap across species: {across} vs {u}"
        );
    }
}

#[test]
fn species_lj_refuses_bad_parameters_with_typed_errors() {
    use eqflow::Species;
    use eqflow::energy::SpeciesLennardJones;
    let species = Species::new(2, vec![0, 1, 1]).unwrap();
    let new = |eps: Vec<f64>, r_m: Vec<f64>, k: f64| {
        SpeciesLennardJones::new(3, species.clone(), eps, r_m, k)
    };
    let e = new(vec![2.0, f64::NAN, 1.0], vec![1.0; 3], 1.0).unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
    assert!(e.to_string().contains("(0, 1)"), "{e}");
    let e = new(vec![2.0; 2], vec![1.0; 3], 1.0).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DimensionMismatch {
                expected: 3,
                found: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        new(vec![2.0; 3], vec![1.0; 4], 1.0).unwrap_err(),
        Error::DimensionMismatch { .. }
    ));
    let e = new(vec![2.0, 2.0, -1.0], vec![1.0; 3], 1.0).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(e.to_string().contains("(1, 1)"), "{e}");
    assert!(matches!(
        new(vec![2.0; 3], vec![1.0, 0.0, 1.0], 1.0).unwrap_err(),
        Error::InvalidArgument { .. }
    ));
    assert!(matches!(
        new(vec![2.0; 3], vec![1.0; 3], -1.0).unwrap_err(),
        Error::InvalidArgument { .. }
    ));
    assert!(matches!(
        new(vec![2.0; 3], vec![1.0; 3], f64::INFINITY).unwrap_err(),
        Error::NonFinite { .. }
    ));
    // Coincident particles: +∞, never NaN, and a finite gradient.
    let lj = new(vec![2.0, 2.5, 1.5], vec![1.0, 1.1, 1.25], 1.0).unwrap();
    let x = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
    let (u, g) = gradient(&lj, &x);
    assert_eq!(u, f64::INFINITY);
    assert!(g.iter().all(|g| g.is_finite()));
}
