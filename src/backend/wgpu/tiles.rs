//! The WGSL kernels' tile sizes and workgroup shapes, chosen from the adapter's limits (and
//! whether it is a CPU implementation such as llvmpipe) and written into every shader as
//! constants.

/// Tile sizes and workgroup shapes, chosen from the adapter's limits and written into every
/// shader as constants (see `prelude`).
#[derive(Clone, Copy, Debug)]
pub struct Tiles {
    /// 1-D workgroup size of elementwise kernels.
    pub wg: u32,
    /// GEMM: a workgroup of mm_tx x mm_ty threads computes a (mm_ty*mm_tm) x (mm_tx*mm_tn)
    /// tile, each thread an mm_tm x mm_tn register block; mm_bk is the depth of a shared tile.
    pub mm_tx: u32,
    pub mm_ty: u32,
    pub mm_tm: u32,
    pub mm_tn: u32,
    pub mm_bk: u32,
    /// Threads of the workgroup that reduces one row (layer norm, softmax, cosine).
    pub row_wg: u32,
    /// Attention: query rows per workgroup (one per thread) and keys per shared tile.
    pub att_bq: u32,
    pub att_bk: u32,
    /// Most workgroups of a 1-D (grid-stride) launch. llvmpipe pays about a microsecond per
    /// workgroup, so a CPU adapter gets few large ones; a GPU gets enough to fill it.
    pub max_groups: u32,
}

impl Tiles {
    pub(super) fn from_limits(l: &wgpu::Limits, cpu: bool) -> Tiles {
        let inv = l.max_compute_invocations_per_workgroup;
        let (sx, sy) = (l.max_compute_workgroup_size_x, l.max_compute_workgroup_size_y);
        let smem = l.max_compute_workgroup_storage_size;
        let wg = [256, 128, 64].into_iter().find(|&w| w <= inv && w <= sx).unwrap_or(32);
        // GPUs: 16x16 threads with 4x4 blocks (64x64 tiles, 256 threads) when the adapter
        // allows, else 8x8 threads. CPU implementations (llvmpipe runs an invocation per SIMD
        // lane and pays per workgroup and per shared-memory load): 8x8 threads with 8x8 blocks,
        // measured 1.5-2.5x faster there.
        let big = inv >= 256 && sx >= 16 && sy >= 16 && smem >= 2 * 16 * 64 * 4;
        let (t, tm, bk) = if cpu && smem >= 2 * 16 * 64 * 4 {
            (8, 8, 16)
        } else if big {
            (16, 4, 16)
        } else {
            (8, 4, 8)
        };
        let row_wg = wg.min(64);
        let att_bq = wg.min(64);
        // Two shared tiles of att_bk keys x ATT_DMAX (<= 128) floats, plus per-key scalars.
        let mut att_bk = 32;
        while att_bk > 1 && att_bk * (2 * 128 * 4 + 16) > smem {
            att_bk /= 2;
        }
        let max_groups = if cpu { 256 } else { 16384 };
        let mut tiles = Tiles { wg, mm_tx: t, mm_ty: t, mm_tm: tm, mm_tn: tm, mm_bk: bk, row_wg, att_bq, att_bk, max_groups };
        if let Some(g) = std::env::var("SSL_WGPU_GROUPS").ok().and_then(|v| v.parse().ok()) {
            tiles.max_groups = g;
        }
        // SSL_WGPU_GEMM=tx,ty,tm,tn,bk overrides the GEMM tiling (for tuning on a new device);
        // ignored unless it fits the adapter's limits.
        if let Ok(v) = std::env::var("SSL_WGPU_GEMM") {
            let f: Vec<u32> = v.split(',').filter_map(|x| x.trim().parse().ok()).collect();
            if let [tx, ty, tm, tn, bk] = f[..] {
                let fits = tx * ty <= inv && tx <= sx && ty <= sy && bk * (ty * tm + tx * tn) * 4 <= smem && tm % 4 == 0 && tn % 4 == 0;
                if fits && tx * ty > 0 && tm * tn * bk > 0 {
                    (tiles.mm_tx, tiles.mm_ty, tiles.mm_tm, tiles.mm_tn, tiles.mm_bk) = (tx, ty, tm, tn, bk);
                }
            }
        }
        tiles
    }
    pub fn mm_bm(&self) -> u32 {
        self.mm_ty * self.mm_tm
    }
    pub fn mm_bn(&self) -> u32 {
        self.mm_tx * self.mm_tn
    }
}
