//! The losses, each a fused kernel writing a one-element device buffer.

use super::CoreOps;
use crate::error::Result;

pub trait LossOps: CoreOps {
    /// Mean cross-entropy of logits [rows, channels] against class indices stored as floats.
    fn cross_entropy_fwd(
        &self, logits: &Self::Storage, labels: &Self::Storage, loss: &Self::Storage, rows: usize, classes: usize,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_bwd(
        &self, logits: &Self::Storage, labels: &Self::Storage, dloss: &Self::Storage, dlogits: &Self::Storage, rows: usize, classes: usize,
    ) -> Result<()>;
    /// loss = -mean_i cos(p_i, z_i) over rows of p, z [rows, dim]; eps clamps each norm
    /// (F.normalize's rule: x / max(||x||, eps)).
    fn cosine_loss_fwd(&self, p: &Self::Storage, z: &Self::Storage, loss: &Self::Storage, rows: usize, dim: usize, eps: f32) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn cosine_loss_bwd(
        &self, p: &Self::Storage, z: &Self::Storage, dloss: &Self::Storage, dp: &Self::Storage, dz: Option<&Self::Storage>, rows: usize,
        dim: usize, eps: f32,
    ) -> Result<()>;

    /// Mean cross-entropy of logits [rows, classes] against soft targets q [rows, classes]:
    /// mean_r sum_j q_rj (logsumexp(x_r) - x_rj).
    fn soft_cross_entropy_fwd(
        &self, logits: &Self::Storage, q: &Self::Storage, loss: &Self::Storage, rows: usize, classes: usize,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn soft_cross_entropy_bwd(
        &self, logits: &Self::Storage, q: &Self::Storage, dloss: &Self::Storage, dlogits: &Self::Storage, rows: usize, classes: usize,
    ) -> Result<()>;
    /// NT-Xent over similarities sim [rows, rows] of rows carrying `groups` [rows] (ids stored
    /// as floats): loss = mean_r [lse_{j != r}(sim_rj / T) - lse_{j != r, g_j = g_r}(sim_rj / T)].
    /// One pass over sim; it is never copied, scaled or masked in memory.
    fn nt_xent_fwd(&self, sim: &Self::Storage, groups: &Self::Storage, loss: &Self::Storage, rows: usize, temperature: f32) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn nt_xent_bwd(
        &self, sim: &Self::Storage, groups: &Self::Storage, dloss: &Self::Storage, dsim: &Self::Storage, rows: usize, temperature: f32,
    ) -> Result<()>;
    /// loss = diag_weight sum_i (c_ii - 1)^2 + off_weight sum_{i != j} c_ij^2 for c [d, d].
    fn identity_penalty_fwd(&self, c: &Self::Storage, loss: &Self::Storage, d: usize, diag_weight: f32, off_weight: f32) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn identity_penalty_bwd(
        &self, c: &Self::Storage, dloss: &Self::Storage, dc: &Self::Storage, d: usize, diag_weight: f32, off_weight: f32,
    ) -> Result<()>;
}
