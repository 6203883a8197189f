//! What a training run leaves in its folder besides the weights: `metrics.jsonl` (one JSON
//! object per line, appended and flushed as it happens, so a killed run keeps every line it
//! wrote) and the rolling set of epoch checkpoints.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Appends JSON lines to <out>/metrics.jsonl, flushing each one.
pub struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    /// Opens (or creates) `<out>/metrics.jsonl` for appending: a resumed run continues the file.
    pub fn open(out: &Path) -> Result<Self> {
        let path = out.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::File { path: path.display().to_string(), msg: format!("cannot open: {e}") })?;
        Ok(MetricsLog { file, path })
    }

    /// Writes one line and flushes it.
    pub fn write(&mut self, v: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}")
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::File { path: self.path.display().to_string(), msg: format!("cannot write: {e}") })
    }
}

/// Epoch checkpoints kept on disk: deletes the oldest beyond `keep`, after the new one is written.
/// The names carry the zero-padded epoch (`epoch-0004.safetensors`), so name order is age order.
pub fn prune_checkpoints(out: &Path, keep: usize) {
    let Ok(rd) = std::fs::read_dir(out) else { return };
    let mut eps: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("epoch-") && n.ends_with(".safetensors")))
        .collect();
    eps.sort();
    while eps.len() > keep {
        let _ = std::fs::remove_file(eps.remove(0));
    }
}
