//! The worker protocol, defined once: every value `src/wasm.rs` hands to
//! `www/worker.js` (and the option objects it reads from it) is one of these
//! serde types, camelCase on the wire. Plain serde, compiled on every target.
//!
//! The core types (`engine::GenerationStats`, `batch::BatchStats`, …) keep their
//! own serialization (the CLI prints them as snake_case JSON); the conversions
//! here destructure them field by field, so a field added to a core type does not
//! compile until it is placed (or explicitly left out) here.
//!
//! `messages.rs` declares the messages between the page and the worker, which
//! carry these replies.
//!
//! Natively the types also derive `ts_rs::TS`: the test `declarations_are_current`
//! renders them into `www/protocol.d.ts`, which `www/kvchat.d.ts` imports.
//! After changing a type: `KVCHAT_BLESS=1 cargo test --release --lib protocol`.

use crate::backend::webgpu;
use crate::engine::{self, Engine, Generation, Step};
use crate::engine::batch;
use crate::{kv_cache, model, sampler};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;

#[cfg(not(target_arch = "wasm32"))]
use ts_rs::TS;

/// The literal `true` (TypeScript `true`): the discriminant of a reply variant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct True;

impl Serialize for True {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(true)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl TS for True {
    type WithoutGenerics = Self;
    type OptionInnerType = Self;
    fn name(_: &ts_rs::Config) -> String {
        "true".into()
    }
    fn inline(_: &ts_rs::Config) -> String {
        "true".into()
    }
}

// ---------------------------------------------------------------- replies

/// Where the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "lowercase")]
pub enum EngineBackend {
    Cpu,
    Webgpu,
}

impl From<&str> for EngineBackend {
    /// The core names its backends `"cpu"` and `"webgpu"` (`Engine::backend`, `BatchStats::backend`).
    fn from(name: &str) -> Self {
        match name {
            "webgpu" => EngineBackend::Webgpu,
            _ => EngineBackend::Cpu,
        }
    }
}

/// The state of the bounded KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "camelCase")]
pub struct KvStats {
    /// Tokens the cache holds at most (the window).
    pub capacity: usize,
    /// Tokens in the cache now.
    pub used: usize,
    /// Attention-sink tokens, never evicted.
    pub sinks: usize,
    /// Tokens evicted so far.
    pub evicted: usize,
    /// Bytes of the cache's buffers (`globalBytes + localBytes`).
    pub bytes: usize,
    /// Bytes of the layers attending over the whole window.
    pub global_bytes: usize,
    /// Bytes of the sliding-window layers (Gemma 3's local layers: a ring of
    /// exactly their window each, whatever `kvWindow` is); 0 for models without.
    pub local_bytes: usize,
    /// The sliding layers' window in tokens (0 for models without).
    pub local_window: usize,
    /// The compressed tier behind the window (`kvCold`); absent without one.
    #[cfg_attr(not(target_arch = "wasm32"), ts(optional))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold: Option<ColdStats>,
}

/// The cold tier: tokens that left the window, kept compressed and recalled
/// by the queries that need them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "camelCase")]
pub struct ColdStats {
    /// Tokens it holds at most (`kvCold`, whole blocks).
    pub capacity: usize,
    /// Tokens it holds now.
    pub used: usize,
    /// Bytes of its stores (every layer; scales and key summaries included).
    pub bytes: usize,
    /// Tokens evicted from it, gone for good.
    pub evicted: usize,
    /// Tokens recalled into each layer and kv head at the last step (at most `kvRecall`).
    pub recalled_tokens: usize,
    /// Blocks dequantized into recall slots so far, over layers and kv heads.
    pub loads: usize,
}

impl From<&kv_cache::KvStats> for KvStats {
    fn from(s: &kv_cache::KvStats) -> Self {
        let kv_cache::KvStats { capacity, used, sinks, evicted, bytes, global_bytes, local_bytes, local_window, cold } = *s;
        let cold = cold.map(|c| {
            let kv_cache::ColdStats { capacity, used, bytes, evicted, recalled_tokens, loads } = c;
            ColdStats { capacity, used, bytes, evicted, recalled_tokens, loads }
        });
        KvStats { capacity, used, sinks, evicted, bytes, global_bytes, local_bytes, local_window, cold }
    }
}

/// Where loading went (bytes in memory → ready), in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "camelCase")]
pub struct LoadTimings {
    /// GGUF header, metadata and tensor index.
    pub parse_ms: f64,
    /// The tokenizer and the chat template.
    pub tokenizer_ms: f64,
    /// Weights repacked for the kernels (or uploaded to the GPU).
    pub weights_ms: f64,
    /// The KV cache allocated.
    pub cache_ms: f64,
}

impl From<&engine::LoadTimings> for LoadTimings {
    fn from(t: &engine::LoadTimings) -> Self {
        let engine::LoadTimings { parse_ms, tokenizer_ms, weights_ms, cache_ms } = *t;
        LoadTimings { parse_ms, tokenizer_ms, weights_ms, cache_ms }
    }
}

/// The GPU adapter (as wgpu sees it; the worker replaces `name` with the browser's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "camelCase")]
pub struct AdapterInfo {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub max_storage_binding: u64,
    pub max_buffer: u64,
}

impl From<&webgpu::AdapterInfo> for AdapterInfo {
    fn from(a: &webgpu::AdapterInfo) -> Self {
        let webgpu::AdapterInfo { name, backend, device_type, max_storage_binding, max_buffer } = a;
        AdapterInfo {
            name: name.clone(),
            backend: backend.clone(),
            device_type: device_type.clone(),
            max_storage_binding: *max_storage_binding,
            max_buffer: *max_buffer,
        }
    }
}

/// WebGPU: what the last step cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "camelCase")]
pub struct GpuStepCosts {
    /// Compute dispatches in the step's command buffer.
    pub dispatches: usize,
    /// Bytes read back (8 for a greedy token).
    pub readback_bytes: usize,
}

/// Numbers about one generation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "camelCase")]
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

impl From<&engine::GenerationStats> for GenerationStats {
    fn from(s: &engine::GenerationStats) -> Self {
        let engine::GenerationStats {
            prompt_tokens,
            reused_tokens,
            generated_tokens,
            prefill_ms,
            decode_ms,
            prefill_tokens_per_sec,
            decode_tokens_per_sec,
            time_to_first_token_ms,
            grammar_compile_ms,
            mask_ms,
        } = *s;
        GenerationStats {
            prompt_tokens,
            reused_tokens,
            generated_tokens,
            prefill_ms,
            decode_ms,
            prefill_tokens_per_sec,
            decode_tokens_per_sec,
            time_to_first_token_ms,
            grammar_compile_ms,
            mask_ms,
        }
    }
}

/// A token and its log-probability at one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
pub struct TokenAlternative {
    pub id: u32,
    /// Its text (invalid UTF-8 replaced: `bytes` holds the exact bytes).
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f64,
}

impl From<&sampler::logprobs::Alternative> for TokenAlternative {
    fn from(a: &sampler::logprobs::Alternative) -> Self {
        // A token the mask removed has no probability; OpenAI writes -9999 for it.
        let logprob = if a.logprob.is_finite() { a.logprob as f64 } else { -9999.0 };
        TokenAlternative { id: a.token, token: String::from_utf8_lossy(&a.bytes).into_owned(), bytes: a.bytes.clone(), logprob }
    }
}

/// A generated token's log-probability and the best alternatives at its step.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "camelCase")]
pub struct TokenLogprob {
    pub id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f64,
    pub top_logprobs: Vec<TokenAlternative>,
}

impl From<&sampler::logprobs::TokenLogprob> for TokenLogprob {
    fn from(t: &sampler::logprobs::TokenLogprob) -> Self {
        let TokenAlternative { id, token, bytes, logprob } = (&t.chosen).into();
        TokenLogprob { id, token, bytes, logprob, top_logprobs: t.top.iter().map(Into::into).collect() }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-generation token.
    Eos,
    /// One of the stop strings.
    StopString,
    /// `maxTokens` reached.
    Length,
}

impl From<engine::StopReason> for StopReason {
    fn from(r: engine::StopReason) -> Self {
        match r {
            engine::StopReason::Eos => StopReason::Eos,
            engine::StopReason::StopString => StopReason::StopString,
            engine::StopReason::Length => StopReason::Length,
        }
    }
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "camelCase")]
pub struct GenerationResult {
    /// The whole generated text (stop string excluded).
    pub text: String,
    pub generated_ids: Vec<u32>,
    /// How many prompt tokens (a count, not the ids: a long chat's ids would make
    /// this message, and the wasm heap needed to build it, grow every turn).
    pub prompt_tokens: usize,
    /// Null when the generation was cut short.
    pub stop_reason: Option<StopReason>,
    pub stats: GenerationStats,
    /// The cache after the generation.
    pub kv: KvStats,
    /// One entry per generated token (empty unless `logprobs` was asked for).
    pub logprobs: Vec<TokenLogprob>,
    /// With tools: the calls written in the text, and the text outside them (`content`, else the text).
    pub tool_calls: Vec<ToolCallReply>,
    pub content: String,
}

/// One tool call the model made.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
pub struct ToolCallReply {
    pub name: String,
    /// The call's arguments (JSON, usually an object).
    #[cfg_attr(not(target_arch = "wasm32"), ts(type = "unknown"))]
    pub arguments: serde_json::Value,
}

impl From<&Generation> for GenerationResult {
    fn from(g: &Generation) -> Self {
        // `final_piece` travels in the reply's `piece`.
        let Generation { prompt_ids, generated_ids, text, final_piece: _, stop_reason, stats, kv, logprobs, tool_calls, content } = g;
        GenerationResult {
            text: text.clone(),
            generated_ids: generated_ids.clone(),
            prompt_tokens: prompt_ids.len(),
            stop_reason: stop_reason.map(StopReason::from),
            stats: stats.into(),
            kv: kv.into(),
            logprobs: logprobs.iter().map(Into::into).collect(),
            tool_calls: tool_calls.iter().map(|c| ToolCallReply { name: c.name.clone(), arguments: c.arguments.clone() }).collect(),
            content: content.clone(),
        }
    }
}

/// `KvEngine.step()`: one prefill chunk or one token.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(untagged, rename_all_fields = "camelCase")]
pub enum StepReply {
    /// The generation ended; `piece` is text not streamed yet.
    Done { done: True, piece: String, result: GenerationResult },
    /// New text (possibly empty). `waiting`: the GPU has not finished the step
    /// in flight: yield to the event loop until `gpuReady()`, then step again.
    Piece {
        piece: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[cfg_attr(not(target_arch = "wasm32"), ts(optional))]
        waiting: Option<True>,
    },
}

impl From<&Step> for StepReply {
    fn from(s: &Step) -> Self {
        match s {
            Step::Working => StepReply::Piece { piece: String::new(), waiting: None },
            Step::Waiting => StepReply::Piece { piece: String::new(), waiting: Some(True) },
            Step::Piece(p) => StepReply::Piece { piece: p.clone(), waiting: None },
            Step::Done(g) => StepReply::Done { done: True, piece: g.final_piece.clone(), result: g.as_ref().into() },
        }
    }
}

/// Aggregate numbers of a batch (`KvEngine.batchStart()` and every batch step).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
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
    /// Time spent in batched decode steps.
    pub decode_ms: f64,
    pub decode_tokens_per_sec: f64,
    /// KV cache bytes per sequence.
    pub kv_bytes_per_sequence: usize,
    /// Where the batched passes ran (`webgpu`: every sequence's cache on the GPU).
    pub backend: EngineBackend,
}

impl From<&batch::BatchStats> for BatchStats {
    fn from(s: &batch::BatchStats) -> Self {
        let batch::BatchStats {
            sequences,
            finished,
            batch_size,
            prompt_tokens,
            shared_prefix_tokens,
            generated_tokens,
            elapsed_ms,
            tokens_per_sec,
            decode_ms,
            decode_tokens_per_sec,
            kv_bytes_per_sequence,
            backend,
        } = *s;
        BatchStats {
            sequences,
            finished,
            batch_size,
            prompt_tokens,
            shared_prefix_tokens,
            generated_tokens,
            elapsed_ms,
            tokens_per_sec,
            decode_ms,
            decode_tokens_per_sec,
            kv_bytes_per_sequence,
            backend: backend.into(),
        }
    }
}

/// Something one batch step produced for input `index`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(untagged, rename_all_fields = "camelCase")]
pub enum BatchStepEvent {
    /// Input `index` finished; `piece` is text not streamed yet.
    Done { index: usize, done: True, piece: String, result: GenerationResult },
    /// New text of input `index`.
    Piece { index: usize, piece: String },
}

impl From<&batch::BatchEvent> for BatchStepEvent {
    fn from(ev: &batch::BatchEvent) -> Self {
        match ev {
            batch::BatchEvent::Piece { index, piece } => BatchStepEvent::Piece { index: *index, piece: piece.clone() },
            batch::BatchEvent::Done { index, generation: g } => {
                BatchStepEvent::Done { index: *index, done: True, piece: g.final_piece.clone(), result: g.as_ref().into() }
            }
        }
    }
}

/// `KvEngine.batchStep()`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "camelCase")]
pub struct BatchStepReply {
    pub events: Vec<BatchStepEvent>,
    /// Every input has finished.
    pub done: bool,
    pub stats: BatchStats,
}

/// `KvEngine.info()`: the model's shape and the cache's settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_embd: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub weight_bytes: usize,
    /// The model has a chat template; without one (a base model) only raw prompts are accepted.
    pub chat_template: bool,
    pub backend: EngineBackend,
    /// The GPU adapter while the WebGPU backend runs.
    pub adapter: Option<AdapterInfo>,
    pub kv: KvStats,
    pub load: LoadTimings,
}

impl From<&Engine> for ModelInfo {
    fn from(e: &Engine) -> Self {
        let c = e.config();
        ModelInfo {
            n_layer: c.n_layer,
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            n_embd: c.n_embd,
            vocab_size: c.vocab_size,
            context_length: c.context_length,
            weight_bytes: e.weight_bytes(),
            chat_template: e.has_chat_template(),
            backend: e.backend().into(),
            adapter: e.adapter().map(AdapterInfo::from),
            kv: (&e.kv_stats()).into(),
            load: (&e.load_timings()).into(),
        }
    }
}

/// `KvEngine.stats()`: the last generation, the backend and the cache.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "camelCase")]
pub struct EngineStats {
    pub backend: EngineBackend,
    /// The GPU adapter while the WebGPU backend runs.
    pub adapter: Option<AdapterInfo>,
    /// Set once a lost GPU device moved the engine to the CPU (the conversation continued).
    pub fallback: Option<String>,
    /// WebGPU: dispatches and bytes read back by the last step.
    pub gpu_step: Option<GpuStepCosts>,
    /// The last generation's numbers.
    #[serde(flatten)]
    pub last: GenerationStats,
    pub kv: KvStats,
    /// The cold blocks the last step recalled (empty without a cold tier).
    pub recalled: Vec<RecalledBlock>,
    /// Bytes of the wasm linear memory (grows, never shrinks).
    pub wasm_memory_bytes: f64,
}

/// A cold-tier block the last step recalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "camelCase")]
pub struct RecalledBlock {
    /// Its first token's position in the conversation.
    pub start: usize,
    pub tokens: usize,
    /// How many (layer, KV head) pairs recalled it (of the global layers × `nHeadKv`).
    pub heads: usize,
}

impl From<(usize, usize, usize)> for RecalledBlock {
    fn from((start, tokens, heads): (usize, usize, usize)) -> Self {
        RecalledBlock { start, tokens, heads }
    }
}

impl EngineStats {
    pub fn of(e: &Engine, wasm_memory_bytes: f64) -> Self {
        EngineStats {
            backend: e.backend().into(),
            adapter: e.adapter().map(AdapterInfo::from),
            fallback: e.fallback_reason().map(str::to_string),
            gpu_step: e.gpu_step_costs().map(|(dispatches, readback_bytes)| GpuStepCosts { dispatches, readback_bytes }),
            last: e.last_stats().into(),
            kv: (&e.kv_stats()).into(),
            recalled: e.recall_map().into_iter().map(RecalledBlock::from).collect(),
            wasm_memory_bytes,
        }
    }
}

/// `KvEngine.profile()`: where a token's time went since profiling was switched on.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// Tokens the timings cover.
    pub tokens: usize,
    /// Milliseconds per token by operation kind (`matmul_qkv`, `attention`, `rms_norm`, …).
    pub ms_per_token: BTreeMap<String, f64>,
    /// The matmuls' weights streamed once with no arithmetic, timed when
    /// profiling was switched on (CPU backend): a decode token's memory limit.
    pub plain_read: Option<PlainRead>,
}

/// Every weight byte a token's matmuls read, read once.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "camelCase")]
pub struct PlainRead {
    pub bytes: f64,
    pub ms: f64,
}

impl From<&model::profile::Profile> for Profile {
    fn from(p: &model::profile::Profile) -> Self {
        Profile {
            tokens: p.tokens,
            ms_per_token: p.per_token_ms().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            plain_read: p.plain_read.map(|r| PlainRead { bytes: r.bytes as f64, ms: r.secs * 1e3 }),
        }
    }
}

mod requests;
pub use requests::*;

mod messages;
pub use messages::*;

mod memory;
pub use memory::*;

#[cfg(not(target_arch = "wasm32"))]
mod typescript;
#[cfg(not(target_arch = "wasm32"))]
pub use typescript::{declarations, DECLARATIONS_PATH};

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
