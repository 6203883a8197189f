//! Momentum (EMA) copies of online networks, as BYOL, MoCo and DINO keep them: every parameter
//! named `momentum_<online name>` starts as a copy of its online twin, takes no gradient, and
//! after each optimiser step moves by one fused EMA with tau on solo-learn's cosine schedule.
//! The copies live in the parameter store, so checkpoints carry them and a resumed run
//! continues them bit for bit.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::nn::{Kind, ParamId, ParamStore};
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
        let mut pairs = Vec::new();
        for id in ps.ids().collect::<Vec<_>>() {
            let e = ps.entry(id);
            if e.kind != Kind::Param || !e.name.starts_with(MOMENTUM) {
                continue;
            }
            let twin = &e.name[MOMENTUM.len()..];
            let online = ps.find(twin).ok_or_else(|| Error::Invalid { op: method, msg: format!("no online twin for {}", e.name) })?;
            let (v, s) = ps.to_torch(online)?;
            ps.set_from_torch(id, &v, &s)?;
            pairs.push((id, online));
        }
        ps.set_trainable(MOMENTUM, false);
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
