// Permute, slice and slice-assign: explicit copies, since tensors are always contiguous.
// Twin of src/backend/cpu/layout.rs. One thread per element written.
#include "common.cuh"

#define PERMUTE_MAX_RANK 8

// out_shape: the output's shape; src_stride[a]: the stride in x of output axis a.
struct PermuteDims {
    int rank;
    i64 out_shape[PERMUTE_MAX_RANK];
    i64 src_stride[PERMUTE_MAX_RANK];
};

extern "C" __global__ void permute_fwd_f32(const float* x, float* y, i64 n, PermuteDims d) {
    FOR_EACH(i, n) {
        // In i's type: every extent, stride and source index is below n.
        auto rem = i, src = AS_INDEX(i, 0);
        for (int a = d.rank - 1; a >= 0; --a) {
            const auto s = AS_INDEX(i, d.out_shape[a]);
            src += (rem % s) * AS_INDEX(i, d.src_stride[a]);
            rem /= s;
        }
        y[i] = x[src];
    });
}

// y [outer, len, inner] = x [outer, start..start+len, inner]
extern "C" __global__ void slice_fwd_f32(const float* x, float* y, i64 outer, i64 axis, i64 start, i64 len, i64 inner) {
    const i64 block = len * inner;
    FOR_EACH(i, outer * block) {
        const auto o = i / AS_INDEX(i, block), r = i % AS_INDEX(i, block);
        y[i] = x[(o * axis + start) * inner + r];
    });
}

// dst [outer, start..start+len, inner] = src [outer, len, inner]; the rest of dst is kept.
extern "C" __global__ void slice_assign_fwd_f32(const float* src, float* dst, i64 outer, i64 axis, i64 start, i64 len,
                                                i64 inner) {
    const i64 block = len * inner;
    FOR_EACH(i, outer * block) {
        const auto o = i / AS_INDEX(i, block), r = i % AS_INDEX(i, block);
        dst[(o * axis + start) * inner + r] = src[i];
    });
}
