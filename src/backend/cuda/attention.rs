//! Launches for kernels/attention.cu: flash-style attention forward and backward.

use super::{Arg, CudaBackend, CudaStorage, i32a, i64a, ptr_at};
use crate::backend::AttnDims;
use crate::error::{Error, Result};

const OP: &str = "attention";

/// The kernels for one head-dim range, by their whole symbols, with the ATT*_BQ and
/// ATT128_DKDV_SPLIT of attention.cu.
struct Variant {
    fwd: &'static str,
    dq: &'static str,
    dkdv: &'static str,
    /// Rows per block.
    bq: usize,
    /// Threads per key row in dk/dv.
    split: usize,
}

fn variant(d: usize) -> Result<Variant> {
    match d {
        0..=64 => Ok(Variant { fwd: "attention_fwd_f32", dq: "attention_dq_bwd_f32", dkdv: "attention_dkdv_bwd_f32", bq: 64, split: 1 }),
        65..=128 => Ok(Variant {
            fwd: "attention_d128_fwd_f32",
            dq: "attention_d128_dq_bwd_f32",
            dkdv: "attention_d128_dkdv_bwd_f32",
            bq: 32,
            split: 2,
        }),
        _ => Err(Error::Invalid { op: OP, msg: format!("head dim {d} is over the cuda kernels' limit of 128") }),
    }
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

pub(super) fn attention_fwd(
    b: &CudaBackend,
    q: &CudaStorage,
    k: &CudaStorage,
    v: &CudaStorage,
    o: &CudaStorage,
    lse: &CudaStorage,
    d: &AttnDims,
) -> Result<()> {
    if d.bh * d.tq * d.d == 0 {
        return Ok(());
    }
    let Variant { fwd: kernel, bq, .. } = variant(d.d)?;
    let (sq, sk) = (d.tq * d.d, d.tk * d.d);
    by_slices(d.bh, |s0, n| {
        b.launch(
            kernel,
            (d.tq.div_ceil(bq) as u32, n as u32, 1),
            (bq as u32, 1, 1),
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
pub(super) fn attention_bwd(
    b: &CudaBackend,
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
    if d.bh * d.d == 0 || (d.tq == 0 && d.tk == 0) {
        return Ok(());
    }
    let Variant { dq: dq_k, dkdv: dkdv_k, bq, split, .. } = variant(d.d)?;
    let rows = d.bh * d.tq;
    // D_i = dout_i . o_i
    let drow = b.scratch(rows.max(1))?;
    if rows > 0 {
        b.launch(
            "attention_rowdot_bwd_f32",
            (b.blocks_for(rows, 256), 1, 1),
            (256, 1, 1),
            &[super::ptr(o), super::ptr(dout), super::ptr(&drow), i64a(rows), i32a(OP, d.d)?],
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
            b.launch(dq_k, (d.tq.div_ceil(bq) as u32, n as u32, 1), (bq as u32, 1, 1), &args)?;
        }
        if d.tk > 0 {
            let args: Vec<Arg<'_>> = common.iter().copied().chain([ptr_at(dk, s0 * sk), ptr_at(dv, s0 * sk)]).chain(dims).collect();
            b.launch(dkdv_k, (d.tk.div_ceil(bq) as u32, n as u32, 1), ((bq * split) as u32, 1, 1), &args)?;
        }
        Ok(())
    })
}
