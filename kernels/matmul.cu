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

// Both operands are OPERANDs (gemm_tile.cuh): StridedOperand, element by element, for the 64 x
// 64 tiles; PieceOperand, a 16-deep piece of k at a time, for the 128-row ones (k a multiple of
// BK: the Rust side gives them nothing else, matmul.rs).
template <bool TA, bool TB, template <bool, int> class OPERAND>
struct MatmulLoader {
    static constexpr bool A_K_FAST = !TA;
    static constexpr bool B_K_FAST = TB;
    static constexpr bool A_VEC = OPERAND<A_K_FAST, BM>::VEC, B_VEC = OPERAND<B_K_FAST, BN>::VEC;
    static constexpr bool A_MN = false, B_MN = false;
    const float* A;
    const float* B;
    int m, n;
    i64 k;
    // k is an `int` inside one split (the Rust side checks k < 2^31).
    struct Thread {
        Thread() = default;
        OPERAND<A_K_FAST, BM> a;
        OPERAND<B_K_FAST, BN> b;
        // A (m x k) is stored k x m with TA; B (k x n) is stored n x k with TB.
        DEVM Thread(const MatmulLoader& l, int M, int N, int m0, int n0, i64 k0, i64 k1)
            : a(l.A, TA ? 1 : l.k, TA ? l.m : 1, m0, M, k0, k1), b(l.B, TB ? l.k : 1, TB ? 1 : l.n, n0, N, k0, k1) {}
        DEVM void addr(const float** pa, const float** pb) {
            a.addr(pa);
            b.addr(pb);
        }
    };
};

// The loader of a block tile: the 128-row tiles take the piece loaders.
template <class TILE, bool TA, bool TB>
struct MatmulLoaderOf {
    typedef MatmulLoader<TA, TB, PieceOperand> L;
};
template <bool TA, bool TB>
struct MatmulLoaderOf<Tile64, TA, TB> {
    typedef MatmulLoader<TA, TB, StridedOperand> L;
};

template <int MATH, class TILE, bool TA, bool TB>
DEV void matmul_block(typename SmemOf<MATH, TILE>::T& s, const float* a, const float* b, float* c, int m, int n, i64 k, i64 k0,
                      i64 k1, SplitK split) {
    typedef typename MatmulLoaderOf<TILE, TA, TB>::L L;
    gemm_block<L, MATH>(s, L{a, b, m, n, k}, m, n, k0, k1, c, DenseRows{n}, split, MATH == GEMM_BF16);
}

template <int MATH, class TILE>
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
    if (!ta && !tb) matmul_block<MATH, TILE, false, false>(s, ab, bb, c, m, n, k, k0, k1, split);
    else if (ta && !tb) matmul_block<MATH, TILE, true, false>(s, ab, bb, c, m, n, k, k0, k1, split);
    else if (!ta && tb) matmul_block<MATH, TILE, false, true>(s, ab, bb, c, m, n, k, k0, k1, split);
    else matmul_block<MATH, TILE, true, true>(s, ab, bb, c, m, n, k, k0, k1, split);
}

#define MATMUL_KERNEL(name, MATH, TILE)                                                                             \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS)                                                      \
        name(const float* a, const float* b, float* out, float* part, i64 split_stride, int m, int n, i64 k, int ta, \
             int tb, int splits, int* arrivals) {                                                                    \
        matmul_impl<MATH, TILE>(a, b, out, part, split_stride, m, n, k, ta, tb, splits, arrivals);                  \
    }

// Exact FP32 (SIMT) path: the default, used for parity with the CPU reference.
MATMUL_KERNEL(matmul_fwd_f32, GEMM_SIMT, Tile64)
// TF32 tensor-core path (opt-in): about 1e-3 relative error, like PyTorch's allow_tf32. One
// kernel per block tile (gemm_tile.cuh, TcTile).
MATMUL_KERNEL(matmul_tc_fwd_f32, GEMM_TF32, Tile64)
MATMUL_KERNEL(matmul_tc_m128n128_fwd_f32, GEMM_TF32, Tile128)
MATMUL_KERNEL(matmul_tc_m128n64_fwd_f32, GEMM_TF32, Tile128x64)
// BF16 tensor-core path (precision = "bf16"): bf16 operands, FP32 accumulation.
MATMUL_KERNEL(matmul_fwd_bf16, GEMM_BF16, Tile64)
MATMUL_KERNEL(matmul_m128n128_fwd_bf16, GEMM_BF16, Tile128)
MATMUL_KERNEL(matmul_m128n64_fwd_bf16, GEMM_BF16, Tile128x64)
