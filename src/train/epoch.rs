//! Step two of a run: the epochs. Each batch goes through the one training step
//! (`optim::StepGraph`), guarded against non-finite values; each epoch ends with the monitors
//! (mean loss, z-std, kNN), metrics.jsonl, checkpoints and plots.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::TrainSummary;
use super::faults::Faults;
use super::monitor::{buffer_restore, buffer_snapshot, first_non_finite};
use super::start::Run;
use crate::autograd::Var;
use crate::backend::Backend;
use crate::checkpoint::save_checkpoint;
use crate::data::{Batch, Loader, ViewSpec};
use crate::error::{Error, Result};
use crate::nn::{Ctx, ParamId};
use crate::optim::{self, StepGraph, schedule::Schedule};
use crate::run_log::prune_checkpoints;
use crate::ssl::{LrPolicy, StepInfo, normalized_std};
use crate::tensor::{DType, Tensor};

/// The loop's plan (loader, schedule, step graph) and its running counters.
pub(super) struct Epochs<B: Backend> {
    loader: Loader,
    per_epoch: usize,
    /// The learning rate and weight decay of each step.
    schedule: Schedule,
    /// Each parameter's learning-rate policy, by parameter id.
    policies: Vec<LrPolicy>,
    /// Per parameter: whether weight decay applies (`Method::decays`).
    decays: Vec<bool>,
    started: Instant,
    images: usize,
    bar: ProgressBar,
    faults: Faults,
    skipped_steps: usize,
    graph: StepGraph<B, Option<Tensor<B>>>,
    /// Step-graph events already printed (each is printed once, logged every time).
    graph_said: HashSet<String>,
}

/// What one epoch gathers for its end-of-epoch line: the logged losses and the last logged
/// embedding (for the collapse monitor).
struct Tally<B: Backend> {
    losses: Vec<f64>,
    last_z: Option<Tensor<B>>,
}

impl<B: Backend> Epochs<B> {
    /// The loader over the method's views, the learning-rate schedule and the step graph.
    pub fn new(run: &Run<B>, views: Vec<ViewSpec>) -> Result<Self> {
        let cfg = run.cfg;
        let workers = if cfg.data.workers == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { cfg.data.workers };
        let mut loader = Loader::with_views(run.train_set.clone(), views, cfg.batch_size, cfg.seed, workers, cfg.data.prefetch)?;
        // Several ranks: each takes its share of every global batch, so the steps are the same
        // for any rank count and a run resumes on another.
        if let Some(r) = run.ps.replicas() {
            loader = loader.shard(r.group.rank(), r.group.world())?;
        }
        let per_epoch = loader.batches_per_epoch();
        let total_steps = cfg.epochs * per_epoch;
        let policies: Vec<LrPolicy> = run.ps.ids().map(|id| run.method.lr_policy(&run.ps, id)).collect();
        let decays: Vec<bool> = run.ps.ids().map(|id| run.method.decays(&run.ps, id)).collect();
        let bar = if run.show { ProgressBar::new(total_steps as u64) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_position(run.state.global_step as u64);
        // Forward and backward replayed as one graph where the backend has graphs (CUDA) and the
        // method's forward depends on nothing but its inputs and parameters.
        // Not with skip_nonfinite: a skipped step restores batch-norm buffers the graph would
        // already have updated.
        let graph = if cfg.step_graph && run.method.graph_safe() && cfg.skip_nonfinite == 0 {
            StepGraph::new(run.b, true)
        } else {
            StepGraph::disabled(run.b, true)
        };
        Ok(Epochs {
            loader,
            per_epoch,
            schedule: cfg.schedule(per_epoch, total_steps),
            policies,
            decays,
            started: Instant::now(),
            images: 0,
            bar,
            faults: Faults::from_env(),
            skipped_steps: 0,
            graph,
            graph_said: HashSet::new(),
        })
    }

    /// One epoch, or what is left of it after a resume or before `max_steps`; then the
    /// epoch-end monitors and checkpoints. Returns whether `max_steps` ends the run here.
    pub fn run_epoch(&mut self, run: &mut Run<B>, interrupt: &AtomicBool) -> Result<bool> {
        let epoch = run.state.epoch;
        self.bar.set_prefix(format!("epoch {}/{}", epoch + 1, run.cfg.epochs));
        let mut tally = Tally { losses: Vec::new(), last_z: None };
        for batch in self.loader.epoch(epoch, run.state.step_in_epoch) {
            // A streaming dataset's file that no longer decodes stops the run; the last
            // checkpoint stays as it was.
            let batch = batch?;
            if stop_requested(run, interrupt)? {
                self.bar.abandon();
                return Err(run.saved_on_interrupt(Error::Interrupted("between steps".into())));
            }
            if run.cfg.max_steps.is_some_and(|m| run.state.global_step >= m) {
                break;
            }
            self.step(run, batch, &mut tally)?;
            self.bar.set_position(run.state.global_step as u64);
        }
        self.end_epoch(run, epoch, tally)
    }

    /// One training step on one batch: skipped (and counted) when its loss or gradients are
    /// not finite and `skip_nonfinite` allows it, else an `Error::NonFinite`.
    fn step(&mut self, run: &mut Run<B>, batch: Batch, tally: &mut Tally<B>) -> Result<()> {
        let (b, cfg, epoch) = (run.b, run.cfg, run.state.epoch);
        let (peak, per_epoch, total_steps) = (self.schedule.peak, self.per_epoch, self.schedule.total);
        let lr = self.schedule.lr(run.state.global_step);
        let weight_decay = self.schedule.weight_decay(run.state.global_step) as f32;
        let mut views = batch.views;
        self.faults.corrupt_views(run.state.global_step, &mut views);
        if let Some(r) = run.ps.replicas() {
            self.faults.rank_fault(r.group.rank(), run.state.global_step)?;
        }
        // The step's inputs: the views, then the labels (the step graph copies them into the
        // buffers it reads).
        let mut inputs: Vec<Tensor<B>> = views
            .iter()
            .zip(self.loader.views())
            .map(|(v, spec)| Tensor::from_f32(b, v, &[batch.labels.len(), spec.size, spec.size, 3], DType::F32))
            .collect::<Result<_>>()?;
        let labels: Vec<f32> = batch.labels.iter().map(|&l| l as f32).collect();
        inputs.push(Tensor::from_f32(b, &labels, &[labels.len()], DType::F32)?);
        // Batch-norm statistics move in the forward pass: keep them, to undo a skipped step.
        let stats = if cfg.skip_nonfinite > 0 { Some(buffer_snapshot(&run.ps)?) } else { None };
        let info = StepInfo { step: run.state.global_step, total_steps, epoch, steps_per_epoch: per_epoch };
        run.method.begin_step(&info)?;
        let (policies, decays) = (&self.policies, &self.decays);
        let hyper = |id: ParamId| {
            let l = if policies[id.0] == LrPolicy::Fixed { peak } else { lr };
            (l as f32, if decays[id.0] { weight_decay } else { 0.0 })
        };
        let (method, ps) = (run.method.as_ref(), &run.ps);
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
            non_finite = Some(match first_non_finite(ps).or_else(first_grad) {
                Some(t) => format!("loss or gradient (loss {loss}); first non-finite tensor: {t}"),
                None => format!("loss ({loss})"),
            });
            Ok(false)
        };
        let stepped = self.graph.step(&run.ps, run.opt.as_mut(), &hyper, inputs, forward, check)?;
        for e in self.graph.events.drain(..) {
            if self.graph_said.insert(e.clone()) && run.show {
                self.bar.suspend(|| eprintln!("cuda graph: {e}"));
            }
            run.log.write(json!({"type": "cuda_graph", "global_step": run.state.global_step, "event": e}))?;
        }
        let loss = stepped.loss;
        let writes = run.writes();
        let state = &mut run.state;
        if let Some(what) = non_finite {
            if self.skipped_steps >= cfg.skip_nonfinite {
                self.bar.abandon();
                return Err(Error::NonFinite { what, epoch, step: state.step_in_epoch });
            }
            self.skipped_steps += 1;
            if let Some(st) = &stats {
                buffer_restore(&mut run.ps, st)?;
            }
            let skipped = self.skipped_steps;
            self.bar.suspend(|| {
                if !writes {
                    return;
                }
                eprintln!(
                    "warning: non-finite {what} at epoch {epoch}, step {}: step skipped ({skipped} of at most {})",
                    state.step_in_epoch, cfg.skip_nonfinite
                )
            });
            run.log.write(json!({"type": "skipped", "epoch": epoch, "step": state.step_in_epoch, "global_step": state.global_step, "loss": loss.to_string()}))?;
            state.global_step += 1;
            state.step_in_epoch += 1;
            return Ok(());
        }
        run.method.after_step(&mut run.ps, &info)?;
        // Images of the global batch (every rank's share), for the rate.
        self.images += batch.labels.len() * run.ps.replicas().map_or(1, |r| r.group.world());
        state.global_step += 1;
        state.step_in_epoch += 1;
        if state.global_step.is_multiple_of(cfg.monitor.log_every) || state.step_in_epoch == per_epoch {
            let ips = self.images as f64 / self.started.elapsed().as_secs_f64();
            tally.losses.push(loss);
            run.summary.losses.push((state.global_step, loss));
            self.bar.set_message(format!("loss {loss:.4} lr {lr:.4} {ips:.0} img/s"));
            let line = json!({"type": "step", "epoch": epoch, "step": state.step_in_epoch, "global_step": state.global_step, "loss": loss, "lr": lr, "img_per_s": ips});
            run.log.write(line)?;
            tally.last_z = stepped.out;
        }
        Ok(())
    }

    /// The epoch-end monitors (mean loss, z-std, kNN when due), the epoch line, `last` and
    /// epoch checkpoints, the plots. Returns whether `max_steps` ends the run here.
    fn end_epoch(&mut self, run: &mut Run<B>, epoch: usize, tally: Tally<B>) -> Result<bool> {
        let cfg = run.cfg;
        let finished_epoch = run.state.step_in_epoch >= self.per_epoch;
        if finished_epoch {
            run.state.epoch += 1;
            run.state.step_in_epoch = 0;
        }
        let z_std = match &tally.last_z {
            Some(z) => Some(normalized_std(&z.to_f32()?, z.shape()[0], z.shape()[1])),
            None => None,
        };
        let knn_due = finished_epoch
            && run.test_set.is_some()
            && ((cfg.monitor.knn_every > 0 && run.state.epoch.is_multiple_of(cfg.monitor.knn_every)) || run.state.epoch == cfg.epochs);
        let mut knn_acc = None;
        if knn_due {
            let acc = run.knn()?;
            knn_acc = Some(acc);
            run.summary.knn_final = Some(acc);
        }
        let losses = &tally.losses;
        let mean_loss = if losses.is_empty() { None } else { Some(losses.iter().sum::<f64>() / losses.len() as f64) };
        run.summary.last_loss = mean_loss.or(run.summary.last_loss);
        let lr = self.schedule.lr(run.state.global_step.saturating_sub(1));
        run.log.write(json!({"type": "epoch", "epoch": epoch + 1, "loss": mean_loss, "z_std": z_std, "knn_top1": knn_acc,
            "lr": lr, "elapsed_s": self.started.elapsed().as_secs_f64()}))?;
        if run.show {
            self.bar.suspend(|| {
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
        let stop = cfg.max_steps.is_some_and(|m| run.state.global_step >= m);
        if !run.writes() {
            return Ok(stop);
        }
        // Saving also checks every tensor: a finite loss can hide overflowed BN statistics.
        let (ps, opt, state) = (&run.ps, run.opt.as_ref(), &run.state);
        save_checkpoint(&cfg.out.join("last.safetensors"), ps, opt, &run.method.state()?, state)?;
        if finished_epoch && cfg.checkpoint.every > 0 && state.epoch.is_multiple_of(cfg.checkpoint.every) {
            save_checkpoint(&cfg.out.join(format!("epoch-{:04}.safetensors", state.epoch)), ps, opt, &run.method.state()?, state)?;
            prune_checkpoints(&cfg.out, cfg.checkpoint.keep);
        }
        let _ = crate::plot::plot_run(&cfg.out);
        Ok(stop)
    }

    /// Step three: the run's totals, after the last epoch (or `max_steps`).
    pub fn finish(self, run: Run<B>) -> TrainSummary {
        self.bar.finish_and_clear();
        let mut summary = run.summary;
        summary.epochs_done = run.state.epoch;
        summary.steps_done = run.state.global_step;
        summary.images_per_s = self.images as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        summary
    }
}

/// Whether to stop before the next step (Ctrl-C / SIGTERM). Several ranks decide together: a
/// rank that saw the request tells the others through one all-reduce, so every rank stops before
/// the same step and rank 0 saves that position.
fn stop_requested<B: Backend>(run: &Run<B>, interrupt: &AtomicBool) -> Result<bool> {
    let here = interrupt.load(Ordering::SeqCst) || crate::interrupt::requested();
    let Some(r) = run.ps.replicas() else { return Ok(here) };
    // The barrier waits for the last step's collectives under the group's timeout: a rank that
    // died or hangs is an error naming it here (NCCL's asynchronous errors too), not a hang.
    r.group.barrier()?;
    let flag = Tensor::from_f32(run.b, &[if here { 1.0 } else { 0.0 }], &[1], DType::F32)?;
    Ok(r.group.all_reduce_sum(&flag)?.scalar()? > 0.0)
}
