// Scaled dot-product attention, flash style: the score matrix is never stored. Twin of
// src/backend/cpu/attention.rs. q [bh, tq, d], k and v [bh, tk, d], o [bh, tq, d], lse [bh, tq]
// (natural log-sum-exp of each row of scale * q k^T).
//
// The exact FP32 kernels (the default) are simple rather than fast: one thread per query row (forward, dq) or per key row
// (dk, dv; two per key at head dim 128); the rows a block owns live in padded shared memory (stride DM + 1: conflict-free),
// the other side streams through shared-memory tiles that every thread reads by broadcast, and
// each thread accumulates its output row in registers (loops over DM are unrolled, so the
// arrays stay in registers; loops over keys or queries are not). Online softmax, rescaling
// only when the running maximum grows. No atomics: dk and
// dv are gathered per key, so every sum has a fixed order.
//
// Variants: DM = 64 (head dims up to 64) and DM = 128 (`_d128`, head dims up to 128).
// Grid: x = row tiles of the block's own side, y = bh. Block: BQ threads.
//
// The tensor-core kernels (`_tc_`: TF32, `_bf16_`: precision bf16) are at the end of this file;
// their device code is attention_tc.cuh.
#include "attention_tc.cuh"

// Cooperative load of `nrows` rows (of length d, row stride d in global memory) starting at
// global row r0 of a slice with `total` rows, into dst[row * ld + j]; rows past the end are
// zero-filled.
DEV void load_rows(float* dst, int ld, const float* src, i64 r0, int nrows, int total, int d) {
    for (int e = threadIdx.x; e < nrows * d; e += blockDim.x) {
        const int row = e / d, j = e % d;
        dst[row * ld + j] = (r0 + row < total) ? src[(r0 + row) * d + j] : 0.0f;
    }
}

template <int DM, int BQ, int BT>
DEV void attn_fwd(const float* q, const float* k, const float* v, float* o, float* lse, int tq, int tk, int d,
                  float scale) {
    __shared__ float qs[BQ][DM + 1];
    __shared__ float ks[BT][DM];
    __shared__ float vs[BT][DM];
    const int t = threadIdx.x;
    const i64 slice = blockIdx.y;
    const i64 q0 = (i64)blockIdx.x * BQ;
    const int qi = (int)q0 + t;
    const float* qb = q + slice * tq * d;
    const float* kb = k + slice * tk * d;
    const float* vb = v + slice * tk * d;
    load_rows(&qs[0][0], DM + 1, qb, q0, BQ, tq, d);

    float acc[DM];
#pragma unroll
    for (int j = 0; j < DM; ++j) acc[j] = 0.0f;
    float m = neg_inf(), l = 0.0f;

    for (int kt = 0; kt < tk; kt += BT) {
        __syncthreads();
        load_rows(&ks[0][0], DM, kb, kt, BT, tk, d);
        load_rows(&vs[0][0], DM, vb, kt, BT, tk, d);
        __syncthreads();
        const int nk = tk - kt < BT ? tk - kt : BT;
#pragma unroll 1
        for (int jj = 0; jj < nk; ++jj) {
            float dot = 0.0f;
#pragma unroll
            for (int j = 0; j < DM; ++j)
                if (j < d) dot = fmaf(qs[t][j], ks[jj][j], dot);
            const float sc = dot * scale;
            if (sc > m) {  // a new running maximum: rescale what was summed so far
                const float corr = expf(m - sc);  // 0 on the first key (m = -inf)
                l *= corr;
#pragma unroll
                for (int j = 0; j < DM; ++j) acc[j] *= corr;
                m = sc;
            }
            const float p = expf(sc - m);
            l += p;
#pragma unroll
            for (int j = 0; j < DM; ++j)
                if (j < d) acc[j] = fmaf(p, vs[jj][j], acc[j]);
        }
    }
    if (qi < tq) {
        const float inv = 1.0f / l;
        float* orow = o + (slice * tq + qi) * d;
#pragma unroll
        for (int j = 0; j < DM; ++j)
            if (j < d) orow[j] = acc[j] * inv;
        lse[slice * tq + qi] = m + logf(l);
    }
}

// drow[i] = sum_j dout[i, j] * o[i, j] for every query row (FlashAttention-2's D), one thread
// per row.
extern "C" __global__ void attention_rowdot_bwd_f32(const float* o, const float* dout, float* drow, i64 rows, int d) {
    FOR_EACH(r, rows) {
        float s = 0.0f;
        for (int j = 0; j < d; ++j) s = fmaf(dout[r * d + j], o[r * d + j], s);
        drow[r] = s;
    });
}

// dq_i = sum_j ds_ij k_j, ds_ij = p_ij (dout_i . v_j - D_i) scale, p_ij = exp(scale q_i . k_j - lse_i).
template <int DM, int BQ, int BT>
DEV void attn_bwd_dq(const float* q, const float* k, const float* v, const float* lse, const float* drow,
                     const float* dout, float* dq, int tq, int tk, int d, float scale) {
    __shared__ float qs[BQ][DM + 1];
    __shared__ float gs[BQ][DM + 1];
    __shared__ float ks[BT][DM];
    __shared__ float vs[BT][DM];
    const int t = threadIdx.x;
    const i64 slice = blockIdx.y;
    const i64 q0 = (i64)blockIdx.x * BQ;
    const int qi = (int)q0 + t;
    load_rows(&qs[0][0], DM + 1, q + slice * tq * d, q0, BQ, tq, d);
    load_rows(&gs[0][0], DM + 1, dout + slice * tq * d, q0, BQ, tq, d);
    const float L = qi < tq ? lse[slice * tq + qi] : 0.0f;
    const float D = qi < tq ? drow[slice * tq + qi] : 0.0f;
    const float* kb = k + slice * tk * d;
    const float* vb = v + slice * tk * d;

    float acc[DM];
#pragma unroll
    for (int j = 0; j < DM; ++j) acc[j] = 0.0f;

    for (int kt = 0; kt < tk; kt += BT) {
        __syncthreads();
        load_rows(&ks[0][0], DM, kb, kt, BT, tk, d);
        load_rows(&vs[0][0], DM, vb, kt, BT, tk, d);
        __syncthreads();
        const int nk = tk - kt < BT ? tk - kt : BT;
#pragma unroll 1
        for (int jj = 0; jj < nk; ++jj) {
            {
                float sd = 0.0f, dp = 0.0f;
#pragma unroll
                for (int j = 0; j < DM; ++j)
                    if (j < d) {
                        sd = fmaf(qs[t][j], ks[jj][j], sd);
                        dp = fmaf(gs[t][j], vs[jj][j], dp);
                    }
                const float p = expf(sd * scale - L);
                const float ds = p * (dp - D) * scale;
#pragma unroll
                for (int j = 0; j < DM; ++j)
                    if (j < d) acc[j] = fmaf(ds, ks[jj][j], acc[j]);
            }
        }
    }
    if (qi < tq) {
        float* row = dq + (slice * tq + qi) * d;
#pragma unroll
        for (int j = 0; j < DM; ++j)
            if (j < d) row[j] = acc[j];
    }
}

// dv_j = sum_i p_ij dout_i; dk_j = sum_i ds_ij q_i. SPLIT threads per key row (each owns
// DM / SPLIT columns of dk and dv: at DM = 128 one thread would hold 256 accumulators and spill),
// queries in tiles. Block: BKEY * SPLIT threads; thread t has key t % BKEY, column part t / BKEY.
template <int DM, int BKEY, int BT, int SPLIT>
DEV void attn_bwd_dkdv(const float* q, const float* k, const float* v, const float* lse, const float* drow,
                       const float* dout, float* dk, float* dv, int tq, int tk, int d, float scale) {
    __shared__ float ks[BKEY][DM + 1];
    __shared__ float vs[BKEY][DM + 1];
    __shared__ float qs[BT][DM];
    __shared__ float gs[BT][DM];
    __shared__ float ls[BT];
    __shared__ float ds_[BT];
    constexpr int DP = DM / SPLIT;  // the columns of dk and dv this thread accumulates
    const int t = threadIdx.x % BKEY, c0 = (threadIdx.x / BKEY) * DP;
    const i64 slice = blockIdx.y;
    const i64 k0 = (i64)blockIdx.x * BKEY;
    const int kj = (int)k0 + t;
    load_rows(&ks[0][0], DM + 1, k + slice * tk * d, k0, BKEY, tk, d);
    load_rows(&vs[0][0], DM + 1, v + slice * tk * d, k0, BKEY, tk, d);
    const float* qb = q + slice * tq * d;
    const float* gb = dout + slice * tq * d;

    float adk[DP], adv[DP];
#pragma unroll
    for (int j = 0; j < DP; ++j) {
        adk[j] = 0.0f;
        adv[j] = 0.0f;
    }

    for (int qt = 0; qt < tq; qt += BT) {
        __syncthreads();
        load_rows(&qs[0][0], DM, qb, qt, BT, tq, d);
        load_rows(&gs[0][0], DM, gb, qt, BT, tq, d);
        for (int e = threadIdx.x; e < BT; e += blockDim.x) {
            ls[e] = qt + e < tq ? lse[slice * tq + qt + e] : 0.0f;
            ds_[e] = qt + e < tq ? drow[slice * tq + qt + e] : 0.0f;
        }
        __syncthreads();
        const int nq = tq - qt < BT ? tq - qt : BT;
#pragma unroll 1
        for (int ii = 0; ii < nq; ++ii) {
            {
                float sd = 0.0f, dp = 0.0f;
#pragma unroll
                for (int j = 0; j < DM; ++j)
                    if (j < d) {
                        sd = fmaf(qs[ii][j], ks[t][j], sd);
                        dp = fmaf(gs[ii][j], vs[t][j], dp);
                    }
                const float p = expf(sd * scale - ls[ii]);
                const float ds = p * (dp - ds_[ii]) * scale;
#pragma unroll
                for (int j = 0; j < DP; ++j)
                    if (c0 + j < d) {
                        adv[j] = fmaf(p, gs[ii][c0 + j], adv[j]);
                        adk[j] = fmaf(ds, qs[ii][c0 + j], adk[j]);
                    }
            }
        }
    }
    if (kj < tk) {
        float* rk = dk + (slice * tk + kj) * d;
        float* rv = dv + (slice * tk + kj) * d;
#pragma unroll
        for (int j = 0; j < DP; ++j)
            if (c0 + j < d) {
                rk[c0 + j] = adk[j];
                rv[c0 + j] = adv[j];
            }
    }
}

// Block sizes: forward and dq use ATT_BQ query rows per block (= threads), dk/dv ATT_BKEY keys.
// The Rust side (src/backend/cuda/attention.rs) uses the same numbers for its grids.
#define ATT64_BQ 64
#define ATT128_BQ 32

// One head-dim variant of the SIMT kernels: NAME_fwd_f32, NAME_dq_bwd_f32 and NAME_dkdv_bwd_f32,
// with BQ query rows (= threads) per block, FWD_BT / BWD_BT keys per streamed tile, and SPLIT
// threads per key in dk/dv.
#define ATTENTION_ENTRIES(NAME, DM, BQ, FWD_BT, BWD_BT, SPLIT)                                              \
    extern "C" __global__ void __launch_bounds__(BQ)                                                         \
        NAME##_fwd_f32(const float* q, const float* k, const float* v, float* o, float* lse, int tq, int tk,  \
                       int d, float scale) {                                                                 \
        attn_fwd<DM, BQ, FWD_BT>(q, k, v, o, lse, tq, tk, d, scale);                                         \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(BQ)                                                         \
        NAME##_dq_bwd_f32(const float* q, const float* k, const float* v, const float* lse, const float* drow, \
                          const float* dout, float* dq, int tq, int tk, int d, float scale) {               \
        attn_bwd_dq<DM, BQ, BWD_BT>(q, k, v, lse, drow, dout, dq, tq, tk, d, scale);                         \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(BQ * SPLIT)                                                 \
        NAME##_dkdv_bwd_f32(const float* q, const float* k, const float* v, const float* lse,               \
                            const float* drow, const float* dout, float* dk, float* dv, int tq, int tk, int d, \
                            float scale) {                                                                   \
        attn_bwd_dkdv<DM, BQ, BWD_BT, SPLIT>(q, k, v, lse, drow, dout, dk, dv, tq, tk, d, scale);            \
    }

// Head dim 128 takes two threads per key in dk/dv (ATT128_DKDV_SPLIT): 128 accumulators each, as
// the 64-wide variant.
#define ATT128_DKDV_SPLIT 2
ATTENTION_ENTRIES(attention, 64, ATT64_BQ, 32, 16, 1)
ATTENTION_ENTRIES(attention_d128, 128, ATT128_BQ, 16, 8, ATT128_DKDV_SPLIT)

// ---- tensor cores (attention_tc.cuh) ---------------------------------------------------------
// Per head-dim variant: warps per block (16 rows each) and the streamed tile's rows, within
// 48 KB of static shared memory. The Rust side uses the same numbers for its grids.
#define FLASH64_NW 4
#define FLASH128_NW 2
// One math and head-dim variant of the flash kernels: NAME_fwd_f32, NAME_dq_bwd_f32 and
// NAME_dkdv_bwd_f32, with NW warps per block and FWD_BT / BWD_BT rows per streamed tile.
#define FLASH_ENTRIES(NAME, DT, MATH, DM, NW, FWD_BT, BWD_BT)                                                    \
    extern "C" __global__ void __launch_bounds__(NW * 32)                                                    \
        NAME##_fwd_##DT(const float* q, const float* k, const float* v, float* o, float* lse, int tq, int tk,  \
                       int d, float scale) {                                                                 \
        flash_fwd<MATH, DM, NW, FWD_BT>(q, k, v, o, lse, tq, tk, d, scale);                                  \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(NW * 32)                                                    \
        NAME##_dq_bwd_##DT(const float* q, const float* k, const float* v, const float* lse, const float* drow, \
                          const float* dout, float* dq, int tq, int tk, int d, float scale) {               \
        flash_dq<MATH, DM, NW, BWD_BT>(q, k, v, lse, drow, dout, dq, tq, tk, d, scale);                      \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(NW * 32)                                                    \
        NAME##_dkdv_bwd_##DT(const float* q, const float* k, const float* v, const float* lse,               \
                            const float* drow, const float* dout, float* dk, float* dv, int tq, int tk, int d, \
                            float scale) {                                                                   \
        flash_dkdv<MATH, DM, NW, BWD_BT>(q, k, v, lse, drow, dout, dk, dv, tq, tk, d, scale);                \
    }

FLASH_ENTRIES(attention_tc, f32, ATT_MATH_TF32, 64, FLASH64_NW, 32, 16)
FLASH_ENTRIES(attention_tc_d128, f32, ATT_MATH_TF32, 128, FLASH128_NW, 16, 8)
FLASH_ENTRIES(attention, bf16, ATT_MATH_BF16, 64, FLASH64_NW, 32, 16)
FLASH_ENTRIES(attention_d128, bf16, ATT_MATH_BF16, 128, FLASH128_NW, 16, 8)
