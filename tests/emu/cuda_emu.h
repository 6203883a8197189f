// Host emulation of the CUDA kernels, for tests on machines without a GPU.
//
// kernels/*.cu are compiled as C++20 for the host with this header first (see
// tests/cuda_emulated.rs, which generates one translation unit per family). A launch runs the
// grid's blocks one after another; the threads of a block are real host threads, so
// __syncthreads (a barrier over the block), warp shuffles (an exchange over the 32 threads of a
// warp) and __shared__ memory (a static variable, shared by the one block that runs at a time)
// keep their meaning. mma.sync m16n8k8 TF32, m16n8k16 BF16 and cvt.rna.tf32 are emulated from the
// PTX ISA's fragment layouts. Threads that return early drop out of the barriers, as on the GPU. Blocks run
// in a shuffled order (seeded), so a kernel that assumes an order between blocks fails here too.
// Shared memory is poisoned: tests/cuda_emulated.rs rewrites each `__shared__ T name[..];` into a
// reference to `emu_shared<T[..]>`, a slot of one 48 KB arena (the static shared-memory limit),
// and each `extern __shared__` array into the launch's dynamic shared memory after it. The
// launcher fills both with 0xFF bytes (NaN as float or double, -1 as an integer) before every
// block, so a kernel reading shared memory it did not write this block sees garbage.
//
// What this checks: indexing, bounds, reductions and numerics of every kernel against the CPU
// reference. What it cannot: timing, races that a different schedule would expose, register or
// shared-memory limits, the real tensor-core hardware.
#pragma once
#include <math.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define SSL_EMU 1

struct emu_dim3 {
    unsigned x, y, z;
};

struct emu_block;

struct emu_thread {
    emu_dim3 tid, bid, bdim, gdim;
    int linear, lane, warp;
    emu_block* block;
};

inline thread_local emu_thread emu_t;

#define threadIdx (emu_t.tid)
#define blockIdx (emu_t.bid)
#define blockDim (emu_t.bdim)
#define gridDim (emu_t.gdim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};

struct emu_mma_slot {
    unsigned a[4], b[2];
    float c[4];
};

// One cp.async as its thread issued it, for the bank accounting: the shared-memory address and
// size (0: a commit, which separates the groups).
struct emu_copy_trace {
    uintptr_t dst;
    int bytes;
};

struct emu_block {
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
    std::vector<uint64_t> xch;          // one 8-byte slot per thread, for shuffles
    std::vector<emu_mma_slot> mma;      // one slot per thread, for mma.sync
    std::vector<const void*> ldsm[2];   // one row address per thread, for ldmatrix (two in turn)
    std::vector<std::vector<emu_copy_trace>> copies;  // per thread: its cp.async stores
    std::atomic<uint64_t> ldsm_phases{0}, ldsm_extra{0};     // ldmatrix wavefronts (see below)
};

// ---- shared-memory bank conflicts ------------------------------------------------------------

// Shared memory serves 128 bytes (32 banks of 4) per wavefront. A 16-byte access is split into
// phases of 8 lanes (a quarter warp; ldmatrix: one 8-row matrix each), a 4-byte one is served
// to all 32 lanes at once; a phase takes as many wavefronts as the most distinct addresses that
// fall on one bank (equal addresses are one broadcast). `extra` counts the wavefronts past the
// first: 0 is conflict-free. The GPU's profiler counts the same (l1tex shared bank conflicts).
struct emu_bank_stats {
    uint64_t cp16_phases = 0, cp16_extra = 0, cp4_phases = 0, cp4_extra = 0, ldsm_phases = 0, ldsm_extra = 0;
};
inline uint64_t emu_phase_wavefronts(const uintptr_t* addr, int n, int width) {
    uintptr_t distinct[32];
    int m = 0;
    for (int i = 0; i < n; ++i) {
        bool seen = false;
        for (int j = 0; j < m; ++j) seen = seen || distinct[j] == addr[i];
        if (!seen) distinct[m++] = addr[i];
    }
    int on_bank[32] = {0}, most = 0;
    for (int j = 0; j < m; ++j) {
        const int bank = (int)((distinct[j] / width) % (128 / width));
        most = std::max(most, ++on_bank[bank]);
    }
    return (uint64_t)most;
}
// Per kernel name, over every launch so far (ssl_emu_bank_stats reads it), under the launch lock.
inline std::mutex& emu_launch_lock() {
    static std::mutex m;
    return m;
}
inline std::map<std::string, emu_bank_stats>& emu_bank_table() {
    static std::map<std::string, emu_bank_stats> t;
    return t;
}

// ---- shared memory -----------------------------------------------------------------------

// One arena for the one block that runs at a time: EMU_SHARED_BYTES of static slots, then the
// launch's dynamic shared memory (`extern __shared__`, rewritten into emu_dynamic_shared()).
// Slots are handed out per declaration (its key: the address of a static tag beside it, unique
// per template instantiation) on first use in a launch; the launcher resets the slots at each
// launch and poisons the bytes at each block. Static and dynamic together may not pass the
// sm_90 per-block limit, as on the GPU.
constexpr size_t EMU_SHARED_BYTES = 48 * 1024;
constexpr size_t EMU_BLOCK_SHARED_LIMIT = 227 * 1024;
struct emu_shared_arena {
    alignas(64) unsigned char bytes[EMU_SHARED_BYTES + EMU_BLOCK_SHARED_LIMIT];
    std::map<const void*, size_t> slots;
    size_t used = 0;
    size_t dynamic = 0;  // this launch's dynamic shared memory
    std::mutex mu;
};
inline emu_shared_arena& emu_arena() {
    static emu_shared_arena a;
    return a;
}
template <class T>
T* emu_shared(const void* key) {
    emu_shared_arena& a = emu_arena();
    std::lock_guard<std::mutex> g(a.mu);
    auto it = a.slots.find(key);
    if (it == a.slots.end()) {
        const size_t off = (a.used + 15) & ~size_t(15);
        if (off + sizeof(T) > EMU_SHARED_BYTES || off + sizeof(T) + a.dynamic > EMU_BLOCK_SHARED_LIMIT) {
            std::fprintf(stderr, "emulated kernel uses more than %zu bytes of static shared memory, or more than %zu in all\n",
                         EMU_SHARED_BYTES, EMU_BLOCK_SHARED_LIMIT);
            std::abort();
        }
        it = a.slots.emplace(key, off).first;
        a.used = off + sizeof(T);
    }
    return reinterpret_cast<T*>(a.bytes + it->second);
}
inline unsigned char* emu_dynamic_shared() { return emu_arena().bytes + EMU_SHARED_BYTES; }
// %dynamic_smem_size.
inline unsigned emu_dynamic_smem_bytes() { return (unsigned)emu_arena().dynamic; }
// Called by the launcher, which runs one launch (and one block) at a time.
inline void emu_shared_new_launch(size_t dynamic) {
    emu_arena().slots.clear();
    emu_arena().used = 0;
    emu_arena().dynamic = dynamic;
}
inline void emu_shared_poison() { std::memset(emu_arena().bytes, 0xFF, EMU_SHARED_BYTES + emu_arena().dynamic); }

inline void __syncthreads() { emu_t.block->bar->arrive_and_wait(); }

inline void emu_warp_sync() { emu_t.block->warp_bars[emu_t.warp]->arrive_and_wait(); }

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int offset) {
    static_assert(sizeof(T) <= 8, "shuffle of a wide type");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    emu_t.block->xch[emu_t.linear] = bits;
    emu_warp_sync();
    const int src = emu_t.warp * 32 + (emu_t.lane ^ offset);
    uint64_t got = emu_t.block->xch[src];
    emu_warp_sync();
    T r;
    std::memcpy(&r, &got, sizeof(T));
    return r;
}

// The GPU's fast division (MUFU reciprocal, within 2 ulp for normal divisors); the host's exact
// quotient is within that bound.
inline float __fdividef(float a, float b) { return a / b; }

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}

inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}

// The read-only-cache load: a plain load here.
template <class T>
inline T __ldg(const T* p) {
    return *p;
}

// The L2-only load (another block's stores, the split-K sum): a plain load here.
template <class T>
inline T __ldcg(const T* p) {
    return *p;
}

// The blocks of a launch run one after another here, so a fence only has to order this
// block's threads; atomics are real ones (a block's threads are host threads).
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }

[[noreturn]] inline void __trap() { std::abort(); }

// cvt.rna.tf32.f32: round to 10 mantissa bits, ties away from zero; inf and NaN kept.
inline unsigned emu_tf32(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
    return u;
}

// The warp-wide exchange behind an emulated mma.sync: every lane publishes its fragment
// registers, and once all 32 have, each reads the warp's slots (then waits again, so no lane
// overwrites its slot with the next mma's while another still reads).
inline const emu_mma_slot* emu_mma_share(unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
    emu_block& blk = *emu_t.block;
    emu_mma_slot& me = blk.mma[emu_t.linear];
    me.a[0] = a0, me.a[1] = a1, me.a[2] = a2, me.a[3] = a3, me.b[0] = b0, me.b[1] = b1;
    emu_warp_sync();
    return &blk.mma[emu_t.warp * 32];
}

// This lane's four C elements (m16n8: c0 (g, 2t), c1 (g, 2t + 1), c2 (g + 8, 2t), c3 (g + 8,
// 2t + 1)) += A (16 x K) B (K x 8), the products added in k order.
template <int K>
inline void emu_mma_accumulate(float* c, const float (&A)[16][K], const float (&B)[K][8]) {
    const int g = emu_t.lane / 4, t = emu_t.lane % 4;
    for (int e = 0; e < 4; ++e) {
        const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
        float acc = c[e];
        for (int k = 0; k < K; ++k) acc += A[row][k] * B[k][col];
        c[e] = acc;
    }
}

inline float emu_bits_to_float(unsigned u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32, D = A B + C over the warp. Fragments
// (PTX ISA, m16n8k8 .tf32), g = lane / 4, t = lane % 4:
//   A 16x8: a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4)
//   B 8x8:  b0 (t, g), b1 (t + 4, g)
inline void emu_mma_tf32(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
    const emu_mma_slot* warp = emu_mma_share(a0, a1, a2, a3, b0, b1);
    float A[16][8], B[8][8];
    for (int l = 0; l < 32; ++l) {
        const emu_mma_slot& s = warp[l];
        const int g = l / 4, t = l % 4;
        A[g][t] = emu_bits_to_float(s.a[0]);
        A[g + 8][t] = emu_bits_to_float(s.a[1]);
        A[g][t + 4] = emu_bits_to_float(s.a[2]);
        A[g + 8][t + 4] = emu_bits_to_float(s.a[3]);
        B[t][g] = emu_bits_to_float(s.b[0]);
        B[t + 4][g] = emu_bits_to_float(s.b[1]);
    }
    emu_warp_sync();
    emu_mma_accumulate<8>(c, A, B);
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: each register holds two bf16, the lower
// k in the low half (PTX ISA, m16n8k16 .bf16):
//   A 16x16: a0 (g, 2t..2t+1), a1 (g + 8, 2t..), a2 (g, 2t + 8..), a3 (g + 8, 2t + 8..)
//   B 16x8:  b0 (2t..2t+1, g), b1 (2t + 8.., g)
// Products of two bf16 are exact in FP32.
inline void emu_mma_bf16(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
    const emu_mma_slot* warp = emu_mma_share(a0, a1, a2, a3, b0, b1);
    float A[16][16], B[16][8];
    auto lo = [](unsigned u) { return emu_bits_to_float(u << 16); };
    auto hi = [](unsigned u) { return emu_bits_to_float(u & 0xffff0000u); };
    for (int l = 0; l < 32; ++l) {
        const emu_mma_slot& s = warp[l];
        const int g = l / 4, t = l % 4;
        A[g][2 * t] = lo(s.a[0]), A[g][2 * t + 1] = hi(s.a[0]);
        A[g + 8][2 * t] = lo(s.a[1]), A[g + 8][2 * t + 1] = hi(s.a[1]);
        A[g][2 * t + 8] = lo(s.a[2]), A[g][2 * t + 9] = hi(s.a[2]);
        A[g + 8][2 * t + 8] = lo(s.a[3]), A[g + 8][2 * t + 9] = hi(s.a[3]);
        B[2 * t][g] = lo(s.b[0]), B[2 * t + 1][g] = hi(s.b[0]);
        B[2 * t + 8][g] = lo(s.b[1]), B[2 * t + 9][g] = hi(s.b[1]);
    }
    emu_warp_sync();
    emu_mma_accumulate<16>(c, A, B);
}

// ---- cp.async and ldmatrix -------------------------------------------------------------

// cp.async: each thread queues its copies in groups; a copy lands only when cp.async.wait_group
// retires its group, the latest moment the PTX ISA allows, so a kernel that reads a stage before
// waiting for it reads the poison (or the previous tile) here. Copies still queued when the
// thread ends are dropped with it.
struct emu_copy {
    void* dst;
    const void* src;  // null: zero-fill
    int bytes;
};
struct emu_cp_async_queue {
    std::vector<std::vector<emu_copy>> committed;
    std::vector<emu_copy> open;
};
inline thread_local emu_cp_async_queue emu_cpq;

inline void emu_cp_async(void* dst, const void* src, int bytes) {
    emu_cpq.open.push_back({dst, src, bytes});
    emu_t.block->copies[emu_t.linear].push_back({(uintptr_t)dst, bytes});
}
inline void emu_cp_async_commit() {
    emu_t.block->copies[emu_t.linear].push_back({0, 0});
    emu_cpq.committed.push_back(std::move(emu_cpq.open));
    emu_cpq.open.clear();
}
inline void emu_cp_async_wait(int n) {
    auto& q = emu_cpq.committed;
    const size_t retire = q.size() > (size_t)n ? q.size() - (size_t)n : 0;
    for (size_t g = 0; g < retire; ++g)
        for (const emu_copy& c : q[g]) {
            if (c.src) std::memcpy(c.dst, c.src, (size_t)c.bytes);
            else std::memset(c.dst, 0, (size_t)c.bytes);
        }
    q.erase(q.begin(), q.begin() + (long)retire);
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lane l gives the address of row l % 8 of matrix
// l / 8; r[j] = 32-bit word l % 4 of row l / 4 of matrix j. One warp barrier per call: the
// address slots alternate between two sets, and no lane can reach the call after next before
// every lane has read this one.
inline thread_local int emu_ldsm_turn = 0;
inline void emu_ldmatrix_x4(unsigned* r, const void* row) {
    emu_block& blk = *emu_t.block;
    std::vector<const void*>& slots = blk.ldsm[emu_ldsm_turn];
    emu_ldsm_turn ^= 1;
    slots[emu_t.linear] = row;
    emu_warp_sync();
    const int base = emu_t.warp * 32, l = emu_t.lane;
    if (l == 0) {
        for (int j = 0; j < 4; ++j) {
            uintptr_t rows[8];
            for (int i = 0; i < 8; ++i) rows[i] = (uintptr_t)slots[base + j * 8 + i];
            blk.ldsm_phases += 1;
            blk.ldsm_extra += emu_phase_wavefronts(rows, 8, 16) - 1;
        }
    }
    for (int j = 0; j < 4; ++j) {
        const unsigned char* p = static_cast<const unsigned char*>(slots[base + j * 8 + l / 4]);
        std::memcpy(&r[j], p + 4 * (l % 4), 4);
    }
}

// ---- kernel registry and launch ------------------------------------------------------------

using emu_entry = void (*)(void**);

inline std::map<std::string, emu_entry>& emu_registry() {
    static std::map<std::string, emu_entry> r;
    return r;
}

template <class... A, size_t... I>
void emu_call_impl(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*reinterpret_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}
template <class... A>
void emu_call(void (*f)(A...), void** p) {
    emu_call_impl(f, p, std::index_sequence_for<A...>{});
}

#define EMU_REGISTER(name) \
    static const bool emu_registered_##name = (emu_registry()[#name] = [](void** p) { emu_call(name, p); }, true);

// A finished block's cp.async stores, warp by warp: the k-th store of each lane in the same
// commit group is one warp instruction where every lane of the warp issued the same number of
// stores in that group and the k-th ones have one size (groups where lanes diverged are left
// out, and so are 8-byte stores).
inline void emu_count_copies(const emu_block& blk, unsigned nt, emu_bank_stats& st) {
    for (unsigned w = 0; w * 32 < nt; ++w) {
        const unsigned lanes = std::min(32u, nt - w * 32);
        std::vector<size_t> at(lanes, 0);
        for (;;) {
            // Group boundaries of each lane, from `at`.
            std::vector<size_t> end(lanes);
            bool done = true, same = true;
            for (unsigned l = 0; l < lanes; ++l) {
                const auto& c = blk.copies[w * 32 + l];
                size_t e = at[l];
                while (e < c.size() && c[e].bytes != 0) ++e;
                end[l] = e;
                done = done && at[l] >= c.size();
                same = same && e - at[l] == end[0] - at[0];
            }
            if (done) break;
            for (size_t k = 0; same && k < end[0] - at[0]; ++k) {
                uintptr_t addr[32];
                const int bytes = blk.copies[w * 32][at[0] + k].bytes;
                bool one_size = true;
                for (unsigned l = 0; l < lanes; ++l) {
                    const emu_copy_trace& t = blk.copies[w * 32 + l][at[l] + k];
                    addr[l] = t.dst;
                    one_size = one_size && t.bytes == bytes;
                }
                if (!one_size) continue;
                if (bytes == 16) {
                    for (unsigned p = 0; p * 8 < lanes; ++p) {
                        st.cp16_phases += 1;
                        st.cp16_extra += emu_phase_wavefronts(addr + p * 8, (int)std::min(8u, lanes - p * 8), 16) - 1;
                    }
                } else if (bytes == 4) {
                    st.cp4_phases += 1;
                    st.cp4_extra += emu_phase_wavefronts(addr, (int)lanes, 4) - 1;
                }
            }
            for (unsigned l = 0; l < lanes; ++l) at[l] = end[l] + 1;
        }
    }
}

// Runs the grid; 0 on success, 1 for an unknown kernel.
extern "C" int ssl_emu_launch(const char* name, const unsigned* grid, const unsigned* block, unsigned shared, void** params);
// The bank accounting of every launch of kernel `name` so far, as 6 counters in
// emu_bank_stats's order; 1 when it never ran.
extern "C" int ssl_emu_bank_stats(const char* name, uint64_t* out);
