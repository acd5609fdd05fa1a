//! The main job on a built-in default: an untrained DW-4 flow proposes configurations with
//! exact log-densities, and importance weights against the DW-4 energy say how good it is.
//!
//! `cargo run --release --example quickstart`

use eqflow::boltzmann::{kish_ess, log_weights_into};
use eqflow::energy::energies_into;
use eqflow::{DoubleWell, Flow};
use std::time::Instant;

fn main() -> eqflow::Result<()> {
    let n = 10_000;
    let flow = Flow::new(4, 2, 0)?;
    let energy = DoubleWell::dw4();
    println!(
        "DW-4 flow: {} particles in {} dimensions, {} parameters, {:?}",
        flow.n_particles(),
        flow.dim(),
        flow.field().params().len(),
        flow.integrator()
    );

    let start = Instant::now();
    let (x, log_q) = flow.sample(2026, n)?;
    let t_sample = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let log_q_again = flow.log_density(&x)?;
    let t_density = start.elapsed().as_secs_f64();
    let worst = log_q
        .iter()
        .zip(&log_q_again)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));

    let mut u = vec![0.0; n];
    energies_into(&energy, &x, &mut u)?;
    let mut log_w = vec![0.0; n];
    log_weights_into(&u, &log_q, 1.0, &mut log_w)?;
    let ess = kish_ess(&log_w);

    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "samples:             {n} in {t_sample:.3} s ({:.0}/s)",
        n as f64 / t_sample
    );
    println!(
        "density evaluation:  {n} in {t_density:.3} s ({:.0}/s)",
        n as f64 / t_density
    );
    println!("mean log q:          {:.4}", mean(&log_q));
    println!("max |log q(sample) − log q(evaluated)|: {worst:.2e}  (exact-discrete mode)");
    println!("mean energy U:       {:.4}  (kT = 1)", mean(&u));
    println!(
        "Kish ESS:            {ess:.1} of {n} ({:.2}%): untrained, so poor overlap",
        100.0 * ess / n as f64
    );
    Ok(())
}
