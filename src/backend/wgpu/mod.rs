//! The WebGPU backend on wgpu 30: WGSL kernels from `shaders/<family>.wgsl`, one Rust file per
//! family here, mirroring `backend/cpu/`. f32 only (other dtypes return `Error::DType`).
//!
//! - Buffers stay on the device. Allocation goes through a pool keyed by byte size; a dropped
//!   storage returns its buffer to the pool, so a steady-state training step creates none.
//! - A kernel call records a dispatch into one open compute pass and returns. Batches are
//!   submitted every 1024 dispatches, before an upload, and on download/synchronize; only a
//!   download maps memory (a pooled read-back buffer).
//! - Each dispatch gets its parameters (u32/f32 words) through one uniform buffer per batch,
//!   bound with a dynamic offset.
//! - Tile sizes come from the adapter's limits (`context::Tiles`) and reach the shaders as
//!   generated constants; pipelines are compiled on first use and a compile error names the op.
//! - wgpu's validation errors are collected and returned by the next submit, download or
//!   synchronize; nothing on a launch path panics.

mod attention;
mod context;
mod conv;
mod elementwise;
mod layout;
mod loss;
mod matmul;
mod norm;
mod optim;
mod pool;

use std::sync::Arc;

use context::{BufferPool, Context};

use super::*;
use crate::error::{Error, Result};
use crate::tensor::DType;

pub use context::Tiles;

/// A device buffer of `len` f32 values. It returns to the backend's pool when dropped.
pub struct WgpuStorage {
    buf: ::wgpu::Buffer,
    len: usize,
    pool: Arc<BufferPool>,
}

impl WgpuStorage {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn dtype(&self) -> DType {
        DType::F32
    }
    pub(crate) fn buf(&self) -> &::wgpu::Buffer {
        &self.buf
    }
}

impl Drop for WgpuStorage {
    fn drop(&mut self) {
        // Work already recorded keeps its own reference; the next user of this buffer is
        // recorded after it, and the queue runs in order.
        self.pool.give(self.buf.clone());
    }
}

#[derive(Clone)]
pub struct WgpuBackend {
    ctx: Arc<Context>,
    poison: bool,
}

impl WgpuBackend {
    /// Opens adapter `device_index` (in wgpu's enumeration order), or the best one: a discrete
    /// GPU first, a CPU implementation such as llvmpipe last.
    pub fn new(device_index: Option<usize>) -> Result<Self> {
        Ok(WgpuBackend { ctx: Arc::new(Context::new(device_index)?), poison: false })
    }
    /// Fills every new buffer with NaN, so a kernel that leaves part of its output unwritten
    /// fails the conformance suite (pooled buffers otherwise hold stale values).
    pub fn with_poison(mut self) -> Self {
        self.poison = true;
        self
    }
    /// The adapter's name, backend and type.
    pub fn adapter(&self) -> String {
        let i = &self.ctx.info;
        format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
    }
    pub fn tiles(&self) -> Tiles {
        self.ctx.tiles
    }
    /// Whether the adapter offered subgroup operations (requested when offered).
    pub fn has_subgroups(&self) -> bool {
        self.ctx.subgroups
    }
    /// Device buffers created so far (pool misses); constant across steady-state steps.
    pub fn buffers_created(&self) -> u64 {
        self.ctx.buffers_created.load(std::sync::atomic::Ordering::Relaxed)
    }
    /// (dispatches, submissions) since creation.
    pub fn counters(&self) -> (u64, u64) {
        self.ctx.counters()
    }
    pub fn pooled_bytes(&self) -> u64 {
        self.ctx.pool.pooled_bytes()
    }
    /// Releases pooled buffers (e.g. between training and a large evaluation).
    pub fn release_pooled(&self) {
        self.ctx.release_pool()
    }
    /// Submits recorded work without waiting.
    pub fn flush(&self) -> Result<()> {
        self.ctx.flush()
    }

    fn storage(&self, len: usize) -> Result<WgpuStorage> {
        let buf = self.ctx.alloc_buffer(len as u64 * 4)?;
        Ok(WgpuStorage { buf, len, pool: self.ctx.pool.clone() })
    }
}

fn f32_only(op: &'static str, dtype: DType) -> Result<()> {
    if dtype != DType::F32 {
        return Err(Error::DType { op, dtype: dtype.to_string(), backend: "wgpu".into() });
    }
    Ok(())
}

impl Backend for WgpuBackend {
    type Storage = WgpuStorage;

    fn name(&self) -> String {
        let t = &self.ctx.tiles;
        format!("wgpu: {}, gemm tile {}x{} ({}x{} threads, bk {})", self.adapter(), t.mm_bm(), t.mm_bn(), t.mm_tx, t.mm_ty, t.mm_bk)
    }
    fn supports(&self, dtype: DType) -> bool {
        dtype == DType::F32
    }

    fn alloc(&self, len: usize, dtype: DType) -> Result<WgpuStorage> {
        f32_only("alloc", dtype)?;
        let s = self.storage(len)?;
        if self.poison {
            elementwise::fill(&self.ctx, &s, f32::NAN)?;
        }
        Ok(s)
    }
    fn upload_f32(&self, data: &[f32], dtype: DType) -> Result<WgpuStorage> {
        f32_only("upload", dtype)?;
        let s = self.storage(data.len())?;
        self.ctx.upload(s.buf(), bytemuck::cast_slice(data))?;
        Ok(s)
    }
    fn download_f32(&self, s: &WgpuStorage) -> Result<Vec<f32>> {
        let bytes = self.ctx.download(s.buf(), s.len as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec::<u8, f32>(&bytes))
    }
    fn fill(&self, s: &WgpuStorage, value: f32) -> Result<()> {
        elementwise::fill(&self.ctx, s, value)
    }
    fn copy(&self, src: &WgpuStorage, dst: &WgpuStorage) -> Result<()> {
        elementwise::copy(&self.ctx, src, dst)
    }
    fn synchronize(&self) -> Result<()> {
        self.ctx.synchronize()
    }

    fn matmul(&self, a: &WgpuStorage, b: &WgpuStorage, c: &WgpuStorage, d: &MatmulDims) -> Result<()> {
        matmul::matmul(&self.ctx, a, b, c, d)
    }

    fn conv2d_fwd(&self, x: &WgpuStorage, w: &WgpuStorage, y: &WgpuStorage, d: &Conv2dDims) -> Result<()> {
        conv::fwd(&self.ctx, x, w, y, d)
    }
    fn conv2d_bwd_data(&self, dy: &WgpuStorage, w: &WgpuStorage, dx: &WgpuStorage, d: &Conv2dDims) -> Result<()> {
        conv::bwd_data(&self.ctx, dy, w, dx, d)
    }
    fn conv2d_bwd_weight(&self, x: &WgpuStorage, dy: &WgpuStorage, dw: &WgpuStorage, d: &Conv2dDims) -> Result<()> {
        conv::bwd_weight(self, &self.ctx, x, dy, dw, d)
    }

    fn batchnorm_fwd_train(&self, x: &WgpuStorage, bn: BnTrain<'_, WgpuStorage>, d: &NormDims) -> Result<()> {
        norm::batchnorm_fwd_train(self, x, bn, d)
    }
    fn batchnorm_fwd_eval(
        &self,
        x: &WgpuStorage,
        gamma: Option<&WgpuStorage>,
        beta: Option<&WgpuStorage>,
        running_mean: &WgpuStorage,
        running_var: &WgpuStorage,
        tail: BnTail<'_, WgpuStorage>,
        y: &WgpuStorage,
        d: &NormDims,
    ) -> Result<()> {
        norm::batchnorm_fwd_eval(&self.ctx, x, gamma, beta, running_mean, running_var, tail, y, d)
    }
    fn batchnorm_bwd(
        &self,
        x: &WgpuStorage,
        dy: &WgpuStorage,
        relu_out: Option<&WgpuStorage>,
        gamma: Option<&WgpuStorage>,
        save_mean: &WgpuStorage,
        save_invstd: &WgpuStorage,
        dx: &WgpuStorage,
        dresidual: Option<&WgpuStorage>,
        dgamma: Option<&WgpuStorage>,
        dbeta: Option<&WgpuStorage>,
        d: &NormDims,
    ) -> Result<()> {
        norm::batchnorm_bwd(self, x, dy, relu_out, gamma, save_mean, save_invstd, dx, dresidual, dgamma, dbeta, d)
    }
    fn l2_normalize_fwd(&self, x: &WgpuStorage, y: &WgpuStorage, norm: &WgpuStorage, d: &NormDims) -> Result<()> {
        norm::l2_normalize_fwd(&self.ctx, x, y, norm, d)
    }
    fn l2_normalize_bwd(&self, x: &WgpuStorage, dy: &WgpuStorage, norm: &WgpuStorage, dx: &WgpuStorage, d: &NormDims) -> Result<()> {
        norm::l2_normalize_bwd(&self.ctx, x, dy, norm, dx, d)
    }
    fn layernorm_fwd(
        &self,
        x: &WgpuStorage,
        gamma: &WgpuStorage,
        beta: &WgpuStorage,
        y: &WgpuStorage,
        save_mean: &WgpuStorage,
        save_rstd: &WgpuStorage,
        d: &NormDims,
    ) -> Result<()> {
        norm::layernorm_fwd(&self.ctx, x, gamma, beta, y, save_mean, save_rstd, d)
    }
    fn layernorm_bwd(
        &self,
        x: &WgpuStorage,
        dy: &WgpuStorage,
        gamma: &WgpuStorage,
        save_mean: &WgpuStorage,
        save_rstd: &WgpuStorage,
        dx: &WgpuStorage,
        dgamma: &WgpuStorage,
        dbeta: &WgpuStorage,
        d: &NormDims,
    ) -> Result<()> {
        norm::layernorm_bwd(self, x, dy, gamma, save_mean, save_rstd, dx, dgamma, dbeta, d)
    }
    fn logsumexp_fwd(&self, x: &WgpuStorage, lse: &WgpuStorage, d: &NormDims) -> Result<()> {
        norm::logsumexp_fwd(&self.ctx, x, lse, d)
    }
    fn logsumexp_bwd(&self, x: &WgpuStorage, lse: &WgpuStorage, dlse: &WgpuStorage, dx: &WgpuStorage, d: &NormDims) -> Result<()> {
        norm::logsumexp_bwd(&self.ctx, x, lse, dlse, dx, d)
    }
    fn softmax_fwd(&self, x: &WgpuStorage, y: &WgpuStorage, d: &NormDims) -> Result<()> {
        norm::softmax_fwd(&self.ctx, x, y, d)
    }
    fn softmax_bwd(&self, y: &WgpuStorage, dy: &WgpuStorage, dx: &WgpuStorage, d: &NormDims) -> Result<()> {
        norm::softmax_bwd(&self.ctx, y, dy, dx, d)
    }

    fn attention_fwd(
        &self,
        q: &WgpuStorage,
        k: &WgpuStorage,
        v: &WgpuStorage,
        o: &WgpuStorage,
        lse: &WgpuStorage,
        d: &AttnDims,
    ) -> Result<()> {
        attention::fwd(&self.ctx, q, k, v, o, lse, d)
    }
    fn attention_bwd(
        &self,
        q: &WgpuStorage,
        k: &WgpuStorage,
        v: &WgpuStorage,
        o: &WgpuStorage,
        lse: &WgpuStorage,
        dout: &WgpuStorage,
        dq: &WgpuStorage,
        dk: &WgpuStorage,
        dv: &WgpuStorage,
        d: &AttnDims,
    ) -> Result<()> {
        attention::bwd(self, q, k, v, o, lse, dout, dq, dk, dv, d)
    }

    fn unary_fwd(&self, op: Unary, x: &WgpuStorage, y: &WgpuStorage, n: usize) -> Result<()> {
        elementwise::unary_fwd(&self.ctx, op, x, y, n)
    }
    fn unary_bwd(&self, op: Unary, x: &WgpuStorage, dy: &WgpuStorage, dx: &WgpuStorage, n: usize) -> Result<()> {
        elementwise::unary_bwd(&self.ctx, op, x, dy, dx, n)
    }
    fn binary(&self, op: Binary, a: &WgpuStorage, b: &WgpuStorage, out: &WgpuStorage, n: usize, b_len: usize) -> Result<()> {
        elementwise::binary(&self.ctx, op, a, b, out, n, b_len)
    }
    fn scale(&self, x: &WgpuStorage, y: &WgpuStorage, alpha: f32, n: usize) -> Result<()> {
        elementwise::scale(&self.ctx, x, y, alpha, n)
    }
    fn channel_scale(&self, x: &WgpuStorage, s: &WgpuStorage, y: &WgpuStorage, d: &AxisDims) -> Result<()> {
        elementwise::channel_scale(&self.ctx, x, s, y, d)
    }
    fn sum_axis(&self, x: &WgpuStorage, y: &WgpuStorage, d: &AxisDims) -> Result<()> {
        elementwise::sum_axis(self, x.buf(), y.buf(), d)
    }

    fn maxpool2d_fwd(&self, x: &WgpuStorage, y: &WgpuStorage, d: &PoolDims) -> Result<()> {
        pool::maxpool2d_fwd(&self.ctx, x, y, d)
    }
    fn maxpool2d_bwd(&self, x: &WgpuStorage, dy: &WgpuStorage, dx: &WgpuStorage, d: &PoolDims) -> Result<()> {
        pool::maxpool2d_bwd(&self.ctx, x, dy, dx, d)
    }
    fn avgpool_global_fwd(&self, x: &WgpuStorage, y: &WgpuStorage, d: &AxisDims) -> Result<()> {
        pool::avgpool_global_fwd(&self.ctx, x, y, d)
    }
    fn avgpool_global_bwd(&self, dy: &WgpuStorage, dx: &WgpuStorage, d: &AxisDims) -> Result<()> {
        pool::avgpool_global_bwd(&self.ctx, dy, dx, d)
    }

    fn cross_entropy_fwd(&self, logits: &WgpuStorage, labels: &WgpuStorage, out: &WgpuStorage, rows: usize, classes: usize) -> Result<()> {
        loss::cross_entropy_fwd(&self.ctx, logits, labels, out, rows, classes)
    }
    fn cross_entropy_bwd(
        &self,
        logits: &WgpuStorage,
        labels: &WgpuStorage,
        dloss: &WgpuStorage,
        dlogits: &WgpuStorage,
        rows: usize,
        classes: usize,
    ) -> Result<()> {
        loss::cross_entropy_bwd(&self.ctx, logits, labels, dloss, dlogits, rows, classes)
    }
    fn soft_cross_entropy_fwd(&self, logits: &WgpuStorage, q: &WgpuStorage, out: &WgpuStorage, rows: usize, classes: usize) -> Result<()> {
        loss::soft_cross_entropy_fwd(self, logits, q, out, rows, classes)
    }
    fn soft_cross_entropy_bwd(
        &self,
        logits: &WgpuStorage,
        q: &WgpuStorage,
        dloss: &WgpuStorage,
        dlogits: &WgpuStorage,
        rows: usize,
        classes: usize,
    ) -> Result<()> {
        loss::soft_cross_entropy_bwd(&self.ctx, logits, q, dloss, dlogits, rows, classes)
    }
    fn nt_xent_fwd(&self, sim: &WgpuStorage, groups: &WgpuStorage, out: &WgpuStorage, rows: usize, temperature: f32) -> Result<()> {
        loss::nt_xent_fwd(self, sim, groups, out, rows, temperature)
    }
    fn nt_xent_bwd(
        &self,
        sim: &WgpuStorage,
        groups: &WgpuStorage,
        dloss: &WgpuStorage,
        dsim: &WgpuStorage,
        rows: usize,
        temperature: f32,
    ) -> Result<()> {
        loss::nt_xent_bwd(&self.ctx, sim, groups, dloss, dsim, rows, temperature)
    }
    fn identity_penalty_fwd(&self, c: &WgpuStorage, out: &WgpuStorage, d: usize, diag_weight: f32, off_weight: f32) -> Result<()> {
        loss::identity_penalty_fwd(self, c, out, d, diag_weight, off_weight)
    }
    fn identity_penalty_bwd(
        &self,
        c: &WgpuStorage,
        dloss: &WgpuStorage,
        dc: &WgpuStorage,
        d: usize,
        diag_weight: f32,
        off_weight: f32,
    ) -> Result<()> {
        loss::identity_penalty_bwd(&self.ctx, c, dloss, dc, d, diag_weight, off_weight)
    }
    fn cosine_loss_fwd(&self, p: &WgpuStorage, z: &WgpuStorage, out: &WgpuStorage, rows: usize, dim: usize, eps: f32) -> Result<()> {
        loss::cosine_loss_fwd(self, p, z, out, rows, dim, eps)
    }
    fn cosine_loss_bwd(
        &self,
        p: &WgpuStorage,
        z: &WgpuStorage,
        dloss: &WgpuStorage,
        dp: &WgpuStorage,
        dz: Option<&WgpuStorage>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        loss::cosine_loss_bwd(&self.ctx, p, z, dloss, dp, dz, rows, dim, eps)
    }

    fn sgd_step(&self, tensors: &[SgdTensor<'_, WgpuStorage>], momentum: f32, on_device: Option<SgdOnDevice<'_, WgpuStorage>>) -> Result<()> {
        let Some(tensors) = crate::backend::sgd_on_host(self, tensors, on_device)? else { return Ok(()) };
        optim::sgd_step(&self.ctx, &tensors, momentum)
    }
    fn ema_update(&self, tensors: &[EmaTensor<'_, WgpuStorage>], tau: f32) -> Result<()> {
        optim::ema_update(&self.ctx, tensors, tau)
    }

    fn permute(&self, x: &WgpuStorage, y: &WgpuStorage, shape: &[usize], perm: &[usize]) -> Result<()> {
        layout::permute(&self.ctx, x, y, shape, perm)
    }
    fn slice(&self, x: &WgpuStorage, y: &WgpuStorage, d: &SliceDims) -> Result<()> {
        layout::slice(&self.ctx, x, y, d)
    }
    fn slice_assign(&self, src: &WgpuStorage, dst: &WgpuStorage, d: &SliceDims) -> Result<()> {
        layout::slice_assign(&self.ctx, src, dst, d)
    }
}
