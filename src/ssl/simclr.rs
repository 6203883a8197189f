//! SimCLR (Chen et al., ICML 2020): encoder f = backbone + projector, and the NT-Xent loss over
//! the 2N projections of a batch: each view's positive is the other view of its image, the
//! other 2N - 2 views are its negatives. As solo-learn's `simclr_loss_func`:
//! L = mean_i [ -s(i, pos(i)) / T + log sum_{j != i} exp(s(i, j) / T) ], s = cosine similarity.
//! Built from real ops: row L2 normalisation, one [2N, 2N] similarity matmul, and the fused
//! `nt_xent` op, which reads that matrix once forward and writes its gradient once backward
//! (no scaled, masked or softmaxed copies). Each view goes through the network on its own
//! (per-view BN).

use serde::{Deserialize, Serialize};

use super::heads::{Act, Head, LayerSpec};
use super::losses::NORM_EPS;
use super::{Method, MethodConfig, StepOutput};
use crate::autograd::Var;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::models::{Backbone, BackboneConfig};
use crate::nn::{Ctx, ParamStore};
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SimClrConfig {
    /// Hidden width of the projector MLP.
    pub proj_hidden: usize,
    /// Output width of the projector (the embedding the loss sees).
    pub proj_dim: usize,
    /// The softmax temperature T of NT-Xent.
    pub temperature: f32,
}

impl Default for SimClrConfig {
    /// solo-learn's CIFAR recipe.
    fn default() -> Self {
        SimClrConfig { proj_hidden: 2048, proj_dim: 256, temperature: 0.2 }
    }
}

impl SimClrConfig {
    /// The check SimCLR and SupCon share, naming `method`.
    pub(super) fn check(&self, method: &str) -> Result<()> {
        if self.proj_dim == 0 || self.proj_hidden == 0 || !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::Config(format!(
                "{method}: proj_hidden and proj_dim must be positive and temperature a positive number (got {}, {}, {})",
                self.proj_hidden, self.proj_dim, self.temperature
            )));
        }
        Ok(())
    }
}

impl MethodConfig for SimClrConfig {
    const NAME: &'static str = "simclr";
    const ABOUT: &'static str = "SimCLR: projector, NT-Xent over the 2N views of a batch";
    fn validate(&self) -> Result<()> {
        self.check("simclr")
    }
    fn build<B: Backend>(&self, ps: &mut ParamStore<B>, backbone: &BackboneConfig, _seed: u64) -> Result<Box<dyn Method<B>>> {
        Ok(Box::new(SimClr::new(ps, backbone, self)?))
    }
}

pub struct SimClr {
    cfg: SimClrConfig,
    pub(super) backbone: Backbone,
    projector: Head,
}

impl SimClr {
    /// Registers `backbone.*` and `projector.*` (Linear -> BN -> ReLU -> Linear) in `ps`.
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, backbone: &BackboneConfig, cfg: &SimClrConfig) -> Result<Self> {
        cfg.validate()?;
        let backbone = backbone.build(ps, "backbone")?;
        let proj = [
            LayerSpec { out: cfg.proj_hidden, bias: true, bn: Some(true), act: Act::Relu },
            LayerSpec { out: cfg.proj_dim, bias: true, bn: None, act: Act::None },
        ];
        let projector = Head::new(ps, "projector", backbone.feature_dim(), &proj)?;
        Ok(SimClr { cfg: cfg.clone(), backbone, projector })
    }
}

impl SimClr {
    /// The projections z of every view, each view through the network on its own.
    pub(super) fn project<B: Backend>(&self, cx: &Ctx<B>, views: &[Var<B>], method: &'static str) -> Result<Vec<Var<B>>> {
        super::check_views(method, views, 2)?;
        views.iter().map(|x| self.projector.forward(cx, &self.backbone.forward(cx, x)?)).collect()
    }
}

/// NT-Xent of the projections `zs` (one [n, d] per view) of images in `groups` (one id per
/// image): each view's positives are the other views of its group, its negatives every other
/// view. SimCLR's groups are the images themselves, SupCon's their labels.
pub fn nt_xent<B: Backend>(cx: &Ctx<B>, zs: &[Var<B>], groups: &[usize], temperature: f32) -> Result<Var<B>> {
    let t = cx.tape;
    let z = t.l2_normalize(&t.concat(&zs.iter().collect::<Vec<_>>(), 0)?, NORM_EPS)?;
    let rows = z.shape()[0];
    let ids: Vec<f32> = (0..rows).map(|i| groups[i % groups.len()] as f32).collect();
    let ids = Tensor::from_f32(z.value.backend(), &ids, &[rows], z.value.dtype())?;
    t.nt_xent(&t.matmul(&z, &z, false, true)?, &ids, temperature)
}

impl<B: Backend> Method<B> for SimClr {
    fn name(&self) -> &'static str {
        "simclr"
    }
    fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    fn forward(&self, cx: &Ctx<B>, views: &[Var<B>], _labels: Option<&Tensor<B>>) -> Result<StepOutput<B>> {
        let zs = self.project(cx, views, "simclr")?;
        let embedding = Some(zs[0].value.clone());
        // NT-Xent over every rank's rows: the negatives are the global batch's.
        let zs = zs.iter().map(|z| super::gather(cx, z)).collect::<Result<Vec<_>>>()?;
        let images: Vec<usize> = (0..zs[0].shape()[0]).collect();
        let loss = nt_xent(cx, &zs, &images, self.cfg.temperature)?;
        Ok(StepOutput { loss, embedding })
    }
}
