//! Run configuration: a TOML recipe (configs/*.toml) plus `--set key=value` overrides.
//! Unknown keys and bad values are errors that name the key. Settings with a fixed set of values
//! (backend, precision, data.cache, data.on_corrupt, the optimisers) are enums, parsed here once.
//! Each method's table (`[simclr]`, `[dino]`, ...) belongs to the method: the config keeps it as
//! TOML and hands it to the method's registry row, which parses and checks it when the recipe is
//! read. So the config names no method, and a new method adds no line here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::data::AugmentConfig;
use crate::error::{Error, Result};
use crate::eval::linear::LinearProbeConfig;
use crate::models::BackboneConfig;
use crate::optim::{LarsConfig, OptimizerKind};
use crate::ssl::{self, MethodRecipe};
use crate::study::config::StudyConfig;

pub mod help;

pub use crate::data::OnCorrupt;
pub use crate::dtype::Precision;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The run directory: checkpoints, metrics.jsonl, plots.
    pub out: PathBuf,
    /// The self-supervised method: one of the registry's names (`ssl-engine train --help` lists them).
    pub method: String,
    /// A backbone preset (resnet18-cifar, resnet50, vit-tiny, ...).
    pub model: String,
    /// Seeds the initialisation, the data order and every augmentation draw: the same seed gives the same run.
    pub seed: u64,
    /// Passes over the training images; the learning-rate schedule spans them all.
    pub epochs: usize,
    /// Images per step (each seen as the method's views); the learning rate scales with it (optim.scale_lr_with_batch).
    pub batch_size: usize,
    /// cpu (wgpu and cuda where built and available).
    pub backend: BackendKind,
    /// "fp32", or "bf16": convolutions, matmuls and attention take bfloat16 operands and give
    /// bfloat16 results (FP32 accumulation), as PyTorch's bf16 autocast; weights, optimiser
    /// state, batch-norm statistics, losses and softmax stay FP32, and so do checkpoints.
    /// The cpu backend is the reference; wgpu refuses bf16.
    pub precision: Precision,
    /// CPU threads; 0 = every core.
    pub threads: usize,
    /// Stop after this many optimiser steps in total (quick checks); none = run every epoch.
    pub max_steps: Option<usize>,
    /// Steps with a non-finite loss that may be skipped (no update, batch-norm statistics
    /// restored) before the run stops; 0 = stop at the first (exit code 3).
    pub skip_nonfinite: usize,
    /// Replay each step's forward and backward as one recorded graph (a CUDA graph on cuda)
    /// (recorded after a warm-up step; batches of other shapes run eagerly). Only for methods
    /// whose forward keeps no per-step state (SimSiam), and not with skip_nonfinite.
    /// Called `cuda_graph` before; that key is still read, with a deprecation line.
    pub step_graph: bool,
    /// Data parallel (several ranks): batch norm computes its statistics over the global batch,
    /// forward and backward (PyTorch's SyncBatchNorm). Off: each rank normalises its own rows, as
    /// PyTorch DDP does, and rank 0's running statistics are the run's. One rank: no effect.
    pub sync_bn: bool,
    pub data: DataConfig,
    pub model_opts: ModelOpts,
    /// The augmentation recipe (`data::AugmentConfig`: the same struct the pipeline runs).
    pub augment: AugmentConfig,
    pub optim: OptimConfig,
    pub monitor: MonitorConfig,
    pub checkpoint: CheckpointConfig,
    pub linear: LinearProbeConfig,
    pub report: ReportConfig,
    /// `ssl-engine study`: starting points, protocols, the validation split.
    pub study: StudyConfig,
    /// Each method's own table (`[simclr]`, `[dino]`, ...) by method name: checked by the
    /// method's registry row when the recipe is read, with every default filled in. Not a serde
    /// field: `load` takes these tables out of the recipe, and `to_toml` writes them back.
    #[serde(skip)]
    pub method_tables: BTreeMap<String, toml::Table>,
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
            backend: BackendKind::Cpu,
            precision: Precision::Fp32,
            threads: 0,
            max_steps: None,
            skip_nonfinite: 0,
            step_graph: true,
            sync_bn: false,
            data: DataConfig::default(),
            model_opts: ModelOpts::default(),
            augment: AugmentConfig::default(),
            optim: OptimConfig::default(),
            monitor: MonitorConfig::default(),
            checkpoint: CheckpointConfig::default(),
            linear: LinearProbeConfig::default(),
            report: ReportConfig::default(),
            study: StudyConfig::default(),
            method_tables: BTreeMap::new(),
        }
    }
}

/// `backend`: the device a run computes on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Cpu,
    Wgpu,
    Cuda,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `--backend cuda`: the same names the recipe takes.
impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        crate::error::parse_setting("backend", s)
    }
}

/// `data.cache`: whether image folders are decoded once and held in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataCache {
    /// Decode every image once, at load, and hold the pixels in memory.
    #[default]
    Ram,
    /// Keep only the file list; the loader's workers decode each image when a batch needs it.
    None,
}

impl DataCache {
    /// Whether the loader streams (decodes per batch) rather than holding pixels.
    pub fn streams(self) -> bool {
        self == DataCache::None
    }
}

/// `[report]`: what a finished run measures besides its own monitors.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// After training, evaluate the random-init and the pretrained backbone (kNN with the
    /// monitor's k and T, and the `[linear]` probe) on the test set, and write summary.md.
    pub compare_random: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    pub cache: DataCache,
    /// Loader threads; 0 = every core.
    pub workers: usize,
    /// Batches prepared ahead of the training step.
    pub prefetch: usize,
    /// "skip" (count and report undecodable images) or "fail" (stop, naming the file).
    pub on_corrupt: OnCorrupt,
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
            cache: DataCache::Ram,
            workers: 0,
            prefetch: 4,
            on_corrupt: OnCorrupt::Skip,
            limit_per_class: None,
            max_pixels: 89_478_485,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ModelOpts {
    /// ResNet: channels of the first stage (64 in torchvision); smaller is faster.
    pub width: Option<usize>,
    /// ResNet: start each block's last BN gamma at 0 (the SimSiam recipe).
    pub zero_init_residual: bool,
    /// ViT: patch size (default 4 at 32x32, 16 above 64x64).
    pub patch: Option<usize>,
    /// ViT: a class token in front of the patches (timm, MAE). false: none, and the features are
    /// the mean of the patch tokens (I-JEPA's encoder, which the ijepa method requires).
    pub class_token: bool,
}

impl Default for ModelOpts {
    fn default() -> Self {
        ModelOpts { width: None, zero_init_residual: true, patch: None, class_token: true }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// "sgd" (SimSiam's recipe), "lars" (solo-learn's recipes for the other methods) or "adamw"
    /// (torch.optim.AdamW: decoupled weight decay; betas and eps below).
    pub optimizer: OptimizerKind,
    /// Learning rate at batch 256: lr = base_lr x batch_size / 256 (paper: 0.03 -> 0.06 at 512).
    pub base_lr: f64,
    /// SGD / LARS momentum.
    pub momentum: f32,
    /// Applied to every parameter, BN included (the SimSiam recipe).
    pub weight_decay: f32,
    /// Epochs of linear learning-rate warm-up before the cosine decay.
    pub warmup_epochs: usize,
    /// Where the warm-up starts, as a fraction of the peak learning rate (I-JEPA: 0.2).
    pub warmup_start_ratio: f64,
    /// Where the cosine ends, as a fraction of the peak learning rate (I-JEPA: 1e-3).
    pub final_lr_ratio: f64,
    /// When set, the weight decay follows a cosine from `weight_decay` to this value over the run
    /// (I-JEPA: 0.04 -> 0.4); else it stays at `weight_decay`.
    pub final_weight_decay: Option<f32>,
    /// false: use base_lr as the learning rate whatever the batch size (lightly's choice).
    pub scale_lr_with_batch: bool,
    /// `[optim.lars]`: trust coefficient, clipping and exclusions, when optimizer = "lars".
    pub lars: LarsConfig,
    /// AdamW's decay rates of the first and second moments (torch's default; MAE uses [0.9, 0.95]).
    pub betas: [f64; 2],
    /// AdamW's term added to the denominator sqrt(v_hat).
    pub eps: f64,
}

impl OptimConfig {
    /// The optimiser `[optim]` names, with its settings (AdamW's betas and eps included).
    pub fn optimizer<B: crate::backend::Backend>(&self) -> Result<Box<dyn crate::optim::Optimizer<B>>> {
        Ok(match self.optimizer {
            OptimizerKind::AdamW => Box::new(crate::optim::AdamW::new(self.betas, self.eps)?),
            kind => crate::optim::build(kind, self.momentum, &self.lars),
        })
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            optimizer: OptimizerKind::Sgd,
            base_lr: 0.03,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup_epochs: 0,
            warmup_start_ratio: 0.0,
            final_lr_ratio: 0.0,
            final_weight_decay: None,
            scale_lr_with_batch: true,
            lars: LarsConfig::default(),
            betas: crate::optim::DEFAULT_BETAS,
            eps: crate::optim::DEFAULT_EPS,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// kNN monitor every N epochs (0 = only at the end).
    pub knn_every: usize,
    /// Neighbours that vote in the kNN monitor (and `eval knn` by default).
    pub knn_k: usize,
    /// Temperature T of the kNN monitor's exp(similarity / T) vote weights.
    pub knn_t: f32,
    /// Read the loss back and log it every N steps (also when the NaN check runs).
    pub log_every: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig { knn_every: 1, knn_k: 200, knn_t: 0.1, log_every: 10 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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

/// A `--set` value as TOML (numbers, booleans, arrays), or a string when it does not parse.
fn parse_set_value(value: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(value.into())),
        Err(_) => toml::Value::String(value.into()),
    }
}

/// Sets `a.b.c = value` in a TOML table, creating the tables on the way.
fn insert_dotted(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| Error::Config(format!("{key}: {p} is not a table")))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// The value at `a.b.c` of a TOML table, if any.
pub fn get_dotted<'t>(table: &'t toml::Table, key: &str) -> Option<&'t toml::Value> {
    let (head, rest) = match key.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (key, None),
    };
    match (table.get(head)?, rest) {
        (v, None) => Some(v),
        (toml::Value::Table(t), Some(r)) => get_dotted(t, r),
        _ => None,
    }
}

/// Every leaf key of a TOML table, dotted (`data.image_size`); arrays are leaves.
pub fn leaf_keys(table: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    leaves(table, "", &mut out);
    out.into_iter().map(|(k, _)| k).collect()
}

/// Every leaf of a TOML table as (dotted key, value); arrays are leaves.
fn leaves(table: &toml::Table, prefix: &str, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(t) => leaves(t, &key, out),
            v => out.push((key, v.clone())),
        }
    }
}

/// A setting the user named, in the recipe file or with `--set`, and where.
#[derive(Clone, Debug, PartialEq)]
pub struct Explicit {
    pub key: String,
    pub value: toml::Value,
    /// The recipe file's path, or `--set key=value`.
    pub source: String,
}

/// What the user wrote: the recipe file's table and the `--set` overrides, in order. A config is
/// built by laying them over a base (the defaults, or a checkpoint's recipe); an error is
/// blamed on the layer that causes it (`configs/x.toml: ...`, `--set epochs=0: ...`).
struct Layers<'a> {
    file: Option<(&'a Path, toml::Table)>,
    sets: Vec<(String, String, toml::Value)>,
}

impl<'a> Layers<'a> {
    fn read(path: Option<&'a Path>, overrides: &[String]) -> Result<Self> {
        let file = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::Config(format!("--config {}: {e}", p.display())))?;
                Some((p, toml::from_str::<toml::Table>(&text).map_err(|e| Error::Config(format!("{}: {}", p.display(), e.message())))?))
            }
            None => None,
        };
        let mut sets = Vec::new();
        for o in overrides {
            let (k, v) = o.split_once('=').ok_or_else(|| Error::Config(format!("--set {o}: expected key=value")))?;
            if k.trim().is_empty() || k.split('.').any(|p| p.trim().is_empty()) {
                return Err(Error::Config(format!("--set {o}: the key {k:?} is not a dotted name such as data.image_size")));
            }
            sets.push((o.clone(), k.trim().to_string(), parse_set_value(v.trim())));
        }
        Ok(Layers { file, sets })
    }

    /// The keys the layers set, each with the last layer that set it.
    fn explicit(&self) -> Vec<Explicit> {
        let mut out: Vec<Explicit> = Vec::new();
        let mut put = |key: String, value: toml::Value, source: String| {
            out.retain(|e| e.key != key);
            out.push(Explicit { key, value, source });
        };
        if let Some((p, t)) = &self.file {
            let mut l = Vec::new();
            leaves(t, "", &mut l);
            for (k, v) in l {
                put(k, v, p.display().to_string());
            }
        }
        for (o, k, v) in &self.sets {
            let mut l = Vec::new();
            match v {
                toml::Value::Table(t) => leaves(t, k, &mut l),
                v => l.push((k.clone(), v.clone())),
            }
            for (k, v) in l {
                put(k, v, format!("--set {o}"));
            }
        }
        out
    }

    /// `base` with the file and the first `n_sets` overrides laid over it, as a checked config.
    fn build(&self, base: &toml::Table, n_sets: usize, warn: bool) -> Result<Config> {
        let mut table = base.clone();
        if let Some((_, t)) = &self.file {
            merge(&mut table, t);
        }
        for (_, k, v) in &self.sets[..n_sets] {
            insert_dotted(&mut table, k, v.clone())?;
        }
        let where_ = match (&self.file, n_sets) {
            (_, n) if n > 0 => "--set".to_string(),
            (Some((p, _)), _) => p.display().to_string(),
            (None, _) => "the recipe".to_string(),
        };
        let mut cfg = Config::from_table(table, &where_, warn)?;
        cfg.complete_method_tables()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config of every layer over `base`; an error names the layer that causes it: the file
    /// when it fails alone, else the first `--set` that makes it fail.
    fn config(&self, base: &toml::Table) -> Result<Config> {
        let all = self.sets.len();
        let e = match self.build(base, all, true) {
            Ok(cfg) => return Ok(cfg),
            Err(e) => e,
        };
        let msg = |e: Error| match e {
            Error::Config(m) => m,
            e => e.to_string(),
        };
        if let Some((p, _)) = &self.file
            && let Err(e0) = self.build(base, 0, false)
        {
            return Err(Error::Config(format!("{}: {}", p.display(), msg(e0))));
        }
        for n in 1..=all {
            if let Err(en) = self.build(base, n, false) {
                return Err(Error::Config(format!("--set {}: {}", self.sets[n - 1].0, msg(en))));
            }
        }
        Err(e)
    }
}

/// Lays `top` over `base`: tables merge key by key, any other value replaces the base's.
fn merge(base: &mut toml::Table, top: &toml::Table) {
    for (k, v) in top {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// A method table the recipe leaves out: every default.
static NO_SETTINGS: LazyLock<toml::Table> = LazyLock::new(toml::Table::new);

/// Old names of keys, still read: (old, new). Each use prints one deprecation line.
const RENAMED: &[(&str, &str)] = &[("cuda_graph", "step_graph")];

impl Config {
    /// Reads a recipe (or the defaults when `path` is None) and applies `key=value` overrides.
    /// Errors name the file, or the `--set` that causes them.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        Layers::read(path, overrides)?.config(&toml::Table::new())
    }

    /// `load` laid over `base` (a checkpoint's recipe): the keys the file or `--set` name replace
    /// the base's, the others keep the base's values. Also returns those keys.
    pub fn load_over(base: &Config, path: Option<&Path>, overrides: &[String]) -> Result<(Self, Vec<Explicit>)> {
        let layers = Layers::read(path, overrides)?;
        let base_table: toml::Table = toml::from_str(&base.to_toml()).map_err(|e| Error::Config(format!("stored recipe: {}", e.message())))?;
        Ok((layers.config(&base_table)?, layers.explicit()))
    }

    /// Only this config's settings whose (dotted) keys `keep` accepts; every other key takes its
    /// default, as does a kept key this config leaves unset (absent from its table).
    pub fn only(&self, keep: impl Fn(&str) -> bool) -> Result<Config> {
        let mut settings = Vec::new();
        leaves(&self.to_table(), "", &mut settings);
        let mut table = toml::Table::new();
        for (k, v) in settings.into_iter().filter(|(k, _)| keep(k)) {
            insert_dotted(&mut table, &k, v)?;
        }
        Config::from_stored(&toml::to_string(&table).map_err(|e| Error::Config(e.to_string()))?)
    }

    /// The resolved recipe as a TOML table (what `to_toml` writes).
    pub fn to_table(&self) -> toml::Table {
        toml::from_str(&self.to_toml()).unwrap_or_default()
    }

    /// A config a checkpoint stored (`to_toml` of this or an earlier version), as `load` reads a
    /// recipe but without checks or deprecation lines: for comparing a resumed run with it.
    pub fn from_stored(text: &str) -> Result<Self> {
        let table = toml::from_str::<toml::Table>(text).map_err(|e| Error::Config(format!("stored config: {}", e.message())))?;
        Self::from_table(table, "stored config", false).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("stored config: {m}")),
            e => e,
        })
    }

    /// The recipe's table as a config: old key names renamed, each method's table set aside for
    /// the method, the rest deserialised (unknown keys and values are errors naming the key).
    fn from_table(mut table: toml::Table, where_: &str, warn: bool) -> Result<Self> {
        for (old, new) in RENAMED {
            if let Some(v) = table.remove(*old) {
                if table.contains_key(*new) {
                    return Err(Error::Config(format!("both {old} and {new} are set; {old} is the old name of {new}: keep {new}")));
                }
                if warn {
                    eprintln!("warning: {where_}: the config key {old} is now called {new} (the old name still works, for now)");
                }
                table.insert(new.to_string(), v);
            }
        }
        let mut method_tables = BTreeMap::new();
        for m in ssl::methods() {
            match table.remove(m.name) {
                Some(toml::Value::Table(t)) => {
                    method_tables.insert(m.name.to_string(), t);
                }
                Some(other) => {
                    return Err(Error::Config(format!("{}: expected a table of the method's settings, got {other}", m.name)));
                }
                None => {}
            }
        }
        let mut cfg = Config::deserialize(toml::Value::Table(table)).map_err(|e| {
            let msg = e.to_string().trim().replace('\n', " ");
            let hint = if msg.starts_with("unknown field") && !msg.contains(" in `") { format!(" (or a method's table: {})", ssl::method_names()) } else { String::new() };
            Error::Config(format!("{msg}{hint}"))
        })?;
        cfg.method_tables = method_tables;
        // An empty test path ("") switches the kNN monitor off.
        if cfg.data.test_path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            cfg.data.test_path = None;
        }
        Ok(cfg)
    }

    /// Each method table checked by its method and completed with the defaults, plus the table
    /// of the method the run trains when the recipe has none: what `to_toml` (and so every
    /// checkpoint) records.
    fn complete_method_tables(&mut self) -> Result<()> {
        if ssl::is_method(&self.method) && !self.method_tables.contains_key(&self.method) {
            self.method_tables.insert(self.method.clone(), toml::Table::new());
        }
        for (name, table) in self.method_tables.iter_mut() {
            let info = ssl::method(name).ok_or_else(|| Error::Config(format!("{name}: no method of that name")))?;
            *table = (info.settings)(table)?;
        }
        Ok(())
    }

    /// What `ssl::build` needs to build the run's method: its name, its own table, the seed.
    pub fn method_recipe(&self) -> MethodRecipe<'_> {
        MethodRecipe { name: &self.method, table: self.method_tables.get(&self.method).unwrap_or(&NO_SETTINGS), seed: self.seed }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, m: &str| Err(Error::Config(format!("{k}: {m}")));
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1");
        }
        if self.batch_size < 2 {
            return bad("batch_size", "must be at least 2 (batch norm needs two samples)");
        }
        if !ssl::is_method(&self.method) {
            return bad("method", &format!("unknown method {:?}; available: {}", self.method, ssl::method_names()));
        }
        for (name, table) in &self.method_tables {
            let info = ssl::method(name).ok_or_else(|| Error::Config(format!("{name}: no method of that name")))?;
            (info.settings)(table)?;
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
        if crate::optim::check_adamw(self.optim.betas, self.optim.eps).is_err() {
            return bad("optim.betas", "betas must be in [0, 1) and optim.eps a positive number");
        }
        for (key, r) in [("optim.warmup_start_ratio", self.optim.warmup_start_ratio), ("optim.final_lr_ratio", self.optim.final_lr_ratio)] {
            if !(0.0..=1.0).contains(&r) {
                return bad(key, &format!("is a fraction of the peak learning rate: it must lie in [0, 1] (got {r})"));
            }
        }
        if self.optim.final_weight_decay.is_some_and(|w| !(w >= 0.0 && w.is_finite())) {
            return bad("optim.final_weight_decay", "must be a non-negative number");
        }
        if self.data.image_size < 8 {
            return bad("data.image_size", "must be at least 8");
        }
        if self.monitor.log_every == 0 || self.monitor.knn_k == 0 || self.monitor.knn_t <= 0.0 {
            return bad("monitor", "log_every and knn_k must be positive, knn_t > 0");
        }
        // The recipe checks itself; its messages start with the field's name.
        self.augment.validate().map_err(|e| match e {
            Error::Invalid { msg, .. } => Error::Config(format!("augment.{msg}")),
            e => e,
        })?;
        // A ViT cuts the image into whole patches: checked here, before any image is decoded.
        if let BackboneConfig::Vit(v) = self.backbone()?
            && (v.patch == 0 || !self.data.image_size.is_multiple_of(v.patch))
        {
            let fits: Vec<String> = [2, 4, 8, 14, 16, 32].iter().filter(|&&p| self.data.image_size.is_multiple_of(p)).map(|p| p.to_string()).collect();
            return bad(
                "model_opts.patch",
                &format!(
                    "patch {} does not divide data.image_size {} ({} is a ViT: the image is cut into whole patches); patches that divide it: {}",
                    v.patch,
                    self.data.image_size,
                    self.model,
                    if fits.is_empty() { "none of 2, 4, 8, 14, 16, 32".into() } else { fits.join(", ") }
                ),
            );
        }
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
                v.class_token = self.model_opts.class_token;
            }
            BackboneConfig::EfficientNet(_) | BackboneConfig::Pit(_) => {}
        }
        Ok(b)
    }

    /// The run's learning-rate and weight-decay schedules over `total` steps of `per_epoch`.
    pub fn schedule(&self, per_epoch: usize, total: usize) -> crate::optim::schedule::Schedule {
        let o = &self.optim;
        crate::optim::schedule::Schedule {
            peak: self.peak_lr(),
            warmup: o.warmup_epochs * per_epoch,
            total,
            start_ratio: o.warmup_start_ratio,
            final_ratio: o.final_lr_ratio,
            weight_decay: o.weight_decay as f64,
            final_weight_decay: o.final_weight_decay.map(f64::from),
        }
    }

    /// The learning rate before the schedule: base_lr x batch/256 unless scaling is off.
    pub fn peak_lr(&self) -> f64 {
        if self.optim.scale_lr_with_batch { self.optim.base_lr * self.batch_size as f64 / 256.0 } else { self.optim.base_lr }
    }

    /// The whole config as TOML, method tables included: `from_stored` reads it back equal.
    pub fn to_toml(&self) -> String {
        let mut text = toml::to_string(self).unwrap_or_default();
        // TOML has no none: an unset test path is written as "", which `from_table` reads as
        // unset (left out, it would read back as the default's Some).
        if self.data.test_path.is_none()
            && let Ok(mut t) = toml::from_str::<toml::Table>(&text)
            && let Some(toml::Value::Table(data)) = t.get_mut("data")
        {
            data.insert("test_path".into(), toml::Value::String(String::new()));
            text = toml::to_string(&t).unwrap_or(text);
        }
        for (name, table) in &self.method_tables {
            // Written under its name, as the recipe has it: `[dino]`, `[dino.multicrop]`.
            let named = toml::Table::from_iter([(name.clone(), toml::Value::Table(table.clone()))]);
            text.push('\n');
            text.push_str(&toml::to_string(&named).unwrap_or_default());
        }
        text
    }
}
