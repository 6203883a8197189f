//! The device side of the WGSL backend: adapter choice, shader modules and
//! pipelines (compiled lazily, errors named by op), and the recorder that turns kernel calls
//! into dispatches in one open compute pass and submits them in batches.
//!
//! Submission model: every kernel call appends a dispatch to the current compute pass; its
//! parameters (a few u32/f32 words) go into a per-batch host array that becomes one uniform
//! buffer, bound with a dynamic offset. The batch is submitted when it holds `MAX_BATCH`
//! dispatches, before an upload, and on download/synchronize. Only downloads wait and map.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::buffer_pool::BufferPool;
use super::tiles::Tiles;
use crate::error::{Error, Result};

/// Dispatches per submission (the parameter buffer holds this many slots).
const MAX_BATCH: usize = 1024;
/// Bytes of parameters one dispatch may use (64 words).
const PARAM_BYTES: u64 = 256;

/// Uniform parameters of one dispatch, in the order of the shader's `P` struct.
#[derive(Default)]
pub struct Params {
    words: Vec<u32>,
    overflow: bool,
}

impl Params {
    pub fn new() -> Self {
        Self::default()
    }
    /// A count or index; values beyond u32 make the launch fail with a clear error.
    pub fn u(mut self, v: usize) -> Self {
        match u32::try_from(v) {
            Ok(x) => self.words.push(x),
            Err(_) => {
                self.overflow = true;
                self.words.push(0)
            }
        }
        self
    }
    pub fn f(mut self, v: f32) -> Self {
        self.words.push(v.to_bits());
        self
    }
    pub fn b(self, v: bool) -> Self {
        self.u(v as usize)
    }
}

/// One buffer binding of a dispatch: (binding index, buffer, writable).
pub type Bind<'a> = (u32, &'a wgpu::Buffer, bool);

pub fn r(binding: u32, b: &wgpu::Buffer) -> Bind<'_> {
    (binding, b, false)
}
pub fn w(binding: u32, b: &wgpu::Buffer) -> Bind<'_> {
    (binding, b, true)
}

/// A kernel: an entry point of `shaders/<family>.wgsl`, with the op name used in errors.
/// `variant` selects a specialisation (written into the shader as `const VARIANT`).
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    pub op: &'static str,
    pub family: &'static str,
    pub entry: &'static str,
    pub variant: u32,
}

pub const fn kernel(op: &'static str, family: &'static str, entry: &'static str) -> Kernel {
    Kernel { op, family, entry, variant: 0 }
}

const COMMON: &str = include_str!("../../../shaders/common.wgsl");
const GEMM: &str = include_str!("../../../shaders/gemm.wgsl");
const REDUCE: &str = include_str!("../../../shaders/reduce.wgsl");

/// The WGSL source of a family (`shaders/<family>.wgsl`) and the shared sources it builds on:
/// the GEMM core, or the workgroup reductions.
fn family_source(family: &str) -> Option<(&'static str, &'static [&'static str])> {
    Some(match family {
        "matmul" => (include_str!("../../../shaders/matmul.wgsl"), &[GEMM]),
        "conv" => (include_str!("../../../shaders/conv.wgsl"), &[GEMM]),
        "norm" => (include_str!("../../../shaders/norm.wgsl"), &[REDUCE]),
        "attention" => (include_str!("../../../shaders/attention.wgsl"), &[]),
        "elementwise" => (include_str!("../../../shaders/elementwise.wgsl"), &[]),
        "pool" => (include_str!("../../../shaders/pool.wgsl"), &[]),
        "loss" => (include_str!("../../../shaders/loss.wgsl"), &[REDUCE]),
        "optim" => (include_str!("../../../shaders/optim.wgsl"), &[]),
        "layout" => (include_str!("../../../shaders/layout.wgsl"), &[]),
        _ => return None,
    })
}

/// (family, entry point, variant)
type PipeKey = (&'static str, &'static str, u32);
/// The storage bindings of a dispatch: (binding, writable).
type Signature = Vec<(u32, bool)>;

struct Pipe {
    pipeline: wgpu::ComputePipeline,
    layout: Arc<wgpu::BindGroupLayout>,
    sig: Signature,
}

#[derive(Default)]
struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    params: Vec<u8>,
    count: usize,
    /// Dispatches and submissions since the backend was created (for tests and benchmarks).
    total_dispatches: u64,
    total_submits: u64,
}

pub struct Context {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub subgroups: bool,
    pub tiles: Tiles,
    pub pool: Arc<BufferPool>,
    staging: BufferPool,
    rec: Mutex<Recorder>,
    modules: Mutex<HashMap<(&'static str, u32), wgpu::ShaderModule>>,
    pipes: Mutex<HashMap<PipeKey, Arc<Pipe>>>,
    layouts: Mutex<HashMap<Signature, Arc<wgpu::BindGroupLayout>>>,
    errors: Arc<Mutex<Vec<String>>>,
    params_buf: wgpu::Buffer,
    /// A small buffer bound where a kernel's optional input is absent.
    pub dummy: wgpu::Buffer,
    pub buffers_created: std::sync::atomic::AtomicU64,
    /// Bytes of the storage buffers made and not yet released (live tensors plus the pool).
    bytes_created: std::sync::atomic::AtomicU64,
    /// `SSL_ENGINE_WGPU_MEMORY_LIMIT_MB`: allocations beyond it fail with Error::OutOfMemory, as
    /// on a GPU of that size (software adapters share the host's memory and would swap instead).
    memory_limit: Option<u64>,
}

fn dev_err(op: &str, e: impl std::fmt::Display) -> Error {
    Error::Other(format!("wgpu {op}: {e}"))
}

impl Context {
    pub fn new(device_index: Option<usize>) -> Result<Context> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let none = || Error::Other("no WebGPU adapter found (install a Vulkan driver such as mesa-vulkan-drivers)".into());
        if adapters.is_empty() {
            return Err(none());
        }
        let adapter = match device_index {
            Some(i) => {
                if i >= adapters.len() {
                    let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                    return Err(Error::Other(format!("wgpu: adapter {i} requested, {} found: {}", adapters.len(), names.join(", "))));
                }
                adapters.swap_remove(i)
            }
            None => {
                // Prefer a real GPU, then a virtual one, then a CPU rasteriser (llvmpipe).
                let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
                    wgpu::DeviceType::DiscreteGpu => 0,
                    wgpu::DeviceType::IntegratedGpu => 1,
                    wgpu::DeviceType::VirtualGpu => 2,
                    wgpu::DeviceType::Other => 3,
                    wgpu::DeviceType::Cpu => 4,
                };
                let best = (0..adapters.len()).min_by_key(|&i| rank(&adapters[i])).ok_or_else(none)?;
                adapters.swap_remove(best)
            }
        };
        let info = adapter.get_info();
        let limits = adapter.limits();
        if limits.max_storage_buffers_per_shader_stage < 8 {
            return Err(Error::Other(format!(
                "wgpu: adapter {} offers {} storage buffers per stage; 8 are needed",
                info.name, limits.max_storage_buffers_per_shader_stage
            )));
        }
        // Subgroup operations are requested when offered; the kernels do not depend on them.
        let subgroups = adapter.features().contains(wgpu::Features::SUBGROUP);
        let features = if subgroups { wgpu::Features::SUBGROUP } else { wgpu::Features::empty() };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("ssl-engine"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Other(format!("wgpu: cannot open adapter {}: {e}", info.name)))?;
        // Errors outside an error scope are collected here and returned by the next
        // submit, download or synchronize (wgpu's default handler would panic).
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
        }));
        let tiles = Tiles::from_limits(&limits, info.device_type == wgpu::DeviceType::Cpu);
        let slot = slot_size(&limits);
        let params_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: slot * MAX_BATCH as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(Context {
            device,
            queue,
            info,
            limits,
            subgroups,
            tiles,
            pool: Arc::default(),
            staging: BufferPool::default(),
            rec: Mutex::default(),
            modules: Mutex::default(),
            pipes: Mutex::default(),
            layouts: Mutex::default(),
            errors,
            params_buf,
            dummy,
            buffers_created: Default::default(),
            bytes_created: Default::default(),
            memory_limit: std::env::var("SSL_ENGINE_WGPU_MEMORY_LIMIT_MB").ok().and_then(|v| v.parse::<u64>().ok()).map(|mb| mb << 20),
        })
    }

    fn slot(&self) -> u64 {
        slot_size(&self.limits)
    }

    fn lock_rec(&self) -> MutexGuard<'_, Recorder> {
        self.rec.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns (and clears) the errors wgpu reported since the last check.
    pub fn check_errors(&self, op: &str) -> Result<()> {
        let mut errs = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errs.is_empty() {
            return Ok(());
        }
        let n = errs.len();
        let first = errs.remove(0);
        errs.clear();
        Err(Error::Other(format!("wgpu ({op}): {first}{}", if n > 1 { format!(" (and {} more errors)", n - 1) } else { String::new() })))
    }

    /// Returns the cached buffers to the driver.
    pub fn release_pool(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let freed = self.pool.pooled_bytes();
        self.pool.clear();
        // Every pooled buffer was counted when alloc_buffer made it.
        self.bytes_created.fetch_sub(freed.min(self.bytes_created.load(Relaxed)), Relaxed);
    }

    /// A device buffer of at least `bytes` (rounded up to 4), from the pool when one is free.
    pub fn alloc_buffer(&self, bytes: u64) -> Result<wgpu::Buffer> {
        let bytes = bytes.max(4).div_ceil(4) * 4;
        use std::sync::atomic::Ordering::Relaxed;
        let oom = |free: u64, total: u64| Error::OutOfMemory {
            backend: format!("wgpu ({})", self.info.name),
            asked: bytes,
            free,
            total,
            context: String::new(),
        };
        // One buffer larger than the adapter allows: the same remedy as running out of memory.
        let max = self.limits.max_buffer_size.min(self.limits.max_storage_buffer_binding_size);
        if bytes > max {
            return Err(oom(max, max));
        }
        if let Some(b) = self.pool.take(bytes) {
            return Ok(b);
        }
        // A memory budget (SSL_ENGINE_WGPU_MEMORY_LIMIT_MB): cached buffers go back first.
        if let Some(limit) = self.memory_limit {
            if self.bytes_created.load(Relaxed) + bytes > limit {
                self.release_pool();
            }
            let used = self.bytes_created.load(Relaxed);
            if used + bytes > limit {
                return Err(oom(limit.saturating_sub(used), limit));
            }
        }
        self.bytes_created.fetch_add(bytes, Relaxed);
        self.buffers_created.fetch_add(1, Relaxed);
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    fn module(&self, k: &Kernel) -> Result<wgpu::ShaderModule> {
        let mut mods = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = mods.get(&(k.family, k.variant)) {
            return Ok(m.clone());
        }
        let (src, shared) =
            family_source(k.family).ok_or_else(|| Error::Invalid { op: k.op, msg: format!("no shader family {}", k.family) })?;
        let mut text = self.prelude(k.variant);
        text.push_str(COMMON);
        for s in shared {
            text.push_str(s);
        }
        text.push_str(src);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let m = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(k.family), source: wgpu::ShaderSource::Wgsl(text.into()) });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Other(format!("{}: shaders/{}.wgsl does not compile: {e}", k.op, k.family)));
        }
        mods.insert((k.family, k.variant), m.clone());
        Ok(m)
    }

    /// Constants every shader sees: tile sizes from the adapter's limits, and the variant.
    fn prelude(&self, variant: u32) -> String {
        let t = &self.tiles;
        format!(
            "// generated by src/backend/wgpu/context.rs from the adapter's limits\n\
             const WG: u32 = {}u;\nconst MM_TX: u32 = {}u;\nconst MM_TY: u32 = {}u;\nconst MM_TM: u32 = {}u;\n\
             const MM_TN: u32 = {}u;\nconst MM_BK: u32 = {}u;\nconst ROW_WG: u32 = {}u;\nconst ATT_BQ: u32 = {}u;\n\
             const ATT_BK: u32 = {}u;\nconst VARIANT: u32 = {}u;\n",
            t.wg, t.mm_tx, t.mm_ty, t.mm_tm, t.mm_tn, t.mm_bk, t.row_wg, t.att_bq, t.att_bk, variant
        )
    }

    fn bind_layout(&self, sig: &[(u32, bool)]) -> Arc<wgpu::BindGroupLayout> {
        let mut layouts = self.layouts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = layouts.get(sig) {
            return l.clone();
        }
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: std::num::NonZeroU64::new(PARAM_BYTES),
            },
            count: None,
        }];
        for &(binding, writable) in sig {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: !writable },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let l = Arc::new(self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries }));
        layouts.insert(sig.to_vec(), l.clone());
        l
    }

    fn pipeline(&self, k: &Kernel, sig: &[(u32, bool)]) -> Result<Arc<Pipe>> {
        let key = (k.family, k.entry, k.variant);
        if let Some(p) = self.pipes.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            if p.sig != sig {
                return Err(Error::Invalid { op: k.op, msg: format!("{}: bindings {sig:?} differ from {:?}", k.entry, p.sig) });
            }
            return Ok(p.clone());
        }
        let module = self.module(k)?;
        let layout = self.bind_layout(sig);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pl = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(k.entry),
            bind_group_layouts: &[Some(&*layout)],
            immediate_size: 0,
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(k.entry),
            layout: Some(&pl),
            module: &module,
            entry_point: Some(k.entry),
            compilation_options: wgpu::PipelineCompilationOptions { constants: &[], zero_initialize_workgroup_memory: false },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Other(format!("{}: pipeline {} (shaders/{}.wgsl) failed: {e}", k.op, k.entry, k.family)));
        }
        let p = Arc::new(Pipe { pipeline, layout, sig: sig.to_vec() });
        self.pipes.lock().unwrap_or_else(|e| e.into_inner()).insert(key, p.clone());
        Ok(p)
    }

    /// Records one dispatch of `groups` workgroups. Returns at once; the work runs when the
    /// batch is submitted.
    pub fn launch(&self, k: Kernel, params: Params, binds: &[Bind<'_>], groups: [u32; 3]) -> Result<()> {
        if groups.contains(&0) {
            return Ok(());
        }
        let max = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) || params.overflow || params.words.len() * 4 > PARAM_BYTES as usize {
            return Err(Error::Invalid {
                op: k.op,
                msg: format!("{}: problem too large for one dispatch (workgroups {groups:?}, limit {max})", k.entry),
            });
        }
        let sig: Signature = binds.iter().map(|&(i, _, wr)| (i, wr)).collect();
        let pipe = self.pipeline(&k, &sig)?;
        let mut guard = self.lock_rec();
        if guard.count >= MAX_BATCH {
            self.flush_locked(&mut guard)?;
        }
        let rec = &mut *guard;
        let offset = rec.params.len() as u64;
        for w in &params.words {
            rec.params.extend_from_slice(&w.to_le_bytes());
        }
        rec.params.resize((offset + self.slot()) as usize, 0);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.params_buf,
                offset: 0,
                size: std::num::NonZeroU64::new(PARAM_BYTES),
            }),
        }];
        for &(binding, buf, _) in binds {
            entries.push(wgpu::BindGroupEntry { binding, resource: buf.as_entire_binding() });
        }
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &pipe.layout, entries: &entries });
        let encoder =
            rec.encoder.get_or_insert_with(|| self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("batch") }));
        let pass = rec.pass.get_or_insert_with(|| encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default()).forget_lifetime());
        pass.set_pipeline(&pipe.pipeline);
        pass.set_bind_group(0, &bg, &[offset as u32]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        rec.count += 1;
        rec.total_dispatches += 1;
        Ok(())
    }

    fn flush_locked(&self, rec: &mut Recorder) -> Result<()> {
        drop(rec.pass.take());
        if let Some(enc) = rec.encoder.take() {
            if !rec.params.is_empty() {
                self.queue.write_buffer(&self.params_buf, 0, &rec.params);
            }
            self.queue.submit([enc.finish()]);
            rec.total_submits += 1;
        }
        rec.params.clear();
        rec.count = 0;
        self.check_errors("submit")
    }

    /// Submits the recorded batch without waiting.
    pub fn flush(&self) -> Result<()> {
        let mut rec = self.lock_rec();
        self.flush_locked(&mut rec)
    }

    pub fn synchronize(&self) -> Result<()> {
        let mut rec = self.lock_rec();
        self.flush_locked(&mut rec)?;
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| dev_err("synchronize", e))?;
        self.check_errors("synchronize")
    }

    /// Writes host data into a device buffer, after all work recorded so far.
    pub fn upload(&self, dst: &wgpu::Buffer, data: &[u8]) -> Result<()> {
        let mut rec = self.lock_rec();
        // queue.write_buffer runs at the start of the next submission, so work recorded
        // earlier (which may still read a pooled buffer) is submitted first.
        if rec.encoder.is_some() {
            self.flush_locked(&mut rec)?;
        }
        if !data.is_empty() {
            self.queue.write_buffer(dst, 0, data);
        }
        Ok(())
    }

    /// Waits for all work, then copies `bytes` bytes of `src` to the host.
    pub fn download(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let size = bytes.div_ceil(4) * 4;
        let staging = match self.staging.take(size) {
            Some(b) => b,
            None => self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        };
        let mut guard = self.lock_rec();
        let rec = &mut *guard;
        drop(rec.pass.take());
        let encoder =
            rec.encoder.get_or_insert_with(|| self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("batch") }));
        encoder.copy_buffer_to_buffer(src, 0, &staging, 0, size);
        self.flush_locked(rec)?;
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| dev_err("download", e))?;
        rx.recv().map_err(|e| dev_err("download", e))?.map_err(|e| dev_err("download", e))?;
        let out = {
            let view = slice.get_mapped_range().map_err(|e| dev_err("download", e))?;
            view[..bytes as usize].to_vec()
        };
        staging.unmap();
        self.staging.give(staging);
        self.check_errors("download")?;
        Ok(out)
    }

    /// Workgroups for `n` elements of a grid-stride kernel (WG invocations each, capped).
    pub fn grid1(&self, n: usize) -> [u32; 3] {
        let wg = self.tiles.wg as usize;
        grid(n.min(self.tiles.max_groups as usize * wg), self.tiles.wg)
    }

    pub fn counters(&self) -> (u64, u64) {
        let rec = self.lock_rec();
        (rec.total_dispatches, rec.total_submits)
    }
}

fn slot_size(l: &wgpu::Limits) -> u64 {
    let a = l.min_uniform_buffer_offset_alignment.max(1) as u64;
    PARAM_BYTES.div_ceil(a) * a
}

/// A workgroup count; values past u32 saturate so `launch` reports them as too large.
pub fn sat(x: usize) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

/// Workgroups for `n` threads of `per` each, as (x, y) so no dimension passes 32768.
pub fn grid(n: usize, per: u32) -> [u32; 3] {
    let g = n.div_ceil(per as usize);
    let x = g.min(32768);
    let y = g.div_ceil(x.max(1));
    [sat(x), sat(y), 1]
}
