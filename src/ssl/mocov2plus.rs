//! MoCo v2+ (Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning"; the
//! "+" is solo-learn's symmetric loss), as solo-learn trains it on CIFAR: a query encoder
//! (backbone + projector Linear-ReLU-Linear, L2-normalised) against a momentum key encoder,
//! and one queue of past keys per view. Loss: (L(q1, k2, queue2) + L(q2, k1, queue1)) / 2 with
//! L(q, k, Q) = cross-entropy of [q.k, q.Q^T] / T against the first column. After each step the
//! key encoder moves by EMA and each view's keys enter its queue (the loss used the queue as it
//! was before).

use std::cell::RefCell;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::heads::{Act, Head, LayerSpec};
use super::losses::NORM_EPS;
use super::momentum::{MomentumPair, Taus, check_taus};
use super::queue::{Queue, load_queues, queues_state};
use super::{Method, MethodConfig, StepInfo, StepOutput, losses};
use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::models::{Backbone, BackboneConfig};
use crate::nn::{Ctx, ParamStore};
use crate::rng::Rng;
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MocoV2PlusConfig {
    /// Hidden width of the projector MLP.
    pub proj_hidden: usize,
    /// Output width of the projector (the embedding the loss sees).
    pub proj_dim: usize,
    /// Softmax temperature of the contrastive loss.
    pub temperature: f32,
    /// Keys kept per view.
    pub queue_size: usize,
    /// EMA coefficient of the momentum encoder at the first step (rises to final_tau on a cosine).
    pub base_tau: f64,
    /// EMA coefficient of the momentum encoder at the last step.
    pub final_tau: f64,
}

impl Default for MocoV2PlusConfig {
    /// solo-learn's CIFAR recipe (scripts/pretrain/cifar/mocov2plus.yaml).
    fn default() -> Self {
        MocoV2PlusConfig { proj_hidden: 2048, proj_dim: 256, temperature: 0.2, queue_size: 32768, base_tau: 0.99, final_tau: 0.999 }
    }
}

pub struct MocoV2Plus<B: Backend> {
    cfg: MocoV2PlusConfig,
    /// The query encoder (backbone + projector) and its momentum twin, the key encoder.
    net: MomentumPair<Head>,
    queues: [Queue<B>; 2],
    /// This step's normalised keys per view, queued after the optimiser step.
    keys: RefCell<Option<[Tensor<B>; 2]>>,
}

impl MethodConfig for MocoV2PlusConfig {
    const NAME: &'static str = "mocov2plus";
    const ABOUT: &'static str = "MoCo v2+: InfoNCE against a momentum encoder's keys and a queue of past keys per view";
    fn validate(&self) -> Result<()> {
        check_taus("mocov2plus", self.base_tau, self.final_tau)?;
        if self.proj_dim == 0 || self.proj_hidden == 0 || self.queue_size == 0 || !(self.temperature > 0.0) {
            return Err(Error::Config(format!(
                "mocov2plus: widths and queue_size must be positive, temperature a positive number (got {self:?})"
            )));
        }
        Ok(())
    }
    fn build<B: Backend>(&self, ps: &mut ParamStore<B>, backbone: &BackboneConfig, seed: u64) -> Result<Box<dyn Method<B>>> {
        Ok(Box::new(MocoV2Plus::new(ps, backbone, self, seed)?))
    }
}

/// L(q, k, Q): q, k [n, d] unit rows (k and the queue take no gradient), queue [len, d].
pub fn mocov2plus_loss<B: Backend>(t: &Tape<B>, q: &Var<B>, k: &Tensor<B>, queue: &Tensor<B>, temperature: f32) -> Result<Var<B>> {
    let n = q.shape()[0];
    let pos = t.reshape(&t.sum_axis(&t.mul(q, &Var::constant(k.clone()))?, 1)?, &[n, 1])?;
    let neg = t.matmul(q, &Var::constant(queue.clone()), false, true)?;
    losses::info_nce(t, &t.concat(&[&pos, &neg], 1)?, temperature, |_| 0)
}

impl<B: Backend> MocoV2Plus<B> {
    pub fn new(ps: &mut ParamStore<B>, backbone: &BackboneConfig, cfg: &MocoV2PlusConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let mlp = [
            LayerSpec { out: cfg.proj_hidden, bias: true, bn: None, act: Act::Relu },
            LayerSpec { out: cfg.proj_dim, bias: true, bn: None, act: Act::None },
        ];
        let online = backbone.build(ps, "backbone")?;
        let feature_dim = online.feature_dim();
        let projector = Head::new(ps, "projector", feature_dim, &mlp)?;
        let taus = Taus { base: cfg.base_tau, last: cfg.final_tau };
        let net = MomentumPair::new(ps, "mocov2plus", backbone, (online, projector), "projector", |ps, name| Head::new(ps, name, feature_dim, &mlp), taus)?;
        let mut rng = Rng::new(seed).stream("mocov2plus queue");
        let b = ps.backend().clone();
        let queues = [
            Queue::new(&b, cfg.queue_size, cfg.proj_dim, ps.dtype(), Some(&mut rng))?,
            Queue::new(&b, cfg.queue_size, cfg.proj_dim, ps.dtype(), Some(&mut rng))?,
        ];
        Ok(MocoV2Plus {
            cfg: cfg.clone(),
            net,
            queues,
            keys: RefCell::new(None),
        })
    }
}

impl<B: Backend> Method<B> for MocoV2Plus<B> {
    fn name(&self) -> &'static str {
        "mocov2plus"
    }
    fn backbone(&self) -> &Backbone {
        &self.net.backbone
    }

    fn forward(&self, cx: &Ctx<B>, views: &[Var<B>], _labels: Option<&Tensor<B>>) -> Result<StepOutput<B>> {
        super::check_views("mocov2plus", views, 2)?;
        let t = cx.tape;
        let mut zs = Vec::new();
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        for x in views {
            let z = self.net.online(cx, x)?;
            qs.push(t.l2_normalize(&z, NORM_EPS)?);
            zs.push(z);
            let k = self.net.momentum(cx, x)?;
            ks.push(crate::ops::l2_normalize(&k.value, NORM_EPS)?.0);
        }
        let temp = self.cfg.temperature;
        let a = mocov2plus_loss(t, &qs[0], &ks[1], &self.queues[1].rows, temp)?;
        let b = mocov2plus_loss(t, &qs[1], &ks[0], &self.queues[0].rows, temp)?;
        let loss = t.scale(&t.add(&a, &b)?, 0.5)?;
        // Every rank queues the global batch's keys, so the queues stay equal.
        *self.keys.borrow_mut() = Some([super::gather_values(cx.params, &ks[0])?, super::gather_values(cx.params, &ks[1])?]);
        Ok(StepOutput { loss, embedding: Some(zs[0].value.clone()) })
    }

    fn after_step(&mut self, ps: &mut ParamStore<B>, info: &StepInfo) -> Result<()> {
        if let Some([k1, k2]) = self.keys.borrow_mut().take() {
            self.queues[0].push(&k1)?;
            self.queues[1].push(&k2)?;
        }
        self.net.update(ps, info)
    }

    fn state(&self) -> Result<Vec<(String, Tensor<B>)>> {
        queues_state(&self.queues)
    }

    fn load_state(&mut self, saved: &HashMap<String, Tensor<B>>) -> Result<()> {
        load_queues(&mut self.queues, saved, "mocov2plus")
    }
}
