//! Rough single-thread throughput check used while tuning (criterion benches are the record).
use eqflow::Flow;
use eqflow::field::{KernelConfig, KernelField};
use eqflow::geometry::Layout;
use eqflow::integrate::{DensityMode, Integrator, Method};
use eqflow::prior::Prior;
use std::time::Instant;

fn main() {
    let which: String = std::env::args().nth(1).unwrap_or_default();
    for (name, n, d, k, m) in [
        ("dw4", 4, 2, KernelConfig::double_well(), 20000),
        ("lj13", 13, 3, KernelConfig::lennard_jones(), 2000),
    ] {
        if !which.is_empty() && which != name {
            continue;
        }
        let layout = Layout::new(n, d).unwrap();
        let field = KernelField::initialise(layout, k, 0).unwrap();
        for mode in [DensityMode::Continuous, DensityMode::ExactDiscrete] {
            let integ = Integrator::new(Method::Rk4 { n_steps: 20 }, mode).unwrap();
            let flow =
                Flow::from_parts(Prior::new(layout, 1.0).unwrap(), field.clone(), integ).unwrap();
            let t = Instant::now();
            let (x, _) = flow.sample(1, m).unwrap();
            let ts = t.elapsed().as_secs_f64();
            let t = Instant::now();
            flow.log_density(&x).unwrap();
            let td = t.elapsed().as_secs_f64();
            println!(
                "{name} {mode:?}: sample {:.0}/s, density {:.0}/s",
                m as f64 / ts,
                m as f64 / td
            );
        }
    }
}
