//! Batched matmul on the `gemm` crate. Transposes are free: gemm takes strides.

use rayon::prelude::*;

use super::Real;
use super::{CpuBackend, CpuStorage, r, w};
use crate::backend::MatmulDims;
use crate::backend::ops::*;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// A row-major matrix view: element (i, j) lives at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A contiguous (rows x cols) matrix, optionally read transposed.
    pub fn new(data: &'a [T], cols: usize, transposed: bool) -> Self {
        if transposed { Mat { data, rs: 1, cs: cols } } else { Mat { data, rs: cols, cs: 1 } }
    }
}

/// dst (m x n, row stride `dst_rs`) = lhs (m x k) . rhs (k x n), or += when `accumulate`.
/// `parallel` lets gemm split the output over threads; the order of the k-reduction is the
/// same either way, so results do not depend on it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: Real>(
    m: usize, n: usize, k: usize, dst: &mut [T], dst_rs: usize, accumulate: bool, lhs: Mat<'_, T>, rhs: Mat<'_, T>, parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= (m - 1) * dst_rs + n, "gemm: dst too small");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst[i * dst_rs..i * dst_rs + n].fill(T::zero());
            }
        }
        return;
    }
    assert!(lhs.data.len() > (m - 1) * lhs.rs + (k - 1) * lhs.cs, "gemm: lhs too small");
    assert!(rhs.data.len() > (k - 1) * rhs.rs + (n - 1) * rhs.cs, "gemm: rhs too small");
    let par = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the asserts above keep every index gemm touches inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        )
    }
}

pub fn matmul<T: Real>(a: &[T], b: &[T], c: &mut [T], d: &MatmulDims) {
    let (sa, sb, sc) = (d.m * d.k, d.k * d.n, d.m * d.n);
    if sc == 0 {
        return;
    }
    let one = |bi: usize, cc: &mut [T], parallel: bool| {
        let lhs = Mat::new(&a[bi * sa..(bi + 1) * sa], if d.trans_a { d.m } else { d.k }, d.trans_a);
        let rhs = Mat::new(&b[bi * sb..(bi + 1) * sb], if d.trans_b { d.k } else { d.n }, d.trans_b);
        gemm(d.m, d.n, d.k, cc, d.n, false, lhs, rhs, parallel);
    };
    if d.batch > 1 && sc * d.k < (1 << 20) {
        // Many small products (attention heads): one thread per product.
        c.par_chunks_mut(sc).enumerate().for_each(|(bi, cc)| one(bi, cc, false));
    } else {
        c.chunks_mut(sc).enumerate().for_each(|(bi, cc)| one(bi, cc, true));
    }
}

impl MatmulOps for CpuBackend {
    fn matmul(&self, a: &CpuStorage, b: &CpuStorage, c: &CpuStorage, d: &MatmulDims) -> Result<()> {
        on_dtype!(self, c, T => {
            let (ga, gb, mut gc) = (a.read(), b.read(), c.write());
            matmul::<T>(r(&ga), r(&gb), w(&mut gc), d);
            Ok(())
        })
    }
}
