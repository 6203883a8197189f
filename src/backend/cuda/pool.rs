//! Launches for kernels/pool.cu: max-pool and global average pool over NHWC.

use bytemuck::{Pod, Zeroable};

use super::{Arg, CudaBackend, CudaStorage, i32a, i32c, ptr};
use crate::backend::ops::*;
use crate::backend::{AxisDims, PoolDims};
use crate::error::Result;

const OP: &str = "pool";
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

/// avgpool_global_fwd_f32 (x -> y, one thread per output) or avgpool_global_bwd_f32 (dy -> dx,
/// one thread per input element).
pub(super) fn avgpool_global(b: &CudaBackend, kernel: &str, src: &CudaStorage, dst: &CudaStorage, d: &AxisDims) -> Result<()> {
    let n = if kernel.contains("bwd") { d.outer * d.axis * d.inner } else { d.outer * d.inner };
    if n == 0 {
        return Ok(());
    }
    b.launch_over(kernel, n, &[ptr(src), ptr(dst), i32a(OP, d.outer)?, i32a(OP, d.axis)?, i32a(OP, d.inner)?])
}

impl PoolOps for CudaBackend {
    fn maxpool2d_fwd(&self, x: &CudaStorage, y: &CudaStorage, d: &PoolDims) -> Result<()> {
        let n = d.n * d.oh * d.ow * d.c;
        if n == 0 {
            return Ok(());
        }
        let kd = dims(d)?;
        self.launch_over("maxpool2d_fwd_f32", n, &[ptr(x), ptr(y), Arg::Bytes(bytemuck::bytes_of(&kd))])
    }

    fn maxpool2d_bwd(&self, x: &CudaStorage, dy: &CudaStorage, dx: &CudaStorage, d: &PoolDims) -> Result<()> {
        let n = d.n * d.h * d.w * d.c;
        if n == 0 {
            return Ok(());
        }
        let kd = dims(d)?;
        self.launch_over("maxpool2d_bwd_f32", n, &[ptr(x), ptr(dy), ptr(dx), Arg::Bytes(bytemuck::bytes_of(&kd))])
    }

    fn avgpool_global_fwd(&self, x: &CudaStorage, y: &CudaStorage, d: &AxisDims) -> Result<()> {
        avgpool_global(self, "avgpool_global_fwd_f32", x, y, d)
    }

    fn avgpool_global_bwd(&self, dy: &CudaStorage, dx: &CudaStorage, d: &AxisDims) -> Result<()> {
        avgpool_global(self, "avgpool_global_bwd_f32", dy, dx, d)
    }
}
