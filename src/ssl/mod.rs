//! Self-supervised methods. The training loop only knows the `Method` trait and the registry
//! (`registry.rs`: `build`, `methods`): a method owns its settings (its own `[<name>]` table,
//! parsed and validated by its `MethodConfig`) and its heads (registered in the same parameter
//! store as the backbone), says which views it needs, computes its loss from them, and may hook
//! in before the optimiser step (edit gradients) and after it (an EMA target, a queue). A new
//! method is a file here and a row in `registry::builtins`; from outside the crate, one call to
//! `register`. Nothing outside src/ssl/ names a method.

pub mod barlow;
pub mod byol;
pub mod dino;
pub mod heads;
pub mod ijepa;
pub mod losses;
pub mod mae;
pub mod mocov2plus;
pub mod mocov3;
pub mod momentum;
pub mod nnclr;
pub mod queue;
pub mod registry;
pub mod simclr;
pub mod simsiam;
pub mod supcon;
pub mod swav;
pub mod vicreg;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::autograd::Var;
use crate::backend::Backend;
use crate::data::{AugmentConfig, ViewSpec};
use crate::error::{Error, Result};
use crate::models::Backbone;
use crate::nn::{Ctx, ParamId, ParamStore};
use crate::tensor::Tensor;

pub use registry::{Builder, MethodConfig, MethodInfo, MethodRecipe, build, is_method, method, method_names, methods, methods_help, parse_settings, register};

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
    /// Runs before each step's forward pass (SwAV's queue and DINO's teacher temperature
    /// depend on the epoch).
    fn begin_step(&mut self, info: &StepInfo) -> Result<()> {
        let _ = info;
        Ok(())
    }
    /// The loss of one batch; `views[v]` is [batch, h, w, 3]; labels for supervised variants.
    fn forward(&self, cx: &Ctx<B>, views: &[Var<B>], labels: Option<&Tensor<B>>) -> Result<StepOutput<B>>;
    /// Learning-rate multiplier and whether the schedule decays it, per parameter
    /// (SimSiam's fixed predictor learning rate).
    fn lr_policy(&self, ps: &ParamStore<B>, id: ParamId) -> LrPolicy {
        let _ = (ps, id);
        LrPolicy::Scheduled
    }
    /// Pictures of what the method learned, written into the run folder `out` at the end of
    /// training (MAE: masked input, reconstruction, original). `images` [n, h, w, 3] are held-out
    /// images as evaluation normalises them with `mean` and `std`. Most methods draw none.
    fn pictures(&self, ps: &ParamStore<B>, images: &Tensor<B>, mean: [f32; 3], std: [f32; 3], out: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
        let _ = (ps, images, mean, std, out);
        Ok(Vec::new())
    }
    /// Whether `optim.weight_decay` applies to a parameter (MAE's AdamW spares biases and norm
    /// weights, as timm's `add_weight_decay`). Every parameter by default.
    fn decays(&self, ps: &ParamStore<B>, id: ParamId) -> bool {
        let _ = (ps, id);
        true
    }
    /// Whether the forward pass depends on nothing but the step's inputs and the parameter
    /// store, with every update in place: then a step can be recorded once and replayed as a
    /// CUDA graph. Methods with per-step host state in their forward (a temperature schedule, a
    /// queue) must say no: a replay would use the recorded values. So must a method whose
    /// `before_update` changes the gradients: the graph runs the optimizer before it.
    fn graph_safe(&self) -> bool {
        false
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
    /// Tensors the method keeps outside the parameter store (queues, centres, their
    /// positions), by name, for the checkpoint. Momentum networks live in the store instead.
    fn state(&self) -> Result<Vec<(String, Tensor<B>)>> {
        Ok(Vec::new())
    }
    /// Restores `state()` from a checkpoint; `saved` maps each saved name to its tensor.
    fn load_state(&mut self, saved: &HashMap<String, Tensor<B>>) -> Result<()> {
        let _ = saved;
        Ok(())
    }
}

/// Every rank's rows of `z`, rank 0 first (the global batch), when training data-parallel; `z`
/// itself on one rank. Its backward gives each rank its rows of the gradient summed over ranks
/// (solo-learn's GatherLayer), so the ranks' averaged update is one rank's on the global batch.
pub fn gather<B: Backend>(cx: &Ctx<B>, z: &Var<B>) -> Result<Var<B>> {
    match cx.params.replicas() {
        Some(r) => cx.tape.all_gather(z, &r.group),
        None => Ok(z.clone()),
    }
}

/// `gather` for values that take no gradient (labels, a momentum network's keys).
pub fn gather_values<B: Backend>(ps: &ParamStore<B>, x: &Tensor<B>) -> Result<Tensor<B>> {
    match ps.replicas() {
        Some(r) => r.group.all_gather(x),
        None => Ok(x.clone()),
    }
}

/// (this rank, ranks) of the group `ps` trains in; (0, 1) on one rank. Per-image draws made for
/// the global batch and cut to this rank's rows (MAE's and I-JEPA's masks) are one rank's draws.
pub fn rank_of<B: Backend>(ps: &ParamStore<B>) -> (usize, usize) {
    ps.replicas().map_or((0, 1), |r| (r.group.rank(), r.group.world()))
}

/// This rank's rows of `x`, a value computed on the gathered global batch (its rank-th share).
pub fn own_rows<B: Backend>(ps: &ParamStore<B>, x: &Tensor<B>) -> Result<Tensor<B>> {
    match ps.replicas() {
        Some(r) => {
            let rows = x.shape()[0] / r.group.world();
            crate::ops::slice(x, 0, r.group.rank() * rows, rows)
        }
        None => Ok(x.clone()),
    }
}

/// Indices as the gather op takes them (one number per index, in the data's dtype), [shape].
pub fn index_tensor<B: Backend>(b: &B, ids: &[usize], shape: &[usize], dtype: crate::tensor::DType) -> Result<Tensor<B>> {
    let v: Vec<f32> = ids.iter().map(|&i| i as f32).collect();
    Tensor::from_f32(b, &v, shape, dtype)
}

/// timm's `add_weight_decay`, as MAE and I-JEPA group their parameters: no weight decay for
/// biases and 1-D weights (the norms).
pub fn decays_unless_bias_or_norm<B: Backend>(ps: &ParamStore<B>, id: ParamId) -> bool {
    ps.torch_shape(id).len() > 1 && !ps.entry(id).name.ends_with(".bias")
}

/// An error unless the loop supplied `want` views (a method's forward checks its input).
pub fn check_views<B: Backend>(method: &'static str, views: &[Var<B>], want: usize) -> Result<()> {
    if views.len() != want {
        return Err(Error::Invalid { op: method, msg: format!("needs {want} views, got {}", views.len()) });
    }
    Ok(())
}

/// Two views of `recipe`, solarised with probability `solarize[v]` (BYOL's and MoCo v3's
/// asymmetric views).
pub fn solarized_views(solarize: &[f32; 2], recipe: &AugmentConfig, size: usize) -> Vec<ViewSpec> {
    solarize.iter().map(|&p| ViewSpec { augment: AugmentConfig { solarize_p: p, ..recipe.clone() }, size }).collect()
}

/// The saved state tensor `name` with `shape`, or an error naming what is missing or wrong.
pub fn saved_state<B: Backend>(saved: &HashMap<String, Tensor<B>>, method: &str, name: &str, shape: &[usize]) -> Result<Tensor<B>> {
    let t = saved.get(name).ok_or_else(|| {
        Error::Config(format!("the checkpoint has no {method} state {name:?}: written by another method or version"))
    })?;
    if t.shape() != shape {
        return Err(Error::Config(format!(
            "the checkpoint's {method} state {name:?} has shape {:?}, the config asks for {shape:?}",
            t.shape()
        )));
    }
    Ok(t.clone())
}

/// SwAV's and DINO's multi-crop: the two large crops, plus `small_crops` crops of
/// `small_size` pixels cut from `small_crop_scale` of the image (the large crops keep the
/// recipe's scale and the run's image size).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MultiCrop {
    /// Small crops per image besides the two large ones (0: no multi-crop).
    pub small_crops: usize,
    /// Side of each small crop, in pixels.
    pub small_size: usize,
    /// Area fraction range the small crops are cut from.
    pub small_crop_scale: (f32, f32),
}

impl Default for MultiCrop {
    /// No small crops (solo-learn's CIFAR recipes); when asked for, 16-pixel crops of 5-40%.
    fn default() -> Self {
        MultiCrop { small_crops: 0, small_size: 16, small_crop_scale: (0.05, 0.4) }
    }
}

impl MultiCrop {
    pub fn check(&self, method: &str) -> Result<()> {
        let (lo, hi) = self.small_crop_scale;
        if self.small_crops > 0 && (self.small_size == 0 || !(0.0 < lo && lo <= hi && hi <= 1.0)) {
            return Err(Error::Config(format!(
                "{method}.multicrop: small_size must be positive and 0 < small_crop_scale[0] <= small_crop_scale[1] <= 1 (got {self:?})"
            )));
        }
        Ok(())
    }

    pub fn views(&self, recipe: &AugmentConfig, size: usize) -> Vec<ViewSpec> {
        let mut v = vec![ViewSpec { augment: recipe.clone(), size }; 2];
        let small = AugmentConfig { crop_scale: self.small_crop_scale, ..recipe.clone() };
        v.extend(std::iter::repeat_n(ViewSpec { augment: small, size: self.small_size }, self.small_crops));
        v
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
