// The demo's static file server (no dependencies): `node scripts/serve.mjs [port]`.
// Serves only what the page and the tests need (an allowlist; dotfiles and paths that resolve
// outside the root refused), only to loopback Host names (no DNS rebinding), GET and HEAD only,
// with Range (206), ETag / 304, nosniff and the strict Content-Security-Policy the page works
// under; COOP/COEP so the threaded build can be chosen. Streams are piped with `pipeline`, so an
// aborted download closes its file and a read error answers 500 instead of killing the server.
// KVCHAT_NO_ISOLATION=1 serves like a plain static host (no COOP/COEP); KVCHAT_CORS=1 lets the
// wasm-bindgen test page (another origin) fetch; HOST binds another address (and accepts its name).
import { createServer } from 'node:http';
import { createReadStream, realpathSync } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import { pipeline } from 'node:stream';
import { extname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = realpathSync(resolve(fileURLToPath(new URL('..', import.meta.url))));
const port = Number(process.argv[2] || process.env.PORT || 8080);
const host = process.env.HOST || '127.0.0.1';
const isolate = !process.env.KVCHAT_NO_ISOLATION;
const cors = !!process.env.KVCHAT_CORS;
const types = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.json': 'application/json', '.wasm': 'application/wasm', '.gguf': 'application/octet-stream',
  '.svg': 'image/svg+xml', '.png': 'image/png', '.ts': 'text/plain; charset=utf-8', '.txt': 'text/plain; charset=utf-8',
};
// What the demo needs (the page, the service worker, the modules, the wasm builds, the models,
// the examples) and what the tests need (the tiny models `make test-e2e` writes).
const ALLOWED = [/^\/$/, /^\/index\.html$/, /^\/sw\.js$/, /^\/(www|pkg(-[a-z]+)?|models|examples|target\/tiny)\//];
const hosts = new Set(['localhost', '127.0.0.1', '[::1]', host].map((h) => `${h}:${port}`));
// The threaded build's pool (wasm-bindgen-rayon, and wasm-bindgen's Atomics.waitAsync shim) starts blob: workers.
const CSP = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:";

/** The file a URL path names, or an HTTP status why not. */
async function resolveFile(path) {
  if (path.includes('\0') || !ALLOWED.some((re) => re.test(path))) return 404;
  if (path.split('/').some((part) => part.startsWith('.'))) return 404;
  let file = join(root, path);
  try {
    let st = await stat(file);
    if (st.isDirectory()) { file = join(file, 'index.html'); st = await stat(file); }
    if (!st.isFile()) return 404;
    const real = await realpath(file);
    if (!real.startsWith(root + sep)) return 403;
    return { file: real, st };
  } catch {
    return 404;
  }
}

/** A single `bytes=` range of a `size`-byte file: [start, end] inclusive, 'none' to send it whole, or null (416). */
function parseRange(header, size) {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m) return 'none'; // several ranges or another unit: the whole file is a valid answer
  const [a, b] = [m[1], m[2]];
  if (a === '' && b === '') return null;
  let start; let end;
  if (a === '') { start = Math.max(0, size - Number(b)); end = size - 1; } else { start = Number(a); end = b === '' ? size - 1 : Math.min(Number(b), size - 1); }
  if (start > end || start >= size) return null;
  return [start, end];
}

function baseHeaders() {
  const h = { 'x-content-type-options': 'nosniff', 'content-security-policy': CSP, 'cache-control': 'no-cache' };
  if (cors) h['access-control-allow-origin'] = '*';
  if (isolate) {
    h['cross-origin-opener-policy'] = 'same-origin';
    h['cross-origin-embedder-policy'] = 'require-corp';
    h['cross-origin-resource-policy'] = cors ? 'cross-origin' : 'same-origin';
  }
  return h;
}

function fail(res, status, text, extra = {}) {
  res.writeHead(status, { ...baseHeaders(), 'content-type': 'text/plain; charset=utf-8', ...extra }).end(text);
}

async function handle(req, res) {
  if (!hosts.has(String(req.headers.host).toLowerCase())) return fail(res, 403, 'forbidden host');
  if (req.method === 'OPTIONS' && cors) {
    return res.writeHead(204, { ...baseHeaders(), 'access-control-allow-methods': 'GET, HEAD', 'access-control-allow-headers': 'range' }).end();
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') return fail(res, 405, 'method not allowed', { allow: 'GET, HEAD' });
  let path;
  try {
    path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  } catch {
    return fail(res, 400, 'bad request');
  }
  const found = await resolveFile(path);
  if (typeof found === 'number') return fail(res, found, found === 404 ? `not found: ${path}` : 'forbidden');
  const { file, st } = found;
  const etag = `W/"${st.size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`;
  const headers = {
    ...baseHeaders(),
    'content-type': types[extname(file)] || 'application/octet-stream',
    'accept-ranges': 'bytes',
    etag,
    'last-modified': st.mtime.toUTCString(),
  };
  if (req.headers['if-none-match'] === etag) return res.writeHead(304, headers).end();
  let range = 'none';
  if (req.headers.range && (!req.headers['if-range'] || req.headers['if-range'] === etag)) range = parseRange(req.headers.range, st.size);
  if (range === null) return fail(res, 416, 'range not satisfiable', { 'content-range': `bytes */${st.size}` });
  const [start, end] = range === 'none' ? [0, st.size - 1] : range;
  if (range !== 'none') headers['content-range'] = `bytes ${start}-${end}/${st.size}`;
  headers['content-length'] = st.size === 0 ? 0 : end - start + 1;
  res.writeHead(range === 'none' ? 200 : 206, headers);
  if (req.method === 'HEAD' || st.size === 0) return res.end();
  // pipeline destroys the file stream when the client goes away, and the response on a read error.
  pipeline(createReadStream(file, { start, end }), res, () => {});
}

const server = createServer((req, res) => {
  handle(req, res).catch((e) => {
    if (!res.headersSent) fail(res, 500, 'server error');
    else res.destroy(e);
  });
});
server.on('clientError', (_e, socket) => socket.destroy());
server.listen(port, host, () => console.log(`kvchat: serving ${root} on http://${host}:${port}/`));
