//! I-JEPA against facebookresearch/ijepa (tests/reference/ijepa.safetensors, written by
//! `tests/reference/make_ijepa_fixtures.py` with ijepa's own MaskCollator and loss): the
//! multi-block masks given the same draws, the target (layer norm, target blocks) and both losses
//! with their gradient in f64; then a CI-sized run whose loss falls, whose target encoder follows
//! the context encoder, whose resume is bit-exact mid-epoch, and whose checkpoint evaluates.
//! Five training steps against ijepa's modules are in tests/ijepa_steps.rs.

mod common;

use std::collections::VecDeque;

use common::tiny_run::{bits, run, run_changed, tiny};
use common::*;
use ssl_engine::autograd::{Tape, Var};
use ssl_engine::ssl::ijepa::{BlockDraws, IjepaConfig, l2, multiblock_masks, smooth_l1};
use ssl_engine::{DType, Tensor};

/// The draws ijepa's collator made, handed back in the same order.
struct Replay {
    rands: VecDeque<f64>,
    ints: VecDeque<f64>,
}

impl BlockDraws for Replay {
    fn rand(&mut self) -> f64 {
        self.rands.pop_front().expect("our sampler drew more sizes than ijepa's")
    }
    fn randint(&mut self, high: usize) -> usize {
        let v = self.ints.pop_front().expect("our sampler drew more places than ijepa's") as usize;
        assert!(v < high, "ijepa drew {v} where we draw below {high}: the ranges differ");
        v
    }
}

fn ints(v: &[f64]) -> Vec<usize> {
    v.iter().map(|&x| x as usize).collect()
}

#[test]
fn multiblock_masks_match_ijepa_s_collator_given_its_draws() {
    let f = Fixtures::load("ijepa.safetensors");
    // (case, grid, batch, target scale, context scale, min_keep, allow_overlap, batches): as in
    // make_ijepa_fixtures.py.
    let cases = [
        ("cifar", 8, 4, (0.15, 0.2), (0.85, 1.0), 4, false, 3),
        ("in1k", 14, 3, (0.15, 0.2), (0.85, 1.0), 10, false, 2),
        ("tight", 8, 4, (0.3, 0.4), (0.3, 0.4), 6, false, 3),
        ("overlap", 8, 2, (0.15, 0.2), (0.85, 1.0), 4, true, 2),
    ];
    let mut checked = 0;
    for (name, grid, n, target_scale, context_scale, min_keep, allow_overlap, batches) in cases {
        let spec = IjepaConfig { context_scale, target_scale, target_aspect_ratio: (0.75, 1.5), targets: 4, min_keep, allow_overlap, ..Default::default() };
        for b in 0..batches {
            let key = format!("collator.{name}.{b}");
            let mut draws = Replay { rands: f.get(&format!("{key}.rands")).1.iter().copied().collect(), ints: f.get(&format!("{key}.ints")).1.iter().copied().collect() };
            let m = multiblock_masks(n, grid, &spec, &mut draws).unwrap();
            assert!(draws.rands.is_empty() && draws.ints.is_empty(), "{key}: ijepa drew {} sizes and {} places more than we did", draws.rands.len(), draws.ints.len());
            let (ctx_shape, ctx) = f.get(&format!("{key}.context"));
            assert_eq!((m.context_len, m.context.clone()), (ctx_shape[1], ints(ctx)), "{key}: context masks");
            let (tshape, targets) = f.get(&format!("{key}.targets"));
            assert_eq!(m.target_len, tshape[2], "{key}: target length");
            let flat: Vec<usize> = m.targets.iter().flatten().copied().collect();
            assert_eq!(flat, ints(targets), "{key}: target masks");
            eprintln!("{key}: context {} patches, 4 targets of {} patches, {} place draws: equal", m.context_len, m.target_len, f.get(&format!("{key}.ints")).1.len());
            checked += 1;
        }
    }
    assert_eq!(checked, 10);
}

#[test]
fn a_block_that_can_never_be_kept_is_an_error_not_an_endless_loop() {
    let spec = IjepaConfig { context_scale: (0.85, 1.0), target_scale: (0.15, 0.2), target_aspect_ratio: (0.75, 1.5), targets: 4, min_keep: 10, allow_overlap: false, ..Default::default() };
    let mut draws = ssl_engine::ssl::ijepa::SeededDraws::new(0, 0);
    let e = multiblock_masks(2, 4, &spec, &mut draws).unwrap_err().to_string();
    assert!(e.contains("min_keep") && e.contains("4x4"), "{e}");
}

/// The target (F.layer_norm of the target encoder's tokens at each target block, stacked
/// target-major by apply_masks) and both losses with their gradient, against PyTorch in f64.
#[test]
fn the_target_and_both_losses_match_ijepa_s_train_step() {
    let (b, f) = (cpu(2), Fixtures::load("ijepa.safetensors"));
    let t64 = |name: &str| Tensor::from_f64(&b, f.get(name).1, f.get(name).0, DType::F64).unwrap();
    let n = 2;
    for key in ["smooth_l1", "l2"] {
        let tape = Tape::new();
        let h = ssl_engine::ssl::losses::layer_norm_plain(&tape, &Var::constant(t64("loss.h")), 1e-5).unwrap();
        let (tshape, tids) = f.get("loss.targets");
        let per = tshape[1] * tshape[2];
        let parts: Vec<Var<_>> = (0..tshape[0])
            .map(|j| tape.gather_rows(&h, &Tensor::from_f64(&b, &tids[j * per..(j + 1) * per], &[n, tshape[2]], DType::F64).unwrap()).unwrap())
            .collect();
        let target = tape.concat(&parts.iter().collect::<Vec<_>>(), 0).unwrap();
        assert_close("target", &target.value.to_f64().unwrap(), f.get("loss.target").1, 1e-6);
        let pred = tape.leaf(t64("loss.pred"));
        let loss = if key == "l2" { l2(&tape, &pred, &target.detach()) } else { smooth_l1(&tape, &pred, &target.detach()) }.unwrap();
        let e = assert_close(key, &loss.value.to_f64().unwrap(), f.get(&format!("loss.{key}")).1, 1e-6);
        let grads = tape.backward(&loss).unwrap();
        let eg = assert_close(&format!("{key} dpred"), &grads.get(&pred).unwrap().to_f64().unwrap(), f.get(&format!("loss.{key}.dpred")).1, 1e-6);
        eprintln!("I-JEPA {key}: loss rel {e:.1e}, dpred rel L2 {eg:.1e}");
    }
}

/// vit-tiny without a class token at 16 px, patch 4 (a 4x4 grid), a one-block predictor.
pub fn ijepa_sets() -> Vec<&'static str> {
    vec![
        "method=\"ijepa\"",
        "model=\"vit-tiny\"",
        "model_opts.patch=4",
        "model_opts.class_token=false",
        "ijepa.pred_dim=32",
        "ijepa.pred_depth=1",
        "ijepa.pred_heads=2",
        "ijepa.min_keep=0",
        "ijepa.target_scale=[0.15, 0.25]",
        "optim.optimizer=\"adamw\"",
        "optim.base_lr=0.003",
        "optim.weight_decay=0.04",
        "optim.final_weight_decay=0.4",
        "optim.warmup_start_ratio=0.2",
        "data.image_size=16",
    ]
}

/// A CI-sized run: the loss falls, the target encoder moves by the EMA (it takes no gradient),
/// a resume mid-epoch gives the straight run's bits (masks drawn after the resume included),
/// and `eval knn` reads the checkpoint's class-token-free ViT back.
#[test]
fn a_tiny_ijepa_run_learns_resumes_bit_for_bit_and_evaluates() {
    let dir = tmp_dir("ijepa-run");
    let mut sets = ijepa_sets();
    sets.extend(["epochs=2", "monitor.log_every=1"]);
    let straight_out = dir.join("straight");
    let straight = run(&tiny(&straight_out, &sets), None).unwrap();
    let losses: Vec<f64> = straight.losses.iter().map(|&(_, l)| l).collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[losses.len() - 1] < losses[0], "the I-JEPA loss should fall over {} steps: {losses:?}", losses.len());

    let wf = ssl_engine::checkpoint::WeightFile::read(&straight_out.join("last.safetensors")).unwrap();
    let w = |name: &str| wf.tensors[name].1.clone();
    let (target, context) = (w("backbone.blocks.0.attn.qkv.weight"), w("context.blocks.0.attn.qkv.weight"));
    assert_ne!(target, context, "the target encoder is an EMA, not a copy");
    assert!(!wf.tensors.contains_key("backbone.cls_token"), "I-JEPA's encoder has no class token");

    let mut part = sets.clone();
    part.push("max_steps=2");
    let out = dir.join("resumed");
    run(&tiny(&out, &part), None).unwrap();
    let resumed = run_changed(&tiny(&out, &sets), &out.join("last.safetensors")).unwrap();
    assert_eq!(bits(&resumed), bits(&straight)[2..], "the resumed run's losses must equal the straight run's");

    let (code, text) = common::cli::ssl(&["eval", "knn", "--checkpoint", &straight_out.join("last.safetensors").display().to_string(), "--data", &repo("data/cifar10-demo"), "--set", "data.limit_per_class=6"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("backbone 192 features"), "the target encoder's mean token: {text}");
}

#[test]
fn ijepa_refuses_a_vit_with_a_class_token_naming_the_setting() {
    let dir = tmp_dir("ijepa-cls");
    let sets: Vec<&str> = ijepa_sets().into_iter().filter(|s| !s.starts_with("model_opts.class_token")).chain(["epochs=1"]).collect();
    let e = run(&tiny(&dir, &sets), None).unwrap_err().to_string();
    assert!(e.contains("model_opts.class_token = false"), "{e}");
}
