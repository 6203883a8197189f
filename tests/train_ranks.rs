//! `train --nproc-per-node N --backend cpu` through the real binary: N ranks in one process, one
//! thread each, over the in-process collective, in the training loop every rank runs (the GPU
//! ranks too). Checked against the one-rank run of the same recipe: the same loss trace (f32:
//! only the order of the sums differs), one set of files written by rank 0, a run stopped on 2
//! ranks resumed on 1, a failed or hung rank stopping the others within the timeout and naming
//! it, and the refusals (a batch the ranks cannot share, a resume that changes it).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::{one_line_naming, tiny_args};
use common::{repo, tmp_dir};

/// f32 runs whose sums differ in order only: measured within 3e-6 of each other.
const TOL: f64 = 1e-4;

/// A tiny SimSiam run with the kNN monitor: 40 training images, batch 8 (5 steps an epoch),
/// every step logged, sync_bn on.
fn args(out: &Path, extra: &[&str]) -> Vec<String> {
    let test = format!("data.test_path={:?}", repo("data/cifar10-demo/test"));
    let mut more = vec!["sync_bn=true", "monitor.log_every=1", "epochs=2", "monitor.knn_k=5", test.as_str()];
    more.extend_from_slice(extra);
    tiny_args(out, &repo("data/cifar10-demo/train"), &more)
}

/// Runs the binary with `flags` before the recipe's `--set`s and `env`; (exit code, stderr).
fn train(out: &Path, flags: &[&str], extra: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut a = args(out, extra);
    a.splice(1..1, flags.iter().map(|f| f.to_string()));
    let o = Command::new(env!("CARGO_BIN_EXE_ssl-engine")).args(&a).envs(env.iter().copied()).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).to_string())
}

/// The rows of `type` in a run's metrics.jsonl.
fn rows(out: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == kind)
        .collect()
}

/// (global step, loss) of every logged step.
fn losses(out: &Path) -> Vec<(u64, f64)> {
    rows(out, "step").iter().map(|v| (v["global_step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())).collect()
}

/// The losses of the recipe's uninterrupted one-rank run, in `dir/straight`.
fn straight_losses(dir: &Path, extra: &[&str]) -> Vec<(u64, f64)> {
    let (code, err) = train(&dir.join("straight"), &[], extra, &[]);
    assert_eq!(code, 0, "{err}");
    losses(&dir.join("straight"))
}

fn assert_same_losses(one: &[(u64, f64)], many: &[(u64, f64)], what: &str) {
    assert_eq!(one.iter().map(|s| s.0).collect::<Vec<_>>(), many.iter().map(|s| s.0).collect::<Vec<_>>(), "{what}: the steps");
    let worst = one.iter().zip(many).map(|(a, b)| (a.1 - b.1).abs() / a.1.abs().max(1.0)).fold(0.0, f64::max);
    eprintln!("{what}: losses within {worst:.1e}");
    assert!(worst <= TOL, "{what}: losses differ by {worst:.1e}: {one:?} vs {many:?}");
}

#[test]
fn two_and_four_ranks_in_one_process_train_as_one_rank() {
    let dir = tmp_dir("ranks-equal");
    let (code, err) = train(&dir.join("one"), &[], &[], &[]);
    assert_eq!(code, 0, "{err}");
    let one = losses(&dir.join("one"));
    assert_eq!(one.len(), 10);
    let knn_one: Vec<f64> = rows(&dir.join("one"), "knn").iter().chain(&rows(&dir.join("one"), "epoch")).map(|v| v["knn_top1"].as_f64().unwrap()).collect();
    for ranks in ["2", "4"] {
        let out = dir.join(format!("ranks-{ranks}"));
        let (code, err) = train(&out, &["--nproc-per-node", ranks], &[], &[]);
        assert_eq!(code, 0, "{err}");
        assert_same_losses(&one, &losses(&out), &format!("{ranks} ranks"));
        // Rank 0 alone wrote the log: each step once, and the line saying how the batch is shared.
        let dp = rows(&out, "data_parallel");
        assert_eq!(dp.len(), 1);
        assert_eq!(dp[0]["per_rank_batch"].as_u64(), Some(8 / ranks.parse::<u64>().unwrap()));
        // The kNN monitor, each rank embedding its share: within one test image of one rank's.
        let knn: Vec<f64> = rows(&out, "knn").iter().chain(&rows(&out, "epoch")).map(|v| v["knn_top1"].as_f64().unwrap()).collect();
        assert_eq!(knn.len(), knn_one.len());
        for (a, b) in knn_one.iter().zip(&knn) {
            assert!((a - b).abs() <= 1.0 / 1000.0 + 1e-9, "kNN {a} vs {b} on {ranks} ranks");
        }
    }
}

#[test]
fn two_ranks_stopped_mid_epoch_resume_on_one_rank_with_the_straight_runs_losses() {
    let dir = tmp_dir("ranks-resume");
    let straight = straight_losses(&dir, &[]);
    let out = dir.join("run");
    let (code, err) = train(&out, &["--nproc-per-node", "2"], &["max_steps=3"], &[]);
    assert_eq!(code, 0, "{err}");
    let ck = out.join("last.safetensors");
    let ck = ck.to_str().unwrap();
    let (code, err) = train(&out, &["--resume", ck], &[], &[]);
    assert_eq!(code, 0, "{err}");
    assert_same_losses(&straight, &losses(&out), "2 ranks for 3 steps, then 1 rank");

    // A resume that would change the global batch is refused, naming it.
    let (code, err) = train(&out, &["--nproc-per-node", "2", "--resume", ck], &["batch_size=4"], &[]);
    one_line_naming(code, &err, "batch_size");
}

/// The methods that carry state from step to step (a queue of keys, a centre) keep it equal on
/// every rank (the queues take the gathered keys, the centre the global mean): rank 0's copy in
/// the checkpoint is the one-rank run's, so a 2-rank run resumes on 1 rank with its losses.
#[test]
fn method_state_carries_over_from_two_ranks_to_one() {
    for (method, heads) in [
        ("mocov2plus", vec!["mocov2plus.proj_hidden=16", "mocov2plus.proj_dim=8", "mocov2plus.queue_size=16"]),
        ("dino", vec!["dino.proj_hidden=16", "dino.proj_dim=8", "dino.num_prototypes=12"]),
        ("swav", vec!["swav.proj_hidden=16", "swav.proj_dim=8", "swav.num_prototypes=10", "swav.queue_size=16", "swav.epoch_queue_starts=0", "swav.freeze_prototypes_epochs=0"]),
        ("nnclr", vec!["nnclr.proj_hidden=16", "nnclr.proj_dim=8", "nnclr.pred_hidden=16", "nnclr.queue_size=16"]),
    ] {
        let dir = tmp_dir(&format!("ranks-state-{method}"));
        let m = format!("method=\"{method}\"");
        let mut extra: Vec<&str> = vec![m.as_str()];
        extra.extend(heads.iter().copied());
        let straight = straight_losses(&dir, &extra);
        let out = dir.join("run");
        let mut first = extra.clone();
        first.push("max_steps=3");
        let (code, err) = train(&out, &["--nproc-per-node", "2"], &first, &[]);
        assert_eq!(code, 0, "{method}: {err}");
        let ck = out.join("last.safetensors");
        let (code, err) = train(&out, &["--resume", ck.to_str().unwrap()], &extra, &[]);
        assert_eq!(code, 0, "{method}: {err}");
        assert_same_losses(&straight, &losses(&out), &format!("{method}: 2 ranks for 3 steps, then 1 rank"));
    }
}

/// Ctrl-C / SIGTERM reaches every rank of the process: they agree to stop before the same
/// step, rank 0 saves it, and the run resumes (here on 1 rank) with the straight run's losses.
#[test]
fn sigterm_stops_every_rank_at_the_same_step_and_rank_0_saves_it() {
    let dir = tmp_dir("ranks-sigterm");
    let more = ["data.limit_per_class=8", "epochs=3"];
    let out = dir.join("run");
    let mut a = args(&out, &more);
    a.splice(1..1, ["--nproc-per-node".to_string(), "2".to_string()]);
    let child = Command::new(env!("CARGO_BIN_EXE_ssl-engine")).args(&a).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let t0 = Instant::now();
    while losses_if_any(&out) < 3 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no steps logged");
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("state saved to"), "{err}");
    let saved = losses(&out).len();
    assert!(saved < 30, "stopped before the end: {saved} steps");
    let ck = out.join("last.safetensors");
    let (code, err) = train(&out, &["--resume", ck.to_str().unwrap()], &more, &[]);
    assert_eq!(code, 0, "{err}");
    let straight = straight_losses(&dir, &more);
    let got = losses(&out);
    // Every step once: the saved position is the step after the last one logged.
    assert_eq!(got.len(), straight.len(), "{got:?}");
    assert_same_losses(&straight, &got, "2 ranks stopped by SIGTERM, resumed on 1");
}

/// Logged steps so far (0 while the log does not exist yet).
fn losses_if_any(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl")).map(|t| t.lines().filter(|l| l.contains("\"type\":\"step\"")).count()).unwrap_or(0)
}

#[test]
fn a_rank_that_fails_stops_the_others_and_the_last_checkpoint_resumes() {
    let dir = tmp_dir("ranks-fail");
    let straight = straight_losses(&dir, &[]);
    let out = dir.join("run");
    // Rank 1 fails before step 7, in the second epoch: the first epoch's checkpoint is the last.
    let t0 = Instant::now();
    let (code, err) = train(&out, &["--nproc-per-node", "2"], &[], &[("SSL_ENGINE_TEST_RANK_FAULT", "1:7:fail")]);
    eprintln!("a failed rank stopped the run in {:.2} s: {}", t0.elapsed().as_secs_f64(), err.trim());
    one_line_naming(code, &err, "rank 1 of 2: injected failure before step 7");
    let ck = out.join("last.safetensors");
    let (code, err) = train(&out, &["--nproc-per-node", "2", "--resume", ck.to_str().unwrap()], &[], &[]);
    assert_eq!(code, 0, "{err}");
    // Steps 1-5 from the first run, then 6-10 from the resume; step 6 and 7 of the failed run were
    // logged before the failure and are logged again by the resume.
    let mut got = losses(&out);
    got.retain(|s| s.0 <= 5);
    got.extend(losses(&out).into_iter().rev().take(5).collect::<Vec<_>>().into_iter().rev());
    assert_same_losses(&straight, &got, "a run resumed after a failed rank");
}

#[test]
fn a_rank_that_hangs_makes_the_others_stop_within_the_timeout_naming_it() {
    let dir = tmp_dir("ranks-hang");
    let t0 = Instant::now();
    let (code, err) = train(&dir.join("run"), &["--nproc-per-node", "2", "--rdzv-timeout", "2"], &[], &[("SSL_ENGINE_TEST_RANK_FAULT", "1:2:hang8")]);
    eprintln!("a hung rank stopped the run in {:.2} s: {}", t0.elapsed().as_secs_f64(), err.trim());
    one_line_naming(code, &err, "rank 0 waited 2 s (--rdzv-timeout) for rank(s) 1 of 2");
    assert_eq!(code, 5, "the distributed exit code");
    // The process ends when the hung rank wakes (8 s) and finds the group stopped.
    assert!(t0.elapsed() < Duration::from_secs(40));
}

#[test]
fn what_the_ranks_cannot_do_is_refused_naming_it() {
    let dir = tmp_dir("ranks-refused");
    let (code, err) = train(&dir.join("a"), &["--nproc-per-node", "3"], &[], &[]);
    one_line_naming(code, &err, "batch_size 8 is the global batch: it must divide evenly over 3 ranks");
    let (code, err) = train(&dir.join("b"), &["--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "0", "--master-addr", "10.0.0.1"], &[], &[]);
    one_line_naming(code, &err, "--nnodes 2 with the cpu backend");
    // A bad recipe fails every rank alike: the error is rank 0's own, not another rank's.
    let (code, err) = train(&dir.join("d"), &["--nproc-per-node", "2"], &["data.path=\"/nonexistent/images\""], &[]);
    one_line_naming(code, &err, "data.path");
    assert!(!err.contains("rank 1"), "{err}");
    // A worker started by torchrun or srun with the cpu backend: one process trains every rank.
    let a = args(&dir.join("c"), &[]);
    let o = Command::new(env!("CARGO_BIN_EXE_ssl-engine")).args(&a).env("RANK", "1").env("WORLD_SIZE", "2").env("LOCAL_RANK", "1").output().unwrap();
    one_line_naming(o.status.code().unwrap_or(-1), &String::from_utf8_lossy(&o.stderr), "--nproc-per-node 2 (one thread per rank)");
}
