//! One generation in progress, as a state machine: its [`Phase`], the tokens
//! so far, the sampler, the stop rules, the streamed text and the stats. The
//! engine and batches drive sessions the same way; a session never touches
//! the model or the cache.

use super::runner::{NextChoice, Ready};
use super::GenerateOptions;
use crate::chat_template::tools::{ToolCall, ToolFormat};
use crate::error::Result;
use crate::kv_cache::KvStats;
use crate::sampler::constraint::Constraint;
use crate::sampler::logprobs::{apply_logit_bias, apply_occurrence_penalties, token_logprob, TokenLogprob};
use crate::sampler::Sampler;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use web_time::Instant;

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-generation token.
    Eos,
    /// One of the stop strings.
    StopString,
    /// `max_tokens` reached.
    Length,
}

/// Numbers about one request.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    /// Prompt tokens found in the cache (not recomputed).
    pub reused_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub prefill_tokens_per_sec: f64,
    pub decode_tokens_per_sec: f64,
    pub time_to_first_token_ms: f64,
    /// Compiling the response format's grammar (0 without one).
    pub grammar_compile_ms: f64,
    /// Computing its token masks, all steps together.
    pub mask_ms: f64,
}

/// The result of one request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub text: String,
    /// Text released at the end that had not been streamed yet.
    #[serde(skip)]
    pub final_piece: String,
    pub stop_reason: Option<StopReason>,
    pub stats: GenerationStats,
    pub kv: KvStats,
    /// One entry per generated token when `logprobs` was asked for.
    pub logprobs: Vec<TokenLogprob>,
    /// The tool calls written in the text (with tools), and the text outside them.
    pub tool_calls: Vec<ToolCall>,
    pub content: String,
}

/// Where a session is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Phase {
    /// Feeding `history` through the network: its first `fed` tokens are in
    /// the cache (the prompt; with `no_cache`, the whole sequence again).
    Feeding { fed: usize },
    /// The step in flight computes what the next token is chosen from.
    Awaiting,
    /// The next token is chosen from this result (logits in `Session::logits`).
    Choosing(Ready),
    /// Finished (or failed): no more steps.
    Done,
}

/// What [`Session::advance`] did with one chosen token.
pub(crate) enum Advance {
    /// The token continues the text (feed it); `piece` is text that can be released.
    Token { token: u32, piece: Option<String> },
    /// The generation ended (the token, if any, is not fed).
    Finished(Option<StopReason>),
}

/// How a request's tokens are chosen: its sampler and its grammar (built and
/// checked before the request touches the cache).
pub(crate) struct Chooser {
    pub sampler: Sampler,
    pub constraint: Option<Constraint>,
    /// The format tool calls are read out of the text in (None: no tools, or `tool_choice: none`).
    pub tool_calls: Option<ToolFormat>,
}

/// A generation in progress (see [`Engine::start`](super::Engine::start)).
pub struct Session {
    pub(crate) opts: GenerateOptions,
    pub(crate) sampler: Sampler,
    /// The response format's grammar state.
    constraint: Option<Constraint>,
    tool_calls: Option<ToolFormat>,
    pub(crate) phase: Phase,
    pub(crate) prompt_ids: Vec<u32>,
    /// The prompt and the generated tokens; the cache holds their prefix.
    pub(crate) history: Vec<u32>,
    /// The last result's logits (a buffer reused from step to step).
    pub(crate) logits: Vec<f32>,
    generated: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    text: String,
    emitted: usize,
    decoder: StreamDecoder,
    pub(crate) stats: GenerationStats,
    started: Instant,
    decode_started: Option<Instant>,
}

impl Session {
    pub(crate) fn new(prompt_ids: Vec<u32>, reused: usize, chooser: Chooser, opts: &GenerateOptions, started: Instant) -> Self {
        let Chooser { sampler, constraint, tool_calls } = chooser;
        let grammar_compile_ms = constraint.as_ref().map_or(0.0, |c| c.compile_ms);
        let stats = GenerationStats { prompt_tokens: prompt_ids.len(), reused_tokens: reused, grammar_compile_ms, ..Default::default() };
        Session {
            opts: opts.clone(),
            sampler,
            constraint,
            tool_calls,
            phase: Phase::Feeding { fed: reused },
            history: prompt_ids.clone(),
            prompt_ids,
            logits: Vec::new(),
            generated: Vec::new(),
            logprobs: Vec::new(),
            text: String::new(),
            emitted: 0,
            decoder: StreamDecoder::new(),
            stats,
            started,
            decode_started: None,
        }
    }

    /// The tokens the cache must hold for this session to go on.
    pub(crate) fn cached(&self) -> &[u32] {
        match self.phase {
            Phase::Feeding { fed } => &self.history[..fed],
            _ => &self.history,
        }
    }

    /// What the sampler needs from the next result.
    pub(crate) fn next_choice(&self) -> NextChoice {
        let c = self.sampler.config();
        let penalty = self.sampler.penalty_ids(&self.history);
        if self.opts.needs_all_logits() {
            return NextChoice { greedy: false, top_k: 0, penalty };
        }
        NextChoice { greedy: c.temperature == 0.0, top_k: c.top_k, penalty }
    }

    /// The prompt is in the cache: prefill's numbers, decode's clock starts.
    /// (Once: a `no_cache` session re-feeds its sequence at every token.)
    pub(crate) fn finish_prefill(&mut self) {
        if self.decode_started.is_some() {
            return;
        }
        self.stats.prefill_ms = ms(self.started);
        self.stats.prefill_tokens_per_sec = per_sec(self.prompt_ids.len() - self.stats.reused_tokens, self.stats.prefill_ms);
        self.decode_started = Some(Instant::now());
    }

    /// Chooses the next token from `ready` (the logits in `self.logits`) and
    /// applies the stop rules (end-of-generation token, stop strings, `max_tokens`).
    pub(crate) fn advance(&mut self, tokenizer: &Tokenizer, ready: Ready) -> Result<Advance> {
        let tok = match ready {
            Ready::Token(t) => t,
            Ready::Candidates(c) => self.sampler.sample_candidates(&c),
            Ready::PenalizedLogits => self.choose_from_logits()?,
            Ready::Logits => {
                self.sampler.apply_penalty(&mut self.logits, &self.history);
                self.choose_from_logits()?
            }
        };
        let ends = tokenizer.is_eog(tok) && !self.opts.ignore_eos;
        if !ends {
            if let Some(c) = &mut self.constraint {
                c.accept(tok)?;
            }
            // Generated tokens only (an end token is not part of the text); the
            // logits are all on the host whenever log-probabilities are asked for.
            if let Some(n) = self.opts.logprobs {
                self.logprobs.push(token_logprob(&self.logits, tok, n, |id| tokenizer.raw_bytes(id).to_vec()));
            }
        }
        Ok(self.accept(tokenizer, tok))
    }

    /// Occurrence penalties, bias and grammar mask, then the draw (logits with
    /// the repetition penalty in `self.logits`; they stay there for the log-probabilities).
    fn choose_from_logits(&mut self) -> Result<u32> {
        apply_occurrence_penalties(&mut self.logits, &self.generated, self.opts.frequency_penalty, self.opts.presence_penalty);
        apply_logit_bias(&mut self.logits, &self.opts.logit_bias);
        if let Some(c) = &mut self.constraint {
            c.mask(&mut self.logits)?;
            self.stats.mask_ms = c.mask_ms;
        }
        Ok(self.sampler.sample_penalized(&self.logits))
    }

    /// Applies the stop rules to a chosen token (see [`advance`](Self::advance)).
    fn accept(&mut self, tokenizer: &Tokenizer, tok: u32) -> Advance {
        if self.generated.is_empty() {
            self.stats.time_to_first_token_ms = ms(self.started);
        }
        if tokenizer.is_eog(tok) && !self.opts.ignore_eos {
            return Advance::Finished(Some(StopReason::Eos));
        }
        self.generated.push(tok);
        self.history.push(tok);
        self.text.push_str(&self.decoder.push(tokenizer, tok));
        if let Some(pos) = find_stop(&self.text, &self.opts.stop) {
            self.text.truncate(pos);
            return Advance::Finished(Some(StopReason::StopString));
        }
        if self.constraint.as_ref().is_some_and(|c| c.is_finished()) {
            // The grammar is complete: nothing may follow, as if the model had ended.
            let rest = self.decoder.finish();
            self.text.push_str(&rest);
            return Advance::Finished(Some(StopReason::Eos));
        }
        if self.generated.len() >= self.opts.max_tokens {
            let rest = self.decoder.finish();
            self.text.push_str(&rest);
            return Advance::Finished(Some(StopReason::Length));
        }
        // Release what can no longer turn into a stop string.
        let safe = safe_prefix(&self.text, &self.opts.stop);
        let piece = (safe > self.emitted).then(|| {
            let p = self.text[self.emitted..safe].to_string();
            self.emitted = safe;
            p
        });
        Advance::Token { token: tok, piece }
    }

    /// Ends the session: the generation with its stats (`kv`: its cache's occupancy).
    pub(crate) fn finish(&mut self, reason: Option<StopReason>, kv: KvStats) -> Generation {
        self.phase = Phase::Done;
        self.stats.generated_tokens = self.generated.len();
        if let Some(t) = self.decode_started {
            self.stats.decode_ms = ms(t);
        }
        self.stats.decode_tokens_per_sec = per_sec(self.generated.len().saturating_sub(1), self.stats.decode_ms);
        let (content, tool_calls) = match self.tool_calls {
            Some(format) => format.parse(&self.text),
            None => (self.text.clone(), Vec::new()),
        };
        let final_piece = self.text[self.emitted.min(self.text.len())..].to_string();
        self.emitted = self.text.len();
        Generation {
            prompt_ids: self.prompt_ids.clone(),
            generated_ids: self.generated.clone(),
            text: self.text.clone(),
            final_piece,
            stop_reason: reason,
            stats: self.stats.clone(),
            kv,
            logprobs: std::mem::take(&mut self.logprobs),
            tool_calls,
            content,
        }
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }
    /// Prompt tokens that still need the forward pass.
    pub fn prompt_tokens_left(&self) -> usize {
        match self.phase {
            Phase::Feeding { fed } => self.prompt_ids.len().saturating_sub(fed),
            _ => 0,
        }
    }
}

pub(crate) fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

pub(crate) fn per_sec(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

/// Byte offset of the first stop string in `text`.
fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// Length of the prefix of `text` that cannot be the start of a stop string.
fn safe_prefix(text: &str, stops: &[String]) -> usize {
    let mut safe = text.len();
    for s in stops {
        // The longest suffix of `text` that is a proper prefix of `s`.
        for (i, _) in s.char_indices().skip(1) {
            if text.ends_with(&s[..i]) {
                safe = safe.min(text.len() - i);
            }
        }
    }
    while !text.is_char_boundary(safe) {
        safe -= 1;
    }
    safe
}
