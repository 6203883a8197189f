//! BYOL (Grill et al., NeurIPS 2020), as solo-learn trains it on CIFAR: an online network
//! (backbone + projector + predictor) predicts a momentum network's projection of the other
//! view. The momentum network (`momentum_backbone.*`, `momentum_projector.*`) starts as a copy
//! of the online one, takes no gradient, and follows it by an EMA after every optimiser step,
//! with tau rising from `base_tau` to `final_tau` on a cosine over the run (solo-learn's
//! MomentumUpdater). Loss: (2 - 2 cos(p2, z1')) + (2 - 2 cos(p1, z2')), means over the batch.
//! The views are asymmetric: solarisation probability per view (`solarize`, 0.0 and 0.2).
//! The momentum network is kept by `momentum::MomentumPairs`.

use serde::{Deserialize, Serialize};

use super::heads::{Act, Head, LayerSpec};
use super::momentum::{MOMENTUM, MomentumPairs, check_taus, tau_at};
use super::{Method, StepInfo, StepOutput};
use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::data::{AugmentConfig, ViewSpec};
use crate::error::{Error, Result};
use crate::models::{Backbone, BackboneConfig};
use crate::nn::{Ctx, ParamStore};
use crate::tensor::Tensor;

/// F.cosine_similarity's eps.
const COS_EPS: f32 = 1e-8;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ByolConfig {
    pub proj_hidden: usize,
    pub proj_dim: usize,
    pub pred_hidden: usize,
    /// EMA coefficient at the first step.
    pub base_tau: f64,
    /// EMA coefficient at the last step.
    pub final_tau: f64,
    /// Solarisation probability of view 1 and view 2 (replaces `augment.solarize_p`).
    pub solarize: [f32; 2],
}

impl Default for ByolConfig {
    /// solo-learn's CIFAR recipe (scripts/pretrain/cifar/byol.yaml).
    fn default() -> Self {
        ByolConfig { proj_hidden: 4096, proj_dim: 256, pred_hidden: 4096, base_tau: 0.99, final_tau: 1.0, solarize: [0.0, 0.2] }
    }
}

pub struct Byol {
    cfg: ByolConfig,
    backbone: Backbone,
    projector: Head,
    predictor: Head,
    momentum_backbone: Backbone,
    momentum_projector: Head,
    pairs: MomentumPairs,
}

/// BYOL's loss over two views: byol_loss_func(p2, z1') + byol_loss_func(p1, z2'), with
/// byol_loss_func(p, z) = 2 - 2 mean cos(p, z) and z' taking no gradient.
pub fn byol_loss<B: Backend>(t: &Tape<B>, p: [&Var<B>; 2], z_momentum: [&Var<B>; 2]) -> Result<Var<B>> {
    // cosine_loss is -mean cos, so each term is 2 + 2 cosine_loss.
    let a = t.cosine_loss(p[1], &z_momentum[0].detach(), COS_EPS)?;
    let b = t.cosine_loss(p[0], &z_momentum[1].detach(), COS_EPS)?;
    let sum = t.scale(&t.add(&a, &b)?, 2.0)?;
    let four = Tensor::full(sum.value.backend(), sum.value.shape(), 4.0, sum.value.dtype())?;
    t.add(&sum, &Var::constant(four))
}

impl Byol {
    /// Registers the online `backbone.*`, `projector.*`, `predictor.*` and the momentum copies
    /// `momentum_backbone.*`, `momentum_projector.*` (frozen, equal to the online weights).
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, backbone: &BackboneConfig, cfg: &ByolConfig) -> Result<Self> {
        check_taus("byol", cfg.base_tau, cfg.final_tau)?;
        if cfg.proj_dim == 0 || cfg.proj_hidden == 0 || cfg.pred_hidden == 0 || cfg.solarize.iter().any(|p| !(0.0..=1.0).contains(p)) {
            return Err(Error::Config(format!("byol: widths must be positive and solarize probabilities in [0, 1] (got {cfg:?})")));
        }
        // Linear -> BN -> ReLU -> Linear, with biases (solo-learn's nn.Sequential).
        let mlp = |out| [
            LayerSpec { out: cfg.proj_hidden, bias: true, bn: Some(true), act: Act::Relu },
            LayerSpec { out, bias: true, bn: None, act: Act::None },
        ];
        let online = backbone.build(ps, "backbone")?;
        let projector = Head::new(ps, "projector", online.feature_dim(), &mlp(cfg.proj_dim))?;
        let pred = [
            LayerSpec { out: cfg.pred_hidden, bias: true, bn: Some(true), act: Act::Relu },
            LayerSpec { out: cfg.proj_dim, bias: true, bn: None, act: Act::None },
        ];
        let predictor = Head::new(ps, "predictor", cfg.proj_dim, &pred)?;
        let momentum_backbone = backbone.build(ps, &format!("{MOMENTUM}backbone"))?;
        let momentum_projector = Head::new(ps, &format!("{MOMENTUM}projector"), online.feature_dim(), &mlp(cfg.proj_dim))?;
        let pairs = MomentumPairs::copy_and_freeze(ps, "byol")?;
        Ok(Byol { cfg: cfg.clone(), backbone: online, projector, predictor, momentum_backbone, momentum_projector, pairs })
    }
}

impl<B: Backend> Method<B> for Byol {
    fn name(&self) -> &'static str {
        "byol"
    }
    fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    fn views(&self, recipe: &AugmentConfig, size: usize) -> Vec<ViewSpec> {
        super::solarized_views(&self.cfg.solarize, recipe, size)
    }

    fn forward(&self, cx: &Ctx<B>, views: &[Var<B>], _labels: Option<&Tensor<B>>) -> Result<StepOutput<B>> {
        super::check_views("byol", views, 2)?;
        let mut zs = Vec::new();
        let mut ps = Vec::new();
        let mut zm = Vec::new();
        for x in views {
            let z = self.projector.forward(cx, &self.backbone.forward(cx, x)?)?;
            ps.push(self.predictor.forward(cx, &z)?);
            zs.push(z);
            // Frozen parameters: constants on the tape, so no gradient reaches them.
            zm.push(self.momentum_projector.forward(cx, &self.momentum_backbone.forward(cx, x)?)?.detach());
        }
        let loss = byol_loss(cx.tape, [&ps[0], &ps[1]], [&zm[0], &zm[1]])?;
        Ok(StepOutput { loss, embedding: Some(zs[0].value.clone()) })
    }

    /// The EMA of the momentum network, every parameter in one fused update.
    fn after_step(&mut self, ps: &mut ParamStore<B>, info: &StepInfo) -> Result<()> {
        self.pairs.update(ps, tau_at(self.cfg.base_tau, self.cfg.final_tau, info.step, info.total_steps))
    }
}
