// Permute, slice, slice-assign and the per-row gather with its scatter back: explicit copies,
// since tensors are always contiguous.
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

// A gather index (a float, as the losses' labels) that names a row in 0..l.
DEV bool valid_row(float v, i64 l) { return v >= 0.0f && v < (float)l && v == floorf(v); }

// y [n, k, d] = x [n, idx[n, k], d]; a row whose index is not in 0..l is NaN (the CPU returns an
// error; a kernel cannot). x's offsets run past y's count when l > k: they are 64-bit.
extern "C" __global__ void gather_rows_fwd_f32(const float* x, const float* idx, float* y, i64 n, i64 l, i64 k, i64 d) {
    FOR_EACH(i, n * k * d) {
        const auto row = i / AS_INDEX(i, d), c = i % AS_INDEX(i, d);  // row = o * k + j
        const i64 o = row / AS_INDEX(i, k);
        const float v = idx[row];
        y[i] = valid_row(v, l) ? x[(o * l + (i64)v) * d + c] : qnan();
    });
}

// dx [n, l, d]: dx[o, r, c] = the sum over j = 0, 1, .. of dy[o, j, c] where idx[o, j] = r, from
// 0.0 (the CPU's order, so the same bits; no atomics); zero where no index points. One thread
// per element of dx, every one written. dy's offsets run past dx's count when k > l: 64-bit.
extern "C" __global__ void gather_rows_bwd_f32(const float* dy, const float* idx, float* dx, i64 n, i64 l, i64 k, i64 d) {
    FOR_EACH(i, n * l * d) {
        const auto rest = i % AS_INDEX(i, l * d);
        const i64 o = i / AS_INDEX(i, l * d);
        const float r = (float)(rest / AS_INDEX(i, d));
        const auto c = rest % AS_INDEX(i, d);
        const float* ix = idx + o * k;
        const float* g = dy + o * k * d + c;
        float acc = 0.0f;
        for (i64 j = 0; j < k; ++j) {
            if (ix[j] == r) acc += g[j * d];
        }
        dx[i] = acc;
    });
}
