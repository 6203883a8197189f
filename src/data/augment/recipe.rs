//! The augmentation recipe (`AugmentConfig`, also the config's `[augment]` table) and the
//! random draws of one view: `sample_params` turns the recipe and the view's `Rng` into the
//! `ViewParams` that `apply_params` runs.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// The augmentation recipe of one view. It is also the config's `[augment]` table, key for
/// key (a TOML array of two numbers for each pair); a key left out takes the SimSiam CIFAR-10
/// recipe's value (`Default`), and an unknown key is an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Area fraction range of RandomResizedCrop.
    pub crop_scale: (f32, f32),
    /// Aspect-ratio (w / h) range of RandomResizedCrop, drawn log-uniformly.
    pub crop_ratio: (f32, f32),
    /// Probability of a horizontal flip.
    pub flip_p: f32,
    /// ColorJitter strengths: brightness, contrast, saturation, hue (hue at most 0.5).
    pub jitter: [f32; 4],
    /// Probability that ColorJitter is applied.
    pub jitter_p: f32,
    /// Probability of RandomGrayscale.
    pub gray_p: f32,
    /// Probability of a Gaussian blur (ImageNet recipes; 0 on CIFAR).
    pub blur_p: f32,
    /// Range of the blur's sigma, drawn uniformly.
    pub blur_sigma: (f32, f32),
    /// Probability of solarisation (BYOL's second view).
    pub solarize_p: f32,
    /// Per-channel mean subtracted after augmentation (RGB, on 0-1 pixels); travels with the checkpoint to eval, embed and export.
    pub mean: [f32; 3],
    /// Per-channel std divided after the mean (RGB); travels with the checkpoint.
    pub std: [f32; 3],
}

pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// A config without an `[augment]` table (or a key of it) gets the SimSiam CIFAR recipe.
impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig::simsiam_cifar()
    }
}

impl AugmentConfig {
    /// The SimSiam CIFAR recipe (paper App. D): crop scale (0.2, 1), ratio (3/4, 4/3), flip 0.5,
    /// ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2, no blur, no solarize,
    /// CIFAR-10 mean/std (0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616).
    pub fn simsiam_cifar() -> Self {
        AugmentConfig {
            crop_scale: (0.2, 1.0),
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip_p: 0.5,
            jitter: [0.4, 0.4, 0.4, 0.1],
            jitter_p: 0.8,
            gray_p: 0.2,
            blur_p: 0.0,
            blur_sigma: (0.1, 2.0),
            solarize_p: 0.0,
            mean: CIFAR10_MEAN,
            std: CIFAR10_STD,
        }
    }

    /// Checks every range and probability; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Invalid { op: "AugmentConfig", msg });
        let (s0, s1) = self.crop_scale;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            return bad(format!("crop_scale {:?} must satisfy 0 < lo <= hi <= 1", self.crop_scale));
        }
        let (r0, r1) = self.crop_ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return bad(format!("crop_ratio {:?} must satisfy 0 < lo <= hi", self.crop_ratio));
        }
        for (name, p) in [
            ("flip_p", self.flip_p),
            ("jitter_p", self.jitter_p),
            ("gray_p", self.gray_p),
            ("blur_p", self.blur_p),
            ("solarize_p", self.solarize_p),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name} = {p} is not a probability"));
            }
        }
        if self.jitter.iter().any(|&j| !(j >= 0.0 && j.is_finite())) || self.jitter[3] > 0.5 {
            return bad(format!("jitter {:?} must be >= 0 (hue at most 0.5)", self.jitter));
        }
        let (b0, b1) = self.blur_sigma;
        if self.blur_p > 0.0 && !(b0 > 0.0 && b0 <= b1 && b1.is_finite()) {
            return bad(format!("blur_sigma {:?} must satisfy 0 < lo <= hi", self.blur_sigma));
        }
        if self.std.iter().any(|&s| !(s > 0.0 && s.is_finite())) || self.mean.iter().any(|m| !m.is_finite()) {
            return bad(format!("mean {:?} / std {:?} must be finite with std > 0", self.mean, self.std));
        }
        Ok(())
    }
}

/// ColorJitter's drawn parameters: the order of the ops and each factor (None: op left out).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JitterParams {
    /// A permutation of 0 brightness, 1 contrast, 2 saturation, 3 hue.
    pub order: [u8; 4],
    pub factors: [Option<f32>; 4],
}

/// Every random choice of one view.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViewParams {
    /// The crop box in the source: top, left, height, width.
    pub crop: (usize, usize, usize, usize),
    pub flip: bool,
    pub jitter: Option<JitterParams>,
    pub gray: bool,
    pub blur_sigma: Option<f32>,
    pub solarize: bool,
}

/// torchvision `RandomResizedCrop.get_params` for an `h x w` image: (top, left, height, width).
pub fn sample_crop(h: usize, w: usize, scale: (f32, f32), ratio: (f32, f32), rng: &mut Rng) -> (usize, usize, usize, usize) {
    let area = (h * w) as f64;
    let (lr0, lr1) = ((ratio.0 as f64).ln(), (ratio.1 as f64).ln());
    for _ in 0..10 {
        let target = area * rng.uniform_range(scale.0 as f64, scale.1 as f64);
        let ar = rng.uniform_range(lr0, lr1).exp();
        let cw = (target * ar).sqrt().round_ties_even() as usize;
        let ch = (target / ar).sqrt().round_ties_even() as usize;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let top = rng.below((h - ch + 1) as u64) as usize;
            let left = rng.below((w - cw + 1) as u64) as usize;
            return (top, left, ch, cw);
        }
    }
    // Fallback: the central crop, its aspect ratio clamped to the range.
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < ratio.0 as f64 {
        (((w as f64) / ratio.0 as f64).round_ties_even() as usize, w)
    } else if in_ratio > ratio.1 as f64 {
        (h, ((h as f64) * ratio.1 as f64).round_ties_even() as usize)
    } else {
        (h, w)
    };
    let (ch, cw) = (ch.clamp(1, h), cw.clamp(1, w));
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// Draws every random choice of one view of a `size x size` source, in a fixed order:
/// crop, flip, jitter (apply?, order, factors), grayscale, blur (apply?, sigma), solarize.
pub fn sample_params(size: usize, cfg: &AugmentConfig, rng: &mut Rng) -> ViewParams {
    sample_params_hw(size, size, cfg, rng)
}

/// `sample_params` for an `h x w` source: the crop is drawn on the image as it is.
pub fn sample_params_hw(h: usize, w: usize, cfg: &AugmentConfig, rng: &mut Rng) -> ViewParams {
    let crop = sample_crop(h, w, cfg.crop_scale, cfg.crop_ratio, rng);
    let flip = rng.uniform() < cfg.flip_p as f64;
    let jitter = if rng.uniform() < cfg.jitter_p as f64 {
        let mut order = [0u8, 1, 2, 3];
        for i in (1..4).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let mut factors = [None; 4];
        for (k, f) in factors.iter_mut().enumerate() {
            let x = cfg.jitter[k] as f64;
            if x > 0.0 {
                let (lo, hi) = if k == 3 { (-x, x) } else { ((1.0 - x).max(0.0), 1.0 + x) };
                *f = Some(rng.uniform_range(lo, hi) as f32);
            }
        }
        Some(JitterParams { order, factors })
    } else {
        None
    };
    let gray = rng.uniform() < cfg.gray_p as f64;
    let blur_sigma = if rng.uniform() < cfg.blur_p as f64 {
        Some(rng.uniform_range(cfg.blur_sigma.0 as f64, cfg.blur_sigma.1 as f64) as f32)
    } else {
        None
    };
    let solarize = rng.uniform() < cfg.solarize_p as f64;
    ViewParams { crop, flip, jitter, gray, blur_sigma, solarize }
}
