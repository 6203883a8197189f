//! The Backend: the complete kernel set, and the only place that knows about hardware.
//!
//! Designed for an asynchronous GPU: every kernel call receives already-allocated device
//! buffers and returns as soon as the work is enqueued. Nothing waits for the device except
//! `download_*` and `synchronize`. Losses are written to one-element device buffers and their
//! upstream gradients are passed as one-element buffers too, so a training step never has to
//! read back. Shapes are validated once, in `crate::ops`; a kernel trusts the dims it is given.
//!
//! The kernels come in families (`ops/`): `CoreOps` (buffers, memory, graphs) and one trait per
//! op family. A backend implements each family in its own file of the same name, so an op's
//! signature is written in its trait and once per backend, nowhere else.

pub mod cpu;
pub mod cuda;
pub mod ops;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use crate::dtype::{DType, Precision};
pub use ops::*;

/// Every op family together: what models, the tape and the training loop ask of a device.
/// Implemented for any type that implements all the families.
pub trait Backend:
    CoreOps + MatmulOps + ConvOps + NormOps + AttentionOps + ElementwiseOps + PoolOps + LossOps + OptimOps + LayoutOps
{
}

impl<T> Backend for T where
    T: CoreOps + MatmulOps + ConvOps + NormOps + AttentionOps + ElementwiseOps + PoolOps + LossOps + OptimOps + LayoutOps
{
}

/// The traits to bring into scope to call backend methods on a concrete backend type
/// (`use ssl_engine::backend::prelude::*`); generic code bounded by `B: Backend` needs none.
pub mod prelude {
    pub use super::{AttentionOps, Backend, ConvOps, CoreOps, ElementwiseOps, LayoutOps, LossOps, MatmulOps, NormOps, OptimOps, PoolOps};
}
