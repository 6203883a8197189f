//! Fault injection, a test hook: the tests make a chosen step go wrong through the real binary,
//! and the loop reaches the hook through `Faults` alone, so the loop body reads no environment
//! variables. Read once when the loop starts; without the variables set it does nothing.
//!
//! - `SSL_ENGINE_TEST_NAN_AT_STEP=<global step>`: one NaN pixel in that step's first view, as a
//!   corrupt input would bring (tests/fault_tolerance.rs checks the skip-and-count and the
//!   stop-with-exit-3 paths with it).
//! - `SSL_ENGINE_TEST_RANK_FAULT=<rank>:<global step>:fail` makes that rank of a data-parallel
//!   run fail before that step, as a crashed rank would; `...:hang<seconds>` makes it stop
//!   answering that long, as a hung one would (tests/train_ranks.rs checks that the others stop
//!   within the timeout, naming it).

use std::time::Duration;

use crate::error::{Error, Result};

/// What a rank does at its injected fault.
#[derive(Clone, Copy, Debug, PartialEq)]
enum RankFault {
    Fail,
    Hang(Duration),
}

/// The faults the environment asks for.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Faults {
    nan_at_step: Option<usize>,
    rank_fault: Option<(usize, usize, RankFault)>,
}

impl Faults {
    pub(crate) fn from_env() -> Self {
        Faults {
            nan_at_step: std::env::var("SSL_ENGINE_TEST_NAN_AT_STEP").ok().and_then(|v| v.parse().ok()),
            rank_fault: std::env::var("SSL_ENGINE_TEST_RANK_FAULT").ok().and_then(|v| parse_rank_fault(&v)),
        }
    }

    /// Puts the asked-for NaN into the batch of global step `step` (one view per entry).
    pub(crate) fn corrupt_views(&self, step: usize, views: &mut [Vec<f32>]) {
        if self.nan_at_step == Some(step)
            && let Some(v) = views.first_mut().and_then(|v| v.first_mut())
        {
            *v = f32::NAN;
        }
    }

    /// The asked-for failure or hang of `rank` before global step `step`.
    pub(crate) fn rank_fault(&self, rank: usize, step: usize) -> Result<()> {
        match self.rank_fault {
            Some((r, s, RankFault::Fail)) if (r, s) == (rank, step) => {
                Err(Error::Other(format!("injected failure before step {step} (SSL_ENGINE_TEST_RANK_FAULT, a test)")))
            }
            Some((r, s, RankFault::Hang(d))) if (r, s) == (rank, step) => {
                std::thread::sleep(d);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// `<rank>:<step>:fail` or `<rank>:<step>:hang<seconds>`.
fn parse_rank_fault(v: &str) -> Option<(usize, usize, RankFault)> {
    let mut it = v.trim().splitn(3, ':');
    let (rank, step, what) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?);
    let fault = match what {
        "fail" => RankFault::Fail,
        h => RankFault::Hang(Duration::from_secs_f64(h.strip_prefix("hang")?.parse().ok()?)),
    };
    Some((rank, step, fault))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_faults_parse() {
        assert_eq!(parse_rank_fault("1:5:fail"), Some((1, 5, RankFault::Fail)));
        assert_eq!(parse_rank_fault("0:2:hang1.5"), Some((0, 2, RankFault::Hang(Duration::from_millis(1500)))));
        assert_eq!(parse_rank_fault("1:x:fail"), None);
        assert_eq!(parse_rank_fault("1:2:explode"), None);
    }
}
