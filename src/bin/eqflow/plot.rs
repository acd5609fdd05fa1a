//! The CLI's figures (PNG): the demo's energy histograms (MCMC, flow samples, and flow samples
//! reweighted by their importance weights) and the line charts of `eqflow repro`.

use std::path::Path;

use eqflow::boltzmann::relative_weights_into;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// Registers a system TrueType font for the labels, once per process; without one the plot is
/// drawn unlabelled.
fn register_font() -> bool {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REGISTERED.get_or_init(register_font_once)
}

fn register_font_once() -> bool {
    const CANDIDATES: [&str; 3] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    ];
    for path in CANDIDATES {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps fonts for the life of the process, and this runs once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// Draws a figure with `draw` into a temporary beside `path` and renames it over `path` once
/// the PNG is complete (with the other outputs of an `output::all_or_none` run), so a failed
/// plot leaves no half-written file and an earlier figure stays as it was. The temporary keeps
/// `path`'s extension, from which plotters picks the format.
fn atomically(path: &Path, draw: impl FnOnce(&Path) -> Result<(), String>) -> Result<(), String> {
    crate::output::write_output(path, |tmp| {
        draw(tmp).map_err(|what| eqflow::Error::Io { what })
    })
    .map_err(message)
}

/// An error's text for the callers, which report it as an i/o error: an i/o error's own
/// message without its "i/o error: " prefix, which would otherwise appear twice.
fn message(e: eqflow::Error) -> String {
    match e {
        eqflow::Error::Io { what } => what,
        other => other.to_string(),
    }
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
    atomically(path, |tmp| {
        let root = BitMapBackend::new(tmp, (900, 600)).into_drawing_area();
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
    })
}

/// One line of a [`Panel`]: points in data coordinates; a non-finite y breaks the line.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
    /// Draw a marker at every point as well as the line.
    pub markers: bool,
}

/// One chart of a figure. Log axes are drawn as log10 of the data, said in the axis label.
pub struct Panel {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
}

/// Draws `panels` side by side into `path` (each 700 × 520 pixels).
pub fn panels(path: &Path, panels: &[Panel]) -> Result<(), String> {
    let labels = register_font();
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let width = 700 * u32::try_from(panels.len().max(1)).map_err(|e| err(&e))?;
    atomically(path, |tmp| {
        let root = BitMapBackend::new(tmp, (width, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (panel, area) in panels.iter().zip(&areas) {
            let tx = |v: f64| if panel.log_x { v.log10() } else { v };
            let ty = |v: f64| if panel.log_y { v.log10() } else { v };
            let lines: Vec<Vec<Vec<(f64, f64)>>> = panel
                .series
                .iter()
                .map(|s| {
                    // Split at points that cannot be drawn (empty histogram bins, log of ≤ 0).
                    let mut parts: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
                    for &(x, y) in &s.points {
                        let p = (tx(x), ty(y));
                        if p.0.is_finite() && p.1.is_finite() {
                            if let Some(line) = parts.last_mut() {
                                line.push(p);
                            }
                        } else if parts.last().is_some_and(|l| !l.is_empty()) {
                            parts.push(Vec::new());
                        }
                    }
                    parts
                })
                .collect();
            let all = lines.iter().flatten().flatten();
            let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
            for &(x, y) in all {
                (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            }
            if x0 > x1 {
                return Err(format!(
                    "plot {}: panel '{}' has no finite points",
                    path.display(),
                    panel.title
                ));
            }
            let (px, py) = (0.03 * (x1 - x0).max(1e-9), 0.08 * (y1 - y0).max(1e-9));
            let mut builder = ChartBuilder::on(area);
            builder.margin(15);
            if labels {
                builder
                    .caption(&panel.title, ("sans-serif", 20))
                    .x_label_area_size(45)
                    .y_label_area_size(65);
            }
            let mut chart = builder
                .build_cartesian_2d((x0 - px)..(x1 + px), (y0 - py)..(y1 + py))
                .map_err(|e| err(&e))?;
            if labels {
                chart
                    .configure_mesh()
                    .x_desc(panel.x_desc.as_str())
                    .y_desc(panel.y_desc.as_str())
                    .draw()
                    .map_err(|e| err(&e))?;
            }
            for (series, parts) in panel.series.iter().zip(&lines) {
                let color = series.color;
                for (k, part) in parts.iter().enumerate() {
                    let drawn = chart
                        .draw_series(LineSeries::new(part.iter().copied(), color.stroke_width(2)))
                        .map_err(|e| err(&e))?;
                    if labels && k == 0 {
                        drawn.label(series.name.as_str()).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                        });
                    }
                    if series.markers {
                        chart
                            .draw_series(part.iter().map(|&p| Circle::new(p, 3, color.filled())))
                            .map_err(|e| err(&e))?;
                    }
                }
            }
            if labels {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()
                    .map_err(|e| err(&e))?;
            }
        }
        root.present().map_err(|e| err(&e))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel() -> Panel {
        Panel {
            title: "t".into(),
            x_desc: "x".into(),
            y_desc: "y".into(),
            log_x: false,
            log_y: true,
            series: vec![Series {
                name: "s".into(),
                points: vec![(1.0, 1.0), (2.0, 4.0), (3.0, 9.0)],
                color: RED,
                markers: true,
            }],
        }
    }

    #[test]
    fn a_figure_replaces_its_target_whole_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("eqflow-plot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fig = dir.join("fig.png");
        std::fs::write(&fig, "an earlier figure").unwrap();
        panels(&fig, &[panel(), panel()]).unwrap();
        let bytes = std::fs::read(&fig).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["fig.png"]);
        // A folder that does not exist: an error, and nothing is created anywhere.
        assert!(panels(&dir.join("missing").join("fig.png"), &[panel()]).is_err());
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["fig.png"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
