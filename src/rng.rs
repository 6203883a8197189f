//! Counter-based randomness: a stream is keyed by (seed, purpose, ...) and never depends on
//! which thread asked first. SplitMix64 mixes the key; draws advance a counter.

#[derive(Clone, Debug)]
pub struct Rng {
    key: u64,
    counter: u64,
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { key: mix(seed), counter: 0 }
    }
    /// An independent stream for (this key, ids...), e.g. (seed) -> (epoch, sample, view).
    pub fn derive(&self, ids: &[u64]) -> Self {
        let key = ids.iter().fold(self.key, |k, &id| mix(k ^ mix(id)));
        Rng { key, counter: 0 }
    }
    /// A stream for a named purpose ("init", "augment", ...).
    pub fn stream(&self, purpose: &str) -> Self {
        let h = purpose.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        self.derive(&[h])
    }
    pub fn next_u64(&mut self) -> u64 {
        self.counter += 1;
        mix(self.key ^ mix(self.counter))
    }
    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    pub fn uniform_range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// Uniform integer in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// A uniformly random permutation of 0..n (Fisher-Yates) drawn from `rng`.
pub fn permutation(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        p.swap(i, rng.below(i as u64 + 1) as usize);
    }
    p
}
