//! Exact-discrete density evaluation against sampling, on one thread: the solver's work per
//! sample, how well a re-evaluated log q matches the sampled one, and the ratio of the best
//! times over interleaved rounds (sample, density, sample, …). Times are the worker thread's
//! CPU time: on a shared VM, wall time also counts the moments the host or a kernel thread
//! takes the vCPU, which a longer call (density) meets more often. Pin the process
//! (`taskset -c 1`) for A/B runs.
//!
//! Run: `cargo run --release --example density_ratio -- [dw4|lj13|lj55|both|MODEL.json]
//! [ROUNDS]` (default both = dw4 and lj13, 10 rounds; batches of 2,000 DW-4 / 200 LJ-13 / 40
//! LJ-55 samples of untrained flows, or
//! of a saved model such as `models/dw4.json`: 2,000 samples for up to 4 particles, else 200).

use cpu_time::ThreadTime;
use eqflow::Flow;
use eqflow::field::{KernelConfig, KernelField};
use eqflow::geometry::Layout;
use eqflow::integrate::{DensityMode, Integrator, Method};
use eqflow::prior::Prior;

fn main() -> eqflow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map_or("both", |s| s.as_str());
    let rounds: usize = args.get(1).map_or(10, |s| s.parse().expect("ROUNDS"));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    pool.install(|| {
        let mut flows = Vec::new();
        if which.ends_with(".json") {
            let (flow, _) = eqflow::io::model::load(std::path::Path::new(which))?;
            let batch = if flow.n_particles() <= 4 { 2000 } else { 200 };
            flows.push((which.to_string(), flow, batch));
        }
        for (name, n, dim, kernels, batch) in [
            ("dw4", 4, 2, KernelConfig::double_well(), 2000),
            ("lj13", 13, 3, KernelConfig::lennard_jones(), 200),
            ("lj55", 55, 3, KernelConfig::lennard_jones(), 40),
        ] {
            // lj55 (165 dimensions) only when asked for: "both" means DW-4 and LJ-13.
            if which != name && (which != "both" || name == "lj55") {
                continue;
            }
            let layout = Layout::new(n, dim)?;
            let field = KernelField::initialise(layout, kernels, 0)?;
            let integrator = Integrator::new(Method::Rk4 { n_steps: 20 }, DensityMode::ExactDiscrete)?;
            let mut flow = Flow::from_parts(Prior::new(layout, 1.0)?, field, integrator)?;
            // Damped to be certified at its steps, as `Flow::new` does: strict mode refuses
            // exact-discrete work through an uncertified grid (the same cost per sample).
            flow.certify_initial_field()?;
            flows.push((name.to_string(), flow, batch));
        }
        for (name, flow, batch) in flows {
            let layout = flow.layout();
            let mut x = vec![0.0; batch * layout.len()];
            let (mut sampled, mut evaluated) = (vec![0.0; batch], vec![0.0; batch]);
            let sample_stats = flow.sample_full_into(1, None, &mut x, &mut sampled)?;
            let density_stats = flow.log_density_full_into(&x, None, &mut evaluated)?;
            let worst = sampled
                .iter()
                .zip(&evaluated)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            let per = |count: u64| count as f64 / batch as f64;
            println!(
                "{name}: per sample, sampling {} field values / {} Jacobians; density {:.1} \
                 values / {:.1} Jacobians / {:.2} full steps; max |Δ log q| {worst:.1e}",
                per(sample_stats.n_eval),
                per(sample_stats.n_jacobian),
                per(density_stats.n_eval),
                per(density_stats.n_jacobian),
                per(density_stats.n_newton),
            );
            let (mut best_sample, mut best_density) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..rounds {
                // The closure runs on the pool's only worker, this thread.
                let t0 = ThreadTime::now();
                flow.sample_full_into(7, None, &mut x, &mut sampled)?;
                best_sample = best_sample.min(t0.elapsed().as_secs_f64());
                let t0 = ThreadTime::now();
                flow.log_density_full_into(&x, None, &mut evaluated)?;
                best_density = best_density.min(t0.elapsed().as_secs_f64());
            }
            println!(
                "{name}: best of {rounds}: sample {:.0}/s, density {:.0}/s, density/sample time {:.2}",
                batch as f64 / best_sample,
                batch as f64 / best_density,
                best_density / best_sample
            );
        }
        Ok(())
    })
}
