#!/usr/bin/env bash
# `make serve`'s last step: starts the static server at once (the simd128 build is there), and if the
# relaxed-SIMD or threaded build is missing or out of date, compiles them in the background at low
# priority (target/serve-build.log); the worker takes each one on the next load once it exists.
# Stopping the server stops that build too.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${1:-8080}
if ! make --no-print-directory -q target/wasm-stamps/relaxed target/wasm-stamps/threads 2>/dev/null; then
  echo "kvchat: the relaxed-SIMD and threaded builds compile in the background (target/serve-build.log); reload the page once they are done for the faster engine"
  mkdir -p target
  setsid nice -n 10 make --no-print-directory target/wasm-stamps/relaxed target/wasm-stamps/threads > target/serve-build.log 2>&1 &
  builder=$!
  trap 'kill -- -"$builder" 2>/dev/null || true' EXIT
fi
echo "kvchat: open http://127.0.0.1:$PORT/"
node scripts/serve.mjs "$PORT"
