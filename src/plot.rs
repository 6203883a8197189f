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
    register_font();
    let err = |e: String| Error::File { path: path.display().to_string(), msg: format!("cannot plot: {e}") };
    let mut buf = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let (x0, x1) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (y0, y1) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let pad = ((y1 - y0) * 0.05).max(1e-9);
        let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(|e| err(e.to_string()))?;
        chart.configure_mesh().x_desc(xlabel).y_desc(ylabel).draw().map_err(|e| err(e.to_string()))?;
        chart.draw_series(LineSeries::new(pts.iter().copied(), &BLUE)).map_err(|e| err(e.to_string()))?;
        if pts.len() < 50 {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, BLUE.filled()))).map_err(|e| err(e.to_string()))?;
        }
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

/// Writes loss.png, lr.png, knn.png and z_std.png into the run folder; returns the files written.
pub fn plot_run(run: &Path) -> Result<Vec<PathBuf>> {
    let s = read_metrics(run)?;
    let mut out = Vec::new();
    for (file, title, x, y, pts) in [
        ("loss.png", "SimSiam loss", "step", "loss", &s.loss),
        ("lr.png", "learning rate", "step", "lr", &s.lr),
        ("knn.png", "kNN top-1 (k=200, T=0.1)", "epoch", "accuracy %", &s.knn),
        ("z_std.png", "collapse monitor: std of z/|z|", "epoch", "std", &s.z_std),
    ] {
        if !pts.is_empty() {
            let p = run.join(file);
            draw(&p, title, x, y, pts)?;
            out.push(p);
        }
    }
    Ok(out)
}
