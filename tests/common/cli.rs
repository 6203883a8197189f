//! Running the real binary from tests: a tiny training run's arguments, exit code and stderr,
//! and the one-line error check.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Runs the binary; returns (exit code, stderr).
pub fn ssl(args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_ssl-engine")).args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).to_string())
}

/// Arguments of a tiny training run writing to `out` on `data`.
pub fn tiny_args(out: &Path, data: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec!["train".into(), "--quiet".into()];
    for s in [
        format!("out={:?}", out.display().to_string()),
        "model_opts.width=4".into(),
        format!("data.path={data:?}"),
        "data.test_path=\"\"".into(),
        "data.image_size=16".into(),
        "data.limit_per_class=4".into(),
        "batch_size=8".into(),
        "epochs=1".into(),
        "simsiam.proj_hidden=16".into(),
        "simsiam.proj_dim=16".into(),
        "simsiam.pred_hidden=4".into(),
    ] {
        v.push("--set".into());
        v.push(s);
    }
    for e in extra {
        v.push("--set".into());
        v.push(e.to_string());
    }
    v
}

pub fn run_tiny(out: &Path, data: &str, extra: &[&str]) -> (i32, String) {
    let a = tiny_args(out, data, extra);
    ssl(&a.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Exactly one `error:` line, naming `what`, and a non-zero exit.
pub fn one_line_naming(code: i32, err: &str, what: &str) {
    assert_ne!(code, 0, "must fail: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected, got: {err}");
    assert!(lines[0].contains(what), "error line {:?} should name {what:?}", lines[0]);
}
