//! Loading NCCL. cudarc's `nccl` feature opens libnccl at run time (like the driver and NVRTC)
//! and panics when it cannot, so every entry point here first checks that it loads and otherwise
//! fails with one line saying how to install it.
//!
//! cudarc 0.19 looks for `libnccl.so` (and `libnccl.so.<1, 9-13>`) but not `libnccl.so.2`, the
//! only name the PyPI wheel (`nvidia-nccl-cu13`, in site-packages/nvidia/nccl/lib) and Debian's
//! libnccl2 ship; the development package adds `libnccl.so`. Where only `libnccl.so.2` is found,
//! the error says which link to add.
//!
//! `NcclGroup` is the `Collective` of one process per GPU: an NCCL communicator whose
//! collectives are enqueued on the CUDA backend's one stream, in order with our kernels.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cudarc::driver::sys as cu;
use cudarc::nccl::result::{self as nccl, NcclError, NcclStatus};
use cudarc::nccl::sys::{cudaStream_t, ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclResult_t, ncclUniqueId};

use super::UniqueId;
use super::collective::Collective;
use crate::backend::CoreOps;
use crate::backend::cuda::CudaBackend;
use crate::error::{Error, Result, shape_err};
use crate::tensor::{DType, Tensor};

/// The one line for a machine without NCCL.
pub const NCCL_MISSING: &str = "NCCL not found: install it with `pip install nvidia-nccl-cu13` (and put its lib folder, \
     site-packages/nvidia/nccl/lib, on LD_LIBRARY_PATH) or the system's libnccl2";

/// The name NCCL's runtime packages ship.
pub const SONAME: &str = "libnccl.so.2";

/// The NCCL functions cudarc 0.19.10's `nccl::result` and `nccl::safe` call (its sys binding
/// declares more, for newer NCCLs), plus `ncclCommGetAsyncError`, which the fault handling polls.
pub const SYMBOLS: [&str; 24] = [
    "ncclGetVersion",
    "ncclGetUniqueId",
    "ncclCommInitRank",
    "ncclCommInitRankConfig",
    "ncclCommInitAll",
    "ncclCommSplit",
    "ncclCommFinalize",
    "ncclCommDestroy",
    "ncclCommAbort",
    "ncclCommGetAsyncError",
    "ncclCommCount",
    "ncclCommCuDevice",
    "ncclCommUserRank",
    "ncclRedOpCreatePreMulSum",
    "ncclRedOpDestroy",
    "ncclReduce",
    "ncclBroadcast",
    "ncclAllReduce",
    "ncclReduceScatter",
    "ncclAllGather",
    "ncclSend",
    "ncclRecv",
    "ncclGroupStart",
    "ncclGroupEnd",
];

/// Ok when cudarc can load libnccl; else the one line above, or, where only `libnccl.so.2` is
/// there, the link that makes it loadable.
pub fn nccl_available() -> Result<()> {
    // SAFETY: only tries to dlopen cudarc's candidate names.
    if unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Ok(());
    }
    Err(Error::Other(not_loadable_message()))
}

/// Why cudarc cannot load NCCL, with the fix.
fn not_loadable_message() -> String {
    // SAFETY: loading NCCL runs no code of ours; it is dropped again at once.
    let soname_loads = unsafe { libloading::Library::new(SONAME) }.is_ok();
    let folder = library_path_dirs().into_iter().find(|d| d.join(SONAME).is_file());
    match (soname_loads, folder) {
        (_, Some(dir)) => format!(
            "NCCL is in {} only as {SONAME}, a name cudarc does not load: add the link with `ln -s {SONAME} {}`",
            dir.display(),
            dir.join("libnccl.so").display()
        ),
        (true, None) => format!(
            "NCCL is installed only as {SONAME}, a name cudarc does not load: install the development package \
             (libnccl-dev, which adds libnccl.so) or link libnccl.so to it in a folder on LD_LIBRARY_PATH"
        ),
        (false, None) => NCCL_MISSING.into(),
    }
}

/// The folders of `LD_LIBRARY_PATH`, in order.
fn library_path_dirs() -> Vec<PathBuf> {
    std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
        .unwrap_or_default()
}

/// The PyPI wheel's library beside a CUDA wheel's folder on `LD_LIBRARY_PATH`
/// (site-packages/nvidia/cu13/lib -> site-packages/nvidia/nccl/lib/libnccl.so.2), or in one of
/// those folders itself: where `.ci/run` and the tests find it.
pub fn wheel_library() -> Option<PathBuf> {
    library_path_dirs().into_iter().find_map(|d| {
        let beside = d.parent().and_then(Path::parent).map(|nvidia| nvidia.join("nccl").join("lib").join(SONAME));
        [Some(d.join(SONAME)), beside].into_iter().flatten().find(|p| p.is_file())
    })
}

/// NCCL's version as (major, minor, patch).
pub fn nccl_version() -> Result<(i32, i32, i32)> {
    nccl_available()?;
    let v = cudarc::nccl::result::get_nccl_version().map_err(|e| nccl_err("ncclGetVersion", e))?;
    // 2.32.6 is 23206 (NCCL_VERSION_CODE since 2.9: major * 10000 + minor * 100 + patch).
    Ok((v / 10000, (v / 100) % 100, v % 100))
}

/// A fresh unique id from `ncclGetUniqueId` (rank 0 only: it also starts NCCL's bootstrap
/// listener in this process). Needs libnccl, not a GPU.
pub fn nccl_unique_id() -> Result<UniqueId> {
    nccl_available()?;
    let id = cudarc::nccl::Id::new().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
    Ok(id.internal().map(|c| c as u8))
}

/// The id the rendezvous delivered, as cudarc takes it for `Comm::from_rank`.
pub fn id_from_bytes(bytes: &UniqueId) -> cudarc::nccl::Id {
    cudarc::nccl::Id::uninit(bytes.map(|b| b as core::ffi::c_char))
}

fn nccl_err(what: &str, e: cudarc::nccl::result::NcclError) -> Error {
    Error::Device { backend: "nccl", msg: format!("{what} failed: {:?}", e.0) }
}

// ---- The communicator ----------------------------------------------------------------------

/// How often `wait` looks at the stream and at NCCL's error state: short next to any timeout,
/// long enough that polling costs nothing.
const POLL: Duration = Duration::from_millis(2);

/// One rank's NCCL communicator on its GPU (the `CudaBackend` it was made on).
pub struct NcclGroup {
    comm: ncclComm_t,
    rank: usize,
    world: usize,
    /// Keeps the device, its context and its stream alive as long as the communicator uses them.
    backend: CudaBackend,
    /// How long a wait (`barrier`, closing) lets the other ranks take before giving up on them.
    timeout: Duration,
    /// Why the communicator was aborted, once it was: NCCL has freed it, so nothing may use it again.
    aborted: OnceLock<String>,
    /// NCCL communicators are not thread-safe: enqueues from several threads take turns.
    enqueue_turn: Mutex<()>,
}

// SAFETY: the communicator is an opaque handle that NCCL lets any thread use with the device's
// context bound (every call here binds it first); enqueues are serialised by `enqueue_turn`. Only
// `abort` may run beside another call, which is what ncclCommAbort is made for (it unblocks a
// call that hangs on a dead peer).
unsafe impl Send for NcclGroup {}
unsafe impl Sync for NcclGroup {}

impl NcclGroup {
    /// Joins rank `rank` of `world` to the communicator of `id` (the rendezvous's unique id), on
    /// `b`'s GPU. ncclCommInitRank returns once every rank has joined; the rendezvous before it
    /// has already seen them all. `timeout` bounds the waits later on (see `barrier`).
    pub fn init(b: &CudaBackend, rank: usize, world: usize, id: &UniqueId, timeout: Duration) -> Result<NcclGroup> {
        if rank >= world {
            return Err(Error::Invalid { op: "nccl init", msg: format!("rank {rank} is not below the world size {world}") });
        }
        // Checked before NCCL is loaded, so a machine without a GPU gets this answer with or
        // without libnccl.
        if b.is_dry_run() {
            return Err(no_gpu(b, rank, world));
        }
        nccl_available()?;
        let (nranks, me) = match (i32::try_from(world), i32::try_from(rank)) {
            (Ok(n), Ok(r)) => (n, r),
            _ => return Err(Error::Invalid { op: "nccl init", msg: format!("a world of {world} ranks is too large for NCCL") }),
        };
        // Binds the device's context to this thread: NCCL attaches to the current device.
        gpu_stream(b, rank, world)?;
        let mut comm: ncclComm_t = std::ptr::null_mut();
        let unique_id = ncclUniqueId { internal: *id_from_bytes(id).internal() };
        // SAFETY: `comm` is a valid place for the handle, the id is NCCL's 128 bytes as rank 0
        // made them, and the GPU's context is current on this thread.
        unsafe { nccl::comm_init_rank(&mut comm, nranks, unique_id, me) }
            .map_err(|e| nccl_err(&format!("ncclCommInitRank (rank {rank} of {world})"), e))?;
        Ok(NcclGroup {
            comm,
            rank,
            world,
            backend: b.clone(),
            timeout,
            aborted: OnceLock::new(),
            enqueue_turn: Mutex::new(()),
        })
    }

    /// An error once the communicator is aborted: it is freed, and the group is over.
    fn check_live(&self) -> Result<()> {
        match self.aborted.get() {
            Some(why) => Err(Error::dist(format!(
                "rank {} of {}: the NCCL communicator was aborted, no collective can run on it any more ({why})",
                self.rank, self.world
            ))),
            None => Ok(()),
        }
    }

    /// A new f32 tensor of `shape` for the result of `op` on `x`, once `x` is fit to send.
    fn output(&self, op: &'static str, x: &Tensor<CudaBackend>, shape: &[usize]) -> Result<Tensor<CudaBackend>> {
        self.check_live()?;
        if x.dtype() != DType::F32 {
            return Err(Error::DType { op, dtype: x.dtype().to_string(), backend: "nccl".into() });
        }
        // NCCL would read another GPU's address as one of ours.
        if !x.backend().same_device(&self.backend) {
            return Err(Error::Invalid { op, msg: "the tensor comes from another CudaBackend than this rank's NCCL communicator (another device or stream)".into() });
        }
        Tensor::empty(&self.backend, shape, DType::F32)
    }

    /// Enqueues one NCCL call (named `call` in errors) on the backend's stream. Nothing waits:
    /// our kernels after it on the stream see its result, and a graph capture records it.
    fn enqueue(&self, call: &str, f: impl FnOnce(ncclComm_t, cudaStream_t) -> std::result::Result<NcclStatus, NcclError>) -> Result<()> {
        self.check_live()?;
        let _turn = self.enqueue_turn.lock().unwrap_or_else(|e| e.into_inner());
        let stream = gpu_stream(&self.backend, self.rank, self.world)?;
        // Our stream is the driver's CUstream; NCCL declares the same handle as its own type.
        f(self.comm, stream as cudaStream_t)
            .map(drop)
            .map_err(|e| nccl_err(&format!("{call} (rank {} of {})", self.rank, self.world), e))
    }

    /// Waits until the stream has run everything queued so far (the collectives included). On
    /// an NCCL error or after `timeout`, aborts the communicator, so that this rank stops
    /// waiting and the others see it fail, and returns an error naming this rank and `what`.
    fn wait(&self, what: &str) -> Result<()> {
        self.check_live()?;
        // Polling a capturing stream would end the capture.
        self.backend.refuse_while_capturing(what)?;
        let stream = gpu_stream(&self.backend, self.rank, self.world)?;
        let start = Instant::now();
        loop {
            // SAFETY: the stream is live (the backend outlives self) and its context is bound.
            match unsafe { cu::cuStreamQuery(stream) } {
                cu::cudaError_enum::CUDA_SUCCESS => return Ok(()),
                cu::cudaError_enum::CUDA_ERROR_NOT_READY => {}
                e => {
                    let cause = format!("the CUDA stream failed ({e:?}): a kernel on this rank faulted or the GPU was lost");
                    return Err(self.fail(what, start, &cause));
                }
            }
            // A dead or broken peer shows up here (ncclRemoteError, ncclSystemError) while the
            // stream would just never finish.
            let mut state = ncclResult_t::ncclSuccess;
            // SAFETY: the communicator is live (checked above; only `fail` below frees it) and
            // `state` is a valid place for the result.
            let asked = unsafe { cudarc::nccl::sys::ncclCommGetAsyncError(self.comm, &mut state) };
            if asked != ncclResult_t::ncclSuccess {
                return Err(self.fail(what, start, &format!("ncclCommGetAsyncError failed with {asked:?}")));
            }
            if !matches!(state, ncclResult_t::ncclSuccess | ncclResult_t::ncclInProgress) {
                let cause = format!("NCCL reported {state:?}: another rank probably died or hangs, or the network failed");
                return Err(self.fail(what, start, &cause));
            }
            if start.elapsed() >= self.timeout {
                let cause = format!("not done at the {} s timeout: another rank probably died or hangs", self.timeout.as_secs_f64());
                return Err(self.fail(what, start, &cause));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Aborts the communicator and says so: the error `wait` returns.
    fn fail(&self, what: &str, start: Instant, cause: &str) -> Error {
        let msg = format!(
            "rank {} of {}: {what} failed after {:.1} s: {cause}; this rank aborted its NCCL communicator",
            self.rank,
            self.world,
            start.elapsed().as_secs_f64()
        );
        self.abort(&msg);
        Error::dist(msg)
    }
}

/// The stream of a backend with a GPU, its context bound to this thread.
fn gpu_stream(b: &CudaBackend, rank: usize, world: usize) -> Result<cu::CUstream> {
    b.stream_for_nccl()?.ok_or_else(|| no_gpu(b, rank, world))
}

fn no_gpu(b: &CudaBackend, rank: usize, world: usize) -> Error {
    Error::Device {
        backend: "nccl",
        msg: format!(
            "rank {rank} of {world}: the backend ({}) has no GPU, so it cannot hold an NCCL communicator \
             (test several ranks without a GPU with the in-process group)",
            b.name()
        ),
    }
}

impl Collective<CudaBackend> for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&self, x: &Tensor<CudaBackend>) -> Result<Tensor<CudaBackend>> {
        let out = self.output("all_reduce_sum", x, x.shape())?;
        // Every rank has the same shape, so every rank skips an empty tensor alike.
        if x.numel() > 0 {
            let (send, recv) = (x.storage().device_ptr(), out.storage().device_ptr());
            // SAFETY: both buffers hold x.numel() f32 values on this communicator's GPU.
            self.enqueue("ncclAllReduce", |comm, stream| unsafe {
                nccl::all_reduce(send as _, recv as _, x.numel(), ncclDataType_t::ncclFloat32, ncclRedOp_t::ncclSum, comm, stream)
            })?;
        }
        Ok(out)
    }
    fn all_gather(&self, x: &Tensor<CudaBackend>) -> Result<Tensor<CudaBackend>> {
        let Some(&rows) = x.shape().first() else {
            return Err(shape_err("all_gather", "a scalar has no axis 0 to stack along", &[x.shape()]));
        };
        let mut shape = x.shape().to_vec();
        shape[0] = rows * self.world;
        let out = self.output("all_gather", x, &shape)?;
        if x.numel() > 0 {
            let (send, recv) = (x.storage().device_ptr(), out.storage().device_ptr());
            // SAFETY: `send` holds x.numel() f32 values and `recv` world times as many, on this
            // communicator's GPU; NCCL puts rank r's at r * x.numel(): stacked along axis 0.
            self.enqueue("ncclAllGather", |comm, stream| unsafe {
                nccl::all_gather(send as _, recv as _, x.numel(), ncclDataType_t::ncclFloat32, comm, stream)
            })?;
        }
        Ok(out)
    }
    fn broadcast(&self, x: &Tensor<CudaBackend>) -> Result<Tensor<CudaBackend>> {
        let out = self.output("broadcast", x, x.shape())?;
        if x.numel() > 0 {
            let (send, recv) = (x.storage().device_ptr(), out.storage().device_ptr());
            // SAFETY: both buffers hold x.numel() f32 values on this communicator's GPU.
            self.enqueue("ncclBroadcast", |comm, stream| unsafe {
                nccl::broadcast(send as _, recv as _, x.numel(), ncclDataType_t::ncclFloat32, 0, comm, stream)
            })?;
        }
        Ok(out)
    }
    fn barrier(&self) -> Result<()> {
        // Checked before anything is enqueued: a graph cannot hold a host wait.
        self.backend.refuse_while_capturing("an NCCL barrier")?;
        let token = Tensor::empty(&self.backend, &[1], DType::F32)?;
        // Kept until the wait is over (its value does not matter, only that every rank sent it).
        let _sum = self.all_reduce_sum(&token)?;
        self.wait("the barrier")
    }
    fn abort(&self, why: &str) {
        // Once only: NCCL frees the communicator, so a second abort (or Drop) would use freed memory.
        if self.aborted.set(why.to_string()).is_ok() {
            // NCCL frees its device memory in the current context.
            let _ = self.backend.stream_for_nccl();
            // SAFETY: the communicator is live (never aborted before) and never used after this.
            let _ = unsafe { nccl::comm_abort(self.comm) };
        }
    }
}

impl Drop for NcclGroup {
    fn drop(&mut self) {
        // ncclCommDestroy waits for the collectives still queued, which never finish when a peer
        // is gone: wait for them here under the timeout, and abort instead when that fails.
        match self.wait("closing the NCCL communicator") {
            Ok(()) => {
                // SAFETY: the communicator is live (not aborted) and never used after this.
                let _ = unsafe { nccl::comm_destroy(self.comm) };
            }
            Err(_) => self.abort("closed while its collectives had not finished"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_bytes_round_trip() {
        let mut bytes = [0u8; 128];
        bytes.iter_mut().enumerate().for_each(|(i, b)| *b = (i * 7) as u8);
        assert_eq!(id_from_bytes(&bytes).internal().map(|c| c as u8), bytes);
    }

    /// A dry-run backend, or None (with a note) where libnvrtc is missing.
    fn dry_run() -> Option<CudaBackend> {
        match CudaBackend::dry_run(132) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("skipped: no dry-run CUDA backend on this machine ({e})");
                None
            }
        }
    }

    #[test]
    fn init_refuses_a_dry_run() {
        let Some(b) = dry_run() else { return };
        let Err(e) = NcclGroup::init(&b, 1, 2, &[0u8; 128], Duration::from_secs(1)) else {
            panic!("a dry run has no GPU for a communicator");
        };
        let msg = e.to_string();
        assert!(msg.contains("dry run") && msg.contains("rank 1 of 2") && msg.contains("no GPU"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn init_refuses_a_rank_outside_the_world() {
        let Some(b) = dry_run() else { return };
        let Err(e) = NcclGroup::init(&b, 2, 2, &[0u8; 128], Duration::from_secs(1)) else {
            panic!("rank 2 of 2 does not exist");
        };
        assert!(e.to_string().contains("rank 2 is not below the world size 2"), "{e}");
    }

    #[test]
    fn missing_nccl_is_one_line() {
        assert!(!NCCL_MISSING.contains('\n'));
        assert!(NCCL_MISSING.contains("pip install nvidia-nccl-cu13") && NCCL_MISSING.contains("libnccl2"));
        // Whatever this machine has, the check answers without panicking.
        if let Err(e) = nccl_available() {
            assert!(e.to_string().starts_with("NCCL "), "{e}");
        }
    }
}
