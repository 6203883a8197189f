//! Backbones: ResNet-18/34/50 and EfficientNet-B0 (torchvision names), ViT and PiT (timm names),
//! behind one enum so the training loop and the CLI pick one by name.

pub mod efficientnet;
pub mod pit;
pub mod resnet;
pub mod vit;

use crate::autograd::Var;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::nn::{Ctx, ParamStore};

pub use efficientnet::{EfficientNet, EfficientNetConfig};
pub use pit::{Pit, PitConfig};
pub use resnet::{ResNet, ResNetConfig, Stem};
pub use vit::{Vit, VitConfig};

pub enum Backbone {
    ResNet(ResNet),
    Vit(Vit),
    EfficientNet(EfficientNet),
    Pit(Pit),
}

/// The presets `--model` accepts.
pub const PRESETS: &[&str] =
    &["resnet18-cifar", "resnet34-cifar", "resnet50-cifar", "resnet18", "resnet34", "resnet50", "vit-tiny", "vit-small", "efficientnet-b0", "pit-ti", "pit-xs"];

#[derive(Clone, Debug, PartialEq)]
pub enum BackboneConfig {
    ResNet(ResNetConfig),
    Vit(VitConfig),
    EfficientNet(EfficientNetConfig),
    Pit(PitConfig),
}

impl BackboneConfig {
    /// A preset by name; `image_size` sets the ViT's input (patch 4 for 32x32, else 16).
    pub fn preset(name: &str, image_size: usize) -> Result<Self> {
        let resnet = |depth, stem| Ok(BackboneConfig::ResNet(ResNetConfig { depth, stem, ..ResNetConfig::default() }));
        let patch = if image_size <= 64 { 4 } else { 16 };
        let vit = |dim, heads| Ok(BackboneConfig::Vit(VitConfig { image_size, patch, dim, depth: 12, heads, ..VitConfig::default() }));
        match name {
            "resnet18-cifar" => resnet(18, Stem::Cifar),
            "resnet34-cifar" => resnet(34, Stem::Cifar),
            "resnet50-cifar" => resnet(50, Stem::Cifar),
            "resnet18" => resnet(18, Stem::ImageNet),
            "resnet34" => resnet(34, Stem::ImageNet),
            "resnet50" => resnet(50, Stem::ImageNet),
            "vit-tiny" => vit(192, 3),
            "vit-small" => vit(384, 6),
            "efficientnet-b0" => Ok(BackboneConfig::EfficientNet(EfficientNetConfig::default())),
            "pit-ti" => Ok(BackboneConfig::Pit(PitConfig::preset(32, image_size))),
            "pit-xs" => Ok(BackboneConfig::Pit(PitConfig::preset(48, image_size))),
            _ => Err(Error::Invalid { op: "model", msg: format!("unknown model '{name}'; choose one of {}", PRESETS.join(", ")) }),
        }
    }

    /// Adds (Some) or removes (None) the classification head.
    pub fn set_num_classes(&mut self, n: Option<usize>) {
        match self {
            BackboneConfig::ResNet(c) => c.num_classes = n,
            BackboneConfig::Vit(c) => c.num_classes = n,
            BackboneConfig::EfficientNet(c) => c.num_classes = n,
            BackboneConfig::Pit(c) => c.num_classes = n,
        }
    }

    pub fn build<B: Backend>(&self, ps: &mut ParamStore<B>, prefix: &str) -> Result<Backbone> {
        Ok(match self {
            BackboneConfig::ResNet(c) => Backbone::ResNet(ResNet::new(ps, prefix, c)?),
            BackboneConfig::Vit(c) => Backbone::Vit(Vit::new(ps, prefix, c)?),
            BackboneConfig::EfficientNet(c) => Backbone::EfficientNet(EfficientNet::new(ps, prefix, c)?),
            BackboneConfig::Pit(c) => Backbone::Pit(Pit::new(ps, prefix, c)?),
        })
    }
}

impl Backbone {
    /// Images [n, h, w, 3] (NHWC) -> features [n, feature_dim] (or logits with a head).
    pub fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        match self {
            Backbone::ResNet(m) => m.forward(cx, x),
            Backbone::Vit(m) => m.forward(cx, x),
            Backbone::EfficientNet(m) => m.forward(cx, x),
            Backbone::Pit(m) => m.forward(cx, x),
        }
    }
    pub fn feature_dim(&self) -> usize {
        match self {
            Backbone::ResNet(m) => m.feature_dim,
            Backbone::Vit(m) => m.dim,
            Backbone::EfficientNet(m) => m.feature_dim,
            Backbone::Pit(m) => m.dim,
        }
    }
}
