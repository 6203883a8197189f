//! MAE against facebookresearch/mae (tests/reference/mae.safetensors, written by
//! `tests/reference/make_mae_fixtures.py` from models_mae.py's own functions): the masking given
//! the same noise, patchify, the loss with and without norm_pix_loss and its gradient (f64, 1e-6
//! relative), the sin-cos position tables; then the token-level ViT (a kept subset of tokens is
//! the full encoder's on those tokens when attention cannot mix them: one block-free check),
//! five AdamW training steps of a small MAE against models_mae.py's MaskedAutoencoderViT in f64,
//! and a CI-sized MAE run on the CPU whose loss falls and whose resume is bit-exact.

mod common;

use common::tiny_run::{bits, run, run_changed, tiny};
use common::*;
use ssl_engine::autograd::{Tape, Var};
use ssl_engine::models::vit::sincos_pos_embed;
use ssl_engine::nn::{Ctx, ParamStore};
use ssl_engine::ssl::mae::{mae_loss, patchify, random_masking};
use ssl_engine::{DType, Tensor};

const TOL: f64 = 1e-6;

fn f64_tensor(b: &ssl_engine::backend::cpu::CpuBackend, f: &Fixtures, name: &str) -> Tensor<ssl_engine::backend::cpu::CpuBackend> {
    Tensor::from_f64(b, f.get(name).1, f.get(name).0, DType::F64).unwrap()
}

#[test]
fn random_masking_matches_models_mae_given_the_noise() {
    let f = Fixtures::load("mae.safetensors");
    let (n, l) = (3, 16);
    let m = random_masking(f.get("noise").1, n, l, 0.75);
    let ints = |name: &str| f.get(name).1.iter().map(|&v| v as usize).collect::<Vec<_>>();
    assert_eq!(m.keep, 4);
    assert_eq!(m.ids_keep, ints("ids_keep"));
    assert_eq!(m.ids_restore, ints("ids_restore"));
    assert_eq!(m.mask.iter().map(|&v| v as f64).collect::<Vec<_>>(), f.get("mask").1);
    // The encoder's kept tokens: the gather op with those indices is torch.gather's x_masked.
    let b = cpu(2);
    let idx: Vec<f64> = m.ids_keep.iter().map(|&i| i as f64).collect();
    let kept = ssl_engine::ops::gather_rows(&f64_tensor(&b, &f, "tokens"), &Tensor::from_f64(&b, &idx, &[n, 4], DType::F64).unwrap()).unwrap();
    assert_eq!(kept.to_f64().unwrap(), f.get("tokens_kept").1);
}

#[test]
fn patchify_and_the_loss_match_forward_loss_with_and_without_norm_pix() {
    let (b, f) = (cpu(2), Fixtures::load("mae.safetensors"));
    let mask: Vec<f32> = f.f32("mask");
    for (key, norm) in [("plain", false), ("norm", true)] {
        let tape = Tape::new();
        let ps = ParamStore::new(&b, DType::F64, 0);
        let cx = Ctx::new(&tape, &ps, true);
        let images = Var::constant(f64_tensor(&b, &f, "images_nhwc"));
        let patches = patchify(&cx, &images, 4).unwrap();
        assert_close("patches", &patches.value.to_f64().unwrap(), f.get("patches").1, TOL);
        let pred = tape.leaf(f64_tensor(&b, &f, &format!("pred_{key}")));
        let loss = mae_loss(&cx, &images, &pred, &mask, 4, norm).unwrap();
        let e = assert_close(&format!("loss_{key}"), &loss.value.to_f64().unwrap(), f.get(&format!("loss_{key}")).1, TOL);
        let grads = tape.backward(&loss).unwrap();
        let eg = assert_close(&format!("dpred_{key}"), &grads.get(&pred).unwrap().to_f64().unwrap(), f.get(&format!("dpred_{key}")).1, TOL);
        eprintln!("MAE forward_loss ({key}): loss rel {e:.1e}, dpred rel L2 {eg:.1e}");
    }
}

#[test]
fn sincos_position_tables_match_get_2d_sincos_pos_embed() {
    let f = Fixtures::load("mae.safetensors");
    for (dim, grid) in [(64, 4), (192, 8)] {
        let ours: Vec<f64> = sincos_pos_embed(dim, grid).unwrap().iter().map(|&v| v as f64).collect();
        let want = f.get(&format!("pos_embed_{dim}_{grid}")).1;
        let worst = ours.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        // f32 storage of values in [-1, 1].
        assert!(worst < 1e-7, "{dim}x{grid}: max abs error {worst:e}");
    }
    assert!(sincos_pos_embed(30, 4).is_err(), "a width not divisible by 4 is refused");
}

/// The token-level ViT: encoding all tokens through `encode` gives `forward`'s class token, and
/// keeping a subset gives the class token that a model sees on those tokens only.
#[test]
fn the_vit_encodes_a_subset_of_tokens() {
    use ssl_engine::models::{BackboneConfig, VitConfig};
    let b = cpu(2);
    let mut ps = ParamStore::new(&b, DType::F64, 3);
    let cfg = VitConfig { image_size: 16, patch: 4, dim: 32, depth: 2, heads: 2, mlp_ratio: 2, ..VitConfig::default() };
    let bb = BackboneConfig::Vit(cfg).build(&mut ps, "").unwrap();
    let ssl_engine::models::Backbone::Vit(vit) = &bb else { unreachable!() };
    let x: Vec<f64> = det_uniform("mae-vit-x", 2 * 16 * 16 * 3, 1.0, -0.5).iter().map(|&v| v as f64).collect();
    let tape = Tape::inference();
    let cx = Ctx::new(&tape, &ps, false);
    let x = Var::constant(Tensor::from_f64(&b, &x, &[2, 16, 16, 3], DType::F64).unwrap());
    let all = vit.encode(&cx, &x, None).unwrap();
    let f = vit.forward(&cx, &x).unwrap();
    let cls: Vec<f64> = all.value.to_f64().unwrap().chunks(17 * 32).flat_map(|img| img[..32].to_vec()).collect();
    assert_eq!(cls, f.value.to_f64().unwrap(), "forward is encode's class token");
    // Keeping every token in a shuffled order changes nothing but the order (attention is
    // permutation-equivariant and positions travel with the tokens).
    let order: Vec<usize> = (0..16).rev().collect();
    let idx: Vec<f64> = order.iter().chain(order.iter()).map(|&i| i as f64).collect();
    let kept = vit.encode(&cx, &x, Some(&Tensor::from_f64(&b, &idx, &[2, 16], DType::F64).unwrap())).unwrap();
    let (a, k) = (all.value.to_f64().unwrap(), kept.value.to_f64().unwrap());
    for i in 0..2 {
        let base = i * 17 * 32;
        assert_close("class token", &k[base..base + 32], &a[base..base + 32], 1e-12);
        for (j, &p) in order.iter().enumerate() {
            let (got, want) = (base + (1 + j) * 32, base + (1 + p) * 32);
            assert_close("token", &k[got..got + 32], &a[want..want + 32], 1e-12);
        }
    }
}

fn mae_sets() -> Vec<&'static str> {
    vec![
        "method=\"mae\"",
        "model=\"vit-tiny\"",
        "model_opts.patch=4",
        "mae.decoder_dim=32",
        "mae.decoder_depth=1",
        "mae.decoder_heads=2",
        "optim.optimizer=\"adamw\"",
        "optim.betas=[0.9, 0.95]",
        "optim.base_lr=0.003",
        "optim.weight_decay=0.05",
        "data.image_size=16",
    ]
}

/// A CI-sized run: vit-tiny at 16 px with patch 4 (16 tokens, 4 kept), a one-block decoder;
/// the reconstruction loss falls, and a resume mid-epoch gives the straight run's bits (the
/// masks are drawn from the seed and the step, so they are drawn again the same).
#[test]
fn a_tiny_mae_run_learns_and_resumes_bit_for_bit() {
    let dir = tmp_dir("mae-run");
    let mut sets = mae_sets();
    sets.extend(["epochs=2", "monitor.log_every=1"]);
    let straight = run(&tiny(&dir.join("straight"), &sets), None).unwrap();
    let losses: Vec<f64> = straight.losses.iter().map(|&(_, l)| l).collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(last < first, "the MAE loss should fall over {} steps: {losses:?}", losses.len());

    let mut part = sets.clone();
    part.push("max_steps=2");
    let out = dir.join("resumed");
    run(&tiny(&out, &part), None).unwrap();
    let resumed = run_changed(&tiny(&out, &sets), &out.join("last.safetensors")).unwrap();
    let tail = &bits(&straight)[2..];
    assert_eq!(bits(&resumed), tail, "the resumed run's losses must equal the straight run's");
}

/// After a few steps the network reconstructs held-out images (the demo test set, never
/// trained on) better than at its random start, with the same masks; and the run folder holds
/// the reconstruction picture people look at.
#[test]
fn training_improves_the_held_out_reconstruction_and_draws_it() {
    use ssl_engine::ssl::mae::{Mae, MaeConfig};
    let out = tmp_dir("mae-heldout").join("run");
    let mut sets = mae_sets();
    sets.extend(["epochs=4", "monitor.knn_every=0"]);
    let cfg = tiny(&out, &sets);
    run(&cfg, None).unwrap();
    let png = image::open(out.join("reconstruction.png")).expect("reconstruction.png decodes");
    assert_eq!(png.width(), 4 * 96 + 12, "four columns of 96-pixel tiles");

    let b = cpu(2);
    let test = ssl_engine::setup::load_split(cfg.data.test_path.as_ref().unwrap(), ssl_engine::data::Split::Test, &cfg).unwrap();
    let (x, labels) = ssl_engine::data::eval_batches(&test, 16, 8, cfg.augment.mean, cfg.augment.std).next().unwrap().unwrap();
    let images = Tensor::from_f32(&b, &x, &[labels.len(), 16, 16, 3], DType::F32).unwrap();
    let settings: MaeConfig = ssl_engine::ssl::parse_settings(&cfg.method_tables["mae"]).unwrap();
    let loss_of = |trained: bool| {
        let mut ps = ParamStore::new(&b, DType::F32, cfg.seed);
        let mae = Mae::new(&mut ps, &cfg.backbone().unwrap(), &settings, cfg.seed).unwrap();
        if trained {
            ssl_engine::checkpoint::WeightFile::read(&out.join("last.safetensors")).unwrap().load_into(&mut ps, "", "").unwrap();
        }
        mae.heldout_loss(&ps, &images, 0).unwrap()
    };
    let (before, after) = (loss_of(false), loss_of(true));
    eprintln!("MAE held-out reconstruction loss: {before:.4} at random init -> {after:.4} after training");
    assert!(after < before, "held-out reconstruction loss {before} -> {after}");
}

/// Five training steps of a small MAE against models_mae.py's MaskedAutoencoderViT in float64
/// (tests/reference/mae.safetensors `steps.*`, `make_mae_fixtures.py steps`): 16 px images,
/// patch 4 (16 patches, 4 kept), encoder 32 wide with 2 blocks of 2 heads, decoder 32 wide with
/// 1 block of 2 heads, MLP ratio 4, norm_pix_loss; every parameter det_param by name, both
/// sin-cos tables MAE's; step s masks with the fixture's noise [s] through `random_masking`;
/// AdamW (betas 0.9, 0.95, eps 1e-8, lr 1e-3 and weight decay 0.05 as f32) with MAE's
/// add_weight_decay (`Mae::decays`). The five losses agree to a relative 1e-6 and so do the
/// parameters kept after the fifth update (relative L2); in f64 on the CPU backend. What is left
/// (the losses about 1e-7 above PyTorch's, the parameters about 1e-9 apart) is the tape's
/// `scale` taking its factor as f32: 1/48 in the mean over a patch and in the division by the
/// 48 dropped patches, sqrt(47/48) in the norm_pix target, each rounded by about 3e-8.
#[test]
fn five_mae_steps_match_pytorch() {
    use ssl_engine::models::vit::PosEmbed;
    use ssl_engine::models::{BackboneConfig, VitConfig};
    use ssl_engine::nn::Kind;
    use ssl_engine::optim::{AdamW, train_step};
    use ssl_engine::ssl::Method;
    use ssl_engine::ssl::mae::{Mae, MaeConfig};
    const STEPS: usize = 5;
    let (n, size, patches) = (4, 16, 16);
    let (b, f) = (cpu(2), Fixtures::load("mae.safetensors"));
    let vit = VitConfig { image_size: size, patch: 4, dim: 32, depth: 2, heads: 2, mlp_ratio: 4, pos_embed: PosEmbed::SinCos, ..VitConfig::default() };
    let cfg = MaeConfig { mask_ratio: 0.75, decoder_dim: 32, decoder_depth: 1, decoder_heads: 2, norm_pix_loss: true };
    let mut ps = ParamStore::new(&b, DType::F64, 0);
    let mae = Mae::new(&mut ps, &BackboneConfig::Vit(vit), &cfg, 0).unwrap();
    // det_param for the parameters only: the two position tables stay MAE's sin-cos ones.
    for id in ps.ids().collect::<Vec<_>>() {
        if ps.entry(id).kind == Kind::Param {
            let (name, shape) = (ps.entry(id).name.clone(), ps.torch_shape(id));
            ps.set_from_torch(id, &det_param(&name, &shape), &shape).unwrap();
        }
    }
    let per = n * 3 * size * size;
    let all = det_uniform("mae.steps.x", STEPS * per, 1.0, 0.0);
    let noise = f.get("steps.noise").1;
    let decays: Vec<bool> = ps.ids().map(|id| Method::<_>::decays(&mae, &ps, id)).collect();
    let (lr, wd) = (1e-3f32, 0.05f32);
    let mut opt = AdamW::new([0.9, 0.95], 1e-8).unwrap();
    let mut losses = Vec::new();
    for s in 0..STEPS {
        let (x, shape) = nchw_to_nhwc(&all[s * per..(s + 1) * per], &[n, 3, size, size]);
        let x = Var::constant(Tensor::from_f32(&b, &x, &shape, DType::F64).unwrap());
        let m = random_masking(&noise[s * n * patches..(s + 1) * n * patches], n, patches, cfg.mask_ratio);
        let stepped = train_step(
            &ps,
            &mut opt,
            &|id| (lr, if decays[id.0] { wd } else { 0.0 }),
            false,
            |cx| {
                let loss = mae.pass_with(cx, &x, m)?.loss;
                Ok((loss.clone(), loss.value.clone()))
            },
            |_, _| Ok(true),
        )
        .unwrap();
        // The loss in full f64 (train_step's own readout is rounded to f32).
        losses.push(stepped.out.to_f64().unwrap()[0]);
    }
    let want = f.get("steps.losses").1;
    let e = losses.iter().zip(want).map(|(a, b)| ((a - b) / b).abs()).fold(0.0, f64::max);
    eprintln!("MAE five steps: ours  {losses:.12?}\n                torch {want:.12?}\n  worst relative loss error {e:.1e}");
    assert!(e <= TOL, "MAE's five-step losses differ from PyTorch's by {e:.2e} (relative)");
    for name in ["decoder.pred.weight", "backbone.blocks.0.attn.qkv.weight", "backbone.patch_embed.proj.weight", "backbone.cls_token", "decoder.mask_token"] {
        let got = torch_f64(&ps, name);
        let e = assert_close(&format!("{name} after five steps"), &got, f.get(&format!("steps.final.{name}")).1, TOL);
        eprintln!("  {name} after five steps: relative L2 error {e:.1e}");
    }
}
