//! The caching device allocator: freed blocks go back to a free list keyed by size class and
//! are handed out again, so a steady-state training step (which asks for the same sizes every
//! step) makes no cuMemAlloc call. Everything runs on one stream, so a block freed by the host
//! while kernels that read it are still queued can be reused at once: the kernels that write
//! it next are queued behind them.
//!
//! Size classes: at least 256 bytes, then 8 classes per power of two (at most 12.5% waste).
//! When cuMemAlloc fails, the pool waits for the device, returns every cached block to the
//! driver and tries once more; the final error gives the size asked for and the free memory.
//!
//! CUDA graphs: every block handed out while a graph is being captured belongs to that graph
//! until the graph is dropped. Freed, it goes to the graph's own free list, reused only by the
//! same capture, never by work outside the graph: a replay writes the same addresses again, so
//! no other tensor may live there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, result, sys};

use super::nvrtc::err;
use crate::error::{Error, Result};

pub(crate) fn size_class(bytes: usize) -> usize {
    if bytes == 0 {
        return 0;
    }
    if bytes <= 256 {
        return 256;
    }
    let p = bytes.next_power_of_two();
    let step = (p / 16).max(256);
    bytes.div_ceil(step) * step
}

#[derive(Default)]
struct State {
    free: HashMap<usize, Vec<u64>>,
    pooled_bytes: usize,
    live_bytes: usize,
    /// Dry run: the next fake address.
    fake_next: u64,
    /// Dry run: every fake block (base -> size), for the bytes a recorded launch touches.
    fake_blocks: std::collections::BTreeMap<u64, usize>,
    /// The graph being captured, if any.
    capture: Option<u64>,
    /// Blocks that belong to a graph (pointer -> graph).
    owner: HashMap<u64, u64>,
    /// Each graph's freed blocks, by size class.
    graph_free: HashMap<u64, HashMap<usize, Vec<u64>>>,
    /// `SSL_ENGINE_CUDA_NO_POOL=1`: blocks freed during a capture, returned to the driver once
    /// it has ended (the wait before cuMemFree would end the capture: no graph would ever be
    /// recorded, and a sanitizer run would never replay one).
    deferred: Vec<u64>,
}

/// Where the memory comes from.
pub(crate) enum Memory {
    /// cuMemAlloc on this context.
    Cuda(Arc<CudaContext>),
    /// Dry run: fake addresses, nothing allocated.
    Fake,
    /// Host emulation: 256-byte-aligned host memory (the "device pointers" are host pointers).
    Host,
}

pub(crate) struct BufferPool {
    mem: Memory,
    /// `SSL_ENGINE_CUDA_NO_POOL=1`: exact sizes and no caching (every free waits for the device
    /// and returns the block), so compute-sanitizer's memcheck sees every overrun.
    exact: bool,
    /// Dry run: the memory of the GPU being imitated (None: unlimited).
    pub fake_capacity: Option<usize>,
    state: Mutex<State>,
}

const HOST_ALIGN: usize = 256;

impl BufferPool {
    pub fn new(mem: Memory) -> Self {
        let exact = matches!(mem, Memory::Cuda(_)) && std::env::var("SSL_ENGINE_CUDA_NO_POOL").is_ok_and(|v| v == "1");
        BufferPool { mem, exact, fake_capacity: None, state: Mutex::new(State { fake_next: 1 << 32, ..State::default() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A block of `size_class(bytes)` bytes; the pointer is 256-byte aligned (or 0 for 0 bytes).
    /// While a graph is captured, from that graph's own blocks first, and the block joins it.
    pub fn take(&self, bytes: usize) -> Result<(u64, usize)> {
        let class = if self.exact { bytes } else { size_class(bytes) };
        // (Read first: a lock held through the `if let` would deadlock the one below.)
        let capture = self.lock().capture;
        if let Some(g) = capture {
            if class == 0 {
                return Ok((0, 0));
            }
            let mut st = self.lock();
            if let Some(p) = st.graph_free.get_mut(&g).and_then(|f| f.get_mut(&class)).and_then(|v| v.pop()) {
                st.pooled_bytes -= class;
                st.live_bytes += class;
                return Ok((p, class));
            }
            drop(st);
            let (p, c) = self.take_class(class)?;
            self.lock().owner.insert(p, g);
            return Ok((p, c));
        }
        self.take_class(class)
    }

    fn take_class(&self, class: usize) -> Result<(u64, usize)> {
        if class == 0 {
            return Ok((0, 0));
        }
        let mut st = self.lock();
        if let Some(p) = st.free.get_mut(&class).and_then(|v| v.pop()) {
            st.pooled_bytes -= class;
            st.live_bytes += class;
            return Ok((p, class));
        }
        let ctx = match &self.mem {
            Memory::Cuda(ctx) => ctx,
            Memory::Fake => {
                // A dry run with a memory size (tests) runs out of memory as that GPU would.
                if let Some(cap) = self.fake_capacity
                    && st.live_bytes + st.pooled_bytes + class > cap
                {
                    return Err(Error::OutOfMemory {
                        backend: "cuda (dry run)".into(),
                        asked: class as u64,
                        free: cap.saturating_sub(st.live_bytes + st.pooled_bytes) as u64,
                        total: cap as u64,
                        context: String::new(),
                    });
                }
                let p = st.fake_next;
                st.fake_next += class as u64;
                st.fake_blocks.insert(p, class);
                st.live_bytes += class;
                return Ok((p, class));
            }
            Memory::Host => {
                let layout = std::alloc::Layout::from_size_align(class, HOST_ALIGN).map_err(|e| err(format!("host alloc: {e}")))?;
                // SAFETY: non-zero size; freed with the same layout in release_locked.
                let p = unsafe { std::alloc::alloc(layout) };
                if p.is_null() {
                    return Err(err(format!("host alloc of {class} bytes failed")));
                }
                st.live_bytes += class;
                return Ok((p as u64, class));
            }
        };
        ctx.bind_to_thread().map_err(|e| err(format!("bind context: {e}")))?;
        // SAFETY: plain allocation in the current (bound) context.
        let first = unsafe { result::malloc_sync(class) };
        let p = match first {
            Ok(p) => p,
            Err(e) if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY => {
                self.release_locked(&mut st)?;
                // SAFETY: as above.
                unsafe { result::malloc_sync(class) }.map_err(|_| {
                    let (free, total) = result::mem_get_info().unwrap_or((0, 0));
                    Error::OutOfMemory {
                        backend: "cuda".into(),
                        asked: class as u64,
                        free: free as u64,
                        total: total as u64,
                        context: String::new(),
                    }
                })?
            }
            Err(e) => return Err(err(format!("cuMemAlloc of {class} bytes: {e}"))),
        };
        st.live_bytes += class;
        Ok((p, class))
    }

    /// Dry run: the bytes from `ptr` to the end of the fake block holding it (0 if none does).
    pub fn fake_extent(&self, ptr: u64) -> u64 {
        let st = self.lock();
        match st.fake_blocks.range(..=ptr).next_back() {
            Some((&base, &size)) if ptr < base + size as u64 => base + size as u64 - ptr,
            _ => 0,
        }
    }

    /// Returns a block to its free list (the device may still be using it: see the module doc).
    pub fn give(&self, ptr: u64, class: usize) {
        if class == 0 {
            return;
        }
        let mut st = self.lock();
        if let Some(&g) = st.owner.get(&ptr) {
            st.live_bytes = st.live_bytes.saturating_sub(class);
            st.pooled_bytes += class;
            st.graph_free.entry(g).or_default().entry(class).or_default().push(ptr);
            return;
        }
        if self.exact
            && let Memory::Cuda(ctx) = &self.mem
        {
            st.live_bytes = st.live_bytes.saturating_sub(class);
            if st.capture.is_some() {
                st.deferred.push(ptr);
                return;
            }
            if ctx.bind_to_thread().is_ok() && ctx.synchronize().is_ok() {
                // SAFETY: from cuMemAlloc; the device is idle, so no queued kernel uses it.
                unsafe {
                    let _ = result::free_sync(ptr);
                }
            }
            return;
        }
        st.live_bytes = st.live_bytes.saturating_sub(class);
        st.pooled_bytes += class;
        st.free.entry(class).or_default().push(ptr);
    }

    fn release_locked(&self, st: &mut State) -> Result<()> {
        let ctx = match &self.mem {
            Memory::Cuda(ctx) => ctx,
            Memory::Fake => {
                st.free.clear();
                st.pooled_bytes = 0;
                return Ok(());
            }
            Memory::Host => {
                for (class, v) in st.free.drain() {
                    for p in v {
                        // SAFETY: allocated in `take` with this class and alignment, now unused.
                        unsafe { std::alloc::dealloc(p as *mut u8, std::alloc::Layout::from_size_align_unchecked(class, HOST_ALIGN)) };
                    }
                }
                st.pooled_bytes = 0;
                return Ok(());
            }
        };
        ctx.bind_to_thread().map_err(|e| err(format!("bind context: {e}")))?;
        // Queued kernels may still use cached blocks: wait for them before freeing.
        ctx.synchronize().map_err(|e| err(format!("synchronize before releasing memory: {e}")))?;
        for (_, v) in st.free.drain() {
            for p in v {
                // SAFETY: p came from cuMemAlloc and is no longer in use (device idle, block free).
                unsafe {
                    let _ = result::free_sync(p);
                }
            }
        }
        st.pooled_bytes = 0;
        Ok(())
    }

    /// Starts (Some) or ends (None) the capture of graph `g`: see the module doc.
    pub fn set_capture(&self, g: Option<u64>) {
        self.lock().capture = g;
    }

    /// After a capture has ended: returns the blocks freed during it to the driver (exact mode).
    pub fn free_deferred(&self) {
        let deferred = std::mem::take(&mut self.lock().deferred);
        if let (false, Memory::Cuda(ctx)) = (deferred.is_empty(), &self.mem)
            && ctx.bind_to_thread().is_ok()
            && ctx.synchronize().is_ok()
        {
            for p in deferred {
                // SAFETY: from cuMemAlloc; the device is idle and nothing outside the ended
                // capture holds the block.
                unsafe {
                    let _ = result::free_sync(p);
                }
            }
        }
    }

    /// Graph `g` is gone: its free blocks return to the common free lists, and its live ones
    /// will when freed.
    pub fn release_graph(&self, g: u64) {
        let mut st = self.lock();
        if st.capture == Some(g) {
            st.capture = None;
        }
        st.owner.retain(|_, o| *o != g);
        if let Some(free) = st.graph_free.remove(&g) {
            for (class, v) in free {
                st.free.entry(class).or_default().extend(v);
            }
        }
    }

    /// Returns every cached block to the driver.
    pub fn release(&self) -> Result<()> {
        let mut st = self.lock();
        self.release_locked(&mut st)
    }

    pub fn pooled_bytes(&self) -> usize {
        self.lock().pooled_bytes
    }
    pub fn live_bytes(&self) -> usize {
        self.lock().live_bytes
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        // Every storage holds an Arc of the pool, so no tensor is live here; cached blocks go back.
        let _ = self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_the_request_with_little_waste() {
        for b in [1usize, 255, 256, 257, 1000, 4096, 4097, 1 << 20, (1 << 20) + 1, 123_456_789] {
            let c = size_class(b);
            assert!(c >= b && c.is_multiple_of(256), "{b} -> {c}");
            assert!(c as f64 <= (b as f64 * 1.125).max(256.0) + 256.0, "{b} -> {c}");
        }
        assert_eq!(size_class(0), 0);
    }
}
