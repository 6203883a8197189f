//! The loader: determinism across worker counts, exact mid-epoch start, batch contents
//! recomputed independently, eval batches, error cases, and the throughput measurement.

mod data_common;

use std::sync::Arc;

use ssl_engine::data::augment::{self, AugmentConfig};
use ssl_engine::data::{Batch, Dataset, LoadOptions, Loader, Split, ViewSpec, epoch_order, eval_batches, load_dataset, measure_throughput};
use ssl_engine::rng::Rng;

/// A synthetic dataset: n images of `size x size`, pixel values from a hash of (image, position).
fn synthetic(n: usize, size: usize) -> Arc<Dataset> {
    let images = (0..n * size * size * 3).map(|k| ((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8).collect();
    Arc::new(Dataset {
        images,
        labels: (0..n).map(|i| (i % 7) as u32).collect(),
        classes: (0..7).map(|c| c.to_string()).collect(),
        size,
        ..Default::default()
    })
}

fn two_views() -> Vec<AugmentConfig> {
    vec![AugmentConfig::simsiam_cifar(), AugmentConfig { blur_p: 0.5, solarize_p: 0.2, ..AugmentConfig::simsiam_cifar() }]
}

fn collect(loader: &Loader, epoch: usize, start: usize) -> Vec<Batch> {
    loader.epoch(epoch, start).map(Result::unwrap).collect()
}

#[test]
fn data_loader_same_batches_with_1_and_4_workers() {
    let data = synthetic(100, 32);
    let one = Loader::new(data.clone(), two_views(), 32, 8, 42, 1, 1).unwrap();
    let four = Loader::new(data.clone(), two_views(), 32, 8, 42, 4, 3).unwrap();
    assert_eq!(one.batches_per_epoch(), 12); // drop_last: 100 / 8
    for epoch in [0, 3] {
        let a = collect(&one, epoch, 0);
        let b = collect(&four, epoch, 0);
        assert_eq!(a.len(), 12);
        assert!(a == b, "epoch {epoch}: batches differ between 1 and 4 workers");
        for (k, batch) in a.iter().enumerate() {
            assert_eq!((batch.epoch, batch.step), (epoch, k));
        }
    }
    // A different seed changes the order and the pixels.
    let other = Loader::new(data, two_views(), 32, 8, 43, 2, 2).unwrap();
    assert_ne!(collect(&other, 0, 0)[0].indices, collect(&one, 0, 0)[0].indices);
}

#[test]
fn data_loader_start_mid_epoch_equals_skipping() {
    let data = synthetic(90, 16);
    let loader = Loader::new(data, two_views(), 16, 7, 9, 3, 4).unwrap();
    let full = collect(&loader, 2, 0);
    for k in [0, 1, 5, 12] {
        let resumed = collect(&loader, 2, k);
        assert!(resumed[..] == full[k..], "start at {k}");
    }
    assert!(collect(&loader, 2, 13).is_empty());
    assert!(collect(&loader, 2, 1000).is_empty());
    assert_eq!(loader.batch(2, 4).map(Result::unwrap).as_ref(), Some(&full[4]));
    assert!(loader.batch(2, 13).is_none());
}

/// Every view of every sample equals `augment` with the documented stream, recomputed here; with
/// a size per view (multi-crop: one large view and two small ones of another recipe).
#[test]
fn data_loader_batch_contents() {
    let data = synthetic(50, 32);
    let recipes = two_views();
    let specs = vec![
        ViewSpec { augment: recipes[0].clone(), size: 24 },
        ViewSpec { augment: recipes[1].clone(), size: 12 },
        ViewSpec { augment: recipes[1].clone(), size: 12 },
    ];
    let (seed, bs) = (7u64, 10usize);
    let loader = Loader::with_views(data.clone(), specs.clone(), bs, seed, 2, 2).unwrap();
    let epoch = 1;
    let order = epoch_order(data.len(), seed, epoch);
    for batch in loader.epoch(epoch, 0) {
        let batch = batch.unwrap();
        assert_eq!(batch.indices, order[batch.step * bs..(batch.step + 1) * bs]);
        assert_eq!(batch.labels, batch.indices.iter().map(|&i| data.labels[i]).collect::<Vec<_>>());
        assert_eq!(batch.views.len(), 3);
        for (v, (view, spec)) in batch.views.iter().zip(&specs).enumerate() {
            let per = spec.size * spec.size * 3;
            assert_eq!(view.len(), bs * per);
            for (b, &i) in batch.indices.iter().enumerate() {
                let mut rng = Rng::new(seed).stream("augment").derive(&[epoch as u64, i as u64, v as u64]);
                let mut want = vec![0f32; per];
                augment::augment(data.image(i), data.size, spec.size, &spec.augment, &mut rng, &mut want);
                assert!(view[b * per..(b + 1) * per] == want[..], "epoch {epoch} sample {i} view {v}");
            }
        }
        assert_ne!(batch.views[1], batch.views[2], "two views of one sample should differ");
    }
    // Uniform views through `new` are the same views as `with_views` at one size.
    let uniform = Loader::new(data.clone(), recipes.clone(), 24, bs, seed, 2, 2).unwrap();
    let same = Loader::with_views(data, recipes.iter().map(|r| ViewSpec { augment: r.clone(), size: 24 }).collect(), bs, seed, 1, 1).unwrap();
    let one = |l: &Loader| l.batch(1, 2).unwrap().unwrap();
    assert!(one(&uniform) == one(&same));
    assert!(one(&uniform).views[0] == one(&loader).views[0], "view 0 does not depend on the other views");
}

#[test]
fn data_loader_epoch_order() {
    let n = 1000;
    let a = epoch_order(n, 1, 0);
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..n).collect::<Vec<_>>());
    assert_eq!(a, epoch_order(n, 1, 0));
    assert_ne!(a, epoch_order(n, 1, 1));
    assert_ne!(a, epoch_order(n, 2, 0));
    assert!(epoch_order(0, 1, 0).is_empty());
    // Uniformity: the position of item 0 over many epochs, and of item k in one epoch, are
    // uniform on 0..n; check the mean position within 5 standard errors.
    let m = 4000;
    let mean = (0..m).map(|e| epoch_order(10, 3, e).iter().position(|&x| x == 0).unwrap() as f64).sum::<f64>() / m as f64;
    let se = (99.0f64 / 12.0 / m as f64).sqrt(); // variance of a uniform on 0..9: (10^2 - 1) / 12
    assert!((mean - 4.5).abs() < 5.0 * se, "mean position {mean}");
}

#[test]
fn data_loader_early_drop_and_prefetch_bounds() {
    let data = synthetic(200, 16);
    let loader = Loader::new(data, two_views(), 16, 4, 1, 4, 2).unwrap();
    // Taking two batches and dropping the iterator stops and joins the workers.
    let first: Vec<Batch> = loader.epoch(0, 0).take(2).map(Result::unwrap).collect();
    assert_eq!(first.len(), 2);
    let it = loader.epoch(0, 0);
    assert_eq!(it.size_hint(), (50, Some(50)));
    drop(it);
    // Consuming slowly still gives every batch in order.
    let mut steps = Vec::new();
    for b in loader.epoch(0, 0) {
        std::thread::sleep(std::time::Duration::from_millis(1));
        steps.push(b.unwrap().step);
    }
    assert_eq!(steps, (0..50).collect::<Vec<_>>());
}

#[test]
fn data_loader_rejects_bad_arguments() {
    let data = synthetic(10, 8);
    let ok = || two_views();
    let cases: Vec<(&str, Result<Loader, ssl_engine::Error>)> = vec![
        ("batch > n", Loader::new(data.clone(), ok(), 8, 11, 0, 1, 1)),
        ("batch 0", Loader::new(data.clone(), ok(), 8, 0, 0, 1, 1)),
        ("workers 0", Loader::new(data.clone(), ok(), 8, 2, 0, 0, 1)),
        ("prefetch 0", Loader::new(data.clone(), ok(), 8, 2, 0, 1, 0)),
        ("out 0", Loader::new(data.clone(), ok(), 0, 2, 0, 1, 1)),
        ("no views", Loader::new(data.clone(), vec![], 8, 2, 0, 1, 1)),
        ("bad config", Loader::new(data.clone(), vec![AugmentConfig { flip_p: 2.0, ..AugmentConfig::simsiam_cifar() }], 8, 2, 0, 1, 1)),
    ];
    for (what, r) in cases {
        match r {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => println!("{what}: {e}"),
        }
    }
    let mut broken = (*data).clone();
    broken.images.pop();
    assert!(Loader::new(Arc::new(broken), ok(), 8, 2, 0, 1, 1).is_err());
}

#[test]
fn data_loader_eval_batches() {
    let data = synthetic(23, 32);
    let (m, s) = (augment::CIFAR10_MEAN, augment::CIFAR10_STD);
    let batches: Vec<(Vec<f32>, Vec<u32>)> = eval_batches(&data, 32, 10, m, s).map(Result::unwrap).collect();
    assert_eq!(batches.iter().map(|b| b.1.len()).collect::<Vec<_>>(), [10, 10, 3]);
    let all: Vec<f32> = batches.iter().flat_map(|b| b.0.iter().copied()).collect();
    let labels: Vec<u32> = batches.iter().flat_map(|b| b.1.iter().copied()).collect();
    assert_eq!(labels, data.labels);
    for (k, (&got, &px)) in all.iter().zip(&data.images).enumerate() {
        let want = (px as f32 / 255.0 - m[k % 3]) / s[k % 3];
        assert!((got - want).abs() < 1e-6);
    }
    // Resized: 32 -> 16.
    let small: Vec<(Vec<f32>, Vec<u32>)> = eval_batches(&data, 16, 100, m, s).map(Result::unwrap).collect();
    assert_eq!(small.len(), 1);
    assert_eq!(small[0].0.len(), 23 * 16 * 16 * 3);
}

/// Loader throughput on the demo data, 32x32 SimSiam views (printed; the number depends on the
/// machine, so only sanity is asserted).
#[test]
fn data_loader_throughput() {
    let data = Arc::new(load_dataset(&data_common::demo(), &LoadOptions { split: Split::Train, ..LoadOptions::default() }).unwrap());
    let cfg = AugmentConfig::simsiam_cifar();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for workers in [1, cores.min(4)] {
        let loader = Loader::new(data.clone(), vec![cfg.clone(), cfg.clone()], 32, 256, 0, workers, 2 * workers).unwrap();
        let t = measure_throughput(&loader, 20).unwrap();
        println!("loader throughput: {workers} worker(s): {:.0} images/s, {:.0} views/s", t.images_per_s, t.views_per_s);
        assert!(t.images_per_s > 0.0 && t.views_per_s == 2.0 * t.images_per_s && t.batches == 20);
        assert!(measure_throughput(&loader, 0).is_err());
    }
}

/// Writes `n` JPEGs of varied, non-square sizes into two class folders under a fresh temp folder:
/// smooth gradients plus a hash pattern, so they neither compress to nothing nor decode trivially.
fn jpeg_folder(n: usize, side: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for k in 0..n {
        let class = dir.path().join(["a", "b"][k % 2]);
        std::fs::create_dir_all(&class).unwrap();
        let (w, h) = (side + 7 * (k % 5) as u32, side * 3 / 4 + 5 * (k % 3) as u32);
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let noise = ((x as u64 * 31 + y as u64 * 17 + k as u64 * 7).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59) as u8;
            image::Rgb([(x * 255 / w) as u8 ^ noise, (y * 255 / h) as u8, ((x + y + k as u32) % 256) as u8])
        });
        img.save(class.join(format!("{k:04}.jpg"))).unwrap();
    }
    dir
}

/// `data.cache = "none"`: the same dimensions, labels, training batches (from any start) and
/// evaluation batches as the images decoded once into memory; at stored sizes and resized on load.
#[test]
fn streaming_dataset_gives_the_same_batches_as_the_cached_one() {
    let dir = jpeg_folder(24, 48);
    for stored_size in [true, false] {
        let opts = LoadOptions { size: 24, stored_size, max_side: Some(50), ..LoadOptions::default() };
        let ram = Arc::new(load_dataset(dir.path(), &opts).unwrap());
        let streamed = Arc::new(load_dataset(dir.path(), &LoadOptions { stream: true, ..opts.clone() }).unwrap());
        assert!(streamed.images.is_empty() && streamed.stream.is_some() && streamed.files.len() == 24, "streaming holds no pixels");
        assert_eq!((&streamed.labels, &streamed.dims, streamed.size), (&ram.labels, &ram.dims, ram.size));
        assert_eq!(streamed.dims.is_empty(), !stored_size, "stored sizes vary, so they are listed");
        for i in [0, 7, 23] {
            assert_eq!(streamed.pixels(i).unwrap(), ram.pixels(i).unwrap(), "image {i}, stored_size {stored_size}");
        }
        let views = two_views();
        let a = Loader::new(ram.clone(), views.clone(), 20, 5, 3, 2, 2).unwrap();
        let b = Loader::new(streamed.clone(), views, 20, 5, 3, 2, 3).unwrap();
        for (epoch, start) in [(0, 0), (1, 2)] {
            assert!(collect(&a, epoch, start) == collect(&b, epoch, start), "epoch {epoch} from batch {start}");
        }
        let (m, s) = (augment::CIFAR10_MEAN, augment::CIFAR10_STD);
        let eval = |d: &Dataset| eval_batches(d, 20, 7, m, s).map(Result::unwrap).collect::<Vec<_>>();
        assert!(eval(&ram) == eval(&streamed), "evaluation batches");
        let sub = [5, 2, 19];
        assert_eq!(streamed.subset(&sub).pixels(1).unwrap(), ram.subset(&sub).pixels(1).unwrap());
    }
}

/// A streaming load checks every header: a truncated JPEG is skipped (or fails the load) as on a
/// cached load. A file spoiled after listing stops the batch that needs it with an error naming it.
#[test]
fn streaming_dataset_checks_headers_and_names_a_file_spoiled_later() {
    let dir = jpeg_folder(8, 40);
    let cut = dir.path().join("a/0002.jpg");
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap(); // header intact, end marker gone
    let opts = LoadOptions { size: 16, stored_size: true, stream: true, ..LoadOptions::default() };
    let d = Arc::new(load_dataset(dir.path(), &opts).unwrap());
    let ram = load_dataset(dir.path(), &LoadOptions { stream: false, ..opts.clone() }).unwrap();
    assert_eq!(d.len(), 7);
    assert_eq!(d.skipped.len(), 1);
    assert_eq!((&d.skipped[0].0, &d.skipped[0].1), (&ram.skipped[0].0, &ram.skipped[0].1));
    assert!(d.skipped[0].1.contains("truncated"), "{}", d.skipped[0].1);
    let strict = load_dataset(dir.path(), &LoadOptions { on_corrupt: ssl_engine::data::OnCorrupt::Fail, ..opts.clone() });
    assert!(strict.unwrap_err().to_string().contains("0002.jpg"));

    // Every image of the epoch is needed by batch 0 (batch = all 7): spoil one after listing.
    let spoiled = dir.path().join("b/0005.jpg");
    std::fs::write(&spoiled, b"not a jpeg any more").unwrap();
    let loader = Loader::new(d.clone(), two_views(), 16, 7, 1, 2, 2).unwrap();
    let items: Vec<_> = loader.epoch(0, 0).collect();
    assert_eq!(items.len(), 1, "the epoch ends at the error");
    let err = items.into_iter().next().unwrap().unwrap_err().to_string();
    assert!(err.contains("0005.jpg"), "{err}");
    let (m, s) = (augment::CIFAR10_MEAN, augment::CIFAR10_STD);
    let err = eval_batches(&d, 16, 4, m, s).find_map(Result::err).expect("an evaluation error");
    assert!(err.to_string().contains("0005.jpg"), "{err}");
}

/// Peak memory under a cap: `bench loader` over 48 images of about 1000x750 (108 MB decoded).
/// Held in memory, the process peaks above the decoded size (so the cap below would catch a
/// loader that kept the pixels); streamed, it stays under 80 MiB.
#[test]
fn streaming_loader_peak_memory_stays_bounded() {
    let dir = jpeg_folder(48, 1000);
    let decoded: usize = 48 * 1000 * 750 * 3;
    let peak = |cache: &str| -> f64 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ssl-engine"))
            .args(["bench", "loader", "--data"])
            .arg(dir.path())
            .args(["--cache", cache, "--image-size", "64", "--batch", "8", "--batches", "8", "--workers", "2", "--recipe", "crop"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        println!("{}", text.trim());
        let mib = text.split("peak memory ").nth(1).and_then(|t| t.split(' ').next()).and_then(|v| v.parse::<f64>().ok());
        mib.unwrap_or_else(|| panic!("no peak memory in: {text}"))
    };
    const CAP_MIB: f64 = 80.0;
    let ram = peak("ram");
    assert!(ram > decoded as f64 / (1 << 20) as f64, "held in memory: {ram} MiB is less than the decoded images");
    let streamed = peak("none");
    assert!(streamed < CAP_MIB, "streaming peaked at {streamed} MiB, over the {CAP_MIB} MiB cap");
}
