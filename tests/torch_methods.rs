//! Five training steps of every method against PyTorch (tests/reference/methods.safetensors,
//! written by `python tests/reference/make_fixtures.py methods` with solo-learn's loss functions
//! and update rules): a 64-wide CIFAR ResNet-18 with small heads, deterministic weights by name,
//! momentum networks starting as copies, fixed 16x16 views, SGD (lr 0.05, momentum 0.9, weight
//! decay 1e-4), the method's hooks as the training loop calls them (EMA, queues, DINO's centre).
//! The five losses must agree to a relative 1e-5 on the CPU backend, run in f64 against
//! PyTorch's float64 trace: these steps are chaotic (PyTorch's own float32 trace leaves its
//! float64 one by up to 100% within five steps: SimSiam's loss is near 0 and BN sees 8 noise
//! images), so only f64 on both sides can show agreement at 1e-5.

mod common;

use std::collections::HashMap;

use common::*;
use ssl_engine::autograd::Var;
use ssl_engine::config::Config;
use ssl_engine::nn::{Kind, ParamStore};
use ssl_engine::optim::{Sgd, train_step};
use ssl_engine::ssl::StepInfo;
use ssl_engine::{DType, Tensor};

const STEPS: usize = 5;
const N: usize = 8;
const TOL: f64 = 1e-5;

/// The fixture's small heads, as `--set` overrides.
fn settings(method: &str) -> Vec<&'static str> {
    match method {
        "simsiam" => vec!["simsiam.proj_layers=2", "simsiam.proj_hidden=32", "simsiam.proj_dim=32", "simsiam.pred_hidden=8"],
        "simclr" => vec!["simclr.proj_hidden=32", "simclr.proj_dim=16", "simclr.temperature=0.2"],
        "supcon" => vec!["supcon.proj_hidden=32", "supcon.proj_dim=16", "supcon.temperature=0.2"],
        "byol" => vec!["byol.proj_hidden=32", "byol.proj_dim=16", "byol.pred_hidden=32", "byol.base_tau=0.99", "byol.final_tau=1.0"],
        "swav" => vec![
            "swav.proj_hidden=32",
            "swav.proj_dim=16",
            "swav.num_prototypes=20",
            // Exact in f32, as the fixture's: Sinkhorn's exp(p / epsilon) amplifies any rounding.
            "swav.temperature=0.125",
            "swav.sk_epsilon=0.0625",
            "swav.queue_size=16",
            "swav.epoch_queue_starts=0",
            "swav.freeze_prototypes_epochs=0",
        ],
        "mocov2plus" => vec![
            "mocov2plus.proj_hidden=32",
            "mocov2plus.proj_dim=16",
            "mocov2plus.queue_size=16",
            "mocov2plus.base_tau=0.99",
            "mocov2plus.final_tau=0.999",
        ],
        "mocov3" => vec!["mocov3.proj_hidden=32", "mocov3.proj_dim=16", "mocov3.pred_hidden=32", "mocov3.base_tau=0.99", "mocov3.final_tau=1.0"],
        "dino" => vec![
            "dino.proj_hidden=32",
            "dino.proj_dim=16",
            "dino.num_prototypes=24",
            "dino.teacher_temperature=0.07",
            "dino.warmup_teacher_temperature_epochs=0",
            "dino.base_tau=0.99",
            "dino.final_tau=1.0",
            "dino.freeze_last_layer=0",
            // DINO_CLIP in make_fixtures.py: some backbone gradients are above it, some below.
            "dino.clip_grad=0.05",
        ],
        "barlow" => vec!["barlow.proj_hidden=32", "barlow.proj_dim=32"],
        "vicreg" => vec!["vicreg.proj_hidden=32", "vicreg.proj_dim=32"],
        "nnclr" => vec!["nnclr.proj_hidden=32", "nnclr.proj_dim=16", "nnclr.pred_hidden=32", "nnclr.queue_size=16", "nnclr.temperature=0.2"],
        m => panic!("no settings for {m}"),
    }
}

/// View `v` (1 or 2) of step `s`: [N, 16, 16, 3], from the fixture script's det_uniform.
fn view(b: &ssl_engine::backend::cpu::CpuBackend, v: usize, s: usize) -> Var<ssl_engine::backend::cpu::CpuBackend> {
    let per = N * 3 * 16 * 16;
    let all = det_uniform(&format!("steps.x{v}"), STEPS * per, 1.0, 0.0);
    let (x, shape) = nchw_to_nhwc(&all[s * per..(s + 1) * per], &[N, 3, 16, 16]);
    Var::constant(Tensor::from_f32(b, &x, &shape, DType::F64).unwrap())
}

fn five_steps(f: &Fixtures, method: &str) -> Vec<f64> {
    let b = cpu(2);
    let mut sets = vec![format!("method={method}"), "model=\"resnet18-cifar\"".into(), "data.image_size=16".into()];
    sets.extend(settings(method).iter().map(|s| s.to_string()));
    let cfg = Config::load(None, &sets).unwrap();
    let mut ps = ParamStore::new(&b, DType::F64, 0);
    let mut m = ssl_engine::ssl::build(&cfg.method_recipe(), &mut ps, &cfg.backbone().unwrap()).unwrap();
    set_det_weights(&mut ps);
    // Momentum networks start as copies of the online ones (parameters only).
    for id in ps.ids().collect::<Vec<_>>() {
        let e = ps.entry(id);
        if let (Kind::Param, Some(twin)) = (e.kind, e.name.strip_prefix("momentum_")) {
            let twin = ps.find(twin).unwrap();
            let (v, s) = ps.to_torch(twin).unwrap();
            ps.set_from_torch(id, &v, &s).unwrap();
        }
    }
    if method == "mocov2plus" {
        let mut saved = HashMap::new();
        for v in 1..=2 {
            // The fixture's starting queues: unit rows, normalised in float32 there.
            let rows = f.f32(&format!("mocov2plus.queue{v}"));
            saved.insert(format!("queue{v}"), Tensor::from_f32(&b, &rows, &[16, 16], DType::F64).unwrap());
            saved.insert(format!("queue{v}_ptr"), Tensor::from_f32(&b, &[0.0], &[1], DType::F32).unwrap());
        }
        m.load_state(&saved).unwrap();
    }
    if method == "nnclr" {
        // The fixture's starting support queue: unit rows, normalised in float32 there.
        let rows = f.f32("nnclr.queue");
        let saved = HashMap::from([
            ("queue".to_string(), Tensor::from_f32(&b, &rows, &[16, 16], DType::F64).unwrap()),
            ("queue_ptr".to_string(), Tensor::from_f32(&b, &[0.0], &[1], DType::F32).unwrap()),
        ]);
        m.load_state(&saved).unwrap();
    }
    let mut opt = Sgd::new(0.9);
    let mut losses = Vec::new();
    for s in 0..STEPS {
        let views = [view(&b, 1, s), view(&b, 2, s)];
        let labels: Vec<f32> = (0..N).map(|i| ((3 * i + s) % 4) as f32).collect();
        let labels = Tensor::from_f32(&b, &labels, &[N], DType::F64).unwrap();
        let info = StepInfo { step: s, total_steps: STEPS, epoch: 0, steps_per_epoch: STEPS };
        m.begin_step(&info).unwrap();
        let stepped = train_step(
            &ps,
            &mut opt,
            &|_| (0.05, 1e-4),
            false,
            |cx| Ok((m.forward(cx, &views, Some(&labels))?.loss, ())),
            |_, grads| m.before_update(&info, grads).map(|()| true),
        )
        .unwrap();
        m.after_step(&mut ps, &info).unwrap();
        losses.push(stepped.loss);
    }
    losses
}

/// Methods whose five steps against PyTorch are checked in their own test file, not here: MAE
/// (a ViT with masking, AdamW: `five_mae_steps_match_pytorch` in tests/mae.rs against
/// models_mae.py's MaskedAutoencoderViT, fixture tests/reference/mae.safetensors `steps.*`) and
/// I-JEPA (tests/ijepa_steps.rs against ijepa's VisionTransformer and predictor).
const ELSEWHERE: &[&str] = &["mae", "ijepa"];

#[test]
fn five_steps_of_every_method_match_pytorch() {
    let f = Fixtures::load("methods.safetensors");
    let mut worst = 0.0f64;
    let mut failures = Vec::new();
    // Every method but those of ELSEWHERE (MAE's and I-JEPA's five steps are in their own files) is compared here.
    for method in ssl_engine::ssl::methods().iter().map(|m| m.name).filter(|m| !ELSEWHERE.contains(m)) {
        let got = five_steps(&f, method);
        let want = f.get(&format!("{method}.losses")).1.to_vec();
        // Relative, or absolute for losses below 1 (SimSiam's negative cosine is near 0).
        let e = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0.0, f64::max);
        eprintln!("{method}: ours {got:.6?}\n{:>width$}  torch {want:.6?} (worst relative {e:.1e})", "", width = method.len());
        worst = worst.max(e);
        if e > TOL {
            failures.push(format!("{method}: five-step losses differ from PyTorch's by {e:.2e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    eprintln!("worst relative loss error over all methods and steps: {worst:.1e}");
}
