//! `embed`: backbone features of every image as NumPy .npy files, with the labels and the file of
//! every row beside them.

use std::path::{Path, PathBuf};

use super::backbone::LoadedBackbone;
use super::protocols::feats;
use crate::backend::Backend;
use crate::config::Config;
use crate::data::Dataset;
use crate::error::Result;

/// Writes a float32 [rows, cols] array as NumPy .npy (version 1.0).
pub fn write_npy_f32(path: &Path, data: &[f32], rows: usize, cols: usize) -> Result<()> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(path, "<f4", &format!("({rows}, {cols})"), &bytes)
}

/// Writes an int64 [n] array as .npy.
pub fn write_npy_i64(path: &Path, data: &[i64]) -> Result<()> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(path, "<i8", &format!("({},)", data.len()), &bytes)
}

fn write_npy(path: &Path, descr: &str, shape: &str, body: &[u8]) -> Result<()> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    let pad = 64 - (10 + header.len() + 1) % 64;
    header.push_str(&" ".repeat(pad % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    crate::checkpoint::write_atomic(path, &out)
}

/// What `embed` wrote: the features, the labels and the source of every row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbedFiles {
    /// `<out>`: float32 [rows, feature_dim].
    pub features: PathBuf,
    /// `<out stem>_labels.npy`: int64 [rows].
    pub labels: PathBuf,
    /// `<out stem>_files.txt`: the file of every row (`Dataset::row_names`), one per line.
    pub files: PathBuf,
}

/// Backbone features of every image (sorted walk: class folders by name, files by name) with
/// labels, as `<out>` (features), `<out stem>_labels.npy` and `<out stem>_files.txt` (the file of
/// every row, in row order). Files the dataset skipped are named on stderr first
/// (`data::print_skipped`).
pub fn embed<B: Backend>(m: &LoadedBackbone<B>, data: &Dataset, cfg: &Config, out: &Path) -> Result<EmbedFiles> {
    crate::data::print_skipped(data);
    let dim = m.backbone.feature_dim();
    let f = feats(m, data, cfg, "embed")?;
    write_npy_f32(out, &f, data.len(), dim)?;
    let stem = out.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "features".into());
    let labels_path = out.with_file_name(format!("{stem}_labels.npy"));
    write_npy_i64(&labels_path, &data.labels.iter().map(|&l| l as i64).collect::<Vec<_>>())?;
    let files_path = out.with_file_name(format!("{stem}_files.txt"));
    let text: String = data.row_names().into_iter().map(|n| n + "\n").collect();
    crate::checkpoint::write_atomic(&files_path, text.as_bytes())?;
    Ok(EmbedFiles { features: out.to_path_buf(), labels: labels_path, files: files_path })
}
