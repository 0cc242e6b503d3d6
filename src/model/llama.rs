//! The llama forward pass on candle: embedding, RMSNorm, RoPE, grouped-query
//! attention over the bounded [`KvCache`], SwiGLU MLP, final norm and output
//! projection. Prefill runs whole chunks through matrix-matrix products.

use super::config::LlamaConfig;
use super::rope::Rope;
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::kv_cache::KvCache;
use crate::backend::cpu::Linear;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use std::sync::Arc;

struct Block {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

/// A loaded llama-family model (weights only; the cache is separate).
pub struct Llama {
    cfg: LlamaConfig,
    embed: Arc<QTensor>,
    blocks: Vec<Block>,
    norm: Tensor,
    output: Linear,
    rope: Rope,
    device: Device,
    weight_bytes: usize,
}

/// Bytes a tensor occupies once loaded (F16/BF16 weights are widened to f32 by Linear).
fn loaded_bytes(g: &Gguf, name: &str) -> usize {
    let (Some(dims), Some(dt)) = (g.tensor_dims(name), g.tensor_dtype(name)) else { return 0 };
    let elems: usize = dims.iter().product();
    match dt {
        GgmlDType::F16 | GgmlDType::BF16 | GgmlDType::F32 => elems * 4,
        dt => elems / dt.block_size() * dt.type_size(),
    }
}

impl Llama {
    /// Bytes the weights of this file will need once loaded, computed from the
    /// header alone, so a model that cannot fit is refused before allocating.
    pub fn estimate_bytes(g: &Gguf, cfg: &LlamaConfig) -> usize {
        let mut total = loaded_bytes(g, "token_embd.weight") + loaded_bytes(g, "output_norm.weight");
        if g.has_tensor("output.weight") {
            total += loaded_bytes(g, "output.weight");
        }
        for i in 0..cfg.n_layer {
            for n in ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"] {
                total += loaded_bytes(g, &format!("blk.{i}.{n}.weight"));
            }
        }
        total
    }

    pub fn load(g: &Gguf, cfg: LlamaConfig, device: &Device) -> Result<Self> {
        let c = &cfg;
        let hd = c.head_dim;
        let qt = |name: &str, dims: &[usize]| g.tensor(name, dims, device);
        let mm = |name: &str, dims: &[usize]| -> Result<Linear> { Linear::new(Arc::new(qt(name, dims)?)) };
        let vec = |name: &str| -> Result<Tensor> { Ok(qt(name, &[c.n_embd])?.dequantize(device)?) };
        let embed = Arc::new(qt("token_embd.weight", &[c.vocab_size, c.n_embd])?);
        if embed.dtype().block_size() > c.n_embd || c.n_embd % embed.dtype().block_size() != 0 {
            return Err(Error::Tensor { name: "token_embd.weight".into(), reason: "rows are not whole blocks".into() });
        }
        let mut blocks = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let p = format!("blk.{i}");
            blocks.push(Block {
                attn_norm: vec(&format!("{p}.attn_norm.weight"))?,
                wq: mm(&format!("{p}.attn_q.weight"), &[c.n_head * hd, c.n_embd])?,
                wk: mm(&format!("{p}.attn_k.weight"), &[c.n_head_kv * hd, c.n_embd])?,
                wv: mm(&format!("{p}.attn_v.weight"), &[c.n_head_kv * hd, c.n_embd])?,
                wo: mm(&format!("{p}.attn_output.weight"), &[c.n_embd, c.n_head * hd])?,
                ffn_norm: vec(&format!("{p}.ffn_norm.weight"))?,
                w_gate: mm(&format!("{p}.ffn_gate.weight"), &[c.n_ff, c.n_embd])?,
                w_up: mm(&format!("{p}.ffn_up.weight"), &[c.n_ff, c.n_embd])?,
                w_down: mm(&format!("{p}.ffn_down.weight"), &[c.n_embd, c.n_ff])?,
            });
        }
        let norm = vec("output_norm.weight")?;
        // Tied embeddings: without `output.weight` the output projection reuses the embedding.
        let output = if g.has_tensor("output.weight") {
            mm("output.weight", &[c.vocab_size, c.n_embd])?
        } else {
            Linear::new(embed.clone())?
        };
        let weight_bytes = Self::estimate_bytes(g, c);
        Ok(Self { rope: Rope::new(hd, c.rope_freq_base), cfg, embed, blocks, norm, output, device: device.clone(), weight_bytes })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// Runs one chunk of tokens (planned with [`KvCache::next_chunk`]) through the
    /// network, appending them to the cache. Returns logits `[T, vocab]` when
    /// `all_logits`, else `[1, vocab]` for the last token only.
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache, all_logits: bool) -> Result<Tensor> {
        let t = ids.len();
        if t == 0 || t != cache.next_chunk(t) {
            return Err(Error::Backend(format!("chunk of {t} tokens does not fit the cache plan")));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(Error::InvalidPrompt(format!("token id {bad} is outside the vocabulary ({})", self.cfg.vocab_size)));
        }
        let c = &self.cfg;
        let (hd, eps) = (c.head_dim, c.rms_eps);
        let n0 = cache.len();
        let (cos, sin) = self.rope.tables(n0..n0 + t, &self.device)?;
        let sink_tables = if cache.shifted() {
            let p = cache.sink_query_position();
            Some(self.rope.tables(std::iter::repeat_n(p, t), &self.device)?)
        } else {
            None
        };
        let ids_t = Tensor::new(ids, &self.device)?;
        let mut x = self.embed.embedding(&ids_t)?; // [T, n_embd]
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((t, n, hd))?.transpose(0, 1)?.contiguous()?)
        };
        for (i, b) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &b.attn_norm, eps)?;
            let q = heads(b.wq.forward(&h)?, c.n_head)?;
            let k = heads(b.wk.forward(&h)?, c.n_head_kv)?;
            let v = heads(b.wv.forward(&h)?, c.n_head_kv)?;
            let q_abs = Rope::apply(&q, &cos, &sin)?;
            let k = Rope::apply(&k, &cos, &sin)?;
            let q_sink = match &sink_tables {
                Some((cs, sn)) => Some(Rope::apply(&q, cs, sn)?),
                None => None,
            };
            let attn = cache.attend(i, &q_abs, q_sink.as_ref(), &k, &v)?;
            x = (x + b.wo.forward(&attn)?)?;
            let h = candle_nn::ops::rms_norm(&x, &b.ffn_norm, eps)?;
            let g = b.w_gate.forward(&h)?;
            let u = b.w_up.forward(&h)?;
            x = (x + b.w_down.forward(&(candle_nn::ops::silu(&g)? * u)?)?)?;
        }
        cache.commit(ids);
        let x = if all_logits { x } else { x.narrow(0, t - 1, 1)? };
        let x = candle_nn::ops::rms_norm(&x.contiguous()?, &self.norm, eps)?;
        Ok(self.output.forward(&x)?)
    }
}
