//! Launches for kernels/matmul.cu (main loop in kernels/gemm_tile.cuh).

use super::{Arg, CudaBackend, CudaStorage, GemmMath, elementwise, i32a, i64a, ptr_at};
use crate::backend::MatmulDims;
use crate::error::Result;

/// Tile sizes and threads of gemm_tile.cuh.
pub(super) const BM: usize = 64;
pub(super) const BN: usize = 64;
pub(super) const THREADS: u32 = 256;
/// The grid's z limit.
pub(super) const MAX_Z: usize = 65535;

pub(super) fn matmul(b: &CudaBackend, a: &CudaStorage, bm: &CudaStorage, c: &CudaStorage, d: &MatmulDims) -> Result<()> {
    const OP: &str = "matmul";
    let (mn, mk, kn) = (d.m * d.n, d.m * d.k, d.k * d.n);
    if d.batch * mn == 0 {
        return Ok(());
    }
    let (tm, tn) = (d.m.div_ceil(BM), d.n.div_ceil(BN));
    let splits = b.split_k(tm * tn * d.batch, d.k);
    let kernel = match b.gemm_math() {
        GemmMath::Simt => "matmul_fwd_f32",
        GemmMath::Tf32 => "matmul_tc_fwd_f32",
        GemmMath::Bf16 => "matmul_bf16_fwd_f32",
    };
    let (m, n) = (i32a(OP, d.m)?, i32a(OP, d.n)?);
    // The kernels keep k indices as `int`.
    super::i32c(OP, d.k)?;
    let tn32 = super::i32c(OP, tn)? as u32;
    if tn32 > 65535 {
        return Err(crate::error::Error::Invalid { op: OP, msg: format!("n = {} is too large for the cuda kernels", d.n) });
    }
    // Batches in chunks that fit the grid's z dimension.
    let per_launch = (MAX_Z / splits).max(1);
    let part = if splits > 1 { Some(b.scratch(splits * per_launch.min(d.batch) * mn)?) } else { None };
    let mut b0 = 0;
    while b0 < d.batch {
        let nb = per_launch.min(d.batch - b0);
        let (out, stride) = match &part {
            Some(p) => (Arg::Ptr(p.ptr), nb * mn),
            None => (ptr_at(c, b0 * mn), 0),
        };
        b.launch(
            kernel,
            (super::i32c(OP, tm)? as u32, tn32, (nb * splits) as u32),
            (THREADS, 1, 1),
            &[
                ptr_at(a, b0 * mk),
                ptr_at(bm, b0 * kn),
                out,
                i64a(stride),
                m,
                n,
                i64a(d.k),
                Arg::I32(d.trans_a as i32),
                Arg::I32(d.trans_b as i32),
                Arg::I32(splits as i32),
            ],
        )?;
        if let Some(p) = &part {
            elementwise::sum_splits_at(b, p, c, b0 * mn, splits, nb * mn, b.gemm_math() == GemmMath::Bf16)?;
        }
        b0 += nb;
    }
    Ok(())
}
