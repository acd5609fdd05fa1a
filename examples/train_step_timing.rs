//! Wall time of one ML training step (loss and exact gradient through RK4-20) on DW-4 at batch
//! 256, on one and two threads, and optionally the whole paper DW-4 protocol (50 epochs, 1,000
//! samples, batch 64).
//!
//! `cargo run --release --example train_step_timing [-- --protocol]`
//!
//! The reference point is bgflow's 0.94 s for the same step (PyTorch, one core).

use eqflow::train::{Losses, TrainConfig, Trainer};
use eqflow::{DoubleWell, Energy, Flow};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// DW-4 configurations from a thinned random-walk Metropolis chain at kT = 1.
fn dw4_samples(n: usize, seed: u64) -> Vec<f64> {
    let energy = DoubleWell::dw4();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = vec![-2.0, -2.0, 2.0, -2.0, 2.0, 2.0, -2.0, 2.0];
    let mut u = energy.energy(&x);
    let mut out = Vec::with_capacity(n * 8);
    let mut step = 0u64;
    while out.len() < n * 8 {
        let i = rng.random_range(0..4);
        let old = [x[2 * i], x[2 * i + 1]];
        x[2 * i] += rng.random_range(-0.6..0.6);
        x[2 * i + 1] += rng.random_range(-0.6..0.6);
        let u_new = energy.energy(&x);
        if u_new <= u || rng.random_range(0.0..1.0) < (u - u_new).exp() {
            u = u_new;
        } else {
            x[2 * i] = old[0];
            x[2 * i + 1] = old[1];
        }
        step += 1;
        if step > 5_000 && step.is_multiple_of(50) {
            out.extend_from_slice(&x);
        }
    }
    out
}

/// CPU time this thread has run, in seconds (Linux `/proc/thread-self/schedstat`): unlike wall
/// time it does not count the time other processes on a busy machine take from us.
fn thread_cpu_time() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns * 1e-9)
}

/// Sorted wall times of `repeats` ML steps, and the mean CPU time per step of the calling pool
/// thread (meaningful for one thread).
fn time_ml_step(flow: &Flow, x: &[f64], threads: usize, repeats: usize) -> (Vec<f64>, Option<f64>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let losses = Losses::new(flow, 20).expect("losses");
    let mut g = vec![0.0; losses.n_params()];
    pool.install(|| {
        losses.ml_gradient_into(x, &mut g).expect("warm-up");
        let cpu_start = thread_cpu_time();
        let mut times: Vec<f64> = (0..repeats)
            .map(|_| {
                let start = Instant::now();
                losses.ml_gradient_into(x, &mut g).expect("ML step");
                start.elapsed().as_secs_f64()
            })
            .collect();
        let cpu = cpu_start
            .zip(thread_cpu_time())
            .map(|(a, b)| (b - a) / repeats as f64);
        times.sort_by(f64::total_cmp);
        (times, cpu)
    })
}

fn main() -> eqflow::Result<()> {
    let batch = 256;
    let flow = Flow::new(4, 2, 0)?;
    let x = dw4_samples(batch, 1);
    for threads in [1, 2] {
        let (t, cpu) = time_ml_step(&flow, &x, threads, 20);
        println!(
            "ML step, DW-4, batch {batch}, RK4-20, {threads} thread(s): wall min {:.2} ms, median {:.2} ms",
            1e3 * t[0],
            1e3 * t[t.len() / 2],
        );
        if let (1, Some(cpu)) = (threads, cpu) {
            println!(
                "    CPU time of the one worker thread: {:.2} ms per step ({:.0}× bgflow's 940 ms)",
                1e3 * cpu,
                0.94 / cpu
            );
        }
    }
    let losses = Losses::new(&flow, 20)?;
    let start = Instant::now();
    let nll = losses.nll(&x)?;
    println!(
        "forward only (NLL {nll:.3}) at batch {batch}: {:.2} ms",
        1e3 * start.elapsed().as_secs_f64()
    );

    if std::env::args().any(|a| a == "--protocol") {
        let train = dw4_samples(1000, 2);
        let validation = dw4_samples(1000, 3);
        let mut flow = Flow::new(4, 2, 0)?;
        let summary = Trainer::new(TrainConfig::default(), &train)
            .with_validation(&validation)
            .run(&mut flow, |r| {
                println!(
                    "epoch {:2}: train NLL {:.4}, validation NLL {:.4}, {:.1} s",
                    r.epoch,
                    r.train_nll,
                    r.validation_nll.unwrap_or(f64::NAN),
                    r.elapsed.as_secs_f64()
                );
                true
            })?;
        println!(
            "paper DW-4 protocol (50 epochs, 1000 samples, batch 64, {} threads): {:.2} s, \
             best epoch {} (validation NLL {:.4}, initially {:.4})",
            rayon::current_num_threads(),
            summary.wall_time.as_secs_f64(),
            summary.best_epoch,
            summary.epochs[summary.best_epoch]
                .validation_nll
                .unwrap_or(f64::NAN),
            summary.initial_validation_nll.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
