//! Cost of one field evaluation per family (the paper's kernel field against the coordkernel
//! and envpair fields and the non-equivariant dense baseline) on DW-4 and LJ-13, single-threaded: the velocity alone, with the exact
//! divergence, with the dense Jacobian (the exact-discrete density's need), the flow-matching
//! reverse pass and (families that have it) the maximum-likelihood reverse pass; and a batch
//! of 16 exact-discrete flow samples (RK4-20, one thread) per family, the rate behind
//! "effective samples per core-second", with the exact-discrete densities of the same 16
//! configurations. Run: `cargo bench --bench field`. Results
//! go into BENCHMARKS.md.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use eqflow::Flow;
use eqflow::field::coordkernel::{CoordKernelConfig, CoordKernelField};
use eqflow::field::dense::{DenseConfig, DenseField};
use eqflow::field::envpair::{EnvPairConfig, EnvPairField};
use eqflow::field::{Cotangent, Field, KernelConfig, KernelField, TrainableField};
use eqflow::geometry::Layout;
use eqflow::integrate::Integrator;
use eqflow::prior::Prior;
use rand::{RngExt, SeedableRng};
use std::hint::black_box;
use std::time::Duration;

fn evaluations<F: TrainableField>(c: &mut Criterion, system: &str, family: &str, field: &F) {
    let n = field.state_len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let x: Vec<f64> = (0..n).map(|_| rng.random_range(-1.5..1.5)).collect();
    let v_bar: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let t = 0.4;
    let mut v = vec![0.0; n];
    let mut jac = vec![0.0; n * n];
    let mut group = c.benchmark_group(format!("field/{system}"));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(500));
    group.bench_function(BenchmarkId::new("velocity", family), |b| {
        b.iter(|| field.velocity_only_into(black_box(&x), t, &mut v));
    });
    group.bench_function(BenchmarkId::new("velocity_divergence", family), |b| {
        b.iter(|| black_box(field.velocity_into(black_box(&x), t, &mut v)));
    });
    group.bench_function(BenchmarkId::new("jacobian", family), |b| {
        b.iter(|| black_box(field.velocity_jacobian_into(black_box(&x), t, &mut v, &mut jac)));
    });
    let point = field.time_point(t);
    let mut x_bar = vec![0.0; n];
    let mut theta_bar = vec![0.0; field.params().len()];
    let mut adjoint = F::Adjoint::default();
    let mut scratch = field.new_scratch();
    group.bench_function(BenchmarkId::new("velocity_reverse", family), |b| {
        b.iter(|| {
            field.adjoint_reset(&mut adjoint, 1);
            let cot = Cotangent {
                v: &v_bar,
                div: 0.0,
            };
            field.vjp_at(&x, &point, 0, cot, &mut x_bar, &mut adjoint, &mut scratch);
            field.adjoint_finish(std::slice::from_ref(&point), &mut adjoint, &mut theta_bar);
        });
    });
    if F::DIVERGENCE_REVERSE {
        group.bench_function(
            BenchmarkId::new("velocity_divergence_reverse", family),
            |b| {
                b.iter(|| {
                    field.adjoint_reset(&mut adjoint, 1);
                    let cot = Cotangent {
                        v: &v_bar,
                        div: 0.5,
                    };
                    field.vjp_at(&x, &point, 0, cot, &mut x_bar, &mut adjoint, &mut scratch);
                    field.adjoint_finish(
                        std::slice::from_ref(&point),
                        &mut adjoint,
                        &mut theta_bar,
                    );
                });
            },
        );
    }
    group.finish();
}

fn sampling(c: &mut Criterion, system: &str, family: &str, field: impl Into<Field>) {
    let field = field.into();
    let layout = field.layout();
    let flow = Flow::from_parts(
        Prior::new(layout, 1.0).unwrap(),
        field,
        Integrator::default(),
    )
    .unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut group = c.benchmark_group(format!("flow/{system}"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_millis(500));
    group.throughput(Throughput::Elements(16));
    group.bench_function(BenchmarkId::new("sample_exact_discrete_16", family), |b| {
        b.iter(|| pool.install(|| black_box(flow.sample(black_box(7), 16).unwrap())));
    });
    // The density of the same 16 configurations (the exact-discrete inverse): what a
    // reweighting or a Metropolis test of a host's state costs.
    let (x, _) = pool.install(|| flow.sample(7, 16).unwrap());
    group.bench_function(
        BenchmarkId::new("log_density_exact_discrete_16", family),
        |b| {
            b.iter(|| pool.install(|| black_box(flow.log_density(black_box(&x)).unwrap())));
        },
    );
    group.finish();
}

fn benches(c: &mut Criterion) {
    for (system, n, dim, kernels, coord, envpair, dense) in [
        (
            "dw4",
            4,
            2,
            KernelConfig::double_well(),
            CoordKernelConfig::double_well(),
            EnvPairConfig::double_well(),
            DenseConfig::double_well(),
        ),
        (
            "lj13",
            13,
            3,
            KernelConfig::lennard_jones(),
            CoordKernelConfig::lennard_jones(),
            EnvPairConfig::lennard_jones(),
            DenseConfig::lennard_jones(),
        ),
    ] {
        let layout = Layout::new(n, dim).unwrap();
        let kernel = KernelField::initialise(layout, kernels, 0).unwrap();
        evaluations(c, system, "kernel", &kernel);
        sampling(c, system, "kernel", kernel);
        let coord = CoordKernelField::initialise(layout, coord, 0).unwrap();
        evaluations(c, system, "coordkernel", &coord);
        sampling(c, system, "coordkernel", coord);
        let env = EnvPairField::initialise(layout, envpair, 0).unwrap();
        evaluations(c, system, "envpair", &env);
        sampling(c, system, "envpair", env);
        let dense = DenseField::initialise(layout, dense, 0).unwrap();
        evaluations(c, system, "dense", &dense);
        sampling(c, system, "dense", dense);
    }
}

// No plots: criterion's plotters backend needs a system font, which CI machines lack.
criterion_group! {
    name = field_benches;
    config = Criterion::default().without_plots();
    targets = benches
}
criterion_main!(field_benches);
