// End-to-end tests in headless Chromium (playwright-core driving /usr/bin/chromium):
// the demo page, the JS API, the <kv-chat> embed, the strict CSP, and a long run.
// Run with `node --test tests/e2e/` after `make build`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { serve, browser, watch, isEngineWorker } from './harness.mjs';

let srv, cspSrv, b;
before(async () => {
  srv = await serve();
  cspSrv = await serve({ KVCHAT_CSP: '1', KVCHAT_NO_ISOLATION: '1' });
  b = await browser();
});
after(async () => { await b?.close(); srv?.close(); cspSrv?.close(); });

const READY = '[data-testid=progress][data-state=ready]';

async function openDemo(ctx, base, query = '') {
  const page = await ctx.newPage();
  const errors = watch(page);
  const requests = [];
  page.on('request', (r) => requests.push(`${r.method()} ${r.url()}`));
  await page.goto(`${base}/index.html${query}`);
  await page.waitForSelector(READY, { timeout: 120_000 });
  return { page, errors, requests };
}

async function setField(page, name, value) {
  await page.fill(`.settings-form [name=${name}]`, String(value));
}

async function ask(page, text) {
  const before = await page.locator('.msg.assistant').count();
  await page.fill('[data-testid=prompt]', text);
  await page.press('[data-testid=prompt]', 'Enter');
  await page.waitForFunction((n) => document.querySelectorAll('.msg.assistant').length > n, before);
  return page.locator('.msg.assistant').nth(before);
}

const idle = (page) => page.waitForFunction(() => !document.querySelector('.msg.assistant.streaming'), null, { timeout: 300_000 });

test('the demo page loads, streams an answer, stops, starts a new chat, and reloads from the cache', async () => {
  const ctx = await b.newContext();
  const { page, errors, requests } = await openDemo(ctx, srv.url);
  assert.match(await page.textContent('.progress-label'), /ready \(downloaded/);
  assert.ok(requests.some((r) => /^GET .*\.gguf$/.test(r)), 'the model was downloaded');

  // A streamed answer: the text grows while the model generates.
  await setField(page, 'maxTokens', 48);
  await setField(page, 'temperature', 0);
  const answer = await ask(page, 'What is the capital of France?');
  const lengths = [];
  while (await page.locator('.msg.assistant.streaming').count()) {
    lengths.push((await answer.textContent()).length);
    await page.waitForTimeout(150);
  }
  const text = await answer.textContent();
  assert.ok(text.length > 0, 'an answer appeared');
  assert.ok(new Set(lengths.filter((n) => n > 0)).size > 1, `the answer streamed in pieces (${lengths})`);
  // The stats refresh after the answer ends (a short answer may end before their timer fires).
  await page.waitForFunction(() => /decode\s*[\d.]+ tok\/s/.test(document.querySelector('[data-testid=stats]').textContent));
  const stats = await page.textContent('[data-testid=stats]');
  assert.match(stats, /decode\s*[\d.]+ tok\/s/);
  assert.match(stats, /\d+ \/ 2048 tokens · 4 sinks · 0 evicted/);

  // Stop a long generation (greedy: a sampled story could end before the click).
  await setField(page, 'maxTokens', 2000);
  const long = await ask(page, 'Write a very long story about a dragon.');
  await page.waitForFunction((el) => el.textContent.length > 20, await long.elementHandle());
  await page.click('[data-testid=stop]');
  await idle(page);
  assert.ok(await page.locator('.msg.note', { hasText: 'stopped' }).count(), 'the page says it stopped');
  assert.equal(await page.isEnabled('[data-testid=send]'), true);
  const stopped = (await long.textContent()).length;
  await page.waitForTimeout(500);
  assert.equal((await long.textContent()).length, stopped, 'nothing arrives after Stop');

  // The next turn reuses the cache: only new tokens are prefilled.
  await setField(page, 'maxTokens', 8);
  await ask(page, 'Thanks!');
  await idle(page);
  const tokens = await page.textContent('[data-stat=tokens]');
  const [, , reused] = tokens.split('/').map((s) => Number(s.trim()));
  assert.ok(reused > 20, `the second turn reused the cached prefix (${tokens})`);

  // New chat empties the log and the cache.
  await page.click('[data-testid=new-chat]');
  await page.waitForFunction(() => /0 \/ 2048 tokens/.test(document.querySelector('[data-stat=kv]').textContent));
  assert.equal(await page.locator('.msg').count(), 0);

  // Reload: the model comes from the Cache API, not the network.
  requests.length = 0;
  await page.reload();
  await page.waitForSelector(READY, { timeout: 120_000 });
  assert.match(await page.textContent('.progress-label'), /from cache/);
  assert.ok(!requests.some((r) => /^GET .*\.gguf$/.test(r)), 'no model download on the second visit');

  // Offline: the page's files come from the service worker, the model from the Cache API.
  await page.evaluate(() => navigator.serviceWorker.ready);
  // One shell cache, named after this build (pkg/build-id.js), holding both wasm builds and the embed.
  const shell = await page.evaluate(async () => {
    const names = (await caches.keys()).filter((n) => n.startsWith('kvchat-shell-'));
    const id = (await (await fetch('/pkg/build-id.js')).text()).match(/'([0-9a-f]+)'/)[1];
    const files = names.length === 1 ? (await (await caches.open(names[0])).keys()).map((r) => new URL(r.url).pathname) : [];
    return { names, id, files };
  });
  assert.deepEqual(shell.names, [`kvchat-shell-${shell.id}`]);
  for (const f of ['/pkg/kvchat_relaxed_bg.wasm', '/pkg/kvchat_bg.wasm', '/www/kv-chat.js']) assert.ok(shell.files.includes(f), `${f} is precached`);
  await ctx.setOffline(true);
  await page.reload();
  await page.waitForSelector(READY, { timeout: 120_000 });
  await setField(page, 'maxTokens', 6);
  const offline = await ask(page, 'Hello offline!');
  await idle(page);
  assert.ok((await offline.textContent()).length > 0, 'it answers offline');
  await ctx.setOffline(false);
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('model output and user text are inserted as text, never as HTML', async () => {
  const ctx = await b.newContext();
  const { page, errors } = await openDemo(ctx, srv.url);
  let dialogs = 0;
  page.on('dialog', (d) => { dialogs++; d.dismiss(); });
  await setField(page, 'maxTokens', 40);
  await setField(page, 'temperature', 0);
  const payload = '<img src=x onerror=alert(1)>';
  const answer = await ask(page, `Repeat exactly this HTML tag: ${payload} ${payload}`);
  await idle(page);
  assert.equal(await page.locator('.log img').count(), 0, 'no element was created from text');
  assert.match(await page.textContent('.msg.user'), /<img src=x onerror=alert\(1\)>/);
  const said = await answer.textContent();
  console.log(`  the model answered: ${JSON.stringify(said)}`);
  // With greedy decoding this model answers with markup of its own; it must show up as text.
  assert.match(said, /<[a-z]+[ >]/, 'the model printed markup');
  assert.equal(await page.locator('.log *:not(.msg)').count(), 0, 'only text inside the messages');
  assert.equal(dialogs, 0);
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('the JS API: tokenize, options, errors, abort, one generation at a time, dispose', async () => {
  const ctx = await b.newContext();
  const page = await ctx.newPage();
  const errors = watch(page);
  await page.goto(`${srv.url}/index.html`);
  await page.waitForSelector(READY, { timeout: 120_000 });
  const r = await page.evaluate(async () => {
    const { KvChat, KvChatError } = await import('/www/kvchat.js');
    const out = {};
    const err = async (f) => { try { await f(); return 'no error'; } catch (e) { return { name: e.name, kind: e.kind, message: e.message }; } };
    out.missing = await err(() => KvChat.load({ model: '/models/nope.gguf' }));
    out.notGguf = await err(() => KvChat.load({ model: '/index.html' }));
    out.webgpu = await err(() => KvChat.load({ backend: 'webgpu' }));
    out.smallWindow = await err(() => KvChat.load({ kvWindow: 4, kvSinks: 4 }));
    const llm = await KvChat.load({ kvWindow: 512 });
    out.ids = Array.from(await llm.tokenize('<|im_start|>user\nHi'));
    const collect = async (input, opts) => { let s = ''; for await (const p of llm.generate(input, opts)) s += p; return s; };
    out.greedy1 = await collect('The capital of France is', { maxTokens: 12, temperature: 0 });
    out.greedy2 = await collect('The capital of France is', { maxTokens: 12, temperature: 0 });
    out.seeded1 = await collect('Once upon a time', { maxTokens: 12, temperature: 1, seed: 7 });
    out.seeded2 = await collect('Once upon a time', { maxTokens: 12, temperature: 1, seed: 7 });
    out.stop = await collect('1, 2, 3, 4, 5,', { maxTokens: 30, temperature: 0, stop: ['8'] });
    out.badTemp = await err(() => collect('x', { temperature: -1 }));
    out.nanTemp = await err(() => collect('x', { temperature: NaN }));
    out.negMax = await err(() => collect('x', { maxTokens: -5 }));
    out.zeroMax = await collect('x', { maxTokens: 0 });
    out.empty = await err(() => collect('', {}));
    out.badRole = await err(() => collect([{ role: 'wizard', content: 'x' }], {}));
    out.surrogate = await collect('broken \ud800 surrogate', { maxTokens: 2, temperature: 0 });
    // Abort with a signal during decode, then the engine still answers like a fresh one.
    const ac = new AbortController();
    let n = 0;
    out.aborted = await err(async () => { for await (const _ of llm.generate('Tell me a long story.', { maxTokens: 500, ignoreEos: true, seed: 3, signal: ac.signal })) { if (++n === 5) ac.abort(); } });
    out.afterAbort = await collect('The capital of France is', { maxTokens: 12, temperature: 0 });
    // Two generations at once: the second is rejected clearly.
    const first = collect('Count to twenty:', { maxTokens: 30, temperature: 0 });
    out.concurrent = await err(() => collect('x', { maxTokens: 2 }));
    out.first = (await first).length > 0;
    // Leaving the loop early stops the generation.
    for await (const _ of llm.generate('Hello', { maxTokens: 200 })) break;
    out.afterBreak = await collect('The capital of France is', { maxTokens: 12, temperature: 0 });
    // Chat messages and stats.
    await llm.reset();
    out.chat = await collect([{ role: 'user', content: 'Say hello.' }], { maxTokens: 8, temperature: 0 });
    out.stats = await llm.stats();
    await llm.dispose();
    out.afterDispose = await err(() => llm.tokenize('x'));
    out.isKvChatError = KvChatError.name;
    return out;
  });
  assert.equal(r.missing.kind, 'network');
  assert.match(r.missing.message, /404/);
  assert.equal(r.notGguf.kind, 'gguf');
  assert.match(r.notGguf.message, /not a GGUF.*HTML/);
  // This browser runs with --disable-gpu: 'webgpu' rejects clearly instead of falling back.
  assert.equal(r.webgpu.kind, 'gpu');
  assert.match(r.webgpu.message, /webgpu.*not available/i);
  assert.equal(r.smallWindow.kind, 'invalid-option');
  assert.deepEqual(r.ids, [1, 4093, 198, 26843]);
  assert.equal(r.greedy1, r.greedy2);
  assert.match(r.greedy1, /Paris/);
  assert.equal(r.seeded1, r.seeded2);
  assert.ok(!r.stop.includes('8'), r.stop);
  for (const k of ['badTemp', 'nanTemp', 'negMax']) assert.equal(r[k].kind, 'invalid-option', `${k}: ${JSON.stringify(r[k])}`);
  assert.equal(r.zeroMax, '');
  assert.equal(r.empty.kind, 'invalid-prompt');
  assert.equal(r.badRole.kind, 'invalid-prompt');
  assert.equal(typeof r.surrogate, 'string');
  assert.equal(r.aborted.name, 'AbortError');
  assert.equal(r.afterAbort, r.greedy1, 'after an abort the engine answers as before');
  assert.equal(r.concurrent.kind, 'busy');
  assert.ok(r.first);
  assert.equal(r.afterBreak, r.greedy1);
  assert.ok(r.chat.length > 0);
  assert.equal(r.stats.backend, 'cpu');
  for (const k of ['promptTokens', 'generatedTokens', 'prefillTokensPerSec', 'decodeTokensPerSec', 'timeToFirstTokenMs', 'wasmMemoryBytes']) assert.equal(typeof r.stats[k], 'number', k);
  assert.deepEqual(Object.keys(r.stats.kv).sort(), ['bytes', 'capacity', 'evicted', 'globalBytes', 'localBytes', 'localWindow', 'sinks', 'used']);
  assert.equal(r.stats.kv.capacity, 512);
  assert.ok(r.afterDispose.message);
  assert.deepEqual(errors.filter((e) => !/404|Failed to load resource/.test(e)), []);
  await ctx.close();
});

test('the <kv-chat> embed answers on a static page', async () => {
  const ctx = await b.newContext();
  const page = await ctx.newPage();
  const errors = watch(page);
  await page.goto(`${srv.url}/examples/embed.html`);
  await page.waitForFunction(() => document.querySelector('kv-chat')?.shadowRoot?.querySelector('.status')?.textContent === 'ready', null, { timeout: 120_000 });
  await page.evaluate(() => { const el = document.querySelector('kv-chat'); el.setAttribute('max-tokens', '16'); el.setAttribute('temperature', '0'); });
  const answer = await page.evaluate(() => new Promise((resolve) => {
    const el = document.querySelector('kv-chat');
    el.addEventListener('answer', (e) => resolve(e.detail), { once: true });
    el.ask('What is the capital of France?');
  }));
  assert.ok(answer.length > 0);
  assert.equal(await page.evaluate(() => document.querySelector('kv-chat').shadowRoot.querySelectorAll('.msg.assistant').length), 1);

  // Removed and put back: it loads again (one worker), and removing it mid-load stops that load's worker.
  const status = () => page.evaluate(() => document.querySelector('kv-chat')?.shadowRoot?.querySelector('.status')?.textContent);
  const engines = () => page.workers().filter(isEngineWorker).length;
  await page.evaluate(() => { const el = document.querySelector('kv-chat'); el.remove(); document.body.append(el); });
  await page.waitForFunction(() => document.querySelector('kv-chat').shadowRoot.querySelector('.status').textContent === 'ready', null, { timeout: 120_000 });
  for (let i = 0; i < 100 && engines() !== 1; i++) await page.waitForTimeout(100); // the old one ends after its dispose reply
  assert.equal(engines(), 1, 'one engine worker after a reconnect');
  const started = page.waitForEvent('worker', { predicate: isEngineWorker });
  await page.evaluate(() => { const el = document.createElement('kv-chat'); document.body.append(el); setTimeout(() => el.remove(), 50); });
  const second = await started;
  await new Promise((resolve, reject) => { second.once('close', resolve); setTimeout(() => reject(new Error('the removed element\'s worker still runs after 60 s')), 60_000); });
  assert.equal(engines(), 1, 'only the first element\'s worker is left');
  assert.equal(await status(), 'ready');

  // An embedder's origin list: a model from elsewhere is refused before any download.
  const refused = await page.evaluate(() => new Promise((resolve) => {
    const el = document.createElement('kv-chat');
    el.setAttribute('allowed-origins', 'https://models.example.org');
    el.setAttribute('model', 'https://elsewhere.example.com/m.gguf');
    el.addEventListener('error', () => resolve(el.shadowRoot.querySelector('.status').textContent), { once: true });
    document.body.append(el);
  }));
  assert.match(refused, /models from https:\/\/elsewhere\.example\.com are not allowed/);
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('the demo and the embed work under a strict Content-Security-Policy, without COOP/COEP', async () => {
  const ctx = await b.newContext();
  const violations = [];
  const { page, errors } = await openDemo(ctx, cspSrv.url);
  page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) violations.push(m.text()); });
  assert.equal(await page.evaluate(() => crossOriginIsolated), false);
  await setField(page, 'maxTokens', 8);
  const answer = await ask(page, 'Hi!');
  await idle(page);
  assert.ok((await answer.textContent()).length > 0);
  const embed = await ctx.newPage();
  const embedErrors = watch(embed);
  await embed.goto(`${cspSrv.url}/examples/embed.html`);
  await embed.waitForFunction(() => document.querySelector('kv-chat')?.shadowRoot?.querySelector('.status')?.textContent === 'ready', null, { timeout: 120_000 });
  assert.deepEqual([...errors, ...embedErrors, ...violations], []);
  await ctx.close();
});

test('a long run: window 128, 1500 tokens, the cache stays bounded and wasm memory flat', async () => {
  const ctx = await b.newContext();
  const page = await ctx.newPage();
  await page.goto(`${srv.url}/index.html`);
  await page.waitForSelector(READY, { timeout: 120_000 });
  const r = await page.evaluate(async () => {
    const { KvChat } = await import('/www/kvchat.js');
    const llm = await KvChat.load({ kvWindow: 128, kvSinks: 4 });
    const samples = [];
    let n = 0;
    for await (const _ of llm.generate('Once upon a time', { maxTokens: 1500, ignoreEos: true, temperature: 0.8, seed: 1 })) {
      if (++n % 100 === 0) { const s = await llm.stats(); samples.push({ n, used: s.kv.used, evicted: s.kv.evicted, mem: s.wasmMemoryBytes }); }
    }
    const s = await llm.stats();
    await llm.dispose();
    return { samples, final: s };
  });
  assert.equal(r.final.generatedTokens, 1500);
  assert.ok(r.samples.every((s) => s.used <= 128), JSON.stringify(r.samples));
  assert.ok(r.final.kv.evicted > 1300);
  const after = r.samples.filter((s) => s.n >= 200).map((s) => s.mem);
  assert.equal(Math.max(...after), Math.min(...after), `wasm memory is flat after the window fills: ${after}`);
  console.log(`  long run: decode ${r.final.decodeTokensPerSec.toFixed(1)} tok/s, wasm memory ${after[0]} bytes, kv ${JSON.stringify(r.final.kv)}`);
  await ctx.close();
});
