//! MoCo v3 (Chen, Xie & He, ICCV 2021) as solo-learn trains it on CIFAR: backbone + projector
//! (Linear-BN-ReLU-Linear-BN without affine) + predictor (Linear-BN-ReLU-Linear) against a
//! momentum backbone + projector, no queue. Loss: L(q1, k2) + L(q2, k1), with
//! L(q, k) = 2T cross-entropy(norm(q) norm(k)^T / T, diagonal). Asymmetric views as BYOL's
//! (solarisation 0 / 0.2). Works with ResNets and ViTs alike: it only sees the backbone's
//! features.

use serde::{Deserialize, Serialize};

use super::heads::{Act, Head, LayerSpec};
use super::losses::NORM_EPS;
use super::momentum::{MomentumPair, Taus, check_taus};
use super::{Method, MethodConfig, StepInfo, StepOutput, losses};
use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::data::{AugmentConfig, ViewSpec};
use crate::error::{Error, Result};
use crate::models::{Backbone, BackboneConfig};
use crate::nn::{Ctx, ParamStore};
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MocoV3Config {
    /// Hidden width of the projector MLP.
    pub proj_hidden: usize,
    /// Output width of the projector (the embedding the loss sees).
    pub proj_dim: usize,
    /// Hidden width of the predictor MLP.
    pub pred_hidden: usize,
    /// Softmax temperature of the contrastive loss.
    pub temperature: f32,
    /// EMA coefficient of the momentum encoder at the first step (rises to final_tau on a cosine).
    pub base_tau: f64,
    /// EMA coefficient of the momentum encoder at the last step.
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
    /// backbone + projector, and their momentum twin.
    net: MomentumPair<Head>,
    predictor: Head,
}

impl MethodConfig for MocoV3Config {
    const NAME: &'static str = "mocov3";
    const ABOUT: &'static str = "MoCo v3: predictor + momentum encoder, InfoNCE over the batch, no queue";
    fn validate(&self) -> Result<()> {
        check_taus("mocov3", self.base_tau, self.final_tau)?;
        if self.proj_dim == 0
            || self.proj_hidden == 0
            || self.pred_hidden == 0
            || !(self.temperature > 0.0)
            || self.solarize.iter().any(|p| !(0.0..=1.0).contains(p))
        {
            return Err(Error::Config(format!(
                "mocov3: widths must be positive, temperature a positive number, solarize probabilities in [0, 1] (got {self:?})"
            )));
        }
        Ok(())
    }
    fn build<B: Backend>(&self, ps: &mut ParamStore<B>, backbone: &BackboneConfig, _seed: u64) -> Result<Box<dyn Method<B>>> {
        Ok(Box::new(MocoV3::new(ps, backbone, self)?))
    }
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
        cfg.validate()?;
        let proj = [
            LayerSpec { out: cfg.proj_hidden, bias: true, bn: Some(true), act: Act::Relu },
            LayerSpec { out: cfg.proj_dim, bias: true, bn: Some(false), act: Act::None },
        ];
        let online = backbone.build(ps, "backbone")?;
        let feature_dim = online.feature_dim();
        let projector = Head::new(ps, "projector", feature_dim, &proj)?;
        let pred = [
            LayerSpec { out: cfg.pred_hidden, bias: true, bn: Some(true), act: Act::Relu },
            LayerSpec { out: cfg.proj_dim, bias: true, bn: None, act: Act::None },
        ];
        let predictor = Head::new(ps, "predictor", cfg.proj_dim, &pred)?;
        let taus = Taus { base: cfg.base_tau, last: cfg.final_tau };
        let net = MomentumPair::new(ps, "mocov3", backbone, (online, projector), "projector", |ps, name| Head::new(ps, name, feature_dim, &proj), taus)?;
        Ok(MocoV3 { cfg: cfg.clone(), net, predictor })
    }
}

impl<B: Backend> Method<B> for MocoV3 {
    fn name(&self) -> &'static str {
        "mocov3"
    }
    fn backbone(&self) -> &Backbone {
        &self.net.backbone
    }

    fn views(&self, recipe: &AugmentConfig, size: usize) -> Vec<ViewSpec> {
        super::solarized_views(&self.cfg.solarize, recipe, size)
    }

    fn forward(&self, cx: &Ctx<B>, views: &[Var<B>], _labels: Option<&Tensor<B>>) -> Result<StepOutput<B>> {
        super::check_views("mocov3", views, 2)?;
        let (mut zs, mut qs, mut ks) = (Vec::new(), Vec::new(), Vec::new());
        for x in views {
            let z = self.net.online(cx, x)?;
            qs.push(self.predictor.forward(cx, &z)?);
            zs.push(z);
            ks.push(self.net.momentum(cx, x)?);
        }
        let t = cx.tape;
        let temp = self.cfg.temperature;
        // Queries against every rank's keys, labels on the diagonal of the global batch.
        let g = |v: &Var<B>| super::gather(cx, v);
        let (q0, q1, k0, k1) = (g(&qs[0])?, g(&qs[1])?, g(&ks[0])?, g(&ks[1])?);
        let loss = t.add(&mocov3_loss(t, &q0, &k1, temp)?, &mocov3_loss(t, &q1, &k0, temp)?)?;
        Ok(StepOutput { loss, embedding: Some(zs[0].value.clone()) })
    }

    fn after_step(&mut self, ps: &mut ParamStore<B>, info: &StepInfo) -> Result<()> {
        self.net.update(ps, info)
    }
}
