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
    /// Every tensor of a llama block, in load order.
    pub const ALL: [LayerTensor; 9] = [
        LayerTensor::AttnNorm,
        LayerTensor::AttnQ,
        LayerTensor::AttnK,
        LayerTensor::AttnV,
        LayerTensor::AttnOutput,
        LayerTensor::FfnNorm,
        LayerTensor::FfnGate,
        LayerTensor::FfnUp,
        LayerTensor::FfnDown,
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
            LayerTensor::AttnNorm | LayerTensor::FfnNorm => vec![e],
            LayerTensor::AttnQ => vec![qd, e],
            LayerTensor::AttnK | LayerTensor::AttnV => vec![kvd, e],
            LayerTensor::AttnOutput => vec![e, qd],
            LayerTensor::FfnGate | LayerTensor::FfnUp => vec![ff, e],
            LayerTensor::FfnDown => vec![e, ff],
        }
    }
}
