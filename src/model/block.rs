//! What one transformer block computes, described rather than hard-coded:
//! the forward passes (CPU `llama.rs`, GPU `gpu`) read a [`BlockSpec`] per
//! layer, taken from the model's config. The variants are those a GGUF's
//! architecture can ask for; each backend says which it runs
//! ([`BlockSpec::check`]) so a model it cannot run is refused at load with a
//! typed error, never computed wrongly.

use crate::error::{Error, Result};

/// Where a block's RMSNorms sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormPlacement {
    /// Before attention and before the FFN (llama, qwen2).
    Pre,
    /// Also after each of them, before the residual add (gemma 3).
    PreAndPost,
}

/// The gated FFN's activation: `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation (gemma).
    GeluTanh,
}

/// Which pairs of a head's values RoPE rotates together.
pub use crate::backend::cpu::ops::RopeStyle;

/// The keys a query attends over (the cache sizes each layer's store by it).
pub use crate::kv_cache::AttentionWindow;

/// One layer's recipe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockSpec {
    pub norms: NormPlacement,
    /// RMSNorm of each query and key head before RoPE.
    pub qk_norm: bool,
    /// Biases added to the Q, K and V projections.
    pub qkv_bias: bool,
    pub activation: Activation,
    pub rope_style: RopeStyle,
    pub rope_base: f32,
    pub window: AttentionWindow,
}

impl BlockSpec {
    /// The llama block: pre-norm, SiLU-gated FFN, adjacent-pair RoPE, global
    /// attention (`qkv_bias` where the file has the optional bias tensors).
    pub fn llama(rope_base: f32, qkv_bias: bool) -> Self {
        Self { norms: NormPlacement::Pre, qk_norm: false, qkv_bias, activation: Activation::Silu, rope_style: RopeStyle::Adjacent, rope_base, window: AttentionWindow::Global }
    }

    /// Refuses what `backend` does not compute yet; `supports` lists what it does.
    pub fn check(&self, backend: &str, supports: &BlockSupport) -> Result<()> {
        let missing = [
            (self.norms == NormPlacement::PreAndPost && !supports.post_norms, "post-attention and post-FFN norms"),
            (self.qk_norm && !supports.qk_norm, "QK-norm"),
            (self.qkv_bias && !supports.qkv_bias, "Q/K/V biases"),
            (self.activation == Activation::GeluTanh && !supports.gelu, "a GELU FFN"),
            (self.rope_style == RopeStyle::Halves && !supports.rope_halves, "NeoX-style RoPE"),
            (matches!(self.window, AttentionWindow::Sliding(_)) && !supports.sliding_window, "sliding-window attention layers"),
        ];
        match missing.iter().find(|(m, _)| *m) {
            Some((_, what)) => Err(Error::Unsupported(format!("the {backend} backend does not compute {what} yet"))),
            None => Ok(()),
        }
    }
}

/// The block features a forward pass computes.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockSupport {
    pub post_norms: bool,
    pub qk_norm: bool,
    pub qkv_bias: bool,
    pub gelu: bool,
    pub rope_halves: bool,
    pub sliding_window: bool,
}
