// NHWC convolution as implicit GEMM (no im2col buffer): x [n, h, w, c_in],
// weight [c_out, kh, kw, c_in / groups], y [n, oh, ow, c_out]. Twin of src/backend/cpu/conv.rs.
// The main loop is in gemm_tile.cuh; only the operand loaders differ. Group g is blockIdx.z /
// splits, split-K piece blockIdx.z % splits (pieces summed by sum_splits_fwd_f32).
//
// forward:       y[p, g*og + o]  = sum_q  col(x)[p, q] . w[g*og + o, q]          p = (img, oy, ox)
//                                                      q = (ki, kj, c), c fastest (the weight's
//                                                      own inner layout)
// backward-data: dx[p, g*cg + c] = sum_q' dy~[p, q'] . w[g*og + o, ki, kj, c]    p = (img, iy, ix)
//                                                      q' = (ki, kj, o), o fastest; dy~ is dy at
//                                                      (oy, ox) = ((iy + pad - ki) / s, ...)
//                                                      when that divides exactly and is in range
// backward-weight: dw[g*og + o, q] = sum_p dy[p, g*og + o] . col(x)[p, q]        (k = pixels)
#include "gemm_tile.cuh"

struct ConvDims {
    int n, h, w, c_in, c_out, kh, kw, sh, sw, ph, pw, groups, oh, ow;
};

// col(x)[p, q] for group g: the input pixel under kernel tap (ki, kj) of output pixel p.
DEV float im2col_at(const float* x, const ConvDims& d, int g, int p, i64 q) {
    const int cg = d.c_in / d.groups;
    const int c = (int)(q % cg);
    const int t = (int)(q / cg);
    const int kj = t % d.kw, ki = t / d.kw;
    const int ox = p % d.ow;
    const int oy = (p / d.ow) % d.oh;
    const int img = p / (d.ow * d.oh);
    const int iy = oy * d.sh - d.ph + ki;
    const int ix = ox * d.sw - d.pw + kj;
    if (iy < 0 || ix < 0 || iy >= d.h || ix >= d.w) return 0.0f;
    return x[(((i64)img * d.h + iy) * d.w + ix) * d.c_in + (i64)g * cg + c];
}

struct ConvFwdLoader {
    static constexpr bool A_K_FAST = true;  // c is contiguous in x
    static constexpr bool B_K_FAST = true;  // a weight row is contiguous
    const float* x;
    const float* wt;
    ConvDims d;
    int g;
    i64 kcols;
    DEVM float a(int p, i64 q) const { return im2col_at(x, d, g, p, q); }
    DEVM float b(i64 q, int o) const { return wt[((i64)g * (d.c_out / d.groups) + o) * kcols + q]; }
};

struct ConvBwdDataLoader {
    static constexpr bool A_K_FAST = true;   // o is contiguous in dy
    static constexpr bool B_K_FAST = false;  // c is contiguous in the weight
    const float* dy;
    const float* wt;
    ConvDims d;
    int g;
    DEVM float a(int p, i64 q) const {
        const int og = d.c_out / d.groups;
        const int o = (int)(q % og);
        const int t = (int)(q / og);
        const int kj = t % d.kw, ki = t / d.kw;
        const int ix = p % d.w;
        const int iy = (p / d.w) % d.h;
        const int img = p / (d.w * d.h);
        const int ty = iy + d.ph - ki, tx = ix + d.pw - kj;
        if (ty < 0 || tx < 0 || ty % d.sh != 0 || tx % d.sw != 0) return 0.0f;
        const int oy = ty / d.sh, ox = tx / d.sw;
        if (oy >= d.oh || ox >= d.ow) return 0.0f;
        return dy[(((i64)img * d.oh + oy) * d.ow + ox) * d.c_out + (i64)g * og + o];
    }
    DEVM float b(i64 q, int c) const {
        const int og = d.c_out / d.groups, cg = d.c_in / d.groups;
        const int o = (int)(q % og);
        const int t = (int)(q / og);  // t = ki * kw + kj
        return wt[(((i64)g * og + o) * d.kh * d.kw + t) * cg + c];
    }
};

struct ConvBwdWeightLoader {
    static constexpr bool A_K_FAST = false;  // o (the row) is contiguous in dy
    static constexpr bool B_K_FAST = false;  // q (the column) is contiguous in x
    const float* x;
    const float* dy;
    ConvDims d;
    int g;
    DEVM float a(int o, i64 p) const { return dy[p * d.c_out + (i64)g * (d.c_out / d.groups) + o]; }
    DEVM float b(i64 p, int q) const { return im2col_at(x, d, g, (int)p, q); }
};

template <bool TC>
DEV void conv_fwd_impl(const float* x, const float* wt, float* out, i64 split_stride, ConvDims d, int splits) {
    __shared__ GemmSmem s;
    const int g = blockIdx.z / splits, sp = blockIdx.z % splits;
    const int cg = d.c_in / d.groups, og = d.c_out / d.groups;
    const i64 kcols = (i64)d.kh * d.kw * cg;
    const int M = d.n * d.oh * d.ow;
    i64 k0, k1;
    split_range(kcols, splits, sp, k0, k1);
    float* y = out + (i64)sp * split_stride + (i64)g * og;
    gemm_block<ConvFwdLoader, TC>(s, ConvFwdLoader{x, wt, d, g, kcols}, M, og, k0, k1, y, d.c_out);
}

template <bool TC>
DEV void conv_bwd_data_impl(const float* dy, const float* wt, float* out, i64 split_stride, ConvDims d, int splits) {
    __shared__ GemmSmem s;
    const int g = blockIdx.z / splits, sp = blockIdx.z % splits;
    const int cg = d.c_in / d.groups, og = d.c_out / d.groups;
    const i64 K = (i64)d.kh * d.kw * og;
    const int M = d.n * d.h * d.w;
    i64 k0, k1;
    split_range(K, splits, sp, k0, k1);
    float* dx = out + (i64)sp * split_stride + (i64)g * cg;
    gemm_block<ConvBwdDataLoader, TC>(s, ConvBwdDataLoader{dy, wt, d, g}, M, cg, k0, k1, dx, d.c_in);
}

template <bool TC>
DEV void conv_bwd_weight_impl(const float* x, const float* dy, float* out, i64 split_stride, ConvDims d, int splits) {
    __shared__ GemmSmem s;
    const int g = blockIdx.z / splits, sp = blockIdx.z % splits;
    const int cg = d.c_in / d.groups, og = d.c_out / d.groups;
    const i64 kcols = (i64)d.kh * d.kw * cg;
    const i64 K = (i64)d.n * d.oh * d.ow;
    i64 k0, k1;
    split_range(K, splits, sp, k0, k1);
    float* dw = out + (i64)sp * split_stride + (i64)g * og * kcols;
    gemm_block<ConvBwdWeightLoader, TC>(s, ConvBwdWeightLoader{x, dy, d, g}, og, (int)kcols, k0, k1, dw, kcols);
}

#define CONV_KERNEL(name, impl, TC, in0, in1)                                                             \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS)                                              \
        name(const float* in0, const float* in1, float* out, i64 split_stride, ConvDims d, int splits) { \
        impl<TC>(in0, in1, out, split_stride, d, splits);                                                \
    }

// Exact FP32 (SIMT), the default.
CONV_KERNEL(conv2d_fwd_f32, conv_fwd_impl, false, x, wt)
CONV_KERNEL(conv2d_data_bwd_f32, conv_bwd_data_impl, false, dy, wt)
CONV_KERNEL(conv2d_weight_bwd_f32, conv_bwd_weight_impl, false, x, dy)
// TF32 tensor cores, opt-in.
CONV_KERNEL(conv2d_tc_fwd_f32, conv_fwd_impl, true, x, wt)
CONV_KERNEL(conv2d_tc_data_bwd_f32, conv_bwd_data_impl, true, dy, wt)
CONV_KERNEL(conv2d_tc_weight_bwd_f32, conv_bwd_weight_impl, true, x, dy)
