// Shared helpers for the browser tests: a static server on a free port and headless Chromium.
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export async function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

/** Starts scripts/serve.mjs; `env` adds variables (KVCHAT_CSP, KVCHAT_NO_ISOLATION). */
export async function serve(env = {}) {
  const port = await freePort();
  const child = spawn(process.execPath, ['scripts/serve.mjs', String(port)], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => { if (String(d).includes('serving')) resolve(); });
    child.on('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
  return { url: `http://127.0.0.1:${port}`, close: () => child.kill() };
}

/** Headless Chromium; `{ webgpu: true }` exposes SwiftShader's WebGPU adapter instead of disabling the GPU. */
export async function browser({ webgpu = false } = {}) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--headless=new', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-sync', webgpu ? '--enable-unsafe-webgpu' : '--disable-gpu'],
  });
}

/** Collects console errors and page errors so a test can assert there were none. */
export function watch(page) {
  const errors = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
  return errors;
}

/** True for kvchat's engine worker (a threaded build's thread pool adds workers of its own). */
export const isEngineWorker = (w) => new URL(w.url()).pathname === '/www/worker.js';
