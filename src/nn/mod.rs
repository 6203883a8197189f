//! Layers built only from tape ops, and the parameter store they register into.
//! Parameter names follow torchvision / timm so weights move to and from PyTorch.

mod init;
mod layers;
mod params;

pub use init::Init;
pub use layers::{Attention, BatchNorm, Conv2d, LayerNorm, Linear, Mlp};
pub use params::{Ctx, Entry, Kind, Layout, ParamId, ParamStore};
