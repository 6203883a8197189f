//! Launches for kernels/conv.cu: NHWC convolution as implicit GEMM (forward, backward-data,
//! backward-weight), split-K when the output is small and the reduction long (backward-weight
//! on the late ResNet layers).

use bytemuck::{Pod, Zeroable};

use super::gemm::{MAX_Z, THREADS, Tile};
use super::{Arg, CudaBackend, CudaStorage, GemmMath, i32c, i64a, norm, opt_ptr, ptr};
use crate::backend::ops::*;
use crate::backend::{BnTrain, Conv2dDims, NormDims};
use crate::dtype::DType;
use crate::error::{Error, Result};

/// Mirror of `struct ConvDims` in kernels/conv.cu.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ConvDims {
    n: i32,
    h: i32,
    w: i32,
    c_in: i32,
    c_out: i32,
    kh: i32,
    kw: i32,
    sh: i32,
    sw: i32,
    ph: i32,
    pw: i32,
    groups: i32,
    oh: i32,
    ow: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pass {
    Fwd,
    BwdData,
    BwdWeight,
}

/// `in0`, `in1`: (x, w) forward, (dy, w) backward-data, (x, dy) backward-weight.
pub(super) fn conv2d(b: &CudaBackend, pass: Pass, in0: &CudaStorage, in1: &CudaStorage, out: &CudaStorage, d: &Conv2dDims) -> Result<()> {
    launch_conv(b, pass, in0, in1, out, d, None, None)
}

/// Convolution, then training batch norm of its output, with the statistics summed in the
/// convolution's epilogue (ColStats in kernels/gemm_tile.cuh; under split-K, the epilogue of
/// each tile's last piece, on the sum) instead of a pass that reads the output again.
pub(super) fn conv2d_batchnorm(
    b: &CudaBackend, x: &CudaStorage, w: &CudaStorage, conv_out: &CudaStorage, cd: &Conv2dDims, bn: BnTrain<'_, CudaStorage>, nd: &NormDims,
) -> Result<()> {
    let row_tiles = plan(b, Pass::Fwd, cd)?.grid.0 as usize;
    if nd.rows * nd.channels == 0 || nd.channels != cd.c_out || nd.rows != cd.n * cd.oh * cd.ow {
        return Err(Error::Invalid {
            op: "conv2d_batchnorm",
            msg: "the batch norm's [rows, channels] are not the convolution's output".into(),
        });
    }
    let part = norm::partials(b, row_tiles, cd.c_out)?;
    launch_conv(b, Pass::Fwd, x, w, conv_out, cd, Some(&part), None)?;
    norm::batchnorm_from_partials(b, &part, row_tiles, conv_out, bn, nd)
}

/// How one pass runs: its GEMM (M x N outputs per group, reduction length K), block tile,
/// split-K factor and grid. `chunks`: backward-weight on a 64 x 64 tensor-core tile that takes
/// the chunk loader (weight_chunks_kernel; the 128-row and 64 x 128 tiles always do).
struct Plan {
    out_len: usize,
    tile: Tile,
    splits: usize,
    grid: (u32, u32, u32),
    dims: ConvDims,
    chunks: bool,
}

fn plan(b: &CudaBackend, pass: Pass, d: &Conv2dDims) -> Result<Plan> {
    const OP: &str = "conv2d";
    let (cg, og) = (d.c_in / d.groups, d.c_out / d.groups);
    let kcols = d.kh * d.kw * cg;
    // The GEMM of one group: M x N outputs, reduction length K. Backward-data runs one GEMM per
    // stride phase (kernels/conv.cu, ConvPhase); M and K are the largest phase's.
    let phases = match pass {
        Pass::BwdData => d.stride[0] * d.stride[1],
        _ => 1,
    };
    let (m, n, k) = match pass {
        Pass::Fwd => (d.n * d.oh * d.ow, og, kcols),
        Pass::BwdData => {
            let (s0, s1) = (d.stride[0], d.stride[1]);
            (d.n * d.h.div_ceil(s0) * d.w.div_ceil(s1), cg, d.kh.div_ceil(s0) * d.kw.div_ceil(s1) * og)
        }
        Pass::BwdWeight => (og, kcols, d.n * d.oh * d.ow),
    };
    let out_len = match pass {
        Pass::Fwd => d.n * d.oh * d.ow * d.c_out,
        Pass::BwdData => d.n * d.h * d.w * d.c_in,
        Pass::BwdWeight => d.c_out * kcols,
    };
    // Every pixel and channel index is an `int` in the kernels, and so is an offset inside one
    // image of x or dy, or inside the weight.
    for v in [m, n, k, d.n * d.h * d.w, d.n * d.oh * d.ow, d.h * d.w * d.c_in, d.oh * d.ow * d.c_out, d.c_out * kcols] {
        i32c(OP, v)?;
    }
    let dims = ConvDims {
        n: d.n as i32,
        h: d.h as i32,
        w: d.w as i32,
        c_in: d.c_in as i32,
        c_out: d.c_out as i32,
        kh: d.kh as i32,
        kw: d.kw as i32,
        sh: d.stride[0] as i32,
        sw: d.stride[1] as i32,
        ph: d.pad[0] as i32,
        pw: d.pad[1] as i32,
        groups: d.groups as i32,
        oh: d.oh as i32,
        ow: d.ow as i32,
    };
    // Backward-weight in 16-byte chunks: what its 128-row and 64 x 128 tiles need.
    let chunks = pass == Pass::BwdWeight && weight_chunks(d, k);
    let (tile, splits) = match pass {
        Pass::BwdWeight => weight_plan(b, m, n, k, d.groups, chunks),
        _ => {
            let tile = if pieces_in_one_tap(pass, d) { Tile::pick(b, m, n, d.groups * phases) } else { Tile::T64 };
            let tiles = m.div_ceil(tile.mn().0) * n.div_ceil(tile.mn().1) * d.groups * phases;
            // Only 64 x 64 tiles split k here (TcTile::SPLITS in kernels/gemm_tile.cuh).
            (tile, if tile == Tile::T64 { b.split_k(tiles, k) } else { 1 })
        }
    };
    let (tm, tn) = (m.div_ceil(tile.mn().0), n.div_ceil(tile.mn().1));
    if tn > 65535 || d.groups * splits * phases > MAX_Z {
        return Err(Error::Invalid {
            op: OP,
            msg: format!("{pass:?}: {} groups x {n} columns is too large for the cuda kernels", d.groups),
        });
    }
    // On 64 x 64 the chunk loader has kernels of its own (weight_chunks_kernel).
    let chunks = chunks && tile == Tile::T64 && b.gemm_math() != GemmMath::Simt;
    Ok(Plan { out_len, tile, splits, grid: (i32c(OP, tm)? as u32, tn as u32, (d.groups * splits * phases) as u32), dims, chunks })
}

/// Whether every 16-deep piece of the pass's reduction lies inside one filter tap, which the
/// 128-row kernels' loaders require (ConvFwdTapLoader, ConvBwdDataTapLoader in kernels/conv.cu:
/// one 16-byte copy per thread and piece, bounds from a 32-bit mask of the taps a pixel reaches):
/// the reduction's channels per tap (cg forward, og backward-data) a multiple of 16, and at most
/// 32 taps reach a pixel (kh kw forward; per stride phase, ceil(kh / sh) ceil(kw / sw) for
/// backward-data); backward-data also copies the weight's channels (cg) 4 at a time.
/// The rest (the RGB stem, odd channel counts) run on 64 x 64 tiles.
/// Buffers need no check: the pool's are 256-byte aligned.
fn pieces_in_one_tap(pass: Pass, d: &Conv2dDims) -> bool {
    const PIECE: usize = 16;
    match pass {
        Pass::Fwd => (d.c_in / d.groups) % PIECE == 0 && d.kh * d.kw <= 32,
        Pass::BwdData => {
            (d.c_out / d.groups) % PIECE == 0 && (d.c_in / d.groups) % 4 == 0 && d.kh.div_ceil(d.stride[0]) * d.kw.div_ceil(d.stride[1]) <= 32
        }
        Pass::BwdWeight => true, // weight_plan: weight_chunks
    }
}

/// Whether backward-weight can move both operands in 16-byte chunks of 4 channels
/// (ConvBwdWeightChunkLoader in kernels/conv.cu), which the 128-row kernels require: whole
/// 16-pixel pieces of the reduction (k, the pixel count), and output and input channels per
/// group that are multiples of 4. The rest (the RGB stem, odd channel counts or pixel counts)
/// run on the general 64 x 64 kernels.
fn weight_chunks(d: &Conv2dDims, k: usize) -> bool {
    k % 16 == 0 && (d.c_out / d.groups) % 4 == 0 && (d.c_in / d.groups) % 4 == 0
}

/// Backward-weight's tile and split-K factor. Its GEMM has few outputs (c_out x kh*kw*c_in) and
/// a long reduction (every pixel of the batch), so how the reduction is split decides how full
/// the GPU is: ResNet-18's last stage at batch 512 is 144 tiles of 128 x 128 on 132 SMs, two
/// waves with the second nearly empty. Each candidate (a 128-row tile, 64 x 128 for at most 64
/// output channels, or 64 x 64; 1-1,024 pieces,
/// each at least 256 long, their partial outputs at most 64 MB) is scored by the share of the GPU's block slots its waves keep busy
/// (`gemm::wave_efficiency`) x the share of its tiles' outputs that exist x the tile's own
/// speed (a 128-wide tile reuses each operand element twice as often: 1, against 0.6 for
/// 64 x 64). More pieces must win by over 1%: each adds a partial output to sum. The stem
/// (64 x 27 outputs over 524288 pixels at batch 512) takes hundreds of pieces. The pieces are
/// summed in a fixed order (SplitK), so the result does not depend on the blocks' timing.
fn weight_plan(b: &CudaBackend, m: usize, n: usize, k: usize, groups: usize, chunks: bool) -> (Tile, usize) {
    // Blocks per SM on sm_90a (`bench kernels --static`), which the weight kernels' launch
    // bounds hold them to (WeightBlocksPerSm in kernels/conv.cu): 128 x 128 one (156-162
    // registers with the chunk loader), 128 x 64 and 64 x 128 two (at most 128), 64 x 64
    // three (80).
    let candidates = match b.gemm_math() {
        GemmMath::Simt => vec![(Tile::T64, 3, 1.0)],
        math => {
            let big = if n <= 64 { (Tile::T128x64, 2) } else { (Tile::T128, 1) };
            let mut c = vec![(Tile::T64, 3, 0.6)];
            // The 128-row kernels' loader moves 16-byte chunks (weight_chunks), and so does 64 x
            // 128's, for 64 output channels or fewer, which a 128-row tile would half pad.
            if big.0.smem_bytes(math) <= b.max_shared() && chunks {
                c.push((big.0, big.1, 1.0));
                if m <= 64 && n > 64 {
                    c.push((Tile::T64x128, 2, 1.0));
                }
            }
            c
        }
    };
    let sms = b.sm_count();
    let mut best = (Tile::T64, 1, 0.0f64);
    for (tile, per_sm, speed) in candidates {
        let (th, tw) = tile.mn();
        let tiles = m.div_ceil(th) * n.div_ceil(tw) * groups;
        let filled = (m * n) as f64 / (m.div_ceil(th) * th * n.div_ceil(tw) * tw) as f64;
        let most = (k / 256).min((16 << 20) / (m * n * groups).max(1)).min(MAX_Z / groups.max(1)).clamp(1, 1024);
        for splits in 1..=most {
            let score = super::gemm::wave_efficiency((tiles * splits) as u64, sms, per_sm) * filled * speed;
            let (_, best_splits, best_score) = best;
            let better = if splits > best_splits { score > best_score * 1.01 } else { score > best_score };
            if better {
                best = (tile, splits, score);
            }
        }
    }
    (best.0, best.1)
}

/// The pass's kernel: whole symbols, never assembled, each found by name in kernels/conv.cu.
fn kernel_of(pass: Pass, math: GemmMath, tile: Tile) -> &'static str {
    use {GemmMath::*, Pass::*, Tile::*};
    match (pass, math, tile) {
        (Fwd, Simt, _) => "conv2d_fwd_f32",
        (BwdData, Simt, _) => "conv2d_data_bwd_f32",
        (BwdWeight, Simt, _) => "conv2d_weight_bwd_f32",
        (Fwd, Tf32, T64) => "conv2d_tc_fwd_f32",
        (BwdData, Tf32, T64) => "conv2d_tc_data_bwd_f32",
        (BwdWeight, Tf32, T64) => "conv2d_tc_weight_bwd_f32",
        (Fwd, Tf32, T128) => "conv2d_tc_m128n128_fwd_f32",
        (BwdData, Tf32, T128) => "conv2d_tc_m128n128_data_bwd_f32",
        (BwdWeight, Tf32, T128) => "conv2d_tc_m128n128_weight_bwd_f32",
        (Fwd, Tf32, T128x64) => "conv2d_tc_m128n64_fwd_f32",
        (BwdData, Tf32, T128x64) => "conv2d_tc_m128n64_data_bwd_f32",
        (BwdWeight, Tf32, T128x64) => "conv2d_tc_m128n64_weight_bwd_f32",
        (Fwd, Bf16, T64) => "conv2d_fwd_bf16",
        (BwdData, Bf16, T64) => "conv2d_data_bwd_bf16",
        (BwdWeight, Bf16, T64) => "conv2d_weight_bwd_bf16",
        (Fwd, Bf16, T128) => "conv2d_m128n128_fwd_bf16",
        (BwdData, Bf16, T128) => "conv2d_m128n128_data_bwd_bf16",
        (BwdWeight, Bf16, T128) => "conv2d_m128n128_weight_bwd_bf16",
        (Fwd, Bf16, T128x64) => "conv2d_m128n64_fwd_bf16",
        (BwdData, Bf16, T128x64) => "conv2d_m128n64_data_bwd_bf16",
        (BwdWeight, Bf16, T128x64) => "conv2d_m128n64_weight_bwd_bf16",
        (BwdWeight, Tf32, T64x128) => "conv2d_tc_m64n128_weight_bwd_f32",
        (BwdWeight, Bf16, T64x128) => "conv2d_m64n128_weight_bwd_bf16",
        (Fwd | BwdData, _, T64x128) => unreachable!("the 64 x 128 tile serves backward-weight only (weight_plan)"),
    }
}

/// The forward pass with batch norm's statistics in its epilogue.
fn batchnorm_kernel_of(math: GemmMath, tile: Tile) -> &'static str {
    use {GemmMath::*, Tile::*};
    match (math, tile) {
        (Simt, _) => "conv2d_batchnorm_fwd_f32",
        (Tf32, T64) => "conv2d_batchnorm_tc_fwd_f32",
        (Tf32, T128) => "conv2d_batchnorm_tc_m128n128_fwd_f32",
        (Tf32, T128x64) => "conv2d_batchnorm_tc_m128n64_fwd_f32",
        (Bf16, T64) => "conv2d_batchnorm_fwd_bf16",
        (Bf16, T128) => "conv2d_batchnorm_m128n128_fwd_bf16",
        (Bf16, T128x64) => "conv2d_batchnorm_m128n64_fwd_bf16",
        (_, T64x128) => unreachable!("the 64 x 128 tile serves backward-weight only (weight_plan)"),
    }
}

/// Backward-weight on 64 x 64 tensor-core tiles in 16-byte chunks (weight_chunks), where the
/// general kernel tests and divides per element.
fn weight_chunks_kernel(math: GemmMath) -> &'static str {
    match math {
        GemmMath::Simt => kernel_of(Pass::BwdWeight, math, Tile::T64),
        GemmMath::Tf32 => "conv2d_tc_chunks_weight_bwd_f32",
        GemmMath::Bf16 => "conv2d_chunks_weight_bwd_bf16",
    }
}

/// The kernels of one math and tile: the three passes, the forward with statistics, and on 64 x
/// 64 tensor-core tiles the backward-weight chunk kernel; on 64 x 128 backward-weight alone.
pub(crate) fn kernels_of(math: GemmMath, tile: Tile) -> Vec<&'static str> {
    if tile == Tile::T64x128 {
        return if math == GemmMath::Simt { vec![] } else { vec![kernel_of(Pass::BwdWeight, math, tile)] };
    }
    let mut k = vec![
        kernel_of(Pass::Fwd, math, tile),
        kernel_of(Pass::BwdData, math, tile),
        kernel_of(Pass::BwdWeight, math, tile),
        batchnorm_kernel_of(math, tile),
    ];
    if tile == Tile::T64 && math != GemmMath::Simt {
        k.push(weight_chunks_kernel(math));
    }
    k
}

/// Launches one pass; with `stats` (forward only), also the output's column sums [row tiles, 2,
/// c_out]. With `add` (backward-data only), out = the pass + add, in the kernel's epilogue.
/// Under split-K the last piece of each tile sums the pieces and runs that epilogue (SplitK in
/// kernels/gemm_tile.cuh): one launch either way.
fn launch_conv(
    b: &CudaBackend, pass: Pass, in0: &CudaStorage, in1: &CudaStorage, out: &CudaStorage, d: &Conv2dDims, stats: Option<&CudaStorage>,
    add: Option<&CudaStorage>,
) -> Result<()> {
    let Plan { out_len, tile, splits, grid, dims, chunks } = plan(b, pass, d)?;
    if out_len == 0 {
        return Ok(());
    }
    // Every operand is F32 but the output of a convolution into batch norm, which the bf16
    // kernels write as bf16 (conv2d_batchnorm_out_dtype).
    let out_dtype = if stats.is_some() { b.conv2d_batchnorm_out_dtype() } else { DType::F32 };
    for (what, s, want) in [("first input", in0, DType::F32), ("second input", in1, DType::F32), ("output", out, out_dtype)] {
        if s.dtype() != want {
            return Err(Error::DType { op: "conv2d", dtype: format!("{} {what} where {want} is wanted", s.dtype()), backend: b.name() });
        }
    }
    let math = b.gemm_math();
    // Each pass is the same multiply-adds: every output pixel, output channel and tap of the
    // group's input channels (backward-data's phases skip only taps that miss).
    let flops = 2 * (d.n * d.oh * d.ow * d.c_out * d.kh * d.kw * (d.c_in / d.groups)) as u64;
    let part = if splits > 1 { Some(b.scratch(splits * out_len)?) } else { None };
    let arrivals = if splits > 1 { b.arrival_counters((grid.0 * grid.1 * grid.2) as usize / splits)? } else { Arg::Ptr(0) };
    let mut args = vec![
        ptr(in0),
        ptr(in1),
        ptr(out),
        opt_ptr(part.as_ref()),
        i64a(out_len),
        Arg::Bytes(bytemuck::bytes_of(&dims)),
        Arg::I32(splits as i32),
        arrivals,
    ];
    let kernel = match (pass, stats) {
        (Pass::Fwd, Some(stats)) => {
            args.push(ptr(stats));
            batchnorm_kernel_of(math, tile)
        }
        (Pass::BwdData, _) => {
            args.push(opt_ptr(add));
            kernel_of(pass, math, tile)
        }
        _ if chunks => weight_chunks_kernel(math),
        _ => kernel_of(pass, math, tile),
    };
    b.launch_shared(kernel, grid, (THREADS, 1, 1), tile.smem_bytes(math), &args, flops)
}

impl ConvOps for CudaBackend {
    fn conv2d_fwd(&self, x: &CudaStorage, w: &CudaStorage, y: &CudaStorage, d: &Conv2dDims) -> Result<()> {
        conv2d(self, Pass::Fwd, x, w, y, d)
    }

    fn conv2d_data_bwd(&self, dy: &CudaStorage, w: &CudaStorage, dx: &CudaStorage, d: &Conv2dDims) -> Result<()> {
        conv2d(self, Pass::BwdData, dy, w, dx, d)
    }

    fn conv2d_weight_bwd(&self, x: &CudaStorage, dy: &CudaStorage, dw: &CudaStorage, d: &Conv2dDims) -> Result<()> {
        conv2d(self, Pass::BwdWeight, x, dy, dw, d)
    }

    fn conv2d_data_bwd_add(&self, dy: &CudaStorage, w: &CudaStorage, prev: &CudaStorage, dx: &CudaStorage, d: &Conv2dDims) -> Result<bool> {
        launch_conv(self, Pass::BwdData, dy, w, dx, d, None, Some(prev))?;
        Ok(true)
    }

    fn conv2d_batchnorm_fwd_train(
        &self, x: &CudaStorage, w: &CudaStorage, conv_out: &CudaStorage, cd: &Conv2dDims, bn: BnTrain<'_, CudaStorage>, nd: &NormDims,
    ) -> Result<()> {
        conv2d_batchnorm(self, x, w, conv_out, cd, bn, nd)
    }

    /// BF16 where the convolutions compute in bf16: their epilogue rounds the output to bf16,
    /// then stores it in half the bytes (conv2d_batchnorm_*_fwd_bf16).
    fn conv2d_batchnorm_out_dtype(&self) -> DType {
        if self.gemm_math() == GemmMath::Bf16 { DType::BF16 } else { DType::F32 }
    }
}
