// A static file server for the repository root (no dependencies): `node scripts/serve.mjs [port]`.
// Sends COOP/COEP headers (so a threaded build could be chosen), correct MIME types, and
// never serves files outside the root. Set KVCHAT_NO_ISOLATION=1 to serve like a plain static host,
// KVCHAT_CSP=1 to add the strict Content-Security-Policy the page must work under.
import { createServer } from 'node:http';
import { createReadStream, statSync } from 'node:fs';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(fileURLToPath(new URL('..', import.meta.url)));
const port = Number(process.argv[2] || process.env.PORT || 8080);
const host = process.env.HOST || '127.0.0.1';
const isolate = !process.env.KVCHAT_NO_ISOLATION;
const types = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.json': 'application/json', '.wasm': 'application/wasm', '.gguf': 'application/octet-stream',
  '.svg': 'image/svg+xml', '.png': 'image/png', '.ts': 'text/plain; charset=utf-8', '.txt': 'text/plain; charset=utf-8',
};

const server = createServer((req, res) => {
  let path;
  try {
    path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  } catch {
    res.writeHead(400).end('bad request');
    return;
  }
  let file = normalize(join(root, path));
  if (file !== root && !file.startsWith(root + sep)) {
    res.writeHead(403).end('forbidden');
    return;
  }
  let st;
  try {
    st = statSync(file);
    if (st.isDirectory()) { file = join(file, 'index.html'); st = statSync(file); }
  } catch {
    res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found: ${path}`);
    return;
  }
  const headers = {
    'content-type': types[extname(file)] || 'application/octet-stream',
    'content-length': st.size,
    'cache-control': 'no-cache',
  };
  if (process.env.KVCHAT_CSP) {
    // The strict policy the demo and the embed must work under.
    headers['content-security-policy'] = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'";
  }
  if (process.env.KVCHAT_CORS) {
    // For the wasm-bindgen tests, whose page lives on the test runner's own origin.
    headers['access-control-allow-origin'] = '*';
  }
  if (isolate) {
    headers['cross-origin-opener-policy'] = 'same-origin';
    headers['cross-origin-embedder-policy'] = 'require-corp';
    headers['cross-origin-resource-policy'] = process.env.KVCHAT_CORS ? 'cross-origin' : 'same-origin';
  }
  res.writeHead(200, headers);
  if (req.method === 'HEAD') { res.end(); return; }
  createReadStream(file).pipe(res);
});
server.listen(port, host, () => console.log(`kvchat: serving ${root} on http://${host}:${port}/`));
