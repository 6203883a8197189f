//! Typed errors: every failure names the op, the shapes or the file involved.
//! The CLI prints one line from these and exits non-zero; the library never panics on bad input.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// An op was called with shapes it cannot accept.
    #[error("{op}: {msg} (shapes: {shapes})")]
    Shape { op: &'static str, msg: String, shapes: String },

    /// An op was called with a dtype the backend does not implement, or mixed dtypes.
    #[error("{op}: unsupported dtype {dtype} on backend {backend}")]
    DType { op: &'static str, dtype: String, backend: String },

    /// A tensor from one backend instance was mixed with another.
    #[error("{op}: {msg}")]
    Invalid { op: &'static str, msg: String },

    /// Autograd misuse (backward on a non-scalar, a missing gradient rule, ...).
    #[error("autograd: {0}")]
    Autograd(String),

    /// Reading or writing weights, fixtures or checkpoints.
    #[error("{path}: {msg}")]
    File { path: String, msg: String },

    /// A loss or tensor became NaN or infinite during training.
    #[error(
        "non-finite {what} at epoch {epoch}, step {step}; stopping without writing a checkpoint (the last good one is kept). Try a lower learning rate"
    )]
    NonFinite { what: String, epoch: usize, step: usize },

    /// A configuration key or value is wrong.
    #[error("config: {0}")]
    Config(String),

    /// Ctrl-C / SIGTERM: the command stopped at a safe point; the text says what it saved
    /// ("state saved to <path>") or what it was doing.
    #[error("interrupted; {0}")]
    Interrupted(String),

    /// A GPU backend failure: a missing driver, device or compiler library, a kernel that did
    /// not compile (with the compiler's log), a failed launch, copy or allocation.
    #[error("{backend}: {msg}")]
    Device { backend: &'static str, msg: String },

    /// A GPU allocation that did not fit: what was asked for and what was free, so the user
    /// can size the batch. `context` is filled in by the caller that knows it (" at batch_size 512").
    #[error(
        "{backend}: out of memory{context}: asked for {} MiB with {} MiB free of {} MiB; try a smaller batch_size (or image_size)",
        asked >> 20, free >> 20, total >> 20
    )]
    OutOfMemory { backend: String, asked: u64, free: u64, total: u64, context: String },

    /// Distributed training (src/dist): a rank that did not arrive at the rendezvous, a refused
    /// rank, a launcher that could not start its workers (exit code 5), or a worker that failed
    /// under `--nproc-per-node` (the launcher then exits with that worker's own code, `exit`).
    #[error("{msg}")]
    Distributed { msg: String, exit: i32 },

    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A distributed failure of this process (exit code 5): the rendezvous timed out or refused
    /// this rank, or the launcher could not run its workers.
    pub fn dist(msg: impl Into<String>) -> Error {
        Error::Distributed { msg: msg.into(), exit: 5 }
    }

    /// Adds what the caller knows (the batch size) to an out-of-memory error; others pass through.
    pub fn oom_context(self, ctx: impl FnOnce() -> String) -> Error {
        match self {
            Error::OutOfMemory { backend, asked, free, total, context } if context.is_empty() => {
                Error::OutOfMemory { backend, asked, free, total, context: ctx() }
            }
            e => e,
        }
    }
}

/// Formats a list of shapes for error messages: `[2, 3] x [4, 5]`.
pub fn fmt_shapes(shapes: &[&[usize]]) -> String {
    shapes.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" x ")
}

pub(crate) fn shape_err(op: &'static str, msg: impl Into<String>, shapes: &[&[usize]]) -> Error {
    Error::Shape { op, msg: msg.into(), shapes: fmt_shapes(shapes) }
}

impl Error {
    /// The process exit code the CLI uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::NonFinite { .. } => 3,
            Error::Interrupted(_) => 130,
            Error::OutOfMemory { .. } => 4,
            Error::Distributed { exit, .. } => *exit,
            _ => 1,
        }
    }
}

/// A setting's value from its name, through the same serde names the recipe takes ("fp32",
/// "lars", "cuda", ...), for command-line flags: an unknown value is an error naming `key` and
/// the values it takes.
pub fn parse_setting<T: serde::de::DeserializeOwned>(key: &str, value: &str) -> Result<T> {
    use serde::de::IntoDeserializer;
    T::deserialize(value.into_deserializer()).map_err(|e: serde::de::value::Error| Error::Config(format!("{key}: {e}")))
}
