//! Launches for kernels/matmul.cu (main loop in kernels/gemm_tile.cuh).

use super::{Arg, CudaBackend, CudaStorage, GemmMath, elementwise, i32a, i64a, ptr_at};
use crate::backend::MatmulDims;
use crate::error::Result;

/// Threads of every GEMM-core block (GEMM_THREADS in gemm_tile.cuh).
pub(super) const THREADS: u32 = 256;
/// The grid's z limit.
pub(super) const MAX_Z: usize = 65535;
/// Tiles in flight in the tensor-core pipeline (STAGES in gemm_tile.cuh).
const STAGES: usize = 3;

/// A block tile of the GEMM core: TcTile in kernels/gemm_tile.cuh (the SIMT loop is always
/// 64 x 64 x 16), one kernel per tile and math.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tile {
    /// 64 x 64 x 16: grids too small for the big tiles, where split-K may spread them further.
    T64,
    /// 128 x 128 x 32.
    T128,
    /// 128 x 64 x 32: outputs at most 64 wide, which a 128-wide tile would half pad.
    T128x64,
}

impl Tile {
    /// Output rows and columns per block.
    pub fn mn(self) -> (usize, usize) {
        match self {
            Tile::T64 => (64, 64),
            Tile::T128 => (128, 128),
            Tile::T128x64 => (128, 64),
        }
    }

    /// The tile for an m x n GEMM repeated `batch` times under `math`. The 128-row tiles load
    /// each operand element for twice as many products as 64 x 64 (the mma.sync-to-ldmatrix
    /// ratio goes from 2:3 to 4:3 per warp), but take 96 KB of shared memory, so one or two
    /// blocks fit an SM: they are used when their grid alone gives every SM a block. Otherwise
    /// 64 x 64, which split-K can spread further (CudaBackend::split_k); also on a GPU whose
    /// blocks cannot have that much shared memory. SIMT: always 64.
    pub fn pick(b: &CudaBackend, m: usize, n: usize, batch: usize) -> Tile {
        let math = b.gemm_math();
        if math == GemmMath::Simt {
            return Tile::T64;
        }
        let big = if n <= 64 { Tile::T128x64 } else { Tile::T128 };
        let (tm, tn) = big.mn();
        let fills = m.div_ceil(tm) * n.div_ceil(tn) * batch >= b.sm_count() as usize;
        if fills && big.smem_bytes(math) <= b.max_shared() { big } else { Tile::T64 }
    }

    /// Dynamic shared memory per block, sizeof(SmemOf<MATH, TILE>::T) in gemm_tile.cuh (the
    /// kernel traps when given less).
    pub fn smem_bytes(self, math: GemmMath) -> u32 {
        const F32: usize = 4;
        let bytes = match (math, self) {
            (GemmMath::Simt, _) => 2 * 16 * (64 + 8) * F32,
            (_, Tile::T64) => STAGES * (64 + 64) * 16 * F32,
            (_, Tile::T128) => STAGES * (128 + 128) * 32 * F32,
            (_, Tile::T128x64) => STAGES * (128 + 64) * 32 * F32,
        };
        bytes as u32
    }
}

/// Whole symbols, never assembled: each is found by name in kernels/matmul.cu.
fn kernel_of(math: GemmMath, tile: Tile) -> &'static str {
    use {GemmMath::*, Tile::*};
    match (math, tile) {
        (Simt, _) => "matmul_fwd_f32",
        (Tf32, T64) => "matmul_tc_fwd_f32",
        (Tf32, T128) => "matmul_tc_m128n128_fwd_f32",
        (Tf32, T128x64) => "matmul_tc_m128n64_fwd_f32",
        (Bf16, T64) => "matmul_bf16_fwd_f32",
        (Bf16, T128) => "matmul_bf16_m128n128_fwd_f32",
        (Bf16, T128x64) => "matmul_bf16_m128n64_fwd_f32",
    }
}

/// Every GEMM-core kernel (matmul and the convolutions) with the dynamic shared memory its
/// launches ask for: the static report adds it to the kernel's own.
pub fn gemm_core_kernels() -> Vec<(&'static str, u32)> {
    let mut out = Vec::new();
    for math in [GemmMath::Simt, GemmMath::Tf32, GemmMath::Bf16] {
        for tile in [Tile::T64, Tile::T128, Tile::T128x64] {
            let bytes = tile.smem_bytes(math);
            out.push((kernel_of(math, tile), bytes));
            out.extend(super::conv::kernels_of(math, tile).into_iter().map(|k| (k, bytes)));
        }
    }
    out.sort();
    out.dedup();
    out
}

pub(super) fn matmul(b: &CudaBackend, a: &CudaStorage, bm: &CudaStorage, c: &CudaStorage, d: &MatmulDims) -> Result<()> {
    const OP: &str = "matmul";
    let (mn, mk, kn) = (d.m * d.n, d.m * d.k, d.k * d.n);
    if d.batch * mn == 0 {
        return Ok(());
    }
    let math = b.gemm_math();
    let tile = Tile::pick(b, d.m, d.n, d.batch);
    let (tm, tn) = (d.m.div_ceil(tile.mn().0), d.n.div_ceil(tile.mn().1));
    let splits = if tile == Tile::T64 { b.split_k(tm * tn * d.batch, d.k) } else { 1 };
    let kernel = kernel_of(math, tile);
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
        b.launch_shared(
            kernel,
            (super::i32c(OP, tm)? as u32, tn32, (nb * splits) as u32),
            (THREADS, 1, 1),
            tile.smem_bytes(math),
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
            elementwise::sum_splits_at(b, p, c, b0 * mn, splits, nb * mn, math == GemmMath::Bf16)?;
        }
        b0 += nb;
    }
    Ok(())
}
