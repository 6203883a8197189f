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
pub use super::gemm::wave_efficiency;
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
    /// Bytes all its cp.async copies move (4, 8 or 16 each): with `ldgsts`, the bytes per copy.
    pub ldgsts_bytes: u32,
    /// 16-byte global loads and stores (LDG / STG .128): the vector paths of the memory-bound
    /// passes.
    pub global128: u32,
    /// The innermost loop that holds MMAs: (its instructions, the MMAs among them), None without
    /// one. Found as the CUTLASS anchor script of the project's notes finds it: a span from a
    /// backward branch's target to the branch that holds an HMMA/HGMMA and no other such span;
    /// of several (a variant picked at run time), the one with the most instructions per MMA.
    pub main_loop: Option<(u32, u32)>,
}

impl KernelStatic {
    /// Instructions per MMA in the main loop (CUTLASS 4.2's sm80 bf16 kernels: 2.6-5.5).
    pub fn instructions_per_mma(&self) -> Option<f64> {
        self.main_loop.map(|(n, mma)| n as f64 / mma.max(1) as f64)
    }

    /// Bytes per cp.async (16 is the widest: LDGSTS.128).
    pub fn bytes_per_cp_async(&self) -> Option<f64> {
        (self.ldgsts > 0).then(|| self.ldgsts_bytes as f64 / self.ldgsts as f64)
    }

    /// Theoretical occupancy on an H100 / H200 SM (64K registers, 2048 threads, 32 blocks,
    /// 228 KB shared memory with 1 KB reserved per block), as a fraction of 64 warps.
    pub fn occupancy(&self) -> Option<f64> {
        let warps = self.block_threads?.div_ceil(32);
        Some((self.blocks_per_sm()? * warps) as f64 / 64.0)
    }

    /// Blocks resident on one SM at once (same limits as `occupancy`).
    pub fn blocks_per_sm(&self) -> Option<u32> {
        let threads = self.block_threads?;
        let warps = threads.div_ceil(32);
        let regs_per_warp = (self.registers.max(1) * 32).div_ceil(256) * 256;
        let by_regs = (65536 / regs_per_warp) / warps;
        let by_threads = 2048 / threads;
        let by_smem = 233_472 / (self.smem_bytes + 1024);
        Some(by_regs.min(by_threads).min(by_smem).min(32))
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
            k.ldgsts_bytes = mix.ldgsts_bytes;
            k.global128 = mix.global128;
            k.main_loop = main_loop(&mix.code);
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
    ldgsts_bytes: u32,
    global128: u32,
    /// (address, whether an MMA, backward-branch target if a branch) of every instruction.
    code: Vec<(u64, bool, Option<u64>)>,
}

/// The main loop: of the loops holding MMAs ([target, branch] spans of a branch to an earlier
/// address) that hold no other such loop, the one with the most instructions per MMA, as
/// (instructions, MMAs). A kernel may have several (matmul's four transposes, picked at run
/// time); the worst is the kernel's figure, so a slow variant cannot hide behind a fast one.
fn main_loop(code: &[(u64, bool, Option<u64>)]) -> Option<(u32, u32)> {
    let mut loops = Vec::new();
    for &(addr, _, target) in code {
        let Some(t) = target.filter(|&t| t < addr) else { continue };
        let body = code.iter().filter(|(a, ..)| (t..=addr).contains(a));
        let (n, mma) = body.fold((0u32, 0u32), |(n, m), (_, is_mma, _)| (n + 1, m + *is_mma as u32));
        if mma > 0 {
            loops.push((t, addr, n, mma));
        }
    }
    let holds_another = |&(t, a, ..): &(u64, u64, u32, u32)| loops.iter().any(|&(t2, a2, ..)| (t2, a2) != (t, a) && t <= t2 && a2 <= a);
    let per_mma = |&(_, _, n, mma): &(u64, u64, u32, u32)| n as f64 / mma as f64;
    loops.iter().filter(|l| !holds_another(l)).max_by(|x, y| per_mma(x).total_cmp(&per_mma(y))).map(|&(_, _, n, mma)| (n, mma))
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
        let Some((addr, code)) = line.trim().strip_prefix("/*").and_then(|r| r.split_once("*/")).map(|(a, c)| (a, c.trim())) else { continue };
        let Ok(addr) = u64::from_str_radix(addr.trim(), 16) else { continue };
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
        // "BRA 0x1230 ;": the branch's target address.
        let target = (base == "BRA")
            .then(|| code.split_whitespace().find_map(|w| w.trim_end_matches(';').strip_prefix("0x").and_then(|h| u64::from_str_radix(h, 16).ok())))
            .flatten();
        m.code.push((addr, matches!(base, "HMMA" | "HGMMA"), target));
        match base {
            "HMMA" | "HGMMA" => m.hmma += 1,
            "LDGSTS" => {
                m.ldgsts += 1;
                m.ldgsts128 += op.ends_with(".128") as u32;
                m.ldgsts_bytes += if op.contains(".128") { 16 } else if op.contains(".64") { 8 } else { 4 };
            }
            "LDSM" => m.ldsm += 1,
            "LDG" | "STG" => m.global128 += op.split('.').any(|p| p == "128") as u32,
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
        "{:<40} {:<15} {:>4} {:>6} {:>6} {:>6} {:>5} {:>6} {:>5} {:>7} {:>5} {:>5} {:>7} {:>5} {:>9} {:>6} {:>7}\n",
        "kernel (sm_90a)", "file", "regs", "spill", "stack", "smem", "block", "occup", "HMMA", "LDGSTS", ".128", "LDSM", "LDL/STL", "calls", "instr/MMA", "B/cp", "LDG/STG.128"
    );
    for k in ks {
        let occ = k.occupancy().map(|o| format!("{:.0}%", o * 100.0)).unwrap_or_else(|| "-".into());
        let block = k.block_threads.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<40} {:<15} {:>4} {:>6} {:>6} {:>6} {:>5} {:>6} {:>5} {:>7} {:>5} {:>5} {:>7} {:>5} {:>9} {:>6} {:>7}\n",
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
            k.calls,
            k.instructions_per_mma().map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
            k.bytes_per_cp_async().map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
            k.global128
        ));
    }
    s
}

/// Every GEMM-core kernel (matmul and the convolutions) with the dynamic shared memory its
/// launches ask for: the static report adds it to the kernel's own.
pub fn gemm_core_kernels() -> Vec<(&'static str, u32)> {
    let mut out = Vec::new();
    for math in [GemmMath::Simt, GemmMath::Tf32, GemmMath::Bf16] {
        for tile in [Tile::T64, Tile::T128, Tile::T128x64, Tile::T64x128] {
            let bytes = tile.smem_bytes(math);
            if tile != Tile::T64x128 {
                out.extend(super::matmul::kernels_of(math, tile).into_iter().map(|k| (k, bytes)));
            }
            out.extend(super::conv::kernels_of(math, tile).into_iter().map(|k| (k, bytes)));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up kernel in cuobjdump's format: an outer loop (0x0010..0x00a0) around an inner
    /// one (0x0030..0x0070) holding 2 MMAs in 5 instructions, a forward branch, and global loads
    /// and stores of 16 and 4 bytes.
    const SASS: &str = "
        Function : k
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDGSTS.E.BYPASS.LTC128B.128 [R2], desc[UR4][R4.64] ;
        /*0020*/                   LDGSTS.E [R3], desc[UR4][R6.64] ;
        /*0030*/                   LDSM.16.M88.4 R8, [R9] ;
        /*0040*/                   HMMA.16816.F32.BF16 R12, R8, R10, R12 ;
        /*0050*/                   HMMA.16816.F32.BF16 R16, R8, R11, R16 ;
        /*0060*/                   IADD3 R9, R9, 0x40, RZ ;
        /*0070*/               @P0 BRA 0x30 ;
        /*0080*/               @P1 BRA 0xc0 ;
        /*0090*/                   IADD3 R2, R2, 0x1, RZ ;
        /*00a0*/               @P2 BRA 0x10 ;
        /*00b0*/                   EXIT ;
        /*00c0*/                   BRA 0xc0 ;
        /*00d0*/                   LDG.E.128 R20, desc[UR4][R2.64] ;
        /*00e0*/                   STG.E.128 desc[UR4][R2.64], R20 ;
        /*00f0*/                   LDG.E R24, desc[UR4][R2.64] ;
    ";

    /// Two sibling loops holding MMAs (a kernel that picks its variant at run time): 1.5 and 4
    /// instructions per MMA.
    const TWO_LOOPS: &str = "
        Function : two
        /*0000*/                   HMMA.16816.F32.BF16 R12, R8, R10, R12 ;
        /*0010*/                   HMMA.16816.F32.BF16 R16, R8, R11, R16 ;
        /*0020*/               @P0 BRA 0x0 ;
        /*0030*/                   HMMA.16816.F32.BF16 R12, R8, R10, R12 ;
        /*0040*/                   IADD3 R9, R9, 0x40, RZ ;
        /*0050*/                   IADD3 R9, R9, 0x40, RZ ;
        /*0060*/               @P0 BRA 0x30 ;
        /*0070*/                   EXIT ;
    ";

    #[test]
    fn the_main_loop_is_the_innermost_loop_with_mmas() {
        let got = parse_sass(SASS);
        assert_eq!(got.len(), 1);
        let (name, mix) = &got[0];
        assert_eq!(name, "k");
        assert_eq!(main_loop(&mix.code), Some((5, 2)), "0x30..=0x70: LDSM, 2 HMMA, IADD3, BRA");
        let two = parse_sass(TWO_LOOPS);
        assert_eq!(main_loop(&two[0].1.code), Some((4, 1)), "the second loop: 4 instructions for its one MMA, not the first's 3 for 2");
        assert_eq!((mix.ldgsts, mix.ldgsts128, mix.ldgsts_bytes), (2, 1, 20));
        assert_eq!(mix.global128, 2, "one 16-byte load and one 16-byte store; the 4-byte load is not one");
        let k = KernelStatic { main_loop: main_loop(&mix.code), ldgsts: mix.ldgsts, ldgsts_bytes: mix.ldgsts_bytes, ..Default::default() };
        assert_eq!(k.instructions_per_mma(), Some(2.5));
        assert_eq!(k.bytes_per_cp_async(), Some(10.0));
    }

    #[test]
    fn wave_efficiency_counts_the_last_waves_empty_slots() {
        assert!((wave_efficiency(144, 132, 1) - 144.0 / 264.0).abs() < 1e-12);
        assert_eq!(wave_efficiency(264, 132, 2), 1.0);
        assert!((wave_efficiency(100, 132, 1) - 100.0 / 132.0).abs() < 1e-12);
    }
}
