//! CIFAR-10 / CIFAR-100 binary release (`cifar-10-batches-bin`, `cifar-100-binary`).
//!
//! A file is a sequence of records with no header: CIFAR-10 `<label u8><3072 pixels>`, CIFAR-100
//! `<coarse u8><fine u8><3072 pixels>` (fine labels are used); the pixels are the 1024 red, then
//! green, then blue bytes of a 32x32 image, row-major. The file length must be a positive multiple
//! of the record size, checked before reading. Class names come from `batches.meta.txt` /
//! `fine_label_names.txt` when present, else "0", "1", ...

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{Dataset, LoadOptions, Split, file_err, fit_to_size, keep_first_per_class};
use crate::error::Result;

const PIXELS: usize = 32 * 32 * 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Cifar10,
    Cifar100,
}

impl Kind {
    fn label_bytes(self) -> usize {
        match self {
            Kind::Cifar10 => 1,
            Kind::Cifar100 => 2,
        }
    }
    fn classes(self) -> usize {
        match self {
            Kind::Cifar10 => 10,
            Kind::Cifar100 => 100,
        }
    }
    fn record(self) -> usize {
        self.label_bytes() + PIXELS
    }
    fn meta_file(self) -> &'static str {
        match self {
            Kind::Cifar10 => "batches.meta.txt",
            Kind::Cifar100 => "fine_label_names.txt",
        }
    }
}

const CIFAR10_TRAIN: [&str; 5] = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];

pub fn is_cifar_dir(dir: &Path) -> bool {
    ["data_batch_1.bin", "test_batch.bin", "train.bin", "test.bin"].iter().any(|f| dir.join(f).is_file())
}

pub fn load_dir(dir: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let cifar10 = dir.join("data_batch_1.bin").is_file() || dir.join("test_batch.bin").is_file();
    let (kind, files): (Kind, Vec<PathBuf>) = if cifar10 {
        let names: Vec<&str> = match opts.split {
            Split::Train => CIFAR10_TRAIN.to_vec(),
            Split::Test => vec!["test_batch.bin"],
        };
        (Kind::Cifar10, names.iter().map(|n| dir.join(n)).collect())
    } else {
        let name = match opts.split {
            Split::Train => "train.bin",
            Split::Test => "test.bin",
        };
        (Kind::Cifar100, vec![dir.join(name)])
    };
    for f in &files {
        if !f.is_file() {
            return Err(file_err(f, "missing CIFAR batch file"));
        }
    }
    load_files(&files, kind, dir, opts)
}

/// One `.bin` file; CIFAR-10 or -100 from its name (data_batch_*/test_batch vs train/test) or,
/// failing that, from which record size divides its length.
pub fn load_file(path: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let name = super::file_name(path);
    let kind = if name.starts_with("data_batch") || name == "test_batch.bin" {
        Kind::Cifar10
    } else if name == "train.bin" || name == "test.bin" {
        Kind::Cifar100
    } else {
        let len = std::fs::metadata(path).map_err(|e| file_err(path, e.to_string()))?.len();
        let (a, b) = (Kind::Cifar10.record() as u64, Kind::Cifar100.record() as u64);
        match (len > 0 && len % a == 0, len > 0 && len % b == 0) {
            (true, false) => Kind::Cifar10,
            (false, true) => Kind::Cifar100,
            (true, true) => {
                return Err(file_err(
                    path,
                    "ambiguous CIFAR file: its length fits both CIFAR-10 and CIFAR-100 records; rename it as in the release",
                ));
            }
            (false, false) => {
                return Err(file_err(path, format!("file length {len} is not a multiple of a CIFAR-10 ({a}) or CIFAR-100 ({b}) record")));
            }
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    load_files(&[path.to_path_buf()], kind, dir, opts)
}

fn load_files(files: &[PathBuf], kind: Kind, dir: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let rec = kind.record();
    // (label, (source `<file>#<record>`, planar pixels))
    let mut records: Vec<(u32, (PathBuf, Vec<u8>))> = Vec::new();
    for f in files {
        let len = std::fs::metadata(f).map_err(|e| file_err(f, e.to_string()))?.len();
        if len == 0 || len % rec as u64 != 0 {
            return Err(file_err(f, format!("file length {len} is not a positive multiple of the {kind:?} record size {rec}")));
        }
        let bytes = std::fs::read(f).map_err(|e| file_err(f, e.to_string()))?;
        if bytes.len() as u64 != len {
            return Err(file_err(f, "file changed size while being read"));
        }
        for (r, chunk) in bytes.chunks_exact(rec).enumerate() {
            let label = chunk[kind.label_bytes() - 1] as usize;
            if label >= kind.classes() || (kind == Kind::Cifar100 && chunk[0] >= 20) {
                return Err(file_err(f, format!("record {r}: label {label} out of range for {kind:?}")));
            }
            records.push((label as u32, (super::row_source(f, r), chunk[kind.label_bytes()..].to_vec())));
        }
    }
    let records = keep_first_per_class(records, opts.limit_per_class);
    let size = opts.size;
    let images: Vec<Vec<u8>> = records.par_iter().map(|(_, (_, planar))| fit_to_size(&planar_to_hwc(planar), 32, 32, size)).collect();
    Ok(Dataset {
        images: images.concat(),
        labels: records.iter().map(|(l, _)| *l).collect(),
        files: records.into_iter().map(|(_, (source, _))| source).collect(),
        classes: class_names(&dir.join(kind.meta_file()), kind.classes()),
        size,
        ..Default::default()
    })
}

/// 32x32 CHW planes -> HWC.
fn planar_to_hwc(planar: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; PIXELS];
    for i in 0..1024 {
        for c in 0..3 {
            out[i * 3 + c] = planar[c * 1024 + i];
        }
    }
    out
}

/// The names in a meta file (one per line) when it lists exactly `n`, else "0".."n-1".
fn class_names(meta: &Path, n: usize) -> Vec<String> {
    if let Ok(text) = std::fs::read_to_string(meta) {
        let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        if names.len() == n {
            return names;
        }
    }
    (0..n).map(|i| i.to_string()).collect()
}
