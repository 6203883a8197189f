// Batched matmul: C[b] (m x n) = op(A[b]) (m x k) . op(B[b]) (k x n), row-major, contiguous.
// With trans_a, A[b] is stored (k x m); with trans_b, B[b] is stored (n x k).
// Twin of src/backend/cpu/matmul.rs. The main loop is in gemm_tile.cuh.
//
// Grid: x = ceil(m / BM) row tiles, y = ceil(n / BN) column tiles, z = batch * splits.
// With splits > 1 (split-K for small outputs with a long k), split s writes its partial product
// to out + s * split_stride and sum_splits_fwd_f32 (elementwise.cu) adds the pieces in order.
#include "gemm_tile.cuh"

template <bool TA, bool TB>
struct MatmulLoader {
    static constexpr bool A_K_FAST = !TA;
    static constexpr bool B_K_FAST = TB;
    const float* A;
    const float* B;
    int m, n;
    i64 k;
    DEVM float a(int row, i64 kk) const { return TA ? A[kk * m + row] : A[(i64)row * k + kk]; }
    DEVM float b(i64 kk, int col) const { return TB ? B[(i64)col * k + kk] : B[kk * n + col]; }
};

template <bool TC>
DEV void matmul_impl(const float* a, const float* b, float* out, i64 split_stride, int m, int n, i64 k, int ta,
                     int tb, int splits) {
    __shared__ GemmSmem s;
    const int z = blockIdx.z;
    const int bi = z / splits, sp = z % splits;
    i64 k0, k1;
    split_range(k, splits, sp, k0, k1);
    const float* ab = a + (i64)bi * m * k;
    const float* bb = b + (i64)bi * k * n;
    float* c = out + (i64)sp * split_stride + (i64)bi * m * n;
    if (!ta && !tb) gemm_block<MatmulLoader<false, false>, TC>(s, MatmulLoader<false, false>{ab, bb, m, n, k}, m, n, k0, k1, c, n);
    else if (ta && !tb) gemm_block<MatmulLoader<true, false>, TC>(s, MatmulLoader<true, false>{ab, bb, m, n, k}, m, n, k0, k1, c, n);
    else if (!ta && tb) gemm_block<MatmulLoader<false, true>, TC>(s, MatmulLoader<false, true>{ab, bb, m, n, k}, m, n, k0, k1, c, n);
    else gemm_block<MatmulLoader<true, true>, TC>(s, MatmulLoader<true, true>{ab, bb, m, n, k}, m, n, k0, k1, c, n);
}

// Exact FP32 (SIMT) path: the default, used for parity with the CPU reference.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    matmul_fwd_f32(const float* a, const float* b, float* out, i64 split_stride, int m, int n, i64 k, int ta,
                   int tb, int splits) {
    matmul_impl<false>(a, b, out, split_stride, m, n, k, ta, tb, splits);
}

// TF32 tensor-core path (opt-in): about 1e-3 relative error, like PyTorch's allow_tf32.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    matmul_tc_fwd_f32(const float* a, const float* b, float* out, i64 split_stride, int m, int n, i64 k, int ta,
                      int tb, int splits) {
    matmul_impl<true>(a, b, out, split_stride, m, n, k, ta, tb, splits);
}
