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

use crate::engine::{Advance, Engine, GenerateOptions, Generation, Prompt, Session};
use crate::error::{Error, Result};
use crate::kv_cache::{KvCache, KvCacheConfig};
use crate::sampler::Sampler;
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
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("stats", &self.stats).field("queued", &self.queue.len()).finish()
    }
}

impl Batch {
    /// True once every input has finished.
    pub fn is_done(&self) -> bool {
        self.failed || (self.queue.is_empty() && self.slots.iter().all(Option::is_none))
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
        let new_cache = || KvCache::new(kv, cfg.n_layer, cfg.n_head_kv, cfg.head_dim);
        let caches = (0..b).map(|_| new_cache()).collect::<Result<Vec<_>>>()?;
        let mut prefix = None;
        let mut shared_prefix_tokens = 0;
        if use_prefix {
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
            ..Default::default()
        };
        Ok(Batch { queue, slots: (0..b).map(|_| None).collect(), caches, prefix, started: Instant::now(), stats, failed: false })
    }

    /// One step of a batch: queued inputs take free slots, every sequence still
    /// reading its prompt runs one prefill chunk, then every decoding sequence
    /// samples a token and all of them are fed through one batched forward pass.
    pub fn step_batch(&mut self, b: &mut Batch) -> Result<Vec<BatchEvent>> {
        if b.failed {
            return Err(Error::InvalidOption("this batch stopped after an error".into()));
        }
        let r = self.step_batch_inner(b);
        if r.is_err() {
            b.failed = true;
        }
        r
    }

    fn step_batch_inner(&mut self, b: &mut Batch) -> Result<Vec<BatchEvent>> {
        let mut events = Vec::new();
        let chunk = self.options().prefill_chunk;
        // Free slots take queued inputs.
        for (slot, cache) in b.slots.iter_mut().zip(b.caches.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            let Some(q) = b.queue.pop_front() else { break };
            cache.reset();
            if let Some(p) = &b.prefix {
                cache.copy_from(p)?;
            }
            let reused = cache.reuse_prefix(&q.ids);
            *slot = Some(Running { index: q.index, session: Session::new(q.ids, reused, q.sampler, &q.opts, Instant::now()) });
        }
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
        let mut rows: Vec<(usize, u32)> = Vec::new();
        for (i, (slot, cache)) in b.slots.iter_mut().zip(b.caches.iter()).enumerate() {
            let Some(run) = slot else { continue };
            let s = &mut run.session;
            let Some(mut logits) = s.logits.take() else { continue };
            match s.advance(self.tokenizer(), &mut logits) {
                Advance::Token { token, piece } => {
                    b.stats.generated_tokens += 1;
                    if let Some(piece) = piece {
                        events.push(BatchEvent::Piece { index: run.index, piece });
                    }
                    s.logits = Some(logits);
                    rows.push((i, token));
                }
                Advance::Finished(reason) => {
                    if reason != Some(crate::engine::StopReason::Eos) {
                        b.stats.generated_tokens += 1;
                    }
                    let g = s.finish(reason, cache.stats());
                    b.stats.finished += 1;
                    events.push(BatchEvent::Done { index: run.index, generation: Box::new(g) });
                    *slot = None;
                }
            }
        }
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

/// Names the input an error is about.
fn tag(e: Error, index: usize) -> Error {
    match e {
        Error::InvalidPrompt(m) => Error::InvalidPrompt(format!("input {index}: {m}")),
        Error::InvalidOption(m) => Error::InvalidOption(format!("input {index}: {m}")),
        other => other,
    }
}
