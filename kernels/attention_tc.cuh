// Flash attention on tensor cores, FlashAttention-2's structure: the device code of the
// attention_tc_* (TF32) and attention_bf16_* kernels in attention.cu. Same contract as the exact
// kernels there (q [bh, tq, d], k and v [bh, tk, d], lse the natural log-sum-exp per query row).
//
// - A block is NW warps; each warp owns 16 rows of the block's own side (queries in the forward
//   and dq passes, keys in dk/dv) and keeps their outputs in mma accumulators. The other side
//   streams through shared tiles of BT rows, loaded with cp.async (16 bytes per copy when
//   d % 4 == 0).
// - Every tile is [rows][DM + 4] floats: rows 16-byte aligned for cp.async and ldmatrix, the 8
//   rows of an ldmatrix phase on distinct 4-bank groups ((DM + 4) mod 32 = 4), and the scalar
//   reads of flash_pv conflict-free (rows 2t and 2t + 1, 8 columns: 8t + g).
// - Two products per step (flash_qk, ldmatrix-fed): scores q k^T, and in the backward passes
//   dout v^T. MATH picks TF32 m16n8k8 or BF16 m16n8k16 for these; under precision bf16 their
//   operands are bf16 values already (the tape's rounding points), so BF16 loses nothing.
// - The probabilities then multiply a tile (flash_pv: p v, ds k, p^T dout, ds^T q) straight from
//   the accumulators, in TF32. Softmax stays FP32 under bf16 (as the CPU reference keeps it), so
//   there the probabilities go in as two TF32 parts (see flash_pv).
// - Online softmax per tile (one rescale per tile, not per key); row maxima and sums over the
//   4 lanes that share a row by shuffles. No atomics: dk and dv are summed per key block.
#pragma once
#include "mma.cuh"

#define ATT_MATH_TF32 1
#define ATT_MATH_BF16 2

// One shared tile of ROWS rows of DM floats (+ 4 padding), 16-byte aligned.
template <int DM, int ROWS>
struct __align__(16) FlashTile {
    float r[ROWS][DM + 4];
};

// Issues the cp.asyncs that fill `tile` with rows [r0, r0 + ROWS) of a [total][d] slice; rows
// past `total` and columns past d are zeros. Commits nothing.
template <int DM, int ROWS>
DEV void flash_load(FlashTile<DM, ROWS>& tile, const float* src, i64 r0, int total, int d) {
    if ((d & 3) == 0) {
        for (int e = threadIdx.x; e < ROWS * (DM / 4); e += blockDim.x) {
            const int row = e / (DM / 4), c = (e % (DM / 4)) * 4;
            float* dst = &tile.r[row][c];
            if (r0 + row < total && c < d) {
                cp_async_f32x4(dst, src + (r0 + row) * d + c);
            } else {
                dst[0] = dst[1] = dst[2] = dst[3] = 0.0f;
            }
        }
    } else {
        for (int e = threadIdx.x; e < ROWS * DM; e += blockDim.x) {
            const int row = e / DM, c = e % DM;
            cp_async_f32(&tile.r[row][c], (r0 + row < total && c < d) ? src + (r0 + row) * d + c : nullptr);
        }
    }
}

// acc[j] += A . B^T over the head dim, for one warp: A is the 16 rows at `a` (the warp's own),
// B the 8 NT rows of a streamed tile; acc[j] is the C fragment of B rows 8j .. 8j + 7. The
// element maps are mma_stage's (gemm_tile.cuh): ldmatrix gives A(g, t), A(g + 8, t),
// A(g, t + 4), A(g + 8, t + 4) per k8 step and B(t, g), B(t + 4, g), ... ; BF16 pairs physical k
// (t, t + 4) as logical (2t, 2t + 1) on both sides, which permutes the sum's terms only.
template <int MATH, int DM, int NT>
DEV void flash_qk(float (*acc)[4], const float (*a)[DM + 4], const float (*b)[DM + 4], int d) {
    const int lane = threadIdx.x % 32, li = lane % 8, lj = lane / 8;
#pragma unroll
    for (int k0 = 0; k0 < DM; k0 += 16) {
        if (k0 < d) {  // columns past d are zeros
            u32 ar[2][4];
#pragma unroll
            for (int h = 0; h < 2; ++h) ldmatrix_x4(ar[h], &a[(lj & 1) * 8 + li][k0 + h * 8 + (lj >> 1) * 4]);
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                u32 bq[4];
                ldmatrix_x4(bq, &b[j * 8 + li][k0 + 4 * lj]);
                if (MATH == ATT_MATH_BF16) {
                    mma_bf16(acc[j], pack_bf16x2(word_as_float(ar[0][0]), word_as_float(ar[0][2])),
                             pack_bf16x2(word_as_float(ar[0][1]), word_as_float(ar[0][3])),
                             pack_bf16x2(word_as_float(ar[1][0]), word_as_float(ar[1][2])),
                             pack_bf16x2(word_as_float(ar[1][1]), word_as_float(ar[1][3])),
                             pack_bf16x2(word_as_float(bq[0]), word_as_float(bq[1])),
                             pack_bf16x2(word_as_float(bq[2]), word_as_float(bq[3])));
                } else {
#pragma unroll
                    for (int h = 0; h < 2; ++h)
                        mma_tf32(acc[j], to_tf32(word_as_float(ar[h][0])), to_tf32(word_as_float(ar[h][1])),
                                 to_tf32(word_as_float(ar[h][2])), to_tf32(word_as_float(ar[h][3])),
                                 to_tf32(word_as_float(bq[2 * h])), to_tf32(word_as_float(bq[2 * h + 1])));
                }
            }
        }
    }
}

// acc[n] += P . B for one warp, TF32: P is 16 x 8 NT in accumulator layout (p[j] the C
// fragment of its columns 8j .. 8j + 7), B a tile whose row i is P's column i; acc[n] is the C
// fragment of output columns 8n .. 8n + 7. A thread holds P's columns 2t and 2t + 1, used as
// the fragment's logical k t and t + 4 (a0 = c0, a1 = c2, a2 = c1, a3 = c3), so B is read at
// rows 8j + 2t and 8j + 2t + 1: the same pairing on both sides.
// Under bf16 (MATH) P is split into two TF32 parts, P = hi + lo, multiplied in turn: B holds
// bf16 values (exact in TF32), so the products are as good as FP32. One TF32 rounding of P
// (2^-11) would come out near 1e-3 in dq, where ds's terms cancel: the bf16 tolerance itself.
template <int MATH, int DM, int NT>
DEV void flash_pv(float (*acc)[4], const float (*p)[4], const float (*b)[DM + 4], int d) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    constexpr int PARTS = MATH == ATT_MATH_BF16 ? 2 : 1;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        float rest[4] = {p[j][0], p[j][2], p[j][1], p[j][3]};  // a0 .. a3
#pragma unroll
        for (int part = 0; part < PARTS; ++part) {
            u32 a[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                a[e] = to_tf32(rest[e]);
                rest[e] -= word_as_float(a[e]);
            }
#pragma unroll
            for (int n = 0; n < DM / 8; ++n)
                if (n * 8 < d)
                    mma_tf32(acc[n], a[0], a[1], a[2], a[3], to_tf32(b[8 * j + 2 * t][8 * n + g]),
                             to_tf32(b[8 * j + 2 * t + 1][8 * n + g]));
        }
    }
}

template <int N>
DEV void flash_zero(float (*acc)[4]) {
#pragma unroll
    for (int j = 0; j < N; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
}

// Reductions over the 4 lanes (t = 0..3) that hold one accumulator row.
DEV float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
DEV float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Waits for this thread's cp.asyncs, then for every thread's: the tiles are ready to read.
DEV void flash_land() {
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
}

// The two products of a backward step, for one warp: s = a . b^T (scores) and dp = g . v^T.
template <int MATH, int DM, int NT>
DEV void flash_scores_dp(float (*s)[4], float (*dp)[4], const float (*a)[DM + 4], const float (*b)[DM + 4],
                         const float (*g)[DM + 4], const float (*v)[DM + 4], int d) {
    flash_zero<NT>(s);
    flash_zero<NT>(dp);
    flash_qk<MATH, DM, NT>(s, a, b, d);
    flash_qk<MATH, DM, NT>(dp, g, v, d);
}

// Writes this warp's 16 x DM accumulator rows (row0 .. row0 + 15 of a [total][d] slice), each
// row r scaled by mul[r / 8] (the thread's rows g and g + 8).
template <int DM>
DEV void flash_store(float* dst, const float (*acc)[4], i64 row0, int total, int d, const float* mul) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const i64 row = row0 + g + 8 * h;
        if (row >= total) continue;
#pragma unroll
        for (int n = 0; n < DM / 8; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int c = 8 * n + 2 * t + e;
                if (c < d) dst[row * d + c] = acc[n][2 * h + e] * mul[h];
            }
    }
}

// Forward: o and lse for BQ = 16 NW query rows per block, key tiles of BT.
template <int MATH, int DM, int NW, int BT>
DEV void flash_fwd(const float* q, const float* k, const float* v, float* o, float* lse, int tq, int tk, int d,
                   float scale) {
    constexpr int BQ = 16 * NW, NT = BT / 8;
    __shared__ FlashTile<DM, BQ> qs;
    __shared__ FlashTile<DM, BT> ks;
    __shared__ FlashTile<DM, BT> vs;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = lane % 4;
    const i64 slice = blockIdx.y, q0 = (i64)blockIdx.x * BQ;
    const float* kb = k + slice * tk * d;
    const float* vb = v + slice * tk * d;
    flash_load(qs, q + slice * tq * d, q0, tq, d);

    float acc[DM / 8][4];
    flash_zero<DM / 8>(acc);
    float m[2] = {neg_inf(), neg_inf()}, l[2] = {0.0f, 0.0f};  // per row g, g + 8; l is this lane's part
    for (int kt = 0; kt < tk; kt += BT) {
        __syncthreads();  // every warp is done with the previous tiles
        flash_load(ks, kb, kt, tk, d);
        flash_load(vs, vb, kt, tk, d);
        flash_land();
        float s[NT][4];
        flash_zero<NT>(s);
        flash_qk<MATH, DM, NT>(s, &qs.r[warp * 16], ks.r, d);
        float mt[2] = {m[0], m[1]};
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const bool key = kt + 8 * j + 2 * t + (e & 1) < tk;
                s[j][e] = key ? s[j][e] * scale : neg_inf();
                mt[e >> 1] = fmaxf(mt[e >> 1], s[j][e]);
            }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            mt[h] = quad_max(mt[h]);  // finite: key kt is in range
            const float corr = expf(m[h] - mt[h]);  // 0 on the first tile (m = -inf)
            l[h] *= corr;
            m[h] = mt[h];
#pragma unroll
            for (int n = 0; n < DM / 8; ++n) {
                acc[n][2 * h] *= corr;
                acc[n][2 * h + 1] *= corr;
            }
        }
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[j][e] = expf(s[j][e] - m[e >> 1]);
                l[e >> 1] += s[j][e];
            }
        flash_pv<MATH, DM, NT>(acc, s, vs.r, d);
    }
    const i64 row0 = q0 + warp * 16;
    float inv[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        l[h] = quad_sum(l[h]);
        // l >= 1 (the row maximum's own term), so the fast division is within 2 ulp; the IEEE
        // one is a call whose stack frame spills.
        inv[h] = __fdividef(1.0f, l[h]);
        const i64 row = row0 + lane / 4 + 8 * h;
        if (t == 0 && row < tq) lse[slice * tq + row] = m[h] + logf(l[h]);
    }
    flash_store<DM>(o + slice * tq * d, acc, row0, tq, d, inv);
}

// dq_i = sum_j ds_ij k_j, ds_ij = p_ij (dout_i . v_j - D_i) scale, p_ij = exp(scale q_i . k_j - lse_i).
template <int MATH, int DM, int NW, int BT>
DEV void flash_dq(const float* q, const float* k, const float* v, const float* lse, const float* drow,
                  const float* dout, float* dq, int tq, int tk, int d, float scale) {
    constexpr int BQ = 16 * NW, NT = BT / 8;
    __shared__ FlashTile<DM, BQ> qs;
    __shared__ FlashTile<DM, BQ> gs;
    __shared__ FlashTile<DM, BT> ks;
    __shared__ FlashTile<DM, BT> vs;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = lane % 4;
    const i64 slice = blockIdx.y, q0 = (i64)blockIdx.x * BQ, row0 = q0 + warp * 16;
    flash_load(qs, q + slice * tq * d, q0, tq, d);
    flash_load(gs, dout + slice * tq * d, q0, tq, d);
    float L[2], D[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const i64 row = row0 + lane / 4 + 8 * h;
        L[h] = row < tq ? lse[slice * tq + row] : 0.0f;
        D[h] = row < tq ? drow[slice * tq + row] : 0.0f;
    }
    const float* kb = k + slice * tk * d;
    const float* vb = v + slice * tk * d;

    float acc[DM / 8][4];
    flash_zero<DM / 8>(acc);
    for (int kt = 0; kt < tk; kt += BT) {
        __syncthreads();
        flash_load(ks, kb, kt, tk, d);
        flash_load(vs, vb, kt, tk, d);
        flash_land();
        float s[NT][4], dp[NT][4];
        flash_scores_dp<MATH, DM, NT>(s, dp, &qs.r[warp * 16], ks.r, &gs.r[warp * 16], vs.r, d);
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const bool key = kt + 8 * j + 2 * t + (e & 1) < tk;
                const float p = key ? expf(s[j][e] * scale - L[e >> 1]) : 0.0f;
                s[j][e] = p * (dp[j][e] - D[e >> 1]) * scale;
            }
        flash_pv<MATH, DM, NT>(acc, s, ks.r, d);
    }
    const float one[2] = {1.0f, 1.0f};
    flash_store<DM>(dq + slice * tq * d, acc, row0, tq, d, one);
}

// dv_j = sum_i p_ij dout_i; dk_j = sum_i ds_ij q_i: BK = 16 NW keys per block, query tiles of BT.
template <int MATH, int DM, int NW, int BT>
DEV void flash_dkdv(const float* q, const float* k, const float* v, const float* lse, const float* drow,
                    const float* dout, float* dk, float* dv, int tq, int tk, int d, float scale) {
    constexpr int BK = 16 * NW, NT = BT / 8;
    __shared__ FlashTile<DM, BK> ks;
    __shared__ FlashTile<DM, BK> vs;
    __shared__ FlashTile<DM, BT> qs;
    __shared__ FlashTile<DM, BT> gs;
    __shared__ float ls[BT];
    __shared__ float ds_[BT];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = lane % 4;
    const i64 slice = blockIdx.y, k0 = (i64)blockIdx.x * BK, row0 = k0 + warp * 16;
    flash_load(ks, k + slice * tk * d, k0, tk, d);
    flash_load(vs, v + slice * tk * d, k0, tk, d);
    const float* qb = q + slice * tq * d;
    const float* gb = dout + slice * tq * d;

    float adk[DM / 8][4], adv[DM / 8][4];
    flash_zero<DM / 8>(adk);
    flash_zero<DM / 8>(adv);
    for (int qt = 0; qt < tq; qt += BT) {
        __syncthreads();
        flash_load(qs, qb, qt, tq, d);
        flash_load(gs, gb, qt, tq, d);
        for (int e = threadIdx.x; e < BT; e += blockDim.x) {
            ls[e] = qt + e < tq ? lse[slice * tq + qt + e] : 0.0f;
            ds_[e] = qt + e < tq ? drow[slice * tq + qt + e] : 0.0f;
        }
        flash_land();
        // Transposed scores: rows this warp's keys, columns the tile's queries.
        float s[NT][4], dp[NT][4];
        flash_scores_dp<MATH, DM, NT>(s, dp, &ks.r[warp * 16], qs.r, &vs.r[warp * 16], gs.r, d);
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int c = 8 * j + 2 * t + (e & 1);
                const float p = qt + c < tq ? expf(s[j][e] * scale - ls[c]) : 0.0f;
                s[j][e] = p;
                dp[j][e] = p * (dp[j][e] - ds_[c]) * scale;
            }
        flash_pv<MATH, DM, NT>(adv, s, gs.r, d);
        flash_pv<MATH, DM, NT>(adk, dp, qs.r, d);
    }
    const float one[2] = {1.0f, 1.0f};
    flash_store<DM>(dk + slice * tk * d, adk, row0, tk, d, one);
    flash_store<DM>(dv + slice * tk * d, adv, row0, tk, d, one);
}
