//! Elementwise maps, broadcasts and axis sums.

use super::CoreOps;
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unary {
    Relu,
    /// The exact (erf) GELU, PyTorch's and timm's default.
    Gelu,
    Exp,
    /// The natural logarithm.
    Log,
    Sqrt,
    /// 1 / (1 + exp(-x)): squeeze-excitation gates.
    Sigmoid,
    /// x sigmoid(x) (swish): EfficientNet's activation.
    Silu,
    /// Rounds to the nearest bfloat16 (ties to even; NaN stays NaN), kept in the tensor's dtype:
    /// the rounding point of `Precision::Bf16` around convolutions, matmuls and attention. Its
    /// gradient is the incoming gradient rounded the same way, as a bf16 tensor's gradient is.
    RoundBf16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    Add,
    Mul,
    Sub,
    Div,
}

/// A tensor viewed as [outer, axis, inner]; the kernel works along `axis`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AxisDims {
    pub outer: usize,
    pub axis: usize,
    pub inner: usize,
}

/// One sum of `add_many`: out = a + b, each `len` long.
pub struct AddPair<'a, S> {
    pub a: &'a S,
    pub b: &'a S,
    pub out: &'a S,
    pub len: usize,
}

pub trait ElementwiseOps: CoreOps {
    fn unary_fwd(&self, op: Unary, x: &Self::Storage, y: &Self::Storage, n: usize) -> Result<()>;
    fn unary_bwd(&self, op: Unary, x: &Self::Storage, dy: &Self::Storage, dx: &Self::Storage, n: usize) -> Result<()>;
    /// out[i] = a[i] op b[i % b_len]: `b` repeats over the leading axes of `a`.
    fn binary(&self, op: Binary, a: &Self::Storage, b: &Self::Storage, out: &Self::Storage, n: usize, b_len: usize) -> Result<()>;
    /// out = a + b for every pair (the same sums as `binary` Add), in as few launches as the
    /// backend can: autograd sums the gradients of every parameter used more than once (each
    /// weight on both views) this way. The default is one `binary` per pair (the CPU and WGSL
    /// take it; CUDA gathers up to 96 pairs per launch).
    fn add_many(&self, pairs: &[AddPair<'_, Self::Storage>]) -> Result<()> {
        pairs.iter().try_for_each(|p| self.binary(Binary::Add, p.a, p.b, p.out, p.len, p.len))
    }
    /// y = alpha * x
    fn scale(&self, x: &Self::Storage, y: &Self::Storage, alpha: f32, n: usize) -> Result<()>;
    /// y[o, i] = sum_a x[o, a, i], in a fixed order.
    fn sum_axis(&self, x: &Self::Storage, y: &Self::Storage, d: &AxisDims) -> Result<()>;
    /// y[o, a, i] = x[o, a, i] s[o, i]: x [outer = n, axis = h w, inner = c] scaled per sample and
    /// channel by s [n, c] (squeeze-excitation's gate).
    fn channel_scale(&self, x: &Self::Storage, s: &Self::Storage, y: &Self::Storage, d: &AxisDims) -> Result<()>;
}
