//! Step one of a run: check the backend and a resume, load the data, build the method and the
//! optimiser, restore a checkpoint, and measure the randomly initialised backbone.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use super::{StartOptions, TrainSummary};
use super::monitor::knn_monitor;
use super::resume::{check_resume_compatible, save_on_interrupt};
use crate::backend::Backend;
use crate::checkpoint::{TrainState, WeightFile};
use crate::config::Config;
use crate::data::{Dataset, Split};
use crate::dist::collective::Group;
use crate::error::{Error, Result};
use crate::nn::{Kind, ParamStore, Replicas};
use crate::optim::Optimizer;
use crate::run_log::MetricsLog;
use crate::setup::{build_method, load_split};
use crate::ssl::Method;

/// Everything a run holds from its start to its end: the data, the model, the optimiser, the
/// position, the log and what the summary has gathered so far.
pub(super) struct Run<'a, B: Backend> {
    pub b: &'a B,
    pub cfg: &'a Config,
    pub show: bool,
    pub train_set: Arc<Dataset>,
    pub test_set: Option<Dataset>,
    pub ps: ParamStore<B>,
    pub method: Box<dyn Method<B>>,
    pub opt: Box<dyn Optimizer<B>>,
    pub state: TrainState,
    pub log: MetricsLog,
    pub summary: TrainSummary,
    /// This rank's group in a data-parallel run; None on one rank.
    pub group: Option<Group<B>>,
}

/// Prints a progress line on stderr unless the run is quiet.
pub(super) fn say(show: bool, s: String) {
    if show {
        eprintln!("{s}");
    }
}

impl<'a, B: Backend> Run<'a, B> {
    /// Sets the run up (or resumes it); errors come in the order a user fixes them: the
    /// backend, the run folder, the resume, the data.
    pub fn start(b: &'a B, cfg: &'a Config, opts: &StartOptions, show: bool, group: Option<Group<B>>) -> Result<Self> {
        let resume = opts.resume;
        let writes = group.as_ref().is_none_or(|g| g.rank() == 0);
        if b.precision() != cfg.precision {
            return Err(Error::Config(format!(
                "precision {:?} in the config, but the {} backend was built for {:?} (build it with_precision)",
                cfg.precision.as_str(),
                b.name(),
                b.precision().as_str()
            )));
        }
        // A resume is checked before anything is loaded or built: a mismatch is one clear line.
        let resume_from = match resume {
            Some(path) => {
                let wf = WeightFile::read(path)?;
                let saved = wf.state()?;
                check_resume_compatible(path, &saved, cfg, opts.allow_changes)?;
                Some((path, wf, saved))
            }
            None => None,
        };
        // A fresh run never writes into another run's folder (a resume continues its own).
        // A resume into another folder than its checkpoint's must find that folder free too.
        let own_folder = |p: &Path| {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            matches!((dir.canonicalize(), cfg.out.canonicalize()), (Ok(a), Ok(b)) if a == b)
        };
        // Rank 0 alone writes the run's files (a data-parallel run's other ranks write nothing).
        if writes {
            if resume.is_none_or(|p| !own_folder(p)) {
                claim_run_folder(&cfg.out, opts.overwrite, show)?;
            }
            std::fs::create_dir_all(&cfg.out)
                .map_err(|e| Error::File { path: cfg.out.display().to_string(), msg: format!("cannot create run folder: {e}") })?;
            crate::checkpoint::remove_stale_temp_files(&cfg.out);
            // The resolved recipe, beside the weights, for people and for `ssl-engine config`.
            crate::checkpoint::write_atomic(&cfg.out.join("config.toml"), cfg.to_toml().as_bytes())?;
        }
        let (train_set, test_set) = load_data(cfg, show)?;
        let skipped = train_set.skipped.len() + test_set.as_ref().map_or(0, |t| t.skipped.len());
        // Every skipped file goes to <out>/skipped.txt; the line names the first few.
        let sets: Vec<&Dataset> = std::iter::once(&*train_set).chain(test_set.as_ref()).collect();
        let skipped_note = if writes { crate::data::skipped_report(&sets, &cfg.out)? } else { None };
        say(
            show,
            format!(
                "data: {} training images, {} classes{}{}",
                train_set.len(),
                train_set.classes.len(),
                test_set.as_ref().map(|t| format!(", {} test images", t.len())).unwrap_or_default(),
                skipped_note.map(|n| format!(" ({n})")).unwrap_or_default()
            ),
        );

        let (mut ps, method) = build_method(b, cfg)?;
        ps.set_replicas(group.clone().map(|group| Replicas { group, sync_bn: cfg.sync_bn }));
        let opt = cfg.optim.optimizer::<B>()?;
        let state = TrainState { epoch: 0, step_in_epoch: 0, global_step: 0, method: cfg.method.clone(), config: cfg.to_toml() };
        let log = MetricsLog::rank0_writes(writes, &cfg.out, &cfg.to_toml())?;
        let summary = TrainSummary { out: cfg.out.clone(), skipped_images: skipped, ..Default::default() };
        let mut run = Run { b, cfg, show, train_set, test_set, ps, method, opt, state, log, summary, group };
        if let Some((path, wf, saved)) = resume_from {
            wf.load_into(&mut run.ps, "", "")?;
            wf.load_optimizer_state(&run.ps, run.opt.as_mut())?;
            run.method.load_state(&wf.method_state(b)?)?;
            run.state = TrainState { config: cfg.to_toml(), ..saved };
            let st = &run.state;
            say(show, format!("resumed from {} at epoch {}, step {}", path.display(), st.epoch, st.step_in_epoch));
            let line = json!({"type": "resume", "from": path.display().to_string(), "epoch": st.epoch, "global_step": st.global_step});
            run.log.write(line)?;
        }
        // Every rank starts from rank 0's weights and statistics (a resume loaded the same file
        // on each: this changes nothing there).
        run.ps.broadcast_from_rank0()?;
        if let Some(r) = run.ps.replicas() {
            let per_rank = cfg.batch_size / r.group.world();
            let bn = run.ps.entries().iter().any(|e| e.kind == Kind::Buffer);
            let stats = match (bn, cfg.sync_bn) {
                (false, _) => "",
                (true, true) => "; sync_bn: batch norm over the global batch",
                (true, false) => "; batch norm per rank (sync_bn = false, as PyTorch DDP; rank 0's running statistics are the run's)",
            };
            let line = format!("data parallel: {} ranks, {per_rank} images each of the global batch {}{stats}", r.group.world(), cfg.batch_size);
            say(show, line.clone());
            run.log.write(json!({"type": "data_parallel", "ranks": r.group.world(), "per_rank_batch": per_rank, "sync_bn": cfg.sync_bn, "note": line}))?;
        }
        let params = run.ps.num_params();
        say(show, format!("model: {} ({params} parameters), method {}, backend {}, precision {}", cfg.model, cfg.method, b.name(), cfg.precision.as_str()));

        if run.state.global_step == 0 && run.test_set.is_some() {
            let acc = run.knn()?;
            say(show, format!("kNN top-1 of the randomly initialised backbone: {:.2}%", acc * 100.0));
            run.summary.knn_init = Some(acc);
            run.log.write(json!({"type": "knn", "epoch": 0, "knn_top1": acc, "init": true}))?;
        }
        Ok(run)
    }

    /// The kNN monitor on the test set (the caller checks there is one); a stop request
    /// during it saves the last completed step.
    /// With several ranks each embeds its share of the images and they gather the features
    /// (`monitor::extract_across`); without sync_bn rank 0's running statistics are used by all.
    pub fn knn(&self) -> Result<f64> {
        let test = self.test_set.as_ref().expect("the kNN monitor runs only with a test set");
        if !self.cfg.sync_bn {
            self.ps.broadcast_buffers_from_rank0().map_err(|e| self.saved_on_interrupt(e))?;
        }
        knn_monitor(self.method.as_ref(), &self.ps, &self.train_set, test, self.cfg, self.show).map_err(|e| self.saved_on_interrupt(e))
    }

    /// Whether this rank writes the run's files: rank 0, or the only rank.
    pub fn writes(&self) -> bool {
        self.group.as_ref().is_none_or(|g| g.rank() == 0)
    }

    /// `Error::Interrupted` after saving `last.safetensors` (rank 0 saves; the other ranks
    /// stop at the same step, saving nothing); any other error as it is.
    pub fn saved_on_interrupt(&self, e: Error) -> Error {
        if !self.writes() {
            return e;
        }
        save_on_interrupt(e, self.cfg, &self.ps, self.opt.as_ref(), self.method.as_ref(), &self.state)
    }
}

/// The files that make a folder a run's: a second run writing there would mix two runs.
const RUN_FILES: &[&str] = &["last.safetensors", "metrics.jsonl", "summary.md"];

/// What of a run `out` holds, by name (epoch checkpoints too); empty for a new or empty folder.
pub fn run_files_in(out: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(out) else { return Vec::new() };
    let mut found: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| RUN_FILES.contains(&n.as_str()) || (n.starts_with("epoch-") && n.ends_with(".safetensors")))
        .collect();
    found.sort();
    found
}

/// Makes `out` a folder this run may write: refused when it holds a run, unless `overwrite`,
/// which first moves the whole folder aside (one rename: atomic) to `<out>.replaced-N`.
fn claim_run_folder(out: &Path, overwrite: bool, show: bool) -> Result<()> {
    let found = run_files_in(out);
    if found.is_empty() {
        return Ok(());
    }
    let shown = out.display();
    if !overwrite {
        return Err(Error::Config(format!(
            "out {shown}: the folder already holds a run ({}); continue it with --resume {}, train into a new folder \
             (--set out=...), or start over with --overwrite (the old run moves to {shown}.replaced-N)",
            found.join(", "),
            out.join("last.safetensors").display()
        )));
    }
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
    let aside = (1..).map(|n| out.with_file_name(format!("{name}.replaced-{n}"))).find(|p| !p.exists()).expect("a free name");
    std::fs::rename(out, &aside).map_err(|e| Error::File { path: shown.to_string(), msg: format!("cannot move the old run aside to {}: {e}", aside.display()) })?;
    say(show, format!("--overwrite: moved the previous run in {shown} to {}", aside.display()));
    Ok(())
}

/// The training images (at least one batch of them) and, when the kNN monitor can vote, the
/// test images.
fn load_data(cfg: &Config, show: bool) -> Result<(Arc<Dataset>, Option<Dataset>)> {
    crate::setup::check_data_path(&cfg.data.path, "data.path")?;
    if let Some(t) = &cfg.data.test_path {
        crate::setup::check_data_path(t, "data.test_path")?;
    }
    let train_set = Arc::new(load_split(&cfg.data.path, Split::Train, cfg)?);
    if train_set.len() < cfg.batch_size {
        return Err(Error::Config(format!(
            "data.path {}: {} images, fewer than one batch of {}",
            cfg.data.path.display(),
            train_set.len(),
            cfg.batch_size
        )));
    }
    // The kNN monitor votes with the training images' labels: unlabelled ones have none.
    let unlabeled = train_set.classes == [crate::data::stl10::UNLABELED];
    let test_set = match &cfg.data.test_path {
        Some(_) if unlabeled => {
            say(show, "kNN monitor off: the training images are unlabelled (one class, \"unlabeled\")".into());
            None
        }
        Some(p) => Some(load_split(p, Split::Test, cfg)?),
        None => None,
    };
    Ok((train_set, test_set))
}
