// The fused multi-tensor SGD step (PyTorch semantics, dampening 0, no Nesterov). Twin of
// src/backend/cpu/optim.rs:  d = g + wd * p;  buf = momentum * buf + d;  p -= lr * buf.
//
// Up to SGD_MAX_TENSORS tensors per launch (the struct stays under 4 KB of parameters), described by a struct passed by value as the kernel
// parameter (no host-to-device copy, nothing to keep alive). Tensor t owns blocks
// [block_end[t - 1], block_end[t]) (block_end[-1] = 0); block b updates elements
// [(b - first block of t) * SGD_CHUNK, ... + SGD_CHUNK) of its tensor.
// The Rust mirror of these structs is in src/backend/cuda/optim.rs (#[repr(C)], same order).
#include "common.cuh"

#define SGD_MAX_TENSORS 80
#define SGD_THREADS 256
#define SGD_CHUNK (SGD_THREADS * 4)

struct SgdTensor {
    float* param;
    const float* grad;
    float* buf;
    i64 len;
    float lr;
    float weight_decay;
};

struct SgdBatch {
    SgdTensor t[SGD_MAX_TENSORS];
    i64 block_end[SGD_MAX_TENSORS];
    int count;
    float momentum;
    int first;  // this launch's first tensor among the step's: its row in `hyper`
    int pad;
};

// `hyper` and `gate` (both null, or both set: Backend::sgd_step's SgdOnDevice) let a recorded
// step (a CUDA graph) take each step's values from device memory: tensor t's learning rate and
// weight decay are hyper[2 (first + t)] and hyper[2 (first + t) + 1], and no block updates
// anything while one of gate[0 .. gate_len) (the step's loss and gradient sum) is not finite.
extern "C" __global__ void __launch_bounds__(SGD_THREADS)
    sgd_step_fwd_f32(const SgdBatch batch, const float* hyper, const float* gate, int gate_len) {
    for (int i = 0; gate && i < gate_len; ++i)
        if (!isfinite(gate[i])) return;
    i64 base;
    const int ti = batch_chunk(batch.block_end, batch.count, blockIdx.x, SGD_CHUNK, base);
    if (ti >= batch.count) return;
    const SgdTensor& t = batch.t[ti];
    const int row = 2 * (batch.first + ti);
    const double m = (double)batch.momentum;
    const double lr = hyper ? (double)hyper[row] : (double)t.lr, wd = hyper ? (double)hyper[row + 1] : (double)t.weight_decay;
    for (int e = threadIdx.x; e < SGD_CHUNK; e += blockDim.x) {
        const i64 i = base + e;
        if (i >= t.len) break;
        const double p = (double)t.param[i];
        const double d = (double)t.grad[i] + wd * p;
        const double nb = m * (double)t.buf[i] + d;
        t.buf[i] = (float)nb;
        t.param[i] = (float)(p - lr * nb);
    }
}

// The fused multi-tensor AdamW step (torch.optim.AdamW's semantics). Twin of adamw in
// src/backend/cpu/optim.rs, in double like it:  p *= decay;  m = b1 m + (1 - b1) g;
// v = b2 v + (1 - b2) g^2;  p -= step_size m / (sqrt(v) / bc2_sqrt + eps), where decay =
// 1 - lr wd, step_size = lr / (1 - b1^step) and bc2_sqrt = sqrt(1 - b2^step) come per tensor
// from the host (adamw_factors in src/backend/ops/optim.rs). The same batching as the SGD step,
// with fewer tensors per launch (ADAMW_MAX_TENSORS: the struct stays under 4 KB).
#define ADAMW_MAX_TENSORS 48

struct AdamWTensor {
    float* param;
    const float* grad;
    float* exp_avg;
    float* exp_avg_sq;
    i64 len;
    double decay;
    double step_size;
    double bc2_sqrt;
};

struct AdamWBatch {
    AdamWTensor t[ADAMW_MAX_TENSORS];
    i64 block_end[ADAMW_MAX_TENSORS];
    double beta1;
    double beta2;
    double eps;
    int count;
    int pad;
};

extern "C" __global__ void __launch_bounds__(SGD_THREADS) adamw_step_fwd_f32(const AdamWBatch batch) {
    i64 base;
    const int ti = batch_chunk(batch.block_end, batch.count, blockIdx.x, SGD_CHUNK, base);
    if (ti >= batch.count) return;
    const AdamWTensor& t = batch.t[ti];
    const double b1 = batch.beta1, b2 = batch.beta2, eps = batch.eps;
    for (int e = threadIdx.x; e < SGD_CHUNK; e += blockDim.x) {
        const i64 i = base + e;
        if (i >= t.len) break;
        const double g = (double)t.grad[i];
        const double m = b1 * (double)t.exp_avg[i] + (1.0 - b1) * g;
        const double v = b2 * (double)t.exp_avg_sq[i] + (1.0 - b2) * g * g;
        t.exp_avg[i] = (float)m;
        t.exp_avg_sq[i] = (float)v;
        t.param[i] = (float)((double)t.param[i] * t.decay - t.step_size * m / (sqrt(v) / t.bc2_sqrt + eps));
    }
}

// The fused multi-tensor EMA update of a momentum encoder (BYOL, MoCo). Twin of ema_update in
// src/backend/cpu/optim.rs: target = tau * target + (1 - tau) * source. The same batching as
// the SGD step: tensor t owns blocks [block_end[t - 1], block_end[t]), SGD_CHUNK elements each.
struct EmaTensor {
    float* target;
    const float* source;
    i64 len;
};

struct EmaBatch {
    EmaTensor t[SGD_MAX_TENSORS];
    i64 block_end[SGD_MAX_TENSORS];
    int count;
    float tau;
};

extern "C" __global__ void __launch_bounds__(SGD_THREADS) ema_update_fwd_f32(const EmaBatch batch) {
    i64 base;
    const int ti = batch_chunk(batch.block_end, batch.count, blockIdx.x, SGD_CHUNK, base);
    if (ti >= batch.count) return;
    const EmaTensor& t = batch.t[ti];
    const double tau = (double)batch.tau;
    for (int e = threadIdx.x; e < SGD_CHUNK; e += blockDim.x) {
        const i64 i = base + e;
        if (i >= t.len) break;
        t.target[i] = (float)(tau * (double)t.target[i] + (1.0 - tau) * (double)t.source[i]);
    }
}
