//! Launches for kernels/elementwise.cu: fill, unary and binary maps, scale, the axis sum.

use super::{Arg, CudaBackend, CudaStorage, i64a, ptr};
use crate::backend::ops::*;
use crate::backend::{AxisDims, Binary, Unary};
use crate::error::Result;

/// One grid-stride launch over `n` elements.
fn map(b: &CudaBackend, kernel: &str, n: usize, args: &[super::Arg<'_>]) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    b.launch_over(kernel, n, args)
}

/// BF16 storage is filled a word (two values) at a time: the value rounded to bf16, twice, as
/// the 32 bits fill_fwd_f32 stores (its allocation is a whole number of words).
pub(super) fn fill(b: &CudaBackend, s: &CudaStorage, value: f32) -> Result<()> {
    if s.dtype() == crate::dtype::DType::BF16 {
        let half = half::bf16::from_f32(value).to_bits() as u32;
        let words = s.len().div_ceil(2);
        return map(b, "fill_fwd_f32", words, &[ptr(s), super::Arg::F32(f32::from_bits(half << 16 | half)), i64a(words)]);
    }
    map(b, "fill_fwd_f32", s.len(), &[ptr(s), super::Arg::F32(value), i64a(s.len())])
}

fn unary_name(op: Unary, bwd: bool) -> &'static str {
    match (op, bwd) {
        (Unary::Relu, false) => "relu_fwd_f32",
        (Unary::Relu, true) => "relu_bwd_f32",
        (Unary::Gelu, false) => "gelu_fwd_f32",
        (Unary::Gelu, true) => "gelu_bwd_f32",
        (Unary::Exp, false) => "exp_fwd_f32",
        (Unary::Exp, true) => "exp_bwd_f32",
        (Unary::Log, false) => "log_fwd_f32",
        (Unary::Log, true) => "log_bwd_f32",
        (Unary::Sqrt, false) => "sqrt_fwd_f32",
        (Unary::Sqrt, true) => "sqrt_bwd_f32",
        (Unary::Sigmoid, false) => "sigmoid_fwd_f32",
        (Unary::Sigmoid, true) => "sigmoid_bwd_f32",
        (Unary::Silu, false) => "silu_fwd_f32",
        (Unary::Silu, true) => "silu_bwd_f32",
        (Unary::RoundBf16, false) => "round_bf16_fwd_f32",
        (Unary::RoundBf16, true) => "round_bf16_bwd_f32",
    }
}

/// y[i] = sum_s part[s * n + i], s ascending (the second stage of a split `sum_axis`).
fn sum_splits(b: &CudaBackend, part: &CudaStorage, y: &CudaStorage, splits: usize, n: usize) -> Result<()> {
    map(b, "sum_axis_splits_fwd_f32", n, &[ptr(part), ptr(y), i64a(splits), i64a(n)])
}

impl ElementwiseOps for CudaBackend {
    fn unary_fwd(&self, op: Unary, x: &CudaStorage, y: &CudaStorage, n: usize) -> Result<()> {
        map(self, unary_name(op, false), n, &[ptr(x), ptr(y), i64a(n)])
    }

    fn unary_bwd(&self, op: Unary, x: &CudaStorage, dy: &CudaStorage, dx: &CudaStorage, n: usize) -> Result<()> {
        map(self, unary_name(op, true), n, &[ptr(x), ptr(dy), ptr(dx), i64a(n)])
    }

    fn binary(&self, op: Binary, a: &CudaStorage, b: &CudaStorage, out: &CudaStorage, n: usize, b_len: usize) -> Result<()> {
        let name = match op {
            Binary::Add => "add_fwd_f32",
            Binary::Mul => "mul_fwd_f32",
            Binary::Sub => "sub_fwd_f32",
            Binary::Div => "div_fwd_f32",
        };
        if b_len == 0 {
            return Ok(()); // ops.rs allows an empty self only with an empty a
        }
        map(self, name, n, &[ptr(a), ptr(b), ptr(out), i64a(n), i64a(b_len)])
    }

    fn add_many(&self, pairs: &[AddPair<'_, CudaStorage>]) -> Result<()> {
        add_many(self, pairs)
    }

    fn scale(&self, x: &CudaStorage, y: &CudaStorage, alpha: f32, n: usize) -> Result<()> {
        map(self, "scale_fwd_f32", n, &[ptr(x), ptr(y), super::Arg::F32(alpha), i64a(n)])
    }

    /// y[o, a, i] = x[o, a, i] s[o, i] (channel_scale_fwd_f32).
    fn channel_scale(&self, x: &CudaStorage, s: &CudaStorage, y: &CudaStorage, d: &AxisDims) -> Result<()> {
        let n = d.outer * d.axis * d.inner;
        if n == 0 {
            return Ok(());
        }
        map(self, "channel_scale_fwd_f32", n, &[ptr(x), ptr(s), ptr(y), i64a(n), i64a(d.axis * d.inner), i64a(d.inner)])
    }

    /// y[o, i] = sum_a x[o, a, i]. When there are few outputs and a long axis, the axis is cut into
    /// pieces summed by separate threads, then the pieces are added in order (sum_axis_splits_fwd_f32).
    fn sum_axis(&self, x: &CudaStorage, y: &CudaStorage, d: &AxisDims) -> Result<()> {
        let n = d.outer * d.inner;
        if n == 0 {
            return Ok(());
        }
        let target = self.sm_count() as usize * 512;
        let splits = if n >= target || d.axis < 64 { 1 } else { target.div_ceil(n).min(d.axis / 32).clamp(1, 1024) };
        let sa = |out: &CudaStorage| {
            map(self, "sum_axis_fwd_f32", n * splits, &[ptr(x), ptr(out), i64a(d.outer), i64a(d.axis), i64a(d.inner), i64a(splits)])
        };
        if splits == 1 {
            return sa(y);
        }
        let part = self.scratch(n * splits)?;
        sa(&part)?;
        sum_splits(self, &part, y, splits, n)
    }
}

/// ADD_MANY_MAX of elementwise.cu (the batch stays under the 4 KB kernel-parameter limit: 3,848
/// bytes); blocks of optim.rs's CHUNK elements (ADD_MANY_CHUNK).
const ADD_MANY_MAX: usize = 96;

/// Mirror of `struct AddPair` in kernels/elementwise.cu.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct KAddPair {
    a: u64,
    b: u64,
    out: u64,
    len: i64,
}

/// Mirror of `struct AddBatch` in kernels/elementwise.cu.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct KAddBatch {
    t: [KAddPair; ADD_MANY_MAX],
    block_end: [i64; ADD_MANY_MAX],
    count: i32,
    _pad: i32,
}

fn add_many(b: &CudaBackend, pairs: &[AddPair<'_, CudaStorage>]) -> Result<()> {
    use bytemuck::Zeroable;
    for group in pairs.chunks(ADD_MANY_MAX) {
        let mut batch = KAddBatch::zeroed();
        for (k, p) in batch.t.iter_mut().zip(group) {
            *k = KAddPair { a: p.a.ptr, b: p.b.ptr, out: p.out.ptr, len: p.len as i64 };
        }
        let grid = super::optim::block_ends(group.iter().map(|p| p.len), &mut batch.block_end, "add_many")?;
        if grid == 0 {
            continue;
        }
        batch.count = group.len() as i32;
        b.launch("add_many_fwd_f32", (grid, 1, 1), (super::optim::THREADS, 1, 1), &[Arg::Bytes(bytemuck::bytes_of(&batch))])?;
    }
    Ok(())
}
