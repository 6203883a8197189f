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
//!
//! Files: `recipe` (the recipe and the random draws), `resize` (resampling), `colour` (pixel
//! ops), `blur`; this file runs them in the pipeline's order.

mod blur;
mod colour;
mod recipe;
mod resize;

pub use blur::*;
pub use colour::*;
pub use recipe::*;
pub use resize::*;

use crate::rng::Rng;

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
