//! SwAV (Caron et al., NeurIPS 2020) as solo-learn trains it on CIFAR: backbone + projector
//! (Linear-BN-ReLU-Linear, L2-normalised) scored against learned prototypes (a weight-normalised
//! Linear without bias, norm fixed at 1). Each large crop's scores give soft assignments by
//! Sinkhorn-Knopp (no gradient); every other crop predicts them: the loss is the mean over
//! (assigned crop, other crop) pairs of the soft cross-entropy of softmax(p / T). From
//! `epoch_queue_starts`, each view's Sinkhorn also sees the scores of a queue of its past z
//! (current prototypes), which steadies the assignments of small batches. The prototypes take
//! no update for the first `freeze_prototypes_epochs`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::heads::{Act, Head, LayerSpec};
use super::losses::NORM_EPS;
use super::queue::{Queue, load_queues, queues_state};
use super::{Method, MethodConfig, MultiCrop, StepInfo, StepOutput, losses};
use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::data::{AugmentConfig, ViewSpec};
use crate::error::{Error, Result};
use crate::models::{Backbone, BackboneConfig};
use crate::nn::{Ctx, Init, Kind, Layout, ParamId, ParamStore};
use crate::ops;
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SwavConfig {
    /// Hidden width of the projector MLP.
    pub proj_hidden: usize,
    /// Output width of the projector (the embedding the loss sees).
    pub proj_dim: usize,
    /// Number of prototypes (output width of the last layer).
    pub num_prototypes: usize,
    /// Softmax temperature of the contrastive loss.
    pub temperature: f32,
    /// Sinkhorn-Knopp iterations and entropy regularisation.
    pub sk_iters: usize,
    /// Entropy regularisation epsilon of Sinkhorn-Knopp.
    pub sk_epsilon: f32,
    /// Past projections kept per large crop; 0: no queue.
    pub queue_size: usize,
    /// The epoch from which the queue's projections join the Sinkhorn assignment.
    pub epoch_queue_starts: usize,
    /// Epochs during which the prototypes get no gradient.
    pub freeze_prototypes_epochs: usize,
    pub multicrop: MultiCrop,
}

impl Default for SwavConfig {
    /// solo-learn's CIFAR recipe (scripts/pretrain/cifar/swav.yaml): no small crops at 32 px.
    fn default() -> Self {
        SwavConfig {
            proj_hidden: 2048,
            proj_dim: 128,
            num_prototypes: 3000,
            temperature: 0.1,
            sk_iters: 3,
            sk_epsilon: 0.05,
            queue_size: 3840,
            epoch_queue_starts: 50,
            freeze_prototypes_epochs: 2,
            multicrop: MultiCrop::default(),
        }
    }
}

impl MethodConfig for SwavConfig {
    const NAME: &'static str = "swav";
    const ABOUT: &'static str = "SwAV: swapped prediction of Sinkhorn-Knopp assignments to learned prototypes, queue";
    fn validate(&self) -> Result<()> {
        if self.proj_dim == 0 || self.proj_hidden == 0 || self.num_prototypes == 0 || !(self.temperature > 0.0) || !(self.sk_epsilon > 0.0) {
            return Err(Error::Config(format!(
                "swav: widths and num_prototypes must be positive, temperature and sk_epsilon positive numbers (got {self:?})"
            )));
        }
        self.multicrop.check("swav")
    }
    fn build<B: Backend>(&self, ps: &mut ParamStore<B>, backbone: &BackboneConfig, _seed: u64) -> Result<Box<dyn Method<B>>> {
        Ok(Box::new(Swav::new(ps, backbone, self)?))
    }
}

pub struct Swav<B: Backend> {
    cfg: SwavConfig,
    backbone: Backbone,
    projector: Head,
    prototypes: ParamId,
    /// One per large crop, when queue_size > 0.
    queues: Vec<Queue<B>>,
    epoch: Cell<usize>,
    /// This step's z of the large crops, queued after the optimiser step.
    pending: RefCell<Vec<Tensor<B>>>,
}

/// solo-learn's swav_loss_func: for each assigned crop a and every other crop v, the soft
/// cross-entropy of preds[v] / T against assignments[a]; the mean over those pairs.
pub fn swav_loss<B: Backend>(t: &Tape<B>, preds: &[Var<B>], assignments: &[Tensor<B>], temperature: f32) -> Result<Var<B>> {
    let mut terms = Vec::new();
    for (a, q) in assignments.iter().enumerate() {
        for (_, p) in preds.iter().enumerate().filter(|(v, _)| *v != a) {
            terms.push(losses::soft_cross_entropy(t, &t.scale(p, 1.0 / temperature)?, q)?);
        }
    }
    losses::mean_of(t, &terms)
}

impl<B: Backend> Swav<B> {
    pub fn new(ps: &mut ParamStore<B>, backbone: &BackboneConfig, cfg: &SwavConfig) -> Result<Self> {
        cfg.validate()?;
        let online = backbone.build(ps, "backbone")?;
        let proj = [
            LayerSpec { out: cfg.proj_hidden, bias: true, bn: Some(true), act: Act::Relu },
            LayerSpec { out: cfg.proj_dim, bias: true, bn: None, act: Act::None },
        ];
        let projector = Head::new(ps, "projector", online.feature_dim(), &proj)?;
        let prototypes =
            ps.add("prototypes.weight", &[cfg.num_prototypes, cfg.proj_dim], Init::UniformFanIn(cfg.proj_dim), Kind::Param, Layout::Same)?;
        let b = ps.backend().clone();
        let queues = if cfg.queue_size > 0 {
            (0..2).map(|_| Queue::new(&b, cfg.queue_size, cfg.proj_dim, ps.dtype(), None)).collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        Ok(Swav {
            cfg: cfg.clone(),
            backbone: online,
            projector,
            prototypes,
            queues,
            epoch: Cell::new(0),
            pending: RefCell::new(Vec::new()),
        })
    }

    /// Sinkhorn assignments of large crop `v`'s scores, with its queue's under them when the
    /// queue is in use (only the batch's rows are returned).
    fn assign(&self, scores: &Tensor<B>, v: usize, protos: &Tensor<B>) -> Result<Tensor<B>> {
        let n = scores.shape()[0];
        let use_queue = !self.queues.is_empty() && self.epoch.get() >= self.cfg.epoch_queue_starts;
        if !use_queue {
            return losses::sinkhorn(scores, self.cfg.sk_epsilon, self.cfg.sk_iters);
        }
        let queued = ops::matmul(&self.queues[v].rows, protos, false, true)?;
        let q = losses::sinkhorn(&ops::concat(&[scores, &queued], 0)?, self.cfg.sk_epsilon, self.cfg.sk_iters)?;
        ops::slice(&q, 0, 0, n)
    }
}

impl<B: Backend> Method<B> for Swav<B> {
    fn name(&self) -> &'static str {
        "swav"
    }
    fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    fn views(&self, recipe: &AugmentConfig, size: usize) -> Vec<ViewSpec> {
        self.cfg.multicrop.views(recipe, size)
    }

    fn begin_step(&mut self, info: &StepInfo) -> Result<()> {
        self.epoch.set(info.epoch);
        Ok(())
    }

    fn forward(&self, cx: &Ctx<B>, views: &[Var<B>], _labels: Option<&Tensor<B>>) -> Result<StepOutput<B>> {
        super::check_views("swav", views, 2 + self.cfg.multicrop.small_crops)?;
        let t = cx.tape;
        let protos = t.l2_normalize(&cx.param(self.prototypes), NORM_EPS)?;
        let mut zs = Vec::new();
        let mut preds = Vec::new();
        for x in views {
            let z = t.l2_normalize(&self.projector.forward(cx, &self.backbone.forward(cx, x)?)?, NORM_EPS)?;
            preds.push(t.matmul(&z, &protos, false, true)?);
            zs.push(z);
        }
        // Sinkhorn over the global batch (and the queue), each rank keeping its rows' codes.
        let ps = cx.params;
        let assign = |v: usize| super::own_rows(ps, &self.assign(&super::gather_values(ps, &preds[v].value)?, v, &protos.value)?);
        let assignments = (0..2).map(assign).collect::<Result<Vec<_>>>()?;
        let loss = swav_loss(t, &preds, &assignments, self.cfg.temperature)?;
        if !self.queues.is_empty() {
            // Every rank queues the global batch, so the queues stay equal.
            *self.pending.borrow_mut() = zs[..2].iter().map(|z| super::gather_values(ps, &z.value)).collect::<Result<_>>()?;
        }
        Ok(StepOutput { loss, embedding: Some(zs[0].value.clone()) })
    }

    fn before_update(&self, info: &StepInfo, grads: &mut Vec<(ParamId, Tensor<B>)>) -> Result<()> {
        if info.epoch < self.cfg.freeze_prototypes_epochs {
            grads.retain(|(id, _)| *id != self.prototypes);
        }
        Ok(())
    }

    fn after_step(&mut self, _ps: &mut ParamStore<B>, _info: &StepInfo) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        for (q, z) in self.queues.iter_mut().zip(&pending) {
            q.push(z)?;
        }
        Ok(())
    }

    fn state(&self) -> Result<Vec<(String, Tensor<B>)>> {
        queues_state(&self.queues)
    }

    fn load_state(&mut self, saved: &HashMap<String, Tensor<B>>) -> Result<()> {
        load_queues(&mut self.queues, saved, "swav")
    }
}
