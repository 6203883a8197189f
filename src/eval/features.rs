//! Backbone features for evaluation: eval-mode batch norm, no augmentation, no graph.

use crate::autograd::{Tape, Var};
use crate::backend::Backend;
use crate::data::{Dataset, eval_batches};
use crate::error::Result;
use crate::models::Backbone;
use crate::nn::{Ctx, ParamStore};
use crate::tensor::{DType, Tensor};

/// Features [n, backbone.feature_dim()] of every image, in dataset order. `what` labels the
/// progress bar (shown when `show`); a Ctrl-C between batches stops with `Error::Interrupted`.
#[allow(clippy::too_many_arguments)]
pub fn extract<B: Backend>(
    backbone: &Backbone,
    ps: &ParamStore<B>,
    data: &Dataset,
    image_size: usize,
    mean: [f32; 3],
    std: [f32; 3],
    batch: usize,
    what: &str,
    show: bool,
) -> Result<Vec<f32>> {
    let b = ps.backend();
    let mut out = Vec::with_capacity(data.len() * backbone.feature_dim());
    let bar = crate::progress::bar(data.len(), what, show);
    for batch in eval_batches(data, image_size, batch.max(1), mean, std) {
        let (x, _labels) = batch?;
        crate::interrupt::check(what)?;
        let n = x.len() / (image_size * image_size * 3);
        let tape = Tape::inference();
        let cx = Ctx::new(&tape, ps, false);
        let xt = Tensor::from_f32(b, &x, &[n, image_size, image_size, 3], DType::F32)?;
        out.extend(backbone.forward(&cx, &Var::constant(xt))?.value.to_f32()?);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}
