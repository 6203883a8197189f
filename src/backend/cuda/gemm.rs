//! The GEMM core's shared rules (kernels/gemm_tile.cuh), used by matmul.rs and conv.rs alike:
//! block threads, the grid's z limit, pipeline stages, and the tile rule with the tile's shared
//! memory. Kept apart so that neither family reaches into the other for them.

use super::{CudaBackend, GemmMath};

/// Threads of every GEMM-core block (GEMM_THREADS in gemm_tile.cuh).
pub(crate) const THREADS: u32 = 256;
/// The grid's z limit.
pub(crate) const MAX_Z: usize = 65535;
/// Tiles in flight in the tensor-core pipeline (STAGES in gemm_tile.cuh).
const STAGES: usize = 3;

/// A block tile of the GEMM core: TcTile in kernels/gemm_tile.cuh (the SIMT loop is always
/// 64 x 64 x 16), one kernel per tile and math.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tile {
    /// 64 x 64 x 16: grids too small for the big tiles, where split-K may spread them further.
    T64,
    /// 128 x 128 x 32.
    T128,
    /// 128 x 64 x 32: outputs at most 64 wide, which a 128-wide tile would half pad.
    T128x64,
    /// 64 x 128 x 32, backward-weight only (conv.rs, weight_plan): 64 output channels over many
    /// columns, which a 128-row tile would half pad.
    T64x128,
}

impl Tile {
    /// Output rows and columns per block.
    pub fn mn(self) -> (usize, usize) {
        match self {
            Tile::T64 => (64, 64),
            Tile::T128 => (128, 128),
            Tile::T128x64 => (128, 64),
            Tile::T64x128 => (64, 128),
        }
    }

    /// The tile for an m x n GEMM repeated `batch` times under `math`. The 128-row tiles load
    /// each operand element for twice as many products as 64 x 64 (the mma.sync-to-ldmatrix
    /// ratio goes from 2:3 to 4:3 per warp), but take 102 KB of shared memory, so one or two
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
    /// kernel traps when given less): per stage, each operand's rows and k, the rows padded by
    /// 8 floats (TcTile::MN_PAD, which an MN-major operand's layout takes).
    pub fn smem_bytes(self, math: GemmMath) -> u32 {
        const F32: usize = 4;
        const PAD: usize = 8;
        let bytes = match (math, self) {
            (GemmMath::Simt, _) => 2 * 16 * (64 + 8) * F32,
            (_, Tile::T64) => STAGES * (64 + PAD + 64 + PAD) * 16 * F32,
            (_, Tile::T128) => STAGES * (128 + PAD + 128 + PAD) * 32 * F32,
            (_, Tile::T128x64 | Tile::T64x128) => STAGES * (128 + PAD + 64 + PAD) * 32 * F32,
        };
        bytes as u32
    }
}

/// The share of the GPU's block slots a launch of `blocks` blocks keeps busy over its waves:
/// blocks / (waves x slots), slots = SMs x blocks per SM. 144 blocks on 132 one-block SMs run
/// in two waves, the second nearly empty: 55%.
pub fn wave_efficiency(blocks: u64, sms: u32, blocks_per_sm: u32) -> f64 {
    let slots = (sms as u64 * blocks_per_sm.max(1) as u64).max(1);
    let waves = blocks.div_ceil(slots).max(1);
    blocks as f64 / (waves * slots) as f64
}
