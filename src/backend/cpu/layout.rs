//! Permute, slice and slice-assign: explicit copies, since tensors are always contiguous.

use rayon::prelude::*;

use super::Real;
use super::{CpuBackend, CpuStorage, r, w};
use crate::backend::SliceDims;
use crate::backend::ops::*;
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
}
