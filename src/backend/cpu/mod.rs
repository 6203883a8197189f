//! The CPU backend: the reference every GPU kernel answers to. Obviously right first, then fast:
//! multi-threaded with rayon, GEMM from the `gemm` crate, NHWC activations, and every reduction
//! in a fixed order (fixed-size blocks combined in block order) so results do not depend on the
//! number of threads. Implements f32 and f64 (f64 for gradient checks) with the same generic code.

mod attention;
mod buffer_pool;
mod conv;
mod elementwise;
mod layout;
mod loss;
mod matmul;
mod norm;
mod optim;
mod pool;
mod real;
mod winograd;

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use buffer_pool::BufferPool;

pub use real::Real;

use super::*;
use crate::error::{Error, Result};
use crate::tensor::DType;

/// The host buffer behind a CPU tensor.
pub enum CpuData {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// A lock gives the kernels `&[T]` inputs and a `&mut [T]` output through a shared handle;
/// `ops.rs` always hands a kernel an output distinct from its inputs.
pub struct CpuStorage {
    data: RwLock<CpuData>,
    /// Where the buffer returns when the storage is dropped.
    pool: Option<Arc<BufferPool>>,
}

impl Drop for CpuStorage {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            let data = std::mem::replace(self.data.get_mut().unwrap_or_else(|e| e.into_inner()), CpuData::F32(Vec::new()));
            pool.give(data);
        }
    }
}

impl CpuStorage {
    fn new(d: CpuData) -> Self {
        CpuStorage { data: RwLock::new(d), pool: None }
    }
    pub fn dtype(&self) -> DType {
        match &*self.read() {
            CpuData::F32(_) => DType::F32,
            CpuData::F64(_) => DType::F64,
        }
    }
    pub fn read(&self) -> RwLockReadGuard<'_, CpuData> {
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }
    pub fn write(&self) -> RwLockWriteGuard<'_, CpuData> {
        self.data.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone)]
pub struct CpuBackend {
    pool: Arc<rayon::ThreadPool>,
    buffers: Arc<BufferPool>,
    threads: usize,
    poison: bool,
    precision: Precision,
}

/// Keeps freed memory in the process (glibc): the kernels' per-call temporaries (Winograd tiles,
/// weight-gradient partials) are megabytes each, and by default glibc hands such blocks back to
/// the system and takes them again on the next call, so every step paid page faults and the
/// kernel's page clearing (11% of a ResNet-18 step in `perf`). Freed blocks up to 32 MB now
/// stay in the heap for reuse; larger ones are tensors, which the buffer pool keeps anyway.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes allocator tunables; called once, before our allocations matter.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        });
    }
}

impl CpuBackend {
    /// `threads == 0` uses every core.
    pub fn new(threads: usize) -> Result<Self> {
        keep_freed_memory();
        let threads = if threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { threads };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Other(format!("cpu backend: cannot start {threads} threads: {e}")))?;
        Ok(CpuBackend { pool: Arc::new(pool), buffers: Arc::new(BufferPool::default()), threads, poison: false, precision: Precision::Fp32 })
    }
    /// Fills every new buffer with NaN instead of zeros, so a kernel that leaves part of its
    /// output unwritten fails the conformance suite (GPU buffers are not cleared either).
    pub fn with_poison(mut self) -> Self {
        self.poison = true;
        self
    }
    /// Convolutions, matmuls and attention in `precision` (the tape adds the bf16 rounding
    /// points): the reference the CUDA backend's bf16 answers to.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }
    pub fn threads(&self) -> usize {
        self.threads
    }
    /// Bytes held by freed buffers waiting for reuse.
    pub fn pooled_bytes(&self) -> usize {
        self.buffers.pooled_bytes()
    }
    /// Releases pooled buffers to the system (e.g. between training and a large evaluation).
    pub fn release_pooled(&self) {
        self.buffers.clear()
    }
}

/// Runs `$body` with `$T` bound to the element type of storage `$s`, inside the backend's pool.
macro_rules! on_dtype {
    ($self:expr, $s:expr, $T:ident => $body:expr) => {{
        match $s.dtype() {
            DType::F32 => {
                type $T = f32;
                $self.pool.install(|| $body)
            }
            DType::F64 => {
                type $T = f64;
                $self.pool.install(|| $body)
            }
            other => Err(Error::DType { op: "cpu", dtype: other.to_string(), backend: "cpu".into() }),
        }
    }};
}

fn r<'a, T: Real>(g: &'a RwLockReadGuard<'_, CpuData>) -> &'a [T] {
    T::slice(g)
}
fn w<'a, T: Real>(g: &'a mut RwLockWriteGuard<'_, CpuData>) -> &'a mut [T] {
    T::slice_mut(g)
}

impl Backend for CpuBackend {
    type Storage = CpuStorage;

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }
    fn supports(&self, dtype: DType) -> bool {
        matches!(dtype, DType::F32 | DType::F64)
    }
    fn precision(&self) -> Precision {
        self.precision
    }

    fn alloc(&self, len: usize, dtype: DType) -> Result<CpuStorage> {
        let v = if self.poison { f64::NAN } else { 0.0 };
        let data = match self.buffers.take(dtype, len) {
            Some(mut d) => {
                if self.poison {
                    match &mut d {
                        CpuData::F32(x) => x.fill(f32::NAN),
                        CpuData::F64(x) => x.fill(f64::NAN),
                    }
                }
                d
            }
            None => match dtype {
                DType::F32 => CpuData::F32(vec![v as f32; len]),
                DType::F64 => CpuData::F64(vec![v; len]),
                other => return Err(Error::DType { op: "alloc", dtype: other.to_string(), backend: "cpu".into() }),
            },
        };
        Ok(CpuStorage { data: RwLock::new(data), pool: Some(self.buffers.clone()) })
    }
    fn upload_f32(&self, data: &[f32], dtype: DType) -> Result<CpuStorage> {
        match dtype {
            DType::F32 => Ok(CpuStorage::new(CpuData::F32(data.to_vec()))),
            DType::F64 => Ok(CpuStorage::new(CpuData::F64(data.iter().map(|&x| x as f64).collect()))),
            other => Err(Error::DType { op: "upload", dtype: other.to_string(), backend: "cpu".into() }),
        }
    }
    fn upload_f64(&self, data: &[f64], dtype: DType) -> Result<CpuStorage> {
        match dtype {
            DType::F32 => Ok(CpuStorage::new(CpuData::F32(data.iter().map(|&x| x as f32).collect()))),
            DType::F64 => Ok(CpuStorage::new(CpuData::F64(data.to_vec()))),
            other => Err(Error::DType { op: "upload", dtype: other.to_string(), backend: "cpu".into() }),
        }
    }
    fn download_f32(&self, s: &CpuStorage) -> Result<Vec<f32>> {
        Ok(match &*s.read() {
            CpuData::F32(v) => v.clone(),
            CpuData::F64(v) => v.iter().map(|&x| x as f32).collect(),
        })
    }
    fn download_f64(&self, s: &CpuStorage) -> Result<Vec<f64>> {
        Ok(match &*s.read() {
            CpuData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            CpuData::F64(v) => v.clone(),
        })
    }
    fn fill(&self, s: &CpuStorage, value: f32) -> Result<()> {
        on_dtype!(self, s, T => {
            let mut g = s.write();
            elementwise::fill::<T>(w(&mut g), T::c(value as f64));
            Ok(())
        })
    }
    fn copy(&self, src: &CpuStorage, dst: &CpuStorage) -> Result<()> {
        on_dtype!(self, dst, T => {
            let s = src.read();
            let mut d = dst.write();
            w::<T>(&mut d).copy_from_slice(r::<T>(&s));
            Ok(())
        })
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn matmul(&self, a: &CpuStorage, b: &CpuStorage, c: &CpuStorage, d: &MatmulDims) -> Result<()> {
        on_dtype!(self, c, T => {
            let (ga, gb, mut gc) = (a.read(), b.read(), c.write());
            matmul::matmul::<T>(r(&ga), r(&gb), w(&mut gc), d);
            Ok(())
        })
    }

    fn conv2d_fwd(&self, x: &CpuStorage, wt: &CpuStorage, y: &CpuStorage, d: &Conv2dDims) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, gw, mut gy) = (x.read(), wt.read(), y.write());
            conv::conv2d_fwd::<T>(r(&gx), r(&gw), w(&mut gy), d);
            Ok(())
        })
    }
    fn conv2d_bwd_data(&self, dy: &CpuStorage, wt: &CpuStorage, dx: &CpuStorage, d: &Conv2dDims) -> Result<()> {
        on_dtype!(self, dx, T => {
            let (gdy, gw, mut gdx) = (dy.read(), wt.read(), dx.write());
            conv::conv2d_bwd_data::<T>(r(&gdy), r(&gw), w(&mut gdx), d);
            Ok(())
        })
    }
    fn conv2d_bwd_weight(&self, x: &CpuStorage, dy: &CpuStorage, dw: &CpuStorage, d: &Conv2dDims) -> Result<()> {
        on_dtype!(self, dw, T => {
            let (gx, gdy, mut gdw) = (x.read(), dy.read(), dw.write());
            conv::conv2d_bwd_weight::<T>(r(&gx), r(&gdy), w(&mut gdw), d);
            Ok(())
        })
    }

    fn batchnorm_fwd_train(&self, x: &CpuStorage, bn: BnTrain<'_, CpuStorage>, d: &NormDims) -> Result<()> {
        on_dtype!(self, bn.y, T => {
            let gx = x.read();
            let gg = bn.gamma.map(|g| g.read());
            let gb = bn.beta.map(|b| b.read());
            let gres = bn.tail.residual.map(|s| s.read());
            let tl = norm::Tail { residual: gres.as_ref().map(r), relu: bn.tail.relu };
            let (mut gy, mut gm, mut gi) = (bn.y.write(), bn.save_mean.write(), bn.save_invstd.write());
            let (mean, var) = norm::batchnorm_fwd_train::<T>(
                r(&gx), gg.as_ref().map(r), gb.as_ref().map(r), tl, w(&mut gy), w(&mut gm), w(&mut gi), d);
            if let Some(rs) = bn.running {
                let (mut rm, mut rv) = (rs.mean.write(), rs.var.write());
                norm::update_running::<T>(w(&mut rm), w(&mut rv), &mean, &var, d.rows, rs.momentum);
            }
            Ok(())
        })
    }
    fn batchnorm_fwd_eval(
        &self,
        x: &CpuStorage,
        gamma: Option<&CpuStorage>,
        beta: Option<&CpuStorage>,
        running_mean: &CpuStorage,
        running_var: &CpuStorage,
        tail: BnTail<'_, CpuStorage>,
        y: &CpuStorage,
        d: &NormDims,
    ) -> Result<()> {
        on_dtype!(self, y, T => {
            let gx = x.read();
            let gg = gamma.map(|g| g.read());
            let gb = beta.map(|b| b.read());
            let (rm, rv) = (running_mean.read(), running_var.read());
            let gres = tail.residual.map(|s| s.read());
            let tl = norm::Tail { residual: gres.as_ref().map(r), relu: tail.relu };
            let mut gy = y.write();
            norm::batchnorm_fwd_eval::<T>(r(&gx), gg.as_ref().map(r), gb.as_ref().map(r), r(&rm), r(&rv), tl, w(&mut gy), d);
            Ok(())
        })
    }
    fn batchnorm_bwd(
        &self,
        x: &CpuStorage,
        dy: &CpuStorage,
        relu_out: Option<&CpuStorage>,
        gamma: Option<&CpuStorage>,
        save_mean: &CpuStorage,
        save_invstd: &CpuStorage,
        dx: &CpuStorage,
        dresidual: Option<&CpuStorage>,
        dgamma: Option<&CpuStorage>,
        dbeta: Option<&CpuStorage>,
        d: &NormDims,
    ) -> Result<()> {
        on_dtype!(self, dx, T => {
            let (gx, gdy, gm, gi) = (x.read(), dy.read(), save_mean.read(), save_invstd.read());
            let gg = gamma.map(|g| g.read());
            let gy = relu_out.map(|s| s.read());
            let mut gdx = dx.write();
            let mut gdr = dresidual.map(|s| s.write());
            let (dg, db) = norm::batchnorm_bwd::<T>(
                r(&gx), r(&gdy), gy.as_ref().map(r), gg.as_ref().map(r), r(&gm), r(&gi), w(&mut gdx), gdr.as_mut().map(w), d);
            if let Some(s) = dgamma {
                let mut g = s.write();
                norm::store_f64::<T>(w(&mut g), &dg);
            }
            if let Some(s) = dbeta {
                let mut g = s.write();
                norm::store_f64::<T>(w(&mut g), &db);
            }
            Ok(())
        })
    }
    fn layernorm_fwd(
        &self,
        x: &CpuStorage,
        gamma: &CpuStorage,
        beta: &CpuStorage,
        y: &CpuStorage,
        save_mean: &CpuStorage,
        save_rstd: &CpuStorage,
        d: &NormDims,
    ) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, gg, gb) = (x.read(), gamma.read(), beta.read());
            let (mut gy, mut gm, mut gr) = (y.write(), save_mean.write(), save_rstd.write());
            norm::layernorm_fwd::<T>(r(&gx), r(&gg), r(&gb), w(&mut gy), w(&mut gm), w(&mut gr), d);
            Ok(())
        })
    }
    fn layernorm_bwd(
        &self,
        x: &CpuStorage,
        dy: &CpuStorage,
        gamma: &CpuStorage,
        save_mean: &CpuStorage,
        save_rstd: &CpuStorage,
        dx: &CpuStorage,
        dgamma: &CpuStorage,
        dbeta: &CpuStorage,
        d: &NormDims,
    ) -> Result<()> {
        on_dtype!(self, dx, T => {
            let (gx, gdy, gg, gm, gr) = (x.read(), dy.read(), gamma.read(), save_mean.read(), save_rstd.read());
            let (mut gdx, mut gdg, mut gdb) = (dx.write(), dgamma.write(), dbeta.write());
            norm::layernorm_bwd::<T>(r(&gx), r(&gdy), r(&gg), r(&gm), r(&gr), w(&mut gdx), w(&mut gdg), w(&mut gdb), d);
            Ok(())
        })
    }
    fn l2_normalize_fwd(&self, x: &CpuStorage, y: &CpuStorage, norm: &CpuStorage, d: &NormDims) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, mut gy, mut gn) = (x.read(), y.write(), norm.write());
            norm::l2_normalize_fwd::<T>(r(&gx), w(&mut gy), w(&mut gn), d);
            Ok(())
        })
    }
    fn l2_normalize_bwd(&self, x: &CpuStorage, dy: &CpuStorage, norm: &CpuStorage, dx: &CpuStorage, d: &NormDims) -> Result<()> {
        on_dtype!(self, dx, T => {
            let (gx, gdy, gn, mut gdx) = (x.read(), dy.read(), norm.read(), dx.write());
            norm::l2_normalize_bwd::<T>(r(&gx), r(&gdy), r(&gn), w(&mut gdx), d);
            Ok(())
        })
    }
    fn softmax_fwd(&self, x: &CpuStorage, y: &CpuStorage, d: &NormDims) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, mut gy) = (x.read(), y.write());
            norm::softmax_fwd::<T>(r(&gx), w(&mut gy), d.channels);
            Ok(())
        })
    }
    fn softmax_bwd(&self, y: &CpuStorage, dy: &CpuStorage, dx: &CpuStorage, d: &NormDims) -> Result<()> {
        on_dtype!(self, dx, T => {
            let (gy, gdy, mut gdx) = (y.read(), dy.read(), dx.write());
            norm::softmax_bwd::<T>(r(&gy), r(&gdy), w(&mut gdx), d.channels);
            Ok(())
        })
    }
    fn logsumexp_fwd(&self, x: &CpuStorage, lse: &CpuStorage, d: &NormDims) -> Result<()> {
        on_dtype!(self, lse, T => {
            let (gx, mut gl) = (x.read(), lse.write());
            norm::logsumexp_fwd::<T>(r(&gx), w(&mut gl), d.channels);
            Ok(())
        })
    }
    fn logsumexp_bwd(&self, x: &CpuStorage, lse: &CpuStorage, dlse: &CpuStorage, dx: &CpuStorage, d: &NormDims) -> Result<()> {
        on_dtype!(self, dx, T => {
            let (gx, gl, gg, mut gdx) = (x.read(), lse.read(), dlse.read(), dx.write());
            norm::logsumexp_bwd::<T>(r(&gx), r(&gl), r(&gg), w(&mut gdx), d.channels);
            Ok(())
        })
    }

    fn attention_fwd(&self, q: &CpuStorage, k: &CpuStorage, v: &CpuStorage, o: &CpuStorage, lse: &CpuStorage, d: &AttnDims) -> Result<()> {
        on_dtype!(self, o, T => {
            let (gq, gk, gv) = (q.read(), k.read(), v.read());
            let (mut go, mut gl) = (o.write(), lse.write());
            attention::attention_fwd::<T>(r(&gq), r(&gk), r(&gv), w(&mut go), w(&mut gl), d);
            Ok(())
        })
    }
    fn attention_bwd(
        &self,
        q: &CpuStorage,
        k: &CpuStorage,
        v: &CpuStorage,
        o: &CpuStorage,
        lse: &CpuStorage,
        dout: &CpuStorage,
        dq: &CpuStorage,
        dk: &CpuStorage,
        dv: &CpuStorage,
        d: &AttnDims,
    ) -> Result<()> {
        on_dtype!(self, dq, T => {
            let (gq, gk, gv, go, gl, gdo) = (q.read(), k.read(), v.read(), o.read(), lse.read(), dout.read());
            let (mut gdq, mut gdk, mut gdv) = (dq.write(), dk.write(), dv.write());
            attention::attention_bwd::<T>(
                r(&gq), r(&gk), r(&gv), r(&go), r(&gl), r(&gdo), w(&mut gdq), w(&mut gdk), w(&mut gdv), d);
            Ok(())
        })
    }

    fn unary_fwd(&self, op: Unary, x: &CpuStorage, y: &CpuStorage, _n: usize) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, mut gy) = (x.read(), y.write());
            elementwise::unary_fwd::<T>(op, r(&gx), w(&mut gy));
            Ok(())
        })
    }
    fn unary_bwd(&self, op: Unary, x: &CpuStorage, dy: &CpuStorage, dx: &CpuStorage, _n: usize) -> Result<()> {
        on_dtype!(self, dx, T => {
            let (gx, gdy, mut gdx) = (x.read(), dy.read(), dx.write());
            elementwise::unary_bwd::<T>(op, r(&gx), r(&gdy), w(&mut gdx));
            Ok(())
        })
    }
    fn binary(&self, op: Binary, a: &CpuStorage, b: &CpuStorage, out: &CpuStorage, _n: usize, b_len: usize) -> Result<()> {
        on_dtype!(self, out, T => {
            let (ga, gb, mut go) = (a.read(), b.read(), out.write());
            elementwise::binary::<T>(op, r(&ga), r(&gb), w(&mut go), b_len);
            Ok(())
        })
    }
    fn scale(&self, x: &CpuStorage, y: &CpuStorage, alpha: f32, _n: usize) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, mut gy) = (x.read(), y.write());
            elementwise::scale::<T>(r(&gx), w(&mut gy), T::c(alpha as f64));
            Ok(())
        })
    }
    fn channel_scale(&self, x: &CpuStorage, s: &CpuStorage, y: &CpuStorage, d: &AxisDims) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, gs, mut gy) = (x.read(), s.read(), y.write());
            elementwise::channel_scale::<T>(r(&gx), r(&gs), w(&mut gy), d);
            Ok(())
        })
    }
    fn sum_axis(&self, x: &CpuStorage, y: &CpuStorage, d: &AxisDims) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, mut gy) = (x.read(), y.write());
            elementwise::sum_axis::<T>(r(&gx), w(&mut gy), d);
            Ok(())
        })
    }

    fn maxpool2d_fwd(&self, x: &CpuStorage, y: &CpuStorage, d: &PoolDims) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, mut gy) = (x.read(), y.write());
            pool::maxpool2d_fwd::<T>(r(&gx), w(&mut gy), d);
            Ok(())
        })
    }
    fn maxpool2d_bwd(&self, x: &CpuStorage, dy: &CpuStorage, dx: &CpuStorage, d: &PoolDims) -> Result<()> {
        on_dtype!(self, dx, T => {
            let (gx, gdy, mut gdx) = (x.read(), dy.read(), dx.write());
            pool::maxpool2d_bwd::<T>(r(&gx), r(&gdy), w(&mut gdx), d);
            Ok(())
        })
    }
    fn avgpool_global_fwd(&self, x: &CpuStorage, y: &CpuStorage, d: &AxisDims) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, mut gy) = (x.read(), y.write());
            pool::avgpool_global_fwd::<T>(r(&gx), w(&mut gy), d);
            Ok(())
        })
    }
    fn avgpool_global_bwd(&self, dy: &CpuStorage, dx: &CpuStorage, d: &AxisDims) -> Result<()> {
        on_dtype!(self, dx, T => {
            let (gdy, mut gdx) = (dy.read(), dx.write());
            pool::avgpool_global_bwd::<T>(r(&gdy), w(&mut gdx), d);
            Ok(())
        })
    }

    fn cross_entropy_fwd(&self, logits: &CpuStorage, labels: &CpuStorage, loss: &CpuStorage, rows: usize, classes: usize) -> Result<()> {
        on_dtype!(self, loss, T => {
            let (gx, gl, mut go) = (logits.read(), labels.read(), loss.write());
            loss::cross_entropy_fwd::<T>(r(&gx), r(&gl), w(&mut go), rows, classes)
        })
    }
    fn cross_entropy_bwd(
        &self,
        logits: &CpuStorage,
        labels: &CpuStorage,
        dloss: &CpuStorage,
        dlogits: &CpuStorage,
        rows: usize,
        classes: usize,
    ) -> Result<()> {
        on_dtype!(self, dlogits, T => {
            let (gx, gl, gd, mut go) = (logits.read(), labels.read(), dloss.read(), dlogits.write());
            loss::cross_entropy_bwd::<T>(r(&gx), r(&gl), r::<T>(&gd)[0], w(&mut go), rows, classes)
        })
    }
    fn soft_cross_entropy_fwd(&self, logits: &CpuStorage, q: &CpuStorage, loss: &CpuStorage, rows: usize, classes: usize) -> Result<()> {
        on_dtype!(self, loss, T => {
            let (gx, gq, mut go) = (logits.read(), q.read(), loss.write());
            loss::soft_cross_entropy_fwd::<T>(r(&gx), r(&gq), w(&mut go), rows, classes);
            Ok(())
        })
    }
    fn soft_cross_entropy_bwd(
        &self,
        logits: &CpuStorage,
        q: &CpuStorage,
        dloss: &CpuStorage,
        dlogits: &CpuStorage,
        rows: usize,
        classes: usize,
    ) -> Result<()> {
        on_dtype!(self, dlogits, T => {
            let (gx, gq, gd, mut go) = (logits.read(), q.read(), dloss.read(), dlogits.write());
            loss::soft_cross_entropy_bwd::<T>(r(&gx), r(&gq), r::<T>(&gd)[0], w(&mut go), rows, classes);
            Ok(())
        })
    }
    fn nt_xent_fwd(&self, sim: &CpuStorage, groups: &CpuStorage, loss: &CpuStorage, rows: usize, temperature: f32) -> Result<()> {
        on_dtype!(self, loss, T => {
            let (gs, gg, mut go) = (sim.read(), groups.read(), loss.write());
            loss::nt_xent_fwd::<T>(r(&gs), r(&gg), w(&mut go), rows, temperature as f64)
        })
    }
    fn nt_xent_bwd(
        &self,
        sim: &CpuStorage,
        groups: &CpuStorage,
        dloss: &CpuStorage,
        dsim: &CpuStorage,
        rows: usize,
        temperature: f32,
    ) -> Result<()> {
        on_dtype!(self, dsim, T => {
            let (gs, gg, gd, mut go) = (sim.read(), groups.read(), dloss.read(), dsim.write());
            loss::nt_xent_bwd::<T>(r(&gs), r(&gg), r::<T>(&gd)[0], w(&mut go), rows, temperature as f64)
        })
    }
    fn identity_penalty_fwd(&self, c: &CpuStorage, loss: &CpuStorage, d: usize, diag_weight: f32, off_weight: f32) -> Result<()> {
        on_dtype!(self, loss, T => {
            let (gc, mut go) = (c.read(), loss.write());
            loss::identity_penalty_fwd::<T>(r(&gc), w(&mut go), d, diag_weight as f64, off_weight as f64);
            Ok(())
        })
    }
    fn identity_penalty_bwd(
        &self,
        c: &CpuStorage,
        dloss: &CpuStorage,
        dc: &CpuStorage,
        d: usize,
        diag_weight: f32,
        off_weight: f32,
    ) -> Result<()> {
        on_dtype!(self, dc, T => {
            let (gc, gd, mut go) = (c.read(), dloss.read(), dc.write());
            loss::identity_penalty_bwd::<T>(r(&gc), r::<T>(&gd)[0], w(&mut go), d, diag_weight as f64, off_weight as f64);
            Ok(())
        })
    }
    fn cosine_loss_fwd(&self, p: &CpuStorage, z: &CpuStorage, out: &CpuStorage, rows: usize, dim: usize, eps: f32) -> Result<()> {
        on_dtype!(self, out, T => {
            let (gp, gz, mut go) = (p.read(), z.read(), out.write());
            loss::cosine_loss_fwd::<T>(r(&gp), r(&gz), w(&mut go), rows, dim, eps as f64);
            Ok(())
        })
    }
    fn cosine_loss_bwd(
        &self,
        p: &CpuStorage,
        z: &CpuStorage,
        dloss: &CpuStorage,
        dp: &CpuStorage,
        dz: Option<&CpuStorage>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        on_dtype!(self, dp, T => {
            let (gp, gz, gd) = (p.read(), z.read(), dloss.read());
            let mut gdp = dp.write();
            let mut gdz = dz.map(|s| s.write());
            loss::cosine_loss_bwd::<T>(r(&gp), r(&gz), r::<T>(&gd)[0], w(&mut gdp), gdz.as_mut().map(w), rows, dim, eps as f64);
            Ok(())
        })
    }

    fn sgd_step(&self, tensors: &[SgdTensor<'_, CpuStorage>], momentum: f32, on_device: Option<SgdOnDevice<'_, CpuStorage>>) -> Result<()> {
        let Some(tensors) = crate::backend::sgd_on_host(self, tensors, on_device)? else { return Ok(()) };
        for t in &tensors {
            on_dtype!(self, t.param, T => {
                let g = t.grad.read();
                let (mut p, mut m) = (t.param.write(), t.momentum_buf.write());
                optim::sgd::<T>(w(&mut p), r(&g), w(&mut m), t.lr as f64, t.weight_decay as f64, momentum as f64);
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
                optim::ema_update::<T>(w(&mut tgt), r(&src), tau as f64);
                Ok::<(), Error>(())
            })?;
        }
        Ok(())
    }

    fn permute(&self, x: &CpuStorage, y: &CpuStorage, shape: &[usize], perm: &[usize]) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, mut gy) = (x.read(), y.write());
            layout::permute::<T>(r(&gx), w(&mut gy), shape, perm);
            Ok(())
        })
    }
    fn slice(&self, x: &CpuStorage, y: &CpuStorage, d: &SliceDims) -> Result<()> {
        on_dtype!(self, y, T => {
            let (gx, mut gy) = (x.read(), y.write());
            layout::slice::<T>(r(&gx), w(&mut gy), d);
            Ok(())
        })
    }
    fn slice_assign(&self, src: &CpuStorage, dst: &CpuStorage, d: &SliceDims) -> Result<()> {
        on_dtype!(self, dst, T => {
            let (gs, mut gd) = (src.read(), dst.write());
            layout::slice_assign::<T>(r(&gs), w(&mut gd), d);
            Ok(())
        })
    }
}
