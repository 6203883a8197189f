//! Evaluation against references: the metrics against scikit-learn (fixture written by
//! tests/reference/make_fixtures.py), the kNN classifier on cases with a known answer, and the
//! linear probe on separable data.

mod common;

use ssl_engine::eval::knn::{knn_accuracy, knn_scores, l2_normalize};
use ssl_engine::eval::linear::{LinearProbeConfig, train_linear_probe};
use ssl_engine::eval::metrics::{auc, classification_metrics};

#[test]
fn metrics_match_scikit_learn() {
    let f = common::Fixtures::load("metrics.safetensors");
    let scores = f.f32("scores");
    let labels: Vec<u32> = f.f32("labels").iter().map(|&v| v as u32).collect();
    let m = classification_metrics(&scores, &labels, 6);
    let want = f.get("expected").1;
    let got = [m.top1, m.top5, m.macro_accuracy, m.micro_accuracy, m.macro_auc, m.micro_auc];
    for (name, (g, w)) in ["top1", "top5", "macro_accuracy", "micro_accuracy", "macro_auc", "micro_auc"].iter().zip(got.iter().zip(want)) {
        assert!((g - w).abs() < 1e-9, "{name}: {g} vs scikit-learn {w}");
    }
}

#[test]
fn auc_of_known_orderings() {
    assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), 1.0);
    assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), 0.0);
    assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &[false, true, false, true]), 0.5);
}

#[test]
fn knn_votes_with_known_answer() {
    let b = common::cpu(1);
    // Bank: two classes on the unit circle; class 0 near angle 0, class 1 near angle 90 degrees.
    let ang = |d: f64| [d.to_radians().cos() as f32, d.to_radians().sin() as f32];
    let bank: Vec<f32> = [0.0, 10.0, -10.0, 90.0, 100.0, 80.0].iter().flat_map(|&d| ang(d)).collect();
    let labels = [0, 0, 0, 1, 1, 1];
    let test: Vec<f32> = [5.0, 85.0, 50.0].iter().flat_map(|&d| ang(d)).collect();
    let acc = knn_accuracy(&b, &bank, &labels, &test[..4], &[0, 1], 2, 2, 3, 0.1).unwrap();
    assert_eq!(acc, 1.0);
    // k = 1 at 50 degrees: the nearest is 80 (class 1), at cos(30 deg).
    let s = knn_scores(&b, &bank, &labels, &test[4..], 2, 2, 1, 0.1).unwrap();
    assert_eq!(s[0], 0.0);
    let want = ((30f64.to_radians().cos()) / 0.1).exp() as f32;
    assert!((s[1] - want).abs() / want < 1e-5, "{} vs {want}", s[1]);
    // k = all six with T = 0.1: weights exp(cos/T) summed per class, by hand.
    let s = knn_scores(&b, &bank, &labels, &test[4..], 2, 2, 6, 0.1).unwrap();
    let w = |d: f64| ((d - 50.0f64).to_radians().cos() / 0.1).exp();
    let (c0, c1) = (w(0.0) + w(10.0) + w(-10.0), w(90.0) + w(100.0) + w(80.0));
    assert!(((s[0] as f64 - c0) / c0).abs() < 1e-5 && ((s[1] as f64 - c1) / c1).abs() < 1e-5);
}

#[test]
fn l2_normalize_gives_unit_rows() {
    let mut x = vec![3.0, 4.0, 0.0, 0.0];
    l2_normalize(&mut x, 2);
    assert_eq!(x, vec![0.6, 0.8, 0.0, 0.0]);
}

#[test]
fn linear_probe_separates_separable_classes() {
    let b = common::cpu(2);
    let mut rng = ssl_engine::rng::Rng::new(3);
    let (n, dim, classes) = (300, 8, 3);
    let y: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
    let x: Vec<f32> = y
        .iter()
        .flat_map(|&c| (0..dim).map(move |d| if d == c as usize { 2.0 } else { 0.0 }))
        .zip((0..).map(|_| ()))
        .map(|(v, _)| v + rng.uniform_range(-0.5, 0.5) as f32)
        .collect();
    for opt in ["sgd", "lars"] {
        // SGD on standardised features (the default), LARS on raw ones: both code paths.
        let cfg = LinearProbeConfig {
            epochs: 20,
            batch_size: 64,
            optimizer: opt.parse().unwrap(),
            lr: if opt == "sgd" { 1.0 } else { 0.5 },
            standardize: opt == "sgd",
            ..Default::default()
        };
        let mut losses = Vec::new();
        let probe = train_linear_probe(&b, &x, &y, dim, classes, &cfg, |_, l| losses.push(l)).unwrap();
        let m = classification_metrics(&probe.logits(&x).unwrap(), &y, classes);
        assert!(m.top1 > 0.99, "{opt}: top-1 {}", m.top1);
        assert!(losses.last().unwrap() < &losses[0], "{opt}: loss did not fall: {losses:?}");
    }
}
