//! The training loop, top to bottom: data -> two augmented views -> method forward (the tape
//! records) -> loss -> backward -> SGD -> monitors (loss, lr, kNN, collapse std) -> checkpoints,
//! metrics.jsonl and plots. Method-agnostic: it only talks to `ssl::Method`.
//!
//! A run in three steps: `train/start.rs` sets it up (or resumes it), `train/epoch.rs` runs the
//! epochs, `Epochs::finish` totals them. `run_log.rs` writes metrics.jsonl and prunes epoch
//! checkpoints; `train/faults.rs` holds the tests' fault-injection hook.

mod epoch;
mod faults;
mod monitor;
mod ranks;
mod resume;
mod start;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::backend::Backend;
use crate::config::Config;
use crate::dist::collective::Group;
use crate::error::Result;

pub use crate::setup::{build_method, load_split};
pub use monitor::knn_monitor;
pub use ranks::{in_process_ranks, train_cuda_worker, train_in_process};

/// What a finished (or interrupted) run reports.
#[derive(Clone, Debug, Default)]
pub struct TrainSummary {
    pub out: PathBuf,
    pub epochs_done: usize,
    pub steps_done: usize,
    /// kNN top-1 of the randomly initialised backbone, measured before training.
    pub knn_init: Option<f64>,
    pub knn_final: Option<f64>,
    pub last_loss: Option<f64>,
    /// Every logged (global step, loss).
    pub losses: Vec<(usize, f64)>,
    pub images_per_s: f64,
    pub skipped_images: usize,
}

/// Runs (or resumes) a training run. `interrupt` is set by the Ctrl-C handler; the loop checks it
/// between steps, saves `last.safetensors` and returns `Error::Interrupted`.
/// An allocation that does not fit the GPU fails with `Error::OutOfMemory` naming the batch size
/// (exit code 4); nothing is written for the step that failed.
pub fn train<B: Backend>(b: &B, cfg: &Config, resume: Option<&Path>, interrupt: &AtomicBool, show_progress: bool) -> Result<TrainSummary> {
    train_with(b, cfg, &StartOptions { resume, ..StartOptions::default() }, interrupt, show_progress)
}

/// How a run meets its folder and a checkpoint.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartOptions<'a> {
    /// Continue from this checkpoint.
    pub resume: Option<&'a Path>,
    /// A fresh run into a folder that holds a run moves that run aside first (`<out>.replaced-N`);
    /// without it such a folder is refused.
    pub overwrite: bool,
    /// A resume may change the schedule, the data or `out` (the differences are printed).
    pub allow_changes: bool,
}

/// `train` with every start option.
pub fn train_with<B: Backend>(b: &B, cfg: &Config, start: &StartOptions, interrupt: &AtomicBool, show_progress: bool) -> Result<TrainSummary> {
    train_rank(b, cfg, start, interrupt, show_progress, None)
}

/// `train_with` as one rank of a data-parallel run (`group`: its collective; None: the only
/// rank). Every rank runs this same loop on its share of each global batch; rank 0 writes the
/// run's files and the others write nothing.
pub fn train_rank<B: Backend>(b: &B, cfg: &Config, start: &StartOptions, interrupt: &AtomicBool, show_progress: bool, group: Option<Group<B>>) -> Result<TrainSummary> {
    train_run(b, cfg, start, interrupt, show_progress, group)
        .map_err(|e| e.oom_context(|| format!(" at batch_size {} (image_size {})", cfg.batch_size, cfg.data.image_size)))
}

/// Setup (or resume), the epochs, the summary.
fn train_run<B: Backend>(b: &B, cfg: &Config, start: &StartOptions, interrupt: &AtomicBool, show_progress: bool, group: Option<Group<B>>) -> Result<TrainSummary> {
    let mut run = start::Run::start(b, cfg, start, show_progress, group)?;
    let views = run.method.views(&cfg.augment, cfg.data.image_size);
    let mut epochs = epoch::Epochs::new(&run, views)?;
    while run.state.epoch < cfg.epochs {
        if epochs.run_epoch(&mut run, interrupt)? {
            break;
        }
    }
    // Training is over: the pictures are rank 0's alone, drawn without the group.
    run.ps.set_replicas(None);
    if run.writes() {
        draw_pictures(&run);
    }
    Ok(epochs.finish(run))
}

/// The method's pictures (MAE's reconstructions) of the first 8 held-out images (the test set,
/// else the training set), as evaluation sees them. A failure is a warning: the weights are saved.
fn draw_pictures<B: Backend>(run: &start::Run<B>) {
    let cfg = run.cfg;
    let data = run.test_set.as_ref().unwrap_or(&run.train_set);
    let (mean, std) = (cfg.augment.mean, cfg.augment.std);
    let drawn = (|| -> Result<Vec<PathBuf>> {
        let Some(first) = crate::data::eval_batches(data, cfg.data.image_size, 8, mean, std).next() else { return Ok(Vec::new()) };
        let (x, labels) = first?;
        let s = cfg.data.image_size;
        let images = crate::tensor::Tensor::from_f32(run.b, &x, &[labels.len(), s, s, 3], crate::tensor::DType::F32)?;
        run.method.pictures(&run.ps, &images, mean, std, &cfg.out)
    })();
    match drawn {
        Ok(files) => files.iter().for_each(|f| start::say(run.show, format!("wrote {}", f.display()))),
        Err(e) => eprintln!("warning: the method's pictures were not drawn: {e}"),
    }
}
