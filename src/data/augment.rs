//! Augmentations with torchvision's semantics, in f32 on [0, 1], HWC.
//!
//! Each op takes its parameters explicitly and is public, so tests compare it with
//! `torchvision.transforms.v2.functional` (tests/reference/make_augment_fixtures.py). A view is
//! made in two steps: `sample_params` draws every random choice from the view's `Rng` into a
//! `ViewParams`, then `apply_params` runs the ops. `augment` does both.
//!
//! What exactly is matched (torchvision 0.29, float tensors; the fixtures check each):
//! - `RandomResizedCrop.get_params`: 10 attempts, area fraction ~ U(scale), aspect ratio
//!   log-uniform in `ratio`, `w = round(sqrt(area * r))`, `h = round(sqrt(area / r))` with
//!   Python's round-half-to-even; otherwise the central crop clamped to the ratio range.
//! - `resized_crop`: bilinear with half-pixel centres and `antialias=True` (torchvision's default,
//!   PyTorch's `_upsample_bilinear2d_aa`: width pass, then height pass). When enlarging (always
//!   the case for crops of a 32x32 image resized to 32) this is exactly plain bilinear
//!   (`antialias=False`); when shrinking it averages over the footprint as Pillow does.
//!   `resize_into(.., antialias=false, ..)` gives PyTorch's plain bilinear as well.
//! - ColorJitter: the four ops in a random permutation (0 brightness, 1 contrast, 2 saturation,
//!   3 hue), factors ~ U[max(0, 1-x), 1+x] and hue ~ U[-x, x]; an op with x = 0 is left out.
//!   Grayscale is torchvision's tensor formula L = 0.2989 R + 0.587 G + 0.114 B (Pillow uses 0.299;
//!   the difference is below 1e-4). Contrast blends with the mean of L over the image; hue goes
//!   through torchvision's own RGB->HSV->RGB code.
//! - Gaussian blur: torchvision's kernel (`softmax(-(x / sigma)^2)` on a `linspace`), reflect
//!   padding; the kernel size is 10% of the output size rounded to odd, at least 3
//!   (`blur_kernel_size`: 23 at 224 as in BYOL/SimCLR, 3 at 32).
//! - Solarize: `x >= threshold ? 1 - x : x`, threshold 0.5. Normalize: `(x - mean) / std`.
//!
//! The ops run in f32 from the uint8 source without rounding back to uint8 between ops (PIL-based
//! pipelines round after every op; the difference is at most 1/255 per op).
//! Pipeline order per view: crop, flip, jitter (p), grayscale (p), blur (p), solarize (p), normalise.
//! Flip commutes with every other op here, so its position does not change the result.

use std::cell::RefCell;

use crate::error::{Error, Result};
use crate::rng::Rng;

/// The augmentation recipe of one view.
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentConfig {
    /// Area fraction range of RandomResizedCrop.
    pub crop_scale: (f32, f32),
    /// Aspect-ratio (w / h) range of RandomResizedCrop, drawn log-uniformly.
    pub crop_ratio: (f32, f32),
    pub flip_p: f32,
    /// ColorJitter strengths: brightness, contrast, saturation, hue (hue at most 0.5).
    pub jitter: [f32; 4],
    pub jitter_p: f32,
    pub gray_p: f32,
    pub blur_p: f32,
    pub blur_sigma: (f32, f32),
    pub solarize_p: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

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

/// One augmented view: `src` is `size x size x 3` uint8, `out` is `out_size * out_size * 3` f32,
/// normalised, HWC. Panics if a slice is shorter than stated (a caller bug; `Loader` checks sizes).
pub fn augment(src: &[u8], size: usize, out_size: usize, cfg: &AugmentConfig, rng: &mut Rng, out: &mut [f32]) {
    augment_hw(src, (size, size), out_size, cfg, rng, out);
}

/// `augment` of an `h x w` source (an image kept at its stored size).
pub fn augment_hw(src: &[u8], (h, w): (usize, usize), out_size: usize, cfg: &AugmentConfig, rng: &mut Rng, out: &mut [f32]) {
    let p = sample_params_hw(h, w, cfg, rng);
    apply_params_hw(src, (h, w), out_size, &p, cfg.mean, cfg.std, out);
}

/// Runs the ops of `p` on a `size x size x 3` uint8 source into `out` (`out_size^2 * 3`).
pub fn apply_params(src: &[u8], size: usize, out_size: usize, p: &ViewParams, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    apply_params_hw(src, (size, size), out_size, p, mean, std, out);
}

/// `apply_params` for an `h x w x 3` source.
pub fn apply_params_hw(src: &[u8], (h, w): (usize, usize), out_size: usize, p: &ViewParams, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    let n = out_size * out_size * 3;
    assert!(src.len() >= h * w * 3 && out.len() >= n, "augment: buffers shorter than the stated sizes");
    let out = &mut out[..n];
    resize_into(src, h, w, p.crop, out_size, out_size, true, p.flip, out);
    if let Some(j) = &p.jitter {
        color_jitter(out, j);
    }
    if p.gray {
        grayscale(out);
    }
    if let Some(sigma) = p.blur_sigma {
        gaussian_blur(out, out_size, out_size, blur_kernel_size(out_size), sigma);
    }
    if p.solarize {
        solarize(out, 0.5);
    }
    normalize_in_place(out, mean, std);
}

/// The evaluation transform: resize `size -> out_size` (anti-aliased bilinear) when they differ,
/// then normalise. No randomness.
pub fn normalize(src: &[u8], size: usize, out_size: usize, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    let n = out_size * out_size * 3;
    assert!(src.len() >= size * size * 3 && out.len() >= n, "normalize: buffers shorter than the stated sizes");
    let out = &mut out[..n];
    resize_into(src, size, size, (0, 0, size, size), out_size, out_size, true, false, out);
    normalize_in_place(out, mean, std);
}

/// The evaluation transform of an image kept at its stored `h x w`: torchvision's ImageNet
/// protocol, Resize(int(out_size / 0.875)) of the shorter side and CenterCrop(out_size), when the
/// image is larger than the model input; otherwise Resize(out_size) and CenterCrop(out_size).
/// Then normalise.
pub fn eval_view(src: &[u8], (h, w): (usize, usize), out_size: usize, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    let n = out_size * out_size * 3;
    assert!(src.len() >= h * w * 3 && out.len() >= n, "eval_view: buffers shorter than the stated sizes");
    let out = &mut out[..n];
    let short = if h.min(w) > out_size { (out_size as f64 / 0.875) as usize } else { out_size };
    // torchvision Resize: the shorter side to `short`, the longer to int(short * long / short_in).
    let (rh, rw) = if h <= w { (short, (short * w / h).max(short)) } else { ((short * h / w).max(short), short) };
    // CenterCrop: int(round((len - size) / 2)), rounding half to even as Python.
    let centre = |len: usize| ((len - out_size) as f64 / 2.0).round_ties_even() as usize;
    resize_window(src, h, w, (0, 0, h, w), (rh, rw), (centre(rh), centre(rw), out_size, out_size), true, false, out);
    normalize_in_place(out, mean, std);
}

// ---------------------------------------------------------------------------------------------
// Resampling

/// A pixel type the resampler reads: uint8 (scaled by 1/255) or f32 already in [0, 1].
pub trait Texel: Copy {
    fn unit(self) -> f32;
}
/// `i / 255` for every uint8 value (the same f32 values as dividing, without a division).
static U8_UNIT: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as f32 / 255.0;
        i += 1;
    }
    t
};

impl Texel for u8 {
    #[inline]
    fn unit(self) -> f32 {
        U8_UNIT[self as usize]
    }
}
impl Texel for f32 {
    #[inline]
    fn unit(self) -> f32 {
        self
    }
}

/// Interpolation taps along one axis: output `o` reads `taps` inputs from `start[o]` with
/// weights `weights[o * taps ..]` (zero-padded).
struct Axis {
    start: Vec<usize>,
    /// Taps output `o` uses (at least 1, at most `taps`).
    count: Vec<usize>,
    taps: usize,
    weights: Vec<f32>,
}

fn bilinear_filter(x: f32) -> f32 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// PyTorch's index and weight computation for bilinear resizing with `align_corners=False`:
/// `_compute_index_ranges_weights` (antialias) or `compute_indices_weights_linear` (plain),
/// for the outputs `outs` of a resize from `in_size` to `out_size`.
fn axis(in_size: usize, out_size: usize, antialias: bool, outs: std::ops::Range<usize>) -> Axis {
    if in_size == out_size {
        let n = outs.len();
        return Axis { start: outs.collect(), count: vec![1; n], taps: 1, weights: vec![1.0; n] };
    }
    let scale = in_size as f32 / out_size as f32;
    let n = outs.len();
    if antialias {
        let support = if scale >= 1.0 { scale } else { 1.0 };
        let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
        let taps = (support.ceil() as usize) * 2 + 1;
        let mut start = Vec::with_capacity(n);
        let mut count = Vec::with_capacity(n);
        let mut weights = vec![0f32; n * taps];
        for (k, o) in outs.enumerate() {
            let center = scale * (o as f32 + 0.5);
            let xmin = ((center - support + 0.5) as i64).clamp(0, in_size as i64 - 1) as usize; // truncation, as C++
            let xmax = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
            let xsize = xmax.saturating_sub(xmin).min(taps);
            let w = &mut weights[k * taps..k * taps + taps];
            let mut total = 0f32;
            for (j, wj) in w.iter_mut().enumerate().take(xsize) {
                *wj = bilinear_filter((j as f32 + xmin as f32 - center + 0.5) * invscale);
                total += *wj;
            }
            if total != 0.0 {
                for wj in w.iter_mut().take(xsize) {
                    *wj /= total;
                }
            } else {
                w[0] = 1.0; // unreachable for valid sizes; keeps the output defined
            }
            start.push(xmin);
            count.push(xsize.max(1));
        }
        Axis { start, count, taps, weights }
    } else {
        let mut start = Vec::with_capacity(n);
        let mut count = Vec::with_capacity(n);
        let mut weights = vec![0f32; n * 2];
        for (k, o) in outs.enumerate() {
            let real = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (real as usize).min(in_size - 1);
            let lambda = (real - i0 as f32).clamp(0.0, 1.0);
            if i0 + 1 < in_size {
                weights[k * 2] = 1.0 - lambda;
                weights[k * 2 + 1] = lambda;
            } else {
                weights[k * 2] = 1.0; // PyTorch reads the same pixel twice: (1 - l) x + l x = x
            }
            start.push(i0);
            count.push(if i0 + 1 < in_size { 2 } else { 1 });
        }
        Axis { start, count, taps: 2, weights }
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Bilinear resize of the `crop = (top, left, height, width)` box of an `h x w x 3` HWC image to
/// `out_h x out_w x 3` f32 in [0, 1], mirrored left-right when `flip`. This is torchvision's
/// `resized_crop` (then `hflip`) on a float image; `antialias` as torchvision's argument.
#[allow(clippy::too_many_arguments)]
pub fn resize_into<T: Texel>(
    src: &[T],
    h: usize,
    w: usize,
    crop: (usize, usize, usize, usize),
    out_h: usize,
    out_w: usize,
    antialias: bool,
    flip: bool,
    out: &mut [f32],
) {
    resize_window(src, h, w, crop, (out_h, out_w), (0, 0, out_h, out_w), antialias, flip, out);
}

/// `resize_into` computing only the `window = (top, left, height, width)` part of the
/// `out_full = (out_h, out_w)` result (a centre crop of a resize without the whole resize).
#[allow(clippy::too_many_arguments)]
pub fn resize_window<T: Texel>(
    src: &[T],
    h: usize,
    w: usize,
    crop: (usize, usize, usize, usize),
    out_full: (usize, usize),
    window: (usize, usize, usize, usize),
    antialias: bool,
    flip: bool,
    out: &mut [f32],
) {
    let (top, left, ch, cw) = crop;
    let (wy0, wx0, oh, ow) = window;
    assert!(ch >= 1 && cw >= 1 && top + ch <= h && left + cw <= w, "resize: crop {crop:?} outside a {h}x{w} image");
    assert!(wy0 + oh <= out_full.0 && wx0 + ow <= out_full.1, "resize: window {window:?} outside {out_full:?}");
    assert!(src.len() >= h * w * 3 && out.len() >= oh * ow * 3, "resize: buffers shorter than the stated sizes");
    let ax = axis(cw, out_full.1, antialias, wx0..wx0 + ow);
    let ay = axis(ch, out_full.0, antialias, wy0..wy0 + oh);
    // Source rows the height pass reads.
    let r0 = ay.start.first().copied().unwrap_or(0);
    let r1 = ay.start.iter().zip(&ay.count).map(|(&s, &c)| s + c).max().unwrap_or(0).min(ch);
    SCRATCH.with(|s| {
        let mut tmp = s.borrow_mut();
        tmp.clear();
        tmp.resize((r1 - r0) * ow * 3, 0.0);
        // Width pass: source rows r0..r1 of the crop -> tmp ((r1 - r0) x ow).
        for r in r0..r1 {
            let row = &src[((top + r) * w + left) * 3..((top + r) * w + left + cw) * 3];
            let trow = &mut tmp[(r - r0) * ow * 3..(r - r0 + 1) * ow * 3];
            for x in 0..ow {
                let xs = if flip { ow - 1 - x } else { x };
                let s0 = ax.start[xs];
                let wts = &ax.weights[xs * ax.taps..xs * ax.taps + ax.count[xs]];
                let px = &row[s0 * 3..s0 * 3 + 3];
                let mut acc = [wts[0] * px[0].unit(), wts[0] * px[1].unit(), wts[0] * px[2].unit()];
                for (k, &wk) in wts.iter().enumerate().skip(1) {
                    let px = &row[(s0 + k) * 3..(s0 + k) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += wk * px[c].unit();
                    }
                }
                trow[x * 3..x * 3 + 3].copy_from_slice(&acc);
            }
        }
        // Height pass: tmp -> out.
        for y in 0..oh {
            let s0 = ay.start[y];
            let wts = &ay.weights[y * ay.taps..y * ay.taps + ay.count[y]];
            let orow = &mut out[y * ow * 3..(y + 1) * ow * 3];
            let first = &tmp[(s0 - r0) * ow * 3..(s0 - r0 + 1) * ow * 3];
            for (o, &t) in orow.iter_mut().zip(first) {
                *o = wts[0] * t;
            }
            for (k, &wk) in wts.iter().enumerate().skip(1) {
                let r = s0 + k - r0;
                let trow = &tmp[r * ow * 3..(r + 1) * ow * 3];
                for (o, &t) in orow.iter_mut().zip(trow) {
                    *o += wk * t;
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Pixel ops on f32 HWC images in [0, 1]

/// Mirrors an `h x w x 3` image left-right in place.
pub fn hflip(img: &mut [f32], h: usize, w: usize) {
    for row in img.chunks_exact_mut(w * 3).take(h) {
        for x in 0..w / 2 {
            for c in 0..3 {
                row.swap(x * 3 + c, (w - 1 - x) * 3 + c);
            }
        }
    }
}

#[inline]
fn luma(p: &[f32]) -> f32 {
    p[0] * 0.2989 + p[1] * 0.587 + p[2] * 0.114
}

#[inline]
fn blend(a: f32, b: f32, ratio: f32) -> f32 {
    (a * ratio + b * (1.0 - ratio)).clamp(0.0, 1.0)
}

/// `x * factor`, clamped to [0, 1].
pub fn adjust_brightness(img: &mut [f32], factor: f32) {
    for v in img.iter_mut() {
        *v = (*v * factor).clamp(0.0, 1.0);
    }
}

/// Blends with the mean of the grayscale image: `factor * x + (1 - factor) * mean(L)`, clamped.
pub fn adjust_contrast(img: &mut [f32], factor: f32) {
    let n = img.len() / 3;
    if n == 0 {
        return;
    }
    let sum: f64 = img.chunks_exact(3).map(|p| luma(p) as f64).sum();
    let mean = (sum / n as f64) as f32;
    for v in img.iter_mut() {
        *v = blend(*v, mean, factor);
    }
}

/// Blends each pixel with its grayscale value: `factor * x + (1 - factor) * L`, clamped.
pub fn adjust_saturation(img: &mut [f32], factor: f32) {
    for p in img.chunks_exact_mut(3) {
        let l = luma(p);
        for v in p.iter_mut() {
            *v = blend(*v, l, factor);
        }
    }
}

/// Rotates the hue by `factor` (in turns, within [-0.5, 0.5]) through torchvision's HSV code.
pub fn adjust_hue(img: &mut [f32], factor: f32) {
    for p in img.chunks_exact_mut(3) {
        let (h, s, v) = rgb_to_hsv(p[0], p[1], p[2]);
        // torch.remainder(h + factor, 1) for h + factor in [-0.5, 1.5), without a libm call:
        // fmod is exact here and x - 1 is exact for x in [1, 2) (Sterbenz).
        let h = h + factor;
        let h = if h < 0.0 {
            h + 1.0
        } else if h >= 1.0 {
            h - 1.0
        } else {
            h
        };
        let (r, g, b) = hsv_to_rgb(h, s, v);
        p[0] = r;
        p[1] = g;
        p[2] = b;
    }
}

/// torchvision `_rgb_to_hsv` (after Pillow), for one pixel.
#[inline]
pub fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let eqc = maxc == minc;
    let cr = maxc - minc;
    let s = cr / if eqc { 1.0 } else { maxc };
    let div = if eqc { 1.0 } else { cr };
    let (rc, gc, bc) = ((maxc - r) / div, (maxc - g) / div, (maxc - b) / div);
    let h = if maxc == r {
        bc - gc
    } else if maxc == g {
        rc + 2.0 - bc
    } else {
        gc + 4.0 - rc
    };
    // fmod(x, 1) for x = h / 6 + 1 in [5/6, 11/6]: exact either way, no libm call.
    let x = h * (1.0f32 / 6.0) + 1.0;
    let h = if x >= 1.0 { x - 1.0 } else { x };
    (h, s, maxc)
}

/// torchvision `_hsv_to_rgb`, for one pixel.
#[inline]
pub fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h * 6.0;
    // h is in [0, 1], so truncation is floor (and avoids a libm call on baseline x86-64).
    let fl = if h6 >= 0.0 { (h6 as i32) as f32 } else { h6.floor() };
    let f = h6 - fl;
    let i = (fl as i32).rem_euclid(6);
    let sxf = s * f;
    let one_minus_s = 1.0 - s;
    let q = ((1.0 - sxf) * v).clamp(0.0, 1.0);
    let t = ((sxf + one_minus_s) * v).clamp(0.0, 1.0);
    let p = (one_minus_s * v).clamp(0.0, 1.0);
    match i {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// L = 0.2989 R + 0.587 G + 0.114 B copied to the three channels.
pub fn grayscale(img: &mut [f32]) {
    for p in img.chunks_exact_mut(3) {
        let l = luma(p);
        p.fill(l);
    }
}

/// ColorJitter with drawn parameters: the ops in `j.order`, each with its factor when present.
pub fn color_jitter(img: &mut [f32], j: &JitterParams) {
    for &op in &j.order {
        let Some(f) = j.factors.get(op as usize).copied().flatten() else { continue };
        match op {
            0 => adjust_brightness(img, f),
            1 => adjust_contrast(img, f),
            2 => adjust_saturation(img, f),
            _ => adjust_hue(img, f),
        }
    }
}

/// The blur kernel size for an output of `out_size`: 10% of it rounded up to odd, at least 3.
pub fn blur_kernel_size(out_size: usize) -> usize {
    let k = out_size / 10;
    (if k.is_multiple_of(2) { k + 1 } else { k }).max(3)
}

/// torchvision's 1-D Gaussian kernel: `softmax(-(x / sigma)^2)`, x = linspace(-l, l, k),
/// l = (k - 1) / (2 sqrt 2), i.e. exp(-d^2 / (2 sigma^2)) at integer offsets d, normalised.
pub fn gaussian_kernel(k: usize, sigma: f32) -> Vec<f32> {
    let c = (k as f64 - 1.0) / 2.0;
    let s = sigma as f64;
    let raw: Vec<f64> = (0..k).map(|i| (-(i as f64 - c).powi(2) / (2.0 * s * s)).exp()).collect();
    let total: f64 = raw.iter().sum();
    raw.iter().map(|v| (v / total) as f32).collect()
}

/// Reflect padding index (torch's "reflect": -1 -> 1, n -> n - 2), safe for any offset.
#[inline]
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m < n as isize { m } else { period - m }) as usize
}

/// Gaussian blur of an `h x w x 3` image with a `k x k` kernel (k odd), reflect padding.
pub fn gaussian_blur(img: &mut [f32], h: usize, w: usize, k: usize, sigma: f32) {
    if h == 0 || w == 0 || k < 2 {
        return;
    }
    let kern = gaussian_kernel(k, sigma);
    let r = (k / 2) as isize;
    let mut tmp = vec![0f32; h * w * 3];
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0f32; 3];
            for (t, &kt) in kern.iter().enumerate() {
                let xs = reflect(x as isize + t as isize - r, w);
                let p = &img[(y * w + xs) * 3..];
                for c in 0..3 {
                    acc[c] += kt * p[c];
                }
            }
            tmp[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&acc);
        }
    }
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0f32; 3];
            for (t, &kt) in kern.iter().enumerate() {
                let ys = reflect(y as isize + t as isize - r, h);
                let p = &tmp[(ys * w + x) * 3..];
                for c in 0..3 {
                    acc[c] += kt * p[c];
                }
            }
            img[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&acc);
        }
    }
}

/// `x >= threshold ? 1 - x : x`.
pub fn solarize(img: &mut [f32], threshold: f32) {
    for v in img.iter_mut() {
        if *v >= threshold {
            *v = 1.0 - *v;
        }
    }
}

/// `(x - mean[c]) / std[c]`.
pub fn normalize_in_place(img: &mut [f32], mean: [f32; 3], std: [f32; 3]) {
    for p in img.chunks_exact_mut(3) {
        for c in 0..3 {
            p[c] = (p[c] - mean[c]) / std[c];
        }
    }
}
