//! A buffer pool keyed by (dtype, length): a freed buffer goes back to the pool and the next
//! allocation of that size reuses it, so a steady-state training step allocates nothing new
//! (fresh multi-megabyte allocations cost page faults on every step).

use std::collections::HashMap;
use std::sync::Mutex;

use super::CpuData;
use crate::dtype::DType;

#[derive(Default)]
pub struct BufferPool {
    free: Mutex<HashMap<(DType, usize), Vec<CpuData>>>,
}

/// Buffers below this size come from the system allocator directly: pooling them gains nothing.
const MIN_POOLED: usize = 4096;

impl BufferPool {
    /// A buffer of `len` elements with unspecified contents, if one is free.
    pub fn take(&self, dtype: DType, len: usize) -> Option<CpuData> {
        if len < MIN_POOLED {
            return None;
        }
        self.free.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&(dtype, len)).and_then(|v| v.pop())
    }
    pub fn give(&self, data: CpuData) {
        let key = match &data {
            CpuData::F32(v) => (DType::F32, v.len()),
            CpuData::F64(v) => (DType::F64, v.len()),
        };
        if key.1 >= MIN_POOLED {
            self.free.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().push(data);
        }
    }
    /// Returns every pooled buffer to the system.
    pub fn clear(&self) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
    /// Bytes held in free buffers.
    pub fn pooled_bytes(&self) -> usize {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.iter().map(|((d, len), v)| d.size_in_bytes() * len * v.len()).sum()
    }
}
