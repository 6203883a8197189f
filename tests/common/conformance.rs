//! The backend-conformance suite, written once and generic over `Backend`: every op's forward
//! and backward on random shapes (odd sizes, non-multiples of any tile) on the device under
//! test, compared with the CPU backend in f64. GPU backends run this same suite.
#![allow(dead_code)]

use ssl_engine::autograd::{Tape, Var};
use ssl_engine::backend::Unary;
use ssl_engine::backend::prelude::*;
use ssl_engine::backend::cpu::CpuBackend;
use ssl_engine::ops::{self, SgdSlot};
use ssl_engine::rng::Rng;
use ssl_engine::{DType, Result, Tensor};

/// One op under test; `run` builds it on any backend's tape.
#[derive(Clone, Debug)]
pub enum Case {
    Matmul { ta: bool, tb: bool },
    Conv { stride: usize, pad: usize, groups: usize },
    BatchNorm { affine: bool },
    /// Affine batch norm with its fused tail, relu?(bn(x) + residual?): x, gamma, beta, then
    /// the residual when given.
    BatchNormTail { residual: bool, relu: bool },
    /// A bias-free convolution into affine batch norm with its tail, one backend call
    /// (conv2d_batchnorm_fwd_train): x, weight, gamma, beta, then the residual when given.
    ConvBatchNorm { stride: usize, pad: usize, groups: usize, residual: bool, relu: bool },
    LayerNorm,
    L2Normalize,
    Softmax,
    Attention { scale: f32 },
    /// An elementwise map through `Tape::unary`; log and sqrt see |x| + 0.5 (see
    /// `positive_input`), RoundBf16 is Precision::Bf16's rounding point.
    Unary(Unary),
    ChannelScale,
    LogSumExp,
    Add,
    Mul,
    Sub,
    /// The divisor sees |x| + 0.5.
    Div,
    Scale(f32),
    SumAxis(usize),
    MaxPool { k: usize, stride: usize, pad: usize },
    AvgPool,
    CrossEntropy { labels: Vec<f32> },
    Cosine { stop_grad: bool },
    /// Similarities [rows, rows]; groups [rows] name the positives.
    NtXent { groups: Vec<f32>, temperature: f32 },
    IdentityPenalty { diag_weight: f32, off_weight: f32 },
    /// Logits, then soft targets (taken as constants).
    SoftCrossEntropy,
    Permute(Vec<usize>),
    Slice { axis: usize, start: usize, len: usize },
    Concat(usize),
    Linear,
    /// MAE's token selection through `Tape::gather_rows`: x [n, l, ..], `idx` [n, k] row
    /// indices (constants; repeats allowed, so the scatter back sums).
    GatherRows { k: usize, idx: Vec<f32> },
}

impl Case {
    pub fn run<B: Backend>(&self, t: &Tape<B>, v: &[Var<B>]) -> Result<Var<B>> {
        match self {
            Case::Matmul { ta, tb } => t.matmul(&v[0], &v[1], *ta, *tb),
            Case::Conv { stride, pad, groups } => t.conv2d(&v[0], &v[1], [*stride; 2], [*pad; 2], *groups),
            Case::BatchNorm { affine: true } => t.batchnorm_train(&v[0], Some((&v[1], &v[2])), None, 1e-5),
            Case::BatchNorm { affine: false } => t.batchnorm_train(&v[0], None, None, 1e-5),
            Case::BatchNormTail { residual, relu } => {
                t.batchnorm_train_tail(&v[0], Some((&v[1], &v[2])), None, 1e-5, residual.then(|| &v[3]), *relu)
            }
            Case::ConvBatchNorm { stride, pad, groups, residual, relu } => {
                let affine = Some((&v[2], &v[3]));
                t.conv2d_batchnorm_train(&v[0], &v[1], [*stride; 2], [*pad; 2], *groups, affine, None, 1e-5, residual.then(|| &v[4]), *relu)
            }
            Case::LayerNorm => t.layernorm(&v[0], &v[1], &v[2], 1e-6),
            Case::L2Normalize => t.l2_normalize(&v[0], 1e-12),
            Case::Softmax => t.softmax(&v[0]),
            Case::Attention { scale } => t.attention(&v[0], &v[1], &v[2], *scale),
            Case::Unary(op) => t.unary(*op, &v[0]),
            Case::ChannelScale => t.channel_scale(&v[0], &v[1]),
            Case::LogSumExp => t.logsumexp(&v[0]),
            Case::Add => t.add(&v[0], &v[1]),
            Case::Mul => t.mul(&v[0], &v[1]),
            Case::Sub => t.sub(&v[0], &v[1]),
            Case::Div => t.div(&v[0], &v[1]),
            Case::Scale(a) => t.scale(&v[0], *a),
            Case::SumAxis(a) => t.sum_axis(&v[0], *a),
            Case::MaxPool { k, stride, pad } => t.maxpool2d(&v[0], *k, *stride, *pad),
            Case::AvgPool => t.avgpool_global(&v[0]),
            Case::CrossEntropy { labels } => {
                let l = Tensor::from_f32(v[0].value.backend(), labels, &[labels.len()], v[0].value.dtype())?;
                t.cross_entropy(&v[0], &l)
            }
            Case::Cosine { stop_grad } => t.cosine_loss(&v[0], &if *stop_grad { v[1].detach() } else { v[1].clone() }, 1e-12),
            Case::NtXent { groups, temperature } => {
                let g = Tensor::from_f32(v[0].value.backend(), groups, &[groups.len()], v[0].value.dtype())?;
                t.nt_xent(&v[0], &g, *temperature)
            }
            Case::SoftCrossEntropy => t.soft_cross_entropy(&v[0], &v[1].value),
            Case::IdentityPenalty { diag_weight, off_weight } => t.identity_penalty(&v[0], *diag_weight, *off_weight),
            Case::Permute(p) => t.permute(&v[0], p),
            Case::Slice { axis, start, len } => t.slice(&v[0], *axis, *start, *len),
            Case::Concat(axis) => t.concat(&v.iter().collect::<Vec<_>>(), *axis),
            Case::Linear => t.linear(&v[0], &v[1], Some(&v[2])),
            Case::GatherRows { k, idx } => {
                let i = Tensor::from_f32(v[0].value.backend(), idx, &[v[0].shape()[0], *k], v[0].value.dtype())?;
                t.gather_rows(&v[0], &i)
            }
        }
    }
}

impl Case {
    /// Whether input `i` must be positive (log and sqrt of it, division by it).
    fn positive_input(&self, i: usize) -> bool {
        matches!((self, i), (Case::Unary(Unary::Log | Unary::Sqrt), 0) | (Case::Div, 1))
    }
}

/// Every elementwise map, in the order the suite runs them.
const UNARY_OPS: [Unary; 8] =
    [Unary::Relu, Unary::Gelu, Unary::Exp, Unary::Log, Unary::Sqrt, Unary::Sigmoid, Unary::Silu, Unary::RoundBf16];

/// The suite: (case, input shapes). Sizes are odd on purpose; none is a multiple of 8 or 16.
pub fn cases() -> Vec<(Case, Vec<Vec<usize>>)> {
    use Case::*;
    vec![
        (Matmul { ta: false, tb: false }, vec![vec![67, 33], vec![33, 45]]),
        (Matmul { ta: true, tb: false }, vec![vec![3, 17, 9], vec![3, 17, 13]]),
        (Matmul { ta: false, tb: true }, vec![vec![2, 31, 7], vec![2, 19, 7]]),
        (Matmul { ta: true, tb: true }, vec![vec![5, 11], vec![13, 5]]),
        (Conv { stride: 1, pad: 1, groups: 1 }, vec![vec![3, 9, 7, 5], vec![6, 3, 3, 5]]),
        (Conv { stride: 2, pad: 1, groups: 1 }, vec![vec![2, 11, 9, 3], vec![7, 3, 3, 3]]),
        (Conv { stride: 2, pad: 0, groups: 1 }, vec![vec![2, 7, 7, 6], vec![5, 1, 1, 6]]),
        (Conv { stride: 1, pad: 0, groups: 1 }, vec![vec![2, 5, 3, 6], vec![9, 1, 1, 6]]),
        (Conv { stride: 2, pad: 3, groups: 1 }, vec![vec![1, 13, 12, 3], vec![4, 7, 7, 3]]),
        (Conv { stride: 1, pad: 1, groups: 2 }, vec![vec![2, 6, 5, 6], vec![4, 3, 3, 3]]),
        (Conv { stride: 1, pad: 1, groups: 5 }, vec![vec![2, 6, 7, 5], vec![5, 3, 3, 1]]),
        (Conv { stride: 4, pad: 0, groups: 1 }, vec![vec![2, 12, 8, 3], vec![5, 4, 4, 3]]),
        (BatchNorm { affine: true }, vec![vec![3, 5, 7, 11], vec![11], vec![11]]),
        (BatchNorm { affine: false }, vec![vec![37, 13]]),
        (BatchNormTail { residual: false, relu: true }, vec![vec![3, 5, 7, 11], vec![11], vec![11]]),
        (BatchNormTail { residual: true, relu: true }, vec![vec![3, 5, 7, 11], vec![11], vec![11], vec![3, 5, 7, 11]]),
        (BatchNormTail { residual: true, relu: false }, vec![vec![37, 13], vec![13], vec![13], vec![37, 13]]),
        (
            ConvBatchNorm { stride: 1, pad: 1, groups: 1, residual: true, relu: true },
            vec![vec![2, 9, 7, 5], vec![6, 3, 3, 5], vec![6], vec![6], vec![2, 9, 7, 6]],
        ),
        (ConvBatchNorm { stride: 2, pad: 1, groups: 2, residual: false, relu: true }, vec![vec![2, 11, 9, 6], vec![4, 3, 3, 3], vec![4], vec![4]]),
        (LayerNorm, vec![vec![3, 7, 19], vec![19], vec![19]]),
        (L2Normalize, vec![vec![5, 7, 33]]),
        (Softmax, vec![vec![5, 7, 33]]),
        (Attention { scale: 0.37 }, vec![vec![2, 3, 17, 5], vec![2, 3, 13, 5], vec![2, 3, 13, 5]]),
    ]
    .into_iter()
    .chain(UNARY_OPS.map(|op| (Unary(op), vec![vec![7, 13, 3]])))
    .chain([
        (ChannelScale, vec![vec![3, 5, 7, 11], vec![3, 11]]),
        (LogSumExp, vec![vec![5, 7, 33]]),
        (Sub, vec![vec![5, 7, 9], vec![7, 9]]),
        (Div, vec![vec![3, 5, 7], vec![5, 7]]),
        (Div, vec![vec![5, 9], vec![5, 9]]),
        (Add, vec![vec![5, 7, 9], vec![7, 9]]),
        (Add, vec![vec![5, 9], vec![5, 9]]),
        (Mul, vec![vec![3, 5, 7], vec![7]]),
        (Scale(-0.37), vec![vec![101]]),
        (SumAxis(0), vec![vec![5, 3, 7]]),
        (SumAxis(1), vec![vec![5, 3, 7]]),
        (SumAxis(2), vec![vec![5, 3, 7]]),
        (MaxPool { k: 3, stride: 2, pad: 1 }, vec![vec![2, 9, 7, 5]]),
        (MaxPool { k: 2, stride: 2, pad: 0 }, vec![vec![1, 6, 8, 3]]),
        (AvgPool, vec![vec![3, 5, 3, 7]]),
        (CrossEntropy { labels: vec![0.0, 6.0, 3.0, 3.0, 1.0] }, vec![vec![5, 7]]),
        (Cosine { stop_grad: true }, vec![vec![9, 13], vec![9, 13]]),
        (Cosine { stop_grad: false }, vec![vec![9, 13], vec![9, 13]]),
        // SimCLR's pairing (row i with i + 5) and SupCon's repeated labels.
        (NtXent { groups: (0..10).map(|i| (i % 5) as f32).collect(), temperature: 0.2 }, vec![vec![10, 10]]),
        (NtXent { groups: vec![0.0, 1.0, 1.0, 2.0, 0.0, 2.0, 1.0], temperature: 0.5 }, vec![vec![7, 7]]),
        (IdentityPenalty { diag_weight: 1.0, off_weight: 0.0051 }, vec![vec![11, 11]]),
        (SoftCrossEntropy, vec![vec![7, 13], vec![7, 13]]),
        (IdentityPenalty { diag_weight: 0.0, off_weight: 0.3 }, vec![vec![9, 9]]),
        (Permute(vec![2, 0, 3, 1]), vec![vec![2, 3, 5, 7]]),
        (Slice { axis: 1, start: 2, len: 3 }, vec![vec![3, 7, 5]]),
        (Slice { axis: 0, start: 1, len: 2 }, vec![vec![4, 3]]),
        (Concat(0), vec![vec![2, 5], vec![3, 5]]),
        (Concat(1), vec![vec![2, 1, 4], vec![2, 5, 4], vec![2, 2, 4]]),
        (Linear, vec![vec![3, 5, 11], vec![7, 11], vec![7]]),
        // Repeated rows (the scatter back sums them), k > l, d = 1, trailing axes flattened.
        (GatherRows { k: 4, idx: vec![6.0, 0.0, 6.0, 3.0, 1.0, 1.0, 1.0, 5.0, 2.0, 4.0, 0.0, 6.0] }, vec![vec![3, 7, 5]]),
        (GatherRows { k: 5, idx: vec![2.0, 0.0, 2.0, 1.0, 2.0, 0.0, 0.0, 1.0, 1.0, 2.0] }, vec![vec![2, 3]]),
        (GatherRows { k: 2, idx: vec![4.0, 1.0, 0.0, 3.0] }, vec![vec![2, 5, 3, 3]]),
    ])
    .collect()
}

/// Indices [n, k] into l rows: a prefix of a shuffle of 0..l per row (`repeats` false, k <= l),
/// or k draws with replacement whose second repeats the first.
pub fn gather_indices(rng: &mut Rng, n: usize, l: usize, k: usize, repeats: bool) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * k);
    for _ in 0..n {
        if repeats {
            let mut row: Vec<f32> = (0..k).map(|_| rng.below(l as u64) as f32).collect();
            if k > 1 {
                row[1] = row[0];
            }
            out.extend(row);
        } else {
            let mut p: Vec<usize> = (0..l).collect();
            for i in 0..k {
                let j = i + rng.below((l - i) as u64) as usize;
                p.swap(i, j);
            }
            out.extend(p[..k].iter().map(|&r| r as f32));
        }
    }
    out
}

/// The cases with bf16 rounding points (`Precision::Bf16`): convolutions, matmuls, attention and
/// the linear layer, for the bf16 conformance runs.
pub fn bf16_cases() -> Vec<(Case, Vec<Vec<usize>>)> {
    bf16_cases_of(cases())
}

/// The cases of `cases` that have bf16 rounding points.
pub fn bf16_cases_of(cases: Vec<(Case, Vec<Vec<usize>>)>) -> Vec<(Case, Vec<Vec<usize>>)> {
    let gemm = |c: &Case| matches!(c, Case::Matmul { .. } | Case::Conv { .. } | Case::ConvBatchNorm { .. } | Case::Attention { .. } | Case::Linear);
    cases.into_iter().filter(|(c, _)| gemm(c)).collect()
}

/// The cases held to the FP32 reference at a reduced precision's looser bound (TF32 or bf16
/// at 1e-2): all but batch norm fed by a convolution. Its backward keeps only what is left of
/// N dy - sum(dy) - xhat sum(dy xhat), and a ReLU mask flips where rounding moves an output
/// across zero, so the rounding of the convolution's output comes out many times larger
/// (measured: 0.12 relative L2 in dx for bf16 on a 60-row case, 8e-3 for TF32 on 576 rows).
/// Those cases answer to each precision's own reference (the CPU's bf16) instead.
pub fn cross_precision(cases: Vec<(Case, Vec<Vec<usize>>)>) -> Vec<(Case, Vec<Vec<usize>>)> {
    cases.into_iter().filter(|(c, _)| !matches!(c, Case::ConvBatchNorm { .. })).collect()
}

/// Shapes past the suite's: split-K matmuls and convolutions (k >= 512), split axis sums, column
/// statistics over many row blocks, several attention key tiles and the 128-wide head variant.
/// The host emulation and the GPU both run them.
pub fn large_cases() -> Vec<(Case, Vec<Vec<usize>>)> {
    use Case::*;
    vec![
        (Matmul { ta: false, tb: false }, vec![vec![3, 1000], vec![1000, 5]]),
        (Matmul { ta: true, tb: true }, vec![vec![2, 700, 9], vec![2, 11, 700]]),
        (Matmul { ta: false, tb: true }, vec![vec![130, 70], vec![67, 70]]),
        // The 128-row tiles where the grid fills the SMs (4 on the emulated device): 128 x 128
        // over a transposed A with k = 45 (a 32-deep tile and a partial one); 128 x 64 with
        // 16-byte loads along k = 40 for both operands.
        (Matmul { ta: true, tb: false }, vec![vec![2, 45, 260], vec![2, 45, 140]]),
        (Matmul { ta: false, tb: true }, vec![vec![520, 40], vec![50, 40]]),
        (Conv { stride: 1, pad: 1, groups: 1 }, vec![vec![8, 16, 16, 4], vec![6, 3, 3, 4]]),
        (Conv { stride: 2, pad: 1, groups: 2 }, vec![vec![4, 17, 15, 6], vec![4, 3, 3, 3]]),
        // Statistics summed in the epilogue over 9 row tiles and 2 column tiles (16 channels:
        // 16-byte loads); then a long reduction whose split-K takes the separate statistics pass.
        (
            ConvBatchNorm { stride: 1, pad: 1, groups: 1, residual: true, relu: true },
            vec![vec![4, 12, 12, 16], vec![70, 3, 3, 16], vec![70], vec![70], vec![4, 12, 12, 70]],
        ),
        (ConvBatchNorm { stride: 1, pad: 1, groups: 1, residual: false, relu: false }, vec![vec![2, 4, 4, 256], vec![32, 3, 3, 256], vec![32], vec![32]]),
        (SumAxis(1), vec![vec![2, 3000, 3]]),
        (SumAxis(0), vec![vec![5000, 2]]),
        (BatchNorm { affine: true }, vec![vec![4000, 5], vec![5], vec![5]]),
        (BatchNorm { affine: false }, vec![vec![50, 70]]),
        (LayerNorm, vec![vec![700, 40], vec![40], vec![40]]),
        (L2Normalize, vec![vec![70, 300]]),
        (Softmax, vec![vec![9, 100]]),
        (LogSumExp, vec![vec![40, 300]]),
        // The CPU reference takes Winograd F(2x2, 3x3) here (>= 16 channels, >= 8x8 outputs).
        (Conv { stride: 1, pad: 1, groups: 1 }, vec![vec![2, 9, 10, 17], vec![19, 3, 3, 17]]),
        (Attention { scale: 0.2 }, vec![vec![2, 70, 100], vec![2, 40, 100], vec![2, 40, 100]]),
        (Attention { scale: 0.125 }, vec![vec![1, 3, 70, 64], vec![1, 3, 65, 64], vec![1, 3, 65, 64]]),
        (CrossEntropy { labels: (0..40).map(|i| (i % 37) as f32).collect() }, vec![vec![40, 37]]),
        (Cosine { stop_grad: false }, vec![vec![20, 300], vec![20, 300]]),
        (MaxPool { k: 3, stride: 1, pad: 1 }, vec![vec![2, 5, 6, 3]]),
        (AvgPool, vec![vec![2, 7, 9, 33]]),
        (Permute(vec![1, 0]), vec![vec![70, 3]]),
        (ChannelScale, vec![vec![4, 17, 15, 40], vec![4, 40]]),
        (NtXent { groups: (0..130).map(|i| (i % 65) as f32).collect(), temperature: 0.1 }, vec![vec![130, 130]]),
        (IdentityPenalty { diag_weight: 1.0, off_weight: 0.0051 }, vec![vec![300, 300]]),
        (SoftCrossEntropy, vec![vec![40, 300], vec![40, 300]]),
        // MAE on a ViT's 196 patches + 1: keep 49 of 197 tokens of width 70.
        (GatherRows { k: 49, idx: gather_indices(&mut Rng::new(3), 4, 197, 49, false) }, vec![vec![4, 197, 70]]),
    ]
}

/// Shapes of a real ResNet-18 / ViT-tiny step, too slow for the host emulation: run on a GPU.
pub fn model_sized_cases() -> Vec<(Case, Vec<Vec<usize>>)> {
    use Case::*;
    vec![
        (Matmul { ta: false, tb: true }, vec![vec![1040, 192], vec![576, 192]]),
        (Matmul { ta: false, tb: false }, vec![vec![257, 2048], vec![2048, 513]]),
        (Conv { stride: 1, pad: 1, groups: 1 }, vec![vec![16, 32, 32, 64], vec![64, 3, 3, 64]]),
        (Conv { stride: 2, pad: 1, groups: 1 }, vec![vec![16, 16, 16, 128], vec![256, 3, 3, 128]]),
        (Conv { stride: 2, pad: 0, groups: 1 }, vec![vec![16, 32, 32, 64], vec![128, 1, 1, 64]]),
        (Conv { stride: 1, pad: 1, groups: 1 }, vec![vec![16, 4, 4, 512], vec![512, 3, 3, 512]]),
        (BatchNorm { affine: true }, vec![vec![64, 32, 32, 64], vec![64], vec![64]]),
        (Attention { scale: 0.125 }, vec![vec![8, 3, 65, 64], vec![8, 3, 65, 64], vec![8, 3, 65, 64]]),
        (Attention { scale: 0.088 }, vec![vec![2, 2, 197, 128], vec![2, 2, 197, 128], vec![2, 2, 197, 128]]),
        (Cosine { stop_grad: true }, vec![vec![512, 2048], vec![512, 2048]]),
        (CrossEntropy { labels: (0..512).map(|i| (i % 10) as f32).collect() }, vec![vec![512, 10]]),
        (NtXent { groups: (0..1024).map(|i| (i % 512) as f32).collect(), temperature: 0.2 }, vec![vec![1024, 1024]]),
        (IdentityPenalty { diag_weight: 1.0, off_weight: 0.0051 }, vec![vec![2048, 2048]]),
        // MAE ViT-tiny at 224 px, batch 64: keep 49 of 196 patch tokens of width 192.
        (GatherRows { k: 49, idx: gather_indices(&mut Rng::new(4), 64, 196, 49, false) }, vec![vec![64, 196, 192]]),
    ]
}

/// Output and input gradients of one case on one backend, as f64.
fn evaluate<B: Backend>(
    dev: &B,
    dtype: DType,
    case: &Case,
    inputs: &[(Vec<usize>, Vec<f64>)],
    seed: &[f64],
) -> (Vec<f64>, Vec<Option<Vec<f64>>>) {
    let tape = Tape::new();
    let vars: Vec<Var<B>> = inputs.iter().map(|(s, v)| tape.leaf(Tensor::from_f64(dev, v, s, dtype).unwrap())).collect();
    let out = case.run(&tape, &vars).unwrap_or_else(|e| panic!("{case:?}: {e}"));
    let y = out.value.to_f64().unwrap();
    let seed = Tensor::from_f64(dev, seed, out.shape(), dtype).unwrap();
    let grads = tape.backward_with(&out, seed).unwrap();
    (y, vars.iter().map(|v| grads.get(v).map(|g| g.to_f64().unwrap())).collect())
}

pub struct Report {
    pub worst: f64,
    pub lines: Vec<String>,
}

/// Runs every case on `dev` and on the f64 CPU reference; asserts relative L2 <= `tol`.
pub fn run_suite<B: Backend>(dev: &B, dtype: DType, tol: f64, seed: u64) -> Report {
    let mut rng = Rng::new(seed);
    let mut report = run_cases(dev, dtype, tol, &mut rng, cases());
    report.lines.push(sgd_conforms(dev, dtype, tol, &mut rng));
    report.lines.push(ema_conforms(dev, dtype, tol, &mut rng));
    report.lines.push(adamw_conforms(dev, dtype, tol, &mut rng));
    report
}

/// Runs the given cases on `dev` and on the f64 CPU reference; asserts relative L2 <= `tol`.
pub fn run_cases<B: Backend>(dev: &B, dtype: DType, tol: f64, rng: &mut Rng, cases: Vec<(Case, Vec<Vec<usize>>)>) -> Report {
    run_cases_against(dev, &CpuBackend::new(2).unwrap(), dtype, tol, rng, cases)
}

/// `run_cases` against a given f64 CPU reference (e.g. one in `Precision::Bf16`).
pub fn run_cases_against<B: Backend>(
    dev: &B,
    reference: &CpuBackend,
    dtype: DType,
    tol: f64,
    rng: &mut Rng,
    cases: Vec<(Case, Vec<Vec<usize>>)>,
) -> Report {
    let reference = reference.clone();
    let mut report = Report { worst: 0.0, lines: Vec::new() };
    for (case, shapes) in cases {
        // Fresh random inputs each run; max-pool inputs get distinct values (no ties).
        let mut inputs: Vec<(Vec<usize>, Vec<f64>)> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let n: usize = s.iter().product();
                let v = if matches!(case, Case::MaxPool { .. }) {
                    let mut v: Vec<f64> = (0..n).map(|i| i as f64 / n as f64 - 0.5).collect();
                    for i in (1..n).rev() {
                        v.swap(i, rng.below(i as u64 + 1) as usize);
                    }
                    v
                } else if case.positive_input(i) {
                    (0..n).map(|_| rng.uniform_range(-1.0, 1.0).abs() + 0.5).collect()
                } else {
                    (0..n).map(|_| rng.uniform_range(-1.0, 1.0)).collect()
                };
                (s.clone(), v)
            })
            .collect();
        // The cosine loss of unrelated random rows sits near 0, where a relative error says
        // nothing (5.8e-4 on WebGPU once, from a loss of a few hundredths): the second input
        // is the first plus noise, so the loss is near -0.9.
        if matches!(case, Case::Cosine { .. }) {
            let p = inputs[0].1.clone();
            for (z, p) in inputs[1].1.iter_mut().zip(p) {
                *z = p + 0.5 * *z;
            }
        }
        // Inputs rounded to the device's precision so both sides see the same values.
        let inputs: Vec<_> = inputs.into_iter().map(|(s, v)| (s, v.iter().map(|&x| x as f32 as f64).collect::<Vec<_>>())).collect();
        let out_len = {
            let t = Tape::<CpuBackend>::inference();
            let vars: Vec<_> = inputs.iter().map(|(s, v)| t.leaf(Tensor::from_f64(&reference, v, s, DType::F64).unwrap())).collect();
            case.run(&t, &vars).unwrap().value.numel()
        };
        let seed_vals: Vec<f64> = (0..out_len).map(|_| rng.uniform_range(-1.0, 1.0) as f32 as f64).collect();
        let (want_y, want_g) = evaluate(&reference, DType::F64, &case, &inputs, &seed_vals);
        let (got_y, got_g) = evaluate(dev, dtype, &case, &inputs, &seed_vals);
        let mut check = |what: String, got: &[f64], want: &[f64]| {
            assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite values (unwritten output?)");
            let e = super::rel_l2(got, want);
            report.worst = report.worst.max(e);
            report.lines.push(format!("{what}: {e:.2e}"));
            assert!(e <= tol, "{what}: relative L2 {e:.3e} > {tol:.0e} on {}", dev.name());
        };
        check(format!("{case:?} forward {shapes:?}"), &got_y, &want_y);
        for (i, (g, w)) in got_g.iter().zip(&want_g).enumerate() {
            match (g, w) {
                (Some(g), Some(w)) => check(format!("{case:?} grad {i}"), g, w),
                (None, None) => {}
                _ => panic!("{case:?} grad {i}: gradient present on one backend only"),
            }
        }
    }
    report
}

/// The fused SGD step over three tensors of odd sizes, with per-tensor lr and weight decay.
fn sgd_conforms<B: Backend>(dev: &B, dtype: DType, tol: f64, rng: &mut Rng) -> String {
    let reference = CpuBackend::new(2).unwrap();
    let sizes = [1usize, 37, 1001];
    let data: Vec<[Vec<f64>; 3]> =
        sizes.iter().map(|&n| [0, 1, 2].map(|_| (0..n).map(|_| rng.uniform_range(-1.0, 1.0) as f32 as f64).collect())).collect();
    fn step<B: Backend>(dev: &B, dtype: DType, data: &[[Vec<f64>; 3]]) -> Vec<f64> {
        let ts: Vec<[Tensor<B>; 3]> =
            data.iter().map(|d| d.clone().map(|v| Tensor::from_f64(dev, &v, &[v.len()], dtype).unwrap())).collect();
        let slots: Vec<SgdSlot<'_, B>> = ts
            .iter()
            .enumerate()
            .map(|(i, t)| SgdSlot {
                param: &t[0],
                grad: &t[1],
                momentum_buf: &t[2],
                lr: 0.1 * (i + 1) as f32,
                weight_decay: 5e-4 * i as f32,
            })
            .collect();
        ops::sgd_step(&slots, 0.9).unwrap();
        ts.iter().flat_map(|t| [t[0].to_f64().unwrap(), t[2].to_f64().unwrap()].concat()).collect()
    }
    let e = super::rel_l2(&step(dev, dtype, &data), &step(&reference, DType::F64, &data));
    assert!(e <= tol, "sgd_step: relative L2 {e:.3e} > {tol:.0e}");
    format!("sgd_step: {e:.2e}")
}

/// Three fused AdamW steps over three tensors of odd sizes, with per-tensor learning rates,
/// weight decays and step counts (bias corrections at steps 1, 3 and 8), from non-zero moments:
/// parameters and both moments against the CPU in f64.
fn adamw_conforms<B: Backend>(dev: &B, dtype: DType, tol: f64, rng: &mut Rng) -> String {
    use ssl_engine::backend::AdamWHyper;
    use ssl_engine::ops::AdamWSlot;
    let reference = CpuBackend::new(2).unwrap();
    let sizes = [1usize, 37, 1001];
    let mut draw = |n: usize, lo: f64| -> Vec<f64> { (0..n).map(|_| rng.uniform_range(lo, 1.0) as f32 as f64).collect() };
    // param, grad, exp_avg, exp_avg_sq (non-negative), grads of the second and third steps.
    let data: Vec<[Vec<f64>; 6]> = sizes.iter().map(|&n| [draw(n, -1.0), draw(n, -1.0), draw(n, -0.1), draw(n, 0.0), draw(n, -1.0), draw(n, -1.0)]).collect();
    fn steps<B: Backend>(dev: &B, dtype: DType, data: &[[Vec<f64>; 6]]) -> Vec<f64> {
        let t = |v: &Vec<f64>| Tensor::from_f64(dev, v, &[v.len()], dtype).unwrap();
        let ts: Vec<[Tensor<B>; 6]> = data.iter().map(|d| [0, 1, 2, 3, 4, 5].map(|i| t(&d[i]))).collect();
        let hyper = AdamWHyper { beta1: 0.9, beta2: 0.95, eps: 1e-8 };
        for s in 0..3 {
            let slots: Vec<AdamWSlot<'_, B>> = ts
                .iter()
                .enumerate()
                .map(|(i, t)| AdamWSlot {
                    param: &t[0],
                    grad: &t[[1, 4, 5][s]],
                    exp_avg: &t[2],
                    exp_avg_sq: &t[3],
                    lr: 0.01 * (i + 1) as f32,
                    weight_decay: 0.05 * i as f32,
                    step: [1, 3, 8][i] + s as u64,
                })
                .collect();
            ops::adamw_step(&slots, hyper).unwrap();
        }
        ts.iter().flat_map(|t| [t[0].to_f64().unwrap(), t[2].to_f64().unwrap(), t[3].to_f64().unwrap()].concat()).collect()
    }
    let e = super::rel_l2(&steps(dev, dtype, &data), &steps(&reference, DType::F64, &data));
    assert!(e <= tol, "adamw_step: relative L2 {e:.3e} > {tol:.0e}");
    format!("adamw_step: {e:.2e}")
}

/// The fused EMA update over three tensors of odd sizes, against the CPU in f64, which is
/// itself checked against target = tau target + (1 - tau) source written out here.
fn ema_conforms<B: Backend>(dev: &B, dtype: DType, tol: f64, rng: &mut Rng) -> String {
    let reference = CpuBackend::new(2).unwrap();
    let tau = 0.996f32;
    let sizes = [1usize, 37, 1001];
    let data: Vec<[Vec<f64>; 2]> =
        sizes.iter().map(|&n| [0, 1].map(|_| (0..n).map(|_| rng.uniform_range(-1.0, 1.0) as f32 as f64).collect())).collect();
    fn update<B: Backend>(dev: &B, dtype: DType, data: &[[Vec<f64>; 2]], tau: f32) -> Vec<f64> {
        let ts: Vec<[Tensor<B>; 2]> =
            data.iter().map(|d| d.clone().map(|v| Tensor::from_f64(dev, &v, &[v.len()], dtype).unwrap())).collect();
        let pairs: Vec<(&Tensor<B>, &Tensor<B>)> = ts.iter().map(|t| (&t[0], &t[1])).collect();
        ops::ema_update(&pairs, tau).unwrap();
        ts.iter().flat_map(|t| t[0].to_f64().unwrap()).collect()
    }
    let want = update(&reference, DType::F64, &data, tau);
    let by_hand: Vec<f64> = data.iter().flat_map(|[t, s]| t.iter().zip(s).map(|(t, s)| tau as f64 * t + (1.0 - tau as f64) * s).collect::<Vec<_>>()).collect();
    assert!(super::rel_l2(&want, &by_hand) < 1e-15, "CPU ema_update differs from the formula");
    let e = super::rel_l2(&update(dev, dtype, &data, tau), &want);
    assert!(e <= tol, "ema_update: relative L2 {e:.3e} > {tol:.0e}");
    format!("ema_update: {e:.2e}")
}

/// The shapes of the gather checks: (x's shape, k, repeats). Repeated indices, k > l, d = 1 and
/// a width of 33 (no multiple of any vector width), trailing axes flattened, k = 0 (dx all
/// zeros), and MAE's 49 of 197 tokens with more elements than one grid pass.
pub fn gather_shapes() -> Vec<(Vec<usize>, usize, bool)> {
    vec![
        (vec![3, 7, 5], 4, true),
        (vec![2, 6], 9, true),
        (vec![2, 5, 33], 3, true),
        (vec![2, 5, 3, 3], 5, false),
        (vec![2, 3, 4], 0, false),
        (vec![8, 197, 70], 49, false),
    ]
}

/// gather_rows and gather_rows_bwd by hand in f32: y[i, j] = x[i, idx[i, j]]; dx[i, r] the sum
/// from 0.0 of dy[i, j] over the j with idx[i, j] = r, in increasing j.
pub fn gather_by_hand(x: &[f32], idx: &[f32], dy: &[f32], n: usize, l: usize, k: usize, d: usize) -> (Vec<f32>, Vec<f32>) {
    let mut y = vec![0f32; n * k * d];
    let mut dx = vec![0f32; n * l * d];
    for i in 0..n {
        for j in 0..k {
            let r = idx[i * k + j] as usize;
            for c in 0..d {
                y[(i * k + j) * d + c] = x[(i * l + r) * d + c];
                dx[(i * l + r) * d + c] += dy[(i * k + j) * d + c];
            }
        }
    }
    (y, dx)
}

/// y = gather_rows(x, idx) and dx = gather_rows_bwd(dy, idx, l) on `dev` in f32.
fn gather_on<B: Backend>(dev: &B, shape: &[usize], idx: &[f32], k: usize, x: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let xt = Tensor::from_f32(dev, x, shape, DType::F32).unwrap();
    let it = Tensor::from_f32(dev, idx, &[shape[0], k], DType::F32).unwrap();
    let y = ops::gather_rows(&xt, &it).unwrap();
    let dyt = Tensor::from_f32(dev, dy, y.shape(), DType::F32).unwrap();
    let dx = ops::gather_rows_bwd(&dyt, &it, shape[1]).unwrap();
    assert_eq!(dx.shape(), shape);
    (y.to_f32().unwrap(), dx.to_f32().unwrap())
}

/// gather_rows and its scatter back on `dev` equal, bit for bit, to the CPU backend, which
/// equals the by-hand reference bit for bit (every backend sums a row's repeats in the same
/// order); returns the largest |dev - cpu| over both (0).
pub fn gather_rows_bitwise<B: Backend>(dev: &B, seed: u64) -> f64 {
    let cpu = CpuBackend::new(2).unwrap();
    let mut rng = Rng::new(seed);
    let mut worst = 0f64;
    for (shape, k, repeats) in gather_shapes() {
        let (n, l, d) = (shape[0], shape[1], shape[2..].iter().product::<usize>());
        let idx = gather_indices(&mut rng, n, l, k, repeats);
        let x: Vec<f32> = (0..n * l * d).map(|_| rng.uniform_range(-1.0, 1.0) as f32).collect();
        let dy: Vec<f32> = (0..n * k * d).map(|_| rng.uniform_range(-1.0, 1.0) as f32).collect();
        let (want_y, want_dx) = gather_by_hand(&x, &idx, &dy, n, l, k, d);
        let (cpu_y, cpu_dx) = gather_on(&cpu, &shape, &idx, k, &x, &dy);
        let (got_y, got_dx) = gather_on(dev, &shape, &idx, k, &x, &dy);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(&cpu_y) == bits(&want_y) && bits(&cpu_dx) == bits(&want_dx),
            "cpu gather {shape:?} k {k} differs from the by-hand sums"
        );
        // A NaN (an unwritten element) counts as an infinite difference.
        let diff = |a: &[f32], b: &[f32]| {
            a.iter().zip(b).map(|(a, b)| (*a as f64 - *b as f64).abs()).fold(0f64, |m, e| if e.is_nan() { f64::INFINITY } else { m.max(e) })
        };
        let (ey, edx) = (diff(&got_y, &cpu_y), diff(&got_dx, &cpu_dx));
        eprintln!("gather_rows {shape:?} k {k} repeats {repeats}: max |dev - cpu| y {ey:.1e}, dx {edx:.1e}");
        worst = worst.max(ey).max(edx);
        assert!(bits(&got_y) == bits(&cpu_y), "gather_rows {shape:?} k {k}: forward differs from the cpu on {} (max {ey:.2e})", dev.name());
        assert!(bits(&got_dx) == bits(&cpu_dx), "gather_rows_bwd {shape:?} k {k}: differs from the cpu on {} (max {edx:.2e})", dev.name());
    }
    worst
}

/// On a GPU an index that is not a row (out of range, negative, fractional) gives a NaN row
/// forward (the CPU returns an error instead) and matches no row backward.
pub fn gather_rows_bad_index_is_nan<B: Backend>(dev: &B) {
    let x: Vec<f32> = (0..2 * 3 * 2).map(|i| i as f32).collect();
    let idx = [1.0, 3.0, -1.0, 0.5];
    let (y, dx) = gather_on(dev, &[2, 3, 2], &idx, 2, &x, &[1.0; 8]);
    assert_eq!(&y[..2], &[2.0, 3.0]);
    assert!(y[2..].iter().all(|v| v.is_nan()), "{y:?}");
    assert_eq!(dx, [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
}
