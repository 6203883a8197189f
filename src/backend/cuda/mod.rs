//! The CUDA backend on cudarc (driver API + NVRTC, both loaded at run time, so the binary builds
//! and runs on machines without CUDA: `CudaBackend::new` then returns one clear error).
//!
//! Kernels live in `kernels/<family>.cu`, one file per op family with symbols named
//! `<op>_<fwd|bwd>_<f32|bf16>` after the op family's trait methods (`ConvOps::conv2d_data_bwd`
//! is `conv2d_data_bwd_f32`, its bf16 tensor-core variants `conv2d[_<tile>]_data_bwd_bf16`);
//! `src/backend/cuda/<family>.rs` implements the family's trait with their launches.
//! They are compiled by NVRTC for the device's own architecture (sm_90a on Hopper) and cached on
//! disk (see `nvrtc.rs`). Everything is enqueued on one stream; only downloads and
//! `synchronize` wait. Memory comes from a caching pool (`buffer_pool.rs`).
//!
//! Precision: the default matmul and convolutions are exact FP32 (SIMT), matching the CPU
//! reference to ~1e-6; `with_tf32(true)` switches them to TF32 tensor cores (~1e-3 relative, like
//! PyTorch's allow_tf32). Reductions have a fixed order (no atomics), so results are
//! deterministic on a given GPU.
//!
//! Differences from the CPU backend: f32 only; a cross-entropy label that is not a class index
//! gives a NaN loss (a kernel cannot return an error); attention head dims up to 128.

mod args;
mod attention;
mod buffer_pool;
mod conv;
mod device;
mod elementwise;
mod gemm;
mod graph;
mod layout;
mod loss;
mod matmul;
mod norm;
pub mod nvrtc;
mod optim;
mod pool;
pub mod report;

use std::sync::Arc;

use args::Arg;
use buffer_pool::BufferPool;
use device::Device;
pub use device::LaunchRecord;
use nvrtc::err;

use super::*;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// A device buffer of `len` values, returned to the pool when dropped. F32, or BF16 (2 bytes
/// each) for a tensor whose values are all bf16 and whose readers take it so
/// (`ConvOps::conv2d_batchnorm_out_dtype`).
pub struct CudaStorage {
    ptr: u64,
    len: usize,
    dtype: DType,
    class: usize,
    pool: Arc<BufferPool>,
}

impl CudaStorage {
    /// The buffer's device address (tests and diagnostics: which block the pool handed out).
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
    /// F32, or BF16 where the storage holds 2-byte values.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The bytes its values take.
    fn bytes(&self) -> usize {
        self.len * self.dtype.size_in_bytes()
    }
}

impl Drop for CudaStorage {
    fn drop(&mut self) {
        self.pool.give(self.ptr, self.class);
    }
}

impl CudaStorage {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The inner product of kernels/gemm_tile.cuh (GEMM_SIMT, GEMM_TF32, GEMM_BF16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmMath {
    Simt,
    Tf32,
    Bf16,
}

#[derive(Clone)]
pub struct CudaBackend {
    dev: Arc<Device>,
    tf32: bool,
    precision: Precision,
    /// Tests: every allocation is filled with NaN, so an output element a kernel never writes fails.
    poison: bool,
    /// Captured graphs, by `GraphId`.
    graphs: Arc<std::sync::Mutex<std::collections::HashMap<u64, graph::Graph>>>,
    /// The counters of `arrival_counters`, the newest last; never freed while the backend
    /// lives, as a captured graph keeps using the buffer it was recorded with.
    arrivals: Arc<std::sync::Mutex<Vec<CudaStorage>>>,
}

impl CudaBackend {
    /// Opens GPU `device`, compiling (or loading from the disk cache) every kernel family.
    /// Without a driver, a GPU or NVRTC, returns one error line naming what is missing.
    pub fn new(device: usize) -> Result<Self> {
        Ok(CudaBackend {
            dev: Arc::new(Device::open(device)?),
            tf32: false,
            precision: Precision::Fp32,
            poison: false,
            graphs: Default::default(),
            arrivals: Default::default(),
        })
    }

    /// A backend with no GPU behind it, for tests: kernels are compiled for their signatures
    /// only, launches are checked and recorded (`take_launches`) but not run, downloads give
    /// zeros. Needs libnvrtc. `sm_count` sizes the grids as a GPU with that many SMs would.
    pub fn dry_run(sm_count: u32) -> Result<Self> {
        Ok(CudaBackend {
            dev: Arc::new(Device::dry_run(sm_count)?),
            tf32: false,
            precision: Precision::Fp32,
            poison: false,
            graphs: Default::default(),
            arrivals: Default::default(),
        })
    }

    /// A dry run imitating a GPU with `bytes` of memory: allocations beyond it fail with
    /// `Error::OutOfMemory`, as they would there (the out-of-memory tests).
    pub fn dry_run_with_memory(sm_count: u32, bytes: usize) -> Result<Self> {
        Ok(CudaBackend {
            dev: Arc::new(Device::dry_run_with_memory(sm_count, bytes)?),
            tf32: false,
            precision: Precision::Fp32,
            poison: false,
            graphs: Default::default(),
            arrivals: Default::default(),
        })
    }

    /// For tests: the kernels compiled for the host (`lib`, built from kernels/*.cu with
    /// tests/emu/cuda_emu.h) run on host threads and host memory, with the real launch code.
    #[doc(hidden)]
    pub fn emulated(lib: &std::path::Path, sm_count: u32) -> Result<Self> {
        Ok(CudaBackend {
            dev: Arc::new(Device::emulated(lib, sm_count)?),
            tf32: false,
            precision: Precision::Fp32,
            poison: false,
            graphs: Default::default(),
            arrivals: Default::default(),
        })
    }

    /// Dry run: graph replays so far.
    pub fn graph_replays(&self) -> u64 {
        self.dev.capture.replays.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// TF32 tensor cores for matmul and convolution (faster, ~1e-3 relative error).
    pub fn with_tf32(mut self, on: bool) -> Self {
        self.tf32 = on;
        self
    }
    /// Convolutions, matmuls and attention in `precision`: with `Bf16` the tape rounds their
    /// operands, results and gradients to bfloat16 (`Unary::RoundBf16`), as the CPU backend does.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }
    /// For tests: fill every new buffer with NaN, so unwritten outputs show up as NaN.
    pub fn with_poison(mut self) -> Self {
        self.poison = true;
        self
    }
    pub fn tf32(&self) -> bool {
        self.tf32
    }
    /// What the GEMM core (matmul and the three convolution passes) multiplies with:
    /// bf16 tensor cores under `Precision::Bf16`, else TF32 ones when asked, else exact FP32.
    pub fn gemm_math(&self) -> GemmMath {
        match (self.precision, self.tf32) {
            (Precision::Bf16, _) => GemmMath::Bf16,
            (Precision::Fp32, true) => GemmMath::Tf32,
            (Precision::Fp32, false) => GemmMath::Simt,
        }
    }
    /// The NVRTC target the kernels were built for (e.g. sm_90a).
    pub fn target(&self) -> &str {
        &self.dev.target.0
    }
    pub fn sm_count(&self) -> u32 {
        self.dev.sm_count
    }

    /// The most shared memory one block may have on this device, static and dynamic.
    pub fn max_shared(&self) -> u32 {
        self.dev.max_shared
    }
    pub fn kernel_names(&self) -> Vec<String> {
        self.dev.kernel_names()
    }
    /// Dry run only: the launches made since the last call.
    pub fn take_launches(&self) -> Vec<LaunchRecord> {
        self.dev.take_launches()
    }
    /// Bytes held by freed buffers waiting for reuse.
    pub fn pooled_bytes(&self) -> usize {
        self.dev.pool.pooled_bytes()
    }
    /// Bytes held by live tensors.
    pub fn live_bytes(&self) -> usize {
        self.dev.pool.live_bytes()
    }
    /// Returns pooled buffers to the driver.
    pub fn release_pooled(&self) -> Result<()> {
        self.dev.pool.release()
    }

    // ---- for NCCL (src/dist/nccl.rs) -------------------------------------------------------

    /// No GPU behind this backend (`dry_run`): there is nothing for a communicator to use.
    pub(crate) fn is_dry_run(&self) -> bool {
        self.dev.is_dry_run()
    }
    /// The stream all work is enqueued on, with the context bound to this thread; None without
    /// a GPU (dry run, host emulation).
    pub(crate) fn stream_for_nccl(&self) -> Result<Option<cudarc::driver::sys::CUstream>> {
        self.dev.stream_for_nccl()
    }
    /// An error naming `what` while a graph is captured (a host wait would break the capture).
    pub(crate) fn refuse_while_capturing(&self, what: &str) -> Result<()> {
        self.dev.refuse_while_capturing(what)
    }
    /// True when both backends drive the same device (and stream): a buffer of one is valid on the other.
    pub(crate) fn same_device(&self, other: &CudaBackend) -> bool {
        Arc::ptr_eq(&self.dev, &other.dev)
    }

    // ---- helpers for the family files ----------------------------------------------------

    pub(crate) fn launch(&self, kernel: &str, grid: (u32, u32, u32), block: (u32, u32, u32), args: &[Arg<'_>]) -> Result<()> {
        self.dev.launch(kernel, grid, block, 0, args)
    }

    /// A GEMM-core launch: its blocks each get `shared` bytes of dynamic shared memory, and it
    /// computes `flops` (2 per multiply-add; a dry run records them for the census's roofline).
    pub(crate) fn launch_shared(
        &self, kernel: &str, grid: (u32, u32, u32), block: (u32, u32, u32), shared: u32, args: &[Arg<'_>], flops: u64,
    ) -> Result<()> {
        self.dev.launch_counted(kernel, grid, block, shared, args, flops)
    }

    /// A scratch buffer of `len` f32 values (contents unspecified), back to the pool when dropped.
    /// Dropping it right after the launches that use it is safe: see buffer_pool.rs.
    pub(crate) fn scratch(&self, len: usize) -> Result<CudaStorage> {
        self.alloc(len, DType::F32)
    }

    /// `n` counters for a launch that finishes its own reduction (last_to_arrive in
    /// kernels/common.cuh: split-K tiles, column statistics): ints, all 0, each set back to 0
    /// by the last block that counts at it, so one buffer serves every launch on the stream,
    /// eager or replayed. A larger buffer, when needed, is uploaded as zeros: before the step
    /// graph is captured, as the warm-up step launches what the captured one does.
    pub(crate) fn arrival_counters(&self, n: usize) -> Result<Arg<'static>> {
        let mut held = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        if held.last().is_none_or(|a| a.len < n) {
            let len = n.max(held.last().map_or(0, |a| 2 * a.len)).max(4096);
            held.push(self.upload_f32(&vec![0.0; len], DType::F32)?); // f32 0.0: the int 0
        }
        Ok(ptr(held.last().expect("pushed above")))
    }

    /// A grid-stride kernel (FOR_EACH in kernels/common.cuh) over `n` elements: blocks of 256
    /// threads, as many as keep every SM busy.
    pub(crate) fn launch_over(&self, kernel: &str, n: usize, args: &[Arg<'_>]) -> Result<()> {
        const THREADS: u32 = 256;
        self.launch(kernel, (self.blocks_for(n, THREADS), 1, 1), (THREADS, 1, 1), args)
    }

    /// Blocks for a grid-stride kernel over `n` elements with `threads` per block.
    pub(crate) fn blocks_for(&self, n: usize, threads: u32) -> u32 {
        let cap = self.dev.sm_count as usize * 32;
        n.div_ceil(threads as usize).clamp(1, cap.max(1)) as u32
    }

    /// Split-K factor for a GEMM of `tiles` output tiles with reduction length `k`: as many
    /// pieces as fit in one wave of two blocks per SM, each piece at least 256 long. Rounding
    /// the pieces up instead spilled a second, nearly empty wave (Nsight on the H200: 288
    /// backward-weight blocks on 264 slots), which costs as long as the first: with s pieces
    /// filling one wave a GEMM takes about k / s, with s + 1 spilling into two, 2k / (s + 1).
    pub(crate) fn split_k(&self, tiles: usize, k: usize) -> usize {
        let target = 2 * self.dev.sm_count as usize;
        if tiles >= target || k < 512 {
            return 1;
        }
        (target / tiles.max(1)).min(k / 256).clamp(1, 64)
    }
}

pub(crate) fn ptr(s: &CudaStorage) -> Arg<'static> {
    Arg::Ptr(s.ptr)
}
pub(crate) fn opt_ptr(s: Option<&CudaStorage>) -> Arg<'static> {
    Arg::Ptr(s.map_or(0, |s| s.ptr))
}
/// `base` advanced by `elems` f32 elements.
pub(crate) fn ptr_at(s: &CudaStorage, elems: usize) -> Arg<'static> {
    Arg::Ptr(s.ptr + 4 * elems as u64)
}
pub(crate) fn i64a(v: usize) -> Arg<'static> {
    Arg::I64(v as i64)
}
/// A dim passed as `int`: an error, not a wrap-around, when it does not fit.
pub(crate) fn i32a(op: &'static str, v: usize) -> Result<Arg<'static>> {
    Ok(Arg::I32(i32c(op, v)?))
}
pub(crate) fn i32c(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Invalid { op, msg: format!("size {v} is too large for the cuda kernels (over 2^31 - 1)") })
}

impl CoreOps for CudaBackend {
    type Storage = CudaStorage;

    fn name(&self) -> String {
        if self.tf32 { format!("{}, tf32", self.dev.name) } else { self.dev.name.clone() }
    }

    fn supports(&self, dtype: DType) -> bool {
        dtype == DType::F32
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn rounds_gemm_to_bf16(&self) -> bool {
        self.gemm_math() == GemmMath::Bf16
    }

    /// F32, and BF16 as storage only: the ops compute on F32 (`supports`), and only the readers
    /// of a fused convolution + batch norm's output take BF16 (`conv2d_batchnorm_out_dtype`).
    fn alloc(&self, len: usize, dtype: DType) -> Result<CudaStorage> {
        if dtype != DType::F32 && dtype != DType::BF16 {
            return Err(Error::DType { op: "alloc", dtype: dtype.to_string(), backend: self.name() });
        }
        // A whole number of 4-byte words, so that fill can write BF16 values in pairs.
        let bytes = len.checked_mul(dtype.size_in_bytes()).ok_or_else(|| err(format!("alloc of {len} elements overflows")))?.next_multiple_of(4);
        let (ptr, class) = self.dev.pool.take(bytes)?;
        let s = CudaStorage { ptr, len, dtype, class, pool: self.dev.pool.clone() };
        if self.poison && len > 0 {
            elementwise::fill(self, &s, f32::NAN)?;
        }
        Ok(s)
    }

    /// To BF16 storage, each value rounded to the nearest bf16 (ties to even, the kernels' rule).
    fn upload_f32(&self, data: &[f32], dtype: DType) -> Result<CudaStorage> {
        let s = self.alloc(data.len(), dtype)?;
        if dtype == DType::BF16 {
            let halves: Vec<u16> = data.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
            self.dev.upload_bytes(s.ptr, bytemuck::cast_slice(&halves))?;
        } else {
            self.dev.upload_bytes(s.ptr, bytemuck::cast_slice(data))?;
        }
        Ok(s)
    }

    fn download_f32(&self, s: &CudaStorage) -> Result<Vec<f32>> {
        if s.dtype == DType::BF16 {
            let mut halves = vec![0u16; s.len];
            self.dev.download_bytes(s.ptr, bytemuck::cast_slice_mut(&mut halves))?;
            return Ok(halves.into_iter().map(|h| half::bf16::from_bits(h).to_f32()).collect());
        }
        let mut v = vec![0f32; s.len];
        self.dev.download_bytes(s.ptr, bytemuck::cast_slice_mut(&mut v))?;
        Ok(v)
    }

    fn fill(&self, s: &CudaStorage, value: f32) -> Result<()> {
        elementwise::fill(self, s, value)
    }

    fn copy(&self, src: &CudaStorage, dst: &CudaStorage) -> Result<()> {
        if src.len != dst.len || src.dtype != dst.dtype {
            return Err(Error::Invalid {
                op: "copy",
                msg: format!("{} {} values into {} {}", src.len, src.dtype, dst.len, dst.dtype),
            });
        }
        self.dev.copy_d2d(dst.ptr, src.ptr, dst.bytes())
    }

    fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()
    }

    fn graph_begin(&self) -> Result<bool> {
        self.dev.begin_capture()?;
        Ok(true)
    }

    fn graph_end(&self, keep: bool) -> Result<GraphId> {
        let g = self.dev.end_capture(keep)?;
        let id = g.id();
        self.graphs.lock().unwrap_or_else(|e| e.into_inner()).insert(id, g);
        Ok(GraphId(id))
    }

    fn graph_replay(&self, g: GraphId) -> Result<()> {
        let graphs = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
        let graph = graphs.get(&g.0).ok_or_else(|| err(format!("no CUDA graph {}", g.0)))?;
        self.dev.replay(graph)
    }

    fn graph_launches(&self, g: GraphId) -> usize {
        self.graphs.lock().unwrap_or_else(|e| e.into_inner()).get(&g.0).map_or(0, |g| g.launches())
    }

    fn graph_release(&self, g: GraphId) {
        self.graphs.lock().unwrap_or_else(|e| e.into_inner()).remove(&g.0);
    }
}
