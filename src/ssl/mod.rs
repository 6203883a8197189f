//! Self-supervised methods. The training loop only knows the `Method` trait and this module's
//! registry (`METHODS`, `build`): a method owns its heads (registered in the same parameter
//! store as the backbone), says which views it needs, computes its loss from them, and may hook
//! in before the optimiser step (edit gradients) and after it (an EMA target, a queue). A new
//! method is a file here, a line in `METHODS` and `build`, and its own `[<name>]` config table.

pub mod byol;
pub mod heads;
pub mod simclr;
pub mod simsiam;

use crate::autograd::Var;
use crate::backend::Backend;
use crate::config::Config;
use crate::data::{AugmentConfig, ViewSpec};
use crate::error::{Error, Result};
use crate::models::{Backbone, BackboneConfig};
use crate::nn::{Ctx, ParamId, ParamStore};
use crate::tensor::Tensor;

/// Every method, by the name `method = "..."` takes, with what it is.
pub const METHODS: &[(&str, &str)] = &[
    ("simsiam", "SimSiam: projector + predictor, symmetric negative cosine with stop-gradient"),
    ("simclr", "SimCLR: projector, NT-Xent over the 2N views of a batch"),
    ("byol", "BYOL: online projector + predictor against an EMA momentum network, asymmetric views"),
];

/// Whether `name` is a registered method.
pub fn is_method(name: &str) -> bool {
    METHODS.iter().any(|(n, _)| *n == name)
}

/// The registered method names, for messages.
pub fn method_names() -> String {
    METHODS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// Builds the method `cfg.method` names from its config table, its heads registered in `ps`
/// beside the backbone.
pub fn build<B: Backend>(cfg: &Config, ps: &mut ParamStore<B>, backbone: &BackboneConfig) -> Result<Box<dyn Method<B>>> {
    Ok(match cfg.method.as_str() {
        "simsiam" => Box::new(simsiam::SimSiam::new(ps, backbone, &cfg.simsiam)?),
        "simclr" => Box::new(simclr::SimClr::new(ps, backbone, &cfg.simclr)?),
        "byol" => Box::new(byol::Byol::new(ps, backbone, &cfg.byol)?),
        m => return Err(Error::Config(format!("method: unknown {m:?}; available: {}", method_names()))),
    })
}

/// What one training step's forward pass produced.
pub struct StepOutput<B: Backend> {
    pub loss: Var<B>,
    /// The projector outputs z of the first view, for the collapse monitor (std of z/|z|).
    pub embedding: Option<Tensor<B>>,
}

pub trait Method<B: Backend> {
    fn name(&self) -> &'static str;
    /// The augmented views of each image the loop must supply, given the run's recipe and image
    /// size. The default is two views of that recipe (SimSiam, SimCLR); asymmetric or multi-crop
    /// methods override it.
    fn views(&self, recipe: &AugmentConfig, size: usize) -> Vec<ViewSpec> {
        vec![ViewSpec { augment: recipe.clone(), size }; 2]
    }
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
