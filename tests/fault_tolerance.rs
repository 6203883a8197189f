//! What survives what, through the real binary: SIGKILL at ~200 points of a run that checkpoints
//! every epoch, keep-last-k, a read-only run folder, SIGINT/SIGTERM in every phase, a second
//! Ctrl-C, NaN at a given step (stop, or skip with --skip-nonfinite), out of GPU memory, and
//! arguments that contradict the weight file. Disk full is in cli_bad_input.rs.

mod common;

use common::cli::{one_line_naming, run_tiny, ssl, tiny_args};
use common::{repo, tmp_dir};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ssl_engine::checkpoint::WeightFile;
use ssl_engine::rng::Rng;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ssl-engine"))
}

/// Waits until the process catches SIGTERM (bit 14 of SigCgt in /proc/<pid>/status).
fn wait_until_catching_sigterm(child: &Child) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).and_then(|h| u64::from_str_radix(h.trim(), 16).ok());
        if caught.is_some_and(|m| m & (1 << 14) != 0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("the process never installed its SIGTERM handler");
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status();
}

/// The visible checkpoints of a run folder (temp files are not checkpoints).
fn checkpoints(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out)
        .map(|rd| rd.flatten().map(|e| e.path()).collect::<Vec<PathBuf>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p: &PathBuf| {
            p.file_name().unwrap().to_string_lossy().ends_with(".safetensors") && !p.file_name().unwrap().to_string_lossy().starts_with('.')
        })
        .collect();
    v.sort();
    v
}

fn temp_files(out: &Path) -> usize {
    std::fs::read_dir(out).map(|rd| rd.flatten().filter(|e| e.file_name().to_string_lossy().contains(".tmp.")).count()).unwrap_or(0)
}

/// A run that never ends by itself, two steps an epoch, a checkpoint every epoch, keep 2.
fn endless(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut e = vec!["epochs=100000", "data.limit_per_class=2", "checkpoint.every=1", "checkpoint.keep=2"];
    e.extend_from_slice(extra);
    tiny_args(out, &repo("data/cifar10-demo/train"), &e)
}

#[test]
fn sigkill_anywhere_leaves_only_valid_checkpoints_that_resume() {
    let out = tmp_dir("kill");
    let mut rng = Rng::new(2026);
    let (mut kills, mut resumed, mut validated) = (0, 0, 0);
    let t0 = Instant::now();
    for _ in 0..200 {
        let last = out.join("last.safetensors");
        let mut args = endless(&out, &[]);
        if last.exists() {
            args.extend(["--resume".into(), last.display().to_string()]);
            resumed += 1;
        } else {
            // Killed before its first checkpoint: the folder may hold its metrics; start over.
            args.push("--overwrite".into());
        }
        // A pause between the durable temp file and its rename widens the window a kill can hit.
        let child = bin().args(&args).env("SSL_ENGINE_TEST_SAVE_PAUSE_MS", "15").stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(400) + 20));
        let mut child = child;
        let _ = child.kill();
        let st = child.wait().unwrap();
        if st.code().is_some() {
            // It exited by itself before the kill: that is a failure of its own.
            panic!("the run exited with {st} before it was killed");
        }
        kills += 1;
        for ck in checkpoints(&out) {
            let wf =
                WeightFile::read(&ck).unwrap_or_else(|e| panic!("after kill {kills}: {} is not a valid checkpoint: {e}", ck.display()));
            wf.state().unwrap_or_else(|e| panic!("after kill {kills}: {}: {e}", ck.display()));
            validated += 1;
        }
        let epochs: Vec<_> =
            checkpoints(&out).into_iter().filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("epoch-")).collect();
        // keep = 2; a kill between a durable save and the pruning may leave one more.
        assert!(epochs.len() <= 3, "keep-last-2 left {epochs:?}");
    }
    // A last run that ends normally: it resumes, cleans the stale temp files, prunes to 2.
    let state = WeightFile::read(&out.join("last.safetensors")).unwrap().state().unwrap();
    let mut args = endless(&out, &[&format!("max_steps={}", state.global_step + 4)]);
    args.extend(["--resume".into(), out.join("last.safetensors").display().to_string()]);
    let (c, e) = ssl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(c, 0, "{e}");
    assert_eq!(temp_files(&out), 0, "stale temp files must be removed when a run starts");
    let after = WeightFile::read(&out.join("last.safetensors")).unwrap().state().unwrap();
    assert_eq!(after.global_step, state.global_step + 4);
    let epochs = checkpoints(&out).into_iter().filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("epoch-")).count();
    assert_eq!(epochs, 2, "keep-last-2");
    println!(
        "{kills} kills in {:.0} s, {resumed} runs resumed from the survivor, {validated} checkpoint files validated, final global step {}",
        t0.elapsed().as_secs_f64(),
        after.global_step
    );
    assert!(resumed >= kills / 2, "too few kills found a checkpoint to resume ({resumed} of {kills})");
}

/// Runs the binary as user `nobody` (from root), returning None when nobody cannot run it
/// (a checkout inside a folder only root may enter).
fn output_as_nobody(args: &[String]) -> Option<std::process::Output> {
    use std::os::unix::process::CommandExt;
    let mut cmd = bin();
    cmd.args(args);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = cmd.output().ok()?;
    let err = String::from_utf8_lossy(&o.stderr);
    // The run must get as far as the run folder: not stopped by unreadable data or binary.
    if err.contains("data/cifar10-demo") && err.contains("ermission denied") {
        return None;
    }
    Some(o)
}

/// A process that cannot write its run folder. Not as root, a mode-555 folder does it. As root
/// (CI), which ignores modes: the run drops to user `nobody`, or failing that the folder becomes
/// a read-only bind mount of itself.
#[test]
fn read_only_run_folder_is_one_clear_error_and_keeps_the_checkpoint() {
    use std::os::unix::fs::PermissionsExt;
    let out = tmp_dir("readonly");
    let (c, e) = run_tiny(&out, &repo("data/cifar10-demo/train"), &[]);
    assert_eq!(c, 0, "{e}");
    let ckpt = out.join("last.safetensors");
    let before = std::fs::read(&ckpt).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(&ckpt, std::fs::Permissions::from_mode(0o444)).unwrap();
    let mut args = tiny_args(&out, &repo("data/cifar10-demo/train"), &["epochs=2"]);
    args.extend(["--resume".into(), ckpt.display().to_string()]);
    let root = unsafe { libc::geteuid() } == 0;
    let mut mounted = false;
    let o = if !root {
        bin().args(&args).output().unwrap()
    } else if let Some(o) = output_as_nobody(&args) {
        o
    } else {
        let d = out.to_str().unwrap();
        mounted = Command::new("mount").args(["--bind", d, d]).status().is_ok_and(|s| s.success())
            && Command::new("mount").args(["-o", "remount,ro,bind", d]).status().is_ok_and(|s| s.success());
        if !mounted {
            let _ = Command::new("umount").arg(d).status();
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
            common::skip::skip(
                common::skip::Need::MountPrivilege,
                "root here ignores folder modes, user nobody cannot run this checkout, and bind mounts are refused",
            );
            return;
        }
        bin().args(&args).output().unwrap()
    };
    if mounted {
        let _ = Command::new("umount").arg(&out).status();
    }
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let code = o.status.code().unwrap_or(-1);
    one_line_naming(code, &err, &out.display().to_string());
    assert_eq!(code, 1, "{err}");
    assert_eq!(std::fs::read(&ckpt).unwrap(), before, "the checkpoint must survive");
}

/// Spawns a run with stderr piped and returns it with a line reader.
fn spawn_reading(args: &[String], env: &[(&str, &str)]) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut cmd = bin();
    cmd.args(args).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Collects lines until one contains `needle` (or the time runs out); returns all seen.
fn wait_for_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str, limit: Duration) -> Vec<String> {
    let t0 = Instant::now();
    let mut seen = Vec::new();
    while t0.elapsed() < limit {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(50)) {
            let hit = l.contains(needle);
            seen.push(l);
            if hit {
                return seen;
            }
        }
    }
    panic!("no line with {needle:?} within {limit:?}; saw {seen:?}");
}

fn finish(mut child: Child, rx: std::sync::mpsc::Receiver<String>, limit: Duration, what: &str) -> (i32, String) {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            std::thread::sleep(Duration::from_millis(50));
            let text: Vec<String> = rx.try_iter().collect();
            return (st.code().unwrap_or(-1), text.join("\n"));
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("{what}: still running {limit:?} after the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The whole demo set with the kNN monitor on: decoding and the monitor take seconds.
fn monitored(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["train".into()];
    for s in [
        format!("out={:?}", out.display().to_string()),
        "model_opts.width=4".into(),
        format!("data.path={:?}", repo("data/cifar10-demo/train")),
        format!("data.test_path={:?}", repo("data/cifar10-demo/test")),
        "data.image_size=32".into(),
        "batch_size=64".into(),
        "epochs=100".into(),
        "simsiam.proj_hidden=16".into(),
        "simsiam.proj_dim=16".into(),
        "simsiam.pred_hidden=4".into(),
    ]
    .into_iter()
    .chain(extra.iter().map(|s| s.to_string()))
    {
        a.push("--set".into());
        a.push(s);
    }
    a
}

#[test]
fn sigterm_while_decoding_stops_at_once_and_writes_nothing() {
    let out = tmp_dir("sig-decode");
    let (child, rx) = spawn_reading(&monitored(&out, &[]), &[]);
    // As soon as the handler is installed (the first thing the binary does): inside the decoding.
    wait_until_catching_sigterm(&child);
    signal(&child, "TERM");
    let (code, err) = finish(child, rx, Duration::from_secs(10), "SIGTERM while decoding");
    assert_eq!(code, 130, "{err}");
    assert!(err.contains("interrupted; during decoding"), "{err}");
    assert!(checkpoints(&out).is_empty(), "nothing to save before the first step: {:?}", checkpoints(&out));
}

#[test]
fn sigterm_during_the_knn_monitor_saves_and_exits_within_seconds() {
    let out = tmp_dir("sig-knn");
    let (child, rx) = spawn_reading(&monitored(&out, &[]), &[]);
    // "model: ..." is printed just before the monitor of the random-init backbone starts.
    wait_for_line(&rx, "model:", Duration::from_secs(60));
    signal(&child, "TERM");
    let t0 = Instant::now();
    let (code, err) = finish(child, rx, Duration::from_secs(10), "SIGTERM during the kNN monitor");
    assert_eq!(code, 130, "{err}");
    assert!(err.contains("state saved to") && err.contains("kNN monitor"), "{err}");
    let st = WeightFile::read(&out.join("last.safetensors")).unwrap().state().unwrap();
    assert_eq!(st.global_step, 0, "the last completed step");
    println!("SIGTERM during the kNN monitor: exit 130 after {:.2} s", t0.elapsed().as_secs_f64());
}

#[test]
fn sigint_during_a_step_saves_the_last_completed_step_and_resumes() {
    let out = tmp_dir("sig-step");
    let (child, rx) = spawn_reading(&endless(&out, &[]), &[]);
    let t0 = Instant::now();
    while !out.join("last.safetensors").exists() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    signal(&child, "INT");
    let (code, err) = finish(child, rx, Duration::from_secs(10), "SIGINT during a step");
    assert_eq!(code, 130, "{err}");
    assert!(err.contains("interrupted; state saved to"), "{err}");
    let st = WeightFile::read(&out.join("last.safetensors")).unwrap().state().unwrap();
    assert!(st.global_step >= 2, "{st:?}");
    let mut r = endless(&out, &[&format!("max_steps={}", st.global_step + 1)]);
    r.extend(["--resume".into(), out.join("last.safetensors").display().to_string()]);
    let (c, e) = ssl(&r.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(c, 0, "{e}");
}

#[test]
fn sigterm_during_a_save_finishes_it_then_stops_and_a_second_signal_aborts_at_once() {
    // The save pauses 1.5 s between the temp file and the rename; the signal lands inside.
    let out = tmp_dir("sig-save");
    let (child, rx) = spawn_reading(&endless(&out, &[]), &[("SSL_ENGINE_TEST_SAVE_PAUSE_MS", "1500")]);
    let t0 = Instant::now();
    while temp_files(&out) == 0 && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(&child, "TERM");
    let (code, err) = finish(child, rx, Duration::from_secs(15), "SIGTERM during a save");
    assert_eq!(code, 130, "{err}");
    assert!(err.contains("state saved to"), "{err}");
    for ck in checkpoints(&out) {
        WeightFile::read(&ck).unwrap().state().unwrap();
    }

    // Twice: the second signal ends the process at once, inside the (5 s) save.
    let out2 = tmp_dir("sig-save2");
    let (child, rx) = spawn_reading(&endless(&out2, &[]), &[("SSL_ENGINE_TEST_SAVE_PAUSE_MS", "5000")]);
    let t0 = Instant::now();
    while temp_files(&out2) == 0 && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(&child, "INT");
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, "INT");
    let t1 = Instant::now();
    let (code, err) = finish(child, rx, Duration::from_secs(3), "a second Ctrl-C");
    assert_eq!(code, 130, "{err}");
    assert!(err.contains("second interrupt"), "{err}");
    println!("second Ctrl-C: exit 130 after {:.2} s", t1.elapsed().as_secs_f64());
    // The aborted save never became a checkpoint; whatever is visible is valid.
    for ck in checkpoints(&out2) {
        WeightFile::read(&ck).unwrap().state().unwrap();
    }
}

#[test]
fn nan_at_step_k_stops_naming_step_and_tensor_or_is_skipped_when_allowed() {
    let out = tmp_dir("nan-hook");
    let data = repo("data/cifar10-demo/train");
    // 20 images, batch 8: 2 steps an epoch; a NaN pixel in the batch of global step 3.
    let base = ["data.limit_per_class=2", "epochs=3", "checkpoint.every=1"];
    let args = tiny_args(&out, &data, &base);
    let o = bin().args(&args).env("SSL_ENGINE_TEST_NAN_AT_STEP", "3").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    one_line_naming(o.status.code().unwrap_or(-1), &err, "step 1");
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("epoch 1") && err.contains("running_mean"), "should name the step and the first non-finite tensor: {err}");
    let st = WeightFile::read(&out.join("last.safetensors")).unwrap().state().unwrap();
    assert_eq!(st.global_step, 2, "the last good checkpoint (end of epoch 1) is kept");

    let out2 = tmp_dir("nan-skip");
    let mut args = tiny_args(&out2, &data, &base);
    args.extend(["--skip-nonfinite".into(), "1".into()]);
    let o = bin().args(&args).env("SSL_ENGINE_TEST_NAN_AT_STEP", "3").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("step skipped (1 of at most 1)"), "{err}");
    let wf = WeightFile::read(&out2.join("last.safetensors")).unwrap();
    assert!(wf.tensors.values().all(|(_, v)| v.iter().all(|x| x.is_finite())), "a skipped step leaves no NaN behind");
    assert_eq!(wf.state().unwrap().global_step, 6);
}

#[test]
fn resume_with_another_batch_size_backend_or_method_is_refused_naming_it() {
    use std::sync::atomic::AtomicBool;
    let out = tmp_dir("resume-diff");
    let data = repo("data/cifar10-demo/train");
    let (c, e) = run_tiny(&out, &data, &[]);
    assert_eq!(c, 0, "{e}");
    let ckpt = out.join("last.safetensors");
    for (set, key) in [("batch_size=4", "batch_size"), ("model=\"resnet34-cifar\"", "model"), ("data.image_size=8", "data.image_size")] {
        let mut a = tiny_args(&out, &data, &[set]);
        a.extend(["--resume".into(), ckpt.display().to_string()]);
        let (c, e) = ssl(&a.iter().map(String::as_str).collect::<Vec<_>>());
        one_line_naming(c, &e, &format!("trained with {key} ="));
    }
    // The backend: the same checkpoint resumed by a run configured for CUDA (checked before
    // anything runs, so the CPU backend object is never used).
    let sets: Vec<String> = tiny_args(&out, &data, &["backend=\"cuda\""]).chunks(2).skip(1).map(|kv| kv[1].clone()).collect();
    let cfg = ssl_engine::config::Config::load(None, &sets).unwrap();
    let cpu = ssl_engine::backend::cpu::CpuBackend::new(1).unwrap();
    let err = ssl_engine::train::train(&cpu, &cfg, Some(&ckpt), &AtomicBool::new(false), false).unwrap_err();
    assert!(err.to_string().contains("trained with backend = \"cpu\", this run asks for \"cuda\""), "{err}");
    // The method: a checkpoint whose saved state names another method.
    let bytes = std::fs::read(&ckpt).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut md = meta.metadata().clone().unwrap();
    md.insert("state".into(), md["state"].replace("\"method\":\"simsiam\"", "\"method\":\"byol\""));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let other = out.join("byol.safetensors");
    std::fs::write(&other, safetensors::serialize(st.tensors(), Some(md)).unwrap()).unwrap();
    let mut a = tiny_args(&out, &data, &[]);
    a.extend(["--resume".into(), other.display().to_string()]);
    let (c, e) = ssl(&a.iter().map(String::as_str).collect::<Vec<_>>());
    one_line_naming(c, &e, "trained with method = \"byol\"");
}

#[test]
fn out_of_gpu_memory_names_the_batch_and_memory_with_exit_code_4_and_writes_nothing() {
    use std::sync::atomic::AtomicBool;
    if !common::skip::nvrtc_or_skip() {
        return;
    }
    let dev = ssl_engine::backend::cuda::CudaBackend::dry_run_with_memory(132, 256 << 20).expect("dry-run CUDA device");
    let out = tmp_dir("oom");
    // A good checkpoint from an earlier run in the same folder must survive.
    let (c, e) = run_tiny(&out, &repo("data/cifar10-demo/train"), &[]);
    assert_eq!(c, 0, "{e}");
    let before = std::fs::read(out.join("last.safetensors")).unwrap();
    let sets: Vec<String> = vec![
        format!("out={:?}", out.display().to_string()),
        format!("data.path={:?}", repo("data/cifar10-demo/train")),
        "data.test_path=\"\"".into(),
        "data.limit_per_class=52".into(),
        "batch_size=512".into(),
        "epochs=1".into(),
    ];
    let cfg = ssl_engine::config::Config::load(None, &sets).unwrap();
    // The folder holds that run, so the new one replaces it (--overwrite moves it aside).
    let opts = ssl_engine::train::StartOptions { overwrite: true, ..Default::default() };
    let err = ssl_engine::train::train_with(&dev, &cfg, &opts, &AtomicBool::new(false), false).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.exit_code(), 4, "{msg}");
    assert!(
        msg.contains("out of memory at batch_size 512") && msg.contains("MiB free of 256 MiB") && msg.contains("smaller batch_size"),
        "{msg}"
    );
    assert!(!out.join("last.safetensors").exists(), "no partial checkpoint");
    assert_eq!(std::fs::read(out.with_file_name(format!("{}.replaced-1", out.file_name().unwrap().to_string_lossy())).join("last.safetensors")).unwrap(), before, "the earlier run survives, aside");
    println!("dry-run CUDA: {msg}");
}

#[cfg(feature = "wgpu")]
#[test]
fn out_of_memory_on_webgpu_with_a_memory_cap_exits_4() {
    if common::wgpu_or_skip().is_none() {
        return;
    }
    let out = tmp_dir("oom-wgpu");
    let mut a = tiny_args(
        &out,
        &repo("data/cifar10-demo/train"),
        &["data.limit_per_class=52", "batch_size=512", "data.image_size=32", "model_opts.width=16"],
    );
    a.extend(["--backend".into(), "wgpu".into()]);
    let o = bin().args(&a).env("SSL_ENGINE_WGPU_MEMORY_LIMIT_MB", "32").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    one_line_naming(o.status.code().unwrap_or(-1), &err, "out of memory at batch_size 512");
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(checkpoints(&out).is_empty(), "no partial checkpoint");
}

#[test]
fn model_flag_that_contradicts_the_weight_file_is_an_error_naming_both() {
    let out = tmp_dir("embed-arch");
    let (c, e) = run_tiny(&out, &repo("data/cifar10-demo/train"), &[]);
    assert_eq!(c, 0, "{e}");
    let ckpt = out.join("last.safetensors");
    let (c, e) = ssl(&[
        "embed",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--model",
        "resnet34-cifar",
        "--data",
        &repo("data/cifar10-demo/test"),
        "--out",
        out.join("f.npy").to_str().unwrap(),
    ]);
    one_line_naming(c, &e, "--model resnet34-cifar is ResNet-34");
    assert!(e.contains("holds ResNet-18"), "{e}");
    assert!(!out.join("f.npy").exists());
}

#[test]
fn every_subcommand_help_describes_its_own_flags() {
    let help = |args: &[&str]| {
        let o = bin().args(args).arg("--help").output().unwrap();
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let embed = help(&["embed"]);
    assert!(embed.contains("The images to embed"), "{embed}");
    assert!(!embed.contains("kNN bank") && !embed.contains("--json"), "embed --help describes eval's flags: {embed}");
    assert!(help(&["train"]).contains("--skip-nonfinite"));
    // Every flag of every subcommand has a description.
    for cmd in [
        &["train"][..],
        &["eval", "knn"],
        &["eval", "linear"],
        &["embed"],
        &["export"],
        &["plot"],
        &["bench", "step"],
        &["bench", "kernels"],
        &["bench", "loader"],
    ] {
        let h = help(cmd);
        let mut lines = h.lines().peekable();
        while let Some(l) = lines.next() {
            let t = l.trim_start();
            if t.starts_with("--") && !t.starts_with("--help") && !t.starts_with("--version") {
                let described = t.split("  ").filter(|s| !s.trim().is_empty()).count() > 1
                    || lines.peek().is_some_and(|n| !n.trim().is_empty() && !n.trim_start().starts_with('-'));
                assert!(described, "{cmd:?}: flag without a description: {t}");
            }
        }
    }
}
