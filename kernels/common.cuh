// Shared helpers for every kernel family. Compiled by NVRTC (no system headers), so this file
// defines the few constants and types it needs itself.
//
// Conventions, kept by every kernel in kernels/*.cu:
// - Symbols are extern "C" and named <op>[_<variant>][_<stage>]_<fwd|bwd>_<dtype> (relu_fwd_f32,
//   conv2d_data_bwd_f32, conv2d_m128n128_data_bwd_bf16): <dtype> is what the kernel computes
//   in (f32, or bf16 for the bf16 tensor-core kernels; TF32 variants say _tc and end in _f32;
//   the batch-norm passes that read a bf16 convolution's bf16 output end in _bf16 too),
//   <op> being the Backend method (or unary / binary kind) the kernel
//   serves, the same name as in shaders/*.wgsl; the Rust wrapper in
//   src/backend/cuda/<family>.rs names it whole, never assembled (tests/kernel_names.rs).
// - Device pointers are plain `float*` (bf16 storage too, cast where it is read or written);
//   element counts and offsets are 64-bit (`i64`); small dims are `int`. The Rust side passes
//   u64 / i64 / i32 / f32 to match (checked against the PTX signatures, see
//   src/backend/cuda/nvrtc.rs).
// - Every thread bounds-checks what it reads and writes; every kernel writes its whole output.
// - Reductions have a fixed order that depends only on the shapes and the launch configuration
//   (never on timing): no floating-point atomics anywhere. Where a launch finishes its own
//   reduction, an integer counter only picks the block that adds the pieces (last_to_arrive),
//   in the same fixed order whichever block it is.
#pragma once

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;

// DEV for free functions, DEVM for member functions.
#define DEV static __device__ __forceinline__
#define DEVM __device__ __forceinline__

DEV float pos_inf() { return __int_as_float(0x7f800000); }
DEV float neg_inf() { return __int_as_float(0xff800000); }
DEV float qnan() { return __int_as_float(0x7fffffff); }

// The nearest bfloat16, ties to even, as a float (the `half` crate's rule, so the CPU reference
// agrees bit for bit): a NaN stays NaN (quieted), a finite value past bf16's range becomes inf.
DEV float round_bf16f(float v) {
    const u32 u = (u32)__float_as_int(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __int_as_float((int)((u | 0x00400000u) & 0xffff0000u));
    return __int_as_float((int)((u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u));
}

// ReLU's gradient: dy where its input x is positive (PyTorch's choice at 0: 0). Also right with
// ReLU's output for x: relu(x) > 0 exactly where x > 0.
DEV float relu_grad(float x, float dy) { return x > 0.0f ? dy : 0.0f; }

// Whether this block is the last of `expected` blocks to arrive at `*count`, an int in global
// memory that is 0 before the first arrives and is set back to 0 by the last (ready for the next
// launch or graph replay): how a launch finishes a reduction over its blocks itself instead of
// leaving it to a second kernel (split-K sums, column statistics). Every thread of the block
// calls it after storing what the last block will read; the last block then sees all of it
// (read it with __ldcg: L1 is not coherent). `flag`: an int of shared memory the block is done
// with.
DEV bool last_to_arrive(int* count, int expected, int* flag) {
    __threadfence();  // this thread's stores are visible to the block that arrives last
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0) {
        const int last = atomicAdd(count, 1) == expected - 1;
        if (last) *count = 0;  // every other block has counted itself in
        *flag = last;
    }
    __syncthreads();
    const bool last = *flag != 0;
    if (last) __threadfence();
    return last;
}

// bf16 storage (a fused convolution's output, which only batch norm reads): a bf16 is the upper
// half of the float it rounds to, so widening is exact, and a float already rounded to bf16
// (round_bf16f) narrows by dropping its lower half.
DEV float bf16_to_float(u16 h) { return __int_as_float((int)((u32)h << 16)); }
DEV u16 bf16_bits(float rounded) { return (u16)((u32)__float_as_int(rounded) >> 16); }
// 4 consecutive bf16 values as one 8-byte load (p 8-byte aligned), widened.
struct __align__(8) Bf16x4 {
    u32 lo, hi;  // values 0, 1 and 2, 3, the first in the low half
};
DEV float4 load4_bf16(const u16* p) {
    const Bf16x4 w = *reinterpret_cast<const Bf16x4*>(p);
    return float4{__int_as_float((int)(w.lo << 16)), __int_as_float((int)(w.lo & 0xffff0000u)),
                  __int_as_float((int)(w.hi << 16)), __int_as_float((int)(w.hi & 0xffff0000u))};
}

// 4 consecutive floats as one 16-byte load or store: p must be 16-byte aligned (every pool
// buffer is 256-byte aligned; callers keep element offsets multiples of 4).
DEV float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
DEV void store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }

// The global index of this thread and the grid-wide stride, both 64-bit.
DEV i64 global_index() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
DEV i64 grid_stride() { return (i64)gridDim.x * blockDim.x; }

// Sum over a warp with a fixed butterfly order: every lane ends with the same value, and the
// order of additions depends only on the lane layout.
DEV float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
DEV double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
DEV float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum of one value per thread over a block of `blockDim.x` threads (a multiple of 32, at most
// 1024), fixed order: warp butterflies, then warp 0 sums the warp totals. Every thread gets the
// result. `scratch` holds 32 doubles of shared memory; the call contains __syncthreads, so every
// thread of the block must reach it.
DEV double block_sum_d(double v, double* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    v = warp_sum_d(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    // Only warp 0 reads the warp totals: another warp reading scratch[0] here would race with
    // lane 0's write of the block total below (racecheck's read-after-write hazard).
    if (warp == 0) {
        double t = (lane < nwarps) ? scratch[lane] : 0.0;
        t = warp_sum_d(t);
        if (lane == 0) scratch[0] = t;
    }
    __syncthreads();
    return scratch[0];
}

// log(sum(exp(row))) of one row, computed by a whole warp (max-shifted, summed in double).
DEV float warp_logsumexp(const float* row, int C, int lane) {
    float m = neg_inf();
    for (int j = lane; j < C; j += 32) m = fmaxf(m, row[j]);
    m = warp_max(m);
    double s = 0.0;
    for (int j = lane; j < C; j += 32) s += (double)expf(row[j] - m);
    return m + (float)log(warp_sum_d(s));
}

// Grid-stride loop over [0, n): `FOR_EACH(i, n) { body });`. The body is compiled twice: with
// i an `int` where n and the grid stride fit 32 bits (every tensor of a training step), so that
// index arithmetic in it (a channel's i % C, a row's i / len) is 32-bit, where a 64-bit
// division or modulo is a subroutine call; and with i an i64 beyond. The host emulation lowers
// the limit (tests/cuda_emulated.rs), so that its test tensors take both paths.
#ifndef SSL_INDEX32_LIMIT
#define SSL_INDEX32_LIMIT 0x7fffffffLL
#endif
template <class Body>
DEV void for_each_index(i64 n, Body body) {
    if (n + grid_stride() <= SSL_INDEX32_LIMIT) {
        for (int i = (int)global_index(); i < (int)n; i += (int)grid_stride()) body(i);
    } else {
        for (i64 i = global_index(); i < n; i += grid_stride()) body(i);
    }
}
#define FOR_EACH(i, n) for_each_index((i64)(n), [&](auto i)
// `v` as FOR_EACH's index type: inside its 32-bit path, a value no larger than n is an `int` too,
// so that i % v and i / v stay 32-bit.
#define AS_INDEX(i, v) ((decltype(i))(v))

// The tensor of a multi-tensor batch (optim.cu, add_many in elementwise.cu) that block b works
// on, returned (count when none): tensor t owns blocks [block_end[t - 1], block_end[t]), each a
// `chunk` of its elements; `base` gets the first element of block b's chunk.
__device__ __forceinline__ int batch_chunk(const i64* block_end, int count, i64 b, i64 chunk, i64& base) {
    int ti = 0;
    while (ti < count && block_end[ti] <= b) ++ti;
    base = ti < count ? (b - (ti == 0 ? 0 : block_end[ti - 1])) * chunk : 0;
    return ti;
}
