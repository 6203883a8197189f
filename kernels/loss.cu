// Cross-entropy with logits, the negative-cosine loss, NT-Xent and the identity penalty. Twin of src/backend/cpu/loss.rs.
// Per-row work is one warp per row (8 rows per 256-thread block); the batch mean is a separate
// single-block reduction (loss_reduce_fwd_f32) with a fixed order. Upstream gradients arrive as
// one-element device buffers, read on the device.
//
// A label that is not a class index in [0, classes) makes its row's loss and gradient NaN (a
// kernel cannot return an error; the CPU backend does).
#include "common.cuh"

DEV bool valid_label(float l, int classes) { return l >= 0.0f && l < (float)classes && l == floorf(l); }


// per_row[r] = logsumexp(logits[r]) - logits[r, label[r]]
extern "C" __global__ void cross_entropy_rows_fwd_f32(const float* logits, const float* labels, float* per_row,
                                                      int rows, int classes) {
    const int lane = threadIdx.x & 31;
    const i64 r = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    const float* row = logits + r * classes;
    const float lse = warp_logsumexp(row, classes, lane);
    if (lane == 0) {
        const float l = labels[r];
        per_row[r] = valid_label(l, classes) ? lse - row[(int)l] : qnan();
    }
}

// dlogits = dloss / rows * (softmax(logits) - onehot(label))
extern "C" __global__ void cross_entropy_bwd_f32(const float* logits, const float* labels, const float* dloss,
                                                 float* dlogits, int rows, int classes) {
    const int lane = threadIdx.x & 31;
    const i64 r = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    const float* row = logits + r * classes;
    const float lse = warp_logsumexp(row, classes, lane);
    const float l = labels[r];
    const bool ok = valid_label(l, classes);
    const int y = ok ? (int)l : -1;
    const float g = dloss[0] / (float)rows;
    float* out = dlogits + r * classes;
    for (int j = lane; j < classes; j += 32) {
        const float p = expf(row[j] - lse);
        out[j] = ok ? g * (p - (j == y ? 1.0f : 0.0f)) : qnan();
    }
}

// loss[0] = alpha * sum_i v[i], one block of 1024 threads: thread t sums i = t, t + 1024, ...
// in order, then the fixed block reduction of common.cuh.
extern "C" __global__ void __launch_bounds__(1024) loss_reduce_fwd_f32(const float* v, float* loss, i64 n, float alpha) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (i64 i = threadIdx.x; i < n; i += blockDim.x) s += (double)v[i];
    s = block_sum_d(s, scratch);
    if (threadIdx.x == 0) loss[0] = (float)((double)alpha * s);
}

// (p.z, max(|p|, eps), max(|z|, eps)) of one row, computed by a whole warp.
DEV void cosine_row_stats(const float* p, const float* z, int dim, float eps, int lane, double& pz, double& pn,
                          double& zn) {
    double a = 0.0, b = 0.0, c = 0.0;
    for (int j = lane; j < dim; j += 32) {
        const double x = (double)p[j], y = (double)z[j];
        a += x * y;
        b += x * x;
        c += y * y;
    }
    pz = warp_sum_d(a);
    pn = fmax(sqrt(warp_sum_d(b)), (double)eps);
    zn = fmax(sqrt(warp_sum_d(c)), (double)eps);
}

// cos[r] = cos(p_r, z_r) with F.normalize's eps clamp on each norm; the loss is
// loss_reduce_fwd_f32(cos, alpha = -1 / rows).
extern "C" __global__ void cosine_loss_rows_fwd_f32(const float* p, const float* z, float* cos, int rows, int dim,
                                               float eps) {
    const int lane = threadIdx.x & 31;
    const i64 r = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    double pz, pn, zn;
    cosine_row_stats(p + r * dim, z + r * dim, dim, eps, lane, pz, pn, zn);
    if (lane == 0) cos[r] = (float)(pz / (pn * zn));
}

// d cos / da = b / (|a| |b|) - cos a / |a|^2, where a norm clamped at eps is a constant.
// dp always; dz when non-null (no stop-gradient on z).
extern "C" __global__ void cosine_loss_bwd_f32(const float* p, const float* z, const float* dloss, float* dp,
                                               float* dz, int rows, int dim, float eps) {
    const int lane = threadIdx.x & 31;
    const i64 r = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    const float* pr = p + r * dim;
    const float* zr = z + r * dim;
    double pz, pn, zn;
    cosine_row_stats(pr, zr, dim, eps, lane, pz, pn, zn);
    const double cs = pz / (pn * zn);
    const double g = -(double)dloss[0] / (double)rows;
    const bool p_clamped = pn <= (double)eps, z_clamped = zn <= (double)eps;
    for (int j = lane; j < dim; j += 32) {
        double v = (double)zr[j] / (pn * zn);
        if (!p_clamped) v -= cs * (double)pr[j] / (pn * pn);
        dp[r * dim + j] = (float)(g * v);
    }
    if (dz) {
        for (int j = lane; j < dim; j += 32) {
            double v = (double)pr[j] / (zn * pn);
            if (!z_clamped) v -= cs * (double)zr[j] / (zn * zn);
            dz[r * dim + j] = (float)(g * v);
        }
    }
}

// ---- NT-Xent over a similarity matrix [rows, rows]: one warp per row -------------------------
// x = sim / T. Row r's denominator is every j != r, its positives the j != r of its group.
// Each lane keeps an online (max, sum) for both sets; the warp merges them. A row without a
// positive gets NaN (the CPU backend returns an error).

// Merge two online log-sum-exp accumulators (m, s): s is the sum of exp(x - m).
DEV void lse_merge(float& m, double& s, float om, double os) {
    const float nm = fmaxf(m, om);
    if (nm == neg_inf()) return;
    s = s * exp((double)(m - nm)) + os * exp((double)(om - nm));
    m = nm;
}

DEV void lse_push(float& m, double& s, float x) { lse_merge(m, s, x, 1.0); }

DEV float warp_lse_finish(float m, double s) {
    for (int o = 16; o > 0; o >>= 1) {
        const float om = __shfl_xor_sync(0xffffffffu, m, o);
        const double os = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, om, os);
    }
    return m == neg_inf() ? neg_inf() : m + (float)log(s);
}

// (lse over j != r, lse over the positives j != r) of row r, by the whole warp.
DEV void nt_xent_row(const float* sim, const float* groups, int rows, int r, float inv_t, int lane, float& all,
                     float& pos) {
    float am = neg_inf(), pm = neg_inf();
    double as = 0.0, ps = 0.0;
    const float* row = sim + (i64)r * rows;
    const float g = groups[r];
    for (int j = lane; j < rows; j += 32) {
        if (j == r) continue;
        const float x = row[j] * inv_t;
        lse_push(am, as, x);
        if (groups[j] == g) lse_push(pm, ps, x);
    }
    all = warp_lse_finish(am, as);
    pos = warp_lse_finish(pm, ps);
}

// per_row[r] = lse_all - lse_pos; the loss is loss_reduce_fwd_f32(per_row, 1 / rows).
extern "C" __global__ void nt_xent_fwd_f32(const float* sim, const float* groups, float* per_row, int rows,
                                           float inv_t) {
    const int lane = threadIdx.x & 31;
    const i64 r = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    float all, pos;
    nt_xent_row(sim, groups, rows, (int)r, inv_t, lane, all, pos);
    if (lane == 0) per_row[r] = pos == neg_inf() ? qnan() : all - pos;
}

// dsim[r, j] = dloss / (rows T) [j != r] (exp(x - lse_all) - [g_j = g_r] exp(x - lse_pos))
extern "C" __global__ void nt_xent_bwd_f32(const float* sim, const float* groups, const float* dloss, float* dsim,
                                           int rows, float inv_t) {
    const int lane = threadIdx.x & 31;
    const i64 r = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    float all, pos;
    nt_xent_row(sim, groups, rows, (int)r, inv_t, lane, all, pos);
    const float gr = groups[r];
    const float scale = dloss[0] / (float)rows * inv_t;
    const float* row = sim + r * rows;
    float* out = dsim + r * rows;
    for (int j = lane; j < rows; j += 32) {
        const float x = row[j] * inv_t;
        const float p = (groups[j] == gr ? expf(x - pos) : 0.0f);
        out[j] = j == r ? 0.0f : (pos == neg_inf() ? qnan() : scale * (expf(x - all) - p));
    }
}

// ---- identity penalty of a square matrix c [d, d] ----------------------------------------------
// loss = diag_weight sum_i (c_ii - 1)^2 + off_weight sum_{i != j} c_ij^2 (Barlow Twins' and
// VICReg's terms): per_row by one warp per row, then loss_reduce_fwd_f32(per_row, 1).
extern "C" __global__ void identity_penalty_fwd_f32(const float* c, float* per_row, int d, float diag_weight,
                                                    float off_weight) {
    const int lane = threadIdx.x & 31;
    const i64 i = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (i >= d) return;
    const float* row = c + i * d;
    double off = 0.0;
    for (int j = lane; j < d; j += 32) {
        if (j != i) off += (double)row[j] * (double)row[j];
    }
    off = warp_sum_d(off);
    if (lane == 0) {
        const double diag = (double)row[i] - 1.0;
        per_row[i] = (float)((double)diag_weight * diag * diag + (double)off_weight * off);
    }
}

// dc_ij = 2 dloss (diag_weight (c_ii - 1) if i = j, else off_weight c_ij), one thread per element.
extern "C" __global__ void identity_penalty_bwd_f32(const float* c, const float* dloss, float* dc, int d,
                                                    float diag_weight, float off_weight) {
    const float g = 2.0f * dloss[0];
    FOR_EACH(k, (i64)d * d) {
        const i64 i = k / d, j = k - i * d;
        dc[k] = g * (i == j ? diag_weight * (c[k] - 1.0f) : off_weight * c[k]);
    });
}

// ---- cross-entropy against soft targets q [rows, classes] (SwAV, DINO): one warp per row ------
// per_row[r] = sum_j q_rj (lse_r - x_rj); the loss is loss_reduce_fwd_f32(per_row, 1 / rows).
extern "C" __global__ void soft_cross_entropy_fwd_f32(const float* logits, const float* q, float* per_row, int rows,
                                                      int classes) {
    const int lane = threadIdx.x & 31;
    const i64 r = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    const float* x = logits + r * classes;
    const float* qr = q + r * classes;
    const float lse = warp_logsumexp(x, classes, lane);
    double s = 0.0;
    for (int j = lane; j < classes; j += 32) s += (double)qr[j] * (double)(lse - x[j]);
    s = warp_sum_d(s);
    if (lane == 0) per_row[r] = (float)s;
}

// dlogits_rj = dloss / rows (softmax_rj sum_k q_rk - q_rj)
extern "C" __global__ void soft_cross_entropy_bwd_f32(const float* logits, const float* q, const float* dloss,
                                                      float* dlogits, int rows, int classes) {
    const int lane = threadIdx.x & 31;
    const i64 r = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    const float* x = logits + r * classes;
    const float* qr = q + r * classes;
    const float lse = warp_logsumexp(x, classes, lane);
    double qs = 0.0;
    for (int j = lane; j < classes; j += 32) qs += (double)qr[j];
    const float qsum = (float)warp_sum_d(qs);
    const float g = dloss[0] / (float)rows;
    float* out = dlogits + r * classes;
    for (int j = lane; j < classes; j += 32) out[j] = g * (expf(x[j] - lse) * qsum - qr[j]);
}
