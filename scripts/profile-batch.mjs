// Where a batched decode token's time goes in headless Chromium (relaxed SIMD, one thread):
// eight chat prompts, 48 greedy tokens each, at each batch size, with `llm.profile()` around
// generateBatch (ms per token, prefill included). One JSON line per batch size.
// Usage: node scripts/profile-batch.mjs [sizes, default 1,8]
import { serve, browser } from '../tests/e2e/harness.mjs';
const sizes = (process.argv[2] || '1,8').split(',').map(Number);
const questions = ['What is the capital of France?', 'Name a yellow fruit.', 'How many legs does a spider have?', 'What color is the sky?','What do bees make?', 'Name a planet.', 'What is ice made of?', 'Say hello in Spanish.'];
const system = { role: 'system', content: 'You are a concise assistant. Answer each question in one short sentence.' };
const inputs = questions.map((q) => [system, { role: 'user', content: q }]);
const srv = await serve(); const br = await browser();
try {
  const page = await br.newPage();
  await page.goto(`${srv.url}/index.html`);
  const rows = await page.evaluate(async ({ inputs, sizes }) => {
    const { KvChat } = await import('/www/kvchat.js');
    const llm = await KvChat.load({ cache: false, threads: 1 });
    const out = [];
    for await (const _ of llm.generateBatch(inputs.slice(0, 2), { maxTokens: 4, temperature: 0 })) {}
    for (const b of sizes) {
      await llm.profile(true);
      for await (const _ of llm.generateBatch(inputs, { maxTokens: 48, temperature: 0, ignoreEos: true, batchSize: b })) {}
      const p = await llm.profile(); await llm.profile(false);
      const s = llm.lastBatchStats;
      out.push({ batch: b, decode_tokens_per_sec: s.decodeTokensPerSec, tokens_per_sec: s.tokensPerSec, backend: s.backend, ms_per_token: p.msPerToken });
    }
    await llm.dispose();
    return out;
  }, { inputs, sizes });
  for (const r of rows) console.log(JSON.stringify(r));
} finally { await br.close(); srv.close(); }
