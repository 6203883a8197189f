//! The evaluation protocols: weighted kNN, the linear probe on frozen features, fine-tuning
//! (all labels or a few per class), each measured on one test set or on several at once (the
//! study's validation and test sets share one bank, one probe, one fine-tuned network).

use std::sync::Arc;

use serde::Serialize;

use super::backbone::LoadedBackbone;
use super::linear::{LinearProbeConfig, train_linear_probe};
use super::metrics::{Metrics, classification_metrics, softmax_rows};
use super::{features, knn};
use crate::backend::Backend;
use crate::config::Config;
use crate::data::Dataset;
use crate::error::Result;

/// Backbone features of every image of `data` (eval-mode BN, no augmentation).
pub(super) fn feats<B: Backend>(m: &LoadedBackbone<B>, data: &Dataset, cfg: &Config, what: &str) -> Result<Vec<f32>> {
    features::extract(&m.backbone, &m.ps, data, cfg.data.image_size, cfg.augment.mean, cfg.augment.std, cfg.batch_size.min(256), what, true)
}

/// kNN top-1 and full metrics (from the vote scores) of a backbone.
pub fn eval_knn<B: Backend>(m: &LoadedBackbone<B>, train: &Dataset, test: &Dataset, cfg: &Config) -> Result<Metrics> {
    Ok(eval_knn_sets(m, train, &[test], cfg)?.remove(0))
}

/// kNN metrics on each query set, against one bank of `train` features.
pub fn eval_knn_sets<B: Backend>(m: &LoadedBackbone<B>, train: &Dataset, queries: &[&Dataset], cfg: &Config) -> Result<Vec<Metrics>> {
    let dim = m.backbone.feature_dim();
    let mut bank = feats(m, train, cfg, "kNN bank features")?;
    knn::l2_normalize(&mut bank, dim);
    let classes = queries.iter().map(|d| d.classes.len()).fold(train.classes.len(), usize::max);
    queries
        .iter()
        .map(|test| {
            let mut q = feats(m, test, cfg, "kNN query features")?;
            knn::l2_normalize(&mut q, dim);
            let scores = knn::knn_scores(m.ps.backend(), &bank, &train.labels, &q, dim, classes, cfg.monitor.knn_k, cfg.monitor.knn_t)?;
            // Normalised votes behave as probabilities for the AUCs.
            let probs: Vec<f32> = scores
                .chunks(classes)
                .flat_map(|r| {
                    let s: f32 = r.iter().sum::<f32>().max(f32::MIN_POSITIVE);
                    r.iter().map(move |v| v / s).collect::<Vec<_>>()
                })
                .collect();
            Ok(classification_metrics(&probs, &test.labels, classes))
        })
        .collect()
}

/// The first `n` images of each class of `data` (in a seeded random order), for few-label runs.
pub fn labels_per_class(data: &Dataset, n: usize, seed: u64) -> Vec<usize> {
    let mut rng = crate::rng::Rng::new(seed).stream("labels-per-class");
    let order = crate::rng::permutation(data.len(), &mut rng);
    let mut count = vec![0usize; data.classes.len().max(1)];
    let mut keep: Vec<usize> = order
        .into_iter()
        .filter(|&i| {
            let c = data.labels[i] as usize;
            count[c] += 1;
            count[c] <= n
        })
        .collect();
    keep.sort();
    keep
}

#[derive(Debug, Serialize)]
pub struct LinearReport {
    pub metrics: Metrics,
    pub train_images: usize,
    pub final_loss: f64,
}

/// A probe or fine-tuning run measured on several sets: one `Metrics` per set, in order, and
/// the per-epoch (training loss, loss on the first set when tracked).
#[derive(Debug, Serialize)]
pub struct SetsReport {
    pub metrics: Vec<Metrics>,
    pub train_images: usize,
    pub curve: Vec<(f64, Option<f64>)>,
}

impl SetsReport {
    fn first(mut self) -> LinearReport {
        let final_loss = self.curve.last().map_or(f64::NAN, |c| c.0);
        LinearReport { metrics: self.metrics.remove(0), train_images: self.train_images, final_loss }
    }
}

/// Linear probe on frozen features; `subset` restricts the training images (few labels).
pub fn eval_linear<B: Backend>(
    m: &LoadedBackbone<B>, train: &Dataset, test: &Dataset, cfg: &Config, probe: &LinearProbeConfig, subset: Option<&[usize]>,
    mut on_epoch: impl FnMut(usize, f64),
) -> Result<LinearReport> {
    Ok(eval_linear_sets(m, train, &[test], cfg, probe, subset, |e, l, _| on_epoch(e, l))?.first())
}

/// The linear probe trained once, measured on each of `tests`.
pub fn eval_linear_sets<B: Backend>(
    m: &LoadedBackbone<B>, train: &Dataset, tests: &[&Dataset], cfg: &Config, probe: &LinearProbeConfig, subset: Option<&[usize]>,
    mut on_epoch: impl FnMut(usize, f64, Option<f64>),
) -> Result<SetsReport> {
    let dim = m.backbone.feature_dim();
    let all = feats(m, train, cfg, "probe training features")?;
    let (x, y): (Vec<f32>, Vec<u32>) = match subset {
        Some(idx) => (
            idx.iter().flat_map(|&i| all[i * dim..(i + 1) * dim].iter().copied()).collect(),
            idx.iter().map(|&i| train.labels[i]).collect(),
        ),
        None => (all, train.labels.clone()),
    };
    let classes = tests.iter().map(|d| d.classes.len()).fold(train.classes.len(), usize::max);
    let mut curve = Vec::new();
    let model = train_linear_probe(m.ps.backend(), &x, &y, dim, classes, probe, |e, l| {
        curve.push((l, None));
        on_epoch(e, l, None)
    })?;
    let metrics = tests
        .iter()
        .map(|test| {
            let logits = model.logits(&feats(m, test, cfg, "probe test features")?)?;
            Ok(classification_metrics(&softmax_rows(&logits, classes), &test.labels, classes))
        })
        .collect::<Result<_>>()?;
    Ok(SetsReport { metrics, train_images: y.len(), curve })
}

/// Few-label fine-tuning of the whole backbone with a linear head (train-mode BN, crop + flip).
pub fn eval_finetune<B: Backend>(
    m: LoadedBackbone<B>, train: &Arc<Dataset>, test: &Dataset, cfg: &Config, probe: &LinearProbeConfig, subset: Option<&[usize]>,
    mut on_epoch: impl FnMut(usize, f64),
) -> Result<LinearReport> {
    Ok(eval_finetune_sets(m, train, &[test], cfg, probe, subset, false, |e, l, _| on_epoch(e, l))?.first())
}

/// Fine-tuning measured on each of `tests`; with `track_loss`, the loss on tests[0] after every
/// epoch joins the curve (seed 003's train / validation curves).
#[allow(clippy::too_many_arguments)]
pub fn eval_finetune_sets<B: Backend>(
    mut m: LoadedBackbone<B>, train: &Arc<Dataset>, tests: &[&Dataset], cfg: &Config, probe: &LinearProbeConfig, subset: Option<&[usize]>,
    track_loss: bool, mut on_epoch: impl FnMut(usize, f64, Option<f64>),
) -> Result<SetsReport> {
    let data = match subset {
        Some(idx) => Arc::new(train.subset(idx)),
        None => train.clone(),
    };
    let n = data.len();
    let classes = tests.iter().map(|d| d.classes.len()).fold(train.classes.len(), usize::max);
    let aug = super::finetune::finetune_augment(cfg.augment.mean, cfg.augment.std);
    let mut curve = Vec::new();
    let logits = super::finetune::finetune(&m.backbone, &mut m.ps, data, tests, cfg.data.image_size, aug, probe, track_loss, |e, l, v| {
        curve.push((l, v));
        on_epoch(e, l, v)
    })?;
    let metrics = logits.iter().zip(tests).map(|(lg, t)| classification_metrics(&softmax_rows(lg, classes), &t.labels, classes)).collect();
    Ok(SetsReport { metrics, train_images: n, curve })
}
