// The cold KV tier in a real browser: with a 128-token window the model forgets a
// pass key stated 600 tokens earlier; with kvCold it recalls it (the same case as
// tests/cold_tier.rs natively). The cold tier runs on the CPU backend: asking for
// 'auto' loads there and says why.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { serve, browser, watch } from './harness.mjs';

let srv, b;
before(async () => {
  srv = await serve({ KVCHAT_NO_ISOLATION: '1' });
  b = await browser();
});
after(async () => { await b?.close(); srv?.close(); });

function passKeyPrompt(fill, before, key) {
  const intro = 'There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about the important information there.\n';
  const filler = 'The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ';
  const fact = `The pass key is ${key}. Remember it. ${key} is the pass key. `;
  return `${intro}${filler.repeat(before)}${fact}${filler.repeat(fill - before)}\nWhat is the pass key? The pass key is`;
}

test('the pass key comes back from the cold tier in the browser', async () => {
  const page = await b.newPage();
  const errors = watch(page);
  await page.goto(`${srv.url}/index.html`);
  const key = '58213';
  const got = await page.evaluate(async ({ prompt }) => {
    const { KvChat } = await import('/www/kvchat.js');
    const run = async (extra) => {
      const llm = await KvChat.load({ cache: false, simd: 'relaxed', threads: 1, kvWindow: 128, ...extra });
      let text = '';
      for await (const piece of llm.generate(prompt, { maxTokens: 6, temperature: 0 })) text += piece;
      const stats = await llm.stats();
      await llm.dispose();
      return { text, stats };
    };
    return { plain: await run({ backend: 'cpu' }), cold: await run({ backend: 'auto', kvCold: 1024, kvRecall: 128 }) };
  }, { prompt: passKeyPrompt(25, 2, key) });
  console.log(`plain window: ${JSON.stringify(got.plain.text)}; with the cold tier: ${JSON.stringify(got.cold.text)}; cold stats ${JSON.stringify(got.cold.stats.kv.cold)}`);
  assert.ok(!got.plain.text.includes(key), 'the plain 128-token window forgets the key');
  assert.ok(got.cold.text.includes(key), `the cold tier recalls it: ${got.cold.text}`);
  const cold = got.cold.stats.kv.cold;
  assert.equal(got.cold.stats.backend, 'cpu');
  assert.equal(cold.capacity, 1024);
  assert.equal(cold.recalledTokens, 128);
  assert.ok(cold.used >= 480 && cold.loads > 0 && cold.bytes > 0, JSON.stringify(cold));
  assert.equal(got.plain.stats.kv.cold, undefined);
  assert.deepEqual(errors, []);
  await page.close();
});

test('a saved session survives a page reload: the next turn prefills only its new tokens', async () => {
  const page = await b.newPage();
  const errors = watch(page);
  await page.goto(`${srv.url}/index.html`);
  const messages = [{ role: 'user', content: 'Name three colors.' }];
  const opts = { cache: false, simd: 'relaxed', threads: 1, backend: 'cpu', kvWindow: 256, kvCold: 1024, kvRecall: 128 };
  const first = await page.evaluate(async ({ messages, opts }) => {
    const { KvChat } = await import('/www/kvchat.js');
    const llm = await KvChat.load(opts);
    let text = '';
    for await (const piece of llm.generate(messages, { maxTokens: 40, temperature: 0 })) text += piece;
    const bytes = await llm.saveSession('e2e');
    const next = [...messages, { role: 'assistant', content: text }, { role: 'user', content: 'And three animals?' }];
    let kept = '';
    for await (const piece of llm.generate(next, { maxTokens: 24, temperature: 0 })) kept += piece;
    const stats = await llm.stats();
    await llm.dispose();
    return { text, bytes, next, kept, stats };
  }, { messages, opts });
  await page.reload();
  const second = await page.evaluate(async ({ next, opts }) => {
    const { KvChat } = await import('/www/kvchat.js');
    const llm = await KvChat.load(opts);
    // One short generation first, as the uninterrupted engine had its first turn: the wasm
    // code is then as warm in both, and the times to first token compare.
    for await (const piece of llm.generate('Hi', { maxTokens: 1, temperature: 0 })) void piece;
    const errors = [];
    for (const name of ['no-such-session', '../x']) {
      try { await llm.restoreSession(name); } catch (e) { errors.push(e.kind); }
    }
    await llm.restoreSession('e2e');
    let text = '';
    for await (const piece of llm.generate(next, { maxTokens: 24, temperature: 0 })) text += piece;
    const stats = await llm.stats();
    const deleted = await llm.deleteSession('e2e');
    await llm.dispose();
    return { text, stats, errors, deleted };
  }, { next: first.next, opts });
  console.log(`session of ${first.bytes} bytes; after the reload: ${second.stats.promptTokens - second.stats.reusedTokens} new prompt tokens (uninterrupted: ${first.stats.promptTokens - first.stats.reusedTokens}), time to first token ${second.stats.timeToFirstTokenMs.toFixed(1)} ms (uninterrupted ${first.stats.timeToFirstTokenMs.toFixed(1)} ms)`);
  assert.equal(second.text, first.kept, 'the restored cache continues with the same tokens');
  assert.equal(second.stats.reusedTokens, first.stats.reusedTokens);
  assert.deepEqual(second.errors, ['session', 'invalid-option']);
  assert.equal(second.deleted, true);
  assert.deepEqual(errors, []);
  await page.close();
});

test("the page's Memory tab colors each token by where its keys and values live and marks what the last token recalled", async () => {
  const page = await b.newPage();
  const errors = watch(page);
  await page.goto(`${srv.url}/index.html`);
  const ready = '[data-testid=progress][data-state=ready]';
  await page.waitForSelector(ready, { timeout: 120_000 });
  // By default (an empty field: auto) the page keeps a cold tier of 8192 tokens where the
  // model runs on the CPU, as it does here (headless Chromium has only a software adapter).
  assert.equal(await page.inputValue('.settings-form [name=kvCold]'), '');
  await page.waitForFunction(() => document.querySelector('[data-stat=kv-cold]')?.textContent.includes('/ 8192 tokens'), null, { timeout: 10_000 });
  // And an f16 window there (auto). The KV line counts every byte of the cache, the cold
  // line the cold store's: the rest is the window (2,048 tokens x 30 layers x 2 x 192 channels,
  // 45 MiB in f16, 90 in f32) and the recalled rows (512 per layer and KV head: bf16 keys, 5.63 MiB,
  // values as one-byte codes with an f32 min and step per row, 3.16 MiB).
  assert.equal(await page.inputValue('.settings-form [name=kvF16]'), 'auto');
  const [kvMib, coldMib] = await page.evaluate(() => ['kv', 'kv-cold'].map((s) => Number(document.querySelector(`[data-stat=${s}]`).textContent.match(/([\d.]+) MiB/)[1])));
  console.log(`default cache on the CPU: ${kvMib} MiB, of which the cold store ${coldMib} MiB`);
  assert.ok(Math.abs(kvMib - coldMib - 53.8) < 1, `the page's default CPU window is f16 (${kvMib} - ${coldMib} MiB)`);
  for (const [name, value] of Object.entries({ kvWindow: 128, kvCold: 1024, kvRecall: 128, temperature: 0, maxTokens: 6 })) {
    await page.fill(`.settings-form [name=${name}]`, String(value));
  }
  await page.selectOption('.settings-form [name=backend]', 'cpu');
  await page.click('.reload');
  await page.waitForSelector(ready, { timeout: 120_000 });
  const key = '58213';
  await page.fill('[data-testid=prompt]', passKeyPrompt(25, 2, key));
  await page.press('[data-testid=prompt]', 'Enter');
  await page.waitForSelector('.msg.assistant');
  await page.waitForFunction(() => !document.querySelector('.msg.assistant.streaming'), null, { timeout: 120_000 });
  await page.click('[data-testid=memory-tab]');
  await page.waitForSelector('.memory-text .tok');
  // One more refresh after the tab opened settles any request from the generation's last moments.
  await page.waitForTimeout(300);
  const seen = await page.evaluate(() => {
    const toks = [...document.querySelectorAll('.memory-text .tok')];
    const tiers = {};
    for (const t of toks) for (const c of ['sink', 'window', 'cold', 'pending', 'dropped']) if (t.classList.contains(c)) tiers[c] = (tiers[c] ?? 0) + 1;
    const recalled = toks.filter((t) => t.classList.contains('recalled'));
    return {
      count: toks.length,
      tiers,
      text: toks.map((t) => t.textContent).join(''),
      firstTier: toks[0].className,
      lastTier: toks[toks.length - 1].className,
      recalled: recalled.length,
      recalledText: recalled.map((t) => t.textContent).join(''),
      summary: document.querySelector('[data-testid=memory-summary]').textContent,
      chatHidden: document.querySelector('[data-testid=output]').hidden,
      kv: document.querySelector('[data-stat=kv]').textContent,
    };
  });
  console.log(`memory tab: ${seen.count} tokens ${JSON.stringify(seen.tiers)}; ${seen.summary}; recalled text ${JSON.stringify(seen.recalledText.slice(0, 200))}`);
  assert.ok(seen.chatHidden, 'the memory view replaces the chat log while its tab is open');
  assert.ok(seen.text.includes(`The pass key is ${key}`) && seen.text.includes('What is the pass key?'), 'the tokens spell the conversation');
  assert.match(seen.firstTier, /\bsink\b/);
  assert.match(seen.lastTier, /\bwindow\b/);
  assert.equal(seen.tiers.sink, 4);
  assert.equal(seen.tiers.window, 124, 'the window holds kvWindow - sinks tokens');
  assert.ok(seen.tiers.cold >= 480, `the cold tier holds what left the window (${JSON.stringify(seen.tiers)})`);
  const [used] = seen.kv.split('/').map((s) => Number(s.trim()));
  assert.equal(used, 128);
  assert.ok(seen.recalled >= 32 && seen.recalled % 32 === 0 && seen.recalled <= seen.tiers.cold, `the last token recalled whole cold blocks (${seen.recalled})`);
  assert.match(seen.summary, /recalled \d+ cold blocks? \(\d+–\d+/);
  assert.ok(seen.recalledText.includes(key), "the block holding the key is among those the last token recalled");
  assert.deepEqual(errors, []);
  await page.close();
});
