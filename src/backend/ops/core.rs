//! The ground every family stands on: the device buffer type, memory, synchronisation and
//! recorded graphs (CUDA graphs; other backends say they have none).

use crate::dtype::{DType, Precision};
use crate::error::Result;

/// A graph recorded by `Backend::graph_begin` / `graph_end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GraphId(pub u64);

pub trait CoreOps: Clone + Send + Sync + 'static {
    /// A device buffer. It carries its own dtype and length.
    type Storage: Send + Sync;

    /// Human-readable device name, e.g. `cpu (2 threads)`.
    fn name(&self) -> String;
    fn supports(&self, dtype: DType) -> bool;
    /// The precision the tape runs convolutions, matmuls and attention in (see `Precision`).
    fn precision(&self) -> Precision {
        Precision::Fp32
    }
    /// Whether this backend's matmul and convolution kernels (all passes) round their operands
    /// and results to bf16 themselves under `Precision::Bf16`, so the tape adds no rounding
    /// points around them (the same values, without a pass over each tensor).
    fn rounds_gemm_to_bf16(&self) -> bool {
        false
    }

    /// A buffer with unspecified contents (GPU backends draw it from a pool).
    fn alloc(&self, len: usize, dtype: DType) -> Result<Self::Storage>;
    fn upload_f32(&self, data: &[f32], dtype: DType) -> Result<Self::Storage>;
    fn upload_f64(&self, data: &[f64], dtype: DType) -> Result<Self::Storage> {
        let v: Vec<f32> = data.iter().map(|&x| x as f32).collect();
        self.upload_f32(&v, dtype)
    }
    /// Waits for all queued work, then copies the buffer to the host.
    fn download_f32(&self, s: &Self::Storage) -> Result<Vec<f32>>;
    fn download_f64(&self, s: &Self::Storage) -> Result<Vec<f64>> {
        Ok(self.download_f32(s)?.into_iter().map(f64::from).collect())
    }
    fn fill(&self, s: &Self::Storage, value: f32) -> Result<()>;
    fn copy(&self, src: &Self::Storage, dst: &Self::Storage) -> Result<()>;
    fn synchronize(&self) -> Result<()>;

    /// Starts recording this backend's work as a graph to replay with one launch: true if it
    /// has graphs (CUDA), false (and nothing recorded) otherwise. Until `graph_end`, work is
    /// recorded rather than run, and uploads, downloads and synchronisation are errors.
    fn graph_begin(&self) -> Result<bool> {
        Ok(false)
    }
    /// Ends the recording begun by `graph_begin`; `keep` false discards it (an error inside).
    fn graph_end(&self, keep: bool) -> Result<GraphId> {
        let _ = keep;
        Err(crate::error::Error::Invalid { op: "graph", msg: format!("{} has no graphs", self.name()) })
    }
    /// Runs a recorded graph.
    fn graph_replay(&self, g: GraphId) -> Result<()> {
        let _ = g;
        Err(crate::error::Error::Invalid { op: "graph", msg: format!("{} has no graphs", self.name()) })
    }
    /// The kernel launches a graph holds.
    fn graph_launches(&self, g: GraphId) -> usize {
        let _ = g;
        0
    }
    /// Frees a graph and the memory only it used.
    fn graph_release(&self, g: GraphId) {
        let _ = g;
    }
}
