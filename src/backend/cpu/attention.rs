//! Scaled dot-product attention, one (batch, head) slice per task. The CPU reference keeps
//! each slice's score matrix in memory; the GPU kernels are flash-style. Both save only the
//! per-row log-sum-exp for backward and recompute the probabilities there.

use rayon::prelude::*;

use super::Real;
use super::matmul::{Mat, gemm};
use super::{CpuBackend, CpuStorage, r, w};
use crate::backend::AttnDims;
use crate::backend::ops::*;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// P = softmax(scale * q k^T) for one slice, also returning each row's log-sum-exp.
fn probs<T: Real>(q: &[T], k: &[T], d: &AttnDims, p: &mut [T], lse: &mut [T]) {
    gemm(d.tq, d.tk, d.d, p, d.tk, false, Mat::new(q, d.d, false), Mat::new(k, d.d, true), false);
    for (row, l) in p.chunks_mut(d.tk).zip(lse.iter_mut()) {
        let scale = T::c(d.scale as f64);
        let max = row.iter().fold(T::neg_infinity(), |a, &b| a.max(b * scale));
        let mut sum = T::zero();
        for v in row.iter_mut() {
            *v = (*v * scale - max).exp();
            sum += *v;
        }
        for v in row.iter_mut() {
            *v = *v / sum;
        }
        *l = max + sum.ln();
    }
}

pub fn attention_fwd<T: Real>(q: &[T], k: &[T], v: &[T], o: &mut [T], lse: &mut [T], d: &AttnDims) {
    let (sq, sk) = (d.tq * d.d, d.tk * d.d);
    o.par_chunks_mut(sq).zip(lse.par_chunks_mut(d.tq)).enumerate().for_each(|(b, (ob, lb))| {
        let mut p = vec![T::zero(); d.tq * d.tk];
        let (qb, kb, vb) = (&q[b * sq..(b + 1) * sq], &k[b * sk..(b + 1) * sk], &v[b * sk..(b + 1) * sk]);
        probs(qb, kb, d, &mut p, lb);
        gemm(d.tq, d.d, d.tk, ob, d.d, false, Mat::new(&p, d.tk, false), Mat::new(vb, d.d, false), false);
    });
}

#[allow(clippy::too_many_arguments)]
pub fn attention_bwd<T: Real>(
    q: &[T], k: &[T], v: &[T], o: &[T], _lse: &[T], dout: &[T], dq: &mut [T], dk: &mut [T], dv: &mut [T], d: &AttnDims,
) {
    let (sq, sk) = (d.tq * d.d, d.tk * d.d);
    dq.par_chunks_mut(sq).zip(dk.par_chunks_mut(sk).zip(dv.par_chunks_mut(sk))).enumerate().for_each(|(b, (dqb, (dkb, dvb)))| {
        let (qb, kb, vb) = (&q[b * sq..(b + 1) * sq], &k[b * sk..(b + 1) * sk], &v[b * sk..(b + 1) * sk]);
        let (ob, dob) = (&o[b * sq..(b + 1) * sq], &dout[b * sq..(b + 1) * sq]);
        let mut p = vec![T::zero(); d.tq * d.tk];
        let mut lse = vec![T::zero(); d.tq];
        probs(qb, kb, d, &mut p, &mut lse);
        // dv = P^T dO
        gemm(d.tk, d.d, d.tq, dvb, d.d, false, Mat::new(&p, d.tk, true), Mat::new(dob, d.d, false), false);
        // dP = dO v^T, then dS = P * (dP - rowsum(dO * O)) * scale, in place
        let mut ds = vec![T::zero(); d.tq * d.tk];
        gemm(d.tq, d.tk, d.d, &mut ds, d.tk, false, Mat::new(dob, d.d, false), Mat::new(vb, d.d, true), false);
        let scale = T::c(d.scale as f64);
        for i in 0..d.tq {
            let di: T = (0..d.d).map(|j| dob[i * d.d + j] * ob[i * d.d + j]).sum();
            for j in 0..d.tk {
                let idx = i * d.tk + j;
                ds[idx] = p[idx] * (ds[idx] - di) * scale;
            }
        }
        // dq = dS k; dk = dS^T q
        gemm(d.tq, d.d, d.tk, dqb, d.d, false, Mat::new(&ds, d.tk, false), Mat::new(kb, d.d, false), false);
        gemm(d.tk, d.d, d.tq, dkb, d.d, false, Mat::new(&ds, d.tk, true), Mat::new(qb, d.d, false), false);
    });
}

impl AttentionOps for CpuBackend {
    fn attention_fwd(&self, q: &CpuStorage, k: &CpuStorage, v: &CpuStorage, o: &CpuStorage, lse: &CpuStorage, d: &AttnDims) -> Result<()> {
        on_dtype!(self, o, T => {
            let (gq, gk, gv) = (q.read(), k.read(), v.read());
            let (mut go, mut gl) = (o.write(), lse.write());
            attention_fwd::<T>(r(&gq), r(&gk), r(&gv), w(&mut go), w(&mut gl), d);
            Ok(())
        })
    }

    fn attention_bwd(
        &self, q: &CpuStorage, k: &CpuStorage, v: &CpuStorage, o: &CpuStorage, lse: &CpuStorage, dout: &CpuStorage, dq: &CpuStorage,
        dk: &CpuStorage, dv: &CpuStorage, d: &AttnDims,
    ) -> Result<()> {
        on_dtype!(self, dq, T => {
            let (gq, gk, gv, go, gl, gdo) = (q.read(), k.read(), v.read(), o.read(), lse.read(), dout.read());
            let (mut gdq, mut gdk, mut gdv) = (dq.write(), dk.write(), dv.write());
            attention_bwd::<T>(
                r(&gq), r(&gk), r(&gv), r(&go), r(&gl), r(&gdo), w(&mut gdq), w(&mut gdk), w(&mut gdv), d);
            Ok(())
        })
    }
}
