//! The training loop, top to bottom: data -> two augmented views -> method forward (the tape
//! records) -> loss -> backward -> SGD -> monitors (loss, lr, kNN, collapse std) -> checkpoints,
//! metrics.jsonl and plots. Method-agnostic: it only talks to `ssl::Method`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::json;

use crate::autograd::Var;
use crate::backend::Backend;
use crate::checkpoint::{TrainState, WeightFile, save_checkpoint};
use crate::config::Config;
use crate::data::{AugmentConfig, Dataset, LoadOptions, Loader, OnCorrupt, Split, load_dataset};
use crate::error::{Error, Result};
use crate::eval::{features, knn};
use crate::nn::{Ctx, Kind, ParamId, ParamStore};
use crate::optim::{self, Optimizer, StepGraph, schedule::warmup_cosine};
use crate::ssl::{LrPolicy, Method, StepInfo, normalized_std};
use crate::tensor::{DType, Tensor};

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

pub fn augment_config(cfg: &Config) -> AugmentConfig {
    let a = &cfg.augment;
    AugmentConfig {
        crop_scale: (a.crop_scale[0], a.crop_scale[1]),
        crop_ratio: (a.crop_ratio[0], a.crop_ratio[1]),
        flip_p: a.flip_p,
        jitter: a.jitter,
        jitter_p: a.jitter_p,
        gray_p: a.gray_p,
        blur_p: a.blur_p,
        blur_sigma: (a.blur_sigma[0], a.blur_sigma[1]),
        solarize_p: a.solarize_p,
        mean: a.mean,
        std: a.std,
    }
}

/// Loads one split of a dataset as the config asks (size, corrupt-image policy, limits).
pub fn load_split(path: &Path, split: Split, cfg: &Config) -> Result<Dataset> {
    let opts = LoadOptions {
        size: cfg.data.image_size,
        split,
        on_corrupt: if cfg.data.on_corrupt == "fail" { OnCorrupt::Fail } else { OnCorrupt::Skip },
        limit_per_class: cfg.data.limit_per_class,
        max_pixels: cfg.data.max_pixels,
        stored_size: !cfg.data.resize_on_load,
        max_side: cfg.data.max_side,
        stream: cfg.data.cache == "none",
    };
    load_dataset(path, &opts)
}

/// Builds the method (and with it the backbone) in a fresh parameter store.
pub fn build_method<B: Backend>(b: &B, cfg: &Config) -> Result<(ParamStore<B>, Box<dyn Method<B>>)> {
    let mut ps = ParamStore::new(b, DType::F32, cfg.seed);
    let backbone = cfg.backbone()?;
    let method = crate::ssl::build(cfg, &mut ps, &backbone)?;
    Ok((ps, method))
}

/// kNN top-1 of the current backbone: train set as the bank, test set as queries.
pub fn knn_monitor<B: Backend>(
    method: &dyn Method<B>,
    ps: &ParamStore<B>,
    train: &Dataset,
    test: &Dataset,
    cfg: &Config,
    show: bool,
) -> Result<f64> {
    let s = cfg.data.image_size;
    let (mean, std) = (cfg.augment.mean, cfg.augment.std);
    let dim = method.backbone().feature_dim();
    let mut bank = features::extract(method.backbone(), ps, train, s, mean, std, cfg.batch_size, "kNN monitor: bank", show)?;
    let mut queries = features::extract(method.backbone(), ps, test, s, mean, std, cfg.batch_size, "kNN monitor: queries", show)?;
    knn::l2_normalize(&mut bank, dim);
    knn::l2_normalize(&mut queries, dim);
    let classes = train.classes.len().max(test.classes.len());
    knn::knn_accuracy(ps.backend(), &bank, &train.labels, &queries, &test.labels, dim, classes, cfg.monitor.knn_k, cfg.monitor.knn_t)
}

/// Appends JSON lines to <out>/metrics.jsonl, flushing each one.
struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    fn open(out: &Path) -> Result<Self> {
        let path = out.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::File { path: path.display().to_string(), msg: format!("cannot open: {e}") })?;
        Ok(MetricsLog { file, path })
    }
    fn write(&mut self, v: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}")
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::File { path: self.path.display().to_string(), msg: format!("cannot write: {e}") })
    }
}

/// Names the first parameter holding a non-finite value, for the NaN message.
fn first_non_finite<B: Backend>(ps: &ParamStore<B>) -> Option<String> {
    ps.entries().iter().find(|e| e.value.to_f32().map(|v| v.iter().any(|x| !x.is_finite())).unwrap_or(false)).map(|e| e.name.clone())
}

/// Turns a stop request into a saved state: `Error::Interrupted` becomes "state saved to
/// <out>/last.safetensors" after saving the last completed step; any other error passes through.
fn save_on_interrupt<B: Backend>(
    e: Error,
    cfg: &Config,
    ps: &ParamStore<B>,
    opt: &dyn Optimizer<B>,
    method: &dyn Method<B>,
    state: &TrainState,
) -> Error {
    let Error::Interrupted(what) = e else { return e };
    let path = cfg.out.join("last.safetensors");
    match method.state().and_then(|ms| save_checkpoint(&path, ps, opt, &ms, state)) {
        Ok(()) => Error::Interrupted(format!(
            "state saved to {} at epoch {}, step {} (stopped {what})",
            path.display(),
            state.epoch,
            state.step_in_epoch
        )),
        Err(se) => se,
    }
}

/// A resume must continue the same run: the settings that change what a step computes or how
/// the data is cut into steps may not differ from the checkpoint's.
fn check_resume_compatible(path: &Path, saved: &TrainState, cfg: &Config) -> Result<()> {
    let differ = |key: &str, was: String, now: String| {
        Err(Error::Config(format!(
            "--resume {}: the checkpoint was trained with {key} = {was}, this run asks for {now}; resume with the same {key}, or start a new run",
            path.display()
        )))
    };
    if saved.method != cfg.method {
        return differ("method", format!("{:?}", saved.method), format!("{:?}", cfg.method));
    }
    // Checkpoints written before the config was stored carry an empty string: nothing to check.
    if saved.config.trim().is_empty() {
        return Ok(());
    }
    let Ok(old) = Config::deserialize(toml::Value::Table(toml::from_str::<toml::Table>(&saved.config).unwrap_or_default())) else {
        return Ok(());
    };
    let settings = [
        ("model", format!("{:?}", old.model), format!("{:?}", cfg.model)),
        ("batch_size", old.batch_size.to_string(), cfg.batch_size.to_string()),
        ("backend", format!("{:?}", old.backend), format!("{:?}", cfg.backend)),
        ("data.image_size", old.data.image_size.to_string(), cfg.data.image_size.to_string()),
    ];
    match settings.into_iter().find(|(_, was, now)| was != now) {
        Some((key, was, now)) => differ(key, was, now),
        None => Ok(()),
    }
}

/// Every buffer (the batch-norm running statistics) as (id, values, PyTorch shape).
type BufferSnapshot = Vec<(ParamId, Vec<f32>, Vec<usize>)>;

/// The batch-norm running statistics (every buffer), to restore after a skipped step.
fn buffer_snapshot<B: Backend>(ps: &ParamStore<B>) -> Result<BufferSnapshot> {
    ps.ids().filter(|&id| ps.entry(id).kind == Kind::Buffer).map(|id| ps.to_torch(id).map(|(v, s)| (id, v, s))).collect()
}

fn buffer_restore<B: Backend>(ps: &mut ParamStore<B>, snap: &BufferSnapshot) -> Result<()> {
    for (id, v, s) in snap {
        ps.set_from_torch(*id, v, s)?;
    }
    Ok(())
}

/// Epoch checkpoints kept on disk: deletes the oldest beyond `keep`, after the new one is written.
fn prune_checkpoints(out: &Path, keep: usize) {
    let Ok(rd) = std::fs::read_dir(out) else { return };
    let mut eps: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("epoch-") && n.ends_with(".safetensors")))
        .collect();
    eps.sort();
    while eps.len() > keep {
        let _ = std::fs::remove_file(eps.remove(0));
    }
}

/// Runs (or resumes) a training run. `interrupt` is set by the Ctrl-C handler; the loop checks it
/// between steps, saves `last.safetensors` and returns `Error::Interrupted`.
/// An allocation that does not fit the GPU fails with `Error::OutOfMemory` naming the batch size
/// (exit code 4); nothing is written for the step that failed.
pub fn train<B: Backend>(b: &B, cfg: &Config, resume: Option<&Path>, interrupt: &AtomicBool, show_progress: bool) -> Result<TrainSummary> {
    train_run(b, cfg, resume, interrupt, show_progress)
        .map_err(|e| e.oom_context(|| format!(" at batch_size {} (image_size {})", cfg.batch_size, cfg.data.image_size)))
}

fn train_run<B: Backend>(b: &B, cfg: &Config, resume: Option<&Path>, interrupt: &AtomicBool, show_progress: bool) -> Result<TrainSummary> {
    if b.precision() != cfg.precision() {
        return Err(Error::Config(format!(
            "precision {:?} in the config, but the {} backend was built for {:?} (build it with_precision)",
            cfg.precision,
            b.name(),
            b.precision().as_str()
        )));
    }
    std::fs::create_dir_all(&cfg.out)
        .map_err(|e| Error::File { path: cfg.out.display().to_string(), msg: format!("cannot create run folder: {e}") })?;
    crate::checkpoint::remove_stale_temp_files(&cfg.out);
    // A resume is checked before anything is loaded or built: a mismatch is one clear line.
    let resume_from = match resume {
        Some(path) => {
            let wf = WeightFile::read(path)?;
            let saved = wf.state()?;
            check_resume_compatible(path, &saved, cfg)?;
            Some((path, wf, saved))
        }
        None => None,
    };
    let say = |s: String| {
        if show_progress {
            eprintln!("{s}");
        }
    };
    let train_set = Arc::new(load_split(&cfg.data.path, Split::Train, cfg)?);
    if train_set.len() < cfg.batch_size {
        return Err(Error::Config(format!(
            "data.path {}: {} images, fewer than one batch of {}",
            cfg.data.path.display(),
            train_set.len(),
            cfg.batch_size
        )));
    }
    // The kNN monitor votes with the training images' labels: unlabelled ones have none.
    let unlabeled = train_set.classes == [crate::data::stl10::UNLABELED];
    let test_set = match &cfg.data.test_path {
        Some(_) if unlabeled => {
            say("kNN monitor off: the training images are unlabelled (one class, \"unlabeled\")".into());
            None
        }
        Some(p) => Some(load_split(p, Split::Test, cfg)?),
        None => None,
    };
    let skipped = train_set.skipped.len() + test_set.as_ref().map_or(0, |t| t.skipped.len());
    say(format!(
        "data: {} training images, {} classes{}{}",
        train_set.len(),
        train_set.classes.len(),
        test_set.as_ref().map(|t| format!(", {} test images", t.len())).unwrap_or_default(),
        if skipped > 0 { format!(" ({skipped} unreadable images skipped)") } else { String::new() }
    ));

    let (mut ps, mut method) = build_method(b, cfg)?;
    let mut opt = optim::build::<B>(cfg.optim.optimizer, cfg.optim.momentum, &cfg.optim.lars);
    let mut state = TrainState { epoch: 0, step_in_epoch: 0, global_step: 0, method: cfg.method.clone(), config: cfg.to_toml() };
    let mut log = MetricsLog::open(&cfg.out)?;
    let mut summary = TrainSummary { out: cfg.out.clone(), skipped_images: skipped, ..Default::default() };
    if let Some((path, wf, saved)) = resume_from {
        wf.load_into(&mut ps, "", "")?;
        wf.load_optimizer_state(&ps, opt.as_mut())?;
        method.load_state(&wf.method_state(b)?)?;
        state = TrainState { config: cfg.to_toml(), ..saved };
        say(format!("resumed from {} at epoch {}, step {}", path.display(), state.epoch, state.step_in_epoch));
        log.write(json!({"type": "resume", "from": path.display().to_string(), "epoch": state.epoch, "global_step": state.global_step}))?;
    }
    say(format!("model: {} ({} parameters), method {}, backend {}, precision {}", cfg.model, ps.num_params(), cfg.method, b.name(), cfg.precision));

    if state.global_step == 0
        && let Some(test) = &test_set
    {
        let acc = knn_monitor(method.as_ref(), &ps, &train_set, test, cfg, show_progress)
            .map_err(|e| save_on_interrupt(e, cfg, &ps, opt.as_ref(), method.as_ref(), &state))?;
        say(format!("kNN top-1 of the randomly initialised backbone: {:.2}%", acc * 100.0));
        summary.knn_init = Some(acc);
        log.write(json!({"type": "knn", "epoch": 0, "knn_top1": acc, "init": true}))?;
    }

    let views = method.views(&augment_config(cfg), cfg.data.image_size);
    let workers = if cfg.data.workers == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { cfg.data.workers };
    let loader = Loader::with_views(train_set.clone(), views, cfg.batch_size, cfg.seed, workers, cfg.data.prefetch)?;
    let per_epoch = loader.batches_per_epoch();
    let total_steps = cfg.epochs * per_epoch;
    let warmup = cfg.optim.warmup_epochs * per_epoch;
    let peak = cfg.peak_lr();
    let policies: Vec<LrPolicy> = ps.ids().map(|id| method.lr_policy(&ps, id)).collect();
    let started = Instant::now();
    let mut images = 0usize;

    let bar = if show_progress { ProgressBar::new(total_steps as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_position(state.global_step as u64);
    let nan_hook: Option<usize> = std::env::var("SSL_ENGINE_TEST_NAN_AT_STEP").ok().and_then(|v| v.parse().ok());
    let mut skipped_steps = 0usize;
    // Forward and backward replayed as one graph where the backend has graphs (CUDA) and the
    // method's forward depends on nothing but its inputs and parameters.
    // Not with skip_nonfinite: a skipped step restores batch-norm buffers the graph would
    // already have updated.
    let mut graph = if cfg.cuda_graph && method.graph_safe() && cfg.skip_nonfinite == 0 {
        StepGraph::new(b, true)
    } else {
        StepGraph::disabled(b, true)
    };
    let mut graph_said = std::collections::HashSet::new();

    while state.epoch < cfg.epochs {
        let epoch = state.epoch;
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, cfg.epochs));
        let mut epoch_losses = Vec::new();
        let mut last_z: Option<Tensor<B>> = None;
        for batch in loader.epoch(epoch, state.step_in_epoch) {
            // A streaming dataset's file that no longer decodes stops the run; the last
            // checkpoint stays as it was.
            let batch = batch?;
            if interrupt.load(Ordering::SeqCst) || crate::interrupt::requested() {
                bar.abandon();
                return Err(save_on_interrupt(Error::Interrupted("between steps".into()), cfg, &ps, opt.as_ref(), method.as_ref(), &state));
            }
            if cfg.max_steps.is_some_and(|m| state.global_step >= m) {
                break;
            }
            let lr = warmup_cosine(peak, state.global_step, total_steps, warmup);
            let mut views = batch.views;
            // Test hook: a NaN pixel in this step's batch, as a corrupt input would bring.
            if nan_hook == Some(state.global_step)
                && let Some(v) = views.first_mut().and_then(|v| v.first_mut())
            {
                *v = f32::NAN;
            }
            // The step's inputs: the views, then the labels (the step graph copies them into
            // the buffers it reads).
            let mut inputs: Vec<Tensor<B>> = views
                .iter()
                .zip(loader.views())
                .map(|(v, spec)| Tensor::from_f32(b, v, &[batch.labels.len(), spec.size, spec.size, 3], DType::F32))
                .collect::<Result<_>>()?;
            let labels: Vec<f32> = batch.labels.iter().map(|&l| l as f32).collect();
            inputs.push(Tensor::from_f32(b, &labels, &[labels.len()], DType::F32)?);
            // Batch-norm statistics move in the forward pass: keep them, to undo a skipped step.
            let stats = if cfg.skip_nonfinite > 0 { Some(buffer_snapshot(&ps)?) } else { None };
            let info = StepInfo { step: state.global_step, total_steps, epoch, steps_per_epoch: per_epoch };
            method.begin_step(&info)?;
            let hyper = |id: ParamId| {
                let l = if policies[id.0] == LrPolicy::Fixed { peak } else { lr };
                (l as f32, cfg.optim.weight_decay)
            };
            let forward = |cx: &Ctx<B>, inputs: &[Tensor<B>]| {
                // Stochastic depth and dropout draw from (seed, step): a resumed run redraws them.
                cx.seed_noise(crate::rng::Rng::new(cfg.seed).stream("forward noise").derive(&[info.step as u64]));
                let (labels, views) = inputs.split_last().expect("views and labels");
                let xs: Vec<Var<B>> = views.iter().cloned().map(Var::constant).collect();
                let out = method.forward(cx, &xs, Some(labels))?;
                Ok((out.loss, out.embedding))
            };
            // Every step's loss and gradients are checked before anything is updated: a NaN can
            // hide from the loss (a max() or an epsilon clamp swallows it) but not from a sum.
            let mut non_finite: Option<String> = None;
            let check = |c: optim::Checked, pg: &mut Vec<(ParamId, Tensor<B>)>| -> Result<bool> {
                let loss = c.loss;
                if loss.is_finite() && c.grads_finite != Some(false) {
                    method.before_update(&info, pg)?;
                    return Ok(true);
                }
                let first_grad = || {
                    pg.iter()
                        .find(|(_, g)| g.to_f32().map(|v| v.iter().any(|x| !x.is_finite())).unwrap_or(false))
                        .map(|(id, _)| format!("the gradient of {}", ps.entry(*id).name))
                };
                non_finite = Some(match first_non_finite(&ps).or_else(first_grad) {
                    Some(t) => format!("loss or gradient (loss {loss}); first non-finite tensor: {t}"),
                    None => format!("loss ({loss})"),
                });
                Ok(false)
            };
            let stepped = graph.step(&ps, opt.as_mut(), &hyper, inputs, forward, check)?;
            for e in graph.events.drain(..) {
                if graph_said.insert(e.clone()) {
                    bar.suspend(|| eprintln!("cuda graph: {e}"));
                }
                log.write(json!({"type": "cuda_graph", "global_step": state.global_step, "event": e}))?;
            }
            let loss = stepped.loss;
            if let Some(what) = non_finite {
                if skipped_steps < cfg.skip_nonfinite {
                    skipped_steps += 1;
                    if let Some(st) = &stats {
                        buffer_restore(&mut ps, st)?;
                    }
                    bar.suspend(|| {
                        eprintln!(
                            "warning: non-finite {what} at epoch {epoch}, step {}: step skipped ({skipped_steps} of at most {})",
                            state.step_in_epoch, cfg.skip_nonfinite
                        )
                    });
                    log.write(json!({"type": "skipped", "epoch": epoch, "step": state.step_in_epoch, "global_step": state.global_step, "loss": loss.to_string()}))?;
                    state.global_step += 1;
                    state.step_in_epoch += 1;
                    continue;
                }
                bar.abandon();
                return Err(Error::NonFinite { what, epoch, step: state.step_in_epoch });
            }
            method.after_step(&mut ps, &info)?;
            images += batch.labels.len();
            state.global_step += 1;
            state.step_in_epoch += 1;
            let logging = state.global_step.is_multiple_of(cfg.monitor.log_every) || state.step_in_epoch == per_epoch;
            if logging {
                let ips = images as f64 / started.elapsed().as_secs_f64();
                epoch_losses.push(loss);
                summary.losses.push((state.global_step, loss));
                bar.set_message(format!("loss {loss:.4} lr {lr:.4} {ips:.0} img/s"));
                log.write(json!({"type": "step", "epoch": epoch, "step": state.step_in_epoch, "global_step": state.global_step, "loss": loss, "lr": lr, "img_per_s": ips}))?;
                last_z = stepped.out;
            }
            bar.set_position(state.global_step as u64);
        }
        let finished_epoch = state.step_in_epoch >= per_epoch;
        if finished_epoch {
            state.epoch += 1;
            state.step_in_epoch = 0;
        }
        // Epoch-end monitors.
        let z_std = match &last_z {
            Some(z) => Some(normalized_std(&z.to_f32()?, z.shape()[0], z.shape()[1])),
            None => None,
        };
        let knn_due = finished_epoch
            && test_set.is_some()
            && ((cfg.monitor.knn_every > 0 && state.epoch.is_multiple_of(cfg.monitor.knn_every)) || state.epoch == cfg.epochs);
        let mut knn_acc = None;
        if knn_due && let Some(test) = &test_set {
            let acc = knn_monitor(method.as_ref(), &ps, &train_set, test, cfg, show_progress)
                .map_err(|e| save_on_interrupt(e, cfg, &ps, opt.as_ref(), method.as_ref(), &state))?;
            knn_acc = Some(acc);
            summary.knn_final = Some(acc);
        }
        let mean_loss = if epoch_losses.is_empty() { None } else { Some(epoch_losses.iter().sum::<f64>() / epoch_losses.len() as f64) };
        summary.last_loss = mean_loss.or(summary.last_loss);
        log.write(json!({"type": "epoch", "epoch": epoch + 1, "loss": mean_loss, "z_std": z_std, "knn_top1": knn_acc,
            "lr": warmup_cosine(peak, state.global_step.saturating_sub(1), total_steps, warmup), "elapsed_s": started.elapsed().as_secs_f64()}))?;
        if show_progress {
            bar.suspend(|| {
                eprintln!(
                    "epoch {}/{}: loss {} z-std {} {}",
                    epoch + 1,
                    cfg.epochs,
                    mean_loss.map(|l| format!("{l:.4}")).unwrap_or("-".into()),
                    z_std.map(|v| format!("{v:.4}")).unwrap_or("-".into()),
                    knn_acc.map(|a| format!("kNN top-1 {:.2}%", a * 100.0)).unwrap_or_default()
                )
            });
        }
        let stop = cfg.max_steps.is_some_and(|m| state.global_step >= m);
        // Saving also checks every tensor: a finite loss can hide overflowed BN statistics.
        save_checkpoint(&cfg.out.join("last.safetensors"), &ps, opt.as_ref(), &method.state()?, &state)?;
        if finished_epoch && cfg.checkpoint.every > 0 && state.epoch.is_multiple_of(cfg.checkpoint.every) {
            save_checkpoint(&cfg.out.join(format!("epoch-{:04}.safetensors", state.epoch)), &ps, opt.as_ref(), &method.state()?, &state)?;
            prune_checkpoints(&cfg.out, cfg.checkpoint.keep);
        }
        let _ = crate::plot::plot_run(&cfg.out);
        if stop {
            break;
        }
    }
    bar.finish_and_clear();
    summary.epochs_done = state.epoch;
    summary.steps_done = state.global_step;
    summary.images_per_s = images as f64 / started.elapsed().as_secs_f64().max(1e-9);
    Ok(summary)
}
