//! A bit-for-bit fingerprint of what the library computes, for checking that a refactoring
//! changes no result: run it before and after and compare the lines.
//!
//! `cargo run --release --example fingerprint`
//!
//! Each line is an FNV-1a hash of the exact bits of one result: flow samples and their log q
//! (exact-discrete and continuous, DW-4 and LJ-13, untrained and shipped models), log q of
//! reference data, reference MCMC output, the parameters after a short ML + ML/KL training run,
//! and a chain of flow moves (states, energies and accept decisions).

use std::sync::Arc;

use eqflow::energy::Energy;
use eqflow::field::Field;
use eqflow::flow_config::{Family, FlowConfig};
use eqflow::geometry::Layout;
use eqflow::integrate::{DensityMode, Integrator, Method};
use eqflow::io::model;
use eqflow::reference_mcmc::{self, McmcConfig};
use eqflow::system::System;
use eqflow::train::{LambdaSchedule, TrainConfig, Trainer};
use eqflow::{DoubleWell, Flow, FlowMove, LennardJones};

/// FNV-1a over the bits of a list of numbers.
fn hash(values: &[f64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_bits().to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn line(name: &str, values: &[f64]) {
    println!("{:016x}  {name} ({} numbers)", hash(values), values.len());
}

fn samples(name: &str, flow: &Flow, n: usize) -> eqflow::Result<Vec<f64>> {
    let (x, log_q) = flow.sample(17, n)?;
    line(&format!("{name}: samples"), &x);
    line(&format!("{name}: log q of samples"), &log_q);
    Ok(x)
}

fn main() -> eqflow::Result<()> {
    let dw4 = DoubleWell::dw4();
    let lj13 = LennardJones::lj13();
    for (name, n, d, count) in [("dw4", 4, 2, 400), ("lj13", 13, 3, 40)] {
        let mut flow = Flow::new(n, d, 3)?;
        samples(&format!("untrained {name} exact-discrete"), &flow, count)?;
        flow.set_integrator(Integrator::new(
            Method::Rk4 { n_steps: 20 },
            DensityMode::Continuous,
        )?);
        samples(&format!("untrained {name} continuous"), &flow, count)?;
    }
    // Every family's untrained field from a system's preset (benchmark, other units, two
    // species) and from a flow configuration's range and counts.
    for system in ["dw4", "lj13", "systems/lj_binary.json", "systems/lj38.json"] {
        let system = System::from_name_or_file(system)?;
        for &family in Field::FAMILIES {
            match system.untrained_flow_of(family, 7) {
                Ok(flow) => line(
                    &format!("untrained {family} for {}: parameters", system.name),
                    flow.field().params(),
                ),
                Err(e) => println!("untrained {family} for {}: {e}", system.name),
            }
        }
    }
    for &name in Field::FAMILIES {
        let family = Family::from_name(name)?;
        let config = FlowConfig {
            family,
            distance_range: (0.3, 1.7),
            kernel_counts: Some((12, 5)),
            prior_sigma: 0.4,
            seed: 8,
            ..FlowConfig::default()
        };
        let flow = config.build(Layout::new(5, 3)?)?;
        line(
            &format!("flow config {name}: parameters"),
            flow.field().params(),
        );
        let spec = serde_json::to_string(&flow.field().spec()).unwrap_or_default();
        println!("flow config {name}: {spec}");
    }
    for (name, count) in [("dw4", 400), ("lj13", 40)] {
        let (flow, _) = model::load(format!("models/{name}.json").as_ref())?;
        let x = samples(&format!("models/{name}.json"), &flow, count)?;
        line(
            &format!("models/{name}.json: log q re-evaluated"),
            &flow.log_density(&x)?,
        );
    }

    let reference = |energy: &dyn Energy, n: usize, step: f64| {
        let config = McmcConfig {
            n_chains: 4,
            n_burnin: 500,
            n_samples: n,
            thin: 5,
            initial_step: step,
            seed: 5,
            ..McmcConfig::default()
        };
        reference_mcmc::run(energy, &config).map(|out| out.x)
    };
    let data = reference(&dw4, 1200, 0.5)?;
    line("dw4 mcmc", &data);
    let lj_data = reference(&lj13, 200, 0.025)?;
    line("lj13 mcmc", &lj_data);
    let (shipped, _) = model::load("models/lj13.json".as_ref())?;
    line(
        "models/lj13.json: log q of lj13 mcmc",
        &shipped.log_density(&lj_data)?,
    );

    let mut flow = Flow::new(4, 2, 9)?;
    let ml = TrainConfig {
        n_epochs: 2,
        seed: 4,
        ..TrainConfig::default()
    };
    Trainer::new(ml, &data).run(&mut flow, |_| true)?;
    line("dw4 params after 2 epochs ML", flow.field().params());
    let ml_kl = TrainConfig {
        n_epochs: 1,
        lambda: LambdaSchedule::Constant(0.5),
        n_kl_samples: 16,
        ..ml
    };
    Trainer::new(ml_kl, &data)
        .with_energy(&dw4)
        .run(&mut flow, |_| true)?;
    line("dw4 params after 1 epoch ML+KL", flow.field().params());

    let (shipped, _) = model::load("models/dw4.json".as_ref())?;
    let mut mc = FlowMove::new(Arc::new(shipped), 1.0, 11)?;
    let mut x = data[..8].to_vec();
    let mut u = dw4.energy(&x);
    let mut chain = Vec::new();
    for _ in 0..300 {
        let accepted = mc.step(&mut x, &mut u, |y| Ok(dw4.energy(y)))?;
        chain.extend_from_slice(&x);
        chain.push(u);
        chain.push(if accepted { 1.0 } else { 0.0 });
    }
    line("dw4 move chain (models/dw4.json, 300 steps)", &chain);
    Ok(())
}
