//! log Z of a target by bridge sampling under different densities of the same trained flow:
//! log Z is a property of the target, so every normalised flow density must give the same value
//! within the error bars, and a density that is not normalised shows up as a disagreement.
//!
//! `cargo run --release --example log_z -- MODEL DATA SYSTEM [N_SAMPLES] [SEED]`
//! e.g. `cargo run --release --example log_z -- models/lj13.json ../shared/data/lj13_val_10000.npy lj13`

use eqflow::boltzmann::log_weights_into;
use eqflow::energy::energies_into;
use eqflow::free_energy::{bridge_sampling, importance_log_z};
use eqflow::integrate::{DensityMode, Dopri5Config, Integrator, Method};
use eqflow::io::{self, model};
use eqflow::system::System;

fn main() -> eqflow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: log_z MODEL DATA SYSTEM [N_SAMPLES] [SEED]");
        std::process::exit(2);
    }
    let parse = |i: usize, default: u64| {
        args.get(i)
            .map_or(Ok(default), |s| s.parse::<u64>())
            .map_err(|e| eqflow::Error::InvalidArgument {
                what: format!("argument {i}: {e}"),
            })
    };
    let n_samples = usize::try_from(parse(3, 10_000)?).unwrap_or(usize::MAX);
    let seed = parse(4, 0)?;
    let (mut flow, _) = model::load(args[0].as_ref())?;
    let system = System::preset(&args[2])?;
    let energy = system.energy.build()?;
    let data = io::read_configurations(&args[1], flow.layout())?;
    let n_data = data.len() / flow.layout().len();
    let mut u_data = vec![0.0; n_data];
    energies_into(energy.as_ref(), &data, &mut u_data)?;
    let modes = [
        (
            "exact-discrete RK4-20",
            Method::Rk4 { n_steps: 20 },
            DensityMode::ExactDiscrete,
        ),
        (
            "continuous RK4-20",
            Method::Rk4 { n_steps: 20 },
            DensityMode::Continuous,
        ),
        (
            "exact-discrete RK4-160",
            Method::Rk4 { n_steps: 160 },
            DensityMode::ExactDiscrete,
        ),
        (
            "continuous Dopri5 (1e-5, 1e-10)",
            Method::Dopri5(Dopri5Config::default()),
            DensityMode::Continuous,
        ),
    ];
    for (name, method, mode) in modes {
        flow.set_integrator(Integrator::new(method, mode)?);
        let log_q_data = flow.log_density(&data)?;
        let (x, log_q) = flow.sample(seed, n_samples)?;
        let mut u = vec![0.0; n_samples];
        energies_into(energy.as_ref(), &x, &mut u)?;
        let mut log_w = vec![0.0; n_samples];
        log_weights_into(&u, &log_q, system.kt, &mut log_w)?;
        let mut log_w_data = vec![0.0; n_data];
        log_weights_into(&u_data, &log_q_data, system.kt, &mut log_w_data)?;
        let bridge = bridge_sampling(&log_w, &log_w_data)?;
        let reduced: Vec<f64> = u_data.iter().map(|v| v / system.kt).collect();
        let (z, s, kl) = (
            bridge.log_z(),
            bridge.entropy(&reduced)?,
            bridge.kl_target_to_flow(),
        );
        let is = importance_log_z(&log_w)?;
        let nll = -log_q_data.iter().sum::<f64>() / n_data as f64;
        println!(
            "{name:32} NLL {nll:.4}  log Z {:.4} ± {:.4} (IS {:.4} ± {:.4})  S {:.4} ± {:.4}  \
             KL {:.4} ± {:.4}",
            z.value,
            z.standard_error,
            is.value,
            is.standard_error,
            s.value,
            s.standard_error,
            kl.value,
            kl.standard_error
        );
    }
    Ok(())
}
