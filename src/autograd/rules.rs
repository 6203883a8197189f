//! Every gradient rule, in one place. `Op` holds what a rule needs from the forward pass;
//! `backward` maps an output gradient to one optional gradient per input, in input order.

use crate::backend::{Backend, Conv2dDims, PoolDims, Unary};
use crate::error::Result;
use crate::ops::{self, BnSaved};
use crate::tensor::{DType, Tensor};

pub enum Op<B: Backend> {
    /// inputs: a, b
    Matmul { a: Tensor<B>, b: Tensor<B>, trans_a: bool, trans_b: bool },
    /// inputs: x, weight
    Conv2d { x: Tensor<B>, w: Tensor<B>, dims: Conv2dDims },
    /// inputs: x, then gamma and beta when affine, then the residual when the fused tail has
    /// one; `relu_out` is the output when the tail ends in a ReLU (its mask)
    BatchNorm { x: Tensor<B>, gamma: Option<Tensor<B>>, beta: Option<Tensor<B>>, saved: BnSaved<B>, relu_out: Option<Tensor<B>>, residual: bool },
    /// inputs: x, gamma, beta
    LayerNorm { x: Tensor<B>, gamma: Tensor<B>, saved: BnSaved<B> },
    L2Normalize { x: Tensor<B>, norm: Tensor<B>, eps: f32 },
    /// inputs: x
    Softmax { y: Tensor<B> },
    /// inputs: x
    LogSumExp { x: Tensor<B>, lse: Tensor<B> },
    /// inputs: q, k, v
    Attention { q: Tensor<B>, k: Tensor<B>, v: Tensor<B>, o: Tensor<B>, lse: Tensor<B>, scale: f32 },
    /// inputs: x
    Unary { op: Unary, x: Tensor<B> },
    /// inputs: a, b (b broadcast over a's leading axes)
    Add { b_shape: Vec<usize> },
    /// inputs: a, b (b broadcast over a's leading axes)
    Mul { a: Tensor<B>, b: Tensor<B> },
    /// inputs: a, b (b broadcast over a's leading axes)
    Sub { b_shape: Vec<usize> },
    /// inputs: a, b (b broadcast over a's leading axes); out = a / b
    Div { out: Tensor<B>, b: Tensor<B> },
    /// inputs: x
    Scale { alpha: f32 },
    /// inputs: x, s
    ChannelScale { x: Tensor<B>, s: Tensor<B> },
    /// inputs: x
    SumAxis { in_shape: Vec<usize>, axis: usize },
    /// inputs: x
    MaxPool { x: Tensor<B>, dims: PoolDims },
    /// inputs: x
    GlobalAvgPool { in_shape: Vec<usize> },
    /// inputs: logits (labels are constants)
    CrossEntropy { logits: Tensor<B>, labels: Tensor<B> },
    /// inputs: p, z
    CosineLoss { p: Tensor<B>, z: Tensor<B>, eps: f32 },
    /// inputs: logits (the soft targets are constants)
    SoftCrossEntropy { logits: Tensor<B>, q: Tensor<B> },
    /// inputs: sim (groups are constants)
    NtXent { sim: Tensor<B>, groups: Tensor<B>, temperature: f32 },
    /// inputs: c
    IdentityPenalty { c: Tensor<B>, diag_weight: f32, off_weight: f32 },
    /// inputs: x
    Permute { perm: Vec<usize> },
    /// inputs: x
    Reshape { in_shape: Vec<usize> },
    /// inputs: x
    Slice { in_shape: Vec<usize>, dtype: DType, axis: usize, start: usize },
    /// inputs: the concatenated tensors, in order
    Concat { axis: usize, sizes: Vec<usize> },
    /// inputs: x [n, l, ..] (the indices [n, k] are constants)
    GatherRows { idx: Tensor<B>, l: usize },
    /// inputs: x, the same shape on every rank of `group`; output: their sum.
    AllReduce { group: crate::dist::collective::Group<B> },
    /// inputs: x [rows, ..] on every rank of `group`; output: all ranks' rows, rank 0 first.
    AllGather { group: crate::dist::collective::Group<B>, rows: usize },
}

impl<B: Backend> Op<B> {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Matmul { .. } => "matmul",
            Op::Conv2d { .. } => "conv2d",
            Op::BatchNorm { .. } => "batchnorm",
            Op::LayerNorm { .. } => "layernorm",
            Op::L2Normalize { .. } => "l2_normalize",
            Op::Softmax { .. } => "softmax",
            Op::LogSumExp { .. } => "logsumexp",
            Op::Attention { .. } => "attention",
            Op::Unary { .. } => "unary",
            Op::Add { .. } => "add",
            Op::Mul { .. } => "mul",
            Op::Sub { .. } => "sub",
            Op::Div { .. } => "div",
            Op::Scale { .. } => "scale",
            Op::SumAxis { .. } => "sum_axis",
            Op::MaxPool { .. } => "maxpool2d",
            Op::GlobalAvgPool { .. } => "avgpool_global",
            Op::CrossEntropy { .. } => "cross_entropy",
            Op::CosineLoss { .. } => "cosine_loss",
            Op::NtXent { .. } => "nt_xent",
            Op::SoftCrossEntropy { .. } => "soft_cross_entropy",
            Op::ChannelScale { .. } => "channel_scale",
            Op::IdentityPenalty { .. } => "identity_penalty",
            Op::Permute { .. } => "permute",
            Op::Reshape { .. } => "reshape",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::GatherRows { .. } => "gather_rows",
            Op::AllReduce { .. } => "all_reduce",
            Op::AllGather { .. } => "all_gather",
        }
    }
}

type Grads<B> = Vec<Option<Tensor<B>>>;

/// Whether `op`'s rule can add a gradient its input 0 already has into the one it computes
/// (`backward_adding`), so that autograd makes no pass of its own for the sum: a convolution's
/// backward-data (a ResNet block's input, whose gradient from the shortcut came first).
pub(super) fn adds_into_input0<B: Backend>(op: &Op<B>) -> bool {
    matches!(op, Op::Conv2d { .. })
}

/// `backward`, with input 0's gradient `prev0` + the rule's (input 0 must need one).
pub(super) fn backward_adding<B: Backend>(op: &Op<B>, g: &Tensor<B>, needs: &[bool], prev0: Tensor<B>) -> Result<Grads<B>> {
    if let Op::Conv2d { x, w, dims } = op {
        let dw = if needs.get(1).copied().unwrap_or(true) { Some(ops::conv2d_weight_bwd(x, g, dims)?) } else { None };
        return Ok(vec![Some(ops::conv2d_data_bwd_add(g, w, &prev0, dims)?), dw]);
    }
    let mut grads = backward(op, g, needs)?;
    if let Some(Some(d0)) = grads.first_mut() {
        *d0 = ops::add(&prev0, d0)?;
    }
    Ok(grads)
}

/// `needs[i]` says whether input i wants a gradient; the expensive rules skip the others (the
/// images' gradient at a network's first conv is never used).
pub(super) fn backward<B: Backend>(op: &Op<B>, g: &Tensor<B>, needs: &[bool]) -> Result<Grads<B>> {
    let need = |i: usize| needs.get(i).copied().unwrap_or(true);
    Ok(match op {
        // C = op(A) op(B): d op(A) = dC op(B)^T, d op(B) = op(A)^T dC, transposed back to storage.
        Op::Matmul { a, b, trans_a, trans_b } => {
            let (ta, tb) = (*trans_a, *trans_b);
            let da = match (need(0), ta) {
                (false, _) => None,
                (true, true) => Some(ops::matmul(b, g, tb, true)?),
                (true, false) => Some(ops::matmul(g, b, false, !tb)?),
            };
            let db = match (need(1), tb) {
                (false, _) => None,
                (true, true) => Some(ops::matmul(g, a, true, ta)?),
                (true, false) => Some(ops::matmul(a, g, !ta, false)?),
            };
            vec![da, db]
        }
        Op::Conv2d { x, w, dims } => {
            let dx = if need(0) { Some(ops::conv2d_data_bwd(g, w, dims)?) } else { None };
            let dw = if need(1) { Some(ops::conv2d_weight_bwd(x, g, dims)?) } else { None };
            vec![dx, dw]
        }
        Op::BatchNorm { x, gamma, beta, saved, relu_out, residual } => {
            let (dx, dgb, dres) =
                ops::batchnorm_bwd_tail(x, g, relu_out.as_ref(), gamma.as_ref(), beta.as_ref(), saved, gamma.is_some(), *residual)?;
            let mut out = vec![Some(dx)];
            if let Some((dg, db)) = dgb {
                out.extend([Some(dg), Some(db)]);
            }
            if *residual {
                out.push(dres);
            }
            out
        }
        Op::LayerNorm { x, gamma, saved } => {
            let (dx, dg, db) = ops::layernorm_bwd(x, g, gamma, saved)?;
            vec![Some(dx), Some(dg), Some(db)]
        }
        Op::L2Normalize { x, norm, eps } => vec![Some(ops::l2_normalize_bwd(x, g, norm, *eps)?)],
        Op::Softmax { y } => vec![Some(ops::softmax_bwd(y, g)?)],
        Op::LogSumExp { x, lse } => vec![Some(ops::logsumexp_bwd(x, lse, g)?)],
        Op::Attention { q, k, v, o, lse, scale } => {
            let (dq, dk, dv) = ops::attention_bwd(q, k, v, o, lse, g, *scale)?;
            vec![Some(dq), Some(dk), Some(dv)]
        }
        Op::Unary { op, x } => vec![Some(ops::unary_bwd(*op, x, g)?)],
        Op::Add { b_shape } => vec![Some(g.clone()), Some(ops::sum_to_suffix(g, b_shape)?)],
        Op::Mul { a, b } => {
            let da = ops::mul(g, b)?;
            let db = ops::sum_to_suffix(&ops::mul(g, a)?, b.shape())?;
            vec![Some(da), Some(db)]
        }
        Op::Sub { b_shape } => vec![Some(g.clone()), Some(ops::scale(&ops::sum_to_suffix(g, b_shape)?, -1.0)?)],
        // d(a/b)/da = 1/b; d(a/b)/db = -a/b^2 = -out/b.
        Op::Div { out, b } => {
            let da = ops::div(g, b)?;
            let db = ops::sum_to_suffix(&ops::div(&ops::mul(g, out)?, b)?, b.shape())?;
            vec![Some(da), Some(ops::scale(&db, -1.0)?)]
        }
        Op::Scale { alpha } => vec![Some(ops::scale(g, *alpha)?)],
        Op::ChannelScale { x, s } => {
            let (dx, ds) = ops::channel_scale_bwd(x, s, g)?;
            vec![Some(dx), Some(ds)]
        }
        // Broadcast g back along the summed axis: add it to zeros laid out [axis, outer, inner],
        // then move the axis back into place.
        Op::SumAxis { in_shape, axis } => {
            let (outer, len, inner): (usize, usize, usize) =
                (in_shape[..*axis].iter().product(), in_shape[*axis], in_shape[axis + 1..].iter().product());
            let zeros = Tensor::zeros(g.backend(), &[len, outer, inner], g.dtype())?;
            let spread = ops::add(&zeros, &g.reshape(&[outer, inner])?)?;
            vec![Some(ops::permute(&spread, &[1, 0, 2])?.reshape(in_shape)?)]
        }
        Op::MaxPool { x, dims } => vec![Some(ops::maxpool2d_bwd(x, g, dims)?)],
        Op::GlobalAvgPool { in_shape } => vec![Some(ops::avgpool_global_bwd(g, in_shape)?)],
        Op::CrossEntropy { logits, labels } => vec![Some(ops::cross_entropy_bwd(logits, labels, g)?)],
        Op::SoftCrossEntropy { logits, q } => vec![Some(ops::soft_cross_entropy_bwd(logits, q, g)?)],
        Op::NtXent { sim, groups, temperature } => vec![Some(ops::nt_xent_bwd(sim, groups, g, *temperature)?)],
        Op::IdentityPenalty { c, diag_weight, off_weight } => vec![Some(ops::identity_penalty_bwd(c, g, *diag_weight, *off_weight)?)],
        Op::CosineLoss { p, z, eps } => {
            let (dp, dz) = ops::cosine_loss_bwd(p, z, g, *eps, true)?;
            vec![Some(dp), dz]
        }
        Op::Permute { perm } => vec![Some(ops::permute(g, &ops::inverse_perm(perm))?)],
        Op::Reshape { in_shape } => vec![Some(g.reshape(in_shape)?)],
        Op::Slice { in_shape, dtype, axis, start } => {
            let dx = Tensor::zeros(g.backend(), in_shape, *dtype)?;
            ops::slice_assign(&dx, g, *axis, *start)?;
            vec![Some(dx)]
        }
        Op::Concat { axis, sizes } => {
            let mut start = 0;
            let mut out = Vec::with_capacity(sizes.len());
            for &len in sizes {
                out.push(Some(ops::slice(g, *axis, start, len)?));
                start += len;
            }
            out
        }
        // The scatter back: each row of x gets the sum of the gradients of its copies.
        Op::GatherRows { idx, l } => vec![Some(ops::gather_rows_bwd(g, idx, *l)?)],
        // Every rank's output depends on every rank's input, and each rank differentiates its
        // own loss: the input's gradient is the sum over ranks of theirs.
        Op::AllReduce { group } => vec![Some(group.all_reduce_sum(g)?)],
        // solo-learn's GatherLayer: the gathered gradients summed over ranks, this rank's rows.
        Op::AllGather { group, rows } => vec![Some(ops::slice(&group.all_reduce_sum(g)?, 0, group.rank() * rows, *rows)?)],
    })
}
