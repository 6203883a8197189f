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
    let wf = WeightFile::read(path)?;
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

/// Exports the backbone of a training checkpoint with torchvision / timm names.
pub fn export<B: Backend>(b: &B, checkpoint: &Path, out: &Path) -> Result<usize> {
    let m = load_backbone(b, checkpoint, None, 32)?;
    export_backbone(&m.ps, out, "")
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
/// training and test images.
pub struct EvalInputs<'a> {
    pub checkpoint: &'a str,
    pub model: Option<&'a str>,
    pub config: Option<&'a Path>,
    pub overrides: &'a [String],
    pub data: &'a Path,
    pub test_data: &'a Path,
}

/// The recipe, the backbone, and the training and test sets an evaluation runs on.
pub struct EvalSetup<B: Backend> {
    pub cfg: Config,
    pub model: LoadedBackbone<B>,
    pub train: Arc<Dataset>,
    pub test: Arc<Dataset>,
}

/// Reads the recipe, loads (or draws) the backbone and both sets, and says how large they are.
pub fn open<B: Backend>(b: &B, a: &EvalInputs) -> Result<EvalSetup<B>> {
    let mut cfg = Config::load(a.config, a.overrides)?;
    if let Some(m) = a.model {
        cfg.model = m.to_string();
    }
    let model = if a.checkpoint == "random" {
        random_backbone(b, &cfg)?
    } else {
        load_backbone(b, Path::new(a.checkpoint), a.model, cfg.data.image_size)?
    };
    let train = load(a.data, Split::Train, &cfg)?;
    let test = load(a.test_data, Split::Test, &cfg)?;
    eprintln!("{} training images, {} test images, backbone {} features", train.len(), test.len(), model.backbone.feature_dim());
    Ok(EvalSetup { cfg, model, train, test })
}
