//! PNG figures for reports: grouped bars, scatter plots, line charts.
//!
//! The font is embedded (DejaVu Sans, see assets/fonts/DejaVu-LICENSE.txt) so that
//! plots render the same on a bare server as on a laptop.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {reason}")]
pub struct PlotError {
    pub path: String,
    pub reason: String,
}

fn err(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
        if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_err() {
            tracing::warn!("embedded font rejected: plot text will be missing");
        }
    });
}

/// A categorical palette that stays distinguishable in print.
pub fn color(i: usize) -> RGBColor {
    const P: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    P[i % P.len()]
}

/// Grouped bars: one group per category (e.g. ROI), one bar per series (e.g. method).
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
) -> Result<(), PlotError> {
    register_font();
    let width = (160 + 70 * categories.len().max(1) as u32).max(640);
    let root = BitMapBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let finite = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let pad = ((hi - lo) * 0.1).max(1e-3);
    let n_series = series.len().max(1);
    let bottom = lo - if lo < 0.0 { pad } else { 0.0 };
    // Headroom for the legend (about 22 px a series of the ~370 px plot), so that it
    // never hides a bar.
    let legend = ((22 * n_series + 24) as f64 / 370.0).min(0.6);
    let top = (hi + pad).max(hi + (hi + pad - bottom) * legend / (1.0 - legend));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..categories.len().max(1) as f64, bottom..top)
        .map_err(|e| err(path, e))?;
    let cats = categories.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(categories.len().max(1) * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.26 && i < cats.len() {
                cats[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(path, e))?;
    let bar_w = 0.8 / n_series as f64;
    for (s, (name, values)) in series.iter().enumerate() {
        let c = color(s);
        chart
            .draw_series(
                values
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(i, &v)| {
                        let x0 = i as f64 + 0.1 + s as f64 * bar_w;
                        Rectangle::new([(x0, 0.0), (x0 + bar_w * 0.92, v)], c.filled())
                    }),
            )
            .map_err(|e| err(path, e))?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))
}

/// (x min, x max, y min, y max) over the finite points of every series; the unit
/// square when there are none.
fn finite_bounds(series: &[(String, Vec<(f64, f64)>)]) -> (f64, f64, f64, f64) {
    let pts = series
        .iter()
        .flat_map(|(_, p)| p.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (0.0, 1.0, 0.0, 1.0)
    } else {
        (x0, x1, y0, y1)
    }
}

type XyChart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// The captioned x-y frame of the scatter and line charts over `ranges` (x, y);
/// `y_label_area` px for the y tick labels.
fn xy_chart<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    path: &Path,
    title: &str,
    y_label_area: u32,
    ranges: (std::ops::Range<f64>, std::ops::Range<f64>),
) -> Result<XyChart<'a, 'b>, PlotError> {
    ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(y_label_area)
        .build_cartesian_2d(ranges.0, ranges.1)
        .map_err(|e| err(path, e))
}

/// Scatter plot of (x, y) points in named groups, with an optional y = x line.
pub fn scatter(
    path: &Path,
    title: &str,
    labels: (&str, &str),
    groups: &[(String, Vec<(f64, f64)>)],
    identity_line: bool,
) -> Result<(), PlotError> {
    register_font();
    let root = BitMapBackend::new(path, (640, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let (x0, x1, y0, y1) = finite_bounds(groups);
    let (px, py) = (((x1 - x0) * 0.05).max(1e-3), ((y1 - y0) * 0.05).max(1e-3));
    let ranges = ((x0 - px)..(x1 + px), (y0 - py)..(y1 + py));
    let mut chart = xy_chart(&root, path, title, 60, ranges)?;
    chart
        .configure_mesh()
        .x_desc(labels.0)
        .y_desc(labels.1)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(path, e))?;
    if identity_line {
        let (a, b) = (x0.max(y0), x1.min(y1));
        if a < b {
            chart
                .draw_series(LineSeries::new([(a, a), (b, b)], BLACK.mix(0.5)))
                .map_err(|e| err(path, e))?;
        }
    }
    for (g, (name, points)) in groups.iter().enumerate() {
        let c = color(g);
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .map(|&(x, y)| Circle::new((x, y), 2, c.mix(0.6).filled())),
            )
            .map_err(|e| err(path, e))?
            .label(name.clone())
            .legend(move |(x, y)| Circle::new((x + 6, y), 4, c.filled()));
    }
    if groups.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| err(path, e))?;
    }
    root.present().map_err(|e| err(path, e))
}

/// Line chart of (x, y) series, e.g. training curves (loss per epoch); non-finite
/// points are skipped, so a series may have gaps.
pub fn line_chart(
    path: &Path,
    title: &str,
    labels: (&str, &str),
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), PlotError> {
    register_font();
    let root = BitMapBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let (x0, x1, y0, y1) = finite_bounds(series);
    // One point (a single epoch) still gets a visible range.
    let (px, py) = (((x1 - x0) * 0.02).max(0.5), ((y1 - y0) * 0.08).max(1e-3));
    let ranges = ((x0 - px)..(x1 + px), (y0 - py)..(y1 + py));
    let mut chart = xy_chart(&root, path, title, 70, ranges)?;
    chart
        .configure_mesh()
        .x_desc(labels.0)
        .y_desc(labels.1)
        // Whole numbers (epochs) without a trailing ".0".
        .x_label_formatter(&|x| {
            if x.fract() == 0.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.2}")
            }
        })
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(path, e))?;
    for (i, (name, points)) in series.iter().enumerate() {
        let c = color(i);
        let finite: Vec<(f64, f64)> = points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(finite.clone(), c.stroke_width(2)))
            .map_err(|e| err(path, e))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2)));
        chart
            .draw_series(finite.into_iter().map(|p| Circle::new(p, 3, c.filled())))
            .map_err(|e| err(path, e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))
}

/// A labelled matrix for [`heatmap`]: `values[row][col]` in `range`.
pub struct Matrix<'a> {
    pub rows: &'a [String],
    pub cols: &'a [String],
    pub values: &'a [Vec<f64>],
    pub range: (f64, f64),
}

/// A matrix of values in [lo, hi] as coloured cells with the value printed in each
/// (rows top to bottom, columns left to right); `axis_labels` (x, y).
pub fn heatmap(
    path: &Path,
    title: &str,
    axis_labels: (&str, &str),
    matrix: &Matrix,
) -> Result<(), PlotError> {
    let Matrix {
        rows,
        cols,
        values,
        range,
    } = *matrix;
    register_font();
    let (nr, nc) = (rows.len().max(1), cols.len().max(1));
    let root = BitMapBackend::new(path, ((140 + 90 * nc) as u32, (120 + 70 * nr) as u32))
        .into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..nc as f64, 0f64..nr as f64)
        .map_err(|e| err(path, e))?;
    let (rl, cl) = (rows.to_vec(), cols.to_vec());
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(2 * nc + 1)
        .y_labels(2 * nr + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.26 && i < cl.len() {
                cl[i].clone()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| {
            let i = y.floor() as usize;
            // Row 0 drawn at the top.
            if (y - y.floor() - 0.5).abs() < 0.26 && i < rl.len() {
                rl[rl.len() - 1 - i].clone()
            } else {
                String::new()
            }
        })
        .x_desc(axis_labels.0)
        .y_desc(axis_labels.1)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(path, e))?;
    let (lo, hi) = range;
    for (i, row) in values.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let y = (nr - 1 - i) as f64;
            let t = if v.is_finite() {
                ((v - lo) / (hi - lo).max(1e-12)).clamp(0.0, 1.0)
            } else {
                0.0
            };
            // White (lo) to a saturated blue (hi).
            let c = RGBColor(
                (255.0 - 224.0 * t) as u8,
                (255.0 - 136.0 * t) as u8,
                (255.0 - 75.0 * t) as u8,
            );
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(j as f64, y), (j as f64 + 1.0, y + 1.0)],
                    c.filled(),
                )))
                .map_err(|e| err(path, e))?;
            let txt = if v.is_finite() {
                format!("{v:.2}")
            } else {
                "-".into()
            };
            let fg = if t > 0.6 { WHITE } else { BLACK };
            chart
                .draw_series(std::iter::once(Text::new(
                    txt,
                    (j as f64 + 0.35, y + 0.55),
                    ("sans-serif", 15).into_font().color(&fg),
                )))
                .map_err(|e| err(path, e))?;
        }
    }
    root.present().map_err(|e| err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_pngs_with_text() {
        let dir = tempfile::tempdir().unwrap();
        let bars = dir.path().join("bars.png");
        grouped_bars(
            &bars,
            "mean r per ROI",
            "Pearson r",
            &["V1v".into(), "V1d".into()],
            &[
                ("lh".into(), vec![0.4, 0.3]),
                ("rh".into(), vec![0.35, -0.1]),
            ],
        )
        .unwrap();
        let sc = dir.path().join("scatter.png");
        scatter(
            &sc,
            "r vs NC",
            ("NC", "r"),
            &[("V1".into(), vec![(0.1, 0.2), (0.5, 0.4)])],
            true,
        )
        .unwrap();
        let lines = dir.path().join("lines.png");
        line_chart(
            &lines,
            "loss per epoch",
            ("epoch", "loss"),
            &[
                ("train".into(), vec![(1.0, 2.0), (2.0, 1.5), (3.0, 1.2)]),
                (
                    "validation".into(),
                    vec![(1.0, 2.2), (2.0, f64::NAN), (3.0, 1.4)],
                ),
            ],
        )
        .unwrap();
        for p in [bars, sc, lines] {
            let img = image::open(&p).unwrap().to_rgb8();
            // Some pixels are neither white nor the bar colours: text and axes drew.
            let dark = img
                .pixels()
                .filter(|px| px.0.iter().all(|&c| c < 60))
                .count();
            assert!(dark > 200, "{}: only {dark} dark pixels", p.display());
        }
    }
}
