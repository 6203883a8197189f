//! Layers built only from tape ops, and the parameter store they register into.
//! Parameter names follow torchvision / timm so weights move to and from PyTorch.

mod init;
mod layers;
mod params;
/// Layout conversion between PyTorch and internal tensors (checkpoint boundary).
pub mod params_layout {
    pub use super::params::{from_internal, to_internal};
}

pub use init::Init;
pub use layers::{Attention, BatchNorm, Conv2d, LayerNorm, Linear, Mlp};
pub use params::{Ctx, Entry, Kind, Layout, ParamId, ParamStore, Replicas};
