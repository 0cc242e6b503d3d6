// WebLLM's entry point over kvchat: an app written for WebLLM ports by changing one import,
//
//   - import { CreateMLCEngine } from 'https://esm.run/@mlc-ai/web-llm';
//   + import { CreateMLCEngine } from './www/webllm.js';
//
// `CreateMLCEngine(model, { initProgressCallback })` resolves to an engine with
// `chat.completions.create` (OpenAI's shape, see openai.js), `interruptGenerate()`,
// `resetChat()`, `unload()` and `runtimeStatsText()`. `model` is a built-in model's id
// or name (www/models.js: 'smollm2-135m', 'SmolLM2-135M-Instruct', ...) or a GGUF URL;
// WebLLM's MLC model ids name other builds of the same models and are refused.

import { KvChat, KvChatError, MODELS, modelUrl } from './kvchat.js';

/** A built-in model by id or name (case-insensitive), or a URL ending in .gguf. */
function modelSource(model) {
  const key = String(model).toLowerCase();
  const known = MODELS.find((m) => m.id === key || m.name.toLowerCase() === key);
  if (known) return { url: modelUrl(known), name: known.name };
  if (/\.gguf(\?|#|$)/i.test(String(model))) return { url: String(model), name: undefined };
  const ids = MODELS.map((m) => m.id).join(', ');
  throw new KvChatError(`unknown model ${model}: use a built-in model (${ids}) or a .gguf URL`, 'invalid-option');
}

/**
 * @param {string} model
 * @param {{ initProgressCallback?: (r: { progress: number, text: string, timeElapsed: number }) => void,
 *   kvchat?: object }} [engineConfig] `kvchat`: kvchat's own load options (backend, kvWindow, ...).
 */
export async function CreateMLCEngine(model, engineConfig = {}) {
  const { url, name } = modelSource(model);
  const t0 = performance.now();
  const report = engineConfig.initProgressCallback;
  const llm = await KvChat.load({
    ...engineConfig.kvchat,
    model: url,
    onProgress: ({ phase, loaded, total }) => {
      const progress = total ? loaded / total : 0;
      const text = phase === 'init' ? 'Starting the engine' : `${phase === 'cache' ? 'Reading the cache' : 'Downloading'}: ${(loaded / 2 ** 20).toFixed(1)} of ${(total / 2 ** 20).toFixed(1)} MiB`;
      report?.({ progress: phase === 'init' ? 1 : progress, text, timeElapsed: (performance.now() - t0) / 1000 });
    },
  });
  if (name) llm.modelName = name;
  report?.({ progress: 1, text: 'Ready', timeElapsed: (performance.now() - t0) / 1000 });
  return new MLCEngineOnKvChat(llm);
}

/** The subset of WebLLM's MLCEngine an app calls, over one KvChat. */
class MLCEngineOnKvChat {
  #llm;
  #abort = null;
  constructor(llm) {
    this.#llm = llm;
    this.chat = { completions: { create: (request) => this.#create(request) } };
  }
  /** The KvChat underneath (kvchat's own API: stats, sessions, batches). */
  get kvchat() { return this.#llm; }

  async #create(request) {
    this.#abort = new AbortController();
    return this.#llm.chat.completions.create(request, { signal: this.#abort.signal });
  }
  /** Stops the generation in flight (its request rejects with an AbortError). */
  interruptGenerate() { this.#abort?.abort(); }
  /** Forgets the conversation (the KV cache). */
  async resetChat() { await this.#llm.reset(); }
  async unload() { await this.#llm.dispose(); }
  /** The last request's speeds, as WebLLM words them. */
  async runtimeStatsText() {
    const s = await this.#llm.stats();
    return `prefill: ${s.prefillTokensPerSec.toFixed(1)} tok/s, decoding: ${s.decodeTokensPerSec.toFixed(1)} tok/s`;
  }
}
