//! Throughput of sampling and density evaluation (RK4-20, exact log q), per core and on two
//! threads, measured in interleaved rounds (see [`Rounds`]). Run: `cargo bench --bench flow`.
//! Results and the machine go into BENCHMARKS.md.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use eqflow::Flow;
use eqflow::field::{KernelConfig, KernelField};
use eqflow::geometry::Layout;
use eqflow::integrate::{DensityMode, Integrator, Method};
use eqflow::prior::Prior;
use std::cell::RefCell;
use std::hint::black_box;
use std::time::{Duration, Instant};

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

/// The four measurements of one system and mode, taken in interleaved rounds: sample and
/// log-density on 1 thread, then on 2. Each criterion benchmark reports its own quarter of its
/// rounds; the ratios the targets are about (density / sampling time, 2 threads / 1) are
/// printed from the summed quarters of *all* rounds of the four benchmarks, which compare work
/// done within the same fraction of a second. On this VM the throughput of a single-threaded
/// run moves by up to 40% over seconds (host neighbours); measured back to back, those drifts
/// showed up as 2-thread scaling anywhere from 1.2× to 2.3×.
struct Rounds {
    flow: Flow,
    x: Vec<f64>,
    batch: usize,
    pools: [rayon::ThreadPool; 2],
    /// Summed times of the four measurements over every call, and the number of rounds.
    total: ([Duration; 4], u64),
}

/// Lets the workers of the pool that just ran finish spinning and fall asleep (rayon workers
/// spin briefly before sleeping), so that they do not compete, on this 2-core machine, with the
/// measurement that follows. Outside the timings.
fn settle() {
    std::thread::sleep(Duration::from_millis(5));
}

impl Rounds {
    /// Runs `iters` rounds; returns the summed time of each measurement, in the order
    /// (sample 1t, density 1t, sample 2t, density 2t).
    fn run(&mut self, iters: u64) -> [Duration; 4] {
        let mut total = [Duration::ZERO; 4];
        for _ in 0..iters {
            for (p, pool) in self.pools.iter().enumerate() {
                settle();
                let t0 = Instant::now();
                pool.install(|| black_box(self.flow.sample(black_box(7), self.batch).unwrap()));
                let t1 = Instant::now();
                settle();
                let t2 = Instant::now();
                pool.install(|| black_box(self.flow.log_density(black_box(&self.x)).unwrap()));
                let t3 = Instant::now();
                total[2 * p] += t1 - t0;
                total[2 * p + 1] += t3 - t2;
            }
        }
        for (sum, t) in self.total.0.iter_mut().zip(total) {
            *sum += t;
        }
        self.total.1 += iters;
        total
    }
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
        let flow = flow(n, dim, kernels.clone(), mode);
        let (x, _) = flow.sample(1, batch).unwrap();
        let rounds = RefCell::new(Rounds {
            flow,
            x,
            batch,
            pools: [pool(1), pool(2)],
            total: ([Duration::ZERO; 4], 0),
        });
        let names = [
            ("sample", "1t"),
            ("log_density", "1t"),
            ("sample", "2t"),
            ("log_density", "2t"),
        ];
        for (which, (op, threads)) in names.into_iter().enumerate() {
            group.bench_function(
                BenchmarkId::new(format!("{op}/{mode_name}"), threads),
                |b| {
                    b.iter_custom(|iters| rounds.borrow_mut().run(iters)[which]);
                },
            );
        }
        let ([s1, d1, s2, d2], n) = rounds.borrow().total;
        let rate = |t: Duration| (batch as u64 * n) as f64 / t.as_secs_f64();
        println!(
            "{name}/{mode_name}: paired over {n} rounds: sample {:.0}/s, density {:.0}/s on 1 \
             thread; density/sample time {:.2} (1t) {:.2} (2t); 2t/1t {:.2} (sample) {:.2} \
             (density)",
            rate(s1),
            rate(d1),
            d1.as_secs_f64() / s1.as_secs_f64(),
            d2.as_secs_f64() / s2.as_secs_f64(),
            s1.as_secs_f64() / s2.as_secs_f64(),
            d1.as_secs_f64() / d2.as_secs_f64(),
        );
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    // Batches of 70–500 ms on one thread: waking rayon's sleeping workers costs 70–160 µs per
    // call on this VM, 5% of a 1,000-sample DW-4 batch on two threads (see BENCHMARKS.md).
    bench_system(c, "dw4", 4, 2, KernelConfig::double_well(), 10_000);
    bench_system(c, "lj13", 13, 3, KernelConfig::lennard_jones(), 1_000);
}

// No plots: criterion's plotters backend needs a system font, which CI machines lack.
criterion_group! {
    name = flow_benches;
    config = Criterion::default().without_plots();
    targets = benches
}
criterion_main!(flow_benches);
