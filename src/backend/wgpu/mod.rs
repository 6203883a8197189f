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
mod buffer_pool;
mod context;
mod conv;
mod elementwise;
mod layout;
mod loss;
mod matmul;
mod norm;
mod optim;
mod pool;
mod tiles;

use std::sync::Arc;

use buffer_pool::BufferPool;
use context::Context;

use super::*;
use crate::dtype::DType;
use crate::error::{Error, Result};

pub use tiles::Tiles;

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
    /// Whether the adapter is a CPU implementation (mesa's llvmpipe, SwiftShader, WARP): correct,
    /// but slower than the cpu backend.
    pub fn is_software(&self) -> bool {
        self.ctx.info.device_type == ::wgpu::DeviceType::Cpu
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

impl CoreOps for WgpuBackend {
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
}
