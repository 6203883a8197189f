//! Augmentations against torchvision (tests/reference/make_augment_fixtures.py writes the
//! fixtures) and statistics of the random draws against torchvision's draws or exact values.
//!
//! Tolerance for the ops: max |rust - torchvision| <= 2e-6 on [0, 1] values (f32 rounding of the
//! same formulas evaluated in a different order; one uint8 level is 3.9e-3), and 1e-5 after
//! normalisation (division by std ~0.25 scales errors by 4). Statistical checks use 5 standard
//! errors of the binomial (or uniform) estimate; the draws are seeded, so the tests are exact
//! repeats and the margin only guards against an unlucky seed.

mod data_common;

use data_common::{AugmentFixtures, max_abs_diff};
use serde_json::Value;
use ssl_engine::data::augment::{self, AugmentConfig, JitterParams, ViewParams};
use ssl_engine::rng::Rng;

const TOL: f64 = 2e-6;
const TOL_NORMALISED: f64 = 1e-5;

fn f(v: &Value) -> f32 {
    v.as_f64().expect("number") as f32
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("int") as usize).collect()
}

fn jitter_params(case: &Value) -> Option<JitterParams> {
    if case["order"].is_null() {
        return None;
    }
    let order: Vec<u8> = usizes(&case["order"]).iter().map(|&k| k as u8).collect();
    let factors: Vec<Option<f32>> = case["factors"].as_array().unwrap().iter().map(|v| Some(f(v))).collect();
    Some(JitterParams { order: order.try_into().unwrap(), factors: factors.try_into().unwrap() })
}

/// Runs one fixture case through our ops; returns the output image.
fn run_case(fx: &AugmentFixtures, case: &Value) -> Vec<f32> {
    let (src, h, w) = fx.input(case["input"].as_str().unwrap());
    let mut img: Vec<f32> = src.iter().map(|&v| v as f32 / 255.0).collect();
    let op = case["op"].as_str().unwrap();
    match op {
        "resized_crop" => {
            let b = usizes(&case["box"]);
            let s = usizes(&case["size"]);
            let mut out = vec![f32::NAN; s[0] * s[1] * 3];
            augment::resize_into(&src, h, w, (b[0], b[1], b[2], b[3]), s[0], s[1], case["antialias"].as_bool().unwrap(), false, &mut out);
            return out;
        }
        "hflip" => augment::hflip(&mut img, h, w),
        "brightness" => augment::adjust_brightness(&mut img, f(&case["factor"])),
        "contrast" => augment::adjust_contrast(&mut img, f(&case["factor"])),
        "saturation" => augment::adjust_saturation(&mut img, f(&case["factor"])),
        "hue" => augment::adjust_hue(&mut img, f(&case["factor"])),
        "grayscale" => augment::grayscale(&mut img),
        "blur" => augment::gaussian_blur(&mut img, h, w, case["kernel"].as_u64().unwrap() as usize, f(&case["sigma"])),
        "solarize" => augment::solarize(&mut img, f(&case["threshold"])),
        "normalize" => {
            let m: Vec<f32> = case["mean"].as_array().unwrap().iter().map(f).collect();
            let s: Vec<f32> = case["std"].as_array().unwrap().iter().map(f).collect();
            augment::normalize_in_place(&mut img, m.try_into().unwrap(), s.try_into().unwrap());
        }
        "jitter" => augment::color_jitter(&mut img, &jitter_params(case).unwrap()),
        "pipeline" => {
            assert_eq!(h, w, "the pipeline takes square sources");
            let b = usizes(&case["box"]);
            let out_size = usizes(&case["size"])[0];
            if !case["kernel"].is_null() {
                assert_eq!(case["kernel"].as_u64().unwrap() as usize, augment::blur_kernel_size(out_size));
            }
            let p = ViewParams {
                crop: (b[0], b[1], b[2], b[3]),
                flip: case["flip"].as_bool().unwrap(),
                jitter: jitter_params(case),
                gray: case["gray"].as_bool().unwrap(),
                blur_sigma: case["sigma"].as_f64().map(|s| s as f32),
                solarize: case["solarize"].as_bool().unwrap(),
            };
            let mut out = vec![f32::NAN; out_size * out_size * 3];
            augment::apply_params(&src, h, out_size, &p, augment::CIFAR10_MEAN, augment::CIFAR10_STD, &mut out);
            return out;
        }
        other => panic!("unknown fixture op {other}"),
    }
    img
}

#[test]
fn data_augment_ops_match_torchvision() {
    let fx = AugmentFixtures::load();
    assert!(fx.cases.len() >= 40, "expected the full case list, got {}", fx.cases.len());
    let mut failures = Vec::new();
    for case in &fx.cases {
        let name = case["name"].as_str().unwrap();
        let want = fx.get(&format!("case.{name}"));
        let got = run_case(&fx, case);
        let tol = if matches!(case["op"].as_str(), Some("pipeline" | "normalize")) { TOL_NORMALISED } else { TOL };
        let err = max_abs_diff(&got, &want.data);
        println!("{name:28} max |diff| = {err:.2e} (tol {tol:.0e})");
        if err.is_nan() || err > tol {
            failures.push(format!("{name}: {err:.3e}"));
        }
    }
    assert!(failures.is_empty(), "cases over tolerance: {failures:?}");
}

/// Plain bilinear and anti-aliased bilinear agree exactly when enlarging (documented claim).
#[test]
fn data_augment_antialias_is_plain_bilinear_when_enlarging() {
    let fx = AugmentFixtures::load();
    let (src, h, w) = fx.input("noise");
    for (crop, oh, ow) in [((3, 5, 11, 13), 32, 32), ((0, 0, 20, 24), 20, 40), ((1, 2, 7, 9), 9, 9)] {
        let mut a = vec![0f32; oh * ow * 3];
        let mut b = vec![0f32; oh * ow * 3];
        augment::resize_into(&src, h, w, crop, oh, ow, true, false, &mut a);
        augment::resize_into(&src, h, w, crop, oh, ow, false, false, &mut b);
        let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(err <= 1e-6, "{crop:?} -> {oh}x{ow}: {err}");
    }
}

#[test]
fn data_augment_flip_inside_resize_equals_hflip_after() {
    let fx = AugmentFixtures::load();
    let (src, h, w) = fx.input("noise");
    let (oh, ow) = (17, 23);
    let mut a = vec![0f32; oh * ow * 3];
    let mut b = vec![0f32; oh * ow * 3];
    augment::resize_into(&src, h, w, (2, 3, 15, 19), oh, ow, true, true, &mut a);
    augment::resize_into(&src, h, w, (2, 3, 15, 19), oh, ow, true, false, &mut b);
    augment::hflip(&mut b, oh, ow);
    assert_eq!(a, b);
}

/// The pixels the loader stores for a view equal an independent evaluation of the same params.
#[test]
fn data_augment_is_sample_then_apply() {
    let fx = AugmentFixtures::load();
    let (src, size, _) = fx.input("cifar");
    let cfg = AugmentConfig { blur_p: 0.5, solarize_p: 0.3, ..AugmentConfig::simsiam_cifar() };
    for k in 0..50u64 {
        let rng = Rng::new(3).stream("augment").derive(&[0, k, 0]);
        let mut a = vec![0f32; 24 * 24 * 3];
        augment::augment(&src, size, 24, &cfg, &mut rng.clone(), &mut a);
        let p = augment::sample_params(size, &cfg, &mut rng.clone());
        let mut b = vec![0f32; 24 * 24 * 3];
        augment::apply_params(&src, size, 24, &p, cfg.mean, cfg.std, &mut b);
        assert_eq!(a, b);
        assert!(a.iter().all(|v| v.is_finite()));
        // Every value lies in the normalised image of [0, 1].
        for (k, &v) in a.iter().enumerate() {
            let c = k % 3;
            let lo = (0.0 - cfg.mean[c]) / cfg.std[c] - 1e-5;
            let hi = (1.0 - cfg.mean[c]) / cfg.std[c] + 1e-5;
            assert!(v >= lo && v <= hi, "{v} outside [{lo}, {hi}]");
        }
    }
}

#[test]
fn data_augment_eval_normalize() {
    let fx = AugmentFixtures::load();
    let (src, size, _) = fx.input("cifar");
    let (m, s) = (augment::CIFAR10_MEAN, augment::CIFAR10_STD);
    let mut out = vec![0f32; size * size * 3];
    augment::normalize(&src, size, size, m, s, &mut out);
    for (k, (&o, &x)) in out.iter().zip(&src).enumerate() {
        let want = ((x as f64 / 255.0) - m[k % 3] as f64) / s[k % 3] as f64;
        assert!((o as f64 - want).abs() < 1e-5, "{k}: {o} vs {want}");
    }
    // With a resize: the same as the torchvision-checked resize, then normalisation.
    let mut out = vec![0f32; 16 * 16 * 3];
    augment::normalize(&src, size, 16, m, s, &mut out);
    let mut want = vec![0f32; 16 * 16 * 3];
    augment::resize_into(&src, size, size, (0, 0, size, size), 16, 16, true, false, &mut want);
    augment::normalize_in_place(&mut want, m, s);
    assert_eq!(out, want);
}

#[test]
fn data_augment_blur_kernel_size() {
    assert_eq!(augment::blur_kernel_size(32), 3);
    assert_eq!(augment::blur_kernel_size(224), 23);
    assert_eq!(augment::blur_kernel_size(96), 9);
    assert_eq!(augment::blur_kernel_size(8), 3);
    // Gaussian kernel: symmetric, sums to one, as torchvision's softmax form.
    let k = augment::gaussian_kernel(5, 1.7);
    assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert!((k[0] - k[4]).abs() < 1e-7 && k[2] > k[1] && k[1] > k[0]);
    // A blur wider than a tiny image must not panic.
    let mut tiny = vec![0.5f32; 2 * 2 * 3];
    augment::gaussian_blur(&mut tiny, 2, 2, 23, 2.0);
    assert!(tiny.iter().all(|v| (v - 0.5).abs() < 1e-6));
}

// ---------------------------------------------------------------------------------------------
// Statistics of the random draws

/// |a - b| within `k` standard errors of a difference of two binomial proportions.
fn close_binomial(p_a: f64, n_a: f64, p_b: f64, n_b: f64, k: f64) -> bool {
    let p = (p_a * n_a + p_b * n_b) / (n_a + n_b);
    let se = (p * (1.0 - p) * (1.0 / n_a + 1.0 / n_b)).sqrt();
    (p_a - p_b).abs() <= k * se + 1e-12
}

#[test]
fn data_augment_crop_draws_match_torchvision() {
    let fx = AugmentFixtures::load();
    for config in ["square", "wide"] {
        let par = &fx.get(&format!("crop_stats.{config}.params")).data;
        let (h, w) = (par[0] as usize, par[1] as usize);
        let (scale, ratio) = ((par[2] as f32, par[3] as f32), (par[4] as f32, par[5] as f32));
        let n_t = par[6];
        let n = 100_000usize;
        let (mut hh, mut wh, mut th, mut lh) = (vec![0f64; h + 1], vec![0f64; w + 1], vec![0f64; h + 1], vec![0f64; w + 1]);
        let mut areas = Vec::with_capacity(n);
        let base = Rng::new(11).stream("augment");
        for k in 0..n {
            let (t, l, ch, cw) = augment::sample_crop(h, w, scale, ratio, &mut base.derive(&[k as u64]));
            assert!(ch >= 1 && cw >= 1 && t + ch <= h && l + cw <= w, "crop out of bounds");
            hh[ch] += 1.0;
            wh[cw] += 1.0;
            th[t] += 1.0;
            lh[l] += 1.0;
            areas.push((ch * cw) as f64 / (h * w) as f64);
        }
        for (name, hist) in [("h_hist", &hh), ("w_hist", &wh), ("top_hist", &th), ("left_hist", &lh)] {
            let want = &fx.get(&format!("crop_stats.{config}.{name}")).data;
            for (bin, (&c, &p_t)) in hist.iter().zip(want).enumerate() {
                let p_r = c / n as f64;
                assert!(close_binomial(p_r, n as f64, p_t, n_t, 5.0), "{config} {name}[{bin}]: rust {p_r:.5} vs torchvision {p_t:.5}");
            }
        }
        let mean = areas.iter().sum::<f64>() / n as f64;
        let sd = (areas.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt();
        let want = fx.get(&format!("crop_stats.{config}.area_mean")).data[0];
        let se = sd * (1.0 / n as f64 + 1.0 / n_t).sqrt();
        println!("{config}: area fraction mean {mean:.4} (torchvision {want:.4}, se {se:.1e})");
        assert!((mean - want).abs() <= 5.0 * se, "{config}: area mean {mean} vs {want}");
        // Accepted crops (not the fallback) have their area within the scale range up to rounding
        // of the sides: (sqrt(a r) +- 0.5)(sqrt(a / r) +- 0.5).
        let slack = (scale.1 as f64 * (h * w) as f64).sqrt() * (ratio.1 as f64).sqrt() / (h * w) as f64 * 2.0;
        let inside = areas.iter().filter(|&&a| a >= scale.0 as f64 - slack && a <= scale.1 as f64 + slack).count();
        assert!(inside as f64 >= 0.97 * n as f64, "{config}: only {inside} of {n} areas inside the scale range");
    }
}

#[test]
fn data_augment_draw_rates() {
    let cfg = AugmentConfig { blur_p: 0.5, solarize_p: 0.2, blur_sigma: (0.1, 2.0), ..AugmentConfig::simsiam_cifar() };
    let n = 40_000usize;
    let base = Rng::new(5).stream("augment");
    let (mut flips, mut jits, mut grays, mut blurs, mut sols) = (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut perms = std::collections::HashMap::new();
    let mut sums = [0f64; 4];
    let mut sigma_sum = 0f64;
    for k in 0..n {
        let p = augment::sample_params(32, &cfg, &mut base.derive(&[0, k as u64, 0]));
        flips += p.flip as usize;
        grays += p.gray as usize;
        sols += p.solarize as usize;
        if let Some(s) = p.blur_sigma {
            blurs += 1;
            assert!((0.1..=2.0).contains(&s));
            sigma_sum += s as f64;
        }
        if let Some(j) = p.jitter {
            jits += 1;
            *perms.entry(j.order).or_insert(0usize) += 1;
            for (i, f) in j.factors.iter().enumerate() {
                let f = f.expect("all four jitter ops are on") as f64;
                let (lo, hi) = if i == 3 { (-0.1, 0.1) } else { (0.6, 1.4) };
                assert!(f >= lo && f <= hi, "factor {i} = {f}");
                sums[i] += f;
            }
        }
    }
    let nf = n as f64;
    let check = |what: &str, count: usize, p: f64, trials: f64| {
        let se = (p * (1.0 - p) / trials).sqrt();
        let rate = count as f64 / trials;
        println!("{what}: {rate:.4} (p {p}, se {se:.1e})");
        assert!((rate - p).abs() <= 5.0 * se, "{what} rate {rate} vs {p} (se {se})");
    };
    check("flip", flips, 0.5, nf);
    check("jitter", jits, 0.8, nf);
    check("grayscale", grays, 0.2, nf);
    check("blur", blurs, 0.5, nf);
    check("solarize", sols, 0.2, nf);
    // Jitter order: each of the 24 permutations with probability 1/24.
    assert_eq!(perms.len(), 24);
    for (order, &c) in &perms {
        check(&format!("order {order:?}"), c, 1.0 / 24.0, jits as f64);
    }
    // Factors: uniform on [lo, hi]: mean (lo + hi) / 2, se = (hi - lo) / sqrt(12 n).
    let nj = jits as f64;
    for (i, (mid, width)) in [(1.0, 0.8), (1.0, 0.8), (1.0, 0.8), (0.0, 0.2)].iter().enumerate() {
        let mean = sums[i] / nj;
        let se = width / (12.0 * nj).sqrt();
        assert!((mean - mid).abs() <= 5.0 * se, "jitter factor {i}: mean {mean}");
    }
    let se = 1.9 / (12.0 * blurs as f64).sqrt();
    assert!((sigma_sum / blurs as f64 - 1.05).abs() <= 5.0 * se);

    // Zero probabilities and zero strengths draw nothing.
    let none = AugmentConfig { flip_p: 0.0, jitter_p: 1.0, jitter: [0.4, 0.0, 0.0, 0.0], gray_p: 0.0, ..AugmentConfig::simsiam_cifar() };
    for k in 0..1000u64 {
        let p = augment::sample_params(32, &none, &mut base.derive(&[1, k, 0]));
        assert!(!p.flip && !p.gray && !p.solarize && p.blur_sigma.is_none());
        let j = p.jitter.expect("jitter_p = 1");
        assert!(j.factors[0].is_some() && j.factors[1..].iter().all(Option::is_none));
    }
}

#[test]
fn data_augment_config_validation() {
    assert!(AugmentConfig::simsiam_cifar().validate().is_ok());
    let bad = [
        AugmentConfig { crop_scale: (0.0, 1.0), ..AugmentConfig::simsiam_cifar() },
        AugmentConfig { crop_scale: (0.5, 0.2), ..AugmentConfig::simsiam_cifar() },
        AugmentConfig { crop_ratio: (1.5, 1.0), ..AugmentConfig::simsiam_cifar() },
        AugmentConfig { flip_p: 1.5, ..AugmentConfig::simsiam_cifar() },
        AugmentConfig { gray_p: f32::NAN, ..AugmentConfig::simsiam_cifar() },
        AugmentConfig { jitter: [0.4, 0.4, 0.4, 0.6], ..AugmentConfig::simsiam_cifar() },
        AugmentConfig { jitter: [-0.1, 0.4, 0.4, 0.1], ..AugmentConfig::simsiam_cifar() },
        AugmentConfig { std: [0.2, 0.0, 0.2], ..AugmentConfig::simsiam_cifar() },
        AugmentConfig { blur_p: 0.5, blur_sigma: (0.0, 1.0), ..AugmentConfig::simsiam_cifar() },
    ];
    for cfg in bad {
        let e = cfg.validate().expect_err("invalid config accepted");
        assert!(e.to_string().contains("AugmentConfig"), "{e}");
    }
}

/// The recipe is the config's `[augment]` table itself: the same keys (pairs as two-number
/// arrays), the SimSiam CIFAR recipe for what is left out, its own checks at load, and every
/// shipped config still loads.
#[test]
fn data_augment_recipe_is_the_config_table() {
    use ssl_engine::config::Config;
    assert_eq!(Config::default().augment, AugmentConfig::simsiam_cifar());
    let sets = ["augment.crop_scale=[0.3, 0.9]", "augment.blur_sigma=[0.2, 1.5]", "augment.std=[0.5, 0.25, 0.125]"].map(String::from);
    let cfg = Config::load(None, &sets).expect("overrides of [augment]");
    let want = AugmentConfig { crop_scale: (0.3, 0.9), blur_sigma: (0.2, 1.5), std: [0.5, 0.25, 0.125], ..AugmentConfig::simsiam_cifar() };
    assert_eq!(cfg.augment, want);
    let written: toml::Table = toml::from_str(&cfg.to_toml()).expect("to_toml writes TOML");
    let back: AugmentConfig = written["augment"].clone().try_into().expect("[augment] reads back");
    assert_eq!(back, want);
    for (set, key) in [
        ("augment.crop_scale=[0.0, 1.0]", "augment.crop_scale"),
        ("augment.std=[0.2, 0.0, 0.2]", "augment.mean"),
        ("augment.flip_p=1.5", "augment.flip_p"),
    ] {
        let e = Config::load(None, &[set.to_string()]).expect_err(set);
        assert!(e.to_string().contains(key), "{set}: {e}");
    }
    assert!(Config::load(None, &["augment.crop_scale=[0.2]".to_string()]).is_err(), "a pair needs two numbers");
    assert!(Config::load(None, &["augment.unknown_key=1".to_string()]).is_err(), "unknown keys are refused");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    for entry in std::fs::read_dir(&dir).expect("configs/") {
        let path = entry.expect("configs/ entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(Some(&path), &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}
