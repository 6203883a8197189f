//! What the loop measures and guards besides the loss: the kNN monitor, the first non-finite
//! tensor (named in the NaN message), and the batch-norm statistics a skipped step restores.

use crate::backend::Backend;
use crate::config::Config;
use crate::data::Dataset;
use crate::error::Result;
use crate::eval::{features, knn};
use crate::nn::{Kind, ParamId, ParamStore};
use crate::ssl::Method;

/// kNN top-1 of the current backbone: train set as the bank, test set as queries.
pub fn knn_monitor<B: Backend>(
    method: &dyn Method<B>,
    ps: &ParamStore<B>,
    train: &Dataset,
    test: &Dataset,
    cfg: &Config,
    show: bool,
) -> Result<f64> {
    let s = cfg.data.image_size;
    let (mean, std) = (cfg.augment.mean, cfg.augment.std);
    let dim = method.backbone().feature_dim();
    let mut bank = features::extract(method.backbone(), ps, train, s, mean, std, cfg.batch_size, "kNN monitor: bank", show)?;
    let mut queries = features::extract(method.backbone(), ps, test, s, mean, std, cfg.batch_size, "kNN monitor: queries", show)?;
    knn::l2_normalize(&mut bank, dim);
    knn::l2_normalize(&mut queries, dim);
    let classes = train.classes.len().max(test.classes.len());
    knn::knn_accuracy(ps.backend(), &bank, &train.labels, &queries, &test.labels, dim, classes, cfg.monitor.knn_k, cfg.monitor.knn_t)
}

/// Names the first parameter holding a non-finite value, for the NaN message.
pub(super) fn first_non_finite<B: Backend>(ps: &ParamStore<B>) -> Option<String> {
    ps.entries().iter().find(|e| e.value.to_f32().map(|v| v.iter().any(|x| !x.is_finite())).unwrap_or(false)).map(|e| e.name.clone())
}

/// Every buffer (the batch-norm running statistics) as (id, values, PyTorch shape).
pub(super) type BufferSnapshot = Vec<(ParamId, Vec<f32>, Vec<usize>)>;

/// The batch-norm running statistics (every buffer), to restore after a skipped step.
pub(super) fn buffer_snapshot<B: Backend>(ps: &ParamStore<B>) -> Result<BufferSnapshot> {
    ps.ids().filter(|&id| ps.entry(id).kind == Kind::Buffer).map(|id| ps.to_torch(id).map(|(v, s)| (id, v, s))).collect()
}

pub(super) fn buffer_restore<B: Backend>(ps: &mut ParamStore<B>, snap: &BufferSnapshot) -> Result<()> {
    for (id, v, s) in snap {
        ps.set_from_torch(*id, v, s)?;
    }
    Ok(())
}
