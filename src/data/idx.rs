//! IDX files (MNIST, Fashion-MNIST), optionally gzip-compressed.
//!
//! Format: two zero bytes, a type byte (only 0x08, unsigned byte, is accepted), the number of
//! dimensions, each dimension as a big-endian u32, then the data. Images are `[n, rows, cols]`
//! (grayscale, copied to RGB) or `[n, rows, cols, 1 | 3]`; labels are `[n]`. The size the header
//! claims is checked before anything is allocated: it must equal the rest of a plain file, and be
//! reachable from a gzip file's length (deflate expands at most 1032:1); the data is then read
//! into a buffer that grows as bytes arrive, so a lying header cannot make us allocate.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{Dataset, LoadOptions, Split, file_err, fit_to_size, keep_first_per_class};
use crate::error::Result;

/// Deflate's largest expansion ratio.
const MAX_GZIP_RATIO: u64 = 1032;

fn prefix(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "t10k",
    }
}

/// The images file of `split` in `dir`: `train-images-idx3-ubyte[.gz]` (or `t10k-...`).
fn find_images(dir: &Path, split: Split) -> Option<PathBuf> {
    let start = format!("{}-images", prefix(split));
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            let n = super::file_name(p);
            n.starts_with(&start) && n.contains("idx3")
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

pub fn is_idx_dir(dir: &Path) -> bool {
    find_images(dir, Split::Train).is_some() || find_images(dir, Split::Test).is_some()
}

pub fn load_dir(dir: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let images = find_images(dir, opts.split)
        .ok_or_else(|| file_err(dir, format!("no {}-images-idx3-ubyte[.gz] file for the {:?} split", prefix(opts.split), opts.split)))?;
    load_file(&images, opts)
}

/// The labels file beside an images file: "images" -> "labels", "idx3" -> "idx1" in its name.
fn labels_path(images: &Path) -> Result<PathBuf> {
    let name = super::file_name(images);
    if !name.contains("images") {
        return Err(file_err(images, "expected an IDX images file (a name with 'images', e.g. train-images-idx3-ubyte.gz)"));
    }
    Ok(images.with_file_name(name.replace("images", "labels").replace("idx3", "idx1")))
}

pub fn load_file(images_path: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let labels_path = labels_path(images_path)?;
    if !labels_path.is_file() {
        return Err(file_err(&labels_path, "missing IDX labels file for the images file beside it"));
    }
    let (idims, pixels) = read_idx(images_path)?;
    let (ldims, labels) = read_idx(&labels_path)?;
    let (n, rows, cols, ch) = match idims[..] {
        [n, r, c] => (n, r, c, 1),
        [n, r, c, ch] if ch == 1 || ch == 3 => (n, r, c, ch),
        _ => return Err(file_err(images_path, format!("IDX images must be [n, rows, cols] or [n, rows, cols, 1|3], got {idims:?}"))),
    };
    if ldims.len() != 1 || ldims[0] != n {
        return Err(file_err(&labels_path, format!("labels {ldims:?} do not match {n} images in {}", images_path.display())));
    }
    if n == 0 || rows == 0 || cols == 0 {
        return Err(file_err(images_path, format!("empty IDX images {idims:?}")));
    }
    let per = rows * cols * ch;
    let items: Vec<(u32, (usize, &[u8]))> = labels.iter().map(|&l| l as u32).zip(pixels.chunks_exact(per).enumerate()).collect();
    let items = keep_first_per_class(items, opts.limit_per_class);
    let size = opts.size;
    let images: Vec<Vec<u8>> = items
        .par_iter()
        .map(|(_, (_, px))| {
            let rgb: Vec<u8> = if ch == 3 { px.to_vec() } else { px.iter().flat_map(|&v| [v, v, v]).collect() };
            fit_to_size(&rgb, rows, cols, size)
        })
        .collect();
    let nclass = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
    Ok(Dataset {
        images: images.concat(),
        labels: items.iter().map(|(l, _)| *l).collect(),
        files: items.iter().map(|&(_, (i, _))| super::row_source(images_path, i)).collect(),
        classes: (0..nclass).map(|i| i.to_string()).collect(),
        size,
        ..Default::default()
    })
}

/// Reads one IDX file (plain or gzip): its dimensions and its bytes.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let err = |msg: String| file_err(path, msg);
    let file_len = std::fs::metadata(path).map_err(|e| err(e.to_string()))?.len();
    let mut file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut magic2 = [0u8; 2];
    file.read_exact(&mut magic2).map_err(|e| err(format!("cannot read the IDX header: {e}")))?;
    let gzip = magic2 == [0x1f, 0x8b];
    let head = std::io::Cursor::new(magic2);
    let mut reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(head.chain(file))))
    } else {
        Box::new(BufReader::new(head.chain(file)))
    };
    let mut magic = [0u8; 4];
    reader.read_exact(&mut magic).map_err(|e| err(format!("cannot read the IDX header: {e}")))?;
    if magic[0] != 0 || magic[1] != 0 {
        return Err(err(format!("not an IDX file (magic bytes {:02x?})", &magic)));
    }
    if magic[2] != 0x08 {
        return Err(err(format!("IDX data type 0x{:02x} is not supported (only 0x08, unsigned byte)", magic[2])));
    }
    let ndim = magic[3] as usize;
    if ndim == 0 || ndim > 4 {
        return Err(err(format!("IDX file with {ndim} dimensions (expected 1 to 4)")));
    }
    let mut dims = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        let mut d = [0u8; 4];
        reader.read_exact(&mut d).map_err(|e| err(format!("truncated IDX header: {e}")))?;
        dims.push(u32::from_be_bytes(d) as usize);
    }
    let header = 4 + 4 * ndim as u64;
    let expected =
        dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).ok_or_else(|| err(format!("IDX dimensions {dims:?} overflow")))?;
    if gzip {
        if expected.saturating_add(header) > file_len.saturating_mul(MAX_GZIP_RATIO) {
            return Err(err(format!("IDX header claims {dims:?} = {expected} bytes, more than a {file_len}-byte gzip file can hold")));
        }
    } else if header + expected != file_len {
        return Err(err(format!("IDX header {dims:?} needs {} bytes but the file has {file_len}", header + expected)));
    }
    let mut data = Vec::new();
    (&mut reader).take(expected).read_to_end(&mut data).map_err(|e| err(format!("reading IDX data: {e}")))?;
    if data.len() as u64 != expected {
        return Err(err(format!("truncated IDX data: header {dims:?} needs {expected} bytes, found {}", data.len())));
    }
    let mut extra = [0u8; 1];
    match reader.read(&mut extra) {
        Ok(0) => {}
        Ok(_) => return Err(err(format!("IDX file has bytes after the {expected} its header {dims:?} describes"))),
        Err(e) => return Err(err(format!("reading IDX data: {e}"))),
    }
    Ok((dims, data))
}
