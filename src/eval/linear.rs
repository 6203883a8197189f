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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinearProbeConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// "sgd" or "lars".
    pub optimizer: String,
    /// Learning rate at batch 256; scaled linearly with the batch size.
    pub lr: f64,
    pub momentum: f32,
    pub weight_decay: f32,
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
            optimizer: "sgd".into(),
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
    if cfg.batch_size == 0 || !(cfg.optimizer == "sgd" || cfg.optimizer == "lars") {
        return Err(Error::Invalid {
            op: "linear probe",
            msg: format!("optimizer must be sgd or lars (got {:?}) and batch_size positive", cfg.optimizer),
        });
    }
    let scaler = cfg.standardize.then(|| fit_scaler(x, dim));
    let scaled = apply_scaler(x, dim, &scaler);
    let x = &scaled[..];
    let mut ps = ParamStore::new(b, DType::F32, cfg.seed);
    let fc = Linear::new(&mut ps, "fc", dim, classes, true, None, None)?;
    let kind = if cfg.optimizer == "lars" { OptimizerKind::Lars } else { OptimizerKind::Sgd };
    let mut opt = optim::build::<B>(kind, cfg.momentum, &LarsConfig::default());
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
