//! Loading NCCL. cudarc's `nccl` feature opens libnccl at run time (like the driver and NVRTC)
//! and panics when it cannot, so every entry point here first checks that it loads and otherwise
//! fails with one line saying how to install it.
//!
//! cudarc 0.19 looks for `libnccl.so` (and `libnccl.so.<1, 9-13>`) but not `libnccl.so.2`, the
//! only name the PyPI wheel (`nvidia-nccl-cu13`, in site-packages/nvidia/nccl/lib) and Debian's
//! libnccl2 ship; the development package adds `libnccl.so`. Where only `libnccl.so.2` is found,
//! the error says which link to add.

use std::path::{Path, PathBuf};

use super::UniqueId;
use crate::error::{Error, Result};

/// The one line for a machine without NCCL.
pub const NCCL_MISSING: &str = "NCCL not found: install it with `pip install nvidia-nccl-cu13` (and put its lib folder, \
     site-packages/nvidia/nccl/lib, on LD_LIBRARY_PATH) or the system's libnccl2";

/// The name NCCL's runtime packages ship.
pub const SONAME: &str = "libnccl.so.2";

/// The NCCL functions cudarc 0.19.10's `nccl::result` and `nccl::safe` call (its sys binding
/// declares more, for newer NCCLs), plus `ncclCommGetAsyncError`, which the fault handling polls.
pub const SYMBOLS: [&str; 24] = [
    "ncclGetVersion",
    "ncclGetUniqueId",
    "ncclCommInitRank",
    "ncclCommInitRankConfig",
    "ncclCommInitAll",
    "ncclCommSplit",
    "ncclCommFinalize",
    "ncclCommDestroy",
    "ncclCommAbort",
    "ncclCommGetAsyncError",
    "ncclCommCount",
    "ncclCommCuDevice",
    "ncclCommUserRank",
    "ncclRedOpCreatePreMulSum",
    "ncclRedOpDestroy",
    "ncclReduce",
    "ncclBroadcast",
    "ncclAllReduce",
    "ncclReduceScatter",
    "ncclAllGather",
    "ncclSend",
    "ncclRecv",
    "ncclGroupStart",
    "ncclGroupEnd",
];

/// Ok when cudarc can load libnccl; else the one line above, or, where only `libnccl.so.2` is
/// there, the link that makes it loadable.
pub fn nccl_available() -> Result<()> {
    // SAFETY: only tries to dlopen cudarc's candidate names.
    if unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Ok(());
    }
    Err(Error::Other(not_loadable_message()))
}

/// Why cudarc cannot load NCCL, with the fix.
fn not_loadable_message() -> String {
    // SAFETY: loading NCCL runs no code of ours; it is dropped again at once.
    let soname_loads = unsafe { libloading::Library::new(SONAME) }.is_ok();
    let folder = library_path_dirs().into_iter().find(|d| d.join(SONAME).is_file());
    match (soname_loads, folder) {
        (_, Some(dir)) => format!(
            "NCCL is in {} only as {SONAME}, a name cudarc does not load: add the link with `ln -s {SONAME} {}`",
            dir.display(),
            dir.join("libnccl.so").display()
        ),
        (true, None) => format!(
            "NCCL is installed only as {SONAME}, a name cudarc does not load: install the development package \
             (libnccl-dev, which adds libnccl.so) or link libnccl.so to it in a folder on LD_LIBRARY_PATH"
        ),
        (false, None) => NCCL_MISSING.into(),
    }
}

/// The folders of `LD_LIBRARY_PATH`, in order.
fn library_path_dirs() -> Vec<PathBuf> {
    std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
        .unwrap_or_default()
}

/// The PyPI wheel's library beside a CUDA wheel's folder on `LD_LIBRARY_PATH`
/// (site-packages/nvidia/cu13/lib -> site-packages/nvidia/nccl/lib/libnccl.so.2), or in one of
/// those folders itself: where `.ci/run` and the tests find it.
pub fn wheel_library() -> Option<PathBuf> {
    library_path_dirs().into_iter().find_map(|d| {
        let beside = d.parent().and_then(Path::parent).map(|nvidia| nvidia.join("nccl").join("lib").join(SONAME));
        [Some(d.join(SONAME)), beside].into_iter().flatten().find(|p| p.is_file())
    })
}

/// NCCL's version as (major, minor, patch).
pub fn nccl_version() -> Result<(i32, i32, i32)> {
    nccl_available()?;
    let v = cudarc::nccl::result::get_nccl_version().map_err(|e| nccl_err("ncclGetVersion", e))?;
    // 2.32.6 is 23206 (NCCL_VERSION_CODE since 2.9: major * 10000 + minor * 100 + patch).
    Ok((v / 10000, (v / 100) % 100, v % 100))
}

/// A fresh unique id from `ncclGetUniqueId` (rank 0 only: it also starts NCCL's bootstrap
/// listener in this process). Needs libnccl, not a GPU.
pub fn nccl_unique_id() -> Result<UniqueId> {
    nccl_available()?;
    let id = cudarc::nccl::Id::new().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
    Ok(id.internal().map(|c| c as u8))
}

/// The id the rendezvous delivered, as cudarc takes it for `Comm::from_rank`.
pub fn id_from_bytes(bytes: &UniqueId) -> cudarc::nccl::Id {
    cudarc::nccl::Id::uninit(bytes.map(|b| b as core::ffi::c_char))
}

fn nccl_err(what: &str, e: cudarc::nccl::result::NcclError) -> Error {
    Error::Device { backend: "nccl", msg: format!("{what} failed: {:?}", e.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_bytes_round_trip() {
        let mut bytes = [0u8; 128];
        bytes.iter_mut().enumerate().for_each(|(i, b)| *b = (i * 7) as u8);
        assert_eq!(id_from_bytes(&bytes).internal().map(|c| c as u8), bytes);
    }

    #[test]
    fn missing_nccl_is_one_line() {
        assert!(!NCCL_MISSING.contains('\n'));
        assert!(NCCL_MISSING.contains("pip install nvidia-nccl-cu13") && NCCL_MISSING.contains("libnccl2"));
        // Whatever this machine has, the check answers without panicking.
        if let Err(e) = nccl_available() {
            assert!(e.to_string().starts_with("NCCL "), "{e}");
        }
    }
}
