// The worker protocol: what kvchat's wasm engine (src/wasm.rs) sends to www/worker.js,
// and the option objects it reads; then the messages between the page (www/kvchat.js)
// and the worker (www/worker.js), WorkerRequest and WorkerMessage.
// Generated from src/protocol/ by
// `cargo test --release --lib protocol` (KVCHAT_BLESS=1 rewrites it): do not edit.

/**
 * `KvEngine.step()`: one prefill chunk or one token.
 */
export type StepReply = {
  done: true,
  piece: string,
  result: GenerationResult,
} | {
  piece: string,
  waiting?: true,
};

/**
 * The result of one generation.
 */
export type GenerationResult = {
  /**
   * The whole generated text (stop string excluded).
   */
  text: string,
  generatedIds: Array<number>,
  /**
   * How many prompt tokens (a count, not the ids: a long chat's ids would make
   * this message, and the wasm heap needed to build it, grow every turn).
   */
  promptTokens: number,
  /**
   * Null when the generation was cut short.
   */
  stopReason: StopReason | null,
  stats: GenerationStats,
  /**
   * The cache after the generation.
   */
  kv: KvStats,
  /**
   * One entry per generated token (empty unless `logprobs` was asked for).
   */
  logprobs: Array<TokenLogprob>,
  /**
   * With tools: the calls written in the text, and the text outside them (`content`, else the text).
   */
  toolCalls: Array<ToolCallReply>,
  content: string,
};

/**
 * Numbers about one generation.
 */
export type GenerationStats = {
  promptTokens: number,
  /**
   * Prompt tokens found in the cache (not recomputed).
   */
  reusedTokens: number,
  generatedTokens: number,
  prefillMs: number,
  decodeMs: number,
  prefillTokensPerSec: number,
  decodeTokensPerSec: number,
  timeToFirstTokenMs: number,
  /**
   * Compiling the response format's grammar (0 without one).
   */
  grammarCompileMs: number,
  /**
   * Computing its token masks, all steps together.
   */
  maskMs: number,
};

/**
 * A generated token's log-probability and the best alternatives at its step.
 */
export type TokenLogprob = {
  id: number,
  token: string,
  bytes: Array<number>,
  logprob: number,
  topLogprobs: Array<TokenAlternative>,
};

/**
 * A token and its log-probability at one step.
 */
export type TokenAlternative = {
  id: number,
  /**
   * Its text (invalid UTF-8 replaced: `bytes` holds the exact bytes).
   */
  token: string,
  bytes: Array<number>,
  logprob: number,
};

/**
 * One tool call the model made.
 */
export type ToolCallReply = {
  name: string,
  /**
   * The call's arguments (JSON, usually an object).
   */
  arguments: unknown,
};

/**
 * Why a generation ended.
 */
export type StopReason = "eos" | "stop_string" | "length";

/**
 * The state of the bounded KV cache.
 */
export type KvStats = {
  /**
   * Tokens the cache holds at most (the window).
   */
  capacity: number,
  /**
   * Tokens in the cache now.
   */
  used: number,
  /**
   * Attention-sink tokens, never evicted.
   */
  sinks: number,
  /**
   * Tokens evicted so far.
   */
  evicted: number,
  /**
   * Bytes of the cache's buffers (`globalBytes + localBytes`).
   */
  bytes: number,
  /**
   * Bytes of the layers attending over the whole window.
   */
  globalBytes: number,
  /**
   * Bytes of the sliding-window layers (Gemma 3's local layers: a ring of
   * exactly their window each, whatever `kvWindow` is); 0 for models without.
   */
  localBytes: number,
  /**
   * The sliding layers' window in tokens (0 for models without).
   */
  localWindow: number,
  /**
   * The compressed tier behind the window (`kvCold`); absent without one.
   */
  cold?: ColdStats,
};

/**
 * The cold tier: tokens that left the window, kept compressed and recalled
 * by the queries that need them.
 */
export type ColdStats = {
  /**
   * Tokens it holds at most (`kvCold`, whole blocks).
   */
  capacity: number,
  /**
   * Tokens it holds now.
   */
  used: number,
  /**
   * Bytes of its stores (every layer; scales and key summaries included).
   */
  bytes: number,
  /**
   * Tokens evicted from it, gone for good.
   */
  evicted: number,
  /**
   * Tokens recalled into each layer and kv head at the last step (at most `kvRecall`).
   */
  recalledTokens: number,
  /**
   * Blocks dequantized into recall slots so far, over layers and kv heads.
   */
  loads: number,
};

/**
 * A cold-tier block the last step recalled.
 */
export type RecalledBlock = {
  /**
   * Its first token's position in the conversation.
   */
  start: number,
  tokens: number,
  /**
   * How many (layer, KV head) pairs recalled it (of the global layers × `nHeadKv`).
   */
  heads: number,
};

/**
 * `KvEngine.batchStep()`.
 */
export type BatchStepReply = {
  events: Array<BatchStepEvent>,
  /**
   * Every input has finished.
   */
  done: boolean,
  stats: BatchStats,
};

/**
 * Something one batch step produced for input `index`.
 */
export type BatchStepEvent = {
  index: number,
  done: true,
  piece: string,
  result: GenerationResult,
} | {
  index: number,
  piece: string,
};

/**
 * Aggregate numbers of a batch (`KvEngine.batchStart()` and every batch step).
 */
export type BatchStats = {
  sequences: number,
  finished: number,
  batchSize: number,
  promptTokens: number,
  /**
   * Prompt tokens copied from the shared prefix instead of computed.
   */
  sharedPrefixTokens: number,
  generatedTokens: number,
  elapsedMs: number,
  /**
   * Generated tokens per second over the whole batch (prefill included).
   */
  tokensPerSec: number,
  /**
   * Time spent in batched decode steps.
   */
  decodeMs: number,
  decodeTokensPerSec: number,
  /**
   * KV cache bytes per sequence.
   */
  kvBytesPerSequence: number,
  /**
   * Where the batched passes ran (`webgpu`: every sequence's cache on the GPU).
   */
  backend: EngineBackend,
};

/**
 * `KvEngine.info()`: the model's shape and the cache's settings.
 */
export type ModelInfo = {
  nLayer: number,
  nHead: number,
  nHeadKv: number,
  nEmbd: number,
  vocabSize: number,
  contextLength: number,
  weightBytes: number,
  /**
   * The model has a chat template; without one (a base model) only raw prompts are accepted.
   */
  chatTemplate: boolean,
  backend: EngineBackend,
  /**
   * The GPU adapter while the WebGPU backend runs.
   */
  adapter: AdapterInfo | null,
  kv: KvStats,
  load: LoadTimings,
};

/**
 * Where loading went (bytes in memory → ready), in milliseconds.
 */
export type LoadTimings = {
  /**
   * GGUF header, metadata and tensor index.
   */
  parseMs: number,
  /**
   * The tokenizer and the chat template.
   */
  tokenizerMs: number,
  /**
   * Weights repacked for the kernels (or uploaded to the GPU).
   */
  weightsMs: number,
  /**
   * The KV cache allocated.
   */
  cacheMs: number,
};

/**
 * `KvEngine.stats()`: the last generation, the backend and the cache.
 */
export type EngineStats = {
  backend: EngineBackend,
  /**
   * The GPU adapter while the WebGPU backend runs.
   */
  adapter: AdapterInfo | null,
  /**
   * Set once a lost GPU device moved the engine to the CPU (the conversation continued).
   */
  fallback: string | null,
  /**
   * WebGPU: dispatches and bytes read back by the last step.
   */
  gpuStep: GpuStepCosts | null,
  kv: KvStats,
  /**
   * The cold blocks the last step recalled (empty without a cold tier).
   */
  recalled: Array<RecalledBlock>,
  /**
   * Bytes of the wasm linear memory (grows, never shrinks).
   */
  wasmMemoryBytes: number,
  promptTokens: number,
  /**
   * Prompt tokens found in the cache (not recomputed).
   */
  reusedTokens: number,
  generatedTokens: number,
  prefillMs: number,
  decodeMs: number,
  prefillTokensPerSec: number,
  decodeTokensPerSec: number,
  timeToFirstTokenMs: number,
  /**
   * Compiling the response format's grammar (0 without one).
   */
  grammarCompileMs: number,
  /**
   * Computing its token masks, all steps together.
   */
  maskMs: number,
};

/**
 * Where the engine runs.
 */
export type EngineBackend = "cpu" | "webgpu";

/**
 * The GPU adapter (as wgpu sees it; the worker replaces `name` with the browser's).
 */
export type AdapterInfo = {
  name: string,
  backend: string,
  deviceType: string,
  maxStorageBinding: number,
  maxBuffer: number,
};

/**
 * WebGPU: what the last step cost.
 */
export type GpuStepCosts = {
  /**
   * Compute dispatches in the step's command buffer.
   */
  dispatches: number,
  /**
   * Bytes read back (8 for a greedy token).
   */
  readbackBytes: number,
};

/**
 * `KvEngine.profile()`: where a token's time went since profiling was switched on.
 */
export type Profile = {
  /**
   * Tokens the timings cover.
   */
  tokens: number,
  /**
   * Milliseconds per token by operation kind (`matmul_qkv`, `attention`, `rms_norm`, …).
   */
  msPerToken: { [key in string]: number },
  /**
   * The matmuls' weights streamed once with no arithmetic, timed when
   * profiling was switched on (CPU backend): a decode token's memory limit.
   */
  plainRead: PlainRead | null,
};

/**
 * Every weight byte a token's matmuls read, read once.
 */
export type PlainRead = {
  bytes: number,
  ms: number,
};

/**
 * The cache's history: `pieces[i]` is the text token `i` adds (a control token's
 * own text; empty while a character is split across tokens), `tiers[i]` where its
 * keys and values live; the cold blocks the last step recalled.
 */
export type MemoryView = {
  pieces: Array<string>,
  tiers: Array<TokenTier>,
  recalled: Array<RecalledBlock>,
};

/**
 * Where a token's keys and values live.
 */
export type TokenTier = "sink" | "dropped" | "cold" | "pending" | "window";

/**
 * The engine's load options (`new KvEngine(bytes, options)`, `KvEngine.loadGpu`).
 * Numbers are checked by the wasm layer (whole numbers in range).
 */
export type EngineLoadOptions = {
  /**
   * KV cache capacity in tokens (default 2048).
   */
  kvWindow?: number,
  /**
   * Attention-sink tokens never evicted (default 4).
   */
  kvSinks?: number,
  /**
   * Store keys and values as f16 (half the cache memory).
   */
  kvF16?: boolean,
  /**
   * Tokens a compressed cold tier keeps after they leave the window, recalled
   * when a query needs them (default 0: none, evicted tokens are dropped).
   * The cold tier runs on the CPU backend: with it, `backend: 'webgpu'` loads on the CPU.
   */
  kvCold?: number,
  /**
   * Bits per cold key and value: 8 (default) or 4.
   */
  kvColdBits?: number,
  /**
   * Tokens recalled from the cold tier per step, for each layer and kv head (default 512).
   */
  kvRecall?: number,
  /**
   * Derive the window from this many bytes of K/V storage instead of `kvWindow`.
   */
  kvBudgetBytes?: number,
  /**
   * Prompt tokens per prefill step (default 64).
   */
  prefillChunk?: number,
};

/**
 * Generate options (`KvEngine.start`, and per batch and per batch input).
 */
export type EngineGenerateOptions = {
  /**
   * Tokens to generate at most (default 256).
   */
  maxTokens?: number,
  /**
   * 0 is greedy (default 0.7).
   */
  temperature?: number,
  topK?: number,
  topP?: number,
  minP?: number,
  repeatPenalty?: number,
  seed?: number,
  stop?: Array<string>,
  ignoreEos?: boolean,
  /**
   * Recompute the whole sequence for every token (shows what the KV cache saves).
   */
  noCache?: boolean,
  /**
   * What the output must match, enforced by a token mask at every step.
   */
  responseFormat?: ResponseFormat,
  /**
   * Report every generated token's log-probability with this many alternatives (0 to 20).
   */
  logprobs?: number,
  /**
   * Added to the logits: token id (a decimal string, as in OpenAI's API) → bias in [-100, 100].
   */
  logitBias?: { [key in string]: number },
  /**
   * OpenAI's penalties on generated tokens, in [-2, 2] (default 0).
   */
  frequencyPenalty?: number,
  presencePenalty?: number,
  /**
   * Tools described through the chat template: `[{ type: 'function', function: { name, description, parameters } }]`.
   */
  tools: unknown[],
  /**
   * 'auto' (default with tools), 'none', 'required', or `{ function: name }`.
   */
  toolChoice?: ToolChoiceOption,
};

/**
 * `responseFormat`: what a generation's text must match.
 */
export type ResponseFormat = {
  "type": "text",
} | {
  "type": "json_object",
} | {
  "type": "json_schema",
  schema: unknown,
} | {
  "type": "grammar",
  grammar: string,
} | {
  "type": "regex",
  regex: string,
};

/**
 * `toolChoice`.
 */
export type ToolChoiceOption = ToolMode | {
  function: string,
};

export type ToolMode = "none" | "auto" | "required";

/**
 * The batch's own options (`KvEngine.batchStart`, next to the generate options).
 */
export type EngineBatchOptions = {
  /**
   * Sequences decoded together (default 8).
   */
  batchSize?: number,
  /**
   * Each sequence's KV window in tokens (default min(512, the engine's)).
   */
  kvWindow?: number,
  kvSinks?: number,
  /**
   * Prefill the prefix every input shares once (default true).
   */
  sharePrefix?: boolean,
};

/**
 * What the page posts to the worker (`KvChat`'s `#send`): every request has an
 * `id`, which the worker's messages about it repeat.
 */
export type WorkerRequest = {
  "type": "load",
  id: number,
  /**
   * An absolute URL, a Blob or an ArrayBuffer (transferred).
   */
  model: string | Blob | ArrayBuffer,
  options: WorkerLoadOptions,
} | {
  "type": "generate",
  id: number,
  input: PromptInput,
  options: EngineGenerateOptions,
} | {
  "type": "generateBatch",
  id: number,
  inputs: Array<BatchInput>,
  options: WorkerBatchOptions,
} | {
  "type": "abort",
  id: number,
  target: number,
} | {
  "type": "tokenize",
  id: number,
  text: string,
} | {
  "type": "detokenize",
  id: number,
  ids: Array<number>,
} | {
  "type": "stats",
  id: number,
} | {
  "type": "memory",
  id: number,
} | {
  "type": "loseGpuDevice",
  id: number,
} | {
  "type": "simulateCrash",
  id: number,
} | {
  "type": "simulateHelperCrash",
  id: number,
} | {
  "type": "saveSession",
  id: number,
  name: string,
} | {
  "type": "restoreSession",
  id: number,
  name: string,
} | {
  "type": "deleteSession",
  id: number,
  name: string,
} | {
  "type": "profile",
  id: number,
  on?: boolean,
} | {
  "type": "reset",
  id: number,
} | {
  "type": "dispose",
  id: number,
};

/**
 * The `load` request's options: the engine's own, and what the worker decides.
 */
export type WorkerLoadOptions = {
  /**
   * Default `auto`.
   */
  backend?: BackendChoice,
  /**
   * Keep a downloaded model in the Cache API (default true).
   */
  cache?: boolean,
  /**
   * Default `auto`.
   */
  simd?: SimdChoice,
  /**
   * Threads for the matmuls (the threaded build; default up to 4 on a cross-origin-isolated page, else 1).
   */
  threads?: number,
  /**
   * KV cache capacity in tokens (default 2048).
   */
  kvWindow?: number,
  /**
   * Attention-sink tokens never evicted (default 4).
   */
  kvSinks?: number,
  /**
   * Store keys and values as f16 (half the cache memory).
   */
  kvF16?: boolean,
  /**
   * Tokens a compressed cold tier keeps after they leave the window, recalled
   * when a query needs them (default 0: none, evicted tokens are dropped).
   * The cold tier runs on the CPU backend: with it, `backend: 'webgpu'` loads on the CPU.
   */
  kvCold?: number,
  /**
   * Bits per cold key and value: 8 (default) or 4.
   */
  kvColdBits?: number,
  /**
   * Tokens recalled from the cold tier per step, for each layer and kv head (default 512).
   */
  kvRecall?: number,
  /**
   * Derive the window from this many bytes of K/V storage instead of `kvWindow`.
   */
  kvBudgetBytes?: number,
  /**
   * Prompt tokens per prefill step (default 64).
   */
  prefillChunk?: number,
};

/**
 * The backend the page asks for (`KvChat.load({ backend })`).
 */
export type BackendChoice = "auto" | "cpu" | "webgpu";

/**
 * The wasm build the page asks for.
 */
export type SimdChoice = "auto" | "relaxed" | "baseline";

/**
 * A prompt: raw text, or chat messages (formatted by the model's template).
 */
export type PromptInput = string | Array<ChatMessage>;

/**
 * One chat message of a prompt.
 */
export type ChatMessage = {
  /**
   * system, user, assistant, or tool (a tool's result, where the template takes tools).
   */
  role: string,
  content: string,
  /**
   * An assistant's earlier calls: `[{ type: 'function', function: { name, arguments } }]` (arguments an object).
   */
  tool_calls?: unknown[],
};

/**
 * One input of a batch: a prompt, or a prompt with its own generate options.
 */
export type BatchInput = PromptInput | {
  input: PromptInput,
  /**
   * Tokens to generate at most (default 256).
   */
  maxTokens?: number,
  /**
   * 0 is greedy (default 0.7).
   */
  temperature?: number,
  topK?: number,
  topP?: number,
  minP?: number,
  repeatPenalty?: number,
  seed?: number,
  stop?: Array<string>,
  ignoreEos?: boolean,
  /**
   * Recompute the whole sequence for every token (shows what the KV cache saves).
   */
  noCache?: boolean,
  /**
   * What the output must match, enforced by a token mask at every step.
   */
  responseFormat?: ResponseFormat,
  /**
   * Report every generated token's log-probability with this many alternatives (0 to 20).
   */
  logprobs?: number,
  /**
   * Added to the logits: token id (a decimal string, as in OpenAI's API) → bias in [-100, 100].
   */
  logitBias?: { [key in string]: number },
  /**
   * OpenAI's penalties on generated tokens, in [-2, 2] (default 0).
   */
  frequencyPenalty?: number,
  presencePenalty?: number,
  /**
   * Tools described through the chat template: `[{ type: 'function', function: { name, description, parameters } }]`.
   */
  tools: unknown[],
  /**
   * 'auto' (default with tools), 'none', 'required', or `{ function: name }`.
   */
  toolChoice?: ToolChoiceOption,
};

/**
 * The `generateBatch` request's options: generate options for every input, and the batch's own.
 */
export type WorkerBatchOptions = {
  /**
   * Tokens to generate at most (default 256).
   */
  maxTokens?: number,
  /**
   * 0 is greedy (default 0.7).
   */
  temperature?: number,
  topK?: number,
  topP?: number,
  minP?: number,
  repeatPenalty?: number,
  seed?: number,
  stop?: Array<string>,
  ignoreEos?: boolean,
  /**
   * Recompute the whole sequence for every token (shows what the KV cache saves).
   */
  noCache?: boolean,
  /**
   * What the output must match, enforced by a token mask at every step.
   */
  responseFormat?: ResponseFormat,
  /**
   * Report every generated token's log-probability with this many alternatives (0 to 20).
   */
  logprobs?: number,
  /**
   * Added to the logits: token id (a decimal string, as in OpenAI's API) → bias in [-100, 100].
   */
  logitBias?: { [key in string]: number },
  /**
   * OpenAI's penalties on generated tokens, in [-2, 2] (default 0).
   */
  frequencyPenalty?: number,
  presencePenalty?: number,
  /**
   * Tools described through the chat template: `[{ type: 'function', function: { name, description, parameters } }]`.
   */
  tools: unknown[],
  /**
   * 'auto' (default with tools), 'none', 'required', or `{ function: name }`.
   */
  toolChoice?: ToolChoiceOption,
  /**
   * Sequences decoded together (default 8).
   */
  batchSize?: number,
  /**
   * Each sequence's KV window in tokens (default min(512, the engine's)).
   */
  kvWindow?: number,
  kvSinks?: number,
  /**
   * Prefill the prefix every input shares once (default true).
   */
  sharePrefix?: boolean,
};

/**
 * What the worker posts to the page. `id` is the request's.
 */
export type WorkerMessage = {
  "type": "hello",
} | {
  "type": "progress",
  id: number,
  phase: LoadPhase,
  loaded: number,
  total: number,
} | {
  "type": "warning",
  id: number,
  message: string,
} | {
  "type": "piece",
  id: number,
  piece: string,
} | {
  "type": "batch",
  id: number,
  events: Array<BatchStepEvent>,
  stats: BatchStats,
} | {
  "type": "done",
  id: number,
  result: DoneResult,
  stats: WorkerStats,
} | {
  "type": "aborted",
  id: number,
} | {
  "type": "result",
  id: number,
  value: ResultValue,
} | {
  "type": "error",
  id: number,
  error: WorkerError,
} | {
  "type": "crash",
  error: WorkerError,
};

/**
 * Where a model's bytes are in `progress` messages.
 */
export type LoadPhase = "download" | "cache" | "init";

/**
 * The `result` of a `done` message: a generation's, or a batch's aggregate numbers.
 */
export type DoneResult = GenerationResult | BatchStats;

/**
 * `stats`, and every `done` message: the engine's numbers plus what the worker knows.
 */
export type WorkerStats = {
  /**
   * The wasm build that runs (null before the first `load`).
   */
  simd: WasmBuild | null,
  /**
   * Threads the matmuls use.
   */
  threads: number,
  /**
   * Why `auto` did not use WebGPU (or why `webgpu` failed).
   */
  gpuError: string | null,
} & (EngineStats | {
  backend: EngineBackend,
  wasmMemoryBytes: number,
});

/**
 * The engine's numbers as the worker has them: [`EngineStats`] once a model is loaded.
 */
export type WorkerEngineStats = EngineStats | {
  backend: EngineBackend,
  wasmMemoryBytes: number,
};

/**
 * The wasm build that runs.
 */
export type WasmBuild = "relaxed-simd" | "simd128";

/**
 * The `value` of a `result` message, by request: `load` a [`LoadReply`],
 * `tokenize` token ids, `detokenize` text, `stats` [`WorkerStats`], `profile`
 * a [`Profile`] (null without a model), `memory` a [`MemoryView`], the others `true`.
 */
export type ResultValue = LoadReply | Array<number> | string | WorkerStats | Profile | null | MemoryView | true;

/**
 * The `result` of a `load` request.
 */
export type LoadReply = {
  info: ModelInfo,
  /**
   * The model came from the Cache API.
   */
  fromCache: boolean,
  initMs: number,
};

/**
 * A failure, as the worker reports it.
 */
export type WorkerError = {
  name: string,
  message: string,
  /**
   * `gguf`, `network`, `memory`, `unsupported`, `invalid-option`, `invalid-prompt`, `busy`, `gpu`, `crash`, …
   */
  kind: string,
};
