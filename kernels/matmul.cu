// Batched matmul: C[b] (m x n) = op(A[b]) (m x k) . op(B[b]) (k x n), row-major, contiguous.
// With trans_a, A[b] is stored (k x m); with trans_b, B[b] is stored (n x k).
// Twin of src/backend/cpu/matmul.rs. The main loop is in gemm_tile.cuh.
//
// Grid: x = ceil(m / TM) row tiles, y = ceil(n / TN) column tiles (TcTile; 64 x 64 for SIMT),
// z = batch * splits.
// With splits > 1 (split-K for small outputs with a long k), split s stores its partial product
// at part + s * split_stride and the last piece of each tile adds the pieces in order into out
// (SplitK, gemm_tile.cuh; `arrivals`: one counter per tile, all 0).
#include "gemm_tile.cuh"

// Any shape, element by element: both operands are StridedOperands (gemm_tile.cuh). The 64 x 64
// tiles' loader where the shape does not fit MatmulChunkLoader.
template <bool TA, bool TB>
struct MatmulLoader {
    static constexpr bool A_K_FAST = !TA;
    static constexpr bool B_K_FAST = TB;
    static constexpr bool A_VEC = false, B_VEC = false;
    static constexpr bool A_MN = false, B_MN = false;
    const float* A;
    const float* B;
    int m, n;
    i64 k;
    // k is an `int` inside one split (the Rust side checks k < 2^31).
    struct Thread {
        Thread() = default;
        StridedOperand<A_K_FAST, BM> a;
        StridedOperand<B_K_FAST, BN> b;
        // A (m x k) is stored k x m with TA; B (k x n) is stored n x k with TB.
        DEVM Thread(const MatmulLoader& l, int M, int N, int m0, int n0, i64 k0, i64 k1)
            : a(l.A, TA ? 1 : l.k, TA ? l.m : 1, m0, M, k0, k1), b(l.B, TB ? l.k : 1, TB ? 1 : l.n, n0, N, k0, k1) {}
        DEVM void addr(const float** pa, const float** pb) {
            a.addr(pa);
            b.addr(pb);
        }
    };
};

// Every copy 16 bytes, for a k that is a multiple of BK (whole pieces: one k test per piece)
// and rows 16-byte aligned: the 128-row tiles, and 64 x 64 where the Rust side finds the shape
// fits (the _chunks_ kernels). An operand with k contiguous (A without TA, B with TB) moves 4
// consecutive k of one row per copy (tile_coord, TcTile::at); the other is MN-major (A_MN,
// B_MN): 4 consecutive rows at one k (chunk_coord, TcTile::mn_at), for m (TA) or n (without
// TB) a multiple of 4, so a chunk is inside [0, M) or [0, N) as a whole. (Copying a transposed
// operand 4 bytes at a time took 10-14 instructions per MMA on 128 x 128 against 8 for the plain
// product.)
template <bool TA, bool TB>
struct MatmulChunkLoader {
    static constexpr bool A_K_FAST = !TA, B_K_FAST = TB;
    static constexpr bool A_VEC = A_K_FAST, B_VEC = B_K_FAST;
    static constexpr bool A_MN = TA, B_MN = !TB;
    const float* A;
    const float* B;
    int m, n;
    i64 k;
    // One operand's copies: a pointer at this thread's chunk of the next piece (per piece for
    // K_FAST, whose pieces are 64 rows of ld apart; one for MN-major, whose pieces share their k
    // row and sit 64 elements on) and whether the piece's row or rows are inside [0, limit).
    template <bool K_FAST, int PIECES, int WIDTH>
    struct Operand {
        static constexpr int PTRS = K_FAST ? PIECES : 1;
        const float* p[PTRS];
        bool ok[PIECES];
        i64 step;  // one piece along k
        // Element (mn, kk) at P[mn * ld + kk] (K_FAST, ld = K) or P[kk * ld + mn] (ld = M or N).
        DEVM Operand(const float* P, i64 ld, int mn0, int limit, i64 k0) {
            int mn, kk;
            if (K_FAST) tile_coord<true, BM>(threadIdx.x, 0, mn, kk);
            else chunk_coord(threadIdx.x, mn, kk);
            step = K_FAST ? BK : BK * ld;
#pragma unroll
            for (int i = 0; i < PIECES; ++i) {
                const int row = mn0 + i * BM + mn;
                ok[i] = row < limit;
                if (K_FAST) p[i] = P + (ok[i] ? row * ld : 0) + k0 + kk;
            }
            if (!K_FAST) p[0] = P + (k0 + kk) * ld + mn0 + mn;
        }
        template <class T>
        DEVM void issue(sptr stage, int kb, bool kin) {
#pragma unroll
            for (int i = 0; i < PIECES; ++i) {
                if (K_FAST) issue_kchunk<T>(stage, i * BM, kb * BK, p[i], kin && ok[i]);
                else issue_mnchunk<T, WIDTH>(stage, i * BM, kb * BK, p[0] + i * BM, kin && ok[i]);
            }
#pragma unroll
            for (int i = 0; i < PTRS; ++i) p[i] += step;
        }
    };
    template <class T>
    struct Tile {
        Operand<!TA, T::MB, T::TM> a;
        Operand<TB, T::NB, T::TN> b;
        int k, k1;
        // A (m x k) is stored k x m with TA; B (k x n) is stored n x k with TB.
        DEVM Tile(const MatmulChunkLoader& l, int M, int N, int m0, int n0, i64 k0, i64 k1_)
            : a(l.A, TA ? l.m : l.k, m0, M, k0), b(l.B, TB ? l.k : l.n, n0, N, k0), k((int)k0), k1((int)k1_) {}
        DEVM void issue(const MatmulChunkLoader&, sptr sa, sptr sb) {
#pragma unroll
            for (int kb = 0; kb < T::KB; ++kb) {
                const bool kin = k < k1;
                a.template issue<T>(sa, kb, kin);
                b.template issue<T>(sb, kb, kin);
                k += BK;
            }
        }
    };
};

// The loader of a block tile: the 128-row tiles (and the _chunks_ kernels) take the chunk
// loader, 64 x 64 the element-wise one.
template <class TILE, bool TA, bool TB, bool CHUNKS = true>
struct MatmulLoaderOf {
    typedef MatmulChunkLoader<TA, TB> L;
};
template <bool TA, bool TB>
struct MatmulLoaderOf<Tile64, TA, TB, false> {
    typedef MatmulLoader<TA, TB> L;
};

template <int MATH, class TILE, bool CHUNKS, bool TA, bool TB>
DEV void matmul_block(typename SmemOf<MATH, TILE>::T& s, const float* a, const float* b, float* c, int m, int n, i64 k, i64 k0,
                      i64 k1, SplitK split) {
    typedef typename MatmulLoaderOf<TILE, TA, TB, CHUNKS>::L L;
    gemm_block<L, MATH>(s, L{a, b, m, n, k}, m, n, k0, k1, c, DenseRows{n}, split, MATH == GEMM_BF16);
}

template <int MATH, class TILE, bool CHUNKS>
DEV void matmul_impl(const float* a, const float* b, float* out, float* part, i64 split_stride, int m, int n, i64 k, int ta,
                     int tb, int splits, int* arrivals) {
    auto& s = gemm_smem<typename SmemOf<MATH, TILE>::T>();
    const int z = blockIdx.z;
    const int bi = z / splits, sp = z % splits;
    i64 k0, k1;
    split_range(k, splits, sp, k0, k1);
    const float* ab = a + (i64)bi * m * k;
    const float* bb = b + (i64)bi * k * n;
    const i64 at = (i64)bi * m * n;
    float* c = out + at;
    const SplitK split{out, TILE::SPLITS ? part : nullptr, split_stride, splits, 1, arrivals};
    if (!ta && !tb) matmul_block<MATH, TILE, CHUNKS, false, false>(s, ab, bb, c, m, n, k, k0, k1, split);
    else if (ta && !tb) matmul_block<MATH, TILE, CHUNKS, true, false>(s, ab, bb, c, m, n, k, k0, k1, split);
    else if (!ta && tb) matmul_block<MATH, TILE, CHUNKS, false, true>(s, ab, bb, c, m, n, k, k0, k1, split);
    else matmul_block<MATH, TILE, CHUNKS, true, true>(s, ab, bb, c, m, n, k, k0, k1, split);
}

// MIN_BLOCKS: the blocks per SM the kernel's registers must allow (__launch_bounds__). Left
// free (0), ptxas fitted the 64 x 64 chunk kernels into 64 registers and spilled the TF32 one;
// 2 lets them have 128, and 64 x 64 keeps its 2 blocks per SM.
#define MATMUL_KERNEL(name, MATH, TILE, CHUNKS, MIN_BLOCKS)                                                         \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, MIN_BLOCKS)                                          \
        name(const float* a, const float* b, float* out, float* part, i64 split_stride, int m, int n, i64 k, int ta, \
             int tb, int splits, int* arrivals) {                                                                    \
        matmul_impl<MATH, TILE, CHUNKS>(a, b, out, part, split_stride, m, n, k, ta, tb, splits, arrivals);          \
    }

// Exact FP32 (SIMT) path: the default, used for parity with the CPU reference.
MATMUL_KERNEL(matmul_fwd_f32, GEMM_SIMT, Tile64, false, 0)
// TF32 tensor-core path (opt-in): about 1e-3 relative error, like PyTorch's allow_tf32. One
// kernel per block tile (gemm_tile.cuh, TcTile), and 64 x 64 twice: element by element for
// any shape, in 16-byte chunks (_chunks_) for the shapes MatmulChunkLoader takes.
MATMUL_KERNEL(matmul_tc_fwd_f32, GEMM_TF32, Tile64, false, 0)
MATMUL_KERNEL(matmul_tc_chunks_fwd_f32, GEMM_TF32, Tile64, true, 2)
MATMUL_KERNEL(matmul_tc_m128n128_fwd_f32, GEMM_TF32, Tile128, true, 0)
MATMUL_KERNEL(matmul_tc_m128n64_fwd_f32, GEMM_TF32, Tile128x64, true, 0)
// BF16 tensor-core path (precision = "bf16"): bf16 operands, FP32 accumulation.
MATMUL_KERNEL(matmul_fwd_bf16, GEMM_BF16, Tile64, false, 0)
MATMUL_KERNEL(matmul_chunks_fwd_bf16, GEMM_BF16, Tile64, true, 2)
MATMUL_KERNEL(matmul_m128n128_fwd_bf16, GEMM_BF16, Tile128, true, 0)
MATMUL_KERNEL(matmul_m128n64_fwd_bf16, GEMM_BF16, Tile128x64, true, 0)
