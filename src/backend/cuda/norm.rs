//! Launches for kernels/norm.cu: batch norm (train, eval, backward), layer norm, softmax.

use super::{Arg, CudaBackend, CudaStorage, i32a, i64a, opt_ptr, ptr};
use crate::backend::ops::*;
use crate::backend::{BnTail, BnTrain, NormDims};
use crate::dtype::DType;
use crate::error::{Error, Result};

const OP: &str = "norm";
const THREADS: u32 = 256;
/// Rows per block of the one-warp-per-row kernels (256 threads).
const WARP_ROWS: usize = 8;

/// The kernel that reads batch norm's input x as stored: `f32`, or `bf16` where x is the BF16
/// output of a fused convolution (ConvOps::conv2d_batchnorm_out_dtype).
fn for_x(x: &CudaStorage, f32: &'static str, bf16: &'static str) -> &'static str {
    if x.dtype() == DType::BF16 { bf16 } else { f32 }
}

/// Only the passes of a fused convolution + batch norm read BF16 storage.
fn f32_input(b: &CudaBackend, op: &'static str, x: &CudaStorage) -> Result<()> {
    if x.dtype() != DType::F32 {
        let dtype = format!("{} input (only a fused convolution's output is read as bf16)", x.dtype());
        return Err(Error::DType { op, dtype, backend: b.name() });
    }
    Ok(())
}

/// Blocks of the column-statistics kernels: (channel blocks, row blocks, rows per row block).
/// About four blocks per SM, at least 32 rows each, at most 65535 row blocks.
fn colstats_grid(b: &CudaBackend, rows: usize, c: usize) -> (usize, usize, usize) {
    let cb = c.div_ceil(32);
    let want = (4 * b.sm_count() as usize).div_ceil(cb).max(1);
    let rpb = rows.div_ceil(want).max(32).max(rows.div_ceil(65535));
    (cb, rows.div_ceil(rpb).max(1), rpb)
}

/// Launches a column-statistics kernel (`inputs`, then the partials, rows, C and rows per row
/// block, then `totals`' outputs) over rows x C; returns the partial sums [nb, 2, C] in double
/// and nb. With `totals` (the backward passes), the launch also adds the partials and writes
/// the column totals there (ColTotals in kernels/norm.cu: counters, then its outputs).
fn column_stats(b: &CudaBackend, kernel: &str, inputs: &[Arg<'_>], rows: usize, c: usize, totals: &[Arg<'_>]) -> Result<(CudaStorage, usize)> {
    let (cb, nb, rpb) = colstats_grid(b, rows, c);
    let part = partials(b, nb, c)?;
    let mut args = inputs.to_vec();
    args.extend([ptr(&part), i32a(OP, rows)?, i32a(OP, c)?, i32a(OP, rpb)?]);
    if !totals.is_empty() {
        args.push(b.arrival_counters(cb)?);
        args.extend_from_slice(totals);
    }
    b.launch(kernel, (cb as u32, nb as u32, 1), (32, 8, 1), &args)?;
    Ok((part, nb))
}

/// Scratch for `nb` row blocks x 2 x C partial sums in double (2 f32 slots each), as
/// batchnorm_from_partials reads them.
pub(super) fn partials(b: &CudaBackend, nb: usize, c: usize) -> Result<CudaStorage> {
    b.scratch(nb * 2 * c * 2)
}

/// The forward's finalize kernel (kernels/norm.cu, column_pair_sums): 32 channels x 32 rows of
/// partials per block.
const FINALIZE_BLOCK: (u32, u32, u32) = (32, 32, 1);

fn finalize_grid(c: usize) -> (u32, u32, u32) {
    (c.div_ceil(32) as u32, 1, 1)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn batchnorm_fwd_train(b: &CudaBackend, x: &CudaStorage, bn: BnTrain<'_, CudaStorage>, d: &NormDims) -> Result<()> {
    let (rows, c) = (d.rows, d.channels);
    if rows * c == 0 {
        return Ok(());
    }
    f32_input(b, "batchnorm", x)?;
    let (part, nb) = column_stats(b, "batchnorm_stats_fwd_f32", &[ptr(x)], rows, c, &[])?;
    batchnorm_from_partials(b, &part, nb, x, bn, d)
}

/// Training batch norm of x from its column partial sums `part` [nb, 2, C] in double (by
/// batchnorm_stats_fwd_f32, or by a convolution's epilogue, whose output x may be BF16): the
/// statistics, then the output.
pub(super) fn batchnorm_from_partials(
    b: &CudaBackend, part: &CudaStorage, nb: usize, x: &CudaStorage, bn: BnTrain<'_, CudaStorage>, d: &NormDims,
) -> Result<()> {
    let BnTrain { gamma, beta, tail, y, save_mean, save_invstd, running } = bn;
    let (rows, c) = (d.rows, d.channels);
    let ss = b.scratch(2 * c)?;
    let (rm, rv, momentum) = match &running {
        Some(r) => (Some(r.mean), Some(r.var), r.momentum),
        None => (None, None, 0.0),
    };
    b.launch(
        "batchnorm_finalize_fwd_f32",
        finalize_grid(c),
        FINALIZE_BLOCK,
        &[
            ptr(part),
            i32a(OP, nb)?,
            i32a(OP, rows)?,
            i32a(OP, c)?,
            Arg::F32(d.eps),
            opt_ptr(gamma),
            opt_ptr(beta),
            ptr(save_mean),
            ptr(save_invstd),
            opt_ptr(rm),
            opt_ptr(rv),
            Arg::F32(momentum),
            ptr(&ss),
        ],
    )?;
    let n = rows * c;
    b.launch_over(
        for_x(x, "batchnorm_apply_fwd_f32", "batchnorm_apply_fwd_bf16"),
        n,
        &[ptr(x), ptr(&ss), opt_ptr(tail.residual), ptr(y), i64a(n), i32a(OP, c)?, Arg::I32(tail.relu as i32)],
    )
}

#[allow(clippy::too_many_arguments)]
pub(super) fn batchnorm_fwd_eval(
    b: &CudaBackend, x: &CudaStorage, gamma: Option<&CudaStorage>, beta: Option<&CudaStorage>, rm: &CudaStorage, rv: &CudaStorage,
    tail: BnTail<'_, CudaStorage>, y: &CudaStorage, d: &NormDims,
) -> Result<()> {
    let n = d.rows * d.channels;
    if n == 0 {
        return Ok(());
    }
    f32_input(b, "batchnorm_eval", x)?;
    b.launch_over(
        "batchnorm_eval_fwd_f32",
        n,
        &[
            ptr(x),
            opt_ptr(gamma),
            opt_ptr(beta),
            ptr(rm),
            ptr(rv),
            opt_ptr(tail.residual),
            ptr(y),
            i64a(n),
            i32a(OP, d.channels)?,
            Arg::F32(d.eps),
            Arg::I32(tail.relu as i32),
        ],
    )
}

fn warp_rows_grid(rows: usize) -> (u32, u32, u32) {
    (rows.div_ceil(WARP_ROWS) as u32, 1, 1)
}

/// softmax_fwd_f32 (x, -, y) or softmax_bwd_f32 (y, dy, dx).
pub(super) fn softmax(
    b: &CudaBackend, kernel: &str, a: &CudaStorage, g: Option<&CudaStorage>, out: &CudaStorage, d: &NormDims,
) -> Result<()> {
    if d.rows * d.channels == 0 {
        return Ok(());
    }
    let (rows, c) = (i32a(OP, d.rows)?, i32a(OP, d.channels)?);
    match g {
        None => b.launch(kernel, warp_rows_grid(d.rows), (THREADS, 1, 1), &[ptr(a), ptr(out), rows, c]),
        Some(g) => b.launch(kernel, warp_rows_grid(d.rows), (THREADS, 1, 1), &[ptr(a), ptr(g), ptr(out), rows, c]),
    }
}

impl NormOps for CudaBackend {
    fn batchnorm_fwd_train(&self, x: &CudaStorage, bn: BnTrain<'_, CudaStorage>, d: &NormDims) -> Result<()> {
        batchnorm_fwd_train(self, x, bn, d)
    }

    fn batchnorm_fwd_eval(
        &self, x: &CudaStorage, gamma: Option<&CudaStorage>, beta: Option<&CudaStorage>, running_mean: &CudaStorage,
        running_var: &CudaStorage, tail: BnTail<'_, CudaStorage>, y: &CudaStorage, d: &NormDims,
    ) -> Result<()> {
        batchnorm_fwd_eval(self, x, gamma, beta, running_mean, running_var, tail, y, d)
    }

    #[allow(clippy::too_many_arguments)]
    fn batchnorm_bwd(
        &self, x: &CudaStorage, dy: &CudaStorage, relu_out: Option<&CudaStorage>, gamma: Option<&CudaStorage>, beta: Option<&CudaStorage>,
        mean: &CudaStorage, invstd: &CudaStorage, dx: &CudaStorage, dresidual: Option<&CudaStorage>, dgamma: Option<&CudaStorage>, dbeta: Option<&CudaStorage>,
        d: &NormDims,
    ) -> Result<()> {
        let (rows, c) = (d.rows, d.channels);
        if rows * c == 0 {
            return Ok(());
        }
        // sums = (sum dy, sum dy xhat) = (dbeta, dgamma)
        let sums = self.scratch(2 * c)?;
        // A ReLU tail without residual: y = relu(x * scale + shift), so both passes recompute
        // where y was positive from x (ReluMask in kernels/norm.cu, bit for bit the forward's
        // values) instead of reading y: 4 bytes per element each.
        let from_x = relu_out.is_some() && dresidual.is_none();
        let relu = [if from_x { Arg::Ptr(0) } else { opt_ptr(relu_out) }, opt_ptr(gamma), opt_ptr(beta), Arg::I32(from_x as i32)];
        let mut inputs = vec![ptr(x), ptr(dy)];
        inputs.extend(relu);
        inputs.extend([ptr(mean), ptr(invstd)]);
        let stats = for_x(x, "batchnorm_stats_bwd_f32", "batchnorm_stats_bwd_bf16");
        column_stats(self, stats, &inputs, rows, c, &[ptr(&sums), opt_ptr(dbeta), opt_ptr(dgamma)])?;
        let n = rows * c;
        inputs.extend([ptr(&sums), ptr(dx), opt_ptr(dresidual), i64a(n), i32a(OP, c)?, i32a(OP, rows)?]);
        self.launch_over(for_x(x, "batchnorm_dx_bwd_f32", "batchnorm_dx_bwd_bf16"), n, &inputs)
    }

    fn l2_normalize_fwd(&self, x: &CudaStorage, y: &CudaStorage, norm: &CudaStorage, d: &NormDims) -> Result<()> {
        if d.rows * d.channels == 0 {
            return Ok(());
        }
        self.launch(
            "l2_normalize_fwd_f32",
            warp_rows_grid(d.rows),
            (THREADS, 1, 1),
            &[ptr(x), ptr(y), ptr(norm), i32a(OP, d.rows)?, i32a(OP, d.channels)?, Arg::F32(d.eps)],
        )
    }

    fn l2_normalize_bwd(&self, x: &CudaStorage, dy: &CudaStorage, norm: &CudaStorage, dx: &CudaStorage, d: &NormDims) -> Result<()> {
        if d.rows * d.channels == 0 {
            return Ok(());
        }
        self.launch(
            "l2_normalize_bwd_f32",
            warp_rows_grid(d.rows),
            (THREADS, 1, 1),
            &[ptr(x), ptr(dy), ptr(norm), ptr(dx), i32a(OP, d.rows)?, i32a(OP, d.channels)?, Arg::F32(d.eps)],
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn layernorm_fwd(
        &self, x: &CudaStorage, gamma: &CudaStorage, beta: &CudaStorage, y: &CudaStorage, mean: &CudaStorage, rstd: &CudaStorage,
        d: &NormDims,
    ) -> Result<()> {
        if d.rows * d.channels == 0 {
            return Ok(());
        }
        self.launch(
            "layernorm_fwd_f32",
            warp_rows_grid(d.rows),
            (THREADS, 1, 1),
            &[ptr(x), ptr(gamma), ptr(beta), ptr(y), ptr(mean), ptr(rstd), i32a(OP, d.rows)?, i32a(OP, d.channels)?, Arg::F32(d.eps)],
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn layernorm_bwd(
        &self, x: &CudaStorage, dy: &CudaStorage, gamma: &CudaStorage, mean: &CudaStorage, rstd: &CudaStorage, dx: &CudaStorage,
        dgamma: &CudaStorage, dbeta: &CudaStorage, d: &NormDims,
    ) -> Result<()> {
        let (rows, c) = (d.rows, d.channels);
        if rows * c == 0 {
            return Ok(());
        }
        self.launch(
            "layernorm_dx_bwd_f32",
            warp_rows_grid(rows),
            (THREADS, 1, 1),
            &[ptr(x), ptr(dy), ptr(gamma), ptr(mean), ptr(rstd), ptr(dx), i32a(OP, rows)?, i32a(OP, c)?],
        )?;
        // (sum dy xhat, sum dy) = (dgamma, dbeta)
        let inputs = [ptr(x), ptr(dy), ptr(mean), ptr(rstd)];
        column_stats(self, "layernorm_stats_bwd_f32", &inputs, rows, c, &[ptr(dgamma), ptr(dbeta)]).map(drop)
    }

    fn softmax_fwd(&self, x: &CudaStorage, y: &CudaStorage, d: &NormDims) -> Result<()> {
        softmax(self, "softmax_fwd_f32", x, None, y, d)
    }

    fn softmax_bwd(&self, y: &CudaStorage, dy: &CudaStorage, dx: &CudaStorage, d: &NormDims) -> Result<()> {
        softmax(self, "softmax_bwd_f32", y, Some(dy), dx, d)
    }

    /// logsumexp_fwd_f32: one warp per row.
    fn logsumexp_fwd(&self, x: &CudaStorage, lse: &CudaStorage, d: &NormDims) -> Result<()> {
        if d.rows * d.channels == 0 {
            return Ok(());
        }
        let (rows, c) = (i32a(OP, d.rows)?, i32a(OP, d.channels)?);
        self.launch("logsumexp_fwd_f32", warp_rows_grid(d.rows), (THREADS, 1, 1), &[ptr(x), ptr(lse), rows, c])
    }

    fn logsumexp_bwd(&self, x: &CudaStorage, lse: &CudaStorage, dlse: &CudaStorage, dx: &CudaStorage, d: &NormDims) -> Result<()> {
        if d.rows * d.channels == 0 {
            return Ok(());
        }
        let (rows, c) = (i32a(OP, d.rows)?, i32a(OP, d.channels)?);
        self.launch("logsumexp_bwd_f32", warp_rows_grid(d.rows), (THREADS, 1, 1), &[ptr(x), ptr(lse), ptr(dlse), ptr(dx), rows, c])
    }
}
