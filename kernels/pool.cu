// Max-pool and global average pool over NHWC. Twin of src/backend/cpu/pool.rs.
#include "common.cuh"

struct PoolDims {
    int n, h, w, c, k, stride, pad, oh, ow;
};

// The first maximum of window (oy, ox) for channel ch of image img: its flat pixel index
// iy * w + ix, or -1 when the window has no tap inside the image. A NaN wins (and propagates),
// like PyTorch and the CPU reference.
DEV int window_argmax(const float* x, const PoolDims& d, int img, int oy, int ox, int ch, float& best) {
    int arg = -1;
    best = neg_inf();
    for (int i = 0; i < d.k; ++i) {
        const int iy = oy * d.stride + i - d.pad;
        if (iy < 0 || iy >= d.h) continue;
        for (int j = 0; j < d.k; ++j) {
            const int ix = ox * d.stride + j - d.pad;
            if (ix < 0 || ix >= d.w) continue;
            const float v = x[(((i64)img * d.h + iy) * d.w + ix) * d.c + ch];
            if (arg < 0 || v > best || (v != v && best == best)) {
                best = v;
                arg = iy * d.w + ix;
            }
        }
    }
    return arg;
}

// One thread per output element.
extern "C" __global__ void maxpool2d_fwd_f32(const float* x, float* y, PoolDims d) {
    const i64 total = (i64)d.n * d.oh * d.ow * d.c;
    FOR_EACH(i, total) {
        const int ch = (int)(i % d.c);
        const auto p = i / d.c;
        const int ox = (int)(p % d.ow);
        const int oy = (int)((p / d.ow) % d.oh);
        const int img = (int)(p / AS_INDEX(i, (i64)d.ow * d.oh));
        float best;
        window_argmax(x, d, img, oy, ox, ch, best);
        y[i] = best;
    });
}

// One thread per input element, gathering from every window that contains it (no atomics):
// dx gets dy of each window whose first maximum is this element, windows in (oy, ox) order.
extern "C" __global__ void maxpool2d_bwd_f32(const float* x, const float* dy, float* dx, PoolDims d) {
    const i64 total = (i64)d.n * d.h * d.w * d.c;
    FOR_EACH(i, total) {
        const int ch = (int)(i % d.c);
        const auto p = i / d.c;
        const int ix = (int)(p % d.w);
        const int iy = (int)((p / d.w) % d.h);
        const int img = (int)(p / AS_INDEX(i, (i64)d.w * d.h));
        // Windows (oy, ox) with oy * stride - pad <= iy <= oy * stride - pad + k - 1.
        const int ty = iy + d.pad - d.k + 1, tx = ix + d.pad - d.k + 1;
        const int oy0 = ty <= 0 ? 0 : (ty + d.stride - 1) / d.stride;
        const int ox0 = tx <= 0 ? 0 : (tx + d.stride - 1) / d.stride;
        int oy1 = (iy + d.pad) / d.stride, ox1 = (ix + d.pad) / d.stride;
        if (oy1 > d.oh - 1) oy1 = d.oh - 1;
        if (ox1 > d.ow - 1) ox1 = d.ow - 1;
        const int me = iy * d.w + ix;
        float acc = 0.0f;
        for (int oy = oy0; oy <= oy1; ++oy)
            for (int ox = ox0; ox <= ox1; ++ox) {
                float best;
                if (window_argmax(x, d, img, oy, ox, ch, best) == me)
                    acc += dy[(((i64)img * d.oh + oy) * d.ow + ox) * d.c + ch];
            }
        dx[i] = acc;
    });
}

// x [n, hw, c] -> y [n, c]: one thread per output, pixels summed in order.
extern "C" __global__ void avgpool_global_fwd_f32(const float* x, float* y, int n, int hw, int c) {
    FOR_EACH(i, (i64)n * c) {
        const i64 img = i / c, ch = i % c;
        double s = 0.0;
        for (int p = 0; p < hw; ++p) s += (double)x[(img * hw + p) * c + ch];
        y[i] = (float)(s / (double)hw);
    });
}

extern "C" __global__ void avgpool_global_bwd_f32(const float* dy, float* dx, int n, int hw, int c) {
    const float inv = 1.0f / (float)hw;
    FOR_EACH(i, (i64)n * hw * c) {
        const i64 ch = i % c, img = i / AS_INDEX(i, (i64)hw * c);
        dx[i] = dy[img * c + ch] * inv;
    });
}
