// OpenAI-style chat completions over a loaded KvChat: `llm.chat.completions.create(request)`.
//
// The request and response objects follow OpenAI's (and WebLLM's) shapes, so an app
// written against them ports by changing its import. A request maps onto kvchat's own
// generate options; `n > 1` runs through the batch engine (the shared prompt prefilled
// once, each choice its own bounded cache and seed). Fields kvchat cannot honour are an
// error (kind 'invalid-option'), never silently dropped.

/** Request fields that only name or tag the request: accepted and echoed or ignored. */
const PASSIVE = ['model', 'user', 'stream_options', 'metadata', 'store', 'parallel_tool_calls'];
/** Request fields with a meaning here. */
const HANDLED = [
  'messages', 'stream', 'n', 'max_tokens', 'max_completion_tokens', 'temperature', 'top_p', 'seed', 'stop',
  'frequency_penalty', 'presence_penalty', 'logit_bias', 'logprobs', 'top_logprobs', 'response_format', 'tools', 'tool_choice',
  // kvchat's own sampling knobs, for callers that want them.
  'top_k', 'min_p', 'repetition_penalty',
];

const invalid = (KvChatError, message) => new KvChatError(message, 'invalid-option');

/** The request checked and turned into kvchat's generate options. */
function toOptions(KvChatError, req) {
  if (!req || typeof req !== 'object') throw invalid(KvChatError, 'chat.completions.create takes a request object');
  for (const key of Object.keys(req)) {
    if (req[key] === undefined || req[key] === null) continue;
    if (!HANDLED.includes(key) && !PASSIVE.includes(key)) {
      throw invalid(KvChatError, `'${key}' is not supported by kvchat's chat completions`);
    }
  }
  if (!Array.isArray(req.messages) || !req.messages.length) throw invalid(KvChatError, 'messages must be a non-empty array');
  const messages = req.messages.map((m, i) => {
    if (!m || typeof m.role !== 'string') throw invalid(KvChatError, `messages[${i}] needs a role`);
    let content = m.content ?? (m.tool_calls ? '' : m.content);
    // Content parts: text parts are joined; any other kind (images, audio) cannot be read here.
    if (Array.isArray(content)) {
      content = content.map((p, j) => {
        if (p?.type !== 'text' || typeof p.text !== 'string') throw invalid(KvChatError, `messages[${i}].content[${j}]: only text parts are supported`);
        return p.text;
      }).join('');
    }
    if (typeof content !== 'string') throw invalid(KvChatError, `messages[${i}].content must be a string or text parts`);
    if (!m.tool_calls) return { role: m.role, content };
    // A call the model made earlier, back in the template's shape: arguments as an object.
    const toolCalls = m.tool_calls.map((c, j) => {
      let args = c?.function?.arguments;
      try { args = typeof args === 'string' ? JSON.parse(args) : args; } catch { throw invalid(KvChatError, `messages[${i}].tool_calls[${j}].function.arguments is not JSON`); }
      return { id: c.id, type: 'function', function: { name: c?.function?.name, arguments: args } };
    });
    return { role: m.role, content, tool_calls: toolCalls };
  });
  const o = {};
  const maxTokens = req.max_completion_tokens ?? req.max_tokens;
  if (maxTokens != null) o.maxTokens = maxTokens;
  // OpenAI's defaults: temperature 1, top_p 1, and no top-k or min-p truncation.
  o.temperature = req.temperature ?? 1;
  o.topP = req.top_p ?? 1;
  o.topK = req.top_k ?? 0;
  o.minP = req.min_p ?? 0;
  if (req.repetition_penalty != null) o.repeatPenalty = req.repetition_penalty;
  if (req.seed != null) o.seed = req.seed;
  if (req.stop != null) o.stop = typeof req.stop === 'string' ? [req.stop] : req.stop;
  if (req.frequency_penalty) o.frequencyPenalty = req.frequency_penalty;
  if (req.presence_penalty) o.presencePenalty = req.presence_penalty;
  if (req.logit_bias != null) o.logitBias = req.logit_bias;
  if (req.top_logprobs != null && !req.logprobs) throw invalid(KvChatError, 'top_logprobs needs logprobs: true');
  if (req.logprobs) o.logprobs = req.top_logprobs ?? 0;
  const rf = req.response_format;
  if (rf != null) {
    if (rf.type === 'json_schema') {
      const schema = rf.json_schema?.schema;
      if (schema === undefined) throw invalid(KvChatError, 'response_format.json_schema.schema is missing');
      o.responseFormat = { type: 'json_schema', schema };
    } else if (['text', 'json_object', 'grammar', 'regex'].includes(rf.type)) {
      o.responseFormat = rf; // 'grammar' (Lark) and 'regex' are kvchat's additions
    } else {
      throw invalid(KvChatError, `response_format.type must be 'text', 'json_object', 'json_schema', 'grammar' or 'regex' (got ${rf.type})`);
    }
  }
  if (req.tools != null) {
    if (!Array.isArray(req.tools) || !req.tools.every((t) => t?.type === 'function' && typeof t.function?.name === 'string')) {
      throw invalid(KvChatError, "tools must be [{ type: 'function', function: { name, description, parameters } }]");
    }
    if (o.responseFormat && o.responseFormat.type !== 'text') throw invalid(KvChatError, 'tools and a response_format cannot be combined');
    const choice = req.tool_choice ?? 'auto';
    o.tools = req.tools;
    if (['none', 'auto', 'required'].includes(choice)) o.toolChoice = choice;
    else if (choice?.type === 'function' && typeof choice.function?.name === 'string') o.toolChoice = { function: choice.function.name };
    else throw invalid(KvChatError, "tool_choice must be 'none', 'auto', 'required' or { type: 'function', function: { name } }");
  } else if (req.tool_choice != null) {
    throw invalid(KvChatError, 'tool_choice needs tools');
  }
  const n = req.n ?? 1;
  if (!Number.isInteger(n) || n < 1 || n > 64) throw invalid(KvChatError, `n must be an integer from 1 to 64 (got ${n})`);
  return { messages, options: o, n };
}

const finishReason = (r) => (r.toolCalls?.length ? 'tool_calls' : r.stopReason === 'length' ? 'length' : r.stopReason ? 'stop' : null);

/** A choice's message: the text, or the tool calls the model made (OpenAI's shape: arguments as a JSON string). */
function messageOf(r, index) {
  if (!r.toolCalls?.length) return { role: 'assistant', content: r.text, refusal: null };
  return {
    role: 'assistant',
    content: r.content || null,
    refusal: null,
    tool_calls: r.toolCalls.map((c, i) => ({ id: `call_${index}_${i}_${Math.random().toString(36).slice(2, 10)}`, type: 'function', function: { name: c.name, arguments: JSON.stringify(c.arguments) } })),
  };
}

/** kvchat's per-token log-probabilities as OpenAI's `choice.logprobs`. */
function toLogprobs(list, wanted) {
  if (!wanted) return null;
  const entry = (t) => ({ token: t.token, logprob: t.logprob, bytes: t.bytes });
  return { content: (list ?? []).map((t) => ({ ...entry(t), top_logprobs: t.topLogprobs.map(entry) })), refusal: null };
}

function usageOf(promptTokens, completionTokens, cachedTokens) {
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    // The prompt prefix the KV cache already held: not recomputed.
    prompt_tokens_details: { cached_tokens: cachedTokens },
  };
}

const newId = () => `chatcmpl-${(globalThis.crypto?.randomUUID?.() ?? `${Date.now()}${Math.random()}`).replace(/-/g, '')}`;

/**
 * `chat.completions.create`: resolves to a `chat.completion`, or (with `stream: true`)
 * to an async iterable of `chat.completion.chunk` objects. `signal` (not OpenAI's) aborts.
 */
export async function createChatCompletion(llm, KvChatError, req, { signal } = {}) {
  const { messages, options, n } = toOptions(KvChatError, req);
  const meta = { id: newId(), created: Math.floor(Date.now() / 1000), model: req.model ?? llm.modelName, system_fingerprint: `kvchat-${llm.backend}` };
  const wantLogprobs = Boolean(req.logprobs);
  if (req.stream) return streamChunks(llm, messages, options, n, meta, wantLogprobs, req.stream_options?.include_usage, signal);
  const results = await runChoices(llm, messages, options, n, signal, () => {});
  return {
    ...meta,
    object: 'chat.completion',
    choices: results.map((r, index) => ({
      index,
      message: messageOf(r, index),
      logprobs: toLogprobs(r.logprobs, wantLogprobs),
      finish_reason: finishReason(r),
    })),
    usage: usageOf(results[0].promptTokens, results.reduce((a, r) => a + r.completionTokens, 0), results[0].cachedTokens),
  };
}

/**
 * Runs the `n` choices: one generation (the cached prefix reused) or a batch of n
 * sequences (each its own seed). `onPiece(index, text)` streams; resolves to each
 * choice's `{ text, stopReason, logprobs, promptTokens, completionTokens, cachedTokens }`.
 */
async function runChoices(llm, messages, options, n, signal, onPiece) {
  if (n === 1) {
    let text = '';
    for await (const piece of llm.generate(messages, { ...options, signal })) { text += piece; onPiece(0, piece); }
    const r = llm.lastResult;
    return [{ text, stopReason: r.stopReason, logprobs: r.logprobs, toolCalls: r.toolCalls, content: r.content, promptTokens: r.promptTokens, completionTokens: r.generatedIds.length, cachedTokens: r.stats.reusedTokens }];
  }
  const seed = options.seed;
  const inputs = Array.from({ length: n }, (_, i) => ({ input: messages, ...(seed != null ? { seed: seed + i } : {}) }));
  const results = new Array(n);
  for await (const ev of llm.generateBatch(inputs, { ...options, batchSize: n, signal })) {
    if (ev.piece) onPiece(ev.index, ev.piece);
    if (ev.done) results[ev.index] = { text: ev.text, stopReason: ev.stopReason, logprobs: ev.logprobs, toolCalls: ev.toolCalls, content: ev.content, promptTokens: ev.stats.promptTokens, completionTokens: ev.generatedTokens, cachedTokens: 0 };
  }
  return results;
}

/** The streamed form: a role chunk per choice, content deltas, then each choice's finish. */
async function* streamChunks(llm, messages, options, n, meta, wantLogprobs, includeUsage, signal) {
  const chunk = (choices, extra = {}) => ({ ...meta, object: 'chat.completion.chunk', choices, ...extra });
  const queue = [];
  let wake = null;
  const push = (c) => { queue.push(c); wake?.(); wake = null; };
  for (let index = 0; index < n; index++) push(chunk([{ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]));
  let settled = false;
  let failure = null;
  let results = null;
  // With tools the text may turn out to be a call: each choice comes whole at its end.
  const streamText = !options.tools || options.toolChoice === 'none';
  const run = runChoices(llm, messages, options, n, signal, (index, piece) => {
    if (piece && streamText) push(chunk([{ index, delta: { content: piece }, logprobs: null, finish_reason: null }]));
  }).then((r) => { results = r; }, (e) => { failure = e; }).finally(() => { settled = true; push(null); });
  for (;;) {
    if (!queue.length) await new Promise((r) => { wake = r; });
    const c = queue.shift();
    if (c === null) {
      if (!settled) continue;
      await run;
      if (failure) throw failure;
      break;
    }
    yield c;
  }
  // Log-probabilities come with each choice's last chunk (kvchat streams text by
  // whole characters, which do not always fall on token boundaries).
  for (const [index, r] of results.entries()) {
    let delta = {};
    if (!streamText) {
      const m = messageOf(r, index);
      delta = m.tool_calls ? { tool_calls: m.tool_calls.map((c, i) => ({ index: i, ...c })) } : { content: m.content };
    }
    yield chunk([{ index, delta, logprobs: toLogprobs(r.logprobs, wantLogprobs), finish_reason: finishReason(r) }]);
  }
  if (includeUsage) {
    yield chunk([], { usage: usageOf(results[0].promptTokens, results.reduce((a, r) => a + r.completionTokens, 0), results[0].cachedTokens) });
  }
}
