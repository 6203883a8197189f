//! Learning-rate and weight-decay schedules, evaluated per step: linear warm-up, then cosine
//! decay (to zero by default; I-JEPA warms up from a fraction of the peak and decays to a floor,
//! and moves its weight decay on a cosine too).

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

/// A run's schedules: the learning rate (warm-up from `start_ratio` x peak, then cosine to
/// `final_ratio` x peak) and the weight decay (constant, or a cosine from `weight_decay` to
/// `final_weight_decay` over the run, as I-JEPA's CosineWDSchedule).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub peak: f64,
    pub warmup: usize,
    pub total: usize,
    pub start_ratio: f64,
    pub final_ratio: f64,
    pub weight_decay: f64,
    pub final_weight_decay: Option<f64>,
}

impl Schedule {
    /// The learning rate of step `step` (0-based). With both ratios 0 it is `warmup_cosine`,
    /// bit for bit. I-JEPA's WarmupCosineSchedule counts from 1 in both phases; ours counts the
    /// cosine from 0, as every other method here: the two differ by one step's progress.
    pub fn lr(&self, step: usize) -> f64 {
        let (start, end) = (self.start_ratio * self.peak, self.final_ratio * self.peak);
        if self.warmup > 0 && step < self.warmup {
            return start + (self.peak - start) * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let progress = (step - self.warmup.min(step)) as f64 / span as f64;
        end + (self.peak - end) * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
    }

    /// The weight decay of step `step` (0-based): I-JEPA's cosine with its 1-based count, held
    /// between the two ends.
    pub fn weight_decay(&self, step: usize) -> f64 {
        let Some(last) = self.final_weight_decay else { return self.weight_decay };
        let progress = (step + 1) as f64 / self.total.max(1) as f64;
        let wd = last + (self.weight_decay - last) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        if last <= self.weight_decay { wd.max(last) } else { wd.min(last) }
    }
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

    #[test]
    fn a_schedule_with_zero_ratios_is_warmup_cosine_and_ijepa_s_ends_are_kept() {
        let plain = Schedule { peak: 0.3, warmup: 7, total: 50, start_ratio: 0.0, final_ratio: 0.0, weight_decay: 0.1, final_weight_decay: None };
        for step in 0..60 {
            assert_eq!(plain.lr(step).to_bits(), warmup_cosine(0.3, step, 50, 7).to_bits(), "step {step}");
            assert_eq!(plain.weight_decay(step), 0.1);
        }
        // I-JEPA: from 0.2 x peak over the warm-up, down to 1e-3 x peak; weight decay 0.04 -> 0.4.
        let ijepa = Schedule { start_ratio: 0.2, final_ratio: 1e-3, final_weight_decay: Some(0.4), weight_decay: 0.04, peak: 1.0, warmup: 10, total: 100 };
        assert!((ijepa.lr(0) - (0.2 + 0.8 * 0.1)).abs() < 1e-12);
        assert_eq!(ijepa.lr(10), 1.0);
        assert!((ijepa.lr(100) - 1e-3).abs() < 1e-12);
        assert!((ijepa.weight_decay(49) - 0.22).abs() < 1e-12, "halfway: {}", ijepa.weight_decay(49));
        assert!((ijepa.weight_decay(99) - 0.4).abs() < 1e-12);
    }
}
