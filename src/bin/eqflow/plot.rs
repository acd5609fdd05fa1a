//! The demo's energy-histogram plot (PNG): MCMC, flow samples, and flow samples reweighted by
//! their importance weights.

use std::path::Path;

use eqflow::boltzmann::relative_weights_into;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// Registers a system TrueType font for the labels; without one the plot is drawn unlabelled.
fn register_font() -> bool {
    const CANDIDATES: [&str; 3] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    ];
    for path in CANDIDATES {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps fonts for the life of the process; the CLI draws one plot.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// Normalised histogram of `values` with optional weights over `n_bins` bins on `[lo, hi]`.
fn histogram(values: &[f64], weights: Option<&[f64]>, lo: f64, hi: f64, n_bins: usize) -> Vec<f64> {
    let mut h = vec![0.0; n_bins];
    let width = (hi - lo) / n_bins as f64;
    let mut total = 0.0;
    for (i, v) in values.iter().enumerate() {
        let w = weights.map_or(1.0, |w| w[i]);
        total += w;
        if *v >= lo && *v < hi {
            h[((v - lo) / width) as usize] += w;
        }
    }
    if total > 0.0 {
        h.iter_mut().for_each(|x| *x /= total * width);
    }
    h
}

/// Draws the three energy distributions into `path`. `log_w` are the flow samples' log
/// importance weights (normalised here).
pub fn energy_histograms(
    path: &Path,
    title: &str,
    mcmc_u: &[f64],
    flow_u: &[f64],
    log_w: &[f64],
) -> Result<(), String> {
    let labels = register_font();
    let mut sorted: Vec<f64> = mcmc_u.iter().copied().filter(|u| u.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return Err("no finite MCMC energies to plot".into());
    }
    let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p) as usize];
    let (lo, hi) = (q(0.001), q(0.999));
    let pad = 0.25 * (hi - lo).max(1e-6);
    let (lo, hi) = (lo - pad, hi + pad);
    let n_bins = 60;
    let mut w = vec![0.0; log_w.len()];
    relative_weights_into(log_w, &mut w).map_err(|e| e.to_string())?;
    let series = [
        ("MCMC", histogram(mcmc_u, None, lo, hi, n_bins), BLACK),
        ("flow", histogram(flow_u, None, lo, hi, n_bins), BLUE),
        (
            "flow, reweighted",
            histogram(flow_u, Some(&w), lo, hi, n_bins),
            RED,
        ),
    ];
    let y_max = series
        .iter()
        .flat_map(|(_, h, _)| h.iter().copied())
        .fold(0.0, f64::max)
        * 1.1;
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if labels {
        builder
            .caption(title, ("sans-serif", 24))
            .x_label_area_size(45)
            .y_label_area_size(60);
    }
    let mut chart = builder
        .build_cartesian_2d(lo..hi, 0.0..y_max.max(1e-12))
        .map_err(|e| err(&e))?;
    if labels {
        chart
            .configure_mesh()
            .x_desc("energy U (kT = 1)")
            .y_desc("density")
            .draw()
            .map_err(|e| err(&e))?;
    }
    let width = (hi - lo) / n_bins as f64;
    for (name, h, color) in &series {
        let points = h.iter().enumerate().flat_map(|(i, v)| {
            [
                (lo + i as f64 * width, *v),
                (lo + (i + 1) as f64 * width, *v),
            ]
        });
        let drawn = chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(&e))?;
        if labels {
            let c = *color;
            drawn.label(*name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
            });
        }
    }
    if labels {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
