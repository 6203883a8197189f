//! The study's outputs: `study.md` (seed 000's table: validation and test top-1, test top-5,
//! macro / micro accuracy and AUC), `study.csv` and `study.json` (every cell, both splits),
//! `study_bars.png` (test top-1, grouped by protocol, one bar per starting point) and
//! `study_curves.png` (fine-tuning's training and validation loss per starting point, seed
//! 003's plot).

use std::path::{Path, PathBuf};

use super::{Cell, Protocol};
use crate::checkpoint::write_atomic;
use crate::error::{Error, Result};
use crate::eval::metrics::Metrics;
use crate::plot::{draw_bars, draw_lines};

fn pct(v: f64) -> String {
    if v.is_finite() { format!("{:.2}", 100.0 * v) } else { "-".into() }
}

fn auc(v: f64) -> String {
    if v.is_finite() { format!("{v:.4}") } else { "-".into() }
}

/// The Markdown table, one row per cell in study order.
pub fn markdown(cells: &[Cell]) -> String {
    let mut s = String::from(
        "| starting point | protocol | train images | val top-1 | test top-1 | test top-5 | macro acc | micro acc | macro AUC | micro AUC |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in cells {
        let t = &c.test;
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            c.start,
            c.protocol.label(),
            c.train_images,
            pct(c.val.top1),
            pct(t.top1),
            pct(t.top5),
            pct(t.macro_accuracy),
            pct(t.micro_accuracy),
            auc(t.macro_auc),
            auc(t.micro_auc)
        );
    }
    s
}

fn csv_metrics(m: &Metrics) -> String {
    format!("{},{},{},{},{},{}", m.top1, m.top5, m.macro_accuracy, m.micro_accuracy, m.macro_auc, m.micro_auc)
}

/// One row per cell and split-metric; the starting point quoted (paths may hold commas).
pub fn csv(cells: &[Cell]) -> String {
    let cols = |p: &str| ["top1", "top5", "macro_acc", "micro_acc", "macro_auc", "micro_auc"].map(|c| format!("{p}_{c}")).join(",");
    let mut s = format!("start,protocol,train_images,{},{},seconds\n", cols("val"), cols("test"));
    for c in cells {
        s += &format!(
            "\"{}\",{},{},{},{},{:.1}\n",
            c.start.replace('"', "\"\""),
            c.protocol.key(),
            c.train_images,
            csv_metrics(&c.val),
            csv_metrics(&c.test),
            c.seconds
        );
    }
    s
}

/// Writes the table, CSV, JSON and the two plots into `out`; returns the files.
pub fn write(out: &Path, cells: &[Cell]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut put = |name: &str, text: &str| -> Result<()> {
        let p = out.join(name);
        write_atomic(&p, text.as_bytes())?;
        files.push(p);
        Ok(())
    };
    put("study.md", &markdown(cells))?;
    put("study.csv", &csv(cells))?;
    put("study.json", &serde_json::to_string_pretty(cells).map_err(|e| Error::Other(e.to_string()))?)?;

    let mut starts: Vec<String> = Vec::new();
    let mut protocols: Vec<Protocol> = Vec::new();
    for c in cells {
        if !starts.contains(&c.start) {
            starts.push(c.start.clone());
        }
        if !protocols.contains(&c.protocol) {
            protocols.push(c.protocol.clone());
        }
    }
    let bars: Vec<(String, Vec<f64>)> = starts
        .iter()
        .map(|s| {
            let vals = protocols
                .iter()
                .map(|p| cells.iter().find(|c| &c.start == s && &c.protocol == p).map_or(f64::NAN, |c| 100.0 * c.test.top1))
                .collect();
            (short(s), vals)
        })
        .collect();
    let groups: Vec<String> = protocols.iter().map(|p| p.label()).collect();
    let p = out.join("study_bars.png");
    draw_bars(&p, "test top-1 by starting point and protocol", "top-1 %", &groups, &bars)?;
    files.push(p);

    let mut curves = Vec::new();
    for c in cells.iter().filter(|c| c.protocol == Protocol::Finetune) {
        let name = short(&c.start);
        curves.push((format!("{name} train"), c.curve.iter().enumerate().map(|(e, l)| (e as f64 + 1.0, l.0)).collect()));
        let val: Vec<(f64, f64)> = c.curve.iter().enumerate().filter_map(|(e, l)| l.1.map(|v| (e as f64 + 1.0, v))).collect();
        curves.push((format!("{name} val"), val));
    }
    if !curves.is_empty() {
        let p = out.join("study_curves.png");
        draw_lines(&p, "fine-tuning: training and validation loss", "epoch", "cross-entropy", &curves)?;
        files.push(p);
    }
    Ok(files)
}

/// A starting point's name for a legend: the file name of a path.
fn short(start: &str) -> String {
    let p = Path::new(start);
    match (p.parent().and_then(|d| d.file_name()), p.file_name()) {
        (Some(dir), Some(f)) => format!("{}/{}", dir.to_string_lossy(), f.to_string_lossy()),
        _ => start.to_string(),
    }
}
