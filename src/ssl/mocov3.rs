//! MoCo v3 (Chen, Xie & He, ICCV 2021) as solo-learn trains it on CIFAR: backbone + projector
//! (Linear-BN-ReLU-Linear-BN without affine) + predictor (Linear-BN-ReLU-Linear) against a
//! momentum backbone + projector, no queue. Loss: L(q1, k2) + L(q2, k1), with
//! L(q, k) = 2T cross-entropy(norm(q) norm(k)^T / T, diagonal). Asymmetric views as BYOL's
//! (solarisation 0 / 0.2). Works with ResNets and ViTs alike: it only sees the backbone's
//! features.

use serde::{Deserialize, Serialize};

use super::heads::{Act, Head, LayerSpec};
use super::losses::NORM_EPS;
use super::momentum::{MOMENTUM, MomentumPairs, check_taus, tau_at};
use super::{Method, StepInfo, StepOutput, losses};
use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::data::{AugmentConfig, ViewSpec};
use crate::error::{Error, Result};
use crate::models::{Backbone, BackboneConfig};
use crate::nn::{Ctx, ParamStore};
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MocoV3Config {
    pub proj_hidden: usize,
    pub proj_dim: usize,
    pub pred_hidden: usize,
    pub temperature: f32,
    pub base_tau: f64,
    pub final_tau: f64,
    /// Solarisation probability of view 1 and view 2 (replaces `augment.solarize_p`).
    pub solarize: [f32; 2],
}

impl Default for MocoV3Config {
    /// solo-learn's CIFAR recipe (scripts/pretrain/cifar/mocov3.yaml).
    fn default() -> Self {
        MocoV3Config {
            proj_hidden: 4096,
            proj_dim: 256,
            pred_hidden: 4096,
            temperature: 0.2,
            base_tau: 0.99,
            final_tau: 1.0,
            solarize: [0.0, 0.2],
        }
    }
}

pub struct MocoV3 {
    cfg: MocoV3Config,
    backbone: Backbone,
    projector: Head,
    predictor: Head,
    momentum_backbone: Backbone,
    momentum_projector: Head,
    pairs: MomentumPairs,
}

/// solo-learn's mocov3_loss_func: 2T CE(norm(q) norm(k)^T / T, arange); k takes no gradient.
pub fn mocov3_loss<B: Backend>(t: &Tape<B>, q: &Var<B>, k: &Var<B>, temperature: f32) -> Result<Var<B>> {
    let q = t.l2_normalize(q, NORM_EPS)?;
    let k = t.l2_normalize(&k.detach(), NORM_EPS)?;
    let ce = losses::info_nce(t, &t.matmul(&q, &k, false, true)?, temperature, |r| r)?;
    t.scale(&ce, 2.0 * temperature)
}

impl MocoV3 {
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, backbone: &BackboneConfig, cfg: &MocoV3Config) -> Result<Self> {
        check_taus("mocov3", cfg.base_tau, cfg.final_tau)?;
        if cfg.proj_dim == 0
            || cfg.proj_hidden == 0
            || cfg.pred_hidden == 0
            || !(cfg.temperature > 0.0)
            || cfg.solarize.iter().any(|p| !(0.0..=1.0).contains(p))
        {
            return Err(Error::Config(format!(
                "mocov3: widths must be positive, temperature a positive number, solarize probabilities in [0, 1] (got {cfg:?})"
            )));
        }
        let proj = [
            LayerSpec { out: cfg.proj_hidden, bias: true, bn: Some(true), act: Act::Relu },
            LayerSpec { out: cfg.proj_dim, bias: true, bn: Some(false), act: Act::None },
        ];
        let online = backbone.build(ps, "backbone")?;
        let projector = Head::new(ps, "projector", online.feature_dim(), &proj)?;
        let pred = [
            LayerSpec { out: cfg.pred_hidden, bias: true, bn: Some(true), act: Act::Relu },
            LayerSpec { out: cfg.proj_dim, bias: true, bn: None, act: Act::None },
        ];
        let predictor = Head::new(ps, "predictor", cfg.proj_dim, &pred)?;
        let momentum_backbone = backbone.build(ps, &format!("{MOMENTUM}backbone"))?;
        let momentum_projector = Head::new(ps, &format!("{MOMENTUM}projector"), online.feature_dim(), &proj)?;
        let pairs = MomentumPairs::copy_and_freeze(ps, "mocov3")?;
        Ok(MocoV3 { cfg: cfg.clone(), backbone: online, projector, predictor, momentum_backbone, momentum_projector, pairs })
    }
}

impl<B: Backend> Method<B> for MocoV3 {
    fn name(&self) -> &'static str {
        "mocov3"
    }
    fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    fn views(&self, recipe: &AugmentConfig, size: usize) -> Vec<ViewSpec> {
        super::solarized_views(&self.cfg.solarize, recipe, size)
    }

    fn forward(&self, cx: &Ctx<B>, views: &[Var<B>], _labels: Option<&Tensor<B>>) -> Result<StepOutput<B>> {
        super::check_views("mocov3", views, 2)?;
        let (mut zs, mut qs, mut ks) = (Vec::new(), Vec::new(), Vec::new());
        for x in views {
            let z = self.projector.forward(cx, &self.backbone.forward(cx, x)?)?;
            qs.push(self.predictor.forward(cx, &z)?);
            zs.push(z);
            ks.push(self.momentum_projector.forward(cx, &self.momentum_backbone.forward(cx, x)?)?.detach());
        }
        let t = cx.tape;
        let temp = self.cfg.temperature;
        let loss = t.add(&mocov3_loss(t, &qs[0], &ks[1], temp)?, &mocov3_loss(t, &qs[1], &ks[0], temp)?)?;
        Ok(StepOutput { loss, embedding: Some(zs[0].value.clone()) })
    }

    fn after_step(&mut self, ps: &mut ParamStore<B>, info: &StepInfo) -> Result<()> {
        self.pairs.update(ps, tau_at(self.cfg.base_tau, self.cfg.final_tau, info.step, info.total_steps))
    }
}
