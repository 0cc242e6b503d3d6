//! The llama forward pass on the GPU: the same sequence of operations as
//! [`Llama`](super::Llama), recorded once at load as a list of dispatches
//! (pipelines and bind groups created once) and replayed into one command
//! buffer per chunk. The cache policy (slots, sinks, eviction, prefix reuse)
//! is the CPU's [`KvPolicy`] (the bookkeeping without storage); the keys and values live in
//! one GPU buffer per layer with the same `[n_kv, window, head_dim]` layout.
//!
//! A step ends with the logits in a GPU buffer and either the greedy token
//! (8 bytes) or the wanted logits rows copied to a mappable buffer. Reading
//! them back is split from submitting ([`GpuLlama::submit`], [`GpuLlama::ready`],
//! [`GpuLlama::take`]) because the browser can only map a buffer
//! asynchronously; native code blocks in [`GpuLlama::wait`].

use super::config::LlamaConfig;
use super::rope::Rope;
use crate::backend::cpu::quant::QK;
use crate::backend::webgpu::kernels::{Kernel, QuantMode};
use crate::backend::webgpu::{GpuContext, GpuMatrix, Kernels};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::kv_cache::{KvCacheConfig, KvDType, KvPolicy};
use candle_core::Device;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// Largest chunk of tokens one submission runs (activation buffers are sized for it).
pub const GPU_MAX_CHUNK: usize = 64;
/// How many best logits a sampled step reads back (a top-k up to this is exact).
pub const GPU_TOP_K: usize = 64;
/// Most distinct recent ids the GPU applies the repetition penalty to.
pub const GPU_MAX_PENALTY_IDS: usize = 1024;

/// What a step reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readback {
    /// The greedy token of the last row (8 bytes).
    Argmax,
    /// The [`GPU_TOP_K`] best logits of the last row with their ids (520 bytes).
    TopK,
    /// The logits of the last token.
    LastLogits,
    /// The logits of every token of the chunk.
    AllLogits,
}

/// A step's result once read back.
#[derive(Debug, Clone, PartialEq)]
pub enum GpuOutput {
    Token(u32),
    Logits(Vec<f32>),
    /// The best `(id, logit)` pairs, penalty applied.
    Candidates(Vec<(u32, f32)>),
    /// The last row of logits with the penalty already applied (the top-k
    /// selection could not prove it had every candidate).
    PenalizedLogits(Vec<f32>),
}

/// How a dispatch's workgroup grid follows the chunk.
#[derive(Clone, Copy)]
enum Grid {
    /// One workgroup per token.
    Tokens,
    /// One workgroup per wanted output row.
    OutRows,
    /// `groups` along x, four tokens (or output rows) per workgroup along y.
    Matmul { groups: u32, out: bool },
    /// One workgroup per (head, token).
    Heads(u32),
    /// After the output projection, only for some readbacks.
    Tail(Tail),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tail {
    Penalty,
    Argmax,
    TopK,
}

#[derive(Clone)]
struct Pass {
    pipeline: wgpu::ComputePipeline,
    group: wgpu::BindGroup,
    grid: Grid,
}

struct Pending {
    /// 0 waiting, 1 mapped, 2 failed.
    state: Arc<AtomicU8>,
    readback: Readback,
    rows: usize,
    /// The logits read back had the penalty applied on the GPU.
    penalized: bool,
}

struct Buffers {
    step: wgpu::Buffer,
    ids: wgpu::Buffer,
    tok: wgpu::Buffer,
    cs: wgpu::Buffer,
    x: wgpu::Buffer,
    qkv: wgpu::Buffer,
    q: wgpu::Buffer,
    q_sink: wgpu::Buffer,
    attn: wgpu::Buffer,
    gu: wgpu::Buffer,
    aq: wgpu::Buffer,
    asc: wgpu::Buffer,
    scores: wgpu::Buffer,
    logits: wgpu::Buffer,
    result: wgpu::Buffer,
    penalty_ids: wgpu::Buffer,
    penalty: wgpu::Buffer,
    readback: wgpu::Buffer,
}

/// A llama-family model on the GPU (weights, KV storage, the recorded passes).
pub struct GpuLlama {
    cfg: LlamaConfig,
    ctx: GpuContext,
    kv: KvCacheConfig,
    rope: Rope,
    b: Buffers,
    passes: Vec<Pass>,
    weight_bytes: usize,
    kv_bytes: usize,
    pending: Option<Pending>,
    /// The two kernels that touch the cache, and where their passes sit in
    /// `passes` for each layer (a batch records its own copies of them).
    rope_kv: Kernel,
    attention: Kernel,
    kv_passes: Vec<(usize, usize)>,
    /// Dispatches and bytes read back by the last decode step (for the notes and stats).
    pub last_dispatches: usize,
    pub last_readback_bytes: usize,
}

fn storage(ctx: &GpuContext, label: &str, bytes: usize) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(16) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

fn uniform(ctx: &GpuContext, words: &[u32]) -> wgpu::Buffer {
    let mut w = words.to_vec();
    w.resize(w.len().max(4).next_multiple_of(4), 0);
    ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: bytemuck::cast_slice(&w), usage: wgpu::BufferUsages::UNIFORM })
}

fn f32_buffer(ctx: &GpuContext, label: &str, v: &[f32]) -> wgpu::Buffer {
    ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some(label), contents: bytemuck::cast_slice(v), usage: wgpu::BufferUsages::STORAGE })
}

impl GpuLlama {
    /// Uploads the weights of `g` and records the forward pass for a cache of `kv`.
    pub fn load(g: &Gguf, cfg: LlamaConfig, kv: KvCacheConfig, ctx: &GpuContext) -> Result<Self> {
        let c = &cfg;
        let (e, hd, ff, vocab) = (c.n_embd, c.head_dim, c.n_ff, c.vocab_size);
        let (qd, kvd) = (c.n_head * hd, c.n_head_kv * hd);
        if hd > 256 || hd % 2 != 0 || e % QK != 0 || ff % QK != 0 || qd % QK != 0 {
            return Err(Error::Unsupported(format!("the WebGPU kernels need head_dim <= 256 and widths in blocks of 32 (head_dim {hd})")));
        }
        if c.rope_dim != hd {
            return Err(Error::Unsupported("partial RoPE is not implemented on the WebGPU backend".into()));
        }
        kv.validate()?;
        let dev = Device::Cpu;
        let qt = |name: &str, dims: &[usize]| g.tensor(name, dims, &dev);
        let vec = |name: &str| -> Result<Vec<f32>> { Ok(qt(name, &[e])?.dequantize(&dev)?.to_vec1::<f32>()?) };
        let tmax = GPU_MAX_CHUNK;
        let cap = kv.window;
        let kv_u32 = if kv.dtype == KvDType::F16 { n_kv_elems(c, cap) / 2 } else { n_kv_elems(c, cap) };
        let kv_layer_bytes = kv_u32 * 4;
        if kv_layer_bytes as u64 > ctx.info.max_storage_binding {
            return Err(Error::Memory(format!(
                "one layer's {cap}-token cache ({} MiB) exceeds the GPU's largest buffer binding ({} MiB)",
                kv_layer_bytes >> 20,
                ctx.info.max_storage_binding >> 20
            )));
        }
        let scores_bytes = tmax * c.n_head * cap * 4;
        if scores_bytes as u64 > ctx.info.max_storage_binding {
            return Err(Error::Memory(format!("attention scratch for a {cap}-token window exceeds the GPU's largest buffer binding")));
        }
        let b = Buffers {
            step: ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some("step"), size: 16, usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false }),
            ids: storage(ctx, "ids", tmax * 4),
            tok: storage(ctx, "tok", tmax * 16),
            cs: storage(ctx, "cs", (1 + tmax) * hd * 4),
            x: storage(ctx, "x", tmax * e * 4),
            qkv: storage(ctx, "qkv", tmax * (qd + 2 * kvd) * 4),
            q: storage(ctx, "q", tmax * qd * 4),
            q_sink: storage(ctx, "q_sink", tmax * qd * 4),
            attn: storage(ctx, "attn", tmax * qd * 4),
            gu: storage(ctx, "gate_up", tmax * 2 * ff * 4),
            aq: storage(ctx, "act_q", tmax * e.max(ff).max(qd)),
            asc: storage(ctx, "act_scales", tmax * e.max(ff).max(qd) / QK * 12),
            scores: storage(ctx, "scores", scores_bytes),
            logits: storage(ctx, "logits", tmax * vocab * 4),
            result: storage(ctx, "result", (2 + 2 * GPU_TOP_K) * 4),
            penalty_ids: storage(ctx, "penalty_ids", GPU_MAX_PENALTY_IDS * 4),
            penalty: ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some("penalty"), size: 16, usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false }),
            readback: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: (tmax * vocab * 4) as u64,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        };
        let mut k = Kernels::new(ctx, kv.dtype == KvDType::F16);
        let mut passes = Vec::new();
        let mut weight_bytes = 0;
        let step = &b.step;

        // Embedding (tied to the output projection when `output.weight` is absent).
        let embed_t = qt("token_embd.weight", &[vocab, e])?;
        let embed = GpuMatrix::from_tensors(ctx, "token_embd.weight", &[&embed_t])?;
        drop(embed_t);
        weight_bytes += embed.bytes();
        for part in &embed.parts {
            let kern = k.embed(embed.format);
            let p = uniform(ctx, &[e as u32, part.row_start as u32, part.rows as u32, 0]);
            passes.push(pass(kern, ctx, &[&p, step, &b.ids, &part.qs, &part.ws, &b.x], Grid::Tokens));
        }
        let quant = |k: &mut Kernels, mode: QuantMode, cols: usize, stride: usize, up: usize, out_rows: bool, input: &wgpu::Buffer, w: &wgpu::Buffer| -> Pass {
            let p = uniform(ctx, &[cols as u32, stride as u32, up as u32, out_rows as u32, c.rms_eps.to_bits(), 127f32.to_bits(), 0, 0]);
            let grid = if out_rows { Grid::OutRows } else { Grid::Tokens };
            pass(k.quant(mode), ctx, &[&p, step, input, w, &b.aq, &b.asc], grid)
        };
        // One matmul: every part of every matrix, each writing its rows at `offset`.
        let matmul = |k: &mut Kernels, ms: &[(&GpuMatrix, usize)], stride: usize, acc: bool, out_rows: bool, out: &wgpu::Buffer| -> Vec<Pass> {
            let mut v = Vec::new();
            for (m, offset) in ms {
                for part in &m.parts {
                    let p = uniform(ctx, &[part.rows as u32, (m.cols / QK) as u32, stride as u32, (offset + part.row_start) as u32, out_rows as u32, 0, 0, 0]);
                    let groups = part.rows.div_ceil(64) as u32;
                    v.push(pass(k.matmul(m.format, acc), ctx, &[&p, step, &part.qs, &part.ws, &b.aq, &b.asc, out], Grid::Matmul { groups, out: out_rows }));
                }
            }
            v
        };
        // Stacks same-type tensors into one matrix (one dispatch), else keeps them apart.
        let stacked = |names: &[(&str, usize)], cols: usize| -> Result<Vec<(GpuMatrix, usize)>> {
            let ts: Vec<_> = names.iter().map(|(n, rows)| qt(n, &[*rows, cols])).collect::<Result<_>>()?;
            if ts.iter().all(|t| t.dtype() == ts[0].dtype()) {
                let refs: Vec<_> = ts.iter().collect();
                Ok(vec![(GpuMatrix::from_tensors(ctx, names[0].0, &refs)?, 0)])
            } else {
                let mut off = 0;
                let mut v = Vec::new();
                for (t, (n, rows)) in ts.iter().zip(names) {
                    v.push((GpuMatrix::from_tensors(ctx, n, &[t])?, off));
                    off += rows;
                }
                Ok(v)
            }
        };
        // kv.wgsl's KvParams, shared by rope_kv and attention.
        let kvp = uniform(ctx, &[c.n_head as u32, c.n_head_kv as u32, hd as u32, cap as u32, (qd + 2 * kvd) as u32, (1.0 / (hd as f32).sqrt()).to_bits(), 0, 0]);
        let mut kv_buffers = Vec::new();
        let mut norms = Vec::new();
        let mut kv_passes = Vec::new();
        for i in 0..c.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let attn_norm = f32_buffer(ctx, "attn_norm", &vec(&n("attn_norm"))?);
            let ffn_norm = f32_buffer(ctx, "ffn_norm", &vec(&n("ffn_norm"))?);
            let qkv = stacked(&[(&n("attn_q"), qd), (&n("attn_k"), kvd), (&n("attn_v"), kvd)], e)?;
            let wo = GpuMatrix::from_tensors(ctx, &n("attn_output"), &[&qt(&n("attn_output"), &[e, qd])?])?;
            let gu = stacked(&[(&n("ffn_gate"), ff), (&n("ffn_up"), ff)], e)?;
            let down = GpuMatrix::from_tensors(ctx, &n("ffn_down"), &[&qt(&n("ffn_down"), &[e, ff])?])?;
            weight_bytes += qkv.iter().chain(&gu).map(|(m, _)| m.bytes()).sum::<usize>() + wo.bytes() + down.bytes() + 2 * e * 4;
            let kc = storage(ctx, "k_cache", kv_layer_bytes);
            let vc = storage(ctx, "v_cache", kv_layer_bytes);

            passes.push(quant(&mut k, QuantMode::Norm, e, e, 0, false, &b.x, &attn_norm));
            let refs: Vec<_> = qkv.iter().map(|(m, o)| (m, *o)).collect();
            passes.extend(matmul(&mut k, &refs, qd + 2 * kvd, false, false, &b.qkv));
            kv_passes.push((passes.len(), passes.len() + 1));
            passes.push(pass(&k.rope_kv, ctx, &[&kvp, step, &b.qkv, &b.tok, &b.cs, &b.q, &b.q_sink, &kc, &vc], Grid::Tokens));
            passes.push(pass(&k.attention, ctx, &[&kvp, step, &b.tok, &b.q, &b.q_sink, &kc, &vc, &b.scores, &b.attn], Grid::Heads(c.n_head as u32)));
            passes.push(quant(&mut k, QuantMode::Plain, qd, qd, 0, false, &b.attn, &attn_norm));
            passes.extend(matmul(&mut k, &[(&wo, 0)], e, true, false, &b.x));
            passes.push(quant(&mut k, QuantMode::Norm, e, e, 0, false, &b.x, &ffn_norm));
            let refs: Vec<_> = gu.iter().map(|(m, o)| (m, *o)).collect();
            passes.extend(matmul(&mut k, &refs, 2 * ff, false, false, &b.gu));
            passes.push(quant(&mut k, QuantMode::Silu, ff, 2 * ff, ff, false, &b.gu, &attn_norm));
            passes.extend(matmul(&mut k, &[(&down, 0)], e, true, false, &b.x));
            kv_buffers.push((kc, vc));
            norms.push((attn_norm, ffn_norm));
        }
        let out_norm = f32_buffer(ctx, "output_norm", &vec("output_norm.weight")?);
        passes.push(quant(&mut k, QuantMode::Norm, e, e, 0, true, &b.x, &out_norm));
        let output = if g.has_tensor("output.weight") {
            let m = GpuMatrix::from_tensors(ctx, "output.weight", &[&qt("output.weight", &[vocab, e])?])?;
            weight_bytes += m.bytes();
            m
        } else {
            embed
        };
        passes.extend(matmul(&mut k, &[(&output, 0)], vocab, false, true, &b.logits));
        let amp = uniform(ctx, &[vocab as u32, 0, 0, 0]);
        passes.push(pass(&k.penalty, ctx, &[&b.penalty, step, &b.penalty_ids, &b.logits], Grid::Tail(Tail::Penalty)));
        passes.push(pass(&k.argmax, ctx, &[&amp, step, &b.logits, &b.result], Grid::Tail(Tail::Argmax)));
        passes.push(pass(&k.topk, ctx, &[&amp, step, &b.logits, &b.result], Grid::Tail(Tail::TopK)));
        let kv_bytes = 2 * c.n_layer * kv_layer_bytes;
        Ok(Self {
            rope: Rope::new(hd, c.rope_freq_base),
            cfg,
            ctx: ctx.clone(),
            kv,
            b,
            passes,
            weight_bytes,
            kv_bytes,
            pending: None,
            rope_kv: k.rope_kv.clone(),
            attention: k.attention.clone(),
            kv_passes,
            last_dispatches: 0,
            last_readback_bytes: 0,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }
    /// Bytes of weights on the GPU.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }
    /// Bytes of K/V storage on the GPU.
    pub fn kv_bytes(&self) -> usize {
        self.kv_bytes
    }
    /// The cache configuration the GPU storage was made for.
    pub fn kv_config(&self) -> KvCacheConfig {
        self.kv
    }
    /// True while a step's result has not been taken.
    pub fn in_flight(&self) -> bool {
        self.pending.is_some()
    }

    /// Runs `ids` (a chunk planned with [`KvPolicy::next_chunk`], at most
    /// [`GPU_MAX_CHUNK`] tokens) and appends them to `cache`'s policy; the
    /// result is collected with [`ready`](Self::ready) / [`take`](Self::take).
    /// `penalty`: the distinct recent ids and the repetition penalty, applied
    /// on the GPU before [`Readback::Argmax`] / [`Readback::TopK`] (ignored otherwise).
    pub fn submit(&mut self, ids: &[u32], cache: &mut KvPolicy, readback: Readback, penalty: Option<(&[u32], f32)>) -> Result<()> {
        self.submit_chunk(None, ids, cache, readback, penalty)
    }

    /// [`submit`](Self::submit) for sequence `seq` of a batch (its prefill chunks).
    pub fn submit_in(&mut self, batch: &GpuBatch, seq: usize, ids: &[u32], cache: &mut KvPolicy, readback: Readback) -> Result<()> {
        if seq >= batch.seqs || cache.config() != batch.kv {
            return Err(Error::Backend("the cache does not belong to this GPU batch".into()));
        }
        self.submit_chunk(Some((batch, seq)), ids, cache, readback, None)
    }

    /// One decode step of a batch: `rows[i] = (sequence, token)` with distinct
    /// sequences, `caches[i]` row i's cache. Every row runs through one pass
    /// (the matmuls take the rows as one matrix; each row attends over its own
    /// region of the batch's cache). [`Readback::AllLogits`] reads back every row.
    pub fn submit_rows(&mut self, batch: &GpuBatch, rows: &[(usize, u32)], caches: &mut [&mut KvPolicy], readback: Readback) -> Result<()> {
        self.check_submit()?;
        let t = rows.len();
        if t == 0 || t > GPU_MAX_CHUNK || caches.len() != t {
            return Err(Error::Backend(format!("a batch step of {t} rows does not fit the GPU plan")));
        }
        for (i, &(seq, _)) in rows.iter().enumerate() {
            if seq >= batch.seqs || rows[..i].iter().any(|r| r.0 == seq) || caches[i].config() != batch.kv {
                return Err(Error::Backend("batch rows must be distinct sequences of this GPU batch".into()));
            }
        }
        let ids: Vec<u32> = rows.iter().map(|r| r.1).collect();
        self.check_ids(&ids)?;
        let cap = batch.kv.window;
        let mut tok = Vec::with_capacity(t * 4);
        let mut positions = Vec::with_capacity(t);
        for (&(seq, _), cache) in rows.iter().zip(caches.iter()) {
            let p = cache.len();
            tok.extend_from_slice(&token_info((seq * batch.seq_elems) as u32, cache, p));
            positions.push(p);
        }
        self.encode(Some(batch), &ids, &tok, &positions, cap - 1, true, readback, 0)?;
        for (cache, id) in caches.iter_mut().zip(&ids) {
            cache.commit(&[*id]);
        }
        Ok(())
    }

    fn check_submit(&self) -> Result<()> {
        if self.ctx.is_lost() {
            return Err(self.ctx.lost_error());
        }
        if self.pending.is_some() {
            return Err(Error::Backend("a GPU step is still in flight".into()));
        }
        Ok(())
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            Some(bad) => Err(Error::InvalidPrompt(format!("token id {bad} is outside the vocabulary ({})", self.cfg.vocab_size))),
            None => Ok(()),
        }
    }

    fn submit_chunk(&mut self, batch: Option<(&GpuBatch, usize)>, ids: &[u32], cache: &mut KvPolicy, readback: Readback, penalty: Option<(&[u32], f32)>) -> Result<()> {
        let t = ids.len();
        self.check_submit()?;
        if t == 0 || t > GPU_MAX_CHUNK || t != cache.next_chunk(t) {
            return Err(Error::Backend(format!("chunk of {t} tokens does not fit the GPU plan")));
        }
        if batch.is_none() && cache.config() != self.kv {
            return Err(Error::Backend("the cache was made for another configuration".into()));
        }
        self.check_ids(ids)?;
        let base = batch.map_or(0, |(b, seq)| seq * b.seq_elems) as u32;
        let n0 = cache.len();
        let cap = cache.capacity();
        let vocab = self.cfg.vocab_size;
        let mut tok = Vec::with_capacity(t * 4);
        let positions: Vec<usize> = (n0..n0 + t).collect();
        for &p in &positions {
            tok.extend_from_slice(&token_info(base, cache, p));
        }
        let gpu_tail = matches!(readback, Readback::Argmax | Readback::TopK);
        let n_pen = match penalty {
            Some((pids, value)) if gpu_tail => {
                if pids.len() > GPU_MAX_PENALTY_IDS {
                    return Err(Error::InvalidOption(format!("the GPU applies the repetition penalty to at most {GPU_MAX_PENALTY_IDS} ids")));
                }
                self.ctx.queue.write_buffer(&self.b.penalty_ids, 0, bytemuck::cast_slice(pids));
                self.ctx.queue.write_buffer(&self.b.penalty, 0, bytemuck::cast_slice(&[vocab as u32, pids.len() as u32, value.to_bits(), 0]));
                pids.len()
            }
            _ => 0,
        };
        // A chunk that wraps the ring runs token by token (its later keys would
        // overwrite slots its earlier tokens still attend to); others in one pass.
        let one_pass = n0 + t <= cap;
        self.encode(batch.map(|b| b.0), ids, &tok, &positions, cache.sink_query_position(), one_pass, readback, n_pen)?;
        cache.commit(ids);
        Ok(())
    }

    /// Records and submits the passes (the batch's, or the model's own) for
    /// rows `ids` with token infos `tok` (4 words each) at `positions`, in one
    /// pass or (`one_pass` false) row by row, then starts mapping the result.
    #[allow(clippy::too_many_arguments)]
    fn encode(&mut self, batch: Option<&GpuBatch>, ids: &[u32], tok: &[u32], positions: &[usize], sink_pos: usize, one_pass: bool, readback: Readback, n_pen: usize) -> Result<()> {
        let t = ids.len();
        let half = self.cfg.head_dim / 2;
        let vocab = self.cfg.vocab_size;
        // Angles: row 0 the sink query position, row 1 + j token j's position.
        let mut cs = vec![0f32; (1 + t) * 2 * half];
        for (j, &p) in std::iter::once(&sink_pos).chain(positions).enumerate() {
            let (c, s) = cs[j * 2 * half..(j + 1) * 2 * half].split_at_mut(half);
            self.rope.angles(p, c, s);
        }
        let groups: Vec<(usize, usize)> = if one_pass { vec![(0, t)] } else { (0..t).map(|j| (j, 1)).collect() };
        let rows = match readback {
            Readback::AllLogits => t,
            _ => 1,
        };
        let passes = match batch {
            Some(b) => &b.passes,
            None => &self.passes,
        };
        let mut dispatches = 0;
        for (gi, &(j0, n)) in groups.iter().enumerate() {
            let last = gi + 1 == groups.len();
            let n_out = if readback == Readback::AllLogits { n } else { 1 };
            let first_out = n - n_out;
            let q = &self.ctx.queue;
            q.write_buffer(&self.b.step, 0, bytemuck::cast_slice(&[n as u32, first_out as u32, n_out as u32, 0]));
            q.write_buffer(&self.b.ids, 0, bytemuck::cast_slice(&ids[j0..j0 + n]));
            q.write_buffer(&self.b.tok, 0, bytemuck::cast_slice(&tok[j0 * 4..(j0 + n) * 4]));
            let mut angles = cs[..2 * half].to_vec();
            angles.extend_from_slice(&cs[(1 + j0) * 2 * half..(1 + j0 + n) * 2 * half]);
            q.write_buffer(&self.b.cs, 0, bytemuck::cast_slice(&angles));
            let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kvchat step") });
            {
                let mut cp = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
                for p in passes {
                    let (x, y) = match p.grid {
                        Grid::Tokens => (n as u32, 1),
                        Grid::OutRows => (n_out as u32, 1),
                        Grid::Matmul { groups, out } => (groups, (if out { n_out } else { n }).div_ceil(4) as u32),
                        Grid::Heads(h) => (h, n as u32),
                        Grid::Tail(Tail::Penalty) if last && n_pen > 0 => (n_pen.div_ceil(64) as u32, 1),
                        Grid::Tail(Tail::Argmax) if last && readback == Readback::Argmax => (1, 1),
                        Grid::Tail(Tail::TopK) if last && readback == Readback::TopK => (1, 1),
                        Grid::Tail(_) => continue,
                    };
                    cp.set_pipeline(&p.pipeline);
                    cp.set_bind_group(0, &p.group, &[]);
                    cp.dispatch_workgroups(x, y, 1);
                    dispatches += 1;
                }
            }
            match readback {
                Readback::Argmax => {
                    if last {
                        enc.copy_buffer_to_buffer(&self.b.result, 0, &self.b.readback, 0, 8);
                    }
                }
                Readback::TopK => {
                    if last {
                        enc.copy_buffer_to_buffer(&self.b.result, 0, &self.b.readback, 0, ((2 + 2 * GPU_TOP_K) * 4) as u64);
                    }
                }
                Readback::LastLogits => {
                    if last {
                        enc.copy_buffer_to_buffer(&self.b.logits, 0, &self.b.readback, 0, (vocab * 4) as u64);
                    }
                }
                Readback::AllLogits => {
                    enc.copy_buffer_to_buffer(&self.b.logits, 0, &self.b.readback, (j0 * vocab * 4) as u64, (n * vocab * 4) as u64);
                }
            }
            self.ctx.queue.submit([enc.finish()]);
        }
        self.last_dispatches = dispatches;
        self.map(readback, rows, n_pen > 0);
        Ok(())
    }

    /// Cache storage for a batch of `seqs` sequences, each with a cache of
    /// `kv` (the engine's storage type): one buffer per layer holding every
    /// sequence's `[n_kv, window, head_dim]` block, and copies of the passes
    /// whose cache kernels bind them.
    pub fn new_batch(&self, kv: KvCacheConfig, seqs: usize) -> Result<GpuBatch> {
        kv.validate()?;
        let c = &self.cfg;
        if kv.dtype != self.kv.dtype {
            return Err(Error::Unsupported("a batch on the GPU keeps its caches in the engine's cache type".into()));
        }
        if seqs == 0 || seqs > GPU_MAX_CHUNK {
            return Err(Error::InvalidOption(format!("a GPU batch holds 1 to {GPU_MAX_CHUNK} sequences")));
        }
        let ctx = &self.ctx;
        let cap = kv.window;
        let seq_elems = n_kv_elems(c, cap);
        let elem = if kv.dtype == KvDType::F16 { 2 } else { 4 };
        let layer_bytes = seqs * seq_elems * elem;
        let scores_bytes = GPU_MAX_CHUNK * c.n_head * cap * 4;
        if layer_bytes.max(scores_bytes) as u64 > ctx.info.max_storage_binding {
            return Err(Error::Memory(format!(
                "{seqs} sequences' {cap}-token caches ({} MiB per layer) exceed the GPU's largest buffer binding ({} MiB)",
                layer_bytes >> 20,
                ctx.info.max_storage_binding >> 20
            )));
        }
        let (qd, kvd) = (c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        let kvp = uniform(ctx, &[c.n_head as u32, c.n_head_kv as u32, c.head_dim as u32, cap as u32, (qd + 2 * kvd) as u32, (1.0 / (c.head_dim as f32).sqrt()).to_bits(), 0, 0]);
        let scores = storage(ctx, "batch_scores", scores_bytes);
        let b = &self.b;
        let mut passes = self.passes.clone();
        let mut kv_buffers = Vec::with_capacity(c.n_layer);
        for &(ri, ai) in &self.kv_passes {
            let kc = storage(ctx, "batch_k_cache", layer_bytes);
            let vc = storage(ctx, "batch_v_cache", layer_bytes);
            passes[ri] = pass(&self.rope_kv, ctx, &[&kvp, &b.step, &b.qkv, &b.tok, &b.cs, &b.q, &b.q_sink, &kc, &vc], Grid::Tokens);
            passes[ai] = pass(&self.attention, ctx, &[&kvp, &b.step, &b.tok, &b.q, &b.q_sink, &kc, &vc, &scores, &b.attn], Grid::Heads(c.n_head as u32));
            kv_buffers.push((kc, vc));
        }
        let staging = storage(ctx, "batch_copy", seq_elems * elem);
        Ok(GpuBatch { kv, seqs, seq_elems, seq_bytes: seq_elems * elem, kv_buffers, staging, passes, bytes: 2 * c.n_layer * layer_bytes })
    }

    /// Copies sequence `from`'s keys and values to sequence `to` (a shared
    /// prefix into a new sequence), through a staging buffer (WebGPU copies
    /// never read and write one buffer).
    pub fn copy_in_batch(&self, batch: &GpuBatch, from: usize, to: usize) -> Result<()> {
        self.check_submit()?;
        if from >= batch.seqs || to >= batch.seqs {
            return Err(Error::Backend("no such sequence in the GPU batch".into()));
        }
        let n = batch.seq_bytes as u64;
        let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kvchat batch copy") });
        for (kc, vc) in &batch.kv_buffers {
            for buf in [kc, vc] {
                enc.copy_buffer_to_buffer(buf, from as u64 * n, &batch.staging, 0, n);
                enc.copy_buffer_to_buffer(&batch.staging, 0, buf, to as u64 * n, n);
            }
        }
        self.ctx.queue.submit([enc.finish()]);
        Ok(())
    }

    fn readback_bytes(&self, readback: Readback, rows: usize) -> usize {
        match readback {
            Readback::Argmax => 8,
            Readback::TopK => (2 + 2 * GPU_TOP_K) * 4,
            _ => rows * self.cfg.vocab_size * 4,
        }
    }

    /// Starts mapping the readback buffer for a step's result.
    fn map(&mut self, readback: Readback, rows: usize, penalized: bool) {
        let bytes = self.readback_bytes(readback, rows);
        self.last_readback_bytes = bytes;
        let state = Arc::new(AtomicU8::new(0));
        let st = state.clone();
        self.b.readback.slice(..bytes as u64).map_async(wgpu::MapMode::Read, move |r| st.store(if r.is_ok() { 1 } else { 2 }, Ordering::SeqCst));
        self.pending = Some(Pending { state, readback, rows, penalized });
    }

    /// True once the submitted step's result can be taken without waiting.
    pub fn ready(&self) -> bool {
        match &self.pending {
            Some(p) => p.state.load(Ordering::SeqCst) != 0 || self.ctx.is_lost(),
            None => true,
        }
    }

    /// Blocks until the submitted step has finished (native only; in the
    /// browser the map callback fires from the event loop).
    pub fn wait(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        if self.pending.is_some() {
            self.ctx.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        }
        Ok(())
    }

    /// Lets wgpu run map callbacks without blocking.
    pub fn poll(&self) {
        let _ = self.ctx.device.poll(wgpu::PollType::Poll);
    }

    /// The submitted step's result; [`Error::Gpu`] if it is not ready yet.
    /// `None` when the top-k selection could not prove it was complete: the
    /// whole row is being read back instead (wait for it and take again).
    pub fn take(&mut self) -> Result<Option<GpuOutput>> {
        let Some(p) = self.pending.as_ref() else {
            return Err(Error::Backend("no GPU step was submitted".into()));
        };
        if self.ctx.is_lost() {
            self.pending = None;
            return Err(self.ctx.lost_error());
        }
        match p.state.load(Ordering::SeqCst) {
            0 => return Err(Error::Gpu("the GPU step has not finished yet".into())),
            2 => {
                self.pending = None;
                // Mapping fails when the device is gone (its lost callback may come later).
                return Err(if self.ctx.is_lost() { self.ctx.lost_error() } else { Error::DeviceLost("reading the GPU result failed".into()) });
            }
            _ => {}
        }
        let p = self.pending.take().expect("checked above");
        let out = {
            let bytes = self.readback_bytes(p.readback, p.rows);
            let view = self.b.readback.slice(..bytes as u64).get_mapped_range().map_err(|e| Error::Gpu(format!("reading the GPU result: {e}")))?;
            let words: &[u32] = bytemuck::cast_slice(&view);
            match p.readback {
                Readback::Argmax => Some(GpuOutput::Token(words[0])),
                Readback::TopK if words[1] != 0 => None,
                Readback::TopK => {
                    let n = (words[0] as usize).min(GPU_TOP_K);
                    Some(GpuOutput::Candidates((0..n).map(|k| (words[2 + 2 * k], f32::from_bits(words[3 + 2 * k]))).collect()))
                }
                _ if p.penalized => Some(GpuOutput::PenalizedLogits(bytemuck::cast_slice::<u32, f32>(words).to_vec())),
                _ => Some(GpuOutput::Logits(bytemuck::cast_slice::<u32, f32>(words).to_vec())),
            }
        };
        self.b.readback.unmap();
        if out.is_none() {
            // The penalized row is still in the logits buffer: read all of it.
            let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kvchat logits") });
            enc.copy_buffer_to_buffer(&self.b.logits, 0, &self.b.readback, 0, (self.cfg.vocab_size * 4) as u64);
            self.ctx.queue.submit([enc.finish()]);
            self.map(Readback::LastLogits, 1, true);
        }
        Ok(out)
    }

    /// Submit, wait and take in one call (native code and tests).
    pub fn run(&mut self, ids: &[u32], cache: &mut KvPolicy, readback: Readback, penalty: Option<(&[u32], f32)>) -> Result<GpuOutput> {
        self.submit(ids, cache, readback, penalty)?;
        loop {
            self.wait()?;
            if let Some(out) = self.take()? {
                return Ok(out);
            }
        }
    }

    /// Forgets a step in flight (after an error, so the next one can start).
    pub fn discard(&mut self) {
        if self.pending.take().is_some() {
            self.b.readback.unmap();
        }
    }
}

/// The GPU storage of a batch's caches (see [`GpuLlama::new_batch`]).
pub struct GpuBatch {
    kv: KvCacheConfig,
    seqs: usize,
    /// Elements (and bytes) of one sequence's block in a layer's buffer.
    seq_elems: usize,
    seq_bytes: usize,
    kv_buffers: Vec<(wgpu::Buffer, wgpu::Buffer)>,
    staging: wgpu::Buffer,
    passes: Vec<Pass>,
    bytes: usize,
}

impl GpuBatch {
    /// Bytes of K/V storage on the GPU.
    pub fn kv_bytes(&self) -> usize {
        self.bytes
    }
    /// The cache configuration of every sequence.
    pub fn kv_config(&self) -> KvCacheConfig {
        self.kv
    }
    /// Bytes of K/V storage of one sequence.
    pub fn kv_bytes_per_sequence(&self) -> usize {
        self.bytes / self.seqs
    }
}

/// A row's token info (`tok`, `vec4<u32>` in rope_kv.wgsl and attention.wgsl):
/// the sequence's offset in the cache buffers and the position's plan.
fn token_info(base: u32, cache: &KvPolicy, p: usize) -> [u32; 4] {
    let plan = cache.plan(p);
    [base, plan.slot as u32, plan.used as u32, plan.sink_until as u32]
}

fn n_kv_elems(c: &LlamaConfig, cap: usize) -> usize {
    c.n_head_kv * cap * c.head_dim
}

fn pass(k: &Kernel, ctx: &GpuContext, buffers: &[&wgpu::Buffer], grid: Grid) -> Pass {
    Pass { pipeline: k.pipeline.clone(), group: k.bind(ctx, buffers), grid }
}
