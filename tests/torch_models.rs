//! Whole models against PyTorch (tests/reference/{models,efficientnet,pit}.safetensors):
//! ResNet-18 (CIFAR stem, torchvision), EfficientNet-B0 (torchvision), ViT-tiny and PiT-Ti (timm)
//! forward + backward, every parameter gradient compared (large gradients through a strided
//! sample plus the full norm), and three SGD steps; the
//! same checks on the WGSL backend when a WebGPU adapter exists and on the CUDA backend when a
//! GPU does (skipped otherwise, by tests/common/skip.rs's rules).

mod common;

use common::*;
use ssl_engine::autograd::{Tape, Var};
use ssl_engine::backend::prelude::*;
use ssl_engine::models::{BackboneConfig, EfficientNetConfig, ResNetConfig, Stem};
use ssl_engine::nn::{Ctx, Kind, ParamStore};
use ssl_engine::optim::{Sgd, always, train_step};
use ssl_engine::{DType, ops};

const TOL: f64 = 1e-4;
const SAMPLE: usize = 4096;

fn nhwc_input<B: Backend>(b: &B, f: &Fixtures, name: &str) -> Var<B> {
    let (v, s) = nchw_to_nhwc(&f.f32(name), &f.shape(name));
    Var::constant(tensor(b, &v, &s))
}

fn sample(v: &[f32]) -> Vec<f64> {
    let stride = (v.len() / SAMPLE).max(1);
    v.iter().step_by(stride).map(|&x| x as f64).collect()
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

/// Compares one gradient (PyTorch layout) with the fixture's sample and norm. A gradient whose
/// reference norm is below `zero` is zero in exact arithmetic and float noise in both (a BN's
/// bias whose shift the next train-mode BN removes, as in every EfficientNet projection): then
/// ours must be noise of the same size too.
fn check_grad(f: &Fixtures, prefix: &str, name: &str, g: &[f32], zero: f64) -> f64 {
    let want = f.get(&format!("{prefix}.gradnorm.{name}")).1[0];
    if want < zero {
        assert!(norm(g) < 10.0 * zero, "{prefix} grad {name}: norm {} where the reference's is {want} (noise below {zero})", norm(g));
        return 0.0;
    }
    let e = assert_close(&format!("{prefix} grad {name}"), &sample(g), f.get(&format!("{prefix}.grad.{name}")).1, TOL);
    let en = (norm(g) - want).abs() / want.max(1e-30);
    assert!(en <= TOL, "{prefix} grad {name}: norm {} vs {want} (rel {en:.2e})", norm(g));
    e
}

fn model_matches<B: Backend>(b: &B, prefix: &str, cfg: BackboneConfig) {
    let file = match prefix {
        "efficientnet_b0" => "efficientnet.safetensors",
        "pit_ti" => "pit.safetensors",
        _ => "models.safetensors",
    };
    let f = Fixtures::load(file);
    let mut ps = ParamStore::new(b, DType::F32, 0);
    let model = cfg.build(&mut ps, "").unwrap();
    set_det_weights(&mut ps);
    let tape = Tape::new();
    let x = nhwc_input(b, &f, &format!("{prefix}.x"));
    let x = tape.leaf(x.value);
    let cx = Ctx::new(&tape, &ps, true);
    let y = model.forward(&cx, &x).unwrap();
    let e = assert_close(&format!("{prefix} output"), &to64(&y.value.to_f32().unwrap()), f.get(&format!("{prefix}.y")).1, TOL);
    eprintln!("{prefix} output: rel L2 {e:.2e}");
    // loss = sum(y * R)
    // The seed gradient of sum(y * R) is R itself.
    let r = tensor(b, &det_uniform(&format!("{prefix}.R"), y.value.numel(), 1.0, 0.0), y.shape());
    let loss = ops::sum_axis(&ops::mul(&y.value, &r).unwrap().reshape(&[y.value.numel()]).unwrap(), 0).unwrap();
    let el = assert_close(&format!("{prefix} loss"), &[loss.scalar().unwrap() as f64], f.get(&format!("{prefix}.loss")).1, TOL);
    eprintln!("{prefix} loss: rel {el:.2e}");

    let mut grads = tape.backward_with(&y, r).unwrap();
    let dx = grads.take(&x).unwrap();
    let (dx, _) = nhwc_to_nchw(&dx.to_f32().unwrap(), dx.shape());
    // float32 noise: 1e-7 of the largest parameter gradient.
    let ref_norms: Vec<f64> =
        ps.entries().iter().filter(|e| e.kind == Kind::Param).map(|e| f.get(&format!("{prefix}.gradnorm.{}", e.name)).1[0]).collect();
    let zero = 1e-7 * ref_norms.iter().fold(0.0, |a, &b| f64::max(a, b));
    let noise = ref_norms.iter().filter(|&&n| n < zero).count();
    let mut worst = check_grad(&f, prefix, "input", &dx, zero);
    let pg = cx.param_grads(&mut grads);
    let trainable = ps.entries().iter().filter(|e| e.kind == Kind::Param).count();
    assert_eq!(pg.len(), trainable, "every parameter must receive a gradient");
    for (id, g) in pg {
        let e = ps.entry(id);
        let (gv, _) = ssl_engine::nn::params_layout::from_internal(&g.to_f32().unwrap(), g.shape(), e.layout);
        worst = worst.max(check_grad(&f, prefix, &e.name, &gv, zero));
    }
    for e in ps.entries().iter().filter(|e| e.kind == Kind::Buffer) {
        let key = format!("{prefix}.buffer.{}", e.name);
        let err = assert_close(&key, &to64(&e.value.to_f32().unwrap()), f.get(&key).1, TOL);
        worst = worst.max(err);
    }
    eprintln!("{prefix} on {}: {trainable} parameter gradients ({noise} of them float noise), worst rel L2 {worst:.2e}", b.name());
}

fn resnet18() -> BackboneConfig {
    BackboneConfig::ResNet(ResNetConfig { depth: 18, stem: Stem::Cifar, width: 64, zero_init_residual: false, num_classes: None })
}

#[test]
fn resnet18_cifar_forward_backward_matches_torchvision() {
    model_matches(&cpu(2), "resnet18", resnet18());
}

/// Stochastic depth off on both sides (its masks are random); every parameter's gradient, the
/// input's and the BN running statistics compared.
fn efficientnet_b0() -> BackboneConfig {
    BackboneConfig::EfficientNet(EfficientNetConfig { stochastic_depth: 0.0, ..EfficientNetConfig::default() })
}

#[test]
fn efficientnet_b0_forward_backward_matches_torchvision() {
    model_matches(&cpu(2), "efficientnet_b0", efficientnet_b0());
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_efficientnet_b0_forward_backward_matches_torchvision() {
    let Some(b) = wgpu_or_skip() else { return };
    model_matches(&b, "efficientnet_b0", efficientnet_b0());
}

/// PiT-Ti at 32x32 (patch 4, stride 2: a 15x15 grid pooled to 8x8 and 4x4).
fn pit_ti() -> BackboneConfig {
    BackboneConfig::preset("pit-ti", 32).unwrap()
}

#[test]
fn pit_ti_forward_backward_matches_timm() {
    model_matches(&cpu(2), "pit_ti", pit_ti());
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_pit_ti_forward_backward_matches_timm() {
    let Some(b) = wgpu_or_skip() else { return };
    model_matches(&b, "pit_ti", pit_ti());
}

#[test]
fn vit_tiny_forward_backward_matches_timm() {
    model_matches(&cpu(2), "vit_tiny", BackboneConfig::preset("vit-tiny", 32).unwrap());
}

/// The trace depends on the GEMM's summation order, which the gemm crate picks per CPU: step 3
/// stayed under 1e-5 from the float64 reference on AVX2 (Zen 3) and lands at 1.01e-5 on AVX-512
/// (Xeon).
/// PyTorch's own float32 trace lies 8e-5 from it, so 3e-5 is still well inside PyTorch's spread.
#[test]
fn resnet18_three_sgd_steps_match_pytorch() {
    three_sgd_steps(&cpu(2), 3e-5);
}

/// The fixture takes 16 images at lr 0.002, where the trace is well conditioned (at lr 0.05 on
/// 4 images one ReLU input within f32 rounding of zero flipped and moved step 1 by ~1e-4).
/// The WGSL kernels accumulate in f32 as PyTorch does, and PyTorch's own float32 trace lies
/// 8e-5 from the float64 reference at step 3; the CPU backend (f64 statistics) stays within 3e-5.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_resnet18_three_sgd_steps_match_pytorch() {
    let Some(b) = wgpu_or_skip() else { return };
    three_sgd_steps(&b, 1e-4);
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_resnet18_cifar_forward_backward_matches_torchvision() {
    let Some(b) = wgpu_or_skip() else { return };
    model_matches(&b.with_poison(), "resnet18", resnet18());
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_vit_tiny_forward_backward_matches_timm() {
    let Some(b) = wgpu_or_skip() else { return };
    model_matches(&b.with_poison(), "vit_tiny", BackboneConfig::preset("vit-tiny", 32).unwrap());
}

/// On a GPU (tests/common/skip.rs's rules: skipped without one, a failure with
/// SSL_ENGINE_REQUIRE_GPU=1). Exact FP32 kernels, so the CPU's tolerances hold.
#[test]
fn cuda_resnet18_cifar_forward_backward_matches_torchvision() {
    let Some(b) = cuda_or_skip() else { return };
    model_matches(&b, "resnet18", resnet18());
}

#[test]
fn cuda_vit_tiny_forward_backward_matches_timm() {
    let Some(b) = cuda_or_skip() else { return };
    model_matches(&b, "vit_tiny", BackboneConfig::preset("vit-tiny", 32).unwrap());
}

/// f32 accumulation as PyTorch's own float32 trace, hence the WGSL backend's 1e-4.
#[test]
fn cuda_resnet18_three_sgd_steps_match_pytorch() {
    let Some(b) = cuda_or_skip() else { return };
    three_sgd_steps(&b, 1e-4);
}

fn three_sgd_steps<B: Backend>(b: &B, tol: f64) {
    let f = Fixtures::load("models.safetensors");
    let cfg = ResNetConfig { depth: 18, stem: Stem::Cifar, width: 64, zero_init_residual: false, num_classes: Some(10) };
    let mut ps = ParamStore::new(b, DType::F32, 0);
    let model = BackboneConfig::ResNet(cfg).build(&mut ps, "").unwrap();
    set_det_weights(&mut ps);
    let x = nhwc_input(b, &f, "sgd.x");
    let labels = tensor(b, &f.f32("sgd.labels"), &[16]);
    let mut opt = Sgd::new(0.9);
    let want = f.get("sgd.losses").1.to_vec();
    for (step, &w) in want.iter().enumerate() {
        let forward = |cx: &Ctx<B>| Ok((cx.tape.cross_entropy(&model.forward(cx, &x)?, &labels)?, ()));
        let got = train_step(&ps, &mut opt, &|_| (0.002, 5e-4), false, forward, always).unwrap().loss;
        let e = (got - w).abs() / w.abs();
        eprintln!("sgd step {step} on {}: loss {got:.7} vs PyTorch {w:.7} (rel {e:.2e})", b.name());
        assert!(e <= tol, "step {step}: loss {got} vs {w}");
    }
}
