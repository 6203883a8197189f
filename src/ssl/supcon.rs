//! SupCon (Khosla et al., NeurIPS 2020) as solo-learn trains it: SimCLR's network, and NT-Xent
//! whose positives for a view are every other view of an image with the same label. solo-learn
//! calls `simclr_loss_func(z, indexes=labels.repeat(2))`, which sums the positives inside the
//! log: L = mean_i [ log sum_{j != i} exp(s_ij / T) - log sum_{j in P(i)} exp(s_ij / T) ],
//! s = cosine similarity. Both sums are row log-sum-exps over masked logits.

use super::simclr::{NORM_EPS, SELF_MASK, SimClr, SimClrConfig};
use super::{Method, StepOutput, losses};
use crate::autograd::Var;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::models::{Backbone, BackboneConfig};
use crate::nn::{Ctx, ParamStore};
use crate::tensor::Tensor;

/// SupCon's settings are SimCLR's: projector widths and the temperature.
pub type SupConConfig = SimClrConfig;

pub struct SupCon {
    cfg: SupConConfig,
    simclr: SimClr,
}

impl SupCon {
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, backbone: &BackboneConfig, cfg: &SupConConfig) -> Result<Self> {
        Ok(SupCon { cfg: cfg.clone(), simclr: SimClr::new(ps, backbone, cfg)? })
    }
}

/// The SupCon loss of projections `zs` (one [n, d] per view) whose images carry `labels` [n].
pub fn supcon_loss<B: Backend>(cx: &Ctx<B>, zs: &[Var<B>], labels: &[usize], temperature: f32) -> Result<Var<B>> {
    let t = cx.tape;
    let rows = labels.len() * zs.len();
    let z = t.l2_normalize(&t.concat(&zs.iter().collect::<Vec<_>>(), 0)?, NORM_EPS)?;
    let logits = t.scale(&t.matmul(&z, &z, false, true)?, 1.0 / temperature)?;
    let label = |i: usize| labels[i % labels.len()];
    let (mut not_self, mut positive) = (vec![0.0f32; rows * rows], vec![SELF_MASK; rows * rows]);
    for i in 0..rows {
        not_self[i * rows + i] = SELF_MASK;
        for j in (0..rows).filter(|&j| j != i && label(j) == label(i)) {
            positive[i * rows + j] = 0.0;
        }
    }
    let all = t.logsumexp(&t.add(&logits, &losses::constant(&z.value, &not_self, &[rows, rows])?)?)?;
    let pos = t.logsumexp(&t.add(&logits, &losses::constant(&z.value, &positive, &[rows, rows])?)?)?;
    losses::mean_all(t, &t.sub(&all, &pos)?)
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
        let labels: Vec<usize> = labels.to_f32()?.iter().map(|&l| l as usize).collect();
        let zs = self.simclr.project(cx, views, "supcon")?;
        let loss = supcon_loss(cx, &zs, &labels, self.cfg.temperature)?;
        Ok(StepOutput { loss, embedding: Some(zs[0].value.clone()) })
    }
}
