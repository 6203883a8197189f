//! Launches for kernels/matmul.cu (main loop in kernels/gemm_tile.cuh).

use super::gemm::{MAX_Z, THREADS, Tile};
use super::{Arg, CudaBackend, CudaStorage, GemmMath, i32a, i64a, opt_ptr, ptr_at};
use crate::backend::MatmulDims;
use crate::backend::ops::*;
use crate::error::Result;

/// Whole symbols, never assembled: each is found by name in kernels/matmul.cu.
pub(super) fn kernel_of(math: GemmMath, tile: Tile) -> &'static str {
    use {GemmMath::*, Tile::*};
    match (math, tile) {
        (Simt, _) => "matmul_fwd_f32",
        (Tf32, T64) => "matmul_tc_fwd_f32",
        (Tf32, T128) => "matmul_tc_m128n128_fwd_f32",
        (Tf32, T128x64) => "matmul_tc_m128n64_fwd_f32",
        (Bf16, T64) => "matmul_fwd_bf16",
        (Bf16, T128) => "matmul_m128n128_fwd_bf16",
        (Bf16, T128x64) => "matmul_m128n64_fwd_bf16",
        (_, T64x128) => unreachable!("the 64 x 128 tile serves backward-weight only (conv.rs, weight_plan)"),
    }
}

impl MatmulOps for CudaBackend {
    fn matmul(&self, a: &CudaStorage, b: &CudaStorage, c: &CudaStorage, d: &MatmulDims) -> Result<()> {
        const OP: &str = "matmul";
        let (mn, mk, kn) = (d.m * d.n, d.m * d.k, d.k * d.n);
        if d.batch * mn == 0 {
            return Ok(());
        }
        let math = self.gemm_math();
        // The 128-row kernels load whole 16-deep pieces of k (MatmulLoader<.., PieceOperand> in
        // kernels/matmul.cu); another k runs on 64 x 64 tiles.
        let tile = if d.k % 16 == 0 { Tile::pick(self, d.m, d.n, d.batch) } else { Tile::T64 };
        let (tm, tn) = (d.m.div_ceil(tile.mn().0), d.n.div_ceil(tile.mn().1));
        // Only 64 x 64 tiles split k (TcTile::SPLITS in kernels/gemm_tile.cuh).
        let splits = if tile == Tile::T64 { self.split_k(tm * tn * d.batch, d.k) } else { 1 };
        let kernel = kernel_of(math, tile);
        let (m, n) = (i32a(OP, d.m)?, i32a(OP, d.n)?);
        // The kernels keep k indices as `int`.
        super::i32c(OP, d.k)?;
        let tn32 = super::i32c(OP, tn)? as u32;
        if tn32 > 65535 {
            return Err(crate::error::Error::Invalid { op: OP, msg: format!("n = {} is too large for the cuda kernels", d.n) });
        }
        // Batches in chunks that fit the grid's z dimension. Under split-K each tile's last
        // piece adds the pieces (SplitK in kernels/gemm_tile.cuh).
        let per_launch = (MAX_Z / splits).max(1);
        let part = if splits > 1 { Some(self.scratch(splits * per_launch.min(d.batch) * mn)?) } else { None };
        let arrivals = if splits > 1 { self.arrival_counters(tm * tn * per_launch.min(d.batch))? } else { Arg::Ptr(0) };
        let mut b0 = 0;
        while b0 < d.batch {
            let nb = per_launch.min(d.batch - b0);
            self.launch_shared(
                kernel,
                (super::i32c(OP, tm)? as u32, tn32, (nb * splits) as u32),
                (THREADS, 1, 1),
                tile.smem_bytes(math),
                &[
                    ptr_at(a, b0 * mk),
                    ptr_at(b, b0 * kn),
                    ptr_at(c, b0 * mn),
                    opt_ptr(part.as_ref()),
                    i64a(nb * mn),
                    m,
                    n,
                    i64a(d.k),
                    Arg::I32(d.trans_a as i32),
                    Arg::I32(d.trans_b as i32),
                    Arg::I32(splits as i32),
                    arrivals,
                ],
                2 * (nb * mn * d.k) as u64,
            )?;
            b0 += nb;
        }
        Ok(())
    }
}
