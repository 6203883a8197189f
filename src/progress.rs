//! Progress bars for every long pass (training, decoding a dataset, the kNN bank and queries,
//! probe features, embed): position, rate and ETA on stderr. indicatif draws nothing when stderr
//! is not a terminal, so logs and tests stay clean.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` items labelled `what`; hidden when `show` is false.
pub fn bar(len: usize, what: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len as u64);
    b.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_prefix(what.to_string());
    b
}
