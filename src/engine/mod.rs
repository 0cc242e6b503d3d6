//! The engine: bytes in, text out. It ties the GGUF, tokenizer, chat template,
//! model, KV cache and sampler together, reuses the cached prefix between
//! requests, streams text pieces to a callback and keeps statistics.
//!
//! * [`options`]: what a caller chooses; [`load`]: bytes → a ready engine;
//! * [`runner`]: the forward pass behind one interface (submit / ready /
//!   take), on the CPU ([`cpu_runner`]) or WebGPU ([`gpu_runner`]);
//! * [`session`]: one generation as a state machine; [`batch`]: many at once.
//!
//! Every error leaves the engine usable: a failure inside the forward pass
//! empties the cache (the next request re-prefills; [`Engine::failed`] is the
//! one place that does), a lost GPU moves the engine to the CPU without
//! changing a token ([`Engine::recover_on_cpu`], the one recovery path), and
//! everything else is checked before the cache is touched.

pub mod batch;
pub(crate) mod cpu_runner;
pub(crate) mod gpu_runner;
mod load;
mod memory_view;
pub mod options;
mod saved_session;
pub(crate) mod runner;
pub mod session;

pub use memory_view::MemoryView;
pub use options::{EngineOptions, GenerateOptions, LoadTimings, Prompt};
pub use session::{Generation, GenerationStats, Session, StopReason};

use crate::backend::cpu::ops;
use crate::backend::webgpu::AdapterInfo;
use crate::chat_template::tools::{ToolChoice, ToolFormat, Tools};
use crate::chat_template::{ChatTemplate, Message};
use crate::error::{Error, Result};
use crate::kv_cache::{KvDType, KvStats};
use crate::model::profile::Op;
use crate::model::{LlamaConfig, Profile};
use crate::sampler::constraint::{Grammars, OutputFormat};
use crate::sampler::logprobs::{check_logit_bias, check_occurrence_penalties, MAX_TOP_LOGPROBS};
use crate::sampler::Sampler;
use crate::tokenizer::{IncrementalEncoder, Tokenizer};
use runner::{Ready, Runner, Want};
use session::{Advance, Chooser, Phase};
use std::sync::Arc;
use web_time::Instant;

/// The chunk whose result has not been taken yet (a lost device runs it again on the CPU).
struct InFlight {
    ids: Vec<u32>,
    want: Want,
}

pub struct Engine {
    runner: Box<dyn Runner>,
    in_flight: Option<InFlight>,
    /// Why the engine left the GPU, once it has.
    fallback: Option<String>,
    tokenizer: Arc<Tokenizer>,
    /// The grammar compiler over the vocabulary, built on the first request with a response format.
    grammars: Option<Grammars>,
    template: Option<ChatTemplate>,
    opts: EngineOptions,
    last: GenerationStats,
    /// Chat prompts re-render the whole conversation; this re-tokenizes only the new part.
    encoder: IncrementalEncoder,
    load: LoadTimings,
    /// The model file's identity (`Gguf::fingerprint`), carried by saved sessions.
    fingerprint: u64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("backend", &self.backend()).field("config", self.config()).field("kv", &self.kv_stats()).finish()
    }
}

/// What one [`Engine::step`] produced.
#[derive(Debug)]
pub enum Step {
    /// A prefill chunk ran, or a token was held back (it may start a stop string).
    Working,
    /// The GPU has not finished the step in flight (browser only): await
    /// [`Engine::gpu_ready`] and step again.
    Waiting,
    /// New text.
    Piece(String),
    /// The generation ended; `final_piece` holds any text not yet streamed.
    Done(Box<Generation>),
}

/// Accessors: what the engine runs and holds.
impl Engine {
    /// Where loading went.
    pub fn load_timings(&self) -> LoadTimings {
        self.load
    }
    pub fn config(&self) -> &LlamaConfig {
        self.runner.config()
    }
    /// `"webgpu"` or `"cpu"`.
    pub fn backend(&self) -> &'static str {
        self.runner.backend()
    }
    /// The GPU adapter, while the engine runs on one.
    pub fn adapter(&self) -> Option<&AdapterInfo> {
        self.runner.adapter()
    }
    /// Why the engine moved from the GPU to the CPU, if it did.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
    }
    /// Dispatches and bytes read back by the GPU's last step.
    pub fn gpu_step_costs(&self) -> Option<(usize, usize)> {
        self.runner.step_costs()
    }
    /// Destroys the GPU device (tests of the device-lost fallback).
    pub fn lose_gpu_device(&self) {
        self.runner.lose_device();
    }
    /// True when a step's result can be collected without waiting (always on
    /// the CPU). The browser awaits this between [`step`](Self::step)s that
    /// returned [`Step::Waiting`].
    pub fn gpu_ready(&self) -> bool {
        self.runner.ready()
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    /// Whether the model has a chat template (a base model has none: raw prompts only).
    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }
    pub fn kv_stats(&self) -> KvStats {
        self.runner.kv_stats()
    }
    /// The cold blocks the last step recalled: `(first position, tokens,
    /// (layer, kv head) pairs holding it)`, by position (empty without a cold tier).
    pub fn recall_map(&self) -> Vec<(usize, usize, usize)> {
        self.runner.recall_map()
    }
    pub fn kv_dtype(&self) -> KvDType {
        self.opts.kv.dtype
    }
    pub fn last_stats(&self) -> &GenerationStats {
        &self.last
    }
    /// Token ids currently in the cache's history.
    pub fn cached_tokens(&self) -> &[u32] {
        self.runner.policy().tokens()
    }
    /// Switches the forward pass's per-operation timing on (fresh) or off.
    pub fn set_profiling(&mut self, on: bool) {
        self.runner.set_profiling(on);
    }
    /// Where the forward pass's time went since profiling was switched on (CPU backend).
    pub fn profile(&self) -> Option<&Profile> {
        self.runner.profile()
    }
    pub fn weight_bytes(&self) -> usize {
        self.runner.weight_bytes()
    }
    /// Empties the cache and the history.
    pub fn reset(&mut self) {
        self.empty_cache();
    }
}

/// The runner, with the engine's one recovery path and one failure path.
impl Engine {
    /// Submits a planned chunk into the engine's cache.
    fn submit(&mut self, ids: &[u32], want: Want) -> Result<()> {
        match self.runner.submit(ids, &want) {
            Ok(()) => {
                self.in_flight = Some(InFlight { ids: ids.to_vec(), want });
                Ok(())
            }
            Err(e @ Error::DeviceLost(_)) => {
                self.in_flight = None;
                self.recover_on_cpu(&e)?;
                self.submit(ids, want)
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// The in-flight chunk's result; `None` while the GPU works (browser).
    fn take(&mut self, logits: &mut Vec<f32>) -> Result<Option<Ready>> {
        match self.runner.take(logits) {
            Ok(Some(r)) => {
                self.in_flight = None;
                Ok(Some(r))
            }
            Ok(None) => Ok(None),
            // The CPU ran the chunk in flight again: take its result.
            Err(e @ Error::DeviceLost(_)) => {
                self.recover_on_cpu(&e)?;
                self.take(logits)
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// [`take`](Self::take) for the blocking calls (natively the GPU is waited for).
    fn take_now(&mut self, logits: &mut Vec<f32>) -> Result<Ready> {
        self.take(logits)?.ok_or_else(|| Error::Backend("the GPU has not finished; in the browser use start/step".into()))
    }

    /// A failure inside the forward pass: the cache is emptied, so the next
    /// request re-prefills. Returns `e`.
    fn failed(&mut self, e: Error) -> Error {
        self.empty_cache();
        e
    }

    /// Forgets the step in flight, the history and the blocks the cold tier recalled.
    fn empty_cache(&mut self) {
        self.discard_in_flight();
        self.runner.policy_mut().reset();
        if let Some(cache) = self.runner.cpu_cache() {
            cache.forget_recalls();
        }
    }

    /// Forgets a step whose result nobody will collect (an aborted generation
    /// or batch): its work still lands in the cache it was for.
    pub(crate) fn discard_in_flight(&mut self) {
        self.runner.discard();
        self.in_flight = None;
    }

    /// Feeds `ids` through the cache in planned chunks, returning the logits of
    /// the last token (none for no ids).
    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        let mut i = 0;
        while i < ids.len() {
            let n = self.runner.policy().next_chunk(self.runner.max_chunk(self.opts.prefill_chunk).min(ids.len() - i));
            let last = i + n == ids.len();
            self.submit(&ids[i..i + n], if last { Want::LastLogits } else { Want::Nothing })?;
            self.take_now(&mut logits)?;
            i += n;
        }
        Ok(logits)
    }

    /// Appends `ids` to the cached sequence and returns the last token's logits.
    pub fn append(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::InvalidPrompt("nothing to feed".into()));
        }
        self.discard_in_flight();
        self.feed(ids)
    }

    /// Logits for `ids` from an empty cache (uses the cache; for tests and tools).
    pub fn logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.reset();
        self.append(ids)
    }

    /// Feeds `ids` from an empty cache in planned chunks, handing each chunk's
    /// logits (`[T, vocab]`, one row per fed token) to `on_chunk(start, logits)`.
    fn feed_all(&mut self, ids: &[u32], on_chunk: &mut dyn FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
        self.reset();
        let mut logits = Vec::new();
        let mut i = 0;
        while i < ids.len() {
            let n = self.runner.policy().next_chunk(self.runner.max_chunk(self.opts.prefill_chunk).min(ids.len() - i));
            self.submit(&ids[i..i + n], Want::AllLogits)?;
            self.take_now(&mut logits)?;
            on_chunk(i, &logits)?;
            i += n;
        }
        Ok(())
    }

    /// The logits after every token of `ids`, fed through the bounded cache from empty.
    pub fn logits_all(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(ids.len());
        let vocab = self.config().vocab_size;
        self.feed_all(ids, &mut |_, l| {
            out.extend(l.chunks_exact(vocab).map(<[f32]>::to_vec));
            Ok(())
        })?;
        Ok(out)
    }

    /// Scores every next token of `ids` through the bounded cache, from an empty cache.
    /// Returns (tokens scored, summed negative log-likelihood).
    pub fn perplexity(&mut self, ids: &[u32], mut on_chunk: impl FnMut(usize, f64)) -> Result<(usize, f64)> {
        if ids.len() < 2 {
            return Err(Error::InvalidPrompt("perplexity needs at least two tokens".into()));
        }
        let mut nll = 0.0f64;
        let mut scored = 0usize;
        let vocab = self.config().vocab_size;
        self.feed_all(&ids[..ids.len() - 1], &mut |start, logits| {
            for (j, row) in logits.chunks_exact(vocab).enumerate() {
                nll -= ops::log_softmax_at(row, ids[start + 1 + j] as usize);
            }
            scored += logits.len() / vocab;
            on_chunk(scored, nll);
            Ok(())
        })?;
        Ok((scored, nll))
    }
}

/// Prompts: text, chat messages or ids → checked token ids.
impl Engine {
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text)
    }

    pub fn detokenize(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids)
    }

    /// The prompt text chat messages render to.
    pub fn render_chat(&self, messages: &[Message]) -> Result<String> {
        self.render_chat_with(messages, None)
    }

    /// The prompt text of chat messages with a request's tools described.
    fn render_chat_with(&self, messages: &[Message], tools: Option<&Tools>) -> Result<String> {
        match &self.template {
            Some(t) => t.render_with_tools(messages, tools.map(|t| t.specs.as_slice()), true),
            None => Err(Error::ChatTemplate("the model has no chat template; use a raw prompt".into())),
        }
    }

    /// The ids of a prompt on its own (no reuse of the cached conversation).
    pub(crate) fn standalone_prompt_ids(&self, prompt: Prompt, tools: Option<&Tools>) -> Result<Vec<u32>> {
        let ids = match prompt {
            Prompt::Raw(text) => self.tokenize(text)?,
            Prompt::Chat(messages) => self.tokenize(&self.render_chat_with(messages, tools)?)?,
            Prompt::Ids(ids) => ids.to_vec(),
        };
        self.check_ids(ids)
    }

    fn check_ids(&self, ids: Vec<u32>) -> Result<Vec<u32>> {
        if ids.is_empty() {
            return Err(Error::InvalidPrompt("the prompt is empty".into()));
        }
        let vocab = self.config().vocab_size;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::InvalidPrompt(format!("token id {bad} is outside the vocabulary ({vocab})")));
        }
        Ok(ids)
    }

    pub fn prompt_ids(&mut self, prompt: Prompt) -> Result<Vec<u32>> {
        self.prompt_ids_with(prompt, None)
    }

    fn prompt_ids_with(&mut self, prompt: Prompt, tools: Option<&Tools>) -> Result<Vec<u32>> {
        let ids = match prompt {
            Prompt::Raw(text) => self.tokenize(text)?,
            Prompt::Chat(messages) => {
                let text = self.render_chat_with(messages, tools)?;
                match self.extend_cached_text(&text)? {
                    Some(ids) => ids,
                    None => self.encoder.encode(&self.tokenizer, &text)?,
                }
            }
            Prompt::Ids(ids) => ids.to_vec(),
        };
        self.check_ids(ids)
    }

    /// When the rendered chat text extends the text of the cached tokens (the next
    /// turn of the same conversation), keep the cached tokens as they are (the
    /// model's own tokens, which may differ from re-tokenizing its answer) and
    /// tokenize only the new text. Without this, an answer whose re-tokenization
    /// differs would force a full re-prefill once tokens have been evicted.
    fn extend_cached_text(&self, text: &str) -> Result<Option<Vec<u32>>> {
        let cached = self.cached_tokens();
        if cached.is_empty() || self.tokenizer.has_bos_prefix() {
            return Ok(None);
        }
        let mut n = cached.len();
        let mut bytes = self.tokenizer.decode_bytes(cached);
        // Cut at a character boundary the new text shares.
        while n > 0 && !(text.as_bytes().starts_with(&bytes) && text.is_char_boundary(bytes.len())) {
            n -= 1;
            bytes.truncate(bytes.len() - self.tokenizer.raw_bytes(cached[n]).len());
            if text.len() > bytes.len() && n + 64 < cached.len() {
                // Not an extension of the conversation: let the token-level path decide.
                return Ok(None);
            }
        }
        if n == 0 || bytes.len() == text.len() {
            return Ok(None);
        }
        let mut ids = cached[..n].to_vec();
        ids.extend(self.tokenizer.encode_part_text(&text[bytes.len()..])?);
        Ok(Some(ids))
    }
}

/// Generation: one request as a [`Session`] advanced step by step.
impl Engine {
    /// Generates from `prompt`, calling `on_piece` with each piece of text as it
    /// is produced (an empty piece is a heartbeat between prefill chunks and
    /// held-back tokens); `on_piece` returns false to abort with
    /// [`Error::Aborted`]. The cache keeps what was computed before the abort.
    /// The cached prefix shared with the previous request is not recomputed.
    pub fn generate(&mut self, prompt: Prompt, opts: &GenerateOptions, mut on_piece: impl FnMut(&str) -> bool) -> Result<Generation> {
        let mut session = self.start(prompt, opts)?;
        loop {
            let piece = match self.step(&mut session)? {
                Step::Working | Step::Waiting => String::new(),
                Step::Piece(p) => p,
                Step::Done(g) => {
                    if !g.final_piece.is_empty() {
                        on_piece(&g.final_piece);
                    }
                    return Ok(*g);
                }
            };
            if !on_piece(&piece) {
                return Err(Error::Aborted);
            }
        }
    }

    /// Starts a generation that [`step`](Self::step) advances one prefill chunk
    /// or one token at a time (the browser worker yields to its event loop
    /// between steps, so an abort message is seen within one token). Checks
    /// every option and reuses the cached prefix.
    pub fn start(&mut self, prompt: Prompt, opts: &GenerateOptions) -> Result<Session> {
        let started = Instant::now();
        let prompt_ids = self.prompt_ids_with(prompt, opts.tools.as_ref())?;
        let chooser = self.chooser(opts, &prompt)?;
        if opts.no_cache && !self.runner.recomputes_without_cache() {
            return Err(Error::InvalidOption("no_cache runs on the CPU backend only".into()));
        }
        // A step an aborted generation left in flight: its result is nobody's.
        self.discard_in_flight();
        if opts.no_cache {
            self.runner.policy_mut().reset();
        }
        let reused = self.runner.policy_mut().reuse_prefix(&prompt_ids);
        Ok(Session::new(prompt_ids, reused, chooser, opts, started))
    }

    /// A request's sampler and grammar, every choice option checked.
    pub(crate) fn chooser(&mut self, opts: &GenerateOptions, prompt: &Prompt) -> Result<Chooser> {
        let sampler = Sampler::new(opts.sampler)?;
        if opts.stop.iter().any(|s| s.is_empty()) {
            return Err(Error::InvalidOption("stop strings must not be empty".into()));
        }
        check_logit_bias(&opts.logit_bias, self.tokenizer.vocab_size())?;
        check_occurrence_penalties(opts.frequency_penalty, opts.presence_penalty)?;
        if opts.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(Error::InvalidOption(format!("top logprobs must be 0 to {MAX_TOP_LOGPROBS}")));
        }
        let (tool_calls, forced) = self.tool_calls(opts, prompt)?;
        let format = forced.as_ref().or(opts.format.as_ref());
        let constraint = match format {
            None => None,
            Some(_) if opts.ignore_eos => return Err(Error::InvalidOption("a response format ends where its grammar does: ignore_eos does not apply".into())),
            Some(format) => {
                if self.grammars.is_none() {
                    self.grammars = Some(Grammars::new(self.tokenizer.clone())?);
                }
                self.grammars.as_ref().map(|g| g.compile(format)).transpose()?
            }
        };
        Ok(Chooser { sampler, constraint, tool_calls })
    }

    /// How a request's tool calls are read (the template's format, unless the
    /// choice is `none`) and the grammar that forces one where the choice requires it.
    fn tool_calls(&self, opts: &GenerateOptions, prompt: &Prompt) -> Result<(Option<ToolFormat>, Option<OutputFormat>)> {
        let Some(tools) = &opts.tools else { return Ok((None, None)) };
        if !matches!(prompt, Prompt::Chat(_)) {
            return Err(Error::InvalidOption("tools need chat messages (the template describes them)".into()));
        }
        let format = self.template.as_ref().and_then(|t| t.tool_format());
        let format = format.ok_or_else(|| Error::Unsupported("this model's chat template does not take tools".into()))?;
        let forced = format.call_schema(tools).map(|(open, schema, close)| OutputFormat::json_between(open, schema, close));
        if forced.is_some() && opts.format.is_some() {
            return Err(Error::InvalidOption("a required tool call and a response format cannot be combined".into()));
        }
        let read = (tools.choice != ToolChoice::None).then_some(format);
        Ok((read, forced))
    }

    /// Building the grammar compiler's vocabulary trie took this long (once per engine), in ms.
    pub fn grammar_setup_ms(&self) -> Option<f64> {
        self.grammars.as_ref().map(|g| g.build_ms)
    }

    /// Advances `session` by one step: collects the result in flight, then
    /// submits the next prefill chunk or the next token. On the GPU a step
    /// submits work and the next step collects it: in the browser a step may
    /// return [`Step::Waiting`] (await [`gpu_ready`](Self::gpu_ready), then
    /// step again); native code blocks instead.
    pub fn step(&mut self, s: &mut Session) -> Result<Step> {
        if s.phase == Phase::Done {
            return Err(Error::InvalidOption("this generation has finished".into()));
        }
        // The session must still own the cache: another request in between would have changed it.
        if self.cached_tokens() != s.cached() {
            s.phase = Phase::Done;
            return Err(Error::InvalidOption("another request used the engine during this generation".into()));
        }
        let r = self.advance(s);
        if r.is_err() {
            s.phase = Phase::Done;
        }
        r
    }

    fn advance(&mut self, s: &mut Session) -> Result<Step> {
        if self.runner.in_flight() {
            let Some(ready) = self.take(&mut s.logits)? else { return Ok(Step::Waiting) };
            if s.phase == Phase::Awaiting {
                s.phase = Phase::Choosing(ready);
            }
        }
        match std::mem::replace(&mut s.phase, Phase::Done) {
            Phase::Feeding { fed } => {
                self.feed_session(s, fed)?;
                Ok(Step::Working)
            }
            Phase::Choosing(ready) => self.choose(s, ready),
            Phase::Awaiting => Err(Error::InvalidOption("the step this generation waited for was discarded".into())),
            Phase::Done => Err(Error::InvalidOption("this generation has finished".into())),
        }
    }

    /// Submits the next chunk of the session's sequence (the last one asks for
    /// what the first token is chosen from).
    fn feed_session(&mut self, s: &mut Session, fed: usize) -> Result<()> {
        let total = s.history.len();
        let n = self.runner.policy().next_chunk(self.runner.max_chunk(self.opts.prefill_chunk).min(total - fed));
        let last = fed + n == total;
        self.submit(&s.history[fed..fed + n], if last { Want::Next(s.next_choice()) } else { Want::Nothing })?;
        s.phase = if last { Phase::Awaiting } else { Phase::Feeding { fed: fed + n } };
        Ok(())
    }

    /// Chooses the next token, emits it, and feeds it.
    fn choose(&mut self, s: &mut Session, ready: Ready) -> Result<Step> {
        s.finish_prefill();
        if s.opts.max_tokens == 0 {
            return Ok(self.finish(s, Some(StopReason::Length)));
        }
        let t0 = Instant::now();
        let advanced = s.advance(&self.tokenizer, ready)?;
        self.runner.profile_add(Op::Sampling, t0.elapsed().as_secs_f64());
        let (token, piece) = match advanced {
            Advance::Finished(reason) => return Ok(self.finish(s, reason)),
            Advance::Token { token, piece } => (token, piece),
        };
        if s.opts.no_cache {
            // Recompute the whole sequence (a benchmark of what the cache saves).
            self.runner.policy_mut().reset();
            self.feed_session(s, 0)?;
        } else {
            self.submit(&[token], Want::Next(s.next_choice()))?;
            s.phase = Phase::Awaiting;
        }
        Ok(piece.map_or(Step::Working, Step::Piece))
    }

    fn finish(&mut self, s: &mut Session, reason: Option<StopReason>) -> Step {
        let g = s.finish(reason, self.kv_stats());
        self.last = g.stats.clone();
        Step::Done(Box::new(g))
    }
}
