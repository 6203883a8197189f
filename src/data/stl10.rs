//! STL-10's binary release (`stl10_binary`): `train_X.bin` / `test_X.bin` / `unlabeled_X.bin`
//! hold 96x96 RGB images with no header, each stored channel after channel (red, green, blue),
//! every channel column-major (pixel (row r, column c) at byte c * 96 + r, as the dataset's
//! README says); `train_y.bin` / `test_y.bin` one label byte per image, 1..=10. Class names come
//! from `class_names.txt`. `unlabeled_X.bin` (100,000 images) loads as one class, "unlabeled":
//! pretraining data, for which the training loop's kNN monitor is off.

use std::path::Path;

use rayon::prelude::*;

use super::{Dataset, LoadOptions, Split, file_err, fit_to_size, keep_first_per_class};
use crate::error::Result;

const SIDE: usize = 96;
const IMAGE: usize = SIDE * SIDE * 3;
const CLASSES: usize = 10;

/// The class every image of `unlabeled_X.bin` (and of a folder without class folders) gets.
pub const UNLABELED: &str = "unlabeled";

pub fn is_stl10_dir(dir: &Path) -> bool {
    ["train_X.bin", "test_X.bin", "unlabeled_X.bin"].iter().any(|f| dir.join(f).is_file())
}

/// Whether a file is one of STL-10's image files (`*_X.bin`).
pub fn is_stl10_file(path: &Path) -> bool {
    super::file_name(path).ends_with("_X.bin")
}

/// `train_X.bin` + `train_y.bin` or `test_X.bin` + `test_y.bin` of the release folder.
pub fn load_dir(dir: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let name = match opts.split {
        Split::Train => "train_X.bin",
        Split::Test => "test_X.bin",
    };
    let path = dir.join(name);
    if !path.is_file() {
        return Err(file_err(&path, "missing STL-10 file (the labelled splits need train_X.bin / test_X.bin with their _y.bin)"));
    }
    load_file(&path, opts)
}

/// One `*_X.bin` file with its `*_y.bin` labels beside it; `unlabeled_X.bin` has none.
pub fn load_file(path: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let len = std::fs::metadata(path).map_err(|e| file_err(path, e.to_string()))?.len();
    if len == 0 || len % IMAGE as u64 != 0 {
        return Err(file_err(path, format!("file length {len} is not a positive multiple of an STL-10 image ({IMAGE} bytes)")));
    }
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e.to_string()))?;
    let n = bytes.len() / IMAGE;
    let name = super::file_name(path);
    let (labels, classes) = if name == "unlabeled_X.bin" {
        (vec![0u32; n], vec![UNLABELED.to_string()])
    } else {
        let y_path = path.with_file_name(name.replace("_X.bin", "_y.bin"));
        let y = std::fs::read(&y_path).map_err(|e| file_err(&y_path, format!("the labels of {name}: {e}")))?;
        if y.len() != n {
            return Err(file_err(&y_path, format!("{} labels for {n} images", y.len())));
        }
        let labels = y
            .iter()
            .enumerate()
            .map(|(i, &l)| match l {
                1..=10 => Ok(l as u32 - 1),
                _ => Err(file_err(&y_path, format!("label {l} of image {i} is not in 1..=10"))),
            })
            .collect::<Result<Vec<_>>>()?;
        (labels, class_names(&path.with_file_name("class_names.txt")))
    };
    let records = keep_first_per_class(labels.into_iter().zip(0..n).collect(), opts.limit_per_class);
    let images: Vec<Vec<u8>> =
        records.par_iter().map(|&(_, i)| fit_to_size(&to_hwc(&bytes[i * IMAGE..(i + 1) * IMAGE]), SIDE, SIDE, opts.size)).collect();
    Ok(Dataset {
        images: images.concat(),
        labels: records.iter().map(|(l, _)| *l).collect(),
        files: records.iter().map(|&(_, i)| super::row_source(path, i)).collect(),
        classes,
        size: opts.size,
        ..Default::default()
    })
}

/// Channel planes, each column-major -> row-major HWC.
fn to_hwc(planes: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; IMAGE];
    for c in 0..3 {
        let plane = &planes[c * SIDE * SIDE..(c + 1) * SIDE * SIDE];
        for col in 0..SIDE {
            for row in 0..SIDE {
                out[(row * SIDE + col) * 3 + c] = plane[col * SIDE + row];
            }
        }
    }
    out
}

fn class_names(path: &Path) -> Vec<String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        if names.len() == CLASSES {
            return names;
        }
    }
    (0..CLASSES).map(|i| i.to_string()).collect()
}
