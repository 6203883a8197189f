//! Barlow Twins (Zbontar et al., ICML 2021) as solo-learn trains it on CIFAR: backbone +
//! projector (Linear-BN-ReLU, twice, then Linear), asymmetric views (solarisation 0 / 0.2). Each view's z is batch-normalised without
//! affine (its own statistics); C = z1^T z2 / N; the loss pushes C to the identity:
//! L = scale [ sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2 ], the fused `identity_penalty`
//! op on the GEMM's output.

use serde::{Deserialize, Serialize};

use super::heads::{Act, Head, LayerSpec};
use super::{Method, MethodConfig, StepOutput};
use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::data::{AugmentConfig, ViewSpec};
use crate::error::{Error, Result};
use crate::models::{Backbone, BackboneConfig};
use crate::nn::{Ctx, ParamStore};
use crate::tensor::Tensor;

/// BatchNorm1d's eps.
const BN_EPS: f32 = 1e-5;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BarlowConfig {
    /// Hidden width of the projector MLP.
    pub proj_hidden: usize,
    /// Output width of the projector (the embedding the loss sees).
    pub proj_dim: usize,
    /// Weight of the off-diagonal terms.
    pub lamb: f32,
    /// Factor on the whole loss.
    pub scale_loss: f32,
    /// Solarisation probability of view 1 and view 2 (replaces `augment.solarize_p`).
    pub solarize: [f32; 2],
}

impl Default for BarlowConfig {
    /// solo-learn's CIFAR recipe (scripts/pretrain/cifar/barlow.yaml).
    fn default() -> Self {
        BarlowConfig { proj_hidden: 2048, proj_dim: 2048, lamb: 0.0051, scale_loss: 0.1, solarize: [0.0, 0.2] }
    }
}

impl MethodConfig for BarlowConfig {
    const NAME: &'static str = "barlow";
    const ABOUT: &'static str = "Barlow Twins: the cross-correlation of the two views' embeddings pushed to identity";
    fn validate(&self) -> Result<()> {
        let solarize_ok = self.solarize.iter().all(|p| (0.0..=1.0).contains(p));
        if self.proj_dim == 0 || self.proj_hidden == 0 || !(self.lamb >= 0.0) || !(self.scale_loss > 0.0) || !solarize_ok {
            return Err(Error::Config(format!(
                "barlow: widths and scale_loss must be positive, lamb not negative, solarize probabilities in [0, 1] (got {self:?})"
            )));
        }
        Ok(())
    }
    fn build<B: Backend>(&self, ps: &mut ParamStore<B>, backbone: &BackboneConfig, _seed: u64) -> Result<Box<dyn Method<B>>> {
        Ok(Box::new(Barlow::new(ps, backbone, self)?))
    }
}

pub struct Barlow {
    cfg: BarlowConfig,
    backbone: Backbone,
    projector: Head,
}

/// The projector Barlow Twins and VICReg share: Linear-BN-ReLU, Linear-BN-ReLU, Linear.
pub(super) fn expander<B: Backend>(ps: &mut ParamStore<B>, in_dim: usize, hidden: usize, out: usize) -> Result<Head> {
    let spec = [
        LayerSpec { out: hidden, bias: true, bn: Some(true), act: Act::Relu },
        LayerSpec { out: hidden, bias: true, bn: Some(true), act: Act::Relu },
        LayerSpec { out, bias: true, bn: None, act: Act::None },
    ];
    Head::new(ps, "projector", in_dim, &spec)
}

/// solo-learn's barlow_loss_func.
pub fn barlow_loss<B: Backend>(t: &Tape<B>, z1: &Var<B>, z2: &Var<B>, lamb: f32, scale_loss: f32) -> Result<Var<B>> {
    let n = z1.shape()[0];
    let z1 = t.batchnorm_train(z1, None, None, BN_EPS)?;
    let z2 = t.batchnorm_train(z2, None, None, BN_EPS)?;
    let c = t.scale(&t.matmul(&z1, &z2, true, false)?, 1.0 / n as f32)?;
    t.scale(&t.identity_penalty(&c, 1.0, lamb)?, scale_loss)
}

impl Barlow {
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, backbone: &BackboneConfig, cfg: &BarlowConfig) -> Result<Self> {
        cfg.validate()?;
        let backbone = backbone.build(ps, "backbone")?;
        let projector = expander(ps, backbone.feature_dim(), cfg.proj_hidden, cfg.proj_dim)?;
        Ok(Barlow { cfg: cfg.clone(), backbone, projector })
    }
}

impl<B: Backend> Method<B> for Barlow {
    fn name(&self) -> &'static str {
        "barlow"
    }
    fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    fn views(&self, recipe: &AugmentConfig, size: usize) -> Vec<ViewSpec> {
        super::solarized_views(&self.cfg.solarize, recipe, size)
    }

    fn forward(&self, cx: &Ctx<B>, views: &[Var<B>], _labels: Option<&Tensor<B>>) -> Result<StepOutput<B>> {
        super::check_views("barlow", views, 2)?;
        let zs = views.iter().map(|x| self.projector.forward(cx, &self.backbone.forward(cx, x)?)).collect::<Result<Vec<_>>>()?;
        // The cross-correlation of the global batch (its batch norm included).
        let (z1, z2) = (super::gather(cx, &zs[0])?, super::gather(cx, &zs[1])?);
        let loss = barlow_loss(cx.tape, &z1, &z2, self.cfg.lamb, self.cfg.scale_loss)?;
        Ok(StepOutput { loss, embedding: Some(zs[0].value.clone()) })
    }
}
