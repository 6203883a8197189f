//! Nothing the data side leaves out goes unnamed: WebP and BMP files decode like the PNG of the
//! same image (and are header-checked at list time, streaming too), files with other extensions
//! are recorded in `Dataset::ignored`, every row knows its file (`Dataset::files`, kept by
//! `subset`, written by `embed` as `<stem>_files.txt`), and skipped files are named: by
//! `skipped_report` and in a training run's `<out>/skipped.txt`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use image::{Rgb, RgbImage};
use ssl_engine::backend::cpu::CpuBackend;
use ssl_engine::config::Config;
use ssl_engine::data::{Dataset, LoadOptions, OnCorrupt, load_dataset, skipped_report};

const SIDE: u32 = 16;

/// A deterministic 16x16 picture, different for every `seed`.
fn picture(seed: u32) -> RgbImage {
    RgbImage::from_fn(SIDE, SIDE, |x, y| {
        let v = |k: u32| ((x * 37 + y * 91 + seed * 53 + k * 17).wrapping_mul(2654435761) >> 24) as u8;
        Rgb([v(0), v(1), v(2)])
    })
}

/// `<root>/cat` and `<root>/dog`, each holding the same picture as PNG, WebP (lossless) and BMP,
/// plus a JPEG; `cat` also holds a corrupt JPEG and a notes file, `dog/sub` a README; hidden
/// files lie in both. Returns the rows a load gives, in order.
fn make_folder(root: &Path) -> Vec<PathBuf> {
    let mut rows = Vec::new();
    for (seed, class) in ["cat", "dog"].iter().enumerate() {
        let dir = root.join(class);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let img = picture(seed as u32);
        for name in ["a.png", "b.webp", "c.bmp", "d.jpg"] {
            img.save(dir.join(name)).unwrap();
            rows.push(dir.join(name));
        }
        std::fs::write(dir.join(".hidden.txt"), "hidden: ignored silently").unwrap();
        std::fs::write(dir.join(".e.jpg"), "hidden: ignored silently").unwrap();
    }
    std::fs::write(root.join("cat/e_corrupt.jpg"), b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    std::fs::write(root.join("cat/notes.txt"), "not an image").unwrap();
    std::fs::write(root.join("dog/sub/README.md"), "not an image").unwrap();
    rows
}

fn stored() -> LoadOptions {
    LoadOptions { stored_size: true, ..LoadOptions::default() }
}

#[test]
fn webp_and_bmp_decode_to_the_png_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let rows = make_folder(dir.path());
    for stream in [false, true] {
        let d = load_dataset(dir.path(), &LoadOptions { stream, ..stored() }).unwrap();
        assert_eq!(d.files, rows, "stream {stream}");
        assert_eq!(d.labels, [0, 0, 0, 0, 1, 1, 1, 1]);
        for (c, base) in [(0, 0), (1, 4)] {
            let want = picture(c).into_raw();
            for (i, file) in rows.iter().enumerate().skip(base).take(3) {
                assert_eq!(d.dims_of(i), (SIDE as usize, SIDE as usize));
                assert!(d.pixels(i).unwrap().as_ref() == want.as_slice(), "stream {stream}: {} differs from the PNG", file.display());
            }
        }
    }
    // Resized on load: the same pixels from every lossless format.
    let d = load_dataset(dir.path(), &LoadOptions { size: 8, ..LoadOptions::default() }).unwrap();
    for base in [0, 4] {
        assert_eq!(d.image(base + 1), d.image(base), "webp");
        assert_eq!(d.image(base + 2), d.image(base), "bmp");
    }
}

#[test]
fn other_files_are_recorded_once_and_rows_know_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let rows = make_folder(root);
    let d = load_dataset(root, &stored()).unwrap();
    assert_eq!(d.ignored, [root.join("cat/notes.txt"), root.join("dog/sub/README.md")], "hidden files are not listed");
    assert_eq!(d.skipped.len(), 1);
    assert_eq!(d.skipped[0].0, root.join("cat/e_corrupt.jpg"));
    assert_eq!(d.files, rows);
    assert_eq!(d.row_names(), rows.iter().map(|p| p.display().to_string()).collect::<Vec<_>>());
    // A subset keeps each row's file.
    let sub = d.subset(&[5, 0, 2]);
    assert_eq!(sub.files, [rows[5].clone(), rows[0].clone(), rows[2].clone()]);
    assert_eq!(sub.row_names().len(), 3);
    // Streaming keeps the same files.
    let s = load_dataset(root, &LoadOptions { stream: true, ..stored() }).unwrap();
    assert_eq!((&s.files, &s.ignored, s.skipped.len()), (&rows, &d.ignored, 1));
    assert_eq!(s.subset(&[7]).files, [rows[7].clone()]);

    // Images beside the class folders are left out, and named too; other loose files are not.
    picture(9).save(root.join("stray.png")).unwrap();
    std::fs::write(root.join("LICENSE"), "a dataset's licence").unwrap();
    let d = load_dataset(root, &stored()).unwrap();
    assert_eq!(d.len(), rows.len());
    assert_eq!(d.ignored.len(), 3);
    assert!(d.ignored.contains(&root.join("stray.png")), "{:?}", d.ignored);

    // Unlabelled images (no class folders): other files among them are recorded.
    let flat = tempfile::tempdir().unwrap();
    picture(1).save(flat.path().join("x.webp")).unwrap();
    picture(2).save(flat.path().join("y.bmp")).unwrap();
    std::fs::write(flat.path().join("list.csv"), "x,y").unwrap();
    let d = load_dataset(flat.path(), &stored()).unwrap();
    assert_eq!(d.files, [flat.path().join("x.webp"), flat.path().join("y.bmp")]);
    assert_eq!(d.ignored, [flat.path().join("list.csv")]);
    // A hand-built dataset names its rows by number.
    let hand = Dataset { labels: vec![0, 0], size: 1, images: vec![0; 6], ..Default::default() };
    assert_eq!(hand.row_names(), ["#0", "#1"]);
}

/// A BMP's first bytes (file header and BITMAPINFOHEADER) for a 24-bit `w x h` image.
fn bmp_header(w: i32, h: i32) -> Vec<u8> {
    let mut b = b"BM".to_vec();
    let data = ((w * 24 + 31) / 32 * 4 * h.abs()) as u32;
    b.extend((54 + data).to_le_bytes());
    b.extend([0u8; 4]);
    b.extend(54u32.to_le_bytes());
    b.extend(40u32.to_le_bytes());
    b.extend(w.to_le_bytes());
    b.extend(h.to_le_bytes());
    b.extend(1u16.to_le_bytes());
    b.extend(24u16.to_le_bytes());
    b.extend([0u8; 24]);
    b
}

#[test]
fn webp_and_bmp_headers_are_checked_at_list_time() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    make_folder(root);
    let webp = std::fs::read(root.join("cat/b.webp")).unwrap();
    let bmp = std::fs::read(root.join("cat/c.bmp")).unwrap();
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("dog/x1_truncated.webp", webp[..webp.len() - 10].to_vec(), "truncated"),
        ("dog/x2_truncated.bmp", bmp[..bmp.len() - 40].to_vec(), "truncated"),
        ("dog/x3_huge.bmp", bmp_header(60_000, 60_000), "exceeds"),
        ("dog/x4_header_only.bmp", bmp_header(8, -8), "truncated"),
        ("dog/x5_empty.webp", Vec::new(), "empty"),
        ("dog/x6_gif_inside.bmp", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(), ""),
    ];
    for (name, bytes, _) in &bad {
        std::fs::write(root.join(name), bytes).unwrap();
    }
    // Streaming decodes no pixels: the header checks alone must find every bad file.
    for stream in [true, false] {
        let d = load_dataset(root, &LoadOptions { stream, ..stored() }).unwrap();
        assert_eq!(d.len(), 8, "stream {stream}");
        let mut names: Vec<(String, &str)> =
            d.skipped.iter().map(|(p, r)| (p.strip_prefix(root).unwrap().display().to_string(), r.as_str())).collect();
        names.sort();
        assert_eq!(names.len(), 1 + bad.len(), "stream {stream}: {names:?}");
        assert_eq!(names[0].0, "cat/e_corrupt.jpg");
        for ((got, reason), (name, _, want)) in names[1..].iter().zip(&bad) {
            assert_eq!(got, name);
            assert!(reason.contains(want), "stream {stream}: {name}: {reason}");
            println!("stream {stream}: skipped {name}: {reason}");
        }
    }
    let e = load_dataset(root, &LoadOptions { on_corrupt: OnCorrupt::Fail, stream: true, ..stored() }).unwrap_err().to_string();
    assert!(e.contains("e_corrupt.jpg"), "{e}");
}

#[test]
fn skipped_report_names_the_files_and_writes_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    make_folder(&root);
    std::fs::write(root.join("dog/z_garbage.png"), b"garbage").unwrap();
    let out = dir.path().join("run");
    let flat = dir.path().join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    picture(3).save(flat.join("good.png")).unwrap();
    std::fs::write(flat.join("y.bmp"), b"BM garbage").unwrap();
    std::fs::write(flat.join("z.webp"), b"RIFF\x10\x00\x00\x00WEBPVP8L").unwrap();
    let train = load_dataset(&root, &stored()).unwrap();
    let test = load_dataset(&flat, &stored()).unwrap();
    assert_eq!(test.skipped.len(), 2, "{:?}", test.skipped);
    let line = skipped_report(&[&train, &test], &out).unwrap().expect("files were skipped");
    println!("{line}");
    assert!(line.starts_with("4 unreadable images skipped: cat/e_corrupt.jpg ("), "{line}");
    assert!(line.contains("), dog/z_garbage.png (") && line.contains("), flat/y.bmp ("), "{line}");
    assert!(!line.contains("z.webp") && line.ends_with(&format!(", ...; all 4 listed in {}", out.join("skipped.txt").display())), "{line}");
    let text = std::fs::read_to_string(out.join("skipped.txt")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let full = [root.join("cat/e_corrupt.jpg"), root.join("dog/z_garbage.png"), flat.join("y.bmp"), flat.join("z.webp")];
    for (l, p) in lines.iter().zip(full) {
        let (path, reason) = l.split_once('\t').unwrap();
        assert_eq!(path, p.display().to_string());
        assert!(!reason.is_empty() && !reason.contains('\t'));
    }
    // Nothing skipped: no summary, and the list of an earlier run in the folder is gone.
    let clean = train.subset(&[0, 1]);
    assert_eq!(skipped_report(&[&clean], &out).unwrap(), None);
    assert!(!out.join("skipped.txt").exists());
    assert_eq!(skipped_report(&[&clean], &out).unwrap(), None);
}

fn config(out: &Path, data: &Path, extra: &[&str]) -> Config {
    let mut sets: Vec<String> = vec![
        format!("out={:?}", out.display().to_string()),
        "model=\"resnet18-cifar\"".into(),
        "model_opts.width=4".into(),
        format!("data.path={:?}", data.display().to_string()),
        "data.image_size=16".into(),
        "data.workers=1".into(),
        "batch_size=4".into(),
        "epochs=1".into(),
        "threads=2".into(),
        "simsiam.proj_hidden=16".into(),
        "simsiam.proj_dim=16".into(),
        "simsiam.pred_hidden=8".into(),
        "monitor.log_every=1".into(),
        "monitor.knn_k=3".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    Config::load(None, &sets).unwrap()
}

/// The `shape` of a .npy file's header.
fn npy_shape(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let header = String::from_utf8_lossy(&bytes[10..10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize]).to_string();
    let start = header.find("'shape': (").unwrap() + "'shape': (".len();
    header[start..start + header[start..].find(')').unwrap()].to_string()
}

#[test]
fn embed_writes_the_file_of_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let rows = make_folder(&root);
    let cfg = config(&dir.path().join("run"), &root, &[]);
    let b = CpuBackend::new(2).unwrap();
    let m = ssl_engine::eval::random_backbone(&b, &cfg).unwrap();
    let data = load_dataset(&root, &LoadOptions { size: 16, ..LoadOptions::default() }).unwrap();
    let out = dir.path().join("emb/feats.npy");
    let w = ssl_engine::eval::embed(&m, &data, &cfg, &out).unwrap();
    assert_eq!(w.features, out);
    assert_eq!(w.labels, dir.path().join("emb/feats_labels.npy"));
    assert_eq!(w.files, dir.path().join("emb/feats_files.txt"));
    let text = std::fs::read_to_string(&w.files).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, rows.iter().map(|p| p.display().to_string()).collect::<Vec<_>>());
    assert!(!text.contains("e_corrupt") && !text.contains("notes.txt"));
    assert!(npy_shape(&w.features).starts_with(&format!("{}, ", rows.len())), "{}", npy_shape(&w.features));
    assert_eq!(npy_shape(&w.labels), format!("{},", rows.len()));

    // Binary formats name each row `<file>#<record>`.
    let cifar = dir.path().join("cifar/data_batch_1.bin");
    std::fs::create_dir_all(cifar.parent().unwrap()).unwrap();
    let records: Vec<u8> = (0..3u8).flat_map(|r| std::iter::once(r).chain((0..3072).map(move |i| (i as u8).wrapping_add(r)))).collect();
    std::fs::write(&cifar, records).unwrap();
    let d = load_dataset(&cifar, &LoadOptions { size: 16, ..LoadOptions::default() }).unwrap();
    let want: Vec<String> = (0..3).map(|i| format!("{}#{i}", cifar.display())).collect();
    assert_eq!(d.row_names(), want);
    let w = ssl_engine::eval::embed(&m, &d, &cfg, &dir.path().join("emb/cifar.npy")).unwrap();
    assert_eq!(std::fs::read_to_string(w.files).unwrap(), want.iter().map(|l| format!("{l}\n")).collect::<String>());
}

#[test]
fn a_training_run_lists_its_skipped_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    make_folder(&root);
    let out = dir.path().join("run");
    // The folder is the test set too: its skipped file is listed once per set.
    let cfg = config(&out, &root, &[&format!("data.test_path={:?}", root.display().to_string())]);
    let b = CpuBackend::new(cfg.threads).unwrap().with_precision(cfg.precision);
    let s = ssl_engine::train::train(&b, &cfg, None, &AtomicBool::new(false), false).unwrap();
    assert_eq!(s.skipped_images, 2);
    let text = std::fs::read_to_string(out.join("skipped.txt")).unwrap();
    let corrupt = root.join("cat/e_corrupt.jpg").display().to_string();
    assert_eq!(text.lines().count(), 2, "{text}");
    for line in text.lines() {
        assert!(line.starts_with(&format!("{corrupt}\t")), "{line}");
    }
}
