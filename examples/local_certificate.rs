//! Per-configuration certificates of a model on a data file: how many configurations are
//! proved to have exactly one preimage under the RK4 map, beside the global certificate, and
//! what it costs against a density evaluation.
//!
//! `cargo run --release --example local_certificate -- MODEL DATA.npy [N_CONFIGURATIONS]`

use std::time::Instant;

use eqflow::io::{model, npy};

fn main() -> eqflow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(model_path), Some(data_path)) = (args.first(), args.get(1)) else {
        eprintln!("usage: local_certificate MODEL DATA.npy [N_CONFIGURATIONS]");
        std::process::exit(2);
    };
    let (flow, _) = model::load(model_path.as_ref())?;
    let len = flow.layout().len();
    let mut x = npy::read_configurations(data_path, flow.layout())?;
    if let Some(n) = args.get(2).and_then(|n| n.parse::<usize>().ok()) {
        x.truncate(n * len);
    }
    let n = x.len() / len;
    if let Some(global) = flow.certificate() {
        println!(
            "{model_path}: global certificate at {} steps: {} (worst step bound {:.3})",
            global.n_steps,
            global.is_certified(),
            global.max_contraction
        );
    }
    let start = Instant::now();
    let certs = flow.certify_configurations(&x)?;
    let t_cert = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let densities = flow.log_density_each(&x)?;
    let t_density = start.elapsed().as_secs_f64();
    let ok: Vec<_> = certs.iter().filter_map(|c| c.as_ref().ok()).collect();
    let certified = ok.iter().filter(|c| c.is_certified()).count();
    let failed = certs.len() - ok.len();
    let mut bounds: Vec<f64> = ok.iter().map(|c| c.max_step_bound).collect();
    bounds.sort_by(f64::total_cmp);
    let mut radii: Vec<f64> = ok.iter().map(|c| c.max_radius).collect();
    radii.sort_by(f64::total_cmp);
    let median = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
    let locally = ok.iter().map(|c| c.locally_certified_steps).sum::<usize>();
    println!(
        "{n} configurations of {data_path}: {certified} certified to have one preimage, {} not, \
         {failed} not pulled back ({} density failures)",
        ok.len() - certified,
        densities.iter().filter(|d| d.is_err()).count()
    );
    println!(
        "  step bound: median {:.3}, worst {:.3}; ball radius: median {:.3}, largest {:.3}; \
         {locally} steps certified locally only",
        median(&bounds),
        bounds.last().copied().unwrap_or(f64::NAN),
        median(&radii),
        radii.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "  cost: {:.3} ms per configuration (density alone {:.3} ms), {} threads",
        1e3 * t_cert / n.max(1) as f64,
        1e3 * t_density / n.max(1) as f64,
        rayon::current_num_threads()
    );
    Ok(())
}
