//! The comparison a newcomer looks for at the end of a run: kNN and linear-probe top-1 of the
//! randomly initialised backbone next to the pretrained one, with the wall time. The pretrained
//! numbers are read back from the final checkpoint on disk (not from the weights in memory), so
//! the table describes the file the user keeps. Printed, and written as `<out>/summary.md`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::backbone::{LoadedBackbone, load, load_backbone, random_backbone};
use super::protocols::{eval_knn, eval_linear};
use crate::backend::Backend;
use crate::checkpoint::write_atomic;
use crate::config::Config;
use crate::data::Split;
use crate::error::{Error, Result};

/// One row of the table: top-1 accuracies in [0, 1].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub knn: f64,
    pub linear: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub random: Row,
    pub pretrained: Row,
    pub checkpoint: PathBuf,
    pub method: String,
    pub epochs: usize,
    pub train_images: usize,
    pub test_images: usize,
    /// The whole command, from start to the end of the evaluation.
    pub wall_s: f64,
}

fn evaluate<B: Backend>(m: &LoadedBackbone<B>, cfg: &Config, train: &crate::data::Dataset, test: &crate::data::Dataset) -> Result<Row> {
    let knn = eval_knn(m, train, test, cfg)?.top1;
    let linear = eval_linear(m, train, test, cfg, &cfg.linear, None, |_, _| {})?.metrics.top1;
    Ok(Row { knn, linear })
}

/// Evaluates a fresh random-init backbone of the recipe (same seed as training) and the
/// backbone in `checkpoint`; `wall_s` is filled in by the caller's clock.
pub fn compare_with_random<B: Backend>(b: &B, cfg: &Config, checkpoint: &Path, started: std::time::Instant) -> Result<RunReport> {
    let test_path = cfg
        .data
        .test_path
        .as_ref()
        .ok_or_else(|| Error::Config("report.compare_random needs data.test_path (the images the table is measured on)".into()))?;
    let train = load(&cfg.data.path, Split::Train, cfg)?;
    let test = load(test_path, Split::Test, cfg)?;
    eprintln!("summary: kNN and linear probe of the random-init and the pretrained backbone ({} test images)", test.len());
    let random = evaluate(&random_backbone(b, cfg)?, cfg, &train, &test)?;
    let pretrained = evaluate(&load_backbone(b, checkpoint, None, cfg.data.image_size)?, cfg, &train, &test)?;
    Ok(RunReport {
        random,
        pretrained,
        checkpoint: checkpoint.to_path_buf(),
        method: cfg.method.clone(),
        epochs: cfg.epochs,
        train_images: train.len(),
        test_images: test.len(),
        wall_s: started.elapsed().as_secs_f64(),
    })
}

fn minutes(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 60 { format!("{} min {:02} s", s / 60, s % 60) } else { format!("{s} s") }
}

impl RunReport {
    /// The table as Markdown; `tests/demo_summary.rs` parses exactly this layout.
    pub fn markdown(&self) -> String {
        let pct = |v: f64| format!("{:.2}%", v * 100.0);
        let gain = |a: f64, b: f64| format!("{:+.2}", (b - a) * 100.0);
        let (r, p) = (&self.random, &self.pretrained);
        format!(
            "| backbone | kNN top-1 | linear probe top-1 |\n\
             |---|---:|---:|\n\
             | random init | {} | {} |\n\
             | pretrained ({}, {} epochs) | {} | {} |\n\
             | gain (points) | {} | {} |\n\
             \n\
             Wall time {}. {} training images, {} test images; pretrained = {}.\n",
            pct(r.knn),
            pct(r.linear),
            self.method,
            self.epochs,
            pct(p.knn),
            pct(p.linear),
            gain(r.knn, p.knn),
            gain(r.linear, p.linear),
            minutes(self.wall_s),
            self.train_images,
            self.test_images,
            self.checkpoint.display()
        )
    }

    /// Writes summary.md (atomically) into `out`, and the numbers as a `"report"` row of
    /// metrics.jsonl and `report/...` TensorBoard scalars (`run_log::append_row`); returns the
    /// summary's path.
    pub fn write(&self, out: &Path) -> Result<PathBuf> {
        let path = out.join("summary.md");
        write_atomic(&path, self.markdown().as_bytes())?;
        crate::run_log::append_row(out, self.row())?;
        Ok(path)
    }

    /// The `"report"` row: the accuracies as fractions in [0, 1], like the other rows', and
    /// `epoch` (the run's epochs), the step its scalars are drawn at.
    pub fn row(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "report",
            "epoch": self.epochs,
            "random_knn_top1": self.random.knn,
            "random_linear_top1": self.random.linear,
            "pretrained_knn_top1": self.pretrained.knn,
            "pretrained_linear_top1": self.pretrained.linear,
        })
    }
}
