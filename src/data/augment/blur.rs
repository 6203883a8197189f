//! torchvision's Gaussian blur: its kernel, its kernel size rule and reflect padding.

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
