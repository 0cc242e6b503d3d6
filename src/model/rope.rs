//! Rotary position embedding tables for arbitrary (absolute) positions.
//!
//! Angles are computed in f64 so that positions far beyond the window (a chat
//! that has streamed 100k tokens through the cache) keep full precision.

use crate::error::Result;
use candle_core::{Device, Tensor};

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

    /// `(cos, sin)`, each `[positions.len(), head_dim / 2]`.
    pub fn tables(&self, positions: impl Iterator<Item = usize>, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        let mut n = 0;
        for p in positions {
            for &f in &self.inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
            n += 1;
        }
        Ok((
            Tensor::from_vec(cos, (n, half), device)?,
            Tensor::from_vec(sin, (n, half), device)?,
        ))
    }

    /// Rotates `x` (`[heads, T, head_dim]`, contiguous) by the tables' positions,
    /// rotating adjacent pairs as llama.cpp's `LLAMA_ROPE_TYPE_NORM` does.
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x = x.unsqueeze(0)?;
        Ok(candle_nn::rotary_emb::rope_i(&x, cos, sin)?.squeeze(0)?)
    }
}
