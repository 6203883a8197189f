//! What the loop measures and guards besides the loss: the kNN monitor, the first non-finite
//! tensor (named in the NaN message), and the batch-norm statistics a skipped step restores.

use crate::backend::Backend;
use crate::config::Config;
use crate::data::Dataset;
use crate::error::Result;
use crate::eval::{features, knn};
use crate::nn::{Kind, ParamId, ParamStore};
use crate::ssl::Method;
use crate::tensor::{DType, Tensor};

/// kNN top-1 of the current backbone: train set as the bank, test set as queries.
pub fn knn_monitor<B: Backend>(
    method: &dyn Method<B>,
    ps: &ParamStore<B>,
    train: &Dataset,
    test: &Dataset,
    cfg: &Config,
    show: bool,
) -> Result<f64> {
    let dim = method.backbone().feature_dim();
    let extract = |data: &Dataset, what: &str| extract_across(method, ps, data, cfg, what, show);
    let mut bank = extract(train, "kNN monitor: bank")?;
    let mut queries = extract(test, "kNN monitor: queries")?;
    knn::l2_normalize(&mut bank, dim);
    knn::l2_normalize(&mut queries, dim);
    let classes = train.classes.len().max(test.classes.len());
    knn::knn_accuracy(ps.backend(), &bank, &train.labels, &queries, &test.labels, dim, classes, cfg.monitor.knn_k, cfg.monitor.knn_t)
}

/// Every image's backbone features, in dataset order. With several ranks (`ps.replicas()`) each
/// embeds its contiguous share (padded to equal size for the gather) and every rank receives
/// all of them: N ranks embed N times faster, and every rank computes the same accuracy.
fn extract_across<B: Backend>(method: &dyn Method<B>, ps: &ParamStore<B>, data: &Dataset, cfg: &Config, what: &str, show: bool) -> Result<Vec<f32>> {
    let (s, mean, std, batch) = (cfg.data.image_size, cfg.augment.mean, cfg.augment.std, cfg.batch_size);
    let Some(r) = ps.replicas() else {
        return features::extract(method.backbone(), ps, data, s, mean, std, batch, what, show);
    };
    let (n, dim) = (data.len(), method.backbone().feature_dim());
    let share = n.div_ceil(r.group.world());
    let lo = (r.group.rank() * share).min(n);
    let mine: Vec<usize> = (lo..(lo + share).min(n)).collect();
    let mut rows = features::extract(method.backbone(), ps, &data.subset(&mine), s, mean, std, batch.div_ceil(r.group.world()), what, show)?;
    rows.resize(share * dim, 0.0);
    let all = r.group.all_gather(&Tensor::from_f32(ps.backend(), &rows, &[share, dim], DType::F32)?)?;
    // Rank k holds images k*share.. in order and only the last shares are short: the first n
    // gathered rows are the images.
    let mut out = all.to_f32()?;
    out.truncate(n * dim);
    Ok(out)
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
