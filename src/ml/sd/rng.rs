//! A small seeded normal-noise generator, so each request's noise depends only on its own seed
//! (not on the batch it shares, the device or candle's global RNG).
//!
//! SplitMix64 for uniform bits, Box–Muller for normals. Stable across platforms and versions of
//! this crate; changing it changes every seeded result, so the engine id carries `RNG_VERSION`.

/// Bumped whenever the noise stream for a given seed changes.
pub const RNG_VERSION: u32 = 1;

/// The generator.
pub struct NormalRng {
    state: u64,
    spare: Option<f32>,
}

impl NormalRng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed ^ 0x5D_5EED_0000_C0DE, spare: None }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// One standard normal sample.
    pub fn normal(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let th = std::f64::consts::TAU * u2;
        self.spare = Some((r * th.sin()) as f32);
        (r * th.cos()) as f32
    }

    /// `n` standard normal samples.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_roughly_standard() {
        let a = NormalRng::new(42).normals(100_000);
        assert_eq!(a, NormalRng::new(42).normals(100_000));
        assert_ne!(a[..8], NormalRng::new(43).normals(8)[..]);
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.02, "mean {mean} var {var}");
    }
}
