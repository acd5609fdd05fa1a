//! One maximum-likelihood training step (loss and exact gradient of all 620 parameters through
//! RK4-20, plus the AdamW update) on DW-4 at batch 256, on one and two threads; and the
//! exact-discrete likelihood's gradient (`Losses::discrete_ml_gradient_into`) at 20 and 5 RK4
//! steps, one thread.
//! Run: `cargo bench --bench train`. Target: ≥ 20× bgflow's 0.94 s, i.e. ≤ 47 ms on one core.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use eqflow::Flow;
use eqflow::train::{AdamW, AdamWConfig, Losses};
use std::hint::black_box;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let batch = 256;
    let flow = Flow::new(4, 2, 0).unwrap();
    // Training-like configurations: flow samples (any configurations exercise the same code).
    let (x, _) = flow.sample(1, batch).unwrap();
    let mut group = c.benchmark_group("train_dw4");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let losses = Losses::new(&flow, 20).unwrap();
        let mut params = flow.field().params().to_vec();
        let mut gradient = vec![0.0; losses.n_params()];
        let mut adam = AdamW::new(AdamWConfig::default(), params.len()).unwrap();
        group.bench_function(
            BenchmarkId::new("ml_step_batch256", format!("{threads}t")),
            |b| {
                b.iter(|| {
                    pool.install(|| {
                        let loss = losses
                            .ml_gradient_into(black_box(&x), &mut gradient)
                            .unwrap();
                        adam.step(&mut params, &gradient).unwrap();
                        black_box(loss)
                    })
                })
            },
        );
    }
    // The exact-discrete likelihood: the densities and gradient of the map a model samples
    // with, at the paper's 20 steps and at the 5 of DW-4's default recipe.
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for n_steps in [20, 5] {
        let losses = Losses::new(&flow, n_steps).unwrap();
        let mut gradient = vec![0.0; losses.n_params()];
        group.bench_function(
            BenchmarkId::new(
                "ml_discrete_gradient_batch256",
                format!("{n_steps}steps_1t"),
            ),
            |b| {
                b.iter(|| {
                    single.install(|| {
                        black_box(
                            losses
                                .discrete_ml_gradient_into(black_box(&x), &mut gradient)
                                .unwrap(),
                        )
                    })
                })
            },
        );
    }
    group.finish();
}

// No plots: criterion's plotters backend needs a system font, which CI machines lack.
criterion_group! {
    name = train_benches;
    config = Criterion::default().without_plots();
    targets = bench
}
criterion_main!(train_benches);
