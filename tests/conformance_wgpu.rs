//! The conformance suite on the WGSL backend (f32, poisoned allocations) against the CPU
//! backend in f64. Skips when no WebGPU adapter exists (tests/common/skip.rs: a failure in CI).
#![cfg(feature = "wgpu")]

mod common;

use ssl_engine::DType;

#[test]
fn wgpu_f32_conforms_to_f64_reference() {
    let Some(dev) = common::wgpu_or_skip() else { return };
    let dev = dev.with_poison();
    for seed in [7, 8] {
        let r = common::conformance::run_suite(&dev, DType::F32, 1e-5, seed);
        for l in &r.lines {
            eprintln!("  {l}");
        }
        eprintln!("wgpu f32, seed {seed}: {} checks, worst relative L2 {:.2e}", r.lines.len(), r.worst);
    }
}

/// gather_rows and its scatter back equal the CPU bit for bit (the scatter sums a row's repeats
/// in the CPU's order), on the suite's odd shapes and MAE's 49 of 197 tokens; a bad index gives
/// NaN rows.
#[test]
fn wgpu_gather_rows_equals_cpu_bitwise() {
    let Some(dev) = common::wgpu_or_skip() else { return };
    let dev = dev.with_poison();
    let worst = common::conformance::gather_rows_bitwise(&dev, 17);
    eprintln!("wgpu gather_rows: max |wgpu - cpu| {worst:.1e}");
    common::conformance::gather_rows_bad_index_is_nan(&dev);
}

use ssl_engine::backend::prelude::*;
use ssl_engine::backend::cpu::CpuBackend;
use ssl_engine::rng::Rng;
use ssl_engine::{Tensor, ops};

fn rand(n: usize, rng: &mut Rng) -> Vec<f64> {
    (0..n).map(|_| rng.uniform_range(-1.0, 1.0) as f32 as f64).collect()
}

/// Builds the outputs of a check from its inputs.
type Build<'a, B> = dyn Fn(&[Tensor<B>]) -> Vec<Tensor<B>> + 'a;

/// Runs `f` on the CPU in f64 and on the device in f32 with the same inputs; returns the
/// worst relative L2 error over the outputs.
fn compare<B: Backend>(dev: &B, what: &str, shapes: &[&[usize]], seed: u64, tol: f64, f: &Build<'_, CpuBackend>, g: &Build<'_, B>) {
    let cpu = CpuBackend::new(2).unwrap();
    let mut rng = Rng::new(seed);
    let data: Vec<Vec<f64>> = shapes.iter().map(|s| rand(s.iter().product(), &mut rng)).collect();
    let want = f(&data.iter().zip(shapes).map(|(d, s)| Tensor::from_f64(&cpu, d, s, DType::F64).unwrap()).collect::<Vec<_>>());
    let got = g(&data.iter().zip(shapes).map(|(d, s)| Tensor::from_f64(dev, d, s, DType::F32).unwrap()).collect::<Vec<_>>());
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        let e = common::rel_l2(&g.to_f64().unwrap(), &w.to_f64().unwrap());
        eprintln!("{what} output {i}: rel L2 {e:.2e}");
        assert!(e <= tol, "{what} output {i}: relative L2 {e:.3e} > {tol:.0e}");
    }
}

/// Shapes larger than the suite's: several GEMM tiles, split reductions, ResNet-18 and ViT sizes.
#[test]
fn wgpu_large_shapes_match_reference() {
    let Some(dev) = common::wgpu_or_skip() else { return };
    let dev = dev.with_poison();
    macro_rules! both {
        ($what:expr, $shapes:expr, |$t:ident| $body:expr) => {
            compare(&dev, $what, $shapes, 11, 1e-5, &|$t: &[Tensor<CpuBackend>]| $body, &|$t| $body)
        };
    }
    both!("matmul 2x130x70 . 70x97", &[&[2, 130, 70], &[2, 70, 97]], |t| vec![ops::matmul(&t[0], &t[1], false, false).unwrap()]);
    // ResNet-18's convolutions from its stem-sized stages to its 512-channel ones
    let convs = [(16, 16, 32, 3, 1), (16, 32, 24, 3, 2), (16, 32, 40, 1, 2), (8, 64, 64, 3, 1), (4, 512, 512, 3, 1), (8, 256, 512, 3, 2)];
    for (h, ci, co, k, s) in convs {
        let what = format!("conv {h}x{h} {ci}->{co} k{k} s{s}");
        let xs = [4, h, h, ci];
        let ws = [co, k, k, ci];
        let d = ops::conv2d_dims(&xs, &ws, [s, s], [k / 2, k / 2], 1).unwrap();
        let dys = [4, d.oh, d.ow, co];
        both!(&what, &[&xs, &ws, &dys], |t| vec![
            ops::conv2d(&t[0], &t[1], &d).unwrap(),
            ops::conv2d_data_bwd(&t[2], &t[1], &d).unwrap(),
            ops::conv2d_weight_bwd(&t[0], &t[2], &d).unwrap(),
        ]);
    }
    for (rows, c) in [(64, 512), (4096, 64)] {
        both!(&format!("batchnorm [{rows}, {c}]"), &[&[rows, c], &[rows, c], &[c], &[c]], |t| {
            let (y, saved) = ops::batchnorm_train(&t[0], Some(&t[2]), Some(&t[3]), None, 1e-5).unwrap();
            let (dx, dgb) = ops::batchnorm_bwd(&t[0], &t[1], Some(&t[2]), &saved, true).unwrap();
            let (dg, db) = dgb.unwrap();
            vec![y, saved.mean, saved.invstd, dx, dg, db]
        });
    }
    both!("sum_axis [1, 5000, 3] and mean", &[&[1, 5000, 3]], |t| vec![ops::sum_axis(&t[0], 1).unwrap(), ops::mean_all(&t[0]).unwrap()]);
    both!("attention [2, 3, 65, 64]", &[&[2, 3, 65, 64], &[2, 3, 65, 64], &[2, 3, 65, 64], &[2, 3, 65, 64]], |t| {
        let (o, lse) = ops::attention(&t[0], &t[1], &t[2], 0.125).unwrap();
        let (dq, dk, dv) = ops::attention_bwd(&t[0], &t[1], &t[2], &o, &lse, &t[3], 0.125).unwrap();
        vec![o, lse, dq, dk, dv]
    });
    both!("maxpool 3x3 s2 [4, 16, 16, 8]", &[&[4, 16, 16, 8], &[4, 8, 8, 8]], |t| {
        let d = ops::pool_dims(t[0].shape(), 3, 2, 1).unwrap();
        vec![ops::maxpool2d(&t[0], &d).unwrap(), ops::maxpool2d_bwd(&t[0], &t[1], &d).unwrap()]
    });
}

/// Losses of `steps` SGD steps of a small ResNet (CIFAR stem, width 16) on 16x16 images, and
/// the device buffers created after each step.
fn train_trace<B: Backend>(b: &B, steps: usize, created: impl Fn() -> u64) -> (Vec<f64>, Vec<u64>) {
    use ssl_engine::autograd::Var;
    use ssl_engine::models::{BackboneConfig, ResNetConfig, Stem};
    use ssl_engine::nn::{Ctx, ParamStore};
    use ssl_engine::optim::{Sgd, always, train_step};
    let cfg = ResNetConfig { depth: 18, stem: Stem::Cifar, width: 16, zero_init_residual: false, num_classes: Some(10) };
    let mut ps = ParamStore::new(b, DType::F32, 0);
    let model = BackboneConfig::ResNet(cfg).build(&mut ps, "").unwrap();
    common::set_det_weights(&mut ps);
    let n = 8;
    let x = Tensor::from_f32(b, &common::det_uniform("train.x", n * 16 * 16 * 3, 1.0, 0.0), &[n, 16, 16, 3], DType::F32).unwrap();
    let labels: Vec<f32> = (0..n).map(|i| (i % 10) as f32).collect();
    let labels = Tensor::from_f32(b, &labels, &[n], DType::F32).unwrap();
    let mut opt = Sgd::new(0.9);
    let (mut losses, mut made) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let forward = |cx: &Ctx<B>| Ok((cx.tape.cross_entropy(&model.forward(cx, &Var::constant(x.clone()))?, &labels)?, ()));
        losses.push(train_step(&ps, &mut opt, &|_| (0.02, 5e-4), false, forward, always).unwrap().loss);
        made.push(created());
    }
    (losses, made)
}

/// Five SGD steps on the WGSL backend follow the CPU backend's loss trace to 1e-4, from the
/// second step on a step creates no device buffer (the pool serves every allocation), and a
/// rerun gives bit-identical losses (every reduction has a fixed order).
#[test]
fn wgpu_sgd_training_matches_cpu() {
    let Some(dev) = common::wgpu_or_skip() else { return };
    let steps = 5;
    let (want, _) = train_trace(&CpuBackend::new(2).unwrap(), steps, || 0);
    let (d0, s0) = dev.counters();
    let (got, made) = train_trace(&dev, steps, || dev.buffers_created());
    let (d1, s1) = dev.counters();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let e = (g - w).abs() / w.abs();
        eprintln!("step {i}: loss {g:.7} (wgpu) vs {w:.7} (cpu), rel {e:.2e}, device buffers created so far {}", made[i]);
        assert!(e <= 1e-4, "step {i}: wgpu loss {g} vs cpu {w} (rel {e:.2e})");
    }
    eprintln!("{} dispatches in {} submissions over {steps} steps", d1 - d0, s1 - s0);
    assert!(made[1..].windows(2).all(|w| w[0] == w[1]), "steady-state steps created device buffers: {made:?}");
    let (again, _) = train_trace(&dev, 2, || 0);
    assert!(again.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "rerun differs: {again:?} vs {got:?}");
}
