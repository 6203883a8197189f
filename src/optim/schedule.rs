//! Learning-rate schedules: linear warm-up, then cosine decay to zero, evaluated per step.

/// lr at `step` of `total` steps: a linear warm-up from 0 over `warmup` steps, then
/// base * 0.5 * (1 + cos(pi * progress)).
pub fn warmup_cosine(base: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if warmup > 0 && step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = (step - warmup.min(step)) as f64 / span as f64;
    base * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_starts_at_base_ends_at_zero_and_warms_up_linearly() {
        assert_eq!(warmup_cosine(0.06, 0, 100, 0), 0.06);
        assert!(warmup_cosine(0.06, 100, 100, 0).abs() < 1e-12);
        assert!((warmup_cosine(0.06, 50, 100, 0) - 0.03).abs() < 1e-12);
        assert!((warmup_cosine(1.0, 4, 100, 10) - 0.5).abs() < 1e-12);
        assert_eq!(warmup_cosine(1.0, 10, 100, 10), 1.0);
    }
}
