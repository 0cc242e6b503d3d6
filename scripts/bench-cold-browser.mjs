// The cold KV tier's decode cost in headless Chromium (issue 17's decode target, in the browser):
// the pass-key text of scripts/bench-passkey.py (~3.7k tokens, the key at 50%) prefilled, then 64
// greedy tokens, window 512 against window 512 + cold tier (recall 512), alternated for `rounds`
// rounds in one page each (wasm build `relaxed`, one thread). Prints one JSON line per run and
// the medians with decode cold / plain; the answer to the pass-key question is checked too.
// `same-keys` as a third argument adds a plain window of 1,028 tokens to each round: it attends over
// as many keys per step as window 512 + recall 512 (516 + 512), the cold tier's floor.
// `cold4` adds the cold tier at 4 bits (`kvColdBits: 4`); `f16` gives every setting an f16 cache.
// Usage: node scripts/bench-cold-browser.mjs [rounds, default 2] [simd, default relaxed] [same-keys] [cold4]
import { serve, browser } from '../tests/e2e/harness.mjs';

const rounds = Number(process.argv[2] || 2);
const simd = process.argv[3] || 'relaxed';
const KEY = 58213;
const INTRO = 'There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about the important information there.\n';
const FILLER = 'The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ';
// bench-passkey.py's prompt(3737, 0.5, KEY): 67 tokens of frame, 24 per filler repetition.
const fill = Math.floor((3737 - 67) / 24);
const before = Math.floor(fill * 0.5);
const fact = `The pass key is ${KEY}. Remember it. ${KEY} is the pass key. `;
const prompt = INTRO + FILLER.repeat(before) + fact + FILLER.repeat(fill - before) + '\nWhat is the pass key? The pass key is';
const SETTINGS = { plain: { kvWindow: 512 }, cold: { kvWindow: 512, kvCold: 16384, kvRecall: 512 } };
const extra = process.argv.slice(4);
if (extra.includes('same-keys')) SETTINGS.same_keys = { kvWindow: 1028 };
if (extra.includes('cold4')) SETTINGS.cold4 = { ...SETTINGS.cold, kvColdBits: 4 };
if (extra.includes('f16')) for (const kv of Object.values(SETTINGS)) kv.kvF16 = true;

const srv = await serve();
const b = await browser();
const rows = [];
try {
  for (let round = 0; round < rounds; round++) {
    for (const [setting, kv] of Object.entries(SETTINGS)) {
      const page = await b.newPage();
      await page.goto(`${srv.url}/index.html`);
      const r = await page.evaluate(async ({ prompt, simd, kv, key }) => {
        const { KvChat } = await import('/www/kvchat.js');
        const llm = await KvChat.load({ cache: false, simd, threads: 1, backend: 'cpu', ...kv });
        let text = '';
        for await (const piece of llm.generate(prompt, { maxTokens: 64, temperature: 0, ignoreEos: true })) text += piece;
        const s = await llm.stats();
        await llm.dispose();
        return { prompt_tokens: s.promptTokens, prefill_tokens_per_sec: s.prefillTokensPerSec, decode_tokens_per_sec: s.decodeTokensPerSec, wasm_memory_mb: s.wasmMemoryBytes / 1e6, answers_the_key: text.slice(0, 12).includes(String(key)) };
      }, { prompt, simd, kv, key: KEY });
      const row = { round, setting, simd, ...r };
      rows.push(row);
      console.log(JSON.stringify(row));
      await page.close();
    }
  }
} finally {
  await b.close();
  srv.close();
}
const median = (setting, k) => { const v = rows.filter((r) => r.setting === setting).map((r) => r[k]).sort((a, b) => a - b); return v[Math.floor((v.length - 1) / 2)]; };
const plain = median('plain', 'decode_tokens_per_sec');
const cold = median('cold', 'decode_tokens_per_sec');
const summary = { decode_plain: plain, decode_cold: cold, decode_cold_over_plain: +(cold / plain).toFixed(3), wasm_memory_mb: { plain: median('plain', 'wasm_memory_mb'), cold: median('cold', 'wasm_memory_mb') } };
if (SETTINGS.cold4) {
  summary.decode_cold4 = median('cold4', 'decode_tokens_per_sec');
  summary.decode_cold4_over_plain = +(summary.decode_cold4 / plain).toFixed(3);
  summary.wasm_memory_mb.cold4 = median('cold4', 'wasm_memory_mb');
}
if (SETTINGS.same_keys) {
  summary.decode_same_keys = median('same_keys', 'decode_tokens_per_sec');
  summary.decode_same_keys_over_plain = +(summary.decode_same_keys / plain).toFixed(3);
}
console.log(JSON.stringify(summary));
