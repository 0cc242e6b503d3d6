#!/usr/bin/env bash
# Runs tests/web.rs in headless Chromium with wasm-pack, the real model served
# by a local static server (CORS on) so the browser test can fetch it.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${KVCHAT_TEST_PORT:-8091}
KVCHAT_CORS=1 node scripts/serve.mjs "$PORT" > /dev/null &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/index.html" && break; sleep 0.1; done
export KVCHAT_MODEL_URL="http://127.0.0.1:$PORT/models/SmolLM2-135M-Instruct.Q4_1.gguf"
export KVCHAT_REQUIRE_MODEL=1 # the model tests fail rather than skip without the URL
export CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}
export WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-900}
wasm-pack test --headless --chrome --release -- --test web
# The relaxed-SIMD build (what Chromium runs) has its own Q4 kernels: run the kernel
# tests once more compiled with relaxed SIMD (the relaxed build's target dir, as in build-wasm.sh: other rustflags).
CARGO_TARGET_DIR=target/relaxed \
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C target-feature=+simd128,+relaxed-simd" \
  wasm-pack test --headless --chrome --release -- --test web -- kernels
