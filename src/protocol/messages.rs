//! The messages between the page and the engine worker: what `www/kvchat.js`
//! posts to `www/worker.js` ([`WorkerRequest`]) and what the worker posts back
//! ([`WorkerMessage`]), as `{ type, id, … }` objects.
//!
//! Both sides are plain JS and build these objects themselves: these types are
//! their one declaration (rendered into `www/protocol.d.ts` with the engine's
//! replies, which the worker forwards inside them). `tests/e2e/messages.test.mjs`
//! reads worker.js and kvchat.js as text and checks every `type` and field they
//! post or handle against the rendered unions, so neither side can drift.

use super::*;

/// Where a model's bytes are in `progress` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "lowercase")]
pub enum LoadPhase {
    /// From the network (or a Blob).
    Download,
    /// From the browser's Cache API.
    Cache,
    /// The engine is being built from the bytes.
    Init,
}

/// The backend the page asks for (`KvChat.load({ backend })`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// WebGPU when an adapter with the needed limits exists, else the CPU.
    Auto,
    Cpu,
    /// WebGPU or an error (kind `gpu`).
    Webgpu,
}

/// The wasm build the page asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "lowercase")]
pub enum SimdChoice {
    /// Relaxed SIMD where the browser validates it, else simd128.
    Auto,
    Relaxed,
    Baseline,
}

/// The wasm build that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "kebab-case")]
pub enum WasmBuild {
    RelaxedSimd,
    Simd128,
}

/// The `load` request's options: the engine's own, and what the worker decides.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS), ts(optional_fields))]
#[serde(rename_all = "camelCase", default)]
pub struct WorkerLoadOptions {
    /// Default `auto`.
    pub backend: Option<BackendChoice>,
    /// Keep a downloaded model in the Cache API (default true).
    pub cache: Option<bool>,
    /// Default `auto`.
    pub simd: Option<SimdChoice>,
    /// Threads for the matmuls (the threaded build; default up to 4 on a cross-origin-isolated page, else 1).
    pub threads: Option<f64>,
    /// Passed to the engine as they are.
    #[serde(flatten)]
    pub engine: EngineLoadOptions,
}

/// One chat message of a prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
pub struct ChatMessage {
    /// system, user, assistant, or tool (a tool's result, where the template takes tools).
    pub role: String,
    pub content: String,
    /// An assistant's earlier calls: `[{ type: 'function', function: { name, arguments } }]` (arguments an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(not(target_arch = "wasm32"), ts(optional, type = "unknown[]"))]
    pub tool_calls: Option<Vec<serde_json::Value>>,
}

/// A prompt: raw text, or chat messages (formatted by the model's template).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(untagged)]
pub enum PromptInput {
    Raw(String),
    Chat(Vec<ChatMessage>),
}

/// One input of a batch: a prompt, or a prompt with its own generate options.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(untagged)]
pub enum BatchInput {
    Prompt(PromptInput),
    WithOptions {
        input: PromptInput,
        #[serde(flatten)]
        options: EngineGenerateOptions,
    },
}

/// The `generateBatch` request's options: generate options for every input, and the batch's own.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(default)]
pub struct WorkerBatchOptions {
    #[serde(flatten)]
    pub generate: EngineGenerateOptions,
    #[serde(flatten)]
    pub batch: EngineBatchOptions,
}

/// What the page posts to the worker (`KvChat`'s `#send`): every request has an
/// `id`, which the worker's messages about it repeat.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum WorkerRequest {
    /// Fetch (or read from the cache) and load a model: `progress` messages, then a `result` with a [`LoadReply`].
    Load {
        id: f64,
        /// An absolute URL, a Blob or an ArrayBuffer (transferred).
        #[cfg_attr(not(target_arch = "wasm32"), ts(type = "string | Blob | ArrayBuffer"))]
        model: serde_json::Value,
        options: WorkerLoadOptions,
    },
    /// Generate: `piece` messages, then `done` (or `aborted`, or `error`).
    Generate { id: f64, input: PromptInput, options: EngineGenerateOptions },
    /// Generate for many inputs: `batch` messages, then `done` (or `aborted`, or `error`).
    GenerateBatch { id: f64, inputs: Vec<BatchInput>, options: WorkerBatchOptions },
    /// Stop the generation of request `target` within one token.
    Abort { id: f64, target: f64 },
    Tokenize { id: f64, text: String },
    Detokenize { id: f64, ids: Vec<u32> },
    Stats { id: f64 },
    /// The cache's history piece by piece, with where each token lives (result: a [`MemoryView`]).
    Memory { id: f64 },
    /// Destroy the GPU device (a test of the fallback to the CPU).
    LoseGpuDevice { id: f64 },
    /// Make the engine's wasm trap (a test of crash recovery: `crash`, then a new load).
    SimulateCrash { id: f64 },
    /// Make the next matmul helper thread trap (threaded build only; a test of the stuck-helper
    /// way out: the engine gives up on it after 30 s and reports `crash`).
    SimulateHelperCrash { id: f64 },
    /// Write the whole KV cache to the origin-private file system as `name` (result: its bytes).
    SaveSession { id: f64, name: String },
    /// Replace the KV cache with the one saved as `name` (same model and cache options).
    RestoreSession { id: f64, name: String },
    /// Delete the session saved as `name` (result: whether there was one).
    DeleteSession { id: f64, name: String },
    /// Switch profiling on or off (`on` absent: leave it), and read it.
    Profile {
        id: f64,
        #[serde(default)]
        #[cfg_attr(not(target_arch = "wasm32"), ts(optional))]
        on: Option<bool>,
    },
    /// Empty the cache and the history.
    Reset { id: f64 },
    /// Free the engine.
    Dispose { id: f64 },
}

/// A failure, as the worker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
pub struct WorkerError {
    pub name: String,
    pub message: String,
    /// `gguf`, `network`, `memory`, `unsupported`, `invalid-option`, `invalid-prompt`, `busy`, `gpu`, `crash`, …
    pub kind: String,
}

/// The engine's numbers as the worker has them: [`EngineStats`] once a model is loaded.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(untagged, rename_all_fields = "camelCase")]
pub enum WorkerEngineStats {
    Loaded(EngineStats),
    /// No model loaded.
    Empty { backend: EngineBackend, wasm_memory_bytes: f64 },
}

/// `stats`, and every `done` message: the engine's numbers plus what the worker knows.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "camelCase")]
pub struct WorkerStats {
    #[serde(flatten)]
    pub engine: WorkerEngineStats,
    /// The wasm build that runs (null before the first `load`).
    pub simd: Option<WasmBuild>,
    /// Threads the matmuls use.
    pub threads: f64,
    /// Why `auto` did not use WebGPU (or why `webgpu` failed).
    pub gpu_error: Option<String>,
}

/// The `result` of a `load` request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(rename_all = "camelCase")]
pub struct LoadReply {
    pub info: ModelInfo,
    /// The model came from the Cache API.
    pub from_cache: bool,
    pub init_ms: f64,
}

/// The `value` of a `result` message, by request: `load` a [`LoadReply`],
/// `tokenize` token ids, `detokenize` text, `stats` [`WorkerStats`], `profile`
/// a [`Profile`] (null without a model), `memory` a [`MemoryView`], the others `true`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(untagged)]
pub enum ResultValue {
    Load(LoadReply),
    Tokens(Vec<u32>),
    Text(String),
    Stats(WorkerStats),
    Profile(Option<Profile>),
    Memory(MemoryView),
    Ok(True),
}

/// The `result` of a `done` message: a generation's, or a batch's aggregate numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(untagged)]
pub enum DoneResult {
    /// `generate`.
    Generation(GenerationResult),
    /// `generateBatch`.
    Batch(BatchStats),
}

/// What the worker posts to the page. `id` is the request's.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(TS))]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum WorkerMessage {
    /// The worker runs (sent once, unrequested).
    Hello,
    /// `load`: bytes of the model read so far (`total` 0: unknown).
    Progress { id: f64, phase: LoadPhase, loaded: f64, total: f64 },
    /// `load`: something went wrong that does not stop the load.
    Warning { id: f64, message: String },
    /// `generate`: new text.
    Piece { id: f64, piece: String },
    /// `generateBatch`: what one step produced.
    Batch { id: f64, events: Vec<BatchStepEvent>, stats: BatchStats },
    /// A generation ended.
    Done { id: f64, result: DoneResult, stats: WorkerStats },
    /// A generation stopped on `abort` (or `reset`, `dispose`).
    Aborted { id: f64 },
    /// The answer to any other request.
    Result { id: f64, value: ResultValue },
    /// The request failed.
    Error { id: f64, error: WorkerError },
    /// The wasm instance trapped and is unusable: load again (follows the `error`).
    Crash { error: WorkerError },
}
