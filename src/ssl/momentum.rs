//! Momentum (EMA) copies of online networks, as BYOL, MoCo and DINO keep them: every parameter
//! named `momentum_<online name>` starts as a copy of its online twin, takes no gradient, and
//! after each optimiser step moves by one fused EMA with tau on solo-learn's cosine schedule.
//! The copies live in the parameter store, so checkpoints carry them and a resumed run
//! continues them bit for bit. `MomentumPair` is the online network and its twin together, as
//! BYOL, MoCo v2+, MoCo v3 and DINO build them.

use super::StepInfo;
use super::heads::Head;
use crate::autograd::Var;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::models::{Backbone, BackboneConfig};
use crate::nn::{Ctx, Kind, ParamId, ParamStore};
use crate::ops;
use crate::tensor::Tensor;

/// The momentum networks' name prefix.
pub const MOMENTUM: &str = "momentum_";

/// solo-learn's MomentumUpdater.update_tau: tau after `step` of `total` steps.
pub fn tau_at(base: f64, final_tau: f64, step: usize, total: usize) -> f64 {
    let progress = step as f64 / total.max(1) as f64;
    final_tau - (final_tau - base) * ((std::f64::consts::PI * progress).cos() + 1.0) / 2.0
}

/// (momentum parameter, online parameter) pairs.
pub struct MomentumPairs(Vec<(ParamId, ParamId)>);

impl MomentumPairs {
    /// Pairs every `momentum_*` parameter of `ps` with its online twin, copies the twin into it
    /// and freezes the momentum side. Call after both networks are registered.
    pub fn copy_and_freeze<B: Backend>(ps: &mut ParamStore<B>, method: &'static str) -> Result<Self> {
        Self::copy_and_freeze_renamed(ps, method, MOMENTUM, "")
    }

    /// As `copy_and_freeze`, for a momentum network under `target` whose online twin sits
    /// under `online` (I-JEPA's target encoder `backbone.*` follows `context.*`): every
    /// parameter named `<target><rest>` pairs with `<online><rest>`.
    pub fn copy_and_freeze_renamed<B: Backend>(ps: &mut ParamStore<B>, method: &'static str, target: &str, online: &str) -> Result<Self> {
        let mut pairs = Vec::new();
        for id in ps.ids().collect::<Vec<_>>() {
            let e = ps.entry(id);
            let Some(rest) = e.name.strip_prefix(target).filter(|_| e.kind == Kind::Param) else { continue };
            let twin = format!("{online}{rest}");
            let twin_id = ps.find(&twin).ok_or_else(|| Error::Invalid { op: method, msg: format!("no online twin {twin} for {}", e.name) })?;
            let (v, s) = ps.to_torch(twin_id)?;
            ps.set_from_torch(id, &v, &s)?;
            pairs.push((id, twin_id));
        }
        ps.set_trainable(target, false);
        Ok(MomentumPairs(pairs))
    }

    /// momentum = tau momentum + (1 - tau) online, all pairs in one fused update.
    pub fn update<B: Backend>(&self, ps: &ParamStore<B>, tau: f64) -> Result<()> {
        let pairs: Vec<(&Tensor<B>, &Tensor<B>)> = self.0.iter().map(|(m, o)| (ps.get(*m), ps.get(*o))).collect();
        ops::ema_update(&pairs, tau as f32)
    }
}

/// The EMA schedule's config check, shared by the momentum methods.
pub fn check_taus(method: &str, base: f64, final_tau: f64) -> Result<()> {
    if (0.0..=1.0).contains(&base) && (0.0..=1.0).contains(&final_tau) {
        Ok(())
    } else {
        Err(Error::Config(format!("{method}: base_tau and final_tau must lie in [0, 1] (got {base}, {final_tau})")))
    }
}

/// An online network (backbone + head) and its momentum twin (`momentum_backbone.*`,
/// `momentum_<head>.*`): the twin starts as a copy, takes no gradient, and follows the online
/// weights by an EMA whose tau rises from `base_tau` to `final_tau` on a cosine over the run.
/// The head is a projector (`Head`: BYOL, MoCo) or the method's own (DINO's).
pub struct MomentumPair<H> {
    pub backbone: Backbone,
    pub head: H,
    pub momentum_backbone: Backbone,
    pub momentum_head: H,
    pairs: MomentumPairs,
    base_tau: f64,
    final_tau: f64,
}

/// The EMA schedule of a momentum pair: tau at the first step and at the last.
#[derive(Clone, Copy, Debug)]
pub struct Taus {
    pub base: f64,
    pub last: f64,
}

impl<H> MomentumPair<H> {
    /// Adds the momentum twin of `online` (its backbone and its head `head_name`, registered in
    /// `ps` already, with any other online part such as a predictor, so the store keeps the
    /// order it always had): `momentum_backbone.*` from `backbone`, `momentum_<head_name>.*` from
    /// `head(ps, prefix)`; then copies the online weights into the twin and freezes it.
    pub fn new<B: Backend>(
        ps: &mut ParamStore<B>,
        method: &'static str,
        backbone: &BackboneConfig,
        online: (Backbone, H),
        head_name: &str,
        head: impl FnOnce(&mut ParamStore<B>, &str) -> Result<H>,
        taus: Taus,
    ) -> Result<Self> {
        let momentum_backbone = backbone.build(ps, &format!("{MOMENTUM}backbone"))?;
        let momentum_head = head(ps, &format!("{MOMENTUM}{head_name}"))?;
        let pairs = MomentumPairs::copy_and_freeze(ps, method)?;
        let (backbone, head) = online;
        Ok(MomentumPair { backbone, head, momentum_backbone, momentum_head, pairs, base_tau: taus.base, final_tau: taus.last })
    }

    /// The EMA after an optimiser step, every parameter of the twin in one fused update.
    pub fn update<B: Backend>(&self, ps: &ParamStore<B>, info: &StepInfo) -> Result<()> {
        self.pairs.update(ps, tau_at(self.base_tau, self.final_tau, info.step, info.total_steps))
    }
}

impl MomentumPair<Head> {
    /// The online projection head(backbone(x)).
    pub fn online<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        self.head.forward(cx, &self.backbone.forward(cx, x)?)
    }

    /// The momentum network's projection of x, a constant on the tape (no gradient reaches the
    /// frozen twin).
    pub fn momentum<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        Ok(self.momentum_head.forward(cx, &self.momentum_backbone.forward(cx, x)?)?.detach())
    }
}
