//! benches/gpu_run.sh keeps to the device tool's limits, checked here without a GPU: the default
//! steps' time limits fit one 10-minute command, a test that prints "skipped" on the GPU machine
//! is a failure in summary.log, and a default run leaves at most 8 files to bring back. The
//! script runs in a scratch copy of the repository with stub binaries (its `--build` checks the
//! 64 MiB carry limit on the real ones).

use std::path::Path;
use std::process::Command;

const SCRIPT: &str = include_str!("../benches/gpu_run.sh");

/// The time limits of every `run LOG NAME LIMIT ...` inside `step_<name>() { ... }`.
fn limits_of(step: &str) -> Vec<u64> {
    let start = SCRIPT.find(&format!("step_{step}() {{")).unwrap_or_else(|| panic!("no step_{step}"));
    let body = &SCRIPT[start..start + SCRIPT[start..].find("\n}\n").unwrap()];
    body.lines()
        .filter_map(|l| l.trim_start().strip_prefix("run "))
        .map(|l| l.split_whitespace().nth(2).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("limit of: run {l}")))
        .collect()
}

#[test]
fn default_gpu_run_fits_one_ten_minute_command() {
    let line = SCRIPT.lines().find(|l| l.contains("&& steps=(")).expect("the default steps");
    let steps: Vec<&str> = line[line.find("steps=(").unwrap() + 7..line.rfind(')').unwrap()].split_whitespace().collect();
    let total: u64 = steps.iter().flat_map(|s| limits_of(s)).sum();
    println!("default steps {steps:?}: limits add up to {total} s");
    // Start-up, the info step and the copies back need the rest of the 600 s.
    assert!(total <= 570, "default steps' limits add up to {total} s: over one 10-minute device command");
}

fn write_stub(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn a_skipped_test_is_a_failure_and_at_most_eight_files_come_back() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("benches")).unwrap();
    std::fs::write(root.path().join("benches/gpu_run.sh"), SCRIPT).unwrap();
    let bin = root.path().join("device-bin");
    std::fs::create_dir_all(&bin).unwrap();
    // ssl-engine passes; the conformance binary "skips" as it does without a GPU.
    write_stub(&bin, "ssl-engine", "echo ok");
    write_stub(&bin, "conformance_cuda", "echo 'skipped: no CUDA driver'");
    write_stub(&bin, "torch_models", "echo ok");
    let out = root.path().join("out");
    let run = Command::new("bash")
        .arg(root.path().join("benches/gpu_run.sh"))
        .env("OUT", &out)
        .env("SSL_ENGINE_CACHE_DIR", root.path().join("cache"))
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let summary = std::fs::read_to_string(out.join("summary.log")).unwrap_or_else(|e| panic!("no summary.log ({e}): {stdout}"));
    println!("{summary}");
    let conformance = summary.lines().find(|l| l.starts_with("conformance ")).expect("a conformance line");
    assert!(conformance.contains("FAIL (a test was skipped)"), "{conformance}");
    let models = summary.lines().find(|l| l.starts_with("models ")).expect("a models line");
    assert!(models.contains("PASS"), "{models}");
    let files: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(files.len() <= 8, "{} files in $OUT, the device tool brings back 8: {files:?}", files.len());
}
