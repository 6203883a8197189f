// The tiled GEMM main loop shared by matmul.cu and conv.cu (the convolutions are implicit GEMMs:
// only the operand loaders differ).
//
// One block computes a BM x BN tile of C = A (M x K) . B (K x N) over the k range [k0, k1):
// 256 threads, BK-deep shared-memory tiles, the next tile prefetched into registers while the
// current one is multiplied. Two inner kernels:
// - SIMT (exact FP32, the default): each thread owns a 4 x 4 block of outputs (rows 4 ty + r,
//   columns 4 tx + c), reads its 4 + 4 operands per k step as two 16-byte shared loads, and adds
//   the products in k order with fmaf, so the result is deterministic and as accurate as a plain
//   dot product.
// - TF32 tensor cores (opt-in): mma.sync m16n8k8 TF32 with FP32 accumulation; 8 warps in a
//   2 x 4 layout, each warp a 32 x 16 sub-tile.
// - BF16 tensor cores (precision = "bf16"): mma.sync m16n8k16 BF16 with FP32 accumulation, the
//   same warp layout and epilogue; operands are rounded to bf16 (ties to even) as they are
//   stored to shared memory, so the kernel alone gives bf16-operand semantics.
// The math is a template argument (GEMM_SIMT, GEMM_TF32, GEMM_BF16).
//
// A loader is a struct with
//   static constexpr bool A_K_FAST / B_K_FAST: consecutive k are adjacent in memory for A / B
//     (picks the thread-to-element map that makes tile loads coalesced, see tile_coord);
//   a type Thread, made once per thread and block by Thread(loader, M, N, m0, n0, k0, k1), whose
//     load(ra, rb) fills this thread's 4 + 4 elements of the next BK-deep tile pair (zeros outside
//     [0, M) x [k0, k1) and [k0, k1) x [0, N), and for padding). Tiles are asked for in order,
//     so a Thread may keep per-row tables and advance its k indices incrementally: the
//     convolution loaders do, and make no division in the main loop.
// The matmul loaders' Thread is two StridedOperands.
#pragma once
#include "common.cuh"

#define BM 64
#define BN 64
#define BK 16
#define GEMM_THREADS 256
// Row padding of the k-major shared tiles: a stride of 72 floats (8 mod 32 banks) keeps both
// the SIMT reads and the mma fragment reads free of bank conflicts.
#define SPAD 8

#define GEMM_SIMT 0
#define GEMM_TF32 1
#define GEMM_BF16 2

struct __align__(16) GemmSmem {
    float a[BK][BM + SPAD];
    float b[BK][BN + SPAD];
};

DEV u32 to_tf32(float f) {
#ifdef SSL_EMU  // host emulation for tests (tests/emu/cuda_emu.h)
    return emu_tf32(f);
#else
    u32 r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(f));
    return r;
#endif
}

DEV void mma_tf32(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#ifdef SSL_EMU
    emu_mma_tf32(c, a0, a1, a2, a3, b0, b1);
#elif __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

// mma.sync m16n8k16 BF16, FP32 accumulation. Fragments (PTX ISA, m16n8k16 .bf16), g = lane / 4,
// t = lane % 4, each register two bf16 with the lower k in the low half:
//   A 16x16: a0 (g, 2t..2t+1), a1 (g + 8, 2t..), a2 (g, 2t + 8..), a3 (g + 8, 2t + 8..)
//   B 16x8:  b0 (2t..2t+1, g), b1 (2t + 8.., g)
//   C 16x8:  as m16n8k8.
DEV void mma_bf16(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#ifdef SSL_EMU
    emu_mma_bf16(c, a0, a1, a2, a3, b0, b1);
#elif __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

// Two floats already rounded to bf16 as one register: `lo` (the lower k) in the low half.
DEV u32 pack_bf16(float lo, float hi) {
    return ((u32)__float_as_int(hi) & 0xffff0000u) | ((u32)__float_as_int(lo) >> 16);
}

// Element r (0..3) of this thread's share of a BM x BK (A) or BK x BN (B) tile, as
// (row-or-col index within the tile, k index within the tile).
template <bool K_FAST, int W>
DEV void tile_coord(int tid, int r, int& mn, int& kk) {
    const int e = tid + r * GEMM_THREADS;
    if (K_FAST) {
        kk = e % BK;
        mn = e / BK;
    } else {
        mn = e % W;
        kk = e / W;
    }
}

// One operand whose element (mn, k) is P[mn * mn_stride + k * k_stride] (a row-major matrix or
// its transpose): this thread's 4 elements of each tile, as pointers advanced by BK * k_stride
// per tile. The matmul loaders use one for A and one for B.
template <bool K_FAST, int W>
struct StridedOperand {
    const float* cur[4];  // null outside [0, limit)
    int k[4], k1;
    i64 step;
    DEVM StridedOperand(const float* P, i64 mn_stride, i64 k_stride, int mn0, int limit, i64 k0, i64 k1_) {
        step = BK * k_stride;
        k1 = (int)k1_;
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            int i, kk;
            tile_coord<K_FAST, W>(threadIdx.x, r, i, kk);
            k[r] = (int)k0 + kk;
            cur[r] = mn0 + i < limit ? P + (i64)(mn0 + i) * mn_stride + (i64)k[r] * k_stride : nullptr;
        }
    }
    DEVM void load(float* v) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            v[r] = (cur[r] && k[r] < k1) ? *cur[r] : 0.0f;
            if (cur[r]) cur[r] += step;
            k[r] += BK;
        }
    }
};

// The tensor-core paths store operands already rounded (to TF32 or bf16, as float bit
// patterns), so each element is converted once per tile rather than once per warp that reads it.
template <int MATH>
DEV float stored(float v) {
    if (MATH == GEMM_TF32) return __int_as_float((int)to_tf32(v));
    if (MATH == GEMM_BF16) return round_bf16f(v);
    return v;
}

template <class L, int MATH>
DEV void store_tiles(GemmSmem& s, const float* ra, const float* rb) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        int i, kk;
        tile_coord<L::A_K_FAST, BM>(tid, r, i, kk);
        s.a[kk][i] = stored<MATH>(ra[r]);
        int j, kb;
        tile_coord<L::B_K_FAST, BN>(tid, r, j, kb);
        s.b[kb][j] = stored<MATH>(rb[r]);
    }
}

DEV u32 tf32_bits(float f) { return (u32)__float_as_int(f); }

// `s` is the kernel's one __shared__ GemmSmem (declared in the kernel, so that several
// instantiations in one kernel share it).
// C[out_row(row) + col] = the (row, col) element of the product over k in [k0, k1), for the tile at
// (row blockIdx.x * BM, column blockIdx.y * BN). Must be reached by all GEMM_THREADS threads of the block.
// Where output row `row` starts in C: row * ldc for a dense matrix. The strided convolution's
// backward-data (one GEMM per stride phase) scatters its rows with a mapper of its own.
struct DenseRows {
    i64 ldc;
    DEVM i64 operator()(int row) const { return (i64)row * ldc; }
};

// `round_out`: the results are rounded to bf16 as they are stored (precision = "bf16" without
// split-K; with it, the split sum rounds).
template <class L, int MATH, class Rows = DenseRows>
DEV void gemm_block(GemmSmem& s, const L& ld, int M, int N, i64 k0, i64 k1, float* C, Rows out_row, bool round_out = false) {
    const int tid = threadIdx.x;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;

    // SIMT: 4 x 4 outputs per thread. Tensor cores: 2 (m16) x 2 (n8) mma tiles of 4 per thread.
    constexpr bool TC = MATH != GEMM_SIMT;
    float acc[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) acc[i] = 0.0f;

    float ra[4], rb[4];
    typename L::Thread th(ld, M, N, m0, n0, k0, k1);
    if (k0 < k1) th.load(ra, rb);
    for (i64 kt = k0; kt < k1; kt += BK) {
        __syncthreads();  // everyone is done reading the previous tile
        store_tiles<L, MATH>(s, ra, rb);
        __syncthreads();
        if (kt + BK < k1) th.load(ra, rb);
        if (!TC) {
            const int ty = tid / 16, tx = tid % 16;
#pragma unroll
            for (int kk = 0; kk < BK; ++kk) {
                // Rows of 72 floats (288 bytes) keep every 4-float group 16-byte aligned.
                const float4 a4 = *reinterpret_cast<const float4*>(&s.a[kk][4 * ty]);
                const float4 b4 = *reinterpret_cast<const float4*>(&s.b[kk][4 * tx]);
                const float av[4] = {a4.x, a4.y, a4.z, a4.w};
                const float bv[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
                for (int r = 0; r < 4; ++r)
#pragma unroll
                    for (int c = 0; c < 4; ++c) acc[r * 4 + c] = fmaf(av[r], bv[c], acc[r * 4 + c]);
            }
        } else if (MATH == GEMM_BF16) {
            // One k16 step covers the whole BK = 16 tile.
            const int warp = tid / 32, lane = tid % 32;
            const int g = lane / 4, t = lane % 4;
            const int wm = (warp / 4) * 32, wn = (warp % 4) * 16;
            u32 af[2][4], bf[2][2];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const int r0 = wm + mt * 16 + g;
                af[mt][0] = pack_bf16(s.a[2 * t][r0], s.a[2 * t + 1][r0]);
                af[mt][1] = pack_bf16(s.a[2 * t][r0 + 8], s.a[2 * t + 1][r0 + 8]);
                af[mt][2] = pack_bf16(s.a[2 * t + 8][r0], s.a[2 * t + 9][r0]);
                af[mt][3] = pack_bf16(s.a[2 * t + 8][r0 + 8], s.a[2 * t + 9][r0 + 8]);
            }
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                const int c0 = wn + nt * 8 + g;
                bf[nt][0] = pack_bf16(s.b[2 * t][c0], s.b[2 * t + 1][c0]);
                bf[nt][1] = pack_bf16(s.b[2 * t + 8][c0], s.b[2 * t + 9][c0]);
            }
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                for (int nt = 0; nt < 2; ++nt)
                    mma_bf16(&acc[(mt * 2 + nt) * 4], af[mt][0], af[mt][1], af[mt][2], af[mt][3], bf[nt][0], bf[nt][1]);
        } else {
            const int warp = tid / 32, lane = tid % 32;
            const int g = lane / 4, t = lane % 4;
            const int wm = (warp / 4) * 32, wn = (warp % 4) * 16;
#pragma unroll
            for (int ks = 0; ks < BK; ks += 8) {
                u32 af[2][4], bf[2][2];
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    const int rb0 = wm + mt * 16;
                    af[mt][0] = tf32_bits(s.a[ks + t][rb0 + g]);
                    af[mt][1] = tf32_bits(s.a[ks + t][rb0 + g + 8]);
                    af[mt][2] = tf32_bits(s.a[ks + t + 4][rb0 + g]);
                    af[mt][3] = tf32_bits(s.a[ks + t + 4][rb0 + g + 8]);
                }
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) {
                    const int cb = wn + nt * 8;
                    bf[nt][0] = tf32_bits(s.b[ks + t][cb + g]);
                    bf[nt][1] = tf32_bits(s.b[ks + t + 4][cb + g]);
                }
#pragma unroll
                for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                    for (int nt = 0; nt < 2; ++nt)
                        mma_tf32(&acc[(mt * 2 + nt) * 4], af[mt][0], af[mt][1], af[mt][2], af[mt][3], bf[nt][0],
                                 bf[nt][1]);
            }
        }
    }

    // Epilogue: every (row < M, col < N) of the tile is written, zeros when k0 >= k1.
    if (!TC) {
        const int ty = tid / 16, tx = tid % 16;
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int row = m0 + 4 * ty + r;
            if (row >= M) continue;
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int col = n0 + 4 * tx + c;
                if (col < N) C[out_row(row) + col] = round_out ? round_bf16f(acc[r * 4 + c]) : acc[r * 4 + c];
            }
        }
    } else {
        const int warp = tid / 32, lane = tid % 32;
        const int g = lane / 4, t = lane % 4;
        const int wm = (warp / 4) * 32, wn = (warp % 4) * 16;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int row = m0 + wm + mt * 16 + g + (e >= 2 ? 8 : 0);
                    const int col = n0 + wn + nt * 8 + 2 * t + (e & 1);
                    const float v = acc[(mt * 2 + nt) * 4 + e];
                    if (row < M && col < N) C[out_row(row) + col] = round_out ? round_bf16f(v) : v;
                }
    }
}

// The k range of split `s` out of `splits`: pieces of `per` (a multiple of BK) elements. In
// 32-bit arithmetic (the Rust side checks K < 2^31): a 64-bit division is a subroutine call.
DEV void split_range(i64 K, int splits, int s, i64& k0, i64& k1) {
    const int k = (int)K;
    int per = (k + splits - 1) / splits;
    per = (per + BK - 1) / BK * BK;
    const int lo = s * per < k ? s * per : k;
    k0 = lo;
    k1 = lo + per < k ? lo + per : k;
}
