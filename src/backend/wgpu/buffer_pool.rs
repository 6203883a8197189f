//! Device buffers waiting for reuse, keyed by byte size: a dropped storage returns its buffer
//! here, so a steady-state training step creates none (the CPU backend's buffer_pool.rs and the
//! CUDA backend's caching allocator play the same part).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Buffers waiting for reuse, keyed by byte size.
#[derive(Default)]
pub struct BufferPool {
    free: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
}

impl BufferPool {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Vec<wgpu::Buffer>>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(super) fn take(&self, bytes: u64) -> Option<wgpu::Buffer> {
        self.lock().get_mut(&bytes).and_then(|v| v.pop())
    }
    pub fn give(&self, b: wgpu::Buffer) {
        self.lock().entry(b.size()).or_default().push(b);
    }
    pub fn clear(&self) {
        self.lock().clear()
    }
    pub fn pooled_bytes(&self) -> u64 {
        self.lock().iter().map(|(s, v)| s * v.len() as u64).sum()
    }
}
