//! The training loop end to end on tiny runs over the committed CIFAR-10 demo subset: exact
//! resume (mid-epoch and at an epoch boundary), the collapse monitor (no stop-gradient collapses,
//! the default does not), NaN handling that keeps the last good checkpoint, and export to
//! PyTorch names.

mod common;

use common::tiny_run::{bits, loss_and_z_std, run, run_changed, state_digest, tiny};
use common::{repo, tmp_dir};

use std::path::Path;
#[cfg(feature = "wgpu")]
use std::sync::atomic::AtomicBool;

use ssl_engine::backend::cpu::CpuBackend;
#[cfg(feature = "wgpu")]
use ssl_engine::train::train;
use ssl_engine::{Error, eval};

#[test]
fn resume_mid_epoch_and_at_epoch_boundary_is_bit_identical() {
    // With SGD and with LARS: the optimiser's state (momentum) travels in the checkpoint either way.
    let mut finals = Vec::new();
    for opt in ["sgd", "lars"] {
        let o = format!("optim.optimizer=\"{opt}\"");
        let straight_dir = tmp_dir(&format!("straight-{opt}"));
        let straight = run(&tiny(&straight_dir, &[&o]), None).unwrap();
        assert_eq!(straight.steps_done, 9, "3 epochs of 3 steps");
        let want = state_digest(&straight_dir.join("last.safetensors"));
        for stop in [4, 6] {
            // 4 stops inside epoch 2, 6 at the end of epoch 2.
            let out = tmp_dir(&format!("resume{stop}-{opt}"));
            let first = run(&tiny(&out, &[&o, &format!("max_steps={stop}")]), None).unwrap();
            assert_eq!(first.steps_done, stop);
            let rest = run(&tiny(&out, &[&o]), Some(&out.join("last.safetensors"))).unwrap();
            let mut joined = bits(&first);
            joined.extend(bits(&rest));
            assert_eq!(joined, bits(&straight), "{opt}: loss trace after resuming at step {stop} differs from the uninterrupted run");
            let got = state_digest(&out.join("last.safetensors"));
            assert_eq!(got, want, "{opt}: weights, momentum or loop state after resuming at step {stop} differ");
            println!("{opt}: resumed at step {stop}: SHA-256 of weights + momentum {} (same as straight), state {:?}", &got.0[..16], got.1);
        }
        finals.push(want.0);
    }
    assert_ne!(finals[0], finals[1], "LARS trained exactly as SGD did: the optimizer setting was ignored");
}

#[test]
fn without_stop_gradient_simsiam_collapses_and_with_it_does_not() {
    let steps = [
        "epochs=40",
        "data.limit_per_class=13",
        "batch_size=64",
        "simsiam.proj_hidden=64",
        "simsiam.proj_dim=64",
        "simsiam.pred_hidden=16",
        "optim.base_lr=0.3",
        "optim.scale_lr_with_batch=false",
        "monitor.knn_every=0",
    ];
    let z_std = |out: &Path| -> f64 {
        let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let last = text.lines().rfind(|l| l.contains("\"type\":\"epoch\"")).unwrap().to_string();
        let v: serde_json::Value = serde_json::from_str(&last).unwrap();
        v["z_std"].as_f64().unwrap()
    };
    let healthy_dir = tmp_dir("healthy");
    let healthy = run(&tiny(&healthy_dir, &steps), None).unwrap();
    let collapsed_dir = tmp_dir("collapsed");
    let mut sets = steps.to_vec();
    sets.push("simsiam.no_stop_grad=true");
    let collapsed = run(&tiny(&collapsed_dir, &sets), None).unwrap();
    let (h, c) = (z_std(&healthy_dir), z_std(&collapsed_dir));
    let ideal = 1.0 / (64f64).sqrt();
    eprintln!(
        "z-std: default {h:.4}, no stop-grad {c:.4} (1/sqrt(d) = {ideal:.4}); final loss {:?} vs {:?}",
        healthy.last_loss, collapsed.last_loss
    );
    assert!(c < 0.5 * h, "no stop-gradient should collapse: z-std {c} vs default {h}");
    assert!(h > 0.6 * ideal, "default run should not collapse: z-std {h}");
    let (hl, cl) = (healthy.last_loss.unwrap(), collapsed.last_loss.unwrap());
    // Collapse shows one of two ways: a constant direction (loss -> -1), or a constant input to
    // the projector's last BN (no affine), whose output is then exactly 0, as is the loss.
    let constant_direction = cl < -0.9 && cl < hl - 0.2;
    let zero_output = cl == 0.0 && c == 0.0;
    assert!(constant_direction || zero_output, "collapsed loss {cl} should approach -1 (or z be all zero), default's {hl}");
}

#[test]
fn non_finite_loss_stops_with_exit_code_3_and_keeps_the_last_checkpoint() {
    let out = tmp_dir("nan");
    run(&tiny(&out, &["epochs=1"]), None).unwrap();
    let ckpt = out.join("last.safetensors");
    let before = std::fs::read(&ckpt).unwrap();
    let err = run_changed(&tiny(&out, &["epochs=2", "optim.base_lr=1e30"]), &ckpt).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    assert_eq!(err.exit_code(), 3);
    assert!(err.to_string().contains("step"), "{err}");
    assert_eq!(std::fs::read(&ckpt).unwrap(), before, "the last good checkpoint must survive");
}

#[test]
fn export_matches_torchvision_state_dict_and_round_trips() {
    export_round_trip("resnet18-cifar", &["model_opts.width=64"]);
}

/// The demo recipe's width-16 network against the README's export snippet
/// (tests/reference/export_snippet.py: torchvision's ResNet-18 rebuilt at model_opts.width).
#[test]
fn the_demo_export_matches_the_readme_snippet() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let script = std::fs::read_to_string(repo("tests/reference/export_snippet.py")).unwrap();
    let code = |text: &str| -> Vec<String> {
        let start = text.find("def resnet18_cifar(width=64):").expect("the snippet's function");
        text[start..].lines().take_while(|l| !l.trim().is_empty()).map(|l| l.trim().to_string()).collect()
    };
    assert_eq!(code(&readme), code(&script), "the README's snippet and export_snippet.py differ");
    let demo = ssl_engine::config::Config::load(Some(Path::new(&repo("configs/demo-cpu.toml"))), &[]).unwrap();
    assert_eq!(demo.model_opts.width, Some(16), "the snippet's width is the demo's");
    export_round_trip_against("resnet18-cifar-width16", "state_dict_keys_demo.json", &["model_opts.width=16"]);
}

/// EfficientNet-B0 with torchvision's names (`features.1.0.block.0.0.weight`, ...), found again
/// by the importer from the names alone.
#[test]
fn efficientnet_export_matches_torchvision_state_dict_and_round_trips() {
    export_round_trip("efficientnet-b0", &["model=\"efficientnet-b0\""]);
}

/// PiT-Ti with timm's names (`transformers.1.pool.conv.weight`, ...) at 32x32; the importer
/// recovers patch, stride, widths and depths from the names and shapes.
#[test]
fn pit_export_matches_timm_state_dict_and_round_trips() {
    export_round_trip("pit-ti", &["model=\"pit-ti\"", "data.image_size=32"]);
}

/// Trains one short epoch of `model`, exports the backbone and checks it against the keys and
/// shapes PyTorch's own state_dict() listed (tests/reference/make_fixtures.py): the two checks
/// load_state_dict(strict=True) makes, missing/unexpected keys and shapes.
fn export_round_trip(model: &str, sets: &[&str]) {
    export_round_trip_against(model, "state_dict_keys.json", sets)
}

/// `export_round_trip` against the key list `model` in tests/reference/`keys_file`.
fn export_round_trip_against(model: &str, keys_file: &str, sets: &[&str]) {
    let out = tmp_dir(&format!("export-{model}"));
    let mut all = vec!["epochs=1", "data.limit_per_class=2", "batch_size=4", "data.image_size=8", "monitor.knn_every=0"];
    all.extend(sets);
    let mut cfg = tiny(&out, &all);
    cfg.data.test_path = None;
    run(&cfg, None).unwrap();
    let b = CpuBackend::new(2).unwrap();
    let exported = out.join("backbone.safetensors");
    eval::export(&b, &out.join("last.safetensors"), &exported).unwrap();
    // A safetensors file (8-byte header length, then JSON), never a pickle (0x80 ...) or a
    // torch.save zip ("PK"): loading it runs no code.
    let raw = std::fs::read(&exported).unwrap();
    let hlen = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    assert!(raw[8] == b'{' && 8 + hlen <= raw.len(), "not a safetensors layout");
    assert!(raw[0] != 0x80 && &raw[..2] != b"PK");
    let keys: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo(&format!("tests/reference/{keys_file}"))).unwrap()).unwrap();
    let want = keys[model].as_object().unwrap();
    let wf = ssl_engine::checkpoint::WeightFile::read(&exported).unwrap();
    let mut got: Vec<&String> = wf.tensors.keys().collect();
    got.sort();
    let mut want_keys: Vec<&String> = want.keys().collect();
    want_keys.sort();
    assert_eq!(got, want_keys);
    for (k, shape) in want {
        let s: Vec<usize> = shape.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(wf.tensors[k].0, s, "{k}");
    }
    // Values round-trip: the exported file and the checkpoint give the same backbone.
    let a = eval::load_backbone(&b, &out.join("last.safetensors"), None, 8).unwrap();
    let c = eval::load_backbone(&b, &exported, None, 8).unwrap();
    for (ea, ec) in a.ps.entries().iter().zip(c.ps.entries()) {
        assert_eq!(ea.name, ec.name);
        assert_eq!(ea.value.to_f32().unwrap(), ec.value.to_f32().unwrap(), "{}", ea.name);
    }
}

/// A few steps of every method on the WGSL backend against the CPU backend: same data, same
/// seeds, small heads; two epochs of two steps (SwAV's queue and prototypes change at the
/// second), 4 images a class: the software adapter (llvmpipe) pays about a second a step.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_steps_of_every_method_match_the_cpu_backend() {
    let Some(w) = common::wgpu_or_skip() else { return };
    let heads = [
        "simclr.proj_hidden=32",
        "simclr.proj_dim=16",
        "byol.proj_hidden=32",
        "byol.proj_dim=16",
        "byol.pred_hidden=32",
        "supcon.proj_hidden=32",
        "supcon.proj_dim=16",
        "swav.proj_hidden=32",
        "swav.proj_dim=16",
        "swav.num_prototypes=20",
        "swav.queue_size=32",
        "swav.epoch_queue_starts=1",
        "swav.freeze_prototypes_epochs=1",
        "mocov2plus.proj_hidden=32",
        "mocov2plus.proj_dim=16",
        "mocov2plus.queue_size=48",
        "mocov3.proj_hidden=32",
        "mocov3.proj_dim=16",
        "mocov3.pred_hidden=32",
        "dino.proj_hidden=32",
        "dino.proj_dim=16",
        "dino.num_prototypes=24",
        "barlow.proj_hidden=32",
        "barlow.proj_dim=32",
        "vicreg.proj_hidden=32",
        "vicreg.proj_dim=32",
        "nnclr.proj_hidden=32",
        "nnclr.proj_dim=16",
        "nnclr.pred_hidden=32",
        "nnclr.queue_size=48",
    ];
    for method in ssl_engine::ssl::methods().iter().map(|m| m.name) {
        let mut sets = vec!["epochs=2", "monitor.knn_every=0", "data.limit_per_class=4"];
        sets.extend(heads);
        let m = format!("method={method}");
        sets.push(&m);
        if method == "mae" {
            sets.extend(MAE_TINY);
        }
        if method == "ijepa" {
            sets.extend(common::tiny_run::IJEPA_TINY);
            sets.push("data.image_size=8");
        }
        let cfg_cpu = tiny(&tmp_dir(&format!("{method}-cpu")), &sets);
        let cfg_gpu = tiny(&tmp_dir(&format!("{method}-wgpu")), &sets);
        let cpu = run(&cfg_cpu, None).unwrap();
        let gpu = train(&w, &cfg_gpu, None, &AtomicBool::new(false), false).unwrap();
        assert_eq!(cpu.losses.len(), gpu.losses.len());
        for ((s, a), (_, b)) in cpu.losses.iter().zip(&gpu.losses) {
            let e = (a - b).abs() / a.abs().max(1e-3);
            eprintln!("{method} step {s}: cpu {a:.6} wgpu {b:.6} (rel {e:.1e})");
            assert!(e < 1e-4, "{method} step {s}: loss {a} on cpu vs {b} on wgpu");
        }
    }
}

/// MAE masks ViT tokens: a ViT-Tiny at 8 px with patch 4 (4 patches, 1 kept), a one-block
/// decoder, AdamW.
#[cfg(feature = "wgpu")]
const MAE_TINY: [&str; 7] =
    ["model=\"vit-tiny\"", "model_opts.patch=4", "mae.decoder_dim=16", "mae.decoder_depth=1", "mae.decoder_heads=2", "optim.optimizer=\"adamw\"", "data.image_size=8"];

/// SimCLR on a CI-sized subset: the NT-Xent loss falls and the projections stay spread
/// (z-std above half of 1/sqrt(d)).
#[test]
fn simclr_loss_falls_and_its_projections_do_not_collapse() {
    let dir = tmp_dir("simclr");
    let sets = [
        "method=simclr",
        // Width 8 (64-d features): at width 4 the 32-d features leave the projections too few
        // directions to spread over (z-std 0.085 < 0.088), a property of the toy size.
        "model_opts.width=8",
        "epochs=20",
        "data.limit_per_class=13",
        "batch_size=64",
        "simclr.proj_hidden=64",
        "simclr.proj_dim=32",
        "optim.base_lr=0.3",
        "optim.scale_lr_with_batch=false",
        "monitor.knn_every=0",
    ];
    let s = run(&tiny(&dir, &sets), None).unwrap();
    let (first, last, z_std) = loss_and_z_std(&dir);
    let ideal = 1.0 / (32f64).sqrt();
    eprintln!("simclr: epoch loss {first:.4} -> {last:.4}, z-std {z_std:.4} (1/sqrt(d) = {ideal:.4}), {} steps", s.steps_done);
    assert!(last < first - 0.2, "NT-Xent should fall: {first} -> {last}");
    assert!(z_std > 0.5 * ideal, "SimCLR projections collapsed: z-std {z_std}");
}

/// BYOL on a CI-sized subset: the loss falls, the online projections stay spread (z-std above
/// half of 1/sqrt(d)), and the momentum network moved away from its start but, with tau near 1,
/// less than the online network did.
#[test]
fn byol_loss_falls_its_projections_do_not_collapse_and_the_momentum_network_follows() {
    let dir = tmp_dir("byol");
    let sets = [
        "method=byol",
        "model_opts.width=8",
        "epochs=20",
        "data.limit_per_class=13",
        "batch_size=64",
        "byol.proj_hidden=64",
        "byol.proj_dim=32",
        "byol.pred_hidden=64",
        "optim.base_lr=0.3",
        "optim.scale_lr_with_batch=false",
        "monitor.knn_every=0",
    ];
    let cfg = tiny(&dir, &sets);
    let s = run(&cfg, None).unwrap();
    let (first, last, z_std) = loss_and_z_std(&dir);
    let ideal = 1.0 / (32f64).sqrt();
    eprintln!("byol: epoch loss {first:.4} -> {last:.4}, z-std {z_std:.4} (1/sqrt(d) = {ideal:.4}), {} steps", s.steps_done);
    assert!(last < first - 0.2, "BYOL loss should fall: {first} -> {last}");
    assert!(z_std > 0.5 * ideal, "BYOL projections collapsed: z-std {z_std}");
    // The momentum network in the checkpoint: moved from the start (the online init, which a
    // fresh build reproduces), by less than the online network.
    let wf = ssl_engine::checkpoint::WeightFile::read(&dir.join("last.safetensors")).unwrap();
    let b = CpuBackend::new(2).unwrap();
    let (start, _) = ssl_engine::train::build_method(&b, &cfg).unwrap();
    let name = "backbone.layer1.0.conv1.weight";
    let init = start.to_torch(start.find(name).unwrap()).unwrap().0;
    let dist = |v: &[f32]| v.iter().zip(&init).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
    let (online, momentum) = (dist(&wf.tensors[name].1), dist(&wf.tensors[&format!("momentum_{name}")].1));
    eprintln!("byol: {name} moved {online:.4} online, {momentum:.4} momentum");
    assert!(momentum > 0.0 && momentum < online, "momentum network moved {momentum}, online {online}");
}

/// A BYOL run stopped mid-epoch resumes bit for bit: the momentum network is in the checkpoint.
#[test]
fn byol_resumes_bit_identically() {
    let sets = ["method=byol", "byol.proj_hidden=16", "byol.proj_dim=8", "byol.pred_hidden=16"];
    let straight_dir = tmp_dir("byol-straight");
    let straight = run(&tiny(&straight_dir, &sets), None).unwrap();
    let out = tmp_dir("byol-resume4");
    let first = run(&tiny(&out, &[&sets[..], &["max_steps=4"]].concat()), None).unwrap();
    let rest = run(&tiny(&out, &sets), Some(&out.join("last.safetensors"))).unwrap();
    let mut joined = bits(&first);
    joined.extend(bits(&rest));
    assert_eq!(joined, bits(&straight), "BYOL loss trace after resuming at step 4 differs");
    assert_eq!(state_digest(&out.join("last.safetensors")), state_digest(&straight_dir.join("last.safetensors")));
}

/// EfficientNet's stochastic depth draws its masks from (seed, step): a run stopped at step 4
/// and resumed takes the same losses, bit for bit, as one that never stopped.
#[test]
fn efficientnet_stochastic_depth_resumes_bit_identically() {
    let sets = ["model=\"efficientnet-b0\"", "data.image_size=16", "batch_size=8", "data.limit_per_class=3", "epochs=2", "monitor.knn_every=0"];
    let straight = run(&tiny(&tmp_dir("effnet-straight"), &sets), None).unwrap();
    let out = tmp_dir("effnet-resume");
    let first = run(&tiny(&out, &[&sets[..], &["max_steps=4"]].concat()), None).unwrap();
    let rest = run(&tiny(&out, &sets), Some(&out.join("last.safetensors"))).unwrap();
    let mut joined = bits(&first);
    joined.extend(bits(&rest));
    assert_eq!(joined, bits(&straight), "loss trace after resuming at step 4 differs");
}

/// Pretraining on a folder of images without class folders: one class, "unlabeled"; the kNN
/// monitor (which votes with training labels) is off, and training runs.
#[test]
fn pretrains_on_a_folder_of_unlabelled_images() {
    let images = tmp_dir("unlabelled-images");
    for class in ["cat", "dog", "ship", "truck"] {
        for i in 0..5 {
            let from = format!("{}/{class}/{i:04}.jpg", repo("data/cifar10-demo/train"));
            std::fs::copy(&from, images.join(format!("{class}-{i}.jpg"))).unwrap();
        }
    }
    let out = tmp_dir("unlabelled-run");
    let mut cfg = tiny(&out, &["epochs=2", "batch_size=8"]);
    cfg.data.path = images.clone();
    cfg.data.limit_per_class = None;
    let s = run(&cfg, None).unwrap();
    assert_eq!(s.steps_done, 4, "20 images, batches of 8, last partial one dropped");
    assert_eq!((s.knn_init, s.knn_final), (None, None), "no kNN monitor without labels");
    assert!(out.join("last.safetensors").exists());
}

/// `data.cache = "none"` decodes every image per batch, in the workers: a streaming run stopped
/// at step 4 and resumed takes the same losses, bit for bit, as a run from memory that never
/// stopped (the same images, in the same order, with the same crops).
#[test]
fn streaming_run_resumes_and_matches_the_cached_run() {
    let sets = ["epochs=2", "monitor.knn_every=0"];
    let cached = run(&tiny(&tmp_dir("cached-straight"), &sets), None).unwrap();
    let out = tmp_dir("streaming-resume");
    let streaming = [&sets[..], &["data.cache=\"none\""]].concat();
    let first = run(&tiny(&out, &[&streaming[..], &["max_steps=4"]].concat()), None).unwrap();
    let rest = run(&tiny(&out, &streaming), Some(&out.join("last.safetensors"))).unwrap();
    let mut joined = bits(&first);
    joined.extend(bits(&rest));
    assert_eq!(cached.losses.len(), 6);
    assert_eq!(joined, bits(&cached), "the streaming run's losses differ from the cached run's");
}
