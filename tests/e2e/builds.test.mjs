// The wasm builds (relaxed SIMD, plain simd128, and the threaded one on a
// cross-origin-isolated page) compute the same integer block sums in the same
// float order, so their greedy text must be identical.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { serve, browser, watch } from './harness.mjs';

let srv, b;
before(async () => { srv = await serve(); b = await browser(); });
after(async () => { await b?.close(); srv?.close(); });

test('relaxed-SIMD, simd128 and threaded builds give the same greedy text', async () => {
  const page = await b.newPage();
  const errors = watch(page);
  await page.goto(`${srv.url}/index.html`);
  const runs = await page.evaluate(async () => {
    const { KvChat } = await import('/www/kvchat.js');
    const out = [];
    for (const opts of [{ simd: 'relaxed', threads: 1 }, { simd: 'baseline', threads: 1 }, { threads: 2 }]) {
      const llm = await KvChat.load({ cache: false, ...opts });
      let text = '';
      const messages = [{ role: 'user', content: 'Name three colors of the rainbow.' }];
      for await (const piece of llm.generate(messages, { maxTokens: 24, temperature: 0, ignoreEos: true })) text += piece;
      const s = await llm.stats();
      out.push({ opts, text, simd: s.simd, threads: s.threads, decode: s.decodeTokensPerSec });
      await llm.dispose();
    }
    return { out, isolated: crossOriginIsolated, cores: navigator.hardwareConcurrency };
  });
  console.log(JSON.stringify(runs));
  const [relaxed, baseline, threaded] = runs.out;
  assert.equal(relaxed.simd, 'relaxed-simd');
  assert.equal(baseline.simd, 'simd128');
  assert.ok(relaxed.text.length > 20, relaxed.text);
  assert.equal(baseline.text, relaxed.text);
  assert.equal(threaded.text, relaxed.text);
  if (runs.isolated && runs.cores > 1) assert.equal(threaded.threads, 2, 'an isolated page with 2 cores runs the threaded build');
  assert.deepEqual(errors, []);
});
