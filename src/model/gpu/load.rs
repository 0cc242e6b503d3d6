//! [`GpuLlama::load`]: the weights uploaded layer by layer and the forward
//! pass recorded as it goes, in the CPU's order: the embedding (scaled where
//! the model says), per layer norm → QKV → biases, QK-norm, RoPE and cache
//! write → attention → output projection (post-normed) → norm → gate/up →
//! SiLU or GELU → down (post-normed), then the final norm, the output
//! projection and the tail (penalty, argmax, top-k).

use super::buffers::{f32_buffer, storage, Buffers};
use super::{distinct, kv_params, window_cap, GpuLayer, GpuLlama, Tail, GPU_MAX_CHUNK, GPU_MAX_PENALTY_IDS, GPU_TOP_K};
use crate::backend::cpu::quant::QK;
use crate::backend::webgpu::kernels::QuantMode;
use crate::backend::webgpu::ops::{self, Pass};
use crate::backend::webgpu::uniforms::{EmbedParams, KvParams, MatmulParams, NormParams, QuantParams, VocabParams};
use crate::backend::webgpu::{GpuContext, GpuMatrix, Kernels};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::kv_cache::{AttentionWindow, KvCacheConfig, KvDType};
use crate::model::block::{Activation, NormPlacement, RopeStyle};
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

/// Layer `l`'s rope_kv and attention passes over the caches `kc` / `vc`
/// (the model's, or a batch's with its own `scores`).
#[allow(clippy::too_many_arguments)]
pub(super) fn cache_passes(k: &mut Kernels, ctx: &GpuContext, b: &Buffers, l: &GpuLayer, p: KvParams, kc: &wgpu::Buffer, vc: &wgpu::Buffer, scores: &wgpu::Buffer) -> Result<(Pass, Pass)> {
    let (tok, cs) = (&b.tok[l.window], &b.cs[l.rope]);
    let rope = ops::RopeKv { p, step: &b.step, qkv: &b.qkv, tok, cs, bias: &l.bias, norms: &l.norms, q: &b.q, q_sink: &b.q_sink, kc, vc };
    let rope = ops::rope_kv(k, ctx, l.variant, TOKENS, rope)?;
    let att = ops::Attention { p, step: &b.step, tok, q: &b.q, q_sink: &b.q_sink, kc, vc, scores, out: &b.attn };
    Ok((rope, ops::attention(k, ctx, TOKENS, att)?))
}

fn check_supported(c: &LlamaConfig) -> Result<()> {
    let (e, hd, ff) = (c.n_embd, c.head_dim, c.n_ff);
    let qd = c.n_head * hd;
    if hd > 256 || hd % 4 != 0 || e % QK != 0 || ff % QK != 0 || !qd.is_multiple_of(QK) || c.n_head + c.n_head_kv > 64 {
        return Err(Error::Unsupported(format!("the WebGPU kernels need head_dim <= 256 in fours, at most 64 query and key heads and widths in blocks of 32 (head_dim {hd})")));
    }
    if c.rope_dim != hd {
        return Err(Error::Unsupported("partial RoPE is not implemented on the WebGPU backend".into()));
    }
    Ok(())
}

/// Bytes of one layer's K (or V) cache of `cap` slots, checked against the device's largest binding.
fn kv_layer_bytes(ctx: &GpuContext, c: &LlamaConfig, cap: usize, dtype: KvDType) -> Result<usize> {
    let elem = if dtype == KvDType::F16 { 2 } else { 4 };
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
        let (windows, window_of) = distinct(cfg.blocks.iter().map(|b| b.window));
        let (bases, rope_of) = distinct(cfg.blocks.iter().map(|b| b.rope_base));
        let caps: Vec<usize> = windows.iter().map(|&w| window_cap(&kv, w)).collect();
        let b = Buffers::new(ctx, &cfg, caps.iter().copied().max().unwrap_or(kv.window), windows.len(), bases.len())?;
        let mut l = Loader { g, ctx, c: &cfg, b: &b, k: Kernels::new(ctx, kv.dtype == KvDType::F16), passes: Vec::new(), weight_bytes: 0, kv_bytes: (0, 0) };
        let embed = l.embedding()?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let (w, r) = (window_of[i], rope_of[i]);
            layers.push(l.layer(i, w, r, windows[w], caps[w], kv.dtype)?);
        }
        let tail = l.output(embed)?;
        let Loader { k: kernels, passes, weight_bytes, kv_bytes, .. } = l;
        Ok(Self {
            ropes: bases.iter().map(|&base| Rope::new(cfg.head_dim, base)).collect(),
            windows,
            layers,
            kv_bytes,
            cfg,
            ctx: ctx.clone(),
            kv,
            b,
            kernels,
            passes,
            tail,
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
    /// Post-norm weights of the attention and FFN outputs (gemma 3).
    post_norms: Option<(wgpu::Buffer, wgpu::Buffer)>,
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
    kv_bytes: (usize, usize),
}

impl Loader<'_> {
    fn tensor(&self, name: &str, dims: &[usize]) -> Result<QTensor> {
        self.g.tensor(name, dims, &Device::Cpu)
    }

    fn matrix(&self, name: &str, dims: &[usize]) -> Result<GpuMatrix> {
        GpuMatrix::from_tensors(self.ctx, name, &[&self.tensor(name, dims)?])
    }

    /// A vector's values (`n` of them), dequantized.
    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        Ok(self.tensor(name, &[n])?.dequantize(&Device::Cpu)?.to_vec1::<f32>()?)
    }

    /// A norm's weights (`[n_embd]`), dequantized.
    fn norm(&self, name: &str) -> Result<wgpu::Buffer> {
        Ok(f32_buffer(self.ctx, name, &self.vector(name, self.c.n_embd)?))
    }

    /// Layer `i`'s `[q | k | v]` biases and `[q | k]` QK-norm weights as the
    /// rope_kv kernel reads them (16 unread bytes where the block has none).
    fn cache_inputs(&self, i: usize) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
        use LayerTensor::*;
        let spec = &self.c.blocks[i];
        let mut bias = Vec::new();
        if spec.qkv_bias {
            for t in [AttnQ, AttnK, AttnV] {
                bias.extend(self.vector(&t.bias_name(i), t.dims(self.c)[0])?);
            }
        }
        let mut norms = Vec::new();
        if spec.qk_norm {
            for t in [AttnQNorm, AttnKNorm] {
                norms.extend(self.vector(&t.name(i), self.c.head_dim)?);
            }
        }
        let buffer = |name: &str, v: &[f32]| if v.is_empty() { storage(self.ctx, name, 16) } else { f32_buffer(self.ctx, name, v) };
        Ok((buffer("qkv_bias", &bias), buffer("qk_norm", &norms)))
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
            let p = EmbedParams { cols: e as u32, row_start: part.row_start as u32, rows: part.rows as u32, scale: self.c.embedding_scale };
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
            post_norms: match self.c.blocks[i].norms {
                NormPlacement::PreAndPost => Some((self.norm(&name(AttnPostNorm))?, self.norm(&name(FfnPostNorm))?)),
                NormPlacement::Pre => None,
            },
            qkv: self.stacked(&[(&q, rows(AttnQ)), (&k, rows(AttnK)), (&v, rows(AttnV))], e)?,
            wo: self.matrix(&name(AttnOutput), &AttnOutput.dims(self.c))?,
            gu: self.stacked(&[(&gate, rows(FfnGate)), (&up, rows(FfnUp))], e)?,
            down: self.matrix(&name(FfnDown), &FfnDown.dims(self.c))?,
        })
    }

    /// A block output's way into the residual stream: the matmul adds to `x`,
    /// or (post-norm blocks) writes `o`, normed and added by norm_add.
    fn project_into_residual(&mut self, m: &GpuMatrix, post_norm: Option<&wgpu::Buffer>) -> Result<()> {
        let (b, e) = (self.b, self.c.n_embd);
        let Some(w) = post_norm else { return self.matmul(&[(m, 0)], e, true, false, &b.x) };
        self.matmul(&[(m, 0)], e, false, false, &b.o)?;
        let p = NormParams { cols: e as u32, eps: self.c.rms_eps, ..Default::default() };
        self.passes.push(ops::norm_add(&self.k, self.ctx, TOKENS, ops::NormAdd { p, step: &b.step, o: &b.o, w, x: &b.x })?);
        Ok(())
    }

    /// Uploads layer `i` (attention window kind `window` of `cap` slots, RoPE
    /// table `rope`) with its caches and records its passes.
    fn layer(&mut self, i: usize, window: usize, rope: usize, attends: AttentionWindow, cap: usize, dtype: KvDType) -> Result<GpuLayer> {
        let w = self.layer_weights(i)?;
        let c = self.c;
        let spec = c.blocks[i];
        let (e, ff, qd) = (c.n_embd, c.n_ff, c.n_head * c.head_dim);
        let kvp = kv_params(c, cap);
        let layer_bytes = kv_layer_bytes(self.ctx, c, cap, dtype)?;
        let (bias, norms) = self.cache_inputs(i)?;
        let extra = w.post_norms.as_ref().map_or(0, |_| 2 * e * 4) + (bias.size() + norms.size()) as usize;
        self.weight_bytes += w.qkv.iter().chain(&w.gu).map(|(m, _)| m.bytes()).sum::<usize>() + w.wo.bytes() + w.down.bytes() + 2 * e * 4 + extra;
        match attends {
            AttentionWindow::Global => self.kv_bytes.0 += 2 * layer_bytes,
            AttentionWindow::Sliding(_) => self.kv_bytes.1 += 2 * layer_bytes,
        }
        let (kc, vc) = (storage(self.ctx, "k_cache", layer_bytes), storage(self.ctx, "v_cache", layer_bytes));
        let b = self.b;
        let variant = ops::RopeVariant { bias: spec.qkv_bias, qk_norm: spec.qk_norm, rope_halves: spec.rope_style == RopeStyle::Halves };

        self.quant(QuantMode::Norm, e, e, 0, false, &b.x, &w.attn_norm)?;
        self.matmul(&w.qkv.iter().map(|(m, o)| (m, *o)).collect::<Vec<_>>(), kvp.qkv_stride as usize, false, false, &b.qkv)?;
        let at = self.passes.len();
        let mut layer = GpuLayer { window, rope, variant, bias, norms, passes: (at, at + 1) };
        let (rope_pass, attention) = cache_passes(&mut self.k, self.ctx, b, &layer, kvp, &kc, &vc, &b.scores)?;
        self.passes.extend([rope_pass, attention]);
        self.quant(QuantMode::Plain, qd, qd, 0, false, &b.attn, &w.attn_norm)?;
        self.project_into_residual(&w.wo, w.post_norms.as_ref().map(|p| &p.0))?;
        self.quant(QuantMode::Norm, e, e, 0, false, &b.x, &w.ffn_norm)?;
        self.matmul(&w.gu.iter().map(|(m, o)| (m, *o)).collect::<Vec<_>>(), 2 * ff, false, false, &b.gu)?;
        let activation = match spec.activation {
            Activation::Silu => QuantMode::Silu,
            Activation::GeluTanh => QuantMode::Gelu,
        };
        self.quant(activation, ff, 2 * ff, ff, false, &b.gu, &w.attn_norm)?;
        self.project_into_residual(&w.down, w.post_norms.as_ref().map(|p| &p.1))?;
        layer.passes = (at, at + 1);
        Ok(layer)
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
