//! Launches for kernels/matmul.cu (main loop in kernels/gemm_tile.cuh).

use super::gemm::{MAX_Z, THREADS, Tile};
use super::{Arg, CudaBackend, CudaStorage, GemmMath, i32a, i64a, opt_ptr, ptr_at};
use crate::backend::MatmulDims;
use crate::backend::ops::*;
use crate::error::Result;

/// Whole symbols, never assembled: each is found by name in kernels/matmul.cu. `chunks`: the
/// shape takes MatmulChunkLoader's 16-byte copies (`fits_chunks`), which the 128-row tiles need and
/// 64 x 64 has kernels of its own for.
pub(super) fn kernel_of(math: GemmMath, tile: Tile, chunks: bool) -> &'static str {
    use {GemmMath::*, Tile::*};
    match (math, tile, chunks) {
        (Simt, ..) => "matmul_fwd_f32",
        (Tf32, T64, false) => "matmul_tc_fwd_f32",
        (Tf32, T64, true) => "matmul_tc_chunks_fwd_f32",
        (Tf32, T128, _) => "matmul_tc_m128n128_fwd_f32",
        (Tf32, T128x64, _) => "matmul_tc_m128n64_fwd_f32",
        (Bf16, T64, false) => "matmul_fwd_bf16",
        (Bf16, T64, true) => "matmul_chunks_fwd_bf16",
        (Bf16, T128, _) => "matmul_m128n128_fwd_bf16",
        (Bf16, T128x64, _) => "matmul_m128n64_fwd_bf16",
        (_, T64x128, _) => unreachable!("the 64 x 128 tile serves backward-weight only (conv.rs, weight_plan)"),
    }
}

/// The kernels one tile has (the report's list).
pub(super) fn kernels_of(math: GemmMath, tile: Tile) -> Vec<&'static str> {
    let mut k = vec![kernel_of(math, tile, false)];
    if tile == Tile::T64 && math != GemmMath::Simt {
        k.push(kernel_of(math, tile, true));
    }
    k
}

/// Whether every copy of the product can be 16 bytes (MatmulChunkLoader in kernels/matmul.cu):
/// k in whole 16-deep pieces, and the rows of a transposed operand's chunks (4 consecutive m of
/// A stored k x m, or 4 consecutive n of B stored k x n) inside [0, m) or [0, n) as a whole and
/// 16-byte aligned (every buffer is 256-byte aligned; a row of k floats is 16-byte aligned too).
fn fits_chunks(d: &MatmulDims) -> bool {
    d.k % 16 == 0 && (!d.trans_a || d.m % 4 == 0) && (d.trans_b || d.n % 4 == 0)
}

impl MatmulOps for CudaBackend {
    fn matmul(&self, a: &CudaStorage, b: &CudaStorage, c: &CudaStorage, d: &MatmulDims) -> Result<()> {
        const OP: &str = "matmul";
        let (mn, mk, kn) = (d.m * d.n, d.m * d.k, d.k * d.n);
        if d.batch * mn == 0 {
            return Ok(());
        }
        let math = self.gemm_math();
        // The 128-row kernels move 16-byte chunks only (fits_chunks); another shape runs on 64 x 64
        // tiles, element by element.
        let chunks = fits_chunks(d);
        let tile = if chunks { Tile::pick(self, d.m, d.n, d.batch) } else { Tile::T64 };
        let (tm, tn) = (d.m.div_ceil(tile.mn().0), d.n.div_ceil(tile.mn().1));
        // Only 64 x 64 tiles split k (TcTile::SPLITS in kernels/gemm_tile.cuh).
        let splits = if tile == Tile::T64 { self.split_k(tm * tn * d.batch, d.k) } else { 1 };
        let kernel = kernel_of(math, tile, chunks);
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
