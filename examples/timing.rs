use eqflow::Flow;
use eqflow::field::{KernelConfig, KernelField};
use eqflow::geometry::Layout;
use eqflow::integrate::{DensityMode, Integrator, Method};
use eqflow::prior::Prior;
use std::time::Instant;

fn main() {
    for (n, d, k) in [
        (4, 2, KernelConfig::double_well()),
        (13, 3, KernelConfig::lennard_jones()),
    ] {
        let layout = Layout::new(n, d).unwrap();
        let field = KernelField::initialise(layout, k, 0).unwrap();
        for mode in [DensityMode::Continuous, DensityMode::ExactDiscrete] {
            let integ = Integrator::new(Method::Rk4 { n_steps: 20 }, mode).unwrap();
            let flow =
                Flow::from_parts(Prior::new(layout, 1.0).unwrap(), field.clone(), integ).unwrap();
            let m = if n == 4 { 20000 } else { 2000 };
            let t = Instant::now();
            let (x, _) = flow.sample(1, m).unwrap();
            let ts = t.elapsed().as_secs_f64();
            let t = Instant::now();
            flow.log_density(&x).unwrap();
            let td = t.elapsed().as_secs_f64();
            println!(
                "N={n} {mode:?}: sample {:.0}/s, density {:.0}/s",
                m as f64 / ts,
                m as f64 / td
            );
        }
    }
}
