// Batch generation in the browser: the JS API's generateBatch gives every input
// the text it gets alone, and the page's batch tab fills in results with tokens/s.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { serve, browser, watch } from './harness.mjs';

let srv, b;
before(async () => { srv = await serve(); b = await browser(); });
after(async () => { await b?.close(); srv?.close(); });

test('generateBatch: each input equals its single greedy run; per-input options; abort', async () => {
  const page = await b.newPage();
  const errors = watch(page);
  await page.goto(`${srv.url}/index.html`);
  const r = await page.evaluate(async () => {
    const { KvChat } = await import('/www/kvchat.js');
    const llm = await KvChat.load({ cache: false, threads: 1 });
    const sys = { role: 'system', content: 'You are a helpful assistant. Answer briefly.' };
    const qs = ['What is 2 + 2?', 'Name a planet.', 'What do bees make?', 'Say hello in French.', 'What is ice made of?'];
    const inputs = qs.map((q) => [sys, { role: 'user', content: q }]);
    inputs[4] = { input: inputs[4], maxTokens: 5 };
    const opts = { maxTokens: 20, temperature: 0, ignoreEos: true, batchSize: 3 };
    const streamed = qs.map(() => '');
    const done = [];
    for await (const ev of llm.generateBatch(inputs, opts)) {
      if (ev.done) done[ev.index] = ev; else streamed[ev.index] += ev.piece;
    }
    const stats = llm.lastBatchStats;
    const alone = [];
    for (let i = 0; i < qs.length; i++) {
      await llm.reset();
      let t = '';
      const input = i === 4 ? inputs[4].input : inputs[i];
      for await (const p of llm.generate(input, { ...opts, maxTokens: i === 4 ? 5 : 20 })) t += p;
      alone.push(t);
    }
    // Abort in the middle of a batch; the engine stays usable.
    const ctrl = new AbortController();
    let aborted = false;
    try {
      let n = 0;
      for await (const _ of llm.generateBatch(inputs.slice(0, 4), { ...opts, maxTokens: 200, signal: ctrl.signal })) if (++n === 5) ctrl.abort();
    } catch (e) { aborted = e.name === 'AbortError'; }
    let after = '';
    for await (const p of llm.generate('The sky is', { maxTokens: 4, temperature: 0 })) after += p;
    await llm.dispose();
    return { done, streamed, alone, stats, aborted, after };
  });
  for (let i = 0; i < 5; i++) {
    assert.equal(r.done[i].text, r.alone[i], `input ${i}`);
    assert.equal(r.streamed[i] , r.done[i].text.slice(0, r.streamed[i].length), `input ${i} streamed a prefix of its text`);
  }
  assert.equal(r.done[4].generatedTokens, 5);
  assert.equal(r.stats.sequences, 5);
  assert.equal(r.stats.batchSize, 3);
  assert.ok(r.stats.sharedPrefixTokens > 10, `shared prefix ${r.stats.sharedPrefixTokens}`);
  assert.ok(r.stats.decodeTokensPerSec > 0);
  assert.ok(r.aborted, 'the batch aborted');
  assert.ok(r.after.length > 0, 'the engine works after an aborted batch');
  assert.deepEqual(errors, []);
});

test('the batch tab runs an instruction over lines and shows aggregate tokens/s', async () => {
  const page = await b.newPage();
  const errors = watch(page);
  await page.goto(`${srv.url}/index.html`);
  await page.waitForSelector('[data-testid=progress][data-state=ready]', { timeout: 120_000 });
  await page.click('[data-testid=batch-tab]');
  await page.fill('.settings-form [name=maxTokens]', '12');
  await page.fill('.settings-form [name=temperature]', '0');
  await page.click('[data-testid=batch-run]');
  await page.waitForFunction(() => document.querySelectorAll('[data-testid=batch-results] li.done').length === 4, null, { timeout: 120_000 });
  const answers = await page.$$eval('[data-testid=batch-results] li .answer', (els) => els.map((e) => e.textContent));
  assert.equal(answers.length, 4);
  for (const a of answers) assert.ok(a.trim().length > 0, 'every line got an answer');
  const summary = await page.textContent('[data-testid=batch-summary]');
  assert.match(summary, /4 \/ 4 done/);
  assert.match(summary, /tok\/s batched decode/);
  assert.deepEqual(errors, []);
});
