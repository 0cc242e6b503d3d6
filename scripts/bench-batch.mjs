// Batch throughput: 16 chat prompts (one shared system prompt, different questions),
// 64 greedy tokens each with ignoreEos, at batch sizes 1, 4, 8 and 16 — natively
// (`kvchat batch`, one thread) and in headless Chromium through generateBatch (one
// thread). One JSON line per configuration. Usage: node scripts/bench-batch.mjs [sizes]
import { execFileSync } from 'node:child_process';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serve, browser } from '../tests/e2e/harness.mjs';

const sizes = (process.argv[2] || '1,4,8,16').split(',').map(Number);
const model = 'models/SmolLM2-135M-Instruct.Q4_1.gguf';
const questions = [
  'What is the capital of France?', 'Name a yellow fruit.', 'How many legs does a spider have?', 'What color is the sky?',
  'What do bees make?', 'Name a planet.', 'What is ice made of?', 'Say hello in Spanish.',
  'What is 3 times 4?', 'Name a musical instrument.', 'What animal barks?', 'What is the opposite of hot?',
  'Name a primary color.', 'What do plants need to grow?', 'What is the largest ocean?', 'Name a day of the week.',
];
const system = { role: 'system', content: 'You are a concise assistant. Answer each question in one short sentence.' };
const inputs = questions.map((q) => [system, { role: 'user', content: q }]);
const gen = 64;

const dir = mkdtempSync(join(tmpdir(), 'kvchat-batch-'));
const file = join(dir, 'prompts.jsonl');
writeFileSync(file, inputs.map((messages) => JSON.stringify({ messages })).join('\n') + '\n');
for (const b of sizes) {
  const out = execFileSync('./target/release/kvchat', ['batch', '--model', model, '--prompts-file', file, '--batch', String(b),
    '--max-tokens', String(gen), '--ignore-eos', '--json'], { env: { ...process.env, CANDLE_NUM_THREADS: '1' } }).toString();
  const s = JSON.parse(out.trim().split('\n').pop()).batch_stats;
  console.log(JSON.stringify({ engine: 'kvchat-native', batch: b, sequences: s.sequences, generated_tokens: s.generatedTokens,
    tokens_per_sec: s.tokensPerSec, decode_tokens_per_sec: s.decodeTokensPerSec, shared_prefix_tokens: s.sharedPrefixTokens,
    kv_bytes_per_sequence: s.kvBytesPerSequence, backend: s.backend }));
}

const srv = await serve();
const br = await browser();
try {
  const page = await br.newPage();
  await page.goto(`${srv.url}/index.html`);
  const rows = await page.evaluate(async ({ inputs, sizes, gen }) => {
    const { KvChat } = await import('/www/kvchat.js');
    const llm = await KvChat.load({ cache: false, threads: 1 });
    const out = [];
    // Warm-up.
    for await (const _ of llm.generateBatch(inputs.slice(0, 2), { maxTokens: 4, temperature: 0 })) { /* drain */ }
    for (const b of sizes) {
      for await (const _ of llm.generateBatch(inputs, { maxTokens: gen, temperature: 0, ignoreEos: true, batchSize: b })) { /* drain */ }
      const s = llm.lastBatchStats;
      const st = await llm.stats();
      out.push({ engine: 'kvchat-browser', simd: st.simd, threads: st.threads, batch: b, sequences: s.sequences, generated_tokens: s.generatedTokens,
        tokens_per_sec: s.tokensPerSec, decode_tokens_per_sec: s.decodeTokensPerSec, shared_prefix_tokens: s.sharedPrefixTokens,
        kv_bytes_per_sequence: s.kvBytesPerSequence, backend: s.backend, wasm_memory_bytes: st.wasmMemoryBytes });
    }
    await llm.dispose();
    return out;
  }, { inputs, sizes, gen });
  for (const r of rows) console.log(JSON.stringify(r));
} finally {
  await br.close();
  srv.close();
}
