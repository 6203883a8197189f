//! The kernel sources (kernels/*.cu, embedded in the binary), their compilation through NVRTC,
//! the on-disk cache of compiled images, and the kernel signatures read back from PTX.
//!
//! Compiled images are cached under `$SSL_ENGINE_CACHE_DIR`, else `$XDG_CACHE_HOME/ssl-engine/kernels`,
//! else `~/.cache/ssl-engine/kernels`, in files named by family, target and a 128-bit hash of
//! everything that affects the result (sources and headers, target, options, NVRTC version), so
//! the second start is a file read and a stale image is never used. Writes go through a temporary
//! file and a rename; a cache that cannot be written is skipped silently.

use std::ffi::{CStr, CString, c_char, c_int};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::sys;

use crate::error::{Error, Result};

/// Headers every family may include.
pub const HEADERS: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../../../kernels/common.cuh")),
    ("mma.cuh", include_str!("../../../kernels/mma.cuh")),
    ("gemm_tile.cuh", include_str!("../../../kernels/gemm_tile.cuh")),
    ("attention_tc.cuh", include_str!("../../../kernels/attention_tc.cuh")),
];

/// One source file per op family (DESIGN.md: one op, four places, one name).
pub const FAMILIES: &[(&str, &str)] = &[
    ("matmul.cu", include_str!("../../../kernels/matmul.cu")),
    ("conv.cu", include_str!("../../../kernels/conv.cu")),
    ("norm.cu", include_str!("../../../kernels/norm.cu")),
    ("attention.cu", include_str!("../../../kernels/attention.cu")),
    ("loss.cu", include_str!("../../../kernels/loss.cu")),
    ("elementwise.cu", include_str!("../../../kernels/elementwise.cu")),
    ("pool.cu", include_str!("../../../kernels/pool.cu")),
    ("optim.cu", include_str!("../../../kernels/optim.cu")),
    ("layout.cu", include_str!("../../../kernels/layout.cu")),
];

/// Options for every compile. No fast-math: the default kernels must match the CPU reference.
/// `-lineinfo` lets compute-sanitizer name source lines and costs nothing at run time.
/// `-default-device`: NVRTC takes an unannotated function, a lambda's too, for host code; the
/// grid-stride loop's body is a lambda (FOR_EACH in common.cuh), and every named function here
/// is annotated anyway.
const OPTIONS: &[&str] = &["--std=c++17", "-lineinfo", "-default-device"];

pub(crate) fn err(msg: impl Into<String>) -> Error {
    Error::Device { backend: "cuda", msg: msg.into() }
}

/// Whether libnvrtc can be loaded; the error names what is missing and how to provide it.
/// (cudarc's loader panics when the library is absent, so every entry point checks this first.)
pub fn nvrtc_available() -> Result<()> {
    // SAFETY: only tries to dlopen the candidate library names.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(err("libnvrtc not found (CUDA 13 NVRTC: `pip install \"nvidia-cuda-nvrtc==13.0.*\"` and add its \
             site-packages/nvidia/cu13/lib to LD_LIBRARY_PATH, or install the CUDA toolkit)"))
    }
}

fn check(r: sys::nvrtcResult, what: &str) -> Result<()> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        return Ok(());
    }
    // SAFETY: nvrtcGetErrorString returns a static string for any result code.
    let s = unsafe { CStr::from_ptr(sys::nvrtcGetErrorString(r)) }.to_string_lossy().into_owned();
    Err(err(format!("nvrtc: {what}: {s}")))
}

/// (major, minor) of the loaded NVRTC.
pub fn version() -> Result<(i32, i32)> {
    nvrtc_available()?;
    let (mut major, mut minor) = (0 as c_int, 0 as c_int);
    // SAFETY: two valid out-pointers.
    check(unsafe { sys::nvrtcVersion(&mut major, &mut minor) }, "version")?;
    Ok((major, minor))
}

/// The real architectures this NVRTC can compile for, e.g. [75, 80, 86, 89, 90, 100, 120].
pub fn supported_archs() -> Result<Vec<i32>> {
    nvrtc_available()?;
    let mut n: c_int = 0;
    // SAFETY: valid out-pointer, then a buffer of the size NVRTC reported.
    check(unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) }, "supported archs")?;
    let mut v = vec![0 as c_int; n.max(0) as usize];
    if n > 0 {
        check(unsafe { sys::nvrtcGetSupportedArchs(v.as_mut_ptr()) }, "supported archs")?;
    }
    Ok(v)
}

/// What to build: `sm_XX[a]` gives a cubin for exactly that GPU (loaded without JIT),
/// `compute_XX[a]` gives PTX (portable, JIT-compiled by the driver).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target(pub String);

impl Target {
    pub fn is_cubin(&self) -> bool {
        self.0.starts_with("sm_")
    }
    /// The target for a device of compute capability `major.minor`: its own cubin when this
    /// NVRTC knows the architecture (sm_90a on Hopper, for wgmma), else PTX for the newest
    /// architecture it knows that the device can run.
    pub fn for_device(major: i32, minor: i32, supported: &[i32]) -> Result<Target> {
        let cc = major * 10 + minor;
        if supported.contains(&cc) {
            return Ok(Target(if cc == 90 { "sm_90a".into() } else { format!("sm_{cc}") }));
        }
        match supported.iter().copied().filter(|&a| a <= cc && a >= 80).max() {
            Some(a) => Ok(Target(format!("compute_{a}"))),
            None => Err(err(format!(
                "device of compute capability {major}.{minor} is not supported (needs 8.0 or newer; this NVRTC knows {supported:?})"
            ))),
        }
    }
}

/// A compiled family: the image to load (cubin or NUL-terminated PTX) and its PTX when
/// available (for the kernel signatures).
pub struct Compiled {
    pub image: Vec<u8>,
    pub ptx: Option<String>,
    /// The compiler's log (warnings; with `--ptxas-options=--verbose`, registers and spills).
    pub log: String,
}

struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed once.
        unsafe {
            let _ = sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

fn get_bytes(
    prog: &Program, size: unsafe fn(sys::nvrtcProgram, *mut usize) -> sys::nvrtcResult,
    get: unsafe fn(sys::nvrtcProgram, *mut c_char) -> sys::nvrtcResult, what: &str,
) -> Result<Vec<u8>> {
    let mut n = 0usize;
    // SAFETY: valid program and out-pointer; the buffer has the size NVRTC reported.
    check(unsafe { size(prog.0, &mut n) }, what)?;
    let mut buf = vec![0u8; n];
    if n > 0 {
        check(unsafe { get(prog.0, buf.as_mut_ptr() as *mut c_char) }, what)?;
    }
    Ok(buf)
}

/// Compiles one family for `target`, without the cache. A compile error carries NVRTC's log.
pub fn compile(file: &str, src: &str, target: &Target) -> Result<Compiled> {
    compile_with(file, src, target, &[])
}

/// `compile` with extra NVRTC options (e.g. `--ptxas-options=--verbose` in tests).
pub fn compile_with(file: &str, src: &str, target: &Target, extra: &[&str]) -> Result<Compiled> {
    nvrtc_available()?;
    let csrc = CString::new(src).map_err(|_| err(format!("{file}: NUL byte in source")))?;
    let cname = CString::new(file).map_err(|_| err("bad file name"))?;
    let hdr_src: Vec<CString> =
        HEADERS.iter().map(|(_, s)| CString::new(*s)).collect::<std::result::Result<_, _>>().map_err(|_| err("NUL in header"))?;
    let hdr_name: Vec<CString> =
        HEADERS.iter().map(|(n, _)| CString::new(*n)).collect::<std::result::Result<_, _>>().map_err(|_| err("NUL in header name"))?;
    let hdr_src_p: Vec<*const c_char> = hdr_src.iter().map(|s| s.as_ptr()).collect();
    let hdr_name_p: Vec<*const c_char> = hdr_name.iter().map(|s| s.as_ptr()).collect();
    let mut raw: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer refers to a live NUL-terminated string for the duration of the call.
    check(
        unsafe {
            sys::nvrtcCreateProgram(
                &mut raw,
                csrc.as_ptr(),
                cname.as_ptr(),
                HEADERS.len() as c_int,
                hdr_src_p.as_ptr(),
                hdr_name_p.as_ptr(),
            )
        },
        &format!("create program {file}"),
    )?;
    let prog = Program(raw);
    let mut opts: Vec<CString> = vec![CString::new(format!("--gpu-architecture={}", target.0)).map_err(|_| err("bad target"))?];
    opts.extend(OPTIONS.iter().chain(extra).map(|o| CString::new(*o).unwrap_or_default()));
    let opt_p: Vec<*const c_char> = opts.iter().map(|s| s.as_ptr()).collect();
    // SAFETY: valid program; the option strings live until the call returns.
    let r = unsafe { sys::nvrtcCompileProgram(prog.0, opt_p.len() as c_int, opt_p.as_ptr()) };
    let log = get_bytes(&prog, sys::nvrtcGetProgramLogSize, sys::nvrtcGetProgramLog, "log").unwrap_or_default();
    let log = String::from_utf8_lossy(&log).trim_end_matches('\0').trim().to_string();
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        check(r, &format!("compile kernels/{file} for {}", target.0)).map_err(|e| err(format!("{e}\n{log}")))?;
    }
    let ptx = get_bytes(&prog, sys::nvrtcGetPTXSize, sys::nvrtcGetPTX, "get PTX").ok().filter(|p| !p.is_empty());
    let ptx_text = ptx.as_ref().map(|p| String::from_utf8_lossy(p).trim_end_matches('\0').to_string());
    let image = if target.is_cubin() {
        get_bytes(&prog, sys::nvrtcGetCUBINSize, sys::nvrtcGetCUBIN, &format!("get cubin of {file}"))?
    } else {
        let mut p = ptx.ok_or_else(|| err(format!("nvrtc: no PTX for kernels/{file}")))?;
        if p.last() != Some(&0) {
            p.push(0);
        }
        p
    };
    Ok(Compiled { image, ptx: ptx_text, log })
}

/// FNV-1a, 128-bit.
fn fnv128(parts: &[&[u8]]) -> u128 {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for p in parts {
        for &b in p.iter().chain(&[0xffu8]) {
            h ^= b as u128;
            h = h.wrapping_mul(0x0000000001000000000000000000013B);
        }
    }
    h
}

/// The cache folder, created if needed; None when there is no usable place.
pub fn cache_dir() -> Option<PathBuf> {
    let base = if let Some(d) = std::env::var_os("SSL_ENGINE_CACHE_DIR") {
        PathBuf::from(d)
    } else if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        PathBuf::from(d).join("ssl-engine").join("kernels")
    } else {
        PathBuf::from(std::env::var_os("HOME")?).join(".cache").join("ssl-engine").join("kernels")
    };
    std::fs::create_dir_all(&base).ok()?;
    Some(base)
}

/// The cache key of one family for one target under the loaded NVRTC.
fn cache_key(file: &str, src: &str, target: &Target) -> Result<String> {
    let (major, minor) = version()?;
    let ver = format!("nvrtc {major}.{minor}");
    let mut parts: Vec<&[u8]> = vec![b"ssl-engine kernels v1", ver.as_bytes(), target.0.as_bytes(), file.as_bytes(), src.as_bytes()];
    for o in OPTIONS {
        parts.push(o.as_bytes());
    }
    for (n, s) in HEADERS {
        parts.push(n.as_bytes());
        parts.push(s.as_bytes());
    }
    let stem = file.trim_end_matches(".cu");
    Ok(format!("{stem}-{}-{:032x}", target.0, fnv128(&parts)))
}

fn write_atomic(path: &Path, data: &[u8]) {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, data).is_ok() && std::fs::rename(&tmp, path).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(&tmp);
}

/// Compiles through the cache: a hit reads the image (and its PTX) from disk.
/// `fresh` skips the lookup (used to replace a cached image the driver rejected).
pub fn compile_cached(file: &str, src: &str, target: &Target, dir: Option<&Path>, fresh: bool) -> Result<Compiled> {
    let Some(dir) = dir else { return compile(file, src, target) };
    let key = cache_key(file, src, target)?;
    let img_path = dir.join(format!("{key}.{}", if target.is_cubin() { "cubin" } else { "ptx" }));
    let ptx_path = dir.join(format!("{key}.sig.ptx"));
    if !fresh
        && let Ok(image) = std::fs::read(&img_path)
        && !image.is_empty()
        && let Ok(ptx) = std::fs::read_to_string(&ptx_path)
    {
        return Ok(Compiled { image, ptx: Some(ptx), log: String::new() });
    }
    let c = compile(file, src, target)?;
    if let Some(p) = &c.ptx {
        write_atomic(&ptx_path, p.as_bytes());
    }
    write_atomic(&img_path, &c.image);
    Ok(c)
}

/// How one kernel parameter is passed, as PTX declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// .u64 / .s64 / .b64: a device pointer or a 64-bit integer.
    B64,
    /// .u32 / .s32 / .b32: a 32-bit integer.
    B32,
    F32,
    F64,
    /// .b8 name[n]: a struct passed by value, n bytes.
    Bytes(usize),
}

/// Every `.entry` of a PTX module with its parameter list.
pub fn ptx_entries(ptx: &str) -> Vec<(String, Vec<ParamKind>)> {
    let mut out = Vec::new();
    let mut rest = ptx;
    while let Some(pos) = rest.find(".entry ") {
        rest = &rest[pos + ".entry ".len()..];
        let Some(open) = rest.find('(') else { break };
        let name = rest[..open].trim().to_string();
        let Some(close) = rest[open..].find(')') else { break };
        let params = &rest[open + 1..open + close];
        let kinds = params
            .split(',')
            .filter(|p| p.contains(".param"))
            .map(|p| {
                let toks: Vec<&str> = p.split_whitespace().collect();
                if toks.contains(&".b8") {
                    let n = p.rsplit('[').next().and_then(|s| s.trim().trim_end_matches(']').trim().parse().ok()).unwrap_or(0);
                    ParamKind::Bytes(n)
                } else if toks.iter().any(|t| matches!(*t, ".u64" | ".s64" | ".b64")) {
                    ParamKind::B64
                } else if toks.contains(&".f32") {
                    ParamKind::F32
                } else if toks.contains(&".f64") {
                    ParamKind::F64
                } else {
                    ParamKind::B32
                }
            })
            .collect();
        out.push((name, kinds));
        rest = &rest[open + close..];
    }
    out
}
