//! TensorBoard event files for a run, written beside metrics.jsonl in `<out>/tb/`, so that
//! `tensorboard --logdir <out>/tb` (or `--logdir` over many run folders) shows the curves.
//! No TensorFlow or protobuf crate: the records and the few protobuf messages are encoded here.
//!
//! # metrics.jsonl -> TensorBoard
//!
//! `scalars_of_row` is the one place that decides which numbers of a metrics.jsonl row become
//! TensorBoard scalars, under which tag and at which step; `MetricsLog::write` feeds every row
//! through it. The step is always an integer field of the row itself:
//!
//! | row `type` | step (x axis) | tags |
//! |---|---|---|
//! | `step` | `global_step` (optimizer steps so far) | `train/loss`, `train/lr`, `train/img_per_s` |
//! | `epoch` | `epoch` (epochs done, 1-based) | `epoch/loss`, `epoch/z_std`, `epoch/knn_top1`, `epoch/lr` |
//! | `knn` (the random-init kNN, `epoch` 0) | `epoch` (0) | `knn/knn_top1` |
//! | `report` (the closing table, `RunReport::row`) | `epoch` (the run's epochs) | `report/random_knn_top1`, `report/random_linear_top1`, `report/pretrained_knn_top1`, `report/pretrained_linear_top1` |
//! | `resume`, `skipped`, `cuda_graph` | | none (events, not measurements) |
//!
//! A field that is null or absent (no kNN this epoch, no step logged yet) gives no scalar; the
//! epoch row's `elapsed_s` is left out, as TensorBoard keeps each point's wall time anyway.
//! Values are stored as f32 (`simple_value` is a protobuf float), so a reader sees the JSON
//! number rounded to f32. The accuracies stay fractions in [0, 1], as in metrics.jsonl.
//!
//! Besides the scalars, `MetricsLog::open` writes the run's resolved recipe (TOML) once per event
//! file as a text summary under the tag `recipe` at step 0, fenced as a Markdown code block since
//! TensorBoard's text plugin renders Markdown. A resumed run opens a new event file in the same
//! folder (TensorBoard reads every `*tfevents*` file of a folder as one run, in name order).
//!
//! # The file format
//!
//! An event file is a TFRecord file: a sequence of records, each
//!
//! ```text
//! u64 LE  length of data
//! u32 LE  masked CRC-32C of those 8 length bytes
//! [u8]    data: one serialized `Event` protobuf
//! u32 LE  masked CRC-32C of data
//! ```
//!
//! where masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (wrapping, u32). The first
//! record's Event carries `file_version = "brain.Event:2"`; each later one a `Summary`. The
//! messages (tensorflow/core/util/event.proto, summary.proto, tensor.proto), fields used only:
//!
//! ```text
//! Event           { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//! Summary         { repeated Value value = 1; }
//! Summary.Value   { string tag = 1; float simple_value = 2; TensorProto tensor = 8; SummaryMetadata metadata = 9; }
//! SummaryMetadata { PluginData plugin_data = 1; }    PluginData { string plugin_name = 1; }
//! TensorProto     { DataType dtype = 1; TensorShapeProto tensor_shape = 2; repeated bytes string_val = 8; }
//! ```
//!
//! A text summary is a scalar (empty shape) DT_STRING (7) tensor with plugin name "text".

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The `file_version` TensorBoard expects in the first record of an event file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// One TensorBoard scalar: its tag, its step (x axis) and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    pub tag: String,
    pub step: i64,
    pub value: f64,
}

/// The scalars TensorBoard gets for one metrics.jsonl row (the table in the module header).
/// A row of another type, or one without its step field, gives none.
pub fn scalars_of_row(row: &serde_json::Value) -> Vec<Scalar> {
    let (step_field, prefix, fields): (&str, &str, &[&str]) = match row.get("type").and_then(|t| t.as_str()) {
        Some("step") => ("global_step", "train", &["loss", "lr", "img_per_s"]),
        Some("epoch") => ("epoch", "epoch", &["loss", "z_std", "knn_top1", "lr"]),
        Some("knn") => ("epoch", "knn", &["knn_top1"]),
        Some("report") => ("epoch", "report", &["random_knn_top1", "random_linear_top1", "pretrained_knn_top1", "pretrained_linear_top1"]),
        _ => return Vec::new(),
    };
    let Some(step) = row.get(step_field).and_then(|s| s.as_i64()) else { return Vec::new() };
    fields
        .iter()
        // as_f64 is None for null, a string (the `skipped` row's "NaN") or an absent field.
        .filter_map(|f| row.get(*f).and_then(|v| v.as_f64()).map(|value| Scalar { tag: format!("{prefix}/{f}"), step, value }))
        .collect()
}

// ---- CRC -------------------------------------------------------------------------------------

/// TFRecord's masked CRC-32C: the CRC rotated right by 15 bits plus a constant, so that a CRC
/// stored inside CRC'd data does not checksum to a fixed pattern (tensorflow/core/lib/hash/crc32c.h).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    // rotate_right(15) is the reference's (crc >> 15) | (crc << 17) on a u32.
    crc32c::crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the data, the data's masked CRC (all little-endian).
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

// ---- protobuf encoding -----------------------------------------------------------------------

/// Protobuf wire types: how the bytes after a field's key are to be read.
const VARINT: u8 = 0; // int64, enum: base-128 varint
const FIXED64: u8 = 1; // double: 8 bytes little-endian
const LEN: u8 = 2; // string, bytes, embedded message: varint length, then the bytes
const FIXED32: u8 = 5; // float: 4 bytes little-endian

/// A protobuf message being written: fields are appended in order (any order is valid protobuf;
/// we follow field numbers so dumps read naturally).
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    /// Base-128 varint: 7 bits at a time, least significant group first, the high bit set on
    /// every byte but the last. A negative int64 is its two's-complement u64 (10 bytes).
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// A field's key: (field number << 3) | wire type, itself a varint.
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }

    fn int64(&mut self, field: u32, v: i64) -> &mut Self {
        self.key(field, VARINT);
        self.varint(v as u64);
        self
    }

    fn double(&mut self, field: u32, v: f64) -> &mut Self {
        self.key(field, FIXED64);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.key(field, FIXED32);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A string, bytes or an embedded message (its serialized bytes): key, length, bytes.
    fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    fn msg(&mut self, field: u32, m: &Msg) -> &mut Self {
        self.bytes(field, &m.0)
    }
}

/// An Event with its wall time and step, and `what` (the oneof: file_version or summary) added
/// by the caller.
fn event(step: i64, what: impl FnOnce(&mut Msg)) -> Vec<u8> {
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let mut e = Msg::default();
    e.double(1, wall).int64(2, step);
    what(&mut e);
    e.0
}

/// Event { summary { value { tag, simple_value } } }.
fn scalar_event(tag: &str, step: i64, value: f32) -> Vec<u8> {
    let mut v = Msg::default();
    v.bytes(1, tag.as_bytes()).float(2, value);
    let mut s = Msg::default();
    s.msg(1, &v);
    event(step, |e| {
        e.msg(5, &s);
    })
}

/// Event { summary { value { tag, tensor { dtype: DT_STRING, tensor_shape {}, string_val },
/// metadata { plugin_data { plugin_name: "text" } } } } }: what `tf.summary.text` writes.
fn text_event(tag: &str, step: i64, text: &str) -> Vec<u8> {
    const DT_STRING: i64 = 7; // tensorflow/core/framework/types.proto
    let mut tensor = Msg::default();
    // The empty shape message is a scalar tensor: one string.
    tensor.int64(1, DT_STRING).msg(2, &Msg::default()).bytes(8, text.as_bytes());
    let mut plugin = Msg::default();
    plugin.bytes(1, b"text");
    let mut meta = Msg::default();
    meta.msg(1, &plugin);
    let mut v = Msg::default();
    v.bytes(1, tag.as_bytes()).msg(8, &tensor).msg(9, &meta);
    let mut s = Msg::default();
    s.msg(1, &v);
    event(step, |e| {
        e.msg(5, &s);
    })
}

// ---- the writer ------------------------------------------------------------------------------

/// Writes one event file; every event is written whole and flushed, so a killed run keeps
/// every event it wrote.
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir` if needed and a new file `events.out.tfevents.<unix secs>.<host>.<pid>` in
    /// it (with `.1`, `.2`, ... appended if that name is taken, as when one process opens the
    /// folder twice in a second), and writes the file-version record.
    pub fn create(dir: &Path) -> Result<Self> {
        let err = |p: &Path, what: &str, e: std::io::Error| Error::File { path: p.display().to_string(), msg: format!("{what}: {e}") };
        std::fs::create_dir_all(dir).map_err(|e| err(dir, "cannot create the TensorBoard folder", e))?;
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let base = format!("events.out.tfevents.{secs}.{}.{}", hostname(), std::process::id());
        let mut n = 0;
        let (file, path) = loop {
            let path = if n == 0 { dir.join(&base) } else { dir.join(format!("{base}.{n}")) };
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(err(&path, "cannot create", e)),
            }
        };
        let mut w = EventWriter { file, path };
        w.write_event(&event(0, |e| {
            e.bytes(3, FILE_VERSION.as_bytes());
        }))?;
        Ok(w)
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One scalar (stored as f32, TensorBoard's `simple_value`).
    pub fn scalar(&mut self, tag: &str, step: i64, value: f64) -> Result<()> {
        self.write_event(&scalar_event(tag, step, value as f32))
    }

    /// One text summary (rendered as Markdown by TensorBoard's text plugin).
    pub fn text(&mut self, tag: &str, step: i64, text: &str) -> Result<()> {
        self.write_event(&text_event(tag, step, text))
    }

    fn write_event(&mut self, data: &[u8]) -> Result<()> {
        // One write of the whole record: a reader never sees half a record from us unless the
        // disk fills, and TensorBoard treats a truncated tail as not yet written.
        self.file
            .write_all(&record(data))
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::File { path: self.path.display().to_string(), msg: format!("cannot write: {e}") })
    }
}

/// This machine's name for the file name (TensorBoard's convention), "localhost" when unknown;
/// only `[A-Za-z0-9._-]` are kept so the name stays one path component.
fn hostname() -> String {
    let mut name = String::new();
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is writable for its whole length, which is what we pass.
        if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            name = String::from_utf8_lossy(&buf[..end]).into_owned();
        }
    }
    if name.is_empty() {
        name = std::env::var("HOSTNAME").or_else(|_| std::env::var("COMPUTERNAME")).unwrap_or_default();
    }
    let name: String = name.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')).collect();
    if name.is_empty() { "localhost".into() } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_the_known_check_value() {
        // CRC-32C's standard check value (RFC 3720's polynomial, "123456789").
        let crc = crc32c::crc32c(b"123456789");
        assert_eq!(crc, 0xE306_9283);
        // The masked value as TensorBoard's own Python reader computes it
        // (tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c(b"123456789")).
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn varints_and_keys_follow_the_protobuf_encoding() {
        let enc = |v: u64| {
            let mut m = Msg::default();
            m.varint(v);
            m.0
        };
        // The protobuf documentation's examples: 1 is one byte, 150 is 96 01, 300 is ac 02.
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(150), [0x96, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(-1i64 as u64).len(), 10);
        // Field 1, string "testing": 0a 07 74 65 73 74 69 6e 67.
        let mut m = Msg::default();
        m.bytes(1, b"testing");
        assert_eq!(m.0, [0x0a, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']);
        // float field 2 (key 0x15) and double field 1 (key 0x09).
        let mut m = Msg::default();
        m.float(2, 1.0).double(1, 0.0);
        assert_eq!(m.0[0], 0x15);
        assert_eq!(m.0[5], 0x09);
    }

    #[test]
    fn rows_map_to_the_documented_tags_and_steps() {
        let row = serde_json::json!({"type": "step", "epoch": 0, "step": 3, "global_step": 7, "loss": 0.5, "lr": 0.1, "img_per_s": 100.0});
        let got: Vec<_> = scalars_of_row(&row).into_iter().map(|s| (s.tag, s.step, s.value)).collect();
        assert_eq!(got, [("train/loss".into(), 7, 0.5), ("train/lr".into(), 7, 0.1), ("train/img_per_s".into(), 7, 100.0)]);
        let row =
            serde_json::json!({"type": "epoch", "epoch": 2, "loss": 0.5, "z_std": 0.1, "knn_top1": null, "lr": 0.2, "elapsed_s": 3.0});
        let tags: Vec<_> = scalars_of_row(&row).into_iter().map(|s| (s.tag, s.step)).collect();
        assert_eq!(tags, [("epoch/loss".into(), 2), ("epoch/z_std".into(), 2), ("epoch/lr".into(), 2)]);
        let row = serde_json::json!({"type": "skipped", "epoch": 0, "step": 1, "global_step": 1, "loss": "NaN"});
        assert!(scalars_of_row(&row).is_empty());
    }

    #[test]
    fn records_carry_valid_masked_crcs() {
        let r = record(b"abc");
        assert_eq!(u64::from_le_bytes(r[..8].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(r[8..12].try_into().unwrap()), masked_crc32c(&r[..8]));
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(u32::from_le_bytes(r[15..19].try_into().unwrap()), masked_crc32c(b"abc"));
    }
}
