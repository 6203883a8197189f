//! The device: context, one stream, the loaded kernel modules, launches and copies.
//!
//! Every launch goes through `Device::launch`, which checks the arguments against the kernel's
//! parameter list as PTX declares it (count, and 64-bit / 32-bit integer / float / struct
//! size), and the grid and block against the hardware limits, before anything reaches the
//! driver: a wrong call is an error naming the kernel, never a corrupted launch.
//!
//! A dry-run device (`Device::dry_run`) has no GPU at all: kernels are compiled to PTX only for
//! their signatures, memory addresses are fake, launches are checked and recorded but not run,
//! and downloads return zeros. Tests use it without a GPU to drive every Backend op through the
//! real launch code and check every launch against its kernel's signature.

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, result, sys};

use super::args::{Arg, OwnedArg};
use super::buffer_pool::{BufferPool, Memory};
use super::graph::{Capture, Captured, Graph};
use super::nvrtc::{self, ParamKind, Target, err};
use crate::error::Result;

/// A launch as recorded by a dry run.
#[derive(Clone, Debug)]
pub struct LaunchRecord {
    pub kernel: String,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    /// The bytes of device memory its pointer arguments reach (from each pointer to the end of
    /// its buffer): what the kernel may read or write, an upper bound of its memory traffic.
    pub bytes: u64,
    /// Dynamic shared memory per block.
    pub shared: u32,
    /// Floating-point operations (2 per multiply-add) of a GEMM or convolution launch, as its
    /// caller counts them; 0 for the rest (memory-bound: their floor is their bytes).
    pub flops: u64,
}

#[derive(Clone, Copy)]
struct Func(sys::CUfunction);
// SAFETY: a CUfunction is a handle valid in every thread that binds its context.
unsafe impl Send for Func {}
unsafe impl Sync for Func {}

struct Kernel {
    func: Option<Func>,
    params: Vec<ParamKind>,
}

struct Module(sys::CUmodule);
// SAFETY: as for Func.
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

struct Stream(sys::CUstream);
// SAFETY: a CUstream may be used from any thread that binds its context.
unsafe impl Send for Stream {}
unsafe impl Sync for Stream {}

/// Host emulation of the kernels (tests only): a shared library built from kernels/*.cu with
/// tests/emu/cuda_emu.h, whose `ssl_emu_launch` runs a grid on host threads.
struct Emu {
    _lib: libloading::Library,
    launch: unsafe extern "C" fn(*const std::ffi::c_char, *const u32, *const u32, u32, *mut *mut c_void) -> i32,
}

pub(crate) struct Device {
    /// None in a dry run and in host emulation.
    ctx: Option<Arc<CudaContext>>,
    emu: Option<Emu>,
    stream: Stream,
    modules: Vec<Module>,
    kernels: HashMap<String, Kernel>,
    pub pool: Arc<BufferPool>,
    pub sm_count: u32,
    /// The most shared memory one block may have, static and dynamic (sm_90: 227 KB).
    pub max_shared: u32,
    pub name: String,
    pub target: Target,
    dry_log: Mutex<Vec<LaunchRecord>>,
    /// The graph being captured, if any; its `replays` count a dry run's replays.
    pub capture: Capture,
}

/// Why the driver cannot be used, as one line: no libcuda, no device, a failing cuInit.
pub(crate) fn driver_available(ordinal: usize) -> Result<()> {
    // SAFETY: only tries to dlopen the candidate library names (cudarc's loader panics otherwise).
    if !unsafe { sys::is_culib_present() } {
        return Err(err("libcuda not found (no NVIDIA driver on this machine)"));
    }
    if let Err(e) = result::init() {
        return Err(if e.0 == sys::cudaError_enum::CUDA_ERROR_NO_DEVICE {
            err("no CUDA device (cuInit: CUDA_ERROR_NO_DEVICE)")
        } else {
            err(format!("cuInit failed: {e}"))
        });
    }
    let count = result::device::get_count().map_err(|e| err(format!("cuDeviceGetCount: {e}")))?;
    if count <= 0 {
        return Err(err("no CUDA device"));
    }
    if ordinal >= count as usize {
        return Err(err(format!("no CUDA device {ordinal} ({count} present)")));
    }
    Ok(())
}

/// sm_90's per-block shared-memory limit (static and dynamic), which the dry run and the
/// emulator (tests/emu/cuda_emu.h, EMU_BLOCK_SHARED_LIMIT) keep too.
const SM90_BLOCK_SHARED: u32 = 227 * 1024;

/// Lets `f` launch with as much dynamic shared memory as the GPU allows beside its static
/// shared memory: past 48 KB a kernel must opt in (the GEMM core's 128-row tiles take 102 KB).
fn opt_in_to_dynamic_shared(f: sys::CUfunction, max_shared: u32) -> std::result::Result<(), cudarc::driver::DriverError> {
    use sys::CUfunction_attribute::{CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES};
    // SAFETY: f is a live function of a loaded module.
    unsafe {
        let static_bytes = result::function::get_function_attribute(f, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?;
        result::function::set_function_attribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, max_shared as i32 - static_bytes)
    }
}

impl Device {
    pub fn open(ordinal: usize) -> Result<Device> {
        driver_available(ordinal)?;
        nvrtc::nvrtc_available()?;
        let ctx = CudaContext::new(ordinal).map_err(|e| err(format!("create context on device {ordinal}: {e}")))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| err(format!("compute capability: {e}")))?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| err(format!("multiprocessor count: {e}")))? as u32;
        let max_shared = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| err(format!("shared memory per block: {e}")))? as u32;
        let gpu = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let target = Target::for_device(major, minor, &nvrtc::supported_archs()?)?;
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking).map_err(|e| err(format!("create stream: {e}")))?;
        let dir = nvrtc::cache_dir();
        // Compile (or read from the cache) every family in parallel, then load in order.
        let compiled: Vec<Result<nvrtc::Compiled>> = std::thread::scope(|s| {
            let hs: Vec<_> =
                nvrtc::FAMILIES.iter().map(|(f, src)| s.spawn(|| nvrtc::compile_cached(f, src, &target, dir.as_deref(), false))).collect();
            hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(err("compiler thread panicked")))).collect()
        });
        let pool = Arc::new(BufferPool::new(Memory::Cuda(ctx.clone())));
        let mut dev = Device {
            ctx: Some(ctx),
            emu: None,
            stream: Stream(stream),
            modules: Vec::new(),
            kernels: HashMap::new(),
            pool,
            sm_count: sm_count.max(1),
            max_shared,
            name: format!("cuda:{ordinal} ({gpu}, {})", target.0),
            target: target.clone(),
            dry_log: Mutex::new(Vec::new()),
            capture: Capture::default(),
        };
        for ((file, src), c) in nvrtc::FAMILIES.iter().zip(compiled) {
            let c = c?;
            let module = match load_module(&c.image) {
                Ok(m) => m,
                // A cached image the driver rejects (truncated, or from another driver): rebuild it.
                Err(first) => {
                    let fresh = nvrtc::compile_cached(file, src, &target, dir.as_deref(), true)?;
                    load_module(&fresh.image).map_err(|e| err(format!("load kernels/{file} ({}): {e} (first try: {first})", target.0)))?
                }
            };
            dev.modules.push(Module(module));
            let ptx = c.ptx.as_deref().ok_or_else(|| err(format!("kernels/{file}: no PTX for the kernel signatures")))?;
            for (name, params) in nvrtc::ptx_entries(ptx) {
                let cname = CString::new(name.clone()).map_err(|_| err("bad kernel name"))?;
                // SAFETY: the module was just loaded and is kept until the device is dropped.
                let f = unsafe { result::module::get_function(module, cname) }
                    .map_err(|e| err(format!("kernel {name} in kernels/{file}: {e}")))?;
                opt_in_to_dynamic_shared(f, max_shared).map_err(|e| err(format!("kernel {name} in kernels/{file}: {e}")))?;
                dev.kernels.insert(name, Kernel { func: Some(Func(f)), params });
            }
        }
        Ok(dev)
    }

    /// A device without a GPU (see the module doc). Needs libnvrtc for the kernel signatures.
    pub fn dry_run(sm_count: u32) -> Result<Device> {
        Self::without_gpu(sm_count, None)
    }

    /// A dry run whose allocations fail, as on a GPU with `bytes` of memory, once they exceed it.
    pub fn dry_run_with_memory(sm_count: u32, bytes: usize) -> Result<Device> {
        let mut d = Self::without_gpu(sm_count, None)?;
        let mut pool = BufferPool::new(Memory::Fake);
        pool.fake_capacity = Some(bytes);
        d.pool = Arc::new(pool);
        Ok(d)
    }

    /// Host emulation: launches run the kernels compiled for the host (library `lib`, built by
    /// the tests from kernels/*.cu and tests/emu/cuda_emu.h) on host memory.
    pub fn emulated(lib: &std::path::Path, sm_count: u32) -> Result<Device> {
        // SAFETY: the library is the emulator built by the tests; its symbol has this signature.
        let emu = unsafe {
            let l = libloading::Library::new(lib).map_err(|e| err(format!("load {}: {e}", lib.display())))?;
            let f = *l
                .get::<unsafe extern "C" fn(*const std::ffi::c_char, *const u32, *const u32, u32, *mut *mut c_void) -> i32>(
                    b"ssl_emu_launch\0",
                )
                .map_err(|e| err(format!("{}: {e}", lib.display())))?;
            Emu { _lib: l, launch: f }
        };
        Self::without_gpu(sm_count, Some(emu))
    }

    fn without_gpu(sm_count: u32, emu: Option<Emu>) -> Result<Device> {
        let target = Target("compute_80".into());
        let dir = nvrtc::cache_dir();
        let mut kernels = HashMap::new();
        for (file, src) in nvrtc::FAMILIES {
            let c = nvrtc::compile_cached(file, src, &target, dir.as_deref(), false)?;
            let ptx = c.ptx.ok_or_else(|| err(format!("kernels/{file}: no PTX")))?;
            for (name, params) in nvrtc::ptx_entries(&ptx) {
                kernels.insert(name, Kernel { func: None, params });
            }
        }
        let (mem, name) = match emu {
            Some(_) => (Memory::Host, format!("cuda host emulation ({sm_count} SMs)")),
            None => (Memory::Fake, format!("cuda dry run ({sm_count} SMs, no GPU)")),
        };
        Ok(Device {
            ctx: None,
            emu,
            stream: Stream(std::ptr::null_mut()),
            modules: Vec::new(),
            kernels,
            pool: Arc::new(BufferPool::new(mem)),
            sm_count,
            max_shared: SM90_BLOCK_SHARED,
            name,
            target,
            dry_log: Mutex::new(Vec::new()),
            capture: Capture::default(),
        })
    }

    pub fn is_dry_run(&self) -> bool {
        self.ctx.is_none() && self.emu.is_none()
    }

    /// The names of every loaded kernel.
    pub fn kernel_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.kernels.keys().cloned().collect();
        v.sort();
        v
    }

    /// The launches a dry run has recorded (taken, so the log starts empty again).
    pub fn take_launches(&self) -> Vec<LaunchRecord> {
        std::mem::take(&mut *self.dry_log.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn bind(&self) -> Result<()> {
        if let Some(ctx) = &self.ctx {
            ctx.bind_to_thread().map_err(|e| err(format!("bind context: {e}")))?;
        }
        Ok(())
    }

    /// Enqueues `kernel` on the stream after checking the arguments, grid, block and `shared`
    /// (bytes of dynamic shared memory per block).
    pub fn launch(&self, kernel: &str, grid: (u32, u32, u32), block: (u32, u32, u32), shared: u32, args: &[Arg<'_>]) -> Result<()> {
        self.launch_counted(kernel, grid, block, shared, args, 0)
    }

    /// `launch`, noting the launch's `flops` in a dry run's record (the census's roofline).
    pub fn launch_counted(
        &self, kernel: &str, grid: (u32, u32, u32), block: (u32, u32, u32), shared: u32, args: &[Arg<'_>], flops: u64,
    ) -> Result<()> {
        let k = self.kernels.get(kernel).ok_or_else(|| err(format!("no kernel named {kernel}")))?;
        let kinds: Vec<ParamKind> = args.iter().map(Arg::kind).collect();
        if kinds != k.params {
            return Err(err(format!("{kernel}: arguments {kinds:?} do not match the kernel's parameters {:?}", k.params)));
        }
        let threads = block.0 as u64 * block.1 as u64 * block.2 as u64;
        if grid.0 == 0
            || grid.1 == 0
            || grid.2 == 0
            || grid.0 > i32::MAX as u32
            || grid.1 > 65535
            || grid.2 > 65535
            || threads == 0
            || threads > 1024
        {
            return Err(err(format!("{kernel}: launch grid {grid:?} block {block:?} outside the hardware limits")));
        }
        if shared > self.max_shared {
            return Err(err(format!("{kernel}: {shared} bytes of shared memory per block, over this GPU's {}", self.max_shared)));
        }
        if self.recorded_only(|| Captured::Launch {
            kernel: kernel.to_string(),
            grid,
            block,
            shared,
            args: args.iter().map(OwnedArg::of).collect(),
            flops,
        }) {
            return Ok(());
        }
        self.execute(kernel, k.func, grid, block, shared, args, flops)
    }

    /// Runs (GPU: enqueues) a checked launch.
    fn execute(
        &self, kernel: &str, func: Option<Func>, grid: (u32, u32, u32), block: (u32, u32, u32), shared: u32, args: &[Arg<'_>], flops: u64,
    ) -> Result<()> {
        if let Some(emu) = &self.emu {
            let name = CString::new(kernel).map_err(|_| err("bad kernel name"))?;
            let mut params: Vec<*mut c_void> = args.iter().map(Arg::as_param).collect();
            let (g, b) = ([grid.0, grid.1, grid.2], [block.0, block.1, block.2]);
            // SAFETY: the emulator reads the parameters by the kernel's own types, which match
            // `args` (checked above); device pointers are host pointers from the host pool.
            let rc = unsafe { (emu.launch)(name.as_ptr(), g.as_ptr(), b.as_ptr(), shared, params.as_mut_ptr()) };
            return if rc == 0 { Ok(()) } else { Err(err(format!("emulated launch of {kernel} failed ({rc})"))) };
        }
        let Some(func) = func else {
            let bytes = args.iter().map(|a| if let Arg::Ptr(p) = a { self.pool.fake_extent(*p) } else { 0 }).sum();
            self.dry_log.lock().unwrap_or_else(|e| e.into_inner()).push(LaunchRecord {
                kernel: kernel.to_string(),
                grid,
                block,
                bytes,
                shared,
                flops,
            });
            return Ok(());
        };
        self.bind()?;
        let mut params: Vec<*mut c_void> = args.iter().map(Arg::as_param).collect();
        // SAFETY: the function is live, the argument kinds match its PTX parameter list, and every
        // parameter pointer refers to a value in `args` that outlives this call (the driver copies
        // the values at launch). Device pointers come from this device's pool.
        unsafe { result::launch_kernel(func.0, grid, block, shared, self.stream.0, &mut params) }
            .map_err(|e| err(format!("launch {kernel} grid {grid:?} block {block:?}: {e}")))
    }

    /// Copies host data into device memory at `dst` (stream-ordered; pageable host memory is
    /// staged by the driver before this returns, so `src` may be dropped right after).
    pub fn upload_bytes(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.not_capturing("an upload from the host")?;
        if src.is_empty() || self.is_dry_run() {
            return Ok(());
        }
        if self.emu.is_some() {
            // SAFETY: dst is a live host block of at least src.len() bytes.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
            return Ok(());
        }
        self.bind()?;
        // SAFETY: dst is a live block of at least src.len() bytes.
        unsafe { result::memcpy_htod_async(dst, src, self.stream.0) }.map_err(|e| err(format!("upload {} bytes: {e}", src.len())))
    }

    /// Waits for the stream, then copies device memory at `src` into `dst`.
    pub fn download_bytes(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        self.not_capturing("a download to the host")?;
        if dst.is_empty() {
            return Ok(());
        }
        if self.is_dry_run() {
            dst.fill(0);
            return Ok(());
        }
        if self.emu.is_some() {
            // SAFETY: src is a live host block of at least dst.len() bytes.
            unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
            return Ok(());
        }
        self.bind()?;
        // SAFETY: src is a live block of at least dst.len() bytes; the copy is complete after the
        // stream synchronisation below, before dst is used.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream.0) }.map_err(|e| err(format!("download {} bytes: {e}", dst.len())))?;
        self.synchronize()
    }

    pub fn copy_d2d(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        if self.recorded_only(|| Captured::Copy { dst, src, bytes }) {
            return Ok(());
        }
        self.copy_now(dst, src, bytes)
    }

    fn copy_now(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if self.is_dry_run() {
            return Ok(());
        }
        if self.emu.is_some() {
            // SAFETY: distinct live host blocks of at least `bytes` bytes (ops.rs never copies a
            // buffer onto itself).
            unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
            return Ok(());
        }
        self.bind()?;
        // SAFETY: both are live blocks of at least `bytes` bytes.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.0) }.map_err(|e| err(format!("device copy of {bytes} bytes: {e}")))
    }

    /// Waits for all queued work; a kernel fault shows up here.
    pub fn synchronize(&self) -> Result<()> {
        // Checked before the early return, so the emulator refuses what a GPU would.
        self.not_capturing("a synchronisation")?;
        if self.ctx.is_none() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the stream is live.
        unsafe { result::stream::synchronize(self.stream.0) }
            .map_err(|e| err(format!("synchronize (a kernel failed, or the device was lost): {e}")))
    }
}

impl Device {
    /// While a graph is captured, adds `op` to it. True when that is all: the emulated and
    /// dry-run devices run captured work at replay only; a GPU's capturing stream records the
    /// operation as it is enqueued.
    fn recorded_only(&self, op: impl FnOnce() -> Captured) -> bool {
        self.capture.record(op) && self.ctx.is_none()
    }

    fn not_capturing(&self, what: &str) -> Result<()> {
        self.capture.refuse(what)
    }

    /// The stream a GPU records on (bound to this thread); None without a GPU.
    fn capture_stream(&self) -> Result<Option<sys::CUstream>> {
        if self.ctx.is_none() {
            return Ok(None);
        }
        self.bind()?;
        Ok(Some(self.stream.0))
    }

    /// NCCL (src/dist/nccl.rs): the stream every op is enqueued on, with the context bound to
    /// this thread, so collectives stay in order with our kernels; None without a GPU.
    pub(crate) fn stream_for_nccl(&self) -> Result<Option<sys::CUstream>> {
        self.capture_stream()
    }

    /// An error naming `what` while a graph is captured: for host waits, which the graph cannot hold.
    pub(crate) fn refuse_while_capturing(&self, what: &str) -> Result<()> {
        self.not_capturing(what)
    }

    /// Starts capturing: launches and device copies from here on are recorded (and, except on
    /// a GPU, not run) until `end_capture`; uploads, downloads and synchronisation are errors.
    pub fn begin_capture(&self) -> Result<()> {
        self.capture.begin(self.capture_stream()?, &self.pool)
    }

    /// Ends the capture. `keep` false (an error inside the captured code) discards it.
    pub fn end_capture(&self, keep: bool) -> Result<Graph> {
        self.capture.end(self.capture_stream()?, &self.pool, keep)
    }

    /// Runs a captured graph: one launch on a GPU, its operations in order otherwise.
    pub fn replay(&self, g: &Graph) -> Result<()> {
        self.not_capturing("a graph replay")?;
        if let Some(stream) = self.capture_stream()? {
            return g.launch(stream);
        }
        if self.is_dry_run() {
            self.capture.replays.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        for op in g.ops() {
            match op {
                Captured::Launch { kernel, grid, block, shared, args, flops } => {
                    let args: Vec<Arg<'_>> = args.iter().map(OwnedArg::arg).collect();
                    self.execute(kernel, None, *grid, *block, *shared, &args, *flops)?;
                }
                Captured::Copy { dst, src, bytes } => self.copy_now(*dst, *src, *bytes)?,
            }
        }
        Ok(())
    }
}

fn load_module(image: &[u8]) -> std::result::Result<sys::CUmodule, result::DriverError> {
    // SAFETY: image is a cubin, or PTX ending in a NUL byte, produced by NVRTC.
    unsafe { result::module::load_data(image.as_ptr() as *const c_void) }
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.ctx.is_none() {
            return;
        }
        let _ = self.synchronize();
        // SAFETY: the modules and stream were created here and are released once; no launch can
        // follow (the device is being dropped). Device memory lives in the pool, which outlives
        // this while tensors hold it.
        unsafe {
            for m in self.modules.drain(..) {
                let _ = result::module::unload(m.0);
            }
            if !self.stream.0.is_null() {
                let _ = result::stream::destroy(self.stream.0);
            }
        }
    }
}
