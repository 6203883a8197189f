//! TensorBoard event files beside metrics.jsonl (src/tensorboard.rs): a tiny CPU run, stopped
//! and resumed so that `<out>/tb` holds two event files, plus the closing report's row; then
//! TensorBoard's own reader (Python's `tensorboard` package, `EventAccumulator`) must find every
//! metrics.jsonl number under its documented tag and step, and the recipe as a text summary.
//! The TFRecord framing and its masked CRC-32C are checked here too, by a reader written apart
//! from the writer.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::skip::{Need, skip};
use common::tiny_run::{run, tiny};
use common::tmp_dir;

use ssl_engine::eval::summary::{Row, RunReport};

/// TensorBoard's reader, run on `tb`: every scalar (tag -> [[step, value], ...] in file order),
/// every text summary's strings and plugin name, the file version it saw, and its own check of
/// every record's CRCs.
const READER: &str = r#"
import json, os, struct, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

tb = sys.argv[1]
acc = EventAccumulator(tb, size_guidance={"scalars": 0, "tensors": 0})
acc.Reload()
tags = acc.Tags()
scalars = {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]}
texts = {}
for t in tags["tensors"]:
    texts[t] = {
        "plugin": acc.SummaryMetadata(t).plugin_data.plugin_name,
        "dtype": [e.tensor_proto.dtype for e in acc.Tensors(t)],
        "steps": [e.step for e in acc.Tensors(t)],
        "strings": [[s.decode() for s in e.tensor_proto.string_val] for e in acc.Tensors(t)],
    }
records = 0
bad = []
for name in sorted(os.listdir(tb)):
    data = open(os.path.join(tb, name), "rb").read()
    i = 0
    while i < len(data):
        (n,) = struct.unpack_from("<Q", data, i)
        (lc,) = struct.unpack_from("<I", data, i + 8)
        body = data[i + 12 : i + 12 + n]
        (dc,) = struct.unpack_from("<I", data, i + 12 + n)
        if lc != masked_crc32c(data[i : i + 8]) or dc != masked_crc32c(body):
            bad.append("%s@%d" % (name, i))
        i += 16 + n
        records += 1
print(json.dumps({"scalars": scalars, "texts": texts, "file_version": acc.file_version, "records": records, "bad_crc": bad}))
"#;

fn tensorboard_or_skip() -> bool {
    match Command::new("python3").args(["-c", "import tensorboard"]).output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            skip(Need::Tensorboard, format!("python3 cannot import tensorboard: {}", String::from_utf8_lossy(&o.stderr).trim()));
            false
        }
        Err(e) => {
            skip(Need::Tensorboard, format!("no python3: {e}"));
            false
        }
    }
}

/// What metrics.jsonl says TensorBoard should hold, by the table in src/tensorboard.rs (spelt out
/// again here, so the test checks the documented scheme rather than the code against itself).
fn expected_scalars(metrics: &str) -> BTreeMap<String, Vec<(i64, f32)>> {
    let mut want: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    for line in metrics.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let (step_key, prefix, fields): (&str, &str, &[&str]) = match row["type"].as_str().unwrap() {
            "step" => ("global_step", "train", &["loss", "lr", "img_per_s"]),
            "epoch" => ("epoch", "epoch", &["loss", "z_std", "knn_top1", "lr"]),
            "knn" => ("epoch", "knn", &["knn_top1"]),
            "report" => ("epoch", "report", &["random_knn_top1", "random_linear_top1", "pretrained_knn_top1", "pretrained_linear_top1"]),
            _ => continue,
        };
        let step = row[step_key].as_i64().unwrap();
        for f in fields {
            if let Some(v) = row[*f].as_f64() {
                want.entry(format!("{prefix}/{f}")).or_default().push((step, v as f32));
            }
        }
    }
    want
}

/// The records of one TFRecord file, each checked: the masked CRC-32C of the 8 length bytes and
/// of the data (crc32c straight from the crate, the mask written out again here).
fn read_records(path: &Path) -> Vec<Vec<u8>> {
    // Spelt as the TFRecord reference spells it (the writer uses rotate_right).
    #[allow(clippy::manual_rotate)]
    let mask = |c: u32| ((c >> 15) | (c << 17)).wrapping_add(0xa282_ead8);
    let bytes = std::fs::read(path).unwrap();
    let (mut i, mut out) = (0, Vec::new());
    while i < bytes.len() {
        let len_bytes = &bytes[i..i + 8];
        let n = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let len_crc = u32::from_le_bytes(bytes[i + 8..i + 12].try_into().unwrap());
        assert_eq!(len_crc, mask(crc32c::crc32c(len_bytes)), "{}: length CRC of the record at byte {i}", path.display());
        let data = &bytes[i + 12..i + 12 + n];
        let data_crc = u32::from_le_bytes(bytes[i + 12 + n..i + 16 + n].try_into().unwrap());
        assert_eq!(data_crc, mask(crc32c::crc32c(data)), "{}: data CRC of the record at byte {i}", path.display());
        out.push(data.to_vec());
        i += 16 + n;
    }
    assert_eq!(i, bytes.len(), "{}: a record runs past the end of the file", path.display());
    out
}

fn event_files(tb: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(tb).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[test]
fn event_files_hold_every_metrics_number_under_its_tag_and_step() {
    let out = tmp_dir("tb");
    // 60 images, batches of 16: 3 steps an epoch. Stop after 4 steps (inside epoch 2), resume.
    let first = tiny(&out, &["epochs=2", "max_steps=4"]);
    run(&first, None).unwrap();
    let rest = tiny(&out, &["epochs=2"]);
    let s = run(&rest, Some(&out.join("last.safetensors"))).unwrap();
    assert_eq!(s.steps_done, 6, "2 epochs of 3 steps");
    // The closing table's numbers, as `train` writes them after the probes.
    let report = RunReport {
        random: Row { knn: 0.125, linear: 0.25 },
        pretrained: Row { knn: 0.375, linear: 0.4375 },
        checkpoint: out.join("last.safetensors"),
        method: rest.method.clone(),
        epochs: rest.epochs,
        train_images: 60,
        test_images: 60,
        wall_s: 1.0,
    };
    report.write(&out).unwrap();

    let tb = out.join("tb");
    let files = event_files(&tb);
    assert_eq!(files.len(), 3, "one event file per open (run, resumed run, report): {files:?}");
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        assert!(name.contains(&format!(".{}", std::process::id())), "{name} should end in the pid (and maybe a .N suffix)");
        let records = read_records(f);
        // The first record is Event { wall_time (field 1, fixed64), step 0 (field 2), file_version (field 3) }.
        let first = &records[0];
        assert_eq!(first[0], 0x09, "wall_time's key");
        assert_eq!(&first[9..11], &[0x10, 0x00], "step 0");
        assert_eq!(&first[11..13], &[0x1a, 13], "file_version's key and length");
        assert_eq!(&first[13..], b"brain.Event:2");
    }

    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let report_rows: Vec<serde_json::Value> =
        metrics.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|v| v["type"] == "report").collect();
    assert_eq!(report_rows.len(), 1);
    assert_eq!(report_rows[0]["random_knn_top1"], 0.125);
    assert_eq!(report_rows[0]["pretrained_linear_top1"], 0.4375);
    let want = expected_scalars(&metrics);
    let tags = ["train/loss", "train/lr", "train/img_per_s", "epoch/loss", "epoch/z_std", "epoch/knn_top1", "epoch/lr", "knn/knn_top1"];
    for tag in tags.into_iter().chain(["report/random_knn_top1"]) {
        assert!(want.contains_key(tag), "the run should log {tag}: {metrics}");
    }
    assert_eq!(want["train/loss"].iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6], "global steps");
    assert_eq!(want["knn/knn_top1"].iter().map(|p| p.0).collect::<Vec<_>>(), [0]);

    if !tensorboard_or_skip() {
        return;
    }
    let py = Command::new("python3").args(["-c", READER, tb.to_str().unwrap()]).output().unwrap();
    assert!(py.status.success(), "the TensorBoard reader failed: {}", String::from_utf8_lossy(&py.stderr));
    let got: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
    assert_eq!(got["bad_crc"], serde_json::json!([]), "records whose CRC TensorBoard's crc32c rejects");
    assert_eq!(got["file_version"], 2.0);
    let mut have: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    for (tag, pts) in got["scalars"].as_object().unwrap() {
        let pts = pts.as_array().unwrap();
        have.insert(tag.clone(), pts.iter().map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap() as f32)).collect());
    }
    assert_eq!(have, want, "TensorBoard's scalars (left) against metrics.jsonl's numbers rounded to f32 (right)");

    let recipe = &got["texts"]["recipe"];
    assert_eq!(recipe["plugin"], "text", "{got}");
    assert_eq!(recipe["dtype"], serde_json::json!([7, 7]), "DT_STRING, once per training open");
    assert_eq!(recipe["steps"], serde_json::json!([0, 0]));
    let fenced = |c: &ssl_engine::config::Config| serde_json::json!([format!("```toml\n{}\n```", c.to_toml().trim_end())]);
    assert_eq!(recipe["strings"], serde_json::json!([fenced(&first), fenced(&rest)]));
    assert_eq!(got["texts"].as_object().unwrap().len(), 1, "only the recipe is text: {}", got["texts"]);
    let scalar_count: usize = want.values().map(|v| v.len()).sum();
    let recipe_count = 2;
    assert_eq!(got["records"], (files.len() + recipe_count + scalar_count) as u64, "file versions, recipes and scalars, nothing else");
    println!("{} event files, {scalar_count} scalars under {} tags match metrics.jsonl", files.len(), want.len());
}
