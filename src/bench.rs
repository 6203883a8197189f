//! Benchmarks: a whole training step, and each kernel family on the shapes ResNet-18 (CIFAR)
//! and ViT-tiny use. Times are medians over repeated runs after warm-up; the backend is
//! synchronised around every timed region. GPU backends extend the same harness.

use std::time::Instant;

use crate::autograd::Var;
use crate::backend::{Backend, Unary};
use crate::error::Result;
use crate::models::BackboneConfig;
use crate::nn::{Ctx, ParamStore};
use crate::ops;
use crate::optim::{Sgd, StepGraph, always, train_step};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};

#[derive(Clone, Debug)]
pub struct Timing {
    pub name: String,
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    /// Useful work per run: floating-point operations or bytes moved.
    pub work: Work,
}

#[derive(Clone, Copy, Debug)]
pub enum Work {
    Flops(f64),
    Bytes(f64),
    Images(f64),
}

impl Timing {
    pub fn rate(&self) -> String {
        match self.work {
            Work::Flops(f) => format!("{:8.1} GFLOP/s", f / self.median_s / 1e9),
            Work::Bytes(b) => format!("{:8.2} GB/s", b / self.median_s / 1e9),
            Work::Images(n) => format!("{:8.1} img/s", n / self.median_s),
        }
    }
}

/// Runs `f` `warmup` times, then `runs` timed times; returns (median, min, max) seconds.
pub fn time<B: Backend>(b: &B, warmup: usize, runs: usize, f: impl FnMut() -> Result<()>) -> Result<(f64, f64, f64)> {
    time_with(b, warmup, runs, || {}, f)
}

/// `time`, calling `on_warm` between the warm-up and the timed runs.
pub fn time_with<B: Backend>(
    b: &B,
    warmup: usize,
    runs: usize,
    on_warm: impl FnOnce(),
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, f64, f64)> {
    for _ in 0..warmup {
        f()?;
    }
    b.synchronize()?;
    on_warm();
    let mut ts = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        f()?;
        b.synchronize()?;
        ts.push(t0.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    Ok((ts[ts.len() / 2], ts[0], ts[ts.len() - 1]))
}

fn random<B: Backend>(b: &B, rng: &mut Rng, shape: &[usize]) -> Result<Tensor<B>> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.uniform_range(-1.0, 1.0) as f32).collect();
    Tensor::from_f32(b, &v, shape, DType::F32)
}

/// One supervised step of a backbone with a 10-class head: forward, cross-entropy, backward,
/// fused SGD (momentum 0.9, weight decay 5e-4). The same step as benches/pytorch_step.py.
pub fn bench_step<B: Backend>(b: &B, model: &str, batch: usize, image: usize, warmup: usize, runs: usize) -> Result<Timing> {
    let mut cfg = BackboneConfig::preset(model, image)?;
    cfg.set_num_classes(Some(10));
    let mut ps = ParamStore::new(b, DType::F32, 0);
    let net = cfg.build(&mut ps, "")?;
    let mut rng = Rng::new(1);
    let x = random(b, &mut rng, &[batch, image, image, 3])?;
    let labels: Vec<f32> = (0..batch).map(|i| (i % 10) as f32).collect();
    let labels = Tensor::from_f32(b, &labels, &[batch], DType::F32)?;
    let mut opt = Sgd::new(0.9);
    let (median_s, min_s, max_s) = time(b, warmup, runs, || {
        let forward = |cx: &Ctx<B>| Ok((cx.tape.cross_entropy(&net.forward(cx, &Var::constant(x.clone()))?, &labels)?, ()));
        train_step(&ps, &mut opt, &|_| (0.01, 5e-4), false, forward, always).map(drop)
    })?;
    Ok(Timing { name: format!("step {model} batch {batch}"), median_s, min_s, max_s, work: Work::Images(batch as f64) })
}

/// One SimSiam step: two views through backbone + projector + predictor (CIFAR heads, 2048-d),
/// the symmetric loss, backward, fused SGD. The same step as `benches/pytorch_step.py --simsiam`.
/// With `graph`, forward and backward replay as one CUDA graph where the backend has graphs
/// (recorded in the warm-up, which then takes at least two steps).
pub fn bench_simsiam_step<B: Backend>(b: &B, model: &str, batch: usize, image: usize, warmup: usize, runs: usize, graph: bool) -> Result<Timing> {
    bench_simsiam_step_with(b, model, batch, image, warmup, runs, graph, None, |_| {})
}

/// `bench_simsiam_step`, calling `on_warm` with the step graph's kernel count (0 without one)
/// after the warm-up steps (the census clears the launch log there, so it holds the timed
/// steps alone).
#[allow(clippy::too_many_arguments)]
pub fn bench_simsiam_step_with<B: Backend>(
    b: &B,
    model: &str,
    batch: usize,
    image: usize,
    warmup: usize,
    runs: usize,
    graph: bool,
    replicas: Option<crate::nn::Replicas<B>>,
    on_warm: impl FnOnce(usize),
) -> Result<Timing> {
    use crate::ssl::{
        Method,
        simsiam::{SimSiam, SimSiamConfig},
    };
    let backbone = BackboneConfig::preset(model, image)?;
    let mut ps = ParamStore::new(b, DType::F32, 0);
    let method = SimSiam::new(&mut ps, &backbone, &SimSiamConfig::default())?;
    ps.set_replicas(replicas);
    let mut rng = Rng::new(1);
    let views = vec![random(b, &mut rng, &[batch, image, image, 3])?, random(b, &mut rng, &[batch, image, image, 3])?];
    let mut opt = Sgd::new(0.9);
    let mut steps = if graph { StepGraph::new(b, false) } else { StepGraph::disabled(b, false) };
    let warmup = if graph { warmup.max(2) } else { warmup };
    let steps = std::cell::RefCell::new(&mut steps);
    let (median_s, min_s, max_s) = time_with(b, warmup, runs, || on_warm(steps.borrow().launches()), || {
        let forward = |cx: &Ctx<B>, inputs: &[Tensor<B>]| {
            let xs: Vec<Var<B>> = inputs.iter().map(|v| Var::constant(v.clone())).collect();
            Ok((Method::<B>::forward(&method, cx, &xs, None)?.loss, ()))
        };
        steps.borrow_mut().step(&ps, &mut opt, &|_| (0.06, 5e-4), views.clone(), forward, always).map(drop)
    })?;
    // What the step graph did (captured, replayed, fell back), for the logs of GPU runs.
    for e in &steps.borrow().events {
        eprintln!("step graph: {e}");
    }
    Ok(Timing {
        name: format!("simsiam step {model} batch {batch} (2 views)"),
        median_s,
        min_s,
        max_s,
        work: Work::Images(2.0 * batch as f64),
    })
}

/// Each kernel family on the shapes ResNet-18 (CIFAR, batch `batch`) and ViT-tiny use.
pub fn bench_kernels<B: Backend>(b: &B, batch: usize, filter: Option<&str>, runs: usize) -> Result<Vec<Timing>> {
    let mut rng = Rng::new(2);
    let mut out = Vec::new();
    let want = |name: &str| filter.is_none_or(|f| name.contains(f));
    let mut push = |name: String, work: Work, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        if want(&name) {
            let (median_s, min_s, max_s) = time(b, 1, runs, f)?;
            out.push(Timing { name, median_s, min_s, max_s, work });
        }
        Ok(())
    };
    let n = batch;
    // GEMM: square ones (4096^3 is the GPU yardstick; `--filter` skips it on a CPU) and
    // ViT-tiny's qkv / MLP projections over batch x 65 tokens.
    for (m, k, nn) in [(1024, 1024, 1024), (4096, 4096, 4096), (n * 65, 192, 576), (n * 65, 192, 768), (n * 65, 768, 192)] {
        let (a, w) = (random(b, &mut rng, &[m, k])?, random(b, &mut rng, &[nn, k])?);
        push(format!("matmul {m}x{k} . ({nn}x{k})^T"), Work::Flops(2.0 * (m * k * nn) as f64), &mut || {
            ops::matmul(&a, &w, false, true).map(drop)
        })?;
    }
    // Every distinct convolution of ResNet-18 CIFAR: (h, c_in, c_out, k, stride).
    for (h, ci, co, k, s) in [
        (32, 3, 64, 3, 1),
        (32, 64, 64, 3, 1),
        (32, 64, 128, 3, 2),
        (16, 128, 128, 3, 1),
        (32, 64, 128, 1, 2),
        (16, 128, 256, 3, 2),
        (8, 256, 256, 3, 1),
        (8, 256, 512, 3, 2),
        (4, 512, 512, 3, 1),
    ] {
        let x = random(b, &mut rng, &[n, h, h, ci])?;
        let w = random(b, &mut rng, &[co, k, k, ci])?;
        let d = ops::conv2d_dims(x.shape(), w.shape(), [s, s], [k / 2, k / 2], 1)?;
        let dy = random(b, &mut rng, &[n, d.oh, d.ow, co])?;
        let flops = 2.0 * (n * d.oh * d.ow * co * ci * k * k) as f64;
        let tag = format!("{h}x{h} {ci}->{co} k{k} s{s}");
        push(format!("conv fwd {tag}"), Work::Flops(flops), &mut || ops::conv2d(&x, &w, &d).map(drop))?;
        push(format!("conv bwd-data {tag}"), Work::Flops(flops), &mut || ops::conv2d_data_bwd(&dy, &w, &d).map(drop))?;
        push(format!("conv bwd-weight {tag}"), Work::Flops(flops), &mut || ops::conv2d_weight_bwd(&x, &dy, &d).map(drop))?;
    }
    // Batch norm on the largest ResNet activation, forward and backward.
    {
        let x = random(b, &mut rng, &[n, 32, 32, 64])?;
        let (g, be) = (random(b, &mut rng, &[64])?, random(b, &mut rng, &[64])?);
        let bytes = (x.numel() * 4 * 2) as f64;
        push("batchnorm fwd 32x32x64".into(), Work::Bytes(bytes), &mut || {
            ops::batchnorm_train(&x, Some(&g), Some(&be), None, 1e-5).map(drop)
        })?;
        let (_, saved) = ops::batchnorm_train(&x, Some(&g), Some(&be), None, 1e-5)?;
        push("batchnorm bwd 32x32x64".into(), Work::Bytes(bytes * 1.5), &mut || {
            ops::batchnorm_bwd(&x, &x, Some(&g), &saved, true).map(drop)
        })?;
        push("relu fwd 32x32x64".into(), Work::Bytes(bytes), &mut || ops::unary(Unary::Relu, &x).map(drop))?;
        push("relu bwd 32x32x64".into(), Work::Bytes(bytes * 1.5), &mut || ops::unary_bwd(Unary::Relu, &x, &x).map(drop))?;
        push("add 32x32x64".into(), Work::Bytes(bytes * 1.5), &mut || ops::add(&x, &x).map(drop))?;
    }
    // ViT-tiny: layer norm, GELU, attention (3 heads of 64, 65 tokens).
    {
        let x = random(b, &mut rng, &[n * 65, 192])?;
        let (g, be) = (random(b, &mut rng, &[192])?, random(b, &mut rng, &[192])?);
        push("layernorm fwd 65x192".into(), Work::Bytes((x.numel() * 8) as f64), &mut || ops::layernorm(&x, &g, &be, 1e-6).map(drop))?;
        let h = random(b, &mut rng, &[n * 65, 768])?;
        push("gelu fwd 65x768".into(), Work::Bytes((h.numel() * 8) as f64), &mut || ops::unary(Unary::Gelu, &h).map(drop))?;
        // ViT-tiny (3 heads) and ViT-small (6 heads) of 64, 65 tokens.
        for heads in [3, 6] {
            let q = random(b, &mut rng, &[n, heads, 65, 64])?;
            let (k, v) = (random(b, &mut rng, &[n, heads, 65, 64])?, random(b, &mut rng, &[n, heads, 65, 64])?);
            let flops = 4.0 * (n * heads * 65 * 65 * 64) as f64;
            push(format!("attention fwd {heads}x65x64"), Work::Flops(flops), &mut || ops::attention(&q, &k, &v, 0.125).map(drop))?;
            let (o, lse) = ops::attention(&q, &k, &v, 0.125)?;
            push(format!("attention bwd {heads}x65x64"), Work::Flops(2.5 * flops), &mut || {
                ops::attention_bwd(&q, &k, &v, &o, &lse, &o, 0.125).map(drop)
            })?;
        }
    }
    // SimSiam's loss on [2 x batch, 2048] and an 11.2M-parameter SGD step (ResNet-18's size).
    {
        let (p, z) = (random(b, &mut rng, &[2 * n, 2048])?, random(b, &mut rng, &[2 * n, 2048])?);
        push("cosine loss fwd 2048".into(), Work::Bytes((p.numel() * 8) as f64), &mut || ops::cosine_loss(&p, &z, 1e-12).map(drop))?;
        let one = Tensor::full(b, &[1], 1.0, DType::F32)?;
        push("cosine loss bwd 2048".into(), Work::Bytes((p.numel() * 12) as f64), &mut || {
            ops::cosine_loss_bwd(&p, &z, &one, 1e-12, false).map(drop)
        })?;
        let len = 11_173_962;
        let (w, g, m) = (random(b, &mut rng, &[len])?, random(b, &mut rng, &[len])?, Tensor::zeros(b, &[len], DType::F32)?);
        push("sgd step 11.2M params".into(), Work::Bytes((len * 20) as f64), &mut || {
            ops::sgd_step(&[ops::SgdSlot { param: &w, grad: &g, momentum_buf: &m, lr: 1e-6, weight_decay: 5e-4 }], 0.9)
        })?;
    }
    Ok(out)
}

/// One kernel's share of a step: launches and the bytes they reach.
#[derive(Clone, Debug)]
pub struct CensusRow {
    pub kernel: String,
    pub launches: usize,
    pub bytes: u64,
    /// Blocks of each launch (its grid), for the wave efficiency.
    pub blocks: Vec<u64>,
    /// FLOPs of its launches (GEMMs and convolutions; 0 for the memory-bound kernels).
    pub flops: u64,
    /// Seconds its launches take at the least on an H100 / H200 (`roofline_seconds`, each launch
    /// bound by its bytes or its FLOPs, whichever takes longer).
    pub floor_s: f64,
}

/// HBM bandwidth of the GPUs the kernels are tuned for: an H200's 4.8 TB/s.
const HBM_BYTES_PER_S: f64 = 4.8e12;

/// The least time one launch can take: reaching `bytes` at HBM speed, or computing `flops` at
/// the dense tensor-core peak (H100 / H200 SXM: 990 TFLOP/s bf16) or, for the exact FP32
/// kernels, the FP32 peak (67 TFLOP/s). `bytes` is what its pointers reach, an upper bound of
/// its traffic, so this floor is an estimate, not a guarantee.
pub fn roofline_seconds(bytes: u64, flops: u64, precision: crate::backend::Precision) -> f64 {
    (bytes as f64 / HBM_BYTES_PER_S).max(flops as f64 / peak_flops(precision))
}

/// Warp instructions a second an H100 / H200 issues at most: 4 schedulers on each of its SMs at
/// the 1.98 GHz boost clock (the census's issue-time estimate).
const ISSUE_PER_S: f64 = 4.0 * DRY_RUN_SMS as f64 * 1.98e9;

/// The FLOP/s peak `roofline_seconds` divides by.
fn peak_flops(precision: crate::backend::Precision) -> f64 {
    match precision {
        crate::backend::Precision::Bf16 => 990e12,
        _ => 67e12,
    }
}

/// The step census: one SimSiam step's kernels, and how many of them a CUDA graph replays.
pub struct Census {
    /// By kernel, most bytes first.
    pub rows: Vec<CensusRow>,
    /// Kernels inside the step graph (0 without one); the rest are launched one by one.
    pub graph_kernels: usize,
    /// With several ranks: the collectives each rank calls in the step, by kind.
    pub collectives: Vec<crate::dist::collective::CollectiveRow>,
}

/// The kernel launches of one SimSiam step (after the warm-up) on the dry-run CUDA device,
/// grouped by kernel, most bytes first: how many launches a step makes and how much memory they
/// reach, before anything runs on a GPU. With `graph`, the step replays its graph (whose
/// kernels the dry run lists as it replays them).
pub fn simsiam_step_census(b: &crate::backend::cuda::CudaBackend, model: &str, batch: usize, image: usize, graph: bool) -> Result<Census> {
    simsiam_step_census_as(b, model, batch, image, graph, None)
}

/// `simsiam_step_census` as one rank of `group` (a `Tallied` group: its calls of the measured
/// step become the census's collectives).
fn simsiam_step_census_as(
    b: &crate::backend::cuda::CudaBackend,
    model: &str,
    batch: usize,
    image: usize,
    graph: bool,
    group: Option<(std::sync::Arc<crate::dist::collective::Tallied<crate::backend::cuda::CudaBackend>>, bool)>,
) -> Result<Census> {
    let mut graph_kernels = 0;
    let replicas = group.clone().map(|(g, sync_bn)| crate::nn::Replicas { group: g, sync_bn });
    bench_simsiam_step_with(b, model, batch, image, 1, 1, graph, replicas, |n| {
        graph_kernels = n;
        b.take_launches();
        if let Some((g, _)) = &group {
            g.take();
        }
    })?;
    let mut rows: Vec<CensusRow> = Vec::new();
    let precision = crate::backend::CoreOps::precision(b);
    for l in b.take_launches() {
        let blocks = l.grid.0 as u64 * l.grid.1 as u64 * l.grid.2 as u64;
        let floor = roofline_seconds(l.bytes, l.flops, precision);
        match rows.iter_mut().find(|r| r.kernel == l.kernel) {
            Some(r) => {
                r.launches += 1;
                r.bytes += l.bytes;
                r.blocks.push(blocks);
                r.flops += l.flops;
                r.floor_s += floor;
            }
            None => rows.push(CensusRow { kernel: l.kernel, launches: 1, bytes: l.bytes, blocks: vec![blocks], flops: l.flops, floor_s: floor }),
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.bytes));
    let collectives = group.map(|(g, _)| g.take()).unwrap_or_default();
    Ok(Census { rows, graph_kernels, collectives })
}

/// SMs of the dry-run device: an H100 SXM's count, so the census sees the grid shapes (and
/// split-K choices) the GPU the kernels are tuned for would get.
const DRY_RUN_SMS: u32 = 132;

/// What `bench step --dry-run` counts.
pub struct CensusRequest<'a> {
    pub model: &'a str,
    /// Images per view on each rank.
    pub batch: usize,
    pub image: usize,
    pub precision: crate::backend::Precision,
    pub graph: bool,
    /// Data-parallel ranks, each on its own dry-run device; the census is rank 0's.
    pub ranks: usize,
    pub sync_bn: bool,
    /// Each GEMM and convolution launch's wave efficiency, from every kernel's registers and
    /// shared memory on sm_90a (compiles every family once more and needs cuobjdump).
    pub waves: bool,
}

/// `bench step --dry-run`: one SimSiam step on the dry-run CUDA device (no GPU needed), as the
/// table the command prints: each kernel's launches and the bytes they reach, the total, and
/// the host launches per step; with several ranks, the collectives each rank calls per step
/// (the ranks meet in memory here; NCCL gets the same calls).
pub fn dry_run_census_table(r: &CensusRequest) -> Result<String> {
    use crate::backend::cuda::CudaBackend;
    use crate::dist::collective::{Group, InProcess, Tallied};
    let census = if r.ranks <= 1 {
        let b = CudaBackend::dry_run(DRY_RUN_SMS)?.with_precision(r.precision);
        simsiam_step_census(&b, r.model, r.batch, r.image, r.graph)?
    } else {
        // The in-process collective reads its tensors back, which a graph capture cannot
        // record: the ranks' census runs eagerly (the kernels are the same).
        let (mut all, _) = InProcess::run(r.ranks, std::time::Duration::from_secs(600), &|_, me: Group<CudaBackend>| {
            let b = CudaBackend::dry_run(DRY_RUN_SMS)?.with_precision(r.precision);
            let tallied = std::sync::Arc::new(Tallied::new(me));
            simsiam_step_census_as(&b, r.model, r.batch, r.image, false, Some((tallied, r.sync_bn)))
        });
        all.swap_remove(0)?
    };
    let (n, bytes): (usize, u64) = census.rows.iter().fold((0, 0), |(n, by), r| (n + r.launches, by + r.bytes));
    // Blocks per SM and main-loop instructions per MMA of each kernel, from its sm_90a SASS
    // (needs cuobjdump): the wave efficiency and the issue time of the GEMM and convolution
    // launches.
    let kernels = (r.waves.then(crate::backend::cuda::report::find_cuobjdump))
        .flatten()
        .and_then(|tool| crate::backend::cuda::report::static_report(&tool).ok());
    let resident: Option<std::collections::HashMap<String, u32>> =
        kernels.as_ref().map(|ks| ks.iter().filter_map(|k| Some((k.name.clone(), k.blocks_per_sm()?))).collect());
    let per_mma: std::collections::HashMap<String, f64> =
        kernels.iter().flatten().filter_map(|k| Some((k.name.clone(), k.instructions_per_mma()?))).collect();
    let gemm_like = |k: &str| k.starts_with("conv2d") || k.starts_with("matmul");
    // The seconds the main loop's instructions take to issue: MMAs (bf16 m16n8k16: 4096 FLOPs;
    // TF32 m16n8k8: 2048) x instructions per MMA, at ISSUE_PER_S warp instructions a second.
    let issue_s = |row: &CensusRow| -> Option<f64> {
        let flops_per_mma = if r.precision == crate::backend::Precision::Bf16 { 4096.0 } else { 2048.0 };
        Some(row.flops as f64 / flops_per_mma * per_mma.get(&row.kernel)? / ISSUE_PER_S)
    };
    let waves = |row: &CensusRow| -> Option<Vec<f64>> {
        let per_sm = *resident.as_ref()?.get(&row.kernel)?;
        gemm_like(&row.kernel).then(|| row.blocks.iter().map(|&b| crate::backend::cuda::report::wave_efficiency(b, DRY_RUN_SMS, per_sm)).collect())
    };
    let ranks = if r.ranks > 1 { format!(", rank 0 of {} (sync_bn {})", r.ranks, r.sync_bn) } else { String::new() };
    let mut t = format!("SimSiam step census, {} batch {} (2 views), dry-run CUDA device, {}{ranks}:\n", r.model, r.batch, r.precision.as_str());
    t += &format!(
        "{:<40} {:>9} {:>12} {:>9} {:>10} {:>16} {:>9}\n",
        "kernel", "launches", "MB reached", "GFLOP", "floor ms", "waves min/mean", "issue ms"
    );
    let (mut conv_launches, mut conv_low) = (0, 0);
    for r in &census.rows {
        let w = waves(r);
        let shown = w.as_ref().map_or(String::new(), |w| {
            format!("{:.0}% / {:.0}%", 100.0 * w.iter().cloned().fold(1.0, f64::min), 100.0 * w.iter().sum::<f64>() / w.len() as f64)
        });
        if r.kernel.starts_with("conv2d")
            && let Some(w) = &w
        {
            conv_launches += w.len();
            conv_low += w.iter().filter(|&&e| e < 0.8).count();
        }
        let gflop = if r.flops > 0 { format!("{:.1}", r.flops as f64 / 1e9) } else { String::new() };
        let issue = issue_s(r).map_or(String::new(), |s| format!("{:.3}", 1e3 * s));
        t += &format!(
            "{:<40} {:>9} {:>12.1} {:>9} {:>10.3} {:>16} {:>9}\n",
            r.kernel, r.launches, r.bytes as f64 / 1e6, gflop, 1e3 * r.floor_s, shown, issue
        );
    }
    let flops: u64 = census.rows.iter().map(|r| r.flops).sum();
    let floor: f64 = census.rows.iter().map(|r| r.floor_s).sum();
    t += &format!("{:<40} {:>9} {:>12.1} {:>9.1} {:>10.3}\n", "total", n, bytes as f64 / 1e6, flops as f64 / 1e9, 1e3 * floor);
    let gemm_floor: f64 = census.rows.iter().filter(|r| gemm_like(&r.kernel)).map(|r| r.floor_s).sum();
    t += &format!(
        "roofline floor: {:.2} ms per step (each launch: max(bytes reached / 4.8 TB/s, FLOPs / {:.0} TFLOP/s)); GEMMs and convolutions {:.2} ms, the rest {:.2} ms\n",
        1e3 * floor,
        peak_flops(r.precision) / 1e12,
        1e3 * gemm_floor,
        1e3 * (floor - gemm_floor)
    );
    let issue: f64 = census.rows.iter().filter_map(|r| issue_s(r)).sum();
    if issue > 0.0 {
        t += &format!(
            "main-loop issue time: {:.2} ms per step for the GEMMs and convolutions (each launch: its MMAs x its main loop's instructions per MMA, at 4 instructions a cycle on {DRY_RUN_SMS} SMs at 1.98 GHz; loads, epilogues and stalls not counted)\n",
            1e3 * issue
        );
    }
    t += &match resident {
        Some(_) => format!(
            "wave efficiency (blocks / (waves x {DRY_RUN_SMS} SMs x blocks per SM)): {conv_low} of {conv_launches} convolution launches under 80%\n"
        ),
        None if r.waves => "wave efficiency: not shown (it needs cuobjdump for each kernel's registers: pip install nvidia-cuda-cuobjdump)\n".into(),
        None => String::new(),
    };
    if census.graph_kernels > 0 {
        // The input and step-value copies before a replay are driver copies, not kernels.
        let outside = n - census.graph_kernels;
        let what = if outside == 0 { "forward, backward and optimizer".to_string() } else { format!("+ {outside} kernels outside it") };
        t += &format!("host kernel launches per step: {} = 1 CUDA graph ({} kernels: {what})\n", 1 + outside, census.graph_kernels);
    } else {
        t += &format!("host kernel launches per step: {n} (no CUDA graph)\n");
    }
    if !census.collectives.is_empty() {
        t += &format!("{:<40} {:>9} {:>12}\n", "collective (each rank, per step)", "calls", "MB handed in");
        for c in &census.collectives {
            t += &format!("{:<40} {:>9} {:>12.3}\n", c.kind, c.calls, c.bytes as f64 / 1e6);
        }
    }
    Ok(t)
}

/// `bench kernels --static`: every CUDA kernel compiled for sm_90a, with its registers, spills,
/// shared memory, occupancy and instruction mix; only names containing `filter`.
pub fn static_kernel_table(filter: Option<&str>) -> Result<String> {
    use crate::backend::cuda::report;
    let tool = report::find_cuobjdump().ok_or_else(|| {
        crate::Error::Other(
            "cuobjdump not found (CUDA toolkit, or pip install nvidia-cuda-cuobjdump and put its bin/ on PATH, or set CUOBJDUMP)".into(),
        )
    })?;
    let ks: Vec<_> = report::static_report(&tool)?.into_iter().filter(|k| filter.is_none_or(|f| k.name.contains(f))).collect();
    Ok(report::format_report(&ks))
}

/// What `bench loader` times: the data, the loader's shape, and the augmentation.
pub struct LoaderBench {
    pub data: std::path::PathBuf,
    /// Loader threads; 0 = every core.
    pub workers: usize,
    pub batch: usize,
    pub batches: usize,
    pub image_size: usize,
    /// `data.cache`: "ram" or "none".
    pub cache: String,
    /// "simsiam" (the full recipe) or "crop" (crop + flip + normalise, torchvision's ImageNet
    /// training transform).
    pub recipe: String,
    pub views: usize,
}

/// Runs the loader benchmark; returns the line the command prints.
pub fn bench_loader(a: &LoaderBench) -> Result<String> {
    let sets = [format!("data.image_size={}", a.image_size), format!("data.cache=\"{}\"", a.cache)];
    let cfg = crate::config::Config::load(None, &sets)?;
    let mut aug = cfg.augment.clone();
    match a.recipe.as_str() {
        "simsiam" => {}
        "crop" => aug = crate::data::AugmentConfig { jitter_p: 0.0, gray_p: 0.0, blur_p: 0.0, solarize_p: 0.0, ..aug },
        other => return Err(crate::Error::Config(format!("--recipe {other:?}: expected \"simsiam\" or \"crop\""))),
    }
    if a.views == 0 {
        return Err(crate::Error::Config("--views must be at least 1".into()));
    }
    let ds = crate::eval::backbone::load(&a.data, crate::data::Split::Train, &cfg)?;
    let workers = if a.workers == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { a.workers };
    let loader = crate::data::Loader::new(ds, vec![aug; a.views], a.image_size, a.batch, 0, workers, 2 * workers)?;
    let t = crate::data::measure_throughput(&loader, a.batches)?;
    let peak = crate::data::peak_memory_bytes().map_or("unknown".into(), |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64));
    let (s, batch, cache, recipe) = (a.image_size, a.batch, &a.cache, &a.recipe);
    Ok(format!(
        "loader: {:.1} images/s ({:.0} augmented {s}x{s} views/s) over {} batches of {batch}, {workers} workers, cache {cache}, recipe {recipe}; peak memory {peak}",
        t.images_per_s, t.views_per_s, t.batches
    ))
}
