// Structured output's cost in headless Chromium (relaxed SIMD, one thread, SmolLM2):
// for each JSON schema of tests/fixtures/schemas/ (and `json_object`), a greedy
// constrained answer, then the same prompt unconstrained for as many tokens
// (ignoreEos), back to back; the median of N runs of each. Prints one JSON line per
// schema (decode tok/s both ways, the ratio, grammar compile ms, mask ms per token)
// and a summary line with the median ratio (the target: >= 0.8).
// Usage: node scripts/bench-structured.mjs [runs]
import { readFileSync, readdirSync } from 'node:fs';
import { serve, browser } from '../tests/e2e/harness.mjs';

const runs = Number(process.argv[2] || 3);
const dir = 'tests/fixtures/schemas';
const schemas = readdirSync(dir).filter((f) => f.endsWith('.json')).sort()
  .map((f) => ({ name: f.replace(/\.json$/, ''), format: { type: 'json_schema', schema: JSON.parse(readFileSync(`${dir}/${f}`, 'utf8')) } }));
schemas.push({ name: 'json_object', format: { type: 'json_object' } });
const srv = await serve();
const b = await browser();
const median = (xs) => { const s = [...xs].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };
try {
  const page = await b.newPage();
  await page.goto(`${srv.url}/index.html`);
  const rows = await page.evaluate(async ({ schemas, runs }) => {
    const { KvChat } = await import('/www/kvchat.js');
    const llm = await KvChat.load({ cache: false, simd: 'relaxed', threads: 1, backend: 'cpu' });
    const once = async (messages, opts) => {
      await llm.reset();
      for await (const _ of llm.generate(messages, { temperature: 0, ...opts })) { /* drain */ }
      return llm.lastResult;
    };
    const out = [];
    for (const { name, format } of schemas) {
      const title = format.schema?.title ?? 'a JSON object';
      const messages = [{ role: 'user', content: `Write ${title} as JSON.` }];
      const constrained = [];
      const free = [];
      for (let i = 0; i <= runs; i++) {
        const c = await once(messages, { maxTokens: 160, responseFormat: format });
        // The same number of decode steps without the mask.
        const f = await once(messages, { maxTokens: c.generatedIds.length, ignoreEos: true });
        if (i > 0) { constrained.push(c); free.push(f); } // the first round warms up
      }
      out.push({ name, constrained, free });
    }
    await llm.dispose();
    return out.map(({ name, constrained, free }) => ({
      name,
      tokens: constrained.map((r) => r.generatedIds.length),
      constrained: constrained.map((r) => r.stats.decodeTokensPerSec),
      free: free.map((r) => r.stats.decodeTokensPerSec),
      compileMs: constrained.map((r) => r.stats.grammarCompileMs),
      maskMsPerToken: constrained.map((r) => r.stats.maskMs / Math.max(1, r.generatedIds.length)),
      text: constrained[0].text,
    }));
  }, { schemas, runs });
  const ratios = [];
  for (const r of rows) {
    const line = {
      bench: 'structured-output', schema: r.name, tokens: median(r.tokens),
      decode_tokens_per_sec_constrained: +median(r.constrained).toFixed(1),
      decode_tokens_per_sec_free: +median(r.free).toFixed(1),
      ratio: +(median(r.constrained) / median(r.free)).toFixed(3),
      grammar_compile_ms: +median(r.compileMs).toFixed(2),
      mask_ms_per_token: +median(r.maskMsPerToken).toFixed(3),
      text: r.text,
    };
    ratios.push(line.ratio);
    console.log(JSON.stringify(line));
  }
  console.log(JSON.stringify({ bench: 'structured-output', summary: true, runs, median_ratio: median(ratios), min_ratio: Math.min(...ratios), target: 0.8 }));
} finally {
  await b.close();
  srv.close();
}
