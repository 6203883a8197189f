//! `ssl-engine dist-rendezvous` (hidden): a worker's start-up up to, not including, NCCL's
//! communicator init, for the tests and for checking a cluster's wiring by hand. It resolves the
//! world, meets the other ranks, and prints what it got on one line of stdout:
//! `rendezvous: rank=R world_size=W local_rank=L pid=P source=nccl|random id=<256 hex digits>`.
//! Every rank of one job prints the same id.

use std::time::{Duration, Instant};

use super::{DistArgs, TEST_EXIT_CODE, TEST_EXIT_ENV, UniqueId, World, hex, nccl, random_id, rendezvous};
use crate::error::{Error, Result};

/// Who made the id rank 0 handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdSource {
    /// `ncclGetUniqueId` (the cuda backend with NCCL present).
    Nccl,
    /// Random bytes (the cpu backend, or no NCCL).
    Random,
}

/// Resolves the world from `args` and the environment and meets the other ranks: the world,
/// the id and its source (rank 0's choice; the others report what they asked for). `cuda`: the
/// id comes from NCCL where it loads, else (a note says so) random bytes.
pub fn start(args: &DistArgs, cuda: bool) -> Result<(World, UniqueId, IdSource)> {
    let world = World::from_env(args)?;
    let source = match (cuda, cuda && nccl::nccl_available().is_ok()) {
        (true, true) => IdSource::Nccl,
        (true, false) => {
            if world.rank == 0 {
                let why = nccl::nccl_available().err().map(|e| e.to_string()).unwrap_or_default();
                eprintln!("note: {why}; handing out a random id instead (the rendezvous works, NCCL's init would not)");
            }
            IdSource::Random
        }
        (false, _) => IdSource::Random,
    };
    let id = rendezvous(&world, args.rdzv_timeout, || match source {
        IdSource::Nccl => nccl::nccl_unique_id(),
        IdSource::Random => Ok(random_id()),
    })?;
    Ok((world, id, source))
}

/// The hidden subcommand: `start`, the line, then (tests only) exit as `TEST_EXIT_ENV` says or
/// stay up for `hold` (as a training run would), stopping early on Ctrl-C / SIGTERM.
pub fn run(args: &DistArgs, cuda: bool, hold: Duration) -> Result<()> {
    let (w, id, source) = start(args, cuda)?;
    let source = if source == IdSource::Nccl { "nccl" } else { "random" };
    println!(
        "rendezvous: rank={} world_size={} local_rank={} pid={} source={source} id={}",
        w.rank,
        w.world_size,
        w.local_rank,
        std::process::id(),
        hex(&id)
    );
    if std::env::var(TEST_EXIT_ENV).ok().and_then(|v| v.trim().parse::<usize>().ok()) == Some(w.rank) {
        return Err(Error::Distributed {
            msg: format!("rank {}: exiting after the rendezvous as {TEST_EXIT_ENV} asks (a test)", w.rank),
            exit: TEST_EXIT_CODE,
        });
    }
    let until = Instant::now() + hold;
    while Instant::now() < until {
        crate::interrupt::check("the hold after the rendezvous")?;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
