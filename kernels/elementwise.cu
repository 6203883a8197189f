// Elementwise maps, fill, and the axis sum. Twin of src/backend/cpu/elementwise.rs.
// One thread per element (grid-stride); the axis sum has a fixed order (see sum_axis below).
#include "common.cuh"

extern "C" __global__ void fill_fwd_f32(float* y, float v, i64 n) {
    FOR_EACH(i, n) { y[i] = v; });
}

extern "C" __global__ void relu_fwd_f32(const float* x, float* y, i64 n) {
    // fmaxf(NaN, 0) = 0, like the CPU's Float::max.
    FOR_EACH(i, n) { y[i] = fmaxf(x[i], 0.0f); });
}

extern "C" __global__ void relu_bwd_f32(const float* x, const float* dy, float* dx, i64 n) {
    FOR_EACH(i, n) { dx[i] = relu_grad(x[i], dy[i]); });
}

#define SQRT1_2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

// The exact (erf) GELU.
extern "C" __global__ void gelu_fwd_f32(const float* x, float* y, i64 n) {
    FOR_EACH(i, n) {
        const float v = x[i];
        y[i] = 0.5f * v * (1.0f + erff(v * SQRT1_2));
    });
}

// d/dx [x Phi(x)] = Phi(x) + x phi(x)
extern "C" __global__ void gelu_bwd_f32(const float* x, const float* dy, float* dx, i64 n) {
    FOR_EACH(i, n) {
        const float v = x[i];
        const float cdf = 0.5f * (1.0f + erff(v * SQRT1_2));
        const float pdf = expf(-0.5f * v * v) * INV_SQRT_2PI;
        dx[i] = dy[i] * (cdf + v * pdf);
    });
}

extern "C" __global__ void exp_fwd_f32(const float* x, float* y, i64 n) {
    FOR_EACH(i, n) { y[i] = expf(x[i]); });
}

extern "C" __global__ void exp_bwd_f32(const float* x, const float* dy, float* dx, i64 n) {
    FOR_EACH(i, n) { dx[i] = dy[i] * expf(x[i]); });
}

extern "C" __global__ void log_fwd_f32(const float* x, float* y, i64 n) {
    FOR_EACH(i, n) { y[i] = logf(x[i]); });
}

extern "C" __global__ void log_bwd_f32(const float* x, const float* dy, float* dx, i64 n) {
    FOR_EACH(i, n) { dx[i] = dy[i] / x[i]; });
}

extern "C" __global__ void sqrt_fwd_f32(const float* x, float* y, i64 n) {
    FOR_EACH(i, n) { y[i] = sqrtf(x[i]); });
}

extern "C" __global__ void sqrt_bwd_f32(const float* x, const float* dy, float* dx, i64 n) {
    FOR_EACH(i, n) { dx[i] = dy[i] * 0.5f / sqrtf(x[i]); });
}

// out[i] = a[i] op b[i % b_len]: b repeats over the leading axes of a.
extern "C" __global__ void add_fwd_f32(const float* a, const float* b, float* out, i64 n, i64 b_len) {
    FOR_EACH(i, n) { out[i] = a[i] + b[b_len == n ? i : i % AS_INDEX(i, b_len)]; });
}

// out = a + b for up to ADD_MANY_MAX pairs of tensors in one launch (Backend::add_many:
// autograd's sums of the gradients of parameters used more than once), described by a struct
// passed by value like optim.cu's batches: pair t owns blocks [block_end[t - 1], block_end[t]),
// ADD_MANY_CHUNK elements each. The Rust mirror is in src/backend/cuda/elementwise.rs.
#define ADD_MANY_MAX 96
#define ADD_MANY_THREADS 256
#define ADD_MANY_CHUNK (ADD_MANY_THREADS * 4)
struct AddPair {
    const float* a;
    const float* b;
    float* out;
    i64 len;
};
struct AddBatch {
    AddPair t[ADD_MANY_MAX];
    i64 block_end[ADD_MANY_MAX];
    int count;
    int pad;
};
extern "C" __global__ void __launch_bounds__(ADD_MANY_THREADS) add_many_fwd_f32(const AddBatch batch) {
    i64 base;
    const int ti = batch_chunk(batch.block_end, batch.count, blockIdx.x, ADD_MANY_CHUNK, base);
    if (ti >= batch.count) return;
    const AddPair& t = batch.t[ti];
    for (int e = threadIdx.x; e < ADD_MANY_CHUNK; e += blockDim.x) {
        const i64 i = base + e;
        if (i >= t.len) break;
        t.out[i] = t.a[i] + t.b[i];
    }
}

extern "C" __global__ void mul_fwd_f32(const float* a, const float* b, float* out, i64 n, i64 b_len) {
    FOR_EACH(i, n) { out[i] = a[i] * b[b_len == n ? i : i % AS_INDEX(i, b_len)]; });
}

// 1 / (1 + e^-x) without overflow: e^-|x| never exceeds 1.
DEV float sigmoidf(float v) {
    const float e = expf(-fabsf(v));
    return v >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

extern "C" __global__ void sigmoid_fwd_f32(const float* x, float* y, i64 n) {
    FOR_EACH(i, n) { y[i] = sigmoidf(x[i]); });
}

extern "C" __global__ void sigmoid_bwd_f32(const float* x, const float* dy, float* dx, i64 n) {
    FOR_EACH(i, n) {
        const float s = sigmoidf(x[i]);
        dx[i] = dy[i] * s * (1.0f - s);
    });
}

extern "C" __global__ void silu_fwd_f32(const float* x, float* y, i64 n) {
    FOR_EACH(i, n) { y[i] = x[i] * sigmoidf(x[i]); });
}

// d/dx x s(x) = s(x) (1 + x (1 - s(x)))
extern "C" __global__ void silu_bwd_f32(const float* x, const float* dy, float* dx, i64 n) {
    FOR_EACH(i, n) {
        const float v = x[i], s = sigmoidf(v);
        dx[i] = dy[i] * s * (1.0f + v * (1.0f - s));
    });
}

// Precision::Bf16's rounding point; the gradient of a bf16 tensor is rounded the same way.
extern "C" __global__ void round_bf16_fwd_f32(const float* x, float* y, i64 n) {
    FOR_EACH(i, n) { y[i] = round_bf16f(x[i]); });
}

extern "C" __global__ void round_bf16_bwd_f32(const float* x, const float* dy, float* dx, i64 n) {
    FOR_EACH(i, n) { dx[i] = round_bf16f(dy[i]); });
}

// y[o, a, i] = x[o, a, i] s[o, i]: squeeze-excitation's gate; per = axis * inner.
extern "C" __global__ void channel_scale_fwd_f32(const float* x, const float* s, float* y, i64 n, i64 per, i64 inner) {
    FOR_EACH(i, n) {
        const auto o = i / AS_INDEX(i, per);
        y[i] = x[i] * s[o * inner + (i - o * AS_INDEX(i, per)) % AS_INDEX(i, inner)];
    });
}

extern "C" __global__ void sub_fwd_f32(const float* a, const float* b, float* out, i64 n, i64 b_len) {
    FOR_EACH(i, n) { out[i] = a[i] - b[b_len == n ? i : i % AS_INDEX(i, b_len)]; });
}

extern "C" __global__ void div_fwd_f32(const float* a, const float* b, float* out, i64 n, i64 b_len) {
    FOR_EACH(i, n) { out[i] = a[i] / b[b_len == n ? i : i % AS_INDEX(i, b_len)]; });
}

extern "C" __global__ void scale_fwd_f32(const float* x, float* y, float alpha, i64 n) {
    FOR_EACH(i, n) { y[i] = x[i] * alpha; });
}

// Axis sum of x [outer, axis, inner] in `splits` pieces along the axis:
// part[s, o, i] = sum over a in piece s of x[o, a, i], a ascending, accumulated in double.
// With splits == 1, `part` is the output y [outer, inner] itself.
extern "C" __global__ void sum_axis_fwd_f32(const float* x, float* part, i64 outer, i64 axis, i64 inner, i64 splits) {
    const i64 per = (axis + splits - 1) / splits;
    const i64 n = outer * inner;
    FOR_EACH(t, n * splits) {
        const auto s = t / AS_INDEX(t, n), oi = t % AS_INDEX(t, n);
        const auto o = oi / AS_INDEX(t, inner), i = oi % AS_INDEX(t, inner);
        const i64 a0 = s * per;
        const i64 a1 = a0 + per < axis ? a0 + per : axis;
        double acc = 0.0;
        const float* p = x + o * axis * inner + i;
        for (i64 a = a0; a < a1; ++a) acc += (double)p[a * inner];
        part[t] = (float)acc;
    });
}

// y[i] = sum_s part[s, i] for s ascending (the second stage of a split sum_axis), in double.
extern "C" __global__ void sum_axis_splits_fwd_f32(const float* part, float* y, i64 splits, i64 n) {
    FOR_EACH(i, n) {
        double acc = 0.0;
        for (i64 s = 0; s < splits; ++s) acc += (double)part[s * n + i];
        y[i] = (float)acc;
    });
}
