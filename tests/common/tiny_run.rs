//! Tiny training runs for the tests: a ResNet-18 of width 4 on 16x16 crops of the committed
//! CIFAR-10 demo subset, and what the tests read back from a run.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use ssl_engine::backend::cpu::CpuBackend;
use ssl_engine::config::Config;
use ssl_engine::train::{TrainSummary, train};

use super::repo;

/// I-JEPA on 8-pixel crops: ViT-Tiny without a class token at patch 4 (a 2x2 grid: 1-patch
/// blocks), a one-block predictor, AdamW.
pub const IJEPA_TINY: [&str; 9] = [
    "model=\"vit-tiny\"",
    "model_opts.patch=4",
    "model_opts.class_token=false",
    "ijepa.pred_dim=16",
    "ijepa.pred_depth=1",
    "ijepa.pred_heads=2",
    "ijepa.min_keep=0",
    "ijepa.target_scale=[0.25, 0.5]",
    "optim.optimizer=\"adamw\"",
];

/// A tiny SimSiam run: ResNet-18 of width 4 on 16x16 crops of 60 demo images.
pub fn tiny(out: &Path, extra: &[&str]) -> Config {
    let mut sets: Vec<String> = vec![
        format!("out={:?}", out.display().to_string()),
        "model=\"resnet18-cifar\"".into(),
        "model_opts.width=4".into(),
        format!("data.path={:?}", repo("data/cifar10-demo/train")),
        format!("data.test_path={:?}", repo("data/cifar10-demo/test")),
        "data.limit_per_class=6".into(),
        "data.image_size=16".into(),
        // The 32-pixel demo images resized once to 16: the regime these runs were sized in
        // (stored sizes, the default, are tested on their own in data_loader.rs).
        "data.resize_on_load=true".into(),
        "data.workers=2".into(),
        "batch_size=16".into(),
        "epochs=3".into(),
        "threads=2".into(),
        "simsiam.proj_hidden=32".into(),
        "simsiam.proj_dim=32".into(),
        "simsiam.pred_hidden=8".into(),
        "monitor.log_every=1".into(),
        "monitor.knn_k=10".into(),
        "optim.base_lr=0.2".into(),
        "checkpoint.every=1".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    Config::load(None, &sets).unwrap()
}

pub fn run(cfg: &Config, resume: Option<&Path>) -> ssl_engine::Result<TrainSummary> {
    let b = CpuBackend::new(cfg.threads).unwrap().with_precision(cfg.precision);
    train(&b, cfg, resume, &AtomicBool::new(false), false)
}

/// `run` of a resume that changes the schedule on purpose (`--allow-changes`).
pub fn run_changed(cfg: &Config, resume: &Path) -> ssl_engine::Result<TrainSummary> {
    let b = CpuBackend::new(cfg.threads).unwrap().with_precision(cfg.precision);
    let opts = ssl_engine::train::StartOptions { resume: Some(resume), allow_changes: true, ..Default::default() };
    ssl_engine::train::train_with(&b, cfg, &opts, &AtomicBool::new(false), false)
}

pub fn bits(s: &TrainSummary) -> Vec<(usize, u64)> {
    s.losses.iter().map(|&(g, l)| (g, l.to_bits())).collect()
}

/// SHA-256 over every tensor of a checkpoint (name and bytes, sorted by name): the weights, the
/// batch-norm buffers and the optimizer's momentum; plus the loop state (epoch, step). The
/// randomness is counter-based (seed, epoch, step), so the loop state is the whole RNG state.
pub fn state_digest(path: &Path) -> (String, (usize, usize, usize)) {
    use sha2::{Digest, Sha256};
    let wf = ssl_engine::checkpoint::WeightFile::read(path).unwrap();
    let mut names: Vec<&String> = wf.tensors.keys().collect();
    names.sort();
    let mut h = Sha256::new();
    for n in names {
        h.update(n.as_bytes());
        for v in &wf.tensors[n].1 {
            h.update(v.to_le_bytes());
        }
    }
    let st = wf.state().unwrap();
    (h.finalize().iter().map(|b| format!("{b:02x}")).collect(), (st.epoch, st.step_in_epoch, st.global_step))
}

/// The first and last epoch's mean loss and the last epoch's z-std, from a run's metrics.jsonl.
pub fn loss_and_z_std(dir: &Path) -> (f64, f64, f64) {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let epochs: Vec<serde_json::Value> =
        text.lines().filter(|l| l.contains("\"type\":\"epoch\"")).map(|l| serde_json::from_str(l).unwrap()).collect();
    let last = &epochs[epochs.len() - 1];
    (epochs[0]["loss"].as_f64().unwrap(), last["loss"].as_f64().unwrap(), last["z_std"].as_f64().unwrap())
}

/// Every epoch's mean loss, from a run's metrics.jsonl.
pub fn epoch_losses(dir: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .filter(|l| l.contains("\"type\":\"epoch\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect()
}
