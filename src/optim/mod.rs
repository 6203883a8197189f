//! Optimisers. SGD with momentum and weight decay runs as one fused backend call per step.

mod sgd;

pub use sgd::Sgd;
