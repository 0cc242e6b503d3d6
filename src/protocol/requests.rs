//! The option objects the worker hands to `src/wasm.rs`: load, generate (with the
//! response format and tools) and batch options. Plain serde, camelCase on the wire;
//! natively they derive `ts_rs::TS` like the replies in `mod.rs`.

use crate::sampler;
use serde::Deserialize;
use std::collections::BTreeMap;

#[cfg(not(target_arch = "wasm32"))]
use ts_rs::TS;

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
    /// Tokens a compressed cold tier keeps after they leave the window, recalled
    /// when a query needs them (default 0: none, evicted tokens are dropped).
    /// The cold tier runs on the CPU backend: with it, `backend: 'webgpu'` loads on the CPU.
    pub kv_cold: Option<f64>,
    /// Bits per cold key and value: 8 (default) or 4.
    pub kv_cold_bits: Option<f64>,
    /// Tokens recalled from the cold tier per step, for each layer and kv head (default 512).
    pub kv_recall: Option<f64>,
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
    /// What the output must match, enforced by a token mask at every step.
    pub response_format: Option<ResponseFormat>,
    /// Report every generated token's log-probability with this many alternatives (0 to 20).
    pub logprobs: Option<f64>,
    /// Added to the logits: token id (a decimal string, as in OpenAI's API) → bias in [-100, 100].
    pub logit_bias: Option<BTreeMap<String, f64>>,
    /// OpenAI's penalties on generated tokens, in [-2, 2] (default 0).
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    /// Tools described through the chat template: `[{ type: 'function', function: { name, description, parameters } }]`.
    #[cfg_attr(not(target_arch = "wasm32"), ts(type = "unknown[]"))]
    pub tools: Option<Vec<serde_json::Value>>,
    /// 'auto' (default with tools), 'none', 'required', or `{ function: name }`.
    pub tool_choice: Option<ToolChoiceOption>,
}

/// `toolChoice`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(untagged)]
pub enum ToolChoiceOption {
    Mode(ToolMode),
    Function { function: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "lowercase")]
pub enum ToolMode {
    None,
    Auto,
    Required,
}

impl ToolChoiceOption {
    pub fn to_engine(&self) -> crate::chat_template::tools::ToolChoice {
        use crate::chat_template::tools::ToolChoice;
        match self {
            ToolChoiceOption::Mode(ToolMode::None) => ToolChoice::None,
            ToolChoiceOption::Mode(ToolMode::Auto) => ToolChoice::Auto,
            ToolChoiceOption::Mode(ToolMode::Required) => ToolChoice::Required,
            ToolChoiceOption::Function { function } => ToolChoice::Function(function.clone()),
        }
    }
}

/// `responseFormat`: what a generation's text must match.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Free text (no constraint).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against `schema` (a JSON schema).
    JsonSchema {
        #[cfg_attr(not(target_arch = "wasm32"), ts(type = "unknown"))]
        schema: serde_json::Value,
    },
    /// A grammar in llguidance's Lark dialect (`start: ...`).
    Grammar { grammar: String },
    /// A regular expression the whole text matches.
    Regex { regex: String },
}

impl ResponseFormat {
    /// The engine's format (none for free text).
    pub fn to_engine(&self) -> Option<sampler::constraint::OutputFormat> {
        use sampler::constraint::OutputFormat;
        match self {
            ResponseFormat::Text => None,
            ResponseFormat::JsonObject => Some(OutputFormat::JsonObject),
            ResponseFormat::JsonSchema { schema } => Some(OutputFormat::JsonSchema(schema.clone())),
            ResponseFormat::Grammar { grammar } => Some(OutputFormat::Lark(grammar.clone())),
            ResponseFormat::Regex { regex } => Some(OutputFormat::Regex(regex.clone())),
        }
    }
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
            response_format: self.response_format.or_else(|| base.response_format.clone()),
            logprobs: self.logprobs.or(base.logprobs),
            logit_bias: self.logit_bias.or_else(|| base.logit_bias.clone()),
            frequency_penalty: self.frequency_penalty.or(base.frequency_penalty),
            presence_penalty: self.presence_penalty.or(base.presence_penalty),
            tools: self.tools.or_else(|| base.tools.clone()),
            tool_choice: self.tool_choice.or_else(|| base.tool_choice.clone()),
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
