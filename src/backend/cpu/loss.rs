//! Cross-entropy with logits, the negative-cosine loss, NT-Xent over a similarity matrix and the
//! identity penalty of a correlation matrix. Batch means are summed in row order.

use rayon::prelude::*;

use super::Real;
use super::norm::row_logsumexp as logsumexp;
use super::{CpuBackend, CpuStorage, r, w};
use crate::backend::ops::*;
use crate::dtype::DType;
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

/// The row's (log-sum-exp over every other column, log-sum-exp over the other columns of its
/// group) of x = sim / temperature; the second is -inf when the row has no positive.
fn nt_xent_row<T: Real>(row: &[T], groups: &[T], r: usize, temperature: f64) -> (f64, f64) {
    let (mut all_max, mut pos_max) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for (j, v) in row.iter().enumerate().filter(|&(j, _)| j != r) {
        let x = v.f64() / temperature;
        all_max = all_max.max(x);
        if groups[j].f64() == groups[r].f64() {
            pos_max = pos_max.max(x);
        }
    }
    let (mut all, mut pos) = (0.0, 0.0);
    for (j, v) in row.iter().enumerate().filter(|&(j, _)| j != r) {
        let x = v.f64() / temperature;
        all += (x - all_max).exp();
        if groups[j].f64() == groups[r].f64() {
            pos += (x - pos_max).exp();
        }
    }
    (all_max + all.ln(), if pos_max == f64::NEG_INFINITY { pos_max } else { pos_max + pos.ln() })
}

fn positive_lse(pos: f64, groups: &[impl Real], r: usize) -> Result<f64> {
    if pos == f64::NEG_INFINITY {
        let msg = format!("row {r} (group {}) has no positive: no other row shares its group", groups[r].f64());
        return Err(Error::Invalid { op: "nt_xent", msg });
    }
    Ok(pos)
}

/// NT-Xent over a similarity matrix sim [rows, rows] whose rows carry `groups` [rows]: the
/// positives of row r are the other rows of its group, every other row is in its denominator.
/// loss = mean_r [ lse_{j != r}(sim_rj / T) - lse_{j != r, g_j = g_r}(sim_rj / T) ].
pub fn nt_xent_fwd<T: Real>(sim: &[T], groups: &[T], loss: &mut [T], rows: usize, temperature: f64) -> Result<()> {
    let per_row: Vec<f64> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let (all, pos) = nt_xent_row(&sim[r * rows..(r + 1) * rows], groups, r, temperature);
            Ok(all - positive_lse(pos, groups, r)?)
        })
        .collect::<Result<_>>()?;
    loss[0] = T::c(per_row.iter().sum::<f64>() / rows as f64);
    Ok(())
}

/// dsim_rj = dloss / (rows T) [j != r] (softmax_all_rj - [g_j = g_r] softmax_pos_rj).
pub fn nt_xent_bwd<T: Real>(sim: &[T], groups: &[T], dloss: T, dsim: &mut [T], rows: usize, temperature: f64) -> Result<()> {
    let g = dloss.f64() / (rows as f64 * temperature);
    dsim.par_chunks_mut(rows).enumerate().try_for_each(|(r, out)| {
        let row = &sim[r * rows..(r + 1) * rows];
        let (all, pos) = nt_xent_row(row, groups, r, temperature);
        let pos = positive_lse(pos, groups, r)?;
        for (j, o) in out.iter_mut().enumerate() {
            let x = row[j].f64() / temperature;
            let positive = if groups[j].f64() == groups[r].f64() { (x - pos).exp() } else { 0.0 };
            *o = T::c(if j == r { 0.0 } else { g * ((x - all).exp() - positive) });
        }
        Ok(())
    })
}

/// How far a square matrix c [d, d] is from the identity, as Barlow Twins and VICReg weigh it:
/// loss = diag_weight sum_i (c_ii - 1)^2 + off_weight sum_{i != j} c_ij^2.
pub fn identity_penalty_fwd<T: Real>(c: &[T], loss: &mut [T], d: usize, diag_weight: f64, off_weight: f64) {
    let per_row: Vec<f64> = c
        .par_chunks(d)
        .enumerate()
        .map(|(i, row)| {
            let off: f64 = row.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, v)| v.f64() * v.f64()).sum();
            let diag = row[i].f64() - 1.0;
            diag_weight * diag * diag + off_weight * off
        })
        .collect();
    loss[0] = T::c(per_row.iter().sum());
}

/// dc_ij = 2 dloss (diag_weight (c_ii - 1) if i = j, else off_weight c_ij).
pub fn identity_penalty_bwd<T: Real>(c: &[T], dloss: T, dc: &mut [T], d: usize, diag_weight: f64, off_weight: f64) {
    let g = 2.0 * dloss.f64();
    dc.par_chunks_mut(d).zip(c.par_chunks(d)).enumerate().for_each(|(i, (out, row))| {
        for (j, (o, v)) in out.iter_mut().zip(row).enumerate() {
            *o = T::c(g * if i == j { diag_weight * (v.f64() - 1.0) } else { off_weight * v.f64() });
        }
    });
}

/// Cross-entropy of logits [rows, classes] against soft targets q [rows, classes] (SwAV's and
/// DINO's): loss = mean_r sum_j q_rj (lse_r - x_rj).
pub fn soft_cross_entropy_fwd<T: Real>(logits: &[T], q: &[T], loss: &mut [T], rows: usize, classes: usize) {
    let per_row: Vec<f64> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let (x, qr) = (&logits[r * classes..(r + 1) * classes], &q[r * classes..(r + 1) * classes]);
            let lse = logsumexp(x);
            x.iter().zip(qr).map(|(a, b)| b.f64() * (lse - a.f64())).sum::<f64>()
        })
        .collect();
    loss[0] = T::c(per_row.iter().sum::<f64>() / rows as f64);
}

/// dx_rj = dloss / rows (softmax_rj sum_k q_rk - q_rj).
pub fn soft_cross_entropy_bwd<T: Real>(logits: &[T], q: &[T], dloss: T, dlogits: &mut [T], rows: usize, classes: usize) {
    let g = dloss.f64() / rows as f64;
    dlogits.par_chunks_mut(classes).enumerate().for_each(|(r, out)| {
        let (x, qr) = (&logits[r * classes..(r + 1) * classes], &q[r * classes..(r + 1) * classes]);
        let lse = logsumexp(x);
        let qsum: f64 = qr.iter().map(|v| v.f64()).sum();
        for ((o, a), b) in out.iter_mut().zip(x).zip(qr) {
            *o = T::c(g * ((a.f64() - lse).exp() * qsum - b.f64()));
        }
    });
}

impl LossOps for CpuBackend {
    fn cross_entropy_fwd(&self, logits: &CpuStorage, labels: &CpuStorage, loss: &CpuStorage, rows: usize, classes: usize) -> Result<()> {
        on_dtype!(self, loss, T => {
            let (gx, gl, mut go) = (logits.read(), labels.read(), loss.write());
            cross_entropy_fwd::<T>(r(&gx), r(&gl), w(&mut go), rows, classes)
        })
    }

    fn cross_entropy_bwd(
        &self, logits: &CpuStorage, labels: &CpuStorage, dloss: &CpuStorage, dlogits: &CpuStorage, rows: usize, classes: usize,
    ) -> Result<()> {
        on_dtype!(self, dlogits, T => {
            let (gx, gl, gd, mut go) = (logits.read(), labels.read(), dloss.read(), dlogits.write());
            cross_entropy_bwd::<T>(r(&gx), r(&gl), r::<T>(&gd)[0], w(&mut go), rows, classes)
        })
    }

    fn soft_cross_entropy_fwd(&self, logits: &CpuStorage, q: &CpuStorage, loss: &CpuStorage, rows: usize, classes: usize) -> Result<()> {
        on_dtype!(self, loss, T => {
            let (gx, gq, mut go) = (logits.read(), q.read(), loss.write());
            soft_cross_entropy_fwd::<T>(r(&gx), r(&gq), w(&mut go), rows, classes);
            Ok(())
        })
    }

    fn soft_cross_entropy_bwd(
        &self, logits: &CpuStorage, q: &CpuStorage, dloss: &CpuStorage, dlogits: &CpuStorage, rows: usize, classes: usize,
    ) -> Result<()> {
        on_dtype!(self, dlogits, T => {
            let (gx, gq, gd, mut go) = (logits.read(), q.read(), dloss.read(), dlogits.write());
            soft_cross_entropy_bwd::<T>(r(&gx), r(&gq), r::<T>(&gd)[0], w(&mut go), rows, classes);
            Ok(())
        })
    }

    fn nt_xent_fwd(&self, sim: &CpuStorage, groups: &CpuStorage, loss: &CpuStorage, rows: usize, temperature: f32) -> Result<()> {
        on_dtype!(self, loss, T => {
            let (gs, gg, mut go) = (sim.read(), groups.read(), loss.write());
            nt_xent_fwd::<T>(r(&gs), r(&gg), w(&mut go), rows, temperature as f64)
        })
    }

    fn nt_xent_bwd(
        &self, sim: &CpuStorage, groups: &CpuStorage, dloss: &CpuStorage, dsim: &CpuStorage, rows: usize, temperature: f32,
    ) -> Result<()> {
        on_dtype!(self, dsim, T => {
            let (gs, gg, gd, mut go) = (sim.read(), groups.read(), dloss.read(), dsim.write());
            nt_xent_bwd::<T>(r(&gs), r(&gg), r::<T>(&gd)[0], w(&mut go), rows, temperature as f64)
        })
    }

    fn identity_penalty_fwd(&self, c: &CpuStorage, loss: &CpuStorage, d: usize, diag_weight: f32, off_weight: f32) -> Result<()> {
        on_dtype!(self, loss, T => {
            let (gc, mut go) = (c.read(), loss.write());
            identity_penalty_fwd::<T>(r(&gc), w(&mut go), d, diag_weight as f64, off_weight as f64);
            Ok(())
        })
    }

    fn identity_penalty_bwd(
        &self, c: &CpuStorage, dloss: &CpuStorage, dc: &CpuStorage, d: usize, diag_weight: f32, off_weight: f32,
    ) -> Result<()> {
        on_dtype!(self, dc, T => {
            let (gc, gd, mut go) = (c.read(), dloss.read(), dc.write());
            identity_penalty_bwd::<T>(r(&gc), r::<T>(&gd)[0], w(&mut go), d, diag_weight as f64, off_weight as f64);
            Ok(())
        })
    }

    fn cosine_loss_fwd(&self, p: &CpuStorage, z: &CpuStorage, out: &CpuStorage, rows: usize, dim: usize, eps: f32) -> Result<()> {
        on_dtype!(self, out, T => {
            let (gp, gz, mut go) = (p.read(), z.read(), out.write());
            cosine_loss_fwd::<T>(r(&gp), r(&gz), w(&mut go), rows, dim, eps as f64);
            Ok(())
        })
    }

    fn cosine_loss_bwd(
        &self, p: &CpuStorage, z: &CpuStorage, dloss: &CpuStorage, dp: &CpuStorage, dz: Option<&CpuStorage>, rows: usize, dim: usize,
        eps: f32,
    ) -> Result<()> {
        on_dtype!(self, dp, T => {
            let (gp, gz, gd) = (p.read(), z.read(), dloss.read());
            let mut gdp = dp.write();
            let mut gdz = dz.map(|s| s.write());
            cosine_loss_bwd::<T>(r(&gp), r(&gz), r::<T>(&gd)[0], w(&mut gdp), gdz.as_mut().map(w), rows, dim, eps as f64);
            Ok(())
        })
    }
}
