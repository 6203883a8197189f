//! The data pipeline: read a dataset once into memory as uint8 RGB, then produce augmented views.
//!
//! ```text
//! load_dataset (imagefolder | cifar | idx) -> Dataset (n x size x size x 3 u8, HWC)
//!     -> Loader::epoch: epoch_order permutation, batches of views augmented by worker threads
//!     -> Batch { views: [batch, out, out, 3] NHWC f32 per view, labels, indices }
//! ```
//!
//! Formats (detected by `load_dataset`):
//! - image folder: `<root>/<class>/**/*.{jpg,jpeg,png,webp,bmp}` (torchvision ImageFolder order:
//!   classes are the sorted folder names, files sorted within each class). Other files in the class
//!   folders are left out, recorded in `Dataset::ignored` and named in one `note:` line on stderr. When `<root>` holds `train` and `test`
//!   (or `val`) folders that themselves hold class folders, `Split` picks one of them.
//! - CIFAR binary: a `cifar-10-batches-bin` directory (`data_batch_1..5.bin` / `test_batch.bin`), a
//!   CIFAR-100 directory (`train.bin` / `test.bin`, fine labels) or one `.bin` file.
//! - STL-10 binary: the `stl10_binary` directory (`train_X.bin` / `test_X.bin` with their labels) or
//!   one `*_X.bin` file; `unlabeled_X.bin` is the 100,000 unlabelled images, one class.
//! - a folder of images without class folders: one class, "unlabeled" (pretraining data).
//! - IDX (MNIST, Fashion-MNIST): a directory with `train-images-idx3-ubyte[.gz]` and its labels
//!   (`t10k-*` for `Split::Test`), or the path of one images file (its labels file is found by name).
//!
//! Bad input is an error value naming the file, never a panic. Undecodable images follow
//! `LoadOptions::on_corrupt`: `Skip` (the default) leaves the file out and records it with the
//! reason in `Dataset::skipped` (`print_skipped` and `skipped_report` name them all); `Fail`
//! returns the first such error. `Dataset::files` names the source of every row. Headers are checked against the
//! file length before anything is allocated, and `max_pixels` caps what a decoder may allocate.
//!
//! Images of another size are resized on load to `size x size`: the shorter side is resized to
//! `size` (anti-aliased bilinear, as Pillow and torchvision's `Resize`), then the centre is cropped.
//!
//! Datasets larger than memory (`LoadOptions::stream`, `data.cache = "none"`): an image folder is
//! listed and every file's header checked (format, dimensions, `max_pixels`, a JPEG's end marker)
//! without decoding any pixels; the loader's workers then decode each image when a batch needs it,
//! as torchvision's `DataLoader` does. Pixels are a pure function of the file, so batches are the
//! same as with the images held in memory. Binary formats (CIFAR, IDX, STL-10) are always held
//! in memory: their decoded bytes are their file's size.

pub mod augment;
pub mod cifar;
pub mod idx;
pub mod imagefolder;
pub mod loader;
pub mod stl10;
pub mod throughput;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub use augment::{AugmentConfig, ViewParams, augment, normalize};
pub use loader::{Batch, EpochIter, Loader, ViewSpec, epoch_order, eval_batches};
pub use throughput::{Throughput, measure_throughput, peak_memory_bytes};

/// A decoded dataset held in memory: every image `size x size x 3` uint8 RGB, HWC.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    /// n * size * size * 3 bytes, image after image, each row-major HWC RGB.
    pub images: Vec<u8>,
    /// The class index of every image.
    pub labels: Vec<u32>,
    /// Class names: sorted folder names, or "0", "1", ... (CIFAR's names when its meta file exists).
    pub classes: Vec<String>,
    /// Every image is `size x size`; 0 when images keep their own sizes (`dims`).
    pub size: usize,
    /// Per image (height, width) and byte offset in `images`, when images keep their stored
    /// sizes (an image folder without `data.resize_on_load`); empty when every one is `size x size`.
    pub dims: Vec<(usize, usize)>,
    pub offsets: Vec<usize>,
    /// The source of every row, in row order: its image file (image folders), or
    /// `<file>#<record>` for the binary formats (CIFAR, IDX, STL-10; the record's 0-based index in
    /// that file). A streaming dataset decodes its pixels from these files. Kept by `subset`;
    /// empty for a dataset built by hand (see `row_names`).
    pub files: Vec<PathBuf>,
    /// Files left out because they could not be decoded (`OnCorrupt::Skip`), with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Files an image folder's load left out without reading them: other extensions in the class
    /// folders (or among unlabelled images) and images lying beside the class folders. Hidden
    /// files (".*") are not listed.
    pub ignored: Vec<PathBuf>,
    /// Streaming (`data.cache = "none"`): how pixels are decoded from `files`, one per image, and
    /// `images` is empty. `dims` still holds every image's size (read from its header).
    pub stream: Option<Stream>,
}

/// How a streaming dataset decodes each of its files (`Dataset::files`), as a cached load
/// decodes it.
#[derive(Clone, Debug, Default)]
pub struct Stream {
    pub decode: imagefolder::Decode,
}

impl Dataset {
    /// The images at `indices` (in that order), as a dataset of their own.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        let dims: Vec<_> = if self.dims.is_empty() { Vec::new() } else { indices.iter().map(|&i| self.dims[i]).collect() };
        let files = if self.files.len() == self.len() { indices.iter().map(|&i| self.files[i].clone()).collect() } else { Vec::new() };
        if self.stream.is_some() {
            return Dataset { labels, classes: self.classes.clone(), size: self.size, dims, files, stream: self.stream.clone(), ..Default::default() };
        }
        let mut images = Vec::with_capacity(indices.iter().map(|&i| self.image(i).len()).sum());
        let mut offsets = Vec::new();
        for &i in indices {
            if !self.dims.is_empty() {
                offsets.push(images.len());
            }
            images.extend_from_slice(self.image(i));
        }
        Dataset { images, labels, classes: self.classes.clone(), size: self.size, dims, offsets, files, ..Default::default() }
    }

    /// The source of every row as one line of text, in row order: `files` (a newline, carriage
    /// return or tab in a name written as `\n`, `\r`, `\t`, so that there is exactly one line per
    /// row), or `#<row>` for every row when `files` does not name them all.
    pub fn row_names(&self) -> Vec<String> {
        if self.files.len() == self.len() {
            self.files.iter().map(|p| one_line(&p.display().to_string())).collect()
        } else {
            (0..self.len()).map(|i| format!("#{i}")).collect()
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// The bytes of image `i` of an in-memory dataset (panics when `i >= len()`, like slice
    /// indexing, and on a streaming dataset, which holds no pixels: use `pixels`).
    pub fn image(&self, i: usize) -> &[u8] {
        assert!(self.stream.is_none(), "Dataset::image on a streaming dataset; use Dataset::pixels");
        if self.dims.is_empty() {
            let n = self.size * self.size * 3;
            return &self.images[i * n..(i + 1) * n];
        }
        let (h, w) = self.dims[i];
        &self.images[self.offsets[i]..self.offsets[i] + h * w * 3]
    }
    /// The `dims_of(i)` HWC bytes of image `i`: borrowed from memory, or decoded from its file
    /// (streaming), which fails with an error naming the file.
    pub fn pixels(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        let Some(s) = &self.stream else { return Ok(Cow::Borrowed(self.image(i))) };
        let path = &self.files[i];
        match s.decode.file(path, self.size) {
            Ok((px, h, w)) if (h, w) == self.dims_of(i) => Ok(Cow::Owned(px)),
            Ok((_, h, w)) => {
                let (eh, ew) = self.dims_of(i);
                Err(file_err(path, format!("decodes to {w}x{h}, but its header said {ew}x{eh} when the dataset was listed (was the file replaced?)")))
            }
            Err(msg) => Err(file_err(path, format!("cannot decode image: {msg}"))),
        }
    }
    /// (height, width) of image `i`.
    pub fn dims_of(&self, i: usize) -> (usize, usize) {
        if self.dims.is_empty() { (self.size, self.size) } else { self.dims[i] }
    }
    /// Whether the dataset's bytes are exactly its images (what the loaders rely on).
    pub fn well_formed(&self) -> bool {
        let n = self.len();
        if self.stream.is_some() {
            let dims_ok = if self.dims.is_empty() { self.size > 0 } else { self.dims.len() == n };
            return self.files.len() == n && self.images.is_empty() && dims_ok;
        }
        if self.dims.is_empty() {
            return self.size > 0 && self.images.len() == n * self.size * self.size * 3;
        }
        self.dims.len() == n
            && self.offsets.len() == n
            && self.dims.iter().zip(&self.offsets).all(|(&(h, w), &o)| h > 0 && w > 0 && o + h * w * 3 <= self.images.len())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Split {
    #[default]
    Train,
    Test,
}

/// What to do with an image file that cannot be decoded (`data.on_corrupt`: "skip" or "fail").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnCorrupt {
    /// Leave it out and record it in `Dataset::skipped` (the default).
    #[default]
    Skip,
    /// Return an error naming the file.
    Fail,
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Images are stored `size x size` (resized on load when different), unless `stored_size`.
    pub size: usize,
    /// Image folders: keep every image at its stored size (the longer side capped at
    /// `max_side`); augmentation then crops from the original, as torchvision does.
    pub stored_size: bool,
    pub max_side: Option<usize>,
    pub split: Split,
    pub on_corrupt: OnCorrupt,
    /// The largest width x height a decoder may open (Pillow's default, 89,478,485).
    pub max_pixels: u64,
    /// Keep only the first N images of every class (in file order).
    pub limit_per_class: Option<usize>,
    /// Image folders: list the files and check their headers, but decode no pixels until a batch
    /// needs them (datasets larger than memory; `data.cache = "none"`).
    pub stream: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            size: 32,
            stored_size: false,
            max_side: None,
            split: Split::Train,
            on_corrupt: OnCorrupt::Skip,
            max_pixels: 89_478_485,
            limit_per_class: None,
            stream: false,
        }
    }
}

pub(crate) fn file_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::File { path: path.display().to_string(), msg: msg.into() }
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    file_err(path, e.to_string())
}

/// Reads a dataset, detecting its format (see the module documentation).
pub fn load_dataset(path: &Path, opts: &LoadOptions) -> Result<Dataset> {
    if opts.size == 0 || opts.size > 4096 {
        return Err(file_err(path, format!("image size {} must be in 1..=4096", opts.size)));
    }
    if opts.limit_per_class == Some(0) {
        return Err(file_err(path, "limit_per_class must be at least 1"));
    }
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if meta.is_file() {
        let name = file_name(path);
        if stl10::is_stl10_file(path) {
            return stl10::load_file(path, opts);
        }
        if name.ends_with(".bin") {
            return cifar::load_file(path, opts);
        }
        if name.contains("idx") || name.ends_with(".gz") {
            return idx::load_file(path, opts);
        }
        return Err(file_err(path, "unrecognised file: expected a CIFAR .bin file or an IDX images file (*idx3-ubyte[.gz])"));
    }
    if cifar::is_cifar_dir(path) {
        return cifar::load_dir(path, opts);
    }
    if idx::is_idx_dir(path) {
        return idx::load_dir(path, opts);
    }
    if stl10::is_stl10_dir(path) {
        return stl10::load_dir(path, opts);
    }
    imagefolder::load(path, opts)
}

/// `<file>#<index>`: the name of record `index` of a binary dataset file (`Dataset::files`).
pub(crate) fn row_source(file: &Path, index: usize) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(format!("#{index}"));
    PathBuf::from(s)
}

/// `s` with newlines, carriage returns and tabs escaped (one line, no tab).
fn one_line(s: &str) -> String {
    s.replace('\n', "\\n").replace('\r', "\\r").replace('\t', "\\t")
}

/// Prints every file `data` skipped (`OnCorrupt::Skip`) on stderr, with the reason, one line each:
/// `skipped <path>: <reason>`.
pub fn print_skipped(data: &Dataset) {
    for (path, reason) in &data.skipped {
        eprintln!("skipped {}: {}", path.display(), one_line(reason.trim()));
    }
}

/// How many skipped files `skipped_report` names in its summary.
const REPORT_NAMES: usize = 3;

/// The file `skipped_report` writes in a run folder.
pub const SKIPPED_FILE: &str = "skipped.txt";

/// The files a run's datasets skipped (`sets`: the training set, then the test set): all of
/// them go to `<dir>/skipped.txt`, one `<path>\t<reason>` line each (written atomically), and the
/// return value is the words for the run's summary line, naming the first few: `N unreadable
/// images skipped: class/a.jpg (reason), ...; all N listed in <dir>/skipped.txt`. When nothing was
/// skipped: None, and no file (one left by an earlier run in the folder is removed).
pub fn skipped_report(sets: &[&Dataset], dir: &Path) -> Result<Option<String>> {
    let all: Vec<&(PathBuf, String)> = sets.iter().flat_map(|d| &d.skipped).collect();
    let path = dir.join(SKIPPED_FILE);
    if all.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path, e)),
            _ => Ok(None),
        };
    }
    let text: String =
        all.iter().map(|(p, reason)| format!("{}\t{}\n", one_line(&p.display().to_string()), one_line(reason.trim()))).collect();
    crate::checkpoint::write_atomic(&path, text.as_bytes())?;
    // Short names (the class folder and the file) in the line; the file has the full paths.
    let short = |p: &Path| -> String {
        let parts: Vec<_> = p.components().rev().take(2).collect();
        parts.iter().rev().collect::<PathBuf>().display().to_string()
    };
    let named: Vec<String> =
        all.iter().take(REPORT_NAMES).map(|(p, reason)| format!("{} ({})", short(p), one_line(reason.trim()))).collect();
    let n = all.len();
    let more = if n > REPORT_NAMES { ", ..." } else { "" };
    Ok(Some(format!(
        "{n} unreadable image{} skipped: {}{more}; {} in {}",
        if n == 1 { "" } else { "s" },
        named.join(", "),
        if n == 1 { "listed".to_string() } else { format!("all {n} listed") },
        path.display()
    )))
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Resizes one uint8 HWC image to `size x size`: the shorter side to `size` (anti-aliased bilinear),
/// then the centre `size x size` crop. Returns the input unchanged when it is already that size.
pub(crate) fn fit_to_size(img: &[u8], h: usize, w: usize, size: usize) -> Vec<u8> {
    if h == size && w == size {
        return img.to_vec();
    }
    // The resized image is (rh, rw) with min(rh, rw) = size; we only compute its centre crop.
    let (rh, rw) = if h <= w {
        (size, (size * w / h).max(size)) // torchvision Resize: int(size * long / short)
    } else {
        ((size * h / w).max(size), size)
    };
    // torchvision CenterCrop: int(round((len - size) / 2)), Python rounding (half to even).
    let centre = |len: usize| ((len - size) as f64 / 2.0).round_ties_even() as usize;
    let (top, left) = (centre(rh), centre(rw));
    let mut buf = vec![0f32; size * size * 3];
    augment::resize_window(img, h, w, (0, 0, h, w), (rh, rw), (top, left, size, size), true, false, &mut buf);
    // Rounded half to even, as torch.round.
    buf.iter().map(|&v| (v * 255.0).round_ties_even().clamp(0.0, 255.0) as u8).collect()
}

/// Keeps the first `limit` items of every class, in order.
pub(crate) fn keep_first_per_class<T>(items: Vec<(u32, T)>, limit: Option<usize>) -> Vec<(u32, T)> {
    let Some(limit) = limit else { return items };
    let mut counts = std::collections::HashMap::new();
    items
        .into_iter()
        .filter(|(label, _)| {
            let c = counts.entry(*label).or_insert(0usize);
            *c += 1;
            *c <= limit
        })
        .collect()
}
