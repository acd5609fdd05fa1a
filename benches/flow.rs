//! Throughput of sampling and density evaluation (RK4-20, exact log q), per core and on two
//! threads. Run: `cargo bench --bench flow`. Results and the machine go into BENCHMARKS.md.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use eqflow::Flow;
use eqflow::field::{KernelConfig, KernelField};
use eqflow::geometry::Layout;
use eqflow::integrate::{DensityMode, Integrator, Method};
use eqflow::prior::Prior;
use std::hint::black_box;
use std::time::Duration;

fn flow(n: usize, dim: usize, kernels: KernelConfig, mode: DensityMode) -> Flow {
    let layout = Layout::new(n, dim).unwrap();
    let field = KernelField::initialise(layout, kernels, 0).unwrap();
    let integ = Integrator::new(Method::Rk4 { n_steps: 20 }, mode).unwrap();
    Flow::from_parts(Prior::new(layout, 1.0).unwrap(), field, integ).unwrap()
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

fn bench_system(
    c: &mut Criterion,
    name: &str,
    n: usize,
    dim: usize,
    kernels: KernelConfig,
    batch: usize,
) {
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(4));
    group.warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(batch as u64));
    for (mode_name, mode) in [
        ("continuous", DensityMode::Continuous),
        ("exact_discrete", DensityMode::ExactDiscrete),
    ] {
        let f = flow(n, dim, kernels.clone(), mode);
        let (x, _) = f.sample(1, batch).unwrap();
        for threads in [1, 2] {
            let p = pool(threads);
            group.bench_function(
                BenchmarkId::new(format!("sample/{mode_name}"), format!("{threads}t")),
                |b| b.iter(|| p.install(|| black_box(f.sample(black_box(7), batch).unwrap()))),
            );
            group.bench_function(
                BenchmarkId::new(format!("log_density/{mode_name}"), format!("{threads}t")),
                |b| b.iter(|| p.install(|| black_box(f.log_density(black_box(&x)).unwrap()))),
            );
        }
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_system(c, "dw4", 4, 2, KernelConfig::double_well(), 1000);
    bench_system(c, "lj13", 13, 3, KernelConfig::lennard_jones(), 100);
}

criterion_group!(flow_benches, benches);
criterion_main!(flow_benches);
