// The dev server (`scripts/serve.mjs`) as an attacker and a flaky network would use it: only the
// allowlisted tree, loopback Host names, GET/HEAD, Range and ETag, strict headers, and no file
// descriptor left open by aborted downloads.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { mkdirSync, readdirSync, rmSync, symlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { ROOT, freePort } from './harness.mjs';

const MODEL = 'models/SmolLM2-135M-Instruct.Q4_1.gguf';
const LINK = join(ROOT, 'target/tiny/escape-link');
const DIR = join(ROOT, 'target/tiny/a-directory.gguf');
let child; let port;

before(async () => {
  mkdirSync(DIR, { recursive: true });
  rmSync(LINK, { force: true });
  symlinkSync('/etc', LINK);
  port = await freePort();
  child = spawn(process.execPath, ['scripts/serve.mjs', String(port)], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((resolve) => child.stdout.on('data', (d) => { if (String(d).includes('serving')) resolve(); }));
});

after(() => {
  child.kill();
  rmSync(LINK, { force: true });
  rmSync(DIR, { recursive: true, force: true });
});

/** One request: { status, headers, body } (body as a Buffer). */
function get(path, { method = 'GET', headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method, headers: { host: `127.0.0.1:${port}`, ...headers } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('the page, its modules and the models are served with strict headers', async () => {
  const page = await get('/');
  assert.equal(page.status, 200);
  assert.match(page.body.toString(), /<!DOCTYPE html>/i);
  assert.equal(page.headers['x-content-type-options'], 'nosniff');
  assert.match(page.headers['content-security-policy'], /script-src 'self' 'wasm-unsafe-eval'/);
  assert.equal((await get('/www/kvchat.js')).status, 200);
  assert.equal((await get(`/${MODEL}`, { method: 'HEAD' })).status, 200);
});

test('only the allowlisted tree: no dotfiles, sources, escapes or symlinks out of the root', async () => {
  for (const path of ['/.git/config', '/.git/HEAD', '/Cargo.toml', '/src/lib.rs', '/scripts/serve.mjs', '/www/../Cargo.toml', '/www/%2e%2e/Cargo.toml', '/target/tiny/escape-link/passwd', '/%2e%2e/%2e%2e/etc/passwd', '/models/.hidden']) {
    const r = await get(path);
    assert.ok(r.status === 404 || r.status === 403, `${path}: ${r.status}`);
    assert.doesNotMatch(r.body.toString(), /root:/, path);
  }
});

test('a directory named like a file is a 404, and the server lives on', async () => {
  assert.equal((await get('/target/tiny/a-directory.gguf')).status, 404);
  assert.equal((await get('/index.html')).status, 200);
});

test('a foreign Host header is refused (DNS rebinding), loopback names are served', async () => {
  assert.equal((await get('/index.html', { headers: { host: `evil.example:${port}` } })).status, 403);
  assert.equal((await get('/index.html', { headers: { host: `localhost:${port}` } })).status, 200);
});

test('methods other than GET and HEAD get 405', async () => {
  for (const method of ['POST', 'PUT', 'DELETE']) {
    const r = await get('/index.html', { method });
    assert.equal(r.status, 405, method);
    assert.equal(r.headers.allow, 'GET, HEAD');
  }
});

test('Range requests get 206 with the exact bytes, unsatisfiable ones 416', async () => {
  const size = statSync(join(ROOT, MODEL)).size;
  const head = await get(`/${MODEL}`, { headers: { range: 'bytes=0-3' } });
  assert.equal(head.status, 206);
  assert.equal(head.body.toString(), 'GGUF');
  assert.equal(head.headers['content-range'], `bytes 0-3/${size}`);
  const tail = await get(`/${MODEL}`, { headers: { range: 'bytes=-10' } });
  assert.equal(tail.status, 206);
  assert.equal(tail.body.length, 10);
  assert.equal((await get(`/${MODEL}`, { headers: { range: `bytes=${size}-` } })).status, 416);
});

test('ETag and Last-Modified, and 304 for a matching If-None-Match', async () => {
  const r = await get('/www/kvchat.js');
  assert.ok(r.headers.etag && r.headers['last-modified']);
  const again = await get('/www/kvchat.js', { headers: { 'if-none-match': r.headers.etag } });
  assert.equal(again.status, 304);
  assert.equal(again.body.length, 0);
});

test('100 aborted downloads leave no file descriptor open', async () => {
  const fds = () => readdirSync(`/proc/${child.pid}/fd`).length;
  const before = fds();
  for (let i = 0; i < 100; i++) {
    await new Promise((resolve) => {
      const req = request({ host: '127.0.0.1', port, path: `/${MODEL}` }, (res) => res.once('data', () => { req.destroy(); resolve(); }));
      req.on('error', resolve);
      req.end();
    });
  }
  await new Promise((r) => setTimeout(r, 1000));
  const grown = fds() - before;
  console.log(`file descriptors: ${before} before, ${before + grown} after 100 aborted downloads`);
  assert.ok(grown <= 2, `${grown} more file descriptors`);
  assert.equal((await get('/index.html')).status, 200);
});
