//! Losses reduced to one value (cross-entropy, cosine, NT-Xent, the identity penalty) and
//! their gradients, which take the upstream scalar gradient.

use crate::backend::*;
use crate::error::{Result, shape_err};
use crate::tensor::Tensor;

use super::elementwise::{mul, sum_axis};
use super::{out, same_dtype};

fn loss_rows<B: Backend>(op: &'static str, a: &Tensor<B>, b: &Tensor<B>, b_is_labels: bool) -> Result<(usize, usize)> {
    same_dtype(op, &[a, b])?;
    let ok = a.dims() == 2 && a.shape()[0] > 0 && if b_is_labels { b.shape() == [a.shape()[0]] } else { a.shape() == b.shape() };
    if !ok {
        let want = if b_is_labels { "logits [rows, classes] and labels [rows]" } else { "two [rows, dim] tensors of one shape" };
        return Err(shape_err(op, format!("needs {want}"), &[a.shape(), b.shape()]));
    }
    Ok((a.shape()[0], a.shape()[1]))
}

fn scalar_grad<B: Backend>(op: &'static str, g: &Tensor<B>) -> Result<()> {
    if g.numel() != 1 {
        return Err(shape_err(op, "upstream gradient of a loss must have one element", &[g.shape()]));
    }
    Ok(())
}

/// Mean cross-entropy; labels are class indices stored as floats, shape [rows].
pub fn cross_entropy<B: Backend>(logits: &Tensor<B>, labels: &Tensor<B>) -> Result<Tensor<B>> {
    let (rows, classes) = loss_rows("cross_entropy", logits, labels, true)?;
    let loss = out(logits, &[1])?;
    logits.backend().cross_entropy_fwd(logits.storage(), labels.storage(), loss.storage(), rows, classes)?;
    Ok(loss)
}

pub fn cross_entropy_bwd<B: Backend>(logits: &Tensor<B>, labels: &Tensor<B>, dloss: &Tensor<B>) -> Result<Tensor<B>> {
    let (rows, classes) = loss_rows("cross_entropy_bwd", logits, labels, true)?;
    scalar_grad("cross_entropy_bwd", dloss)?;
    let dx = out(logits, logits.shape())?;
    logits.backend().cross_entropy_bwd(logits.storage(), labels.storage(), dloss.storage(), dx.storage(), rows, classes)?;
    Ok(dx)
}

/// -mean_i cos(p_i, z_i), with F.normalize's eps clamp on each norm.
pub fn cosine_loss<B: Backend>(p: &Tensor<B>, z: &Tensor<B>, eps: f32) -> Result<Tensor<B>> {
    let (rows, dim) = loss_rows("cosine_loss", p, z, false)?;
    let loss = out(p, &[1])?;
    p.backend().cosine_loss_fwd(p.storage(), z.storage(), loss.storage(), rows, dim, eps)?;
    Ok(loss)
}

/// Returns dp and, when `want_dz`, dz.
pub fn cosine_loss_bwd<B: Backend>(
    p: &Tensor<B>,
    z: &Tensor<B>,
    dloss: &Tensor<B>,
    eps: f32,
    want_dz: bool,
) -> Result<(Tensor<B>, Option<Tensor<B>>)> {
    let (rows, dim) = loss_rows("cosine_loss_bwd", p, z, false)?;
    scalar_grad("cosine_loss_bwd", dloss)?;
    let dp = out(p, p.shape())?;
    let dz = if want_dz { Some(out(z, z.shape())?) } else { None };
    p.backend().cosine_loss_bwd(
        p.storage(),
        z.storage(),
        dloss.storage(),
        dp.storage(),
        dz.as_ref().map(|t| t.storage()),
        rows,
        dim,
        eps,
    )?;
    Ok((dp, dz))
}

/// Mean cross-entropy of logits [rows, classes] against soft targets q of the same shape.
pub fn soft_cross_entropy<B: Backend>(logits: &Tensor<B>, q: &Tensor<B>) -> Result<Tensor<B>> {
    let (rows, classes) = loss_rows("soft_cross_entropy", logits, q, false)?;
    let loss = out(logits, &[1])?;
    logits.backend().soft_cross_entropy_fwd(logits.storage(), q.storage(), loss.storage(), rows, classes)?;
    Ok(loss)
}

pub fn soft_cross_entropy_bwd<B: Backend>(logits: &Tensor<B>, q: &Tensor<B>, dloss: &Tensor<B>) -> Result<Tensor<B>> {
    let (rows, classes) = loss_rows("soft_cross_entropy_bwd", logits, q, false)?;
    scalar_grad("soft_cross_entropy_bwd", dloss)?;
    let dx = out(logits, logits.shape())?;
    logits.backend().soft_cross_entropy_bwd(logits.storage(), q.storage(), dloss.storage(), dx.storage(), rows, classes)?;
    Ok(dx)
}

fn nt_xent_rows<B: Backend>(op: &'static str, sim: &Tensor<B>, groups: &Tensor<B>, temperature: f32) -> Result<usize> {
    same_dtype(op, &[sim, groups])?;
    let rows = sim.shape().first().copied().unwrap_or(0);
    if sim.shape() != [rows, rows] || rows == 0 || groups.shape() != [rows] {
        return Err(shape_err(op, "needs similarities [rows, rows] and groups [rows]", &[sim.shape(), groups.shape()]));
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(crate::error::Error::Invalid { op, msg: format!("temperature must be a positive number (got {temperature})") });
    }
    Ok(rows)
}

/// NT-Xent over similarities sim [rows, rows] whose rows carry `groups` [rows] (ids as floats):
/// mean_r [lse_{j != r}(sim_rj / T) - lse_{j != r, g_j = g_r}(sim_rj / T)]. SimCLR's groups
/// are the image of each view; SupCon's are the labels.
pub fn nt_xent<B: Backend>(sim: &Tensor<B>, groups: &Tensor<B>, temperature: f32) -> Result<Tensor<B>> {
    let rows = nt_xent_rows("nt_xent", sim, groups, temperature)?;
    let loss = out(sim, &[1])?;
    sim.backend().nt_xent_fwd(sim.storage(), groups.storage(), loss.storage(), rows, temperature)?;
    Ok(loss)
}

pub fn nt_xent_bwd<B: Backend>(sim: &Tensor<B>, groups: &Tensor<B>, dloss: &Tensor<B>, temperature: f32) -> Result<Tensor<B>> {
    let rows = nt_xent_rows("nt_xent_bwd", sim, groups, temperature)?;
    scalar_grad("nt_xent_bwd", dloss)?;
    let dsim = out(sim, sim.shape())?;
    sim.backend().nt_xent_bwd(sim.storage(), groups.storage(), dloss.storage(), dsim.storage(), rows, temperature)?;
    Ok(dsim)
}

fn square_side<B: Backend>(op: &'static str, c: &Tensor<B>) -> Result<usize> {
    same_dtype(op, &[c])?;
    match c.shape() {
        [a, b] if a == b => Ok(*a),
        s => Err(shape_err(op, "needs a square matrix [d, d]", &[s])),
    }
}

/// diag_weight sum_i (c_ii - 1)^2 + off_weight sum_{i != j} c_ij^2 of c [d, d]: Barlow Twins'
/// loss on its cross-correlation, VICReg's covariance term (diag_weight 0).
pub fn identity_penalty<B: Backend>(c: &Tensor<B>, diag_weight: f32, off_weight: f32) -> Result<Tensor<B>> {
    let d = square_side("identity_penalty", c)?;
    let loss = out(c, &[1])?;
    c.backend().identity_penalty_fwd(c.storage(), loss.storage(), d, diag_weight, off_weight)?;
    Ok(loss)
}

pub fn identity_penalty_bwd<B: Backend>(c: &Tensor<B>, dloss: &Tensor<B>, diag_weight: f32, off_weight: f32) -> Result<Tensor<B>> {
    let d = square_side("identity_penalty_bwd", c)?;
    scalar_grad("identity_penalty_bwd", dloss)?;
    let dc = out(c, c.shape())?;
    c.backend().identity_penalty_bwd(c.storage(), dloss.storage(), dc.storage(), d, diag_weight, off_weight)?;
    Ok(dc)
}

/// ||t||, reduced on the backend: only the sum of squares comes back, not the tensor.
pub fn l2_norm<B: Backend>(t: &Tensor<B>) -> Result<f64> {
    let sq = sum_axis(&mul(t, t)?.reshape(&[t.numel()])?, 0)?;
    Ok((sq.scalar()? as f64).sqrt())
}
