//! SupCon (Khosla et al., NeurIPS 2020) as solo-learn trains it: SimCLR's network, and NT-Xent
//! whose positives for a view are every other view of an image with the same label. solo-learn
//! calls `simclr_loss_func(z, indexes=labels.repeat(2))`, which sums the positives inside the
//! log: L = mean_i [ log sum_{j != i} exp(s_ij / T) - log sum_{j in P(i)} exp(s_ij / T) ],
//! s = cosine similarity: SimCLR's fused `nt_xent` op with the labels as groups.

use super::simclr::{SimClr, SimClrConfig, nt_xent};
use serde::{Deserialize, Serialize};

use super::{Method, MethodConfig, StepOutput};
use crate::autograd::Var;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::models::{Backbone, BackboneConfig};
use crate::nn::{Ctx, ParamStore};
use crate::tensor::Tensor;

/// SupCon's settings are SimCLR's (projector widths and the temperature), in its own table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct SupConConfig(pub SimClrConfig);

impl MethodConfig for SupConConfig {
    const NAME: &'static str = "supcon";
    const ABOUT: &'static str = "SupCon: SimCLR whose positives are every other view of the same label (uses labels)";
    fn validate(&self) -> Result<()> {
        self.0.check("supcon")
    }
    fn build<B: Backend>(&self, ps: &mut ParamStore<B>, backbone: &BackboneConfig, _seed: u64) -> Result<Box<dyn Method<B>>> {
        Ok(Box::new(SupCon::new(ps, backbone, self)?))
    }
}

pub struct SupCon {
    cfg: SupConConfig,
    simclr: SimClr,
}

impl SupCon {
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, backbone: &BackboneConfig, cfg: &SupConConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(SupCon { cfg: cfg.clone(), simclr: SimClr::new(ps, backbone, &cfg.0)? })
    }
}

impl<B: Backend> Method<B> for SupCon {
    fn name(&self) -> &'static str {
        "supcon"
    }
    fn backbone(&self) -> &Backbone {
        &self.simclr.backbone
    }

    fn forward(&self, cx: &Ctx<B>, views: &[Var<B>], labels: Option<&Tensor<B>>) -> Result<StepOutput<B>> {
        let labels = labels.ok_or_else(|| Error::Invalid { op: "supcon", msg: "needs the images' labels".into() })?;
        let labels: Vec<usize> = super::gather_values(cx.params, labels)?.to_f32()?.iter().map(|&l| l as usize).collect();
        let zs = self.simclr.project(cx, views, "supcon")?;
        let embedding = Some(zs[0].value.clone());
        // Over every rank's rows and labels, as SimCLR.
        let zs = zs.iter().map(|z| super::gather(cx, z)).collect::<Result<Vec<_>>>()?;
        let loss = nt_xent(cx, &zs, &labels, self.cfg.0.temperature)?;
        Ok(StepOutput { loss, embedding })
    }
}
