//! Every tensor the forward passes read, named and shaped once: the GGUF
//! names (llama.cpp's `LLM_TENSOR_*` names) and the shapes the config
//! implies. The CPU and GPU loaders and the memory estimate all ask here.

use super::config::LlamaConfig;

/// A tensor of the whole model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelTensor {
    TokenEmbedding,
    OutputNorm,
    /// Absent when the output projection is tied to the token embedding.
    Output,
}

/// A tensor of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerTensor {
    AttnNorm,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    FfnNorm,
    FfnGate,
    FfnUp,
    FfnDown,
    /// Per-head RMSNorm weights of the queries and keys (QK-norm blocks).
    AttnQNorm,
    AttnKNorm,
    /// The norms after attention and after the FFN (post-norm blocks).
    AttnPostNorm,
    FfnPostNorm,
}

impl ModelTensor {
    pub fn name(self) -> &'static str {
        match self {
            ModelTensor::TokenEmbedding => "token_embd.weight",
            ModelTensor::OutputNorm => "output_norm.weight",
            ModelTensor::Output => "output.weight",
        }
    }

    /// The shape the config implies, rows first (GGUF order reversed, as candle reads it).
    pub fn dims(self, c: &LlamaConfig) -> Vec<usize> {
        match self {
            ModelTensor::TokenEmbedding | ModelTensor::Output => vec![c.vocab_size, c.n_embd],
            ModelTensor::OutputNorm => vec![c.n_embd],
        }
    }
}

impl LayerTensor {
    /// Every tensor a block may have, in load order (those a block's spec
    /// does not ask for are absent from the file).
    pub const ALL: [LayerTensor; 13] = [
        LayerTensor::AttnNorm,
        LayerTensor::AttnQ,
        LayerTensor::AttnK,
        LayerTensor::AttnV,
        LayerTensor::AttnOutput,
        LayerTensor::FfnNorm,
        LayerTensor::FfnGate,
        LayerTensor::FfnUp,
        LayerTensor::FfnDown,
        LayerTensor::AttnQNorm,
        LayerTensor::AttnKNorm,
        LayerTensor::AttnPostNorm,
        LayerTensor::FfnPostNorm,
    ];

    fn stem(self) -> &'static str {
        match self {
            LayerTensor::AttnNorm => "attn_norm",
            LayerTensor::AttnQ => "attn_q",
            LayerTensor::AttnK => "attn_k",
            LayerTensor::AttnV => "attn_v",
            LayerTensor::AttnOutput => "attn_output",
            LayerTensor::FfnNorm => "ffn_norm",
            LayerTensor::FfnGate => "ffn_gate",
            LayerTensor::FfnUp => "ffn_up",
            LayerTensor::FfnDown => "ffn_down",
            LayerTensor::AttnQNorm => "attn_q_norm",
            LayerTensor::AttnKNorm => "attn_k_norm",
            LayerTensor::AttnPostNorm => "post_attention_norm",
            LayerTensor::FfnPostNorm => "post_ffw_norm",
        }
    }

    /// The GGUF name of this tensor in layer `layer`.
    pub fn name(self, layer: usize) -> String {
        format!("blk.{layer}.{}.weight", self.stem())
    }

    /// The name of its bias (the projections that may have one).
    pub fn bias_name(self, layer: usize) -> String {
        format!("blk.{layer}.{}.bias", self.stem())
    }

    /// The shape the config implies, rows first.
    pub fn dims(self, c: &LlamaConfig) -> Vec<usize> {
        let (e, ff, qd, kvd) = (c.n_embd, c.n_ff, c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        match self {
            LayerTensor::AttnNorm | LayerTensor::FfnNorm | LayerTensor::AttnPostNorm | LayerTensor::FfnPostNorm => vec![e],
            LayerTensor::AttnQNorm | LayerTensor::AttnKNorm => vec![c.head_dim],
            LayerTensor::AttnQ => vec![qd, e],
            LayerTensor::AttnK | LayerTensor::AttnV => vec![kvd, e],
            LayerTensor::AttnOutput => vec![e, qd],
            LayerTensor::FfnGate | LayerTensor::FfnUp => vec![ff, e],
            LayerTensor::FfnDown => vec![e, ff],
        }
    }
}
