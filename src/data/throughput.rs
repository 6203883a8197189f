//! Loader throughput: how many augmented views per second the CPU workers produce.

use std::sync::Arc;
use std::time::Instant;

use super::Dataset;
use super::augment::AugmentConfig;
use super::loader::Loader;
use crate::error::{Error, Result};

/// Runs `batches` batches of two views (SimSiam) of `cfg` through a `Loader` with `workers`
/// threads (prefetch 2 per worker) and returns (views per second, views per second per worker).
/// Runs past the end of an epoch into the next when `batches` is larger than one epoch.
pub fn measure_throughput(
    data: Arc<Dataset>,
    cfg: &AugmentConfig,
    out_size: usize,
    batch: usize,
    workers: usize,
    batches: usize,
) -> Result<(f64, f64)> {
    if batches == 0 {
        return Err(Error::Invalid { op: "measure_throughput", msg: "batches must be at least 1".into() });
    }
    let loader = Loader::new(data, vec![cfg.clone(), cfg.clone()], out_size, batch, 0, workers, 2 * workers)?;
    let start = Instant::now();
    let mut done = 0usize;
    let mut checksum = 0f32;
    let mut epoch = 0;
    while done < batches {
        for b in loader.epoch(epoch, 0).take(batches - done) {
            checksum += b.views[0][0] + b.views[1][0];
            done += 1;
        }
        epoch += 1;
    }
    std::hint::black_box(checksum);
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let views = (done * batch * 2) as f64 / secs;
    Ok((views, views / workers as f64))
}
