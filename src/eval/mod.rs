//! Evaluation: the kNN monitor, the linear probe, fine-tuning, and the metrics they report.
//! `backbone` loads what is measured, `protocols` measures it, `embed` writes its features,
//! `summary` is the random-vs-pretrained table at the end of a run.

pub mod backbone;
pub mod embed;
pub mod features;
pub mod finetune;
pub mod knn;
pub mod linear;
pub mod metrics;
pub mod protocols;
pub mod summary;

pub use backbone::{LoadedBackbone, architecture, export, load, load_backbone, random_backbone, split_path};
pub use embed::{embed, write_npy_f32, write_npy_i64};
pub use protocols::{LinearReport, SetsReport, eval_finetune, eval_finetune_sets, eval_knn, eval_knn_sets, eval_linear, eval_linear_sets, labels_per_class};
