// TypeScript declarations for kvchat's public ES module (www/kvchat.js).
// What the engine and the worker send is declared once, in ./protocol.d.ts (generated from src/protocol/);
// tests/e2e/declarations.test.mjs checks that this file declares every member kvchat.js defines.

import type {
  BatchStats,
  EngineBackend,
  EngineBatchOptions,
  EngineGenerateOptions,
  EngineLoadOptions,
  EngineStats,
  GenerationResult,
  GenerationStats,
  LoadPhase,
  MemoryView,
  ModelInfo,
  Profile,
  StopReason,
  TokenLogprob,
  ToolCallReply,
  WasmBuild,
} from './protocol.js';

export type {
  AdapterInfo,
  BatchStats,
  EngineBackend,
  GenerationResult,
  GenerationStats,
  GpuStepCosts,
  KvStats,
  LoadTimings,
  MemoryView,
  ModelInfo,
  Profile,
  RecalledBlock,
  ResponseFormat,
  StopReason,
  TokenAlternative,
  TokenLogprob,
  ToolCallReply,
  TokenTier,
  ToolChoiceOption,
} from './protocol.js';

/** The first built-in model, SmolLM2-135M-Instruct. */
export declare const DEFAULT_MODEL: string;

/** A built-in model (www/models.js): what the page shows before anything is downloaded. */
export interface CatalogueModel {
  id: string;
  name: string;
  /** The quantization, as llama.cpp names it (`Q4_K_M`). */
  quant: string;
  /** The file in models/. */
  file: string;
  /** The file's size. */
  bytes: number;
  license: string;
  licenseUrl: string;
  /** False for a base model: no chat template, plain completion only (`info.chatTemplate` is false). */
  chat: boolean;
}

/** The built-in models, SmolLM2-135M-Instruct first. */
export declare const MODELS: readonly CatalogueModel[];
/** The absolute URL of a built-in model's file. */
export declare function modelUrl(model: CatalogueModel): string;

/** A model stored in this browser's Cache API (one entry per URL). */
export interface CachedModel {
  url: string;
  bytes: number;
}

/** The models stored for offline use, in the order they were stored. */
export declare function listCachedModels(): Promise<CachedModel[]>;
/** Deletes the stored copy of the model at `url`; true when there was one. */
export declare function deleteCachedModel(url: string): Promise<boolean>;

export type Backend = 'auto' | EngineBackend;

export interface Progress {
  phase: LoadPhase;
  loaded: number;
  total: number;
}

export interface LoadOptions extends Pick<EngineLoadOptions, 'kvWindow' | 'kvSinks' | 'kvF16' | 'kvCold' | 'kvColdBits' | 'kvRecall'> {
  /** URL string (relative or absolute), Blob or ArrayBuffer. Default: the bundled models/ path. */
  model?: string | Blob | ArrayBuffer;
  /** Default 'auto': WebGPU when an adapter with the needed limits exists, else the CPU. 'webgpu' rejects (kind 'gpu') without one. */
  backend?: Backend;
  /** Keep the model in the browser's Cache API once it has loaded (default true; at most 4 models / 4 GiB kept, revalidated against the server). */
  cache?: boolean;
  /** Which wasm build runs: 'auto' (default) takes relaxed SIMD where the browser has it, 'baseline' plain simd128. */
  simd?: 'auto' | 'relaxed' | 'baseline';
  /** Threads for the matmuls (threaded build). Default: up to 4 when the page is cross-origin isolated, else 1. */
  threads?: number;
  onProgress?: (p: Progress) => void;
  /** Origins a model URL may come from (the page's own always may); default: any. Others are refused (kind 'invalid-option') before fetching. */
  allowedOrigins?: string[];
  /** Aborting stops the load at once (its worker and download end) and rejects with an AbortError. */
  signal?: AbortSignal;
}

export interface Message {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface GenerateOptions extends EngineGenerateOptions {
  /** Aborting it stops the generation within one token (the stream throws an AbortError). */
  signal?: AbortSignal;
}

export interface BatchOptions extends GenerateOptions, EngineBatchOptions {}

export type BatchEvent =
  | { index: number; piece: string; done?: undefined }
  | { index: number; done: true; text: string; stats: GenerationStats; stopReason: StopReason | null; generatedTokens: number; logprobs: TokenLogprob[]; toolCalls: ToolCallReply[]; content: string };

/** OpenAI's chat-completion request, as far as kvchat honours it (any other field is an 'invalid-option' error). */
/** A tool call in OpenAI's shape: `arguments` is a JSON string. */
export interface ChatCompletionMessageToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

export interface ChatCompletionRequest {
  messages: Array<{
    role: 'system' | 'user' | 'assistant' | 'tool';
    content: string | null | Array<{ type: 'text'; text: string }>;
    tool_calls?: ChatCompletionMessageToolCall[];
    tool_call_id?: string;
  }>;
  /** Described through the model's chat template where it takes tools (Qwen2.5's does; others: 'unsupported'). */
  tools?: Array<{ type: 'function'; function: { name: string; description?: string; parameters?: unknown } }>;
  /** 'auto' (default): calls are read out of the text; 'required' or a named function: a grammar forces the call. */
  tool_choice?: 'none' | 'auto' | 'required' | { type: 'function'; function: { name: string } };
  parallel_tool_calls?: boolean;
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
  /** Choices, decoded together as a batch (1 to 64). */
  n?: number;
  max_tokens?: number;
  max_completion_tokens?: number;
  /** Default 1, as OpenAI's; 0 is greedy. */
  temperature?: number;
  top_p?: number;
  seed?: number;
  stop?: string | string[];
  frequency_penalty?: number;
  presence_penalty?: number;
  /** Token id (as a string) → bias in [-100, 100]; -100 bans the token. */
  logit_bias?: Record<string, number>;
  logprobs?: boolean;
  /** Alternatives per token, 0 to 20. */
  top_logprobs?: number;
  response_format?:
    | { type: 'text' | 'json_object' }
    | { type: 'json_schema'; json_schema: { name?: string; schema: unknown; strict?: boolean; description?: string } }
    /** kvchat's additions: a Lark grammar (llguidance's dialect) or a regular expression. */
    | { type: 'grammar'; grammar: string }
    | { type: 'regex'; regex: string };
  /** kvchat's own sampling knobs (default off). */
  top_k?: number;
  min_p?: number;
  repetition_penalty?: number;
  model?: string;
  user?: string;
}

export interface ChatCompletionTokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: Array<{ token: string; logprob: number; bytes: number[] }>;
}

export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** `cached_tokens`: the prompt prefix the KV cache already held (not recomputed). */
  prompt_tokens_details: { cached_tokens: number };
}

export type FinishReason = 'stop' | 'length' | 'tool_calls';

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  system_fingerprint: string;
  choices: Array<{
    index: number;
    message: { role: 'assistant'; content: string | null; refusal: null; tool_calls?: ChatCompletionMessageToolCall[] };
    logprobs: { content: ChatCompletionTokenLogprob[]; refusal: null } | null;
    finish_reason: FinishReason | null;
  }>;
  usage: CompletionUsage;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  system_fingerprint: string;
  choices: Array<{
    index: number;
    delta: { role?: 'assistant'; content?: string | null; tool_calls?: Array<ChatCompletionMessageToolCall & { index: number }> };
    /** On each choice's last chunk (kvchat streams whole characters, not tokens). */
    logprobs: { content: ChatCompletionTokenLogprob[]; refusal: null } | null;
    finish_reason: FinishReason | null;
  }>;
  /** On the final chunk, with `stream_options.include_usage`. */
  usage?: CompletionUsage;
}

/** `stats()`: the engine's numbers plus what the worker knows. */
export interface Stats extends EngineStats {
  /** Why 'auto' did not use WebGPU. */
  gpuError: string | null;
  /** The wasm build that runs. */
  simd: WasmBuild;
  /** Threads the matmuls use. */
  threads: number;
}

export declare class KvChatError extends Error {
  constructor(message: string, kind?: string);
  /** 'gguf' | 'network' | 'memory' | 'unsupported' | 'invalid-option' | 'invalid-prompt' | 'busy' | 'crash' | ... */
  kind: string;
}

export declare class KvChat {
  static load(options?: LoadOptions): Promise<KvChat>;
  /** Use `KvChat.load`: the constructor takes the engine's Worker. */
  constructor(worker: Worker);
  readonly backend: EngineBackend;
  /** Set when the worker crashed; load the model again. */
  readonly crashed: KvChatError | null;
  info: ModelInfo | null;
  fromCache: boolean;
  timings: { fetchMs: number; initMs: number };
  onCrash: ((error: KvChatError) => void) | null;
  /** The model's name as chat completions report it. */
  modelName: string;
  /** OpenAI-style chat completions; `{ signal }` aborts (the promise or stream rejects with an AbortError). */
  chat: {
    completions: {
      create(request: ChatCompletionRequest & { stream?: false }, opts?: { signal?: AbortSignal }): Promise<ChatCompletion>;
      create(request: ChatCompletionRequest & { stream: true }, opts?: { signal?: AbortSignal }): Promise<AsyncIterable<ChatCompletionChunk>>;
    };
  };
  /** Streams text pieces; the next call reuses the cached prefix. Aborting throws an AbortError. */
  generate(input: string | Message[], opts?: GenerateOptions): AsyncGenerator<string, void, undefined>;
  /** The result of the last generation that ran to its end (`generate`). */
  lastResult?: GenerationResult;
  /** `stats()` as of the end of the last generation or batch. */
  lastStats?: Stats;
  /** Many inputs as a batch: `{ index, piece }` events as text arrives, a `done` event per input. */
  generateBatch(inputs: Array<string | Message[] | ({ input: string | Message[] } & GenerateOptions)>, opts?: BatchOptions): AsyncGenerator<BatchEvent, void, undefined>;
  /** Aggregate numbers of the last batch. */
  lastBatchStats?: BatchStats;
  tokenize(text: string): Promise<number[]>;
  detokenize(ids: ArrayLike<number>): Promise<string>;
  stats(): Promise<Stats>;
  /** The cache's history token by token with where each token's keys and values live, and the cold blocks the last step recalled. */
  memoryView(): Promise<MemoryView>;
  /** Diagnostics: `profile(true)` starts timing each operation of the forward pass, `profile()` reads it, `profile(false)` stops. */
  profile(on?: boolean): Promise<Profile | null>;
  /** Destroys the GPU device (to test the fallback: generation continues on the CPU). */
  loseGpuDevice(): Promise<void>;
  /** Makes the engine's wasm trap, as a bug would (tests): rejects with kind 'crash', `onCrash` runs, `crashed` is set; load again to recover. */
  simulateCrash(): Promise<void>;
  /** Makes the next matmul helper thread trap (threaded build only): the next generation reports `crash` after 30 s. */
  simulateHelperCrash(): Promise<void>;
  /** Writes the whole KV cache (window, cold tier, token ids) to the origin-private file system as `name`; resolves to its size in bytes. CPU backend only. */
  saveSession(name: string): Promise<number>;
  /** Replaces the KV cache with the one saved as `name` (same model and cache options); rejects with kind 'session' for a missing, corrupt or foreign file. */
  restoreSession(name: string): Promise<number>;
  /** Deletes the session saved as `name`; resolves to whether there was one. */
  deleteSession(name: string): Promise<boolean>;
  /** Empties the cache and the history. */
  reset(): Promise<void>;
  dispose(): Promise<void>;
}
