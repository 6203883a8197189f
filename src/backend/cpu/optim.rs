//! The fused SGD update (PyTorch semantics, dampening 0, no Nesterov), the AdamW update
//! (torch.optim.AdamW's) and the EMA update of a momentum encoder.

use rayon::prelude::*;

use super::Real;
use super::{CpuBackend, CpuStorage, r, w};
use crate::backend::ops::*;
use crate::dtype::DType;
use crate::error::{Error, Result};

pub fn sgd<T: Real>(param: &mut [T], grad: &[T], buf: &mut [T], lr: f64, wd: f64, momentum: f64) {
    param.par_chunks_mut(1 << 14).zip(grad.par_chunks(1 << 14).zip(buf.par_chunks_mut(1 << 14))).for_each(|(p, (g, b))| {
        for ((p, &g), b) in p.iter_mut().zip(g).zip(b.iter_mut()) {
            let d = g.f64() + wd * p.f64();
            let nb = momentum * b.f64() + d;
            *b = T::c(nb);
            *p = T::c(p.f64() - lr * nb);
        }
    });
}

/// AdamW on one tensor, in f64 (torch.optim.AdamW's order): p *= decay; m = b1 m + (1 - b1) g;
/// v = b2 v + (1 - b2) g^2; p -= step_size m / (sqrt(v) / bc2_sqrt + eps). `f` holds
/// (decay, step_size, bc2_sqrt) from `adamw_factors`.
pub fn adamw<T: Real>(param: &mut [T], grad: &[T], m: &mut [T], v: &mut [T], f: (f64, f64, f64), h: &AdamWHyper) {
    let (decay, step_size, bc2_sqrt) = f;
    let (b1, b2, eps) = (h.beta1, h.beta2, h.eps);
    const CHUNK: usize = 1 << 14;
    param.par_chunks_mut(CHUNK).zip(grad.par_chunks(CHUNK)).zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK))).for_each(
        |((p, g), (m, v))| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = g.f64();
                let nm = b1 * m.f64() + (1.0 - b1) * g;
                let nv = b2 * v.f64() + (1.0 - b2) * g * g;
                *m = T::c(nm);
                *v = T::c(nv);
                *p = T::c(p.f64() * decay - step_size * nm / (nv.sqrt() / bc2_sqrt + eps));
            }
        },
    );
}

/// target = tau * target + (1 - tau) * source, as solo-learn's MomentumUpdater (in f64 here).
pub fn ema_update<T: Real>(target: &mut [T], source: &[T], tau: f64) {
    target.par_chunks_mut(1 << 14).zip(source.par_chunks(1 << 14)).for_each(|(t, s)| {
        for (t, &s) in t.iter_mut().zip(s) {
            *t = T::c(tau * t.f64() + (1.0 - tau) * s.f64());
        }
    });
}

impl OptimOps for CpuBackend {
    fn sgd_step(&self, tensors: &[SgdTensor<'_, CpuStorage>], momentum: f32, on_device: Option<SgdOnDevice<'_, CpuStorage>>) -> Result<()> {
        let Some(tensors) = crate::backend::sgd_on_host(self, tensors, on_device)? else { return Ok(()) };
        for t in &tensors {
            on_dtype!(self, t.param, T => {
                let g = t.grad.read();
                let (mut p, mut m) = (t.param.write(), t.momentum_buf.write());
                sgd::<T>(w(&mut p), r(&g), w(&mut m), t.lr as f64, t.weight_decay as f64, momentum as f64);
                Ok::<(), Error>(())
            })?;
        }
        Ok(())
    }

    fn adamw_step(&self, tensors: &[AdamWTensor<'_, CpuStorage>], hyper: AdamWHyper) -> Result<()> {
        for t in tensors {
            let f = adamw_factors(t, &hyper);
            on_dtype!(self, t.param, T => {
                let g = t.grad.read();
                let (mut p, mut m, mut v) = (t.param.write(), t.exp_avg.write(), t.exp_avg_sq.write());
                adamw::<T>(w(&mut p), r(&g), w(&mut m), w(&mut v), f, &hyper);
                Ok::<(), Error>(())
            })?;
        }
        Ok(())
    }

    fn ema_update(&self, tensors: &[EmaTensor<'_, CpuStorage>], tau: f32) -> Result<()> {
        for t in tensors {
            on_dtype!(self, t.target, T => {
                let src = t.source.read();
                let mut tgt = t.target.write();
                ema_update::<T>(w(&mut tgt), r(&src), tau as f64);
                Ok::<(), Error>(())
            })?;
        }
        Ok(())
    }
}
