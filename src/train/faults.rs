//! Fault injection, a test hook: the tests make a chosen step go wrong through the real binary,
//! and the loop reaches the hook through `Faults::corrupt_views` alone, so the loop body reads
//! no environment variables. Read once when the loop starts; without the variable set it does
//! nothing.
//!
//! `SSL_ENGINE_TEST_NAN_AT_STEP=<global step>`: one NaN pixel in that step's first view, as a
//! corrupt input would bring (tests/fault_tolerance.rs checks the skip-and-count and the
//! stop-with-exit-3 paths with it).

/// The faults the environment asks for.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Faults {
    nan_at_step: Option<usize>,
}

impl Faults {
    pub(crate) fn from_env() -> Self {
        Faults { nan_at_step: std::env::var("SSL_ENGINE_TEST_NAN_AT_STEP").ok().and_then(|v| v.parse().ok()) }
    }

    /// Puts the asked-for NaN into the batch of global step `step` (one view per entry).
    pub(crate) fn corrupt_views(&self, step: usize, views: &mut [Vec<f32>]) {
        if self.nan_at_step == Some(step)
            && let Some(v) = views.first_mut().and_then(|v| v.first_mut())
        {
            *v = f32::NAN;
        }
    }
}
