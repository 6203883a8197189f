//! Weight initialisers matching PyTorch / torchvision / timm defaults. Values are drawn in
//! PyTorch's layout order from a counter-based stream keyed by the parameter's name.

use crate::rng::Rng;

#[derive(Clone, Copy, Debug)]
pub enum Init {
    Zeros,
    Ones,
    Constant(f64),
    /// U(-b, b), b = 1/sqrt(fan_in): PyTorch's default for Linear/Conv weights and biases
    /// (kaiming_uniform with a = sqrt(5)).
    UniformFanIn(usize),
    /// N(0, 2/fan_out): torchvision ResNet conv weights (kaiming_normal, fan_out, relu).
    KaimingNormalFanOut(usize),
    /// N(0, std^2) truncated to [-2, 2] (absolute, as timm's trunc_normal_).
    TruncNormal(f64),
    Normal(f64),
}

impl Init {
    pub fn sample(self, n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n)
            .map(|_| match self {
                Init::Zeros => 0.0,
                Init::Ones => 1.0,
                Init::Constant(c) => c,
                Init::UniformFanIn(f) => {
                    let b = 1.0 / (f.max(1) as f64).sqrt();
                    rng.uniform_range(-b, b)
                }
                Init::KaimingNormalFanOut(f) => rng.normal() * (2.0 / f.max(1) as f64).sqrt(),
                Init::TruncNormal(std) => loop {
                    let v = rng.normal() * std;
                    if (-2.0..=2.0).contains(&v) {
                        break v;
                    }
                },
                Init::Normal(std) => rng.normal() * std,
            } as f32)
            .collect()
    }
}
