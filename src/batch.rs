//! Batch generation: many prompts at once, each with its own bounded KV cache,
//! sampler and stop rules, decoded together.
//!
//! * Up to `batch_size` sequences run at once; a sequence that finishes leaves
//!   its slot to the next queued input (continuous batching), so one long
//!   answer does not hold the others back.
//! * A decode step feeds one token of every running sequence through one
//!   forward pass: the matmuls take the tokens as the rows of one matrix, so
//!   the weights are read once per step for the whole batch, and each row
//!   attends over its own cache ([`Llama::forward_batch`](crate::model::Llama::forward_batch)).
//! * The longest prompt prefix shared by every input (a system prompt, a
//!   document) is prefilled once and copied into each sequence's cache.
//! * Every sequence's tokens are exactly those it would get alone: rows are
//!   computed independently by the same kernels.
//! * On the WebGPU backend every sequence's cache lives in one GPU buffer per
//!   layer ([`GpuBatch`]); a step submits one GPU job (a prefill chunk of one
//!   sequence, or one decode row per sequence through the batched passes) and
//!   the next step collects it, so the browser never blocks on the GPU.

use crate::engine::{Advance, Engine, GenerateOptions, Generation, Prompt, Session};
use crate::error::{Error, Result};
use crate::kv_cache::{KvCache, KvCacheConfig};
use crate::model::gpu::{GpuBatch, GpuOutput, Readback, GPU_MAX_CHUNK};
use crate::sampler::Sampler;
use crate::tokenizer::Tokenizer;
use std::collections::VecDeque;
use web_time::Instant;

/// How a batch runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchOptions {
    /// Sequences decoded together (1..=64, default 8).
    pub batch_size: usize,
    /// Each sequence's cache: window, sinks, storage. Default: the engine's,
    /// with the window capped at 512 tokens (eight 2048-token caches of the
    /// default model would need 750 MiB).
    pub kv: Option<KvCacheConfig>,
    /// Prefill the prefix every prompt shares once and copy it (default true).
    pub share_prefix: bool,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self { batch_size: 8, kv: None, share_prefix: true }
    }
}

/// Something a [`Engine::step_batch`] produced.
#[derive(Debug)]
pub enum BatchEvent {
    /// New text of input `index`.
    Piece { index: usize, piece: String },
    /// Input `index` finished (`generation.final_piece` holds text not streamed yet).
    Done { index: usize, generation: Box<Generation> },
}

/// Aggregate numbers of a batch.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchStats {
    pub sequences: usize,
    pub finished: usize,
    pub batch_size: usize,
    pub prompt_tokens: usize,
    /// Prompt tokens copied from the shared prefix instead of computed.
    pub shared_prefix_tokens: usize,
    pub generated_tokens: usize,
    pub elapsed_ms: f64,
    /// Generated tokens per second over the whole batch (prefill included).
    pub tokens_per_sec: f64,
    /// Time spent in batched decode steps and the tokens they produced.
    pub decode_ms: f64,
    pub decode_tokens_per_sec: f64,
    /// KV cache bytes per sequence.
    pub kv_bytes_per_sequence: usize,
    /// Where the batched passes run: `"webgpu"` or `"cpu"`.
    pub backend: &'static str,
}

struct Queued {
    index: usize,
    ids: Vec<u32>,
    opts: GenerateOptions,
    sampler: Sampler,
}

struct Running {
    index: usize,
    session: Session,
}

/// A batch in progress (see [`Engine::start_batch`]).
pub struct Batch {
    queue: VecDeque<Queued>,
    slots: Vec<Option<Running>>,
    caches: Vec<KvCache>,
    prefix: Option<KvCache>,
    started: Instant,
    stats: BatchStats,
    failed: bool,
    /// The GPU's storage and the job in flight (WebGPU engines).
    gpu: Option<GpuRun>,
}

struct GpuRun {
    storage: GpuBatch,
    /// The shared prefix, prefilled into the last sequence region step by step.
    prefix_ids: Vec<u32>,
    work: Option<GpuWork>,
}

/// What the GPU job in flight computes.
enum GpuWork {
    Prefix,
    Prefill { slot: usize, last: bool },
    Decode { slots: Vec<usize>, started: Instant },
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("stats", &self.stats).field("queued", &self.queue.len()).finish()
    }
}

impl Batch {
    /// True once every input has finished.
    pub fn is_done(&self) -> bool {
        self.failed || (self.queue.is_empty() && self.slots.iter().all(Option::is_none) && self.gpu.as_ref().is_none_or(|g| g.work.is_none()))
    }
    /// `"webgpu"` when the batch runs on the GPU's batched passes, else `"cpu"`.
    pub fn backend(&self) -> &'static str {
        if self.gpu.is_some() {
            "webgpu"
        } else {
            "cpu"
        }
    }
    /// True while a GPU job is in flight (the next step collects it).
    pub fn waiting(&self) -> bool {
        self.gpu.as_ref().is_some_and(|g| g.work.is_some())
    }
    pub fn stats(&self) -> BatchStats {
        let mut s = self.stats.clone();
        s.elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3;
        s.tokens_per_sec = if s.elapsed_ms > 0.0 { s.generated_tokens as f64 * 1e3 / s.elapsed_ms } else { 0.0 };
        s.decode_tokens_per_sec = if s.decode_ms > 0.0 { s.stats_decode_tokens() as f64 * 1e3 / s.decode_ms } else { 0.0 };
        s
    }
}

impl BatchStats {
    fn stats_decode_tokens(&self) -> usize {
        // Every generated token but each sequence's first comes out of a batched decode step.
        self.generated_tokens.saturating_sub(self.finished)
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Engine {
    /// Starts generating for every input (a prompt and its own options); advance
    /// it with [`step_batch`](Self::step_batch). Checks every prompt and option
    /// and that `batch_size` caches fit the memory budget before anything runs.
    pub fn start_batch(&mut self, inputs: &[(Prompt, GenerateOptions)], opts: BatchOptions) -> Result<Batch> {
        if inputs.is_empty() {
            return Err(Error::InvalidPrompt("a batch needs at least one input".into()));
        }
        if !(1..=64).contains(&opts.batch_size) {
            return Err(Error::InvalidOption(format!("batch size must be 1 to 64 (got {})", opts.batch_size)));
        }
        let engine_kv = self.options().kv;
        let kv = opts.kv.unwrap_or(KvCacheConfig { window: engine_kv.window.min(512), ..engine_kv });
        kv.validate()?;
        let cfg = self.config().clone();
        let b = opts.batch_size.min(inputs.len());
        let mut queue = VecDeque::with_capacity(inputs.len());
        for (index, (prompt, o)) in inputs.iter().enumerate() {
            let ids = self.standalone_prompt_ids(*prompt).map_err(|e| tag(e, index))?;
            let sampler = Sampler::new(o.sampler).map_err(|e| tag(e, index))?;
            if o.stop.iter().any(|s| s.is_empty()) {
                return Err(tag(Error::InvalidOption("stop strings must not be empty".into()), index));
            }
            if o.no_cache {
                return Err(tag(Error::InvalidOption("noCache is not available in a batch".into()), index));
            }
            queue.push_back(Queued { index, ids, opts: o.clone(), sampler });
        }
        // The shared prefix: long enough to be worth a copy, short enough not to evict,
        // and leaving every prompt at least one token of its own to compute.
        let shortest = queue.iter().map(|q| q.ids.len()).min().unwrap_or(0);
        let mut shared = queue.iter().skip(1).fold(queue[0].ids.len(), |n, q| n.min(common_prefix(&queue[0].ids, &q.ids)));
        shared = shared.min(shortest.saturating_sub(1)).min(kv.window);
        let use_prefix = opts.share_prefix && queue.len() > 1 && shared >= 8;
        let per_seq = kv.window * kv.bytes_per_token(cfg.n_layer, cfg.kv_dim());
        let caches_needed = b + use_prefix as usize;
        let need = self.weight_bytes() as u128 + self.kv_stats().bytes as u128 + (caches_needed as u128) * per_seq as u128;
        if need > self.options().memory_budget as u128 {
            return Err(Error::Memory(format!(
                "a batch of {b} sequences with {}-token caches ({} MiB each) does not fit the {} MiB budget beside the weights; use a smaller batch or window",
                kv.window,
                per_seq >> 20,
                self.options().memory_budget >> 20
            )));
        }
        // Batches on the GPU keep their caches there (in the engine's storage type;
        // another type runs on the CPU kernels).
        self.discard_gpu_step();
        let storage = match self.gpu_model_mut() {
            Some(m) if m.kv_config().dtype == kv.dtype => Some(m.new_batch(kv, caches_needed)?),
            _ => None,
        };
        let on_gpu = storage.is_some();
        let new_cache = || if on_gpu { KvCache::without_storage(kv, cfg.n_layer, cfg.n_head_kv, cfg.head_dim) } else { KvCache::new(kv, cfg.n_layer, cfg.n_head_kv, cfg.head_dim) };
        let caches = (0..b).map(|_| new_cache()).collect::<Result<Vec<_>>>()?;
        let mut prefix = None;
        let mut shared_prefix_tokens = 0;
        let gpu = storage.map(|storage| GpuRun { storage, prefix_ids: if use_prefix { queue[0].ids[..shared].to_vec() } else { Vec::new() }, work: None });
        if use_prefix && on_gpu {
            prefix = Some(new_cache()?);
            shared_prefix_tokens = shared;
        } else if use_prefix {
            let mut c = new_cache()?;
            let ids = queue[0].ids[..shared].to_vec();
            let mut i = 0;
            while i < ids.len() {
                let n = c.next_chunk(self.options().prefill_chunk.min(ids.len() - i));
                self.model_mut()?.forward(&ids[i..i + n], &mut c, false)?;
                i += n;
            }
            shared_prefix_tokens = shared;
            prefix = Some(c);
        }
        let stats = BatchStats {
            sequences: inputs.len(),
            batch_size: b,
            prompt_tokens: queue.iter().map(|q| q.ids.len()).sum(),
            shared_prefix_tokens,
            kv_bytes_per_sequence: per_seq,
            backend: if on_gpu { "webgpu" } else { "cpu" },
            ..Default::default()
        };
        Ok(Batch { queue, slots: (0..b).map(|_| None).collect(), caches, prefix, started: Instant::now(), stats, failed: false, gpu })
    }

    /// One step of a batch: queued inputs take free slots, every sequence still
    /// reading its prompt runs one prefill chunk, then every decoding sequence
    /// samples a token and all of them are fed through one batched forward pass.
    pub fn step_batch(&mut self, b: &mut Batch) -> Result<Vec<BatchEvent>> {
        if b.failed {
            return Err(Error::InvalidOption("this batch stopped after an error".into()));
        }
        let r = if b.gpu.is_some() { self.step_batch_gpu(b) } else { self.step_batch_inner(b) };
        if let Err(e) = &r {
            b.failed = true;
            if b.gpu.as_mut().is_some_and(|g| g.work.take().is_some()) {
                self.discard_gpu_step();
            }
            if matches!(e, Error::DeviceLost(_)) {
                // The engine goes on on the CPU (its own cache rebuilt); this batch ends here.
                self.fall_back_to_cpu(e)?;
            }
        }
        r
    }

    /// Forgets a batch before it is done (abort): a GPU job it left in flight is discarded.
    pub fn end_batch(&mut self, b: &mut Batch) {
        if b.gpu.as_mut().is_some_and(|g| g.work.take().is_some()) {
            self.discard_gpu_step();
        }
        b.failed = true;
    }

    /// [`step_batch`](Self::step_batch) on the GPU: collect the job in flight,
    /// then submit the next one (the shared prefix, a prefill chunk of one
    /// sequence, or one decode row of every decoding sequence).
    fn step_batch_gpu(&mut self, b: &mut Batch) -> Result<Vec<BatchEvent>> {
        let mut events = Vec::new();
        let chunk = self.options().prefill_chunk.min(GPU_MAX_CHUNK);
        let no_gpu = || Error::Backend("the batch's GPU is gone".into());
        let run = b.gpu.as_mut().expect("a GPU batch");
        if let Some(work) = run.work.take() {
            let m = self.gpu_model_mut().ok_or_else(no_gpu)?;
            if !m.ready() {
                m.wait()?;
                m.poll();
                if !m.ready() {
                    run.work = Some(work);
                    return Ok(events);
                }
            }
            let out = m.take()?.ok_or_else(|| Error::Backend("the GPU returned no result".into()))?;
            let logits = match out {
                GpuOutput::Logits(l) => l,
                GpuOutput::Token(_) => Vec::new(),
                _ => return Err(Error::Backend("the GPU returned another kind of result than asked".into())),
            };
            match work {
                GpuWork::Prefix => {}
                GpuWork::Prefill { slot, last } => {
                    if last {
                        if let Some(r) = &mut b.slots[slot] {
                            let s = &mut r.session;
                            s.logits = Some(logits);
                            s.stats.prefill_ms = s.started.elapsed().as_secs_f64() * 1e3;
                            s.decode_started = Some(Instant::now());
                            if s.opts.max_tokens == 0 {
                                let g = s.finish(Some(crate::engine::StopReason::Length), b.caches[slot].stats());
                                b.stats.finished += 1;
                                events.push(BatchEvent::Done { index: r.index, generation: Box::new(g) });
                                b.slots[slot] = None;
                            }
                        }
                    }
                }
                GpuWork::Decode { slots, started } => {
                    let vocab = self.config().vocab_size;
                    for (j, slot) in slots.into_iter().enumerate() {
                        if let Some(r) = &mut b.slots[slot] {
                            r.session.logits = Some(logits[j * vocab..(j + 1) * vocab].to_vec());
                        }
                    }
                    b.stats.decode_ms += started.elapsed().as_secs_f64() * 1e3;
                }
            }
        }
        // The shared prefix first, one chunk per step, into the last region.
        let prefix_seq = b.slots.len();
        if let Some(p) = &mut b.prefix {
            if p.len() < run.prefix_ids.len() {
                let n = p.next_chunk(chunk.min(run.prefix_ids.len() - p.len()));
                let ids = run.prefix_ids[p.len()..p.len() + n].to_vec();
                let m = self.gpu_model_mut().ok_or_else(no_gpu)?;
                m.submit_in(&run.storage, prefix_seq, &ids, p, Readback::Argmax)?;
                run.work = Some(GpuWork::Prefix);
                return Ok(events);
            }
        }
        // Free slots take queued inputs (starting from a copy of the prefix).
        for slot in fill_slots(&mut b.slots, &mut b.caches, &mut b.queue, b.prefix.as_ref())? {
            if b.prefix.is_some() {
                self.gpu_model_mut().ok_or_else(no_gpu)?.copy_in_batch(&run.storage, prefix_seq, slot)?;
            }
        }
        // A sequence still reading its prompt: its next chunk.
        for (slot, (entry, cache)) in b.slots.iter_mut().zip(b.caches.iter_mut()).enumerate() {
            let Some(r) = entry else { continue };
            let s = &mut r.session;
            if s.logits.is_some() {
                continue;
            }
            let total = s.prompt_ids.len();
            let n = cache.next_chunk(chunk.min(total - s.fed));
            let last = s.fed + n == total;
            let m = self.gpu_model_mut().ok_or_else(no_gpu)?;
            m.submit_in(&run.storage, slot, &s.prompt_ids[s.fed..s.fed + n], cache, if last { Readback::LastLogits } else { Readback::Argmax })?;
            s.fed += n;
            run.work = Some(GpuWork::Prefill { slot, last });
            return Ok(events);
        }
        // Decode: sample every sequence, then one row per sequence through the batched passes.
        let rows = sample_all(self.tokenizer(), &mut b.slots, &b.caches, &mut b.stats, &mut events, false);
        if !rows.is_empty() {
            let mut caches: Vec<&mut KvCache> = b.caches.iter_mut().enumerate().filter(|(i, _)| rows.iter().any(|r| r.0 == *i)).map(|(_, c)| c).collect();
            let m = self.gpu_model_mut().ok_or_else(no_gpu)?;
            let started = Instant::now();
            m.submit_rows(&run.storage, &rows, &mut caches, Readback::AllLogits)?;
            run.work = Some(GpuWork::Decode { slots: rows.iter().map(|r| r.0).collect(), started });
        }
        Ok(events)
    }

    fn step_batch_inner(&mut self, b: &mut Batch) -> Result<Vec<BatchEvent>> {
        let mut events = Vec::new();
        let chunk = self.options().prefill_chunk;
        // Free slots take queued inputs.
        fill_slots(&mut b.slots, &mut b.caches, &mut b.queue, b.prefix.as_ref())?;
        // Prefill: one chunk per sequence still reading its prompt.
        for (slot, cache) in b.slots.iter_mut().zip(b.caches.iter_mut()) {
            let Some(run) = slot else { continue };
            let s = &mut run.session;
            if s.logits.is_some() {
                continue;
            }
            let total = s.prompt_ids.len();
            let n = cache.next_chunk(chunk.min(total - s.fed));
            let logits = self.model_mut()?.forward(&s.prompt_ids[s.fed..s.fed + n], cache, false)?;
            s.fed += n;
            if s.fed == total {
                s.logits = Some(logits.to_vec());
                s.stats.prefill_ms = s.started.elapsed().as_secs_f64() * 1e3;
                s.decode_started = Some(Instant::now());
                if s.opts.max_tokens == 0 {
                    let g = s.finish(Some(crate::engine::StopReason::Length), cache.stats());
                    b.stats.finished += 1;
                    events.push(BatchEvent::Done { index: run.index, generation: Box::new(g) });
                    *slot = None;
                }
            }
        }
        // Decode: sample every sequence that has logits, then feed the tokens together.
        let rows = sample_all(self.tokenizer(), &mut b.slots, &b.caches, &mut b.stats, &mut events, true);
        if !rows.is_empty() {
            let t0 = Instant::now();
            let ids: Vec<u32> = rows.iter().map(|r| r.1).collect();
            let mut caches: Vec<&mut KvCache> = b.caches.iter_mut().enumerate().filter(|(i, _)| rows.iter().any(|r| r.0 == *i)).map(|(_, c)| c).collect();
            let logits = self.model_mut()?.forward_batch(&ids, &mut caches)?;
            let vocab = logits.len() / rows.len();
            for (j, &(i, _)) in rows.iter().enumerate() {
                if let Some(run) = &mut b.slots[i] {
                    let buf = run.session.logits.get_or_insert_with(Vec::new);
                    buf.clear();
                    buf.extend_from_slice(&logits[j * vocab..(j + 1) * vocab]);
                }
            }
            b.stats.decode_ms += t0.elapsed().as_secs_f64() * 1e3;
        }
        Ok(events)
    }
}

/// Free slots take queued inputs, each cache starting from a copy of the
/// shared prefix's policy (and, on the CPU, its storage). Returns the slots filled.
fn fill_slots(slots: &mut [Option<Running>], caches: &mut [KvCache], queue: &mut VecDeque<Queued>, prefix: Option<&KvCache>) -> Result<Vec<usize>> {
    let mut filled = Vec::new();
    for (slot, (entry, cache)) in slots.iter_mut().zip(caches.iter_mut()).enumerate() {
        if entry.is_some() {
            continue;
        }
        let Some(q) = queue.pop_front() else { break };
        cache.reset();
        if let Some(p) = prefix {
            cache.copy_from(p)?;
        }
        let reused = cache.reuse_prefix(&q.ids);
        *entry = Some(Running { index: q.index, session: Session::new(q.ids, reused, q.sampler, &q.opts, Instant::now()) });
        filled.push(slot);
    }
    Ok(filled)
}

/// Samples the next token of every sequence that has logits: pieces and
/// finished sequences become events (a finished sequence frees its slot).
/// Returns `(slot, token)` for each sequence to feed. `keep`: each sequence
/// keeps its logits buffer (the CPU path refills it in place; the GPU's
/// result arrives as a new buffer).
fn sample_all(tokenizer: &Tokenizer, slots: &mut [Option<Running>], caches: &[KvCache], stats: &mut BatchStats, events: &mut Vec<BatchEvent>, keep: bool) -> Vec<(usize, u32)> {
    let mut rows = Vec::new();
    for (slot, (entry, cache)) in slots.iter_mut().zip(caches).enumerate() {
        let Some(r) = entry else { continue };
        let s = &mut r.session;
        let Some(mut logits) = s.logits.take() else { continue };
        match s.advance(tokenizer, &mut logits) {
            Advance::Token { token, piece } => {
                stats.generated_tokens += 1;
                if let Some(piece) = piece {
                    events.push(BatchEvent::Piece { index: r.index, piece });
                }
                if keep {
                    s.logits = Some(logits);
                }
                rows.push((slot, token));
            }
            Advance::Finished(reason) => {
                if reason != Some(crate::engine::StopReason::Eos) {
                    stats.generated_tokens += 1;
                }
                let g = s.finish(reason, cache.stats());
                stats.finished += 1;
                events.push(BatchEvent::Done { index: r.index, generation: Box::new(g) });
                *entry = None;
            }
        }
    }
    rows
}

/// Names the input an error is about.
fn tag(e: Error, index: usize) -> Error {
    match e {
        Error::InvalidPrompt(m) => Error::InvalidPrompt(format!("input {index}: {m}")),
        Error::InvalidOption(m) => Error::InvalidOption(format!("input {index}: {m}")),
        other => other,
    }
}
