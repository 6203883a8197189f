//! Batches of augmented views, produced by worker threads ahead of the training loop.
//!
//! Determinism by construction: the epoch's order is `epoch_order(n, seed, epoch)`, and every
//! random draw for sample `i`, view `v`, epoch `e` comes from
//! `Rng::new(seed).stream("augment").derive(&[e, i, v])`. A batch is therefore a pure function of
//! (dataset, views, seed, epoch, step): thread count and scheduling change only the speed, and
//! starting an epoch at batch `k` gives exactly the batches `k..` of a full pass. A streaming
//! dataset (`data.cache = "none"`) decodes each sample's file once per batch, in the worker, and
//! makes all its views from those pixels: the batches are the same as from memory.
//!
//! Flow: workers claim batch indices in increasing order under a lock that also counts the
//! batches in flight (claimed, not yet handed to the consumer; at most `prefetch`); finished
//! batches go through a channel to the consumer, which hands them out in order.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use rayon::prelude::*;

use super::Dataset;
use super::augment::{AugmentConfig, augment_hw, eval_view, normalize};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// One view the loader makes of every image: its augmentation and its output side. Methods with
/// asymmetric views (BYOL's solarisation on one view) or multi-crop (SwAV, DINO: two large
/// crops and several small ones) list one per view.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewSpec {
    pub augment: AugmentConfig,
    pub size: usize,
}

/// One batch: a tensor per view, the labels and dataset indices of its samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// One per view, each `[batch, size, size, 3]` NHWC f32 (its `ViewSpec`'s size), normalised.
    pub views: Vec<Vec<f32>>,
    pub labels: Vec<u32>,
    pub indices: Vec<usize>,
    pub epoch: usize,
    /// The batch index within the epoch.
    pub step: usize,
}

/// The epoch's permutation of `0..n` (Fisher-Yates), keyed by (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    crate::rng::permutation(n, &mut Rng::new(seed).stream("shuffle").derive(&[epoch as u64]))
}

#[derive(Clone)]
struct Spec {
    data: Arc<Dataset>,
    views: Vec<ViewSpec>,
    batch_size: usize,
    seed: u64,
    /// (rank, ranks): this loader makes rank's contiguous share of every global batch.
    shard: (usize, usize),
}

impl Spec {
    fn make_batch(&self, epoch: usize, step: usize, order: &[usize]) -> Result<Batch> {
        let global = self.batch_size;
        let (rank, ranks) = self.shard;
        let bs = global / ranks;
        let start = step * global + rank * bs;
        let indices = order[start..start + bs].to_vec();
        let base = Rng::new(self.seed).stream("augment");
        let mut views: Vec<Vec<f32>> = self.views.iter().map(|spec| vec![0f32; bs * spec.size * spec.size * 3]).collect();
        for (k, &i) in indices.iter().enumerate() {
            // Once per sample, whatever the number of views: a streaming dataset decodes here.
            let pixels = self.data.pixels(i)?;
            for (v, (spec, buf)) in self.views.iter().zip(&mut views).enumerate() {
                let per = spec.size * spec.size * 3;
                let mut rng = base.derive(&[epoch as u64, i as u64, v as u64]);
                augment_hw(&pixels, self.data.dims_of(i), spec.size, &spec.augment, &mut rng, &mut buf[k * per..(k + 1) * per]);
            }
        }
        let labels = indices.iter().map(|&i| self.data.labels[i]).collect();
        Ok(Batch { views, labels, indices, epoch, step })
    }
}

pub struct Loader {
    spec: Arc<Spec>,
    workers: usize,
    prefetch: usize,
}

/// `batch_size` is the global batch: refused, naming both numbers, unless `ranks` share it evenly.
pub fn check_shareable(batch_size: usize, ranks: usize) -> Result<()> {
    if ranks == 0 || !batch_size.is_multiple_of(ranks) {
        return Err(Error::Config(format!("batch_size {batch_size} is the global batch: it must divide evenly over {ranks} ranks")));
    }
    Ok(())
}

impl Loader {
    /// `views`: one `AugmentConfig` per view (SimSiam: two identical ones), all `out_size`
    /// square. `workers` threads make batches ahead of the consumer, at most `prefetch` at a time.
    pub fn new(
        data: Arc<Dataset>,
        views: Vec<AugmentConfig>,
        out_size: usize,
        batch_size: usize,
        seed: u64,
        workers: usize,
        prefetch: usize,
    ) -> Result<Self> {
        let views = views.into_iter().map(|augment| ViewSpec { augment, size: out_size }).collect();
        Self::with_views(data, views, batch_size, seed, workers, prefetch)
    }

    /// `new` with a recipe and an output size per view.
    pub fn with_views(data: Arc<Dataset>, views: Vec<ViewSpec>, batch_size: usize, seed: u64, workers: usize, prefetch: usize) -> Result<Self> {
        let bad = |msg: String| Err(Error::Invalid { op: "Loader::new", msg });
        if views.is_empty() {
            return bad("at least one view is needed".into());
        }
        for v in &views {
            v.augment.validate()?;
            if v.size == 0 {
                return bad("every view's output size must be at least 1".into());
            }
        }
        if batch_size == 0 || workers == 0 || prefetch == 0 {
            return bad(format!("batch_size {batch_size}, workers {workers} and prefetch {prefetch} must all be at least 1"));
        }
        let n = data.len();
        if !data.well_formed() {
            return bad(format!("dataset holds {} bytes, not {n} images of {}x{}x3 (or {n} files to stream)", data.images.len(), data.size, data.size));
        }
        if batch_size > n {
            return bad(format!("batch size {batch_size} is larger than the dataset ({n} images); with drop_last an epoch would be empty"));
        }
        Ok(Loader { spec: Arc::new(Spec { data, views, batch_size, seed, shard: (0, 1) }), workers, prefetch })
    }

    /// This loader as rank `rank` of `ranks` sees the data: the same global batches (of
    /// `batch_size`, which the ranks must divide), each rank taking its contiguous share of the
    /// rows, every image augmented exactly as one rank would. The ranks together therefore see
    /// one rank's run, which is what lets N ranks reproduce it.
    pub fn shard(mut self, rank: usize, ranks: usize) -> Result<Self> {
        check_shareable(self.spec.batch_size, ranks)?;
        if rank >= ranks {
            return Err(Error::Config(format!("rank {rank} is not below the {ranks} ranks")));
        }
        let spec = Spec { shard: (rank, ranks), ..(*self.spec).clone() };
        self.spec = Arc::new(spec);
        Ok(self)
    }

    /// Full batches per epoch (drop_last).
    pub fn batches_per_epoch(&self) -> usize {
        self.spec.data.len() / self.spec.batch_size
    }

    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.spec.data
    }

    pub fn batch_size(&self) -> usize {
        self.spec.batch_size
    }

    pub fn num_views(&self) -> usize {
        self.spec.views.len()
    }

    /// The view specs, in the order of `Batch::views`.
    pub fn views(&self) -> &[ViewSpec] {
        &self.spec.views
    }

    /// One batch computed on the calling thread (the same as `epoch(epoch, step).next()`).
    pub fn batch(&self, epoch: usize, step: usize) -> Option<Result<Batch>> {
        (step < self.batches_per_epoch())
            .then(|| self.spec.make_batch(epoch, step, &epoch_order(self.spec.data.len(), self.spec.seed, epoch)))
    }

    /// The batches `start..` of `epoch`, in order. A batch whose image cannot be decoded (a
    /// streaming dataset's file changed or corrupt) is an error naming the file, and the last item.
    pub fn epoch(&self, epoch: usize, start: usize) -> EpochIter {
        let end = self.batches_per_epoch();
        let start = start.min(end);
        let order = Arc::new(epoch_order(self.spec.data.len(), self.spec.seed, epoch));
        let shared = Arc::new(Shared { state: Mutex::new(State { next_claim: start, in_flight: 0, stop: false }), cv: Condvar::new() });
        let (tx, rx) = channel();
        let workers = if end > start { self.workers.min(end - start) } else { 0 };
        let handles = (0..workers)
            .map(|_| {
                let (spec, order, shared, tx) = (self.spec.clone(), order.clone(), shared.clone(), tx.clone());
                let prefetch = self.prefetch;
                std::thread::spawn(move || {
                    while let Some(step) = shared.claim(end, prefetch) {
                        let batch = spec.make_batch(epoch, step, &order);
                        let failed = batch.is_err();
                        if tx.send((step, batch)).is_err() || failed {
                            break;
                        }
                    }
                })
            })
            .collect();
        EpochIter { next: start, end, rx, pending: BTreeMap::new(), shared, handles }
    }
}

struct State {
    next_claim: usize,
    in_flight: usize,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    /// The next batch index to make, waiting while `prefetch` batches are in flight.
    fn claim(&self, end: usize, prefetch: usize) -> Option<usize> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while !s.stop && s.next_claim < end && s.in_flight >= prefetch {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.stop || s.next_claim >= end {
            return None;
        }
        let step = s.next_claim;
        s.next_claim += 1;
        s.in_flight += 1;
        Some(step)
    }
    fn release(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.in_flight -= 1;
        self.cv.notify_all();
    }
    fn stop(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.stop = true;
        self.cv.notify_all();
    }
}

/// The batches of one epoch, in order; dropping it stops and joins the workers.
pub struct EpochIter {
    next: usize,
    end: usize,
    rx: Receiver<(usize, Result<Batch>)>,
    pending: BTreeMap<usize, Result<Batch>>,
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.end {
            return None;
        }
        loop {
            if let Some(b) = self.pending.remove(&self.next) {
                // After an error the epoch is over: the caller has the file's name.
                self.next = if b.is_err() { self.end } else { self.next + 1 };
                self.shared.release();
                return Some(b);
            }
            match self.rx.recv() {
                Ok((step, b)) => {
                    self.pending.insert(step, b);
                }
                Err(_) => {
                    // Every worker has gone without sending this batch: only a panic does that.
                    for h in self.handles.drain(..) {
                        if let Err(p) = h.join() {
                            std::panic::resume_unwind(p);
                        }
                    }
                    return None;
                }
            }
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end - self.next;
        (n, Some(n))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.shared.stop();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Evaluation batches: normalised images (resized to `out_size` when needed) in dataset order,
/// no shuffle, the last batch possibly short. A `batch_size` of 0 is taken as 1. The dataset must
/// be well formed (as `load_dataset` makes it); a streaming one decodes each batch's files, and a
/// file that cannot be decoded is an error naming it.
pub fn eval_batches(
    data: &Dataset,
    out_size: usize,
    batch_size: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> impl Iterator<Item = Result<(Vec<f32>, Vec<u32>)>> + '_ {
    let bs = batch_size.max(1);
    let n = data.len();
    let per = out_size * out_size * 3;
    (0..n.div_ceil(bs)).map(move |b| {
        let (lo, hi) = (b * bs, ((b + 1) * bs).min(n));
        let mut x = vec![0f32; (hi - lo) * per];
        if per > 0 {
            x.par_chunks_mut(per).enumerate().try_for_each(|(k, out)| -> Result<()> {
                let i = lo + k;
                let pixels = data.pixels(i)?;
                if data.dims.is_empty() {
                    normalize(&pixels, data.size, out_size, mean, std, out)
                } else {
                    eval_view(&pixels, data.dims_of(i), out_size, mean, std, out)
                }
                Ok(())
            })?;
        }
        Ok((x, data.labels[lo..hi].to_vec()))
    })
}
