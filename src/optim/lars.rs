//! LARS as solo-learn writes it (`solo/utils/lars.py`), the optimiser of most CIFAR SSL recipes:
//! for each tensor with ||p|| > 0 and ||g|| > 0, trust = eta ||p|| / (||g|| + wd ||p|| + eps),
//! clipped to min(trust / lr, 1) when `clip_lr`; the update is (g + wd p) trust, then SGD with
//! momentum. 1-D tensors (biases, norm weights) skip both the trust scaling and the weight
//! decay when `exclude_bias_n_norm`; a tensor with a zero norm gets plain SGD without decay.

use serde::{Deserialize, Serialize};

use super::{Hyper, Optimizer, Sgd};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::nn::{ParamId, ParamStore};
use crate::ops;
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LarsConfig {
    /// Trust coefficient (solo-learn's CIFAR recipes: 0.02).
    pub eta: f64,
    /// Added to the trust ratio's denominator.
    pub eps: f64,
    /// Cap the trust-scaled step at the learning rate: trust = min(trust / lr, 1).
    pub clip_lr: bool,
    /// Biases and norm parameters (1-D tensors) take plain SGD without weight decay.
    pub exclude_bias_n_norm: bool,
}

impl Default for LarsConfig {
    fn default() -> Self {
        LarsConfig { eta: 0.02, eps: 1e-8, clip_lr: true, exclude_bias_n_norm: true }
    }
}

pub struct Lars<B: Backend> {
    sgd: Sgd<B>,
    cfg: LarsConfig,
}

impl<B: Backend> Lars<B> {
    pub fn new(momentum: f32, cfg: LarsConfig) -> Self {
        Lars { sgd: Sgd::new(momentum), cfg }
    }

    /// The factor that multiplies (g + wd p), or None for plain SGD without weight decay.
    fn trust(&self, p: &Tensor<B>, g: &Tensor<B>, lr: f64, wd: f64) -> Result<Option<f64>> {
        let (pn, gn) = (ops::l2_norm(p)?, ops::l2_norm(g)?);
        if pn == 0.0 || gn == 0.0 {
            return Ok(None);
        }
        let t = self.cfg.eta * pn / (gn + pn * wd + self.cfg.eps);
        Ok(Some(if self.cfg.clip_lr && lr > 0.0 { (t / lr).min(1.0) } else { t }))
    }
}

impl<B: Backend> Optimizer<B> for Lars<B> {
    fn name(&self) -> &'static str {
        "lars"
    }

    fn step(&mut self, ps: &ParamStore<B>, grads: &[(ParamId, Tensor<B>)], hyper: Hyper<'_>) -> Result<()> {
        // Scaling g by trust and the decay by trust gives SGD's (g' + wd' p) = trust (g + wd p).
        let mut scaled = Vec::with_capacity(grads.len());
        let mut hypers = std::collections::BTreeMap::new();
        for (id, g) in grads {
            let (lr, wd) = hyper(*id);
            let excluded = self.cfg.exclude_bias_n_norm && ps.torch_shape(*id).len() == 1;
            let trust = if excluded { None } else { self.trust(ps.get(*id), g, lr as f64, wd as f64)? };
            match trust {
                Some(t) => {
                    if !t.is_finite() {
                        return Err(Error::Invalid { op: "lars", msg: format!("the trust ratio of {} is {t}", ps.entry(*id).name) });
                    }
                    scaled.push((*id, ops::scale(g, t as f32)?));
                    hypers.insert(*id, (lr, (wd as f64 * t) as f32));
                }
                None => {
                    scaled.push((*id, g.clone()));
                    hypers.insert(*id, (lr, 0.0));
                }
            }
        }
        let lookup = |id: ParamId| hypers.get(&id).copied().unwrap_or((0.0, 0.0));
        self.sgd.step(ps, &scaled, &lookup)
    }

    fn state(&self) -> Vec<(&'static str, ParamId, &Tensor<B>)> {
        self.sgd.state()
    }

    fn state_kinds(&self) -> &'static [&'static str] {
        self.sgd.state_kinds()
    }

    fn load_state(&mut self, kind: &str, id: ParamId, t: Tensor<B>) -> Result<()> {
        self.sgd.load_state(kind, id, t).map_err(|_| super::unknown_state("lars", kind))
    }
}
