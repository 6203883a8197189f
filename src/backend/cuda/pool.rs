//! Launches for kernels/pool.cu: max-pool and global average pool over NHWC.

use bytemuck::{Pod, Zeroable};

use super::{Arg, CudaBackend, CudaStorage, i32a, i32c, ptr};
use crate::backend::{AxisDims, PoolDims};
use crate::error::Result;

const OP: &str = "pool";
const THREADS: u32 = 256;

/// Mirror of `struct PoolDims` in kernels/pool.cu.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct KPoolDims {
    n: i32,
    h: i32,
    w: i32,
    c: i32,
    k: i32,
    stride: i32,
    pad: i32,
    oh: i32,
    ow: i32,
}

fn dims(d: &PoolDims) -> Result<KPoolDims> {
    // Flat pixel indices (iy * w + ix) are ints in the kernel too.
    i32c(OP, d.h * d.w)?;
    Ok(KPoolDims {
        n: i32c(OP, d.n)?,
        h: i32c(OP, d.h)?,
        w: i32c(OP, d.w)?,
        c: i32c(OP, d.c)?,
        k: i32c(OP, d.k)?,
        stride: i32c(OP, d.stride)?,
        pad: i32c(OP, d.pad)?,
        oh: i32c(OP, d.oh)?,
        ow: i32c(OP, d.ow)?,
    })
}

pub(super) fn maxpool2d_fwd(b: &CudaBackend, x: &CudaStorage, y: &CudaStorage, d: &PoolDims) -> Result<()> {
    let n = d.n * d.oh * d.ow * d.c;
    if n == 0 {
        return Ok(());
    }
    let kd = dims(d)?;
    b.launch("maxpool2d_fwd_f32", (b.blocks_for(n, THREADS), 1, 1), (THREADS, 1, 1), &[ptr(x), ptr(y), Arg::Bytes(bytemuck::bytes_of(&kd))])
}

pub(super) fn maxpool2d_bwd(b: &CudaBackend, x: &CudaStorage, dy: &CudaStorage, dx: &CudaStorage, d: &PoolDims) -> Result<()> {
    let n = d.n * d.h * d.w * d.c;
    if n == 0 {
        return Ok(());
    }
    let kd = dims(d)?;
    b.launch(
        "maxpool2d_bwd_f32",
        (b.blocks_for(n, THREADS), 1, 1),
        (THREADS, 1, 1),
        &[ptr(x), ptr(dy), ptr(dx), Arg::Bytes(bytemuck::bytes_of(&kd))],
    )
}

/// avgpool_global_fwd_f32 (x -> y, one thread per output) or avgpool_global_bwd_f32 (dy -> dx,
/// one thread per input element).
pub(super) fn avgpool_global(b: &CudaBackend, kernel: &str, src: &CudaStorage, dst: &CudaStorage, d: &AxisDims) -> Result<()> {
    let n = if kernel.contains("bwd") { d.outer * d.axis * d.inner } else { d.outer * d.inner };
    if n == 0 {
        return Ok(());
    }
    b.launch(
        kernel,
        (b.blocks_for(n, THREADS), 1, 1),
        (THREADS, 1, 1),
        &[ptr(src), ptr(dst), i32a(OP, d.outer)?, i32a(OP, d.axis)?, i32a(OP, d.inner)?],
    )
}
