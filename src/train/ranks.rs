//! Several ranks in this process: `train --nproc-per-node N --backend cpu`. One thread per rank,
//! each with its own backend, meeting through the in-process collective; each runs the same
//! training loop (`train_rank`) the GPU ranks run, on its share of every global batch.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::{StartOptions, TrainSummary, train_rank};
use crate::backend::Backend;
use crate::config::Config;
use crate::dist::collective::{Group, InProcess};
use crate::dist::{DistArgs, World, nccl, rendezvous};
use crate::error::{Error, Result};

/// Trains `ranks` ranks of one run, rank r on the backend `backend(r)` (made on its own thread).
/// Rank 0 writes the run's files and prints; its summary is returned. A rank that fails stops
/// the others (their next collective returns at once) and the error is that rank's, naming it;
/// a rank that stops answering makes the others fail after `timeout`, naming it. A stop request
/// (Ctrl-C) is rank 0's `Error::Interrupted` after it saved.
pub fn train_in_process<B: Backend>(
    ranks: usize,
    backend: &(dyn Fn(usize) -> Result<B> + Sync),
    cfg: &Config,
    start: &StartOptions,
    interrupt: &AtomicBool,
    show: bool,
    timeout: Duration,
) -> Result<TrainSummary> {
    let (results, first_failure) = InProcess::run(ranks, timeout, &|rank, group: Group<B>| {
        backend(rank).and_then(|b| train_rank(&b, cfg, start, interrupt, show && rank == 0, Some(group)))
    });
    outcome(results, first_failure)
}

/// The run's result from every rank's: rank 0's summary; else the failing rank's error (rank
/// 0's own errors as they are, another rank's naming it, with its exit code); else a stop
/// request (rank 0's, which says where it saved, before any other rank's).
fn outcome(mut results: Vec<Result<TrainSummary>>, first_failure: Option<usize>) -> Result<TrainSummary> {
    let ranks = results.len();
    // Every rank fails alike on a bad recipe or a missing folder: rank 0's own error is the one
    // to show, whichever rank got there first (not one that only says another rank failed).
    let rank0_own = matches!(&results[0], Err(e) if !matches!(e, Error::Distributed { .. } | Error::Interrupted(_)));
    let first_failure = if rank0_own { Some(0) } else { first_failure };
    if let Some(r) = first_failure {
        let e = std::mem::replace(&mut results[r], Err(Error::dist(String::new()))).err().expect("the failed rank's error");
        return Err(if r == 0 { e } else { Error::Distributed { msg: format!("rank {r} of {ranks}: {e}"), exit: e.exit_code() } });
    }
    let interrupted = results.iter().position(|r| matches!(r, Err(Error::Interrupted(_))));
    let first = results.swap_remove(interrupted.unwrap_or(0));
    match (first, results.into_iter().find_map(Result::err)) {
        (Ok(s), None) => Ok(s),
        (Err(e), _) | (Ok(_), Some(e)) => Err(e),
    }
}

/// Whether `--nproc-per-node` asks this process to train its ranks itself: the CPU backend on
/// one node (the CPU has no NCCL; its ranks meet in memory).
pub fn in_process_ranks(backend: crate::config::BackendKind, nproc_per_node: usize, nnodes: usize) -> Result<Option<usize>> {
    use crate::config::BackendKind;
    match backend {
        _ if nproc_per_node * nnodes <= 1 => Ok(None),
        BackendKind::Cpu if nnodes > 1 => Err(Error::Config(format!(
            "--nnodes {nnodes} with the cpu backend: CPU ranks meet in one process (threads), so they cannot span machines; \
             use --backend cuda (NCCL) for several machines, or one node"
        ))),
        BackendKind::Cpu => Ok(Some(nproc_per_node)),
        BackendKind::Wgpu => Err(Error::Config(
            "--nproc-per-node with the wgpu backend: data parallel runs on cuda (NCCL) or on the cpu (threads)".into(),
        )),
        BackendKind::Cuda => Ok(None),
    }
}

/// One worker process of a launched job on its GPU (`b`): meets the other ranks at the
/// rendezvous (rank 0 makes NCCL's unique id and hands it out), opens the NCCL communicator, and
/// trains as its rank. A missing NCCL is one line before anything starts.
pub fn train_cuda_worker(
    b: &crate::backend::cuda::CudaBackend,
    world: &World,
    args: &DistArgs,
    cfg: &Config,
    start: &StartOptions,
    interrupt: &AtomicBool,
    show: bool,
) -> Result<TrainSummary> {
    nccl::nccl_available()?;
    let id = rendezvous(world, args.rdzv_timeout, nccl::nccl_unique_id)?;
    let group: Group<_> = Arc::new(nccl::NcclGroup::init(b, world.rank, world.world_size, &id, args.rdzv_timeout)?);
    train_rank(b, cfg, start, interrupt, show && world.rank == 0, Some(group))
}
