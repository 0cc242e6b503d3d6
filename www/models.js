// The built-in models: what the page offers before anything is downloaded.
// `file` lies in models/ next to www/ (`make model models` fetches them);
// `chat` is false for a base model, which has no chat template and only continues text.

const APACHE = 'https://www.apache.org/licenses/LICENSE-2.0';

/** @type {readonly import('./kvchat.js').CatalogueModel[]} */
export const MODELS = Object.freeze([
  {
    id: 'smollm2-135m', name: 'SmolLM2-135M-Instruct', quant: 'Q4_1',
    file: 'SmolLM2-135M-Instruct.Q4_1.gguf', bytes: 98_362_432,
    license: 'Apache-2.0', licenseUrl: APACHE, chat: true,
  },
  {
    id: 'qwen2.5-coder-0.5b', name: 'Qwen2.5-Coder-0.5B-Instruct', quant: 'Q4_K_M',
    file: 'qwen2.5-coder-0.5b-instruct-q4_k_m.gguf', bytes: 491_400_064,
    license: 'Apache-2.0', licenseUrl: APACHE, chat: true,
  },
  {
    id: 'gemma-3-270m', name: 'Gemma 3 270M (base)', quant: 'Q4_K_M',
    file: 'gemma-3-270m-q4_k_m.gguf', bytes: 253_113_024,
    license: 'Gemma Terms of Use', licenseUrl: 'https://ai.google.dev/gemma/terms', chat: false,
  },
].map(Object.freeze));

/** The absolute URL of a built-in model's file. */
export const modelUrl = (m) => new URL(`../models/${m.file}`, import.meta.url).href;
