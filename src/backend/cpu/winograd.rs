//! Winograd F(2x2, 3x3) for the stride-1 3x3 convolutions (Lavin & Gray, 2015): each 2x2 output
//! tile is A^T [ (G g G^T) . (B^T d B) ] A over a 4x4 input tile d, so the multiply-adds become
//! 16 GEMMs (tiles x c_in) . (c_in x c_out) with 16/36 of direct convolution's multiplies. The
//! transforms only add, subtract and halve, so the result stays within a few ulps of direct
//! convolution (the conformance and PyTorch tests hold it to the same tolerances).
//!
//! NHWC throughout: every transform is a vector operation along the channel axis. Work is split
//! into chunks of whole images sized so one chunk's transformed tiles (16 x tiles x (c_in + c_out))
//! stay near the L2 cache; the 16 GEMMs of a chunk run back to back on one thread.

use rayon::prelude::*;

use super::Real;
use super::elementwise::add_in_order;
use super::matmul::{Mat, gemm};
use crate::backend::Conv2dDims;

/// Whether F(2x2, 3x3) applies and pays: 3x3, stride 1, ungrouped, enough channels that the
/// GEMMs dominate the transforms (the RGB stem stays direct), outputs of at least 4x4 (at 4x4,
/// 512 channels: forward 22 -> 21 ms, backward-data 45 -> 17 ms, backward-weight even).
pub fn applies(d: &Conv2dDims) -> bool {
    d.kh == 3 && d.kw == 3 && d.stride == [1, 1] && d.groups == 1 && d.c_in >= 16 && d.c_out >= 16 && d.oh * d.ow >= 16
}

fn sub<T: Real>(o: &mut [T], a: &[T], b: &[T]) {
    for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
        *o = *a - *b;
    }
}

fn add<T: Real>(o: &mut [T], a: &[T], b: &[T]) {
    for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
        *o = *a + *b;
    }
}

/// B^T applied to four vectors (rows or columns of a 4x4 tile): d0-d2, d1+d2, d2-d1, d1-d3.
fn bt<T: Real>(out: [&mut [T]; 4], d: [&[T]; 4]) {
    let [o0, o1, o2, o3] = out;
    sub(o0, d[0], d[2]);
    add(o1, d[1], d[2]);
    sub(o2, d[2], d[1]);
    sub(o3, d[1], d[3]);
}

/// out[xi][..len] = (G g G^T)[xi] for the 3x3 taps `tap(ki, kj)`, vectors of `len` channels;
/// G's rows are g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2.
fn g_transform<'a, T: Real>(tap: impl Fn(usize, usize) -> &'a [T], len: usize, out: &mut [T]) {
    let half = T::c(0.5);
    let g_rows = |g: [&[T]; 3], out: &mut [Vec<T>; 4]| {
        for c in 0..len {
            let (a, b, e) = (g[0][c], g[1][c], g[2][c]);
            out[0][c] = a;
            out[1][c] = (a + b + e) * half;
            out[2][c] = (a - b + e) * half;
            out[3][c] = e;
        }
    };
    let mut rows: [[Vec<T>; 4]; 3] = std::array::from_fn(|_| std::array::from_fn(|_| vec![T::zero(); len]));
    let mut cols: [Vec<T>; 4] = std::array::from_fn(|_| vec![T::zero(); len]);
    // Along ki for each kj: rows[kj][a] = (G g[:, kj])[a].
    for (kj, r) in rows.iter_mut().enumerate() {
        g_rows([tap(0, kj), tap(1, kj), tap(2, kj)], r);
    }
    // Along kj for each a.
    for a in 0..4 {
        g_rows([&rows[0][a], &rows[1][a], &rows[2][a]], &mut cols);
        for (b, col) in cols.iter().enumerate() {
            let xi = a * 4 + b;
            out[xi * len..(xi + 1) * len].copy_from_slice(col);
        }
    }
}

/// U[o][xi][c] (input channels contiguous), the layout backward-data reads: output channels in
/// parallel (it runs on every call, and single-threaded it cost as much as the 4x4 layers' GEMMs).
fn transform_weights_oxc<T: Real>(wt: &[T], ci: usize, co: usize) -> Vec<T> {
    let mut u = vec![T::zero(); 16 * co * ci];
    u.par_chunks_mut(16 * ci).enumerate().for_each(|(o, uo)| {
        g_transform(|ki, kj| &wt[((o * 3 + ki) * 3 + kj) * ci..((o * 3 + ki) * 3 + kj + 1) * ci], ci, uo);
    });
    u
}

/// U[c][xi][o] (output channels contiguous), the layout the forward pass reads: GEMM then gets
/// its packed operand from contiguous columns instead of gathering it at a stride of 16 c_in
/// (the gather cost as much as the multiplies on the 512-channel layers). Blocks of 16 input
/// channels gather their taps [9][16][c_out] in one pass over the weight's cache lines.
fn transform_weights_cxo<T: Real>(wt: &[T], ci: usize, co: usize) -> Vec<T> {
    const CB: usize = 16;
    let mut u = vec![T::zero(); 16 * co * ci];
    u.par_chunks_mut(CB * 16 * co).enumerate().for_each(|(blk, ub)| {
        let (c0, nc) = (blk * CB, ub.len() / (16 * co));
        let mut taps = vec![T::zero(); 9 * nc * co];
        // 16x16 blocks (output channels x input channels), so reads and writes both stay
        // within a few cache lines (a plain scatter along c_out cost 3 ns per element).
        for o0 in (0..co).step_by(CB) {
            let no = CB.min(co - o0);
            for k in 0..9 {
                for cl in 0..nc {
                    let dst = &mut taps[(k * nc + cl) * co + o0..][..no];
                    for (oo, t) in dst.iter_mut().enumerate() {
                        *t = wt[((o0 + oo) * 9 + k) * ci + c0 + cl];
                    }
                }
            }
        }
        for (cl, uc) in ub.chunks_mut(16 * co).enumerate() {
            g_transform(|ki, kj| &taps[((ki * 3 + kj) * nc + cl) * co..][..co], co, uc);
        }
    });
    u
}

/// How the 16 GEMMs read transformed weights: the forward pass reads U [c_in][xi][c_out]
/// (`transform_weights_cxo`) as (c_in x c_out). Backward-data (a stride-1 convolution of dy with
/// the weight flipped in space and transposed in channels) reads U [c_out][xi][c_in]
/// (`transform_weights_oxc`) as (c_out x c_in), with rows and columns 0 and 3 of the 4x4 index
/// swapped: flipping g is G J = P G (G's rows 0 and 3 trade places, rows 1 and 2 are
/// symmetric), so the flipped weight's transform is the same U permuted, and no flipped copy
/// is made. Either way the GEMM's packed operand has unit stride along its rows.
#[derive(Clone, Copy)]
struct UView<'a, T> {
    u: &'a [T],
    /// Channels of the GEMM's n axis (c_out forward, c_in backward).
    n: usize,
    backward: bool,
}

impl<'a, T> UView<'a, T> {
    fn rhs(&self, xi: usize) -> Mat<'a, T> {
        let s = 16 * self.n;
        if self.backward {
            // G J = P G with P swapping rows 0 and 3 (rows 1 and 2 are symmetric).
            const P: [usize; 4] = [3, 1, 2, 0];
            Mat { data: &self.u[(P[xi / 4] * 4 + P[xi % 4]) * self.n..], rs: s, cs: 1 }
        } else {
            Mat { data: &self.u[xi * self.n..], rs: s, cs: 1 }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_chunk<T: Real>(x: &[T], u: UView<'_, T>, yc: &mut [T], d: &Conv2dDims, img0: usize, imgs: usize, par_gemm: bool) {
    let (ci, co) = (d.c_in, d.c_out);
    let (th, tw) = (d.oh.div_ceil(2), d.ow.div_ceil(2));
    let tiles = imgs * th * tw;
    // This thread's scratch (no allocation or zero-fill per chunk): V[xi][tile][c_in], then the
    // products M[xi][tile][c_out]; both are fully written before they are read.
    T::scratch(16 * tiles * (ci + co), |buf| {
        let (v, m) = buf.split_at_mut(16 * tiles * ci);
        run_chunk_in(x, u, yc, d, tiles, img0, v, m, par_gemm)
    })
}

#[allow(clippy::too_many_arguments)]
fn run_chunk_in<T: Real>(
    x: &[T], u: UView<'_, T>, yc: &mut [T], d: &Conv2dDims, tiles: usize, img0: usize, v: &mut [T], mm: &mut [T], par_gemm: bool,
) {
    let (ci, co) = (d.c_in, d.c_out);
    let (th, tw) = (d.oh.div_ceil(2), d.ow.div_ceil(2));
    transform_inputs(x, d, img0, tiles, v);
    // The 16 products M[xi] = V[xi] . U[xi], U read through `u` as (c_in x c_out).
    for xi in 0..16 {
        let lhs = Mat::new(&v[xi * tiles * ci..(xi + 1) * tiles * ci], ci, false);
        let rhs = u.rhs(xi);
        gemm(tiles, co, ci, &mut mm[xi * tiles * co..(xi + 1) * tiles * co], co, false, lhs, rhs, par_gemm);
    }
    // Output transform: A^T m A with A^T rows (1, 1, 1, 0) and (0, 1, -1, -1).
    let mut r: [Vec<T>; 8] = std::array::from_fn(|_| vec![T::zero(); co]);
    let mut tmp = vec![T::zero(); co];
    for tile in 0..tiles {
        let (img, ty, tx) = (tile / (th * tw), (tile / tw) % th, tile % tw);
        let m = |xi: usize| &mm[(xi * tiles + tile) * co..(xi * tiles + tile + 1) * co];
        for b in 0..4 {
            add(&mut tmp, m(b), m(4 + b));
            add(&mut r[b], &tmp, m(8 + b));
            sub(&mut tmp, m(4 + b), m(8 + b));
            sub(&mut r[4 + b], &tmp, m(12 + b));
        }
        for i in 0..2 {
            let oy = 2 * ty + i;
            if oy >= d.oh {
                continue;
            }
            let row = &r[i * 4..i * 4 + 4];
            for j in 0..2 {
                let ox = 2 * tx + j;
                if ox >= d.ow {
                    continue;
                }
                let at = ((img * d.oh + oy) * d.ow + ox) * co;
                let out = &mut yc[at..at + co];
                if j == 0 {
                    add(&mut tmp, &row[0], &row[1]);
                    add(out, &tmp, &row[2]);
                } else {
                    sub(&mut tmp, &row[1], &row[2]);
                    sub(out, &tmp, &row[3]);
                }
            }
        }
    }
}

/// y = conv(x, wt) for a layer where `applies(d)`.
pub fn conv2d_fwd_winograd<T: Real>(x: &[T], wt: &[T], y: &mut [T], d: &Conv2dDims) {
    let u = transform_weights_cxo(wt, d.c_in, d.c_out);
    run(x, UView { u: &u, n: d.c_out, backward: false }, y, d);
}

/// dx of a stride-1 3x3 layer `d` with padding below 3, where `applies(t)` for its backward-data
/// form `t` (the stride-1 convolution of dy, padded by 2 - pad, with the flipped weight): reads the forward
/// transform through `UView`'s permutation instead of flipping and transforming a copy.
pub fn conv2d_data_bwd_winograd<T: Real>(dy: &[T], wt: &[T], dx: &mut [T], d: &Conv2dDims, t: &Conv2dDims) {
    let u = transform_weights_oxc(wt, d.c_in, d.c_out);
    run(dy, UView { u: &u, n: d.c_in, backward: true }, dx, t);
}

/// (images per chunk, chunks) over the 2x2 output tiles of layer `d`: ~2 MB of transformed
/// tiles (16 x tiles x (c_in + c_out)) per chunk, but never fewer than 128 tiles (the GEMMs' row
/// count). Fixed by the shape alone, so sums over chunks do not depend on the thread count.
fn chunking(d: &Conv2dDims) -> (usize, usize) {
    let tiles_per_img = d.oh.div_ceil(2) * d.ow.div_ceil(2);
    let want = (32768 / (d.c_in + d.c_out)).max(128);
    let imgs = want.div_ceil(tiles_per_img).clamp(1, d.n.max(1));
    (imgs, d.n.div_ceil(imgs))
}

/// The chunked forward pass of layer `d` (input x, output y) with weights read through `u`.
fn run<T: Real>(x: &[T], u: UView<'_, T>, y: &mut [T], d: &Conv2dDims) {
    let (imgs, chunks) = chunking(d);
    let img_len = d.oh * d.ow * d.c_out;
    if chunks >= rayon::current_num_threads() {
        y.par_chunks_mut(imgs * img_len).enumerate().for_each(|(k, yc)| {
            run_chunk(x, u, yc, d, k * imgs, yc.len() / img_len, false);
        });
    } else {
        // Too few chunks to spread over the threads: the GEMMs split instead.
        for (k, yc) in y.chunks_mut(imgs * img_len).enumerate() {
            run_chunk(x, u, yc, d, k * imgs, yc.len() / img_len, true);
        }
    }
}

/// Fills V[xi][tile][c_in] (`v`, `tiles` rows per xi) with B^T d B of the chunk's tiles, images
/// img0.. of `x`.
fn transform_inputs<T: Real>(x: &[T], d: &Conv2dDims, img0: usize, tiles: usize, v: &mut [T]) {
    let ci = d.c_in;
    let (th, tw) = (d.oh.div_ceil(2), d.ow.div_ceil(2));
    let zeros = vec![T::zero(); ci];
    let mut t: [Vec<T>; 16] = std::array::from_fn(|_| vec![T::zero(); ci]);
    for tile in 0..tiles {
        let (img, ty, tx) = (img0 + tile / (th * tw), (tile / tw) % th, tile % tw);
        let px = |a: usize, b: usize| -> &[T] {
            let iy = (2 * ty + a) as isize - d.pad[0] as isize;
            let ix = (2 * tx + b) as isize - d.pad[1] as isize;
            if iy < 0 || ix < 0 || iy >= d.h as isize || ix >= d.w as isize {
                &zeros
            } else {
                let at = ((img * d.h + iy as usize) * d.w + ix as usize) * ci;
                &x[at..at + ci]
            }
        };
        for b in 0..4 {
            let [t0, t1, t2, t3] = t.get_disjoint_mut([b, 4 + b, 8 + b, 12 + b]).unwrap_or_else(|_| unreachable!());
            bt([t0, t1, t2, t3], [px(0, b), px(1, b), px(2, b), px(3, b)]);
        }
        for a in 0..4 {
            let mut outs = v.chunks_mut(tiles * ci).skip(a * 4).take(4).map(|blk| &mut blk[tile * ci..(tile + 1) * ci]);
            let (o0, o1, o2, o3) = (outs.next().unwrap(), outs.next().unwrap(), outs.next().unwrap(), outs.next().unwrap());
            bt([o0, o1, o2, o3], [&t[a * 4], &t[a * 4 + 1], &t[a * 4 + 2], &t[a * 4 + 3]]);
        }
    }
}

/// A applied to two vectors (rows or columns of a 2x2 gradient tile): g0, g0+g1, g0-g1, -g1.
fn a_mul<T: Real>(out: [&mut [T]; 4], g: [&[T]; 2]) {
    let [o0, o1, o2, o3] = out;
    o0.copy_from_slice(g[0]);
    add(o1, g[0], g[1]);
    sub(o2, g[0], g[1]);
    for (o, v) in o3.iter_mut().zip(g[1]) {
        *o = -*v;
    }
}

/// Backward-weight of a layer where `applies(d)`: dU[xi] = sum over tiles of (A dy A^T)[xi]^T
/// (B^T x B)[xi], as 16 GEMMs per chunk, then dW = G^T dU G. Chunks are summed in fixed groups
/// and the groups in order, so the result does not depend on the thread count.
pub fn conv2d_weight_bwd_winograd<T: Real>(x: &[T], dy: &[T], dw: &mut [T], d: &Conv2dDims) {
    let (ci, co) = (d.c_in, d.c_out);
    let (th, tw) = (d.oh.div_ceil(2), d.ow.div_ceil(2));
    let tiles_per_img = th * tw;
    let (imgs, chunks) = chunking(d);
    // Each group sums into its own dU (16 c_in c_out), zeroed and added at the end: at least
    // ~512 tiles per group keeps that below 1/512 of the group's multiplies (8x8 256-channel
    // layer: 8 groups -> 2, 15.5 -> 11.8 ms); at least two so both cores work without splitting
    // the GEMMs (1 group + split GEMMs: 4x4 512-channel layer 20 -> 24 ms).
    let groups = (d.n * tiles_per_img / 512).clamp(2, 8).min(chunks);
    let mut partials: Vec<Vec<T>> = (0..groups)
        .into_par_iter()
        .map(|g| {
            let mut du = vec![T::zero(); 16 * co * ci];
            T::scratch(16 * imgs * tiles_per_img * (ci + co), |buf| {
                let (v, yh) = buf.split_at_mut(16 * imgs * tiles_per_img * ci);
                let mut r: [Vec<T>; 8] = std::array::from_fn(|_| vec![T::zero(); co]);
                let zeros = vec![T::zero(); co];
                for k in g * chunks / groups..(g + 1) * chunks / groups {
                    let img0 = k * imgs;
                    let n_img = imgs.min(d.n - img0);
                    let tiles = n_img * tiles_per_img;
                    transform_inputs(x, d, img0, tiles, v);
                    // Yh[xi][tile][c_out] = A dy A^T; outputs past the edge are zero.
                    for tile in 0..tiles {
                        let (img, ty, tx) = (img0 + tile / tiles_per_img, (tile / tw) % th, tile % tw);
                        let g_at = |i: usize, j: usize| -> &[T] {
                            let (oy, ox) = (2 * ty + i, 2 * tx + j);
                            if oy >= d.oh || ox >= d.ow {
                                &zeros
                            } else {
                                let at = ((img * d.oh + oy) * d.ow + ox) * co;
                                &dy[at..at + co]
                            }
                        };
                        // Along i for each j: r[j * 4 + a].
                        for j in 0..2 {
                            let [r0, r1, r2, r3] =
                                r.get_disjoint_mut([j * 4, j * 4 + 1, j * 4 + 2, j * 4 + 3]).unwrap_or_else(|_| unreachable!());
                            a_mul([r0, r1, r2, r3], [g_at(0, j), g_at(1, j)]);
                        }
                        // Along j for each a: xi = a * 4 + b.
                        for a in 0..4 {
                            let mut outs = yh.chunks_mut(tiles * co).skip(a * 4).take(4).map(|blk| &mut blk[tile * co..(tile + 1) * co]);
                            let (o0, o1, o2, o3) = (outs.next().unwrap(), outs.next().unwrap(), outs.next().unwrap(), outs.next().unwrap());
                            a_mul([o0, o1, o2, o3], [&r[a], &r[4 + a]]);
                        }
                    }
                    for xi in 0..16 {
                        // dU[xi] [c_out, c_in] += Yh[xi]^T [c_out, tiles] . V[xi] [tiles, c_in]
                        let lhs = Mat { data: &yh[xi * tiles * co..(xi + 1) * tiles * co], rs: 1, cs: co };
                        let rhs = Mat::new(&v[xi * tiles * ci..(xi + 1) * tiles * ci], ci, false);
                        gemm(
                            co,
                            ci,
                            tiles,
                            &mut du[xi * co * ci..(xi + 1) * co * ci],
                            ci,
                            true,
                            lhs,
                            rhs,
                            groups < rayon::current_num_threads(),
                        );
                    }
                }
            });
            du
        })
        .collect();
    let (du, rest) = partials.split_first_mut().expect("at least one group");
    add_in_order(du, rest);
    let du = &*du;
    // dW[o][ki][kj][c] = (G^T dU G)[ki][kj]; G^T rows: (1, 1/2, 1/2, 0), (0, 1/2, -1/2, 0), (0, 1/2, 1/2, 1).
    let half = T::c(0.5);
    let gt = |u: [T; 4]| [u[0] + (u[1] + u[2]) * half, (u[1] - u[2]) * half, (u[1] + u[2]) * half + u[3]];
    dw.par_chunks_mut(9 * ci).enumerate().for_each(|(o, dwo)| {
        for c in 0..ci {
            let at = |xi: usize| du[(xi * co + o) * ci + c];
            let rows: [[T; 3]; 4] = std::array::from_fn(|a| gt([at(a * 4), at(a * 4 + 1), at(a * 4 + 2), at(a * 4 + 3)]));
            for kj in 0..3 {
                let col = gt([rows[0][kj], rows[1][kj], rows[2][kj], rows[3][kj]]);
                for (ki, v) in col.iter().enumerate() {
                    dwo[(ki * 3 + kj) * ci + c] = *v;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every valid (output pixel, input pixel, tap) of a 3x3 stride-1 layer, as the element
    /// offsets of the pixels in y / x and the tap index ki * 3 + kj.
    fn taps(d: &Conv2dDims) -> Vec<(usize, usize, usize)> {
        let mut v = Vec::new();
        for n in 0..d.n {
            for oy in 0..d.oh {
                for ox in 0..d.ow {
                    for k in 0..9 {
                        let (iy, ix) = ((oy + k / 3) as isize - d.pad[0] as isize, (ox + k % 3) as isize - d.pad[1] as isize);
                        if iy >= 0 && ix >= 0 && iy < d.h as isize && ix < d.w as isize {
                            let xb = ((n * d.h + iy as usize) * d.w + ix as usize) * d.c_in;
                            v.push((((n * d.oh + oy) * d.ow + ox) * d.c_out, xb, k));
                        }
                    }
                }
            }
        }
        v
    }

    /// Direct cross-correlation in f64 loops: the independent reference.
    fn naive(x: &[f64], wt: &[f64], d: &Conv2dDims) -> Vec<f64> {
        let mut y = vec![0.0; d.n * d.oh * d.ow * d.c_out];
        for (yb, xb, k) in taps(d) {
            for o in 0..d.c_out {
                y[yb + o] += (0..d.c_in).map(|c| x[xb + c] * wt[(o * 9 + k) * d.c_in + c]).sum::<f64>();
            }
        }
        y
    }

    /// dx[c] = sum over the taps that read it of dy[o] w[o, tap, c], in f64 loops.
    fn naive_dx(dy: &[f64], wt: &[f64], d: &Conv2dDims) -> Vec<f64> {
        let mut dx = vec![0.0; d.n * d.h * d.w * d.c_in];
        for (yb, xb, k) in taps(d) {
            for o in 0..d.c_out {
                for c in 0..d.c_in {
                    dx[xb + c] += dy[yb + o] * wt[(o * 9 + k) * d.c_in + c];
                }
            }
        }
        dx
    }

    /// dW[o][ki][kj][c] = sum over images and outputs of dy[o] x[c] at the tap, in f64 loops.
    fn naive_dw(x: &[f64], dy: &[f64], d: &Conv2dDims) -> Vec<f64> {
        let mut dw = vec![0.0; d.c_out * 9 * d.c_in];
        for (yb, xb, k) in taps(d) {
            for o in 0..d.c_out {
                for c in 0..d.c_in {
                    dw[(o * 9 + k) * d.c_in + c] += dy[yb + o] * x[xb + c];
                }
            }
        }
        dw
    }

    fn dims(n: usize, h: usize, w: usize, ci: usize, co: usize, pad: usize) -> Conv2dDims {
        let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
        Conv2dDims { n, h, w, c_in: ci, c_out: co, kh: 3, kw: 3, stride: [1, 1], pad: [pad, pad], groups: 1, oh, ow }
    }

    /// Runs `f` into NaN-filled f64 and f32 outputs and compares both with `want`: f64 to 1e-12
    /// and f32 to `tol32` of the largest magnitude.
    fn check(what: &str, want: &[f64], tol32: f64, f: impl FnOnce(&mut [f64], &mut [f32])) {
        let (mut o64, mut o32) = (vec![f64::NAN; want.len()], vec![f32::NAN; want.len()]);
        f(&mut o64, &mut o32);
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err64 = want.iter().zip(&o64).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        let err32 = want.iter().zip(&o32).fold(0.0f64, |m, (a, b)| m.max((a - *b as f64).abs()));
        assert!(err64 <= 1e-12 * scale, "{what}: f64 error {err64} (scale {scale})");
        assert!(err32 <= tol32 * scale, "{what}: f32 error {err32} (scale {scale})");
    }

    #[test]
    fn winograd_forward_and_both_gradients_match_direct_loops_on_odd_and_even_sizes() {
        let mut rng = crate::rng::Rng::new(7).stream("winograd");
        // Even and odd outputs, pad 0 and 1; one chunk (the GEMMs split over threads) and, with 64
        // images, chunks spread over threads.
        for d in [dims(2, 8, 8, 16, 24, 1), dims(3, 7, 5, 20, 16, 1), dims(2, 9, 6, 16, 16, 0), dims(64, 8, 8, 32, 32, 1)] {
            let x: Vec<f64> = (0..d.n * d.h * d.w * d.c_in).map(|_| rng.uniform_range(-1.0, 1.0)).collect();
            let wt: Vec<f64> = (0..d.c_out * 9 * d.c_in).map(|_| rng.uniform_range(-1.0, 1.0)).collect();
            let to32 = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let y = naive(&x, &wt, &d);
            check(&format!("{d:?} forward"), &y, 2e-6, |o64, o32| {
                conv2d_fwd_winograd(&x, &wt, o64, &d);
                conv2d_fwd_winograd(&to32(&x), &to32(&wt), o32, &d);
            });
            let dy: Vec<f64> = (0..y.len()).map(|_| rng.uniform_range(-1.0, 1.0)).collect();
            check(&format!("{d:?} weight gradient"), &naive_dw(&x, &dy, &d), 1e-5, |o64, o32| {
                conv2d_weight_bwd_winograd(&x, &dy, o64, &d);
                conv2d_weight_bwd_winograd(&to32(&x), &to32(&dy), o32, &d);
            });
            // Backward-data: the stride-1 convolution of dy padded by 2 - pad, read through the
            // permuted transform.
            let p = 2 - d.pad[0];
            let t = Conv2dDims { n: d.n, h: d.oh, w: d.ow, c_in: d.c_out, c_out: d.c_in, pad: [p, p], oh: d.h, ow: d.w, ..d };
            check(&format!("{d:?} data gradient"), &naive_dx(&dy, &wt, &d), 2e-6, |o64, o32| {
                conv2d_data_bwd_winograd(&dy, &wt, o64, &d, &t);
                conv2d_data_bwd_winograd(&to32(&dy), &to32(&wt), o32, &d, &t);
            });
        }
    }
}
