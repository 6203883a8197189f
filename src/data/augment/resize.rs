//! Resampling with PyTorch's bilinear weights (`antialias` as torchvision's argument): the
//! crop-and-resize of every view and of the evaluation transform, and a plain left-right flip.

use std::cell::RefCell;

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
