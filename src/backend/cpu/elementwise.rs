//! Elementwise maps and the axis sum. Elementwise work is split into fixed chunks; the sum
//! runs along its axis sequentially for every output, so its order never changes.

use rayon::prelude::*;

use super::Real;
use crate::backend::{AxisDims, Binary, Unary};

const CHUNK: usize = 1 << 14;

pub fn fill<T: Real>(y: &mut [T], v: T) {
    y.par_chunks_mut(CHUNK).for_each(|c| c.fill(v));
}

fn map<T: Real>(x: &[T], y: &mut [T], f: impl Fn(T) -> T + Sync) {
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(yc, xc)| {
        for (o, &v) in yc.iter_mut().zip(xc) {
            *o = f(v);
        }
    });
}

fn gelu<T: Real>(x: T) -> T {
    let h = T::c(0.5);
    h * x * (T::one() + (x * T::c(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

/// d/dx [x Phi(x)] = Phi(x) + x phi(x)
fn gelu_grad<T: Real>(x: T) -> T {
    let cdf = T::c(0.5) * (T::one() + (x * T::c(std::f64::consts::FRAC_1_SQRT_2)).erf());
    let pdf = (-(x * x) * T::c(0.5)).exp() * T::c(1.0 / (2.0 * std::f64::consts::PI).sqrt());
    cdf + x * pdf
}

pub fn unary_fwd<T: Real>(op: Unary, x: &[T], y: &mut [T]) {
    match op {
        Unary::Relu => map(x, y, |v| v.max(T::zero())),
        Unary::Gelu => map(x, y, gelu),
    }
}

pub fn unary_bwd<T: Real>(op: Unary, x: &[T], dy: &[T], dx: &mut [T]) {
    dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(|(o, (xc, gc))| {
        for ((o, &v), &g) in o.iter_mut().zip(xc).zip(gc) {
            *o = match op {
                // PyTorch's choice at 0: gradient 0.
                Unary::Relu => {
                    if v > T::zero() {
                        g
                    } else {
                        T::zero()
                    }
                }
                Unary::Gelu => g * gelu_grad(v),
            };
        }
    });
}

pub fn binary<T: Real>(op: Binary, a: &[T], b: &[T], out: &mut [T], b_len: usize) {
    let f = |x: T, y: T| match op {
        Binary::Add => x + y,
        Binary::Mul => x * y,
    };
    if b_len == a.len() {
        out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))).for_each(|(o, (ac, bc))| {
            for ((o, &x), &y) in o.iter_mut().zip(ac).zip(bc) {
                *o = f(x, y);
            }
        });
    } else {
        // b repeats over the leading axes of a: one row of a per repetition.
        out.par_chunks_mut(b_len).zip(a.par_chunks(b_len)).for_each(|(o, ac)| {
            for ((o, &x), &y) in o.iter_mut().zip(ac).zip(b) {
                *o = f(x, y);
            }
        });
    }
}

pub fn scale<T: Real>(x: &[T], y: &mut [T], alpha: T) {
    map(x, y, |v| v * alpha);
}

pub fn sum_axis<T: Real>(x: &[T], y: &mut [T], d: &AxisDims) {
    let (a, inner) = (d.axis, d.inner);
    if inner == 0 {
        return;
    }
    y.par_chunks_mut(inner).enumerate().for_each(|(o, yr)| {
        yr.fill(T::zero());
        for ai in 0..a {
            let base = (o * a + ai) * inner;
            for (acc, &v) in yr.iter_mut().zip(&x[base..base + inner]) {
                *acc += v;
            }
        }
    });
}
