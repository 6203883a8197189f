//! Optimisers and schedules. SGD with momentum and weight decay runs as one fused backend call
//! per step; LARS (for the linear probe) scales each layer's step by its trust ratio.

pub mod schedule;
mod sgd;

pub use sgd::Sgd;
