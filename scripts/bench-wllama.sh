#!/usr/bin/env bash
# Runs the wllama peer (llama.cpp compiled to wasm) on the same model in the same headless
# Chromium, one thread, with the harness in ../shared/anchors/wllama (copied: that folder is
# read-only). Skips, saying why, where the harness is not present. Usage: bench-wllama.sh [MODEL.gguf]
set -euo pipefail
cd "$(dirname "$0")/.."
src=../shared/anchors/wllama
if [ ! -f "$src/run_bench.mjs" ]; then echo "bench-wllama: SKIPPED, $src is not here"; exit 0; fi
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
cp -r "$src/." "$d"
(cd "$d" && npm install --no-audit --no-fund > /dev/null 2>&1)
model="$PWD/${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
(cd "$d" && MODEL="$model" node run_bench.mjs --threads 1 --repeats 3 --out "$d/results.json" | tail -2)
