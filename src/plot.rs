//! PNG plots of a run's metrics.jsonl: loss and learning rate per step, kNN top-1 and the
//! collapse monitor (z-std) per epoch. Written by `train` after every epoch and by
//! `ssl-engine plot <run>`. Text uses the bundled DejaVu Sans, so no system fonts are needed.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{Error, Result};

static FONT: Once = Once::new();
const W: u32 = 800;
const H: u32 = 500;

fn register_font() {
    FONT.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, include_bytes!("../assets/fonts/DejaVuSans.ttf"));
    });
}

/// The series of one run, read from metrics.jsonl.
#[derive(Default, Debug)]
pub struct Series {
    pub loss: Vec<(f64, f64)>,
    pub lr: Vec<(f64, f64)>,
    pub knn: Vec<(f64, f64)>,
    pub z_std: Vec<(f64, f64)>,
}

pub fn read_metrics(run: &Path) -> Result<Series> {
    let path = run.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&path).map_err(|e| Error::File { path: path.display().to_string(), msg: format!("cannot read: {e}") })?;
    let mut s = Series::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let num = |k: &str| v.get(k).and_then(|x| x.as_f64());
        match v.get("type").and_then(|t| t.as_str()) {
            Some("step") => {
                if let (Some(g), Some(l)) = (num("global_step"), num("loss")) {
                    s.loss.push((g, l));
                }
                if let (Some(g), Some(l)) = (num("global_step"), num("lr")) {
                    s.lr.push((g, l));
                }
            }
            Some("epoch") | Some("knn") => {
                if let (Some(e), Some(k)) = (num("epoch"), num("knn_top1")) {
                    s.knn.push((e, 100.0 * k));
                }
                if let (Some(e), Some(z)) = (num("epoch"), num("z_std")) {
                    s.z_std.push((e, z));
                }
            }
            _ => {}
        }
    }
    Ok(s)
}

fn draw(path: &Path, title: &str, xlabel: &str, ylabel: &str, pts: &[(f64, f64)]) -> Result<()> {
    draw_lines(path, title, xlabel, ylabel, &[(String::new(), pts.to_vec())])
}

/// Draws into a W x H bitmap and saves it as PNG atomically (temp file, then rename).
fn render(path: &Path, paint: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> std::result::Result<(), String>) -> Result<()> {
    register_font();
    let err = |e: String| Error::File { path: path.display().to_string(), msg: format!("cannot plot: {e}") };
    let mut buf = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        paint(&root).map_err(err)?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    let tmp = path.with_extension("png.tmp");
    let saved = image::save_buffer_with_format(&tmp, &buf, W, H, image::ColorType::Rgb8, image::ImageFormat::Png)
        .map_err(|e| err(e.to_string()))
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| err(e.to_string())));
    if saved.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    saved
}

/// One colour per series, cycling.
fn colour(i: usize) -> RGBColor {
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

/// Line chart of named series (a legend when any has a name); an empty series is skipped.
pub fn draw_lines(path: &Path, title: &str, xlabel: &str, ylabel: &str, series: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    let all: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    render(path, |root| {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let (x0, x1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (y0, y1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let (x0, y0, y1) = if all.is_empty() { (0.0, 0.0, 1.0) } else { (x0, y0, y1) };
        let pad = ((y1 - y0) * 0.05).max(1e-9);
        let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(|x| e(&x))?;
        chart.configure_mesh().x_desc(xlabel).y_desc(ylabel).draw().map_err(|x| e(&x))?;
        for (i, (name, pts)) in series.iter().enumerate().filter(|(_, (_, p))| !p.is_empty()) {
            let c = colour(i);
            let drawn = chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2))).map_err(|x| e(&x))?;
            if !name.is_empty() {
                drawn.label(name.as_str()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
            }
            if pts.len() < 50 {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(|x| e(&x))?;
            }
        }
        if series.iter().any(|(n, _)| !n.is_empty()) {
            chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|x| e(&x))?;
        }
        Ok(())
    })
}

/// Grouped bar chart: one group per entry of `groups`, one bar per named series (values in
/// the series' order of groups; NaN leaves a gap).
pub fn draw_bars(path: &Path, title: &str, ylabel: &str, groups: &[String], series: &[(String, Vec<f64>)]) -> Result<()> {
    render(path, |root| {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let top = series.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| v.is_finite()).fold(0.0f64, f64::max);
        let n = series.len().max(1) as f64;
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            // Headroom above the tallest bar for the legend.
            .build_cartesian_2d(0.0..groups.len().max(1) as f64, 0.0..(top * 1.35).max(1e-9))
            .map_err(|x| e(&x))?;
        let names = groups.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups.len().max(1) * 2 + 1)
            .x_label_formatter(&move |x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 1e-6 { names.get(i).cloned().unwrap_or_default() } else { String::new() }
            })
            .y_desc(ylabel)
            .draw()
            .map_err(|x| e(&x))?;
        for (si, (name, vals)) in series.iter().enumerate() {
            let c = colour(si);
            let bars = vals.iter().enumerate().filter(|(_, v)| v.is_finite()).map(move |(g, &v)| {
                let x0 = g as f64 + 0.1 + 0.8 * si as f64 / n;
                Rectangle::new([(x0, 0.0), (x0 + 0.8 / n, v)], c.filled())
            });
            chart
                .draw_series(bars)
                .map_err(|x| e(&x))?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], c.filled()));
        }
        chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|x| e(&x))?;
        Ok(())
    })
}

/// The titles of loss.png, lr.png, knn.png and z_std.png, naming the run's method and kNN
/// settings as its `config.toml` records them (a run folder from before it existed: none).
pub fn titles(run: &Path) -> [String; 4] {
    let recipe = std::fs::read_to_string(run.join("config.toml")).ok().and_then(|t| crate::config::Config::from_stored(&t).ok());
    match recipe {
        Some(c) => [
            format!("{} loss ({}, {})", c.method, c.model, run.display()),
            format!("learning rate ({})", c.method),
            format!("kNN top-1 (k={}, T={}), {}", c.monitor.knn_k, c.monitor.knn_t, c.method),
            format!("collapse monitor: std of z/|z| ({})", c.method),
        ],
        None => ["loss".into(), "learning rate".into(), "kNN top-1".into(), "collapse monitor: std of z/|z|".into()],
    }
}

/// Writes loss.png, lr.png, knn.png and z_std.png into the run folder; returns the files written.
pub fn plot_run(run: &Path) -> Result<Vec<PathBuf>> {
    let s = read_metrics(run)?;
    let [t_loss, t_lr, t_knn, t_z] = titles(run);
    let mut out = Vec::new();
    for (file, title, x, y, pts) in [
        ("loss.png", t_loss, "step", "loss", &s.loss),
        ("lr.png", t_lr, "step", "lr", &s.lr),
        ("knn.png", t_knn, "epoch", "accuracy %", &s.knn),
        ("z_std.png", t_z, "epoch", "std", &s.z_std),
    ] {
        if !pts.is_empty() {
            let p = run.join(file);
            draw(&p, &title, x, y, pts)?;
            out.push(p);
        }
    }
    Ok(out)
}
