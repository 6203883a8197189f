//! Few-label fine-tuning (seed 003's protocol): the whole backbone plus a linear head trained
//! end to end with cross-entropy on a small labelled subset, train-mode BN, random resized crop
//! and flip; evaluated with eval-mode BN on the test set.

use std::sync::Arc;

use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::data::{AugmentConfig, Dataset, Loader, eval_batches};
use crate::error::{Error, Result};
use crate::eval::linear::LinearProbeConfig;
use crate::models::Backbone;
use crate::nn::{Ctx, Linear, ParamStore};
use crate::optim::{Sgd, always, schedule::warmup_cosine, train_step};
use crate::tensor::{DType, Tensor};

/// Crop + flip only: the usual supervised CIFAR augmentation, normalised like pretraining.
pub fn finetune_augment(mean: [f32; 3], std: [f32; 3]) -> AugmentConfig {
    AugmentConfig {
        crop_scale: (0.5, 1.0),
        jitter_p: 0.0,
        gray_p: 0.0,
        blur_p: 0.0,
        solarize_p: 0.0,
        mean,
        std,
        ..AugmentConfig::simsiam_cifar()
    }
}

/// Fine-tunes `backbone` (its parameters in `ps`) with a new head on `train`; returns the logits
/// of every set in `evals`. `on_epoch(epoch, train loss, loss on evals[0])` after each epoch;
/// the evaluation loss is measured only when `track_eval_loss` (it costs a pass over evals[0]).
#[allow(clippy::too_many_arguments)]
pub fn finetune<B: Backend>(
    backbone: &Backbone,
    ps: &mut ParamStore<B>,
    train: Arc<Dataset>,
    evals: &[&Dataset],
    image_size: usize,
    aug: AugmentConfig,
    cfg: &LinearProbeConfig,
    track_eval_loss: bool,
    mut on_epoch: impl FnMut(usize, f64, Option<f64>),
) -> Result<Vec<Vec<f32>>> {
    let classes = evals.iter().map(|d| d.classes.len()).fold(train.classes.len(), usize::max);
    let batch = cfg.batch_size.min(train.len());
    if batch < 2 {
        return Err(Error::Config(format!("fine-tuning needs at least 2 labelled images, got {}", train.len())));
    }
    let head = Linear::new(ps, "fc", backbone.feature_dim(), classes, true, None, None)?;
    let b = ps.backend().clone();
    let (mean, std) = (aug.mean, aug.std);
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let loader = Loader::new(train, vec![aug], image_size, batch, cfg.seed, workers, 2)?;
    let per_epoch = loader.batches_per_epoch();
    let total = cfg.epochs * per_epoch;
    let base_lr = cfg.lr * batch as f64 / 256.0;
    let mut opt = Sgd::new(cfg.momentum);
    let mut step = 0;
    let logits_of = |ps: &ParamStore<B>, data: &Dataset| -> Result<Vec<f32>> {
        let mut logits = Vec::with_capacity(data.len() * classes);
        for batch in eval_batches(data, image_size, 256, mean, std) {
            let (x, _) = batch?;
            let n = x.len() / (image_size * image_size * 3);
            let tape = Tape::inference();
            let cx = Ctx::new(&tape, ps, false);
            let xt = Var::constant(Tensor::from_f32(&b, &x, &[n, image_size, image_size, 3], DType::F32)?);
            logits.extend(head.forward(&cx, &backbone.forward(&cx, &xt)?)?.value.to_f32()?);
        }
        Ok(logits)
    };
    for epoch in 0..cfg.epochs {
        let mut sum = 0.0;
        for bt in loader.epoch(epoch, 0) {
            let bt = bt?;
            crate::interrupt::check("fine-tuning")?;
            let n = bt.labels.len();
            let x = Var::constant(Tensor::from_f32(&b, &bt.views[0], &[n, image_size, image_size, 3], DType::F32)?);
            let y: Vec<f32> = bt.labels.iter().map(|&l| l as f32).collect();
            let y = Tensor::from_f32(&b, &y, &[n], DType::F32)?;
            let lr = warmup_cosine(base_lr, step, total, 0) as f32;
            let forward = |cx: &Ctx<B>| Ok((cx.tape.cross_entropy(&head.forward(cx, &backbone.forward(cx, &x)?)?, &y)?, ()));
            sum += train_step(ps, &mut opt, &|_| (lr, cfg.weight_decay), false, forward, always)?.loss;
            step += 1;
        }
        let eval_loss = match evals.first() {
            Some(d) if track_eval_loss && !d.is_empty() => Some(mean_cross_entropy(&logits_of(ps, d)?, &d.labels, classes)),
            _ => None,
        };
        on_epoch(epoch, sum / per_epoch.max(1) as f64, eval_loss);
    }
    evals.iter().map(|d| logits_of(ps, d)).collect()
}

/// Mean cross-entropy of logits [n, classes] against labels, in f64.
pub fn mean_cross_entropy(logits: &[f32], labels: &[u32], classes: usize) -> f64 {
    let total: f64 = logits
        .chunks(classes)
        .zip(labels)
        .map(|(row, &l)| {
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
            m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() - row[l as usize] as f64
        })
        .sum();
    total / labels.len().max(1) as f64
}
