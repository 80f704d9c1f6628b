//! SplitMix64: reproducible random numbers without a rand dependency.

/// SplitMix64, with uniforms and Box–Muller normals drawn from it.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1), never 0 (so `ln` is finite).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Uniform in [-1, 1), on the 2^-23 grid (24 bits: exact in f32).
    pub fn symmetric_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Standard normal (Box–Muller, the cosine branch).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// [`normal`](Self::normal) rounded to f32.
    pub fn normal_f32(&mut self) -> f32 {
        self.normal() as f32
    }
}

/// `n` values uniform in [-1, 1) from `seed` ([`SplitMix64::symmetric_f32`]).
pub fn symmetric_f32s(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    (0..n).map(|_| rng.symmetric_f32()).collect()
}
