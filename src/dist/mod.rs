//! Data-parallel processes (issue 30), the process-level part: who this process is in the job
//! (`world`: from the flags, torchrun's or SLURM's environment), how the ranks get NCCL's unique
//! id (`rendezvous`: rank 0 serves it over TCP, only to this job's ranks), loading NCCL
//! (`nccl`), and `--nproc-per-node` (`launch`: one worker process per GPU, as torchrun does).
//! The collectives themselves are NCCL's; the only network code of ours is the rendezvous.

pub mod collective;
pub mod launch;
pub mod nccl;
pub mod probe;
pub mod rendezvous;
pub mod world;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

pub use rendezvous::rendezvous;
pub use world::World;

/// NCCL's `ncclUniqueId`: 128 opaque bytes that rank 0 makes and every rank passes to
/// `ncclCommInitRank`.
pub type UniqueId = [u8; 128];

/// The rendezvous port when neither `--master-port` nor `MASTER_PORT` says (torchrun's).
pub const DEFAULT_PORT: u16 = 29500;
/// The rendezvous address when neither `--master-addr`, `MASTER_ADDR` nor SLURM says.
pub const DEFAULT_ADDR: &str = "127.0.0.1";
/// `--rdzv-timeout`'s default, in seconds.
pub const DEFAULT_TIMEOUT_S: u64 = 300;
/// The job id our launcher hands its workers (random per launch unless `--rdzv-id` says).
pub const JOB_ID_ENV: &str = "SSL_ENGINE_JOB_ID";
/// Test-only: the worker of this rank in `ssl-engine dist-rendezvous` exits with code
/// `TEST_EXIT_CODE` right after the rendezvous, so the tests can watch the launcher stop the
/// others. Nothing else reads it.
pub const TEST_EXIT_ENV: &str = "SSL_ENGINE_TEST_EXIT_AFTER_RENDEZVOUS";
/// The exit code of the worker `TEST_EXIT_ENV` names.
pub const TEST_EXIT_CODE: i32 = 7;

/// What the command line says about the job; `None` where a flag was not given, so the
/// environment (torchrun's, SLURM's) can fill it in. `train` and `dist-rendezvous` share it.
#[derive(Clone, Debug)]
pub struct DistArgs {
    /// `--nproc-per-node`: worker processes this launcher starts.
    pub nproc_per_node: Option<usize>,
    /// `--nnodes`: machines in the job, each with its own launcher.
    pub nnodes: Option<usize>,
    /// `--node-rank`: this machine's index among them.
    pub node_rank: Option<usize>,
    pub master_addr: Option<String>,
    pub master_port: Option<u16>,
    /// `--rdzv-id`: the job id every rank presents at the rendezvous.
    pub rdzv_id: Option<String>,
    /// `--rdzv-timeout`: how long rank 0 waits for the others, and they for it.
    pub rdzv_timeout: Duration,
}

impl Default for DistArgs {
    fn default() -> Self {
        DistArgs {
            nproc_per_node: None,
            nnodes: None,
            node_rank: None,
            master_addr: None,
            master_port: None,
            rdzv_id: None,
            rdzv_timeout: Duration::from_secs(DEFAULT_TIMEOUT_S),
        }
    }
}

/// 64 bits from the OS's randomness (std seeds each `RandomState` from it), for job ids and the
/// dry-run unique id; no crate needed.
fn random_u64(salt: u64) -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(salt);
    h.write_u32(std::process::id());
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

/// A random 128-byte id: what rank 0 hands out where NCCL does not make it (the CPU backend, a
/// dry run, the tests).
pub fn random_id() -> UniqueId {
    let mut id = [0u8; 128];
    for (i, chunk) in id.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&random_u64(i as u64).to_le_bytes());
    }
    id
}

/// A fresh job id for one launch: 16 hex digits.
pub fn random_job_id() -> String {
    format!("{:016x}", random_u64(0x5eed))
}

/// Lower-case hex of `bytes`, for printing an id.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_differ() {
        assert_ne!(random_id(), random_id());
        assert_ne!(random_job_id(), random_job_id());
        assert_eq!(random_job_id().len(), 16);
        assert_eq!(hex(&[0, 1, 0xab]), "0001ab");
    }
}
