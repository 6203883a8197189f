//! The CPU backend: the reference every GPU kernel answers to. Obviously right first, then fast:
//! multi-threaded with rayon, GEMM from the `gemm` crate, NHWC activations, and every reduction
//! in a fixed order (fixed-size blocks combined in block order) so results do not depend on the
//! number of threads. Implements f32 and f64 (f64 for gradient checks) with the same generic code.

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
/// PyTorch's running-statistics update, which sync_bn's composed batch norm shares.
pub(crate) use norm::update_running;

use super::*;
use crate::dtype::DType;
use crate::error::{Error, Result};

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
        Ok(CpuBackend {
            pool: Arc::new(pool),
            buffers: Arc::new(BufferPool::default()),
            threads,
            poison: false,
            precision: Precision::Fp32,
        })
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

fn r<'a, T: Real>(g: &'a RwLockReadGuard<'_, CpuData>) -> &'a [T] {
    T::of_data(g)
}
fn w<'a, T: Real>(g: &'a mut RwLockWriteGuard<'_, CpuData>) -> &'a mut [T] {
    T::of_data_mut(g)
}

impl CoreOps for CpuBackend {
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
}
