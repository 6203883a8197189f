//! Permute, slice, slice-assign and the per-row gather with its scatter back: explicit copies,
//! since tensors are always contiguous.

use rayon::prelude::*;

use super::Real;
use super::{CpuBackend, CpuStorage, r, w};
use crate::backend::ops::*;
use crate::backend::{GatherDims, SliceDims};
use crate::dtype::DType;
use crate::error::{Error, Result};

pub fn permute<T: Real>(x: &[T], y: &mut [T], shape: &[usize], perm: &[usize]) {
    let rank = shape.len();
    let mut in_strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * shape[i + 1];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    // Stride in x of each output axis.
    let src_stride: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let inner = *out_shape.last().unwrap_or(&1);
    if inner == 0 {
        return;
    }
    y.par_chunks_mut(inner).enumerate().for_each(|(row, out)| {
        // Decompose the output row index into coordinates of the leading output axes.
        let mut rem = row;
        let mut base = 0;
        for ax in (0..rank - 1).rev() {
            base += (rem % out_shape[ax]) * src_stride[ax];
            rem /= out_shape[ax];
        }
        let s = src_stride[rank - 1];
        for (j, o) in out.iter_mut().enumerate() {
            *o = x[base + j * s];
        }
    });
}

pub fn slice<T: Real>(x: &[T], y: &mut [T], d: &SliceDims) {
    let block = d.len * d.inner;
    if block == 0 {
        return;
    }
    y.par_chunks_mut(block).enumerate().for_each(|(o, yo)| {
        let src = (o * d.axis + d.start) * d.inner;
        yo.copy_from_slice(&x[src..src + block]);
    });
}

pub fn slice_assign<T: Real>(src: &[T], dst: &mut [T], d: &SliceDims) {
    let block = d.len * d.inner;
    if block == 0 {
        return;
    }
    dst.par_chunks_mut(d.axis * d.inner).enumerate().for_each(|(o, row)| {
        row[d.start * d.inner..d.start * d.inner + block].copy_from_slice(&src[o * block..(o + 1) * block]);
    });
}

/// `idx[i, j]` (a float) as a row in 0..l, or an error naming it.
fn gather_index<T: Real>(v: T, i: usize, j: usize, l: usize) -> Result<usize> {
    let f = v.f64();
    // Written so that a NaN fails too.
    if !(f >= 0.0 && f < l as f64 && f.fract() == 0.0) {
        return Err(Error::Invalid { op: "gather_rows", msg: format!("index {f} at [{i}, {j}] is not a row in 0..{l}") });
    }
    Ok(f as usize)
}

/// y [n, k, d] = x [n, idx[n, k], d]
pub fn gather_rows<T: Real>(x: &[T], idx: &[T], y: &mut [T], g: &GatherDims) -> Result<()> {
    let (l, k, d) = (g.l, g.k, g.d);
    if k * d == 0 {
        return Ok(());
    }
    y.par_chunks_mut(k * d).enumerate().try_for_each(|(i, yi)| {
        for (j, yr) in yi.chunks_mut(d).enumerate() {
            let src = (i * l + gather_index(idx[i * k + j], i, j, l)?) * d;
            yr.copy_from_slice(&x[src..src + d]);
        }
        Ok(())
    })
}

/// dx [n, l, d] = 0, then dx[i, idx[i, j], :] += dy[i, j, :] for j = 0, 1, ..: each element
/// sums its j in increasing order from 0.0, as the GPU kernels do.
pub fn gather_rows_bwd<T: Real>(dy: &[T], idx: &[T], dx: &mut [T], g: &GatherDims) -> Result<()> {
    let (l, k, d) = (g.l, g.k, g.d);
    if l * d == 0 {
        return Ok(());
    }
    dx.par_chunks_mut(l * d).enumerate().try_for_each(|(i, dxi)| {
        dxi.fill(T::zero());
        for j in 0..k {
            let r = gather_index(idx[i * k + j], i, j, l)?;
            let src = &dy[(i * k + j) * d..(i * k + j + 1) * d];
            for (o, &v) in dxi[r * d..(r + 1) * d].iter_mut().zip(src) {
                *o += v;
            }
        }
        Ok(())
    })
}

impl LayoutOps for CpuBackend {
    fn permute(&self, x: &CpuStorage, y: &CpuStorage, shape: &[usize], perm: &[usize]) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, mut gy) = (x.read(), y.write());
            permute::<T>(r(&gx), w(&mut gy), shape, perm);
            Ok(())
        })
    }

    fn slice(&self, x: &CpuStorage, y: &CpuStorage, d: &SliceDims) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, mut gy) = (x.read(), y.write());
            slice::<T>(r(&gx), w(&mut gy), d);
            Ok(())
        })
    }

    fn slice_assign(&self, src: &CpuStorage, dst: &CpuStorage, d: &SliceDims) -> Result<()> {
        on_dtype!(self, dst, T => {
            let (gs, mut gd) = (src.read(), dst.write());
            slice_assign::<T>(r(&gs), w(&mut gd), d);
            Ok(())
        })
    }

    fn gather_rows(&self, x: &CpuStorage, idx: &CpuStorage, y: &CpuStorage, d: &GatherDims) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, gi, mut gy) = (x.read(), idx.read(), y.write());
            gather_rows::<T>(r(&gx), r(&gi), w(&mut gy), d)
        })
    }

    fn gather_rows_bwd(&self, dy: &CpuStorage, idx: &CpuStorage, dx: &CpuStorage, d: &GatherDims) -> Result<()> {
        on_dtype!(self, dx, T => {
            let (gy, gi, mut gx) = (dy.read(), idx.read(), dx.write());
            gather_rows_bwd::<T>(r(&gy), r(&gi), w(&mut gx), d)
        })
    }
}
