//! The CUDA backend on cudarc (driver API + NVRTC, both loaded at run time, so the binary builds
//! and runs on machines without CUDA: `CudaBackend::new` then returns one clear error).
//!
//! Kernels live in `kernels/<family>.cu`, one file per op family with symbols named
//! `<op>_<fwd|bwd>_f32`; `src/backend/cuda/<family>.rs` holds the launch code of the family.
//! They are compiled by NVRTC for the device's own architecture (sm_90a on Hopper) and cached on
//! disk (see `nvrtc.rs`). Everything is enqueued on one stream; only downloads and
//! `synchronize` wait. Memory comes from a caching pool (`alloc.rs`).
//!
//! Precision: the default matmul and convolutions are exact FP32 (SIMT), matching the CPU
//! reference to ~1e-6; `with_tf32(true)` switches them to TF32 tensor cores (~1e-3 relative, like
//! PyTorch's allow_tf32). Reductions have a fixed order (no atomics), so results are
//! deterministic on a given GPU.
//!
//! Differences from the CPU backend: f32 only; a cross-entropy label that is not a class index
//! gives a NaN loss (a kernel cannot return an error); attention head dims up to 128.

mod alloc;
mod attention;
mod conv;
mod device;
mod elementwise;
mod layout;
mod loss;
mod matmul;
mod norm;
pub mod nvrtc;
mod optim;
mod pool;
pub mod report;

use std::sync::Arc;

use alloc::Pool;
pub use device::LaunchRecord;
pub use matmul::gemm_core_kernels;
use device::{Arg, Device};
use nvrtc::err;

use super::*;
use crate::error::{Error, Result};
use crate::tensor::DType;

/// A device buffer of f32 values, returned to the pool when dropped.
pub struct CudaStorage {
    ptr: u64,
    len: usize,
    class: usize,
    pool: Arc<Pool>,
}

impl CudaStorage {
    /// The buffer's device address (tests and diagnostics: which block the pool handed out).
    pub fn device_ptr(&self) -> u64 {
        self.ptr
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
    pub fn dtype(&self) -> DType {
        DType::F32
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
    graphs: Arc<std::sync::Mutex<std::collections::HashMap<u64, device::Graph>>>,
}

impl CudaBackend {
    /// Opens GPU `device`, compiling (or loading from the disk cache) every kernel family.
    /// Without a driver, a GPU or NVRTC, returns one error line naming what is missing.
    pub fn new(device: usize) -> Result<Self> {
        Ok(CudaBackend { dev: Arc::new(Device::open(device)?), tf32: false, precision: Precision::Fp32, poison: false, graphs: Default::default() })
    }

    /// A backend with no GPU behind it, for tests: kernels are compiled for their signatures
    /// only, launches are checked and recorded (`take_launches`) but not run, downloads give
    /// zeros. Needs libnvrtc. `sm_count` sizes the grids as a GPU with that many SMs would.
    pub fn dry_run(sm_count: u32) -> Result<Self> {
        Ok(CudaBackend { dev: Arc::new(Device::dry_run(sm_count)?), tf32: false, precision: Precision::Fp32, poison: false, graphs: Default::default() })
    }

    /// A dry run imitating a GPU with `bytes` of memory: allocations beyond it fail with
    /// `Error::OutOfMemory`, as they would there (the out-of-memory tests).
    pub fn dry_run_with_memory(sm_count: u32, bytes: usize) -> Result<Self> {
        Ok(CudaBackend { dev: Arc::new(Device::dry_run_with_memory(sm_count, bytes)?), tf32: false, precision: Precision::Fp32, poison: false, graphs: Default::default() })
    }

    /// For tests: the kernels compiled for the host (`lib`, built from kernels/*.cu with
    /// tests/emu/cuda_emu.h) run on host threads and host memory, with the real launch code.
    #[doc(hidden)]
    pub fn emulated(lib: &std::path::Path, sm_count: u32) -> Result<Self> {
        Ok(CudaBackend { dev: Arc::new(Device::emulated(lib, sm_count)?), tf32: false, precision: Precision::Fp32, poison: false, graphs: Default::default() })
    }

    /// Dry run: graph replays so far.
    pub fn graph_replays(&self) -> u64 {
        self.dev.graph_replays.load(std::sync::atomic::Ordering::Relaxed)
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

    // ---- helpers for the family files ----------------------------------------------------

    pub(crate) fn launch(&self, kernel: &str, grid: (u32, u32, u32), block: (u32, u32, u32), args: &[Arg<'_>]) -> Result<()> {
        self.dev.launch(kernel, grid, block, 0, args)
    }

    /// A launch whose blocks each get `shared` bytes of dynamic shared memory (the GEMM core).
    pub(crate) fn launch_shared(&self, kernel: &str, grid: (u32, u32, u32), block: (u32, u32, u32), shared: u32, args: &[Arg<'_>]) -> Result<()> {
        self.dev.launch(kernel, grid, block, shared, args)
    }

    /// A scratch buffer of `len` f32 values (contents unspecified), back to the pool when dropped.
    /// Dropping it right after the launches that use it is safe: see alloc.rs.
    pub(crate) fn scratch(&self, len: usize) -> Result<CudaStorage> {
        self.alloc(len, DType::F32)
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

impl Backend for CudaBackend {
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

    fn alloc(&self, len: usize, dtype: DType) -> Result<CudaStorage> {
        if dtype != DType::F32 {
            return Err(Error::DType { op: "alloc", dtype: dtype.to_string(), backend: self.name() });
        }
        let bytes = len.checked_mul(4).ok_or_else(|| err(format!("alloc of {len} elements overflows")))?;
        let (ptr, class) = self.dev.pool.take(bytes)?;
        let s = CudaStorage { ptr, len, class, pool: self.dev.pool.clone() };
        if self.poison && len > 0 {
            elementwise::fill(self, &s, f32::NAN)?;
        }
        Ok(s)
    }
    fn upload_f32(&self, data: &[f32], dtype: DType) -> Result<CudaStorage> {
        let s = self.alloc(data.len(), dtype)?;
        self.dev.upload_bytes(s.ptr, bytemuck::cast_slice(data))?;
        Ok(s)
    }
    fn download_f32(&self, s: &CudaStorage) -> Result<Vec<f32>> {
        let mut v = vec![0f32; s.len];
        self.dev.download_bytes(s.ptr, bytemuck::cast_slice_mut(&mut v))?;
        Ok(v)
    }
    fn fill(&self, s: &CudaStorage, value: f32) -> Result<()> {
        elementwise::fill(self, s, value)
    }
    fn copy(&self, src: &CudaStorage, dst: &CudaStorage) -> Result<()> {
        if src.len != dst.len {
            return Err(Error::Invalid { op: "copy", msg: format!("lengths differ: {} vs {}", src.len, dst.len) });
        }
        self.dev.copy_d2d(dst.ptr, src.ptr, 4 * dst.len)
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

    fn matmul(&self, a: &CudaStorage, b: &CudaStorage, c: &CudaStorage, d: &MatmulDims) -> Result<()> {
        matmul::matmul(self, a, b, c, d)
    }

    fn conv2d_fwd(&self, x: &CudaStorage, w: &CudaStorage, y: &CudaStorage, d: &Conv2dDims) -> Result<()> {
        conv::conv2d(self, conv::Pass::Fwd, x, w, y, d)
    }
    fn conv2d_bwd_data(&self, dy: &CudaStorage, w: &CudaStorage, dx: &CudaStorage, d: &Conv2dDims) -> Result<()> {
        conv::conv2d(self, conv::Pass::BwdData, dy, w, dx, d)
    }
    fn conv2d_bwd_weight(&self, x: &CudaStorage, dy: &CudaStorage, dw: &CudaStorage, d: &Conv2dDims) -> Result<()> {
        conv::conv2d(self, conv::Pass::BwdWeight, x, dy, dw, d)
    }

    fn batchnorm_fwd_train(&self, x: &CudaStorage, bn: BnTrain<'_, CudaStorage>, d: &NormDims) -> Result<()> {
        norm::batchnorm_fwd_train(self, x, bn, d)
    }
    fn conv2d_batchnorm_fwd_train(
        &self,
        x: &CudaStorage,
        w: &CudaStorage,
        conv_out: &CudaStorage,
        cd: &Conv2dDims,
        bn: BnTrain<'_, CudaStorage>,
        nd: &NormDims,
    ) -> Result<()> {
        conv::conv2d_batchnorm(self, x, w, conv_out, cd, bn, nd)
    }
    fn batchnorm_fwd_eval(
        &self,
        x: &CudaStorage,
        gamma: Option<&CudaStorage>,
        beta: Option<&CudaStorage>,
        running_mean: &CudaStorage,
        running_var: &CudaStorage,
        tail: BnTail<'_, CudaStorage>,
        y: &CudaStorage,
        d: &NormDims,
    ) -> Result<()> {
        norm::batchnorm_fwd_eval(self, x, gamma, beta, running_mean, running_var, tail, y, d)
    }
    fn batchnorm_bwd(
        &self,
        x: &CudaStorage,
        dy: &CudaStorage,
        relu_out: Option<&CudaStorage>,
        gamma: Option<&CudaStorage>,
        save_mean: &CudaStorage,
        save_invstd: &CudaStorage,
        dx: &CudaStorage,
        dresidual: Option<&CudaStorage>,
        dgamma: Option<&CudaStorage>,
        dbeta: Option<&CudaStorage>,
        d: &NormDims,
    ) -> Result<()> {
        norm::batchnorm_bwd(self, x, dy, relu_out, gamma, save_mean, save_invstd, dx, dresidual, dgamma, dbeta, d)
    }
    fn l2_normalize_fwd(&self, x: &CudaStorage, y: &CudaStorage, norm: &CudaStorage, d: &NormDims) -> Result<()> {
        norm::l2_normalize_fwd(self, x, y, norm, d)
    }
    fn l2_normalize_bwd(&self, x: &CudaStorage, dy: &CudaStorage, norm: &CudaStorage, dx: &CudaStorage, d: &NormDims) -> Result<()> {
        norm::l2_normalize_bwd(self, x, dy, norm, dx, d)
    }
    fn layernorm_fwd(
        &self,
        x: &CudaStorage,
        gamma: &CudaStorage,
        beta: &CudaStorage,
        y: &CudaStorage,
        save_mean: &CudaStorage,
        save_rstd: &CudaStorage,
        d: &NormDims,
    ) -> Result<()> {
        norm::layernorm_fwd(self, x, gamma, beta, y, save_mean, save_rstd, d)
    }
    fn layernorm_bwd(
        &self,
        x: &CudaStorage,
        dy: &CudaStorage,
        gamma: &CudaStorage,
        save_mean: &CudaStorage,
        save_rstd: &CudaStorage,
        dx: &CudaStorage,
        dgamma: &CudaStorage,
        dbeta: &CudaStorage,
        d: &NormDims,
    ) -> Result<()> {
        norm::layernorm_bwd(self, x, dy, gamma, save_mean, save_rstd, dx, dgamma, dbeta, d)
    }
    fn softmax_fwd(&self, x: &CudaStorage, y: &CudaStorage, d: &NormDims) -> Result<()> {
        norm::softmax(self, "softmax_fwd_f32", x, None, y, d)
    }
    fn softmax_bwd(&self, y: &CudaStorage, dy: &CudaStorage, dx: &CudaStorage, d: &NormDims) -> Result<()> {
        norm::softmax(self, "softmax_bwd_f32", y, Some(dy), dx, d)
    }
    fn logsumexp_fwd(&self, x: &CudaStorage, lse: &CudaStorage, d: &NormDims) -> Result<()> {
        norm::logsumexp_fwd(self, x, lse, d)
    }
    fn logsumexp_bwd(&self, x: &CudaStorage, lse: &CudaStorage, dlse: &CudaStorage, dx: &CudaStorage, d: &NormDims) -> Result<()> {
        norm::logsumexp_bwd(self, x, lse, dlse, dx, d)
    }

    fn attention_fwd(
        &self,
        q: &CudaStorage,
        k: &CudaStorage,
        v: &CudaStorage,
        o: &CudaStorage,
        lse: &CudaStorage,
        d: &AttnDims,
    ) -> Result<()> {
        attention::attention_fwd(self, q, k, v, o, lse, d)
    }
    fn attention_bwd(
        &self,
        q: &CudaStorage,
        k: &CudaStorage,
        v: &CudaStorage,
        o: &CudaStorage,
        lse: &CudaStorage,
        dout: &CudaStorage,
        dq: &CudaStorage,
        dk: &CudaStorage,
        dv: &CudaStorage,
        d: &AttnDims,
    ) -> Result<()> {
        attention::attention_bwd(self, q, k, v, o, lse, dout, dq, dk, dv, d)
    }

    fn unary_fwd(&self, op: Unary, x: &CudaStorage, y: &CudaStorage, n: usize) -> Result<()> {
        elementwise::unary_fwd(self, op, x, y, n)
    }
    fn unary_bwd(&self, op: Unary, x: &CudaStorage, dy: &CudaStorage, dx: &CudaStorage, n: usize) -> Result<()> {
        elementwise::unary_bwd(self, op, x, dy, dx, n)
    }
    fn binary(&self, op: Binary, a: &CudaStorage, b: &CudaStorage, out: &CudaStorage, n: usize, b_len: usize) -> Result<()> {
        elementwise::binary(self, op, a, b, out, n, b_len)
    }
    fn scale(&self, x: &CudaStorage, y: &CudaStorage, alpha: f32, n: usize) -> Result<()> {
        elementwise::scale(self, x, y, alpha, n)
    }
    fn channel_scale(&self, x: &CudaStorage, s: &CudaStorage, y: &CudaStorage, d: &AxisDims) -> Result<()> {
        elementwise::channel_scale(self, x, s, y, d)
    }
    fn sum_axis(&self, x: &CudaStorage, y: &CudaStorage, d: &AxisDims) -> Result<()> {
        elementwise::sum_axis(self, x, y, d)
    }

    fn maxpool2d_fwd(&self, x: &CudaStorage, y: &CudaStorage, d: &PoolDims) -> Result<()> {
        pool::maxpool2d_fwd(self, x, y, d)
    }
    fn maxpool2d_bwd(&self, x: &CudaStorage, dy: &CudaStorage, dx: &CudaStorage, d: &PoolDims) -> Result<()> {
        pool::maxpool2d_bwd(self, x, dy, dx, d)
    }
    fn avgpool_global_fwd(&self, x: &CudaStorage, y: &CudaStorage, d: &AxisDims) -> Result<()> {
        pool::avgpool_global(self, "avgpool_global_fwd_f32", x, y, d)
    }
    fn avgpool_global_bwd(&self, dy: &CudaStorage, dx: &CudaStorage, d: &AxisDims) -> Result<()> {
        pool::avgpool_global(self, "avgpool_global_bwd_f32", dy, dx, d)
    }

    fn cross_entropy_fwd(&self, logits: &CudaStorage, labels: &CudaStorage, loss: &CudaStorage, rows: usize, classes: usize) -> Result<()> {
        loss::cross_entropy_fwd(self, logits, labels, loss, rows, classes)
    }
    fn cross_entropy_bwd(
        &self,
        logits: &CudaStorage,
        labels: &CudaStorage,
        dloss: &CudaStorage,
        dlogits: &CudaStorage,
        rows: usize,
        classes: usize,
    ) -> Result<()> {
        loss::cross_entropy_bwd(self, logits, labels, dloss, dlogits, rows, classes)
    }
    fn soft_cross_entropy_fwd(&self, logits: &CudaStorage, q: &CudaStorage, loss: &CudaStorage, rows: usize, classes: usize) -> Result<()> {
        loss::soft_cross_entropy_fwd(self, logits, q, loss, rows, classes)
    }
    fn soft_cross_entropy_bwd(
        &self,
        logits: &CudaStorage,
        q: &CudaStorage,
        dloss: &CudaStorage,
        dlogits: &CudaStorage,
        rows: usize,
        classes: usize,
    ) -> Result<()> {
        loss::soft_cross_entropy_bwd(self, logits, q, dloss, dlogits, rows, classes)
    }
    fn nt_xent_fwd(&self, sim: &CudaStorage, groups: &CudaStorage, loss: &CudaStorage, rows: usize, temperature: f32) -> Result<()> {
        loss::nt_xent_fwd(self, sim, groups, loss, rows, temperature)
    }
    fn nt_xent_bwd(
        &self,
        sim: &CudaStorage,
        groups: &CudaStorage,
        dloss: &CudaStorage,
        dsim: &CudaStorage,
        rows: usize,
        temperature: f32,
    ) -> Result<()> {
        loss::nt_xent_bwd(self, sim, groups, dloss, dsim, rows, temperature)
    }
    fn identity_penalty_fwd(&self, c: &CudaStorage, loss: &CudaStorage, d: usize, diag_weight: f32, off_weight: f32) -> Result<()> {
        loss::identity_penalty_fwd(self, c, loss, d, diag_weight, off_weight)
    }
    fn identity_penalty_bwd(
        &self,
        c: &CudaStorage,
        dloss: &CudaStorage,
        dc: &CudaStorage,
        d: usize,
        diag_weight: f32,
        off_weight: f32,
    ) -> Result<()> {
        loss::identity_penalty_bwd(self, c, dloss, dc, d, diag_weight, off_weight)
    }
    fn cosine_loss_fwd(&self, p: &CudaStorage, z: &CudaStorage, out: &CudaStorage, rows: usize, dim: usize, eps: f32) -> Result<()> {
        loss::cosine_loss_fwd(self, p, z, out, rows, dim, eps)
    }
    fn cosine_loss_bwd(
        &self,
        p: &CudaStorage,
        z: &CudaStorage,
        dloss: &CudaStorage,
        dp: &CudaStorage,
        dz: Option<&CudaStorage>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        loss::cosine_loss_bwd(self, p, z, dloss, dp, dz, rows, dim, eps)
    }

    fn sgd_step(&self, tensors: &[SgdTensor<'_, CudaStorage>], momentum: f32, on_device: Option<SgdOnDevice<'_, CudaStorage>>) -> Result<()> {
        optim::sgd_step(self, tensors, momentum, on_device)
    }
    fn ema_update(&self, tensors: &[EmaTensor<'_, CudaStorage>], tau: f32) -> Result<()> {
        optim::ema_update(self, tensors, tau)
    }

    fn permute(&self, x: &CudaStorage, y: &CudaStorage, shape: &[usize], perm: &[usize]) -> Result<()> {
        layout::permute(self, x, y, shape, perm)
    }
    fn slice(&self, x: &CudaStorage, y: &CudaStorage, d: &SliceDims) -> Result<()> {
        layout::slice(self, "slice_fwd_f32", x, y, d)
    }
    fn slice_assign(&self, src: &CudaStorage, dst: &CudaStorage, d: &SliceDims) -> Result<()> {
        layout::slice(self, "slice_assign_fwd_f32", src, dst, d)
    }
}
