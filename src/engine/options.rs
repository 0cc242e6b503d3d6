//! What a caller chooses: options fixed at load, the prompt and options of
//! one request; and where loading went.

use crate::chat_template::tools::Tools;
use crate::chat_template::Message;
use crate::kv_cache::KvCacheConfig;
use crate::sampler::constraint::OutputFormat;
use crate::sampler::SamplerConfig;

/// Options fixed when the model is loaded.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// KV capacity in tokens, sinks and storage type.
    pub kv: KvCacheConfig,
    /// If set, the window is derived from this many bytes of K/V storage instead of `kv.window`.
    pub kv_budget_bytes: Option<usize>,
    /// Largest number of prompt tokens run through the network at once.
    pub prefill_chunk: usize,
    /// Loading fails (before allocating) if weights plus cache would exceed this.
    pub memory_budget: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            kv: KvCacheConfig::default(),
            kv_budget_bytes: None,
            prefill_chunk: 256,
            memory_budget: if cfg!(target_arch = "wasm32") { 3 << 30 } else { 16 << 30 },
        }
    }
}

/// What to generate from.
#[derive(Debug, Clone, Copy)]
pub enum Prompt<'a> {
    /// Raw text: special tokens are parsed, BOS added only if the model asks.
    Raw(&'a str),
    /// Chat messages rendered with the model's template (with the generation prompt).
    Chat(&'a [Message]),
    /// Token ids as they are.
    Ids(&'a [u32]),
}

/// Options of one request.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Generation stops before any of these strings (they are not printed).
    pub stop: Vec<String>,
    /// Keep going through end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// Recompute the whole sequence at every step instead of using the cache.
    pub no_cache: bool,
    /// What the output must match (a JSON schema, any JSON object, a grammar, a regex).
    pub format: Option<OutputFormat>,
    /// Report each chosen token's log-probability and this many alternatives (at most 20).
    pub logprobs: Option<usize>,
    /// Added to the logits before sampling: `(token, bias)`, bias in [-100, 100].
    pub logit_bias: Vec<(u32, f32)>,
    /// OpenAI's penalties on generated tokens, in [-2, 2]: a token's logit drops
    /// by `frequency × its count + presence` once it has been generated.
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// Tools described to the model through its chat template (chat prompts
    /// only); calls are read out of the text, or forced by a grammar.
    pub tools: Option<Tools>,
}

impl GenerateOptions {
    /// The choice needs every logit on the host (a mask, a bias, log-probabilities),
    /// not just the greedy token or the best candidates a GPU can read back.
    pub fn needs_all_logits(&self) -> bool {
        self.format.is_some()
            || self.logprobs.is_some()
            || !self.logit_bias.is_empty()
            || self.frequency_penalty != 0.0
            || self.presence_penalty != 0.0
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampler: SamplerConfig::default(),
            stop: Vec::new(),
            ignore_eos: false,
            no_cache: false,
            format: None,
            logprobs: None,
            logit_bias: Vec::new(),
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            tools: None,
        }
    }
}

/// Where loading went (bytes in memory → ready), in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadTimings {
    /// GGUF header, metadata and tensor index.
    pub parse_ms: f64,
    /// The tokenizer from the GGUF's vocabulary and merges, and the chat template.
    pub tokenizer_ms: f64,
    /// Weights repacked for the kernels (or uploaded to the GPU).
    pub weights_ms: f64,
    /// The KV cache allocated.
    pub cache_ms: f64,
}

