//! What a training run leaves in its folder besides the weights: `metrics.jsonl` (one JSON
//! object per line, appended and flushed as it happens, so a killed run keeps every line it
//! wrote), the same numbers as TensorBoard event files in `tb/` (src/tensorboard.rs says which
//! row becomes which scalar) and the rolling set of epoch checkpoints.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::tensorboard::{EventWriter, scalars_of_row};

/// Appends JSON lines to <out>/metrics.jsonl, flushing each one, and mirrors their numbers as
/// TensorBoard scalars into a new event file in <out>/tb/. Ranks other than 0 of a data-parallel
/// run hold a log that writes nothing (`MetricsLog::rank0_writes`).
pub struct MetricsLog {
    sink: Option<Sink>,
}

struct Sink {
    file: std::fs::File,
    path: PathBuf,
    tb: EventWriter,
}

impl MetricsLog {
    /// Opens (or creates) `<out>/metrics.jsonl` for appending (a resumed run continues the
    /// file) and a new event file in `<out>/tb/`, into which it writes `recipe_toml` (the
    /// resolved recipe) as the text summary `recipe`.
    pub fn open(out: &Path, recipe_toml: &str) -> Result<Self> {
        let mut log = Self::open_files(out)?;
        if let Some(s) = &mut log.sink {
            s.tb.text("recipe", 0, &format!("```toml\n{}\n```", recipe_toml.trim_end()))?;
        }
        Ok(log)
    }

    /// `open` on rank 0 (`writes`), a log that drops every line on the other ranks: one rank
    /// writes the run's files.
    pub fn rank0_writes(writes: bool, out: &Path, recipe_toml: &str) -> Result<Self> {
        if writes { Self::open(out, recipe_toml) } else { Ok(MetricsLog { sink: None }) }
    }

    fn open_files(out: &Path) -> Result<Self> {
        let path = out.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::File { path: path.display().to_string(), msg: format!("cannot open: {e}") })?;
        let tb = EventWriter::create(&out.join("tb"))?;
        Ok(MetricsLog { sink: Some(Sink { file, path, tb }) })
    }

    /// Writes one line and flushes it, then its scalars (`tensorboard::scalars_of_row`).
    pub fn write(&mut self, v: serde_json::Value) -> Result<()> {
        let Some(s) = &mut self.sink else { return Ok(()) };
        writeln!(s.file, "{v}")
            .and_then(|_| s.file.flush())
            .map_err(|e| Error::File { path: s.path.display().to_string(), msg: format!("cannot write: {e}") })?;
        for sc in scalars_of_row(&v) {
            s.tb.scalar(&sc.tag, sc.step, sc.value)?;
        }
        Ok(())
    }
}

/// Appends one row to `<out>/metrics.jsonl` after a run has closed its log (the closing table's
/// `"report"` row), with its scalars in a new event file of `<out>/tb/`.
pub fn append_row(out: &Path, row: serde_json::Value) -> Result<()> {
    MetricsLog::open_files(out)?.write(row)
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
