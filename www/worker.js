// kvchat's engine worker: downloads and caches the model (one Cache API entry per
// URL, see model-cache.js) or reads it from a Blob (a local file), owns the wasm
// engine, and streams generated text back to the page. Every message from the
// page has a `type` and an `id`; anything else is ignored. The messages both ways
// are declared once, in src/protocol/messages.rs (→ protocol.d.ts), and
// tests/e2e/messages.test.mjs checks this file against them.
/** @typedef {import('./protocol.js').WorkerRequest} WorkerRequest */
/** @typedef {import('./protocol.js').WorkerMessage} WorkerMessage */
/** @typedef {import('./protocol.js').WorkerStats} WorkerStats */
import { openModelCache, storeModel, isCurrent } from './model-cache.js';
// The engine module is imported once the load options are known (see initWasm).
let KvEngine = null;
let wasmMemoryBytes = () => 0;

const MAX_MODEL_BYTES = 3 * 1024 ** 3; // wasm32 memory is 4 GiB, weights + cache must fit
let engine = null;
let current = null; // { id, aborted }

// Two builds of the same engine share pkg/kvchat.js: relaxed SIMD (its Q4 kernels use
// i32x4.relaxed_dot_i8x16_i7x16_add_s) where the browser validates this one-function
// probe module, plain simd128 elsewhere.
const zeros = new Array(16).fill(0);
const RELAXED_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
  0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: () -> ()
  0x03, 0x02, 0x01, 0x00, // one function of that type
  0x0a, 0x3e, 0x01, 0x3c, 0x00, // code: one body, no locals
  0xfd, 0x0c, ...zeros, 0xfd, 0x0c, ...zeros, 0xfd, 0x0c, ...zeros, // three v128.const 0
  0xfd, 0x93, 0x02, 0x1a, 0x0b, // i32x4.relaxed_dot_i8x16_i7x16_add_s, drop, end
]);
const relaxedSimd = (() => { try { return WebAssembly.validate(RELAXED_PROBE); } catch { return false; } })();
let variant = null;
let threads = 1;
let ready = null;
const fail = (message, kind) => Object.assign(new Error(message), { kind });

// Three builds: pkg/ (simd128, or relaxed SIMD with pkg/kvchat_relaxed_bg.wasm) and
// pkg-threads/ (relaxed SIMD + shared memory + wasm-bindgen-rayon), the latter only
// on a cross-origin-isolated page with more than one core: a plain static host
// silently gets a single-thread build. On a first `make serve` only the simd128 build
// exists while the other two are still compiling: a missing build is skipped (asked for
// by name it is an error), and the next load takes it once it is there.
async function loadWasm(simd, wantThreads) {
  const isolated = self.crossOriginIsolated === true;
  const cores = navigator.hardwareConcurrency || 1;
  let n = wantThreads ?? (isolated ? Math.min(cores, 4) : 1);
  if (!Number.isInteger(n) || n < 1 || n > 64) throw fail(`threads must be an integer from 1 to 64 (got ${wantThreads})`, 'invalid-option');
  if (n > 1 && wantThreads !== undefined && !isolated) throw fail('threads need a cross-origin-isolated page (COOP/COEP headers)', 'unsupported');
  if (n > 1 && (!relaxedSimd || simd === 'baseline')) n = 1;
  if (n > 1) {
    const mod = await import('../pkg-threads/kvchat.js').catch(() => null);
    if (mod) {
      await mod.default();
      await mod.initThreadPool(n);
      threads = mod.setThreads(n);
      variant = 'relaxed-simd';
      return mod;
    }
    if (wantThreads !== undefined) throw fail('the threaded build (pkg-threads/) is not there (still building?)', 'unsupported');
  }
  const mod = await import('../pkg/kvchat.js');
  let relaxed = null;
  if (simd !== 'baseline' && relaxedSimd) {
    const res = await fetch(new URL('../pkg/kvchat_relaxed_bg.wasm', import.meta.url)).catch(() => null);
    if (res?.ok) relaxed = res;
    else if (simd === 'relaxed') throw fail('the relaxed-SIMD build (pkg/kvchat_relaxed_bg.wasm) is not there (still building?)', 'unsupported');
  }
  variant = relaxed ? 'relaxed-simd' : 'simd128';
  await mod.default(relaxed ? { module_or_path: relaxed } : undefined);
  threads = 1;
  return mod;
}

function initWasm(simd = 'auto', wantThreads) {
  if (!['auto', 'relaxed', 'baseline'].includes(simd)) throw fail(`simd must be 'auto', 'relaxed' or 'baseline' (got ${simd})`, 'invalid-option');
  if (simd === 'relaxed' && !relaxedSimd) throw fail('this browser does not support WebAssembly relaxed SIMD', 'unsupported');
  if (!ready) {
    ready = loadWasm(simd, wantThreads).then((mod) => { ({ KvEngine, wasmMemoryBytes } = mod); });
    ready.catch(() => { ready = null; });
  }
  return ready;
}
let gpuError = null;
let adapterName = null;
/** @returns {WorkerStats} */
const statsOf = () => {
  const s = engine ? engine.stats() : { backend: 'cpu', wasmMemoryBytes: wasmMemoryBytes() };
  // wgpu cannot see the browser adapter's name: the worker asked navigator.gpu for it.
  if (s.adapter && adapterName) s.adapter = { ...s.adapter, name: adapterName };
  return { ...s, simd: variant, threads, gpuError };
};

/** Every message to the page. @type {(msg: WorkerMessage, transfer?: Transferable[]) => void} */
const post = (msg, transfer) => self.postMessage(msg, transfer || []);
/** @returns {import('./protocol.js').WorkerError} */
const errorOf = (e) => ({
  name: e && e.name || 'Error',
  message: e && e.message || String(e),
  kind: e && e.kind || (e instanceof WebAssembly.RuntimeError ? 'crash' : 'error'),
});

// A macrotask without setTimeout's clamping, so abort messages are seen between tokens.
const channel = new MessageChannel();
const waiting = [];
channel.port1.onmessage = () => waiting.shift()?.();
const yieldNow = () => new Promise((r) => { waiting.push(r); channel.port2.postMessage(0); });

async function readBody(response, phase, id, total) {
  if (!response.body) return new Uint8Array(await response.arrayBuffer());
  const reader = response.body.getReader();
  const chunks = [];
  let loaded = 0;
  let lastPost = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.byteLength;
    if (loaded > MAX_MODEL_BYTES) throw Object.assign(new Error(`the model is larger than ${MAX_MODEL_BYTES} bytes: too large for wasm32 memory`), { kind: 'memory' });
    const now = performance.now();
    if (now - lastPost > 50) { lastPost = now; post({ type: 'progress', id, phase, loaded, total }); }
  }
  post({ type: 'progress', id, phase, loaded, total: total || loaded });
  const out = new Uint8Array(loaded);
  let off = 0;
  for (const c of chunks) { out.set(c, off); off += c.byteLength; }
  return out;
}

async function fetchModel(url, id, useCache) {
  const cache = useCache ? await openModelCache() : null;
  if (cache) {
    const hit = await cache.match(url);
    if (hit && await isCurrent(url, hit)) {
      const total = Number(hit.headers.get('content-length')) || 0;
      return { bytes: await readBody(hit, 'cache', id, total), fromCache: true };
    }
    if (hit) post({ type: 'warning', id, message: 'the stored copy of the model differs from the server\'s: downloading it again' });
  }
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw Object.assign(new Error(`could not fetch ${url}: network error, or the server does not allow cross-origin requests (CORS)`), { kind: 'network' });
  }
  if (!response.ok) throw Object.assign(new Error(`could not fetch ${url}: HTTP ${response.status} ${response.statusText}`), { kind: 'network' });
  const total = Number(response.headers.get('content-length')) || 0;
  if (total > MAX_MODEL_BYTES) throw Object.assign(new Error(`the model is ${total} bytes: too large for wasm32 memory`), { kind: 'memory' });
  const bytes = await readBody(response, 'download', id, total);
  checkGguf(bytes, url);
  const validators = { etag: response.headers.get('etag'), lastModified: response.headers.get('last-modified') };
  return { bytes, fromCache: false, cache, validators };
}

function checkGguf(bytes, what) {
  const magic = bytes.byteLength >= 4 ? String.fromCharCode(bytes[0], bytes[1], bytes[2], bytes[3]) : '';
  if (magic !== 'GGUF') {
    const head = new TextDecoder().decode(bytes.subarray(0, 64)).trim();
    const hint = head.startsWith('<') ? ' (it looks like an HTML page: check the URL)' : '';
    throw Object.assign(new Error(`${what} is not a GGUF model file${hint}`), { kind: 'gguf' });
  }
}

/** @param {Extract<WorkerRequest, { type: 'load' }>} msg @returns {Promise<import('./protocol.js').LoadReply>} */
async function load(msg) {
  const { id, model, options = {} } = msg;
  await initWasm(options.simd, options.threads);
  let bytes;
  let fromCache = false;
  let cache = null;
  let validators;
  if (typeof model === 'string') {
    ({ bytes, fromCache, cache, validators } = await fetchModel(model, id, options.cache !== false));
  } else if (model instanceof Blob) {
    bytes = await readBody(new Response(model), 'download', id, model.size);
  } else if (model instanceof ArrayBuffer || ArrayBuffer.isView(model)) {
    bytes = model instanceof ArrayBuffer ? new Uint8Array(model) : new Uint8Array(model.buffer, model.byteOffset, model.byteLength);
  } else {
    throw Object.assign(new Error('model must be a URL string, a Blob or an ArrayBuffer'), { kind: 'invalid-option' });
  }
  checkGguf(bytes, 'the model');
  post({ type: 'progress', id, phase: 'init', loaded: 0, total: 1 });
  const t0 = performance.now();
  engine?.free();
  engine = null;
  // backend 'auto': WebGPU when the browser has an adapter with the limits the
  // kernels need, else the CPU; 'webgpu' fails clearly instead of falling back.
  // The cold KV tier's recall runs on the CPU backend only.
  const backend = options.kvCold > 0 ? 'cpu' : options.backend ?? 'auto';
  gpuError = options.kvCold > 0 && options.backend !== 'cpu' ? 'the cold KV tier (kvCold) runs on the CPU backend' : null;
  if (backend !== 'cpu') {
    const adapter = self.navigator?.gpu ? await self.navigator.gpu.requestAdapter().catch(() => null) : null;
    const i = adapter?.info;
    adapterName = i ? (i.description || [i.vendor, i.architecture].filter(Boolean).join(' ') || 'WebGPU adapter') + (i.isFallbackAdapter ? ' (software)' : '') : null;
    if (!self.navigator?.gpu) gpuError = 'this browser has no WebGPU (navigator.gpu is missing)';
    else if (!adapter) gpuError = 'the browser offers no WebGPU adapter';
    // A software adapter (SwiftShader) is slower than the wasm CPU backend: 'auto' skips it.
    else if (backend === 'auto' && adapter.info?.isFallbackAdapter) gpuError = `only a software adapter (${adapter.info?.description || adapter.info?.architecture || 'fallback'}) is available`;
    else {
      try {
        engine = await KvEngine.loadGpu(bytes, options);
      } catch (e) {
        gpuError = e?.message ?? String(e);
      }
    }
    if (!engine && backend === 'webgpu') throw Object.assign(new Error(`backend 'webgpu' is not available: ${gpuError}`), { kind: 'gpu' });
  }
  if (!engine) engine = new KvEngine(bytes, options);
  // Stored only once an engine has loaded it: a file that fails to load is never
  // cached, so it cannot fail again on every visit.
  if (cache) {
    try {
      await storeModel(cache, model, bytes, validators);
    } catch (e) {
      post({ type: 'warning', id, message: `the model could not be stored for offline use: ${e.message}` });
    }
  }
  bytes = null;
  post({ type: 'progress', id, phase: 'init', loaded: 1, total: 1 });
  return { info: engine.info(), fromCache, initMs: performance.now() - t0 };
}

// Runs a generation step by step, yielding to the event loop between steps so
// an abort message is seen within one token. `step()` posts what it produced
// and returns true when the generation is over.
async function drive(id, start, step) {
  if (!engine) throw fail('no model is loaded', 'invalid-option');
  if (current) throw fail('a generation is already running: wait for it or abort it', 'busy');
  current = { id, aborted: false };
  try {
    start();
    for (;;) {
      await yieldNow();
      if (current.aborted || !engine) {
        engine?.abort();
        post({ type: 'aborted', id });
        return;
      }
      if (step()) return;
    }
  } finally {
    current = null;
  }
}

const generate = ({ id, input, options }) => drive(id, () => engine.start(input, options), () => {
  // On WebGPU a step submits work and returns { waiting: true } until the GPU
  // has finished: the loop yields to the event loop (which runs the buffer's
  // map callback) and steps again.
  const r = engine.step();
  if (r.waiting) return false;
  if (r.piece) post({ type: 'piece', id, piece: r.piece });
  if (r.done) post({ type: 'done', id, result: r.result, stats: statsOf() });
  return r.done;
});

const generateBatch = ({ id, inputs, options }) => drive(id, () => engine.batchStart(inputs, options), () => {
  const r = engine.batchStep();
  if (r.events.length) post({ type: 'batch', id, events: r.events, stats: r.stats });
  if (r.done) post({ type: 'done', id, result: r.stats, stats: statsOf() });
  return r.done;
});

// Saved sessions live in the origin-private file system, one file per name.
async function sessionsDir() {
  if (!self.navigator?.storage?.getDirectory) throw fail('this browser has no origin-private file system', 'session');
  return (await self.navigator.storage.getDirectory()).getDirectoryHandle('kvchat-sessions', { create: true });
}

async function sessionFile(name, create) {
  if (typeof name !== 'string' || !/^[\w-][\w.-]{0,63}$/.test(name)) {
    throw fail(`a session name is 1 to 64 letters, digits, '_', '-' or '.' (got ${JSON.stringify(name)})`, 'invalid-option');
  }
  const dir = await sessionsDir();
  try {
    return await dir.getFileHandle(name, { create });
  } catch {
    throw fail(`no session is saved as '${name}'`, 'session');
  }
}

/** One handler per WorkerRequest type; what it returns is the `result` message's `value`. */
const handlers = {
  load,
  generate,
  generateBatch,
  abort: async ({ target }) => { if (current && current.id === target) current.aborted = true; return true; },
  tokenize: async ({ text }) => Array.from(engine.tokenize(String(text))),
  detokenize: async ({ ids }) => engine.detokenize(Uint32Array.from(ids)),
  stats: async () => statsOf(),
  loseGpuDevice: async () => { engine?.loseGpuDevice(); return true; },
  simulateCrash: async () => { if (!engine) throw fail('no model is loaded', 'invalid-option'); engine.simulateCrash(); return true; },
  simulateHelperCrash: async () => {
    if (!engine) throw fail('no model is loaded', 'invalid-option');
    if (!engine.simulateHelperCrash || threads < 2) throw fail('only the threaded build has helper threads', 'unsupported');
    engine.simulateHelperCrash();
    return true;
  },
  saveSession: async ({ name }) => {
    if (!engine) throw fail('no model is loaded', 'invalid-option');
    if (current) throw fail('a generation is in progress; save after it', 'invalid-option');
    const bytes = engine.saveSession();
    const writable = await (await sessionFile(name, true)).createWritable();
    await writable.write(bytes);
    await writable.close();
    return bytes.length;
  },
  restoreSession: async ({ name }) => {
    if (!engine) throw fail('no model is loaded', 'invalid-option');
    if (current) throw fail('a generation is in progress; restore after it', 'invalid-option');
    const bytes = new Uint8Array(await (await (await sessionFile(name, false)).getFile()).arrayBuffer());
    engine.restoreSession(bytes);
    return bytes.length;
  },
  deleteSession: async ({ name }) => {
    try {
      await sessionFile(name, false);
    } catch (e) {
      if (e.kind === 'session') return false; // nothing saved under that name
      throw e; // an invalid name
    }
    await (await sessionsDir()).removeEntry(name);
    return true;
  },
  memory: async () => {
    if (!engine) throw fail('no model is loaded', 'invalid-option');
    return engine.memoryView();
  },
  profile: async ({ on }) => { if (on !== undefined) engine?.setProfiling(Boolean(on)); return engine ? engine.profile() : null; },
  reset: async () => { if (current) current.aborted = true; engine?.reset(); return true; },
  dispose: async () => { if (current) current.aborted = true; engine?.free(); engine = null; return true; },
};

/** @param {MessageEvent<WorkerRequest>} event */
self.onmessage = async (event) => {
  const msg = event.data;
  if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string' || !Object.hasOwn(handlers, msg.type)) return;
  try {
    const value = await handlers[msg.type](msg);
    if (msg.type !== 'generate' && msg.type !== 'generateBatch') post({ type: 'result', id: msg.id, value });
  } catch (e) {
    const error = errorOf(e);
    post({ type: 'error', id: msg.id, error });
    // A trap inside wasm poisons the instance: tell the page to start over.
    if (e instanceof WebAssembly.RuntimeError) {
      engine = null;
      post({ type: 'crash', error });
    }
  }
};

post({ type: 'hello' });
