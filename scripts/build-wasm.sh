#!/usr/bin/env bash
# Builds the wasm package into pkg/:
#  * pkg/kvchat_bg.wasm: wasm-pack (simd128 from .cargo/config.toml), the build every browser with SIMD runs;
#  * pkg/kvchat_relaxed_bg.wasm: the same code with relaxed SIMD (Chrome 114+, Firefox 145+),
#    which the worker picks when WebAssembly.validate accepts a relaxed-SIMD probe. Both are
#    bound by the same pkg/kvchat.js (the script checks that wasm-bindgen generated identical glue).
# Then binaryen's wasm-opt from npm (Debian's wasm-opt 108 breaks the module).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${RUSTFLAGS:-}" ]; then
  echo "build-wasm: RUSTFLAGS is set and would replace the simd128 flags in .cargo/config.toml; unset it" >&2
  exit 1
fi
OPT="./node_modules/.bin/wasm-opt -O3 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals"
report() {
  local raw=$1 out=$2
  echo "build-wasm: $out $(stat -c %s "$raw") bytes unoptimized, $(stat -c %s "$out") bytes optimized, $(gzip -9 -c "$out" | wc -c) bytes gzipped"
}

wasm-pack build --target web --release --out-dir pkg --no-pack
WASM=pkg/kvchat_bg.wasm
cp "$WASM" target/kvchat_bg.unopt.wasm
$OPT "$WASM" -o "$WASM.opt"
mv "$WASM.opt" "$WASM"
report target/kvchat_bg.unopt.wasm "$WASM"

# The relaxed-SIMD variant: its own target dir (other rustflags), the same wasm-bindgen.
RELAXED=target/relaxed
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C target-feature=+simd128,+relaxed-simd" \
  cargo build --release --lib --target wasm32-unknown-unknown --target-dir "$RELAXED"
wasm-bindgen --target web --out-dir "$RELAXED/pkg" --out-name kvchat "$RELAXED/wasm32-unknown-unknown/release/kvchat.wasm"
# Comments may differ (wasm-bindgen numbers closure shims in them); the code must not.
code() { grep -v '^[[:space:]]*//' "$1"; }
if ! cmp -s <(code "$RELAXED/pkg/kvchat.js") <(code pkg/kvchat.js); then
  echo "build-wasm: the relaxed-SIMD build's JS glue differs from pkg/kvchat.js; they cannot share it" >&2
  diff <(code "$RELAXED/pkg/kvchat.js") <(code pkg/kvchat.js) | head -20 >&2
  exit 1
fi
$OPT --enable-relaxed-simd "$RELAXED/pkg/kvchat_bg.wasm" -o pkg/kvchat_relaxed_bg.wasm
report "$RELAXED/pkg/kvchat_bg.wasm" pkg/kvchat_relaxed_bg.wasm

# The threaded variant (pkg-threads/): relaxed SIMD, atomics and shared memory, std rebuilt
# with them (nightly + rust-src), rayon on Web Workers through wasm-bindgen-rayon. The worker
# takes it only on a cross-origin-isolated page with more than one core.
NIGHTLY=${KVCHAT_NIGHTLY:-nightly-2026-05-20}
THREADS=target/threads
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C target-feature=+atomics,+bulk-memory,+simd128,+relaxed-simd \
-C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--max-memory=4294967296 \
-C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base" \
  cargo "+$NIGHTLY" build --release --lib --target wasm32-unknown-unknown --target-dir "$THREADS" \
  --features threads -Z build-std=panic_abort,std
rm -rf pkg-threads
wasm-bindgen --target web --out-dir pkg-threads --out-name kvchat "$THREADS/wasm32-unknown-unknown/release/kvchat.wasm"
cp pkg-threads/kvchat_bg.wasm "$THREADS/kvchat_bg.unopt.wasm"
$OPT --enable-relaxed-simd --enable-threads "$THREADS/kvchat_bg.unopt.wasm" -o pkg-threads/kvchat_bg.wasm
report "$THREADS/kvchat_bg.unopt.wasm" pkg-threads/kvchat_bg.wasm

# The build's id, which names the service worker's cache (sw.js imports it): a new build
# installs into a cache of its own and the old one is deleted, so offline the page never
# mixes JS glue from one build with wasm from another.
BUILD_ID=$(cat pkg/kvchat.js pkg/kvchat_bg.wasm pkg/kvchat_relaxed_bg.wasm index.html www/* | sha256sum | cut -c1-16)
echo "self.KVCHAT_BUILD = '$BUILD_ID';" > pkg/build-id.js
echo "build-wasm: build id $BUILD_ID (pkg/build-id.js)"
