//! Launches for kernels/loss.cu: cross-entropy and the negative-cosine loss.

use super::{Arg, CudaBackend, CudaStorage, i32a, i64a, opt_ptr, ptr};
use crate::backend::ops::*;
use crate::error::Result;

const OP: &str = "loss";
const THREADS: u32 = 256;
/// Rows per block of the one-warp-per-row kernels.
const WARP_ROWS: usize = 8;

fn rows_grid(rows: usize) -> (u32, u32, u32) {
    (rows.div_ceil(WARP_ROWS).max(1) as u32, 1, 1)
}

/// loss[0] = alpha * sum(v[..n]), one block, fixed order.
fn reduce(b: &CudaBackend, v: &CudaStorage, loss: &CudaStorage, n: usize, alpha: f32) -> Result<()> {
    b.launch("loss_reduce_fwd_f32", (1, 1, 1), (1024, 1, 1), &[ptr(v), ptr(loss), i64a(n), Arg::F32(alpha)])
}

/// A loss whose kernel writes one term per row, `kernel(inputs.., per_row, rest..)` with one
/// warp per row, into scratch; then loss[0] = alpha * their sum (`reduce`).
fn per_row_loss(
    b: &CudaBackend, kernel: &str, rows: usize, inputs: &[Arg<'static>], rest: &[Arg<'static>], loss: &CudaStorage, alpha: f32,
) -> Result<()> {
    let per_row = b.scratch(rows.max(1))?;
    if rows > 0 {
        let args: Vec<Arg<'static>> = inputs.iter().copied().chain([ptr(&per_row)]).chain(rest.iter().copied()).collect();
        b.launch(kernel, rows_grid(rows), (THREADS, 1, 1), &args)?;
    }
    reduce(b, &per_row, loss, rows, alpha)
}

/// The backward of a row-wise softmax loss over [rows, classes] logits: one warp per row,
/// dlogits from the logits, the row's target (`target`: labels or soft targets) and dloss.
fn per_row_bwd(
    b: &CudaBackend, kernel: &str, logits: &CudaStorage, target: &CudaStorage, dloss: &CudaStorage, dlogits: &CudaStorage, rows: usize,
    classes: usize,
) -> Result<()> {
    if rows * classes == 0 {
        return Ok(());
    }
    let args = [ptr(logits), ptr(target), ptr(dloss), ptr(dlogits), i32a(OP, rows)?, i32a(OP, classes)?];
    b.launch(kernel, rows_grid(rows), (THREADS, 1, 1), &args)
}

impl LossOps for CudaBackend {
    fn cross_entropy_fwd(&self, logits: &CudaStorage, labels: &CudaStorage, loss: &CudaStorage, rows: usize, classes: usize) -> Result<()> {
        let dims = [i32a(OP, rows)?, i32a(OP, classes)?];
        per_row_loss(self, "cross_entropy_rows_fwd_f32", rows, &[ptr(logits), ptr(labels)], &dims, loss, 1.0 / rows.max(1) as f32)
    }

    fn cross_entropy_bwd(
        &self, logits: &CudaStorage, labels: &CudaStorage, dloss: &CudaStorage, dlogits: &CudaStorage, rows: usize, classes: usize,
    ) -> Result<()> {
        per_row_bwd(self, "cross_entropy_bwd_f32", logits, labels, dloss, dlogits, rows, classes)
    }

    fn soft_cross_entropy_fwd(&self, logits: &CudaStorage, q: &CudaStorage, loss: &CudaStorage, rows: usize, classes: usize) -> Result<()> {
        let dims = [i32a(OP, rows)?, i32a(OP, classes)?];
        per_row_loss(self, "soft_cross_entropy_fwd_f32", rows, &[ptr(logits), ptr(q)], &dims, loss, 1.0 / rows.max(1) as f32)
    }

    fn soft_cross_entropy_bwd(
        &self, logits: &CudaStorage, q: &CudaStorage, dloss: &CudaStorage, dlogits: &CudaStorage, rows: usize, classes: usize,
    ) -> Result<()> {
        per_row_bwd(self, "soft_cross_entropy_bwd_f32", logits, q, dloss, dlogits, rows, classes)
    }

    fn nt_xent_fwd(&self, sim: &CudaStorage, groups: &CudaStorage, loss: &CudaStorage, rows: usize, temperature: f32) -> Result<()> {
        let rest = [i32a(OP, rows)?, Arg::F32(1.0 / temperature)];
        per_row_loss(self, "nt_xent_fwd_f32", rows, &[ptr(sim), ptr(groups)], &rest, loss, 1.0 / rows.max(1) as f32)
    }

    fn nt_xent_bwd(
        &self, sim: &CudaStorage, groups: &CudaStorage, dloss: &CudaStorage, dsim: &CudaStorage, rows: usize, temperature: f32,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        self.launch(
            "nt_xent_bwd_f32",
            rows_grid(rows),
            (THREADS, 1, 1),
            &[ptr(sim), ptr(groups), ptr(dloss), ptr(dsim), i32a(OP, rows)?, Arg::F32(1.0 / temperature)],
        )
    }

    fn identity_penalty_fwd(&self, c: &CudaStorage, loss: &CudaStorage, d: usize, diag_weight: f32, off_weight: f32) -> Result<()> {
        let rest = [i32a(OP, d)?, Arg::F32(diag_weight), Arg::F32(off_weight)];
        per_row_loss(self, "identity_penalty_fwd_f32", d, &[ptr(c)], &rest, loss, 1.0)
    }

    fn identity_penalty_bwd(
        &self, c: &CudaStorage, dloss: &CudaStorage, dc: &CudaStorage, d: usize, diag_weight: f32, off_weight: f32,
    ) -> Result<()> {
        if d == 0 {
            return Ok(());
        }
        self.launch_over(
            "identity_penalty_bwd_f32",
            d * d,
            &[ptr(c), ptr(dloss), ptr(dc), i32a(OP, d)?, Arg::F32(diag_weight), Arg::F32(off_weight)],
        )
    }

    fn cosine_loss_fwd(&self, p: &CudaStorage, z: &CudaStorage, loss: &CudaStorage, rows: usize, dim: usize, eps: f32) -> Result<()> {
        let rest = [i32a(OP, rows)?, i32a(OP, dim)?, Arg::F32(eps)];
        per_row_loss(self, "cosine_loss_rows_fwd_f32", rows, &[ptr(p), ptr(z)], &rest, loss, -1.0 / rows.max(1) as f32)
    }

    #[allow(clippy::too_many_arguments)]
    fn cosine_loss_bwd(
        &self, p: &CudaStorage, z: &CudaStorage, dloss: &CudaStorage, dp: &CudaStorage, dz: Option<&CudaStorage>, rows: usize, dim: usize,
        eps: f32,
    ) -> Result<()> {
        if rows * dim == 0 {
            return Ok(());
        }
        self.launch(
            "cosine_loss_bwd_f32",
            rows_grid(rows),
            (THREADS, 1, 1),
            &[ptr(p), ptr(z), ptr(dloss), ptr(dp), opt_ptr(dz), i32a(OP, rows)?, i32a(OP, dim)?, Arg::F32(eps)],
        )
    }
}
