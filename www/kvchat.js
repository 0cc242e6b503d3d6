// kvchat: a small language model in the browser. The public ES module.
//
//   import { KvChat } from './www/kvchat.js';
//   const llm = await KvChat.load({ model, backend, kvWindow, kvSinks, onProgress });
//   for await (const piece of llm.generate('Hello', { maxTokens: 64 })) { ... }
//
// The engine runs in a dedicated Web Worker (www/worker.js), so the page never freezes.
// The messages to and from it are declared once, in src/protocol/messages.rs (→ protocol.d.ts).

/** @typedef {import('./protocol.js').WorkerRequest} WorkerRequest */
/** @typedef {import('./protocol.js').WorkerMessage} WorkerMessage */

import { MODELS, modelUrl } from './models.js';
import { createChatCompletion } from './openai.js';

// The built-in models (name, file, size, license, chat or base) and the models stored in this browser.
export { MODELS, modelUrl } from './models.js';
export { listCachedModels, deleteCachedModel } from './model-cache.js';

/** The first built-in model, SmolLM2-135M-Instruct. */
export const DEFAULT_MODEL = modelUrl(MODELS[0]);

/** An error from the engine; `kind` says what went wrong ('gguf', 'network', 'invalid-option', ...). */
/**
 * A model URL's origin checked against the embedder's list (`allowedOrigins`, or the
 * `<kv-chat allowed-origins>` attribute): a model from anywhere is untrusted input
 * that costs the visitor a download, so an embedder can pin where models come from.
 * @param {URL} url @param {string[]|undefined} allowed @returns {URL}
 */
function checkOrigin(url, allowed) {
  if (allowed === undefined) return url;
  if (!Array.isArray(allowed) || !allowed.every((o) => typeof o === 'string')) throw new KvChatError('allowedOrigins must be an array of origins', 'invalid-option');
  const origins = allowed.map((o) => { try { return new URL(o).origin; } catch { throw new KvChatError(`allowedOrigins: ${o} is not an origin`, 'invalid-option'); } });
  if (url.origin === location.origin || origins.includes(url.origin)) return url;
  throw new KvChatError(`models from ${url.origin} are not allowed here (allowed: ${[location.origin, ...origins].join(', ')})`, 'invalid-option');
}

export class KvChatError extends Error {
  constructor(message, kind = 'error') {
    super(message);
    this.name = 'KvChatError';
    this.kind = kind;
  }
}

const abortError = () => new DOMException('The generation was aborted', 'AbortError');

export class KvChat {
  #worker;
  #nextId = 1;
  #pending = new Map(); // id -> { resolve, reject, onEvent }
  #busy = false;
  #crashed = null;
  #backend = 'cpu';
  /** Model information: layers, vocabulary, weight bytes, KV settings. */
  info = null;
  /** True when the model came from the browser's cache rather than the network. */
  fromCache = false;
  /** Milliseconds spent downloading (or reading the cache) and initializing. */
  timings = { fetchMs: 0, initMs: 0 };
  /** Called when the worker crashes; the instance is unusable afterwards: load again. */
  onCrash = null;
  /** The model's name as responses report it (the file name of its URL, or 'local'). */
  modelName = 'local';
  /**
   * OpenAI-style chat completions (the shape WebLLM and OpenAI's SDK use):
   * `await llm.chat.completions.create({ messages, stream, n, max_tokens, temperature, top_p,
   * seed, stop, logprobs, top_logprobs, logit_bias, frequency_penalty, presence_penalty,
   * response_format })` → a `chat.completion`, or with `stream: true` an async iterable of
   * `chat.completion.chunk`s. `response_format` also takes kvchat's `{ type: 'grammar',
   * grammar }` (Lark) and `{ type: 'regex', regex }`. A second argument `{ signal }` aborts.
   */
  chat = { completions: { create: (request, opts) => createChatCompletion(this, KvChatError, request, opts) } };

  constructor(worker) {
    this.#worker = worker;
    worker.onmessage = (e) => this.#onMessage(e.data);
    worker.onerror = (e) => this.#crash(new KvChatError(`the engine worker failed: ${e.message || 'unknown error'}`, 'crash'));
    worker.onmessageerror = () => this.#crash(new KvChatError('the engine worker sent an unreadable message', 'crash'));
  }

  /**
   * Loads a model and starts the engine.
   * @param {object} [options]
   * @param {string|Blob|ArrayBuffer} [options.model] URL (relative or absolute), Blob or ArrayBuffer.
   * @param {'auto'|'cpu'|'webgpu'} [options.backend]
   * @param {number} [options.kvWindow] KV cache capacity in tokens (default 2048).
   * @param {number} [options.kvSinks] attention-sink tokens never evicted (default 4).
   * @param {boolean} [options.kvF16] keep the KV cache in f16, half the memory (default false: f32).
   * @param {number} [options.kvCold] tokens a compressed cold tier keeps after they leave the window,
   *   recalled when a query needs them (default 0: off). Runs on the CPU backend.
   * @param {number} [options.kvColdBits] 8 (default) or 4 bits per cold key and value.
   * @param {number} [options.kvRecall] tokens recalled per step for each layer and kv head (default 512).
   * @param {'auto'|'relaxed'|'baseline'} [options.simd] wasm build: relaxed SIMD where supported (default), or plain simd128.
   * @param {number} [options.threads] threads for the matmuls; default: up to 4 on a cross-origin-isolated page, else 1.
   * @param {(p: {phase: 'download'|'cache'|'init', loaded: number, total: number}) => void} [options.onProgress]
   * @param {AbortSignal} [options.signal] stops the load (its worker and download) and rejects with an AbortError.
   * @param {string[]} [options.allowedOrigins] origins a model URL may come from (e.g. `['https://huggingface.co']`;
   *   the page's own origin is always allowed); default: any origin.
   */
  static async load(options = {}) {
    const { model = DEFAULT_MODEL, backend = 'auto', kvWindow, kvSinks, kvF16, kvCold, kvColdBits, kvRecall, onProgress, cache, simd, threads, allowedOrigins, signal } = options;
    if (signal?.aborted) throw new DOMException('The load was aborted', 'AbortError');
    if (!['auto', 'cpu', 'webgpu'].includes(backend)) throw new KvChatError(`backend must be 'auto', 'cpu' or 'webgpu' (got ${backend})`, 'invalid-option');
    const source = typeof model === 'string' ? checkOrigin(new URL(model, globalThis.document?.baseURI ?? location.href), allowedOrigins).href : model;
    const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module', name: 'kvchat-engine' });
    const llm = new KvChat(worker);
    const t0 = performance.now();
    let fetchDone = 0;
    try {
      const transfer = model instanceof ArrayBuffer ? [model] : [];
      const loading = llm.#call('load', { model: source, options: { kvWindow, kvSinks, kvF16, kvCold, kvColdBits, kvRecall, cache, simd, threads, backend } }, (m) => {
        if (m.type === 'progress') {
          if (m.phase === 'init' && !fetchDone) fetchDone = performance.now();
          onProgress?.({ phase: m.phase, loaded: m.loaded, total: m.total });
        }
      }, transfer);
      // An abort ends the worker (and with it the download) at once; the catch below terminates it.
      const aborted = new Promise((_, reject) => signal?.addEventListener('abort', () => reject(new DOMException('The load was aborted', 'AbortError')), { once: true }));
      loading.catch(() => {}); // settled by the race below; an aborted load's end is not an error
      const r = await Promise.race([loading, aborted]);
      llm.info = r.info;
      if (typeof model === 'string') llm.modelName = decodeURIComponent(new URL(source).pathname.split('/').pop() || 'model').replace(/\.gguf$/i, '');
      llm.#backend = r.info.backend ?? 'cpu';
      llm.fromCache = r.fromCache;
      llm.timings = { fetchMs: (fetchDone || performance.now()) - t0, initMs: r.initMs };
      return llm;
    } catch (e) {
      worker.terminate();
      throw e;
    }
  }

  /** The backend that runs: 'webgpu' or 'cpu' (wasm SIMD); 'cpu' after a lost GPU device. */
  get backend() { return this.#backend; }
  /** Set when the worker crashed: load the model again. */
  get crashed() { return this.#crashed; }

  /**
   * Streams the answer to a raw prompt or to chat messages, piece by piece.
   * A new call reuses the cached prefix: the next chat turn prefills only its new tokens.
   * @param {string|{role: string, content: string}[]} input
   * @param {object} [opts] maxTokens, temperature (0 = greedy), topK, topP, minP, repeatPenalty,
   *   seed, stop: string[], ignoreEos, noCache, signal: AbortSignal;
   *   responseFormat: `{ type: 'json_object' }`, `{ type: 'json_schema', schema }`, `{ type: 'grammar', grammar }`
   *   (Lark) or `{ type: 'regex', regex }`, enforced by a token mask at every step;
   *   logprobs: n (each token's log-probability and n alternatives, in `lastResult.logprobs`);
   *   logitBias: `{ tokenId: bias }`; frequencyPenalty, presencePenalty (OpenAI's)
   * @returns {AsyncGenerator<string>}
   */
  async *generate(input, opts = {}) {
    const { signal, ...options } = opts;
    yield* this.#stream('generate', { input, options }, signal, (m, push) => {
      if (m.type === 'piece') push(m.piece);
      else if (m.type === 'done') { this.lastResult = m.result; this.lastStats = m.stats; if (m.stats?.backend) this.#backend = m.stats.backend; }
    });
  }

  /**
   * Runs many inputs as a batch (continuous batching, one bounded KV cache per sequence,
   * the prefix every input shares prefilled once). Yields `{ index, piece }` as text arrives
   * and `{ index, done: true, text, stats, stopReason, generatedTokens }` as each input ends;
   * `lastBatchStats` holds the aggregate numbers afterwards.
   * @param {Array<string|object[]|{input: string|object[]}>} inputs prompts, message lists, or `{ input, ...options }` per-input overrides
   * @param {object} [opts] generate options for every input, plus `batchSize` (default 8),
   *   `kvWindow` (each sequence's cache, default 512), `kvSinks`, `sharePrefix` (default true), `signal` (aborts all)
   */
  async *generateBatch(inputs, opts = {}) {
    const { signal, ...options } = opts;
    if (!Array.isArray(inputs)) throw new KvChatError('generateBatch takes an array of inputs', 'invalid-prompt');
    yield* this.#stream('generateBatch', { inputs, options }, signal, (m, push) => {
      if (m.type === 'batch') {
        this.lastBatchStats = m.stats;
        for (const ev of m.events) {
          if (ev.piece) push({ index: ev.index, piece: ev.piece });
          if (ev.done) push({ index: ev.index, done: true, text: ev.result.text, stats: ev.result.stats, stopReason: ev.result.stopReason, generatedTokens: ev.result.generatedIds.length, logprobs: ev.result.logprobs, toolCalls: ev.result.toolCalls, content: ev.result.content });
        }
      } else if (m.type === 'done') { this.lastBatchStats = m.result; this.lastStats = m.stats; }
    });
  }

  /**
   * One streamed request to the worker: `onMessage(m, push)` turns its messages
   * into yielded items; 'done' ends the stream, 'aborted' throws an AbortError.
   * Leaving the loop early (or aborting `signal`) stops the worker within one token.
   */
  async *#stream(type, payload, signal, onMessage) {
    if (signal?.aborted) throw abortError();
    if (this.#busy) throw new KvChatError('a generation is already running: wait for it or abort it', 'busy');
    this.#busy = true;
    const queue = [];
    let wake = null;
    let finished = false;
    let failure = null;
    const END = Symbol('end');
    const push = (item) => { queue.push(item); wake?.(); wake = null; };
    const id = this.#nextId;
    const done = this.#call(type, payload, (m) => {
      onMessage(m, push);
      if (m.type === 'done') { finished = true; push(END); }
      else if (m.type === 'aborted') { failure = abortError(); push(END); }
    });
    done.catch((e) => { failure = e; push(END); });
    const onAbort = () => this.#send('abort', { target: id });
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      for (;;) {
        if (!queue.length) await new Promise((r) => { wake = r; });
        const item = queue.shift();
        if (item === END) {
          if (failure) throw failure;
          return;
        }
        yield item;
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      if (!finished && !failure && !this.#crashed) {
        // The consumer left the loop early: stop the worker too.
        this.#send('abort', { target: id });
        await done.catch(() => {});
      }
      this.#busy = false;
    }
  }

  /** Token ids of `text`, special tokens parsed as llama.cpp does. */
  tokenize(text) { return this.#call('tokenize', { text }); }
  /** Text of token ids. */
  detokenize(ids) { return this.#call('detokenize', { ids: Array.from(ids) }); }
  /**
   * Diagnostics: `profile(true)` starts timing every operation of the forward pass,
   * `profile()` returns `{ tokens, msPerToken: { op: ms } }` so far, `profile(false)` stops.
   */
  async profile(on) { return this.#call('profile', { on }); }

  /**
   * The cache's history token by token: `pieces[i]` the text token i adds, `tiers[i]` where its keys and
   * values live (sink, window, cold, pending, dropped), `recalled` the cold blocks the last step brought back.
   */
  memoryView() { return this.#call('memory', {}); }

  /** Statistics of the last generation, the KV cache and wasm memory. */
  async stats() {
    const s = await this.#call('stats', {});
    if (s.backend) this.#backend = s.backend;
    return s;
  }

  /** Destroys the GPU device (to test the fallback: generation continues on the CPU). */
  async loseGpuDevice() { await this.#call('loseGpuDevice', {}); }
  /** Makes the engine's wasm trap, as a bug would (tests): the call rejects with kind 'crash', `onCrash` runs, `crashed` is set. */
  async simulateCrash() { await this.#call('simulateCrash', {}); }
  /** Makes the next matmul helper thread trap (threaded build; a test of the stuck-helper way out). */
  async simulateHelperCrash() { await this.#call('simulateHelperCrash', {}); }
  /** Empties the cache and the history. */
  reset() { return this.#call('reset', {}); }
  /**
   * Writes the whole KV cache (window, cold tier, token ids) to the origin-private file system
   * as `name`; resolves to its size in bytes. The CPU backend only.
   */
  saveSession(name) { return this.#call('saveSession', { name }); }
  /**
   * Replaces the KV cache with the one saved as `name` (the same model and cache options): the next
   * turn of that conversation prefills only its new tokens. A missing, corrupt or foreign file
   * rejects with kind 'session' and the engine stays usable.
   */
  restoreSession(name) { return this.#call('restoreSession', { name }); }
  /** Deletes the session saved as `name`; resolves to whether there was one. */
  deleteSession(name) { return this.#call('deleteSession', { name }); }
  /** Ends the worker and frees its memory. */
  async dispose() {
    if (this.#crashed) return;
    try { await this.#call('dispose', {}); } catch { /* already gone */ }
    this.#worker.terminate();
    this.#crash(new KvChatError('this engine was disposed', 'disposed'), false);
  }

  /** Posts the request `{ type, id, ...payload }`. @param {WorkerRequest['type']} type */
  #send(type, payload, transfer = []) {
    const id = this.#nextId++;
    this.#worker.postMessage({ type, id, ...payload }, transfer);
    return id;
  }

  #call(type, payload, onEvent, transfer) {
    if (this.#crashed) return Promise.reject(this.#crashed);
    return new Promise((resolve, reject) => {
      const id = this.#send(type, payload, transfer);
      this.#pending.set(id, { resolve, reject, onEvent });
    });
  }

  /** @param {WorkerMessage} m */
  #onMessage(m) {
    if (!m || typeof m !== 'object') return;
    if (m.type === 'crash') { this.#crash(new KvChatError(`the engine crashed: ${m.error?.message}; load the model again`, 'crash')); return; }
    const p = this.#pending.get(m.id);
    if (!p) return;
    if (m.type === 'result') { this.#pending.delete(m.id); p.resolve(m.value); }
    else if (m.type === 'error') { this.#pending.delete(m.id); p.reject(new KvChatError(m.error.message, m.error.kind)); }
    else {
      p.onEvent?.(m);
      if (m.type === 'done' || m.type === 'aborted') { this.#pending.delete(m.id); p.resolve(); }
    }
  }

  #crash(error, notify = true) {
    if (this.#crashed) return;
    this.#crashed = error;
    for (const p of this.#pending.values()) p.reject(error);
    this.#pending.clear();
    this.#worker.terminate();
    if (notify) this.onCrash?.(error);
  }
}
