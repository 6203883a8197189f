//! Optimisers and schedules. Every optimiser answers to one trait, so the training loop, the
//! linear probe, fine-tuning and the benches take any of them, and a checkpoint saves and
//! restores their state without knowing which one it holds. SGD with momentum and weight decay
//! runs as one fused backend call per step; LARS scales each tensor's update by its trust ratio
//! and then takes the same fused SGD step; AdamW (torch.optim.AdamW's) is one fused call too.

mod adamw;
mod lars;
pub mod schedule;
mod sgd;
mod step;

use serde::{Deserialize, Serialize};

pub use adamw::{AdamW, DEFAULT_BETAS, DEFAULT_EPS};
pub use lars::{Lars, LarsConfig};
pub use sgd::Sgd;
pub use step::{Checked, StepGraph, Stepped, always, train_step};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::nn::{ParamId, ParamStore};
use crate::tensor::Tensor;

/// A parameter's learning rate and weight decay for this step (parameter groups: SimSiam's
/// fixed-lr predictor, a probe without decay).
pub type Hyper<'a> = &'a dyn Fn(ParamId) -> (f32, f32);

pub trait Optimizer<B: Backend> {
    /// "sgd", "lars" or "adamw": the name in configs and logs.
    fn name(&self) -> &'static str;
    /// Updates, in place, every parameter that has a gradient in `grads`.
    fn step(&mut self, ps: &ParamStore<B>, grads: &[(ParamId, Tensor<B>)], hyper: Hyper<'_>) -> Result<()>;
    /// `step` as a recorded step graph runs it (`StepGraph`): every per-step value from device
    /// memory, row i of `hyper` [rows >= grads, 2] holding grads[i]'s learning rate and weight decay, and
    /// no update while one of `gate`'s values is not finite. Returns false, having done nothing,
    /// where that cannot be recorded: an optimiser that reads values back mid-step (LARS's trust
    /// ratios), or state not made yet (a first step).
    fn step_on_device(&mut self, ps: &ParamStore<B>, grads: &[(ParamId, Tensor<B>)], hyper: &Tensor<B>, gate: &Tensor<B>) -> Result<bool> {
        let _ = (ps, grads, hyper, gate);
        Ok(false)
    }
    /// The state kept per parameter, as (kind, parameter, tensor): what a checkpoint saves as
    /// `optimizer.<kind>.<parameter name>`.
    fn state(&self) -> Vec<(&'static str, ParamId, &Tensor<B>)>;
    /// The kinds `state` returns, so a loader knows what to look for.
    fn state_kinds(&self) -> &'static [&'static str];
    /// Restores one tensor that `state` returned.
    fn load_state(&mut self, kind: &str, id: ParamId, t: Tensor<B>) -> Result<()>;
    /// Counts kept per parameter beside the tensors, as (kind, parameter, count): AdamW's step
    /// count, which a checkpoint saves as the one-element `optimizer.<kind>.<parameter name>`.
    /// SGD and LARS keep none.
    fn counters(&self) -> Vec<(&'static str, ParamId, u64)> {
        Vec::new()
    }
    /// The kinds `counters` returns, so a loader knows what to look for.
    fn counter_kinds(&self) -> &'static [&'static str] {
        &[]
    }
    /// Restores one count that `counters` returned.
    fn load_counter(&mut self, kind: &str, id: ParamId, count: u64) -> Result<()> {
        let _ = (id, count);
        Err(unknown_state(self.name(), kind))
    }
}

/// `[optim]`'s choice of optimiser.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    #[default]
    Sgd,
    Lars,
    // torch.optim.AdamW (decoupled weight decay): `[optim]`'s betas and eps. (No doc comment
    // on a variant: the schema would list only the documented ones as the setting's values.)
    AdamW,
}

/// `--optimizer lars`.
impl std::str::FromStr for OptimizerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        crate::error::parse_setting("optimizer", s)
    }
}

/// The optimiser `kind` with `momentum` (LARS settings from `lars`; AdamW with torch's default
/// betas (0.9, 0.999) and eps 1e-8: `OptimConfig::optimizer` takes a recipe's).
pub fn build<B: Backend>(kind: OptimizerKind, momentum: f32, lars: &LarsConfig) -> Box<dyn Optimizer<B>> {
    match kind {
        OptimizerKind::Sgd => Box::new(Sgd::new(momentum)),
        OptimizerKind::Lars => Box::new(Lars::new(momentum, lars.clone())),
        OptimizerKind::AdamW => Box::new(AdamW::new(DEFAULT_BETAS, DEFAULT_EPS).expect("torch's defaults are valid")),
    }
}

/// `[optim]`'s AdamW settings, checked (betas in [0, 1), eps positive).
pub fn check_adamw(betas: [f64; 2], eps: f64) -> Result<()> {
    adamw::check(betas, eps)
}

/// An error for a state tensor an optimiser does not keep.
pub(crate) fn unknown_state(opt: &str, kind: &str) -> Error {
    Error::Invalid { op: "optimizer state", msg: format!("{opt} keeps no state called {kind:?}") }
}
