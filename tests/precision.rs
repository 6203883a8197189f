//! `precision = "bf16"`: the rounding op against the `half` crate, 20 SimSiam steps of a
//! ResNet-18 against the FP32 trace, FP32 master weights in the checkpoint and the export. The
//! conformance of each op in bf16 is in tests/conformance.rs (CPU) and tests/cuda_emulated.rs.

mod common;

use common::tiny_run::{run, run_changed, tiny};
use common::{repo, tmp_dir};
use ssl_engine::backend::{Precision, Unary};
use ssl_engine::{DType, Tensor, ops};

/// Values where rounding to bf16 is easy to get wrong: ties either way, a tie broken only by
/// the lowest f32 bit, bf16's largest finite value and past it, subnormals, zeros, inf, NaN.
fn hard_values() -> Vec<f32> {
    let one = 1.0f32.to_bits();
    let mut v: Vec<f32> = vec![
        1.0,
        f32::from_bits(one | 0x8000),     // tie, even below: stays 1
        f32::from_bits(one | 0x18000),    // tie, odd below: rounds up
        f32::from_bits(one | 0x8001),     // just past the tie by the lowest bit: up
        f32::from_bits(one | 0x7fff),     // just short of the tie: down
        f32::from_bits(0x7f7f_0000),      // bf16's largest finite
        f32::from_bits(0x7f7f_8000),      // tie at the top: rounds to inf
        f32::MAX,
        f32::MIN_POSITIVE,
        f32::from_bits(0x0000_8000),      // subnormal tie
        f32::from_bits(0x0001_8001),      // subnormal past the tie
        1e-40,
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.1,
        -3.0e-5,
        12345.678,
    ];
    v.extend(v.clone().iter().map(|x| -x));
    v
}

#[test]
fn round_bf16_agrees_with_the_half_crate_in_f32_and_f64() {
    let b = common::cpu(2);
    let xs = hard_values();
    let want: Vec<f32> = xs.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
    let same = |got: &[f32], what: &str| {
        for ((g, w), x) in got.iter().zip(&want).zip(&xs) {
            assert!(g.to_bits() == w.to_bits(), "{what}: round_bf16({x:e} = {:#010x}) = {g:e}, half says {w:e}", x.to_bits());
        }
    };
    for dtype in [DType::F32, DType::F64] {
        let x = Tensor::from_f32(&b, &xs, &[xs.len()], dtype).unwrap();
        same(&ops::unary(Unary::RoundBf16, &x).unwrap().to_f32().unwrap(), &format!("forward {dtype:?}"));
        // The gradient of a bf16 tensor is the incoming gradient, rounded.
        let ones = Tensor::from_f32(&b, &vec![1.0; xs.len()], &[xs.len()], dtype).unwrap();
        same(&ops::unary_bwd(Unary::RoundBf16, &ones, &x).unwrap().to_f32().unwrap(), &format!("backward {dtype:?}"));
    }
    let nan = Tensor::from_f32(&b, &[f32::NAN, f32::from_bits(0x7f80_0001)], &[2], DType::F32).unwrap();
    assert!(ops::unary(Unary::RoundBf16, &nan).unwrap().to_f32().unwrap().iter().all(|v| v.is_nan()), "NaN must stay NaN");
}

/// 20 SimSiam steps of a CIFAR ResNet-18 (width 16, 16-pixel crops, batch 16) in bf16 and in
/// FP32 from the same warm start (60 FP32 steps, where the loss has left SimSiam's initial ~0
/// and a relative band means something): bf16's loss stays within 2% of FP32's at every step,
/// yet is not identical (the rounding points ran).
#[test]
fn bf16_simsiam_resnet18_tracks_the_fp32_loss_trace_for_20_steps() {
    let sets = |precision: &str, epochs: usize| {
        vec![
            "model_opts.width=16".to_string(),
            "data.limit_per_class=32".into(),
            format!("epochs={epochs}"),
            "monitor.knn_every=0".into(),
            "optim.base_lr=0.3".into(),
            "optim.scale_lr_with_batch=false".into(),
            "optim.warmup_epochs=0".into(),
            "simsiam.proj_hidden=256".into(),
            "simsiam.proj_dim=256".into(),
            "simsiam.pred_hidden=64".into(),
            format!("precision={precision:?}"),
        ]
    };
    let cfg_of = |out: &std::path::Path, s: Vec<String>| tiny(out, &s.iter().map(String::as_str).collect::<Vec<_>>());
    let warm = tmp_dir("bf16-warm");
    let warm_losses = run(&cfg_of(&warm, sets("fp32", 3)), None).unwrap().losses;
    let trace = |precision: &str| {
        let out = tmp_dir(&format!("bf16-trace-{precision}"));
        std::fs::copy(warm.join("last.safetensors"), out.join("warm.safetensors")).unwrap();
        let cfg = cfg_of(&out, sets(precision, 4));
        assert_eq!(cfg.precision, Precision::parse(precision).unwrap());
        // Continued in another folder for more epochs: a change the resume is told about.
        let summary = run_changed(&cfg, &out.join("warm.safetensors")).unwrap();
        (summary.losses.iter().map(|&(_, l)| l).collect::<Vec<f64>>(), out)
    };
    let (fp32, _) = trace("fp32");
    let (bf16, out) = trace("bf16");
    assert_eq!((fp32.len(), bf16.len()), (20, 20));
    let worst = fp32.iter().zip(&bf16).map(|(a, b)| ((a - b) / a).abs()).fold(0.0, f64::max);
    println!(
        "warm-up (fp32) losses {:.3?}\nfp32 losses {:.4?}\nbf16 losses {:.4?}\nlargest step difference {:.3}% of the fp32 loss",
        warm_losses.iter().map(|l| l.1).collect::<Vec<_>>(),
        fp32,
        bf16,
        worst * 100.0
    );
    assert!(worst <= 0.02, "bf16 left the fp32 trace by {:.2}%", worst * 100.0);
    assert!(worst > 0.0, "bf16 trace identical to fp32: the rounding points did not run");

    // The checkpoint holds FP32 master weights (not bf16 values in f32 clothing), and the
    // export reads it as before.
    let ckpt = out.join("last.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut low_bits = 0usize;
    for (name, t) in st.tensors() {
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        low_bits += t.data().chunks_exact(4).filter(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0xffff != 0).count();
    }
    assert!(low_bits > 1000, "only {low_bits} values use bits below bf16's: the masters were not kept in FP32");
    let exported = out.join("backbone.safetensors");
    let n = ssl_engine::eval::export(&common::cpu(2), &ckpt, &exported).unwrap().tensors;
    assert!(n > 60, "{n} tensors exported");
}

/// The WebGPU backend computes in FP32 only: asking it for bf16 is one clear error.
#[test]
fn wgpu_refuses_bf16_naming_the_precision() {
    if !cfg!(feature = "wgpu") {
        return;
    }
    let out = tmp_dir("wgpu-bf16");
    let (c, e) = common::cli::run_tiny(&out, &repo("data/cifar10-demo/train"), &["backend=\"wgpu\"", "precision=\"bf16\""]);
    common::cli::one_line_naming(c, &e, "bf16");
    let (c, e) = common::cli::run_tiny(&out, &repo("data/cifar10-demo/train"), &["precision=\"half\""]);
    common::cli::one_line_naming(c, &e, "precision");
}

/// A config asking for bf16 with a backend built for FP32 (library use) is refused, naming both.
#[test]
fn train_refuses_a_backend_of_another_precision() {
    let cfg = tiny(&tmp_dir("bf16-mismatch"), &["precision=\"bf16\""]);
    let e = ssl_engine::train::train(&common::cpu(2), &cfg, None, &std::sync::atomic::AtomicBool::new(false), false).unwrap_err();
    assert!(e.to_string().contains("bf16") && e.to_string().contains("fp32"), "{e}");
}
