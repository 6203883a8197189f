//! Kernel arguments: what a launch passes (`Arg`, borrowed) and what a graph capture keeps to
//! replay it (`OwnedArg`), checked against the kernel's PTX parameter kinds.

use std::ffi::c_void;

use super::nvrtc::ParamKind;

/// One kernel argument. Pointers and `long long` are 64-bit, `int` 32-bit; structs passed by
/// value are `#[repr(C)]` Pod types given as bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    Ptr(u64),
    I64(i64),
    I32(i32),
    F32(f32),
    Bytes(&'a [u8]),
}

impl Arg<'_> {
    pub(super) fn kind(&self) -> ParamKind {
        match self {
            Arg::Ptr(_) | Arg::I64(_) => ParamKind::B64,
            Arg::I32(_) => ParamKind::B32,
            Arg::F32(_) => ParamKind::F32,
            Arg::Bytes(b) => ParamKind::Bytes(b.len()),
        }
    }
    pub(super) fn as_param(&self) -> *mut c_void {
        match self {
            Arg::Ptr(v) => v as *const u64 as *mut c_void,
            Arg::I64(v) => v as *const i64 as *mut c_void,
            Arg::I32(v) => v as *const i32 as *mut c_void,
            Arg::F32(v) => v as *const f32 as *mut c_void,
            Arg::Bytes(b) => b.as_ptr() as *mut c_void,
        }
    }
}

/// A kernel argument kept by a graph capture (the emulated and dry-run devices replay launches
/// from these).
#[derive(Clone, Debug)]
pub(super) enum OwnedArg {
    Ptr(u64),
    I64(i64),
    I32(i32),
    F32(f32),
    Bytes(Vec<u8>),
}

impl OwnedArg {
    pub(super) fn of(a: &Arg<'_>) -> Self {
        match *a {
            Arg::Ptr(v) => OwnedArg::Ptr(v),
            Arg::I64(v) => OwnedArg::I64(v),
            Arg::I32(v) => OwnedArg::I32(v),
            Arg::F32(v) => OwnedArg::F32(v),
            Arg::Bytes(b) => OwnedArg::Bytes(b.to_vec()),
        }
    }
    pub(super) fn arg(&self) -> Arg<'_> {
        match self {
            OwnedArg::Ptr(v) => Arg::Ptr(*v),
            OwnedArg::I64(v) => Arg::I64(*v),
            OwnedArg::I32(v) => Arg::I32(*v),
            OwnedArg::F32(v) => Arg::F32(*v),
            OwnedArg::Bytes(b) => Arg::Bytes(b),
        }
    }
}
