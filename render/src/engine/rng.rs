//! The one random number generator engines use.
//!
//! Resumed output must be bit-identical to an uninterrupted run, so every random draw has to be a
//! pure function of (seed, what is being drawn). A generator we own cannot change behaviour under
//! a dependency upgrade, and deriving a fresh stream per clip (instead of threading one stream
//! through the whole job) means clip *k* can be rendered without replaying clips `0..k`.

/// Mixes a 64-bit value into a well-distributed one (SplitMix64's finaliser).
///
/// Used to turn structured inputs such as `(seed, clip index)` into independent stream seeds.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A xoshiro256** generator: small, fast, and fully specified by its four words of state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeededRng {
    state: [u64; 4],
}

/// Domain tags keep streams for different purposes apart even when they share a seed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    /// The initial noise of one clip's latents.
    ClipNoise,
    /// Generated model weights.
    Weights,
    /// The hashed text embedding of one prompt word.
    TextToken,
}

impl Stream {
    fn tag(self) -> u64 {
        match self {
            Stream::ClipNoise => 0x636c_6970_6e6f_6973,
            Stream::Weights => 0x7765_6967_6874_7321,
            Stream::TextToken => 0x7465_7874_746f_6b6e,
        }
    }
}

impl SeededRng {
    /// A generator for `stream`, seeded by `seed` and a per-use `index` (clip index, word hash…).
    pub(crate) fn for_stream(stream: Stream, seed: u64, index: u64) -> Self {
        let mut z = mix64(seed ^ stream.tag());
        z = mix64(z ^ index);
        let mut state = [0u64; 4];
        for word in &mut state {
            z = mix64(z);
            *word = z;
        }
        // xoshiro must never be all zeros; mix64 of distinct inputs makes that practically
        // impossible, but keep the generator valid regardless.
        if state == [0; 4] {
            state[0] = 1;
        }
        SeededRng { state }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = self.state;
        let result = s1.wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s1 << 17;
        let mut s = [s0, s1, s2 ^ s0, s3 ^ s1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        self.state = s;
        result
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub(crate) fn next_unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal sample (Box–Muller; one of the pair is discarded so the stream position
    /// depends only on how many samples were drawn).
    pub(crate) fn next_normal(&mut self) -> f32 {
        let u1 = 1.0 - self.next_unit_f64(); // (0, 1], keeps ln finite
        let u2 = self.next_unit_f64();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// `count` standard normal samples.
    pub(crate) fn normals(&mut self, count: usize) -> Vec<f32> {
        (0..count).map(|_| self.next_normal()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_and_index_give_the_same_stream() {
        let mut a = SeededRng::for_stream(Stream::ClipNoise, 42, 3);
        let mut b = SeededRng::for_stream(Stream::ClipNoise, 42, 3);
        assert_eq!(a.normals(64), b.normals(64));
    }

    #[test]
    fn different_clip_index_gives_a_different_stream() {
        let mut a = SeededRng::for_stream(Stream::ClipNoise, 42, 3);
        let mut b = SeededRng::for_stream(Stream::ClipNoise, 42, 4);
        assert_ne!(a.normals(8), b.normals(8));
    }

    #[test]
    fn streams_for_different_purposes_differ_under_one_seed() {
        let mut a = SeededRng::for_stream(Stream::ClipNoise, 7, 0);
        let mut b = SeededRng::for_stream(Stream::Weights, 7, 0);
        assert_ne!(a.next_u64(), b.next_u64());
    }

    #[test]
    fn normal_samples_have_unit_scale() {
        let mut rng = SeededRng::for_stream(Stream::Weights, 1, 1);
        let samples = rng.normals(20_000);
        let n = samples.len() as f64;
        let mean = samples.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = samples
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }
}
