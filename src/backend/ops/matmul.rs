//! Batched matrix products.

use super::CoreOps;
use crate::error::Result;

/// C[b] (m x n) = op(A[b]) (m x k) . op(B[b]) (k x n), every operand row-major and contiguous.
/// With `trans_a`, A[b] is stored as (k x m); with `trans_b`, B[b] is stored as (n x k).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulDims {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

pub trait MatmulOps: CoreOps {
    fn matmul(&self, a: &Self::Storage, b: &Self::Storage, c: &Self::Storage, d: &MatmulDims) -> Result<()>;
}
