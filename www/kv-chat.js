// <kv-chat model="…" backend="auto" kv-window="1024" allowed-origins="https://…"></kv-chat>:
// (also kv-sinks, kv-f16, kv-cold, kv-cold-bits, kv-recall: KvChat.load's options)
// a compact chat box for any static page. Model output is inserted as text, never as HTML.
// Removing the element stops its worker (also mid-load); putting it back loads again.
import { KvChat, DEFAULT_MODEL } from './kvchat.js';

const num = (v) => (v === null || v === '' ? undefined : Number(v));
const list = (v) => (v === null ? undefined : v.split(/[\s,]+/).filter(Boolean));
// The conversation kept: past this many messages the oldest half is dropped (in
// one step, so the engine's prefix reuse breaks once per half, not every turn).
const MAX_MESSAGES = 64;

class KvChatElement extends HTMLElement {
  #llm = null;
  #messages = [];
  #controller = null;
  #ui = null;
  #loading = null; // the AbortController of the load in flight

  connectedCallback() {
    if (this.#ui) return;
    // Reconnected: the shadow root stays from the first time; its contents are rebuilt.
    const root = this.shadowRoot ?? this.attachShadow({ mode: 'open' });
    const css = document.createElement('link');
    css.rel = 'stylesheet';
    css.href = new URL('./kv-chat.css', import.meta.url).href;
    const box = document.createElement('div');
    box.className = 'box';
    box.innerHTML = `
      <div class="status" part="status">loading…</div>
      <div class="log" part="log" aria-live="polite"></div>
      <form part="form"><input part="input" placeholder="Ask something…" disabled>
      <button type="submit" part="send" disabled>Send</button><button type="button" part="stop" disabled>Stop</button></form>`;
    root.replaceChildren(css, box);
    this.#messages = [];
    const q = (s) => box.querySelector(s);
    this.#ui = { status: q('.status'), log: q('.log'), form: q('form'), input: q('input'), send: q('[part=send]'), stop: q('[part=stop]') };
    this.#ui.form.addEventListener('submit', (e) => { e.preventDefault(); this.ask(this.#ui.input.value); this.#ui.input.value = ''; });
    this.#ui.stop.addEventListener('click', () => this.#controller?.abort());
    this.#load();
  }

  disconnectedCallback() {
    this.#loading?.abort(); // a load still running ends with its worker
    this.#controller?.abort();
    this.#llm?.dispose();
    this.#llm = null;
    this.#ui = null;
  }

  /** The underlying KvChat instance (null until loaded). */
  get llm() { return this.#llm; }

  async #load() {
    const ui = this.#ui;
    const loading = new AbortController();
    this.#loading = loading;
    try {
      const llm = await KvChat.load({
        model: this.getAttribute('model') || DEFAULT_MODEL,
        backend: this.getAttribute('backend') || 'auto',
        kvWindow: num(this.getAttribute('kv-window')),
        kvSinks: num(this.getAttribute('kv-sinks')),
        kvF16: this.hasAttribute('kv-f16') || undefined,
        kvCold: num(this.getAttribute('kv-cold')),
        kvColdBits: num(this.getAttribute('kv-cold-bits')),
        kvRecall: num(this.getAttribute('kv-recall')),
        allowedOrigins: list(this.getAttribute('allowed-origins')),
        signal: loading.signal,
        onProgress: ({ phase, loaded, total }) => {
          ui.status.textContent = phase === 'init' ? 'starting the engine…' : `${phase === 'cache' ? 'reading cache' : 'downloading'} ${total ? Math.round((100 * loaded) / total) : 0}%`;
        },
      });
      this.#llm = llm;
      ui.status.textContent = 'ready';
      ui.input.disabled = ui.send.disabled = false;
      this.dispatchEvent(new CustomEvent('ready'));
    } catch (e) {
      if (loading.signal.aborted) return; // removed while loading
      ui.status.textContent = `could not load the model: ${e.message}`;
      this.dispatchEvent(new CustomEvent('error', { detail: e }));
    }
  }

  async ask(text) {
    const ui = this.#ui;
    if (!this.#llm || !text.trim() || this.#controller) return;
    const add = (cls, t) => { const d = document.createElement('div'); d.className = `msg ${cls}`; d.textContent = t; ui.log.append(d); ui.log.scrollTop = ui.log.scrollHeight; return d; };
    if (this.#messages.length >= MAX_MESSAGES) {
      this.#messages.splice(0, MAX_MESSAGES / 2);
      while (ui.log.childElementCount > MAX_MESSAGES / 2) ui.log.firstElementChild.remove();
    }
    this.#messages.push({ role: 'user', content: text });
    add('user', text);
    const out = add('assistant', '');
    this.#controller = new AbortController();
    ui.send.disabled = true;
    ui.stop.disabled = false;
    let answer = '';
    try {
      const opts = { maxTokens: num(this.getAttribute('max-tokens')) ?? 256, temperature: num(this.getAttribute('temperature')) ?? 0.7, signal: this.#controller.signal };
      for await (const piece of this.#llm.generate(this.#messages, opts)) {
        answer += piece;
        out.textContent = answer;
        ui.log.scrollTop = ui.log.scrollHeight;
      }
    } catch (e) {
      if (e.name !== 'AbortError') add('note', `error: ${e.message}`);
    } finally {
      this.#messages.push({ role: 'assistant', content: answer });
      this.#controller = null;
      if (this.#ui === ui) { // else removed while answering
        ui.send.disabled = false;
        ui.stop.disabled = true;
      }
      this.dispatchEvent(new CustomEvent('answer', { detail: answer }));
    }
  }
}

if (!customElements.get('kv-chat')) customElements.define('kv-chat', KvChatElement);
export { KvChatElement };
