//! The llama forward pass on the GPU: the same sequence of operations as
//! [`Llama`](super::Llama), recorded once at load as a list of dispatches
//! (pipelines and bind groups created once) and replayed into one command
//! buffer per chunk. What each block adds (biases, QK-norm, post-norms, GELU,
//! NeoX RoPE, its RoPE base, a sliding window) is read from its
//! [`BlockSpec`](super::block::BlockSpec), as on the CPU. The cache policy
//! (slots, sinks, eviction, prefix reuse) is the CPU's [`KvPolicy`] (the
//! bookkeeping without storage), planned per attention window; the keys and
//! values live in one GPU buffer per layer with the CPU's `[n_kv, cap,
//! head_dim]` layout (`cap` the window, or a sliding layer's own window).
//!
//! A step ends with the logits in a GPU buffer and either the greedy token
//! (8 bytes) or the wanted logits rows copied to a mappable buffer. Reading
//! them back is split from submitting ([`GpuLlama::submit`], [`GpuLlama::ready`],
//! [`GpuLlama::take`]) because the browser can only map a buffer
//! asynchronously; native code blocks in [`GpuLlama::wait`].
//!
//! Here: the model, submitting a chunk and encoding its command buffers.
//! `load.rs` uploads the weights and records the passes, `buffers.rs` holds
//! the activations, `readback.rs` collects results, `batch.rs` the batches.

mod batch;
mod buffers;
mod load;
mod readback;

pub use batch::GpuBatch;

use super::config::LlamaConfig;
use super::rope::Rope;
use crate::backend::webgpu::ops::{self, Pass};
use crate::backend::webgpu::uniforms::{KvParams, PenaltyParams, Step, TokenInfo};
use crate::backend::webgpu::{GpuContext, Kernels};
use crate::error::{Error, Result};
use crate::kv_cache::{AttentionWindow, KvCacheConfig, KvPolicy, KvStats};
use buffers::Buffers;
use readback::Pending;

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

/// The passes after the output projection, dispatched only for some readbacks
/// (in this order: penalty, then argmax or top-k).
struct Tail {
    penalty: Pass,
    argmax: Pass,
    topk: Pass,
}

/// The distinct values of `per_layer` in first-seen order, and each layer's index among them.
fn distinct<T: PartialEq + Copy>(per_layer: impl Iterator<Item = T>) -> (Vec<T>, Vec<usize>) {
    let mut kinds: Vec<T> = Vec::new();
    let of_layer = per_layer
        .map(|v| match kinds.iter().position(|&k| k == v) {
            Some(i) => i,
            None => {
                kinds.push(v);
                kinds.len() - 1
            }
        })
        .collect();
    (kinds, of_layer)
}

/// One layer's cache kernels and what they read besides the shared buffers.
pub(super) struct GpuLayer {
    /// Index of its attention window in [`GpuLlama::windows`] (its token-info buffer).
    window: usize,
    /// Index of its RoPE table (its angles buffer).
    rope: usize,
    variant: ops::RopeVariant,
    /// `[q | k | v]` biases and the QK-norm weights (16 unread bytes where the block has none).
    bias: wgpu::Buffer,
    norms: wgpu::Buffer,
    /// Where its rope_kv and attention passes sit in `passes` (a batch
    /// records its own copies of them, bound to its caches).
    passes: (usize, usize),
}

/// A llama-family model on the GPU (weights, KV storage, the recorded passes).
pub struct GpuLlama {
    cfg: LlamaConfig,
    ctx: GpuContext,
    kv: KvCacheConfig,
    /// The distinct attention windows of the layers (one token-info buffer each).
    windows: Vec<AttentionWindow>,
    /// The distinct RoPE bases' angle tables (one angles buffer each).
    ropes: Vec<Rope>,
    layers: Vec<GpuLayer>,
    b: Buffers,
    kernels: Kernels,
    /// Embedding, layers and output projection, dispatched for every group of tokens.
    passes: Vec<Pass>,
    tail: Tail,
    weight_bytes: usize,
    /// K/V bytes of the global layers and of the sliding ones.
    kv_bytes: (usize, usize),
    pending: Option<Pending>,
    /// Dispatches and bytes read back by the last decode step (for the notes and stats).
    pub last_dispatches: usize,
    pub last_readback_bytes: usize,
}

/// The cache kernels' parameters for a window of `cap` slots (the model's
/// own caches and a batch's).
fn kv_params(c: &LlamaConfig, cap: usize) -> KvParams {
    KvParams { eps: c.rms_eps, ..KvParams::new(c.n_head, c.n_head_kv, c.head_dim, cap) }
}

/// Slots of a layer attending over `window` with a cache of `kv`: the
/// configured window, or a sliding layer's own (the CPU storage's rule).
fn window_cap(kv: &KvCacheConfig, window: AttentionWindow) -> usize {
    match window {
        AttentionWindow::Global => kv.window,
        AttentionWindow::Sliding(n) => n,
    }
}

/// Token info of absolute position `p` of `cache`'s sequence in layers
/// attending over `window`, whose cache starts at element `base` of their
/// buffers: the position's plan (its slot, the slots in use once it is
/// written, where the sinks seen from the shifted query end), the same rule
/// the CPU follows.
fn token_info(base: u32, cache: &KvPolicy, window: AttentionWindow, p: usize) -> TokenInfo {
    let plan = cache.plan_in(window, p);
    TokenInfo { base, slot: plan.slot as u32, used: plan.used as u32, sink_until: plan.sink_until as u32 }
}

/// The rows of one submission: token ids, their infos (per attention window) and absolute positions.
struct Rows<'a> {
    ids: &'a [u32],
    tok: &'a [Vec<TokenInfo>],
    positions: &'a [usize],
    /// The position the sink query is rotated at.
    sink_pos: usize,
}

impl GpuLlama {
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
        self.kv_bytes.0 + self.kv_bytes.1
    }
    /// The cache's occupancy under `policy`, its bytes counted per attention kind.
    pub fn kv_stats(&self, policy: &KvPolicy) -> KvStats {
        KvStats { global_bytes: self.kv_bytes.0, local_bytes: self.kv_bytes.1, ..policy.stats(self.kv_bytes()) }
    }
    /// Slots of the caches of window kind `w`.
    fn cap(&self, w: usize) -> usize {
        window_cap(&self.kv, self.windows[w])
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

    /// A chunk of one sequence: the model's own cache, or sequence `seq` of a batch.
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
        let n0 = cache.len();
        let positions: Vec<usize> = (n0..n0 + t).collect();
        let tok: Vec<Vec<TokenInfo>> = (self.windows.iter().enumerate())
            .map(|(w, &window)| {
                let base = batch.map_or(0, |(b, seq)| b.base(seq, w));
                positions.iter().map(|&p| token_info(base, cache, window, p)).collect()
            })
            .collect();
        let gpu_tail = matches!(readback, Readback::Argmax | Readback::TopK);
        let n_pen = match penalty {
            Some((pids, value)) if gpu_tail => self.write_penalty(pids, value)?,
            _ => 0,
        };
        // A chunk that wraps a ring runs token by token (its later keys would
        // overwrite slots its earlier tokens still attend to); others in one pass.
        let one_pass = (0..self.windows.len()).all(|w| n0 + t <= self.cap(w));
        let rows = Rows { ids, tok: &tok, positions: &positions, sink_pos: cache.sink_query_position() };
        self.encode(batch.map(|b| b.0), &rows, one_pass, readback, n_pen)?;
        cache.commit(ids);
        Ok(())
    }

    /// Uploads the penalized ids and the penalty; returns how many there are.
    fn write_penalty(&self, pids: &[u32], value: f32) -> Result<usize> {
        if pids.len() > GPU_MAX_PENALTY_IDS {
            return Err(Error::InvalidOption(format!("the GPU applies the repetition penalty to at most {GPU_MAX_PENALTY_IDS} ids")));
        }
        self.ctx.queue.write_buffer(&self.b.penalty_ids, 0, bytemuck::cast_slice(pids));
        let p = PenaltyParams { vocab: self.cfg.vocab_size as u32, count: pids.len() as u32, penalty: value, _p0: 0 };
        self.b.penalty.write(&self.ctx.queue, &p);
        Ok(pids.len())
    }

    /// RoPE angles of each table: row 0 the sink query position, row 1 + j token j's position.
    fn angles(&self, sink_pos: usize, positions: &[usize]) -> Vec<Vec<f32>> {
        let half = self.cfg.head_dim / 2;
        let table = |rope: &Rope| {
            let mut cs = vec![0f32; (1 + positions.len()) * 2 * half];
            for (j, &p) in std::iter::once(&sink_pos).chain(positions).enumerate() {
                let (c, s) = cs[j * 2 * half..(j + 1) * 2 * half].split_at_mut(half);
                rope.angles(p, c, s);
            }
            cs
        };
        self.ropes.iter().map(table).collect()
    }

    /// Records and submits the passes (the batch's, or the model's own) for
    /// `rows` in one pass or (`one_pass` false) row by row, then starts
    /// mapping the result.
    fn encode(&mut self, batch: Option<&GpuBatch>, rows: &Rows<'_>, one_pass: bool, readback: Readback, n_pen: usize) -> Result<()> {
        let t = rows.ids.len();
        let hd = self.cfg.head_dim;
        let cs = self.angles(rows.sink_pos, rows.positions);
        let groups: Vec<(usize, usize)> = if one_pass { vec![(0, t)] } else { (0..t).map(|j| (j, 1)).collect() };
        let passes = match batch {
            Some(b) => &b.passes,
            None => &self.passes,
        };
        let mut dispatches = 0;
        for (gi, &(j0, n)) in groups.iter().enumerate() {
            let last = gi + 1 == groups.len();
            let n_out = if readback == Readback::AllLogits { n } else { 1 };
            let step = Step { t: n as u32, first_out: (n - n_out) as u32, n_out: n_out as u32, _pad: 0 };
            let q = &self.ctx.queue;
            self.b.step.write(q, &step);
            q.write_buffer(&self.b.ids, 0, bytemuck::cast_slice(&rows.ids[j0..j0 + n]));
            for (buf, tok) in self.b.tok.iter().zip(rows.tok) {
                q.write_buffer(buf, 0, bytemuck::cast_slice(&tok[j0..j0 + n]));
            }
            for (buf, cs) in self.b.cs.iter().zip(&cs) {
                let mut angles = cs[..hd].to_vec();
                angles.extend_from_slice(&cs[(1 + j0) * hd..(1 + j0 + n) * hd]);
                q.write_buffer(buf, 0, bytemuck::cast_slice(&angles));
            }
            let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kvchat step") });
            {
                let mut cp = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
                for p in passes {
                    p.record(&mut cp, &step, n_pen);
                }
                dispatches += passes.len();
                if last {
                    dispatches += self.record_tail(&mut cp, &step, readback, n_pen);
                }
            }
            self.copy_result(&mut enc, readback, last, j0, n);
            self.ctx.queue.submit([enc.finish()]);
        }
        self.last_dispatches = dispatches;
        let out_rows = if readback == Readback::AllLogits { t } else { 1 };
        self.map(readback, out_rows, n_pen > 0);
        Ok(())
    }

    /// The penalty, argmax and top-k passes this readback needs; returns how many.
    fn record_tail(&self, cp: &mut wgpu::ComputePass<'_>, step: &Step, readback: Readback, n_pen: usize) -> usize {
        let mut n = 0;
        let wanted = [(&self.tail.penalty, n_pen > 0), (&self.tail.argmax, readback == Readback::Argmax), (&self.tail.topk, readback == Readback::TopK)];
        for (p, _) in wanted.iter().filter(|w| w.1) {
            p.record(cp, step, n_pen);
            n += 1;
        }
        n
    }

    /// Copies this group's part of the result to the readback buffer.
    fn copy_result(&self, enc: &mut wgpu::CommandEncoder, readback: Readback, last: bool, j0: usize, n: usize) {
        let (b, row) = (&self.b, (self.cfg.vocab_size * 4) as u64);
        match readback {
            Readback::Argmax if last => enc.copy_buffer_to_buffer(&b.result, 0, &b.readback, 0, 8),
            Readback::TopK if last => enc.copy_buffer_to_buffer(&b.result, 0, &b.readback, 0, ((2 + 2 * GPU_TOP_K) * 4) as u64),
            Readback::LastLogits if last => enc.copy_buffer_to_buffer(&b.logits, 0, &b.readback, 0, row),
            Readback::AllLogits => enc.copy_buffer_to_buffer(&b.logits, 0, &b.readback, j0 as u64 * row, n as u64 * row),
            _ => {}
        }
    }
}
