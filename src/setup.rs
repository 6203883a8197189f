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

/// A data path that does not exist is an error naming the setting it came from (`key`: data.path,
/// --data, ...) and, for a relative path, the working directory it was resolved from.
pub fn check_data_path(path: &Path, key: &str) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let from = if path.is_relative() {
        let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_else(|_| "(unknown)".into());
        format!(" (a relative path: resolved from the working directory {cwd})")
    } else {
        String::new()
    };
    Err(crate::error::Error::Config(format!("{key}: {} does not exist{from}", path.display())))
}

/// Builds the method (and with it the backbone) in a fresh parameter store.
pub fn build_method<B: Backend>(b: &B, cfg: &Config) -> Result<(ParamStore<B>, Box<dyn Method<B>>)> {
    let mut ps = ParamStore::new(b, DType::F32, cfg.seed);
    let backbone = cfg.backbone()?;
    let method = crate::ssl::build(&cfg.method_recipe(), &mut ps, &backbone)?;
    Ok((ps, method))
}
