// The model picker: the built-in models with their size and license (shown before
// anything is downloaded), a URL, or a GGUF file from this computer, which is read
// in this tab and handed to the engine worker, never uploaded.
import { MODELS, modelUrl } from './models.js';
import { formatBytes } from './format.js';

const make = (tag, props = {}) => Object.assign(document.createElement(tag), props);

/** One built-in model's line: its radio, name, quantization, size and license. */
function builtinOption(m) {
  const li = make('li');
  li.setAttribute('data-testid', 'model-option');
  li.dataset.model = m.id;
  const meta = make('span', { className: 'model-meta' });
  const license = make('a', { href: m.licenseUrl, target: '_blank', rel: 'noopener', textContent: m.license });
  meta.append(`${m.quant} · ${formatBytes(m.bytes)} · `, license, m.chat ? ' · chat' : ' · base model: plain completion');
  const label = make('label');
  label.append(make('input', { type: 'radio', name: 'model', value: m.id }), make('span', { className: 'model-title', textContent: m.name }), meta);
  li.append(label);
  return li;
}

/**
 * What the form has chosen: `{ kind: 'builtin' | 'url' | 'file', source, name }`, with
 * `bytes`, `license` and `licenseUrl` where known; null (and the form says why) when
 * the URL or the file is missing.
 */
function choiceOf(form) {
  const { model, url, file } = form.elements;
  url.setCustomValidity(model.value === 'url' && !url.value.trim() ? 'Type the URL of a .gguf file' : '');
  file.setCustomValidity(model.value === 'file' && !file.files.length ? 'Choose a .gguf file' : '');
  if (!form.reportValidity()) return null;
  if (model.value === 'url') return { kind: 'url', source: url.value.trim(), name: url.value.trim() };
  if (model.value === 'file') return { kind: 'file', source: file.files[0], name: file.files[0].name, bytes: file.files[0].size };
  const m = MODELS.find((x) => x.id === model.value);
  if (!m) return null;
  return { kind: 'builtin', source: modelUrl(m), name: m.name, bytes: m.bytes, license: m.license, licenseUrl: m.licenseUrl };
}

/**
 * Fills the picker `form` (index.html's .model-form) and calls `onLoad(choice)` when
 * Load is pressed. Returns `select(url)`, which picks the built-in model at `url`, or
 * else the URL entry with it (`?model=URL`), and returns that choice.
 */
export function createPicker(form, onLoad) {
  const { url, file } = form.elements;
  form.querySelector('.model-list').prepend(...MODELS.map(builtinOption));
  url.addEventListener('input', () => { form.elements.model.value = 'url'; });
  file.addEventListener('change', () => { form.elements.model.value = 'file'; });
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const choice = choiceOf(form);
    if (choice) onLoad(choice);
  });
  const select = (wanted) => {
    const m = MODELS.find((x) => modelUrl(x) === new URL(wanted, document.baseURI).href);
    if (m) form.elements.model.value = m.id;
    else { url.value = wanted; form.elements.model.value = 'url'; }
    return choiceOf(form);
  };
  return { select };
}
