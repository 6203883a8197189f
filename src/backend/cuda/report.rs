//! The static kernel report: what a CUDA engineer reads before touching a GPU. Every family is
//! compiled for sm_90a by NVRTC with `ptxas --verbose` (registers, spills, stack, shared memory)
//! and disassembled with `cuobjdump -sass` (the instruction mix: tensor-core HMMA, cp.async
//! LDGSTS, ldmatrix LDSM, local-memory LDL/STL, subroutine calls, which in these kernels are the
//! 64-bit integer division and modulo helpers). Theoretical occupancy follows from the
//! registers, the shared memory and the block size the kernel declares (`__launch_bounds__`).
//!
//! Needs libnvrtc and `cuobjdump` (CUDA toolkit, or `pip install nvidia-cuda-cuobjdump`), no GPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::GemmMath;
use super::gemm::Tile;
use super::nvrtc::{self, FAMILIES, Target, err};
use crate::error::Result;

/// One kernel's resources and instruction mix on sm_90a.
#[derive(Clone, Debug, Default)]
pub struct KernelStatic {
    pub name: String,
    pub file: String,
    pub registers: u32,
    pub spill_bytes: u32,
    pub stack_bytes: u32,
    /// Static shared memory plus the dynamic shared memory its launches ask for (the GEMM core).
    pub smem_bytes: u32,
    /// Threads per block from `__launch_bounds__`; None when the kernel declares none.
    pub block_threads: Option<u32>,
    pub hmma: u32,
    pub ldgsts: u32,
    /// The 16-byte ones among them (LDGSTS.E.BYPASS.128: cp.async.cg of 4 floats).
    pub ldgsts128: u32,
    pub ldsm: u32,
    /// LDL + STL: local-memory traffic (spills, or arrays the compiler could not keep in registers).
    pub local_ops: u32,
    /// CALL instructions: integer-division helpers here.
    pub calls: u32,
    pub instructions: u32,
}

impl KernelStatic {
    /// Theoretical occupancy on an H100 / H200 SM (64K registers, 2048 threads, 32 blocks,
    /// 228 KB shared memory with 1 KB reserved per block), as a fraction of 64 warps.
    pub fn occupancy(&self) -> Option<f64> {
        let threads = self.block_threads?;
        let warps = threads.div_ceil(32);
        let regs_per_warp = (self.registers.max(1) * 32).div_ceil(256) * 256;
        let by_regs = (65536 / regs_per_warp) / warps;
        let by_threads = 2048 / threads;
        let by_smem = 233_472 / (self.smem_bytes + 1024);
        let blocks = by_regs.min(by_threads).min(by_smem).min(32);
        Some((blocks * warps) as f64 / 64.0)
    }
}

/// `cuobjdump`: $CUOBJDUMP, then PATH, then the pip wheel beside libnvrtc's.
pub fn find_cuobjdump() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CUOBJDUMP").map(PathBuf::from).filter(|p| p.is_file()) {
        return Some(p);
    }
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let from_lib = std::env::var_os("LD_LIBRARY_PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .filter_map(|d| d.parent().map(|p| p.join("bin")));
    on_path.chain(from_lib).map(|d| d.join("cuobjdump")).find(|p| p.is_file())
}

/// Compiles every family for sm_90a and reports every kernel.
pub fn static_report(cuobjdump: &Path) -> Result<Vec<KernelStatic>> {
    let target = Target("sm_90a".into());
    // SSL_ENGINE_SASS_DIR keeps the cubins and their disassembly for reading.
    let keep = std::env::var_os("SSL_ENGINE_SASS_DIR").map(PathBuf::from);
    let dir = keep.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("ssl-engine-sass-{}", std::process::id())));
    std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    let mut out = Vec::new();
    let dynamic: HashMap<&str, u32> = gemm_core_kernels().into_iter().collect();
    for (file, src) in FAMILIES {
        let c = nvrtc::compile_with(file, src, &target, &["--ptxas-options=--verbose"])?;
        let mut kernels = parse_ptxas_log(&c.log, file);
        if let Some(ptx) = &c.ptx {
            for (name, threads) in launch_bounds(ptx) {
                if let Some(k) = kernels.get_mut(&name) {
                    k.block_threads = Some(threads);
                }
            }
        }
        let cubin = dir.join(file.replace(".cu", ".cubin"));
        std::fs::write(&cubin, &c.image).map_err(|e| err(format!("{}: {e}", cubin.display())))?;
        let o = Command::new(cuobjdump).arg("-sass").arg(&cubin).output().map_err(|e| err(format!("{}: {e}", cuobjdump.display())))?;
        if !o.status.success() {
            return Err(err(format!("cuobjdump -sass {}: {}", cubin.display(), String::from_utf8_lossy(&o.stderr).trim())));
        }
        if keep.is_some() {
            let _ = std::fs::write(cubin.with_extension("sass"), &o.stdout);
        }
        for (name, mix) in parse_sass(&String::from_utf8_lossy(&o.stdout)) {
            let k = kernels.entry(name.clone()).or_insert_with(|| KernelStatic { name, file: file.to_string(), ..Default::default() });
            k.hmma = mix.hmma;
            k.ldgsts = mix.ldgsts;
            k.ldgsts128 = mix.ldgsts128;
            k.ldsm = mix.ldsm;
            k.local_ops = mix.local_ops;
            k.calls = mix.calls;
            k.instructions = mix.instructions;
        }
        let mut ks: Vec<KernelStatic> = kernels.into_values().collect();
        for k in &mut ks {
            k.smem_bytes += dynamic.get(k.name.as_str()).copied().unwrap_or(0);
        }
        ks.sort_by(|a, b| a.name.cmp(&b.name));
        out.extend(ks);
    }
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(out)
}

/// Registers, spills, stack and shared memory of each kernel of `file`, from the log of an
/// NVRTC compile with `--ptxas-options=--verbose`.
pub fn parse_ptxas_log(log: &str, file: &str) -> HashMap<String, KernelStatic> {
    let mut out: HashMap<String, KernelStatic> = HashMap::new();
    let mut current = String::new();
    let num_before = |line: &str, unit: &str| -> Option<u32> {
        let i = line.find(unit)?;
        line[..i].trim_end().rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            current = rest.split('\'').next().unwrap_or("").to_string();
            out.entry(current.clone()).or_insert_with(|| KernelStatic {
                name: current.clone(),
                file: file.to_string(),
                ..Default::default()
            });
            continue;
        }
        let Some(k) = out.get_mut(&current) else { continue };
        if line.contains("bytes stack frame") {
            k.stack_bytes = num_before(line, "bytes stack frame").unwrap_or(0);
            k.spill_bytes = num_before(line, "bytes spill stores").unwrap_or(0) + num_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("registers") {
            k.registers = num_before(line, "registers").unwrap_or(0);
            k.smem_bytes = num_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

/// (kernel, threads) of every `.maxntid` in the PTX.
fn launch_bounds(ptx: &str) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in ptx.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix(".visible .entry ").or_else(|| t.strip_prefix(".entry ")) {
            current = Some(rest.split('(').next().unwrap_or("").trim().to_string());
        }
        if let (Some(k), Some(rest)) = (&current, t.strip_prefix(".maxntid")) {
            let dims: Vec<u32> = rest.split(',').filter_map(|d| d.trim().parse().ok()).collect();
            out.push((k.clone(), dims.iter().product()));
            current = None;
        }
    }
    out
}

#[derive(Default)]
struct Mix {
    hmma: u32,
    ldgsts: u32,
    ldgsts128: u32,
    ldsm: u32,
    local_ops: u32,
    calls: u32,
    instructions: u32,
}

/// The instruction mix of each function in `cuobjdump -sass` output.
fn parse_sass(text: &str) -> Vec<(String, Mix)> {
    let mut out: Vec<(String, Mix)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.trim().strip_prefix("Function : ") {
            out.push((name.trim().to_string(), Mix::default()));
            continue;
        }
        let Some((_, m)) = out.last_mut() else { continue };
        // "        /*0070*/                   @P0 HMMA.16816.F32.BF16 R4, ... ;"
        let Some(code) = line.trim().strip_prefix("/*").and_then(|r| r.split_once("*/")).map(|(_, c)| c.trim()) else { continue };
        let mut words = code.split_whitespace();
        let mut op = words.next().unwrap_or("");
        if op.starts_with('@') {
            op = words.next().unwrap_or("");
        }
        if op.is_empty() || op.starts_with("/*") {
            continue;
        }
        m.instructions += 1;
        let base = op.split('.').next().unwrap_or(op);
        match base {
            "HMMA" | "HGMMA" => m.hmma += 1,
            "LDGSTS" => {
                m.ldgsts += 1;
                m.ldgsts128 += op.ends_with(".128") as u32;
            }
            "LDSM" => m.ldsm += 1,
            "LDL" | "STL" => m.local_ops += 1,
            "CALL" => m.calls += 1,
            _ => {}
        }
    }
    out
}

/// The report as a table.
pub fn format_report(ks: &[KernelStatic]) -> String {
    let mut s = format!(
        "{:<40} {:<15} {:>4} {:>6} {:>6} {:>6} {:>5} {:>6} {:>5} {:>7} {:>5} {:>5} {:>7} {:>5}\n",
        "kernel (sm_90a)", "file", "regs", "spill", "stack", "smem", "block", "occup", "HMMA", "LDGSTS", ".128", "LDSM", "LDL/STL", "calls"
    );
    for k in ks {
        let occ = k.occupancy().map(|o| format!("{:.0}%", o * 100.0)).unwrap_or_else(|| "-".into());
        let block = k.block_threads.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<40} {:<15} {:>4} {:>6} {:>6} {:>6} {:>5} {:>6} {:>5} {:>7} {:>5} {:>5} {:>7} {:>5}\n",
            k.name,
            k.file,
            k.registers,
            k.spill_bytes,
            k.stack_bytes,
            k.smem_bytes,
            block,
            occ,
            k.hmma,
            k.ldgsts,
            k.ldgsts128,
            k.ldsm,
            k.local_ops,
            k.calls
        ));
    }
    s
}

/// Every GEMM-core kernel (matmul and the convolutions) with the dynamic shared memory its
/// launches ask for: the static report adds it to the kernel's own.
pub fn gemm_core_kernels() -> Vec<(&'static str, u32)> {
    let mut out = Vec::new();
    for math in [GemmMath::Simt, GemmMath::Tf32, GemmMath::Bf16] {
        for tile in [Tile::T64, Tile::T128, Tile::T128x64] {
            let bytes = tile.smem_bytes(math);
            out.push((super::matmul::kernel_of(math, tile), bytes));
            out.extend(super::conv::kernels_of(math, tile).into_iter().map(|k| (k, bytes)));
        }
    }
    out.sort();
    out.dedup();
    out
}
