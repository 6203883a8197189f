// Batch norm, layer norm, log-sum-exp and softmax over channels-last data [rows, C].
// Twin of src/backend/cpu/norm.rs.
//
// Column (per-channel) statistics are two-stage and fixed-order: colstats_* gives each block
// 32 channels x `rpb` rows (threads: 32 channel lanes x 8 row lanes, row lane ty takes rows
// ty, ty + 8, ... of the block), sums in double, and writes one partial per block row-range;
// the partials are added in block order by batchnorm_finalize_fwd_f32 (forward), or in the same
// launch by its last row block (backward: ColTotals). Row statistics (layer norm, softmax) use
// one warp per row with the fixed butterfly of common.cuh.
//
// The batch-norm passes over a fused convolution's output come twice: `_f32` reads x as F32,
// `_bf16` as the BF16 storage the bf16 convolution writes (ConvOps::conv2d_batchnorm_out_dtype);
// both compute in FP32, the same arithmetic on the same values.
#include "common.cuh"

// Element i of x as stored: F32, or (X16) bf16, widened exactly.
template <bool X16>
DEV float x_at(const float* x, i64 i) {
    return X16 ? bf16_to_float(reinterpret_cast<const u16*>(x)[i]) : x[i];
}
// Elements i .. i + 3 (i a multiple of 4) as one 16-byte (F32) or 8-byte (bf16) load.
template <bool X16>
DEV float4 x4_at(const float* x, i64 i) {
    return X16 ? load4_bf16(reinterpret_cast<const u16*>(x) + i) : load4(x + i);
}

#define CS_LANES 32
#define CS_ROWS 8

// The two column sums of partials [nblocks, 2, C] for channel blockIdx.x * 32 + threadIdx.x, in a
// block of 32 x ny threads (ny = blockDim.y <= 32): row ty of the block adds partials ty, ty + ny,
// ... (32 channels side by side: coalesced), then ty == 0 adds the ny row sums in order. The
// order is fixed, so the result is the same on every run. Every thread must call it (it
// synchronises); true for the thread that holds the channel's sums (ty == 0, c < C). One thread
// per channel adding all partials in a row took up to 4,096 dependent steps (the BN finalize of
// a 512-image batch). __ldcg: the partials may come from other blocks of the same launch.
DEV bool column_pair_sums(const double* part, int nblocks, int C, double& first, double& second) {
    __shared__ double rows_a[32][33];
    __shared__ double rows_b[32][33];
    const int tx = threadIdx.x, ty = threadIdx.y, ny = blockDim.y, c = blockIdx.x * 32 + tx;
    double a = 0.0, b = 0.0;
    if (c < C) {
        for (int k = ty; k < nblocks; k += ny) {
            a += __ldcg(part + (i64)k * 2 * C + c);
            b += __ldcg(part + (i64)k * 2 * C + C + c);
        }
    }
    rows_a[ty][tx] = a;
    rows_b[ty][tx] = b;
    __syncthreads();
    if (ty != 0 || c >= C) return false;
    first = 0.0, second = 0.0;
    for (int r = 0; r < ny; ++r) {
        first += rows_a[r][tx];
        second += rows_b[r][tx];
    }
    return true;
}

// The column totals a backward column-statistics launch finishes itself: the last row block to
// finish for each 32 channels (last_to_arrive; `arrivals`: a counter per 32 channels, all 0) adds
// the partials of all row blocks (column_pair_sums) and writes first[c], second[c] and sums
// [2, C] = (first, second), each as float; any may be null. Without a kernel of its own, the
// finalize costs no launch.
struct ColTotals {
    int* arrivals;
    float* sums;
    float* first;
    float* second;
};

// The per-channel affine map of a training batch norm's output pass, y = x * scale + shift, from
// the saved (float) mean and invstd: the forward's finalize and the backward's ReLU mask both
// compute it here, so they agree bit for bit. gamma, beta may be null (1, 0).
DEV void bn_scale_shift(const float* mean, const float* invstd, const float* gamma, const float* beta, int c, float& scale,
                        float& shift) {
    scale = invstd[c] * (gamma ? gamma[c] : 1.0f);
    shift = fmaf(-mean[c], scale, beta ? beta[c] : 0.0f);
}

// Where the forward's fused ReLU (BnTail) let dy through: where its output y was positive
// (relu_grad(y, dy)); for a tail without residual, y = relu(x * scale + shift), so where
// x * scale + shift is positive, recomputed from x (`from_x`, bn_scale_shift: the forward's
// own values) without reading y. y null and !from_x: no ReLU, dy itself.
struct ReluMask {
    const float* y;
    const float *mean, *invstd, *gamma, *beta;
    int from_x;
    // dy as the ReLU passed it, at channel c, for input xv and forward output yv (read by the
    // caller where y is given).
    DEVM float operator()(int c, float xv, float yv, float dy) const {
        if (from_x) {
            float scale, shift;
            bn_scale_shift(mean, invstd, gamma, beta, c, scale, shift);
            return relu_grad(fmaf(xv, scale, shift), dy);
        }
        return y ? relu_grad(yv, dy) : dy;
    }
};

// What a column-statistics pass sums per channel c of row r (two values):
// MODE 0 (batch norm forward):  x, x^2
// MODE 1 (batch norm backward): dy, dy * xhat with xhat = (x - mean[c]) * invstd[c], dy masked
//                                by the fused ReLU tail when it had one (ReluMask)
// MODE 2 (layer norm backward): dy * xhat, dy with xhat = (x - mean[r]) * rstd[r]
// Each block writes its partials; with totals.arrivals, the launch also adds them (ColTotals).
// X16: x is bf16 storage (x_at).
template <int MODE, bool X16 = false>
DEV void colstats(const float* x, const float* dy, const float* mean, const float* inv, double* part, int rows,
                  int C, int rpb, ReluMask relu, ColTotals totals) {
    __shared__ double s0[CS_ROWS][CS_LANES];
    __shared__ double s1[CS_ROWS][CS_LANES];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int c = blockIdx.x * CS_LANES + tx;
    const i64 r0 = (i64)blockIdx.y * rpb;
    const i64 r1 = r0 + rpb < rows ? r0 + rpb : rows;
    double a = 0.0, b = 0.0;
    if (c < C) {
        for (i64 r = r0 + ty; r < r1; r += CS_ROWS) {
            const float v = x_at<X16>(x, r * C + c);
            if (MODE == 0) {
                a += (double)v;
                b += (double)v * (double)v;
            } else if (MODE == 1) {
                const float g = relu(c, v, relu.y ? relu.y[r * C + c] : 0.0f, dy[r * C + c]);
                const double xhat = ((double)v - (double)mean[c]) * (double)inv[c];
                a += (double)g;
                b += (double)g * xhat;
            } else {
                const float g = dy[r * C + c];
                const double xhat = ((double)v - (double)mean[r]) * (double)inv[r];
                a += (double)g * xhat;
                b += (double)g;
            }
        }
    }
    s0[ty][tx] = a;
    s1[ty][tx] = b;
    __syncthreads();
    if (ty == 0 && c < C) {
        double ta = 0.0, tb = 0.0;
        for (int j = 0; j < CS_ROWS; ++j) {
            ta += s0[j][tx];
            tb += s1[j][tx];
        }
        // part [row blocks, 2, C]
        part[(i64)blockIdx.y * 2 * C + c] = ta;
        part[(i64)blockIdx.y * 2 * C + C + c] = tb;
    }
    if (!totals.arrivals) return;
    __shared__ int last_block[1];
    if (!last_to_arrive(totals.arrivals + blockIdx.x, gridDim.y, last_block)) return;
    double a_all, b_all;
    if (!column_pair_sums(part, gridDim.y, C, a_all, b_all)) return;
    if (totals.sums) totals.sums[c] = (float)a_all, totals.sums[C + c] = (float)b_all;
    if (totals.first) totals.first[c] = (float)a_all;
    if (totals.second) totals.second[c] = (float)b_all;
}

// Grid (ceil(C / 32), ceil(rows / rpb)), block (32, 8).
extern "C" __global__ void batchnorm_stats_fwd_f32(const float* x, double* part, int rows, int C, int rpb) {
    colstats<0>(x, nullptr, nullptr, nullptr, part, rows, C, rpb, ReluMask{}, ColTotals{nullptr, nullptr, nullptr, nullptr});
}
// relu_out may be null (no ReLU in the forward tail, or relu_from_x: ReluMask); gamma and beta
// (may be null) serve relu_from_x. sums [2, C] = (sum dy, sum dy xhat), and first / second
// (dbeta / dgamma, may be null) the same sums.
#define BN_STATS_BWD_KERNEL(name, X16)                                                                              \
    extern "C" __global__ void name(const float* x, const float* dy, const float* relu_out, const float* gamma,     \
                                    const float* beta, int relu_from_x, const float* mean, const float* invstd,     \
                                    double* part, int rows, int C, int rpb, int* arrivals, float* sums,             \
                                    float* first, float* second) {                                                  \
        colstats<1, X16>(x, dy, mean, invstd, part, rows, C, rpb, ReluMask{relu_out, mean, invstd, gamma, beta, relu_from_x}, \
                         ColTotals{arrivals, sums, first, second});                                                 \
    }
BN_STATS_BWD_KERNEL(batchnorm_stats_bwd_f32, false)
BN_STATS_BWD_KERNEL(batchnorm_stats_bwd_bf16, true)
// first = dgamma (sum dy xhat), second = dbeta (sum dy).
extern "C" __global__ void layernorm_stats_bwd_f32(const float* x, const float* dy, const float* mean,
                                                   const float* rstd, double* part, int rows, int C, int rpb,
                                                   int* arrivals, float* first, float* second) {
    colstats<2>(x, dy, mean, rstd, part, rows, C, rpb, ReluMask{}, ColTotals{arrivals, nullptr, first, second});
}

// One thread per channel: batch mean and (biased) variance from the partials, in block order;
// saves mean and invstd, updates the running statistics (PyTorch's rule, unbiased variance) when
// given, and writes scale_shift [2, C] = (invstd * gamma, beta - mean * invstd * gamma) from the
// saved values (bn_scale_shift: the backward's ReLU mask recomputes them).
// gamma, beta, running_mean, running_var may be null.
// Blocks of 32 x 32 threads, one block per 32 channels (column_pair_sums).
extern "C" __global__ void batchnorm_finalize_fwd_f32(const double* part, int nblocks, int rows, int C, float eps,
                                                      const float* gamma, const float* beta, float* save_mean,
                                                      float* save_invstd, float* running_mean, float* running_var,
                                                      float momentum, float* scale_shift) {
    double s, ss;
    if (!column_pair_sums(part, nblocks, C, s, ss)) return;
    const int c = blockIdx.x * 32 + threadIdx.x;
    const double n = (double)rows;
    const double mean = s / n;
    double var = ss / n - mean * mean;
    if (var < 0.0) var = 0.0;
    const double invstd = 1.0 / sqrt(var + (double)eps);
    save_mean[c] = (float)mean;
    save_invstd[c] = (float)invstd;
    bn_scale_shift(save_mean, save_invstd, gamma, beta, c, scale_shift[c], scale_shift[C + c]);
    if (running_mean && running_var) {
        const double m = (double)momentum;
        const double unbias = rows > 1 ? n / (n - 1.0) : 1.0;
        running_mean[c] = (float)((1.0 - m) * (double)running_mean[c] + m * mean);
        running_var[c] = (float)((1.0 - m) * (double)running_var[c] + m * var * unbias);
    }
}

// The fused tail (BnTail): v + r when there is a residual, then ReLU when relu != 0 (fmaxf: a
// NaN becomes 0, as the CPU's max does).
DEV float bn_tail(float v, bool has_residual, float r, int relu) {
    if (has_residual) v += r;
    return relu ? fmaxf(v, 0.0f) : v;
}

// y = tail(x * scale[c] + shift[c]); residual may be null. With C a multiple of 4, 4 channels of
// a row at a time: one 16-byte load per operand (8 bytes for bf16 x) and one 16-byte store
// (load4: every buffer is 256-byte aligned), a quarter of the instructions per byte of the
// element-wise loop.
template <bool X16>
DEV void bn_apply(const float* x, const float* scale_shift, const float* residual, float* y, i64 n, int C, int relu) {
    if (C % 4 == 0) {
        FOR_EACH(q, n / 4) {
            const int c = 4 * (int)(q % AS_INDEX(q, C / 4));
            const i64 i = 4 * (i64)q;
            const float4 v = x4_at<X16>(x, i), sc = load4(scale_shift + c), sh = load4(scale_shift + C + c);
            const float4 r = residual ? load4(residual + i) : float4{0.0f, 0.0f, 0.0f, 0.0f};
            const bool res = residual != nullptr;
            store4(y + i, float4{bn_tail(fmaf(v.x, sc.x, sh.x), res, r.x, relu), bn_tail(fmaf(v.y, sc.y, sh.y), res, r.y, relu),
                                 bn_tail(fmaf(v.z, sc.z, sh.z), res, r.z, relu), bn_tail(fmaf(v.w, sc.w, sh.w), res, r.w, relu)});
        });
        return;
    }
    FOR_EACH(i, n) {
        const int c = (int)(i % C);
        y[i] = bn_tail(fmaf(x_at<X16>(x, i), scale_shift[c], scale_shift[C + c]), residual != nullptr, residual ? residual[i] : 0.0f, relu);
    });
}
extern "C" __global__ void batchnorm_apply_fwd_f32(const float* x, const float* scale_shift, const float* residual,
                                                   float* y, i64 n, int C, int relu) {
    bn_apply<false>(x, scale_shift, residual, y, n, C, relu);
}
extern "C" __global__ void batchnorm_apply_fwd_bf16(const float* x, const float* scale_shift, const float* residual,
                                                    float* y, i64 n, int C, int relu) {
    bn_apply<true>(x, scale_shift, residual, y, n, C, relu);
}

// Eval mode: the running statistics. gamma, beta and residual may be null.
extern "C" __global__ void batchnorm_eval_fwd_f32(const float* x, const float* gamma, const float* beta,
                                                  const float* running_mean, const float* running_var,
                                                  const float* residual, float* y, i64 n, int C, float eps, int relu) {
    FOR_EACH(i, n) {
        const int c = (int)(i % C);
        const float scale = (gamma ? gamma[c] : 1.0f) / sqrtf(running_var[c] + eps);
        const float shift = (beta ? beta[c] : 0.0f) - running_mean[c] * scale;
        y[i] = bn_tail(fmaf(x[i], scale, shift), residual != nullptr, residual ? residual[i] : 0.0f, relu);
    });
}

// dx = gamma * invstd / N * (N dy - sum(dy) - xhat * sum(dy xhat)); sums [2, C] from
// batchnorm_stats_bwd_f32. With a ReLU in the tail, dy is masked first (ReluMask), and the
// masked dy is also written to dresidual when given (the shortcut's gradient, in the same pass).
// gamma, beta, relu_out and dresidual may be null. With C a multiple of 4, 16-byte loads and
// stores of 4 channels of a row (as batchnorm_apply_fwd_f32).
struct BnDx {
    const float *gamma, *mean, *invstd, *sums;
    int C;
    float N;
    // dx of one element of channel c, from x and the masked dy g.
    DEVM float operator()(int c, float xv, float g) const {
        const float is = invstd[c];
        const float xhat = (xv - mean[c]) * is;
        const float k = (gamma ? gamma[c] : 1.0f) * is / N;
        return k * (N * g - sums[c] - xhat * sums[C + c]);
    }
};
template <bool X16>
DEV void bn_dx(const float* x, const float* dy, const ReluMask& relu, const BnDx& one, float* dx, float* dresidual, i64 n,
               int C) {
    if (C % 4 == 0) {
        FOR_EACH(q, n / 4) {
            const int c = 4 * (int)(q % AS_INDEX(q, C / 4));
            const i64 i = 4 * (i64)q;
            const float4 xv = x4_at<X16>(x, i), dv = load4(dy + i);
            const float4 yv = relu.y ? load4(relu.y + i) : float4{0.0f, 0.0f, 0.0f, 0.0f};
            const float4 g{relu(c, xv.x, yv.x, dv.x), relu(c + 1, xv.y, yv.y, dv.y), relu(c + 2, xv.z, yv.z, dv.z),
                           relu(c + 3, xv.w, yv.w, dv.w)};
            if (dresidual) store4(dresidual + i, g);
            store4(dx + i, float4{one(c, xv.x, g.x), one(c + 1, xv.y, g.y), one(c + 2, xv.z, g.z), one(c + 3, xv.w, g.w)});
        });
        return;
    }
    FOR_EACH(i, n) {
        const int c = (int)(i % C);
        const float xv = x_at<X16>(x, i);
        const float g = relu(c, xv, relu.y ? relu.y[i] : 0.0f, dy[i]);
        dx[i] = one(c, xv, g);
        if (dresidual) dresidual[i] = g;
    });
}
// relu_out, gamma, beta, relu_from_x: as batchnorm_stats_bwd_f32's.
#define BN_DX_BWD_KERNEL(name, X16)                                                                                 \
    extern "C" __global__ void name(const float* x, const float* dy, const float* relu_out, const float* gamma,     \
                                    const float* beta, int relu_from_x, const float* mean, const float* invstd,     \
                                    const float* sums, float* dx, float* dresidual, i64 n, int C, int rows) {       \
        bn_dx<X16>(x, dy, ReluMask{relu_out, mean, invstd, gamma, beta, relu_from_x},                               \
                   BnDx{gamma, mean, invstd, sums, C, (float)rows}, dx, dresidual, n, C);                           \
    }
BN_DX_BWD_KERNEL(batchnorm_dx_bwd_f32, false)
BN_DX_BWD_KERNEL(batchnorm_dx_bwd_bf16, true)

// ---- layer norm: one warp per row, 8 rows per block of 256 threads --------------------------

extern "C" __global__ void layernorm_fwd_f32(const float* x, const float* gamma, const float* beta, float* y,
                                             float* save_mean, float* save_rstd, int rows, int C, float eps) {
    const int lane = threadIdx.x & 31;
    const i64 r = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;  // whole warps leave together
    const float* xr = x + r * C;
    double s = 0.0;
    for (int j = lane; j < C; j += 32) s += (double)xr[j];
    const double mean = warp_sum_d(s) / C;
    double v = 0.0;
    for (int j = lane; j < C; j += 32) {
        const double d = (double)xr[j] - mean;
        v += d * d;
    }
    const double var = warp_sum_d(v) / C;
    const double rstd = 1.0 / sqrt(var + (double)eps);
    float* yr = y + r * C;
    for (int j = lane; j < C; j += 32) yr[j] = (float)(((double)xr[j] - mean) * rstd * (double)gamma[j] + (double)beta[j]);
    if (lane == 0) {
        save_mean[r] = (float)mean;
        save_rstd[r] = (float)rstd;
    }
}

// dx = rstd * (g - mean_j(g) - xhat * mean_j(g xhat)), g = dy * gamma. dgamma and dbeta come from
// layernorm_stats_bwd_f32 (its last row blocks add the partials).
extern "C" __global__ void layernorm_dx_bwd_f32(const float* x, const float* dy, const float* gamma,
                                                const float* mean, const float* rstd, float* dx, int rows, int C) {
    const int lane = threadIdx.x & 31;
    const i64 r = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    const float* xr = x + r * C;
    const float* gr = dy + r * C;
    const double m = (double)mean[r], rs = (double)rstd[r];
    double s1 = 0.0, s2 = 0.0;
    for (int j = lane; j < C; j += 32) {
        const double g = (double)gr[j] * (double)gamma[j];
        s1 += g;
        s2 += g * ((double)xr[j] - m) * rs;
    }
    s1 = warp_sum_d(s1) / C;
    s2 = warp_sum_d(s2) / C;
    float* dr = dx + r * C;
    for (int j = lane; j < C; j += 32) {
        const double g = (double)gr[j] * (double)gamma[j];
        const double xhat = ((double)xr[j] - m) * rs;
        dr[j] = (float)(rs * (g - s1 - xhat * s2));
    }
}

// ---- row-wise L2 normalisation (F.normalize): one warp per row ------------------------------

// y = x / n, n = max(|x|, eps); the sum of squares in double, like the CPU reference.
extern "C" __global__ void l2_normalize_fwd_f32(const float* x, float* y, float* norm, int rows, int C, float eps) {
    const int lane = threadIdx.x & 31;
    const i64 r = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    const float* xr = x + r * C;
    double s = 0.0;
    for (int j = lane; j < C; j += 32) s += (double)xr[j] * (double)xr[j];
    const double n = fmax(sqrt(warp_sum_d(s)), (double)eps);
    float* yr = y + r * C;
    for (int j = lane; j < C; j += 32) yr[j] = (float)((double)xr[j] / n);
    if (lane == 0) norm[r] = (float)n;
}

// dx = dy / n - x (x . dy) / n^3, or dy / n where the norm was clamped at eps.
extern "C" __global__ void l2_normalize_bwd_f32(const float* x, const float* dy, const float* norm, float* dx, int rows,
                                                int C, float eps) {
    const int lane = threadIdx.x & 31;
    const i64 r = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    const float* xr = x + r * C;
    const float* gr = dy + r * C;
    const double n = (double)norm[r];
    double s = 0.0;
    for (int j = lane; j < C; j += 32) s += (double)xr[j] * (double)gr[j];
    s = warp_sum_d(s);
    const double k = n > (double)eps ? s / (n * n * n) : 0.0;
    float* dr = dx + r * C;
    for (int j = lane; j < C; j += 32) dr[j] = (float)((double)gr[j] / n - (double)xr[j] * k);
}

// ---- log-sum-exp over the last axis: one warp per row ----------------------------------------

extern "C" __global__ void logsumexp_fwd_f32(const float* x, float* lse, int rows, int C) {
    const int lane = threadIdx.x & 31;
    const i64 r = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    const float l = warp_logsumexp(x + r * C, C, lane);
    if (lane == 0) lse[r] = l;
}

// dx = dlse * exp(x - lse): the row's softmax, scaled
extern "C" __global__ void logsumexp_bwd_f32(const float* x, const float* lse, const float* dlse, float* dx, int rows,
                                             int C) {
    const int lane = threadIdx.x & 31;
    const i64 r = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    const float* xr = x + r * C;
    const float l = lse[r], g = dlse[r];
    float* dr = dx + r * C;
    for (int j = lane; j < C; j += 32) dr[j] = g * expf(xr[j] - l);
}

// ---- softmax over the last axis: one warp per row -------------------------------------------

extern "C" __global__ void softmax_fwd_f32(const float* x, float* y, int rows, int C) {
    const int lane = threadIdx.x & 31;
    const i64 r = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    const float* xr = x + r * C;
    float m = neg_inf();
    for (int j = lane; j < C; j += 32) m = fmaxf(m, xr[j]);
    m = warp_max(m);
    float s = 0.0f;
    for (int j = lane; j < C; j += 32) s += expf(xr[j] - m);
    const float inv = 1.0f / warp_sum(s);
    float* yr = y + r * C;
    for (int j = lane; j < C; j += 32) yr[j] = expf(xr[j] - m) * inv;
}

// dx = y * (dy - sum_j y dy)
extern "C" __global__ void softmax_bwd_f32(const float* y, const float* dy, float* dx, int rows, int C) {
    const int lane = threadIdx.x & 31;
    const i64 r = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    const float* yr = y + r * C;
    const float* gr = dy + r * C;
    float dot = 0.0f;
    for (int j = lane; j < C; j += 32) dot += yr[j] * gr[j];
    dot = warp_sum(dot);
    float* dr = dx + r * C;
    for (int j = lane; j < C; j += 32) dr[j] = yr[j] * (gr[j] - dot);
}
