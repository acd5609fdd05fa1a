//! The step certificate of model files: is every RK4 step a bijection, and from how many steps
//! would it be; with what each costs.
//!
//! `cargo run --release --example certificate -- models/dw4.json models/lj13.json`
//!
//! An argument `untrained:N` stands for the untrained default flow of N particles in 3-D
//! (`eqf_flow_new`'s settings, seed 0): how the step-count search scales with N.

use std::time::Instant;

use eqflow::flow_config::FlowConfig;
use eqflow::geometry::Layout;
use eqflow::io::model;

fn main() -> eqflow::Result<()> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    let paths = if paths.is_empty() {
        vec![
            "models/dw4.json".to_string(),
            "models/lj13.json".to_string(),
        ]
    } else {
        paths
    };
    for path in paths {
        let flow = match path.strip_prefix("untrained:") {
            Some(n) => {
                let n = n.parse().map_err(|_| eqflow::Error::InvalidArgument {
                    what: format!("untrained:N needs a particle count, got {n}"),
                })?;
                FlowConfig::default().build(Layout::new(n, 3)?)?
            }
            None => model::load(path.as_ref())?.0,
        };
        let start = Instant::now();
        let Some(cert) = flow.certificate() else {
            println!("{path}: adaptive method, no fixed map to certify");
            continue;
        };
        let t_cert = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let needed = flow.certified_step_count();
        let t_needed = start.elapsed().as_secs_f64();
        println!(
            "{path}: {} steps, certified: {}, worst step bound {:.3} (t = {:.3}), \
             Lipschitz bound up to {:.3}, compression bound up to {:.3}; certified from {} steps",
            cert.n_steps,
            cert.is_certified(),
            cert.max_contraction,
            cert.worst_step_start,
            cert.max_lipschitz,
            cert.max_compression,
            needed.map_or("none".to_string(), |n| n.to_string())
        );
        println!(
            "  cost: certificate {:.1} ms ({} times, both bounds at each), step-count search {:.1} ms",
            1e3 * t_cert,
            2 * cert.n_steps + 1,
            1e3 * t_needed
        );
    }
    Ok(())
}
