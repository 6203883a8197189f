//! BYOL (Grill et al., NeurIPS 2020), as solo-learn trains it on CIFAR: an online network
//! (backbone + projector + predictor) predicts a momentum network's projection of the other
//! view. The momentum network (`momentum_backbone.*`, `momentum_projector.*`) starts as a copy
//! of the online one, takes no gradient, and follows it by an EMA after every optimiser step,
//! with tau rising from `base_tau` to `final_tau` on a cosine over the run (solo-learn's
//! MomentumUpdater). Loss: (2 - 2 cos(p2, z1')) + (2 - 2 cos(p1, z2')), means over the batch.
//! The views are asymmetric: solarisation probability per view (`solarize`, 0.0 and 0.2).
//! The online network and its momentum twin are a `momentum::MomentumPair`.

use serde::{Deserialize, Serialize};

use super::heads::{Act, Head, LayerSpec};
use super::momentum::{MomentumPair, Taus, check_taus};
use super::{Method, MethodConfig, StepInfo, StepOutput};
use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::data::{AugmentConfig, ViewSpec};
use crate::error::{Error, Result};
use crate::models::{Backbone, BackboneConfig};
use crate::nn::{Ctx, ParamStore};
use crate::tensor::Tensor;

/// F.cosine_similarity's eps.
const COS_EPS: f32 = 1e-8;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ByolConfig {
    /// Hidden width of the projector MLP.
    pub proj_hidden: usize,
    /// Output width of the projector (the embedding the loss sees).
    pub proj_dim: usize,
    /// Hidden width of the predictor MLP.
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
    /// backbone + projector, and their momentum twin.
    net: MomentumPair<Head>,
    predictor: Head,
}

impl MethodConfig for ByolConfig {
    const NAME: &'static str = "byol";
    const ABOUT: &'static str = "BYOL: online projector + predictor against an EMA momentum network, asymmetric views";
    fn validate(&self) -> Result<()> {
        check_taus("byol", self.base_tau, self.final_tau)?;
        if self.proj_dim == 0 || self.proj_hidden == 0 || self.pred_hidden == 0 || self.solarize.iter().any(|p| !(0.0..=1.0).contains(p)) {
            return Err(Error::Config(format!("byol: widths must be positive and solarize probabilities in [0, 1] (got {self:?})")));
        }
        Ok(())
    }
    fn build<B: Backend>(&self, ps: &mut ParamStore<B>, backbone: &BackboneConfig, _seed: u64) -> Result<Box<dyn Method<B>>> {
        Ok(Box::new(Byol::new(ps, backbone, self)?))
    }
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
        cfg.validate()?;
        // Linear -> BN -> ReLU -> Linear, with biases (solo-learn's nn.Sequential).
        let mlp = [
            LayerSpec { out: cfg.proj_hidden, bias: true, bn: Some(true), act: Act::Relu },
            LayerSpec { out: cfg.proj_dim, bias: true, bn: None, act: Act::None },
        ];
        let online = backbone.build(ps, "backbone")?;
        let feature_dim = online.feature_dim();
        let projector = Head::new(ps, "projector", feature_dim, &mlp)?;
        let pred = [
            LayerSpec { out: cfg.pred_hidden, bias: true, bn: Some(true), act: Act::Relu },
            LayerSpec { out: cfg.proj_dim, bias: true, bn: None, act: Act::None },
        ];
        let predictor = Head::new(ps, "predictor", cfg.proj_dim, &pred)?;
        let taus = Taus { base: cfg.base_tau, last: cfg.final_tau };
        let net = MomentumPair::new(ps, "byol", backbone, (online, projector), "projector", |ps, name| Head::new(ps, name, feature_dim, &mlp), taus)?;
        Ok(Byol { cfg: cfg.clone(), net, predictor })
    }
}

impl<B: Backend> Method<B> for Byol {
    fn name(&self) -> &'static str {
        "byol"
    }
    fn backbone(&self) -> &Backbone {
        &self.net.backbone
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
            let z = self.net.online(cx, x)?;
            ps.push(self.predictor.forward(cx, &z)?);
            zs.push(z);
            zm.push(self.net.momentum(cx, x)?);
        }
        let loss = byol_loss(cx.tape, [&ps[0], &ps[1]], [&zm[0], &zm[1]])?;
        Ok(StepOutput { loss, embedding: Some(zs[0].value.clone()) })
    }

    /// The EMA of the momentum network, every parameter in one fused update.
    fn after_step(&mut self, ps: &mut ParamStore<B>, info: &StepInfo) -> Result<()> {
        self.net.update(ps, info)
    }
}
