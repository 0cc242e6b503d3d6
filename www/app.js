// The demo page: pick a model, chat with it (or continue text, for a base model
// without a chat template), watch the KV cache and the speed.
// All model output and error text is inserted with textContent, never as HTML.
import { KvChat, DEFAULT_MODEL, listCachedModels } from './kvchat.js';
import { formatBytes } from './format.js';
import { createPicker } from './picker.js';
import { showCachedModels } from './cache-panel.js';
import { createMemoryView } from './memory-view.js';

const $ = (sel) => document.querySelector(sel);
const el = {
  progress: $('[data-testid=progress]'), fill: $('.progress-fill'), label: $('.progress-label'),
  log: $('[data-testid=output]'), prompt: $('[data-testid=prompt]'), send: $('[data-testid=send]'),
  stop: $('[data-testid=stop]'), newChat: $('[data-testid=new-chat]'), composer: $('.composer'),
  settings: $('.settings-form'), reload: $('.reload'), banner: $('.banner'), modelName: $('.model-name'),
  backend: $('.backend-name'), kvSinks: $('.kv-sinks'), kvUsed: $('.kv-used'),
  coldView: $('.kv-cold-view'), kvRecalled: $('.kv-recalled'), kvCold: $('.kv-cold'), kvMap: $('.kv-map'), chart: $('.latency'),
  modelForm: $('.model-form'), loadModel: $('[data-testid=load-model]'), mode: $('[data-testid=mode]'), cacheList: $('[data-testid=cache-list]'),
  stat: (name) => $(`[data-stat=${name}]`),
};

// The batch tab: the same instruction over many lines, decoded together.
const batchUi = {
  view: $('[data-testid=batch]'), form: $('.batch-form'), run: $('[data-testid=batch-run]'),
  stop: $('[data-testid=batch-stop]'), results: $('[data-testid=batch-results]'), summary: $('[data-testid=batch-summary]'),
  table: $('[data-testid=batch-table]'),
};
// The memory tab: the conversation token by token, colored by where each token's keys and values live.
const memory = createMemoryView($('[data-testid=memory]'));
let batchRunning = false;
let batchController = null;

function showTab(name) {
  for (const b of document.querySelectorAll('.tabs [data-tab]')) b.setAttribute('aria-selected', String(b.dataset.tab === name));
  batchUi.view.hidden = name !== 'batch';
  memory.root.hidden = name !== 'memory';
  el.log.hidden = name !== 'chat';
  el.composer.hidden = name === 'batch';
  if (name === 'memory') memory.refresh(llm);
}
for (const b of document.querySelectorAll('.tabs [data-tab]')) b.addEventListener('click', () => showTab(b.dataset.tab));

async function runBatch() {
  const f = new FormData(batchUi.form);
  const instruction = String(f.get('instruction') || '').trim();
  const items = String(f.get('items') || '').split('\n').map((l) => l.trim()).filter(Boolean);
  if (!items.length || !llm) return;
  const { gen } = settings();
  const fields = f.get('extract') === 'on' ? String(f.get('fields') || '').split(',').map((x) => x.trim()).filter(Boolean) : [];
  const responseFormat = fields.length ? { type: 'json_schema', schema: extractionSchema(fields) } : undefined;
  showTable(fields, items);
  // A base model has no chat template: the instruction and the item as plain text.
  const inputs = items.map((item) => (chatMode ? [
    ...(instruction ? [{ role: 'system', content: instruction }] : []),
    { role: 'user', content: item },
  ] : [instruction, item].filter(Boolean).join('\n')));
  batchUi.results.replaceChildren();
  const answers = items.map((item) => {
    const li = document.createElement('li');
    li.className = 'queued';
    const q = document.createElement('div');
    q.className = 'item';
    q.textContent = item;
    const a = document.createElement('div');
    a.className = 'answer';
    li.append(q, a);
    batchUi.results.append(li);
    return { li, a };
  });
  batchController = new AbortController();
  batchRunning = true;
  setBusy(true);
  const t0 = performance.now();
  let tokens = 0;
  let finished = 0;
  try {
    const opts = { ...gen, responseFormat, noCache: undefined, batchSize: Number(f.get('batchSize')) || 8, signal: batchController.signal };
    for await (const ev of llm.generateBatch(inputs, opts)) {
      const { li, a } = answers[ev.index];
      if (ev.done) {
        li.className = 'done';
        a.textContent = ev.text;
        if (fields.length) fillRow(ev.index, fields, ev.text);
        tokens += ev.generatedTokens;
        finished += 1;
      } else {
        li.className = 'running';
        a.textContent += ev.piece;
      }
      const secs = (performance.now() - t0) / 1000;
      const s = llm.lastBatchStats;
      batchUi.summary.textContent = `${finished} / ${items.length} done · ${(s ? s.generatedTokens : tokens)} tokens in ${secs.toFixed(1)} s · `
        + `${fmt(s ? s.tokensPerSec : tokens / secs, ' tok/s')} overall`
        + (s ? ` · ${fmt(s.decodeTokensPerSec, ' tok/s')} batched decode on ${s.backend} · batch ${s.batchSize} · ${s.sharedPrefixTokens} shared prefix tokens · ${mib(s.kvBytesPerSequence)} KV per sequence` : '');
    }
  } catch (e) {
    if (e.name !== 'AbortError') showBanner(`Batch failed: ${e.message}`);
    else batchUi.summary.textContent += ' · stopped';
  } finally {
    batchRunning = false;
    batchController = null;
    setBusy(false);
    updateStats();
  }
}
/** Each field a short string (the mask writes the object; the model fills in the values). */
function extractionSchema(fields) {
  const properties = Object.fromEntries(fields.map((name) => [name, { type: 'string', maxLength: 60 }]));
  return { type: 'object', properties, required: fields, additionalProperties: false };
}

/** The extraction table: one row per line, one column per field (hidden without fields). */
function showTable(fields, items) {
  batchUi.table.hidden = !fields.length;
  batchUi.results.hidden = fields.length > 0;
  const head = document.createElement('tr');
  for (const name of ['line', ...fields]) head.append(Object.assign(document.createElement('th'), { textContent: name }));
  batchUi.table.tHead.replaceChildren(head);
  batchUi.table.tBodies[0].replaceChildren(...items.map((item) => {
    const tr = document.createElement('tr');
    tr.append(Object.assign(document.createElement('td'), { textContent: item }), ...fields.map(() => document.createElement('td')));
    return tr;
  }));
}

function fillRow(index, fields, text) {
  const cells = batchUi.table.tBodies[0].rows[index].cells;
  let value = null;
  try { value = JSON.parse(text); } catch { /* cut short by max tokens: shown as it is */ }
  fields.forEach((name, i) => { cells[i + 1].textContent = value ? String(value[name] ?? '') : text; });
}

batchUi.form.addEventListener('submit', (e) => { e.preventDefault(); runBatch(); });
batchUi.stop.addEventListener('click', () => batchController?.abort());

let llm = null;
/** The model the picker chose (see picker.js). */
let choice = null;
/** False for a base model (no chat template): the composer continues text instead. */
let chatMode = true;
let messages = [];
let controller = null;
let latencies = [];

const mib = (b) => `${(b / 1048576).toFixed(1)} MiB`;
const fmt = (x, unit = '') => (Number.isFinite(x) && x > 0 ? `${x.toFixed(1)}${unit}` : '–');

function setProgress(state, fraction, text) {
  el.progress.dataset.state = state;
  el.fill.style.width = `${Math.round(Math.max(0, Math.min(1, fraction)) * 100)}%`;
  el.label.textContent = text;
}

function showBanner(text, action) {
  el.banner.replaceChildren();
  el.banner.append(document.createTextNode(text));
  if (action) {
    const b = document.createElement('button');
    b.textContent = action.label;
    b.addEventListener('click', action.run);
    el.banner.append(b);
  }
  el.banner.hidden = false;
}

function setBusy(busy) {
  batchUi.run.disabled = busy || !llm;
  batchUi.stop.disabled = !batchRunning;
  el.send.disabled = busy || !llm;
  el.prompt.disabled = !llm;
  el.stop.disabled = !busy;
  el.newChat.disabled = busy || !llm;
  el.reload.disabled = busy;
  el.loadModel.disabled = busy;
}

function settings() {
  const f = new FormData(el.settings);
  const num = (k) => Number(f.get(k));
  return {
    gen: { temperature: num('temperature'), topK: num('topK'), topP: num('topP'), maxTokens: num('maxTokens'), noCache: f.get('noCache') === 'on' },
    engine: { kvWindow: num('kvWindow'), kvSinks: num('kvSinks'), kvCold: f.get('kvCold') === '' ? 'auto' : num('kvCold'), kvRecall: f.get('kvRecall') === '' ? undefined : num('kvRecall'), kvColdBits: num('kvColdBits'), kvF16: f.get('kvF16'), backend: f.get('backend') },
  };
}

/** Tokens the page's cold tier keeps when its field is empty (auto). */
const AUTO_COLD_TOKENS = 8192;

/**
 * Whether the model will run on the CPU with these engine settings: backend cpu, or auto
 * without a hardware WebGPU adapter (the worker's own rule; if a GPU then fails to load
 * the model, the CPU runs it with the settings chosen for the GPU).
 */
async function runsOnCpu({ backend }) {
  if (backend !== 'auto') return backend === 'cpu';
  const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
  return !adapter || !!adapter.info?.isFallbackAdapter;
}

/**
 * The "auto" settings resolved where the model will run. On the CPU: a cold tier of
 * AUTO_COLD_TOKENS (it has no WebGPU path: asking for it moves the model to the CPU) and an
 * f16 cache (half the memory; in Chromium its attention is the faster one). On a GPU: neither
 * (the f16 cache's speed on hardware GPUs is unmeasured).
 */
async function resolveAuto(engine) {
  if (engine.kvCold !== 'auto' && engine.kvF16 !== 'auto') return { ...engine, kvF16: engine.kvF16 === 'f16' };
  const cpu = await runsOnCpu(engine);
  return {
    ...engine,
    kvCold: engine.kvCold === 'auto' ? (cpu ? AUTO_COLD_TOKENS : 0) : engine.kvCold,
    kvF16: engine.kvF16 === 'auto' ? cpu : engine.kvF16 === 'f16',
  };
}

function addMessage(role, text) {
  el.log.querySelector('.empty')?.remove();
  const div = document.createElement('div');
  div.className = `msg ${role}`;
  div.textContent = text;
  el.log.append(div);
  el.log.scrollTop = el.log.scrollHeight;
  return div;
}

/** The progress line while `picked` loads: bytes read from the network, the cache or the file. */
function showLoadProgress(picked, { phase, loaded, total }) {
  if (phase === 'init') { setProgress('loading', 1, 'initializing the engine…'); return; }
  const frac = total ? loaded / total : 0;
  const verb = picked.kind === 'file' ? 'reading the file' : phase === 'cache' ? 'from cache' : 'downloading';
  setProgress('loading', frac, `${verb} ${mib(loaded)}${total ? ` / ${mib(total)} (${Math.round(frac * 100)}%)` : ''}`);
}

/** Chat for a model with a chat template, plain completion for a base model. */
function setMode(chat) {
  chatMode = chat;
  el.mode.textContent = chat ? 'chat model: messages go through its chat template' : 'base model: plain completion (no chat template): your text is continued';
  el.mode.dataset.mode = chat ? 'chat' : 'completion';
  el.prompt.placeholder = chat ? 'Ask something… (Enter sends, Shift+Enter for a new line)' : 'Text to continue… (Enter continues it, Shift+Enter for a new line)';
  el.send.textContent = chat ? 'Send' : 'Continue';
}

let loads = 0;
let loading = null; // the AbortController of the load in flight
async function load() {
  const ticket = ++loads;
  // A new load (Reload, Retry, another model) stops the one in flight: one worker, one download.
  loading?.abort();
  const controller = new AbortController();
  loading = controller;
  const picked = choice;
  llm?.dispose();
  llm = null;
  memory.clear();
  setBusy(false);
  el.banner.hidden = true;
  setProgress('loading', 0, 'starting…');
  const engine = await resolveAuto(settings().engine);
  if (ticket !== loads) return;
  el.modelName.textContent = picked.license ? `${picked.name} · ${picked.license}` : picked.name;
  let loaded;
  try {
    // A load overtaken by a newer one no longer draws the progress line.
    const onProgress = (p) => { if (ticket === loads) showLoadProgress(picked, p); };
    loaded = await KvChat.load({ model: picked.source, ...engine, onProgress, signal: controller.signal });
  } catch (e) {
    if (ticket !== loads) return;
    loading = null;
    setProgress('error', 1, 'failed');
    showBanner(`Could not load the model: ${e.message}`, { label: 'Retry', run: load });
    return;
  }
  // Another model was chosen while this one loaded.
  if (ticket !== loads) { loaded.dispose(); return; }
  loading = null;
  llm = loaded;
  llm.onCrash = (e) => {
    llm = null;
    memory.clear();
    setBusy(false);
    showBanner(`${e.message}.`, { label: 'Reload the model', run: load });
  };
  const src = picked.kind === 'file' ? 'read from the file' : llm.fromCache ? 'from cache' : 'downloaded';
  setProgress('ready', 1, `ready (${src} in ${(llm.timings.fetchMs / 1000).toFixed(1)} s, init ${(llm.timings.initMs / 1000).toFixed(1)} s)`);
  setMode(llm.info.chatTemplate !== false);
  el.backend.textContent = llm.backend;
  await restoreConversation(picked, engine);
  setBusy(false);
  el.prompt.focus();
  updateStats();
  showCachedModels(el.cacheList);
}

let shownFallback = false;
async function updateStats() {
  if (!llm) return;
  memory.refresh(llm);
  let s;
  try { s = await llm.stats(); } catch { return; }
  el.backend.textContent = s.backend === 'webgpu'
    ? `webgpu · ${s.adapter?.name ?? 'GPU'}`
    : [s.backend, s.simd, s.threads ? `${s.threads} thread${s.threads > 1 ? 's' : ''}` : null].filter(Boolean).join(' · ');
  el.backend.title = s.fallback ?? s.gpuError ?? '';
  if (s.fallback && !shownFallback) {
    shownFallback = true;
    showBanner(`The GPU device was lost; the conversation continues on the CPU (${s.fallback}).`);
  }
  el.stat('ttft').textContent = fmt(s.timeToFirstTokenMs, ' ms');
  el.stat('prefill').textContent = fmt(s.prefillTokensPerSec, ' tok/s');
  el.stat('decode').textContent = fmt(s.decodeTokensPerSec, ' tok/s');
  el.stat('tokens').textContent = s.promptTokens ? `${s.promptTokens} / ${s.generatedTokens} / ${s.reusedTokens}` : '–';
  el.stat('memory').textContent = mib(s.wasmMemoryBytes);
  const kv = s.kv;
  if (kv) {
    el.kvSinks.style.width = `${(100 * kv.sinks) / kv.capacity}%`;
    el.kvUsed.style.width = `${(100 * (kv.used - kv.sinks)) / kv.capacity}%`;
    el.stat('kv').textContent = `${kv.used} / ${kv.capacity} tokens · ${kv.sinks} sinks · ${kv.evicted} evicted · ${mib(kv.bytes)}`;
    // The cold tier: what left the window, kept compressed; the part recalled at the last step.
    const cold = kv.cold;
    el.coldView.hidden = !cold;
    if (cold) {
      el.kvRecalled.style.width = `${(100 * Math.min(cold.recalledTokens, cold.used)) / cold.capacity}%`;
      el.kvCold.style.width = `${(100 * Math.max(0, cold.used - cold.recalledTokens)) / cold.capacity}%`;
      el.stat('kv-cold').textContent = `cold: ${cold.used} / ${cold.capacity} tokens · ${cold.recalledTokens} recalled per layer and head · ${cold.evicted} dropped · ${mib(cold.bytes)}`;
      drawMemoryMap(kv, s.recalled ?? []);
    }
  }
}

/**
 * The conversation's tokens from first to last, colored by where their keys and values live:
 * sinks, dropped (past the cold tier's capacity), the cold tier (compressed), the window; above
 * the cold part, the blocks the last token recalled, brighter the more layers and heads chose them.
 */
function drawMemoryMap(kv, recalled) {
  const c = el.kvMap;
  const ctx = c.getContext('2d');
  const w = c.width, h = c.height, total = kv.used + kv.evicted;
  ctx.clearRect(0, 0, w, h);
  if (!total) return;
  const x = (p) => (p / total) * w;
  const span = (from, to, color, top = 10) => {
    if (to <= from) return;
    ctx.fillStyle = color;
    ctx.fillRect(x(from), top, Math.max(1, x(to) - x(from)), h - top);
  };
  const sinks = kv.sinks, cold = kv.cold;
  const hotFrom = total - (kv.used - sinks);
  span(0, sinks, '#f5b14c');
  span(sinks, sinks + cold.evicted, '#555');
  span(sinks + cold.evicted, sinks + cold.evicted + cold.used, '#4a6f96');
  span(hotFrom, total, '#5eb1ff');
  const most = Math.max(1, ...recalled.map((b) => b.heads));
  for (const b of recalled) {
    ctx.globalAlpha = 0.35 + (0.65 * b.heads) / most;
    span(b.start, b.start + b.tokens, '#7ee0a1', 0);
  }
  ctx.globalAlpha = 1;
}

function drawChart() {
  const c = el.chart;
  const ctx = c.getContext('2d');
  const w = c.width, h = c.height;
  ctx.clearRect(0, 0, w, h);
  const data = latencies.slice(-120);
  if (!data.length) return;
  const max = Math.max(...data, 1);
  ctx.strokeStyle = '#5eb1ff';
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  data.forEach((v, i) => {
    const x = (i / Math.max(1, data.length - 1)) * (w - 4) + 2;
    const y = h - 4 - (v / max) * (h - 16);
    if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
  });
  ctx.stroke();
  ctx.fillStyle = '#8b95a3';
  ctx.font = '10px system-ui';
  ctx.fillText(`max ${max.toFixed(0)} ms · last ${data[data.length - 1].toFixed(0)} ms`, 4, 11);
}

/**
 * Streams what the model generates for `input` into `out`; `box` carries the
 * streaming cursor. Returns the generated text (so far, when stopped).
 */
async function stream(input, box, out) {
  box.classList.add('streaming');
  controller = new AbortController();
  setBusy(true);
  latencies = [];
  let text = '';
  let last = performance.now();
  const timer = setInterval(updateStats, 500);
  try {
    const { gen } = settings();
    const responseFormat = chatFormat(new FormData(el.settings));
    for await (const piece of llm.generate(input, { ...gen, responseFormat, signal: controller.signal })) {
      const now = performance.now();
      // The first piece waits for the prefill: the chart shows decode latency only.
      if (text) latencies.push(now - last);
      last = now;
      text += piece;
      out.textContent = text;
      el.log.scrollTop = el.log.scrollHeight;
      if (latencies.length % 4 === 0) drawChart();
    }
  } catch (e) {
    if (e.name === 'AbortError') addMessage('note', 'stopped');
    else if (llm) addMessage('note', `error: ${e.message}`);
  } finally {
    clearInterval(timer);
    box.classList.remove('streaming');
    controller = null;
    setBusy(false);
    drawChart();
    updateStats();
  }
  return text;
}

/** The structured-output switch: a JSON schema from the box (invalid JSON throws, shown as the turn's error). */
function chatFormat(f) {
  if (f.get('structured') !== 'on') return undefined;
  let schema;
  try { schema = JSON.parse(String(f.get('schema'))); } catch (e) { throw new Error(`the schema is not JSON: ${e.message}`); }
  return { type: 'json_schema', schema };
}
el.settings.elements.structured.addEventListener('change', (e) => { el.settings.elements.schema.hidden = !e.target.checked; });

/** A chat turn: the conversation so far through the model's chat template. */
async function send(text) {
  messages.push({ role: 'user', content: text });
  addMessage('user', text);
  const out = addMessage('assistant', '');
  const answer = await stream(messages, out, out);
  messages.push({ role: 'assistant', content: answer });
  await saveConversation();
}

// The conversation survives a reload (the third tier of the cache): after each chat turn on the
// CPU backend the page saves the whole KV cache as a session in the origin-private file system and
// the messages in sessionStorage (this tab's); a reload with the same model and cache settings
// restores both, so the next turn prefills only its new tokens. New chat and Reload forget it.
// (Two tabs share the one saved cache: a restore that does not match the messages costs a
// re-prefill, never a wrong answer: the engine compares token ids.)
const SAVED = 'kvchat-page-conversation';
let conversationKey = null;
async function saveConversation() {
  if (!llm || !conversationKey || llm.backend !== 'cpu' || !messages.length) return;
  try {
    await llm.saveSession('page');
    sessionStorage.setItem(SAVED, JSON.stringify({ key: conversationKey, messages }));
  } catch { /* not saved: the conversation simply will not survive a reload */ }
}
async function restoreConversation(picked, engine) {
  conversationKey = typeof picked.source === 'string' ? JSON.stringify({ model: picked.source, engine }) : null;
  let saved = null;
  try { saved = JSON.parse(sessionStorage.getItem(SAVED) ?? 'null'); } catch { /* unreadable: nothing to restore */ }
  if (!conversationKey || saved?.key !== conversationKey || !saved.messages?.length || llm.backend !== 'cpu') return;
  try {
    await llm.restoreSession('page');
  } catch {
    return;
  }
  messages = saved.messages;
  el.log.replaceChildren();
  for (const m of messages) addMessage(m.role, m.content);
  updateStats();
}
function forgetConversation() {
  sessionStorage.removeItem(SAVED);
  llm?.deleteSession('page').catch(() => {});
}

/**
 * Plain completion (a base model): the text, then its continuation; the whole
 * goes back into the box so Continue extends it (the cached prefix is reused).
 */
async function complete(text) {
  const doc = addMessage('completion', '');
  const continuation = document.createElement('span');
  continuation.className = 'continuation';
  doc.append(text, continuation);
  const more = await stream(text, doc, continuation);
  if (!el.prompt.value) el.prompt.value = text + more;
}

el.composer.addEventListener('submit', (e) => {
  e.preventDefault();
  const text = el.prompt.value;
  if (!llm || !text.trim()) return;
  el.prompt.value = '';
  if (chatMode) send(text);
  else complete(text);
});
el.prompt.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    if (!el.send.disabled) el.composer.requestSubmit();
  }
});
el.stop.addEventListener('click', () => controller?.abort());
el.newChat.addEventListener('click', async () => {
  messages = [];
  forgetConversation();
  el.log.replaceChildren();
  const p = document.createElement('p');
  p.className = 'empty';
  p.textContent = 'New chat: the KV cache is empty.';
  el.log.append(p);
  await llm?.reset();
  updateStats();
});
/** Loads `choice` afresh: a new conversation with it. */
function restart() {
  messages = [];
  forgetConversation();
  el.log.replaceChildren();
  load();
}
el.reload.addEventListener('click', restart);
const picker = createPicker(el.modelForm, (picked) => { choice = picked; restart(); });
// `?model=URL` picks that model (a built-in one, or the URL entry).
choice = picker.select(new URLSearchParams(location.search).get('model') || DEFAULT_MODEL);

// The page's own files are kept by a service worker so a second visit works offline
// (the model is kept by the engine in the Cache API).
if ('serviceWorker' in navigator && location.protocol !== 'file:') {
  navigator.serviceWorker.register(new URL('../sw.js', import.meta.url)).catch(() => {});
}

/**
 * A shared link's `?model=` on another origin is untrusted: it would download up to
 * gigabytes into this browser's storage and show that file's text as the answer. The
 * page says where the model comes from and its size, and waits for a click (a model
 * already in the cache was accepted before).
 */
async function askBeforeForeignModel(picked) {
  const url = new URL(picked.source, document.baseURI);
  let size = 'size unknown';
  try {
    const head = await fetch(url, { method: 'HEAD' });
    const n = Number(head.headers.get('content-length'));
    if (head.ok && n) size = formatBytes(n);
  } catch { /* no CORS for HEAD, or offline: the size stays unknown */ }
  setProgress('idle', 0, 'waiting for your confirmation');
  el.modelName.textContent = url.href;
  showBanner(`This link asks to download a model from ${url.origin} (${size}). Its answers are whatever that file produces.`, { label: 'Download and load it', run: load });
}

showCachedModels(el.cacheList);
// (Not http(s): no question to ask, the load fails with its error.)
const linked = choice?.kind === 'url' ? new URL(choice.source, document.baseURI) : null;
const foreign = linked && /^https?:$/.test(linked.protocol) && linked.origin !== location.origin;
if (foreign && !(await listCachedModels()).some((m) => m.url === linked.href)) askBeforeForeignModel(choice);
else load();
