//! The backend's op families, as burn splits its backend: one trait per family, each
//! implemented by every backend in its family file (`cpu/conv.rs`, `cuda/conv.rs`,
//! `wgpu/conv.rs` implement `ConvOps`), beside the kernels of `kernels/conv.cu` and
//! `shaders/conv.wgsl`. Each file here holds the family's trait and the plain structs its calls
//! take. `Backend` (in `backend/mod.rs`) is all of them together.

pub mod attention;
pub mod conv;
pub mod core;
pub mod elementwise;
pub mod layout;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod pool;

pub use self::core::{CoreOps, GraphId};
pub use attention::{AttentionOps, AttnDims};
pub use conv::{Conv2dDims, ConvOps};
pub use elementwise::{AddPair, AxisDims, Binary, ElementwiseOps, Unary};
pub use layout::{GatherDims, LayoutOps, SliceDims};
pub use loss::LossOps;
pub use matmul::{MatmulDims, MatmulOps};
pub use norm::{BnTail, BnTrain, NormDims, NormOps, RunningStats};
pub use optim::{AdamWHyper, AdamWTensor, EmaTensor, OptimOps, SgdOnDevice, SgdTensor, adamw_factors, sgd_on_host};
pub use pool::{PoolDims, PoolOps};
