//! Stopping and continuing: a resume is checked against the checkpoint's settings before
//! anything is built, and a stop request becomes a saved `last.safetensors`.

use std::path::Path;

use crate::backend::Backend;
use crate::checkpoint::{TrainState, save_checkpoint};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::optim::Optimizer;
use crate::ssl::Method;

/// Turns a stop request into a saved state: `Error::Interrupted` becomes "state saved to
/// <out>/last.safetensors" after saving the last completed step; any other error passes through.
pub(super) fn save_on_interrupt<B: Backend>(
    e: Error,
    cfg: &Config,
    ps: &ParamStore<B>,
    opt: &dyn Optimizer<B>,
    method: &dyn Method<B>,
    state: &TrainState,
) -> Error {
    let Error::Interrupted(what) = e else { return e };
    let path = cfg.out.join("last.safetensors");
    match method.state().and_then(|ms| save_checkpoint(&path, ps, opt, &ms, state)) {
        Ok(()) => Error::Interrupted(format!("state saved to {} {} (stopped {what})", path.display(), position(state, cfg.epochs))),
        Err(se) => se,
    }
}

/// Where a saved state stands, in the progress bar's numbering (epochs from 1): "after step 24
/// of epoch 1/2", or "at the end of epoch 1/2" on an epoch boundary.
pub fn position(state: &TrainState, epochs: usize) -> String {
    if state.step_in_epoch == 0 && state.epoch > 0 {
        format!("at the end of epoch {}/{epochs} (global step {})", state.epoch, state.global_step)
    } else {
        format!("after step {} of epoch {}/{epochs} (global step {})", state.step_in_epoch, state.epoch + 1, state.global_step)
    }
}

/// Settings a resume may change only with `--allow-changes`: the schedule (epochs, the
/// optimiser and its learning rate, warm-up), the data and its augmentation, where the run is
/// written, the method's own settings. Prefixes end in a dot.
/// (The test set only feeds the kNN monitor; model options change tensor shapes, which the
/// weights' load refuses naming the tensor.)
const GATED: &[&str] = &["epochs", "seed", "out", "optim.", "augment.", "data.path", "data.limit_per_class", "data.resize_on_load", "data.max_side", "data.on_corrupt"];

/// Every leaf key of a recipe whose value differs between two recipes, as (key, was, now).
fn recipe_differences(old: &Config, new: &Config) -> Vec<(String, String, String)> {
    let (a, b) = (old.to_table(), new.to_table());
    let mut keys = crate::config::leaf_keys(&a);
    keys.extend(crate::config::leaf_keys(&b));
    keys.sort();
    keys.dedup();
    let show = |v: Option<&toml::Value>| v.map_or("(unset)".to_string(), |v| v.to_string());
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (crate::config::get_dotted(&a, &k), crate::config::get_dotted(&b, &k));
            (x != y).then(|| (k.clone(), show(x), show(y)))
        })
        .collect()
}

/// A resume must continue the same run: the settings that change what a step computes or how
/// the data is cut into steps may not differ from the checkpoint's. The schedule, the data and
/// `out` may change with `allow_changes`; every difference is printed.
pub(super) fn check_resume_compatible(path: &Path, saved: &TrainState, cfg: &Config, allow_changes: bool) -> Result<()> {
    let differ = |key: &str, was: String, now: String| {
        Err(Error::Config(format!(
            "--resume {}: the checkpoint was trained with {key} = {was}, this run asks for {now}; resume with the same {key}, or start a new run",
            path.display()
        )))
    };
    if saved.method != cfg.method {
        return differ("method", format!("{:?}", saved.method), format!("{:?}", cfg.method));
    }
    // Checkpoints written before the config was stored carry an empty string: nothing to check.
    if saved.config.trim().is_empty() {
        return Ok(());
    }
    let Ok(old) = Config::from_stored(&saved.config) else {
        return Ok(());
    };
    let settings = [
        ("model", format!("{:?}", old.model), format!("{:?}", cfg.model)),
        ("batch_size", old.batch_size.to_string(), cfg.batch_size.to_string()),
        ("backend", format!("{:?}", old.backend.as_str()), format!("{:?}", cfg.backend.as_str())),
        ("data.image_size", old.data.image_size.to_string(), cfg.data.image_size.to_string()),
    ];
    if let Some((key, was, now)) = settings.into_iter().find(|(_, was, now)| was != now) {
        return differ(key, was, now);
    }
    let changes = recipe_differences(&old, cfg);
    let gated = |k: &str| GATED.iter().any(|g| k == *g || (g.ends_with('.') && k.starts_with(g))) || crate::ssl::is_method(k.split('.').next().unwrap_or(""));
    let listed = |filter: &dyn Fn(&str) -> bool| -> Vec<String> {
        changes.iter().filter(|(k, ..)| filter(k)).map(|(k, was, now)| format!("{k}: {was} -> {now}")).collect()
    };
    let blocking = listed(&|k| gated(k));
    let other = listed(&|k| !gated(k));
    if !other.is_empty() {
        eprintln!("resume: settings changed since the checkpoint: {}", other.join("; "));
    }
    if blocking.is_empty() {
        return Ok(());
    }
    if allow_changes {
        eprintln!("resume: the schedule, data or run folder changed (--allow-changes): {}", blocking.join("; "));
        return Ok(());
    }
    Err(Error::Config(format!(
        "--resume {}: the recipe differs from the checkpoint's in {}; resume with the checkpoint's settings, \
         or pass --allow-changes to continue the run with the new ones",
        path.display(),
        blocking.join("; ")
    )))
}
