// The WebGPU backend through the public API in headless Chromium on SwiftShader
// (a software adapter: for correctness, not speed): the same greedy text as the
// CPU backend, the adapter shown, 'auto' skipping a software adapter, and a
// lost device moving the conversation to the CPU; a batch through the batched GPU
// passes gives the CPU batch's texts.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { serve, browser, watch } from './harness.mjs';

let srv, b;
before(async () => { srv = await serve(); b = await browser({ webgpu: true }); });
after(async () => { await b?.close(); srv?.close(); });

test('webgpu backend: same greedy text as the cpu, then a lost device falls back to the cpu', async () => {
  const page = await b.newPage();
  const errors = watch(page);
  await page.goto(`${srv.url}/index.html`);
  const r = await page.evaluate(async () => {
    const { KvChat } = await import('/www/kvchat.js');
    // Both backends compute the same bits, so their greedy texts are equal.
    const prompt = 'The capital of France is';
    const opts = { maxTokens: 10, temperature: 0, repeatPenalty: 1, ignoreEos: true };
    const run = async (llm, p = prompt, o = opts) => { let t = ''; for await (const x of llm.generate(p, o)) t += x; return t; };
    // A batch: three prompts in two slots (the third takes a freed slot), greedy.
    const batchInputs = ['The capital of France is', 'Water boils at', 'My favourite colour is'];
    const batch = async (llm) => {
      const texts = [];
      for await (const ev of llm.generateBatch(batchInputs, { maxTokens: 5, temperature: 0, ignoreEos: true, batchSize: 2 })) if (ev.done) texts[ev.index] = ev.text;
      return { texts, backend: llm.lastBatchStats.backend };
    };
    const cpu = await KvChat.load({ cache: false, backend: 'cpu', kvWindow: 256 });
    const cpuText = await run(cpu);
    const cpuBatch = await batch(cpu);
    await cpu.dispose();
    const auto = await KvChat.load({ cache: false, kvWindow: 256 });
    const autoStats = await auto.stats();
    await auto.dispose();
    const gpu = await KvChat.load({ cache: false, backend: 'webgpu', kvWindow: 256 });
    const gpuText = await run(gpu);
    const s1 = await gpu.stats();
    const gpuBatch = await batch(gpu);
    await run(gpu, prompt + gpuText, { maxTokens: 3, temperature: 0.7, topK: 40, seed: 1 });
    const sampled = await gpu.stats();
    await gpu.loseGpuDevice();
    const more = await run(gpu, prompt + gpuText + ' And the capital of Italy is', { maxTokens: 6, temperature: 0, ignoreEos: true });
    const s2 = await gpu.stats();
    await gpu.dispose();
    return { cpuText, gpuText, cpuBatch, gpuBatch, more, autoBackend: autoStats.backend, autoWhy: autoStats.gpuError, s1, s2, sampledReadback: sampled.gpuStep.readbackBytes };
  });
  console.log(JSON.stringify({ ...r, cpuBatch: r.cpuBatch, gpuBatch: r.gpuBatch, s1: { backend: r.s1.backend, adapter: r.s1.adapter, gpuStep: r.s1.gpuStep, decode: r.s1.decodeTokensPerSec, prefill: r.s1.prefillTokensPerSec }, s2: { backend: r.s2.backend, fallback: r.s2.fallback } }));
  assert.equal(r.autoBackend, 'cpu', "'auto' does not pick a software adapter");
  assert.equal(r.s1.backend, 'webgpu');
  assert.ok(r.s1.adapter?.name, 'the adapter has a name');
  assert.equal(r.s1.gpuStep.readbackBytes, 8, 'a greedy decode step reads back 8 bytes');
  assert.equal(r.sampledReadback, 520, 'a top-k sampled step reads back the 64 best logits');
  assert.equal(r.gpuText, r.cpuText);
  assert.equal(r.gpuBatch.backend, 'webgpu', 'the batch ran through the batched GPU passes');
  assert.equal(r.cpuBatch.backend, 'cpu');
  assert.deepEqual(r.gpuBatch.texts, r.cpuBatch.texts, 'batched on the GPU: the same texts as the CPU batch');
  assert.equal(r.s2.backend, 'cpu');
  assert.match(r.s2.fallback, /lost|GPU/);
  assert.ok(r.more.length > 0, 'the conversation continued on the cpu');
  assert.equal(r.s2.reusedTokens > 0, true, 'the rebuilt cache is reused');
  assert.deepEqual(errors.filter((e) => !/WebGPU|GPU|Device|destroy/i.test(e)), []);
});
