//! Hyper-parameters of a model, read from the GGUF's `<architecture>.*` metadata,
//! and the block each architecture's layers compute.

use super::block::{Activation, AttentionWindow, BlockSpec, NormPlacement, RopeStyle};
use super::tensors::{LayerTensor, ModelTensor};
use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// The architectures kvchat runs (`general.architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
}

impl Architecture {
    fn from_name(name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Architecture::Llama),
            "qwen2" => Ok(Architecture::Qwen2),
            "qwen3" => Ok(Architecture::Qwen3),
            "gemma3" => Ok(Architecture::Gemma3),
            other => Err(Error::Unsupported(format!("architecture `{other}`: kvchat runs `llama` (Llama, SmolLM, TinyLlama, ...), `qwen2`, `qwen3` and `gemma3` models"))),
        }
    }

    /// The GGUF's name, the prefix of its hyper-parameter keys.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Gemma3 => "gemma3",
        }
    }

    /// What layer `layer` computes (as llama.cpp's `llm_build_llama` /
    /// `llm_build_qwen2` / `llm_build_qwen3` / `llm_build_gemma3` and
    /// `llama_model_rope_type`: NORM for llama, NEOX for the others). `sliding_window` is the
    /// file's `<arch>.attention.sliding_window`.
    fn block(self, layer: usize, rope_base: f32, qkv_bias: bool, sliding_window: Option<usize>) -> Result<BlockSpec> {
        Ok(match self {
            Architecture::Llama => BlockSpec::llama(rope_base, qkv_bias),
            Architecture::Qwen2 => BlockSpec { rope_style: RopeStyle::Halves, ..BlockSpec::llama(rope_base, qkv_bias) },
            // QK-norm before RoPE, no biases.
            Architecture::Qwen3 => BlockSpec { rope_style: RopeStyle::Halves, qk_norm: true, ..BlockSpec::llama(rope_base, false) },
            Architecture::Gemma3 => {
                // What llama.cpp takes from its source rather than the file
                // (llama-model.cpp, `LLM_ARCH_GEMMA3` in `load_hparams`):
                // `set_swa_pattern(6)`, every sixth layer global and the other
                // five sliding (`il % 6 < 5`); `rope_freq_base_train_swa =
                // 10000` for the sliding layers, the file's base for the global.
                let n = sliding_window.ok_or_else(|| Error::Metadata { key: "gemma3.attention.sliding_window".into(), reason: "missing".into() })?;
                let global = layer % 6 == 5;
                BlockSpec {
                    norms: NormPlacement::PreAndPost,
                    qk_norm: true,
                    qkv_bias: false,
                    activation: Activation::GeluTanh,
                    rope_style: RopeStyle::Halves,
                    rope_base: if global { rope_base } else { 10_000.0 },
                    window: if global { AttentionWindow::Global } else { AttentionWindow::Sliding(n) },
                }
            }
        })
    }

    /// The factor the token embeddings are scaled by (gemma: `√n_embd`, as
    /// `llm_build_gemma3` scales its input).
    fn embedding_scale(self, n_embd: usize) -> f32 {
        match self {
            Architecture::Gemma3 => (n_embd as f32).sqrt(),
            _ => 1.0,
        }
    }
}

/// Everything the forward pass needs to know about the network's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub arch: Architecture,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    /// What each layer computes (the forward passes read it).
    pub blocks: Vec<BlockSpec>,
    /// The token embeddings are multiplied by this (1 but for gemma).
    pub embedding_scale: f32,
    pub rms_eps: f32,
    pub context_length: usize,
    pub vocab_size: usize,
}

impl LlamaConfig {
    /// Reads and checks the `llama.*` hyper-parameters (errors in the order the keys are read).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = Architecture::from_name(g.get_str("general.architecture")?)?;
        let key = |k: &str| format!("{}.{k}", arch.name());
        let n_layer = g.get_usize(&key("block_count"), 512)?;
        let n_head = g.get_usize(&key("attention.head_count"), 1024)?;
        let n_head_kv = optional_usize(g, &key("attention.head_count_kv"), 1024, n_head)?;
        let n_embd = g.get_usize(&key("embedding_length"), 1 << 16)?;
        let n_ff = g.get_usize(&key("feed_forward_length"), 1 << 18)?;
        let head_dim = head_dim(g, &key, n_head, n_head_kv, n_embd)?;
        let rope_dim = rope_dim(g, &key("rope.dimension_count"), head_dim)?;
        let rope_freq_base = rope_freq_base(g, &key("rope.freq_base"))?;
        no_rope_scaling(g, &key("rope.scaling.type"))?;
        let rms_eps = rms_eps(g, &key("attention.layer_norm_rms_epsilon"))?;
        let context_length = optional_usize(g, &key("context_length"), 1 << 24, 2048)?;
        let vocab_size = vocab_size(g, &key("vocab_size"))?;
        // Q/K/V biases: qwen2 always has them, llama.cpp's llama loads them where present.
        let qkv_bias = g.has_tensor(&LayerTensor::AttnQ.bias_name(0));
        let sliding_window = match g.metadata(&key("attention.sliding_window")) {
            Some(_) => Some(g.get_usize(&key("attention.sliding_window"), 1 << 20)?),
            None => None,
        };
        let blocks = (0..n_layer).map(|i| arch.block(i, rope_freq_base, qkv_bias, sliding_window)).collect::<Result<Vec<_>>>()?;
        let embedding_scale = arch.embedding_scale(n_embd);
        Ok(Self { arch, n_layer, n_head, n_head_kv, n_embd, n_ff, head_dim, rope_dim, blocks, embedding_scale, rms_eps, context_length, vocab_size })
    }

    /// Number of query heads that share one kv head.
    pub fn n_rep(&self) -> usize {
        self.n_head / self.n_head_kv
    }

    /// Each layer's attention window (what its cache store holds).
    pub fn windows(&self) -> Vec<AttentionWindow> {
        self.blocks.iter().map(|b| b.window).collect()
    }

    /// The RoPE base every layer shares (the GPU pass computes one set of angles per position).
    pub fn rope_base(&self) -> Result<f32> {
        let first = self.blocks.first().ok_or_else(|| Error::Unsupported("a model without layers".into()))?;
        if self.blocks.iter().any(|b| b.rope_base != first.rope_base || b.rope_style != first.rope_style) {
            return Err(Error::Unsupported("layers with different RoPE bases or styles".into()));
        }
        Ok(first.rope_base)
    }

    /// Floats of K (or V) stored per token per layer.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// An integer key in `1..=max` when present, `default` when absent.
fn optional_usize(g: &Gguf, key: &str, max: u64, default: usize) -> Result<usize> {
    match g.metadata(key) {
        Some(_) => g.get_usize(key, max),
        None => Ok(default),
    }
}

/// The head size: `attention.key_length` where the file has it (it must equal
/// `value_length`; gemma's heads are wider than `n_embd / n_head`), else
/// `n_embd / n_head`; once the kv heads divide the query heads evenly and the
/// head size is even (RoPE rotates pairs).
fn head_dim(g: &Gguf, key: &dyn Fn(&str) -> String, n_head: usize, n_head_kv: usize, n_embd: usize) -> Result<usize> {
    if !n_head.is_multiple_of(n_head_kv) {
        return Err(Error::Metadata {
            key: key("attention.head_count_kv"),
            reason: format!("{n_head} query heads cannot be shared evenly by {n_head_kv} kv heads"),
        });
    }
    if g.metadata(&key("attention.key_length")).is_some() {
        let k = g.get_usize(&key("attention.key_length"), 1 << 12)?;
        let v = optional_usize(g, &key("attention.value_length"), 1 << 12, k)?;
        if k != v || k % 2 != 0 {
            return Err(Error::Unsupported(format!("key length {k} and value length {v} (kvchat needs them equal and even)")));
        }
        return Ok(k);
    }
    if !n_embd.is_multiple_of(n_head) {
        return Err(Error::Metadata {
            key: key("embedding_length"),
            reason: format!("{n_embd} is not a multiple of the {n_head} heads"),
        });
    }
    let head_dim = n_embd / n_head;
    if !head_dim.is_multiple_of(2) {
        return Err(Error::Metadata {
            key: key("embedding_length"),
            reason: format!("head size {head_dim} is odd: RoPE needs pairs"),
        });
    }
    Ok(head_dim)
}

/// The rotated dimensions per head, which must be the whole head (no partial RoPE).
fn rope_dim(g: &Gguf, key: &str, head_dim: usize) -> Result<usize> {
    let rope_dim = optional_usize(g, key, head_dim as u64, head_dim)?;
    if rope_dim != head_dim {
        return Err(Error::Unsupported(format!(
            "partial RoPE (rope.dimension_count {rope_dim} < head size {head_dim})"
        )));
    }
    Ok(rope_dim)
}

/// Refuses RoPE scaling (linear, YaRN: not computed yet) rather than computing without it.
fn no_rope_scaling(g: &Gguf, key: &str) -> Result<()> {
    match g.metadata(key) {
        Some(_) => match g.get_str(key)? {
            "none" => Ok(()),
            other => Err(Error::Unsupported(format!("RoPE scaling `{other}` ({key})"))),
        },
        None => Ok(()),
    }
}

/// RoPE's base frequency (10000 when absent), which must be > 1.
fn rope_freq_base(g: &Gguf, key: &str) -> Result<f32> {
    let rope_freq_base = match g.metadata(key) {
        Some(_) => g.get_f32(key)?,
        None => 10_000.0,
    };
    if rope_freq_base <= 1.0 {
        return Err(Error::Metadata { key: key.into(), reason: format!("{rope_freq_base} must be > 1") });
    }
    Ok(rope_freq_base)
}

/// RMSNorm's epsilon, which must lie in (0, 1).
fn rms_eps(g: &Gguf, key: &str) -> Result<f32> {
    let rms_eps = g.get_f32(key)?;
    if !(rms_eps > 0.0 && rms_eps < 1.0) {
        return Err(Error::Metadata { key: key.into(), reason: format!("{rms_eps} is not in (0, 1)") });
    }
    Ok(rms_eps)
}

/// `<arch>.vocab_size`, or else the row count of the token embedding matrix.
fn vocab_size(g: &Gguf, key: &str) -> Result<usize> {
    Ok(match g.metadata(key) {
        Some(_) => g.get_usize(key, 1 << 22)?,
        None => match g.tensor_dims(ModelTensor::TokenEmbedding.name()) {
            Some(d) if d.len() == 2 => d[0],
            _ => return Err(Error::Tensor { name: ModelTensor::TokenEmbedding.name().into(), reason: "missing or not a matrix".into() }),
        },
    })
}
