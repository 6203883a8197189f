//! The process-wide stop request. The first Ctrl-C / SIGTERM sets it: training saves
//! `last.safetensors` at the last completed step and exits 130; every long pass over a dataset
//! (decoding, the kNN bank and queries, probe features, embed) checks it between batches and
//! stops with `Error::Interrupted`. A second signal exits at once (130).

use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Installs the Ctrl-C / SIGTERM handler (once) and returns the flag it sets.
pub fn install() -> &'static AtomicBool {
    INSTALL.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if REQUESTED.swap(true, Ordering::SeqCst) {
                eprintln!("\nsecond interrupt: exiting now");
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: stopping at the next safe point and saving (Ctrl-C again to abort)");
        });
    });
    &REQUESTED
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// `Error::Interrupted` naming `what` was running, when a stop was asked for.
pub fn check(what: &str) -> Result<()> {
    if requested() { Err(Error::Interrupted(format!("during {what}"))) } else { Ok(()) }
}
