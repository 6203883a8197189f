//! Run configuration: a TOML recipe (configs/*.toml) plus `--set key=value` overrides.
//! Unknown keys and bad values are errors that name the key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::eval::linear::LinearProbeConfig;
use crate::eval::summary::ReportConfig;
use crate::models::BackboneConfig;
use crate::optim::{LarsConfig, OptimizerKind};
use crate::ssl::barlow::BarlowConfig;
use crate::ssl::byol::ByolConfig;
use crate::ssl::dino::DinoConfig;
use crate::ssl::mocov2plus::MocoV2PlusConfig;
use crate::ssl::mocov3::MocoV3Config;
use crate::ssl::supcon::SupConConfig;
use crate::ssl::swav::SwavConfig;
use crate::ssl::vicreg::VicregConfig;
use crate::ssl::simclr::SimClrConfig;
use crate::ssl::simsiam::SimSiamConfig;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The run directory: checkpoints, metrics.jsonl, plots.
    pub out: PathBuf,
    pub method: String,
    /// A backbone preset (resnet18-cifar, resnet50, vit-tiny, ...).
    pub model: String,
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    /// cpu (wgpu and cuda where built and available).
    pub backend: String,
    /// "fp32", or "bf16": convolutions, matmuls and attention take bfloat16 operands and give
    /// bfloat16 results (FP32 accumulation), as PyTorch's bf16 autocast; weights, optimiser
    /// state, batch-norm statistics, losses and softmax stay FP32, and so do checkpoints.
    /// The cpu backend is the reference; wgpu refuses bf16.
    pub precision: String,
    /// CPU threads; 0 = every core.
    pub threads: usize,
    /// Stop after this many optimiser steps in total (quick checks); none = run every epoch.
    pub max_steps: Option<usize>,
    /// Steps with a non-finite loss that may be skipped (no update, batch-norm statistics
    /// restored) before the run stops; 0 = stop at the first (exit code 3).
    pub skip_nonfinite: usize,
    /// On the cuda backend, replay each step's forward and backward as one CUDA graph
    /// (recorded after a warm-up step; batches of other shapes run eagerly). Only for methods
    /// whose forward keeps no per-step state (SimSiam), and not with skip_nonfinite.
    pub cuda_graph: bool,
    pub data: DataConfig,
    pub model_opts: ModelOpts,
    pub augment: AugmentToml,
    pub simsiam: SimSiamConfig,
    pub simclr: SimClrConfig,
    pub byol: ByolConfig,
    pub supcon: SupConConfig,
    pub swav: SwavConfig,
    pub mocov2plus: MocoV2PlusConfig,
    pub mocov3: MocoV3Config,
    pub dino: DinoConfig,
    pub barlow: BarlowConfig,
    pub vicreg: VicregConfig,
    pub optim: OptimConfig,
    pub monitor: MonitorConfig,
    pub checkpoint: CheckpointConfig,
    pub linear: LinearProbeConfig,
    pub report: ReportConfig,
    /// `ssl-engine study`: starting points, protocols, the validation split.
    pub study: crate::study::StudyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            out: PathBuf::from("runs/simsiam"),
            method: "simsiam".into(),
            model: "resnet18-cifar".into(),
            seed: 0,
            epochs: 800,
            batch_size: 512,
            backend: "cpu".into(),
            precision: "fp32".into(),
            threads: 0,
            max_steps: None,
            skip_nonfinite: 0,
            cuda_graph: true,
            data: DataConfig::default(),
            model_opts: ModelOpts::default(),
            augment: AugmentToml::default(),
            simsiam: SimSiamConfig::default(),
            simclr: SimClrConfig::default(),
            byol: ByolConfig::default(),
            supcon: SupConConfig::default(),
            swav: SwavConfig::default(),
            mocov2plus: MocoV2PlusConfig::default(),
            mocov3: MocoV3Config::default(),
            dino: DinoConfig::default(),
            barlow: BarlowConfig::default(),
            vicreg: VicregConfig::default(),
            optim: OptimConfig::default(),
            monitor: MonitorConfig::default(),
            checkpoint: CheckpointConfig::default(),
            linear: LinearProbeConfig::default(),
            report: ReportConfig::default(),
            study: crate::study::StudyConfig::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Training images: an image folder (<root>/<class>/*.jpg|png), a CIFAR binary folder or
    /// file, or an IDX folder (MNIST / Fashion-MNIST).
    pub path: PathBuf,
    /// Test images for the kNN monitor (same formats); none disables the monitor.
    pub test_path: Option<PathBuf>,
    /// The model's input: augmented views (and evaluation images) are image_size x image_size.
    pub image_size: usize,
    /// Image folders keep their images at their stored size (augmentation crops from the
    /// original, evaluation resizes to image_size / 0.875 and centre-crops, as torchvision's
    /// ImageNet protocol); `true` resizes them to image_size x image_size once, on load (the
    /// shorter side, then the centre), to save memory and time. Binary formats (CIFAR, IDX,
    /// STL-10) are always resized on load.
    pub resize_on_load: bool,
    /// With stored sizes: the longer side is capped at this many pixels on load (memory).
    pub max_side: Option<usize>,
    /// "ram": image folders are decoded once, at load, and held in memory. "none": only the file
    /// list is kept (each header checked at load) and the loader's workers decode every image
    /// when a batch needs it, as torchvision does: for datasets larger than memory. The batches
    /// are the same either way. Binary formats (CIFAR, IDX, STL-10) are always held in memory.
    pub cache: String,
    /// Loader threads; 0 = every core.
    pub workers: usize,
    /// Batches prepared ahead of the training step.
    pub prefetch: usize,
    /// "skip" (count and report undecodable images) or "fail" (stop, naming the file).
    pub on_corrupt: String,
    /// Use at most this many images per class (quick runs).
    pub limit_per_class: Option<usize>,
    /// The largest width x height an image file may declare (Pillow's limit, 89,478,485 pixels):
    /// a larger one is refused before any pixel buffer exists (a decompression bomb).
    pub max_pixels: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            path: PathBuf::from("data/cifar10-demo/train"),
            test_path: Some(PathBuf::from("data/cifar10-demo/test")),
            image_size: 32,
            resize_on_load: false,
            max_side: None,
            cache: "ram".into(),
            workers: 0,
            prefetch: 4,
            on_corrupt: "skip".into(),
            limit_per_class: None,
            max_pixels: 89_478_485,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelOpts {
    /// ResNet: channels of the first stage (64 in torchvision); smaller is faster.
    pub width: Option<usize>,
    /// ResNet: start each block's last BN gamma at 0 (the SimSiam recipe).
    pub zero_init_residual: bool,
    /// ViT: patch size (default 4 at 32x32, 16 above 64x64).
    pub patch: Option<usize>,
}

impl Default for ModelOpts {
    fn default() -> Self {
        ModelOpts { width: None, zero_init_residual: true, patch: None }
    }
}

/// The augmentation recipe in TOML (defaults: the SimSiam CIFAR-10 recipe of REFERENCE.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentToml {
    pub crop_scale: [f32; 2],
    pub crop_ratio: [f32; 2],
    pub flip_p: f32,
    /// brightness, contrast, saturation, hue
    pub jitter: [f32; 4],
    pub jitter_p: f32,
    pub gray_p: f32,
    pub blur_p: f32,
    pub blur_sigma: [f32; 2],
    pub solarize_p: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for AugmentToml {
    fn default() -> Self {
        AugmentToml {
            crop_scale: [0.2, 1.0],
            crop_ratio: [3.0 / 4.0, 4.0 / 3.0],
            flip_p: 0.5,
            jitter: [0.4, 0.4, 0.4, 0.1],
            jitter_p: 0.8,
            gray_p: 0.2,
            blur_p: 0.0,
            blur_sigma: [0.1, 2.0],
            solarize_p: 0.0,
            mean: [0.4914, 0.4822, 0.4465],
            std: [0.2470, 0.2435, 0.2616],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// "sgd" (SimSiam's recipe) or "lars" (solo-learn's recipes for the other methods).
    pub optimizer: OptimizerKind,
    /// Learning rate at batch 256: lr = base_lr x batch_size / 256 (paper: 0.03 -> 0.06 at 512).
    pub base_lr: f64,
    pub momentum: f32,
    /// Applied to every parameter, BN included (the SimSiam recipe).
    pub weight_decay: f32,
    pub warmup_epochs: usize,
    /// false: use base_lr as the learning rate whatever the batch size (lightly's choice).
    pub scale_lr_with_batch: bool,
    /// `[optim.lars]`: trust coefficient, clipping and exclusions, when optimizer = "lars".
    pub lars: LarsConfig,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            optimizer: OptimizerKind::Sgd,
            base_lr: 0.03,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup_epochs: 0,
            scale_lr_with_batch: true,
            lars: LarsConfig::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// kNN monitor every N epochs (0 = only at the end).
    pub knn_every: usize,
    pub knn_k: usize,
    pub knn_t: f32,
    /// Read the loss back and log it every N steps (also when the NaN check runs).
    pub log_every: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig { knn_every: 1, knn_k: 200, knn_t: 0.1, log_every: 10 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Save every N epochs (and always at the end and on Ctrl-C).
    pub every: usize,
    /// Keep this many epoch checkpoints besides last.safetensors.
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig { every: 10, keep: 2 }
    }
}

/// Sets `a.b.c = value` in a TOML table; the value is parsed as TOML (numbers, booleans,
/// arrays) and taken as a string when it does not parse.
fn set_dotted(table: &mut toml::Table, key: &str, value: &str) -> Result<()> {
    let parsed: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(value.into())),
        Err(_) => toml::Value::String(value.into()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| Error::Config(format!("--set {key}: {p} is not a table")))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), parsed);
    Ok(())
}

impl Config {
    /// `precision` as a `Precision` (validated at load; FP32 if somehow not).
    pub fn precision(&self) -> crate::backend::Precision {
        crate::backend::Precision::parse(&self.precision).unwrap_or_default()
    }
    /// Reads a recipe (or the defaults when `path` is None) and applies `key=value` overrides.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let mut table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::Config(format!("{}: {e}", p.display())))?;
                toml::from_str::<toml::Table>(&text).map_err(|e| Error::Config(format!("{}: {}", p.display(), e.message())))?
            }
            None => toml::Table::new(),
        };
        for o in overrides {
            let (k, v) = o.split_once('=').ok_or_else(|| Error::Config(format!("--set {o}: expected key=value")))?;
            set_dotted(&mut table, k.trim(), v.trim())?;
        }
        let where_ = path.map(|p| p.display().to_string()).unwrap_or_else(|| "--set".into());
        let mut cfg: Config = Config::deserialize(toml::Value::Table(table))
            .map_err(|e| Error::Config(format!("{where_}: {}", e.to_string().trim().replace('\n', " "))))?;
        // An empty test path ("") switches the kNN monitor off.
        if cfg.data.test_path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            cfg.data.test_path = None;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, m: &str| Err(Error::Config(format!("{k}: {m}")));
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1");
        }
        if self.batch_size < 2 {
            return bad("batch_size", "must be at least 2 (batch norm needs two samples)");
        }
        if !crate::ssl::is_method(&self.method) {
            return bad("method", &format!("unknown method {:?}; available: {}", self.method, crate::ssl::method_names()));
        }
        if !["cpu", "wgpu", "cuda"].contains(&self.backend.as_str()) {
            return bad("backend", &format!("unknown backend {:?}; choose cpu, wgpu or cuda", self.backend));
        }
        if !(self.optim.base_lr > 0.0 && self.optim.base_lr.is_finite()) {
            return bad("optim.base_lr", "must be a positive number");
        }
        if !(0.0..1.0).contains(&self.optim.momentum) {
            return bad("optim.momentum", "must be in [0, 1)");
        }
        let lars = &self.optim.lars;
        if !(lars.eta > 0.0 && lars.eta.is_finite() && lars.eps >= 0.0 && lars.eps.is_finite()) {
            return bad("optim.lars", "eta must be a positive number and eps a non-negative one");
        }
        if self.data.image_size < 8 {
            return bad("data.image_size", "must be at least 8");
        }
        if !["skip", "fail"].contains(&self.data.on_corrupt.as_str()) {
            return bad("data.on_corrupt", "must be \"skip\" or \"fail\"");
        }
        if crate::backend::Precision::parse(&self.precision).is_err() {
            return bad("precision", "must be \"fp32\" or \"bf16\"");
        }
        if !["ram", "none"].contains(&self.data.cache.as_str()) {
            return bad("data.cache", "must be \"ram\" (decode once, hold in memory) or \"none\" (decode per batch)");
        }
        if self.monitor.log_every == 0 || self.monitor.knn_k == 0 || self.monitor.knn_t <= 0.0 {
            return bad("monitor", "log_every and knn_k must be positive, knn_t > 0");
        }
        let a = &self.augment;
        if !(0.0 < a.crop_scale[0] && a.crop_scale[0] <= a.crop_scale[1] && a.crop_scale[1] <= 1.0) {
            return bad("augment.crop_scale", "needs 0 < min <= max <= 1");
        }
        if a.std.iter().any(|&s| s <= 0.0) {
            return bad("augment.std", "must be positive");
        }
        self.backbone()?;
        Ok(())
    }

    /// The backbone the recipe asks for.
    pub fn backbone(&self) -> Result<BackboneConfig> {
        let mut b = BackboneConfig::preset(&self.model, self.data.image_size).map_err(|e| Error::Config(format!("model: {e}")))?;
        match &mut b {
            BackboneConfig::ResNet(r) => {
                if let Some(w) = self.model_opts.width {
                    r.width = w;
                }
                r.zero_init_residual = self.model_opts.zero_init_residual;
            }
            BackboneConfig::Vit(v) => {
                if let Some(p) = self.model_opts.patch {
                    v.patch = p;
                }
            }
            BackboneConfig::EfficientNet(_) | BackboneConfig::Pit(_) => {}
        }
        Ok(b)
    }

    /// The learning rate before the schedule: base_lr x batch/256 unless scaling is off.
    pub fn peak_lr(&self) -> f64 {
        if self.optim.scale_lr_with_batch { self.optim.base_lr * self.batch_size as f64 / 256.0 } else { self.optim.base_lr }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}
