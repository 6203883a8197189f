// The tensor-core primitives every tensor-core kernel uses (the GEMM core in gemm_tile.cuh and
// flash attention in attention.cu): TF32 and BF16 mma.sync, cp.async from global to shared
// memory, ldmatrix, and the conversions. Under SSL_EMU (tests/emu/cuda_emu.h) each is the host
// emulation's model of the PTX instruction.
#pragma once
#include "common.cuh"

DEV u32 to_tf32(float f) {
#ifdef SSL_EMU  // host emulation for tests (tests/emu/cuda_emu.h)
    return emu_tf32(f);
#else
    u32 r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(f));
    return r;
#endif
}

// mma.sync m16n8k8 TF32, FP32 accumulation. Fragments (PTX ISA, m16n8k8 .tf32), g = lane / 4,
// t = lane % 4:
//   A 16x8: a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4)
//   B 8x8:  b0 (t, g), b1 (t + 4, g)
//   C 16x8: c0 (g, 2t), c1 (g, 2t + 1), c2 (g + 8, 2t), c3 (g + 8, 2t + 1)
DEV void mma_tf32(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#ifdef SSL_EMU
    emu_mma_tf32(c, a0, a1, a2, a3, b0, b1);
#elif __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

// mma.sync m16n8k16 BF16, FP32 accumulation. Fragments (PTX ISA, m16n8k16 .bf16), g = lane / 4,
// t = lane % 4, each register two bf16 with the lower k in the low half:
//   A 16x16: a0 (g, 2t..2t+1), a1 (g + 8, 2t..), a2 (g, 2t + 8..), a3 (g + 8, 2t + 8..)
//   B 16x8:  b0 (2t..2t+1, g), b1 (2t + 8.., g)
//   C 16x8:  as m16n8k8.
DEV void mma_bf16(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#ifdef SSL_EMU
    emu_mma_bf16(c, a0, a1, a2, a3, b0, b1);
#elif __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

// A shared-memory address as the instructions take it: the 32-bit offset in the shared window
// (the emulation: the host pointer). The main loops make one per stage and add constants, so
// the fragment reads and copies cost no 64-bit pointer arithmetic (a generic pointer converted
// per access cost 3-4 instructions each in the SASS).
#ifdef SSL_EMU
typedef uintptr_t sptr;
#else
typedef u32 sptr;
#endif

// The shared-memory address of a generic pointer into shared memory.
DEV sptr smem_addr(const void* p) {
#ifdef SSL_EMU
    return (sptr)p;
#else
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
#endif
}

// cp.async of one float, global to shared address `dst`, bypassing registers; `ok` false writes
// a zero (the src-size 0 form reads nothing). Lands only once a cp_async_wait covers its group.
DEV void cp_async_4(sptr dst, const void* src, bool ok) {
#ifdef SSL_EMU
    emu_cp_async((void*)dst, ok ? src : nullptr, 4);
#else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 4 : 0));
#endif
}
DEV void cp_async_f32(float* dst, const float* src) { cp_async_4(smem_addr(dst), src, src != nullptr); }
// cp.async of 16 bytes (both sides 16-byte aligned), through L2 only (.cg), to shared address
// `dst`; `ok` false fills the 16 bytes with zeros and reads nothing (`src` must still be a
// pointer the instruction may form: any, it is not dereferenced).
DEV void cp_async_16(sptr dst, const void* src, bool ok) {
#ifdef SSL_EMU
    emu_cp_async((void*)dst, ok ? src : nullptr, 16);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0));
#endif
}
// cp.async of 4 floats; a null `src` fills the 16 bytes with zeros and reads nothing.
DEV void cp_async_f32x4(float* dst, const float* src) { cp_async_16(smem_addr(dst), src, src != nullptr); }
// Closes the group of cp.asyncs issued since the last commit.
DEV void cp_async_commit() {
#ifdef SSL_EMU
    emu_cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Waits until at most N committed groups are still in flight (this thread's copies; a
// __syncthreads then makes every thread's visible).
template <int N>
DEV void cp_async_wait() {
#ifdef SSL_EMU
    emu_cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// ldmatrix .x4 .b16 over 32-bit data: lane l gives the shared address of row l % 8 of matrix
// l / 8 (8 rows of 16 bytes = 4 floats each); r[j] gets word l % 4 of row l / 4 of matrix j.
// Over float tiles stored [m][k], that is exactly the element (row g, k t) of an m16n8k8 fragment.
DEV void ldmatrix_x4(u32* r, sptr row) {
#ifdef SSL_EMU
    emu_ldmatrix_x4(r, (const void*)row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(row));
#endif
}
DEV void ldmatrix_x4(u32* r, const float* row) { ldmatrix_x4(r, smem_addr(row)); }

// Two floats rounded to bf16 (ties to even) in one register, `lo` in the low half.
DEV u32 pack_bf16x2(float lo, float hi) {
#ifdef SSL_EMU
    return ((u32)__float_as_int(round_bf16f(hi)) & 0xffff0000u) | ((u32)__float_as_int(round_bf16f(lo)) >> 16);
#else
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#endif
}

DEV float word_as_float(u32 u) { return __int_as_float((int)u); }
