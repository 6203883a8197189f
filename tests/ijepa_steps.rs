//! Five I-JEPA training steps against facebookresearch/ijepa's own code in float64
//! (tests/reference/ijepa_steps.safetensors, written offline by
//! `tests/reference/make_ijepa_step_fixtures.py`, which imports ijepa's VisionTransformer,
//! VisionTransformerPredictor, MaskCollator, apply_masks, repeat_interleave_batch and init_opt
//! and runs src/train.py's train_step).

mod common;

use common::*;
use ssl_engine::autograd::Var;
use ssl_engine::models::{BackboneConfig, VitConfig};
use ssl_engine::nn::{Kind, ParamStore};
use ssl_engine::optim::{AdamW, train_step};
use ssl_engine::ssl::ijepa::{Ijepa, IjepaConfig, MultiBlock};
use ssl_engine::ssl::{Method, StepInfo};
use ssl_engine::{DType, Tensor};

const TOL: f64 = 1e-6;

/// Step s's masks as the fixture stores them: masks_enc [1, n, kc], masks_pred [targets, n, kp].
fn masks(f: &Fixtures, s: usize) -> MultiBlock {
    let ids = |v: &[f64]| v.iter().map(|&i| i as usize).collect::<Vec<_>>();
    let (es, ev) = f.get(&format!("steps.{s}.masks_enc"));
    let (ps_, pv) = f.get(&format!("steps.{s}.masks_pred"));
    assert_eq!(es[0], 1, "one context block per image");
    let per = ps_[1] * ps_[2];
    MultiBlock { context: ids(ev), context_len: es[2], targets: pv.chunks(per).map(ids).collect(), target_len: ps_[2] }
}

/// Five training steps of a small I-JEPA against ijepa's train_step in float64: 32 px images,
/// patch 4 (8x8 patches), a context encoder 32 wide with 2 blocks of 2 heads (MLP ratio 4, no
/// class token, ijepa's sin-cos positions), a predictor 16 wide with 1 block of 2 heads, the
/// target encoder starting as the context encoder's copy; every trainable parameter det_param by
/// our name (the script maps ijepa's names to ours), the sin-cos tables as built; step s's masks
/// (ijepa's MaskCollator: one context block, four target blocks) from the fixture through
/// `Ijepa::loss_with`; AdamW (betas 0.9, 0.999, eps 1e-8, lr 1e-3 and weight decay 0.04 as f32)
/// without decay on biases and 1-D parameters (`Ijepa::decays`, init_opt's groups); then the
/// EMA of `after_step`, tau linear from 0.84375 to 1 over the 5 steps (exact in f32). The five
/// losses and the weights after the fifth step (context, target, predictor) agree to a relative
/// 1e-6 (reached: losses 3e-8, all of it the f32 1/N of the loss's mean, see below; weights
/// 2e-9 at worst). In f64 on the CPU backend.
#[test]
fn five_ijepa_steps_match_ijepa_train_step() {
    const STEPS: usize = 5;
    let (n, size) = (4, 32);
    let (b, f) = (cpu(2), Fixtures::load("ijepa_steps.safetensors"));
    let vit =
        VitConfig { image_size: size, patch: 4, dim: 32, depth: 2, heads: 2, mlp_ratio: 4, class_token: false, ..VitConfig::default() };
    let cfg = IjepaConfig { pred_dim: 16, pred_depth: 1, pred_heads: 2, base_tau: 0.84375, final_tau: 1.0, ..Default::default() };
    let mut ps = ParamStore::new(&b, DType::F64, 0);
    let mut ijepa = Ijepa::new(&mut ps, &BackboneConfig::Vit(vit), &cfg, 0).unwrap();
    // det_param for the trainable parameters (context.*, predictor.*); the target encoder
    // (backbone.*) starts as the context encoder's copy: its twin's det_param values.
    for id in ps.ids().collect::<Vec<_>>() {
        if ps.entry(id).kind != Kind::Param {
            continue;
        }
        let (name, shape) = (ps.entry(id).name.clone(), ps.torch_shape(id));
        let source = match name.strip_prefix("backbone.") {
            Some(rest) => format!("context.{rest}"),
            None => name.clone(),
        };
        assert!(ps.find(&source).is_some(), "{name}: no twin {source}");
        ps.set_from_torch(id, &det_param(&source, &shape), &shape).unwrap();
    }
    let decays: Vec<bool> = ps.ids().map(|id| Method::<_>::decays(&ijepa, &ps, id)).collect();
    let per = n * 3 * size * size;
    let all = det_uniform("ijepa.steps.x", STEPS * per, 1.0, 0.0);
    let (lr, wd) = (1e-3f32, 0.04f32);
    let mut opt = AdamW::new([0.9, 0.999], 1e-8).unwrap();
    let mut losses = Vec::new();
    for s in 0..STEPS {
        let (x, shape) = nchw_to_nhwc(&all[s * per..(s + 1) * per], &[n, 3, size, size]);
        let x = Var::constant(Tensor::from_f32(&b, &x, &shape, DType::F64).unwrap());
        let m = masks(&f, s);
        let stepped = train_step(
            &ps,
            &mut opt,
            &|id| (lr, if decays[id.0] { wd } else { 0.0 }),
            false,
            |cx| {
                let (loss, _) = ijepa.loss_with(cx, &x, &m)?;
                Ok((loss.clone(), loss.value.clone()))
            },
            |_, _| Ok(true),
        )
        .unwrap();
        // The loss in full f64 (train_step's own readout is rounded to f32).
        losses.push(stepped.out.to_f64().unwrap()[0]);
        let info = StepInfo { step: s, total_steps: STEPS, epoch: 0, steps_per_epoch: STEPS };
        Method::after_step(&mut ijepa, &mut ps, &info).unwrap();
    }
    let taus: Vec<f64> = (0..STEPS).map(|s| ssl_engine::ssl::ijepa::linear_tau(cfg.base_tau, cfg.final_tau, s, STEPS)).collect();
    assert_eq!(taus, f.get("steps.taus").1, "ijepa's momentum_scheduler");
    let want = f.get("steps.losses").1;
    let e = losses.iter().zip(want).map(|(a, b)| ((a - b) / b).abs()).fold(0.0, f64::max);
    eprintln!("I-JEPA five steps: ours  {losses:.12?}\n                   ijepa {want:.12?}\n  worst relative loss error {e:.1e}");
    assert!(e <= TOL, "I-JEPA's five-step losses differ from ijepa's by {e:.2e} (relative)");
    // What is left is the mean over the loss's N = 4 targets x 4 images x kp x 32 elements:
    // `Tape::mean_axis` scales by 1/N rounded to f32 (1/3 or 1/9 times a power of two here:
    // +3.0e-8 or +7.5e-9). With that factor accounted for, the losses agree to about 1e-10
    // (either way, should the mean ever scale in f64).
    for (s, (&ours, &theirs)) in losses.iter().zip(want).enumerate() {
        let count = (4 * n * f.shape(&format!("steps.{s}.masks_pred"))[2] * 32) as f64;
        let f32_mean = (1.0 / count) as f32 as f64 * count;
        let rest = ((ours - theirs) / theirs).abs().min((ours / (theirs * f32_mean) - 1.0).abs());
        eprintln!("  step {s}: loss error beside the f32 1/N: {rest:.1e}");
        assert!(rest <= 1e-9, "step {s}: the loss differs from ijepa's by {rest:.2e} beyond the f32 mean factor");
    }
    for name in [
        "context.blocks.0.attn.qkv.weight",
        "context.patch_embed.proj.weight",
        "backbone.blocks.0.attn.qkv.weight",
        "backbone.blocks.1.mlp.fc2.weight",
        "predictor.proj.weight",
        "predictor.mask_token",
    ] {
        let e = assert_close(&format!("{name} after five steps"), &torch_f64(&ps, name), f.get(&format!("steps.final.{name}")).1, TOL);
        eprintln!("  {name} after five steps: relative L2 error {e:.1e}");
    }
}
