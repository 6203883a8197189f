//! The crate's one optimisation step. Pretraining, the linear probe, fine-tuning and the
//! benches all call `train_step`; only what they compute (`forward`) and what they check before
//! the update (`before_update`) differ.

use super::{Hyper, Optimizer};
use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::error::Result;
use crate::nn::{Ctx, ParamId, ParamStore};
use crate::tensor::Tensor;

/// What one step did.
pub struct Stepped<T> {
    /// The loss of the step, read back from the backend.
    pub loss: f64,
    /// What `forward` returned beside the loss (an embedding for the collapse monitor).
    pub out: T,
}

/// Records `forward` on a fresh tape in training mode, takes the gradient of its loss for every
/// trainable parameter, hands the loss and the gradients to `before_update` (which may edit the
/// gradients: freeze, clip, cancel; or decline the update by returning false), then updates the
/// parameters with `opt`.
pub fn train_step<B: Backend, T>(
    ps: &ParamStore<B>,
    opt: &mut dyn Optimizer<B>,
    hyper: Hyper<'_>,
    forward: impl FnOnce(&Ctx<B>) -> Result<(Var<B>, T)>,
    before_update: impl FnOnce(f64, &mut Vec<(ParamId, Tensor<B>)>) -> Result<bool>,
) -> Result<Stepped<T>> {
    let tape = Tape::new();
    let cx = Ctx::new(&tape, ps, true);
    let (loss, out) = forward(&cx)?;
    let value = loss.value.scalar()? as f64;
    let mut grads = tape.backward(&loss)?;
    let mut pg = cx.param_grads(&mut grads);
    drop(cx);
    if before_update(value, &mut pg)? {
        opt.step(ps, &pg, hyper)?;
    }
    Ok(Stepped { loss: value, out })
}

/// `before_update` for callers that take every step as it comes.
pub fn always<B: Backend>(_: f64, _: &mut Vec<(ParamId, Tensor<B>)>) -> Result<bool> {
    Ok(true)
}
