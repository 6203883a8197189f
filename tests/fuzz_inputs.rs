//! Fuzzing of every reader of outside bytes, for a fixed time each (SSL_ENGINE_FUZZ_SECS, default
//! 8 s per target in CI): the checkpoint / weight-file loader, the image decoder (JPEG, PNG), the
//! CIFAR binary and IDX readers, and the TOML config with `--set`. Inputs are valid seeds mutated
//! by a seeded generator (bit flips, interesting bytes and integers, truncation, splicing); every
//! input must give a value or an error, never a panic. Then crafted cases: each must give an
//! error naming the problem, quickly and without allocating what the header claims.
//!
//! (`cargo fuzz` needs a nightly toolchain, which this project's machines do not have; this is a
//! mutation fuzzer without coverage feedback, run by the ordinary test harness.)

mod common;

use common::{repo, tmp_dir};

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use ssl_engine::checkpoint::WeightFile;
use ssl_engine::data::{LoadOptions, cifar, idx, imagefolder};
use ssl_engine::rng::Rng;

fn budget() -> Duration {
    Duration::from_secs_f64(std::env::var("SSL_ENGINE_FUZZ_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(8.0))
}

/// One mutation of `seed`.
fn mutate(seed: &[u8], rng: &mut Rng, other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let n = v.len().max(1) as u64;
        match rng.below(7) {
            0 => {
                // Flip a bit, more often near the header.
                let i = if rng.below(2) == 0 { rng.below(n.min(256)) } else { rng.below(n) } as usize;
                if i < v.len() {
                    v[i] ^= 1 << rng.below(8);
                }
            }
            1 => {
                let i = rng.below(n) as usize;
                if i < v.len() {
                    v[i] = [0u8, 0xff, 0x7f, 0x80, b'{', b'"', b'9'][rng.below(7) as usize];
                }
            }
            2 => {
                // A large little- or big-endian integer over 4 or 8 bytes (lengths, counts).
                let i = rng.below(n.min(512)) as usize;
                let big: [u8; 8] = [u64::MAX, 1 << 40, u32::MAX as u64, 0x7fff_ffff, 1 << 31][rng.below(5) as usize].to_le_bytes();
                let w = if rng.below(2) == 0 { 4 } else { 8 };
                for k in 0..w {
                    if i + k < v.len() {
                        v[i + k] = if rng.below(2) == 0 { big[k] } else { big[w - 1 - k] };
                    }
                }
            }
            3 => v.truncate(rng.below(n) as usize),
            4 => {
                // Splice in a piece of another input.
                if !other.is_empty() {
                    let a = rng.below(other.len() as u64) as usize;
                    let len = (rng.below(64) as usize).min(other.len() - a);
                    let at = rng.below(n) as usize;
                    let at = at.min(v.len());
                    v.splice(at..at, other[a..a + len].iter().copied());
                }
            }
            5 => {
                let i = rng.below(n) as usize;
                let len = rng.below(32) as usize;
                if i < v.len() {
                    let end = (i + len).min(v.len());
                    v.drain(i..end);
                }
            }
            _ => {
                let i = rng.below(n) as usize;
                if i < v.len() {
                    v.insert(i, rng.below(256) as u8);
                }
            }
        }
    }
    v
}

/// Runs `target` on mutations of `seeds` for the time budget; returns (executions, errors).
fn fuzz(name: &str, seeds: &[Vec<u8>], mut target: impl FnMut(&[u8]) -> bool) -> (u64, u64) {
    let mut rng = Rng::new(0x5eed ^ name.len() as u64);
    let t0 = Instant::now();
    let (mut execs, mut errors, mut panics) = (0u64, 0u64, Vec::new());
    while t0.elapsed() < budget() {
        let s = &seeds[rng.below(seeds.len() as u64) as usize];
        let o = &seeds[rng.below(seeds.len() as u64) as usize];
        let input = mutate(s, &mut rng, o);
        match catch_unwind(AssertUnwindSafe(|| target(&input))) {
            Ok(ok) => errors += u64::from(!ok),
            Err(_) => panics.push(input),
        }
        execs += 1;
    }
    println!(
        "fuzz {name}: {execs} executions in {:.1} s ({:.0}/s), {errors} rejected with an error, {} panics",
        t0.elapsed().as_secs_f64(),
        execs as f64 / t0.elapsed().as_secs_f64(),
        panics.len()
    );
    if let Some(p) = panics.first() {
        let f = std::env::temp_dir().join(format!("ssl-engine-fuzz-{name}.bin"));
        let _ = std::fs::write(&f, p);
        panic!("{name}: {} inputs panicked; the first is saved to {}", panics.len(), f.display());
    }
    assert!(execs > 20, "{name}: too few executions ({execs})");
    (execs, errors)
}

/// A small real checkpoint, made by training the tiny model for a step.
fn checkpoint_seed(name: &str) -> Vec<u8> {
    // Each caller its own run folder: the tests run in parallel, and a run never shares one.
    let out = tmp_dir(&format!("fuzz-ckpt-seed-{name}"));
    let a =
        common::cli::tiny_args(&out, &repo("data/cifar10-demo/train"), &["data.limit_per_class=1", "batch_size=8", "model_opts.width=2"]);
    let (c, e) = common::cli::ssl(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(c, 0, "{e}");
    std::fs::read(out.join("last.safetensors")).unwrap()
}

#[test]
fn fuzz_checkpoint_and_weight_file_loader() {
    let seed = checkpoint_seed("fuzz");
    let dir = tmp_dir("fuzz-ckpt");
    let path = dir.join("x.safetensors");
    fuzz("checkpoint", &[seed], |bytes| {
        std::fs::write(&path, bytes).unwrap();
        match WeightFile::read(&path) {
            Ok(wf) => {
                let _ = wf.state();
                let _ = wf.infer_backbone();
                true
            }
            Err(e) => {
                assert!(e.to_string().contains("x.safetensors"), "error must name the file: {e}");
                false
            }
        }
    });
}

#[test]
fn fuzz_image_decoder() {
    let jpg = std::fs::read(repo("data/cifar10-demo/train/cat/0000.jpg")).unwrap();
    // A PNG seed, written by the image crate from the JPEG's pixels.
    let img = image::load_from_memory(&jpg).unwrap();
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    fuzz("image", &[jpg, png], |bytes| imagefolder::decode_bytes(bytes, 16, 1 << 20).is_ok());
}

/// A CIFAR-10 test batch of 20 records (label byte + 3072 pixel bytes).
fn cifar_seed() -> Vec<u8> {
    let mut rng = Rng::new(3);
    (0..20).flat_map(|i| std::iter::once((i % 10) as u8).chain((0..3072).map(|_| rng.below(256) as u8)).collect::<Vec<u8>>()).collect()
}

#[test]
fn fuzz_cifar_binary_reader() {
    let dir = tmp_dir("fuzz-cifar");
    let path = dir.join("test_batch.bin");
    let opts = LoadOptions { size: 8, ..LoadOptions::default() };
    fuzz("cifar", &[cifar_seed()], |bytes| {
        std::fs::write(&path, bytes).unwrap();
        cifar::load_file(&path, &opts).is_ok()
    });
}

/// An IDX image file (3 images of 4x4) and its gzip.
fn idx_seeds() -> Vec<Vec<u8>> {
    let mut v = vec![0u8, 0, 0x08, 3];
    for d in [3u32, 4, 4] {
        v.extend(d.to_be_bytes());
    }
    v.extend((0..48).map(|i| i as u8));
    let mut gz = Vec::new();
    {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::default());
        e.write_all(&v).unwrap();
        e.finish().unwrap();
    }
    vec![v, gz]
}

#[test]
fn fuzz_idx_reader() {
    let dir = tmp_dir("fuzz-idx");
    let path = dir.join("x-idx3-ubyte");
    fuzz("idx", &idx_seeds(), |bytes| {
        std::fs::write(&path, bytes).unwrap();
        idx::read_idx(&path).is_ok()
    });
}

#[test]
fn fuzz_config_toml_and_set() {
    let recipe = std::fs::read(repo("configs/demo-cpu.toml")).unwrap();
    let sets = b"epochs=3\nbatch_size=\"many\"\ndata.image_size=64\nsimsiam.proj_dim=7\noptim.base_lr=1e400\nnope.x=1\n".to_vec();
    let dir = tmp_dir("fuzz-cfg");
    let path = dir.join("r.toml");
    fuzz("config", &[recipe, sets], |bytes| {
        // The first half is the recipe file, the second a list of --set lines.
        let (file, rest) = bytes.split_at(bytes.len() / 2);
        std::fs::write(&path, file).unwrap();
        let overrides: Vec<String> = String::from_utf8_lossy(rest).lines().take(8).map(str::to_string).collect();
        ssl_engine::config::Config::load(Some(&path), &overrides).is_ok()
    });
}

/// Peak resident memory of this process, in MiB.
fn peak_rss_mib() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u.ru_maxrss as u64 / 1024
    }
}

fn expect_err(what: &str, r: ssl_engine::Result<()>, names: &[&str], t0: Instant) {
    let e = r.expect_err(what).to_string();
    for n in names {
        assert!(e.contains(n), "{what}: error {e:?} should say {n:?}");
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "{what}: took {:?}", t0.elapsed());
    println!("{what}: {e}");
}

#[test]
fn crafted_inputs_are_named_errors_with_bounded_memory() {
    let dir = tmp_dir("crafted");
    let rss0 = peak_rss_mib();
    let ck = |name: &str, bytes: Vec<u8>| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        WeightFile::read(&p).map(drop)
    };
    // A safetensors header that claims 2^60 bytes of JSON.
    let mut huge = (1u64 << 60).to_le_bytes().to_vec();
    huge.extend(b"{}");
    expect_err("huge header", ck("huge.safetensors", huge), &["huge.safetensors"], Instant::now());
    // Two tensors over the same bytes.
    let hdr = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut overlap = (hdr.len() as u64).to_le_bytes().to_vec();
    overlap.extend(hdr);
    overlap.extend([0u8; 8]);
    expect_err(
        "overlapping offsets",
        ck("overlap.safetensors", overlap),
        &["overlap.safetensors", "not a valid safetensors"],
        Instant::now(),
    );
    // A tensor that claims a billion elements in a file of a few bytes.
    let hdr = br#"{"a":{"dtype":"F32","shape":[1000000000],"data_offsets":[0,4000000000]}}"#;
    let mut count = (hdr.len() as u64).to_le_bytes().to_vec();
    count.extend(hdr);
    count.extend([0u8; 16]);
    expect_err("count larger than the file", ck("count.safetensors", count), &["count.safetensors"], Instant::now());
    // A truncated checkpoint.
    let seed = checkpoint_seed("truncated");
    expect_err("truncated checkpoint", ck("trunc.safetensors", seed[..seed.len() / 2].to_vec()), &["trunc.safetensors"], Instant::now());

    // A decompression bomb: a PNG that declares 100,000 x 100,000 pixels.
    let mut bomb = Vec::new();
    image::RgbImage::new(8, 8).write_to(&mut std::io::Cursor::new(&mut bomb), image::ImageFormat::Png).unwrap();
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    // The IHDR chunk's CRC (over its type and data), so the decoder reads the header as valid.
    let mut crc = flate2::Crc::new();
    crc.update(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    let t0 = Instant::now();
    let e = imagefolder::decode_bytes(&bomb, 32, 89_478_485).unwrap_err();
    assert!(e.contains("pixels"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    println!("decompression bomb: {e}");

    // IDX and CIFAR files whose headers claim more than the file holds.
    let mut idxf = vec![0u8, 0, 0x08, 3];
    for d in [60_000u32, 28, 28] {
        idxf.extend(d.to_be_bytes());
    }
    idxf.extend([0u8; 100]);
    let p = dir.join("big-idx3-ubyte");
    std::fs::write(&p, &idxf).unwrap();
    expect_err("IDX count larger than the file", idx::read_idx(&p).map(drop), &["big-idx3-ubyte", "needs"], Instant::now());
    let p = dir.join("test_batch.bin");
    std::fs::write(&p, vec![3u8; 3073 * 2 + 100]).unwrap();
    expect_err(
        "CIFAR file of a partial record",
        cifar::load_file(&p, &LoadOptions::default()).map(drop),
        &["test_batch.bin"],
        Instant::now(),
    );

    let grown = peak_rss_mib().saturating_sub(rss0);
    println!("peak memory grew by {grown} MiB over the crafted cases");
    assert!(grown < 200, "crafted inputs made the process grow by {grown} MiB");
}
