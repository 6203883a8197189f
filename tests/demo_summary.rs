//! The demo's closing table (`report.compare_random`): its layout, that the pretrained row is
//! what the final checkpoint on disk gives under `eval knn` / `eval linear`, that the random row
//! is the run's own starting weights, and that a rerun prints the same numbers. CI-sized: a
//! width-4 ResNet on 16x16 crops of 40 demo images, a few steps; nothing is timed.

mod common;

use std::path::Path;
use std::process::Command;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/cifar10-demo");

/// The recipe overrides shared by the training run and the eval commands that check it.
fn recipe() -> Vec<String> {
    [
        "model_opts.width=4",
        "data.image_size=16",
        "data.limit_per_class=4",
        "simsiam.proj_hidden=16",
        "simsiam.proj_dim=16",
        "simsiam.pred_hidden=4",
        "monitor.knn_k=5",
        "linear.epochs=3",
        "seed=3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run(args: &[String]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_ssl-engine")).args(args).output().unwrap();
    assert!(o.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn with_sets(mut head: Vec<String>, sets: &[String]) -> Vec<String> {
    for s in sets {
        head.push("--set".into());
        head.push(s.clone());
    }
    head
}

fn train(out: &Path) -> (String, String) {
    let mut sets = recipe();
    sets.extend([
        format!("out={:?}", out.display().to_string()),
        format!("data.path={:?}", format!("{DATA}/train")),
        format!("data.test_path={:?}", format!("{DATA}/test")),
        "batch_size=8".into(),
        "epochs=2".into(),
        "report.compare_random=true".into(),
    ]);
    let stdout = run(&with_sets(vec!["train".into(), "--quiet".into()], &sets));
    (stdout, std::fs::read_to_string(out.join("summary.md")).unwrap())
}

/// (kNN, linear) percentages of a table row whose first cell starts with `label`.
fn row(table: &str, label: &str) -> (f64, f64) {
    let line = table.lines().find(|l| l.starts_with(&format!("| {label}"))).unwrap_or_else(|| panic!("no row {label:?} in:\n{table}"));
    let cells: Vec<&str> = line.split('|').map(str::trim).collect();
    assert_eq!(cells.len(), 5, "row {line:?}: 3 cells expected");
    let num = |c: &str| c.trim_end_matches('%').parse::<f64>().unwrap_or_else(|_| panic!("cell {c:?} of {line:?} is not a number"));
    (num(cells[2]), num(cells[3]))
}

/// top-1 (in percent) from an `eval ... --json` file: `top1` at the top or under `metrics`.
fn json_top1(path: &Path) -> f64 {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let m = v.get("metrics").unwrap_or(&v);
    m["top1"].as_f64().unwrap() * 100.0
}

/// `eval <kind>` as the README has it: a checkpoint with no settings but the data (its recipe
/// travels with it: image size, k, probe epochs), or `random` with the run's recipe file.
fn eval(kind: &str, checkpoint: &str, recipe_file: &Path, json: &Path) -> f64 {
    let mut head: Vec<String> = ["eval", kind, "--checkpoint", checkpoint, "--data", DATA, "--json"].iter().map(|s| s.to_string()).collect();
    head.push(json.display().to_string());
    if checkpoint == "random" {
        head.extend(["--config".to_string(), recipe_file.display().to_string()]);
        run(&head);
    } else {
        // The data subset is the evaluation's own choice, not the checkpoint's.
        run(&with_sets(head, &["data.limit_per_class=4".to_string()]));
    }
    json_top1(json)
}

#[test]
fn demo_summary_table_layout_and_numbers_come_from_the_final_checkpoint() {
    let dir = common::tmp_dir("summary");
    let (stdout, table) = train(&dir.join("a"));

    // The layout: header, alignment row, three rows, a blank line, the wall-time sentence.
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "| backbone | kNN top-1 | linear probe top-1 |", "{table}");
    assert_eq!(lines[1], "|---|---:|---:|");
    assert!(lines[3].starts_with("| pretrained (simsiam, 2 epochs) |"), "{table}");
    assert!(lines[6].starts_with("Wall time ") && lines[6].contains("40 training images, 40 test images"), "{table}");
    assert!(stdout.contains(table.trim_end()), "the printed table must be summary.md:\n{stdout}");
    let (kr, lr) = row(&table, "random init");
    let (kp, lp) = row(&table, "pretrained");
    let (kg, lg) = row(&table, "gain");
    assert!((kg - (kp - kr)).abs() < 0.011 && (lg - (lp - lr)).abs() < 0.011, "gain row must be pretrained - random:\n{table}");

    // The pretrained row is what the checkpoint left on disk gives; the random row is what the
    // run started from (the same recipe and seed, no training).
    let last = dir.join("a/last.safetensors").display().to_string();
    let (j, recipe_file) = (dir.join("m.json"), dir.join("a/config.toml"));
    assert!((eval("knn", &last, &recipe_file, &j) - kp).abs() < 0.006, "kNN of last.safetensors differs from the table:\n{table}");
    assert!((eval("linear", &last, &recipe_file, &j) - lp).abs() < 0.006, "linear probe of last.safetensors differs:\n{table}");
    assert!((eval("knn", "random", &recipe_file, &j) - kr).abs() < 0.006, "random-init kNN differs:\n{table}");
    assert!((eval("linear", "random", &recipe_file, &j) - lr).abs() < 0.006, "random-init linear probe differs:\n{table}");

    // Determinism: the same seed prints the same table (all but the wall time).
    let (_, again) = train(&dir.join("b"));
    let numbers = |t: &str| t.lines().take(5).collect::<Vec<_>>().join("\n");
    assert_eq!(numbers(&table), numbers(&again));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_shipped_recipe_loads_and_names_a_known_method() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let cfg = ssl_engine::config::Config::load(Some(&p), &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(ssl_engine::ssl::is_method(&cfg.method), "{}", p.display());
            n += 1;
        }
    }
    assert!(n >= 4, "recipes found: {n}");
}
