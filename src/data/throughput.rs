//! Loader throughput: how many images (and augmented views) per second the CPU workers produce,
//! and the process's peak memory, for `ssl-engine bench loader`.

use std::time::Instant;

use super::loader::Loader;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    /// Samples per second (each decoded once, whatever the number of views).
    pub images_per_s: f64,
    /// Augmented views per second (`images_per_s` times the loader's views).
    pub views_per_s: f64,
    /// The batches timed (the first, which fills the pipeline, is not).
    pub batches: usize,
}

/// Times `batches` batches of `loader` after one warm-up batch (thread start and pipeline fill
/// are not the steady state), running on into the next epochs when an epoch is shorter.
pub fn measure_throughput(loader: &Loader, batches: usize) -> Result<Throughput> {
    if batches == 0 {
        return Err(Error::Invalid { op: "measure_throughput", msg: "batches must be at least 1".into() });
    }
    let mut start = None;
    let (mut done, mut checksum, mut epoch) = (0usize, 0f32, 0usize);
    // Every epoch has at least one batch (`Loader::new` refuses a batch larger than the data).
    'timing: loop {
        for b in loader.epoch(epoch, 0) {
            let b = b?;
            checksum += b.views.iter().map(|v| v[0]).sum::<f32>();
            if start.is_none() {
                start = Some(Instant::now());
                continue;
            }
            done += 1;
            if done == batches {
                break 'timing;
            }
        }
        epoch += 1;
    }
    std::hint::black_box(checksum);
    let secs = start.map_or(0.0, |s| s.elapsed().as_secs_f64()).max(1e-9);
    let images_per_s = (done * loader.batch_size()) as f64 / secs;
    Ok(Throughput { images_per_s, views_per_s: images_per_s * loader.num_views() as f64, batches: done })
}

/// The process's peak resident memory in bytes (Linux `VmHWM`), or `None` elsewhere.
pub fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
