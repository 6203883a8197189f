//! DINO (Caron et al., ICCV 2021) as solo-learn trains it on CIFAR: a student (backbone + head)
//! matches a teacher that is an EMA of it. The head is an MLP (Linear-GELU, Linear-GELU,
//! Linear to a bottleneck; weights trunc-normal 0.02, biases 0), L2-normalised, then a
//! weight-normalised Linear to the prototypes without bias whose norm stays 1 (`last_layer`).
//! The teacher sees the two large crops; its outputs are centred (the centre is an EMA of its
//! batch means) and sharpened, softmax((t - c) / tau_t); the student sees every crop at
//! temperature 0.1. Loss: the mean over (teacher crop, other student crop) pairs of the soft
//! cross-entropy. tau_t warms up linearly over the first epochs; the last layer takes no update
//! for the first `freeze_last_layer` epochs.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::heads::{Act, Head, LayerSpec};
use super::losses::NORM_EPS;
use super::momentum::{MomentumPair, Taus, check_taus};
use super::{Method, MethodConfig, MultiCrop, StepInfo, StepOutput, losses, saved_state};
use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::data::{AugmentConfig, ViewSpec};
use crate::error::{Error, Result};
use crate::models::{Backbone, BackboneConfig};
use crate::nn::{Ctx, Init, Linear, ParamId, ParamStore};
use crate::ops;
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DinoConfig {
    /// Hidden width of the projector MLP.
    pub proj_hidden: usize,
    /// The bottleneck before the prototypes.
    pub proj_dim: usize,
    /// Number of prototypes (output width of the last layer).
    pub num_prototypes: usize,
    /// Temperature of the student's softmax.
    pub student_temperature: f32,
    /// Temperature of the teacher's softmax after its warm-up.
    pub teacher_temperature: f32,
    /// The teacher temperature rises linearly from this over `warmup_teacher_temperature_epochs`.
    pub warmup_teacher_temperature: f32,
    /// Epochs over which the teacher temperature rises to teacher_temperature.
    pub warmup_teacher_temperature_epochs: usize,
    /// EMA momentum of the centre subtracted from the teacher's outputs.
    pub center_momentum: f32,
    /// EMA coefficient of the momentum encoder at the first step (rises to final_tau on a cosine).
    pub base_tau: f64,
    /// EMA coefficient of the momentum encoder at the last step.
    pub final_tau: f64,
    /// Epochs during which the last layer gets no gradient.
    pub freeze_last_layer: usize,
    /// solo-learn's clip_gradients: each backbone parameter's gradient scaled down to norm at
    /// most this (clip / (norm + 1e-6) when below 1), before the update; 0 turns it off.
    pub clip_grad: f32,
    /// Batch norm after the head's hidden layers (solo-learn's use_bn_in_head; lightly's
    /// default). Off in solo-learn's CIFAR recipe; on, a small network's features are centred
    /// per batch, which keeps the teacher from starting collapsed (see configs/dino-demo.toml).
    pub use_bn_in_head: bool,
    /// Solarisation probability of the two large crops (replaces `augment.solarize_p`).
    pub solarize: [f32; 2],
    pub multicrop: MultiCrop,
}

impl Default for DinoConfig {
    /// solo-learn's CIFAR recipe (scripts/pretrain/cifar/dino.yaml).
    fn default() -> Self {
        DinoConfig {
            proj_hidden: 2048,
            proj_dim: 256,
            num_prototypes: 4096,
            student_temperature: 0.1,
            teacher_temperature: 0.07,
            warmup_teacher_temperature: 0.04,
            warmup_teacher_temperature_epochs: 0,
            center_momentum: 0.9,
            base_tau: 0.9995,
            final_tau: 1.0,
            freeze_last_layer: 1,
            clip_grad: 0.0,
            use_bn_in_head: false,
            solarize: [0.0, 0.2],
            multicrop: MultiCrop::default(),
        }
    }
}

impl DinoConfig {
    /// solo-learn's teacher_temp_schedule at `epoch`: linspace(warm-up, final, warm-up epochs)
    /// over the warm-up, then the final temperature.
    pub fn teacher_temperature_at(&self, epoch: usize) -> f32 {
        let n = self.warmup_teacher_temperature_epochs;
        if epoch >= n {
            return self.teacher_temperature;
        }
        if n == 1 {
            return self.warmup_teacher_temperature;
        }
        let (a, b) = (self.warmup_teacher_temperature as f64, self.teacher_temperature as f64);
        (a + (b - a) * epoch as f64 / (n - 1) as f64) as f32
    }
}

/// DINO's head: MLP, L2 normalisation, weight-normalised prototypes.
struct DinoHead {
    mlp: Head,
    last_layer: ParamId,
}

impl DinoHead {
    fn new<B: Backend>(ps: &mut ParamStore<B>, prefix: &str, in_dim: usize, cfg: &DinoConfig) -> Result<Self> {
        let bn = cfg.use_bn_in_head.then_some(true);
        let spec = [
            LayerSpec { out: cfg.proj_hidden, bias: true, bn, act: Act::Gelu },
            LayerSpec { out: cfg.proj_hidden, bias: true, bn, act: Act::Gelu },
            LayerSpec { out: cfg.proj_dim, bias: true, bn: None, act: Act::None },
        ];
        // DINOHead._init_weights: trunc-normal(0.02) weights, zero biases.
        let mlp = Head::with_init(ps, &format!("{prefix}.mlp"), in_dim, &spec, Some((Init::TruncNormal(0.02), Init::Zeros)))?;
        let last = Linear::new(ps, &format!("{prefix}.last_layer"), cfg.proj_dim, cfg.num_prototypes, false, None, None)?;
        Ok(DinoHead { mlp, last_layer: last.w })
    }

    /// (bottleneck output, prototype logits).
    fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<(Var<B>, Var<B>)> {
        let t = cx.tape;
        let h = self.mlp.forward(cx, x)?;
        let w = t.l2_normalize(&cx.param(self.last_layer), NORM_EPS)?;
        let logits = t.matmul(&t.l2_normalize(&h, NORM_EPS)?, &w, false, true)?;
        Ok((h, logits))
    }
}

pub struct Dino<B: Backend> {
    cfg: DinoConfig,
    /// The student (backbone + head) and its momentum twin, the teacher.
    net: MomentumPair<DinoHead>,
    /// The student backbone's parameters, whose gradients `clip_grad` clips.
    backbone_params: HashSet<ParamId>,
    /// [num_prototypes]
    center: Tensor<B>,
    epoch: Cell<usize>,
    /// This step's teacher batch mean, for the centre's update after the optimiser step.
    batch_center: RefCell<Option<Tensor<B>>>,
}

/// solo-learn's DINOLoss.forward: student logits per crop, teacher logits per large crop; returns
/// the loss and the teacher's batch mean (for the centre).
pub fn dino_loss<B: Backend>(
    t: &Tape<B>,
    student: &[Var<B>],
    teacher: &[Tensor<B>],
    center: &Tensor<B>,
    student_temperature: f32,
    teacher_temperature: f32,
) -> Result<(Var<B>, Tensor<B>)> {
    let mut terms = Vec::new();
    for (iq, tq) in teacher.iter().enumerate() {
        let q = ops::softmax(&ops::scale(&ops::sub(tq, center)?, 1.0 / teacher_temperature)?)?;
        for (_, s) in student.iter().enumerate().filter(|(iv, _)| *iv != iq) {
            terms.push(losses::soft_cross_entropy(t, &t.scale(s, 1.0 / student_temperature)?, &q)?);
        }
    }
    let all = ops::concat(&teacher.iter().collect::<Vec<_>>(), 0)?;
    let mean = ops::scale(&ops::sum_axis(&all, 0)?, 1.0 / all.shape()[0] as f32)?;
    Ok((losses::mean_of(t, &terms)?, mean))
}

impl MethodConfig for DinoConfig {
    const NAME: &'static str = "dino";
    const ABOUT: &'static str = "DINO: self-distillation from an EMA teacher with centring and sharpening";
    fn validate(&self) -> Result<()> {
        check_taus("dino", self.base_tau, self.final_tau)?;
        self.multicrop.check("dino")?;
        let temps = [self.student_temperature, self.teacher_temperature, self.warmup_teacher_temperature];
        if self.proj_dim == 0
            || self.proj_hidden == 0
            || self.num_prototypes == 0
            || temps.iter().any(|t| !(*t > 0.0))
            || !(0.0..=1.0).contains(&self.center_momentum)
            || self.solarize.iter().any(|p| !(0.0..=1.0).contains(p))
            || !(self.clip_grad >= 0.0)
        {
            return Err(Error::Config(format!(
                "dino: widths must be positive, temperatures positive numbers, clip_grad not negative, center_momentum and solarize probabilities in [0, 1] (got {self:?})"
            )));
        }
        Ok(())
    }
    fn build<B: Backend>(&self, ps: &mut ParamStore<B>, backbone: &BackboneConfig, _seed: u64) -> Result<Box<dyn Method<B>>> {
        Ok(Box::new(Dino::new(ps, backbone, self)?))
    }
}

impl<B: Backend> Dino<B> {
    pub fn new(ps: &mut ParamStore<B>, backbone: &BackboneConfig, cfg: &DinoConfig) -> Result<Self> {
        cfg.validate()?;
        let online = backbone.build(ps, "backbone")?;
        let backbone_params = ps.ids().filter(|id| ps.entry(*id).name.starts_with("backbone.")).collect();
        let feature_dim = online.feature_dim();
        let head = DinoHead::new(ps, "head", feature_dim, cfg)?;
        let taus = Taus { base: cfg.base_tau, last: cfg.final_tau };
        let net = MomentumPair::new(ps, "dino", backbone, (online, head), "head", |ps, name| DinoHead::new(ps, name, feature_dim, cfg), taus)?;
        let center = Tensor::zeros(ps.backend(), &[cfg.num_prototypes], ps.dtype())?;
        Ok(Dino {
            cfg: cfg.clone(),
            net,
            backbone_params,
            center,
            epoch: Cell::new(0),
            batch_center: RefCell::new(None),
        })
    }
}

impl<B: Backend> Method<B> for Dino<B> {
    fn name(&self) -> &'static str {
        "dino"
    }
    fn backbone(&self) -> &Backbone {
        &self.net.backbone
    }

    /// The multi-crop views; the two large ones solarised asymmetrically, as in the paper.
    fn views(&self, recipe: &AugmentConfig, size: usize) -> Vec<ViewSpec> {
        let mut views = self.cfg.multicrop.views(recipe, size);
        for (v, &p) in views.iter_mut().zip(&self.cfg.solarize) {
            v.augment.solarize_p = p;
        }
        views
    }

    fn begin_step(&mut self, info: &StepInfo) -> Result<()> {
        self.epoch.set(info.epoch);
        Ok(())
    }

    fn forward(&self, cx: &Ctx<B>, views: &[Var<B>], _labels: Option<&Tensor<B>>) -> Result<StepOutput<B>> {
        super::check_views("dino", views, 2 + self.cfg.multicrop.small_crops)?;
        let mut student = Vec::new();
        let mut embedding = None;
        for x in views {
            let (h, logits) = self.net.head.forward(cx, &self.net.backbone.forward(cx, x)?)?;
            embedding.get_or_insert(h.value);
            student.push(logits);
        }
        let teacher = views[..2]
            .iter()
            .map(|x| Ok(self.net.momentum_head.forward(cx, &self.net.momentum_backbone.forward(cx, x)?)?.1.value))
            .collect::<Result<Vec<_>>>()?;
        let temp = self.cfg.teacher_temperature_at(self.epoch.get());
        let (loss, batch_center) = dino_loss(cx.tape, &student, &teacher, &self.center, self.cfg.student_temperature, temp)?;
        // The centre follows the global batch's teacher mean (the ranks' local means averaged).
        let batch_center = match cx.params.replicas() {
            Some(r) => ops::scale(&r.group.all_reduce_sum(&batch_center)?, 1.0 / r.group.world() as f32)?,
            None => batch_center,
        };
        *self.batch_center.borrow_mut() = Some(batch_center);
        Ok(StepOutput { loss, embedding })
    }

    /// solo-learn's on_after_backward: clip the backbone's gradients, then cancel the last
    /// layer's while it is frozen.
    fn before_update(&self, info: &StepInfo, grads: &mut Vec<(ParamId, Tensor<B>)>) -> Result<()> {
        if self.cfg.clip_grad > 0.0 {
            for (_, g) in grads.iter_mut().filter(|(id, _)| self.backbone_params.contains(id)) {
                let coef = self.cfg.clip_grad as f64 / (ops::l2_norm(g)? + 1e-6);
                if coef < 1.0 {
                    *g = ops::scale(g, coef as f32)?;
                }
            }
        }
        if info.epoch < self.cfg.freeze_last_layer {
            grads.retain(|(id, _)| *id != self.net.head.last_layer);
        }
        Ok(())
    }

    /// The teacher's EMA, then the centre's: c = m c + (1 - m) batch mean.
    fn after_step(&mut self, ps: &mut ParamStore<B>, info: &StepInfo) -> Result<()> {
        self.net.update(ps, info)?;
        if let Some(mean) = self.batch_center.borrow_mut().take() {
            ops::ema_update(&[(&self.center, &mean)], self.cfg.center_momentum)?;
        }
        Ok(())
    }

    fn state(&self) -> Result<Vec<(String, Tensor<B>)>> {
        Ok(vec![("center".into(), self.center.clone())])
    }

    fn load_state(&mut self, saved: &HashMap<String, Tensor<B>>) -> Result<()> {
        self.center = saved_state(saved, "dino", "center", self.center.shape())?;
        Ok(())
    }
}
