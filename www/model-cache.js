// The models kept for offline use: one Cache API entry per model URL. The engine
// worker (www/worker.js) stores a model only after the engine has loaded it, checks
// a stored copy against the server before using it (its ETag and length, when the
// server answers), and keeps the set bounded: at most MAX_MODELS entries and
// MAX_BYTES in all, the longest-stored dropped first. The page lists and deletes them.

export const CACHE_NAME = 'kvchat-models-v1';
/** At most this many models are kept… */
export const MAX_MODELS = 4;
/** …and at most this many bytes of them. */
export const MAX_BYTES = 4 * 1024 ** 3;

/** The models' cache, or null where the Cache API is missing or refused (opaque origins, some private modes). */
export async function openModelCache() {
  if (!globalThis.caches) return null;
  try { return await caches.open(CACHE_NAME); } catch { return null; }
}

const lengthOf = (response) => Number(response?.headers.get('content-length')) || 0;

/** The stored models, the longest-stored first: `{ url, bytes }`. */
export async function listCachedModels() {
  const cache = await openModelCache();
  if (!cache) return [];
  const requests = await cache.keys();
  return Promise.all(requests.map(async (request) => ({ url: request.url, bytes: lengthOf(await cache.match(request)) })));
}

/** Deletes the stored copy of the model at `url`; true when there was one. */
export async function deleteCachedModel(url) {
  const cache = await openModelCache();
  return cache ? cache.delete(url) : false;
}

/**
 * Stores `bytes` as the model at `url` with the validators the server sent (`etag`,
 * `lastModified`), then drops the longest-stored other models until the set is within
 * MAX_MODELS and MAX_BYTES. Throws what the Cache API throws (a full quota).
 */
export async function storeModel(cache, url, bytes, { etag, lastModified } = {}) {
  const headers = { 'content-type': 'application/octet-stream', 'content-length': String(bytes.byteLength) };
  if (etag) headers.etag = etag;
  if (lastModified) headers['last-modified'] = lastModified;
  await cache.delete(url); // a re-stored model moves to the end of the order
  await cache.put(url, new Response(bytes, { headers }));
  const others = [];
  for (const request of await cache.keys()) if (request.url !== url) others.push({ request, bytes: lengthOf(await cache.match(request)) });
  let count = others.length + 1;
  let total = others.reduce((sum, m) => sum + m.bytes, bytes.byteLength);
  for (const m of others) {
    if (count <= MAX_MODELS && total <= MAX_BYTES) break;
    await cache.delete(m.request);
    count -= 1;
    total -= m.bytes;
  }
}

/**
 * Whether the stored `response` for `url` is still what the server has: a HEAD
 * request compares the ETag (when both have one) and the length. Offline, or when
 * the server does not answer HEAD (CORS, errors, 2 s without a reply), the stored
 * copy is used.
 */
export async function isCurrent(url, response) {
  let head;
  try {
    head = await fetch(url, { method: 'HEAD', cache: 'no-store', signal: AbortSignal.timeout(2000) });
  } catch {
    return true;
  }
  if (!head.ok) return head.status >= 500 || head.status === 405; // a server error or no HEAD says nothing about the file
  const [storedTag, serverTag] = [response.headers.get('etag'), head.headers.get('etag')];
  if (storedTag && serverTag && storedTag !== serverTag) return false;
  const serverLength = Number(head.headers.get('content-length')) || 0;
  return !serverLength || serverLength === lengthOf(response);
}
