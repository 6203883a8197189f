//! The linear probe: a linear classifier trained with cross-entropy on frozen features
//! (extracted once, eval-mode BN, no augmentation), SGD with momentum 0.9, no weight decay,
//! cosine, or LARS (solo-learn's, the one pretraining uses: `optim::Lars`). By default each
//! feature is standardised first (MAE's BatchNorm without affine), with lr 0.5 at batch 256;
//! `standardize = false, lr = 30` is MoCo's raw-feature protocol, LARS with lr 0.02
//! REFERENCE.md's other one.

use serde::{Deserialize, Serialize};

use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::nn::{Ctx, Linear, ParamStore};
use crate::optim::{self, LarsConfig, OptimizerKind, always, schedule::warmup_cosine, train_step};
use crate::rng::{Rng, permutation};
use crate::tensor::{DType, Tensor};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LinearProbeConfig {
    /// Epochs of probe (or fine-tuning) training, cosine learning-rate decay.
    pub epochs: usize,
    /// Images per probe (or fine-tuning) step.
    pub batch_size: usize,
    /// "sgd" or "lars".
    pub optimizer: OptimizerKind,
    /// Learning rate at batch 256; scaled linearly with the batch size.
    pub lr: f64,
    /// SGD momentum of the probe.
    pub momentum: f32,
    /// Weight decay of the probe's (or fine-tuned network's) weights.
    pub weight_decay: f32,
    /// Seeds the probe's initialisation and data order.
    pub seed: u64,
    /// Standardise each feature with the training set's mean and std first (a BatchNorm without
    /// affine in front of the classifier, as MAE's probe); makes one learning rate fit backbones
    /// of any feature scale.
    pub standardize: bool,
}

impl Default for LinearProbeConfig {
    fn default() -> Self {
        LinearProbeConfig {
            epochs: 100,
            batch_size: 256,
            optimizer: OptimizerKind::Sgd,
            lr: 0.5,
            momentum: 0.9,
            weight_decay: 0.0,
            seed: 0,
            standardize: true,
        }
    }
}

pub struct LinearProbe<B: Backend> {
    ps: ParamStore<B>,
    fc: Linear,
    pub classes: usize,
    pub dim: usize,
    /// Per-feature (mean, 1/std) applied before the classifier, when standardising.
    scaler: Option<(Vec<f32>, Vec<f32>)>,
}

/// Per-feature mean and 1/std of x [n, dim] (std floored so constant features stay finite).
fn fit_scaler(x: &[f32], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (x.len() / dim).max(1) as f64;
    let mut mean = vec![0.0f64; dim];
    let mut sq = vec![0.0f64; dim];
    for row in x.chunks(dim) {
        for (j, &v) in row.iter().enumerate() {
            mean[j] += v as f64;
            sq[j] += (v as f64) * (v as f64);
        }
    }
    let m: Vec<f32> = mean.iter().map(|s| (s / n) as f32).collect();
    let inv: Vec<f32> = (0..dim).map(|j| (1.0 / ((sq[j] / n - (mean[j] / n).powi(2)).max(0.0).sqrt() + 1e-6)) as f32).collect();
    (m, inv)
}

fn apply_scaler(x: &[f32], dim: usize, scaler: &Option<(Vec<f32>, Vec<f32>)>) -> Vec<f32> {
    match scaler {
        None => x.to_vec(),
        Some((m, inv)) => x.chunks(dim).flat_map(|row| row.iter().enumerate().map(|(j, &v)| (v - m[j]) * inv[j])).collect(),
    }
}

impl<B: Backend> LinearProbe<B> {
    /// Class logits [n, classes] of features [n, dim].
    pub fn logits(&self, x: &[f32]) -> Result<Vec<f32>> {
        let n = x.len() / self.dim.max(1);
        let tape = Tape::inference();
        let cx = Ctx::new(&tape, &self.ps, false);
        let xt = Tensor::from_f32(self.ps.backend(), &apply_scaler(x, self.dim, &self.scaler), &[n, self.dim], DType::F32)?;
        self.fc.forward(&cx, &Var::constant(xt))?.value.to_f32()
    }
}

/// Trains the probe; `on_epoch(epoch, mean loss)` reports progress.
pub fn train_linear_probe<B: Backend>(
    b: &B,
    x: &[f32],
    y: &[u32],
    dim: usize,
    classes: usize,
    cfg: &LinearProbeConfig,
    mut on_epoch: impl FnMut(usize, f64),
) -> Result<LinearProbe<B>> {
    let n = y.len();
    if n == 0 || dim == 0 || x.len() != n * dim {
        return Err(Error::Invalid { op: "linear probe", msg: format!("{} feature values for {n} labels of dim {dim}", x.len()) });
    }
    if cfg.batch_size == 0 {
        return Err(Error::Invalid { op: "linear probe", msg: "batch_size must be positive".into() });
    }
    let scaler = cfg.standardize.then(|| fit_scaler(x, dim));
    let scaled = apply_scaler(x, dim, &scaler);
    let x = &scaled[..];
    let mut ps = ParamStore::new(b, DType::F32, cfg.seed);
    let fc = Linear::new(&mut ps, "fc", dim, classes, true, None, None)?;
    let mut opt = optim::build::<B>(cfg.optimizer, cfg.momentum, &LarsConfig::default());
    let base_lr = cfg.lr * cfg.batch_size as f64 / 256.0;
    let steps_per_epoch = n.div_ceil(cfg.batch_size);
    let total = cfg.epochs * steps_per_epoch;
    let rng = Rng::new(cfg.seed).stream("linear-probe");
    let mut step = 0;
    for epoch in 0..cfg.epochs {
        crate::interrupt::check("linear-probe training")?;
        let order = permutation(n, &mut rng.derive(&[epoch as u64]));
        let mut loss_sum = 0.0;
        for chunk in order.chunks(cfg.batch_size) {
            let mut xb = Vec::with_capacity(chunk.len() * dim);
            for &i in chunk {
                xb.extend_from_slice(&x[i * dim..(i + 1) * dim]);
            }
            let yb: Vec<f32> = chunk.iter().map(|&i| y[i] as f32).collect();
            let xt = Var::constant(Tensor::from_f32(b, &xb, &[chunk.len(), dim], DType::F32)?);
            let yt = Tensor::from_f32(b, &yb, &[chunk.len()], DType::F32)?;
            let lr = warmup_cosine(base_lr, step, total, 0) as f32;
            let forward = |cx: &Ctx<B>| Ok((cx.tape.cross_entropy(&fc.forward(cx, &xt)?, &yt)?, ()));
            let loss = train_step(&ps, opt.as_mut(), &|_| (lr, cfg.weight_decay), false, forward, always)?.loss;
            loss_sum += loss * chunk.len() as f64;
            step += 1;
        }
        on_epoch(epoch, loss_sum / n as f64);
    }
    Ok(LinearProbe { ps, fc, classes, dim, scaler })
}

/// The `eval linear` flags: what they set of the recipe's `[linear]` table, and what they
/// leave to each protocol's defaults.
pub struct ProbeFlags {
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub optimizer: Option<OptimizerKind>,
    pub lr: Option<f64>,
    pub weight_decay: Option<f32>,
    /// Fine-tune the whole backbone instead of probing frozen features.
    pub finetune: bool,
    /// Probe raw features (MoCo's protocol) instead of standardised ones.
    pub raw_features: bool,
}

impl ProbeFlags {
    /// The probe to run: `recipe` (the `[linear]` table) with the flags applied. A flag left
    /// out keeps the recipe's value; the learning rate too, unless the flags ask for another
    /// protocol than the recipe's (fine-tuning, raw features, another optimiser), which has its own.
    pub fn probe(self, recipe: &LinearProbeConfig) -> LinearProbeConfig {
        let optimizer = self.optimizer.unwrap_or(recipe.optimizer);
        let recipes_protocol = !self.finetune && !self.raw_features && optimizer == recipe.optimizer && recipe.standardize;
        let lr = self.lr.unwrap_or_else(|| if recipes_protocol { recipe.lr } else { default_lr(self.finetune, optimizer, self.raw_features) });
        // Fine-tuning regularises the whole network; a frozen-feature probe keeps the recipe's.
        let weight_decay = self.weight_decay.unwrap_or(if self.finetune { 5e-4 } else { recipe.weight_decay });
        LinearProbeConfig {
            epochs: self.epochs.unwrap_or(recipe.epochs),
            batch_size: self.batch_size.unwrap_or(recipe.batch_size),
            optimizer,
            lr,
            weight_decay,
            standardize: !self.raw_features,
            ..recipe.clone()
        }
    }
}

/// Each protocol's peak learning rate at batch 256 when `--lr` is left out: 0.1 fine-tuning the
/// whole network, 0.02 for LARS, 1e-3 for AdamW, 0.5 for SGD on standardised features, 30 on raw ones (MoCo's
/// raw-feature protocol: unnormalised features need a far larger step).
pub fn default_lr(finetune: bool, optimizer: OptimizerKind, raw_features: bool) -> f64 {
    if finetune {
        0.1
    } else if optimizer == OptimizerKind::Lars {
        0.02
    } else if optimizer == OptimizerKind::AdamW {
        // Adam's steps are about lr in size whatever the gradient's scale: SGD's 0.5 would be huge.
        1e-3
    } else if !raw_features {
        0.5
    } else {
        30.0
    }
}
