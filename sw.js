// kvchat's service worker: keeps the demo page's own files (HTML, JS, CSS, wasm)
// so a second visit works offline. Network first, so a new build is picked up
// when online; the model itself is cached by the engine worker (Cache API), not here.
const SHELL = 'kvchat-shell-v1';
const FILES = ['./', './index.html', './www/app.js', './www/kvchat.js', './www/worker.js', './www/models.js', './www/model-cache.js', './www/picker.js', './www/cache-panel.js', './www/format.js', './www/style.css', './www/icon.svg', './pkg/kvchat.js', './pkg/kvchat_bg.wasm'];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(SHELL).then((c) => c.addAll(FILES)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(self.clients.claim());
});

self.addEventListener('fetch', (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (req.method !== 'GET' || url.origin !== location.origin || url.pathname.endsWith('.gguf')) return;
  event.respondWith((async () => {
    try {
      const res = await fetch(req);
      if (res.ok) {
        const copy = res.clone();
        caches.open(SHELL).then((c) => c.put(req, copy)).catch(() => {});
      }
      return res;
    } catch (e) {
      const hit = await caches.match(req, { ignoreSearch: true });
      if (hit) return hit;
      throw e;
    }
  })());
});
