//! Cross-entropy with logits and the negative-cosine loss. Batch means are summed in row order.

use rayon::prelude::*;

use super::Real;
use super::norm::row_logsumexp as logsumexp;
use crate::error::{Error, Result};

fn label(labels: &[impl Real], r: usize, classes: usize) -> Result<usize> {
    let l = labels[r].f64();
    if l < 0.0 || l >= classes as f64 || l.fract() != 0.0 {
        return Err(Error::Invalid { op: "cross_entropy", msg: format!("label {l} of row {r} is not a class in 0..{classes}") });
    }
    Ok(l as usize)
}

pub fn cross_entropy_fwd<T: Real>(logits: &[T], labels: &[T], loss: &mut [T], rows: usize, classes: usize) -> Result<()> {
    let per_row: Vec<f64> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let row = &logits[r * classes..(r + 1) * classes];
            Ok(logsumexp(row) - row[label(labels, r, classes)?].f64())
        })
        .collect::<Result<_>>()?;
    loss[0] = T::c(per_row.iter().sum::<f64>() / rows as f64);
    Ok(())
}

pub fn cross_entropy_bwd<T: Real>(logits: &[T], labels: &[T], dloss: T, dlogits: &mut [T], rows: usize, classes: usize) -> Result<()> {
    let g = dloss.f64() / rows as f64;
    dlogits.par_chunks_mut(classes).enumerate().try_for_each(|(r, out)| {
        let row = &logits[r * classes..(r + 1) * classes];
        let lse = logsumexp(row);
        let y = label(labels, r, classes)?;
        for (j, o) in out.iter_mut().enumerate() {
            let p = (row[j].f64() - lse).exp();
            *o = T::c(g * (p - if j == y { 1.0 } else { 0.0 }));
        }
        Ok(())
    })
}

/// (p.z, max(|p|, eps), max(|z|, eps)) for one row.
fn row_stats<T: Real>(p: &[T], z: &[T], eps: f64) -> (f64, f64, f64) {
    let (mut pz, mut pp, mut zz) = (0.0, 0.0, 0.0);
    for (a, b) in p.iter().zip(z) {
        let (a, b) = (a.f64(), b.f64());
        pz += a * b;
        pp += a * a;
        zz += b * b;
    }
    (pz, pp.sqrt().max(eps), zz.sqrt().max(eps))
}

pub fn cosine_loss_fwd<T: Real>(p: &[T], z: &[T], loss: &mut [T], rows: usize, dim: usize, eps: f64) {
    let cos: Vec<f64> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let (pz, pn, zn) = row_stats(&p[r * dim..(r + 1) * dim], &z[r * dim..(r + 1) * dim], eps);
            pz / (pn * zn)
        })
        .collect();
    loss[0] = T::c(-cos.iter().sum::<f64>() / rows as f64);
}

/// d cos / dp = z / (|p| |z|) - cos p / |p|^2, where a norm clamped at eps is a constant.
#[allow(clippy::too_many_arguments)]
pub fn cosine_loss_bwd<T: Real>(p: &[T], z: &[T], dloss: T, dp: &mut [T], dz: Option<&mut [T]>, rows: usize, dim: usize, eps: f64) {
    let g = -dloss.f64() / rows as f64;
    let grad = |a: &[T], b: &[T], out: &mut [T]| {
        let (ab, an, bn) = row_stats(a, b, eps);
        let cos = ab / (an * bn);
        let clamped = an <= eps;
        for j in 0..dim {
            let mut v = b[j].f64() / (an * bn);
            if !clamped {
                v -= cos * a[j].f64() / (an * an);
            }
            out[j] = T::c(g * v);
        }
    };
    dp.par_chunks_mut(dim).enumerate().for_each(|(r, o)| grad(&p[r * dim..(r + 1) * dim], &z[r * dim..(r + 1) * dim], o));
    if let Some(dz) = dz {
        dz.par_chunks_mut(dim).enumerate().for_each(|(r, o)| grad(&z[r * dim..(r + 1) * dim], &p[r * dim..(r + 1) * dim], o));
    }
    let _ = rows;
}
