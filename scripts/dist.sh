#!/usr/bin/env bash
# Writes dist/: what a static site copies as is (no model, no server code).
# Layout mirrors the repository so the worker finds ../pkg/ and the default model
# path ../models/ resolves next to it.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf dist
mkdir -p dist/www dist/pkg dist/pkg-threads
cp www/kvchat.js www/worker.js www/models.js www/model-cache.js www/kv-chat.js www/kv-chat.css www/kvchat.d.ts www/protocol.d.ts dist/www/
cp pkg/kvchat.js pkg/kvchat_bg.wasm pkg/kvchat_relaxed_bg.wasm dist/pkg/
cp -r pkg-threads/kvchat.js pkg-threads/kvchat_bg.wasm pkg-threads/snippets dist/pkg-threads/
cp README.md dist/
version=$(awk -F'"' '/^version = / { print $2; exit }' Cargo.toml)
cat > dist/package.json <<JSON
{
  "name": "kvchat",
  "version": "$version",
  "description": "A small language model in the browser: GGUF on candle compiled to WebAssembly, with a bounded sliding-window KV cache",
  "license": "Apache-2.0",
  "type": "module",
  "main": "www/kvchat.js",
  "module": "www/kvchat.js",
  "types": "www/kvchat.d.ts",
  "exports": { ".": { "types": "./www/kvchat.d.ts", "default": "./www/kvchat.js" }, "./element": "./www/kv-chat.js" },
  "files": ["www", "pkg", "pkg-threads", "README.md"],
  "sideEffects": ["./www/kv-chat.js"]
}
JSON
echo "dist: $(du -sh dist | cut -f1) in dist/ ($(stat -c %s dist/pkg/kvchat_bg.wasm) bytes of wasm)"
