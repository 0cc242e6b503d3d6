//! [`GpuLlama::load`]: the weights uploaded layer by layer and the forward
//! pass recorded as it goes, in the CPU's order: the embedding, per layer
//! norm → QKV → RoPE and cache write → attention → output projection →
//! norm → gate/up → SiLU → down, then the final norm, the output projection
//! and the tail (penalty, argmax, top-k).

use super::buffers::{f32_buffer, storage, Buffers};
use super::{kv_params, GpuLlama, Tail, GPU_MAX_CHUNK, GPU_MAX_PENALTY_IDS, GPU_TOP_K};
use crate::backend::cpu::quant::QK;
use crate::backend::webgpu::kernels::QuantMode;
use crate::backend::webgpu::ops::{self, Pass};
use crate::backend::webgpu::uniforms::{EmbedParams, KvParams, MatmulParams, QuantParams, VocabParams};
use crate::backend::webgpu::{GpuContext, GpuMatrix, Kernels};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::kv_cache::{KvCacheConfig, KvDType};
use crate::model::block::{Activation, BlockSupport};
use crate::model::config::LlamaConfig;
use crate::model::tensors::{LayerTensor, ModelTensor};
use crate::model::rope::Rope;
use candle_core::quantized::QTensor;
use candle_core::Device;

/// Rows every activation buffer holds: the shape checks' token count.
const TOKENS: usize = GPU_MAX_CHUNK;

/// Elements of one sequence's cache in one layer (`[n_kv, window, head_dim]`).
pub(super) fn n_kv_elems(c: &LlamaConfig, cap: usize) -> usize {
    c.n_head_kv * cap * c.head_dim
}

/// A layer's rope_kv and attention passes over the caches `kc` / `vc` (the
/// model's, or a batch's with its own `scores`).
pub(super) fn cache_passes(k: &Kernels, ctx: &GpuContext, b: &Buffers, p: KvParams, kc: &wgpu::Buffer, vc: &wgpu::Buffer, scores: &wgpu::Buffer) -> Result<(Pass, Pass)> {
    let rope = ops::rope_kv(k, ctx, TOKENS, ops::RopeKv { p, step: &b.step, qkv: &b.qkv, tok: &b.tok, cs: &b.cs, q: &b.q, q_sink: &b.q_sink, kc, vc })?;
    let att = ops::Attention { p, step: &b.step, tok: &b.tok, q: &b.q, q_sink: &b.q_sink, kc, vc, scores, out: &b.attn };
    Ok((rope, ops::attention(k, ctx, TOKENS, att)?))
}

fn check_supported(c: &LlamaConfig) -> Result<()> {
    let (e, hd, ff) = (c.n_embd, c.head_dim, c.n_ff);
    let qd = c.n_head * hd;
    if hd > 256 || hd % 2 != 0 || e % QK != 0 || ff % QK != 0 || qd % QK != 0 {
        return Err(Error::Unsupported(format!("the WebGPU kernels need head_dim <= 256 and widths in blocks of 32 (head_dim {hd})")));
    }
    if c.rope_dim != hd {
        return Err(Error::Unsupported("partial RoPE is not implemented on the WebGPU backend".into()));
    }
    // The WGSL kernels compute the llama block: pre-norm, SiLU, adjacent-pair RoPE, global attention.
    for b in &c.blocks {
        b.check("WebGPU", &BlockSupport::default())?;
    }
    c.rope_base()?;
    Ok(())
}

/// Bytes of one layer's K (or V) cache, checked against the device's largest binding.
fn kv_layer_bytes(ctx: &GpuContext, c: &LlamaConfig, kv: &KvCacheConfig) -> Result<usize> {
    let cap = kv.window;
    let elem = if kv.dtype == KvDType::F16 { 2 } else { 4 };
    let bytes = n_kv_elems(c, cap) * elem;
    if bytes as u64 > ctx.info.max_storage_binding {
        return Err(Error::Memory(format!(
            "one layer's {cap}-token cache ({} MiB) exceeds the GPU's largest buffer binding ({} MiB)",
            bytes >> 20,
            ctx.info.max_storage_binding >> 20
        )));
    }
    Ok(bytes)
}

impl GpuLlama {
    /// Uploads the weights of `g` and records the forward pass for a cache of `kv`.
    pub fn load(g: &Gguf, cfg: LlamaConfig, kv: KvCacheConfig, ctx: &GpuContext) -> Result<Self> {
        check_supported(&cfg)?;
        kv.validate()?;
        let layer_bytes = kv_layer_bytes(ctx, &cfg, &kv)?;
        let b = Buffers::new(ctx, &cfg, kv.window)?;
        let mut l = Loader { g, ctx, c: &cfg, b: &b, k: Kernels::new(ctx, kv.dtype == KvDType::F16), passes: Vec::new(), weight_bytes: 0 };
        let embed = l.embedding()?;
        let kvp = kv_params(&cfg, kv.window);
        let kv_passes = (0..cfg.n_layer).map(|i| l.layer(i, kvp, layer_bytes)).collect::<Result<Vec<_>>>()?;
        let tail = l.output(embed)?;
        let Loader { k: kernels, passes, weight_bytes, .. } = l;
        Ok(Self {
            rope: Rope::new(cfg.head_dim, cfg.rope_base()?),
            kv_bytes: 2 * cfg.n_layer * layer_bytes,
            cfg,
            ctx: ctx.clone(),
            kv,
            b,
            kernels,
            passes,
            tail,
            kv_passes,
            weight_bytes,
            pending: None,
            last_dispatches: 0,
            last_readback_bytes: 0,
        })
    }
}

/// One layer's weights on the GPU; `qkv` and `gu` hold one stacked matrix, or
/// one per tensor with its row offset when their types differ.
struct LayerWeights {
    attn_norm: wgpu::Buffer,
    ffn_norm: wgpu::Buffer,
    qkv: Vec<(GpuMatrix, usize)>,
    wo: GpuMatrix,
    gu: Vec<(GpuMatrix, usize)>,
    down: GpuMatrix,
}

/// Uploads weights and records passes in forward order.
struct Loader<'a> {
    g: &'a Gguf<'a>,
    ctx: &'a GpuContext,
    c: &'a LlamaConfig,
    b: &'a Buffers,
    k: Kernels,
    passes: Vec<Pass>,
    weight_bytes: usize,
}

impl Loader<'_> {
    fn tensor(&self, name: &str, dims: &[usize]) -> Result<QTensor> {
        self.g.tensor(name, dims, &Device::Cpu)
    }

    fn matrix(&self, name: &str, dims: &[usize]) -> Result<GpuMatrix> {
        GpuMatrix::from_tensors(self.ctx, name, &[&self.tensor(name, dims)?])
    }

    /// A norm's weights (`[n_embd]`), dequantized.
    fn norm(&self, name: &str) -> Result<wgpu::Buffer> {
        let v = self.tensor(name, &[self.c.n_embd])?.dequantize(&Device::Cpu)?.to_vec1::<f32>()?;
        Ok(f32_buffer(self.ctx, name, &v))
    }

    /// Stacks same-type tensors into one matrix (one dispatch), else keeps them apart.
    fn stacked(&self, names: &[(&str, usize)], cols: usize) -> Result<Vec<(GpuMatrix, usize)>> {
        let ts: Vec<_> = names.iter().map(|(n, rows)| self.tensor(n, &[*rows, cols])).collect::<Result<_>>()?;
        if ts.iter().all(|t| t.dtype() == ts[0].dtype()) {
            let refs: Vec<_> = ts.iter().collect();
            return Ok(vec![(GpuMatrix::from_tensors(self.ctx, names[0].0, &refs)?, 0)]);
        }
        let mut off = 0;
        let mut v = Vec::new();
        for (t, (n, rows)) in ts.iter().zip(names) {
            v.push((GpuMatrix::from_tensors(self.ctx, n, &[t])?, off));
            off += rows;
        }
        Ok(v)
    }

    /// Activation quantization of `input` (`cols` of rows `stride` wide; SiLU's up at `up`).
    #[allow(clippy::too_many_arguments)]
    fn quant(&mut self, mode: QuantMode, cols: usize, stride: usize, up: usize, out_rows: bool, input: &wgpu::Buffer, w: &wgpu::Buffer) -> Result<()> {
        let p = QuantParams { cols: cols as u32, in_stride: stride as u32, up_offset: up as u32, out_rows: out_rows as u32, eps: self.c.rms_eps, q8_max: 127.0, ..Default::default() };
        let b = ops::Quantize { p, step: &self.b.step, x: input, w, q: &self.b.aq, sc: &self.b.asc };
        self.passes.push(ops::quantize(&mut self.k, self.ctx, mode, TOKENS, b)?);
        Ok(())
    }

    /// One matmul: every part of every matrix, each writing its rows at `offset` of `out`'s rows of `stride`.
    fn matmul(&mut self, ms: &[(&GpuMatrix, usize)], stride: usize, acc: bool, out_rows: bool, out: &wgpu::Buffer) -> Result<()> {
        for &(m, offset) in ms {
            for part in &m.parts {
                let p = MatmulParams {
                    rows: part.rows as u32,
                    nb: (m.cols / QK) as u32,
                    out_stride: stride as u32,
                    out_offset: (offset + part.row_start) as u32,
                    out_rows: out_rows as u32,
                    ..Default::default()
                };
                let b = ops::Matmul { p, step: &self.b.step, qs: &part.qs, ws: &part.ws, aq: &self.b.aq, asc: &self.b.asc, out };
                self.passes.push(ops::matmul(&mut self.k, self.ctx, m.format, acc, TOKENS, b)?);
            }
        }
        Ok(())
    }

    /// The token embedding (returned: the output projection when `output.weight` is absent).
    fn embedding(&mut self) -> Result<GpuMatrix> {
        let e = self.c.n_embd;
        let embed = self.matrix(ModelTensor::TokenEmbedding.name(), &ModelTensor::TokenEmbedding.dims(self.c))?;
        self.weight_bytes += embed.bytes();
        for part in &embed.parts {
            let p = EmbedParams { cols: e as u32, row_start: part.row_start as u32, rows: part.rows as u32, _p0: 0 };
            let b = ops::Embed { p, step: &self.b.step, ids: &self.b.ids, qs: &part.qs, ws: &part.ws, x: &self.b.x };
            self.passes.push(ops::embed(&mut self.k, self.ctx, embed.format, TOKENS, b)?);
        }
        Ok(embed)
    }

    fn layer_weights(&self, i: usize) -> Result<LayerWeights> {
        use LayerTensor::*;
        let e = self.c.n_embd;
        let name = |t: LayerTensor| t.name(i);
        // Rows of each matrix (the config's shapes); they are stacked by type.
        let rows = |t: LayerTensor| t.dims(self.c)[0];
        let (q, k, v, gate, up) = (name(AttnQ), name(AttnK), name(AttnV), name(FfnGate), name(FfnUp));
        Ok(LayerWeights {
            attn_norm: self.norm(&name(AttnNorm))?,
            ffn_norm: self.norm(&name(FfnNorm))?,
            qkv: self.stacked(&[(&q, rows(AttnQ)), (&k, rows(AttnK)), (&v, rows(AttnV))], e)?,
            wo: self.matrix(&name(AttnOutput), &AttnOutput.dims(self.c))?,
            gu: self.stacked(&[(&gate, rows(FfnGate)), (&up, rows(FfnUp))], e)?,
            down: self.matrix(&name(FfnDown), &FfnDown.dims(self.c))?,
        })
    }

    /// Uploads layer `i` with caches of `layer_bytes` and records its passes;
    /// returns where its rope_kv and attention passes sit.
    fn layer(&mut self, i: usize, kvp: KvParams, layer_bytes: usize) -> Result<(usize, usize)> {
        let w = self.layer_weights(i)?;
        let c = self.c;
        let (e, ff, qd) = (c.n_embd, c.n_ff, c.n_head * c.head_dim);
        let qkv_stride = kvp.qkv_stride as usize;
        self.weight_bytes += w.qkv.iter().chain(&w.gu).map(|(m, _)| m.bytes()).sum::<usize>() + w.wo.bytes() + w.down.bytes() + 2 * e * 4;
        let (kc, vc) = (storage(self.ctx, "k_cache", layer_bytes), storage(self.ctx, "v_cache", layer_bytes));
        let b = self.b;

        self.quant(QuantMode::Norm, e, e, 0, false, &b.x, &w.attn_norm)?;
        self.matmul(&w.qkv.iter().map(|(m, o)| (m, *o)).collect::<Vec<_>>(), qkv_stride, false, false, &b.qkv)?;
        let at = self.passes.len();
        let (rope, attention) = cache_passes(&self.k, self.ctx, b, kvp, &kc, &vc, &b.scores)?;
        self.passes.extend([rope, attention]);
        self.quant(QuantMode::Plain, qd, qd, 0, false, &b.attn, &w.attn_norm)?;
        self.matmul(&[(&w.wo, 0)], e, true, false, &b.x)?;
        self.quant(QuantMode::Norm, e, e, 0, false, &b.x, &w.ffn_norm)?;
        self.matmul(&w.gu.iter().map(|(m, o)| (m, *o)).collect::<Vec<_>>(), 2 * ff, false, false, &b.gu)?;
        let activation = match self.c.blocks[i].activation {
            Activation::Silu => QuantMode::Silu,
            other => return Err(Error::Unsupported(format!("the WebGPU backend has no {other:?} FFN"))),
        };
        self.quant(activation, ff, 2 * ff, ff, false, &b.gu, &w.attn_norm)?;
        self.matmul(&[(&w.down, 0)], e, true, false, &b.x)?;
        Ok((at, at + 1))
    }

    /// The final norm and output projection (`embed` when the weights are tied), and the tail.
    fn output(&mut self, embed: GpuMatrix) -> Result<Tail> {
        let (vocab, e) = (self.c.vocab_size, self.c.n_embd);
        let b = self.b;
        let out_norm = self.norm(ModelTensor::OutputNorm.name())?;
        self.quant(QuantMode::Norm, e, e, 0, true, &b.x, &out_norm)?;
        let output = if self.g.has_tensor(ModelTensor::Output.name()) {
            let m = self.matrix(ModelTensor::Output.name(), &ModelTensor::Output.dims(self.c))?;
            self.weight_bytes += m.bytes();
            m
        } else {
            embed
        };
        self.matmul(&[(&output, 0)], vocab, false, true, &b.logits)?;
        let (k, ctx) = (&self.k, self.ctx);
        let select = || ops::Select { p: VocabParams { vocab: vocab as u32, ..Default::default() }, step: &b.step, logits: &b.logits, result: &b.result };
        Ok(Tail {
            penalty: ops::penalty(k, ctx, vocab, GPU_MAX_PENALTY_IDS, TOKENS, ops::Penalty { p: &b.penalty, step: &b.step, ids: &b.penalty_ids, logits: &b.logits })?,
            argmax: ops::argmax(k, ctx, TOKENS, select())?,
            topk: ops::topk(k, ctx, GPU_TOP_K, TOKENS, select())?,
        })
    }
}
