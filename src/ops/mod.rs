//! Validated ops: the one place that checks shapes and dtypes, allocates outputs and calls a
//! backend kernel. Bad input returns an error naming the op and the shapes, never a panic.
//! Forward and backward kernels both go through here, so the autograd rules stay short.
//!
//! One file per op family, named as the backends' family files (`backend/cpu/<family>.rs`) and
//! the CUDA kernels (`kernels/<family>.cu`); every op is re-exported here, so callers write
//! `ops::conv2d` whatever file it lives in. The checks every family shares sit below.

mod attention;
mod conv;
mod elementwise;
mod layout;
mod loss;
mod matmul;
mod norm;
mod optim;
mod pool;

pub use attention::*;
pub use conv::*;
pub use elementwise::*;
pub use layout::*;
pub use loss::*;
pub use matmul::*;
pub use norm::*;
pub use optim::*;
pub use pool::*;

use crate::backend::*;
use crate::error::{Error, Result, shape_err};
use crate::tensor::{Tensor, numel};

fn same_dtype<B: Backend>(op: &'static str, ts: &[&Tensor<B>]) -> Result<()> {
    let d = ts[0].dtype();
    if !ts[0].backend().supports(d) {
        return Err(Error::DType { op, dtype: d.to_string(), backend: ts[0].backend().name() });
    }
    if let Some(t) = ts.iter().find(|t| t.dtype() != d) {
        return Err(Error::DType { op, dtype: format!("{} mixed with {}", d, t.dtype()), backend: t.backend().name() });
    }
    Ok(())
}

fn out<B: Backend>(like: &Tensor<B>, shape: &[usize]) -> Result<Tensor<B>> {
    Tensor::empty(like.backend(), shape, like.dtype())
}

fn expect_shape<B: Backend>(op: &'static str, what: &str, t: &Tensor<B>, shape: &[usize]) -> Result<()> {
    if t.shape() != shape {
        return Err(shape_err(op, format!("{what} must have shape {shape:?}"), &[t.shape()]));
    }
    Ok(())
}

/// Leading dims and the last two: [.., r, c] -> (batch, r, c).
fn split_matrix(op: &'static str, s: &[usize]) -> Result<(usize, usize, usize)> {
    if s.len() < 2 {
        return Err(shape_err(op, "needs at least 2 dims", &[s]));
    }
    Ok((numel(&s[..s.len() - 2]), s[s.len() - 2], s[s.len() - 1]))
}
