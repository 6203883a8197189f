//! Batch norm, layer norm and softmax over channels-last data [rows, channels].
//! Statistics accumulate in f64; column reductions sum fixed blocks of rows, then the blocks in
//! order, so the result is the same for any thread count.

use rayon::prelude::*;

use super::Real;
use super::{CpuBackend, CpuStorage, r, w};
use crate::backend::NormDims;
use crate::backend::ops::*;
use crate::dtype::DType;
use crate::error::{Error, Result};

const BLOCK_ROWS: usize = 256;

/// Sums per-row contributions into `width` f64 accumulators, deterministically.
/// `add_row(row, acc)` adds row `row`'s contribution to `acc`.
pub(crate) fn column_sums(rows: usize, width: usize, add_row: impl Fn(usize, &mut [f64]) + Sync) -> Vec<f64> {
    let blocks: Vec<Vec<f64>> = (0..rows.div_ceil(BLOCK_ROWS))
        .into_par_iter()
        .map(|b| {
            let mut acc = vec![0.0; width];
            for r in b * BLOCK_ROWS..((b + 1) * BLOCK_ROWS).min(rows) {
                add_row(r, &mut acc);
            }
            acc
        })
        .collect();
    let mut total = vec![0.0; width];
    for b in blocks {
        for (t, v) in total.iter_mut().zip(b) {
            *t += v;
        }
    }
    total
}

pub(crate) fn store_f64<T: Real>(dst: &mut [T], src: &[f64]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = T::c(*s);
    }
}

fn param<T: Real>(p: Option<&[T]>, c: usize, default: f64) -> f64 {
    p.map_or(default, |p| p[c].f64())
}

/// y = relu?(x * scale[channel] + shift[channel] + residual?), in blocks of rows; zipped slices
/// so the inner loop has no bounds checks and vectorises (indexing by channel kept it scalar:
/// 3-4x slower). The normalised value is rounded to T before the residual is added, as the
/// separate ops (batch norm, add, ReLU) would.
fn scale_shift<T: Real>(x: &[T], y: &mut [T], c: usize, scale: &[f64], shift: &[f64], tail: Tail<'_, T>) {
    let res = tail.residual.map(|r| r.par_chunks(c * BLOCK_ROWS));
    let rows = y.par_chunks_mut(c * BLOCK_ROWS).zip(x.par_chunks(c * BLOCK_ROWS));
    let block = |yb: &mut [T], xb: &[T], rb: Option<&[T]>| {
        for (i, (yr, xr)) in yb.chunks_exact_mut(c).zip(xb.chunks_exact(c)).enumerate() {
            for (((o, v), a), b) in yr.iter_mut().zip(xr).zip(scale).zip(shift) {
                *o = T::c(v.f64() * a + b);
            }
            if let Some(rb) = rb {
                for (o, r) in yr.iter_mut().zip(&rb[i * c..(i + 1) * c]) {
                    *o = T::c(o.f64() + r.f64());
                }
            }
            if tail.relu {
                for o in yr.iter_mut() {
                    *o = o.max(T::zero());
                }
            }
        }
    };
    match res {
        Some(res) => rows.zip(res).for_each(|((yb, xb), rb)| block(yb, xb, Some(rb))),
        None => rows.for_each(|(yb, xb)| block(yb, xb, None)),
    }
}

/// The CPU's view of a BnTail: the residual's values.
#[derive(Clone, Copy)]
pub struct Tail<'a, T> {
    pub residual: Option<&'a [T]>,
    pub relu: bool,
}

/// Returns the batch mean and biased variance (for the running-stat update).
pub fn batchnorm_fwd_train<T: Real>(
    x: &[T], gamma: Option<&[T]>, beta: Option<&[T]>, tail: Tail<'_, T>, y: &mut [T], save_mean: &mut [T], save_invstd: &mut [T],
    d: &NormDims,
) -> (Vec<f64>, Vec<f64>) {
    let (rows, c) = (d.rows, d.channels);
    // One pass for both moments, shifted by the first row so E[d^2] - E[d]^2 does not cancel
    // (in f64, for activations whose mean is far from zero as much as for centred ones).
    let shift0: Vec<f64> = if rows > 0 { x[..c].iter().map(|v| v.f64()).collect() } else { vec![0.0; c] };
    let sums = column_sums(rows, 2 * c, |r, acc| {
        let (s1, s2) = acc.split_at_mut(c);
        for (((a1, a2), v), k) in s1.iter_mut().zip(s2.iter_mut()).zip(&x[r * c..(r + 1) * c]).zip(&shift0) {
            let dv = v.f64() - k;
            *a1 += dv;
            *a2 += dv * dv;
        }
    });
    let n = rows as f64;
    let mean: Vec<f64> = (0..c).map(|j| shift0[j] + sums[j] / n).collect();
    let var: Vec<f64> = (0..c).map(|j| (sums[c + j] / n - (sums[j] / n).powi(2)).max(0.0)).collect();
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + d.eps as f64).sqrt()).collect();
    let scale: Vec<f64> = (0..c).map(|j| invstd[j] * param(gamma, j, 1.0)).collect();
    let shift: Vec<f64> = (0..c).map(|j| param(beta, j, 0.0) - mean[j] * scale[j]).collect();
    scale_shift(x, y, c, &scale, &shift, tail);
    store_f64(save_mean, &mean);
    store_f64(save_invstd, &invstd);
    (mean, var)
}

/// PyTorch: running = (1 - m) running + m batch, with the unbiased batch variance.
pub fn update_running<T: Real>(rm: &mut [T], rv: &mut [T], mean: &[f64], var: &[f64], rows: usize, momentum: f32) {
    let m = momentum as f64;
    let unbias = if rows > 1 { rows as f64 / (rows as f64 - 1.0) } else { 1.0 };
    for j in 0..rm.len() {
        rm[j] = T::c((1.0 - m) * rm[j].f64() + m * mean[j]);
        rv[j] = T::c((1.0 - m) * rv[j].f64() + m * var[j] * unbias);
    }
}

#[allow(clippy::too_many_arguments)]
pub fn batchnorm_fwd_eval<T: Real>(
    x: &[T], gamma: Option<&[T]>, beta: Option<&[T]>, rm: &[T], rv: &[T], tail: Tail<'_, T>, y: &mut [T], d: &NormDims,
) {
    let c = d.channels;
    let scale: Vec<f64> = (0..c).map(|j| param(gamma, j, 1.0) / (rv[j].f64() + d.eps as f64).sqrt()).collect();
    let shift: Vec<f64> = (0..c).map(|j| param(beta, j, 0.0) - rm[j].f64() * scale[j]).collect();
    scale_shift(x, y, c, &scale, &shift, tail);
}

/// dx = gamma * invstd / N * (N dy - sum(dy) - xhat * sum(dy xhat)); returns (dgamma, dbeta).
/// With `relu_out` (the output of a tail ending in a ReLU), dy is first zeroed where the output
/// is not positive; that masked dy goes to `dresidual` when given.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_bwd<T: Real>(
    x: &[T], dy: &[T], relu_out: Option<&[T]>, gamma: Option<&[T]>, mean: &[T], invstd: &[T], dx: &mut [T], dresidual: Option<&mut [T]>,
    d: &NormDims,
) -> (Vec<f64>, Vec<f64>) {
    let (rows, c) = (d.rows, d.channels);
    // ReLU's own backward, with its output for its input (relu(z) > 0 exactly where z > 0).
    let mut masked: Vec<T> = Vec::new();
    let dy = match relu_out {
        Some(y) => {
            masked.resize(dy.len(), T::zero());
            super::elementwise::unary_bwd(crate::backend::Unary::Relu, y, dy, &mut masked);
            &masked[..]
        }
        None => dy,
    };
    if let Some(dr) = dresidual {
        dr.copy_from_slice(dy);
    }
    let (mean, invstd): (Vec<f64>, Vec<f64>) = (mean.iter().map(|v| v.f64()).collect(), invstd.iter().map(|v| v.f64()).collect());
    // acc[0..c] = sum dy, acc[c..2c] = sum dy * (x - mean); sum dy * xhat = invstd * the latter.
    let sums = column_sums(rows, 2 * c, |r, acc| {
        let (s1, s2) = acc.split_at_mut(c);
        for ((((a1, a2), g), v), m) in s1.iter_mut().zip(s2.iter_mut()).zip(&dy[r * c..(r + 1) * c]).zip(&x[r * c..(r + 1) * c]).zip(&mean)
        {
            let g = g.f64();
            *a1 += g;
            *a2 += g * (v.f64() - m);
        }
    });
    let dbeta = sums[..c].to_vec();
    let dgamma: Vec<f64> = sums[c..].iter().zip(&invstd).map(|(s, is)| s * is).collect();
    let n = rows as f64;
    // dx = k (n dy - dbeta - xhat dgamma) with k = gamma invstd / n, as a dy + b (x - mean) + e.
    let k: Vec<f64> = (0..c).map(|j| param(gamma, j, 1.0) * invstd[j] / n).collect();
    let a: Vec<f64> = k.iter().map(|k| k * n).collect();
    let b: Vec<f64> = (0..c).map(|j| -k[j] * dgamma[j] * invstd[j]).collect();
    let e: Vec<f64> = (0..c).map(|j| -k[j] * dbeta[j]).collect();
    dx.par_chunks_mut(c * BLOCK_ROWS).enumerate().for_each(|(blk, dxb)| {
        let r0 = blk * BLOCK_ROWS;
        for (i, dxr) in dxb.chunks_exact_mut(c).enumerate() {
            let (xr, gr) = (&x[(r0 + i) * c..(r0 + i + 1) * c], &dy[(r0 + i) * c..(r0 + i + 1) * c]);
            for ((((((o, v), g), m), a), b), e) in dxr.iter_mut().zip(xr).zip(gr).zip(&mean).zip(&a).zip(&b).zip(&e) {
                *o = T::c(a * g.f64() + b * (v.f64() - m) + e);
            }
        }
    });
    (dgamma, dbeta)
}

pub fn layernorm_fwd<T: Real>(x: &[T], gamma: &[T], beta: &[T], y: &mut [T], save_mean: &mut [T], save_rstd: &mut [T], d: &NormDims) {
    let c = d.channels;
    y.par_chunks_mut(c).zip(x.par_chunks(c)).zip(save_mean.par_iter_mut().zip(save_rstd.par_iter_mut())).for_each(|((yr, xr), (m, rs))| {
        let mean = xr.iter().map(|v| v.f64()).sum::<f64>() / c as f64;
        let var = xr.iter().map(|v| (v.f64() - mean).powi(2)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + d.eps as f64).sqrt();
        for j in 0..c {
            yr[j] = T::c((xr[j].f64() - mean) * rstd * gamma[j].f64() + beta[j].f64());
        }
        *m = T::c(mean);
        *rs = T::c(rstd);
    });
}

#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd<T: Real>(
    x: &[T], dy: &[T], gamma: &[T], mean: &[T], rstd: &[T], dx: &mut [T], dgamma: &mut [T], dbeta: &mut [T], d: &NormDims,
) {
    let (rows, c) = (d.rows, d.channels);
    let xhat = |r: usize, j: usize| (x[r * c + j].f64() - mean[r].f64()) * rstd[r].f64();
    dx.par_chunks_mut(c).enumerate().for_each(|(r, dxr)| {
        let (mut s1, mut s2) = (0.0, 0.0);
        for j in 0..c {
            let g = dy[r * c + j].f64() * gamma[j].f64();
            s1 += g;
            s2 += g * xhat(r, j);
        }
        let (s1, s2) = (s1 / c as f64, s2 / c as f64);
        for j in 0..c {
            let g = dy[r * c + j].f64() * gamma[j].f64();
            dxr[j] = T::c(rstd[r].f64() * (g - s1 - xhat(r, j) * s2));
        }
    });
    let sums = column_sums(rows, 2 * c, |r, acc| {
        for j in 0..c {
            let g = dy[r * c + j].f64();
            acc[j] += g * xhat(r, j);
            acc[c + j] += g;
        }
    });
    store_f64(dgamma, &sums[..c]);
    store_f64(dbeta, &sums[c..]);
}

/// y = x / n, n = max(|x|, eps) per row (sum of squares in f64); saves n.
pub fn l2_normalize_fwd<T: Real>(x: &[T], y: &mut [T], norm: &mut [T], d: &NormDims) {
    let c = d.channels;
    y.par_chunks_mut(c).zip(x.par_chunks(c)).zip(norm.par_iter_mut()).for_each(|((yr, xr), n)| {
        let len = xr.iter().map(|v| v.f64() * v.f64()).sum::<f64>().sqrt().max(d.eps as f64);
        for (o, v) in yr.iter_mut().zip(xr) {
            *o = T::c(v.f64() / len);
        }
        *n = T::c(len);
    });
}

/// dx = dy / n - x (x . dy) / n^3; where n was clamped at eps it is a constant: dx = dy / n.
pub fn l2_normalize_bwd<T: Real>(x: &[T], dy: &[T], norm: &[T], dx: &mut [T], d: &NormDims) {
    let c = d.channels;
    dx.par_chunks_mut(c).zip(x.par_chunks(c).zip(dy.par_chunks(c))).zip(norm.par_iter()).for_each(|((o, (xr, gr)), n)| {
        let n = n.f64();
        let k = if n > d.eps as f64 { xr.iter().zip(gr).map(|(a, b)| a.f64() * b.f64()).sum::<f64>() / (n * n * n) } else { 0.0 };
        for ((o, v), g) in o.iter_mut().zip(xr).zip(gr) {
            *o = T::c(g.f64() / n - v.f64() * k);
        }
    });
}

pub fn softmax_fwd<T: Real>(x: &[T], y: &mut [T], c: usize) {
    y.par_chunks_mut(c).zip(x.par_chunks(c)).for_each(|(yr, xr)| softmax_row(xr, yr));
}

pub(crate) fn softmax_row<T: Real>(xr: &[T], yr: &mut [T]) {
    let max = xr.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
    let mut sum = T::zero();
    for (o, &v) in yr.iter_mut().zip(xr) {
        *o = (v - max).exp();
        sum += *o;
    }
    let inv = T::one() / sum;
    for o in yr.iter_mut() {
        *o = *o * inv;
    }
}

/// lse[r] = log sum_j exp(x[r, j]), max-shifted, accumulated in f64.
pub fn logsumexp_fwd<T: Real>(x: &[T], lse: &mut [T], c: usize) {
    lse.par_iter_mut().zip(x.par_chunks(c)).for_each(|(o, xr)| *o = T::c(row_logsumexp(xr)));
}

pub(crate) fn row_logsumexp<T: Real>(xr: &[T]) -> f64 {
    let max = xr.iter().fold(f64::NEG_INFINITY, |a, b| a.max(b.f64()));
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + xr.iter().map(|v| (v.f64() - max).exp()).sum::<f64>().ln()
}

/// dx[r, j] = dlse[r] exp(x[r, j] - lse[r]): the row's softmax scaled by its gradient.
pub fn logsumexp_bwd<T: Real>(x: &[T], lse: &[T], dlse: &[T], dx: &mut [T], c: usize) {
    dx.par_chunks_mut(c).zip(x.par_chunks(c)).enumerate().for_each(|(r, (dxr, xr))| {
        let (l, g) = (lse[r].f64(), dlse[r].f64());
        for (o, v) in dxr.iter_mut().zip(xr) {
            *o = T::c(g * (v.f64() - l).exp());
        }
    });
}

pub fn softmax_bwd<T: Real>(y: &[T], dy: &[T], dx: &mut [T], c: usize) {
    dx.par_chunks_mut(c).zip(y.par_chunks(c).zip(dy.par_chunks(c))).for_each(|(dxr, (yr, dyr))| {
        let dot: T = yr.iter().zip(dyr).map(|(&a, &b)| a * b).sum();
        for j in 0..c {
            dxr[j] = yr[j] * (dyr[j] - dot);
        }
    });
}

impl NormOps for CpuBackend {
    fn batchnorm_fwd_train(&self, x: &CpuStorage, bn: BnTrain<'_, CpuStorage>, d: &NormDims) -> Result<()> {
        on_dtype!(self, bn.y, T => {
            let gx = x.read();
            let gg = bn.gamma.map(|g| g.read());
            let gb = bn.beta.map(|b| b.read());
            let gres = bn.tail.residual.map(|s| s.read());
            let tl = Tail { residual: gres.as_ref().map(r), relu: bn.tail.relu };
            let (mut gy, mut gm, mut gi) = (bn.y.write(), bn.save_mean.write(), bn.save_invstd.write());
            let (mean, var) = batchnorm_fwd_train::<T>(
                r(&gx), gg.as_ref().map(r), gb.as_ref().map(r), tl, w(&mut gy), w(&mut gm), w(&mut gi), d);
            if let Some(rs) = bn.running {
                let (mut rm, mut rv) = (rs.mean.write(), rs.var.write());
                update_running::<T>(w(&mut rm), w(&mut rv), &mean, &var, d.rows, rs.momentum);
            }
            Ok(())
        })
    }

    fn batchnorm_fwd_eval(
        &self, x: &CpuStorage, gamma: Option<&CpuStorage>, beta: Option<&CpuStorage>, running_mean: &CpuStorage, running_var: &CpuStorage,
        tail: BnTail<'_, CpuStorage>, y: &CpuStorage, d: &NormDims,
    ) -> Result<()> {
        on_dtype!(self, y, T => {
            let gx = x.read();
            let gg = gamma.map(|g| g.read());
            let gb = beta.map(|b| b.read());
            let (rm, rv) = (running_mean.read(), running_var.read());
            let gres = tail.residual.map(|s| s.read());
            let tl = Tail { residual: gres.as_ref().map(r), relu: tail.relu };
            let mut gy = y.write();
            batchnorm_fwd_eval::<T>(r(&gx), gg.as_ref().map(r), gb.as_ref().map(r), r(&rm), r(&rv), tl, w(&mut gy), d);
            Ok(())
        })
    }

    fn batchnorm_bwd(
        &self, x: &CpuStorage, dy: &CpuStorage, relu_out: Option<&CpuStorage>, gamma: Option<&CpuStorage>, _beta: Option<&CpuStorage>,
        save_mean: &CpuStorage, save_invstd: &CpuStorage, dx: &CpuStorage, dresidual: Option<&CpuStorage>, dgamma: Option<&CpuStorage>, dbeta: Option<&CpuStorage>,
        d: &NormDims,
    ) -> Result<()> {
        on_dtype!(self, dx, T => {
            let (gx, gdy, gm, gi) = (x.read(), dy.read(), save_mean.read(), save_invstd.read());
            let gg = gamma.map(|g| g.read());
            let gy = relu_out.map(|s| s.read());
            let mut gdx = dx.write();
            let mut gdr = dresidual.map(|s| s.write());
            let (dg, db) = batchnorm_bwd::<T>(
                r(&gx), r(&gdy), gy.as_ref().map(r), gg.as_ref().map(r), r(&gm), r(&gi), w(&mut gdx), gdr.as_mut().map(w), d);
            if let Some(s) = dgamma {
                let mut g = s.write();
                store_f64::<T>(w(&mut g), &dg);
            }
            if let Some(s) = dbeta {
                let mut g = s.write();
                store_f64::<T>(w(&mut g), &db);
            }
            Ok(())
        })
    }

    fn layernorm_fwd(
        &self, x: &CpuStorage, gamma: &CpuStorage, beta: &CpuStorage, y: &CpuStorage, save_mean: &CpuStorage, save_rstd: &CpuStorage,
        d: &NormDims,
    ) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, gg, gb) = (x.read(), gamma.read(), beta.read());
            let (mut gy, mut gm, mut gr) = (y.write(), save_mean.write(), save_rstd.write());
            layernorm_fwd::<T>(r(&gx), r(&gg), r(&gb), w(&mut gy), w(&mut gm), w(&mut gr), d);
            Ok(())
        })
    }

    fn layernorm_bwd(
        &self, x: &CpuStorage, dy: &CpuStorage, gamma: &CpuStorage, save_mean: &CpuStorage, save_rstd: &CpuStorage, dx: &CpuStorage,
        dgamma: &CpuStorage, dbeta: &CpuStorage, d: &NormDims,
    ) -> Result<()> {
        on_dtype!(self, dx, T => {
            let (gx, gdy, gg, gm, gr) = (x.read(), dy.read(), gamma.read(), save_mean.read(), save_rstd.read());
            let (mut gdx, mut gdg, mut gdb) = (dx.write(), dgamma.write(), dbeta.write());
            layernorm_bwd::<T>(r(&gx), r(&gdy), r(&gg), r(&gm), r(&gr), w(&mut gdx), w(&mut gdg), w(&mut gdb), d);
            Ok(())
        })
    }

    fn l2_normalize_fwd(&self, x: &CpuStorage, y: &CpuStorage, norm: &CpuStorage, d: &NormDims) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, mut gy, mut gn) = (x.read(), y.write(), norm.write());
            l2_normalize_fwd::<T>(r(&gx), w(&mut gy), w(&mut gn), d);
            Ok(())
        })
    }

    fn l2_normalize_bwd(&self, x: &CpuStorage, dy: &CpuStorage, norm: &CpuStorage, dx: &CpuStorage, d: &NormDims) -> Result<()> {
        on_dtype!(self, dx, T => {
            let (gx, gdy, gn, mut gdx) = (x.read(), dy.read(), norm.read(), dx.write());
            l2_normalize_bwd::<T>(r(&gx), r(&gdy), r(&gn), w(&mut gdx), d);
            Ok(())
        })
    }

    fn softmax_fwd(&self, x: &CpuStorage, y: &CpuStorage, d: &NormDims) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, mut gy) = (x.read(), y.write());
            softmax_fwd::<T>(r(&gx), w(&mut gy), d.channels);
            Ok(())
        })
    }

    fn softmax_bwd(&self, y: &CpuStorage, dy: &CpuStorage, dx: &CpuStorage, d: &NormDims) -> Result<()> {
        on_dtype!(self, dx, T => {
            let (gy, gdy, mut gdx) = (y.read(), dy.read(), dx.write());
            softmax_bwd::<T>(r(&gy), r(&gdy), w(&mut gdx), d.channels);
            Ok(())
        })
    }

    fn logsumexp_fwd(&self, x: &CpuStorage, lse: &CpuStorage, d: &NormDims) -> Result<()> {
        on_dtype!(self, lse, T => {
            let (gx, mut gl) = (x.read(), lse.write());
            logsumexp_fwd::<T>(r(&gx), w(&mut gl), d.channels);
            Ok(())
        })
    }

    fn logsumexp_bwd(&self, x: &CpuStorage, lse: &CpuStorage, dlse: &CpuStorage, dx: &CpuStorage, d: &NormDims) -> Result<()> {
        on_dtype!(self, dx, T => {
            let (gx, gl, gg, mut gdx) = (x.read(), lse.read(), dlse.read(), dx.write());
            logsumexp_bwd::<T>(r(&gx), r(&gl), r(&gg), w(&mut gdx), d.channels);
            Ok(())
        })
    }
}
