//! The llama forward pass as a straight sequence of kernels over preallocated
//! buffers: embedding, RMSNorm, RoPE, grouped-query attention over the bounded
//! [`KvCache`] (read in place), SwiGLU MLP, final norm and output projection.
//! Prefill runs whole chunks through the matrix-matrix kernels; a decode step
//! allocates nothing. candle supplies the GGUF tensors and the matmuls of weight
//! types without an own kernel.

use super::block::{Activation, BlockSupport};
use super::config::LlamaConfig;
use super::profile::{Clock, Op, Profile};
use super::rope::Rope;
use crate::backend::cpu::quant::{QActivations, QFormat, QMatrix};
use crate::backend::cpu::{ops, Linear};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::kv_cache::{AttnScratch, KvCache};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use std::sync::Arc;

struct Block {
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Vec<f32>,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

/// The token embedding: the own repacked matrix (shared with the output
/// projection when the model ties them) or candle's tensor for other types.
enum Embedding {
    Own(Arc<QMatrix>),
    Candle(Arc<QTensor>),
}

/// A loaded llama-family model (weights only; the cache is separate) and the
/// reusable buffers of its forward pass.
pub struct Llama {
    cfg: LlamaConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: Vec<f32>,
    output: Linear,
    rope: Rope,
    weight_bytes: usize,
    ws: Workspace,
}

/// Every buffer the forward pass writes, grown to the largest chunk seen and
/// then reused: a decode step allocates nothing.
#[derive(Default)]
struct Workspace {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    q_sink: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    sink_cos: Vec<f32>,
    sink_sin: Vec<f32>,
    logits: Vec<f32>,
    positions: Vec<usize>,
    act: QActivations,
    scratch: AttnScratch,
    profile: Option<Profile>,
}

/// The own kernels' format for a GGUF type, if there is one.
fn own_format(dt: GgmlDType) -> Option<QFormat> {
    match dt {
        GgmlDType::Q4_0 => Some(QFormat::Q4_0),
        GgmlDType::Q4_1 => Some(QFormat::Q4_1),
        GgmlDType::Q8_0 => Some(QFormat::Q8_0),
        _ => None,
    }
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
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
        // This pass computes the llama block (pre-norm, SiLU, adjacent-pair RoPE, global attention).
        for b in &c.blocks {
            b.check("CPU", &BlockSupport::default())?;
        }
        let hd = c.head_dim;
        let qt = |name: &str, dims: &[usize]| g.tensor(name, dims, device);
        // Q4_0/Q4_1/Q8_0 are repacked straight from the file's bytes (no
        // intermediate tensor: faster, and a lower peak); other types go through candle.
        let mm = |name: &str, dims: &[usize]| -> Result<Linear> {
            let (data, dt) = g.tensor_data(name, dims)?;
            if let Some(format) = own_format(dt) {
                if let Some(m) = QMatrix::from_blocks(format, dims[0], dims[1], data) {
                    return Ok(Linear::Own(Arc::new(m)));
                }
            }
            Linear::new(Arc::new(qt(name, dims)?))
        };
        let vec = |name: &str| -> Result<Vec<f32>> {
            let (data, dt) = g.tensor_data(name, &[c.n_embd])?;
            if dt == GgmlDType::F32 {
                return Ok(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect());
            }
            Ok(qt(name, &[c.n_embd])?.dequantize(device)?.to_vec1::<f32>()?)
        };
        let (embed_data, embed_dt) = g.tensor_data("token_embd.weight", &[c.vocab_size, c.n_embd])?;
        if embed_dt.block_size() > c.n_embd || c.n_embd % embed_dt.block_size() != 0 {
            return Err(Error::Tensor { name: "token_embd.weight".into(), reason: "rows are not whole blocks".into() });
        }
        let tied = !g.has_tensor("output.weight");
        let own = own_format(embed_dt).and_then(|f| QMatrix::from_blocks(f, c.vocab_size, c.n_embd, embed_data));
        let (embed, tied_output) = match own {
            Some(m) => {
                let m = Arc::new(m);
                (Embedding::Own(m.clone()), tied.then_some(Linear::Own(m)))
            }
            None => {
                let t = Arc::new(qt("token_embd.weight", &[c.vocab_size, c.n_embd])?);
                let out = if tied { Some(Linear::new(t.clone())?) } else { None };
                (Embedding::Candle(t), out)
            }
        };
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
        let output = match tied_output {
            Some(o) => o,
            None => mm("output.weight", &[c.vocab_size, c.n_embd])?,
        };
        let weight_bytes = Self::estimate_bytes(g, c);
        Ok(Self { rope: Rope::new(hd, c.rope_base()?), cfg, embed, blocks, norm, output, weight_bytes, ws: Workspace::default() })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// Starts (or stops) timing every operation of the forward pass.
    pub fn set_profiling(&mut self, on: bool) {
        self.ws.profile = on.then(Profile::default);
    }
    /// Charges `secs` to `op` when profiling (the engine times sampling).
    pub fn profile_add(&mut self, op: Op, secs: f64) {
        if let Some(p) = &mut self.ws.profile {
            p.add(op, secs);
        }
    }
    /// Time per operation kind since profiling was switched on.
    pub fn profile(&self) -> Option<&Profile> {
        self.ws.profile.as_ref()
    }

    /// Runs one chunk of tokens (planned with [`KvCache::next_chunk`]) through the
    /// network, appending them to the cache. Returns the logits, `T` rows of
    /// `vocab` when `all_logits`, else one row for the last token.
    pub fn forward(&mut self, ids: &[u32], cache: &mut KvCache, all_logits: bool) -> Result<&[f32]> {
        let t = ids.len();
        if t == 0 || t != cache.next_chunk(t) {
            return Err(Error::Backend(format!("chunk of {t} tokens does not fit the cache plan")));
        }
        self.run(ids, &mut [cache], false, all_logits)
    }

    /// One decode step for a batch of sequences: token `ids[j]` is the next
    /// token of the sequence whose cache is `caches[j]`. The matmuls take all
    /// rows at once (the weights are read once per step for the whole batch);
    /// each row attends over its own cache. Returns one row of logits per sequence.
    pub fn forward_batch(&mut self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<&[f32]> {
        if ids.is_empty() || ids.len() != caches.len() {
            return Err(Error::Backend(format!("{} tokens for {} sequences", ids.len(), caches.len())));
        }
        self.run(ids, caches, true, true)
    }

    /// The forward pass over `ids`: a chunk of one sequence (`batch` false:
    /// `caches[0]`, consecutive positions) or one token per sequence (`batch` true).
    fn run(&mut self, ids: &[u32], caches: &mut [&mut KvCache], batch: bool, all_logits: bool) -> Result<&[f32]> {
        let t = ids.len();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(Error::InvalidPrompt(format!("token id {bad} is outside the vocabulary ({})", self.cfg.vocab_size)));
        }
        let row_cache = |j: usize| if batch { j } else { 0 };
        let n0 = caches[0].len();
        let mut positions = std::mem::take(&mut self.ws.positions);
        positions.clear();
        positions.extend((0..t).map(|j| if batch { caches[j].len() } else { n0 + j }));
        let c = &self.cfg;
        let (hd, eps, e) = (c.head_dim, c.rms_eps, c.n_embd);
        let (qd, kvd, ff) = (c.n_head * hd, c.n_head_kv * hd, c.n_ff);
        let half = hd / 2;
        let ws = &mut self.ws;
        for (v, n) in [(&mut ws.x, t * e), (&mut ws.h, t * e), (&mut ws.o, t * e), (&mut ws.q, t * qd), (&mut ws.q_sink, qd), (&mut ws.attn, t * qd)] {
            grow(v, n);
        }
        for (v, n) in [(&mut ws.k, t * kvd), (&mut ws.v, t * kvd), (&mut ws.gate, t * ff), (&mut ws.up, t * ff), (&mut ws.cos, t * half), (&mut ws.sin, t * half)] {
            grow(v, n);
        }
        let mut clock = Clock::start(ws.profile.is_some());

        // Embedding and the rotation tables of this chunk's positions.
        for (j, &id) in ids.iter().enumerate() {
            let row = &mut ws.x[j * e..(j + 1) * e];
            match &self.embed {
                Embedding::Own(m) => m.dequantize_row(id as usize, row),
                Embedding::Candle(q) => {
                    let ids_t = Tensor::new(&[id], &Device::Cpu)?;
                    row.copy_from_slice(&q.embedding(&ids_t)?.flatten_all()?.to_vec1::<f32>()?);
                }
            }
            self.rope.angles(positions[j], &mut ws.cos[j * half..(j + 1) * half], &mut ws.sin[j * half..(j + 1) * half]);
        }
        grow(&mut ws.sink_cos, half);
        grow(&mut ws.sink_sin, half);
        self.rope.angles(caches[0].sink_query_position(), &mut ws.sink_cos[..half], &mut ws.sink_sin[..half]);
        clock.lap(&mut ws.profile, Op::Other);

        for (i, b) in self.blocks.iter().enumerate() {
            for j in 0..t {
                ops::rms_norm(&ws.x[j * e..(j + 1) * e], &b.attn_norm, eps, &mut ws.h[j * e..(j + 1) * e]);
            }
            clock.lap(&mut ws.profile, Op::Norm);
            b.wq.forward_into(&ws.h[..t * e], t, &mut ws.act, &mut ws.q[..t * qd])?;
            b.wk.forward_into(&ws.h[..t * e], t, &mut ws.act, &mut ws.k[..t * kvd])?;
            b.wv.forward_into(&ws.h[..t * e], t, &mut ws.act, &mut ws.v[..t * kvd])?;
            clock.lap(&mut ws.profile, Op::MatmulQkv);
            for j in 0..t {
                let p = positions[j];
                let cache = &mut *caches[row_cache(j)];
                let (cos, sin) = (&ws.cos[j * half..(j + 1) * half], &ws.sin[j * half..(j + 1) * half]);
                let q = &mut ws.q[j * qd..(j + 1) * qd];
                let plan = cache.plan(p);
                if plan.rotates_sink_query() {
                    ws.q_sink[..qd].copy_from_slice(q);
                    for head in ws.q_sink[..qd].chunks_exact_mut(hd) {
                        ops::rope(head, &ws.sink_cos[..half], &ws.sink_sin[..half]);
                    }
                }
                for head in q.chunks_exact_mut(hd) {
                    ops::rope(head, cos, sin);
                }
                for head in ws.k[j * kvd..(j + 1) * kvd].chunks_exact_mut(hd) {
                    ops::rope(head, cos, sin);
                }
                clock.lap(&mut ws.profile, Op::Rope);
                let q_sink: &[f32] = if plan.rotates_sink_query() { &ws.q_sink[..qd] } else { &[] };
                cache.attend(
                    i,
                    plan,
                    &ws.q[j * qd..(j + 1) * qd],
                    q_sink,
                    &ws.k[j * kvd..(j + 1) * kvd],
                    &ws.v[j * kvd..(j + 1) * kvd],
                    &mut ws.scratch,
                    &mut ws.attn[j * qd..(j + 1) * qd],
                );
                clock.lap(&mut ws.profile, Op::Attention);
            }
            b.wo.forward_into(&ws.attn[..t * qd], t, &mut ws.act, &mut ws.o[..t * e])?;
            clock.lap(&mut ws.profile, Op::MatmulO);
            ops::add_assign(&mut ws.x[..t * e], &ws.o[..t * e]);
            for j in 0..t {
                ops::rms_norm(&ws.x[j * e..(j + 1) * e], &b.ffn_norm, eps, &mut ws.h[j * e..(j + 1) * e]);
            }
            clock.lap(&mut ws.profile, Op::Norm);
            b.w_gate.forward_into(&ws.h[..t * e], t, &mut ws.act, &mut ws.gate[..t * ff])?;
            b.w_up.forward_into(&ws.h[..t * e], t, &mut ws.act, &mut ws.up[..t * ff])?;
            clock.lap(&mut ws.profile, Op::MatmulGateUp);
            match c.blocks[i].activation {
                Activation::Silu => ops::silu_mul(&mut ws.gate[..t * ff], &ws.up[..t * ff]),
                other => return Err(Error::Unsupported(format!("the CPU backend has no {other:?} FFN"))),
            }
            clock.lap(&mut ws.profile, Op::Other);
            b.w_down.forward_into(&ws.gate[..t * ff], t, &mut ws.act, &mut ws.o[..t * e])?;
            clock.lap(&mut ws.profile, Op::MatmulDown);
            ops::add_assign(&mut ws.x[..t * e], &ws.o[..t * e]);
        }
        if batch {
            for (cache, id) in caches.iter_mut().zip(ids) {
                cache.commit(std::slice::from_ref(id));
            }
        } else {
            caches[0].commit(ids);
        }
        let first = if all_logits { 0 } else { t - 1 };
        let rows = t - first;
        for j in first..t {
            let r = j - first;
            ops::rms_norm(&ws.x[j * e..(j + 1) * e], &self.norm, eps, &mut ws.h[r * e..(r + 1) * e]);
        }
        clock.lap(&mut ws.profile, Op::Norm);
        let vocab = self.cfg.vocab_size;
        grow(&mut ws.logits, rows * vocab);
        self.output.forward_into(&ws.h[..rows * e], rows, &mut ws.act, &mut ws.logits[..rows * vocab])?;
        clock.lap(&mut ws.profile, Op::MatmulOutput);
        if let Some(p) = &mut ws.profile {
            p.tokens += t;
        }
        ws.positions = positions;
        Ok(&ws.logits[..rows * vocab])
    }
}
