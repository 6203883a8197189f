//! SimSiam (Chen & He, CVPR 2021): encoder f = backbone + projector, predictor h;
//! L = D(p1, sg(z2))/2 + D(p2, sg(z1))/2 with D(p, z) = -cos(p, z).
//! Each view goes through the network on its own, so every batch norm computes its statistics
//! per view, exactly as the reference implementation's two calls f(x1), f(x2).

use serde::{Deserialize, Serialize};

use super::heads::{Act, Head, LayerSpec};
use super::losses::NORM_EPS;
use super::{LrPolicy, Method, MethodConfig, StepOutput};
use crate::autograd::Var;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::models::{Backbone, BackboneConfig};
use crate::nn::{Ctx, ParamId, ParamStore};
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SimSiamConfig {
    /// Linear layers in the projector: 2 on CIFAR (paper App. D), 3 on ImageNet.
    pub proj_layers: usize,
    /// Hidden width of the projector MLP.
    pub proj_hidden: usize,
    /// Output width of the projector (the embedding the loss sees).
    pub proj_dim: usize,
    /// The predictor's bottleneck (1/4 of proj_dim in the paper).
    pub pred_hidden: usize,
    /// Ablation: gradients flow through z too (collapses).
    pub no_stop_grad: bool,
    /// Ablation: p = z (collapses).
    pub no_predictor: bool,
    /// Keep the predictor's learning rate at its base value (the paper's --fix-pred-lr).
    pub fix_pred_lr: bool,
}

impl Default for SimSiamConfig {
    fn default() -> Self {
        SimSiamConfig {
            proj_layers: 2,
            proj_hidden: 2048,
            proj_dim: 2048,
            pred_hidden: 512,
            no_stop_grad: false,
            no_predictor: false,
            fix_pred_lr: false,
        }
    }
}

impl MethodConfig for SimSiamConfig {
    const NAME: &'static str = "simsiam";
    const ABOUT: &'static str = "SimSiam: projector + predictor, symmetric negative cosine with stop-gradient";
    fn validate(&self) -> Result<()> {
        if self.proj_layers < 1 || self.proj_dim == 0 || self.proj_hidden == 0 || self.pred_hidden == 0 {
            return Err(Error::Invalid { op: "simsiam", msg: "projector needs at least one layer and non-zero widths".into() });
        }
        Ok(())
    }
    fn build<B: Backend>(&self, ps: &mut ParamStore<B>, backbone: &BackboneConfig, _seed: u64) -> Result<Box<dyn Method<B>>> {
        Ok(Box::new(SimSiam::new(ps, backbone, self)?))
    }
}

pub struct SimSiam {
    cfg: SimSiamConfig,
    backbone: Backbone,
    projector: Head,
    predictor: Option<Head>,
}

impl SimSiam {
    /// Registers `backbone.*`, `projector.*` and `predictor.*` in `ps`.
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, backbone: &BackboneConfig, cfg: &SimSiamConfig) -> Result<Self> {
        cfg.validate()?;
        let backbone = backbone.build(ps, "backbone")?;
        // Linear(no bias) -> BN -> ReLU, repeated; the last Linear -> BN without affine.
        let mut proj = Vec::new();
        for i in 0..cfg.proj_layers {
            let last = i + 1 == cfg.proj_layers;
            let out = if last { cfg.proj_dim } else { cfg.proj_hidden };
            proj.push(LayerSpec { out, bias: false, bn: Some(!last), act: if last { Act::None } else { Act::Relu } });
        }
        let projector = Head::new(ps, "projector", backbone.feature_dim(), &proj)?;
        let predictor = if cfg.no_predictor {
            None
        } else {
            let pred = [
                LayerSpec { out: cfg.pred_hidden, bias: false, bn: Some(true), act: Act::Relu },
                LayerSpec { out: cfg.proj_dim, bias: true, bn: None, act: Act::None },
            ];
            Some(Head::new(ps, "predictor", cfg.proj_dim, &pred)?)
        };
        Ok(SimSiam { cfg: cfg.clone(), backbone, projector, predictor })
    }
}

impl<B: Backend> Method<B> for SimSiam {
    fn name(&self) -> &'static str {
        "simsiam"
    }
    /// Two views through one network and a symmetric loss: no state outside the parameters.
    fn graph_safe(&self) -> bool {
        true
    }
    fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    fn forward(&self, cx: &Ctx<B>, views: &[Var<B>], _labels: Option<&Tensor<B>>) -> Result<StepOutput<B>> {
        super::check_views("simsiam", views, 2)?;
        let t = cx.tape;
        let mut zs = Vec::new();
        let mut ps = Vec::new();
        for x in views {
            let z = self.projector.forward(cx, &self.backbone.forward(cx, x)?)?;
            let p = match &self.predictor {
                Some(h) => h.forward(cx, &z)?,
                None => z.clone(),
            };
            zs.push(z);
            ps.push(p);
        }
        let target = |z: &Var<B>| if self.cfg.no_stop_grad { z.clone() } else { z.detach() };
        let d12 = t.cosine_loss(&ps[0], &target(&zs[1]), NORM_EPS)?;
        let d21 = t.cosine_loss(&ps[1], &target(&zs[0]), NORM_EPS)?;
        let loss = t.scale(&t.add(&d12, &d21)?, 0.5)?;
        Ok(StepOutput { loss, embedding: Some(zs[0].value.clone()) })
    }

    fn lr_policy(&self, ps: &ParamStore<B>, id: ParamId) -> LrPolicy {
        if self.cfg.fix_pred_lr && ps.entry(id).name.starts_with("predictor.") { LrPolicy::Fixed } else { LrPolicy::Scheduled }
    }
}
