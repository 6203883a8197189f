//! `[study]`: the settings of `ssl-engine study`, apart from the study itself so that the
//! config can hold them without importing the study (which reads the config).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::eval::linear::LinearProbeConfig;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StudyConfig {
    /// The study folder: cells/, study.md, study.csv, study.json and the plots.
    pub out: PathBuf,
    /// Checkpoints or PyTorch-named backbone files, `random` (the recipe's initialisation) and
    /// `supervised` (trained from scratch on the training labels, `[study.supervised]`).
    pub starts: Vec<String>,
    /// Any of "knn", "linear", "finetune".
    pub protocols: Vec<String>,
    /// Few-label fine-tuning at each N labelled images per class (not for `supervised`, which
    /// has seen every label).
    pub labels_per_class: Vec<usize>,
    /// The share of each class held out of training as the validation split.
    pub val_fraction: f64,
    /// Fine-tuning (full and few-label): epochs, lr, weight decay, batch.
    pub finetune: LinearProbeConfig,
    /// Supervised training from random init.
    pub supervised: LinearProbeConfig,
}

impl Default for StudyConfig {
    fn default() -> Self {
        let finetune = LinearProbeConfig { epochs: 30, lr: 0.1, weight_decay: 5e-4, ..LinearProbeConfig::default() };
        StudyConfig {
            out: PathBuf::from("runs/study"),
            starts: vec!["random".into(), "supervised".into()],
            protocols: vec!["knn".into(), "linear".into(), "finetune".into()],
            labels_per_class: Vec::new(),
            val_fraction: 0.1,
            supervised: finetune.clone(),
            finetune,
        }
    }
}
