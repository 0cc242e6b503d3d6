// The models kept for offline use: one Cache API entry per model URL, so loading
// another model never evicts one already stored (only the browser's storage quota
// can). The engine worker (www/worker.js) writes them; the page lists and deletes them.

export const CACHE_NAME = 'kvchat-models-v1';

/** The models' cache, or null where the Cache API is missing or refused (opaque origins, some private modes). */
export async function openModelCache() {
  if (!globalThis.caches) return null;
  try { return await caches.open(CACHE_NAME); } catch { return null; }
}

/** The stored models, in the order they were stored: `{ url, bytes }`. */
export async function listCachedModels() {
  const cache = await openModelCache();
  if (!cache) return [];
  const requests = await cache.keys();
  return Promise.all(requests.map(async (request) => {
    const response = await cache.match(request);
    return { url: request.url, bytes: Number(response?.headers.get('content-length')) || 0 };
  }));
}

/** Deletes the stored copy of the model at `url`; true when there was one. */
export async function deleteCachedModel(url) {
  const cache = await openModelCache();
  return cache ? cache.delete(url) : false;
}
