//! Two-thread scaling of `Flow::sample`, measured as the ratio of paired, back-to-back runs on
//! rayon pools of 1 and 2 threads (wall time), repeated; prints every ratio, their median and
//! the ratio of the best times. On a shared VM the ratio of a single pair moves with the host's
//! load; the median over many pairs is the figure to quote (BENCHMARKS.md).
//!
//! Run: `cargo run --release --example thread_scaling -- SYSTEM BATCH [MODE] [ROUNDS]` with
//! SYSTEM `dw4` or `lj13`, MODE `exact` (default) or `continuous`, ROUNDS default 15. With
//! `--wake` it also times a 2-sample call on each pool after 5 ms idle (the cost of waking
//! rayon's sleeping workers).

use eqflow::Flow;
use eqflow::field::{KernelConfig, KernelField};
use eqflow::geometry::Layout;
use eqflow::integrate::{DensityMode, Integrator, Method};
use eqflow::prior::Prior;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wake = args.iter().any(|a| a == "--wake");
    let args: Vec<&String> = args.iter().filter(|a| *a != "--wake").collect();
    let system = args.first().map_or("lj13", |s| s.as_str());
    let batch: usize = args.get(1).map_or(100, |s| s.parse().expect("BATCH"));
    let mode = match args.get(2).map_or("exact", |s| s.as_str()) {
        "continuous" => DensityMode::Continuous,
        _ => DensityMode::ExactDiscrete,
    };
    let rounds: usize = args.get(3).map_or(15, |s| s.parse().expect("ROUNDS"));
    let (n, dim, kernels) = match system {
        "dw4" => (4, 2, KernelConfig::double_well()),
        _ => (13, 3, KernelConfig::lennard_jones()),
    };
    let layout = Layout::new(n, dim).unwrap();
    let field = KernelField::initialise(layout, kernels, 0).unwrap();
    let integrator = Integrator::new(Method::Rk4 { n_steps: 20 }, mode).unwrap();
    let flow = Flow::from_parts(Prior::new(layout, 1.0).unwrap(), field, integrator).unwrap();
    let pools = [1, 2].map(|t| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap()
    });
    flow.sample(1, 4).unwrap(); // builds the tables
    let mut best = [f64::INFINITY; 2];
    let mut ratios = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let mut t = [0.0; 2];
        for (p, pool) in pools.iter().enumerate() {
            let t0 = Instant::now();
            pool.install(|| flow.sample(7, batch).unwrap());
            t[p] = t0.elapsed().as_secs_f64();
            best[p] = best[p].min(t[p]);
        }
        ratios.push(t[0] / t[1]);
        print!("{:.2} ", t[0] / t[1]);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "\n{system} {mode:?} batch {batch}: median 2t/1t {:.2}, best-vs-best {:.2}, \
         1 thread at best {:.0} samples/s",
        ratios[ratios.len() / 2],
        best[0] / best[1],
        batch as f64 / best[0]
    );
    if wake {
        for (p, pool) in pools.iter().enumerate() {
            let mut times: Vec<f64> = (0..50)
                .map(|_| {
                    std::thread::sleep(Duration::from_millis(5));
                    let t0 = Instant::now();
                    pool.install(|| flow.sample(7, 2).unwrap());
                    t0.elapsed().as_secs_f64() * 1e6
                })
                .collect();
            times.sort_by(f64::total_cmp);
            println!(
                "{} thread(s): a 2-sample call after 5 ms idle takes {:.0} µs (median of 50)",
                p + 1,
                times[25]
            );
        }
    }
}
