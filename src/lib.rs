//! ssl-engine: self-supervised pretraining of vision backbones, from scratch in Rust.
//!
//! Layers, top to bottom: `models` and `nn` build networks from `autograd` ops; the tape calls
//! validated `ops`, which call a `backend::Backend` (the only code that knows the hardware).

pub mod autograd;
pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
pub mod dtype;
pub mod error;
pub mod eval;
pub mod interrupt;
pub mod models;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod rng;
pub mod run_log;
pub mod setup;
pub mod ssl;
pub mod study;
pub mod tensor;
pub mod tensorboard;
pub mod train;

pub use error::{Error, Result};
pub use tensor::{DType, Tensor};
