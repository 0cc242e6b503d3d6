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
//!   layer ([`GpuBatch`](crate::model::gpu::GpuBatch)); a step submits one GPU job (a prefill chunk of one
//!   sequence, or one decode row per sequence through the batched passes) and
//!   the next step collects it, so the browser never blocks on the GPU.
//! * Both run through the engine's [`Runner`](super::runner::Runner): a step
//!   collects the job in flight, then submits the next (the CPU finishes each
//!   job at once, so one CPU step prefills a chunk of every sequence and decodes).

use super::runner::{BatchKv, Ready, Want};
use super::session::{Advance, Chooser, Phase};
use super::{Engine, GenerateOptions, Generation, Prompt, Session, StopReason};
use crate::error::{Error, Result};
use crate::kv_cache::KvCacheConfig;
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
    chooser: Chooser,
}

struct Running {
    index: usize,
    session: Session,
}

/// A batch in progress (see [`Engine::start_batch`]).
pub struct Batch {
    queue: VecDeque<Queued>,
    slots: Vec<Option<Running>>,
    /// Every sequence's cache, and (region `slots.len()`) the shared prefix's.
    kv: BatchKv,
    /// The prefix every input shares, prefilled once (empty when none).
    prefix_ids: Vec<u32>,
    /// What the job in flight computes.
    job: Option<Job>,
    /// The last job's logits.
    logits: Vec<f32>,
    started: Instant,
    stats: BatchStats,
    failed: bool,
}

/// A job submitted to the runner.
enum Job {
    Prefix,
    Prefill { slot: usize },
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
        self.failed || (self.queue.is_empty() && self.slots.iter().all(Option::is_none) && self.job.is_none())
    }
    /// `"webgpu"` when the batch runs on the GPU's batched passes, else `"cpu"`.
    pub fn backend(&self) -> &'static str {
        self.kv.backend()
    }
    /// True while a job is in flight (the next step collects it).
    pub fn waiting(&self) -> bool {
        self.job.is_some()
    }
    pub fn stats(&self) -> BatchStats {
        let mut s = self.stats.clone();
        s.elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3;
        s.tokens_per_sec = if s.elapsed_ms > 0.0 { s.generated_tokens as f64 * 1e3 / s.elapsed_ms } else { 0.0 };
        // Every generated token but each sequence's first comes out of a batched decode step.
        let decoded = s.generated_tokens.saturating_sub(s.finished);
        s.decode_tokens_per_sec = if s.decode_ms > 0.0 { decoded as f64 * 1e3 / s.decode_ms } else { 0.0 };
        s
    }
    /// The region that holds the shared prefix.
    fn prefix_region(&self) -> Option<usize> {
        (!self.prefix_ids.is_empty()).then_some(self.slots.len())
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
        let b = opts.batch_size.min(inputs.len());
        let queue = self.queue_inputs(inputs)?;
        // The shared prefix: long enough to be worth a copy, short enough not to evict,
        // and leaving every prompt at least one token of its own to compute.
        let shortest = queue.iter().map(|q| q.ids.len()).min().unwrap_or(0);
        let mut shared = queue.iter().skip(1).fold(queue[0].ids.len(), |n, q| n.min(common_prefix(&queue[0].ids, &q.ids)));
        shared = shared.min(shortest.saturating_sub(1)).min(kv.window);
        let use_prefix = opts.share_prefix && queue.len() > 1 && shared >= 8;
        let cfg = self.config();
        let per_seq = kv.bytes_for(&cfg.windows(), cfg.kv_dim()) as usize;
        let regions = b + use_prefix as usize;
        let need = self.weight_bytes() as u128 + self.kv_stats().bytes as u128 + (regions as u128) * per_seq as u128;
        if need > self.options().memory_budget as u128 {
            return Err(Error::Memory(format!(
                "a batch of {b} sequences with {}-token caches ({} MiB each) does not fit the {} MiB budget beside the weights; use a smaller batch or window",
                kv.window,
                per_seq >> 20,
                self.options().memory_budget >> 20
            )));
        }
        // A step a generation left in flight: its result is nobody's.
        self.discard_in_flight();
        let batch_kv = self.runner.new_batch(kv, b, use_prefix)?;
        let stats = BatchStats {
            sequences: inputs.len(),
            batch_size: b,
            prompt_tokens: queue.iter().map(|q| q.ids.len()).sum(),
            shared_prefix_tokens: if use_prefix { shared } else { 0 },
            kv_bytes_per_sequence: per_seq,
            backend: batch_kv.backend(),
            ..Default::default()
        };
        let prefix_ids = if use_prefix { queue[0].ids[..shared].to_vec() } else { Vec::new() };
        Ok(Batch { queue, slots: (0..b).map(|_| None).collect(), kv: batch_kv, prefix_ids, job: None, logits: Vec::new(), started: Instant::now(), stats, failed: false })
    }

    /// Every input's ids, sampler and options, checked.
    fn queue_inputs(&mut self, inputs: &[(Prompt, GenerateOptions)]) -> Result<VecDeque<Queued>> {
        let mut queue = VecDeque::with_capacity(inputs.len());
        for (index, (prompt, o)) in inputs.iter().enumerate() {
            let ids = self.standalone_prompt_ids(*prompt, o.tools.as_ref()).map_err(|e| tag(e, index))?;
            let chooser = self.chooser(o, prompt).map_err(|e| tag(e, index))?;
            if o.no_cache {
                return Err(tag(Error::InvalidOption("noCache is not available in a batch".into()), index));
            }
            queue.push_back(Queued { index, ids, opts: o.clone(), chooser });
        }
        Ok(queue)
    }

    /// One step of a batch: collect the job in flight, then submit the next
    /// ones — the shared prefix first, then queued inputs take free slots, every
    /// sequence still reading its prompt runs one prefill chunk, and every
    /// decoding sequence samples a token and all of them are fed through one
    /// batched forward pass. On the GPU a step ends after each submit (the
    /// next step collects it); the CPU finishes each job at once.
    pub fn step_batch(&mut self, b: &mut Batch) -> Result<Vec<BatchEvent>> {
        if b.failed {
            return Err(Error::InvalidOption("this batch stopped after an error".into()));
        }
        let mut events = Vec::new();
        let mut prefilled = vec![false; b.slots.len()];
        let r = loop {
            match self.batch_job(b, &mut events, &mut prefilled) {
                Ok(true) if self.runner.ready() && !matches!(b.job, Some(Job::Decode { .. })) => continue,
                Ok(_) => break Ok(events),
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = &r {
            self.end_batch(b);
            if matches!(e, Error::DeviceLost(_)) {
                // The engine goes on on the CPU (its own cache rebuilt); this batch ends here.
                self.recover_on_cpu(e)?;
            }
        }
        r
    }

    /// Forgets a batch before it is done (abort): a job it left in flight is discarded.
    pub fn end_batch(&mut self, b: &mut Batch) {
        if b.job.take().is_some() {
            self.runner.discard();
        }
        b.failed = true;
    }

    /// Collects the job in flight and submits the next one. Returns false when
    /// the step should end (a job is still running, or nothing is left to do).
    fn batch_job(&mut self, b: &mut Batch, events: &mut Vec<BatchEvent>, prefilled: &mut [bool]) -> Result<bool> {
        if let Some(job) = b.job.take() {
            if self.runner.take(&mut b.logits)?.is_none() {
                b.job = Some(job);
                return Ok(false);
            }
            self.collect(b, job, events);
        }
        let chunk = self.runner.max_chunk(self.opts.prefill_chunk);
        // The shared prefix first, one chunk per job.
        if let Some(region) = b.prefix_region() {
            let done = b.kv.policy(region).len();
            if done < b.prefix_ids.len() {
                let n = b.kv.policy(region).next_chunk(chunk.min(b.prefix_ids.len() - done));
                self.runner.submit_in(&mut b.kv, region, &b.prefix_ids[done..done + n], &Want::Nothing)?;
                b.job = Some(Job::Prefix);
                return Ok(true);
            }
        }
        self.fill_slots(b)?;
        // A sequence still reading its prompt: its next chunk.
        for (slot, entry) in b.slots.iter_mut().enumerate() {
            let Some(r) = entry else { continue };
            let s = &mut r.session;
            let Phase::Feeding { fed } = s.phase else { continue };
            if prefilled[slot] {
                continue;
            }
            prefilled[slot] = true;
            let total = s.history.len();
            let n = b.kv.policy(slot).next_chunk(chunk.min(total - fed));
            let last = fed + n == total;
            self.runner.submit_in(&mut b.kv, slot, &s.history[fed..fed + n], if last { &Want::LastLogits } else { &Want::Nothing })?;
            s.phase = if last { Phase::Awaiting } else { Phase::Feeding { fed: fed + n } };
            b.job = Some(Job::Prefill { slot });
            return Ok(true);
        }
        // Decode: sample every sequence, then one row per sequence through one pass.
        let rows = sample_all(&self.tokenizer, b, events)?;
        if rows.is_empty() {
            return Ok(false);
        }
        let started = Instant::now();
        self.runner.submit_rows(&mut b.kv, &rows)?;
        b.job = Some(Job::Decode { slots: rows.iter().map(|r| r.0).collect(), started });
        Ok(true)
    }

    /// Hands a finished job's logits to the sequences it computed.
    fn collect(&mut self, b: &mut Batch, job: Job, events: &mut Vec<BatchEvent>) {
        match job {
            Job::Prefix => {}
            Job::Prefill { slot } => {
                let Some(r) = &mut b.slots[slot] else { return };
                let s = &mut r.session;
                if s.phase != Phase::Awaiting {
                    return;
                }
                std::mem::swap(&mut s.logits, &mut b.logits);
                s.phase = Phase::Choosing(Ready::Logits);
                s.finish_prefill();
                if s.opts.max_tokens == 0 {
                    let g = s.finish(Some(StopReason::Length), b.kv.stats(slot));
                    b.stats.finished += 1;
                    events.push(BatchEvent::Done { index: r.index, generation: Box::new(g) });
                    b.slots[slot] = None;
                }
            }
            Job::Decode { slots, started } => {
                let vocab = self.config().vocab_size;
                for (j, slot) in slots.into_iter().enumerate() {
                    if let Some(r) = &mut b.slots[slot] {
                        let s = &mut r.session;
                        s.logits.clear();
                        s.logits.extend_from_slice(&b.logits[j * vocab..(j + 1) * vocab]);
                        s.phase = Phase::Choosing(Ready::Logits);
                    }
                }
                b.stats.decode_ms += started.elapsed().as_secs_f64() * 1e3;
            }
        }
    }

    /// Free slots take queued inputs, each cache starting from a copy of the
    /// shared prefix.
    fn fill_slots(&mut self, b: &mut Batch) -> Result<()> {
        let prefix = b.prefix_region();
        for slot in 0..b.slots.len() {
            if b.slots[slot].is_some() {
                continue;
            }
            let Some(q) = b.queue.pop_front() else { break };
            b.kv.policy_mut(slot).reset();
            if let Some(region) = prefix {
                self.runner.copy_in(&mut b.kv, region, slot)?;
            }
            let reused = b.kv.policy_mut(slot).reuse_prefix(&q.ids);
            b.slots[slot] = Some(Running { index: q.index, session: Session::new(q.ids, reused, q.chooser, &q.opts, Instant::now()) });
        }
        Ok(())
    }
}

/// Samples the next token of every sequence that has a result: pieces and
/// finished sequences become events (a finished sequence frees its slot).
/// Returns `(slot, token)` for each sequence to feed.
fn sample_all(tokenizer: &Tokenizer, b: &mut Batch, events: &mut Vec<BatchEvent>) -> Result<Vec<(usize, u32)>> {
    let mut rows = Vec::new();
    for (slot, entry) in b.slots.iter_mut().enumerate() {
        let Some(r) = entry else { continue };
        let s = &mut r.session;
        if !matches!(s.phase, Phase::Choosing(_)) {
            continue;
        }
        let Phase::Choosing(ready) = std::mem::replace(&mut s.phase, Phase::Awaiting) else { continue };
        match s.advance(tokenizer, ready).map_err(|e| tag(e, r.index))? {
            Advance::Token { token, piece } => {
                b.stats.generated_tokens += 1;
                if let Some(piece) = piece {
                    events.push(BatchEvent::Piece { index: r.index, piece });
                }
                rows.push((slot, token));
            }
            Advance::Finished(reason) => {
                if reason != Some(StopReason::Eos) {
                    b.stats.generated_tokens += 1;
                }
                let g = s.finish(reason, b.kv.stats(slot));
                b.stats.finished += 1;
                events.push(BatchEvent::Done { index: r.index, generation: Box::new(g) });
                *entry = None;
            }
        }
    }
    Ok(rows)
}

/// Names the input an error is about.
fn tag(e: Error, index: usize) -> Error {
    match e {
        Error::InvalidPrompt(m) => Error::InvalidPrompt(format!("input {index}: {m}")),
        Error::InvalidOption(m) => Error::InvalidOption(format!("input {index}: {m}")),
        Error::Constraint(m) => Error::Constraint(format!("input {index}: {m}")),
        other => other,
    }
}
