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

// A first `make serve` serves as soon as the simd128 build exists and compiles the other two in
// the background: until they appear (404 here), the page runs on simd128 and one thread; asking
// for a missing build by name is a typed error, and the engine loads afterwards.
test('with only the simd128 build there, the page runs on it; a missing build asked for by name is unsupported', async () => {
  const ctx = await b.newContext();
  const missing = [];
  await ctx.route(/\/(pkg\/kvchat_relaxed_bg\.wasm|pkg-threads\/.*)$/, (route) => {
    missing.push(new URL(route.request().url()).pathname);
    return route.fulfill({ status: 404, body: 'not built yet' });
  });
  const page = await ctx.newPage();
  const errors = watch(page);
  await page.goto(`${srv.url}/index.html`);
  const run = await page.evaluate(async () => {
    const { KvChat } = await import('/www/kvchat.js');
    const out = {};
    for (const [name, opts] of [['askRelaxed', { simd: 'relaxed', threads: 1 }], ['askThreads', { threads: 2 }]]) {
      out[name] = await KvChat.load({ cache: false, ...opts }).then(() => 'loaded', (e) => `${e.kind}: ${e.message}`);
    }
    const llm = await KvChat.load({ cache: false });
    let text = '';
    for await (const piece of llm.generate('The capital of France is', { maxTokens: 8, temperature: 0 })) text += piece;
    const s = await llm.stats();
    await llm.dispose();
    return { ...out, text, simd: s.simd, threads: s.threads, isolated: crossOriginIsolated };
  });
  console.log(JSON.stringify({ ...run, missing }));
  assert.match(run.askRelaxed, /^unsupported: .*relaxed-SIMD build/);
  if (run.isolated) assert.match(run.askThreads, /^unsupported: .*threaded build/);
  assert.equal(run.simd, 'simd128');
  assert.equal(run.threads, 1);
  assert.ok(run.text.length > 0);
  assert.ok(missing.includes('/pkg/kvchat_relaxed_bg.wasm'), 'the worker looked for the relaxed build');
  // The browser logs each 404 it was served; nothing else may go wrong.
  assert.deepEqual(errors.filter((e) => !/404|Failed to load resource|Failed to fetch dynamically imported module/.test(e)), []);
  await ctx.close();
});
