//! Launches for kernels/attention.cu: flash-style attention forward and backward, exact FP32 or
//! on tensor cores (attention_tc.cuh) under TF32 and bf16.

use super::{Arg, CudaBackend, CudaStorage, GemmMath, i32a, i64a, ptr_at};
use crate::backend::AttnDims;
use crate::backend::ops::*;
use crate::error::{Error, Result};

const OP: &str = "attention";

/// The kernels for one head-dim range and math, by their whole symbols, with the block shapes
/// of attention.cu (ATT*_BQ, ATT128_DKDV_SPLIT, FLASH*_NW).
struct Variant {
    fwd: &'static str,
    dq: &'static str,
    dkdv: &'static str,
    /// Rows of the block's own side (queries, or keys in dk/dv) per block.
    rows: usize,
    /// Threads per block in the forward and dq passes, and in dk/dv.
    threads: usize,
    dkdv_threads: usize,
}

/// Exact FP32 kernels (one thread per row), or the tensor-core ones (16 rows per warp) under
/// TF32 and bf16.
fn variant(d: usize, math: GemmMath) -> Result<Variant> {
    let wide = match d {
        0..=64 => false,
        65..=128 => true,
        _ => return Err(Error::Invalid { op: OP, msg: format!("head dim {d} is over the cuda kernels' limit of 128") }),
    };
    let v = |fwd, dq, dkdv, rows, threads, dkdv_threads| Variant { fwd, dq, dkdv, rows, threads, dkdv_threads };
    Ok(match (math, wide) {
        (GemmMath::Simt, false) => v("attention_fwd_f32", "attention_dq_bwd_f32", "attention_dkdv_bwd_f32", 64, 64, 64),
        (GemmMath::Simt, true) => v("attention_d128_fwd_f32", "attention_d128_dq_bwd_f32", "attention_d128_dkdv_bwd_f32", 32, 32, 64),
        (GemmMath::Tf32, false) => v("attention_tc_fwd_f32", "attention_tc_dq_bwd_f32", "attention_tc_dkdv_bwd_f32", 64, 128, 128),
        (GemmMath::Tf32, true) => {
            v("attention_tc_d128_fwd_f32", "attention_tc_d128_dq_bwd_f32", "attention_tc_d128_dkdv_bwd_f32", 32, 64, 64)
        }
        (GemmMath::Bf16, false) => v("attention_fwd_bf16", "attention_dq_bwd_bf16", "attention_dkdv_bwd_bf16", 64, 128, 128),
        (GemmMath::Bf16, true) => v("attention_d128_fwd_bf16", "attention_d128_dq_bwd_bf16", "attention_d128_dkdv_bwd_bf16", 32, 64, 64),
    })
}

/// Runs `f(first slice, slices)` over chunks of at most 65535 slices (the grid's y limit).
fn by_slices(bh: usize, mut f: impl FnMut(usize, usize) -> Result<()>) -> Result<()> {
    let mut s0 = 0;
    while s0 < bh {
        let n = (bh - s0).min(65535);
        f(s0, n)?;
        s0 += n;
    }
    Ok(())
}

impl AttentionOps for CudaBackend {
    fn attention_fwd(
        &self, q: &CudaStorage, k: &CudaStorage, v: &CudaStorage, o: &CudaStorage, lse: &CudaStorage, d: &AttnDims,
    ) -> Result<()> {
        if d.bh * d.tq * d.d == 0 {
            return Ok(());
        }
        let Variant { fwd: kernel, rows, threads, .. } = variant(d.d, self.gemm_math())?;
        let (sq, sk) = (d.tq * d.d, d.tk * d.d);
        by_slices(d.bh, |s0, n| {
            self.launch(
                kernel,
                (d.tq.div_ceil(rows) as u32, n as u32, 1),
                (threads as u32, 1, 1),
                &[
                    ptr_at(q, s0 * sq),
                    ptr_at(k, s0 * sk),
                    ptr_at(v, s0 * sk),
                    ptr_at(o, s0 * sq),
                    ptr_at(lse, s0 * d.tq),
                    i32a(OP, d.tq)?,
                    i32a(OP, d.tk)?,
                    i32a(OP, d.d)?,
                    Arg::F32(d.scale),
                ],
            )
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_bwd(
        &self, q: &CudaStorage, k: &CudaStorage, v: &CudaStorage, o: &CudaStorage, lse: &CudaStorage, dout: &CudaStorage, dq: &CudaStorage,
        dk: &CudaStorage, dv: &CudaStorage, d: &AttnDims,
    ) -> Result<()> {
        let b = self;
        if d.bh * d.d == 0 || (d.tq == 0 && d.tk == 0) {
            return Ok(());
        }
        let Variant { dq: dq_k, dkdv: dkdv_k, rows, threads, dkdv_threads, .. } = variant(d.d, b.gemm_math())?;
        let all_rows = d.bh * d.tq;
        // D_i = dout_i . o_i
        let drow = b.scratch(all_rows.max(1))?;
        if all_rows > 0 {
            b.launch_over(
                "attention_rowdot_bwd_f32",
                all_rows,
                &[super::ptr(o), super::ptr(dout), super::ptr(&drow), i64a(all_rows), i32a(OP, d.d)?],
            )?;
        }
        let (sq, sk) = (d.tq * d.d, d.tk * d.d);
        by_slices(d.bh, |s0, n| {
            let common = [
                ptr_at(q, s0 * sq),
                ptr_at(k, s0 * sk),
                ptr_at(v, s0 * sk),
                ptr_at(lse, s0 * d.tq),
                ptr_at(&drow, s0 * d.tq),
                ptr_at(dout, s0 * sq),
            ];
            let dims = [i32a(OP, d.tq)?, i32a(OP, d.tk)?, i32a(OP, d.d)?, Arg::F32(d.scale)];
            if d.tq > 0 {
                let args: Vec<Arg<'_>> = common.iter().copied().chain([ptr_at(dq, s0 * sq)]).chain(dims).collect();
                b.launch(dq_k, (d.tq.div_ceil(rows) as u32, n as u32, 1), (threads as u32, 1, 1), &args)?;
            }
            if d.tk > 0 {
                let args: Vec<Arg<'_>> = common.iter().copied().chain([ptr_at(dk, s0 * sk), ptr_at(dv, s0 * sk)]).chain(dims).collect();
                b.launch(dkdv_k, (d.tk.div_ceil(rows) as u32, n as u32, 1), (dkdv_threads as u32, 1, 1), &args)?;
            }
            Ok(())
        })
    }
}
