// The model picker on the demo page: the built-in models with their size and license
// before anything is downloaded, `?model=URL`, a model from a local file (read in the
// tab, never requested from the server), the completion box for a base model (no chat
// template), and the models stored in the Cache API: one entry per model, each deletable.
// Needs target/tiny/tiny.gguf and target/tiny/tiny-base.gguf (`make test-e2e` writes them).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { serve, browser, watch, ROOT } from './harness.mjs';

let srv, b;
before(async () => {
  // A plain static host: the single-thread build, the quickest to start.
  srv = await serve({ KVCHAT_NO_ISOLATION: '1' });
  b = await browser();
});
after(async () => { await b?.close(); srv?.close(); });

const TINY = '/target/tiny/tiny.gguf';
const TINY_BASE = '/target/tiny/tiny-base.gguf';

/** Waits until the model the page names `name` is loaded. */
async function loaded(page, name) {
  await page.waitForFunction((n) => document.querySelector('[data-testid=progress]').dataset.state === 'ready'
    && document.querySelector('[data-testid=model-name]').textContent.startsWith(n), name, { timeout: 60_000 });
}

/** Submits the composer and waits for the streamed text to end; returns the message element. */
async function submit(page, selector, text) {
  const before = await page.locator(selector).count();
  await page.fill('[data-testid=prompt]', text);
  await page.press('[data-testid=prompt]', 'Enter');
  await page.waitForFunction(([s, n]) => document.querySelectorAll(s).length > n && !document.querySelector('.msg.streaming'), [selector, before], { timeout: 30_000 });
  return page.locator(selector).nth(before);
}

const cached = (page) => page.locator('[data-testid=cached-model]').allTextContents();

test('the picker shows sizes and licenses, loads a local file, continues text for a base model, and keeps and deletes models', async () => {
  const ctx = await b.newContext();
  const page = await ctx.newPage();
  const errors = watch(page);
  const requests = [];
  page.on('request', (r) => requests.push(`${r.method()} ${new URL(r.url()).pathname}`));
  await page.goto(`${srv.url}/index.html?model=${TINY}`);

  // The built-in models with size and license; none of them is downloaded.
  const options = (await page.locator('[data-testid=model-option]').allTextContents()).join('\n');
  assert.match(options, /SmolLM2-135M-Instruct\s*Q4_1 · 93\.8 MiB · Apache-2\.0 · chat/);
  assert.match(options, /Qwen2\.5-Coder-0\.5B-Instruct\s*Q4_K_M · 468\.6 MiB · Apache-2\.0 · chat/);
  assert.match(options, /Gemma 3 270M \(base\)\s*Q4_K_M · 241\.4 MiB · Gemma Terms of Use · base model: plain completion/);

  // `?model=URL` chose the URL entry; the tiny chat model answers and is stored.
  assert.equal(await page.inputValue('[data-testid=model-url]'), TINY);
  await loaded(page, TINY);
  assert.match(await page.textContent('[data-testid=mode]'), /^chat model/);
  await page.fill('.settings-form [name=maxTokens]', '8');
  await page.fill('.settings-form [name=temperature]', '0');
  const answer = await submit(page, '.msg.assistant', 'Hello!');
  assert.ok((await answer.textContent()).length > 0, 'the chat model answered');
  await page.waitForFunction(() => document.querySelectorAll('[data-testid=cached-model]').length === 1);
  assert.deepEqual(await cached(page), ['tiny.gguf160.1 KiBDelete']);

  // A base model from a local file: read in the tab, never fetched; the composer continues text.
  await page.setInputFiles('[data-testid=model-file]', join(ROOT, TINY_BASE));
  assert.equal(await page.isChecked('[data-testid=model-list] input[value=file]'), true, 'choosing a file selects the file entry');
  await page.click('[data-testid=load-model]');
  await loaded(page, 'tiny-base.gguf');
  assert.match(await page.textContent('.progress-label'), /ready \(read from the file/);
  assert.match(await page.textContent('[data-testid=mode]'), /^base model: plain completion/);
  assert.equal(await page.textContent('[data-testid=send]'), 'Continue');
  const doc = await submit(page, '.msg.completion', 'the cat');
  const continuation = await doc.locator('.continuation').textContent();
  assert.ok(continuation.length > 0, 'the text was continued');
  assert.equal(await doc.textContent(), `the cat${continuation}`);
  assert.equal(await page.inputValue('[data-testid=prompt]'), `the cat${continuation}`, 'the box holds the text to continue further');
  assert.ok(!requests.some((r) => r.endsWith('tiny-base.gguf')), 'the file was not requested');
  assert.ok(!requests.some((r) => r.startsWith('POST') || r.startsWith('PUT')), 'nothing was uploaded');
  assert.equal((await cached(page)).length, 1, 'a local file is not stored');

  // The same base model from its URL: stored next to the first one, which stays.
  await page.fill('[data-testid=model-url]', TINY_BASE);
  await page.click('[data-testid=load-model]');
  await loaded(page, TINY_BASE);
  await page.waitForFunction(() => document.querySelectorAll('[data-testid=cached-model]').length === 2);
  assert.deepEqual(await cached(page), ['tiny.gguf160.1 KiBDelete', 'tiny-base.gguf159.7 KiBDelete']);

  // Delete the first: the listing and the Cache API hold only the second.
  await page.locator('[data-testid=cached-model]', { hasText: /^tiny\.gguf/ }).locator('[data-testid=cached-delete]').click();
  await page.waitForFunction(() => document.querySelectorAll('[data-testid=cached-model]').length === 1);
  assert.match((await cached(page))[0], /^tiny-base\.gguf/);
  const keys = await page.evaluate(async () => (await (await caches.open('kvchat-models-v1')).keys()).map((r) => new URL(r.url).pathname));
  assert.deepEqual(keys, [TINY_BASE]);
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('a ?model= link to another origin waits for a click that names the origin; nothing is downloaded before', async () => {
  const ctx = await b.newContext();
  const page = await ctx.newPage();
  const requests = [];
  page.on('request', (r) => requests.push([r.method(), r.url()]));
  // localhost and 127.0.0.1 are two origins to the browser: the link's model is "elsewhere".
  const elsewhere = `${srv.url.replace('127.0.0.1', 'localhost')}${TINY}`;
  await page.goto(`${srv.url}/?model=${encodeURIComponent(elsewhere)}`);
  await page.waitForFunction(() => !document.querySelector('.banner').hidden, null, { timeout: 30_000 });
  const banner = await page.textContent('.banner');
  assert.match(banner, new RegExp(`download a model from ${new URL(elsewhere).origin.replace(/[.]/g, '\\.')} \\(`));
  assert.match(banner, /Download and load it/);
  assert.equal(await page.textContent('[data-testid=progress] .progress-label'), 'waiting for your confirmation');
  await page.waitForTimeout(500);
  assert.deepEqual(requests.filter(([method, u]) => method === 'GET' && new URL(u).pathname.endsWith('.gguf')), [], 'no model download before the click');
  assert.equal(await page.evaluate(() => document.querySelector('[data-testid=send]')?.disabled ?? true), true);
  await ctx.close();
});
