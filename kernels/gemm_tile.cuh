// The tiled GEMM main loops shared by matmul.cu and conv.cu (the convolutions are implicit
// GEMMs: only the operand loaders differ).
//
// One block computes a tile of C = A (M x K) . B (K x N) over the k range [k0, k1) with 256
// threads. The math is a template argument (GEMM_SIMT, GEMM_TF32, GEMM_BF16), and the type of
// the shared memory the kernel takes (SmemOf<MATH, TILE>, dynamic: gemm_smem) picks the loop:
// - SIMT (exact FP32, the default; GemmSmem): k-major tiles, the next tile prefetched into
//   registers while the current one is multiplied; each thread owns a 4 x 4 block of outputs
//   (rows 4 ty + r, columns 4 tx + c), reads its 4 + 4 operands per k step as two 16-byte shared
//   loads, and adds the products in k order with fmaf, so the result is deterministic and as
//   accurate as a plain dot product.
// - SIMT tiles are BM x BN x BK = 64 x 64 x 16.
// - Tensor cores (GemmSmemTc<TILE>): a STAGES-deep cp.async pipeline from global to shared
//   memory (tiles k-contiguous for both operands, 16-byte chunks XOR-swizzled), fragments read with
//   ldmatrix, and mma.sync with FP32 accumulation; 8 warps, 2 x 4 or 4 x 2. Four block tiles
//   (TcTile): 64 x 64 x 16 (warp 32 x 16), 128 x 128 x 32 (warp 64 x 32), 128 x 64 x 32 and
//   64 x 128 x 32 (backward-weight only).
//   - TF32 (opt-in): m16n8k8, operands rounded with cvt.rna.tf32 as fragments.
//   - BF16 (precision = "bf16"): m16n8k16, operands rounded to bf16 (ties to even) as they are
//     packed into fragments, so the kernel alone gives bf16-operand semantics.
//
// A loader is a struct with
//   static constexpr bool A_K_FAST / B_K_FAST: consecutive k are adjacent in memory for A / B
//     (picks the thread-to-element map that makes tile loads coalesced, see tile_coord);
//   static constexpr bool A_VEC / B_VEC (K_FAST operands of the tensor-core loop only): the
//     loader promises that a thread's 4 elements are always one aligned 16-byte chunk, all in
//     range or all not, and gives only p[0] (the chunk, or null for zeros); the copy is then one
//     16-byte cp.async with no per-element test;
//   static constexpr bool A_MN / B_MN (tensor-core loop only): the operand's 4 consecutive rows
//     (m of A, n of B) at one k are one aligned 16-byte chunk, all in range or all not, copied
//     into an MN-major stage (TcTile::mn_at; a Tile places its chunks by chunk_coord, one per
//     16-deep piece, or stage_chunk_coord, one k row per stage) whose fragments are read 8
//     bytes at a time (TcTile::frag_row, frag_col);
//   a type Thread, made once per thread and block by Thread(loader, M, N, m0, n0, k0, k1), whose
//     addr(pa, pb) gives where this thread's 4 + 4 elements of the next BK-deep tile pair are
//     (null for zeros: outside [0, M) x [k0, k1) and [k0, k1) x [0, N), and padding). Tiles are
//     asked for in order, so a Thread may keep per-row tables and advance its k indices
//     incrementally: the convolution loaders do, and make no division in the main loop;
//   or, for the tensor-core loop, a template Tile<TILE> that serves the whole block tile at once
//     (TileLoader): the 128-row convolution loaders and MatmulChunkLoader, which keep their
//     position along k once for every piece and give each 16-byte copy a predicate. An MN-major
//     loader must be one.
// The 64 x 64 matmul loader's Thread is two StridedOperands; the other matmul tiles take
// MatmulChunkLoader (matmul.cu), a Tile.
#pragma once
#include "common.cuh"
#include "mma.cuh"

#define BM 64
#define BN 64
#define BK 16
#define GEMM_THREADS 256
// Row padding of the k-major shared tiles: a stride of 72 floats (8 mod 32 banks) keeps both
// the SIMT reads and the mma fragment reads free of bank conflicts.
#define SPAD 8

#define GEMM_SIMT 0
#define GEMM_TF32 1
#define GEMM_BF16 2

// Tiles in flight in the tensor-core pipeline: one being multiplied, STAGES - 1 loading.
#define STAGES 3

struct __align__(16) GemmSmem {
    float a[BK][BM + SPAD];
    float b[BK][BN + SPAD];
};

// A tensor-core block tile: MB x NB of the loaders' BM x BN pieces, and KB of their BK-deep k
// steps per pipeline stage. A loader Thread serves one BM x BK piece of A and one BK x BN piece
// of B per addr() call, so a block keeps PIECES of them (at rows m0 + p BM and columns
// n0 + p BN) and calls each KB times per stage: the loaders stay written for 64 x 64 x 16.
// The 8 warps sit WARPS_M x WARPS_N, each owning a WM x WN sub-tile of MT x NT mma tiles.
template <int MB_, int NB_, int KB_>
struct TcTile {
    static constexpr int MB = MB_, NB = NB_, KB = KB_, PIECES = MB_ > NB_ ? MB_ : NB_;
    static constexpr int TM = BM * MB_, TN = BN * NB_, TK = BK * KB_;
    // The 8 warps split the longer side 4 ways: 2 x 4 (128 x 128: warps of 64 x 32; 64 x 128
    // and 64 x 64), 4 x 2 for 128 x 64 (warps of 32 x 32, where 2 x 4 gave 64 x 16: 8 A
    // fragments for 2 B ones per k16 step, 30 fragment instructions per 8 MMAs against 24).
    static constexpr int WARPS_M = TM > TN ? 4 : 2, WARPS_N = 8 / WARPS_M;
    static constexpr int WM = TM / WARPS_M, WN = TN / WARPS_N, MT = WM / 16, NT = WN / 8;
    // Whether forward and backward-data convolutions and matmuls split k on this tile: only 64 x
    // 64, the tile for grids too small to fill the GPU (the Rust side's rule, gemm.rs). The
    // others compile without the split epilogue (its registers made ptxas spill there).
    static constexpr bool SPLITS = MB_ == 1 && NB_ == 1;
    // Where element (row, k) of an operand tile sits in its stage ([mn][k], rows of TK floats,
    // unpadded). Shared memory serves 128 bytes (eight 16-byte bank groups) per wavefront, and
    // both of its accesses here move 16-byte chunks of a row (4 consecutive k): an ldmatrix
    // phase reads one chunk of 8 consecutive rows, a quarter warp of 16-byte cp.async stores
    // chunks 0-3 of 2 consecutive rows. Padding cannot serve both (the first needs an odd row
    // stride in chunks, the second one of 4 mod 8), so the chunk index is XORed with the row:
    // - TK = 16 (4 chunks, two rows per 128 bytes): chunk ^ ((row >> 1) & 3): the 8 rows of a
    //   phase are 4 row pairs x 2 halves of a 128-byte line, and a row pair's chunks stay apart;
    // - TK = 32 (8 chunks, one row per 128 bytes): chunk ^ ((row & 1) << 2 | (row >> 1) & 3):
    //   8 rows give 8 distinct masks, and the two rows of a store phase land in different halves.
    // (tests/cuda_emulated.rs counts the wavefronts of every such access: no conflict.)
    // The loops split k into this thread's part kt and a constant kc (a multiple of 4 whose chunk
    // bits kt does not use) and use at(row, kt + kc) == at(row, kt) ^ kc, and, for rows 8 apart,
    // at(row + 8 j, k) == at(row, k) + 8 j TK: one per-thread offset, then an XOR and an add with
    // constants per access, so no swizzled address occupies a register of its own.
    DEVM static int at(int row, int k) {
        const int mask = TK == 16 ? (row >> 1) & 3 : ((row & 1) << 2) | ((row >> 1) & 3);
        return row * TK + (((k >> 2) ^ mask) << 2) + (k & 3);
    }
    // An MN-major operand (the loader's A_MN / B_MN: rows contiguous in memory, as dy and col(x)
    // are in backward-weight) sits [k][mn] in its stage, rows of `width` + MN_PAD floats. Its
    // 16-byte copies move 4 consecutive rows at one k, a quarter warp 8 chunks of one k row: 128
    // contiguous bytes. No ldmatrix transposes 32-bit elements, so its fragments are read with
    // plain 8-byte loads, lane (g, t) at (k + t, mn + 2g .. 2g + 1) (frag_row, frag_col): a row
    // stride of 8 mod 32 banks puts a half warp's 4 k and 4 row pairs on 32 distinct banks. The
    // offsets are linear, so a lane's reads are one base and immediate offsets.
    static constexpr int MN_PAD = 8;
    DEVM static int mn_at(int k, int mn, int width) { return k * (width + MN_PAD) + mn; }
    // Which rows of the stage an mma fragment's rows are. Any one-to-one map serves, if the
    // epilogue uses it too: an MN-major operand takes the one that puts the two rows a lane
    // reads at one k side by side, so one 8-byte load gives both. A (A_MN): rows g and g + 8 of
    // m16 tile mt are rows 2g and 2g + 1 of its 16. B (B_MN): column g of n8 tiles 2j and 2j + 1
    // are columns 2g and 2g + 1 of their 16. Otherwise (ldmatrix) the identity.
    DEVM static int frag_row(bool mn_major, int mt, int r) { return mt * 16 + (mn_major ? (r & 7) * 2 + (r >> 3) : r); }
    DEVM static int frag_col(bool mn_major, int nt, int c) { return mn_major ? (nt >> 1) * 16 + 2 * c + (nt & 1) : nt * 8 + c; }
};
// The variants (src/backend/cuda/matmul.rs, `Tile`, picks one per launch).
typedef TcTile<1, 1, 1> Tile64;      // 64 x 64 x 16: grids too small for the big tiles, split-K
typedef TcTile<2, 2, 2> Tile128;     // 128 x 128 x 32
typedef TcTile<2, 1, 2> Tile128x64;  // 128 x 64 x 32: outputs at most 64 wide
typedef TcTile<1, 2, 2> Tile64x128;  // 64 x 128 x 32: backward-weight with 64 output channels

template <class T>
struct __align__(16) GemmSmemTc {
    // [m][k], swizzled (TcTile::at), or [k][m] with padded rows (TcTile::mn_at, A_MN).
    float a[STAGES][(T::TM + T::MN_PAD) * T::TK];
    float b[STAGES][(T::TN + T::MN_PAD) * T::TK];  // [n][k] or [k][n]
};

// The shared memory of a GEMM of math MATH and tile TILE (SIMT: always 64 x 64 x 16).
template <int MATH, class TILE>
struct SmemOf {
    typedef GemmSmemTc<TILE> T;
};
template <class TILE>
struct SmemOf<GEMM_SIMT, TILE> {
    typedef GemmSmem T;
};

// The bytes of dynamic shared memory the launch gave this block.
DEV u32 dynamic_smem_bytes() {
#ifdef SSL_EMU
    return emu_dynamic_smem_bytes();
#else
    u32 r;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
    return r;
#endif
}

// The block's GEMM shared memory. It is dynamic: the 128-row tiles' pipeline takes 102 KB,
// over the 48 KB a static declaration may hold. The launch asks for sizeof(T) (gemm_smem_bytes
// in src/backend/cuda/matmul.rs, the same formula); a launch that gives less traps rather than
// overrun.
template <class T>
DEV T& gemm_smem() {
    extern __shared__ __align__(16) unsigned char gemm_dynamic_smem[];
    if (dynamic_smem_bytes() < sizeof(T)) __trap();
    return *reinterpret_cast<T*>(gemm_dynamic_smem);
}

// Element r (0..3) of this thread's share of a BM x BK (A) or BK x BN (B) tile, as
// (row-or-col index within the tile, k index within the tile). Where k is contiguous in memory
// (K_FAST), a thread's four elements are four consecutive k of one row, so they can move as one
// 16-byte load; otherwise consecutive threads take consecutive rows (coalesced) at k = tid / W
// + 4 r.
template <bool K_FAST, int W>
DEV void tile_coord(int tid, int r, int& mn, int& kk) {
    if (K_FAST) {
        static_assert(W * BK == 4 * GEMM_THREADS, "one row of 4 consecutive k per thread");
        mn = tid / 4;
        kk = (tid % 4) * 4 + r;
    } else {
        const int e = tid + r * GEMM_THREADS;
        mn = e % W;
        kk = e / W;
    }
}

// The 16-byte chunk a thread copies of an MN-major operand's BM x BK (or BK x BN) piece: rows
// mn .. mn + 3 at k index kk, 16 chunks per k row, 16 rows of k.
DEV void chunk_coord(int tid, int& mn, int& kk) {
    static_assert(BM == 64 && BN == 64 && BK * BM / 4 == GEMM_THREADS, "one chunk per thread and piece");
    mn = 4 * (tid % (BM / 4));
    kk = tid / (BM / 4);
}

// Whether a thread's four element pointers are one aligned run of 4 floats (a K_FAST operand
// away from padding, tile edges and tap boundaries): then they move as one 16-byte access.
DEV bool one_vector(const float* const* p) {
    return p[0] && p[1] == p[0] + 1 && p[2] == p[0] + 2 && p[3] == p[0] + 3 && ((u64)p[0] & 15) == 0;
}

// One operand whose element (mn, k) is P[mn * mn_stride + k * k_stride] (a row-major matrix or
// its transpose): where this thread's 4 elements of each tile are, as pointers advanced by
// BK * k_stride per tile. The matmul loaders use one for A and one for B.
template <bool K_FAST, int W>
struct StridedOperand {
    static constexpr bool VEC = false;  // a K_FAST run may straddle the end of k: tested per element
    const float* cur[4];  // null outside [0, limit)
    int k[4], k1;
    i64 step;
    StridedOperand() = default;  // for arrays of loader Threads (TcTile::PIECES)
    DEVM StridedOperand(const float* P, i64 mn_stride, i64 k_stride, int mn0, int limit, i64 k0, i64 k1_) {
        step = BK * k_stride;
        k1 = (int)k1_;
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            int i, kk;
            tile_coord<K_FAST, W>(threadIdx.x, r, i, kk);
            k[r] = (int)k0 + kk;
            cur[r] = mn0 + i < limit ? P + (i64)(mn0 + i) * mn_stride + (i64)k[r] * k_stride : nullptr;
        }
    }
    DEVM void addr(const float** p) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            p[r] = (cur[r] && k[r] < k1) ? cur[r] : nullptr;
            if (cur[r]) cur[r] += step;
            k[r] += BK;
        }
    }
};

// Where output row `row` starts in C: row * ldc for a dense matrix. The strided convolution's
// backward-data (one GEMM per stride phase) scatters its rows with a mapper of its own.
struct DenseRows {
    i64 ldc;
    DEVM i64 operator()(int row) const { return (i64)row * ldc; }
};

// Per-column sums of the tile as stored (the batch-norm statistics of a convolution's output,
// computed in its epilogue instead of by a second pass over it): for the block's row tile
// bx = blockIdx.x, part[(2 bx) * ldc + col0 + col] = the sum over the tile's rows < M and
// part[(2 bx + 1) * ldc + col0 + col] = the sum of squares, in double, in a fixed order (the
// layout batchnorm_finalize_fwd_f32 reads). part null: none. Under split-K, the last piece's
// sums (SplitK).
struct ColStats {
    double* part;
    i64 ldc;   // channels in all
    int col0;  // this GEMM's first channel (its group's)
    // The last step of both loops' reductions: `red` [groups][sum, sq][tn] holds each group's
    // column sums (a warp or a warp row, in shared memory) of a tile tn wide; thread tid < tn
    // adds the groups of column tid in order and writes them. After a __syncthreads.
    DEVM void finish(const double* red, int groups, int n0, int N, int tn) const {
        const int col = threadIdx.x;
        if (col >= tn || n0 + col >= N) return;
        double sum = 0.0, sq = 0.0;
        for (int w = 0; w < groups; ++w) sum += red[(w * 2) * tn + col], sq += red[(w * 2 + 1) * tn + col];
        part[(i64)blockIdx.x * 2 * ldc + col0 + n0 + col] = sum;
        part[((i64)blockIdx.x * 2 + 1) * ldc + col0 + n0 + col] = sq;
    }
};

// Split-K inside the launch: the pieces of one output tile meet at a counter instead of in a
// second kernel (CUTLASS's serial split-K, without the waiting). Every piece stores its partial
// products (unrounded) at part + sp * stride, counts itself in, and is done, except the last to
// arrive: it adds all the pieces in piece order, in double (what the separate sum pass did, bit
// for bit, whichever block comes last), and runs the epilogue (bf16 rounding, addend, column
// statistics) on the sum. The last piece sets its counter back to 0, so every counter is 0
// between launches and graph replays. part null: no split-K.
struct SplitK {
    // The kernel's own arguments, so that nothing of this is held in registers through the main
    // loop: the output `out` (C lies inside it) and the partials `part` (null: no split-K),
    // piece s of C's element at part + s * stride + (its offset from out).
    const float* out;
    float* part;
    i64 stride;
    int splits;
    int phases;     // blockIdx.z = (tile z * splits + piece) * phases + phase (1 but backward-data)
    int* arrivals;  // the launch's counters, one per output tile (grid x, y and z / splits)

    // This block's piece, and its tile's counter.
    DEVM int piece() const { return (int)(blockIdx.z / phases) % splits; }
    DEVM int* counter() const {
        const int z = (int)blockIdx.z, zt = z / phases / splits * phases + z % phases;
        return arrivals + ((i64)zt * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    }

    // The epilogue's first step: with split-K, stores this block's partials of C (each(f) calls
    // f(acc index, offset in C) for every element of the tile inside C) and, when this block is
    // the last piece, replaces `acc` by the sums over the pieces in piece order (its own from
    // registers). False: this block is done.
    template <class Each>
    DEVM bool gather(float* acc, const float* C, Each each, int* flag) const {
        if (!part) return true;
        const int sp = piece();
        float* mine = part + (C - out) + (i64)sp * stride;
        each([&](int i, i64 at) { mine[at] = acc[i]; });
        if (!last_to_arrive(counter(), splits, flag)) return false;
        const float* first = part + (C - out);
        each([&](int i, i64 at) {
            double sum = 0.0;
            for (int s = 0; s < splits; ++s) sum += (double)(s == sp ? acc[i] : __ldcg(first + s * stride + at));
            acc[i] = (float)sum;
        });
        return true;
    }
};

// The store both loops end with, over this thread's NACC accumulators (each(f) calls f(acc
// index, offset in C) for every element of the tile inside C): under split-K the pieces' sum
// (SplitK::gather), then bf16 rounding when `round_out`, then C = acc (+ addend) at each place.
// OUT16 (with round_out, no addend): the output is bf16 storage, C's offset from split.out
// counted in 2-byte elements (a fused convolution's output for batch norm). `smem`: the block's
// shared memory, free once every thread is past its last tile read. False: this block is a
// split-K piece that is done.
template <int NACC, bool OUT16, class Each>
DEV bool store_tile(float* acc, float* C, Each each, const SplitK& split, void* smem, bool round_out, const float* addend) {
    if (split.part) {
        __syncthreads();  // every thread is past its last tile read (gather's flag)
        if (!split.gather(acc, C, each, reinterpret_cast<int*>(smem))) return false;
    }
#pragma unroll
    for (int i = 0; i < NACC; ++i) acc[i] = round_out ? round_bf16f(acc[i]) : acc[i];
    if (OUT16) {
        u16* c16 = reinterpret_cast<u16*>(const_cast<float*>(split.out)) + (C - split.out);
        each([&](int i, i64 at) { c16[at] = bf16_bits(acc[i]); });
    } else {
        each([&](int i, i64 at) { C[at] = acc[i] + (addend ? addend[at] : 0.0f); });
    }
    return true;
}

// Loads a pointer-or-null as a value (SIMT path).
DEV float value_or_zero(const float* p) { return p ? __ldg(p) : 0.0f; }

// `s` is the kernel's one __shared__ SmemOf<MATH>::T (declared in the kernel, so that several
// instantiations in one kernel share it); its type picks the SIMT or the tensor-core loop.
// C[out_row(row) + col] = the (row, col) element of the product over k in [k0, k1), for the tile
// at (row blockIdx.x * BM, column blockIdx.y * BN). Must be reached by all GEMM_THREADS threads
// of the block. Every (row < M, col < N) of the tile is written, zeros when k0 >= k1.
// `split`: the split-K pieces of the tile, summed by the last to finish (SplitK); the epilogue
// below runs on the sum. `round_out`: the results are rounded to bf16 as they are stored
// (precision = "bf16"). `addend` (null: none): C gets (rounded) result + addend at the same
// place, the sum autograd would make in a pass of its own (backward-data into a ResNet block's
// input, which the shortcut's gradient reached first). OUT16: C is bf16 storage (store_tile).
template <class L, int MATH, bool OUT16 = false, class Rows = DenseRows>
DEV void gemm_block(GemmSmem& s, const L& ld, int M, int N, i64 k0, i64 k1, float* C, Rows out_row, SplitK split,
                    bool round_out = false, ColStats stats = ColStats{nullptr, 0, 0}, const float* addend = nullptr) {
    const int tid = threadIdx.x;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int ty = tid / 16, tx = tid % 16;
    float acc[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) acc[i] = 0.0f;

    float ra[4], rb[4];
    typename L::Thread th(ld, M, N, m0, n0, k0, k1);
    // A K_FAST operand's four values come as one float4 when they can.
    auto fetch = [](const float* const* p, float* v, bool k_fast) {
        if (k_fast && one_vector(p)) {
            const float4 q = __ldg(reinterpret_cast<const float4*>(p[0]));
            v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
            return;
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) v[r] = value_or_zero(p[r]);
    };
    auto load = [&]() {
        const float* pa[4];
        const float* pb[4];
        th.addr(pa, pb);
        fetch(pa, ra, L::A_K_FAST);
        fetch(pb, rb, L::B_K_FAST);
    };
    if (k0 < k1) load();
    for (i64 kt = k0; kt < k1; kt += BK) {
        __syncthreads();  // everyone is done reading the previous tile
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            int i, kk;
            tile_coord<L::A_K_FAST, BM>(tid, r, i, kk);
            s.a[kk][i] = ra[r];
            int j, kb;
            tile_coord<L::B_K_FAST, BN>(tid, r, j, kb);
            s.b[kb][j] = rb[r];
        }
        __syncthreads();
        if (kt + BK < k1) load();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            // Rows of 72 floats (288 bytes) keep every 4-float group 16-byte aligned.
            const float4 a4 = *reinterpret_cast<const float4*>(&s.a[kk][4 * ty]);
            const float4 b4 = *reinterpret_cast<const float4*>(&s.b[kk][4 * tx]);
            const float av[4] = {a4.x, a4.y, a4.z, a4.w};
            const float bv[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
            for (int r = 0; r < 4; ++r)
#pragma unroll
                for (int c = 0; c < 4; ++c) acc[r * 4 + c] = fmaf(av[r], bv[c], acc[r * 4 + c]);
        }
    }

    // f(i, offset in C) for each of this thread's outputs inside C.
    auto each = [&](auto f) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int row = m0 + 4 * ty + r;
            if (row >= M) continue;
#pragma unroll
            for (int c = 0; c < 4; ++c)
                if (n0 + 4 * tx + c < N) f(r * 4 + c, out_row(row) + n0 + 4 * tx + c);
        }
    };
    if (!store_tile<16, OUT16>(acc, C, each, split, &s, round_out, addend)) return;
    if (stats.part) {
        // Column sums: this thread's 4 rows, then the two ty of a warp (lanes l, l ^ 16), then
        // the 8 warps in order through shared memory (the tiles are free once all are here).
        double* red = reinterpret_cast<double*>(&s);  // [warp][sum, sq][BN]: 8 KB
        __syncthreads();
        const int warp = tid / 32;
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            double a = 0.0, b = 0.0;
#pragma unroll
            for (int r = 0; r < 4; ++r)
                if (m0 + 4 * ty + r < M) {
                    const double v = (double)acc[r * 4 + c];
                    a += v, b += v * v;
                }
            a += __shfl_xor_sync(0xffffffffu, a, 16);
            b += __shfl_xor_sync(0xffffffffu, b, 16);
            if ((tid & 16) == 0) red[(warp * 2) * BN + 4 * tx + c] = a, red[(warp * 2 + 1) * BN + 4 * tx + c] = b;
        }
        __syncthreads();
        stats.finish(red, GEMM_THREADS / 32, n0, N, BN);
    }
}

// ---- the tensor-core pipeline ---------------------------------------------------------------

// One 16-byte chunk of a K_FAST operand's BM x BK (BN x BK) piece at rows row0.., k k0.. of a
// stage: this thread's (tile_coord), from `src`, or zeros where !ok.
template <class T>
DEV void issue_kchunk(sptr stage, int row0, int k0, const float* src, bool ok) {
    int i, kt;
    tile_coord<true, BM>(threadIdx.x, 0, i, kt);
    cp_async_16(stage + sizeof(float) * (row0 * T::TK + (T::at(i, kt) ^ k0)), src, ok);
}
// A whole stage of an MN-major operand at once (TK k rows): this thread's k row kk and the first
// of its KB chunks in each 64-row piece, rows mn .. mn + 3; chunk j is 64 / KB rows further. A
// quarter warp stores 8 chunks of one k row (128 contiguous bytes), as chunk_coord's. One k row
// per thread, where chunk_coord gives one per 16-deep piece: a loader that walks pixels (k)
// advances once per stage.
template <class T>
DEV void stage_chunk_coord(int tid, int& mn, int& kk) {
    constexpr int PER_ROW = 16 / T::KB;  // threads per k row of a piece
    static_assert(T::TK * PER_ROW == GEMM_THREADS, "one k row per thread");
    mn = 4 * (tid % PER_ROW);
    kk = tid / PER_ROW;
}
// Chunk j of piece `row0` (stage_chunk_coord; WIDTH: TM or TN).
template <class T, int WIDTH>
DEV void issue_stage_mnchunk(sptr stage, int row0, int j, const float* src, bool ok) {
    int mn, kk;
    stage_chunk_coord<T>(threadIdx.x, mn, kk);
    cp_async_16(stage + sizeof(float) * T::mn_at(kk, row0 + mn + j * (BM / T::KB), WIDTH), src, ok);
}
// One 16-byte chunk of an MN-major operand's piece (chunk_coord; WIDTH: TM or TN).
template <class T, int WIDTH>
DEV void issue_mnchunk(sptr stage, int row0, int k0, const float* src, bool ok) {
    int mn, kk;
    chunk_coord(threadIdx.x, mn, kk);
    cp_async_16(stage + sizeof(float) * T::mn_at(k0 + kk, row0 + mn, WIDTH), src, ok);
}

// This thread's four elements of one operand's BM x BK (or BN x BK) piece, whose first element
// is (row0, k0) of the stage: one 16-byte cp.async when they are one aligned run along k (a
// chunk of the tile row, TcTile::at) or all zeros (padding, past k1 or M: one zero-fill, so the
// warp's stores stay one instruction), else one 4-byte cp.async each.
template <bool K_FAST, int W, class T, bool VEC = false>
DEV void issue_operand(sptr stage, int row0, int k0, const float* const* p) {
    constexpr int F = sizeof(float);
    // Element r is (i, kt + r) (K_FAST: one chunk) or (i, kt + 4 r) with kt < 4 (tile_coord), and
    // row0 is a multiple of 8: at(row0 + i, k0 + kk) is row0 TK + (at(i, kt) ^ (k0 + ...)).
    static_assert(K_FAST || W * 4 == GEMM_THREADS, "element r of a thread is 4 r further along k");
    static_assert(K_FAST || !VEC, "a vector loader's chunks run along k");
    int i, kt;
    tile_coord<K_FAST, W>(threadIdx.x, 0, i, kt);
    const sptr rows = stage + F * row0 * T::TK;
    const int lane = T::at(i, kt);
    if (VEC || (K_FAST && (one_vector(p) || !(p[0] || p[1] || p[2] || p[3])))) {
        issue_kchunk<T>(stage, row0, k0, p[0], p[0] != nullptr);
        return;
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) cp_async_4(rows + F * (K_FAST ? (lane ^ k0) + r : lane ^ (k0 + 4 * r)), p[r], p[r] != nullptr);
}

template <class...>
struct MakeVoid {
    typedef void type;
};

// What loads a block tile's operands, made once per block by (loader, M, N, m0, n0, k0, k1);
// issue(loader, sa, sb) issues the cp.asyncs of the next tile pair into the stages at shared
// addresses sa and sb. By default: PIECES of the loader's Threads (rows m0 + p BM, columns n0 +
// p BN), each asked KB times per stage (one past MB or NB computes addresses nobody loads). A
// loader that serves the whole tile itself declares `template <class T> struct Tile` with that
// constructor and issue(): it keeps its position along k once for every piece, and gives each
// copy a predicate instead of a null pointer (a 64-bit compare per copy).
template <class L, class T, class = void>
struct TileLoader {
    static_assert(!L::A_MN && !L::B_MN, "an MN-major loader serves the whole tile (a Tile)");
    typename L::Thread th[T::PIECES];
    DEVM TileLoader(const L& ld, int M, int N, int m0, int n0, i64 k0, i64 k1) {
#pragma unroll
        for (int p = 0; p < T::PIECES; ++p) th[p] = typename L::Thread(ld, M, N, m0 + p * BM, n0 + p * BN, k0, k1);
    }
    DEVM void issue(const L&, sptr sa, sptr sb) {
#pragma unroll
        for (int kb = 0; kb < T::KB; ++kb)
#pragma unroll
            for (int p = 0; p < T::PIECES; ++p) {
                const float* pa[4];
                const float* pb[4];
                th[p].addr(pa, pb);
                if (p < T::MB) issue_operand<L::A_K_FAST, BM, T, L::A_VEC>(sa, p * BM, kb * BK, pa);
                if (p < T::NB) issue_operand<L::B_K_FAST, BN, T, L::B_VEC>(sb, p * BN, kb * BK, pb);
            }
    }
};
template <class L, class T>
struct TileLoader<L, T, typename MakeVoid<typename L::template Tile<T>>::type> : L::template Tile<T> {
    DEVM TileLoader(const L& ld, int M, int N, int m0, int n0, i64 k0, i64 k1)
        : L::template Tile<T>(ld, M, N, m0, n0, k0, k1) {}
};

// Where this lane's fragment words start in a stage of A and of B (floats), made once per block.
// ldmatrix rows: A's at (wm + (lj & 1) 8 + li, (lj >> 1) 4) plus 16 mt rows and k kc + 8 h; B's
// at (wn + li, 4 lj) plus 8 nt rows and k kc (TcTile::at's XOR form). MN-major: this lane's
// element (k t, fragment row g: stage row 2g, frag_row) of the warp's rows, plus constants per
// word. With both operands MN-major on a 128-row tile (backward-weight, a matmul of two
// transposed operands) they are made once per block and pinned in registers (an empty asm the
// compiler cannot see through): left alone, ptxas recomputed them from the thread index in
// every stage of the loop, 14 instructions of backward-weight's 128 x 128 main loop. Elsewhere
// they are made in each stage, as before: hoisted, they made ptxas spill the 64 x 64 forward
// with statistics, and pinned, the tight 64-row budgets, for a few instructions saved.
template <class T, bool A_MN, bool B_MN>
struct FragLanes {
    static constexpr bool PINNED = A_MN && B_MN && T::MB == 2;
    int a, b;
    DEVM FragLanes() {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        const int wm = (warp / T::WARPS_N) * T::WM, wn = (warp % T::WARPS_N) * T::WN;
        const int li = lane % 8, lj = lane / 8, g = lane / 4, t = lane % 4;
        a = A_MN ? T::mn_at(t, wm + 2 * g, T::TM) : T::at(wm + (lj & 1) * 8 + li, (lj >> 1) * 4);
        b = B_MN ? T::mn_at(t, wn + 2 * g, T::TN) : T::at(wn + li, 4 * lj);
#ifndef SSL_EMU
        if (PINNED) asm volatile("" : "+r"(a), "+r"(b));
#endif
    }
};

// This warp's WM x WN share of stage `st` (TK deep) multiplied into acc, (mt, nt) tile at
// acc[(mt * NT + nt) * 4]. Per k16 step, ldmatrix gives per m16 tile and k half h, r =
// {A(g, 8h + t), A(g + 8, 8h + t), A(g, 8h + 4 + t), A(g + 8, 8h + 4 + t)} and per n8 tile
// q = {B(t, g), B(4 + t, g), B(8 + t, g), B(12 + t, g)} (g = lane / 4, t = lane % 4). TF32 uses
// these as its two k8 fragments directly. BF16 pairs physical k (t, t + 4) as the fragment's
// logical k (2t, 2t + 1), and (8 + t, 12 + t) as (2t + 8, 2t + 9), in A and B alike: the same
// permutation of k on both sides, so the product is the same sum. An MN-major operand (A_MN,
// B_MN: TcTile::mn_at) gives the same words, read 8 bytes at a time for rows paired by frag_row
// and frag_col.
template <int MATH, class T, bool A_MN = false, bool B_MN = false>
DEV void mma_stage(const GemmSmemTc<T>& s, int st, float* acc, FragLanes<T, A_MN, B_MN> lanes) {
    constexpr int AK = T::TM + T::MN_PAD, BKS = T::TN + T::MN_PAD;  // one k row of each
    // The stage's shared addresses, for ldmatrix (a per-access generic pointer cost 64-bit math).
    constexpr int F = sizeof(float);
    const sptr sa = smem_addr(s.a[0]) + st * sizeof(s.a[0]), sb = smem_addr(s.b[0]) + st * sizeof(s.b[0]);
    // A's words of m16 tile mt and k half h (ldmatrix's r, above) / B's of n8 tile nt (q).
    auto a_words = [&](u32* r, int mt, int h, int kc) {
        if (A_MN) {  // rows g, g + 8 at k t, then at k t + 4: two 8-byte loads (frag_row)
            const float* p = &s.a[st][lanes.a + (kc + 8 * h) * AK + mt * 16];
            const float2 lo = *reinterpret_cast<const float2*>(p), hi = *reinterpret_cast<const float2*>(p + 4 * AK);
            r[0] = (u32)__float_as_int(lo.x), r[1] = (u32)__float_as_int(lo.y);
            r[2] = (u32)__float_as_int(hi.x), r[3] = (u32)__float_as_int(hi.y);
        } else {
            ldmatrix_x4(r, sa + F * ((lanes.a ^ (kc + h * 8)) + mt * 16 * T::TK));
        }
    };
    // All NT tiles' words: B_MN reads n8 tiles 2j and 2j + 1 together, 8 bytes at a time (frag_col).
    auto b_words = [&](u32 (*q)[4], int kc) {
        static_assert(!B_MN || T::NT % 2 == 0, "MN-major B is read in pairs of n8 tiles");
#pragma unroll
        for (int nt = 0; nt < T::NT; nt += B_MN ? 2 : 1) {
            if (B_MN) {
                const float* p = &s.b[st][lanes.b + kc * BKS + (nt >> 1) * 16];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const float2 v = *reinterpret_cast<const float2*>(p + 4 * j * BKS);
                    q[nt][j] = (u32)__float_as_int(v.x), q[nt + 1][j] = (u32)__float_as_int(v.y);
                }
            } else {
                ldmatrix_x4(q[nt], sb + F * ((lanes.b ^ kc) + nt * 8 * T::TK));
            }
        }
    };
#pragma unroll
    for (int ks = 0; ks < T::KB; ++ks) {
        const int kc = ks * BK;
        // B first, packed; then one m16 tile at a time, so few fragment registers are live at once.
        u32 bq[T::NT][4];
        b_words(bq, kc);
        if (MATH == GEMM_BF16) {
            u32 bf[T::NT][2];
#pragma unroll
            for (int nt = 0; nt < T::NT; ++nt) {
                bf[nt][0] = pack_bf16x2(word_as_float(bq[nt][0]), word_as_float(bq[nt][1]));
                bf[nt][1] = pack_bf16x2(word_as_float(bq[nt][2]), word_as_float(bq[nt][3]));
            }
#pragma unroll
            for (int mt = 0; mt < T::MT; ++mt) {
                u32 ar[2][4], af[4];
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    a_words(ar[h], mt, h, kc);
                    af[2 * h] = pack_bf16x2(word_as_float(ar[h][0]), word_as_float(ar[h][2]));
                    af[2 * h + 1] = pack_bf16x2(word_as_float(ar[h][1]), word_as_float(ar[h][3]));
                }
#pragma unroll
                for (int nt = 0; nt < T::NT; ++nt)
                    mma_bf16(&acc[(mt * T::NT + nt) * 4], af[0], af[1], af[2], af[3], bf[nt][0], bf[nt][1]);
            }
        } else {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                u32 bf[T::NT][2];
#pragma unroll
                for (int nt = 0; nt < T::NT; ++nt) {
                    bf[nt][0] = to_tf32(word_as_float(bq[nt][2 * h]));
                    bf[nt][1] = to_tf32(word_as_float(bq[nt][2 * h + 1]));
                }
#pragma unroll
                for (int mt = 0; mt < T::MT; ++mt) {
                    u32 ar[4];
                    a_words(ar, mt, h, kc);
#pragma unroll
                    for (int e = 0; e < 4; ++e) ar[e] = to_tf32(word_as_float(ar[e]));
#pragma unroll
                    for (int nt = 0; nt < T::NT; ++nt)
                        mma_tf32(&acc[(mt * T::NT + nt) * 4], ar[0], ar[1], ar[2], ar[3], bf[nt][0], bf[nt][1]);
                }
            }
        }
    }
}

// The tensor-core loop: tile kt is multiplied while tiles kt + 1 .. kt + STAGES - 1 load. One
// group is committed per tile slot (empty past the end), so wait<STAGES - 2> always means
// "tile kt has landed". The block's tile is at (row blockIdx.x * TM, column blockIdx.y * TN).
template <class L, int MATH, bool OUT16 = false, class T, class Rows = DenseRows>
DEV void gemm_block(GemmSmemTc<T>& s, const L& ld, int M, int N, i64 k0, i64 k1, float* C, Rows out_row, SplitK split,
                    bool round_out = false, ColStats stats = ColStats{nullptr, 0, 0}, const float* addend = nullptr) {
    constexpr int ACC = T::MT * T::NT * 4;
    const int m0 = blockIdx.x * T::TM, n0 = blockIdx.y * T::TN;
    float acc[ACC];
#pragma unroll
    for (int i = 0; i < ACC; ++i) acc[i] = 0.0f;

    TileLoader<L, T> loader(ld, M, N, m0, n0, k0, k1);
    // Stage st's shared addresses: the copies and fragment reads add constants to these.
    const sptr sa0 = smem_addr(s.a[0]), sb0 = smem_addr(s.b[0]);
    auto issue = [&](int st) { loader.issue(ld, sa0 + st * sizeof(s.a[0]), sb0 + st * sizeof(s.b[0])); };
    const int tiles = k0 < k1 ? (int)((k1 - k0 + T::TK - 1) / T::TK) : 0;
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
        if (st < tiles) issue(st);
        cp_async_commit();
    }
    // The stages of tile kt (read) and of tile kt + STAGES - 1 (written), rotated by a compare
    // rather than a modulo.
    int rd = 0, wr = STAGES - 1;
    // Made here when pinned, else in each stage as ptxas prefers (FragLanes).
    typedef FragLanes<T, L::A_MN, L::B_MN> Lanes;
    const Lanes pinned;
    for (int kt = 0; kt < tiles; ++kt) {
        cp_async_wait<STAGES - 2>();
        // Tile kt is visible to every thread, and every warp is done with tile kt - 1, whose
        // stage the next issue refills.
        __syncthreads();
        if (kt + STAGES - 1 < tiles) issue(wr);
        cp_async_commit();
        mma_stage<MATH, T, L::A_MN, L::B_MN>(s, rd, acc, Lanes::PINNED ? pinned : Lanes());
        rd = rd == STAGES - 1 ? 0 : rd + 1;
        wr = wr == STAGES - 1 ? 0 : wr + 1;
    }
    cp_async_wait<0>();

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int wm = (warp / T::WARPS_N) * T::WM, wn = (warp % T::WARPS_N) * T::WN;
    // f(i, offset in C) for each of this thread's outputs inside C.
    auto each = [&](auto f) {
#pragma unroll
        for (int mt = 0; mt < T::MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < T::NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int row = m0 + wm + T::frag_row(L::A_MN, mt, g + (e >= 2 ? 8 : 0));
                    const int col = n0 + wn + T::frag_col(L::B_MN, nt, 2 * t + (e & 1));
                    if (row < M && col < N) f((mt * T::NT + nt) * 4 + e, out_row(row) + col);
                }
    };
    if (!store_tile<ACC, OUT16>(acc, C, each, split, &s, round_out, addend)) return;
    if (stats.part) {
        // Column sums: this thread's 2 MT rows of each of its 2 NT columns, then the 8 lanes of
        // a column (g: lanes xor 4, 8, 16), then the warp rows through shared memory.
        double* red = reinterpret_cast<double*>(&s);  // [warp row][sum, sq][TN]: 2 WARPS_M TN doubles
        __syncthreads();  // every warp is past its last fragment read
#pragma unroll
        for (int nt = 0; nt < T::NT; ++nt)
#pragma unroll
            for (int cc = 0; cc < 2; ++cc) {
                double a = 0.0, b = 0.0;
#pragma unroll
                for (int mt = 0; mt < T::MT; ++mt)
#pragma unroll
                    for (int hr = 0; hr < 2; ++hr)
                        if (m0 + wm + T::frag_row(L::A_MN, mt, g + hr * 8) < M) {
                            const double v = (double)acc[(mt * T::NT + nt) * 4 + hr * 2 + cc];
                            a += v, b += v * v;
                        }
#pragma unroll
                for (int o = 4; o < 32; o <<= 1) {
                    a += __shfl_xor_sync(0xffffffffu, a, o);
                    b += __shfl_xor_sync(0xffffffffu, b, o);
                }
                const int col = wn + T::frag_col(L::B_MN, nt, 2 * t + cc);
                const int wr = warp / T::WARPS_N;  // the warp row
                if (g == 0) red[(wr * 2) * T::TN + col] = a, red[(wr * 2 + 1) * T::TN + col] = b;
            }
        __syncthreads();
        stats.finish(red, T::WARPS_M, n0, N, T::TN);
    }
}

// The k range of split `s` out of `splits`: pieces of `per` (a multiple of BK) elements. In
// 32-bit arithmetic (the Rust side checks K < 2^31): a 64-bit division is a subroutine call.
DEV void split_range(i64 K, int splits, int s, i64& k0, i64& k1) {
    const int k = (int)K;
    int per = (k + splits - 1) / splits;
    per = (per + BK - 1) / BK * BK;
    const int lo = s * per < k ? s * per : k;
    k0 = lo;
    k1 = lo + per < k ? lo + per : k;
}
