//! Optimisers and schedules. SGD with momentum and weight decay runs as one fused backend call
//! per step; LARS (for the linear probe) scales each layer's step by its trust ratio.

mod sgd;
pub mod schedule;

pub use sgd::Sgd;
