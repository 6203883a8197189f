//! Pixel ops on f32 HWC images in [0, 1]: ColorJitter's four ops (through torchvision's own
//! HSV code for hue), grayscale, solarize and the final normalisation.

use super::JitterParams;

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
