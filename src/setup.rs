//! What a recipe builds before any loop runs: the method with its backbone, and the data splits.
//! Training and evaluation both start here, so the evaluation protocols (`eval/`) do not depend
//! on the training loop (`train.rs`).

use std::path::Path;

use crate::backend::Backend;
use crate::config::Config;
use crate::data::{Dataset, LoadOptions, Split, load_dataset};
use crate::error::Result;
use crate::nn::ParamStore;
use crate::ssl::Method;
use crate::tensor::DType;

/// Loads one split of a dataset as the config asks (size, corrupt-image policy, limits).
pub fn load_split(path: &Path, split: Split, cfg: &Config) -> Result<Dataset> {
    let opts = LoadOptions {
        size: cfg.data.image_size,
        split,
        on_corrupt: cfg.data.on_corrupt,
        limit_per_class: cfg.data.limit_per_class,
        max_pixels: cfg.data.max_pixels,
        stored_size: !cfg.data.resize_on_load,
        max_side: cfg.data.max_side,
        stream: cfg.data.cache.streams(),
    };
    load_dataset(path, &opts)
}

/// Builds the method (and with it the backbone) in a fresh parameter store.
pub fn build_method<B: Backend>(b: &B, cfg: &Config) -> Result<(ParamStore<B>, Box<dyn Method<B>>)> {
    let mut ps = ParamStore::new(b, DType::F32, cfg.seed);
    let backbone = cfg.backbone()?;
    let method = crate::ssl::build(&cfg.method_recipe(), &mut ps, &backbone)?;
    Ok((ps, method))
}
