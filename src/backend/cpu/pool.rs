//! Max-pool and global average pool over NHWC.

use rayon::prelude::*;

use super::Real;
use super::{CpuBackend, CpuStorage, r, w};
use crate::backend::ops::*;
use crate::backend::{AxisDims, PoolDims};
use crate::dtype::DType;
use crate::error::{Error, Result};

/// The input pixel (y, x) of window position (i, j) for output (oy, ox), if inside the image.
fn tap(d: &PoolDims, oy: usize, ox: usize, i: usize, j: usize) -> Option<(usize, usize)> {
    let iy = (oy * d.stride + i) as isize - d.pad as isize;
    let ix = (ox * d.stride + j) as isize - d.pad as isize;
    (iy >= 0 && ix >= 0 && (iy as usize) < d.h && (ix as usize) < d.w).then_some((iy as usize, ix as usize))
}

/// For each channel, the flat index (within the image) of the first maximum of the window.
fn argmax<T: Real>(xi: &[T], d: &PoolDims, oy: usize, ox: usize, best: &mut [(T, usize)]) {
    best.fill((T::neg_infinity(), usize::MAX));
    for i in 0..d.k {
        for j in 0..d.k {
            if let Some((iy, ix)) = tap(d, oy, ox, i, j) {
                let base = (iy * d.w + ix) * d.c;
                for (c, b) in best.iter_mut().enumerate() {
                    let v = xi[base + c];
                    // `>` keeps the first maximum; a NaN wins so it propagates like PyTorch.
                    if v > b.0 || v.is_nan() && !b.0.is_nan() || b.1 == usize::MAX {
                        *b = (v, base + c);
                    }
                }
            }
        }
    }
}

pub fn maxpool2d_fwd<T: Real>(x: &[T], y: &mut [T], d: &PoolDims) {
    let (img_in, img_out) = (d.h * d.w * d.c, d.oh * d.ow * d.c);
    y.par_chunks_mut(img_out).enumerate().for_each(|(n, yi)| {
        let xi = &x[n * img_in..(n + 1) * img_in];
        let mut best = vec![(T::zero(), 0usize); d.c];
        for oy in 0..d.oh {
            for ox in 0..d.ow {
                argmax(xi, d, oy, ox, &mut best);
                for (c, b) in best.iter().enumerate() {
                    yi[(oy * d.ow + ox) * d.c + c] = b.0;
                }
            }
        }
    });
}

pub fn maxpool2d_bwd<T: Real>(x: &[T], dy: &[T], dx: &mut [T], d: &PoolDims) {
    let (img_in, img_out) = (d.h * d.w * d.c, d.oh * d.ow * d.c);
    dx.par_chunks_mut(img_in).enumerate().for_each(|(n, dxi)| {
        dxi.fill(T::zero());
        let xi = &x[n * img_in..(n + 1) * img_in];
        let dyi = &dy[n * img_out..(n + 1) * img_out];
        let mut best = vec![(T::zero(), 0usize); d.c];
        for oy in 0..d.oh {
            for ox in 0..d.ow {
                argmax(xi, d, oy, ox, &mut best);
                for (c, b) in best.iter().enumerate() {
                    if b.1 != usize::MAX {
                        dxi[b.1] += dyi[(oy * d.ow + ox) * d.c + c];
                    }
                }
            }
        }
    });
}

pub fn avgpool_global_fwd<T: Real>(x: &[T], y: &mut [T], d: &AxisDims) {
    let inv = T::c(1.0 / d.axis as f64);
    y.par_chunks_mut(d.inner).enumerate().for_each(|(n, yr)| {
        yr.fill(T::zero());
        for p in 0..d.axis {
            let base = (n * d.axis + p) * d.inner;
            for (o, &v) in yr.iter_mut().zip(&x[base..base + d.inner]) {
                *o += v;
            }
        }
        for o in yr.iter_mut() {
            *o = *o * inv;
        }
    });
}

pub fn avgpool_global_bwd<T: Real>(dy: &[T], dx: &mut [T], d: &AxisDims) {
    let inv = T::c(1.0 / d.axis as f64);
    dx.par_chunks_mut(d.axis * d.inner).enumerate().for_each(|(n, dxi)| {
        let g = &dy[n * d.inner..(n + 1) * d.inner];
        for px in dxi.chunks_mut(d.inner) {
            for (o, &v) in px.iter_mut().zip(g) {
                *o = v * inv;
            }
        }
    });
}

impl PoolOps for CpuBackend {
    fn maxpool2d_fwd(&self, x: &CpuStorage, y: &CpuStorage, d: &PoolDims) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, mut gy) = (x.read(), y.write());
            maxpool2d_fwd::<T>(r(&gx), w(&mut gy), d);
            Ok(())
        })
    }

    fn maxpool2d_bwd(&self, x: &CpuStorage, dy: &CpuStorage, dx: &CpuStorage, d: &PoolDims) -> Result<()> {
        on_dtype!(self, dx, T => {
            let (gx, gdy, mut gdx) = (x.read(), dy.read(), dx.write());
            maxpool2d_bwd::<T>(r(&gx), r(&gdy), w(&mut gdx), d);
            Ok(())
        })
    }

    fn avgpool_global_fwd(&self, x: &CpuStorage, y: &CpuStorage, d: &AxisDims) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, mut gy) = (x.read(), y.write());
            avgpool_global_fwd::<T>(r(&gx), w(&mut gy), d);
            Ok(())
        })
    }

    fn avgpool_global_bwd(&self, dy: &CpuStorage, dx: &CpuStorage, d: &AxisDims) -> Result<()> {
        on_dtype!(self, dx, T => {
            let (gdy, mut gdx) = (dy.read(), dx.write());
            avgpool_global_bwd::<T>(r(&gdy), w(&mut gdx), d);
            Ok(())
        })
    }
}
