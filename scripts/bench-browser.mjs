// Browser benchmark through the public JS API in headless Chromium: the fixed
// 128-token prompt, 128 greedy tokens with ignoreEos, one warm-up then the
// median of N runs. Prints one JSON line per configuration (wasm build : threads).
// The page is cross-origin isolated, so the threaded build can run.
// Usage: node scripts/bench-browser.mjs [runs] [relaxed:1,baseline:1,relaxed:2] [model path, default SmolLM2]
import { readFileSync } from 'node:fs';
import { serve, browser } from '../tests/e2e/harness.mjs';

const runs = Number(process.argv[2] || 3);
const variants = (process.argv[3] || 'relaxed:1,baseline:1,relaxed:2').split(',').map((v) => {
  const [simd, threads] = v.split(':');
  return { simd, threads: Number(threads || 1) };
});
const model = process.argv[4] ? `/${process.argv[4].replace(/^\/+/, '')}` : undefined;
const promptPath = ['../shared/reference/bench-prompt.txt', 'tests/fixtures/bench-prompt.txt'].find((p) => { try { readFileSync(p); return true; } catch { return false; } });
const prompt = readFileSync(promptPath, 'utf8');
const srv = await serve();
const b = await browser();
try {
  for (const { simd, threads } of variants) {
  const page = await b.newPage();
  await page.goto(`${srv.url}/index.html`);
  const r = await page.evaluate(async ({ prompt, runs, simd, threads, model }) => {
    const { KvChat } = await import('/www/kvchat.js');
    const t0 = performance.now();
    const llm = await KvChat.load({ cache: false, simd, threads, ...(model ? { model } : {}) });
    const loadMs = performance.now() - t0;
    const results = [];
    let peak = 0;
    for (let i = 0; i <= runs; i++) {
      await llm.reset();
      for await (const _ of llm.generate(prompt, { maxTokens: 128, temperature: 0, ignoreEos: true })) { /* drain */ }
      const s = await llm.stats();
      peak = Math.max(peak, s.wasmMemoryBytes);
      if (i > 0) results.push(s);
    }
    // Per-operation profile: one prefill of the prompt, then 128 decode steps.
    await llm.reset();
    await llm.profile(true);
    for await (const _ of llm.generate(prompt, { maxTokens: 0, temperature: 0 })) { /* drain */ }
    const prefillProfile = await llm.profile();
    await llm.profile(true);
    for await (const _ of llm.generate(prompt, { maxTokens: 128, temperature: 0, ignoreEos: true })) { /* drain */ }
    const decodeProfile = await llm.profile();
    await llm.profile(false);
    await llm.dispose();
    // The decode step against its memory limit: every weight byte its matmuls read, streamed
    // once with no arithmetic (timed by the engine when profiling was switched on).
    const read = decodeProfile.plainRead;
    const decodeMs = Object.values(decodeProfile.msPerToken).reduce((a, b) => a + b, 0);
    const plainRead = read && { bytes: read.bytes, ms: read.ms, gb_per_sec: read.bytes / read.ms / 1e6, decode_of_limit: read.ms / decodeMs };
    const med = (k) => { const v = results.map((s) => s[k]).sort((a, b) => a - b); return v[Math.floor(v.length / 2)]; };
    return {
      engine: 'kvchat-browser', model: llm.info.config?.arch ?? model, backend: results[0].backend, simd: results[0].simd, threads: results[0].threads, prompt_tokens: results[0].promptTokens, gen_tokens: results[0].generatedTokens, runs,
      load_ms: loadMs, fetch_ms: llm.timings.fetchMs, init_ms: llm.timings.initMs, init_breakdown_ms: llm.info.load,
      prefill_tokens_per_sec: med('prefillTokensPerSec'), decode_tokens_per_sec: med('decodeTokensPerSec'),
      time_to_first_token_ms: med('timeToFirstTokenMs'), peak_wasm_memory_bytes: peak,
      profile_ms_per_token: { prefill: prefillProfile.msPerToken, decode: decodeProfile.msPerToken }, plain_read: plainRead,
    };
  }, { prompt, runs, simd, threads, model });
  console.log(JSON.stringify(r));
  await page.close();
  }
} finally {
  await b.close();
  srv.close();
}
