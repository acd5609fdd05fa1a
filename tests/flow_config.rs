//! Flows configured from a host's own configurations: the scales `fit_scales` derives from
//! reference data of the benchmark systems are close to the paper's presets, and a flow built
//! from them trains as well as the preset flow, in any length unit.

use eqflow::flow_config::{FlowConfig, fit_scales};
use eqflow::geometry::Layout;
use eqflow::reference_mcmc::{InitialState, McmcConfig, run};
use eqflow::train::{TrainConfig, Trainer};
use eqflow::{DoubleWell, Flow, LennardJones};

fn dw4_data(n_samples: usize) -> Vec<f64> {
    let config = McmcConfig {
        n_chains: 16,
        n_burnin: 2000,
        n_samples,
        thin: 10,
        seed: 3,
        initial: InitialState::Lattice {
            spacing: 3.0,
            jitter: 0.1,
        },
        ..McmcConfig::default()
    };
    run(&DoubleWell::dw4(), &config).unwrap().x
}

/// Trains `flow` by maximum likelihood for a few epochs; returns the initial and the final
/// validation NLL.
fn train(flow: &mut Flow, train: &[f64], validation: &[f64]) -> (f64, f64) {
    let config = TrainConfig {
        n_epochs: 4,
        n_rk4_steps: 10,
        seed: 1,
        ..TrainConfig::default()
    };
    let summary = Trainer::new(config, train)
        .with_validation(validation)
        .run(flow, |_| true)
        .unwrap();
    // The kept epoch's: the trainer validates by the exact density of the RK4 map, +∞ where
    // the map folds at a validation configuration (which the kept epoch never does).
    let kept = summary.epochs[summary.best_epoch].validation_nll.unwrap();
    (summary.initial_validation_nll.unwrap(), kept)
}

#[test]
fn dw4_scales_are_close_to_the_preset_and_train_in_any_unit() {
    let layout = Layout::new(4, 2).unwrap();
    let data = dw4_data(1200);
    let scales = fit_scales(layout, &data).unwrap();
    let (min, max) = scales.distance_range;
    eprintln!(
        "DW-4: fitted range [{min:.3}, {max:.3}], prior sigma {:.3}",
        scales.prior_sigma
    );
    // The paper's preset: centres on [0, 8], σ = 1.
    assert!(min < 1.0 && (7.0..9.5).contains(&max), "[{min}, {max}]");
    assert!(
        (0.5..3.0).contains(&scales.prior_sigma),
        "{}",
        scales.prior_sigma
    );

    let len = layout.len();
    let (train_set, validation) = data.split_at(1000 * len);
    let fitted = FlowConfig {
        distance_range: scales.distance_range,
        prior_sigma: scales.prior_sigma,
        seed: 7,
        ..FlowConfig::default()
    };
    let mut flow = fitted.build(layout).unwrap();
    let (before, after) = train(&mut flow, train_set, validation);
    let mut preset = Flow::new(4, 2, 7).unwrap();
    let (preset_before, preset_after) = train(&mut preset, train_set, validation);
    eprintln!(
        "DW-4 validation NLL: fitted {before:.3} -> {after:.3}; preset {preset_before:.3} -> \
         {preset_after:.3}"
    );
    assert!(after < before - 0.5, "{before} -> {after}");
    assert!(
        after < preset_after + 0.3,
        "fitted {after}, preset {preset_after}"
    );

    // The same data in a unit ten times larger (nm for Å): every fitted length scales, so the
    // flow is the same map in the new unit and its NLL moves by (N−1)·D·log 10 — up to the
    // distance softening ε_d = 1e-6 (length²), which is relatively larger in the larger unit.
    let s = 0.1;
    let scaled: Vec<f64> = data.iter().map(|v| v * s).collect();
    let scaled_scales = fit_scales(layout, &scaled).unwrap();
    assert!((scaled_scales.distance_range.1 - s * max).abs() < 1e-12);
    assert!((scaled_scales.prior_sigma - s * scales.prior_sigma).abs() < 1e-12);
    let mut flow = FlowConfig {
        distance_range: scaled_scales.distance_range,
        prior_sigma: scaled_scales.prior_sigma,
        seed: 7,
        ..FlowConfig::default()
    }
    .build(layout)
    .unwrap();
    let (scaled_train, scaled_validation) = scaled.split_at(1000 * len);
    let (scaled_before, scaled_after) = train(&mut flow, scaled_train, scaled_validation);
    let shift = (3 * 2) as f64 * s.ln();
    eprintln!("DW-4 in a unit 10x larger: {scaled_before:.3} -> {scaled_after:.3}");
    assert!((scaled_before - (before + shift)).abs() < 1e-3);
    // After training the two runs differ by more than round-off: in the small unit the RK4-10
    // map of the last epoch folds at a validation configuration (the softening is relatively
    // larger there), so an earlier epoch is kept (measured: −5.097 against −5.229).
    assert!((scaled_after - (after + shift)).abs() < 0.3);
}

#[test]
fn lj13_scales_cover_the_cluster() {
    let layout = Layout::new(13, 3).unwrap();
    let config = McmcConfig {
        n_chains: 8,
        n_burnin: 4000,
        n_samples: 400,
        thin: 20,
        seed: 5,
        ..McmcConfig::default()
    };
    let data = run(&LennardJones::lj13(), &config).unwrap().x;
    let scales = fit_scales(layout, &data).unwrap();
    let (min, max) = scales.distance_range;
    eprintln!(
        "LJ-13: fitted range [{min:.3}, {max:.3}], prior sigma {:.3}",
        scales.prior_sigma
    );
    // Nearest neighbours sit at r_m = 1 and the cluster is about 3 r_m across (the LJ presets'
    // distance kernels lie on [0, 6.6] (kernel) and [0.6, 4] (envpair)).
    assert!(min < 0.9, "{min}");
    assert!((3.0..7.0).contains(&max), "{max}");
    assert!(
        (0.5..1.5).contains(&scales.prior_sigma),
        "{}",
        scales.prior_sigma
    );
}

/// Narrow kernels far from the origin (a distance range of [999.999, 1000]: bandwidths ~2e-5 at
/// d ≈ 1000) have a finite, certifiable bound, so a strict flow is built certified and samples
/// with agreeing densities. Before, the bound's grid ran from d ≈ 0 in steps of the bandwidth
/// and, at 5·10⁷ points, was given up as +∞: `build` failed with "uncertified".
#[test]
fn narrow_kernels_far_from_the_origin_are_certified() {
    for (lo, hi) in [(999.999, 1000.0), (9.999, 10.0), (1e5 - 1e-3, 1e5)] {
        let config = FlowConfig {
            distance_range: (lo, hi),
            ..FlowConfig::default()
        };
        let flow = config.build(Layout::new(4, 2).unwrap()).unwrap();
        let certificate = flow.certificate().expect("an RK4 flow has a certificate");
        assert!(certificate.is_certified(), "[{lo}, {hi}]: {certificate:?}");
        let (x, log_q) = flow.sample(3, 4).unwrap();
        let again = flow.log_density(&x).unwrap();
        for (a, b) in log_q.iter().zip(&again) {
            assert!((a - b).abs() < 1e-9, "[{lo}, {hi}]: {a} vs {b}");
        }
    }
}
