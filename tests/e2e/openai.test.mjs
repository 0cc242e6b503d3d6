// OpenAI-style chat completions in a real browser: the response and chunk objects
// have WebLLM's field names and types (the shapes below follow WebLLM's
// openai_api_protocols: ChatCompletion, ChatCompletionChunk, CompletionUsage,
// ChatCompletionTokenLogprob), streaming gives the non-streamed text, the cache shows
// in usage.prompt_tokens_details.cached_tokens, a JSON schema is obeyed, n > 1 runs
// as a batch, unsupported fields and bad schemas are typed errors, and the WebLLM
// port example answers.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { serve, browser, watch } from './harness.mjs';

let srv, b, page, errors;
before(async () => {
  srv = await serve({ KVCHAT_NO_ISOLATION: '1' });
  b = await browser();
  page = await b.newPage();
  errors = watch(page);
  await page.goto(`${srv.url}/index.html`);
  await page.evaluate(async () => {
    const { KvChat } = await import('/www/kvchat.js');
    globalThis.llm = await KvChat.load({ cache: false, simd: 'relaxed', threads: 1, backend: 'cpu' });
  });
});
after(async () => { await b?.close(); srv?.close(); });

// Shapes: 'string', 'number', 'integer', 'boolean', null (the value null), [shape] (an
// array of it), { field: shape } (an object with exactly these fields), or a function.
const nullable = (shape) => (v, path) => (v === null ? [] : check(v, shape, path));
const oneOf = (...values) => (v, path) => (values.includes(v) ? [] : [`${path}: ${JSON.stringify(v)} is not one of ${values}`]);
function check(v, shape, path = '$') {
  if (typeof shape === 'function') return shape(v, path);
  if (shape === null) return v === null ? [] : [`${path}: expected null`];
  if (typeof shape === 'string') {
    const ok = shape === 'integer' ? Number.isInteger(v) : typeof v === shape;
    return ok ? [] : [`${path}: expected ${shape}, got ${JSON.stringify(v)}`];
  }
  if (Array.isArray(shape)) return Array.isArray(v) ? v.flatMap((x, i) => check(x, shape[0], `${path}[${i}]`)) : [`${path}: expected an array`];
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return [`${path}: expected an object`];
  const extra = Object.keys(v).filter((k) => !(k in shape)).map((k) => `${path}.${k}: unexpected field`);
  return [...extra, ...Object.entries(shape).flatMap(([k, s]) => check(v[k], s, `${path}.${k}`))];
}
const TOP_LOGPROB = { token: 'string', logprob: 'number', bytes: ['integer'] };
const LOGPROBS = nullable({ content: [{ ...TOP_LOGPROB, top_logprobs: [TOP_LOGPROB] }], refusal: null });
const USAGE = { prompt_tokens: 'integer', completion_tokens: 'integer', total_tokens: 'integer', prompt_tokens_details: { cached_tokens: 'integer' } };
const FINISH = oneOf('stop', 'length');
const COMPLETION = {
  id: 'string', object: oneOf('chat.completion'), created: 'integer', model: 'string', system_fingerprint: 'string',
  choices: [{ index: 'integer', message: { role: oneOf('assistant'), content: 'string', refusal: null }, logprobs: LOGPROBS, finish_reason: FINISH }],
  usage: USAGE,
};
const CHUNK = {
  id: 'string', object: oneOf('chat.completion.chunk'), created: 'integer', model: 'string', system_fingerprint: 'string',
  choices: [{ index: 'integer', delta: (v, p) => check(v, Object.fromEntries(Object.keys(v ?? {}).map((k) => [k, k === 'role' ? oneOf('assistant') : 'string'])), p), logprobs: LOGPROBS, finish_reason: nullable(FINISH) }],
};
const CHUNK_WITH_USAGE = { ...CHUNK, usage: USAGE };

const run = (fn, arg) => page.evaluate(fn, arg);

test('a completion and its stream have WebLLM\'s shapes and the same text; the cache shows as cached_tokens', async () => {
  const got = await run(async () => {
    const messages = [{ role: 'user', content: 'Name three colors.' }];
    const req = { messages, temperature: 0, max_tokens: 24 };
    const whole = await llm.chat.completions.create(req);
    const chunks = [];
    for await (const c of await llm.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } })) chunks.push(c);
    // The next turn extends the conversation: its prompt's prefix is already cached.
    const next = await llm.chat.completions.create({ ...req, messages: [...messages, { role: 'assistant', content: whole.choices[0].message.content }, { role: 'user', content: 'And three animals?' }] });
    return { whole, chunks, next };
  });
  assert.deepEqual(check(got.whole, COMPLETION), []);
  for (const c of got.chunks.slice(0, -1)) assert.deepEqual(check(c, CHUNK), []);
  assert.deepEqual(check(got.chunks.at(-1), CHUNK_WITH_USAGE), []);
  const streamed = got.chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
  assert.equal(streamed, got.whole.choices[0].message.content);
  assert.equal(got.chunks.at(-2).choices[0].finish_reason, got.whole.choices[0].finish_reason);
  const u = got.next.usage;
  console.log(`answer ${JSON.stringify(got.whole.choices[0].message.content)}; next turn: ${u.prompt_tokens} prompt tokens, ${u.prompt_tokens_details.cached_tokens} cached`);
  assert.ok(u.prompt_tokens_details.cached_tokens >= got.whole.usage.prompt_tokens, JSON.stringify(u));
  assert.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens);
});

test('a JSON schema is obeyed, with logprobs; n > 1 gives n choices', async () => {
  const schema = { type: 'object', properties: { color: { enum: ['red', 'green', 'blue'] }, count: { type: 'integer', minimum: 1, maximum: 9 } }, required: ['color', 'count'], additionalProperties: false };
  const got = await run(async (schema) => {
    const messages = [{ role: 'user', content: 'Pick a color and a count, as JSON.' }];
    const one = await llm.chat.completions.create({ messages, temperature: 0.7, seed: 1, logprobs: true, top_logprobs: 2, response_format: { type: 'json_schema', json_schema: { name: 'pick', schema } } });
    const compileMs = llm.lastResult.stats.grammarCompileMs;
    const many = await llm.chat.completions.create({ messages, temperature: 0.9, seed: 7, n: 3, max_tokens: 40, response_format: { type: 'json_schema', json_schema: { name: 'pick', schema } } });
    return { one, many, compileMs };
  }, schema);
  assert.deepEqual(check(got.one, COMPLETION), []);
  assert.deepEqual(check(got.many, COMPLETION), []);
  const parsed = JSON.parse(got.one.choices[0].message.content);
  assert.ok(['red', 'green', 'blue'].includes(parsed.color) && parsed.count >= 1 && parsed.count <= 9, got.one.choices[0].message.content);
  const lp = got.one.choices[0].logprobs.content;
  assert.equal(lp.length, got.one.usage.completion_tokens);
  assert.equal(lp.map((t) => t.token).join(''), got.one.choices[0].message.content);
  assert.ok(lp.every((t) => t.top_logprobs.length <= 2 && t.logprob <= 0));
  assert.equal(got.many.choices.length, 3);
  for (const c of got.many.choices) assert.ok(['red', 'green', 'blue'].includes(JSON.parse(c.message.content).color), c.message.content);
  console.log(`json: ${got.one.choices[0].message.content}; n=3: ${got.many.choices.map((c) => c.message.content).join(' | ')}; grammar compiled in ${got.compileMs.toFixed(1)} ms`);
  assert.ok(got.compileMs > 0);
});

test('unsupported fields and bad formats are typed errors; the engine goes on', async () => {
  const got = await run(async () => {
    const messages = [{ role: 'user', content: 'Hi' }];
    const attempt = async (req) => { try { await llm.chat.completions.create(req); return 'resolved'; } catch (e) { return `${e.kind}: ${e.message}`; } };
    const results = {
      functions: await attempt({ messages, functions: [{ name: 'f' }] }),
      toolsHere: await attempt({ messages, tools: [{ type: 'function', function: { name: 'f' } }] }),
      badSchema: await attempt({ messages, response_format: { type: 'json_schema', json_schema: { schema: { type: 'wibble' } } } }),
      badRegex: await attempt({ messages, response_format: { type: 'regex', regex: '(unclosed' } }),
      badType: await attempt({ messages, response_format: { type: 'xml' } }),
      bigN: await attempt({ messages, n: 100 }),
    };
    const after = await llm.chat.completions.create({ messages, max_tokens: 4, temperature: 0 });
    return { results, after: after.choices[0].message.content };
  });
  const { toolsHere, ...invalid } = got.results;
  for (const [what, r] of Object.entries(invalid)) assert.match(r, /^invalid-option: /, `${what}: ${r}`);
  assert.match(got.results.functions, /functions/);
  // SmolLM2's template takes no tools: a typed refusal, not a guess at a format.
  assert.match(toolsHere, /^unsupported: .*tools/);
  assert.ok(got.after.length > 0);
  assert.deepEqual(errors, []);
});

test('the WebLLM port example answers through CreateMLCEngine', async () => {
  const p = await b.newPage();
  const errs = watch(p);
  await p.goto(`${srv.url}/examples/webllm-port.html`);
  await p.waitForFunction(() => !document.querySelector('#form button').disabled, null, { timeout: 120_000 });
  await p.check('#json');
  await p.click('#form button');
  await p.waitForFunction(() => document.getElementById('usage').textContent.includes('decoding'), null, { timeout: 120_000 });
  const answer = await p.textContent('#answer');
  const usage = await p.textContent('#usage');
  console.log(`example: ${answer} / ${usage.replace(/\n/g, ' / ')}`);
  const v = JSON.parse(answer);
  assert.deepEqual(Object.keys(v), ['city', 'population']);
  assert.equal(typeof v.city, 'string');
  assert.ok(Number.isInteger(v.population));
  assert.deepEqual(errs, []);
  await p.close();
});

test('the page: structured output in the chat, and the batch tab extracts fields into a table', async () => {
  const p = await b.newPage();
  const errs = watch(p);
  await p.goto(`${srv.url}/index.html`);
  await p.waitForSelector('[data-testid=progress][data-state=ready]', { timeout: 120_000 });
  // Greedy for the chat and the batch (both read the settings): at the page's default 0.7 an
  // extracted field could be sampled empty now and then.
  await p.fill('.settings-form [name=temperature]', '0');
  await p.check('[data-testid=structured]');
  assert.equal(await p.isVisible('[data-testid=schema]'), true);
  await p.fill('[data-testid=prompt]', 'Is the sky blue?');
  await p.click('[data-testid=send]');
  await p.waitForFunction(() => document.querySelector('.msg.assistant') && !document.querySelector('.msg.assistant.streaming'), null, { timeout: 120_000 });
  const text = await p.textContent('.msg.assistant');
  console.log(`structured chat answer: ${text}`);
  const answer = JSON.parse(text);
  assert.equal(typeof answer.answer, 'string');
  assert.ok(['low', 'medium', 'high'].includes(answer.confidence), JSON.stringify(answer));

  await p.click('[data-testid=batch-tab]');
  await p.fill('[data-testid=batch-items]', 'Rex the dog\nTom the cat\nNemo the fish');
  await p.fill('.batch-form [name=instruction]', 'Give the animal\'s name and kind.');
  await p.check('[data-testid=batch-extract]');
  await p.fill('[data-testid=batch-fields]', 'name, kind');
  await p.waitForFunction(() => !document.querySelector('[data-testid=batch-run]').disabled, null, { timeout: 120_000 });
  await p.click('[data-testid=batch-run]');
  await p.waitForFunction(() => /3 \/ 3 done/.test(document.querySelector('[data-testid=batch-summary]').textContent), null, { timeout: 120_000 });
  const rows = await p.$$eval('[data-testid=batch-table] tbody tr', (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
  const head = await p.$$eval('[data-testid=batch-table] thead th', (ths) => ths.map((t) => t.textContent));
  console.log(`extracted: ${JSON.stringify(rows)}`);
  assert.deepEqual(head, ['line', 'name', 'kind']);
  assert.equal(rows.length, 3);
  for (const r of rows) assert.ok(r[1].length > 0 && r[2].length > 0, JSON.stringify(r));
  assert.equal(await p.isVisible('[data-testid=batch-table]'), true);
  assert.deepEqual(errs, []);
  await p.close();
});
