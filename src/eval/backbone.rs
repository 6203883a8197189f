//! The backbone an evaluation measures: read from our checkpoint or a PyTorch-named file, or
//! the random initialisation a training run of the recipe starts from; and the data it is
//! measured on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::Backend;
use crate::checkpoint::{WeightFile, export_backbone};
use crate::config::Config;
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::models::{Backbone, BackboneConfig};
use crate::nn::ParamStore;
use crate::setup::{build_method, load_split};
use crate::tensor::DType;

/// A backbone with the weights of a checkpoint or a PyTorch-named backbone file.
pub struct LoadedBackbone<B: Backend> {
    pub ps: ParamStore<B>,
    pub backbone: Backbone,
}

/// Loads the backbone from our checkpoint (`backbone.*`) or a plain torchvision/timm state dict;
/// the architecture is read from the tensor names and shapes unless `model` names a preset.
pub fn load_backbone<B: Backend>(b: &B, path: &Path, model: Option<&str>, image_size: usize) -> Result<LoadedBackbone<B>> {
    backbone_of(b, &WeightFile::read(path)?, model, image_size)
}

/// `load_backbone` of a weight file already read.
pub fn backbone_of<B: Backend>(b: &B, wf: &WeightFile, model: Option<&str>, image_size: usize) -> Result<LoadedBackbone<B>> {
    let path = wf.path.as_path();
    let mut cfg = match model {
        Some(m) => {
            let asked = BackboneConfig::preset(m, image_size)?;
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
pub fn architecture(c: &BackboneConfig) -> String {
    match c {
        BackboneConfig::ResNet(r) => {
            format!("ResNet-{} ({} stem, width {})", r.depth, format!("{:?}", r.stem).to_lowercase(), r.width)
        }
        BackboneConfig::Vit(v) => format!("a ViT (patch {}, dim {}, depth {}, {} heads)", v.patch, v.dim, v.depth, v.heads),
        BackboneConfig::EfficientNet(_) => "EfficientNet-B0".into(),
        BackboneConfig::Pit(p) => format!("a PiT (base dims {:?}, patch {}, stride {})", p.base_dims, p.patch, p.stride),
    }
}

/// The "random" baseline: the randomly initialised backbone a training run of this recipe
/// (method, model, seed) starts from, weight for weight, so random vs pretrained compares the
/// same network before and after training.
pub fn random_backbone<B: Backend>(b: &B, cfg: &Config) -> Result<LoadedBackbone<B>> {
    let (start, _method) = build_method(b, cfg)?;
    let mut ps = ParamStore::new(b, DType::F32, cfg.seed);
    let backbone = cfg.backbone()?.build(&mut ps, "")?;
    for id in ps.ids().collect::<Vec<_>>() {
        let name = format!("backbone.{}", ps.entry(id).name);
        let from = start.find(&name).ok_or_else(|| Error::Other(format!("random backbone: the method has no tensor {name}")))?;
        ps.set(id, start.get(from).clone())?;
    }
    Ok(LoadedBackbone { ps, backbone })
}

/// Exports the backbone of a training checkpoint with torchvision / timm names. The recipe the
/// weights were trained with travels in the file's metadata (`RECIPE_KEY`, and timm's
/// `pretrained_cfg`), so an evaluation of the exported file uses the same image size and
/// normalisation as one of the checkpoint.
pub fn export<B: Backend>(b: &B, checkpoint: &Path, out: &Path) -> Result<Exported> {
    let wf = WeightFile::read(checkpoint)?;
    let m = backbone_of(b, &wf, None, 32)?;
    let recipe = stored_recipe(&wf);
    let metadata = recipe.as_ref().map(|cfg| recipe_metadata(cfg, &m.backbone)).unwrap_or_default();
    Ok(Exported { tensors: export_backbone(&m.ps, out, "", metadata)?, recipe })
}

/// What `export` wrote: how many tensors, and the recipe it put in the metadata (none when the
/// checkpoint holds none).
pub struct Exported {
    pub tensors: usize,
    pub recipe: Option<Config>,
}

/// Where the exported file keeps its recipe (the `to_toml` text).
pub const RECIPE_KEY: &str = "ssl_engine_recipe";

/// The metadata an export carries: our whole recipe, and timm's `pretrained_cfg` (input size,
/// mean, std, crop) for other tools.
pub fn recipe_metadata(cfg: &Config, backbone: &crate::models::Backbone) -> Vec<(String, String)> {
    let s = cfg.data.image_size;
    let timm = serde_json::json!({
        "input_size": [3, s, s],
        "mean": cfg.augment.mean,
        "std": cfg.augment.std,
        "crop_pct": CROP_PCT,
        "interpolation": "bilinear",
        "num_features": backbone.feature_dim(),
        "architecture": cfg.model,
    });
    vec![(RECIPE_KEY.into(), cfg.to_toml()), ("pretrained_cfg".into(), timm.to_string())]
}

/// The evaluation crop: the shorter side is resized to image_size / CROP_PCT, then the centre
/// is cropped (torchvision's ImageNet protocol), for images larger than the model's input.
pub const CROP_PCT: f64 = 0.875;
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The recipe a weight file carries: a training checkpoint's, or an export's.
pub fn stored_recipe(wf: &WeightFile) -> Option<Config> {
    let text = match wf.state() {
        Ok(st) => st.config,
        Err(_) => wf.meta.get(RECIPE_KEY)?.clone(),
    };
    if text.trim().is_empty() {
        return None;
    }
    Config::from_stored(&text).ok()
}

/// What torchvision and timm assume of weights without a recipe: ImageNet's mean and std at
/// 224 px (a ViT or PiT: the size its position embedding was trained at), with the preset
/// of the file's architecture where one matches.
fn imported_defaults(held: &BackboneConfig) -> Config {
    let mut c = Config::default();
    c.data.image_size = match held {
        BackboneConfig::Vit(v) => v.image_size,
        BackboneConfig::Pit(p) => p.image_size,
        _ => 224,
    };
    c.augment.mean = IMAGENET_MEAN;
    c.augment.std = IMAGENET_STD;
    let preset = match held {
        BackboneConfig::ResNet(r) => Some(format!("resnet{}{}", r.depth, if r.stem == crate::models::Stem::Cifar { "-cifar" } else { "" })),
        BackboneConfig::Vit(v) if v.dim == 192 => Some("vit-tiny".into()),
        BackboneConfig::Vit(v) if v.dim == 384 => Some("vit-small".into()),
        BackboneConfig::EfficientNet(_) => Some("efficientnet-b0".into()),
        _ => None,
    };
    if let Some(p) = preset {
        c.model = p;
    }
    match held {
        BackboneConfig::ResNet(r) => c.model_opts.width = Some(r.width),
        BackboneConfig::Vit(v) => {
            c.model_opts.patch = Some(v.patch);
            c.model_opts.class_token = v.class_token;
        }
        _ => {}
    }
    c
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

/// Loads a split and returns it behind an Arc (the loader shares it with its workers).
pub fn load(path: &Path, split: Split, cfg: &Config) -> Result<Arc<Dataset>> {
    Ok(Arc::new(load_split(&split_path(path, split), split, cfg)?))
}

/// What an `eval` or `embed` command names: the weights (`random`: the recipe's random
/// initialisation), a preset where the file cannot tell, the recipe and its overrides, and the
/// training and test images (no test images: `embed`).
pub struct EvalInputs<'a> {
    pub checkpoint: &'a str,
    pub model: Option<&'a str>,
    pub config: Option<&'a Path>,
    pub overrides: &'a [String],
    pub data: &'a Path,
    pub test_data: Option<&'a Path>,
}

/// The recipe, the backbone, and the training and test sets an evaluation runs on.
pub struct EvalSetup<B: Backend> {
    pub cfg: Config,
    pub model: LoadedBackbone<B>,
    pub train: Arc<Dataset>,
    pub test: Option<Arc<Dataset>>,
}

/// The settings an evaluation takes from the checkpoint's recipe unless told otherwise: the
/// network, its input and normalisation, the protocols' own settings, the seed.
/// (The batch size sets the feature-extraction batch, so the kNN monitor's number is reproduced.)
const TRAVELLING: &[&str] = &[
    "method",
    "model",
    "model_opts.",
    "seed",
    "batch_size",
    "data.image_size",
    "data.resize_on_load",
    "data.max_side",
    "augment.mean",
    "augment.std",
    "monitor.knn_",
    "linear.",
];

/// Whether two recipe values are the same setting (floats compared as the f32 they become).
fn same_value(a: &toml::Value, b: &toml::Value) -> bool {
    use toml::Value::{Array, Float, Integer};
    match (a, b) {
        (Float(x), Float(y)) => (*x as f32) == (*y as f32),
        (Integer(x), Float(y)) | (Float(y), Integer(x)) => (*x as f32) == (*y as f32),
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q)),
        _ => a == b,
    }
}

/// Whether a recipe key is one of `TRAVELLING`.
fn travels(key: &str) -> bool {
    TRAVELLING.iter().any(|k| key == *k || (k.ends_with(['.', '_']) && key.starts_with(k)))
}

/// The recipe a weight file starts an evaluation from, where it came from, and whether it is
/// the file's own: the weight file's recipe (our checkpoints and exports), torchvision / timm's
/// defaults for imported weights, or the defaults for `random` (no file).
pub fn base_recipe(wf: Option<&WeightFile>) -> Result<(Config, String, bool)> {
    Ok(match wf {
        None => (Config::default(), "the defaults".to_string(), false),
        Some(wf) => match stored_recipe(wf) {
            // What travels with the weights; the data the evaluation reads is its own business.
            Some(cfg) => (cfg.only(travels)?, format!("the recipe stored in {}", wf.path.display()), true),
            None => (
                imported_defaults(&wf.infer_backbone()?),
                format!(
                    "torchvision / timm's defaults for imported weights ({} holds no recipe): ImageNet mean and std, eval crop {CROP_PCT}",
                    wf.path.display()
                ),
                false,
            ),
        },
    })
}

/// `--config` and `--set` (and `--model`) laid over `base`. When `base` is a checkpoint's own
/// recipe (`stored`), prints one line per travelling setting the user changed from it.
pub fn lay_over(base: &Config, stored: bool, config: Option<&Path>, overrides: &[String], model: Option<&str>) -> Result<Config> {
    let (mut cfg, mut changed) = Config::load_over(base, config, overrides)?;
    if let Some(m) = model {
        cfg.model = m.to_string();
        cfg.validate()?;
        changed.push(crate::config::Explicit { key: "model".into(), value: toml::Value::String(m.into()), source: format!("--model {m}") });
    }
    if stored {
        let base_table = base.to_table();
        for e in changed.iter().filter(|e| travels(&e.key)) {
            if let Some(was) = crate::config::get_dotted(&base_table, &e.key)
                && !same_value(was, &e.value)
            {
                eprintln!("note: {} = {} ({}) differs from the checkpoint's {}", e.key, e.value, e.source, was);
            }
        }
    }
    Ok(cfg)
}

/// One line per travelling setting in which `cfg` differs from the recipe stored with `what`
/// (a study's other checkpoints, measured with the study's recipe).
pub fn note_differences(stored: &Config, cfg: &Config, what: &str) {
    let (was, now) = (stored.to_table(), cfg.to_table());
    for k in crate::config::leaf_keys(&was).into_iter().filter(|k| travels(k) && !k.starts_with("method") && !k.starts_with("seed")) {
        if let (Some(a), Some(b)) = (crate::config::get_dotted(&was, &k), crate::config::get_dotted(&now, &k))
            && !same_value(a, b)
        {
            eprintln!("note: {what} was trained with {k} = {a}; measured here with {b}");
        }
    }
}

/// The recipe an evaluation runs with, and a phrase saying where it came from.
pub fn eval_recipe(wf: Option<&WeightFile>, a: &EvalInputs) -> Result<(Config, String)> {
    let (base, source, stored) = base_recipe(wf)?;
    let cfg = lay_over(&base, stored, a.config, a.overrides, a.model)?;
    let source = match (a.config, a.overrides.is_empty() && a.model.is_none()) {
        (None, true) => source,
        (Some(p), _) => format!("{source}, with {} over it", p.display()),
        (None, false) => format!("{source}, with the command's settings"),
    };
    Ok((cfg, source))
}

/// The settings line every evaluation prints: the network, its input, the normalisation.
pub fn describe(cfg: &Config, backbone: &BackboneConfig, source: &str) -> String {
    let f = |v: [f32; 3]| format!("[{:.4}, {:.4}, {:.4}]", v[0], v[1], v[2]);
    let s = cfg.data.image_size;
    let input = if cfg.data.resize_on_load {
        format!("{s}x{s} px (resized on load: shorter side to {s}, centre crop)")
    } else {
        format!("{s}x{s} px (larger images: shorter side to {}, centre crop {s})", (s as f64 / CROP_PCT) as usize)
    };
    format!(
        "model {} = {}, input {input}, mean {}, std {}; from {source}",
        cfg.model,
        architecture(backbone),
        f(cfg.augment.mean),
        f(cfg.augment.std)
    )
}

/// Reads the recipe (the checkpoint's unless told otherwise), loads (or draws) the backbone and
/// the images, and says what it uses and how many images there are.
pub fn open<B: Backend>(b: &B, a: &EvalInputs) -> Result<EvalSetup<B>> {
    crate::setup::check_data_path(a.data, "--data")?;
    if let Some(t) = a.test_data {
        crate::setup::check_data_path(t, "--test-data")?;
    }
    let wf = if a.checkpoint == "random" { None } else { Some(WeightFile::read(Path::new(a.checkpoint))?) };
    let (cfg, source) = eval_recipe(wf.as_ref(), a)?;
    let model = match &wf {
        None => random_backbone(b, &cfg)?,
        Some(wf) => backbone_of(b, wf, a.model, cfg.data.image_size)?,
    };
    let held = match &wf {
        Some(wf) => wf.infer_backbone().unwrap_or(cfg.backbone()?),
        None => cfg.backbone()?,
    };
    eprintln!("{}", describe(&cfg, &held, &source));
    let train = load(a.data, Split::Train, &cfg)?;
    let test = a.test_data.map(|t| load(t, Split::Test, &cfg)).transpose()?;
    match &test {
        Some(t) => {
            eprintln!("{} training images, {} test images, backbone {} features", train.len(), t.len(), model.backbone.feature_dim())
        }
        None => eprintln!("{} images, backbone {} features", train.len(), model.backbone.feature_dim()),
    }
    Ok(EvalSetup { cfg, model, train, test })
}
