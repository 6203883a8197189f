//! The commands behind the CLI (train, eval knn / linear, embed, export, plot), as library
//! functions so tests call exactly what users run. Backend choice is a runtime string; the
//! `with_backend!` macro picks the concrete backend type.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::backend::Backend;
use crate::checkpoint::{WeightFile, export_backbone};
use crate::config::Config;
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::eval::linear::{LinearProbeConfig, train_linear_probe};
use crate::eval::metrics::{Metrics, classification_metrics, softmax_rows};
use crate::eval::{features, knn};
use crate::models::Backbone;
use crate::nn::ParamStore;
use crate::tensor::DType;

/// Runs `$body` with `$b` bound to the backend named by `$name`, computing convolutions, matmuls
/// and attention in `$precision` (a `Precision`; the WebGPU backend refuses bf16).
#[macro_export]
macro_rules! with_backend {
    ($name:expr, $threads:expr, $device:expr, $precision:expr, |$b:ident| $body:expr) => {{
        let device: Option<usize> = $device;
        let precision: $crate::backend::Precision = $precision;
        match $name {
            "cpu" => {
                let $b = $crate::backend::cpu::CpuBackend::new($threads)?.with_precision(precision);
                $body
            }
            // SSL_ENGINE_TF32=1 runs matmul and convolutions on TF32 tensor cores.
            "cuda" => {
                let tf32 = std::env::var("SSL_ENGINE_TF32").is_ok_and(|v| v == "1");
                let $b = $crate::backend::cuda::CudaBackend::new(device.unwrap_or(0))?.with_tf32(tf32).with_precision(precision);
                $body
            }
            #[cfg(feature = "wgpu")]
            "wgpu" if precision == $crate::backend::Precision::Bf16 => Err($crate::Error::Config(
                "precision \"bf16\" needs the cpu or cuda backend: the WebGPU backend computes in FP32 only (use --precision fp32)".into(),
            )),
            #[cfg(feature = "wgpu")]
            "wgpu" => {
                let $b = $crate::backend::wgpu::WgpuBackend::new(device)?;
                eprintln!("wgpu adapter: {}", $crate::backend::Backend::name(&$b));
                $body
            }
            other => Err($crate::Error::Config(format!(
                "backend {other:?} is not available in this build of ssl-engine (available: cpu, cuda{})",
                if cfg!(feature = "wgpu") { ", wgpu" } else { "" }
            ))),
        }
    }};
}

/// A data path for one split: `<path>/train` or `<path>/test` when that folder exists, so both
/// `data/cifar10-demo` and `data/cifar10-demo/train` work; CIFAR binary and IDX folders pick
/// their split files themselves.
pub fn split_path(path: &Path, split: Split) -> PathBuf {
    let sub = path.join(match split {
        Split::Train => "train",
        Split::Test => "test",
    });
    if sub.is_dir() { sub } else { path.to_path_buf() }
}

/// A backbone with the weights of a checkpoint or a PyTorch-named backbone file.
pub struct LoadedBackbone<B: Backend> {
    pub ps: ParamStore<B>,
    pub backbone: Backbone,
}

/// Loads the backbone from our checkpoint (`backbone.*`) or a plain torchvision/timm state dict;
/// the architecture is read from the tensor names and shapes unless `model` names a preset.
pub fn load_backbone<B: Backend>(b: &B, path: &Path, model: Option<&str>, image_size: usize) -> Result<LoadedBackbone<B>> {
    let wf = WeightFile::read(path)?;
    let mut cfg = match model {
        Some(m) => {
            let asked = crate::models::BackboneConfig::preset(m, image_size)?;
            // --model only fills in what the file cannot tell; it never overrides what it does.
            if let Ok(held) = wf.infer_backbone()
                && architecture(&held) != architecture(&asked)
            {
                return Err(Error::File {
                    path: path.display().to_string(),
                    msg: format!(
                        "--model {m} is {}, but this file holds {}; leave out --model (the architecture is read from the file) or pass a {m} file",
                        architecture(&asked),
                        architecture(&held)
                    ),
                });
            }
            asked
        }
        None => wf.infer_backbone()?,
    };
    // A classification head in the file is not part of the backbone we evaluate.
    cfg.set_num_classes(None);
    let mut ps = ParamStore::new(b, DType::F32, 0);
    let backbone = cfg.build(&mut ps, "")?;
    let n = wf.load_into(&mut ps, "", wf.backbone_prefix())?;
    if n == 0 {
        return Err(Error::File { path: path.display().to_string(), msg: "no backbone tensors loaded".into() });
    }
    Ok(LoadedBackbone { ps, backbone })
}

/// The architecture as a user names it, for the messages that compare two.
pub fn architecture(c: &crate::models::BackboneConfig) -> String {
    match c {
        crate::models::BackboneConfig::ResNet(r) => {
            format!("ResNet-{} ({} stem, width {})", r.depth, format!("{:?}", r.stem).to_lowercase(), r.width)
        }
        crate::models::BackboneConfig::Vit(v) => format!("a ViT (patch {}, dim {}, depth {}, {} heads)", v.patch, v.dim, v.depth, v.heads),
        crate::models::BackboneConfig::EfficientNet(_) => "EfficientNet-B0".into(),
        crate::models::BackboneConfig::Pit(p) => format!("a PiT (base dims {:?}, patch {}, stride {})", p.base_dims, p.patch, p.stride),
    }
}

/// The "random" baseline: the randomly initialised backbone a training run of this recipe
/// (method, model, seed) starts from, weight for weight, so random vs pretrained compares the
/// same network before and after training.
pub fn random_backbone<B: Backend>(b: &B, cfg: &Config) -> Result<LoadedBackbone<B>> {
    let (start, _method) = crate::train::build_method(b, cfg)?;
    let mut ps = ParamStore::new(b, DType::F32, cfg.seed);
    let backbone = cfg.backbone()?.build(&mut ps, "")?;
    for id in ps.ids().collect::<Vec<_>>() {
        let name = format!("backbone.{}", ps.entry(id).name);
        let from = start.find(&name).ok_or_else(|| Error::Other(format!("random backbone: the method has no tensor {name}")))?;
        ps.set(id, start.get(from).clone())?;
    }
    Ok(LoadedBackbone { ps, backbone })
}

fn feats<B: Backend>(m: &LoadedBackbone<B>, data: &Dataset, cfg: &Config, what: &str) -> Result<Vec<f32>> {
    features::extract(&m.backbone, &m.ps, data, cfg.data.image_size, cfg.augment.mean, cfg.augment.std, cfg.batch_size.min(256), what, true)
}

/// kNN top-1 and full metrics (from the vote scores) of a backbone.
pub fn eval_knn<B: Backend>(m: &LoadedBackbone<B>, train: &Dataset, test: &Dataset, cfg: &Config) -> Result<Metrics> {
    Ok(eval_knn_sets(m, train, &[test], cfg)?.remove(0))
}

/// kNN metrics on each query set, against one bank of `train` features.
pub fn eval_knn_sets<B: Backend>(m: &LoadedBackbone<B>, train: &Dataset, queries: &[&Dataset], cfg: &Config) -> Result<Vec<Metrics>> {
    let dim = m.backbone.feature_dim();
    let mut bank = feats(m, train, cfg, "kNN bank features")?;
    knn::l2_normalize(&mut bank, dim);
    let classes = queries.iter().map(|d| d.classes.len()).fold(train.classes.len(), usize::max);
    queries
        .iter()
        .map(|test| {
            let mut q = feats(m, test, cfg, "kNN query features")?;
            knn::l2_normalize(&mut q, dim);
            let scores = knn::knn_scores(m.ps.backend(), &bank, &train.labels, &q, dim, classes, cfg.monitor.knn_k, cfg.monitor.knn_t)?;
            // Normalised votes behave as probabilities for the AUCs.
            let probs: Vec<f32> = scores
                .chunks(classes)
                .flat_map(|r| {
                    let s: f32 = r.iter().sum::<f32>().max(f32::MIN_POSITIVE);
                    r.iter().map(move |v| v / s).collect::<Vec<_>>()
                })
                .collect();
            Ok(classification_metrics(&probs, &test.labels, classes))
        })
        .collect()
}

/// The first `n` images of each class of `data` (in a seeded random order), for few-label runs.
pub fn labels_per_class(data: &Dataset, n: usize, seed: u64) -> Vec<usize> {
    let mut rng = crate::rng::Rng::new(seed).stream("labels-per-class");
    let order = crate::rng::permutation(data.len(), &mut rng);
    let mut count = vec![0usize; data.classes.len().max(1)];
    let mut keep: Vec<usize> = order
        .into_iter()
        .filter(|&i| {
            let c = data.labels[i] as usize;
            count[c] += 1;
            count[c] <= n
        })
        .collect();
    keep.sort();
    keep
}

#[derive(Debug, Serialize)]
pub struct LinearReport {
    pub metrics: Metrics,
    pub train_images: usize,
    pub final_loss: f64,
}

/// A probe or fine-tuning run measured on several sets: one `Metrics` per set, in order, and
/// the per-epoch (training loss, loss on the first set when tracked).
#[derive(Debug, Serialize)]
pub struct SetsReport {
    pub metrics: Vec<Metrics>,
    pub train_images: usize,
    pub curve: Vec<(f64, Option<f64>)>,
}

impl SetsReport {
    fn first(mut self) -> LinearReport {
        let final_loss = self.curve.last().map_or(f64::NAN, |c| c.0);
        LinearReport { metrics: self.metrics.remove(0), train_images: self.train_images, final_loss }
    }
}

/// Linear probe on frozen features; `subset` restricts the training images (few labels).
pub fn eval_linear<B: Backend>(
    m: &LoadedBackbone<B>,
    train: &Dataset,
    test: &Dataset,
    cfg: &Config,
    probe: &LinearProbeConfig,
    subset: Option<&[usize]>,
    mut on_epoch: impl FnMut(usize, f64),
) -> Result<LinearReport> {
    Ok(eval_linear_sets(m, train, &[test], cfg, probe, subset, |e, l, _| on_epoch(e, l))?.first())
}

/// The linear probe trained once, measured on each of `tests`.
pub fn eval_linear_sets<B: Backend>(
    m: &LoadedBackbone<B>,
    train: &Dataset,
    tests: &[&Dataset],
    cfg: &Config,
    probe: &LinearProbeConfig,
    subset: Option<&[usize]>,
    mut on_epoch: impl FnMut(usize, f64, Option<f64>),
) -> Result<SetsReport> {
    let dim = m.backbone.feature_dim();
    let all = feats(m, train, cfg, "probe training features")?;
    let (x, y): (Vec<f32>, Vec<u32>) = match subset {
        Some(idx) => (
            idx.iter().flat_map(|&i| all[i * dim..(i + 1) * dim].iter().copied()).collect(),
            idx.iter().map(|&i| train.labels[i]).collect(),
        ),
        None => (all, train.labels.clone()),
    };
    let classes = tests.iter().map(|d| d.classes.len()).fold(train.classes.len(), usize::max);
    let mut curve = Vec::new();
    let model = train_linear_probe(m.ps.backend(), &x, &y, dim, classes, probe, |e, l| {
        curve.push((l, None));
        on_epoch(e, l, None)
    })?;
    let metrics = tests
        .iter()
        .map(|test| {
            let logits = model.logits(&feats(m, test, cfg, "probe test features")?)?;
            Ok(classification_metrics(&softmax_rows(&logits, classes), &test.labels, classes))
        })
        .collect::<Result<_>>()?;
    Ok(SetsReport { metrics, train_images: y.len(), curve })
}

/// Few-label fine-tuning of the whole backbone with a linear head (train-mode BN, crop + flip).
pub fn eval_finetune<B: Backend>(
    m: LoadedBackbone<B>,
    train: &Arc<Dataset>,
    test: &Dataset,
    cfg: &Config,
    probe: &LinearProbeConfig,
    subset: Option<&[usize]>,
    mut on_epoch: impl FnMut(usize, f64),
) -> Result<LinearReport> {
    Ok(eval_finetune_sets(m, train, &[test], cfg, probe, subset, false, |e, l, _| on_epoch(e, l))?.first())
}

/// Fine-tuning measured on each of `tests`; with `track_loss`, the loss on tests[0] after every
/// epoch joins the curve (seed 003's train / validation curves).
#[allow(clippy::too_many_arguments)]
pub fn eval_finetune_sets<B: Backend>(
    mut m: LoadedBackbone<B>,
    train: &Arc<Dataset>,
    tests: &[&Dataset],
    cfg: &Config,
    probe: &LinearProbeConfig,
    subset: Option<&[usize]>,
    track_loss: bool,
    mut on_epoch: impl FnMut(usize, f64, Option<f64>),
) -> Result<SetsReport> {
    let data = match subset {
        Some(idx) => Arc::new(train.subset(idx)),
        None => train.clone(),
    };
    let n = data.len();
    let classes = tests.iter().map(|d| d.classes.len()).fold(train.classes.len(), usize::max);
    let aug = crate::eval::finetune::finetune_augment(cfg.augment.mean, cfg.augment.std);
    let mut curve = Vec::new();
    let logits =
        crate::eval::finetune::finetune(&m.backbone, &mut m.ps, data, tests, cfg.data.image_size, aug, probe, track_loss, |e, l, v| {
            curve.push((l, v));
            on_epoch(e, l, v)
        })?;
    let metrics = logits.iter().zip(tests).map(|(lg, t)| classification_metrics(&softmax_rows(lg, classes), &t.labels, classes)).collect();
    Ok(SetsReport { metrics, train_images: n, curve })
}

/// Writes a float32 [rows, cols] array as NumPy .npy (version 1.0).
pub fn write_npy_f32(path: &Path, data: &[f32], rows: usize, cols: usize) -> Result<()> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(path, "<f4", &format!("({rows}, {cols})"), &bytes)
}

/// Writes an int64 [n] array as .npy.
pub fn write_npy_i64(path: &Path, data: &[i64]) -> Result<()> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(path, "<i8", &format!("({},)", data.len()), &bytes)
}

fn write_npy(path: &Path, descr: &str, shape: &str, body: &[u8]) -> Result<()> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    let pad = 64 - (10 + header.len() + 1) % 64;
    header.push_str(&" ".repeat(pad % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    crate::checkpoint::write_atomic(path, &out)
}

/// Backbone features of every image (sorted walk: class folders by name, files by name) with
/// labels, as `<out>` (features) and `<out stem>_labels.npy`.
pub fn embed<B: Backend>(m: &LoadedBackbone<B>, data: &Dataset, cfg: &Config, out: &Path) -> Result<(PathBuf, PathBuf)> {
    let dim = m.backbone.feature_dim();
    let f = feats(m, data, cfg, "embed")?;
    write_npy_f32(out, &f, data.len(), dim)?;
    let stem = out.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "features".into());
    let labels_path = out.with_file_name(format!("{stem}_labels.npy"));
    write_npy_i64(&labels_path, &data.labels.iter().map(|&l| l as i64).collect::<Vec<_>>())?;
    Ok((out.to_path_buf(), labels_path))
}

/// Exports the backbone of a training checkpoint with torchvision / timm names.
pub fn export<B: Backend>(b: &B, checkpoint: &Path, out: &Path) -> Result<usize> {
    let m = load_backbone(b, checkpoint, None, 32)?;
    export_backbone(&m.ps, out, "")
}

/// Loads a split and returns it behind an Arc (the loader shares it with its workers).
pub fn load(path: &Path, split: Split, cfg: &Config) -> Result<Arc<Dataset>> {
    Ok(Arc::new(crate::train::load_split(&split_path(path, split), split, cfg)?))
}
