//! torchvision's ResNet (BasicBlock / Bottleneck), with the CIFAR stem (3x3 conv, stride 1,
//! no max-pool) or the ImageNet stem (7x7 conv, stride 2, max-pool). Names and init match
//! torchvision: `conv1`, `bn1`, `layer1.0.conv1`, `layer2.0.downsample.0`, `fc`.

use crate::autograd::Var;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::nn::{BatchNorm, Conv2d, Ctx, Init, Linear, ParamStore};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    Cifar,
    ImageNet,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ResNetConfig {
    pub depth: usize,
    pub stem: Stem,
    /// Channels of the first stage (64 in torchvision); smaller widths make quick CPU demos.
    pub width: usize,
    /// Start the last BN gamma of each block at 0 (torchvision's zero_init_residual).
    pub zero_init_residual: bool,
    /// A classification head `fc`; None for a backbone that outputs pooled features.
    pub num_classes: Option<usize>,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        ResNetConfig { depth: 18, stem: Stem::Cifar, width: 64, zero_init_residual: true, num_classes: None }
    }
}

struct Block {
    convs: Vec<Conv2d>,
    bns: Vec<BatchNorm>,
    downsample: Option<(Conv2d, BatchNorm)>,
}

impl Block {
    /// Every norm's output pass carries what follows it: the ReLU, and for the last one the
    /// shortcut too (relu(bn(conv(h)) + identity)), so the activation is written once.
    fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward_conv(cx, conv, x, None, false)?,
            None => x.clone(),
        };
        let mut h = x.clone();
        let last = self.convs.len() - 1;
        for (i, (conv, bn)) in self.convs.iter().zip(&self.bns).enumerate() {
            let residual = (i == last).then_some(&identity);
            h = bn.forward_conv(cx, conv, &h, residual, true)?;
        }
        Ok(h)
    }
}

pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    maxpool: bool,
    blocks: Vec<Block>,
    fc: Option<Linear>,
    pub feature_dim: usize,
}

fn conv<B: Backend>(ps: &mut ParamStore<B>, name: &str, c_in: usize, c_out: usize, k: usize, stride: usize) -> Result<Conv2d> {
    Conv2d::new(ps, name, c_in, c_out, k, stride, k / 2, 1, false, Some(Init::KaimingNormalFanOut(c_out * k * k)))
}

impl ResNet {
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, prefix: &str, cfg: &ResNetConfig) -> Result<Self> {
        let (counts, bottleneck): ([usize; 4], bool) = match cfg.depth {
            18 => ([2, 2, 2, 2], false),
            34 => ([3, 4, 6, 3], false),
            50 => ([3, 4, 6, 3], true),
            d => return Err(Error::Invalid { op: "resnet", msg: format!("depth {d} is not one of 18, 34, 50") }),
        };
        if cfg.width == 0 {
            return Err(Error::Invalid { op: "resnet", msg: "width must be positive".into() });
        }
        let p = |n: &str| if prefix.is_empty() { n.to_string() } else { format!("{prefix}.{n}") };
        let w = cfg.width;
        let (conv1, maxpool) = match cfg.stem {
            Stem::Cifar => (conv(ps, &p("conv1"), 3, w, 3, 1)?, false),
            Stem::ImageNet => (conv(ps, &p("conv1"), 3, w, 7, 2)?, true),
        };
        let bn1 = BatchNorm::new(ps, &p("bn1"), w, true, 1.0)?;
        let expansion = if bottleneck { 4 } else { 1 };
        let last_gamma = if cfg.zero_init_residual { 0.0 } else { 1.0 };
        let mut blocks = Vec::new();
        let mut inplanes = w;
        for (stage, &count) in counts.iter().enumerate() {
            let planes = w << stage;
            for j in 0..count {
                let stride = if stage > 0 && j == 0 { 2 } else { 1 };
                let name = p(&format!("layer{}.{}", stage + 1, j));
                let (convs, bns) = if bottleneck {
                    let convs = vec![
                        conv(ps, &format!("{name}.conv1"), inplanes, planes, 1, 1)?,
                        conv(ps, &format!("{name}.conv2"), planes, planes, 3, stride)?,
                        conv(ps, &format!("{name}.conv3"), planes, planes * 4, 1, 1)?,
                    ];
                    let bns = vec![
                        BatchNorm::new(ps, &format!("{name}.bn1"), planes, true, 1.0)?,
                        BatchNorm::new(ps, &format!("{name}.bn2"), planes, true, 1.0)?,
                        BatchNorm::new(ps, &format!("{name}.bn3"), planes * 4, true, last_gamma)?,
                    ];
                    (convs, bns)
                } else {
                    let convs = vec![
                        conv(ps, &format!("{name}.conv1"), inplanes, planes, 3, stride)?,
                        conv(ps, &format!("{name}.conv2"), planes, planes, 3, 1)?,
                    ];
                    let bns = vec![
                        BatchNorm::new(ps, &format!("{name}.bn1"), planes, true, 1.0)?,
                        BatchNorm::new(ps, &format!("{name}.bn2"), planes, true, last_gamma)?,
                    ];
                    (convs, bns)
                };
                let downsample = if stride != 1 || inplanes != planes * expansion {
                    let c = Conv2d::new(
                        ps,
                        &format!("{name}.downsample.0"),
                        inplanes,
                        planes * expansion,
                        1,
                        stride,
                        0,
                        1,
                        false,
                        Some(Init::KaimingNormalFanOut(planes * expansion)),
                    )?;
                    Some((c, BatchNorm::new(ps, &format!("{name}.downsample.1"), planes * expansion, true, 1.0)?))
                } else {
                    None
                };
                blocks.push(Block { convs, bns, downsample });
                inplanes = planes * expansion;
            }
        }
        let fc = match cfg.num_classes {
            Some(n) => Some(Linear::new(ps, &p("fc"), inplanes, n, true, None, None)?),
            None => None,
        };
        Ok(ResNet { conv1, bn1, maxpool, blocks, fc, feature_dim: inplanes })
    }

    /// x [n, h, w, 3] -> [n, feature_dim] (or [n, classes] with `fc`).
    pub fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        let t = cx.tape;
        let mut h = self.bn1.forward_conv(cx, &self.conv1, x, None, true)?;
        if self.maxpool {
            h = t.maxpool2d(&h, 3, 2, 1)?;
        }
        for b in &self.blocks {
            h = b.forward(cx, &h)?;
        }
        let f = t.avgpool_global(&h)?;
        match &self.fc {
            Some(fc) => fc.forward(cx, &f),
            None => Ok(f),
        }
    }
}
