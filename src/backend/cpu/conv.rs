//! NHWC convolution as im2col + GEMM, in chunks of images so the column buffer stays small.
//! x [n, h, w, c_in], weight [c_out, kh, kw, c_in/g], y [n, oh, ow, c_out].
//! Column matrix of a group: rows = output pixels, cols = (ki, kj, c) with c fastest, which is
//! exactly the weight's inner layout, so weight rows are GEMM operands as stored.

use rayon::prelude::*;

use super::Real;
use super::matmul::{Mat, gemm};
use crate::backend::Conv2dDims;

/// Output rows per chunk: keeps the column buffer near a few MB while GEMMs stay large.
const CHUNK_ROWS: usize = 4096;

fn images_per_chunk(d: &Conv2dDims) -> usize {
    (CHUNK_ROWS / (d.oh * d.ow).max(1)).clamp(1, d.n.max(1))
}

/// A 1x1, stride-1, unpadded, ungrouped conv is a plain GEMM on the activations.
fn is_pointwise(d: &Conv2dDims) -> bool {
    d.kh == 1 && d.kw == 1 && d.stride == [1, 1] && d.pad == [0, 0] && d.groups == 1
}

/// Fills col [(n1 - n0) * oh * ow, kh * kw * cg] for images n0..n1 and input channels of group g.
fn im2col<T: Real>(x: &[T], col: &mut [T], d: &Conv2dDims, n0: usize, g: usize) {
    let cg = d.c_in / d.groups;
    let kcols = d.kh * d.kw * cg;
    col.par_chunks_mut(kcols).enumerate().for_each(|(r, row)| {
        let n = n0 + r / (d.oh * d.ow);
        let oy = (r / d.ow) % d.oh;
        let ox = r % d.ow;
        for ki in 0..d.kh {
            let iy = (oy * d.stride[0] + ki) as isize - d.pad[0] as isize;
            for kj in 0..d.kw {
                let ix = (ox * d.stride[1] + kj) as isize - d.pad[1] as isize;
                let dst = &mut row[(ki * d.kw + kj) * cg..(ki * d.kw + kj + 1) * cg];
                if iy < 0 || ix < 0 || iy >= d.h as isize || ix >= d.w as isize {
                    dst.fill(T::zero());
                } else {
                    let src = ((n * d.h + iy as usize) * d.w + ix as usize) * d.c_in + g * cg;
                    dst.copy_from_slice(&x[src..src + cg]);
                }
            }
        }
    });
}

/// Adds col back into dx for images n0..n1, group g. Parallel over images: each image's dx is
/// written by one thread, in a fixed order.
fn col2im<T: Real>(col: &[T], dx: &mut [T], d: &Conv2dDims, n0: usize, n1: usize, g: usize) {
    let cg = d.c_in / d.groups;
    let kcols = d.kh * d.kw * cg;
    let img = d.h * d.w * d.c_in;
    dx[n0 * img..n1 * img].par_chunks_mut(img).enumerate().for_each(|(i, dxi)| {
        for oy in 0..d.oh {
            for ox in 0..d.ow {
                let r = (i * d.oh + oy) * d.ow + ox;
                let row = &col[r * kcols..(r + 1) * kcols];
                for ki in 0..d.kh {
                    let iy = (oy * d.stride[0] + ki) as isize - d.pad[0] as isize;
                    if iy < 0 || iy >= d.h as isize {
                        continue;
                    }
                    for kj in 0..d.kw {
                        let ix = (ox * d.stride[1] + kj) as isize - d.pad[1] as isize;
                        if ix < 0 || ix >= d.w as isize {
                            continue;
                        }
                        let dst = (iy as usize * d.w + ix as usize) * d.c_in + g * cg;
                        let src = &row[(ki * d.kw + kj) * cg..(ki * d.kw + kj + 1) * cg];
                        for (o, s) in dxi[dst..dst + cg].iter_mut().zip(src) {
                            *o += *s;
                        }
                    }
                }
            }
        }
    });
}

pub fn conv2d_fwd<T: Real>(x: &[T], wt: &[T], y: &mut [T], d: &Conv2dDims) {
    let (cg, og) = (d.c_in / d.groups, d.c_out / d.groups);
    let kcols = d.kh * d.kw * cg;
    let npix = d.oh * d.ow;
    if is_pointwise(d) {
        gemm(d.n * npix, d.c_out, d.c_in, y, d.c_out, false, Mat::new(x, d.c_in, false), Mat::new(wt, d.c_in, true), true);
        return;
    }
    let per = images_per_chunk(d);
    let mut col = vec![T::zero(); per * npix * kcols];
    for n0 in (0..d.n).step_by(per) {
        let n1 = (n0 + per).min(d.n);
        let rows = (n1 - n0) * npix;
        for g in 0..d.groups {
            im2col(x, &mut col[..rows * kcols], d, n0, g);
            let lhs = Mat::new(&col[..rows * kcols], kcols, false);
            // rhs[q, o] = weight[g*og + o, q]: the weight rows of this group, read transposed.
            let rhs = Mat::new(&wt[g * og * kcols..(g + 1) * og * kcols], kcols, true);
            gemm(rows, og, kcols, &mut y[n0 * npix * d.c_out + g * og..], d.c_out, false, lhs, rhs, true);
        }
    }
}

pub fn conv2d_bwd_data<T: Real>(dy: &[T], wt: &[T], dx: &mut [T], d: &Conv2dDims) {
    let (cg, og) = (d.c_in / d.groups, d.c_out / d.groups);
    let kcols = d.kh * d.kw * cg;
    let npix = d.oh * d.ow;
    if is_pointwise(d) {
        gemm(d.n * npix, d.c_in, d.c_out, dx, d.c_in, false, Mat::new(dy, d.c_out, false), Mat::new(wt, d.c_in, false), true);
        return;
    }
    dx.par_chunks_mut(4096).for_each(|c| c.fill(T::zero()));
    let per = images_per_chunk(d);
    let mut col = vec![T::zero(); per * npix * kcols];
    for n0 in (0..d.n).step_by(per) {
        let n1 = (n0 + per).min(d.n);
        let rows = (n1 - n0) * npix;
        for g in 0..d.groups {
            // dcol [rows, kcols] = dy[:, group g] [rows, og] . weight_g [og, kcols]
            let lhs = Mat { data: &dy[n0 * npix * d.c_out + g * og..], rs: d.c_out, cs: 1 };
            let rhs = Mat::new(&wt[g * og * kcols..(g + 1) * og * kcols], kcols, false);
            gemm(rows, kcols, og, &mut col[..rows * kcols], kcols, false, lhs, rhs, true);
            col2im(&col[..rows * kcols], dx, d, n0, n1, g);
        }
    }
}

pub fn conv2d_bwd_weight<T: Real>(x: &[T], dy: &[T], dw: &mut [T], d: &Conv2dDims) {
    let (cg, og) = (d.c_in / d.groups, d.c_out / d.groups);
    let kcols = d.kh * d.kw * cg;
    let npix = d.oh * d.ow;
    if is_pointwise(d) {
        let rows = d.n * npix;
        let lhs = Mat { data: dy, rs: 1, cs: d.c_out };
        gemm(d.c_out, d.c_in, rows, dw, d.c_in, false, lhs, Mat::new(x, d.c_in, false), true);
        return;
    }
    let per = images_per_chunk(d);
    let mut col = vec![T::zero(); per * npix * kcols];
    // Chunks are summed in image order: a fixed order whatever the thread count.
    for n0 in (0..d.n).step_by(per) {
        let n1 = (n0 + per).min(d.n);
        let rows = (n1 - n0) * npix;
        for g in 0..d.groups {
            im2col(x, &mut col[..rows * kcols], d, n0, g);
            // dw_g [og, kcols] (+)= dy[:, group g]^T [og, rows] . col [rows, kcols]
            let lhs = Mat { data: &dy[n0 * npix * d.c_out + g * og..], rs: 1, cs: d.c_out };
            let rhs = Mat::new(&col[..rows * kcols], kcols, false);
            gemm(og, kcols, rows, &mut dw[g * og * kcols..], kcols, n0 > 0, lhs, rhs, true);
        }
    }
}
