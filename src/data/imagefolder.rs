//! ImageFolder: `<root>/<class>/**/*.{jpg,jpeg,png,webp,bmp}`, decoded in parallel into a `Dataset`.
//!
//! Order follows torchvision's `ImageFolder`: classes are the sorted folder names; within a class,
//! a folder's files (sorted by name) come before its subfolders (sorted). Hidden entries (".*") are
//! ignored silently. Files with other extensions inside the class folders (or in a folder of
//! unlabelled images), and images lying beside the class folders, are left out but not silently:
//! they are recorded in `Dataset::ignored` and named in one `note:` line on stderr per load. A
//! class folder without any image is an error, as in torchvision. `Dataset::files` holds the file
//! of every row. When `<root>` holds `train` and `test` (or `val`) folders whose entries are class
//! folders, `LoadOptions::split` chooses one.
//!
//! Decoding is defensive: the file is read whole, its dimensions are read from the header and
//! checked against `max_pixels` before any pixel buffer exists, the decoder runs under
//! `image::Limits`, a JPEG must end with its EOI marker (a truncated file is reported, not
//! silently grey-filled), and a panic inside a decoder becomes a per-file error.
//!
//! Streaming (`LoadOptions::stream`) runs the same header checks on every file but decodes no
//! pixels: a file that fails them is skipped (or fails the load) exactly as on a cached load.

use std::io::{BufRead, BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{Dataset, LoadOptions, OnCorrupt, Split, Stream, file_err, fit_to_size, keep_first_per_class};
use crate::error::Result;

/// The file extensions (any case) read as images.
pub const EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "bmp"];

/// How many ignored files a `note:` line names.
const NOTE_NAMES: usize = 5;

fn is_image(path: &Path) -> bool {
    path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).is_some_and(|e| EXTENSIONS.contains(&e.as_str()))
}

fn hidden(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// The sorted, non-hidden entries of a directory, split into (files, directories).
fn list_dir(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let rd = std::fs::read_dir(dir).map_err(|e| file_err(dir, e.to_string()))?;
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| file_err(dir, e.to_string()))?;
        let path = entry.path();
        if hidden(&path) {
            continue;
        }
        // Follow symlinks, as torchvision does.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => dirs.push(path),
            Ok(m) if m.is_file() => files.push(path),
            _ => {}
        }
    }
    files.sort();
    dirs.sort();
    Ok((files, dirs))
}

/// The images under `dir` (files before subfolders, each sorted); files with other extensions go
/// to `others`.
fn collect_images(dir: &Path, depth: usize, out: &mut Vec<PathBuf>, others: &mut Vec<PathBuf>) -> Result<()> {
    if depth > 32 {
        return Err(file_err(dir, "folders nested more than 32 deep (a symlink loop?)"));
    }
    let (files, dirs) = list_dir(dir)?;
    let (images, rest): (Vec<_>, Vec<_>) = files.into_iter().partition(|p| is_image(p));
    out.extend(images);
    others.extend(rest);
    for d in dirs {
        collect_images(&d, depth + 1, out, others)?;
    }
    Ok(())
}

/// `root`-relative names of the first few `paths`, ", "-separated, with "..." when there are more.
fn some_names(root: &Path, paths: &[PathBuf]) -> String {
    let mut s: Vec<String> = paths.iter().take(NOTE_NAMES).map(|p| p.strip_prefix(root).unwrap_or(p).display().to_string()).collect();
    if paths.len() > NOTE_NAMES {
        s.push("...".into());
    }
    s.join(", ")
}

/// The one stderr line of a load that left files out (none when it left none out).
fn note_ignored(root: &Path, not_images: &[PathBuf], outside: &[PathBuf]) {
    if !not_images.is_empty() {
        let n = not_images.len();
        eprintln!(
            "note: ignored {n} {} ({}) in {}: {}",
            if n == 1 { "file that is not an image" } else { "files that are not images" },
            EXTENSIONS.join(", "),
            root.display(),
            some_names(root, not_images)
        );
    }
    if !outside.is_empty() {
        let n = outside.len();
        eprintln!(
            "note: ignored {n} image{} beside the class folders of {} (an image folder's images go in <class>/ folders): {}",
            if n == 1 { "" } else { "s" },
            root.display(),
            some_names(root, outside)
        );
    }
}

/// Picks `<root>/train` or `<root>/test` (or `val`) when the root is a split folder.
fn split_root(root: &Path, split: Split) -> Result<PathBuf> {
    let (_, dirs) = list_dir(root)?;
    let has = |name: &str| dirs.iter().find(|d| super::file_name(d) == name).cloned();
    let holds_dirs = |d: &PathBuf| list_dir(d).map(|(_, sub)| !sub.is_empty()).unwrap_or(false);
    if let Some(train) = has("train").filter(holds_dirs) {
        let test = has("test").or_else(|| has("val")).filter(holds_dirs);
        if let Some(test) = test {
            return Ok(match split {
                Split::Train => train,
                Split::Test => test,
            });
        }
    }
    Ok(root.to_path_buf())
}

/// How a folder's files become a dataset's pixels: at their stored size (the longer side capped
/// at `max_side`), or fitted to `size x size`. A cached load decodes every file this way once; a
/// streaming one probes every header this way at load and decodes per batch (`Dataset::pixels`).
#[derive(Clone, Debug, Default)]
pub struct Decode {
    pub stored_size: bool,
    pub max_side: Option<usize>,
    pub max_pixels: u64,
}

impl Decode {
    /// The file's pixels as the dataset holds them: (pixels, height, width).
    pub fn file(&self, path: &Path, size: usize) -> std::result::Result<(Vec<u8>, usize, usize), String> {
        if self.stored_size {
            decode_file_stored(path, self.max_side, self.max_pixels)
        } else {
            decode_file(path, size, self.max_pixels).map(|px| (px, size, size))
        }
    }
    /// The (height, width) `file` would give, from the header alone (see `probe_file`).
    pub fn probe(&self, path: &Path, size: usize) -> std::result::Result<(usize, usize), String> {
        let hw = probe_file(path, self.max_side, self.max_pixels)?;
        Ok(if self.stored_size { hw } else { (size, size) })
    }
}

/// Decodes one image file to `size x size x 3` uint8 RGB.
pub fn decode_file(path: &Path, size: usize, max_pixels: u64) -> std::result::Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    decode_bytes(&bytes, size, max_pixels)
}

/// Decodes one image file at its stored size, the longer side capped at `max_side` (an
/// anti-aliased bilinear resize keeping the aspect ratio): (pixels, height, width).
pub fn decode_file_stored(path: &Path, max_side: Option<usize>, max_pixels: u64) -> std::result::Result<(Vec<u8>, usize, usize), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    match std::panic::catch_unwind(|| decode_rgb(&bytes, max_pixels)) {
        Ok(Ok((px, h, w))) => Ok(cap_side(px, h, w, max_side)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the image decoder panicked on this file".into()),
    }
}

/// (height, width) once the longer side is capped at `max_side` (torchvision Resize rounding).
fn capped_dims(h: usize, w: usize, max_side: Option<usize>) -> (usize, usize) {
    match max_side.filter(|&m| m > 0 && h.max(w) > m) {
        Some(m) if h >= w => (m, (m * w / h).max(1)),
        Some(m) => ((m * h / w).max(1), m),
        None => (h, w),
    }
}

/// The image scaled so its longer side is at most `max_side`.
fn cap_side(px: Vec<u8>, h: usize, w: usize, max_side: Option<usize>) -> (Vec<u8>, usize, usize) {
    let (rh, rw) = capped_dims(h, w, max_side);
    if (rh, rw) == (h, w) {
        return (px, h, w);
    }
    let mut buf = vec![0f32; rh * rw * 3];
    super::augment::resize_window(&px, h, w, (0, 0, h, w), (rh, rw), (0, 0, rh, rw), true, false, &mut buf);
    ((buf.iter().map(|&v| (v * 255.0).round_ties_even().clamp(0.0, 255.0) as u8).collect()), rh, rw)
}

/// Decodes an in-memory JPEG, PNG, WebP or BMP to `size x size x 3` uint8 RGB (see the module notes).
/// Never panics: a panic inside a decoder is caught and returned as an error.
pub fn decode_bytes(bytes: &[u8], size: usize, max_pixels: u64) -> std::result::Result<Vec<u8>, String> {
    match std::panic::catch_unwind(|| decode_unchecked(bytes, size, max_pixels)) {
        Ok(r) => r,
        Err(_) => Err("the image decoder panicked on this file".into()),
    }
}

fn decode_unchecked(bytes: &[u8], size: usize, max_pixels: u64) -> std::result::Result<Vec<u8>, String> {
    let (rgb, h, w) = decode_rgb(bytes, max_pixels)?;
    Ok(fit_to_size(&rgb, h, w, size))
}

/// Checks what can be checked without decoding pixels: a JPEG, PNG, WebP or BMP signature, a
/// non-zero size within `max_pixels`, and that the file is not cut short (a JPEG's end-of-image
/// marker, the length a WebP's RIFF header or an uncompressed BMP's header implies). Returns
/// (format, height, width).
fn checked_header<R: BufRead + Seek>(mut r: R, max_pixels: u64) -> std::result::Result<(image::ImageFormat, usize, usize), String> {
    let io = |e: std::io::Error| e.to_string();
    let len = r.seek(SeekFrom::End(0)).map_err(io)?;
    if len == 0 {
        return Err("empty file".into());
    }
    r.seek(SeekFrom::Start(0)).map_err(io)?;
    let reader = image::ImageReader::new(&mut r).with_guessed_format().map_err(io)?;
    let format = reader.format().ok_or("not a JPEG, PNG, WebP or BMP file (unrecognised signature)")?;
    if !matches!(format, image::ImageFormat::Jpeg | image::ImageFormat::Png | image::ImageFormat::WebP | image::ImageFormat::Bmp) {
        return Err(format!("a {format:?} file, not JPEG, PNG, WebP or BMP (whatever its extension)"));
    }
    r.seek(SeekFrom::Start(0)).map_err(io)?;
    let (w, h) = image::ImageReader::with_format(&mut r, format).into_dimensions().map_err(|e| e.to_string())?;
    let pixels = w as u64 * h as u64;
    if pixels == 0 {
        return Err(format!("image has zero size ({w}x{h})"));
    }
    if pixels > max_pixels {
        return Err(format!("{w}x{h} = {pixels} pixels exceeds the limit of {max_pixels} (data.max_pixels)"));
    }
    if format == image::ImageFormat::Jpeg {
        // A complete JPEG ends with FF D9 (a few trailing padding bytes are tolerated).
        let mut tail = Vec::with_capacity(64);
        r.seek(SeekFrom::Start(len.saturating_sub(64))).map_err(io)?;
        r.read_to_end(&mut tail).map_err(io)?;
        if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
            return Err("truncated JPEG (no end-of-image marker)".into());
        }
    }
    let mut head = Vec::with_capacity(64);
    r.seek(SeekFrom::Start(0)).map_err(io)?;
    r.by_ref().take(64).read_to_end(&mut head).map_err(io)?;
    if let Some(need) = expected_len(format, &head)
        && len < need
    {
        let name = if format == image::ImageFormat::Bmp { "BMP" } else { "WebP" };
        return Err(format!("truncated {name} file: its header implies at least {need} bytes, the file has {len}"));
    }
    Ok((format, h as usize, w as usize))
}

/// The length a WebP or BMP file must have at least, from its first bytes (None: not known).
/// WebP: the RIFF size field plus 8. BMP (uncompressed or bitfields, with an info header): the
/// pixel data offset plus every row but the last padded to 4 bytes, plus the last unpadded.
fn expected_len(format: image::ImageFormat, head: &[u8]) -> Option<u64> {
    let u32_at = |o: usize| head.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64);
    match format {
        image::ImageFormat::WebP => u32_at(4).map(|riff| riff + 8),
        image::ImageFormat::Bmp => {
            let (offset, info) = (u32_at(10)?, u32_at(14)?);
            if info < 40 {
                return None;
            }
            let w = u32_at(18)? as i32 as i64;
            let h = (u32_at(22)? as i32 as i64).unsigned_abs();
            let bpp = u64::from(u16::from_le_bytes([*head.get(28)?, *head.get(29)?]));
            let compression = u32_at(30)?;
            if w <= 0 || h == 0 || bpp == 0 || !matches!(compression, 0 | 3 | 6) {
                return None;
            }
            let row_bits = (w as u64).checked_mul(bpp)?;
            let stride = row_bits.div_ceil(32) * 4;
            offset.checked_add(stride.checked_mul(h - 1)?)?.checked_add(row_bits.div_ceil(8))
        }
        _ => None,
    }
}

/// The (height, width) an image file will decode to, from its header alone (see
/// `checked_header`), the longer side capped at `max_side`. Never panics.
pub fn probe_file(path: &Path, max_side: Option<usize>, max_pixels: u64) -> std::result::Result<(usize, usize), String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    match std::panic::catch_unwind(move || checked_header(BufReader::new(file), max_pixels)) {
        Ok(Ok((_, h, w))) => Ok(capped_dims(h, w, max_side)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the image decoder panicked on this file's header".into()),
    }
}

/// The file's pixels, RGB uint8, at their stored size: (pixels, height, width).
fn decode_rgb(bytes: &[u8], max_pixels: u64) -> std::result::Result<(Vec<u8>, usize, usize), String> {
    let (format, h, w) = checked_header(Cursor::new(bytes), max_pixels)?;
    let mut limits = image::Limits::default();
    let side = max_pixels.min(u32::MAX as u64) as u32;
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    // The largest buffer: 16-bit RGBA plus the decoder's working copy.
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(1 << 20));
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| e.to_string())?;
    Ok((img.to_rgb8().into_raw(), h, w))
}

pub fn load(root: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let root = split_root(root, opts.split)?;
    let (loose, class_dirs) = list_dir(&root)?;
    let (loose, loose_other): (Vec<PathBuf>, Vec<PathBuf>) = loose.into_iter().partition(|p| is_image(p));
    let mut classes = Vec::new();
    let mut files: Vec<(u32, PathBuf)> = Vec::new();
    // Left out: files that are not images (in class folders, or among unlabelled images), and
    // images beside class folders. Other files beside class folders (a README) are not counted.
    let mut not_images = Vec::new();
    let mut outside = Vec::new();
    if class_dirs.is_empty() {
        if loose.is_empty() {
            return Err(file_err(&root, "empty dataset: no class folders, images, CIFAR / STL-10 .bin or IDX files found"));
        }
        // Unlabelled images straight in the folder: one class, for pretraining.
        classes.push(super::stl10::UNLABELED.to_string());
        files.extend(loose.into_iter().map(|p| (0, p)));
        not_images = loose_other;
    } else {
        outside = loose;
    }
    for (label, dir) in class_dirs.iter().enumerate() {
        let mut found = Vec::new();
        collect_images(dir, 0, &mut found, &mut not_images)?;
        if found.is_empty() {
            return Err(file_err(dir, format!("class folder has no images (extensions: {})", EXTENSIONS.join(", "))));
        }
        classes.push(super::file_name(dir));
        files.extend(found.into_iter().map(|p| (label as u32, p)));
    }
    note_ignored(&root, &not_images, &outside);
    let files = keep_first_per_class(files, opts.limit_per_class);
    // Decoding is the long part of loading a large folder: a progress bar, and a Ctrl-C stops it
    // (the remaining files are not decoded; the caller gets Error::Interrupted).
    let decode = Decode { stored_size: opts.stored_size, max_side: opts.max_side, max_pixels: opts.max_pixels };
    let what = format!("{} {}", if opts.stream { "checking" } else { "decoding" }, root.display());
    let bar = crate::progress::bar(files.len(), &what, true);
    let decoded: Vec<std::result::Result<(Vec<u8>, usize, usize), String>> = files
        .par_iter()
        .map(|(_, p)| {
            if crate::interrupt::requested() {
                return Err("interrupted".into());
            }
            // Streaming: no pixels, only the size the decode will give.
            let r = if opts.stream { decode.probe(p, opts.size).map(|(h, w)| (Vec::new(), h, w)) } else { decode.file(p, opts.size) };
            bar.inc(1);
            r
        })
        .collect();
    bar.finish_and_clear();
    crate::interrupt::check(&what)?;

    let ignored = not_images.into_iter().chain(outside).collect();
    let mut data = Dataset { size: opts.size, classes, ignored, ..Default::default() };
    for ((label, path), img) in files.into_iter().zip(decoded) {
        match img {
            Ok((px, h, w)) => {
                if opts.stored_size {
                    data.dims.push((h, w));
                    if !opts.stream {
                        data.offsets.push(data.images.len());
                    }
                }
                data.files.push(path);
                data.images.extend_from_slice(&px);
                data.labels.push(label);
            }
            Err(msg) => match opts.on_corrupt {
                OnCorrupt::Fail => return Err(file_err(&path, format!("cannot decode image: {msg}"))),
                OnCorrupt::Skip => data.skipped.push((path, msg)),
            },
        }
    }
    if data.is_empty() {
        return Err(file_err(&root, format!("no image could be decoded ({} skipped)", data.skipped.len())));
    }
    if opts.stream {
        data.stream = Some(Stream { decode: decode.clone() });
    }
    // Stored sizes that all equal `size` are the uniform layout: the same pixels, no table.
    if opts.stored_size && data.dims.iter().all(|&d| d == (opts.size, opts.size)) {
        data.dims.clear();
        data.offsets.clear();
    } else if opts.stored_size {
        data.size = 0;
    }
    Ok(data)
}
