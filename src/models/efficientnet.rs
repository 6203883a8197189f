//! torchvision's EfficientNet-B0 (Tan & Le, ICML 2019), names included: `features.0` the stem
//! (3x3 conv, stride 2, BN, SiLU), `features.1..=7` the MBConv stages, `features.8` the 1x1 head
//! conv to 1280 channels, then global average pooling (and `classifier.1` with a class count).
//! An MBConv block is `block.0` 1x1 expansion (when the ratio is not 1), `block.1` depthwise
//! kxk conv, `block.2` squeeze-excitation (`fc1`, `fc2`: 1x1 convs with bias, SiLU, sigmoid
//! gate), `block.3` 1x1 projection without activation; with stride 1 and equal widths the input
//! is added back after stochastic depth ("row" mode: whole samples dropped).

use crate::autograd::Var;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::nn::{BatchNorm, Conv2d, Ctx, Init, Linear, ParamStore};
use crate::tensor::Tensor;

#[derive(Clone, Debug, PartialEq)]
pub struct EfficientNetConfig {
    /// Final stochastic-depth rate: block i of N drops with probability rate * i / N.
    pub stochastic_depth: f32,
    /// Dropout before `classifier.1`.
    pub dropout: f32,
    /// A classification head `classifier.1`; None for a backbone that outputs pooled features.
    pub num_classes: Option<usize>,
}

impl Default for EfficientNetConfig {
    /// torchvision's efficientnet_b0.
    fn default() -> Self {
        EfficientNetConfig { stochastic_depth: 0.2, dropout: 0.2, num_classes: None }
    }
}

/// B0's stages: (expand ratio, kernel, stride, in, out, blocks).
const B0: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
];
const STEM: usize = 32;
const HEAD: usize = 1280;

/// Conv (no bias) + BN (+ SiLU): torchvision's Conv2dNormActivation, `<name>.0` and `<name>.1`.
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
    silu: bool,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new<B: Backend>(
        ps: &mut ParamStore<B>,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        groups: usize,
        silu: bool,
    ) -> Result<Self> {
        // torchvision: kaiming_normal_(mode="fan_out") on every conv; PyTorch's fan_out is
        // out_channels * k * k, groups or not.
        let init = Some(Init::KaimingNormalFanOut(c_out * k * k));
        let conv = Conv2d::new(ps, &format!("{name}.0"), c_in, c_out, k, stride, (k - 1) / 2, groups, false, init)?;
        Ok(ConvBn { conv, bn: BatchNorm::new(ps, &format!("{name}.1"), c_out, true, 1.0)?, silu })
    }

    fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        let y = self.bn.forward_conv(cx, &self.conv, x, None, false)?;
        if self.silu { cx.tape.silu(&y) } else { Ok(y) }
    }
}

/// Squeeze-excitation: x * sigmoid(fc2(silu(fc1(avgpool(x))))), fc1/fc2 1x1 convs with bias.
struct SqueezeExcitation {
    fc1: Conv2d,
    fc2: Conv2d,
}

impl SqueezeExcitation {
    fn new<B: Backend>(ps: &mut ParamStore<B>, name: &str, c: usize, squeeze: usize) -> Result<Self> {
        let conv = |ps: &mut ParamStore<B>, n: &str, i: usize, o: usize| {
            Conv2d::new(ps, &format!("{name}.{n}"), i, o, 1, 1, 0, 1, true, Some(Init::KaimingNormalFanOut(o)))
        };
        Ok(SqueezeExcitation { fc1: conv(ps, "fc1", c, squeeze)?, fc2: conv(ps, "fc2", squeeze, c)? })
    }

    fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        let t = cx.tape;
        let (n, c) = (x.shape()[0], x.shape()[3]);
        let pooled = t.reshape(&t.avgpool_global(x)?, &[n, 1, 1, c])?;
        let gate = self.fc2.forward(cx, &t.silu(&self.fc1.forward(cx, &pooled)?)?)?;
        t.channel_scale(x, &t.sigmoid(&t.reshape(&gate, &[n, c])?)?)
    }
}

struct MbConv {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    se: SqueezeExcitation,
    project: ConvBn,
    residual: bool,
    drop: f32,
}

impl MbConv {
    fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        let t = cx.tape;
        let mut h = x.clone();
        if let Some(e) = &self.expand {
            h = e.forward(cx, &h)?;
        }
        h = self.project.forward(cx, &self.se.forward(cx, &self.depthwise.forward(cx, &h)?)?)?;
        if !self.residual {
            return Ok(h);
        }
        if cx.train && self.drop > 0.0 {
            // torchvision's StochasticDepth(mode="row"): each sample kept with 1 - p, scaled by 1 / (1 - p).
            let (n, c) = (h.shape()[0], h.shape()[3]);
            let keep = cx.keep_mask(n, 1.0 - self.drop as f64);
            let mask: Vec<f32> = keep.iter().flat_map(|&k| std::iter::repeat_n(k, c)).collect();
            let mask = Tensor::from_f32(h.value.backend(), &mask, &[n, c], h.value.dtype())?;
            h = t.channel_scale(&h, &Var::constant(mask))?;
        }
        t.add(&h, x)
    }
}

pub struct EfficientNet {
    stem: ConvBn,
    blocks: Vec<MbConv>,
    head: ConvBn,
    dropout: f32,
    classifier: Option<Linear>,
    pub feature_dim: usize,
}

impl EfficientNet {
    pub fn new<B: Backend>(ps: &mut ParamStore<B>, prefix: &str, cfg: &EfficientNetConfig) -> Result<Self> {
        if !(0.0..1.0).contains(&cfg.stochastic_depth) || !(0.0..1.0).contains(&cfg.dropout) {
            return Err(Error::Invalid {
                op: "efficientnet",
                msg: format!("stochastic_depth and dropout must lie in [0, 1) (got {}, {})", cfg.stochastic_depth, cfg.dropout),
            });
        }
        let p = |n: &str| if prefix.is_empty() { n.to_string() } else { format!("{prefix}.{n}") };
        let stem = ConvBn::new(ps, &p("features.0"), 3, STEM, 3, 2, 1, true)?;
        let total: usize = B0.iter().map(|s| s.5).sum();
        let mut blocks = Vec::with_capacity(total);
        for (stage, &(ratio, k, stride, c_in, c_out, count)) in B0.iter().enumerate() {
            for j in 0..count {
                let name = p(&format!("features.{}.{j}.block", stage + 1));
                let (inp, s) = if j == 0 { (c_in, stride) } else { (c_out, 1) };
                let wide = inp * ratio;
                let expand = if ratio != 1 { Some(ConvBn::new(ps, &format!("{name}.0"), inp, wide, 1, 1, 1, true)?) } else { None };
                // Indices shift down by one when there is no expansion, as in the Sequential.
                let at = |i: usize| format!("{name}.{}", if ratio != 1 { i } else { i - 1 });
                let depthwise = ConvBn::new(ps, &at(1), wide, wide, k, s, wide, true)?;
                let se = SqueezeExcitation::new(ps, &at(2), wide, (inp / 4).max(1))?;
                let project = ConvBn::new(ps, &at(3), wide, c_out, 1, 1, 1, false)?;
                let drop = cfg.stochastic_depth * blocks.len() as f32 / total as f32;
                blocks.push(MbConv { expand, depthwise, se, project, residual: s == 1 && inp == c_out, drop });
            }
        }
        let head = ConvBn::new(ps, &p("features.8"), B0[6].4, HEAD, 1, 1, 1, true)?;
        // torchvision: classifier weights uniform in 1/sqrt(out), zero bias.
        let classifier = match cfg.num_classes {
            Some(n) => {
                Some(Linear::new(ps, &p("classifier.1"), HEAD, n, true, Some(Init::UniformFanIn(n)), Some(Init::Zeros))?)
            }
            None => None,
        };
        Ok(EfficientNet { stem, blocks, head, dropout: cfg.dropout, classifier, feature_dim: HEAD })
    }

    /// x [n, h, w, 3] -> [n, 1280] (or [n, classes] with the classifier).
    pub fn forward<B: Backend>(&self, cx: &Ctx<B>, x: &Var<B>) -> Result<Var<B>> {
        let t = cx.tape;
        let mut h = self.stem.forward(cx, x)?;
        for b in &self.blocks {
            h = b.forward(cx, &h)?;
        }
        let f = t.avgpool_global(&self.head.forward(cx, &h)?)?;
        let Some(fc) = &self.classifier else { return Ok(f) };
        let f = if cx.train && self.dropout > 0.0 {
            let mask = cx.keep_mask(f.value.numel(), 1.0 - self.dropout as f64);
            t.mul(&f, &Var::constant(Tensor::from_f32(f.value.backend(), &mask, f.shape(), f.value.dtype())?))?
        } else {
            f
        };
        fc.forward(cx, &f)
    }
}
