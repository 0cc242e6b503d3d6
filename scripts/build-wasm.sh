#!/usr/bin/env bash
# Builds the wasm package into pkg/: wasm-pack (simd128 from .cargo/config.toml),
# then binaryen's wasm-opt from npm (Debian's wasm-opt 108 breaks the module).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${RUSTFLAGS:-}" ]; then
  echo "build-wasm: RUSTFLAGS is set and would replace the simd128 flags in .cargo/config.toml; unset it" >&2
  exit 1
fi
wasm-pack build --target web --release --out-dir pkg --no-pack
WASM=pkg/kvchat_bg.wasm
raw=$(stat -c %s "$WASM")
./node_modules/.bin/wasm-opt -O3 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int \
  --enable-sign-ext --enable-mutable-globals "$WASM" -o "$WASM.opt"
mv "$WASM.opt" "$WASM"
opt=$(stat -c %s "$WASM")
gz=$(gzip -9 -c "$WASM" | wc -c)
echo "build-wasm: $WASM ${raw} bytes from wasm-pack, ${opt} bytes optimized, ${gz} bytes gzipped"
