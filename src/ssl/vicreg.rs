//! VICReg (Bardes, Ponce & LeCun, ICLR 2022) as solo-learn trains it on CIFAR: Barlow Twins'
//! projector, and three terms on the two views' z:
//! - invariance: the mean squared difference of z1 and z2;
//! - variance: per view, mean_j ReLU(1 - sqrt(Var_j + 1e-4)) (unbiased variance over the batch);
//! - covariance: per view, sum_{i != j} Cov_ij^2 / D (unbiased).
//!
//! L = 25 invariance + 25 variance + 1 covariance.

use serde::{Deserialize, Serialize};

use super::barlow::expander;
use super::heads::Head;
use super::{Method, MethodConfig, StepOutput, losses};
use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::models::{Backbone, BackboneConfig};
use crate::nn::{Ctx, ParamStore};
use crate::tensor::Tensor;

/// Added to the variance under the square root.
const VAR_EPS: f32 = 1e-4;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VicregConfig {
    /// Hidden width of the projector MLP.
    pub proj_hidden: usize,
    /// Output width of the projector (the embedding the loss sees).
    pub proj_dim: usize,
    /// Weight of the invariance (MSE) term.
    pub sim_loss_weight: f32,
    /// Weight of the variance (hinge on the std) term.
    pub var_loss_weight: f32,
    /// Weight of the covariance (off-diagonal) term.
    pub cov_loss_weight: f32,
}

impl Default for VicregConfig {
    /// solo-learn's CIFAR recipe (scripts/pretrain/cifar/vicreg.yaml).
    fn default() -> Self {
        VicregConfig { proj_hidden: 2048, proj_dim: 2048, sim_loss_weight: 25.0, var_loss_weight: 25.0, cov_loss_weight: 1.0 }
    }
}

impl MethodConfig for VicregConfig {
    const NAME: &'static str = "vicreg";
    const ABOUT: &'static str = "VICReg: invariance, variance and covariance terms";
    fn validate(&self) -> Result<()> {
        let weights_ok = [self.sim_loss_weight, self.var_loss_weight, self.cov_loss_weight].iter().all(|w| *w >= 0.0);
        if self.proj_dim == 0 || self.proj_hidden == 0 || !weights_ok {
            return Err(Error::Config(format!("vicreg: widths must be positive and the loss weights not negative (got {self:?})")));
        }
        Ok(())
    }
    fn build<B: Backend>(&self, ps: &mut ParamStore<B>, backbone: &BackboneConfig, _seed: u64) -> Result<Box<dyn Method<B>>> {
        Ok(Box::new(Vicreg::new(ps, backbone, self)?))
    }
}

pub struct Vicreg {
    cfg: VicregConfig,
    backbone: Backbone,
    projector: Head,
}

/// (variance term, covariance term) of one view's z [n, d].
fn variance_covariance<B: Backend>(t: &Tape<B>, z: &Var<B>) -> Result<(Var<B>, Var<B>)> {
    let (n, d) = (z.shape()[0], z.shape()[1]);
    let centred = t.sub(z, &t.mean_axis(z, 0)?)?;
    let var = t.scale(&t.sum_axis(&t.mul(&centred, &centred)?, 0)?, 1.0 / (n as f32 - 1.0))?;
    let std = t.sqrt(&t.add(&var, &losses::constant(&z.value, &vec![VAR_EPS; d], &[d])?)?)?;
    let hinge = t.relu(&t.sub(&losses::constant(&z.value, &vec![1.0; d], &[d])?, &std)?)?;
    let cov = t.scale(&t.matmul(&centred, &centred, true, false)?, 1.0 / (n as f32 - 1.0))?;
    let off = t.identity_penalty(&cov, 0.0, 1.0 / d as f32)?;
    Ok((losses::mean_all(t, &hinge)?, off))
}

/// solo-learn's vicreg_loss_func.
pub fn vicreg_loss<B: Backend>(t: &Tape<B>, z1: &Var<B>, z2: &Var<B>, cfg: &VicregConfig) -> Result<Var<B>> {
    let diff = t.sub(z1, z2)?;
    let sim = losses::mean_all(t, &t.mul(&diff, &diff)?)?;
    let (v1, c1) = variance_covariance(t, z1)?;
    let (v2, c2) = variance_covariance(t, z2)?;
    let var = t.add(&v1, &v2)?;
    let cov = t.add(&c1, &c2)?;
    let weighted = t.add(&t.scale(&sim, cfg.sim_loss_weight)?, &t.scale(&var, cfg.var_loss_weight)?)?;
    t.add(&weighted, &t.scale(&cov, cfg.cov_loss_weight)?)
}

impl Vicreg {
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, backbone: &BackboneConfig, cfg: &VicregConfig) -> Result<Self> {
        cfg.validate()?;
        let backbone = backbone.build(ps, "backbone")?;
        let projector = expander(ps, backbone.feature_dim(), cfg.proj_hidden, cfg.proj_dim)?;
        Ok(Vicreg { cfg: cfg.clone(), backbone, projector })
    }
}

impl<B: Backend> Method<B> for Vicreg {
    fn name(&self) -> &'static str {
        "vicreg"
    }
    fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    fn forward(&self, cx: &Ctx<B>, views: &[Var<B>], _labels: Option<&Tensor<B>>) -> Result<StepOutput<B>> {
        super::check_views("vicreg", views, 2)?;
        let zs = views.iter().map(|x| self.projector.forward(cx, &self.backbone.forward(cx, x)?)).collect::<Result<Vec<_>>>()?;
        // Variance and covariance of the global batch.
        let (z1, z2) = (super::gather(cx, &zs[0])?, super::gather(cx, &zs[1])?);
        let loss = vicreg_loss(cx.tape, &z1, &z2, &self.cfg)?;
        Ok(StepOutput { loss, embedding: Some(zs[0].value.clone()) })
    }
}
