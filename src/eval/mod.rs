//! Evaluation: the kNN monitor, the linear probe, and the metrics they report.

pub mod features;
pub mod finetune;
pub mod knn;
pub mod linear;
pub mod metrics;
pub mod summary;
