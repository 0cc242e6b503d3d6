// kvchat's service worker: keeps the demo page's own files (HTML, JS, CSS, wasm)
// so a second visit works offline. Network first, so a new build is picked up
// when online; the model itself is cached by the engine worker (Cache API), not here.
// The cache is named after the build (pkg/build-id.js, written by scripts/build-wasm.sh;
// the browser re-checks imported scripts for changes): a new build installs its files
// into a cache of its own and the old builds' caches are deleted once it activates.
importScripts('./pkg/build-id.js');
const PREFIX = 'kvchat-shell-';
const SHELL = PREFIX + self.KVCHAT_BUILD;
const FILES = [
  './', './index.html',
  './www/app.js', './www/kvchat.js', './www/worker.js', './www/models.js', './www/model-cache.js', './www/picker.js',
  './www/cache-panel.js', './www/format.js', './www/kv-chat.js', './www/kv-chat.css', './www/style.css', './www/icon.svg',
  './pkg/build-id.js', './pkg/kvchat.js',
  // The wasm builds this build has (a first `make serve` has only simd128 until the others compile).
  ...(self.KVCHAT_WASM || ['./pkg/kvchat_bg.wasm', './pkg/kvchat_relaxed_bg.wasm']),
];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(SHELL).then((c) => c.addAll(FILES)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    const old = (await caches.keys()).filter((name) => name.startsWith(PREFIX) && name !== SHELL);
    await Promise.all(old.map((name) => caches.delete(name)));
    await self.clients.claim();
  })());
});

self.addEventListener('fetch', (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (req.method !== 'GET' || url.origin !== location.origin || url.pathname.endsWith('.gguf')) return;
  event.respondWith((async () => {
    const cache = await caches.open(SHELL);
    try {
      const res = await fetch(req);
      // Only whole responses of this build's files are kept (a Range reply's 206 is not).
      if (res.status === 200) event.waitUntil(cache.put(req, res.clone()).catch(() => {}));
      return res;
    } catch (e) {
      const hit = await cache.match(req, { ignoreSearch: true });
      if (hit) return hit;
      throw e;
    }
  })());
});
