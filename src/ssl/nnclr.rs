//! NNCLR (Dwibedi et al., ICCV 2021, "With a Little Help from My Friends"), as solo-learn
//! builds it (solo/methods/nnclr.py, solo/losses/nnclr.py): a projector Linear-BN-ReLU,
//! Linear-BN-ReLU, Linear-BN and a predictor Linear-BN-ReLU-Linear on the backbone, z =
//! projector(backbone(x)), p = predictor(z). The support set is a queue of past L2-normalised
//! z of the first view (FIFO, written after the step, as MoCo's). Each view's positive is the
//! nearest neighbour nn of its normalised z in the queue (top-1 cosine similarity, no
//! gradient), contrasted with the other view's predictions:
//! L = (l(nn1, p2) + l(nn2, p1)) / 2, l(a, b) = cross-entropy of normalize(a) normalize(b)^T / T
//! against the diagonal (solo-learn's `nnclr_loss_func`). The views are asymmetric as
//! solo-learn's CIFAR recipe: solarisation per view (`solarize`, 0.0 and 0.2).
//!
//! The similarities to the queue are one matmul on the backend; their row maxima are taken on
//! the host (the engine has no argmax op: [n, queue_size] values read back per view and step),
//! and the neighbours are gathered from the queue on the backend, its rows bit for bit.

use std::cell::RefCell;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::heads::{Act, Head, LayerSpec};
use super::losses::{self, NORM_EPS};
use super::queue::Queue;
use super::{Method, MethodConfig, StepInfo, StepOutput};
use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::data::{AugmentConfig, ViewSpec};
use crate::error::{Error, Result};
use crate::models::{Backbone, BackboneConfig};
use crate::nn::{Ctx, ParamStore};
use crate::ops;
use crate::rng::Rng;
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NnclrConfig {
    /// Hidden width of the projector's two hidden layers.
    pub proj_hidden: usize,
    /// Output width of the projector (the embedding the queue keeps and the loss sees).
    pub proj_dim: usize,
    /// Hidden width of the predictor MLP.
    pub pred_hidden: usize,
    /// Softmax temperature T of the contrastive loss.
    pub temperature: f32,
    /// Normalised first-view projections kept as the support set the neighbours come from.
    pub queue_size: usize,
    /// Solarisation probability of view 1 and view 2 (replaces `augment.solarize_p`; solo-learn's
    /// asymmetric CIFAR views: 0.0 and 0.2).
    pub solarize: [f32; 2],
}

impl Default for NnclrConfig {
    /// solo-learn's CIFAR recipe (scripts/pretrain/cifar/nnclr.yaml).
    fn default() -> Self {
        NnclrConfig { proj_hidden: 2048, proj_dim: 256, pred_hidden: 4096, temperature: 0.2, queue_size: 65536, solarize: [0.0, 0.2] }
    }
}

impl MethodConfig for NnclrConfig {
    const NAME: &'static str = "nnclr";
    const ABOUT: &'static str = "NNCLR: nearest neighbours from a support queue as positives for the other view's predictions";
    fn validate(&self) -> Result<()> {
        if self.proj_hidden == 0
            || self.proj_dim == 0
            || self.pred_hidden == 0
            || self.queue_size == 0
            || !(self.temperature > 0.0 && self.temperature.is_finite())
            || self.solarize.iter().any(|p| !(0.0..=1.0).contains(p))
        {
            return Err(Error::Config(format!(
                "nnclr: proj_hidden, proj_dim, pred_hidden and queue_size must be positive, temperature a positive number and \
                 solarize probabilities in [0, 1] (got {self:?})"
            )));
        }
        Ok(())
    }
    fn build<B: Backend>(&self, ps: &mut ParamStore<B>, backbone: &BackboneConfig, seed: u64) -> Result<Box<dyn Method<B>>> {
        Ok(Box::new(Nnclr::new(ps, backbone, self, seed)?))
    }
}

/// For each row of `z` [n, d], the index of the row of `queue` [len, d] with the largest dot
/// product (cosine similarity for unit rows; the first on a tie), as solo-learn's
/// `(z @ queue.T).max(dim=1)[1]`.
pub fn nearest_indices<B: Backend>(z: &Tensor<B>, queue: &Tensor<B>) -> Result<Vec<usize>> {
    let sims = ops::matmul(z, queue, false, true)?;
    let (n, len) = (sims.shape()[0], sims.shape()[1]);
    if len == 0 {
        return Err(Error::Invalid { op: "nnclr", msg: "an empty support queue".into() });
    }
    let v = sims.to_f64()?;
    Ok((0..n)
        .map(|r| {
            let row = &v[r * len..(r + 1) * len];
            let mut best = 0;
            for (j, &s) in row.iter().enumerate() {
                if s > row[best] {
                    best = j;
                }
            }
            best
        })
        .collect())
}

/// The rows `idx` of `queue` [len, d], stacked [idx.len(), d]: one `gather_rows` on the
/// backend, a copy bit for bit.
pub fn queue_rows<B: Backend>(queue: &Tensor<B>, idx: &[usize]) -> Result<Tensor<B>> {
    let (len, d) = (queue.shape()[0], queue.shape()[1]);
    let at: Vec<f32> = idx.iter().map(|&i| i as f32).collect();
    let at = Tensor::from_f32(queue.backend(), &at, &[1, idx.len()], queue.dtype())?;
    ops::gather_rows(&queue.reshape(&[1, len, d])?, &at)?.reshape(&[idx.len(), d])
}

/// The nearest neighbours of the unit rows `z` in `queue`: `queue_rows` of `nearest_indices`.
pub fn nearest_neighbours<B: Backend>(z: &Tensor<B>, queue: &Tensor<B>) -> Result<Tensor<B>> {
    queue_rows(queue, &nearest_indices(z, queue)?)
}

/// solo-learn's `nnclr_loss_func(nn, p, T)`: cross-entropy of normalize(nn) normalize(p)^T / T
/// against the diagonal, nn (the neighbours, no gradient) and p [n, d].
pub fn nnclr_loss<B: Backend>(t: &Tape<B>, nn: &Tensor<B>, p: &Var<B>, temperature: f32) -> Result<Var<B>> {
    let nn = Var::constant(ops::l2_normalize(nn, NORM_EPS)?.0);
    let p = t.l2_normalize(p, NORM_EPS)?;
    losses::info_nce(t, &t.matmul(&nn, &p, false, true)?, temperature, |r| r)
}

pub struct Nnclr<B: Backend> {
    cfg: NnclrConfig,
    backbone: Backbone,
    projector: Head,
    predictor: Head,
    /// The support set: normalised first-view projections, [queue_size, proj_dim].
    queue: Queue<B>,
    /// This step's normalised first-view projections, queued after the optimiser step.
    pending: RefCell<Option<Tensor<B>>>,
}

impl<B: Backend> Nnclr<B> {
    /// Registers `backbone.*`, `projector.*` and `predictor.*` in `ps`; the queue starts as
    /// unit-norm Gaussian rows drawn from `seed` (solo-learn: normalised torch.randn).
    pub fn new(ps: &mut ParamStore<B>, backbone: &BackboneConfig, cfg: &NnclrConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let backbone = backbone.build(ps, "backbone")?;
        let proj = [
            LayerSpec { out: cfg.proj_hidden, bias: true, bn: Some(true), act: Act::Relu },
            LayerSpec { out: cfg.proj_hidden, bias: true, bn: Some(true), act: Act::Relu },
            LayerSpec { out: cfg.proj_dim, bias: true, bn: Some(true), act: Act::None },
        ];
        let projector = Head::new(ps, "projector", backbone.feature_dim(), &proj)?;
        let pred = [
            LayerSpec { out: cfg.pred_hidden, bias: true, bn: Some(true), act: Act::Relu },
            LayerSpec { out: cfg.proj_dim, bias: true, bn: None, act: Act::None },
        ];
        let predictor = Head::new(ps, "predictor", cfg.proj_dim, &pred)?;
        let mut rng = Rng::new(seed).stream("nnclr queue");
        let queue = Queue::new(&ps.backend().clone(), cfg.queue_size, cfg.proj_dim, ps.dtype(), Some(&mut rng))?;
        Ok(Nnclr { cfg: cfg.clone(), backbone, projector, predictor, queue, pending: RefCell::new(None) })
    }

    /// The support queue's rows [queue_size, proj_dim].
    pub fn queue(&self) -> &Tensor<B> {
        &self.queue.rows
    }
}

impl<B: Backend> Method<B> for Nnclr<B> {
    fn name(&self) -> &'static str {
        "nnclr"
    }
    fn views(&self, recipe: &AugmentConfig, size: usize) -> Vec<ViewSpec> {
        super::solarized_views(&self.cfg.solarize, recipe, size)
    }
    fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    fn forward(&self, cx: &Ctx<B>, views: &[Var<B>], _labels: Option<&Tensor<B>>) -> Result<StepOutput<B>> {
        super::check_views("nnclr", views, 2)?;
        let t = cx.tape;
        let zs = views.iter().map(|x| self.projector.forward(cx, &self.backbone.forward(cx, x)?)).collect::<Result<Vec<_>>>()?;
        let ps = zs.iter().map(|z| self.predictor.forward(cx, z)).collect::<Result<Vec<_>>>()?;
        // The neighbours take no gradient: found from the detached, normalised projections.
        let unit = zs.iter().map(|z| Ok(ops::l2_normalize(&z.value, NORM_EPS)?.0)).collect::<Result<Vec<_>>>()?;
        let nn1 = nearest_neighbours(&unit[0], &self.queue.rows)?;
        let nn2 = nearest_neighbours(&unit[1], &self.queue.rows)?;
        let temp = self.cfg.temperature;
        // The contrast over the global batch (solo-learn #229: not the local one).
        let (nn1, nn2) = (super::gather_values(cx.params, &nn1)?, super::gather_values(cx.params, &nn2)?);
        let (p1, p2) = (super::gather(cx, &ps[0])?, super::gather(cx, &ps[1])?);
        let a = nnclr_loss(t, &nn1, &p2, temp)?;
        let b = nnclr_loss(t, &nn2, &p1, temp)?;
        let loss = t.scale(&t.add(&a, &b)?, 0.5)?;
        *self.pending.borrow_mut() = Some(super::gather_values(cx.params, &unit[0])?);
        Ok(StepOutput { loss, embedding: Some(zs[0].value.clone()) })
    }

    fn after_step(&mut self, _ps: &mut ParamStore<B>, _info: &StepInfo) -> Result<()> {
        if let Some(z1) = self.pending.borrow_mut().take() {
            self.queue.push(&z1)?;
        }
        Ok(())
    }

    /// `queue` (the rows) and `queue_ptr`.
    fn state(&self) -> Result<Vec<(String, Tensor<B>)>> {
        self.queue.state("queue")
    }

    fn load_state(&mut self, saved: &HashMap<String, Tensor<B>>) -> Result<()> {
        self.queue.load_state(saved, "nnclr", "queue")
    }
}
