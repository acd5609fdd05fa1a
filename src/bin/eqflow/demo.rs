//! `eqflow demo`: the whole Boltzmann-generator pipeline on DW-4 with built-in settings.

use std::time::Instant;

use serde_json::json;

use eqflow::Result;
use eqflow::boltzmann::{Kt, kish_ess, log_weights_into, relative_weights_into};
use eqflow::energy::energies_into;
use eqflow::free_energy::{free_energy_difference, state_populations};
use eqflow::geometry::Layout;
use eqflow::io::{ConfigShape, Dtype, model};
use eqflow::reference_mcmc::{self, InitialState, McmcConfig};
use eqflow::system::System;
use eqflow::train::TrainConfig;

use super::{DemoArgs, mean_and_se, plot, progress, report, summary_json, train_phase};

/// A DW-4 configuration's metastable state: how many of its six pair distances sit in the
/// inner well (d < d0 = 4).
fn short_pairs(x: &[f64]) -> usize {
    let mut k = 0;
    for i in 0..4 {
        for j in i + 1..4 {
            let (dx, dy) = (x[2 * i] - x[2 * j], x[2 * i + 1] - x[2 * j + 1]);
            if dx * dx + dy * dy < 16.0 {
                k += 1;
            }
        }
    }
    k
}

/// The number of DW-4 states: 0 to 6 short pairs.
const N_STATES: usize = 7;

/// The state ([`short_pairs`]) of every configuration of `x`.
fn states(x: &[f64]) -> Vec<usize> {
    x.chunks_exact(8).map(short_pairs).collect()
}

fn mcmc_run(
    energy: &dyn eqflow::Energy,
    n: usize,
    thin: usize,
    seed: u64,
    quiet: bool,
) -> Result<reference_mcmc::McmcOutput> {
    let config = McmcConfig {
        n_chains: 64,
        n_burnin: 5_000,
        n_samples: n,
        thin,
        seed,
        initial: InitialState::Lattice {
            spacing: 3.0,
            jitter: 0.1,
        },
        ..McmcConfig::default()
    };
    let bar = progress(1000, quiet, "mcmc");
    let out = reference_mcmc::run_with_progress(energy, &config, &|p| {
        bar.set_position(1000 * p.steps_done / p.steps_total.max(1));
    })?;
    bar.finish_and_clear();
    Ok(out)
}

/// The demo's files under `--out-dir`.
const MCMC_NPY: &str = "dw4_mcmc.npy";
const MODEL_JSON: &str = "dw4_model.json";
const PLOT_PNG: &str = "dw4_energies.png";

pub(super) fn run(a: DemoArgs) -> Result<()> {
    let start = Instant::now();
    std::fs::create_dir_all(&a.out_dir).map_err(|e| eqflow::Error::Io {
        what: format!(
            "cannot create the output folder --out-dir {}: {}",
            a.out_dir.display(),
            // create_dir_all says "File exists" for a file (or a link to nothing) in the way.
            if a.out_dir.exists() || a.out_dir.is_symlink() {
                "a file of that name is in the way, not a folder".to_string()
            } else {
                e.to_string()
            }
        ),
    })?;
    // Before a minute of work: a run that fails on its last output must not have replaced the
    // first ones already.
    for name in [MCMC_NPY, MODEL_JSON, PLOT_PNG] {
        crate::output::check_output("--out-dir", &a.out_dir.join(name), &[])?;
    }
    let system = System::preset("dw4")?;
    let energy = system.energy.build()?;
    let layout = Layout::new(4, 2)?;
    let quiet = a.common.quiet;
    // The three outputs replace an earlier demo's together, once the whole demo has run
    // (`output::all_or_none`, as `repro` does): a failure or an interrupt half-way leaves the
    // earlier set as it was.
    let (value, text) = crate::output::all_or_none(|| {
        // 1. Reference data: 1,000 training + 1,000 validation samples, and a long run for the
        //    reference state populations.
        let data = mcmc_run(energy.as_ref(), 2_000, 100, a.seed, quiet)?;
        let long = mcmc_run(energy.as_ref(), 100_000, 20, a.seed.wrapping_add(1), quiet)?;
        crate::output::write_output(&a.out_dir.join(MCMC_NPY), |tmp| {
            eqflow::io::write_configurations(tmp, &data.x, layout, Dtype::F64, ConfigShape::Flat)
        })?;
        let (train, validation) = data.x.split_at(1_000 * 8);

        // 2. Training: the paper's protocol, 50 epochs of maximum likelihood.
        let mut flow = system.untrained_flow(a.seed)?;
        let config = TrainConfig {
            seed: a.seed,
            ..TrainConfig::default()
        };
        let t_train = Instant::now();
        let summary = train_phase(
            &mut flow,
            config,
            train,
            Some(validation),
            None,
            quiet,
            "train",
        )?;
        let train_seconds = t_train.elapsed().as_secs_f64();
        // Strict mode (the default): the paper's protocol has no certificate penalty, so the steps
        // grow with the trained field until every one is proved a bijection.
        flow.raise_to_certified_steps(config.n_rk4_steps * eqflow::flow::MAX_STEP_GROWTH)?;
        let rk4_steps = flow.certificate().map_or(0, |c| c.n_steps);
        let model_path = a.out_dir.join(MODEL_JSON);
        crate::output::write_output(&model_path, |tmp| {
            model::save(
                &flow,
                Some(system.clone()),
                Some(json!({"command": "demo", "summary": summary_json(&summary)})),
                tmp,
            )
        })?;

        // 3. Evaluation with the exact density of the sampler actually used.
        let nll: Vec<f64> = flow.log_density(validation)?.iter().map(|l| -l).collect();
        // The demo's counts are fixed and large, so every standard error exists; were one missing,
        // its NaN would stop `report`.
        let (nll_mean, nll_se) = mean_and_se(&nll);
        let nll_se = nll_se.unwrap_or(f64::NAN);
        let n = 10_000;
        let (x, log_q) = flow.sample(a.seed.wrapping_add(2), n)?;
        let mut u = vec![0.0; n];
        energies_into(energy.as_ref(), &x, &mut u)?;
        let mut log_w = vec![0.0; n];
        log_weights_into(&u, &log_q, system.kt, &mut log_w)?;
        let ess = kish_ess(&log_w);

        // 4. Free-energy difference between the two most populated states.
        let states_long = states(&long.x);
        let states_flow = states(&x);
        let p_mcmc = state_populations(&states_long, &vec![1.0; states_long.len()], N_STATES)?;
        let mut w = vec![0.0; n];
        relative_weights_into(&log_w, &mut w)?;
        let p_flow = state_populations(&states_flow, &w, N_STATES)?;
        let mut order: Vec<usize> = (0..N_STATES).collect();
        order.sort_by(|&i, &j| p_mcmc[j].total_cmp(&p_mcmc[i]));
        let (s1, s2) = (order[0], order[1]);
        let kt = Kt::new(system.kt)?;
        let delta_f = |p: &[f64]| free_energy_difference(kt, p[s1], p[s2]);
        let (df_mcmc, df_flow) = (delta_f(&p_mcmc)?, delta_f(&p_flow)?);
        // Standard errors: MCMC from 8 groups of independent chains (states switch slowly within a
        // chain, so samples are not independent); the flow by bootstrap of its weighted samples.
        let groups = (0..8)
            .map(|g| {
                let chains = g * 8..(g + 1) * 8;
                let range = long.stats.chain_samples(chains.start).start
                    ..long.stats.chain_samples(chains.end - 1).end;
                let p = state_populations(
                    &states_long[range.clone()],
                    &vec![1.0; range.len()],
                    N_STATES,
                )?;
                delta_f(&p)
            })
            .collect::<Result<Vec<f64>>>()?;
        let se_mcmc = mean_and_se(&groups).1.unwrap_or(f64::NAN);
        let mut rng = eqflow::flow::sample_rng(a.seed, u64::MAX);
        let boots = (0..200)
            .map(|_| {
                let idx: Vec<usize> = (0..n)
                    .map(|_| rand::RngExt::random_range(&mut rng, 0..n))
                    .collect();
                let sb: Vec<usize> = idx.iter().map(|&i| states_flow[i]).collect();
                let wb: Vec<f64> = idx.iter().map(|&i| w[i]).collect();
                delta_f(&state_populations(&sb, &wb, N_STATES)?)
            })
            .collect::<Result<Vec<f64>>>()?;
        let (_, se_boot_mean) = mean_and_se(&boots);
        let se_flow = se_boot_mean.unwrap_or(f64::NAN) * (boots.len() as f64).sqrt();

        // 5. The plot.
        let plot_path = a.out_dir.join(PLOT_PNG);
        plot::energy_histograms(
            &plot_path,
            "DW-4 energies: MCMC, flow, reweighted flow",
            &long.energies,
            &u,
            &log_w,
        )
        .map_err(|what| eqflow::Error::Io { what })?;

        let seconds = start.elapsed().as_secs_f64();
        Ok((
            json!({"command": "demo", "validation_nll": nll_mean, "validation_nll_se": nll_se,
               "ess": ess, "ess_fraction": ess / n as f64, "states": [s1, s2],
               "delta_f_mcmc": df_mcmc, "delta_f_mcmc_se": se_mcmc,
               "delta_f_reweighted_flow": df_flow, "delta_f_reweighted_flow_se": se_flow,
               "train_seconds": train_seconds, "seconds": seconds, "rk4_steps": rk4_steps,
               "model": model_path, "plot": plot_path}),
            format!(
                "DW-4 Boltzmann generator, {seconds:.0} s in all (training {train_seconds:.1} s)\n\
             validation NLL      {nll_mean:.3} ± {nll_se:.3}  (1,000 held-out MCMC samples)\n\
             Kish ESS            {ess:.0} of {n} ({:.1}%)\n\
             RK4 steps           {rk4_steps} (every step certified a bijection)\n\
             states              {s1} vs {s2} short pairs (d < 4), the two most populated\n\
             ΔF = F({s2}) − F({s1})  {df_mcmc:.3} ± {se_mcmc:.3} kT by long MCMC (100,000 samples)\n\
             \x20                   {df_flow:.3} ± {se_flow:.3} kT by the reweighted flow (10,000 samples)\n\
             model               {}\n\
             plot                {}\n",
                100.0 * ess / n as f64,
                model_path.display(),
                plot_path.display()
            ),
        ))
    })?;
    report(&a.common, value, text)
}
