//! Dataset readers: the committed demo image folder, CIFAR binary and IDX files the tests write,
//! Fashion-MNIST when installed, and every kind of bad input (each error must name the file).

mod data_common;

use std::io::Write;
use std::path::{Path, PathBuf};

use data_common::{AugmentFixtures, demo};
use ssl_engine::data::{Dataset, LoadOptions, OnCorrupt, Split, load_dataset};

const CLASSES: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

fn opts(split: Split) -> LoadOptions {
    LoadOptions { split, ..LoadOptions::default() }
}

fn err_of(path: &Path, o: &LoadOptions) -> String {
    match load_dataset(path, o) {
        Ok(d) => panic!("{} loaded ({} images) but should fail", path.display(), d.len()),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Image folder

#[test]
fn data_imagefolder_demo_counts_labels_order() {
    let train = load_dataset(&demo(), &opts(Split::Train)).unwrap();
    assert_eq!(train.classes, CLASSES);
    assert_eq!(train.len(), 5000);
    assert_eq!(train.size, 32);
    assert_eq!(train.images.len(), 5000 * 32 * 32 * 3);
    assert!(train.skipped.is_empty());
    for (i, &l) in train.labels.iter().enumerate() {
        assert_eq!(l as usize, i / 500, "sample {i}");
    }
    let test = load_dataset(&demo(), &opts(Split::Test)).unwrap();
    assert_eq!(test.len(), 1000);
    assert_eq!(test.classes, CLASSES);
    // The split folder itself is an image folder too.
    let direct = load_dataset(&demo().join("test"), &opts(Split::Train)).unwrap();
    assert_eq!(direct.labels, test.labels);
    assert_eq!(direct.images, test.images);
    // limit_per_class keeps the first files of every class.
    let small = load_dataset(&demo(), &LoadOptions { limit_per_class: Some(20), ..opts(Split::Train) }).unwrap();
    assert_eq!(small.len(), 200);
    for c in 0..10 {
        assert_eq!(small.labels[c * 20..(c + 1) * 20], [c as u32; 20]);
        assert_eq!(small.image(c * 20), train.image(c * 500), "first image of class {c}");
    }
}

/// Our JPEG decoder against Pillow (libjpeg-turbo) on the first test image of every class.
/// Decoders differ in IDCT and chroma-upsampling rounding: over all 1,000 demo test images zune-jpeg
/// and libjpeg-turbo differ by at most 4 levels, 0.30 on average (measured once); we allow 5 levels
/// per value and a mean absolute difference of 0.5 levels per image.
#[test]
fn data_imagefolder_decode_matches_pillow() {
    let fx = AugmentFixtures::load();
    let test = load_dataset(&demo(), &opts(Split::Test)).unwrap();
    for (c, name) in CLASSES.iter().enumerate() {
        let want = &fx.get(&format!("decode.{name}")).data;
        let got = test.image(c * 100);
        let diffs: Vec<f64> = got.iter().zip(want).map(|(&a, &b)| (a as f64 - b).abs()).collect();
        let max = diffs.iter().cloned().fold(0.0, f64::max);
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        println!("{name}: max |diff| {max}, mean {mean:.3}");
        assert!(max <= 5.0 && mean <= 0.5, "{name}: max {max}, mean {mean}");
    }
}

/// Images at their stored size (tests/reference/stored.safetensors, nonsquare.jpg): the 45x60
/// JPEG keeps its shape (decoded as Pillow does, to JPEG rounding), `max_side` caps its longer
/// side as torchvision's Resize([30, 40]) would, and on Pillow's pixels the evaluation transform
/// (Resize(int(s / 0.875)) + CenterCrop(s) when larger than s, else Resize(s) + CenterCrop(s))
/// and a fixed RandomResizedCrop box equal torchvision's.
#[test]
fn data_stored_size_non_square_matches_torchvision() {
    use ssl_engine::data::augment;
    let fx = AugmentFixtures::load_file("stored.safetensors");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("ship")).unwrap();
    std::fs::copy(data_common::repo().join("tests/reference/nonsquare.jpg"), dir.path().join("ship/a.jpg")).unwrap();
    std::fs::copy(demo().join("test/cat/0000.jpg"), dir.path().join("ship/b.jpg")).unwrap();
    let o = LoadOptions { stored_size: true, ..LoadOptions::default() };
    let d = load_dataset(dir.path(), &o).unwrap();
    assert_eq!((d.size, d.dims.clone()), (0, vec![(45, 60), (32, 32)]), "every image at its stored size");
    let want = &fx.get("decode").data;
    let max = d.image(0).iter().zip(want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
    assert!(max <= 5.0, "JPEG decode: max |diff| {max}");
    assert_eq!(d.image(1), load_dataset(&demo(), &opts(Split::Test)).unwrap().image(300), "a 32x32 image stays as it was");

    let capped = load_dataset(dir.path(), &LoadOptions { max_side: Some(40), ..o.clone() }).unwrap();
    assert_eq!(capped.dims, vec![(30, 40), (32, 32)]);
    // Our decode against Pillow's moves a pixel by at most 5; the resize adds at most 1 of rounding.
    let cap_max = capped.image(0).iter().zip(&fx.get("cap40").data).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
    assert!(cap_max <= 6.0, "cap 40: max |diff| {cap_max}");

    // The transforms on Pillow's pixels: exact up to float rounding.
    let src: Vec<u8> = want.iter().map(|&v| v as u8).collect();
    let (zero, one) = ([0.0f32; 3], [1.0f32; 3]);
    for size in [32usize, 64] {
        let mut out = vec![0f32; size * size * 3];
        augment::eval_view(&src, (45, 60), size, zero, one, &mut out);
        let e = out.iter().zip(&fx.get(&format!("eval.{size}")).data).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
        println!("eval {size}: max |diff| {e:.2e}");
        assert!(e < 1e-5, "eval {size}: max |diff| {e}");
    }
    let b: Vec<usize> = fx.get("crop_box").data.iter().map(|&v| v as usize).collect();
    let p = augment::ViewParams { crop: (b[0], b[1], b[2], b[3]), flip: false, jitter: None, gray: false, blur_sigma: None, solarize: false };
    let mut out = vec![0f32; 32 * 32 * 3];
    augment::apply_params_hw(&src, (45, 60), 32, &p, zero, one, &mut out);
    let e = out.iter().zip(&fx.get("crop").data).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
    println!("crop: max |diff| {e:.2e}");
    assert!(e < 1e-5, "crop: max |diff| {e}");
}

/// Resize on load: torchvision Resize(size) + CenterCrop(size), through a lossless PNG.
#[test]
fn data_imagefolder_resize_on_load_matches_torchvision() {
    let fx = AugmentFixtures::load();
    for inp in ["noise", "tall"] {
        let (px, h, w) = fx.input(inp);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("only")).unwrap();
        image::save_buffer(dir.path().join("only/img.png"), &px, w as u32, h as u32, image::ExtendedColorType::Rgb8).unwrap();
        for size in [7usize, 9, 12, 30] {
            let d = load_dataset(dir.path(), &LoadOptions { size, ..LoadOptions::default() }).unwrap();
            let want = &fx.get(&format!("resize.{inp}.{size}")).data;
            let got = d.image(0);
            let off = got.iter().zip(want).filter(|&(&a, &b)| a as f64 != b).count();
            let max = got.iter().zip(want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
            assert!(max <= 1.0 && off * 100 <= got.len(), "{inp} {h}x{w} -> {size}: {off} values differ, max {max}");
        }
    }
}

/// The demo data is the documented subset of the full export (skipped when that is absent).
#[test]
fn data_imagefolder_demo_is_prefix_of_shared_export() {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar10-jpg");
    if !full.is_dir() {
        data_common::skip::skip(data_common::skip::Need::SharedData, format!("{} is not present", full.display()));
        return;
    }
    let want = load_dataset(&full, &LoadOptions { limit_per_class: Some(100), ..opts(Split::Test) }).unwrap();
    let got = load_dataset(&demo(), &opts(Split::Test)).unwrap();
    assert_eq!(got.labels, want.labels);
    assert_eq!(got.images, want.images);
}

/// Copies `n` demo JPEGs into `<root>/<class>/`.
fn copy_demo(root: &Path, class: &str, n: usize) -> Vec<PathBuf> {
    let dst = root.join(class);
    std::fs::create_dir_all(&dst).unwrap();
    let src = demo().join("test").join("cat");
    (0..n)
        .map(|k| {
            let name = format!("{k:04}.jpg");
            std::fs::copy(src.join(&name), dst.join(&name)).unwrap();
            dst.join(name)
        })
        .collect()
}

/// A PNG whose header claims `w x h` pixels (valid CRC, no pixel data).
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&w.to_be_bytes());
    chunk.extend_from_slice(&h.to_be_bytes());
    chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
    push_chunk(&mut out, &chunk);
    // An IDAT with a few bytes that are not valid compressed data, then IEND.
    push_chunk(&mut out, b"IDAT\x78\x9c\x01\x02");
    push_chunk(&mut out, b"IEND");
    out
}

fn push_chunk(out: &mut Vec<u8>, chunk: &[u8]) {
    out.extend_from_slice(&(chunk.len() as u32 - 4).to_be_bytes());
    out.extend_from_slice(chunk);
    let mut crc = flate2::Crc::new();
    crc.update(chunk);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

#[test]
fn data_imagefolder_corrupt_files_skipped_or_fail() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let good_a = copy_demo(root, "a", 3);
    copy_demo(root, "b", 2);
    let jpg = std::fs::read(&good_a[0]).unwrap();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("a/0100_truncated_half.jpg", jpg[..jpg.len() / 2].to_vec()),
        ("a/0101_no_eoi.jpg", jpg[..jpg.len() - 2].to_vec()),
        ("a/0102_garbage.jpg", (0..700u32).map(|i| (i.wrapping_mul(2654435761u32) >> 24) as u8).collect()),
        ("a/0103_empty.jpeg", Vec::new()),
        ("b/0104_broken.png", b"\x89PNG\r\n\x1a\nnot really a png at all".to_vec()),
        ("b/0105_huge.png", png_header_only(100_000, 100_000)),
        ("b/0106_header_only.png", png_header_only(8, 8)),
    ];
    for (name, bytes) in &bad {
        std::fs::write(root.join(name), bytes).unwrap();
    }
    std::fs::write(root.join("a/notes.txt"), "ignored: not an image extension").unwrap();
    std::fs::write(root.join("b/.hidden.jpg"), "ignored: hidden").unwrap();

    let d = load_dataset(root, &LoadOptions::default()).unwrap();
    assert_eq!(d.len(), 5);
    assert_eq!(d.labels, [0, 0, 0, 1, 1]);
    assert_eq!(d.classes, ["a", "b"]);
    assert_eq!(d.skipped.len(), bad.len(), "{:?}", d.skipped);
    for ((path, reason), (name, _)) in d.skipped.iter().zip(&bad) {
        assert_eq!(path, &root.join(name));
        assert!(!reason.is_empty());
        println!("skipped {name}: {reason}");
    }
    assert!(d.skipped[5].1.contains("exceeds"), "{}", d.skipped[5].1);
    // The other-extension file is recorded (once), the hidden one is not; rows know their files.
    assert_eq!(d.ignored, [root.join("a/notes.txt")]);
    assert_eq!(d.files[..3], good_a[..]);
    assert!(d.files[3].starts_with(root.join("b")), "{:?}", d.files);

    let e = err_of(root, &LoadOptions { on_corrupt: OnCorrupt::Fail, ..LoadOptions::default() });
    assert!(e.contains(&root.join(bad[0].0).display().to_string()), "{e}");

    // The pixel cap applies to good files too.
    let e = err_of(root, &LoadOptions { on_corrupt: OnCorrupt::Fail, max_pixels: 1000, ..LoadOptions::default() });
    assert!(e.contains("0000.jpg") && e.contains("exceeds"), "{e}");
    // Everything skipped: an error, not an empty dataset.
    let e = err_of(root, &LoadOptions { max_pixels: 1000, ..LoadOptions::default() });
    assert!(e.contains("no image could be decoded"), "{e}");
}

#[test]
fn data_imagefolder_bad_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Missing path.
    let missing = root.join("does-not-exist");
    let e = err_of(&missing, &LoadOptions::default());
    assert!(e.contains("does-not-exist"), "{e}");
    // Empty directory.
    let e = err_of(root, &LoadOptions::default());
    assert!(e.contains(&root.display().to_string()) && e.contains("empty"), "{e}");
    // Images but no class folders: one class, "unlabeled" (pretraining data); a non-image file
    // alone is still an empty dataset.
    std::fs::write(root.join("notes.txt"), "not an image").unwrap();
    assert!(err_of(root, &LoadOptions::default()).contains("empty"));
    std::fs::copy(demo().join("test/cat/0000.jpg"), root.join("loose.jpg")).unwrap();
    std::fs::copy(demo().join("test/dog/0000.jpg"), root.join("loose2.jpg")).unwrap();
    let d = load_dataset(root, &LoadOptions::default()).unwrap();
    assert_eq!((d.classes.clone(), d.labels.clone()), (vec!["unlabeled".to_string()], vec![0, 0]));
    std::fs::remove_file(root.join("loose2.jpg")).unwrap();
    // A class folder with no images.
    copy_demo(root, "cat", 2);
    std::fs::create_dir(root.join("dog")).unwrap();
    std::fs::write(root.join("dog/readme.txt"), "no images here").unwrap();
    let e = err_of(root, &LoadOptions::default());
    assert!(e.contains(&root.join("dog").display().to_string()) && e.contains("no images"), "{e}");
    // Images in a nested folder count for their class.
    std::fs::create_dir(root.join("dog/nested")).unwrap();
    std::fs::copy(demo().join("test/dog/0000.jpg"), root.join("dog/nested/x.jpg")).unwrap();
    let d = load_dataset(root, &LoadOptions::default()).unwrap();
    assert_eq!(d.labels, [0, 0, 1]);
    // An unrecognised single file.
    let e = err_of(&root.join("loose.jpg"), &LoadOptions::default());
    assert!(e.contains("loose.jpg") && e.contains("unrecognised"), "{e}");
    // Bad options.
    assert!(err_of(root, &LoadOptions { size: 0, ..LoadOptions::default() }).contains("size"));
    assert!(err_of(root, &LoadOptions { limit_per_class: Some(0), ..LoadOptions::default() }).contains("limit_per_class"));
}

// ---------------------------------------------------------------------------------------------
// STL-10 binary

/// The byte of channel c, row y, column x of STL-10 image k: a formula the writer and the
/// checks share.
fn stl_px(k: usize, c: usize, y: usize, x: usize) -> u8 {
    ((k * 31 + c * 71 + y * 3 + x * 7) % 251) as u8
}

/// n images as the STL-10 README lays them out: channel after channel, each column-major.
fn write_stl(path: &Path, n: usize) {
    let mut bytes = Vec::with_capacity(n * 96 * 96 * 3);
    for k in 0..n {
        for c in 0..3 {
            for x in 0..96 {
                for y in 0..96 {
                    bytes.push(stl_px(k, c, y, x));
                }
            }
        }
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn data_stl10_binary_labelled_and_unlabelled() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_stl(&root.join("train_X.bin"), 3);
    std::fs::write(root.join("train_y.bin"), [3u8, 1, 10]).unwrap();
    write_stl(&root.join("test_X.bin"), 2);
    std::fs::write(root.join("test_y.bin"), [2u8, 2]).unwrap();
    write_stl(&root.join("unlabeled_X.bin"), 4);
    let names: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
    std::fs::write(root.join("class_names.txt"), names.join("\n")).unwrap();

    let o = LoadOptions { size: 96, ..opts(Split::Train) };
    let train = load_dataset(root, &o).unwrap();
    assert_eq!(train.labels, [2, 0, 9], "labels 1..=10 become 0..=9");
    assert_eq!(train.classes, names);
    for (k, (y, x)) in [(0, (0, 0)), (1, (5, 77)), (2, (95, 1)), (0, (40, 95))] {
        for c in 0..3 {
            assert_eq!(train.image(k)[(y * 96 + x) * 3 + c], stl_px(k, c, y, x), "image {k} ({y}, {x}) channel {c}");
        }
    }
    let test = load_dataset(root, &LoadOptions { size: 96, ..opts(Split::Test) }).unwrap();
    assert_eq!(test.labels, [1, 1]);
    assert_eq!(test.row_names(), ["#0", "#1"].map(|i| format!("{}{i}", root.join("test_X.bin").display())));
    let unlabeled = load_dataset(&root.join("unlabeled_X.bin"), &o).unwrap();
    assert_eq!((unlabeled.len(), unlabeled.classes.clone()), (4, vec!["unlabeled".to_string()]));
    assert_eq!(unlabeled.image(3)[(10 * 96 + 20) * 3 + 2], stl_px(3, 2, 10, 20));
    // Resized on load like every reader.
    assert_eq!(load_dataset(root, &LoadOptions { size: 32, ..opts(Split::Train) }).unwrap().images.len(), 3 * 32 * 32 * 3);

    // Bad files name themselves.
    std::fs::write(root.join("train_y.bin"), [3u8, 11, 10]).unwrap();
    let e = err_of(root, &o);
    assert!(e.contains("train_y.bin") && e.contains("label 11"), "{e}");
    std::fs::write(root.join("train_y.bin"), [3u8, 1]).unwrap();
    let e = err_of(root, &o);
    assert!(e.contains("train_y.bin") && e.contains("2 labels for 3 images"), "{e}");
    std::fs::write(root.join("test_X.bin"), [0u8; 1000]).unwrap();
    let e = err_of(root, &LoadOptions { size: 96, ..opts(Split::Test) });
    assert!(e.contains("test_X.bin") && e.contains("not a positive multiple"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// CIFAR binary

/// The planar (R, G, B) value of pixel (y, x) channel c of record r in batch b: a formula both
/// the writer and the checks use.
fn cifar_px(b: usize, r: usize, c: usize, y: usize, x: usize) -> u8 {
    ((b * 31 + r * 7 + c * 85 + y * 3 + x * 5) % 256) as u8
}

fn cifar_label(b: usize, r: usize, classes: usize) -> usize {
    (b * 3 + r) % classes
}

/// Writes one CIFAR file of `n` records; `label_bytes` 1 (CIFAR-10) or 2 (CIFAR-100).
fn write_cifar(path: &Path, b: usize, n: usize, label_bytes: usize, classes: usize) {
    let mut out = Vec::new();
    for r in 0..n {
        let l = cifar_label(b, r, classes);
        if label_bytes == 2 {
            out.push((l / 5) as u8); // coarse
        }
        out.push(l as u8);
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    out.push(cifar_px(b, r, c, y, x));
                }
            }
        }
    }
    std::fs::write(path, out).unwrap();
}

fn check_cifar(d: &Dataset, batches: &[(usize, usize)], classes: usize) {
    let mut i = 0;
    for &(b, n) in batches {
        for r in 0..n {
            assert_eq!(d.labels[i] as usize, cifar_label(b, r, classes), "label of record {r} of batch {b}");
            let img = d.image(i);
            for y in 0..32 {
                for x in 0..32 {
                    for c in 0..3 {
                        assert_eq!(img[(y * 32 + x) * 3 + c], cifar_px(b, r, c, y, x));
                    }
                }
            }
            i += 1;
        }
    }
    assert_eq!(i, d.len());
}

#[test]
fn data_cifar10_binary() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&root).unwrap();
    for b in 1..=5 {
        write_cifar(&root.join(format!("data_batch_{b}.bin")), b, 4 + b, 1, 10);
    }
    write_cifar(&root.join("test_batch.bin"), 0, 6, 1, 10);
    let d = load_dataset(&root, &opts(Split::Train)).unwrap();
    check_cifar(&d, &[(1, 5), (2, 6), (3, 7), (4, 8), (5, 9)], 10);
    assert_eq!(d.classes, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    let t = load_dataset(&root, &opts(Split::Test)).unwrap();
    check_cifar(&t, &[(0, 6)], 10);
    // Class names from the release's meta file.
    std::fs::write(root.join("batches.meta.txt"), CLASSES.join("\n") + "\n\n").unwrap();
    assert_eq!(load_dataset(&root, &opts(Split::Test)).unwrap().classes, CLASSES);
    // One file.
    let one = load_dataset(&root.join("data_batch_2.bin"), &opts(Split::Test)).unwrap();
    check_cifar(&one, &[(2, 6)], 10);
    // Resize on load.
    let small = load_dataset(&root, &LoadOptions { size: 16, ..opts(Split::Test) }).unwrap();
    assert_eq!((small.size, small.len(), small.images.len()), (16, 6, 6 * 16 * 16 * 3));
    // limit_per_class
    let lim = load_dataset(&root, &LoadOptions { limit_per_class: Some(1), ..opts(Split::Train) }).unwrap();
    // Every row names its record: `<file>#<index in that file>`.
    let named = |f: &str, r: usize| root.join(format!("{f}#{r}"));
    assert_eq!(d.files[..6], [(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 0)].map(|(b, r)| named(&format!("data_batch_{b}.bin"), r)));
    assert!(lim.files.iter().all(|f| f.to_string_lossy().contains(".bin#")), "{:?}", lim.files);
    let mut seen = lim.labels.clone();
    seen.sort();
    seen.dedup();
    assert_eq!(lim.len(), seen.len());
    assert_eq!(lim.len(), 10);

    // Bad input: a length that is not a whole number of records.
    let mut f = std::fs::OpenOptions::new().append(true).open(root.join("data_batch_3.bin")).unwrap();
    f.write_all(&[1, 2, 3]).unwrap();
    drop(f);
    let e = err_of(&root, &opts(Split::Train));
    assert!(e.contains("data_batch_3.bin") && e.contains("multiple"), "{e}");
    // A missing batch.
    std::fs::remove_file(root.join("data_batch_3.bin")).unwrap();
    let e = err_of(&root, &opts(Split::Train));
    assert!(e.contains("data_batch_3.bin") && e.contains("missing"), "{e}");
    // A label out of range.
    let mut bytes = std::fs::read(root.join("test_batch.bin")).unwrap();
    bytes[3073 * 2] = 10;
    std::fs::write(root.join("test_batch.bin"), &bytes).unwrap();
    let e = err_of(&root, &opts(Split::Test));
    assert!(e.contains("test_batch.bin") && e.contains("record 2"), "{e}");
    // An empty file.
    std::fs::write(root.join("test_batch.bin"), b"").unwrap();
    assert!(err_of(&root, &opts(Split::Test)).contains("test_batch.bin"));
    // A .bin file of neither record size.
    let odd = dir.path().join("odd.bin");
    std::fs::write(&odd, vec![0u8; 3073 * 2 + 1]).unwrap();
    let e = err_of(&odd, &opts(Split::Train));
    assert!(e.contains("odd.bin") && e.contains("multiple"), "{e}");
}

#[test]
fn data_cifar100_binary() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_cifar(&root.join("train.bin"), 1, 9, 2, 100);
    write_cifar(&root.join("test.bin"), 2, 4, 2, 100);
    let d = load_dataset(root, &opts(Split::Train)).unwrap();
    check_cifar(&d, &[(1, 9)], 100);
    assert_eq!(d.classes.len(), 100);
    let t = load_dataset(root, &opts(Split::Test)).unwrap();
    check_cifar(&t, &[(2, 4)], 100);
    // A renamed single file is recognised from its record size.
    std::fs::copy(root.join("test.bin"), root.join("mine.bin")).unwrap();
    check_cifar(&load_dataset(&root.join("mine.bin"), &opts(Split::Train)).unwrap(), &[(2, 4)], 100);
    // Fine label out of range.
    let mut bytes = std::fs::read(root.join("test.bin")).unwrap();
    bytes[1] = 100;
    std::fs::write(root.join("test.bin"), &bytes).unwrap();
    let e = err_of(root, &opts(Split::Test));
    assert!(e.contains("test.bin") && e.contains("record 0"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// IDX

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx_px(k: usize, y: usize, x: usize) -> u8 {
    ((k * 13 + y * 28 + x) % 251) as u8
}

/// Writes `<prefix>-images-idx3-ubyte[.gz]` and its labels: n 28x28 images, labels k % 10.
fn write_idx(dir: &Path, prefix: &str, n: usize, gz: bool) {
    let px: Vec<u8> = (0..n).flat_map(|k| (0..28).flat_map(move |y| (0..28).map(move |x| idx_px(k, y, x)))).collect();
    let labels: Vec<u8> = (0..n).map(|k| (k % 10) as u8).collect();
    let (img, lab) = (idx_bytes(&[n as u32, 28, 28], &px), idx_bytes(&[n as u32], &labels));
    let ext = if gz { ".gz" } else { "" };
    let (img, lab) = if gz { (gzip(&img), gzip(&lab)) } else { (img, lab) };
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), img).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), lab).unwrap();
}

fn check_idx(d: &Dataset, n: usize) {
    assert_eq!(d.len(), n);
    assert_eq!(d.size, 28);
    assert_eq!(d.classes, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    for k in 0..n {
        assert_eq!(d.labels[k] as usize, k % 10);
        let img = d.image(k);
        for y in 0..28 {
            for x in 0..28 {
                assert_eq!(img[(y * 28 + x) * 3..(y * 28 + x) * 3 + 3], [idx_px(k, y, x); 3]);
            }
        }
    }
}

#[test]
fn data_idx_gzip_and_plain() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_idx(root, "train", 23, true);
    write_idx(root, "t10k", 11, false);
    let o = |split| LoadOptions { size: 28, split, ..LoadOptions::default() };
    check_idx(&load_dataset(root, &o(Split::Train)).unwrap(), 23);
    check_idx(&load_dataset(root, &o(Split::Test)).unwrap(), 11);
    check_idx(&load_dataset(&root.join("train-images-idx3-ubyte.gz"), &o(Split::Test)).unwrap(), 23);
    let big = load_dataset(root, &LoadOptions { size: 32, ..o(Split::Train) }).unwrap();
    assert_eq!((big.size, big.len()), (32, 23));
    let lim = load_dataset(root, &LoadOptions { limit_per_class: Some(2), ..o(Split::Train) }).unwrap();
    assert_eq!(lim.len(), 20);
    // Labels are k % 10: the first two of each class are records 0..20, in order.
    let images = root.join("train-images-idx3-ubyte.gz");
    assert_eq!(lim.files, (0..20).map(|k| PathBuf::from(format!("{}#{k}", images.display()))).collect::<Vec<_>>());
}

#[test]
fn data_idx_bad_headers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let o = LoadOptions { size: 28, ..LoadOptions::default() };
    let img = root.join("train-images-idx3-ubyte");
    let lab = root.join("train-labels-idx1-ubyte");
    let labels = idx_bytes(&[4], &[0, 1, 2, 3]);
    std::fs::write(&lab, &labels).unwrap();

    // Header claims more than the file holds (plain): caught from the file length.
    std::fs::write(&img, idx_bytes(&[4, 28, 28], &vec![0u8; 4 * 28 * 28 - 1])).unwrap();
    let e = err_of(&img, &o);
    assert!(e.contains("train-images-idx3-ubyte") && e.contains("needs"), "{e}");
    // Trailing bytes.
    std::fs::write(&img, idx_bytes(&[4, 28, 28], &vec![0u8; 4 * 28 * 28 + 9])).unwrap();
    assert!(err_of(&img, &o).contains("needs"));
    // A gzip whose header claims 4 billion images: refused before allocating.
    let gz = root.join("huge-images-idx3-ubyte.gz");
    std::fs::write(&gz, gzip(&idx_bytes(&[u32::MAX, 1000, 1000], &[0u8; 100]))).unwrap();
    std::fs::write(root.join("huge-labels-idx1-ubyte.gz"), gzip(&labels)).unwrap();
    let e = err_of(&gz, &o);
    assert!(e.contains("huge-images-idx3-ubyte.gz") && e.contains("more than"), "{e}");
    // A gzip with less data than its header says.
    let short = root.join("short-images-idx3-ubyte.gz");
    std::fs::write(&short, gzip(&idx_bytes(&[4, 28, 28], &vec![7u8; 3 * 28 * 28]))).unwrap();
    std::fs::write(root.join("short-labels-idx1-ubyte.gz"), gzip(&labels)).unwrap();
    let e = err_of(&short, &o);
    assert!(e.contains("short-images") && e.contains("truncated"), "{e}");
    // A gzip cut in the middle of the stream.
    let cut = root.join("cut-images-idx3-ubyte.gz");
    let full = gzip(&idx_bytes(&[4, 28, 28], &(0..4 * 28 * 28).map(|i| (i * 7 % 256) as u8).collect::<Vec<_>>()));
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    std::fs::write(root.join("cut-labels-idx1-ubyte.gz"), gzip(&labels)).unwrap();
    assert!(err_of(&cut, &o).contains("cut-images"));
    // Label count mismatch.
    std::fs::write(&img, idx_bytes(&[5, 28, 28], &vec![0u8; 5 * 28 * 28])).unwrap();
    let e = err_of(&img, &o);
    assert!(e.contains("train-labels-idx1-ubyte") && e.contains("do not match"), "{e}");
    // Unsupported data type (0x0D float).
    let mut f32s = idx_bytes(&[4, 28, 28], &vec![0u8; 4 * 28 * 28]);
    f32s[2] = 0x0D;
    std::fs::write(&img, f32s).unwrap();
    assert!(err_of(&img, &o).contains("0x0d"));
    // Not an IDX file at all, a header shorter than 4 bytes, wrong rank.
    std::fs::write(&img, b"PK\x03\x04 zip").unwrap();
    assert!(err_of(&img, &o).contains("not an IDX file"));
    std::fs::write(&img, b"\0\0").unwrap();
    assert!(err_of(&img, &o).contains("train-images-idx3-ubyte"));
    std::fs::write(&img, idx_bytes(&[4, 784], &vec![0u8; 4 * 784])).unwrap();
    assert!(err_of(&img, &o).contains("[n, rows, cols]"));
    // Missing labels file.
    std::fs::remove_file(&lab).unwrap();
    std::fs::write(&img, idx_bytes(&[4, 28, 28], &vec![0u8; 4 * 28 * 28])).unwrap();
    let e = err_of(&img, &o);
    assert!(e.contains("train-labels-idx1-ubyte") && e.contains("missing"), "{e}");
    // A directory without the split's files.
    let only_test = tempfile::tempdir().unwrap();
    write_idx(only_test.path(), "t10k", 3, false);
    let e = err_of(only_test.path(), &o);
    assert!(e.contains("train-images-idx3-ubyte"), "{e}");
}

/// The real Fashion-MNIST (Debian package dataset-fashion-mnist), when installed.
#[test]
fn data_idx_fashion_mnist() {
    let root = Path::new("/usr/share/datasets/fashion-mnist");
    if !root.join("train-images-idx3-ubyte.gz").is_file() {
        data_common::skip::skip(data_common::skip::Need::FashionMnist, "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)");
        return;
    }
    let o = |split| LoadOptions { size: 28, split, ..LoadOptions::default() };
    for (split, n) in [(Split::Train, 60_000usize), (Split::Test, 10_000)] {
        let d = load_dataset(root, &o(split)).unwrap();
        assert_eq!(d.len(), n);
        assert_eq!(d.classes.len(), 10);
        let mut counts = [0usize; 10];
        for &l in &d.labels {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [n / 10; 10], "Fashion-MNIST is balanced");
        // Grayscale copied to three channels; not all black.
        assert!(d.images.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        let mean = d.images.iter().map(|&v| v as f64).sum::<f64>() / d.images.len() as f64;
        println!("{split:?}: {n} images, mean pixel {mean:.2}");
        assert!((mean - 72.94).abs() < 1.0, "mean pixel {mean} (Fashion-MNIST's is 72.94 / 73.15)");
    }
}

/// Mutated JPEG and PNG files (bit flips, byte overwrites, truncation) give Ok or Err, never a
/// panic or a runaway allocation.
#[test]
fn data_imagefolder_mutated_files_never_panic() {
    use ssl_engine::data::imagefolder::decode_bytes;
    let jpg = std::fs::read(demo().join("test/cat/0000.jpg")).unwrap();
    let mut png = Vec::new();
    let px: Vec<u8> = (0..20 * 20 * 3).map(|i| (i * 7 % 256) as u8).collect();
    image::write_buffer_with_format(
        &mut std::io::Cursor::new(&mut png),
        &px,
        20,
        20,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .unwrap();
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut err) = (0, 0);
    for base in [&jpg, &png] {
        for _ in 0..300 {
            let mut b = base.clone();
            match next() % 3 {
                0 => {
                    let i = (next() % b.len() as u64) as usize;
                    b[i] ^= 1 << (next() % 8);
                }
                1 => {
                    for _ in 0..4 {
                        let i = (next() % b.len() as u64) as usize;
                        b[i] = next() as u8;
                    }
                }
                _ => b.truncate((next() % b.len() as u64) as usize),
            }
            match decode_bytes(&b, 32, 1 << 20) {
                Ok(img) => {
                    assert_eq!(img.len(), 32 * 32 * 3);
                    ok += 1;
                }
                Err(_) => err += 1,
            }
        }
    }
    println!("mutated files: {ok} decoded, {err} rejected");
    assert!(err > 0);
}
