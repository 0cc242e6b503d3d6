//! Rotary position embedding angles for arbitrary (absolute) positions.
//!
//! Angles are computed in f64 so that positions far beyond the window (a chat
//! that has streamed 100k tokens through the cache) keep full precision.

pub struct Rope {
    inv_freq: Vec<f64>,
}

impl Rope {
    pub fn new(head_dim: usize, base: f32) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| (base as f64).powf(-(2.0 * i as f64) / head_dim as f64))
            .collect();
        Self { inv_freq }
    }

    /// The cosines and sines of position `p`'s angles (`head_dim / 2` each).
    pub fn angles(&self, p: usize, cos: &mut [f32], sin: &mut [f32]) {
        for ((&f, c), s) in self.inv_freq.iter().zip(cos).zip(sin) {
            let a = p as f64 * f;
            *c = a.cos() as f32;
            *s = a.sin() as f32;
        }
    }
}
