// NHWC convolution as implicit GEMM (no im2col buffer): x [n, h, w, c_in],
// weight [c_out, kh, kw, c_in / groups], y [n, oh, ow, c_out]. Twin of src/backend/cpu/conv.rs.
// The main loop is in gemm_tile.cuh; only the operand loaders differ. Group g is blockIdx.z /
// splits, split-K piece blockIdx.z % splits (pieces summed by the tile's last, SplitK); backward-data
// has the stride phase as the fastest part of blockIdx.z.
//
// forward:       y[p, g*og + o]  = sum_q  col(x)[p, q] . w[g*og + o, q]          p = (img, oy, ox)
//                                                      q = (ki, kj, c), c fastest (the weight's
//                                                      own inner layout)
// backward-data: dx[p, g*cg + c] = sum_q' dy~[p, q'] . w[g*og + o, ki, kj, c]    p = (img, iy, ix)
//                                                      q' = (ki, kj, o), o fastest; dy~ is dy at
//                                                      (oy, ox) = ((iy + pad - ki) / s, ...)
//                                                      when that divides exactly and is in range;
//                                                      computed per stride phase (ConvPhase), so
//                                                      only the taps that divide are visited
// backward-weight: dw[g*og + o, q] = sum_p dy[p, g*og + o] . col(x)[p, q]        (k = pixels)
#include "gemm_tile.cuh"

struct ConvDims {
    int n, h, w, c_in, c_out, kh, kw, sh, sw, ph, pw, groups, oh, ow;
};

// The loaders keep, per thread, what depends only on the rows and columns it loads (the same in
// every k tile: see tile_coord), and advance their k indices by BK per tile with a compare and a
// subtraction. So the main loop makes no division; the few in the constructors run once per
// block. Offsets inside one image are `int` (the Rust side checks h * w * c fits); image offsets
// are 64-bit.

// Splits k = (ki, kj, inner), inner fastest with `len` values and kj with `kw`: the divisions
// of a Thread's set-up, once per block.
DEV void split_tap(int k, int len, int kw, int& inner, int& ki, int& kj) {
    inner = k % len;
    const int t = k / len;
    kj = t % kw, ki = t / kw;
}

// Advances (ki, kj, inner) by BK along k = (ki, kj, inner), inner fastest with `len` values.
DEV void advance_tap(int& inner, int& ki, int& kj, int len, int kw) {
    inner += BK;
    while (inner >= len) {
        inner -= len;
        if (++kj == kw) {
            kj = 0;
            ++ki;
        }
    }
}

// Steps (inner, ki, kj) to the next k along k = (ki, kj, inner), inner fastest with `len` values.
DEV void next_tap(int& inner, int& ki, int& kj, int len, int kw) {
    if (++inner == len) {
        inner = 0;
        if (++kj == kw) kj = 0, ++ki;
    }
}

// forward: A = col(x) [pixel p, q = (ki, kj, c)], B = w [q, o]. Both operands are K_FAST: a
// thread loads 4 consecutive k of one pixel row and of one weight row (tile_coord); inside one
// tap the 4 channels are adjacent in x, so they move as one 16-byte load when cg % 4 == 0.
struct ConvFwdLoader {
    static constexpr bool A_K_FAST = true;  // c is contiguous in x
    static constexpr bool B_K_FAST = true;  // a weight row is contiguous
    static constexpr bool A_VEC = false, B_VEC = false;
    static constexpr bool A_MN = false, B_MN = false;
    const float* x;
    const float* wt;
    ConvDims d;
    int g;
    i64 kcols;
    struct Thread {
        Thread() = default;
        const float* xrow;     // the row's image at channel g * cg; null outside [0, M)
        const float* wrow;     // the column's weight row; null outside [0, N)
        int iy0, ix0;          // the row's top-left input pixel
        int k, k1, c, ki, kj;  // this thread's first k in the next tile and its tap
        int cg, kw, h, w, c_in;
        DEVM Thread(const ConvFwdLoader& l, int M, int N, int m0, int n0, i64 k0, i64 k1_) {
            const ConvDims& d = l.d;
            cg = d.c_in / d.groups, kw = d.kw, h = d.h, w = d.w, c_in = d.c_in;
            const int og = d.c_out / d.groups;
            int i, j, kk;
            tile_coord<true, BM>(threadIdx.x, 0, i, kk);
            tile_coord<true, BN>(threadIdx.x, 0, j, kk);
            const int p = m0 + i, o = n0 + j;
            xrow = nullptr, iy0 = 0, ix0 = 0;
            if (p < M) {
                const int ox = p % d.ow, oy = (p / d.ow) % d.oh, img = p / (d.ow * d.oh);
                xrow = l.x + (i64)img * d.h * d.w * d.c_in + (i64)l.g * cg;
                iy0 = oy * d.sh - d.ph;
                ix0 = ox * d.sw - d.pw;
            }
            wrow = o < N ? l.wt + ((i64)l.g * og + o) * l.kcols : nullptr;
            k = (int)k0 + kk, k1 = (int)k1_;
            split_tap(k, cg, kw, c, ki, kj);
        }
        DEVM void addr(const float** pa, const float** pb) {
            int cr = c, kir = ki, kjr = kj;
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const bool kin = k + r < k1;
                const int iy = iy0 + kir, ix = ix0 + kjr;
                const bool in = kin && xrow && iy >= 0 && ix >= 0 && iy < h && ix < w;
                pa[r] = in ? xrow + (iy * w + ix) * c_in + cr : nullptr;
                pb[r] = (kin && wrow) ? wrow + k + r : nullptr;
                next_tap(cr, kir, kjr, cg, kw);
            }
            k += BK;
            advance_tap(c, ki, kj, cg, kw);
        }
    };
};

// The 128-row tiles' loaders (CUTLASS's "optimized" iterators). They serve the convolutions
// whose every BK-deep piece of k lies inside one filter tap: the reduction's inner extent (cg
// forward, og backward-data) a multiple of BK, and at most 32 taps reaching a pixel (the Rust
// side routes the others to the 64 x 64 kernels: conv.rs, `pieces_in_one_tap`). k0 is a
// multiple of BK (split_range), and every buffer is 256-byte aligned (the pool), so a thread's 4
// elements of a K_FAST operand are one 16-byte chunk, inside the image or not as a whole. They
// serve the whole block tile (gemm_tile.cuh, TileLoader: a `Tile`). Per block a thread makes
// each of its rows' offset and the mask of the taps its pixel reaches (tap_grid: bit ki kw + kj
// when kernel row ki and column kj land inside the image); per piece it ANDs the mask with the
// tap's one-hot bit (the same for every row, 0 past k1) and adds the tap's offset, which
// advances by constants: no division, no per-element bounds check, no 64-bit compare in the
// main loop.

// Fills `mask` bit t (t < taps) when lo + t (forward) or lo - t (backward) is in [0, n).
DEV u32 tap_mask(int lo, int step, int taps, int n) {
    u32 mask = 0;
    for (int t = 0; t < taps; ++t) {
        const int v = lo + step * t;
        if (v >= 0 && v < n) mask |= 1u << t;
    }
    return mask;
}

// The taps (ty, tx) of a taps_y x taps_x grid (taps_y taps_x <= 32) whose kernel row and column
// are both in a row's tap masks (tap_mask), as bits ty taps_x + tx: the order k visits them in.
DEV u32 tap_grid(u32 ymask, u32 xmask, int taps_y, int taps_x) {
    u32 grid = 0;
    for (int ty = 0; ty < taps_y; ++ty)
        if ((ymask >> ty) & 1u) grid |= xmask << (ty * taps_x);  // xmask has bits below taps_x only
    return grid;
}

// A tap loader's K_FAST operand (forward's col(x), backward-data's dy~) over a block tile's MB
// pieces: per piece a row's pointer at tap (0, 0) plus this thread's chunk (it may lie outside
// the tensor) and the taps its pixel reaches (tap_grid; 0 outside [0, M)); the tap itself, the
// same for every piece and thread, as a one-hot bit of that grid. A copy's predicate is one AND
// of the two, and `live` (the bit, or 0 past k1) folds the k bound into it. Two masks and two
// bits cost two ANDs and a predicate combine per copy.
template <int MB>
struct TapRows {
    const float* row[MB];
    u32 taps[MB];
    u32 bit;  // 1 << the tap's index in the grid
    // Piece p's chunk at `tap` floats from its row into the stage at sa, zeros outside the image
    // or where live is 0.
    template <class T>
    DEVM void issue(sptr sa, int kb, int tap, u32 live) const {
#pragma unroll
        for (int p = 0; p < MB; ++p) issue_kchunk<T>(sa, p * BM, kb * BK, row[p] + tap, (taps[p] & live) != 0);
    }
    DEVM u32 live(int k, int k1) const { return k < k1 ? bit : 0u; }
};

// forward with pieces inside one tap: A = col(x), B = w, both one 16-byte chunk per thread.
struct ConvFwdTapLoader {
    static constexpr bool A_K_FAST = true, B_K_FAST = true;
    static constexpr bool A_VEC = true, B_VEC = true;
    static constexpr bool A_MN = false, B_MN = false;
    const float* x;
    const float* wt;
    ConvDims d;
    int g;
    i64 kcols;
    // The whole block tile (gemm_tile.cuh, TileLoader), what the 128-row kernels run: per piece
    // only what differs between pieces (a row's pointer and tap mask, a column's weight row),
    // and the position along k (channel, kernel column, x offset, the tap's bit: the same for
    // every thread and piece) kept once. Per copy: one AND with the tap's bit, one address add;
    // per piece one channel step.
    template <class T>
    struct Tile {
        TapRows<T::MB> a;          // x at each row's top-left tap + chunk, the taps it reaches; the tap's bit
        const float* wrow[T::NB];  // the column's weight row at the next piece + chunk
        u32 wok[T::NB];            // all ones where the column is inside [0, N), else 0
        int k, k1, c, kj, tap;     // the next piece's first k, channel, kernel column, x offset
        int cg, kw, next_col, next_row;
        DEVM Tile(const ConvFwdTapLoader& l, int M, int N, int m0, int n0, i64 k0, i64 k1_) {
            const ConvDims& d = l.d;
            cg = d.c_in / d.groups, kw = d.kw;
            next_col = d.c_in - cg;            // tap (ki, kj, cg) -> (ki, kj + 1, 0)
            next_row = (d.w - d.kw) * d.c_in;  // then (ki, kw, 0) -> (ki + 1, 0, 0)
            const int og = d.c_out / d.groups;
            int i, kk;
            tile_coord<true, BM>(threadIdx.x, 0, i, kk);
#pragma unroll
            for (int p = 0; p < T::MB; ++p) {
                const int row = m0 + p * BM + i;
                a.row[p] = l.x, a.taps[p] = 0;
                if (row < M) {
                    const int ox = row % d.ow, oy = (row / d.ow) % d.oh, img = row / (d.ow * d.oh);
                    const int iy0 = oy * d.sh - d.ph, ix0 = ox * d.sw - d.pw;
                    a.row[p] = l.x + (i64)img * d.h * d.w * d.c_in + (i64)l.g * cg + kk + (iy0 * d.w + ix0) * d.c_in;
                    a.taps[p] = tap_grid(tap_mask(iy0, 1, d.kh, d.h), tap_mask(ix0, 1, d.kw, d.w), d.kh, d.kw);
                }
            }
#pragma unroll
            for (int p = 0; p < T::NB; ++p) {
                const int o = n0 + p * BN + i;
                wok[p] = o < N ? ~0u : 0u;
                wrow[p] = l.wt + (o < N ? ((i64)l.g * og + o) * l.kcols + k0 + kk : 0);
            }
            k = (int)k0, k1 = (int)k1_;
            int ki;
            split_tap(k, cg, kw, c, ki, kj);
            tap = (ki * d.w + kj) * d.c_in + c;
            a.bit = 1u << (ki * kw + kj);
        }
        DEVM void issue(const ConvFwdTapLoader&, sptr sa, sptr sb) {
#pragma unroll
            for (int kb = 0; kb < T::KB; ++kb) {
                const u32 live = a.live(k, k1);
                a.template issue<T>(sa, kb, tap, live);
#pragma unroll
                for (int p = 0; p < T::NB; ++p) {
                    // A pointer step, not wrow + k: that made a 64-bit add and a sign extension.
                    issue_kchunk<T>(sb, p * BN, kb * BK, wrow[p], (wok[p] & live) != 0);
                    wrow[p] += BK;
                }
                k += BK, c += BK, tap += BK;
                if (c == cg) {
                    c = 0, tap += next_col, a.bit <<= 1;
                    if (++kj == kw) kj = 0, tap += next_row;
                }
            }
        }
    };
};

// backward-data, one GEMM per stride phase (py, px): the input pixels with (iy + ph) % sh == py
// and (ix + pw) % sw == px receive gradient only through the taps ki = py + sh * ti,
// kj = px + sw * tj, from output pixel oy = by + a - ti (iy = iy0 + sh * a), ox likewise. So no
// product is spent on taps that miss (3 in 4 at stride 2), and no index is divided in the main
// loop. At stride 1 there is one phase and this is the plain transposed convolution.
struct ConvPhase {
    int py, px;    // the phase
    int iy0, ix0;  // its first input row and column
    int ny, nx;    // how many input rows and columns it has
    int nty, ntx;  // how many kernel rows and columns reach it
    int by, bx;    // the output row (column) that tap 0 of its first input row (column) sees
    DEVM ConvPhase(const ConvDims& d, int phase) {
        py = phase / d.sw, px = phase % d.sw;
        iy0 = ((py - d.ph) % d.sh + d.sh) % d.sh;
        ix0 = ((px - d.pw) % d.sw + d.sw) % d.sw;
        ny = iy0 < d.h ? (d.h - 1 - iy0) / d.sh + 1 : 0;
        nx = ix0 < d.w ? (d.w - 1 - ix0) / d.sw + 1 : 0;
        nty = py < d.kh ? (d.kh - 1 - py) / d.sh + 1 : 0;
        ntx = px < d.kw ? (d.kw - 1 - px) / d.sw + 1 : 0;
        by = (iy0 + d.ph - py) / d.sh;  // exact: iy0 + ph = py (mod sh), and it is >= 0
        bx = (ix0 + d.pw - px) / d.sw;
    }
};

// A = dy~ [phase pixel p, q' = (ti, tj, o)], B = w [q', c]. A is K_FAST: a thread loads 4
// consecutive k of one phase pixel (4 adjacent channels of dy inside one tap).
struct ConvBwdDataLoader {
    static constexpr bool A_K_FAST = true;   // o is contiguous in dy
    static constexpr bool B_K_FAST = false;  // c is contiguous in the weight
    static constexpr bool A_VEC = false, B_VEC = false;
    static constexpr bool A_MN = false, B_MN = false;
    const float* dy;
    const float* wt;
    ConvDims d;
    ConvPhase ph;
    int g;
    struct Thread {
        Thread() = default;
        const float* dyimg;  // the row's image of dy at channel g * og; null outside [0, M)
        int oyb, oxb;        // the output pixel that tap (0, 0) of the row sees
        const float* wcol;   // the weight at group g, channel c; null outside [0, N)
        int kb[4], ob[4], tib[4], tjb[4];  // B: this thread's k values, each as (ti, tj, o)
        int ka, k1, o, ti, tj;             // A: this thread's first k and its (ti, tj, o)
        int og, ntx, kw, khkw, cg, py, px, sh, sw, oh, ow, c_out;
        DEVM Thread(const ConvBwdDataLoader& l, int M, int N, int m0, int n0, i64 k0, i64 k1_) {
            const ConvDims& d = l.d;
            // A phase no tap reaches (ntx = 0: a 1x1 kernel at stride 2) has K = 0 and loads
            // nothing; taking it as 1 only keeps the index set-up below from dividing by zero.
            og = d.c_out / d.groups, ntx = l.ph.ntx > 0 ? l.ph.ntx : 1, kw = d.kw, khkw = d.kh * d.kw, cg = d.c_in / d.groups;
            py = l.ph.py, px = l.ph.px, sh = d.sh, sw = d.sw, oh = d.oh, ow = d.ow, c_out = d.c_out;
            k1 = (int)k1_;
            int i, kk, j = 0;
            tile_coord<true, BM>(threadIdx.x, 0, i, kk);
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                int kbr;
                tile_coord<false, BN>(threadIdx.x, r, j, kbr);
                kb[r] = (int)k0 + kbr;
                split_tap(kb[r], og, ntx, ob[r], tib[r], tjb[r]);
            }
            const int p = m0 + i;
            dyimg = nullptr, oyb = 0, oxb = 0;
            if (p < M) {
                const int b = p % l.ph.nx, a = (p / l.ph.nx) % l.ph.ny, img = p / (l.ph.nx * l.ph.ny);
                dyimg = l.dy + (i64)img * d.oh * d.ow * d.c_out + (i64)l.g * og;
                oyb = l.ph.by + a;
                oxb = l.ph.bx + b;
            }
            const int c = n0 + j;
            wcol = c < N ? l.wt + (i64)l.g * og * khkw * cg + c : nullptr;
            ka = (int)k0 + kk;
            split_tap(ka, og, ntx, o, ti, tj);
        }
        DEVM void addr(const float** pa, const float** pb) {
            int orr = o, tir = ti, tjr = tj;
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int oy = oyb - tir, ox = oxb - tjr;
                const bool in = ka + r < k1 && dyimg && oy >= 0 && ox >= 0 && oy < oh && ox < ow;
                pa[r] = in ? dyimg + (oy * ow + ox) * c_out + orr : nullptr;
                next_tap(orr, tir, tjr, og, ntx);
                const int tap = (py + sh * tib[r]) * kw + px + sw * tjb[r];
                pb[r] = (wcol && kb[r] < k1) ? wcol + (ob[r] * khkw + tap) * cg : nullptr;
                kb[r] += BK;
                advance_tap(ob[r], tib[r], tjb[r], og, ntx);
            }
            ka += BK;
            advance_tap(o, ti, tj, og, ntx);
        }
    };
};

// backward-data with pieces inside one tap (og a multiple of BK) and cg a multiple of 4: A = dy~
// is one 16-byte chunk per thread along k; B = w has its channels c (the columns) adjacent, so
// it is MN-major (TcTile::mn_at): one 16-byte chunk of 4 channels at one k per thread, from one
// base per piece. Tap (ti, tj) of output pixel (oyb - ti, oxb - tj) is inside dy when mask bits
// ti and tj are set.
struct ConvBwdDataTapLoader {
    static constexpr bool A_K_FAST = true, B_K_FAST = false;
    static constexpr bool A_VEC = true, B_VEC = false;
    static constexpr bool A_MN = false, B_MN = true;
    const float* dy;
    const float* wt;
    ConvDims d;
    ConvPhase ph;
    int g;
    // The whole block tile (TileLoader; see ConvFwdTapLoader::Tile): per piece a row's dy
    // pointer and tap mask, a column chunk's weight pointer; the position along k once.
    template <class T>
    struct Tile {
        TapRows<T::MB> a;          // dy at the output pixel each row's tap (0, 0) sees + chunk, the taps it reaches; the tap's bit
        const float* wcol[T::NB];  // the weight at group g, this thread's 4 channels, its o
        u32 wok[T::NB];            // all ones where the channels are inside [0, N), else 0
        int k, k1, o, tj, tap, wtap, woff;  // the next piece: first k, (tj, o), dy offset, kernel tap, weight offset
        int og, ntx, cg, wstep, next_col, next_row, wnext_col, wnext_row;
        DEVM Tile(const ConvBwdDataTapLoader& l, int M, int N, int m0, int n0, i64 k0, i64 k1_) {
            const ConvDims& d = l.d;
            og = d.c_out / d.groups, ntx = l.ph.ntx > 0 ? l.ph.ntx : 1, cg = d.c_in / d.groups;
            const int khkw = d.kh * d.kw;
            wstep = BK * khkw * cg;                // o -> o + BK
            next_col = -og - d.c_out;              // (ti, tj, og) -> (ti, tj + 1, 0)
            next_row = (ntx - d.ow) * d.c_out;     // then (ti, ntx, 0) -> (ti + 1, 0, 0)
            wnext_col = d.sw;                      // kernel tap (py + sh ti) kw + px + sw tj
            wnext_row = d.sh * d.kw - d.sw * ntx;
            int i, kk, j, kb;
            tile_coord<true, BM>(threadIdx.x, 0, i, kk);
            chunk_coord(threadIdx.x, j, kb);  // channels j .. j + 3 at k + kb
#pragma unroll
            for (int p = 0; p < T::MB; ++p) {
                const int row = m0 + p * BM + i;
                a.row[p] = l.dy, a.taps[p] = 0;
                if (row < M) {
                    const int px = row % l.ph.nx, py = (row / l.ph.nx) % l.ph.ny, img = row / (l.ph.nx * l.ph.ny);
                    const int oyb = l.ph.by + py, oxb = l.ph.bx + px;
                    a.row[p] = l.dy + (i64)img * d.oh * d.ow * d.c_out + (i64)l.g * og + kk + (oyb * d.ow + oxb) * d.c_out;
                    a.taps[p] = tap_grid(tap_mask(oyb, -1, l.ph.nty, d.oh), tap_mask(oxb, -1, l.ph.ntx, d.ow), l.ph.nty, ntx);
                }
            }
#pragma unroll
            for (int p = 0; p < T::NB; ++p) {
                const int c = n0 + p * BN + j;
                wok[p] = c < N ? ~0u : 0u;
                wcol[p] = l.wt + (c < N ? (i64)l.g * og * khkw * cg + (i64)kb * khkw * cg + c : 0);
            }
            k = (int)k0, k1 = (int)k1_;
            int ti;
            split_tap(k, og, ntx, o, ti, tj);
            tap = o - (ti * d.ow + tj) * d.c_out;
            wtap = (l.ph.py + d.sh * ti) * d.kw + l.ph.px + d.sw * tj;
            woff = (o * khkw + wtap) * cg;
            a.bit = 1u << (ti * ntx + tj);
        }
        DEVM void issue(const ConvBwdDataTapLoader&, sptr sa, sptr sb) {
#pragma unroll
            for (int kb = 0; kb < T::KB; ++kb) {
                const u32 live = a.live(k, k1);
                a.template issue<T>(sa, kb, tap, live);
#pragma unroll
                for (int p = 0; p < T::NB; ++p) issue_mnchunk<T, T::TN>(sb, p * BN, kb * BK, wcol[p] + woff, (wok[p] & live) != 0);
                k += BK, o += BK, tap += BK, woff += wstep;
                if (o == og) {
                    o = 0, tap += next_col, wtap += wnext_col, a.bit <<= 1;
                    if (++tj == ntx) tj = 0, tap += next_row, wtap += wnext_row;
                    woff = wtap * cg;
                }
            }
        }
    };
};

// Where row p of phase `ph` lands in dx: input pixel (img, iy0 + sh * a, ix0 + sw * b).
struct PhaseRows {
    ConvDims d;
    ConvPhase ph;
    DEVM i64 operator()(int p) const {
        const int b = p % ph.nx, a = (p / ph.nx) % ph.ny, img = p / (ph.nx * ph.ny);
        return (((i64)img * d.h + ph.iy0 + d.sh * a) * d.w + ph.ix0 + d.sw * b) * d.c_in;
    }
};

// backward-weight: A = dy [o, pixel p], B = col(x) [p, q = (ki, kj, c)].
struct ConvBwdWeightLoader {
    static constexpr bool A_K_FAST = false;  // o (the row) is contiguous in dy
    static constexpr bool B_K_FAST = false;  // q (the column) is contiguous in x
    static constexpr bool A_VEC = false, B_VEC = false;
    static constexpr bool A_MN = false, B_MN = false;
    const float* x;
    const float* dy;
    ConvDims d;
    int g;
    struct Thread {
        Thread() = default;
        const float* dcol;  // dy at channel g * og + o; null outside [0, M)
        const float* xch;   // x at channel g * cg + c of column q; null outside [0, N)
        int yoff, xoff;     // the column's tap minus the padding
        int p[4], oy[4], ox[4], img[4];  // this thread's pixels (A's and B's k) in the next tile
        int k1, sh, sw, oh, ow, h, w, c_in, c_out;
        DEVM Thread(const ConvBwdWeightLoader& l, int M, int N, int m0, int n0, i64 k0, i64 k1_) {
            const ConvDims& d = l.d;
            const int og = d.c_out / d.groups, cg = d.c_in / d.groups;
            k1 = (int)k1_, sh = d.sh, sw = d.sw, oh = d.oh, ow = d.ow, h = d.h, w = d.w;
            c_in = d.c_in, c_out = d.c_out;
            int i = 0, j = 0;
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                int kk;
                tile_coord<false, BM>(threadIdx.x, r, i, kk);
                tile_coord<false, BN>(threadIdx.x, r, j, kk);
                p[r] = (int)k0 + kk;
                ox[r] = p[r] % ow;
                oy[r] = (p[r] / ow) % oh;
                img[r] = p[r] / (ow * oh);
            }
            const int o = m0 + i, q = n0 + j;
            dcol = o < M ? l.dy + (i64)l.g * og + o : nullptr;
            xch = nullptr, yoff = 0, xoff = 0;
            if (q < N) {
                const int c = q % cg, t = q / cg;
                xch = l.x + (i64)l.g * cg + c;
                yoff = t / d.kw - d.ph;
                xoff = t % d.kw - d.pw;
            }
        }
        DEVM void addr(const float** pa, const float** pb) {
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const bool kin = p[r] < k1;
                pa[r] = (kin && dcol) ? dcol + (i64)p[r] * c_out : nullptr;
                const int iy = oy[r] * sh + yoff, ix = ox[r] * sw + xoff;
                const bool in = kin && xch && iy >= 0 && ix >= 0 && iy < h && ix < w;
                pb[r] = in ? xch + (((i64)img[r] * h + iy) * w + ix) * c_in : nullptr;
                p[r] += BK;
                ox[r] += BK;
                while (ox[r] >= ow) {
                    ox[r] -= ow;
                    if (++oy[r] == oh) oy[r] = 0, ++img[r];
                }
            }
        }
    };
};

// backward-weight in 16-byte chunks, for a pixel count (k) that is a multiple of BK and output
// and input channels per group (og, cg) that are multiples of 4: both operands are MN-major
// (TcTile::mn_at). A = dy [o, p]: 4 consecutive o of one pixel are adjacent; B = col(x) [p, q]:
// 4 consecutive q are 4 channels of one tap of one pixel, adjacent in x, inside the image or
// not as a whole. Per thread and stage: one pixel (stage_chunk_coord: k row kk of the TK) and
// KB chunks of each operand per piece (rows mn + j 64 / KB .. + 3), so per stage one pointer
// step for A, for each B chunk two unsigned compares and a 64-bit add, and one advance of the
// pixel by TK (at most ceil(TK / ow) row carries; per 16-pixel piece it took twice the
// advances). No division, no 64-bit multiply, no per-element test in the main loop.
struct ConvBwdWeightChunkLoader {
    static constexpr bool A_K_FAST = false, B_K_FAST = false;
    static constexpr bool A_VEC = false, B_VEC = false;
    static constexpr bool A_MN = true, B_MN = true;
    const float* x;
    const float* dy;
    ConvDims d;
    int g;
    // The whole block tile (TileLoader), what the 128-row kernels run: every chunk a thread
    // copies is at its one pixel (k), so the pixel and its advance are kept once per thread; per
    // chunk only whether its rows exist and a column's tap.
    template <class T>
    struct Tile {
        static constexpr int J = T::KB, APART = BM / T::KB;  // chunks per piece and thread, their row distance
        const float* dyp;              // dy at this thread's pixel of the next stage, chunk 0 of piece 0 (chunk (i, j): + i BM + j APART)
        bool aok[T::MB][J];            // chunk (i, j) is inside [0, M)
        int qoff[T::NB][J];            // a column chunk's offset in x from the pixel's top-left tap: (ki w + kj) c_in + c
        int ki[T::NB][J], kj[T::NB][J];// its tap
        bool qok[T::NB][J];            // the chunk is inside [0, N)
        const float* xp;               // x at the pixel's top-left input tap (iy0, ix0), group g
        int iy0, ix0, kp, k1;          // (oy sh - ph, ox sw - pw) of the pixel; the pixel's index
        DEVM Tile(const ConvBwdWeightChunkLoader& l, int M, int N, int m0, int n0, i64 k0, i64 k1_) {
            const ConvDims& d = l.d;
            const int og = d.c_out / d.groups, cg = d.c_in / d.groups;
            int mn, kk;
            stage_chunk_coord<T>(threadIdx.x, mn, kk);
            kp = (int)k0 + kk, k1 = (int)k1_;
#pragma unroll
            for (int i = 0; i < T::MB; ++i)
#pragma unroll
                for (int j = 0; j < J; ++j) aok[i][j] = m0 + i * BM + j * APART + mn < M;
            dyp = l.dy + (i64)kp * d.c_out + (i64)l.g * og + m0 + mn;
#pragma unroll
            for (int i = 0; i < T::NB; ++i)
#pragma unroll
                for (int j = 0; j < J; ++j) {
                    const int q = n0 + i * BN + j * APART + mn;
                    qok[i][j] = q < N;
                    const int c = qok[i][j] ? q % cg : 0, t = qok[i][j] ? q / cg : 0;
                    ki[i][j] = t / d.kw, kj[i][j] = t % d.kw;
                    qoff[i][j] = (ki[i][j] * d.w + kj[i][j]) * d.c_in + c;
                }
            const int ox = kp % d.ow, oy = (kp / d.ow) % d.oh, img = kp / (d.ow * d.oh);
            iy0 = oy * d.sh - d.ph, ix0 = ox * d.sw - d.pw;
            xp = l.x + (i64)l.g * cg + (((i64)img * d.h + iy0) * d.w + ix0) * d.c_in;
        }
        DEVM void issue(const ConvBwdWeightChunkLoader& l, sptr sa, sptr sb) {
            const ConvDims& d = l.d;
            const bool kin = kp < k1;
#pragma unroll
            for (int i = 0; i < T::MB; ++i)
#pragma unroll
                for (int j = 0; j < J; ++j) issue_stage_mnchunk<T, T::TM>(sa, i * BM, j, dyp + i * BM + j * APART, kin && aok[i][j]);
            dyp += (i64)T::TK * d.c_out;
#pragma unroll
            for (int i = 0; i < T::NB; ++i)
#pragma unroll
                for (int j = 0; j < J; ++j) {
                    const bool in = kin && qok[i][j] && (unsigned)(iy0 + ki[i][j]) < (unsigned)d.h && (unsigned)(ix0 + kj[i][j]) < (unsigned)d.w;
                    issue_stage_mnchunk<T, T::TN>(sb, i * BN, j, xp + qoff[i][j], in);
                }
            // TK output pixels on: columns, then rows (ox -= ow, oy += 1), then images (oy -= oh).
            ix0 += T::TK * d.sw, xp += (i64)T::TK * d.sw * d.c_in;
            while (ix0 >= d.ow * d.sw - d.pw) {
                ix0 -= d.ow * d.sw, xp += ((i64)d.sh * d.w - (i64)d.ow * d.sw) * d.c_in;
                iy0 += d.sh;
                if (iy0 == d.oh * d.sh - d.ph) iy0 -= d.oh * d.sh, xp += (i64)(d.h - d.oh * d.sh) * d.w * d.c_in;
            }
            kp += T::TK;
        }
    };
};

// The loaders of a block tile: the 128-row tiles take the tap and chunk loaders (the Rust side
// gives them only convolutions whose pieces lie inside one tap, or for backward-weight, whose
// pixel count is a multiple of BK and channels per group multiples of 4), 64 x 64 and SIMT the
// general ones (64 x 64 backward-weight has chunk kernels of its own too, the _chunks_ ones).
template <class TILE>
struct ConvLoaders {
    typedef ConvFwdTapLoader Fwd;
    typedef ConvBwdDataTapLoader BwdData;
    typedef ConvBwdWeightChunkLoader BwdWeight;
};
template <>
struct ConvLoaders<Tile64> {
    typedef ConvFwdLoader Fwd;
    typedef ConvBwdDataLoader BwdData;
    typedef ConvBwdWeightLoader BwdWeight;
};

// Every pass: `out` gets the result; with splits > 1, piece sp of the reduction stores its partial
// products at part + sp * split_stride and the last piece of each tile adds them (SplitK,
// gemm_tile.cuh; `arrivals`: one counter per tile, all 0). part is null when splits == 1.
// `stats` (forward, may be null): the output's per-channel column sums for batch norm (ColStats,
// gemm_tile.cuh), [row tiles, 2, c_out] in double. OUT16: `out` is bf16 storage (the bf16
// convolution into batch norm, ConvOps::conv2d_batchnorm_out_dtype).
template <int MATH, class TILE, bool OUT16 = false>
DEV void conv_fwd_impl(const float* x, const float* wt, float* out, float* part, i64 split_stride, ConvDims d, int splits,
                       int* arrivals, double* stats = nullptr) {
    auto& s = gemm_smem<typename SmemOf<MATH, TILE>::T>();
    const int g = blockIdx.z / splits, sp = blockIdx.z % splits;
    const int cg = d.c_in / d.groups, og = d.c_out / d.groups;
    const i64 kcols = (i64)d.kh * d.kw * cg;
    const int M = d.n * d.oh * d.ow;
    i64 k0, k1;
    split_range(kcols, splits, sp, k0, k1);
    const i64 at = (i64)g * og;
    typedef typename ConvLoaders<TILE>::Fwd L;
    gemm_block<L, MATH, OUT16>(s, L{x, wt, d, g, kcols}, M, og, k0, k1, out + at, DenseRows{d.c_out},
                        SplitK{out, TILE::SPLITS ? part : nullptr, split_stride, splits, 1, arrivals}, MATH == GEMM_BF16,
                        ColStats{stats, d.c_out, g * og});
}

// Grid z = groups x splits x phases (sh * sw), phase fastest.
// `add` (null: none): dx = the gradient + add (gemm_block's addend).
template <int MATH, class TILE>
DEV void conv_bwd_data_impl(const float* dy, const float* wt, float* out, float* part, i64 split_stride, ConvDims d, int splits,
                            int* arrivals, const float* add) {
    auto& s = gemm_smem<typename SmemOf<MATH, TILE>::T>();
    const int phases = d.sh * d.sw;
    const int phase = blockIdx.z % phases, gs = blockIdx.z / phases;
    const int g = gs / splits, sp = gs % splits;
    const int cg = d.c_in / d.groups, og = d.c_out / d.groups;
    const ConvPhase ph(d, phase);
    const i64 K = (i64)ph.nty * ph.ntx * og;
    const int M = d.n * ph.ny * ph.nx;
    i64 k0, k1;
    split_range(K, splits, sp, k0, k1);
    const i64 at = (i64)g * cg;
    typedef typename ConvLoaders<TILE>::BwdData L;
    gemm_block<L, MATH>(s, L{dy, wt, d, ph, g}, M, cg, k0, k1, out + at, PhaseRows{d, ph},
                        SplitK{out, TILE::SPLITS ? part : nullptr, split_stride, splits, phases, arrivals},
                        MATH == GEMM_BF16, ColStats{nullptr, 0, 0}, add ? add + at : nullptr);
}

// L: the tile's loader (ConvLoaders), or the chunk loader on 64 x 64 (the _chunks_ kernels).
template <int MATH, class TILE, class L>
DEV void conv_bwd_weight_impl(const float* x, const float* dy, float* out, float* part, i64 split_stride, ConvDims d, int splits,
                              int* arrivals) {
    auto& s = gemm_smem<typename SmemOf<MATH, TILE>::T>();
    const int g = blockIdx.z / splits, sp = blockIdx.z % splits;
    const int cg = d.c_in / d.groups, og = d.c_out / d.groups;
    const i64 kcols = (i64)d.kh * d.kw * cg;
    const i64 K = (i64)d.n * d.oh * d.ow;
    i64 k0, k1;
    split_range(K, splits, sp, k0, k1);
    const i64 at = (i64)g * og * kcols;
    gemm_block<L, MATH>(s, L{x, dy, d, g}, og, (int)kcols, k0, k1, out + at, DenseRows{kcols},
                        SplitK{out, part, split_stride, splits, 1, arrivals}, MATH == GEMM_BF16);
}

// Backward-weight (conv_bwd_weight_impl), with the blocks per SM its tile's plan assumes
// (conv.rs, weight_plan) as the register bound: ptxas left alone capped the 128 x 128 chunk
// kernels at 128 registers and spilled.
template <class TILE>
struct WeightBlocksPerSm {
    static constexpr int value = TILE::MB * TILE::NB == 4 ? 1 : TILE::MB * TILE::NB == 2 ? 2 : 3;
};
#define CONV_WEIGHT_KERNEL(name, MATH, TILE, L)                                                                    \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, WeightBlocksPerSm<TILE>::value)                     \
        name(const float* x, const float* dy, float* out, float* part, i64 split_stride, ConvDims d, int splits,   \
             int* arrivals) {                                                                                      \
        conv_bwd_weight_impl<MATH, TILE, L>(x, dy, out, part, split_stride, d, splits, arrivals);                 \
    }

// The SIMT backward-weight keeps ptxas's own register choice (80, three blocks per SM: with the
// bound of three it spilled).
template <int MATH, class TILE>
DEV void conv_bwd_weight_impl_general(const float* x, const float* dy, float* out, float* part, i64 split_stride, ConvDims d,
                                      int splits, int* arrivals) {
    conv_bwd_weight_impl<MATH, TILE, ConvBwdWeightLoader>(x, dy, out, part, split_stride, d, splits, arrivals);
}

// Forward and backward-data: 128 x 128 free to take more than 128 registers (one block per SM:
// left to itself, ptxas aimed at two with the tap loaders' one-AND predicates and spilled), 128
// x 64 at most 128 (two blocks), 64 x 64 ptxas's own choice.
template <class TILE>
struct TapBlocksPerSm {
    static constexpr int value = TILE::MB * TILE::NB == 4 ? 1 : TILE::MB * TILE::NB == 2 ? 2 : 0;
};
#define CONV_KERNEL(name, impl, MATH, TILE, in0, in1)                                                             \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, TapBlocksPerSm<TILE>::value)                       \
        name(const float* in0, const float* in1, float* out, float* part, i64 split_stride, ConvDims d, int splits, \
             int* arrivals) {                                                                                      \
        impl<MATH, TILE>(in0, in1, out, part, split_stride, d, splits, arrivals);                                 \
    }

// Backward-data takes one more argument: what to add to dx (conv_bwd_data_impl).
#define CONV_DATA_KERNEL(name, MATH, TILE)                                                                         \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, TapBlocksPerSm<TILE>::value)                       \
        name(const float* dy, const float* wt, float* out, float* part, i64 split_stride, ConvDims d, int splits,  \
             int* arrivals, const float* add) {                                                                    \
        conv_bwd_data_impl<MATH, TILE>(dy, wt, out, part, split_stride, d, splits, arrivals, add);                \
    }

// Exact FP32 (SIMT), the default.
CONV_KERNEL(conv2d_fwd_f32, conv_fwd_impl, GEMM_SIMT, Tile64, x, wt)
CONV_DATA_KERNEL(conv2d_data_bwd_f32, GEMM_SIMT, Tile64)
CONV_KERNEL(conv2d_weight_bwd_f32, conv_bwd_weight_impl_general, GEMM_SIMT, Tile64, x, dy)
// Tensor cores, one kernel per math (TF32 opt-in; BF16 for precision = "bf16": bf16 operands,
// FP32 accumulation) and block tile (gemm_tile.cuh, TcTile).
CONV_KERNEL(conv2d_tc_fwd_f32, conv_fwd_impl, GEMM_TF32, Tile64, x, wt)
CONV_DATA_KERNEL(conv2d_tc_data_bwd_f32, GEMM_TF32, Tile64)
CONV_WEIGHT_KERNEL(conv2d_tc_weight_bwd_f32, GEMM_TF32, Tile64, ConvLoaders<Tile64>::BwdWeight)
CONV_KERNEL(conv2d_tc_m128n128_fwd_f32, conv_fwd_impl, GEMM_TF32, Tile128, x, wt)
CONV_DATA_KERNEL(conv2d_tc_m128n128_data_bwd_f32, GEMM_TF32, Tile128)
CONV_WEIGHT_KERNEL(conv2d_tc_m128n128_weight_bwd_f32, GEMM_TF32, Tile128, ConvLoaders<Tile128>::BwdWeight)
CONV_KERNEL(conv2d_tc_m128n64_fwd_f32, conv_fwd_impl, GEMM_TF32, Tile128x64, x, wt)
CONV_DATA_KERNEL(conv2d_tc_m128n64_data_bwd_f32, GEMM_TF32, Tile128x64)
CONV_WEIGHT_KERNEL(conv2d_tc_m128n64_weight_bwd_f32, GEMM_TF32, Tile128x64, ConvLoaders<Tile128x64>::BwdWeight)
CONV_KERNEL(conv2d_fwd_bf16, conv_fwd_impl, GEMM_BF16, Tile64, x, wt)
CONV_DATA_KERNEL(conv2d_data_bwd_bf16, GEMM_BF16, Tile64)
CONV_WEIGHT_KERNEL(conv2d_weight_bwd_bf16, GEMM_BF16, Tile64, ConvLoaders<Tile64>::BwdWeight)
CONV_KERNEL(conv2d_m128n128_fwd_bf16, conv_fwd_impl, GEMM_BF16, Tile128, x, wt)
CONV_DATA_KERNEL(conv2d_m128n128_data_bwd_bf16, GEMM_BF16, Tile128)
CONV_WEIGHT_KERNEL(conv2d_m128n128_weight_bwd_bf16, GEMM_BF16, Tile128, ConvLoaders<Tile128>::BwdWeight)
CONV_KERNEL(conv2d_m128n64_fwd_bf16, conv_fwd_impl, GEMM_BF16, Tile128x64, x, wt)
CONV_DATA_KERNEL(conv2d_m128n64_data_bwd_bf16, GEMM_BF16, Tile128x64)
CONV_WEIGHT_KERNEL(conv2d_m128n64_weight_bwd_bf16, GEMM_BF16, Tile128x64, ConvLoaders<Tile128x64>::BwdWeight)
// 64 x 64 backward-weight in 16-byte chunks (what the 128-row tiles always take), and 64 x 128
// (a stage of 64 output channels: ResNet's first, 64 x 576 outputs, where a 128-row tile would
// be half padding and 64 x 64 tiles spend 3x the instructions per MMA).
CONV_WEIGHT_KERNEL(conv2d_tc_chunks_weight_bwd_f32, GEMM_TF32, Tile64, ConvBwdWeightChunkLoader)
CONV_WEIGHT_KERNEL(conv2d_chunks_weight_bwd_bf16, GEMM_BF16, Tile64, ConvBwdWeightChunkLoader)
CONV_WEIGHT_KERNEL(conv2d_tc_m64n128_weight_bwd_f32, GEMM_TF32, Tile64x128, ConvBwdWeightChunkLoader)
CONV_WEIGHT_KERNEL(conv2d_m64n128_weight_bwd_bf16, GEMM_BF16, Tile64x128, ConvBwdWeightChunkLoader)
// The forward pass with batch norm's statistics in its epilogue (Backend::conv2d_batchnorm_fwd_train).
// The bf16 ones store their output as bf16 (OUT16): only batch norm reads it, as bf16.
#define CONV_BN_KERNEL(name, MATH, TILE, OUT16)                                                                    \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, TapBlocksPerSm<TILE>::value)                       \
        name(const float* x, const float* wt, float* out, float* part, i64 split_stride, ConvDims d, int splits,   \
             int* arrivals, double* stats) {                                                                       \
        conv_fwd_impl<MATH, TILE, OUT16>(x, wt, out, part, split_stride, d, splits, arrivals, stats);             \
    }
CONV_BN_KERNEL(conv2d_batchnorm_fwd_f32, GEMM_SIMT, Tile64, false)
CONV_BN_KERNEL(conv2d_batchnorm_tc_fwd_f32, GEMM_TF32, Tile64, false)
CONV_BN_KERNEL(conv2d_batchnorm_tc_m128n128_fwd_f32, GEMM_TF32, Tile128, false)
CONV_BN_KERNEL(conv2d_batchnorm_tc_m128n64_fwd_f32, GEMM_TF32, Tile128x64, false)
CONV_BN_KERNEL(conv2d_batchnorm_fwd_bf16, GEMM_BF16, Tile64, true)
CONV_BN_KERNEL(conv2d_batchnorm_m128n128_fwd_bf16, GEMM_BF16, Tile128, true)
CONV_BN_KERNEL(conv2d_batchnorm_m128n64_fwd_bf16, GEMM_BF16, Tile128x64, true)
