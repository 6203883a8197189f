//! Self-supervised methods. The training loop only knows the `Method` trait: a method owns its
//! heads (registered in the same parameter store as the backbone), computes its loss from the
//! augmented views, and may run a hook after each optimiser step (an EMA target, a queue).
//! SimSiam is the first; SimCLR, BYOL, SupCon, SwAV and MoCo slot in beside it.

pub mod heads;
pub mod simclr;
pub mod simsiam;

use crate::autograd::Var;
use crate::backend::Backend;
use crate::error::Result;
use crate::models::Backbone;
use crate::nn::{Ctx, ParamId, ParamStore};
use crate::tensor::Tensor;

/// What one training step's forward pass produced.
pub struct StepOutput<B: Backend> {
    pub loss: Var<B>,
    /// The projector outputs z of the first view, for the collapse monitor (std of z/|z|).
    pub embedding: Option<Tensor<B>>,
}

pub trait Method<B: Backend> {
    fn name(&self) -> &'static str;
    /// Number of augmented views per image the loop must supply.
    fn views(&self) -> usize;
    fn backbone(&self) -> &Backbone;
    /// The loss of one batch; `views[v]` is [batch, h, w, 3]; labels for supervised variants.
    fn forward(&self, cx: &Ctx<B>, views: &[Var<B>], labels: Option<&Tensor<B>>) -> Result<StepOutput<B>>;
    /// Learning-rate multiplier and whether the schedule decays it, per parameter
    /// (SimSiam's fixed predictor learning rate).
    fn lr_policy(&self, ps: &ParamStore<B>, id: ParamId) -> LrPolicy {
        let _ = (ps, id);
        LrPolicy::Scheduled
    }
    /// Runs between backward and the optimiser step, on the parameter gradients (SwAV freezes
    /// its prototypes early on; DINO cancels its last layer's gradient). Most methods need none.
    fn before_update(&self, info: &StepInfo, grads: &mut Vec<(ParamId, Tensor<B>)>) -> Result<()> {
        let _ = (info, grads);
        Ok(())
    }
    /// Runs after every optimiser step (EMA targets, queues). SimSiam and SimCLR need none.
    fn after_step(&mut self, ps: &mut ParamStore<B>, info: &StepInfo) -> Result<()> {
        let _ = (ps, info);
        Ok(())
    }
}

/// Where a step sits in the run, for the hooks (EMA and temperature schedules need the total).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepInfo {
    /// Steps taken before this one, over the whole run.
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    pub steps_per_epoch: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrPolicy {
    /// Follows the warm-up + cosine schedule.
    Scheduled,
    /// Stays at the base learning rate.
    Fixed,
}

/// The collapse monitor: the mean over channels of the per-channel standard deviation of
/// z/|z| over the batch. Healthy training stays near 1/sqrt(dim); collapse drives it to 0.
pub fn normalized_std(z: &[f32], rows: usize, dim: usize) -> f64 {
    if rows < 2 || dim == 0 {
        return 0.0;
    }
    let mut normed = vec![0.0f64; rows * dim];
    for r in 0..rows {
        let row = &z[r * dim..(r + 1) * dim];
        let n = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt().max(1e-12);
        for (o, &v) in normed[r * dim..(r + 1) * dim].iter_mut().zip(row) {
            *o = v as f64 / n;
        }
    }
    let mut total = 0.0;
    for c in 0..dim {
        let mean = (0..rows).map(|r| normed[r * dim + c]).sum::<f64>() / rows as f64;
        // torch.std's default: unbiased.
        let var = (0..rows).map(|r| (normed[r * dim + c] - mean).powi(2)).sum::<f64>() / (rows as f64 - 1.0);
        total += var.sqrt();
    }
    total / dim as f64
}
