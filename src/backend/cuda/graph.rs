//! CUDA graphs: a stretch of host code's work recorded once and replayed with one launch (the
//! training step's graph, `optim::StepGraph`). On a GPU the capturing stream records it and
//! `cuGraphLaunch` replays it; the emulated and dry-run devices keep the operations themselves
//! and run them again in order. `Capture` is the recording in progress on one device; the
//! device (device.rs) asks it, at each launch and copy, whether to record instead of run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys;

use super::args::OwnedArg;
use super::buffer_pool::BufferPool;
use super::nvrtc::err;
use crate::error::Result;

/// One operation of a captured graph.
#[derive(Clone, Debug)]
pub(super) enum Captured {
    Launch { kernel: String, grid: (u32, u32, u32), block: (u32, u32, u32), shared: u32, args: Vec<OwnedArg>, flops: u64 },
    Copy { dst: u64, src: u64, bytes: usize },
}

struct Exec(sys::CUgraphExec);
// SAFETY: a graph exec is a handle usable from any thread that binds its context.
unsafe impl Send for Exec {}
unsafe impl Sync for Exec {}

/// A captured graph: a CUDA graph on a GPU, the recorded operations otherwise. Its memory
/// belongs to it until it is dropped (see buffer_pool.rs).
pub(crate) struct Graph {
    id: u64,
    exec: Option<Exec>,
    ops: Vec<Captured>,
    pool: Arc<BufferPool>,
}

impl Graph {
    /// Its id, unique on its device.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The kernel launches it holds.
    pub fn launches(&self) -> usize {
        self.ops.iter().filter(|o| matches!(o, Captured::Launch { .. })).count()
    }
    /// The recorded operations (what a device without a GPU replays).
    pub(super) fn ops(&self) -> &[Captured] {
        &self.ops
    }
    /// Enqueues the CUDA graph on `stream` (bound to this thread by the caller).
    pub(super) fn launch(&self, stream: sys::CUstream) -> Result<()> {
        let e = self.exec.as_ref().ok_or_else(|| err(format!("CUDA graph {} was captured without a GPU", self.id)))?;
        // SAFETY: the exec is live (owned by self) and was captured on this stream's context.
        unsafe { sys::cuGraphLaunch(e.0, stream) }.result().map_err(|e| err(format!("CUDA graph launch: {e}")))
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        if let Some(e) = self.exec.take() {
            // SAFETY: instantiated in Capture::end, destroyed once. A replay still queued keeps
            // the driver's own reference until it completes.
            unsafe {
                let _ = sys::cuGraphExecDestroy(e.0);
            }
        }
        self.pool.release_graph(self.id);
    }
}

/// The graph being captured on one device (its id and operations so far), the ids handed out,
/// and a dry run's replay count (the census counts each replay as a launch).
pub(crate) struct Capture {
    current: Mutex<Option<(u64, Vec<Captured>)>>,
    next_id: AtomicU64,
    pub replays: AtomicU64,
}

impl Default for Capture {
    fn default() -> Self {
        Capture { current: Mutex::new(None), next_id: AtomicU64::new(1), replays: AtomicU64::new(0) }
    }
}

impl Capture {
    /// While a graph is captured, adds `op` to it and says so.
    pub(super) fn record(&self, op: impl FnOnce() -> Captured) -> bool {
        match self.current.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            Some((_, ops)) => {
                ops.push(op());
                true
            }
            None => false,
        }
    }

    /// An error naming `what` while a graph is captured (work a graph cannot hold).
    pub(super) fn refuse(&self, what: &str) -> Result<()> {
        match self.current.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(_) => Err(err(format!("{what} while a CUDA graph is being captured (the graph cannot hold it)"))),
            None => Ok(()),
        }
    }

    /// Starts a capture; on a GPU, `stream` (bound to this thread) starts capturing too.
    pub(super) fn begin(&self, stream: Option<sys::CUstream>, pool: &BufferPool) -> Result<()> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.is_some() {
            return Err(err("a CUDA graph is already being captured"));
        }
        if let Some(stream) = stream {
            // Relaxed: the caching allocator may call cuMemAlloc while the step is captured.
            // SAFETY: the stream is live and not capturing.
            unsafe { sys::cuStreamBeginCapture_v2(stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED) }
                .result()
                .map_err(|e| err(format!("begin CUDA graph capture: {e}")))?;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        pool.set_capture(Some(id));
        *cur = Some((id, Vec::new()));
        Ok(())
    }

    /// Ends the capture (on a GPU, instantiating the stream's graph). `keep` false (an error
    /// inside the captured code) discards it.
    pub(super) fn end(&self, stream: Option<sys::CUstream>, pool: &Arc<BufferPool>, keep: bool) -> Result<Graph> {
        let (id, ops) =
            self.current.lock().unwrap_or_else(|e| e.into_inner()).take().ok_or_else(|| err("no CUDA graph is being captured"))?;
        pool.set_capture(None);
        let mut graph = Graph { id, exec: None, ops, pool: pool.clone() };
        if let Some(stream) = stream {
            let mut g: sys::CUgraph = std::ptr::null_mut();
            // SAFETY: the stream is capturing (begin); g receives the captured graph.
            let ended = unsafe { sys::cuStreamEndCapture(stream, &mut g) }.result();
            let instantiated = ended.and_then(|_| {
                let mut exec: sys::CUgraphExec = std::ptr::null_mut();
                // SAFETY: g is the graph just captured; it is destroyed below, exec in Graph's drop.
                unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, g, 0) }.result().map(|_| exec)
            });
            if !g.is_null() {
                // SAFETY: the exec (if any) is independent of the graph it came from.
                unsafe {
                    let _ = sys::cuGraphDestroy(g);
                }
            }
            pool.free_deferred();
            let exec = instantiated.map_err(|e| err(format!("end CUDA graph capture: {e}")))?;
            graph.exec = Some(Exec(exec));
        }
        if !keep {
            return Err(err("CUDA graph capture discarded"));
        }
        Ok(graph)
    }
}
