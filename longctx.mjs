import { readFileSync } from 'node:fs';
import { serve, browser } from './tests/e2e/harness.mjs';
const base = readFileSync('tests/fixtures/bench-prompt.txt', 'utf8');
const srv = await serve(); const br = await browser();
const page = await br.newPage(); await page.goto(`${srv.url}/index.html`);
const r = await page.evaluate(async ({ base }) => {
  const { KvChat } = await import('/www/kvchat.js');
  const out = {};
  for (const kvF16 of [false, true]) {
    const llm = await KvChat.load({ cache: false, threads: 1, kvF16 });
    for (const reps of [1, 14]) {
      const prompt = Array(reps).fill(base).join('\n');
      await llm.reset();
      await llm.profile(true);
      for await (const _ of llm.generate(prompt, { maxTokens: 0, temperature: 0 })) {}
      await llm.profile(true);
      for await (const _ of llm.generate(prompt + ' And', { maxTokens: 48, temperature: 0, ignoreEos: true })) {}
      const p = await llm.profile(); const s = await llm.stats();
      out[`f16=${kvF16} reps=${reps}`] = { ctx: s.cacheTokens ?? s.kvTokens, decode: s.decodeTokensPerSec, attention: p.msPerToken.attention, total: Object.values(p.msPerToken).reduce((a, b) => a + b, 0) };
    }
    await llm.dispose();
  }
  return out;
}, { base });
console.log(JSON.stringify(r, null, 1));
await br.close(); srv.close();
