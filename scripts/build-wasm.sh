#!/usr/bin/env bash
# Builds the wasm packages: `build-wasm.sh [simd128] [relaxed] [threads]` (all three without arguments).
#  * simd128 -> pkg/kvchat_bg.wasm + pkg/kvchat.js (simd128 from .cargo/config.toml), the build every
#    browser with SIMD runs; cargo + wasm-bindgen directly (no wasm-pack: serving needs only these two);
#  * relaxed -> pkg/kvchat_relaxed_bg.wasm: the same code with relaxed SIMD (Chrome 114+, Firefox 145+),
#    which the worker picks when WebAssembly.validate accepts a relaxed-SIMD probe. Both are
#    bound by the same pkg/kvchat.js (the script checks that wasm-bindgen generated identical glue);
#  * threads -> pkg-threads/: relaxed SIMD + atomics + shared memory (nightly, std rebuilt).
# Each wasm goes through binaryen's wasm-opt from npm (Debian's wasm-opt 108 breaks the module).
# pkg/build-id.js is rewritten after each build from what exists, so the service worker's cache
# follows the builds as they appear (a first `make serve` serves simd128 while the others compile).
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

build_simd128() {
  cargo build --release --locked --lib --target wasm32-unknown-unknown
  # New glue: the other two builds, made from older code, go until they are rebuilt.
  mkdir -p pkg
  rm -rf pkg/kvchat_relaxed_bg.wasm pkg-threads
  wasm-bindgen --target web --out-dir pkg --out-name kvchat target/wasm32-unknown-unknown/release/kvchat.wasm
  local wasm=pkg/kvchat_bg.wasm
  cp "$wasm" target/kvchat_bg.unopt.wasm
  $OPT "$wasm" -o "$wasm.opt"
  mv "$wasm.opt" "$wasm"
  report target/kvchat_bg.unopt.wasm "$wasm"
}

build_relaxed() {
  [ -f pkg/kvchat.js ] || { echo "build-wasm: the relaxed build shares pkg/kvchat.js: build simd128 first" >&2; exit 1; }
  # The relaxed-SIMD variant: its own target dir (other rustflags), the same wasm-bindgen.
  RELAXED=target/relaxed
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C target-feature=+simd128,+relaxed-simd" \
    cargo build --release --locked --lib --target wasm32-unknown-unknown --target-dir "$RELAXED"
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
}

build_threads() {
  # The threaded variant (pkg-threads/): relaxed SIMD, atomics and shared memory, std rebuilt
  # with them (nightly + rust-src), rayon on Web Workers through wasm-bindgen-rayon. The worker
  # takes it only on a cross-origin-isolated page with more than one core.
  NIGHTLY=${KVCHAT_NIGHTLY:-nightly-2026-05-20}
  THREADS=target/threads
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-C target-feature=+atomics,+bulk-memory,+simd128,+relaxed-simd \
  -C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--max-memory=4294967296 \
  -C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base" \
    cargo "+$NIGHTLY" build --release --locked --lib --target wasm32-unknown-unknown --target-dir "$THREADS" \
    --features threads -Z build-std=panic_abort,std
  rm -rf pkg-threads
  wasm-bindgen --target web --out-dir pkg-threads --out-name kvchat "$THREADS/wasm32-unknown-unknown/release/kvchat.wasm"
  cp pkg-threads/kvchat_bg.wasm "$THREADS/kvchat_bg.unopt.wasm"
  $OPT --enable-relaxed-simd --enable-threads "$THREADS/kvchat_bg.unopt.wasm" -o pkg-threads/kvchat_bg.wasm
  report "$THREADS/kvchat_bg.unopt.wasm" pkg-threads/kvchat_bg.wasm
}

# The build's id, which names the service worker's cache (sw.js imports it), and the wasm files
# this build has (sw.js precaches them): a new build installs into a cache of its own and the old
# one is deleted, so offline the page never mixes JS glue from one build with wasm from another.
write_build_id() {
  local wasm=() f
  for f in pkg/kvchat_bg.wasm pkg/kvchat_relaxed_bg.wasm; do [ -f "$f" ] && wasm+=("$f"); done
  local id
  id=$(cat pkg/kvchat.js "${wasm[@]}" index.html www/* | sha256sum | cut -c1-16)
  local list
  list=$(printf "'./%s', " "${wasm[@]}")
  echo "self.KVCHAT_BUILD = '$id'; self.KVCHAT_WASM = [${list%, }];" > pkg/build-id.js
  echo "build-wasm: build id $id (pkg/build-id.js: ${wasm[*]})"
}

[ $# -gt 0 ] || set -- simd128 relaxed threads
for v in "$@"; do
  case "$v" in
    simd128) build_simd128 ;;
    relaxed) build_relaxed ;;
    threads) build_threads ;;
    *) echo "build-wasm: unknown build '$v' (simd128, relaxed, threads)" >&2; exit 1 ;;
  esac
  write_build_id
done
