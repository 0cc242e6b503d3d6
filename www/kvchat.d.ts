// TypeScript declarations for kvchat's public ES module (www/kvchat.js).

export declare const DEFAULT_MODEL: string;

export type Backend = 'auto' | 'cpu' | 'webgpu';

export interface Progress {
  phase: 'download' | 'cache' | 'init';
  loaded: number;
  total: number;
}

export interface LoadOptions {
  /** URL string (relative or absolute), Blob or ArrayBuffer. Default: the bundled models/ path. */
  model?: string | Blob | ArrayBuffer;
  /** Default 'auto': WebGPU when an adapter with the needed limits exists, else the CPU. 'webgpu' rejects (kind 'gpu') without one. */
  backend?: Backend;
  /** KV cache capacity in tokens (default 2048). */
  kvWindow?: number;
  /** Attention-sink tokens never evicted (default 4). */
  kvSinks?: number;
  /** Store keys and values as f16 (half the cache memory). */
  kvF16?: boolean;
  /** Keep the downloaded model in the browser's Cache API (default true). */
  cache?: boolean;
  /** Which wasm build runs: 'auto' (default) takes relaxed SIMD where the browser has it, 'baseline' plain simd128. */
  simd?: 'auto' | 'relaxed' | 'baseline';
  /** Threads for the matmuls (threaded build). Default: up to 4 when the page is cross-origin isolated, else 1. */
  threads?: number;
  onProgress?: (p: Progress) => void;
}

export interface Message {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface GenerateOptions {
  maxTokens?: number;
  /** 0 is greedy. */
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repeatPenalty?: number;
  seed?: number;
  stop?: string[];
  ignoreEos?: boolean;
  /** Recompute the whole sequence for every token (shows what the KV cache saves). */
  noCache?: boolean;
  signal?: AbortSignal;
}

export interface BatchOptions extends GenerateOptions {
  /** Sequences decoded together (default 8). */
  batchSize?: number;
  /** Each sequence's KV window in tokens (default 512). */
  kvWindow?: number;
  kvSinks?: number;
  /** Prefill the prefix every input shares once (default true). */
  sharePrefix?: boolean;
}

export type BatchEvent =
  | { index: number; piece: string; done?: undefined }
  | { index: number; done: true; text: string; stats: Record<string, number>; stopReason: string | null; generatedTokens: number };

export interface BatchStats {
  sequences: number;
  finished: number;
  batchSize: number;
  promptTokens: number;
  sharedPrefixTokens: number;
  generatedTokens: number;
  elapsedMs: number;
  tokensPerSec: number;
  decodeMs: number;
  decodeTokensPerSec: number;
  kvBytesPerSequence: number;
  /** Where the batched passes ran: 'webgpu' (every sequence's cache on the GPU) or 'cpu'. */
  backend: 'cpu' | 'webgpu';
}

export interface KvStats {
  capacity: number;
  used: number;
  sinks: number;
  evicted: number;
  bytes: number;
}

export interface Stats {
  backend: 'cpu' | 'webgpu';
  /** The GPU adapter while the WebGPU backend runs. */
  adapter?: { name: string; backend: string; deviceType: string; maxStorageBinding: number; maxBuffer: number } | null;
  /** Set once a lost GPU device moved the engine to the CPU (the conversation continued). */
  fallback?: string | null;
  /** Why 'auto' did not use WebGPU. */
  gpuError?: string | null;
  /** WebGPU: dispatches and bytes read back by the last step (8 bytes for a greedy token). */
  gpuStep?: { dispatches: number; readbackBytes: number } | null;
  promptTokens: number;
  reusedTokens: number;
  generatedTokens: number;
  prefillTokensPerSec: number;
  decodeTokensPerSec: number;
  timeToFirstTokenMs: number;
  kv: KvStats;
  wasmMemoryBytes: number;
  /** The wasm build that runs. */
  simd: 'relaxed-simd' | 'simd128';
  /** Threads the matmuls use. */
  threads: number;
}

export interface ModelInfo {
  nLayer: number;
  nHead: number;
  nHeadKv: number;
  nEmbd: number;
  vocabSize: number;
  contextLength: number;
  weightBytes: number;
  kv: KvStats;
}

export declare class KvChatError extends Error {
  /** 'gguf' | 'network' | 'memory' | 'unsupported' | 'invalid-option' | 'invalid-prompt' | 'busy' | 'crash' | ... */
  kind: string;
}

export declare class KvChat {
  static load(options?: LoadOptions): Promise<KvChat>;
  readonly backend: 'cpu' | 'webgpu';
  /** Set when the worker crashed; load the model again. */
  readonly crashed: KvChatError | null;
  info: ModelInfo | null;
  fromCache: boolean;
  timings: { fetchMs: number; initMs: number };
  onCrash: ((error: KvChatError) => void) | null;
  /** Streams text pieces; the next call reuses the cached prefix. Aborting throws an AbortError. */
  generate(input: string | Message[], opts?: GenerateOptions): AsyncGenerator<string, void, undefined>;
  /** Many inputs as a batch: `{ index, piece }` events as text arrives, a `done` event per input. */
  generateBatch(inputs: Array<string | Message[] | ({ input: string | Message[] } & GenerateOptions)>, opts?: BatchOptions): AsyncGenerator<BatchEvent, void, undefined>;
  /** Aggregate numbers of the last batch. */
  lastBatchStats?: BatchStats;
  tokenize(text: string): Promise<number[]>;
  detokenize(ids: ArrayLike<number>): Promise<string>;
  stats(): Promise<Stats>;
  /** Diagnostics: `profile(true)` starts timing each operation of the forward pass, `profile()` reads it, `profile(false)` stops. */
  profile(on?: boolean): Promise<{ tokens: number; msPerToken: Record<string, number> } | null>;
  reset(): Promise<void>;
  dispose(): Promise<void>;
}
