//! The fused SGD update (PyTorch semantics, dampening 0, no Nesterov) and the EMA update of a
//! momentum encoder.

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
