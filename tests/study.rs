//! `ssl-engine study` on a tiny slice of the demo subset: every cell is computed once and
//! cached (a rerun computes nothing), the table and files are well formed, and bad studies
//! (an unknown starting point, a checkpoint of another architecture, more labels per class
//! than the smallest class has) are errors that name the culprit.

mod common;

use std::path::Path;

use common::tiny_run::{run, tiny};
use common::{cpu, repo, tmp_dir};
use ssl_engine::config::Config;
use ssl_engine::study::{self, Protocol};

/// A study of width-4 ResNet-18s on 16-pixel crops: 6 images per class, 2 of them held out.
fn study_config(out: &Path, starts: &[String], extra: &[&str]) -> Config {
    let quoted: Vec<String> = starts.iter().map(|s| format!("{s:?}")).collect();
    let mut sets: Vec<String> = vec![
        "model_opts.width=4".into(),
        format!("data.path={:?}", repo("data/cifar10-demo/train")),
        format!("data.test_path={:?}", repo("data/cifar10-demo/test")),
        "data.limit_per_class=6".into(),
        "data.image_size=16".into(),
        "batch_size=16".into(),
        "threads=2".into(),
        "monitor.knn_k=10".into(),
        "linear.epochs=5".into(),
        format!("study.out={:?}", out.display().to_string()),
        format!("study.starts=[{}]", quoted.join(", ")),
        "study.val_fraction=0.34".into(),
        "study.labels_per_class=[2]".into(),
        "study.finetune.epochs=2".into(),
        "study.finetune.batch_size=8".into(),
        "study.supervised.epochs=2".into(),
        "study.supervised.batch_size=8".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    Config::load(None, &sets).unwrap()
}

/// A one-epoch SimSiam checkpoint of the given width.
fn checkpoint(name: &str, width: usize) -> String {
    let dir = tmp_dir(name);
    let w = format!("model_opts.width={width}");
    run(&tiny(&dir, &["epochs=1", "monitor.knn_every=0", &w]), None).unwrap();
    dir.join("last.safetensors").display().to_string()
}

fn err_text(cfg: &Config) -> String {
    match study::run(&cpu(2), cfg, false) {
        Ok(_) => panic!("the study should have been refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_cell_once_then_from_the_cache() {
    let ckpt = checkpoint("study-ckpt", 4);
    let out = tmp_dir("study");
    let cfg = study_config(&out, &[ckpt.clone(), "random".into(), "supervised".into()], &[]);
    let first = study::run(&cpu(2), &cfg, false).unwrap();
    // 3 starts x (kNN, linear, fine-tune, 2 per class), less supervised's two fine-tunings.
    assert_eq!(first.cells.len(), 10);
    assert_eq!(first.computed, 10);
    let starts: Vec<&str> = first.cells.iter().map(|c| c.start.as_str()).collect();
    assert_eq!(starts.iter().filter(|s| **s == "supervised").count(), 2);
    assert!(first.cells.iter().any(|c| c.start == ckpt && c.protocol == Protocol::FewLabel(2)));
    for c in &first.cells {
        assert!((0.0..=1.0).contains(&c.test.top1) && (0.0..=1.0).contains(&c.val.top1), "{c:?}");
        // 6 images per class, 2 held out: 40 training images, or 2 per class for few-label.
        let want = if c.protocol == Protocol::FewLabel(2) { 20 } else { 40 };
        assert_eq!(c.train_images, want, "{c:?}");
    }
    let finetuned = first.cells.iter().find(|c| c.protocol == Protocol::Finetune).unwrap();
    assert_eq!(finetuned.curve.len(), 2);
    assert!(finetuned.curve.iter().all(|(t, v)| t.is_finite() && v.is_some_and(f64::is_finite)));

    let md = std::fs::read_to_string(out.join("study.md")).unwrap();
    let rows: Vec<&str> = md.lines().collect();
    assert_eq!(rows.len(), 2 + 10, "{md}");
    assert!(rows[0].contains("val top-1") && rows[0].contains("micro AUC"));
    assert!(rows.iter().skip(2).all(|r| r.matches('|').count() == 11), "{md}");
    let csv = std::fs::read_to_string(out.join("study.csv")).unwrap();
    assert_eq!(csv.lines().count(), 11);
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("study.json")).unwrap()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 10);
    for png in ["study_bars.png", "study_curves.png"] {
        let bytes = std::fs::read(out.join(png)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{png}");
    }
    assert_eq!(std::fs::read_dir(out.join("cells")).unwrap().count(), 10 + 1, "ten cells and the supervised curve");

    let again = study::run(&cpu(2), &cfg, false).unwrap();
    assert_eq!(again.computed, 0, "a rerun computes nothing new");
    let tops = |o: &study::StudyOutcome| o.cells.iter().map(|c| (c.val.top1, c.test.top1)).collect::<Vec<_>>();
    assert_eq!(tops(&again), tops(&first));

    // A missing cell is recomputed alone.
    let cells: Vec<_> = std::fs::read_dir(out.join("cells")).unwrap().map(|e| e.unwrap().path()).collect();
    let knn = cells.iter().find(|p| p.to_string_lossy().contains("random__knn")).unwrap();
    std::fs::remove_file(knn).unwrap();
    assert_eq!(study::run(&cpu(2), &cfg, false).unwrap().computed, 1);
}

#[test]
fn bad_studies_name_the_culprit() {
    let out = tmp_dir("study-bad");
    let e = err_text(&study_config(&out, &["random".into(), "no/such/weights.safetensors".into()], &[]));
    assert!(e.contains("no/such/weights.safetensors") && e.contains("study.starts"), "{e}");

    let e = err_text(&study_config(&out, &["random".into()], &["study.labels_per_class=[5]"]));
    assert!(e.contains("labels_per_class") && e.contains('5') && e.contains("4 training images"), "{e}");

    let wide = checkpoint("study-wide", 8);
    let e = err_text(&study_config(&out, &[wide.clone()], &[]));
    assert!(e.contains(&wide) && e.contains("width 8") && e.contains("width 4"), "{e}");

    let e = err_text(&study_config(&out, &["random".into()], &["study.protocols=[\"knn\", \"probe\"]"]));
    assert!(e.contains("probe") && e.contains("study.protocols"), "{e}");
}
