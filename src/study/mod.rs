//! `ssl-engine study`: does pretraining help here? Every starting point (SSL checkpoints,
//! imported weights, `random`, `supervised` from scratch) is measured by every protocol (kNN,
//! linear probe, fine-tuning, few-label fine-tuning at N labels per class) on a validation
//! split carved from the training set (seeded, stratified) and on the test set, which is
//! touched once per cell. Each cell is cached as JSON in `<out>/cells/`, so a rerun or an
//! interrupted study computes only what is missing. The table, CSV, JSON and plots are written
//! by `report`.

pub mod config;
pub mod report;

pub use config::StudyConfig;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::eval::backbone::{self, LoadedBackbone};
use crate::eval::protocols::{self, SetsReport};
use crate::backend::Backend;
use crate::checkpoint::{export_backbone, write_atomic};
use crate::config::Config;
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::eval::metrics::Metrics;
use crate::rng::{Rng, permutation};

/// One evaluation of one starting point.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    Knn,
    Linear,
    Finetune,
    /// Fine-tuning on N labelled images per class.
    FewLabel(usize),
}

impl Protocol {
    pub fn key(&self) -> String {
        match self {
            Protocol::Knn => "knn".into(),
            Protocol::Linear => "linear".into(),
            Protocol::Finetune => "finetune".into(),
            Protocol::FewLabel(n) => format!("finetune-{n}pc"),
        }
    }
    pub fn label(&self) -> String {
        match self {
            Protocol::Knn => "kNN".into(),
            Protocol::Linear => "linear probe".into(),
            Protocol::Finetune => "fine-tune".into(),
            Protocol::FewLabel(n) => format!("fine-tune, {n}/class"),
        }
    }
}

/// One cell of the study: a starting point measured by one protocol.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cell {
    pub start: String,
    pub protocol: Protocol,
    pub val: Metrics,
    pub test: Metrics,
    pub train_images: usize,
    /// Per epoch: (training loss, validation loss when measured).
    pub curve: Vec<(f64, Option<f64>)>,
    pub seconds: f64,
}

/// What `run` did: every cell, and how many were computed now (the rest came from the cache).
pub struct StudyOutcome {
    pub cells: Vec<Cell>,
    pub computed: usize,
    pub files: Vec<PathBuf>,
}

/// A starting point as the folder names it: `random`, `supervised`, or the file's stem plus a
/// hash of its path (two `last.safetensors` of different runs stay apart).
pub fn start_key(start: &str) -> String {
    if start == "random" || start == "supervised" {
        return start.to_string();
    }
    let stem = Path::new(start).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let clean: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    let hash = start.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    format!("{clean}-{:08x}", hash as u32)
}

/// The validation split: per class, a seeded `fraction` of its images (at least one when the
/// fraction is positive and the class has two). Returns (training indices, validation indices).
pub fn stratified_split(data: &Dataset, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let order = permutation(data.len(), &mut Rng::new(seed).stream("study validation split"));
    let classes = data.classes.len().max(data.labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0));
    let mut per_class = vec![Vec::new(); classes];
    for i in order {
        per_class[data.labels[i] as usize].push(i);
    }
    let (mut fit, mut val) = (Vec::new(), Vec::new());
    for members in per_class {
        let mut k = (fraction * members.len() as f64).round() as usize;
        if fraction > 0.0 && k == 0 && members.len() >= 2 {
            k = 1;
        }
        val.extend_from_slice(&members[..k]);
        fit.extend_from_slice(&members[k..]);
    }
    fit.sort();
    val.sort();
    (fit, val)
}

/// The cells the config asks for, in table order.
pub fn planned_cells(cfg: &StudyConfig) -> Result<Vec<(String, Protocol)>> {
    let mut protocols = Vec::new();
    for p in &cfg.protocols {
        protocols.push(match p.as_str() {
            "knn" => Protocol::Knn,
            "linear" => Protocol::Linear,
            "finetune" => Protocol::Finetune,
            other => return Err(Error::Config(format!("study.protocols: unknown protocol {other:?}; choose knn, linear or finetune"))),
        });
    }
    protocols.extend(cfg.labels_per_class.iter().map(|&n| Protocol::FewLabel(n)));
    let mut cells = Vec::new();
    for s in &cfg.starts {
        for p in &protocols {
            // Supervised training saw every label: fine-tuning it again measures nothing new.
            if s == "supervised" && matches!(p, Protocol::Finetune | Protocol::FewLabel(_)) {
                continue;
            }
            cells.push((s.clone(), p.clone()));
        }
    }
    Ok(cells)
}

fn check(cfg: &Config, fit: &Dataset) -> Result<()> {
    let st = &cfg.study;
    if st.starts.is_empty() {
        return Err(Error::Config("study.starts: name at least one starting point (a checkpoint, random or supervised)".into()));
    }
    if !(0.0..1.0).contains(&st.val_fraction) {
        return Err(Error::Config(format!("study.val_fraction: must lie in [0, 1) (got {})", st.val_fraction)));
    }
    for s in &st.starts {
        if s != "random" && s != "supervised" && !Path::new(s).is_file() {
            return Err(Error::Config(format!("study.starts: {s:?} is neither random, supervised nor an existing weight file")));
        }
    }
    let mut counts = vec![0usize; fit.classes.len()];
    for &l in &fit.labels {
        counts[l as usize] += 1;
    }
    let (smallest, class) = counts.iter().enumerate().map(|(c, &n)| (n, c)).min().unwrap_or((0, 0));
    if let Some(&n) = st.labels_per_class.iter().find(|&&n| n == 0 || n > smallest) {
        let name = fit.classes.get(class).cloned().unwrap_or_default();
        return Err(Error::Config(format!(
            "study.labels_per_class: {n} labels per class, but class {name:?} has {smallest} training images after the validation split"
        )));
    }
    Ok(())
}

/// The backbone a starting point names, fresh (fine-tuning changes it).
fn start_backbone<B: Backend>(b: &B, cfg: &Config, start: &str, supervised_file: &Path) -> Result<LoadedBackbone<B>> {
    match start {
        "random" => backbone::random_backbone(b, cfg),
        "supervised" => backbone::load_backbone(b, supervised_file, None, cfg.data.image_size),
        path => backbone::load_backbone(b, Path::new(path), None, cfg.data.image_size),
    }
}

/// The study's recipe: the file and `--set` laid over the recipe stored in its first checkpoint
/// start, so that what the study file leaves out (normalisation, image size, model options) is
/// what that checkpoint was trained with; the defaults when no start holds a recipe.
pub fn recipe(path: &Path, overrides: &[String]) -> Result<Config> {
    let cfg = Config::load(Some(path), overrides)?;
    for s in cfg.study.starts.iter().filter(|s| *s != "random" && *s != "supervised") {
        let Ok(wf) = crate::checkpoint::WeightFile::read(Path::new(s)) else { continue };
        if let Some(stored) = backbone::stored_recipe(&wf) {
            eprintln!("study: settings {} leaves out come from the recipe stored in {s}", path.display());
            return backbone::lay_over(&stored, true, Some(path), overrides, None);
        }
    }
    Ok(cfg)
}

/// Runs the study `cfg.study` describes on `cfg.data` (train and test) with `cfg.model`.
pub fn run<B: Backend>(b: &B, cfg: &Config, verbose: bool) -> Result<StudyOutcome> {
    let st = &cfg.study;
    let test_path = cfg.data.test_path.as_ref().ok_or_else(|| Error::Config("study: needs data.test_path".into()))?;
    crate::setup::check_data_path(&cfg.data.path, "data.path")?;
    crate::setup::check_data_path(test_path, "data.test_path")?;
    let full = backbone::load(&cfg.data.path, Split::Train, cfg)?;
    let test = backbone::load(test_path, Split::Test, cfg)?;
    let (fit_idx, val_idx) = stratified_split(&full, st.val_fraction, cfg.seed);
    let fit = Arc::new(full.subset(&fit_idx));
    let val = full.subset(&val_idx);
    check(cfg, &fit)?;
    let plan = planned_cells(st)?;
    // Every checkpoint must hold the study's architecture (model and model_opts): an error now,
    // not after an hour of the other cells.
    let want = backbone::architecture(&cfg.backbone()?);
    for s in st.starts.iter().filter(|s| *s != "random" && *s != "supervised") {
        let wf = crate::checkpoint::WeightFile::read(Path::new(s))?;
        if let Some(stored) = backbone::stored_recipe(&wf) {
            backbone::note_differences(&stored, cfg, s);
        }
        let held = wf.infer_backbone()?;
        if backbone::architecture(&held) != want {
            return Err(Error::Config(format!(
                "study.starts: {s} holds {}, but the study's model (model, model_opts) is {want}",
                backbone::architecture(&held)
            )));
        }
    }
    let cells_dir = st.out.join("cells");
    std::fs::create_dir_all(&cells_dir).map_err(|e| Error::File { path: cells_dir.display().to_string(), msg: e.to_string() })?;
    if verbose {
        eprintln!(
            "study: {} training, {} validation, {} test images; {} cells in {}",
            fit.len(),
            val.len(),
            test.len(),
            plan.len(),
            st.out.display()
        );
    }
    let supervised_file = st.out.join("supervised.safetensors");
    let mut cells = Vec::new();
    let mut computed = 0;
    for (start, protocol) in plan {
        let file = cells_dir.join(format!("{}__{}.json", start_key(&start), protocol.key()));
        if let Some(cell) = read_cell(&file)? {
            cells.push(cell);
            continue;
        }
        crate::interrupt::check("study")?;
        if start == "supervised" && !supervised_file.exists() {
            train_supervised(b, cfg, &fit, &val, &supervised_file, &cells_dir, verbose)?;
        }
        let t0 = std::time::Instant::now();
        if verbose {
            eprintln!("study: {start} / {} ...", protocol.label());
        }
        let m = start_backbone(b, cfg, &start, &supervised_file)?;
        let sets = [&val, &*test];
        let report = match &protocol {
            Protocol::Knn => {
                let metrics = protocols::eval_knn_sets(&m, &fit, &sets, cfg)?;
                SetsReport { metrics, train_images: fit.len(), curve: Vec::new() }
            }
            Protocol::Linear => protocols::eval_linear_sets(&m, &fit, &sets, cfg, &cfg.linear, None, |_, _, _| {})?,
            Protocol::Finetune => protocols::eval_finetune_sets(m, &fit, &sets, cfg, &st.finetune, None, true, |_, _, _| {})?,
            Protocol::FewLabel(n) => {
                let subset = protocols::labels_per_class(&fit, *n, cfg.seed);
                protocols::eval_finetune_sets(m, &fit, &sets, cfg, &st.finetune, Some(&subset), true, |_, _, _| {})?
            }
        };
        let mut metrics = report.metrics.into_iter();
        let cell = Cell {
            start: start.clone(),
            protocol,
            val: metrics.next().unwrap_or_default(),
            test: metrics.next().unwrap_or_default(),
            train_images: report.train_images,
            curve: report.curve,
            seconds: t0.elapsed().as_secs_f64(),
        };
        if verbose {
            eprintln!("  val top-1 {:.2}%, test top-1 {:.2}% ({:.0} s)", 100.0 * cell.val.top1, 100.0 * cell.test.top1, cell.seconds);
        }
        write_cell(&file, &cell)?;
        cells.push(cell);
        computed += 1;
    }
    let files = report::write(&st.out, &cells)?;
    Ok(StudyOutcome { cells, computed, files })
}

/// Supervised from scratch: the recipe's random backbone and a head trained on every training
/// label, saved as a backbone file; its curve is cached beside the cells.
fn train_supervised<B: Backend>(
    b: &B,
    cfg: &Config,
    fit: &Arc<Dataset>,
    val: &Dataset,
    file: &Path,
    cells_dir: &Path,
    verbose: bool,
) -> Result<()> {
    if verbose {
        eprintln!("study: training supervised from scratch ({} epochs)", cfg.study.supervised.epochs);
    }
    let mut m = backbone::random_backbone(b, cfg)?;
    let aug = crate::eval::finetune::finetune_augment(cfg.augment.mean, cfg.augment.std);
    let mut curve = Vec::new();
    crate::eval::finetune::finetune(&m.backbone, &mut m.ps, fit.clone(), &[val], cfg.data.image_size, aug, &cfg.study.supervised, true, |_, l, v| {
        curve.push((l, v))
    })?;
    let text = serde_json::to_string_pretty(&curve).map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(&cells_dir.join("supervised__training.json"), text.as_bytes())?;
    // The file is the backbone alone, like any other starting point: the trained tensors are
    // copied into a head-less store of the same architecture.
    let mut clean = backbone::random_backbone(b, cfg)?;
    for id in clean.ps.ids().collect::<Vec<_>>() {
        let name = clean.ps.entry(id).name.clone();
        let trained = m.ps.find(&name).ok_or_else(|| Error::Other(format!("supervised: no trained tensor {name}")))?;
        clean.ps.set(id, m.ps.get(trained).clone())?;
    }
    export_backbone(&clean.ps, file, "", backbone::recipe_metadata(cfg, &clean.backbone)).map(|_| ())
}

fn read_cell(file: &Path) -> Result<Option<Cell>> {
    match std::fs::read_to_string(file) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::File { path: file.display().to_string(), msg: format!("a cached cell that cannot be read ({e}); delete it to recompute") }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::File { path: file.display().to_string(), msg: e.to_string() }),
    }
}

fn write_cell(file: &Path, cell: &Cell) -> Result<()> {
    let text = serde_json::to_string_pretty(cell).map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(file, text.as_bytes())
}
