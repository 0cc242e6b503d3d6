//! The worker protocol, defined once: every value `src/wasm.rs` hands to
//! `www/worker.js` (and the option objects it reads from it) is one of these
//! serde types, camelCase on the wire. Plain serde, compiled on every target.
//!
//! The core types (`engine::GenerationStats`, `batch::BatchStats`, …) keep their
//! own serialization (the CLI prints them as snake_case JSON); the conversions
//! here destructure them field by field, so a field added to a core type does not
//! compile until it is placed (or explicitly left out) here.
//!
//! Natively the types also derive `ts_rs::TS`: the test `declarations_are_current`
//! renders them into `www/protocol.d.ts`, which `www/kvchat.d.ts` imports.
//! After changing a type: `KVCHAT_BLESS=1 cargo test --release --lib protocol`.

use crate::backend::webgpu;
use crate::engine::{self, Engine, Generation, Step};
use crate::engine::batch;
use crate::{kv_cache, model};
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
    /// Bytes of the cache's buffers.
    pub bytes: usize,
}

impl From<&kv_cache::KvStats> for KvStats {
    fn from(s: &kv_cache::KvStats) -> Self {
        let kv_cache::KvStats { capacity, used, sinks, evicted, bytes } = *s;
        KvStats { capacity, used, sinks, evicted, bytes }
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
        }
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
}

impl From<&Generation> for GenerationResult {
    fn from(g: &Generation) -> Self {
        // `final_piece` travels in the reply's `piece`.
        let Generation { prompt_ids, generated_ids, text, final_piece: _, stop_reason, stats, kv } = g;
        GenerationResult {
            text: text.clone(),
            generated_ids: generated_ids.clone(),
            prompt_tokens: prompt_ids.len(),
            stop_reason: stop_reason.map(StopReason::from),
            stats: stats.into(),
            kv: kv.into(),
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
    /// Bytes of the wasm linear memory (grows, never shrinks).
    pub wasm_memory_bytes: f64,
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
}

impl From<&model::profile::Profile> for Profile {
    fn from(p: &model::profile::Profile) -> Self {
        Profile { tokens: p.tokens, ms_per_token: p.per_token_ms().into_iter().map(|(k, v)| (k.to_string(), v)).collect() }
    }
}

// ---------------------------------------------------------------- requests

/// The engine's load options (`new KvEngine(bytes, options)`, `KvEngine.loadGpu`).
/// Numbers are checked by the wasm layer (whole numbers in range).
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS), ts(optional_fields))]
#[serde(rename_all = "camelCase", default)]
pub struct EngineLoadOptions {
    /// KV cache capacity in tokens (default 2048).
    pub kv_window: Option<f64>,
    /// Attention-sink tokens never evicted (default 4).
    pub kv_sinks: Option<f64>,
    /// Store keys and values as f16 (half the cache memory).
    pub kv_f16: Option<bool>,
    /// Derive the window from this many bytes of K/V storage instead of `kvWindow`.
    pub kv_budget_bytes: Option<f64>,
    /// Prompt tokens per prefill step (default 64).
    pub prefill_chunk: Option<f64>,
}

/// Generate options (`KvEngine.start`, and per batch and per batch input).
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS), ts(optional_fields))]
#[serde(rename_all = "camelCase", default)]
pub struct EngineGenerateOptions {
    /// Tokens to generate at most (default 256).
    pub max_tokens: Option<f64>,
    /// 0 is greedy (default 0.7).
    pub temperature: Option<f64>,
    pub top_k: Option<f64>,
    pub top_p: Option<f64>,
    pub min_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
    pub seed: Option<f64>,
    pub stop: Option<Vec<String>>,
    pub ignore_eos: Option<bool>,
    /// Recompute the whole sequence for every token (shows what the KV cache saves).
    pub no_cache: Option<bool>,
}

impl EngineGenerateOptions {
    /// `self`'s values where set, else `base`'s.
    pub fn or(self, base: &EngineGenerateOptions) -> EngineGenerateOptions {
        EngineGenerateOptions {
            max_tokens: self.max_tokens.or(base.max_tokens),
            temperature: self.temperature.or(base.temperature),
            top_k: self.top_k.or(base.top_k),
            top_p: self.top_p.or(base.top_p),
            min_p: self.min_p.or(base.min_p),
            repeat_penalty: self.repeat_penalty.or(base.repeat_penalty),
            seed: self.seed.or(base.seed),
            stop: self.stop.or_else(|| base.stop.clone()),
            ignore_eos: self.ignore_eos.or(base.ignore_eos),
            no_cache: self.no_cache.or(base.no_cache),
        }
    }
}

/// The batch's own options (`KvEngine.batchStart`, next to the generate options).
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS), ts(optional_fields))]
#[serde(rename_all = "camelCase", default)]
pub struct EngineBatchOptions {
    /// Sequences decoded together (default 8).
    pub batch_size: Option<f64>,
    /// Each sequence's KV window in tokens (default min(512, the engine's)).
    pub kv_window: Option<f64>,
    pub kv_sinks: Option<f64>,
    /// Prefill the prefix every input shares once (default true).
    pub share_prefix: Option<bool>,
}

// ---------------------------------------------------------------- declarations

/// `www/protocol.d.ts`, relative to the crate root.
#[cfg(not(target_arch = "wasm32"))]
pub const DECLARATIONS_PATH: &str = "www/protocol.d.ts";

/// Every protocol type's TypeScript declaration, in this order, and the names of
/// the types each refers to (to check that none is missing).
#[cfg(not(target_arch = "wasm32"))]
macro_rules! declare {
    ($cfg:expr, $($t:ty),* $(,)?) => {
        vec![$((
            <$t as TS>::ident($cfg),
            format!("{}export {}", <$t as TS>::docs().unwrap_or_default(), <$t as TS>::decl($cfg)),
            <$t as TS>::dependencies($cfg).into_iter().map(|d| d.ts_name).collect::<Vec<String>>(),
        )),*]
    };
}

/// The contents of `www/protocol.d.ts`.
#[cfg(not(target_arch = "wasm32"))]
pub fn declarations() -> String {
    // serde-wasm-bindgen's JSON-compatible serializer sends u64 as a number.
    let cfg = ts_rs::Config::new().with_large_int("number");
    let decls = declare!(
        &cfg,
        StepReply,
        GenerationResult,
        GenerationStats,
        StopReason,
        KvStats,
        BatchStepReply,
        BatchStepEvent,
        BatchStats,
        ModelInfo,
        LoadTimings,
        EngineStats,
        EngineBackend,
        AdapterInfo,
        GpuStepCosts,
        Profile,
        EngineLoadOptions,
        EngineGenerateOptions,
        EngineBatchOptions,
    );
    let declared: Vec<&str> = decls.iter().map(|(name, _, _)| name.as_str()).collect();
    let mut out = String::from(
        "// The worker protocol: what kvchat's wasm engine (src/wasm.rs) sends to www/worker.js,\n\
         // and the option objects it reads. Generated from src/protocol.rs by\n\
         // `cargo test --release --lib protocol` (KVCHAT_BLESS=1 rewrites it): do not edit.\n",
    );
    for (name, decl, deps) in &decls {
        for d in deps {
            assert!(declared.contains(&d.as_str()), "{name} refers to {d}: add it to the list in protocol::declarations");
        }
        out.push('\n');
        out.push_str(&pretty(decl));
        out.push('\n');
    }
    out
}

/// Lays ts-rs's one-line declarations out one field per line: the fields of each
/// top-level `{ … }` (split at commas outside nested braces, strings and comments),
/// each after its doc comment.
#[cfg(not(target_arch = "wasm32"))]
fn pretty(decl: &str) -> String {
    fn field(out: &mut String, item: &str) {
        let mut item = item.trim();
        if item.is_empty() {
            return;
        }
        if let (true, Some(end)) = (item.starts_with("/**"), item.find("*/")) {
            for line in item[..end + 2].lines().map(str::trim) {
                out.push_str(if line.starts_with('*') { "   " } else { "  " });
                out.push_str(line);
                out.push('\n');
            }
            item = item[end + 2..].trim();
        }
        out.push_str("  ");
        out.push_str(item);
        out.push_str(",\n");
    }
    let (mut out, mut item) = (String::new(), String::new());
    let (mut depth, mut quote, mut comment) = (0usize, None::<char>, false);
    let mut prev = '\0';
    for c in decl.chars() {
        let before = depth;
        if let Some(q) = quote {
            quote = (c != q).then_some(q);
        } else if comment {
            comment = !(prev == '*' && c == '/');
        } else {
            match c {
                '"' | '\'' | '`' => quote = Some(c),
                '*' if prev == '/' => comment = true,
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
        }
        prev = c;
        match (before, depth) {
            (0, 0) => out.push(c),
            (0, _) => out.push_str("{\n"),
            (_, 0) => {
                field(&mut out, &std::mem::take(&mut item));
                out.push('}');
            }
            (1, 1) if c == ',' && quote.is_none() && !comment => field(&mut out, &std::mem::take(&mut item)),
            _ => item.push(c),
        }
    }
    out
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::engine::{EngineOptions, GenerateOptions, Prompt};

    #[test]
    fn declarations_are_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DECLARATIONS_PATH);
        let want = declarations();
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have == want {
            return;
        }
        if std::env::var("KVCHAT_BLESS").as_deref() == Ok("1") {
            std::fs::write(&path, &want).unwrap();
            return;
        }
        let line = have.lines().zip(want.lines()).position(|(a, b)| a != b).unwrap_or(have.lines().count().min(want.lines().count()));
        panic!(
            "{DECLARATIONS_PATH} is not what src/protocol.rs declares (first difference at line {}:\n  file:      {:?}\n  generated: {:?}).\n\
             Rewrite it with `KVCHAT_BLESS=1 cargo test --release --lib protocol` and update www/kvchat.d.ts and the JS that reads what changed.",
            line + 1,
            have.lines().nth(line).unwrap_or("<end of file>"),
            want.lines().nth(line).unwrap_or("<end of file>"),
        );
    }

    /// Every object key in `v`, recursively, with its path.
    fn keys(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    out.push(format!("{path}.{k}"));
                    keys(x, &format!("{path}.{k}"), out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| keys(x, &format!("{path}[]"), out)),
            _ => {}
        }
    }

    fn assert_camel_case(what: &str, v: &impl Serialize) -> serde_json::Value {
        let v = serde_json::to_value(v).unwrap();
        let mut k = Vec::new();
        keys(&v, what, &mut k);
        let snake: Vec<_> = k.iter().filter(|k| k.rsplit('.').next().unwrap().contains('_') && !k.contains(".msPerToken.")).collect();
        assert!(snake.is_empty(), "snake_case keys reach JS: {snake:?}");
        v
    }

    /// The replies of a real (tiny) engine: camelCase everywhere, the shapes JS reads.
    #[test]
    fn replies_are_camel_case() {
        let mut e = Engine::load(&crate::testing::tiny_llama_gguf(7), EngineOptions::default()).unwrap();
        let info = assert_camel_case("info", &ModelInfo::from(&e));
        assert_eq!(info["backend"], "cpu");
        assert!(info["load"]["parseMs"].is_number());

        e.set_profiling(true);
        let opts = GenerateOptions { max_tokens: 4, ignore_eos: true, ..Default::default() };
        let mut s = e.start(Prompt::Raw("Hello"), &opts).unwrap();
        let done = loop {
            let step = e.step(&mut s).unwrap();
            let r = assert_camel_case("step", &StepReply::from(&step));
            assert!(r["piece"].is_string());
            if matches!(step, Step::Done(_)) {
                break r;
            }
            assert!(r.get("done").is_none() && r.get("waiting").is_none(), "{r}");
        };
        assert_eq!(done["done"], true);
        assert_eq!(done["result"]["generatedIds"].as_array().unwrap().len(), 4);
        assert_eq!(done["result"]["stats"]["generatedTokens"], 4);
        assert_eq!(done["result"]["stopReason"], "length");

        let stats = assert_camel_case("stats", &EngineStats::of(&e, 1.0));
        assert_eq!(stats["generatedTokens"], 4);
        assert!(stats["gpuStep"].is_null() && stats["adapter"].is_null());
        let profile = assert_camel_case("profile", &Profile::from(e.profile().unwrap()));
        assert!(profile["msPerToken"]["attention"].is_number());

        let prompts = [(Prompt::Raw("a b"), opts.clone()), (Prompt::Raw("c d"), opts.clone())];
        let mut b = e.start_batch(&prompts, batch::BatchOptions { batch_size: 2, kv: None, share_prefix: true }).unwrap();
        let mut finished = 0;
        while !b.is_done() {
            let events: Vec<BatchStepEvent> = e.step_batch(&mut b).unwrap().iter().map(BatchStepEvent::from).collect();
            let reply = BatchStepReply { events, done: b.is_done(), stats: (&b.stats()).into() };
            let r = assert_camel_case("batchStep", &reply);
            for ev in r["events"].as_array().unwrap() {
                if ev["done"] == true {
                    finished += 1;
                    assert_eq!(ev["result"]["stats"]["generatedTokens"], 4);
                }
            }
        }
        assert_eq!(finished, 2);
    }
}
