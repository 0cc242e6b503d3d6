// Decode speed as the conversation grows, in headless Chromium through the public JS API
// (relaxed SIMD, one thread): the fixed 128-token prompt once and repeated 14 times
// (~1,800 tokens), then 48 greedy tokens, with the f32 and the f16 KV cache. Prints one
// JSON line per configuration with decode tokens/s and attention ms per token
// (KvChat.profile(); the few new prompt tokens of the turn are included), and the time the
// context's prefill took (from an empty cache, through the public API).
// Usage: node scripts/bench-long-context.mjs
import { readFileSync } from 'node:fs';
import { serve, browser } from '../tests/e2e/harness.mjs';

const base = readFileSync('tests/fixtures/bench-prompt.txt', 'utf8');
const srv = await serve();
const br = await browser();
try {
  const page = await br.newPage();
  await page.goto(`${srv.url}/index.html`);
  const rows = await page.evaluate(async ({ base }) => {
    const { KvChat } = await import('/www/kvchat.js');
    const out = [];
    for (const kvF16 of [false, true]) {
      const llm = await KvChat.load({ cache: false, threads: 1, kvF16 });
      for (const reps of [1, 14]) {
        const prompt = Array(reps).fill(base).join('\n');
        await llm.reset();
        const filling = performance.now();
        for await (const _ of llm.generate(prompt, { maxTokens: 0, temperature: 0 })) { /* fill the cache */ }
        const fillMs = performance.now() - filling;
        await llm.profile(true);
        // The same text plus a word: the cached prefix is reused, then 48 decode steps.
        for await (const _ of llm.generate(prompt + ' And', { maxTokens: 48, temperature: 0, ignoreEos: true })) { /* drain */ }
        const p = await llm.profile();
        const s = await llm.stats();
        out.push({ engine: 'kvchat-browser', simd: s.simd, threads: s.threads, kv_cache: kvF16 ? 'f16' : 'f32', context_tokens: s.promptTokens,
          decode_tokens_per_sec: s.decodeTokensPerSec, attention_ms_per_token: p.msPerToken.attention, context_prefill_ms: Math.round(fillMs) });
      }
      await llm.dispose();
    }
    return out;
  }, { base });
  for (const r of rows) console.log(JSON.stringify(r));
} finally {
  await br.close();
  srv.close();
}
