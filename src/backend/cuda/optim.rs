//! Launch for kernels/optim.cu: the fused multi-tensor SGD step, AdamW step and EMA update, up
//! to MAX_TENSORS tensors per launch (one launch for SimSiam's ResNet-18 with its heads, about
//! 72 tensors; AdamW: ADAMW_MAX_TENSORS), described by a struct passed by value (SGD: 3856
//! bytes, under the classic 4 KB kernel-parameter limit; AdamW: 3488; EMA: 2568).

use bytemuck::{Pod, Zeroable};

use super::{Arg, CudaBackend, CudaStorage};
use crate::backend::ops::*;
use crate::backend::{AdamWHyper, AdamWTensor, EmaTensor, SgdOnDevice, SgdTensor, adamw_factors};
use crate::error::Result;

/// SGD_MAX_TENSORS, SGD_THREADS and SGD_CHUNK of optim.cu.
const MAX_TENSORS: usize = 80;
pub(super) const THREADS: u32 = 256;
pub(super) const CHUNK: usize = THREADS as usize * 4;

/// Mirror of `struct SgdTensor` in kernels/optim.cu.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct KTensor {
    param: u64,
    grad: u64,
    buf: u64,
    len: i64,
    lr: f32,
    weight_decay: f32,
}

/// Mirror of `struct SgdBatch` in kernels/optim.cu.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct KBatch {
    t: [KTensor; MAX_TENSORS],
    block_end: [i64; MAX_TENSORS],
    count: i32,
    momentum: f32,
    /// This launch's first tensor among all of the step's (its row in SgdOnDevice::hyper).
    first: i32,
    _pad: i32,
}

/// Fills `block_end` for tensors of `lens` elements (tensor i owns blocks
/// [block_end[i - 1], block_end[i]) of CHUNK elements) and returns the grid size.
pub(super) fn block_ends<const N: usize>(lens: impl Iterator<Item = usize>, block_end: &mut [i64; N], op: &str) -> Result<u32> {
    let mut blocks = 0usize;
    for (end, len) in block_end.iter_mut().zip(lens) {
        blocks += len.div_ceil(CHUNK);
        *end = blocks as i64;
    }
    u32::try_from(blocks)
        .ok()
        .filter(|&g| g <= i32::MAX as u32)
        .ok_or_else(|| super::err(format!("{op}: {blocks} blocks is over the grid limit")))
}

/// With `on_device`, the kernel reads each tensor's learning rate and weight decay from its row
/// of the table (by the tensor's index in `tensors`) and skips the update on a non-finite gate.
pub(super) fn sgd_step(
    b: &CudaBackend, tensors: &[SgdTensor<'_, CudaStorage>], momentum: f32, on_device: Option<SgdOnDevice<'_, CudaStorage>>,
) -> Result<()> {
    if let Some(d) = &on_device
        && (d.hyper.len < 2 * tensors.len() || d.gate.len < d.gate_len)
    {
        return Err(super::err(format!("sgd_step: a {}-value table for {} tensors, or a short gate", d.hyper.len, tensors.len())));
    }
    let (hyper, gate, gate_len) = match &on_device {
        Some(d) => (super::ptr(d.hyper), super::ptr(d.gate), d.gate_len as i32),
        None => (Arg::Ptr(0), Arg::Ptr(0), 0),
    };
    // An empty tensor owns no block (batch_chunk in common.cuh passes over it), so every tensor
    // keeps its index: launch c's tensor i is row c * MAX_TENSORS + i of the table.
    for (c, group) in tensors.chunks(MAX_TENSORS).enumerate() {
        let mut batch = KBatch::zeroed();
        for (i, t) in group.iter().enumerate() {
            batch.t[i] = KTensor {
                param: t.param.ptr,
                grad: t.grad.ptr,
                buf: t.momentum_buf.ptr,
                len: t.len as i64,
                lr: t.lr,
                weight_decay: t.weight_decay,
            };
        }
        let grid = block_ends(group.iter().map(|t| t.len), &mut batch.block_end, "sgd_step")?;
        if grid == 0 {
            continue;
        }
        batch.count = group.len() as i32;
        batch.momentum = momentum;
        batch.first = (c * MAX_TENSORS) as i32;
        let args = [Arg::Bytes(bytemuck::bytes_of(&batch)), hyper, gate, Arg::I32(gate_len)];
        b.launch("sgd_step_fwd_f32", (grid, 1, 1), (THREADS, 1, 1), &args)?;
    }
    Ok(())
}

/// ADAMW_MAX_TENSORS of optim.cu.
const ADAMW_MAX_TENSORS: usize = 48;

/// Mirror of `struct AdamWTensor` in kernels/optim.cu.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct KAdamWTensor {
    param: u64,
    grad: u64,
    exp_avg: u64,
    exp_avg_sq: u64,
    len: i64,
    decay: f64,
    step_size: f64,
    bc2_sqrt: f64,
}

/// Mirror of `struct AdamWBatch` in kernels/optim.cu.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct KAdamWBatch {
    t: [KAdamWTensor; ADAMW_MAX_TENSORS],
    block_end: [i64; ADAMW_MAX_TENSORS],
    beta1: f64,
    beta2: f64,
    eps: f64,
    count: i32,
    _pad: i32,
}

pub(super) fn adamw_step(b: &CudaBackend, tensors: &[AdamWTensor<'_, CudaStorage>], hyper: AdamWHyper) -> Result<()> {
    let live: Vec<&AdamWTensor<'_, CudaStorage>> = tensors.iter().filter(|t| t.len > 0).collect();
    for group in live.chunks(ADAMW_MAX_TENSORS) {
        let mut batch = KAdamWBatch::zeroed();
        for (i, t) in group.iter().enumerate() {
            let (decay, step_size, bc2_sqrt) = adamw_factors(t, &hyper);
            batch.t[i] = KAdamWTensor {
                param: t.param.ptr,
                grad: t.grad.ptr,
                exp_avg: t.exp_avg.ptr,
                exp_avg_sq: t.exp_avg_sq.ptr,
                len: t.len as i64,
                decay,
                step_size,
                bc2_sqrt,
            };
        }
        let grid = block_ends(group.iter().map(|t| t.len), &mut batch.block_end, "adamw_step")?;
        batch.count = group.len() as i32;
        (batch.beta1, batch.beta2, batch.eps) = (hyper.beta1, hyper.beta2, hyper.eps);
        b.launch("adamw_step_fwd_f32", (grid, 1, 1), (THREADS, 1, 1), &[Arg::Bytes(bytemuck::bytes_of(&batch))])?;
    }
    Ok(())
}

/// Mirror of `struct EmaTensor` in kernels/optim.cu.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct KEmaTensor {
    target: u64,
    source: u64,
    len: i64,
}

/// Mirror of `struct EmaBatch` in kernels/optim.cu.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct KEmaBatch {
    t: [KEmaTensor; MAX_TENSORS],
    block_end: [i64; MAX_TENSORS],
    count: i32,
    tau: f32,
}

pub(super) fn ema_update(b: &CudaBackend, tensors: &[EmaTensor<'_, CudaStorage>], tau: f32) -> Result<()> {
    let live: Vec<&EmaTensor<'_, CudaStorage>> = tensors.iter().filter(|t| t.len > 0).collect();
    for group in live.chunks(MAX_TENSORS) {
        let mut batch = KEmaBatch::zeroed();
        for (i, t) in group.iter().enumerate() {
            batch.t[i] = KEmaTensor { target: t.target.ptr, source: t.source.ptr, len: t.len as i64 };
        }
        let grid = block_ends(group.iter().map(|t| t.len), &mut batch.block_end, "ema_update")?;
        batch.count = group.len() as i32;
        batch.tau = tau;
        b.launch("ema_update_fwd_f32", (grid, 1, 1), (THREADS, 1, 1), &[Arg::Bytes(bytemuck::bytes_of(&batch))])?;
    }
    Ok(())
}

impl OptimOps for CudaBackend {
    fn sgd_step(
        &self, tensors: &[SgdTensor<'_, CudaStorage>], momentum: f32, on_device: Option<SgdOnDevice<'_, CudaStorage>>,
    ) -> Result<()> {
        sgd_step(self, tensors, momentum, on_device)
    }

    fn adamw_step(&self, tensors: &[AdamWTensor<'_, CudaStorage>], hyper: AdamWHyper) -> Result<()> {
        adamw_step(self, tensors, hyper)
    }

    fn ema_update(&self, tensors: &[EmaTensor<'_, CudaStorage>], tau: f32) -> Result<()> {
        ema_update(self, tensors, tau)
    }
}
