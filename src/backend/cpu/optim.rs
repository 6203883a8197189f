//! The fused SGD update (PyTorch semantics, dampening 0, no Nesterov) and the EMA update of a
//! momentum encoder.

use rayon::prelude::*;

use super::Real;

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
