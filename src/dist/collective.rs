//! The collectives data-parallel training needs, behind one trait: summing a tensor over every
//! rank, gathering every rank's rows, taking rank 0's value, waiting for all. The training code
//! only sees `Collective`; NCCL is one implementation (one process per GPU), `InProcess` the
//! other: one thread per rank in this process, each with its own backend, which is how the CPU
//! backend trains several ranks and how the tests check that N ranks give one rank's run.
//!
//! Every result is computed the same way on every rank, in rank order (sums add rank 0's value
//! first), so the ranks stay bit-identical to each other.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A rank's handle on its group, as the parameter store and the tape keep it.
pub type Group<B> = Arc<dyn Collective<B> + Send + Sync>;

/// A group of ranks that compute together. Every rank must make the same calls in the same
/// order with tensors of the same shape (all_gather: the same shape on every rank).
pub trait Collective<B: Backend> {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// The elementwise sum of `x` over the ranks.
    fn all_reduce_sum(&self, x: &Tensor<B>) -> Result<Tensor<B>>;
    /// Every rank's `x` stacked along axis 0, rank 0 first.
    fn all_gather(&self, x: &Tensor<B>) -> Result<Tensor<B>>;
    /// Rank 0's `x`, on every rank.
    fn broadcast(&self, x: &Tensor<B>) -> Result<Tensor<B>>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Tells the other ranks that this one failed, so that they stop waiting for it.
    fn abort(&self, why: &str);
}

/// The ranks' meeting point: each round, every rank leaves its values and takes all of them.
struct Hub {
    world: usize,
    timeout: Duration,
    state: Mutex<Round>,
    turned: Condvar,
}

struct Round {
    /// Rounds completed so far: a rank waits until this moves past the round it joined.
    done: u64,
    inputs: Vec<Option<Vec<f64>>>,
    /// The last completed round's values, by rank.
    result: Arc<Vec<Vec<f64>>>,
    /// Set when a rank failed: every wait returns this error.
    aborted: Option<String>,
}

impl Hub {
    /// Leaves `data` for round-mates and returns every rank's data, in rank order.
    fn exchange(&self, rank: usize, data: Vec<f64>) -> Result<Arc<Vec<Vec<f64>>>> {
        let mut s = self.state.lock().map_err(|_| Error::Invalid { op: "collective", msg: "a rank panicked".into() })?;
        if let Some(why) = &s.aborted {
            return Err(Error::dist(why.clone()));
        }
        let joined = s.done;
        s.inputs[rank] = Some(data);
        if s.inputs.iter().all(Option::is_some) {
            let all: Vec<Vec<f64>> = s.inputs.iter_mut().map(|v| v.take().unwrap_or_default()).collect();
            s.result = Arc::new(all);
            s.done += 1;
            self.turned.notify_all();
            return Ok(s.result.clone());
        }
        while s.done == joined {
            let (next, wait) = self.turned.wait_timeout(s, self.timeout).map_err(|_| Error::Invalid { op: "collective", msg: "a rank panicked".into() })?;
            s = next;
            if let Some(why) = &s.aborted {
                return Err(Error::dist(why.clone()));
            }
            if wait.timed_out() && s.done == joined {
                let missing: Vec<String> = s.inputs.iter().enumerate().filter(|(_, v)| v.is_none()).map(|(r, _)| r.to_string()).collect();
                let why = format!(
                    "rank {rank} waited {} s (--rdzv-timeout) for rank(s) {} of {}, which died or hang; every rank stops",
                    self.timeout.as_secs_f64(),
                    missing.join(", "),
                    self.world
                );
                s.aborted = Some(why.clone());
                self.turned.notify_all();
                return Err(Error::dist(why));
            }
        }
        Ok(s.result.clone())
    }
}

/// One rank of an in-process group (`InProcess::group`): move each to its own thread.
pub struct InProcess {
    hub: Arc<Hub>,
    rank: usize,
}

impl InProcess {
    /// `world` ranks meeting in this process; a rank that waits longer than `timeout` for the
    /// others fails (and makes them fail) naming who did not arrive.
    pub fn group(world: usize, timeout: Duration) -> Vec<InProcess> {
        let hub = Arc::new(Hub {
            world,
            timeout,
            state: Mutex::new(Round { done: 0, inputs: vec![None; world], result: Arc::new(Vec::new()), aborted: None }),
            turned: Condvar::new(),
        });
        (0..world).map(|rank| InProcess { hub: hub.clone(), rank }).collect()
    }

    /// Runs `work(rank, group)` for every rank of a new group, one thread each, and returns
    /// every rank's result with the first rank that failed (a stop request, `Interrupted`, is no
    /// failure). A rank that returns an error aborts the group, so the others' next collective
    /// returns at once instead of waiting for it.
    pub fn run<B: Backend, T: Send>(
        world: usize,
        timeout: Duration,
        work: &(dyn Fn(usize, Group<B>) -> Result<T> + Sync),
    ) -> (Vec<Result<T>>, Option<usize>) {
        let first_failure = std::sync::OnceLock::new();
        let results = std::thread::scope(|s| {
            let threads: Vec<_> = InProcess::group(world, timeout)
                .into_iter()
                .enumerate()
                .map(|(rank, me)| {
                    let first_failure = &first_failure;
                    std::thread::Builder::new()
                        .name(format!("rank {rank}"))
                        .spawn_scoped(s, move || {
                            let me = Arc::new(me);
                            let ran = work(rank, me.clone());
                            if let Err(e) = &ran {
                                // The first rank to fail is the cause; the others fail because
                                // of it. A rank that stops on request mid-way (a Ctrl-C during
                                // the kNN monitor) must not leave the others waiting either.
                                if !matches!(e, Error::Interrupted(_)) {
                                    let _ = first_failure.set(rank);
                                }
                                Collective::<B>::abort(me.as_ref(), &e.to_string());
                            }
                            ran
                        })
                        .expect("a thread for a rank")
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap_or_else(|_| Err(Error::dist("a rank's thread panicked")))).collect()
        });
        (results, first_failure.get().copied())
    }

    fn exchange<B: Backend>(&self, x: &Tensor<B>) -> Result<Arc<Vec<Vec<f64>>>> {
        let all = self.hub.exchange(self.rank, x.to_f64()?)?;
        if all.iter().any(|v| v.len() != all[0].len()) {
            return Err(Error::Invalid { op: "collective", msg: format!("ranks sent {:?} values: every rank must send the same shape", all.iter().map(Vec::len).collect::<Vec<_>>()) });
        }
        Ok(all)
    }
}

impl<B: Backend> Collective<B> for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.hub.world
    }
    fn all_reduce_sum(&self, x: &Tensor<B>) -> Result<Tensor<B>> {
        let all = self.exchange(x)?;
        let mut sum = all[0].clone();
        for other in &all[1..] {
            sum.iter_mut().zip(other).for_each(|(s, v)| *s += v);
        }
        Tensor::from_f64(x.backend(), &sum, x.shape(), x.dtype())
    }
    fn all_gather(&self, x: &Tensor<B>) -> Result<Tensor<B>> {
        let all = self.exchange(x)?;
        let mut shape = x.shape().to_vec();
        shape[0] *= self.hub.world;
        Tensor::from_f64(x.backend(), &all.concat(), &shape, x.dtype())
    }
    fn broadcast(&self, x: &Tensor<B>) -> Result<Tensor<B>> {
        let all = self.exchange(x)?;
        Tensor::from_f64(x.backend(), &all[0], x.shape(), x.dtype())
    }
    fn barrier(&self) -> Result<()> {
        self.hub.exchange(self.rank, Vec::new()).map(drop)
    }
    fn abort(&self, why: &str) {
        if let Ok(mut s) = self.hub.state.lock() {
            s.aborted.get_or_insert_with(|| format!("rank {} failed: {why}", self.rank));
            self.hub.turned.notify_all();
        }
    }
}

/// One kind of collective in a tally: how many calls and how many bytes each rank handed in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectiveRow {
    pub kind: &'static str,
    pub calls: usize,
    /// The bytes of the tensors this rank passed (NCCL's count x 4): what one rank's buffers
    /// hold; an all-reduce on a ring moves 2 (N - 1) / N times this over each link.
    pub bytes: u64,
}

/// A group that counts its calls by kind and passes them on: the step census's collectives.
pub struct Tallied<B: Backend> {
    inner: Group<B>,
    rows: Mutex<Vec<CollectiveRow>>,
}

impl<B: Backend> Tallied<B> {
    pub fn new(inner: Group<B>) -> Self {
        Tallied { inner, rows: Mutex::new(Vec::new()) }
    }

    /// The calls since the last `take`, in the order of their first call.
    pub fn take(&self) -> Vec<CollectiveRow> {
        self.rows.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default()
    }

    fn count(&self, kind: &'static str, x: Option<&Tensor<B>>) {
        let bytes = x.map_or(0, |x| 4 * x.numel() as u64);
        if let Ok(mut rows) = self.rows.lock() {
            match rows.iter_mut().find(|r| r.kind == kind) {
                Some(r) => {
                    r.calls += 1;
                    r.bytes += bytes;
                }
                None => rows.push(CollectiveRow { kind, calls: 1, bytes }),
            }
        }
    }
}

impl<B: Backend> Collective<B> for Tallied<B> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world(&self) -> usize {
        self.inner.world()
    }
    fn all_reduce_sum(&self, x: &Tensor<B>) -> Result<Tensor<B>> {
        self.count("all_reduce", Some(x));
        self.inner.all_reduce_sum(x)
    }
    fn all_gather(&self, x: &Tensor<B>) -> Result<Tensor<B>> {
        self.count("all_gather", Some(x));
        self.inner.all_gather(x)
    }
    fn broadcast(&self, x: &Tensor<B>) -> Result<Tensor<B>> {
        self.count("broadcast", Some(x));
        self.inner.broadcast(x)
    }
    fn barrier(&self) -> Result<()> {
        self.count("barrier", None);
        self.inner.barrier()
    }
    fn abort(&self, why: &str) {
        self.inner.abort(why)
    }
}
