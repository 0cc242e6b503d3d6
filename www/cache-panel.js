// The models stored in this browser (the Cache API), each with its size and a
// Delete button.
import { listCachedModels, deleteCachedModel } from './model-cache.js';
import { MODELS, modelUrl } from './models.js';
import { formatBytes } from './format.js';

const make = (tag, props = {}) => Object.assign(document.createElement(tag), props);

/** A built-in model's name, else the file name of the URL. */
const nameOf = (url) => MODELS.find((m) => modelUrl(m) === url)?.name ?? decodeURIComponent(new URL(url).pathname.split('/').pop() || url);

function entry(list, { url, bytes }) {
  const li = make('li', { title: url });
  li.setAttribute('data-testid', 'cached-model');
  const remove = make('button', { type: 'button', textContent: 'Delete' });
  remove.setAttribute('data-testid', 'cached-delete');
  remove.setAttribute('aria-label', `Delete ${nameOf(url)} from this browser`);
  remove.addEventListener('click', async () => {
    remove.disabled = true;
    await deleteCachedModel(url);
    await showCachedModels(list);
  });
  li.append(make('span', { className: 'cached-name', textContent: nameOf(url) }), make('span', { className: 'cached-size', textContent: formatBytes(bytes) }), remove);
  return li;
}

/** Lists the stored models in `list` (a <ul>). */
export async function showCachedModels(list) {
  const models = await listCachedModels();
  list.replaceChildren(...models.map((m) => entry(list, m)));
  if (!models.length) list.append(make('li', { className: 'empty', textContent: 'none: a downloaded model is kept here for offline use' }));
}
