// Hostile inputs, aborts, concurrency and a soak, through the public JS API in
// headless Chromium. Needs `make build` and the tiny model written by
// `cargo run --release --example write_tiny_gguf -- target/tiny/tiny.gguf` (make test-e2e does both).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { serve, browser, watch, isEngineWorker } from './harness.mjs';
import { readFileSync, writeFileSync } from 'node:fs';

let srv, b, page, errors;
before(async () => {
  srv = await serve();
  b = await browser();
  page = await b.newPage();
  errors = watch(page);
  // A blank page on the server's origin: the API is imported, no demo UI runs.
  await page.goto(`${srv.url}/examples/blank.html`);
});
after(async () => { await b?.close(); srv?.close(); });

const TINY = '/target/tiny/tiny.gguf';

test('hostile model files give typed errors; a good model loads afterwards', async () => {
  const r = await page.evaluate(async (TINY) => {
    const { KvChat } = await import('/www/kvchat.js');
    const err = async (model) => { try { const l = await KvChat.load({ model, cache: false }); await l.dispose(); return 'loaded'; } catch (e) { return `${e.kind}: ${e.message}`; } };
    const tiny = new Uint8Array(await (await fetch(TINY)).arrayBuffer());
    const real = new Uint8Array(await (await fetch('/models/SmolLM2-135M-Instruct.Q4_1.gguf')).arrayBuffer());
    const edit = (bytes, at, u32) => { const c = bytes.slice(); new DataView(c.buffer).setUint32(at, u32, true); return c.buffer; };
    const out = {};
    out.empty = await err(new ArrayBuffer(0));
    out.fewBytes = await err(new Uint8Array([0x47, 0x47]).buffer);
    out.wrongMagic = await err(new TextEncoder().encode('<!doctype html><p>not found').buffer);
    out.v1 = await err(edit(tiny, 4, 1));
    out.v2 = await err(edit(tiny, 4, 2));
    out.hugeTensorCount = await err(edit(tiny, 8, 0xffffffff));
    out.truncatedHeader = await err(real.slice(0, 3000).buffer);
    out.truncatedData = await err(real.slice(0, 50_000_000).buffer);
    out.blob = await err(new Blob([tiny]));
    out.notGgufUrl = await err('/www/style.css');
    out.missingUrl = await err('/models/none.gguf');
    out.badWindow = await (async () => { try { await KvChat.load({ model: TINY, kvWindow: 4, kvSinks: 8 }); return 'loaded'; } catch (e) { return `${e.kind}: ${e.message}`; } })();
    out.good = await err(TINY);
    return out;
  }, TINY);
  assert.match(r.empty, /^gguf: .*the model is not a GGUF/);
  assert.match(r.fewBytes, /^gguf: /);
  assert.match(r.wrongMagic, /^gguf: .*HTML/);
  assert.match(r.v1, /^gguf: .*version 1 is obsolete/);
  assert.equal(r.v2, 'loaded', 'GGUF v2 is still read');
  assert.match(r.hugeTensorCount, /^gguf: .*too many/);
  assert.match(r.truncatedHeader, /^gguf: /);
  assert.match(r.truncatedData, /^tensor: .*runs past the end/);
  assert.equal(r.blob, 'loaded');
  assert.match(r.notGgufUrl, /^gguf: /);
  assert.match(r.missingUrl, /^network: .*HTTP 404/);
  assert.match(r.badWindow, /^invalid-option: .*larger than the number of sink tokens/);
  assert.equal(r.good, 'loaded');
});

test('a model that fails to load is not cached; one that loads is', async () => {
  const tiny = readFileSync('target/tiny/tiny.gguf');
  writeFileSync('target/tiny/broken.gguf', tiny.subarray(0, tiny.length >> 1));
  const r = await page.evaluate(async () => {
    const { KvChat } = await import('/www/kvchat.js');
    const cached = async (url) => {
      for (const name of await caches.keys()) if (await (await caches.open(name)).match(new URL(url, location.href).href)) return true;
      return false;
    };
    let error = null;
    try { await KvChat.load({ model: '/target/tiny/broken.gguf' }); } catch (e) { error = `${e.kind}: ${e.message}`; }
    const llm = await KvChat.load({ model: '/target/tiny/tiny-base.gguf' });
    await llm.dispose();
    return { error, brokenCached: await cached('/target/tiny/broken.gguf'), goodCached: await cached('/target/tiny/tiny-base.gguf') };
  });
  assert.match(r.error, /^tensor: .*runs past the end/);
  assert.equal(r.brokenCached, false, 'a file that failed to load was cached');
  assert.equal(r.goodCached, true, 'a model that loaded was not cached');
});

test('an aborted load rejects at once and its worker ends', async () => {
  const started = page.waitForEvent('worker', { predicate: isEngineWorker });
  const r = page.evaluate(async () => {
    const { KvChat } = await import('/www/kvchat.js');
    const controller = new AbortController();
    const t0 = performance.now();
    setTimeout(() => controller.abort(), 100);
    try { await KvChat.load({ model: '/models/SmolLM2-135M-Instruct.Q4_1.gguf', cache: false, signal: controller.signal }); return 'loaded'; } catch (e) { return `${e.name} after ${Math.round(performance.now() - t0)} ms`; }
  });
  const worker = await started;
  const closed = new Promise((resolve) => worker.once('close', resolve));
  assert.match(await r, /^AbortError after \d+ ms$/);
  assert.ok(Number((await r).match(/(\d+) ms/)[1]) < 2000, await r);
  await Promise.race([closed, new Promise((_, reject) => setTimeout(() => reject(new Error('the aborted load\'s worker still runs')), 10_000))]);
});

test('a trap inside the engine: the call fails with crash, onCrash runs, and a new load works', async () => {
  const r = await page.evaluate(async (TINY) => {
    const { KvChat } = await import('/www/kvchat.js');
    const llm = await KvChat.load({ model: TINY, cache: false });
    let notified = null;
    llm.onCrash = (e) => { notified = e.kind; };
    let call = null;
    try { await llm.simulateCrash(); call = 'returned'; } catch (e) { call = e.kind; }
    let after = null;
    try { await llm.tokenize('hello'); after = 'answered'; } catch (e) { after = e.kind; }
    const again = await KvChat.load({ model: TINY, cache: false });
    let text = '';
    for await (const piece of again.generate('the', { maxTokens: 4, temperature: 0 })) text += piece;
    await again.dispose();
    return { call, notified, crashed: Boolean(llm.crashed), after, generated: text.length > 0 };
  }, TINY);
  assert.deepEqual(r, { call: 'crash', notified: 'crash', crashed: true, after: 'crash', generated: true });
});

// A pool thread of the threaded build that traps never finishes its share of a matmul: the
// engine waits 30 s for it (team.rs's STUCK), then traps itself, so the page gets `crash`, not a hang.
test('a helper thread that traps: the generation fails with crash after the 30 s wait, and a new load works', async (t) => {
  const errorsBefore = errors.length;
  const r = await page.evaluate(async () => {
    const { KvChat } = await import('/www/kvchat.js');
    const llm = await KvChat.load({ threads: 2, cache: false });
    const s = await llm.stats();
    if (s.threads < 2) { await llm.dispose(); return { threads: s.threads, isolated: crossOriginIsolated, cores: navigator.hardwareConcurrency }; }
    let notified = null;
    llm.onCrash = (e) => { notified = e.kind; };
    await llm.simulateHelperCrash();
    const t0 = performance.now();
    let call = null;
    // Many steps, so a helper (which the caller may beat to every chunk of a few matmuls on a
    // loaded machine) surely takes a job and traps; the generation fails at the first it takes.
    try { for await (const piece of llm.generate('The capital of France is', { maxTokens: 64, ignoreEos: true, temperature: 0 })) void piece; call = 'finished'; } catch (e) { call = e.kind; }
    const waitedSec = Math.round((performance.now() - t0) / 1000);
    const again = await KvChat.load({ threads: 1, cache: false });
    let text = '';
    for await (const piece of again.generate('The capital of France is', { maxTokens: 4, temperature: 0 })) text += piece;
    await again.dispose();
    return { threads: s.threads, call, notified, waitedSec, text };
  });
  console.log(JSON.stringify(r));
  if (r.threads < 2) {
    // Only a cross-origin-isolated page on a machine with two cores runs the threaded build.
    assert.ok(!process.env.KVCHAT_REQUIRE_MODEL, `the threaded build did not start (isolated ${r.isolated}, ${r.cores} cores)`);
    t.skip(`the threaded build needs a cross-origin-isolated page and 2 cores (isolated ${r.isolated}, ${r.cores} cores)`);
    return;
  }
  assert.equal(r.call, 'crash');
  assert.equal(r.notified, 'crash');
  assert.ok(r.waitedSec >= 29 && r.waitedSec < 90, `gave up after ${r.waitedSec} s`);
  assert.ok(r.text.length > 0);
  // The two traps log to the console (the helper's, and the engine's panic message): expected here only.
  const logged = errors.splice(errorsBefore);
  console.log(`  logged by the crash: ${JSON.stringify(logged)}`);
  assert.ok(logged.every((e) => /helper thread|unreachable|RuntimeError|panicked|abort/i.test(e)), JSON.stringify(logged));
});

test('a stored model is checked against the server, and the store keeps at most four models', async () => {
  const [tiny, base] = [readFileSync('target/tiny/tiny.gguf'), readFileSync('target/tiny/tiny-base.gguf')];
  assert.notEqual(tiny.length, base.length, 'the two tiny files differ in length');
  writeFileSync('target/tiny/changing.gguf', tiny);
  for (let i = 1; i <= 5; i++) writeFileSync(`target/tiny/copy-${i}.gguf`, tiny);
  const run = (url) => page.evaluate(async (url) => {
    const { KvChat } = await import('/www/kvchat.js');
    const llm = await KvChat.load({ model: url });
    const r = { fromCache: llm.fromCache, vocab: llm.info.vocabSize ?? null };
    await llm.dispose();
    return r;
  }, url);
  assert.equal((await run('/target/tiny/changing.gguf')).fromCache, false);
  assert.equal((await run('/target/tiny/changing.gguf')).fromCache, true, 'unchanged on the server: read from the cache');
  writeFileSync('target/tiny/changing.gguf', base);
  assert.equal((await run('/target/tiny/changing.gguf')).fromCache, false, 'changed on the server: downloaded again');
  assert.equal((await run('/target/tiny/changing.gguf')).fromCache, true);
  for (let i = 1; i <= 5; i++) await run(`/target/tiny/copy-${i}.gguf`);
  const stored = await page.evaluate(async () => (await (await import('/www/kvchat.js')).listCachedModels()).map((m) => new URL(m.url).pathname));
  assert.deepEqual(stored, ['/target/tiny/copy-2.gguf', '/target/tiny/copy-3.gguf', '/target/tiny/copy-4.gguf', '/target/tiny/copy-5.gguf']);
});

test('hostile prompts and options give typed errors and the engine stays usable', async () => {
  const r = await page.evaluate(async (TINY) => {
    const { KvChat } = await import('/www/kvchat.js');
    const llm = await KvChat.load({ model: TINY, kvWindow: 256, cache: false });
    const run = async (input, opts) => { try { let s = ''; for await (const p of llm.generate(input, opts)) s += p; return { ok: s }; } catch (e) { return { err: `${e.kind}: ${e.message}` }; } };
    const out = {};
    out.long = await run('the cat sat. '.repeat(7700), { maxTokens: 4, temperature: 0 });
    out.longStats = await llm.stats();
    out.specials = await run('<|im_start|><|im_end|><|endoftext|>', { maxTokens: 4 });
    out.surrogates = await run('lone \ud800 and \udfff surrogates', { maxTokens: 4 });
    out.zero = await run('the', { maxTokens: 0 });
    out.negative = await run('the', { maxTokens: -1 });
    out.fraction = await run('the', { maxTokens: 2.5 });
    out.nanTemp = await run('the', { temperature: NaN });
    out.negTemp = await run('the', { temperature: -0.5 });
    out.topP = await run('the', { topP: 0 });
    out.emptyStop = await run('the', { stop: [''] });
    out.notInput = await run(42, {});
    out.badMessages = await run([{ role: 'user' }], {});
    out.emptyMessages = await run([], {});
    out.after = await run('the cat', { maxTokens: 4, temperature: 0 });
    await llm.dispose();
    return out;
  }, TINY);
  assert.ok('ok' in r.long, JSON.stringify(r.long));
  assert.ok(r.longStats.promptTokens > 10_000);
  assert.equal(r.longStats.kv.used, 256);
  assert.ok('ok' in r.specials);
  assert.ok('ok' in r.surrogates);
  assert.equal(r.zero.ok, '');
  for (const k of ['negative', 'fraction', 'nanTemp', 'negTemp', 'topP', 'emptyStop']) assert.match(r[k].err || '', /^invalid-option: /, `${k}: ${JSON.stringify(r[k])}`);
  for (const k of ['notInput', 'badMessages', 'emptyMessages']) assert.match(r[k].err || '', /^invalid-prompt: /, `${k}: ${JSON.stringify(r[k])}`);
  assert.ok('ok' in r.after);
});

test('abort in prefill and in decode, dispose while generating, two models at once', async () => {
  const r = await page.evaluate(async (TINY) => {
    const { KvChat } = await import('/www/kvchat.js');
    const out = {};
    const llm = await KvChat.load({ kvWindow: 1024 });
    const collect = async (input, opts) => { let s = ''; for await (const p of llm.generate(input, opts)) s += p; return s; };
    const long = 'The history of the city is long and complicated. '.repeat(40);
    // Abort during prefill (the prompt takes seconds to prefill).
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 300);
    const t0 = performance.now();
    try { await collect(long, { maxTokens: 8, signal: ac.signal }); out.prefillAbort = 'finished'; } catch (e) { out.prefillAbort = e.name; }
    out.abortLatencyMs = performance.now() - t0 - 300;
    out.afterPrefillAbort = await collect(long, { maxTokens: 8, temperature: 0 });
    await llm.reset();
    out.fresh = await collect(long, { maxTokens: 8, temperature: 0 });
    // Dispose during decode: the loop ends with an error, nothing hangs.
    const gen = (async () => { try { for await (const _ of llm.generate('Tell me a story.', { maxTokens: 400, ignoreEos: true })) { /* keep going */ } return 'finished'; } catch (e) { return e.kind || e.name; } })();
    await new Promise((r) => setTimeout(r, 400));
    await llm.dispose();
    out.disposed = await gen;
    // Another model loads and runs while one is generating.
    const a = await KvChat.load({ kvWindow: 256 });
    const running = (async () => { let s = ''; for await (const p of a.generate('Count slowly:', { maxTokens: 40, temperature: 0 })) s += p; return s.length; })();
    const tiny = await KvChat.load({ model: TINY, cache: false });
    let t = '';
    for await (const p of tiny.generate('the', { maxTokens: 5, temperature: 0 })) t += p;
    out.twoModels = [await running > 0, t.length > 0];
    await a.dispose();
    await tiny.dispose();
    return out;
  }, TINY);
  console.log(`  abort results: ${JSON.stringify(r)}`);
  assert.equal(r.prefillAbort, 'AbortError');
  assert.ok(r.abortLatencyMs < 2000, `the abort took effect within one prefill chunk (${r.abortLatencyMs} ms)`);
  assert.equal(r.afterPrefillAbort, r.fresh, 'after an aborted prefill the answer equals a fresh engine\'s');
  assert.match(r.disposed, /disposed|AbortError|crash/);
  assert.deepEqual(r.twoModels, [true, true]);
});

test('the worker ignores messages that are not its own', async () => {
  const r = await page.evaluate(async () => {
    const w = new Worker('/www/worker.js', { type: 'module' });
    const seen = [];
    w.onmessage = (e) => seen.push(e.data);
    await new Promise((r) => setTimeout(r, 500));
    for (const junk of ['load', 42, null, [], { type: '__proto__', id: 1 }, { type: 'constructor', id: 2 }, { type: 'toString', id: 3 }, { type: 'hasOwnProperty', id: 4 }, { id: 5 }, { type: 'eval', id: 6, code: 'self.pwned = 1' }]) w.postMessage(junk);
    w.postMessage({ type: 'stats', id: 7 });
    await new Promise((r) => setTimeout(r, 500));
    w.terminate();
    return seen.filter((m) => m.type !== 'hello');
  });
  assert.equal(r.length, 1, JSON.stringify(r));
  assert.equal(r[0].id, 7);
  assert.equal(r[0].type, 'result');
});

test('the model URL parameter cannot inject script', async () => {
  const ctx = await b.newContext();
  const p = await ctx.newPage();
  const errs = watch(p);
  let dialogs = 0;
  p.on('dialog', (d) => { dialogs++; d.dismiss(); });
  for (const evil of ['javascript:alert(1)', '<img src=x onerror=alert(1)>', '"><script>alert(1)</script>', 'data:text/html,<script>alert(1)</script>']) {
    await p.goto(`${srv.url}/index.html?model=${encodeURIComponent(evil)}`);
    await p.waitForSelector('[data-testid=progress][data-state=error]', { timeout: 60_000 });
    assert.equal(await p.locator('img:not([src$=".svg"]), script:not([src])').count(), 0);
    assert.match(await p.textContent('.banner'), /Could not load the model/);
  }
  assert.equal(dialogs, 0);
  assert.ok(errs.every((e) => !/pageerror/.test(e)), JSON.stringify(errs));
  await ctx.close();
});

test('soak: 20 turns, 20,000 tokens through a 512 window; memory and the JS heap stay flat', async () => {
  const cdp = await page.context().newCDPSession(page);
  const heap = async () => { await cdp.send('HeapProfiler.collectGarbage'); return (await cdp.send('Runtime.getHeapUsage')).usedSize; };
  await page.evaluate(async (TINY) => {
    const { KvChat } = await import('/www/kvchat.js');
    window.soak = { llm: await KvChat.load({ model: TINY, kvWindow: 512, kvSinks: 4, cache: false }), messages: [], total: 0 };
  }, TINY);
  const rows = [];
  for (let turn = 0; turn < 20; turn++) {
    const s = await page.evaluate(async (turn) => {
      const { llm, messages } = window.soak;
      messages.push({ role: 'user', content: `Turn ${turn}: tell me more.` });
      let answer = '';
      for await (const p of llm.generate(messages, { maxTokens: 1000, ignoreEos: true, temperature: 0.8, seed: turn })) answer += p;
      messages.push({ role: 'assistant', content: answer });
      const st = await llm.stats();
      window.soak.total += st.generatedTokens;
      return { ...st, total: window.soak.total };
    }, turn);
    rows.push({ turn, total: s.total, kv: s.kv, mem: s.wasmMemoryBytes, heap: await heap() });
    assert.equal(s.generatedTokens, 1000);
    assert.ok(s.kv.used <= 512 && s.kv.capacity === 512 && s.kv.sinks === 4, JSON.stringify(s.kv));
    if (s.total > 512) assert.equal(s.kv.used, 512);
  }
  assert.equal(rows.at(-1).total, 20_000);
  const mem = rows.slice(2).map((r) => r.mem);
  console.log(`  soak wasm memory per turn: ${rows.map((r) => r.mem)}`);
  // The cache never grows. What does is the conversation itself: each turn the page sends the whole
  // chat, which is deserialized, rendered and (incrementally) tokenized, so the largest temporary grows
  // with the chat's length. Measured: about 100 bytes per token of conversation; bound it at 256.
  const growth = Math.max(...mem) - Math.min(...mem);
  assert.ok(growth <= 256 * 18_000, `wasm memory grew ${growth} bytes over 18 turns: ${mem}`);
  assert.ok(rows.every((r) => r.kv.bytes === rows[0].kv.bytes));
  const heaps = rows.slice(2).map((r) => r.heap);
  // The page keeps the conversation (20k tokens of text) in `messages`: allow that, nothing more.
  assert.ok(Math.max(...heaps) - Math.min(...heaps) < 4 << 20, `JS heap stays flat: ${heaps}`);
  console.log(`  soak: wasm memory ${mem[0]} bytes, JS heap ${heaps[0]}..${heaps.at(-1)} bytes, final kv ${JSON.stringify(rows.at(-1).kv)}`);
  await page.evaluate(() => window.soak.llm.dispose());
  assert.deepEqual(errors.filter((e) => !/404|Failed to load resource/.test(e)), []);
});
