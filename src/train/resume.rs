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
        Ok(()) => Error::Interrupted(format!(
            "state saved to {} at epoch {}, step {} (stopped {what})",
            path.display(),
            state.epoch,
            state.step_in_epoch
        )),
        Err(se) => se,
    }
}

/// A resume must continue the same run: the settings that change what a step computes or how
/// the data is cut into steps may not differ from the checkpoint's.
pub(super) fn check_resume_compatible(path: &Path, saved: &TrainState, cfg: &Config) -> Result<()> {
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
    match settings.into_iter().find(|(_, was, now)| was != now) {
        Some((key, was, now)) => differ(key, was, now),
        None => Ok(()),
    }
}
