#!/usr/bin/env bash
# Installs what building and testing need, skipping anything already present.
#   setup.sh serve    what serving the page needs: the wasm32 target, wasm-bindgen-cli (the exact
#                     version in Cargo.lock), Node.js and the npm packages (binaryen's wasm-opt), the model;
#   setup.sh threads  the threaded wasm build's pinned nightly toolchain with rust-src (std rebuilt with atomics);
#   setup.sh          everything: both of the above, wasm-pack (the wasm tests), Chromium and ChromeDriver,
#                     Mesa's lavapipe (the WebGPU tests).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}
case "$MODE" in serve|threads|all) ;; *) echo "setup: unknown mode '$MODE' (serve, threads, all)" >&2; exit 1 ;; esac
say() { echo "setup: $*"; }
need() { command -v "$1" >/dev/null 2>&1; }
want() { [ "$MODE" = all ] || [ "$MODE" = "$1" ]; }
install_nightly() {
  NIGHTLY=${KVCHAT_NIGHTLY:-nightly-2026-05-20}
  if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1 \
    || ! rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src'; then
    say "installing $NIGHTLY with rust-src (the threaded wasm build)"
    rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src --target wasm32-unknown-unknown
  fi
}

need cargo || { echo "setup: cargo (Rust) is required" >&2; exit 1; }
need python3 || { echo "setup: python3 is required (it fetches the model)" >&2; exit 1; }

# Rust 1.95 or newer (Cargo.toml's rust-version; the machine's own stable toolchain, not pinned by a
# rust-toolchain.toml: a fresh machine cannot fetch another one).
rust_minor=$(rustc --version | awk '{split($2, v, "."); print v[2]}')
[ "${rust_minor:-0}" -ge 95 ] || { echo "setup: Rust 1.95 or newer is required ($(rustc --version))" >&2; exit 1; }

if [ "$MODE" = threads ]; then install_nightly; exit 0; fi
want threads && install_nightly

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  say "adding the wasm32-unknown-unknown target"; rustup target add wasm32-unknown-unknown
fi

WB_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if ! need wasm-bindgen || [ "$(wasm-bindgen --version | awk '{print $2}')" != "$WB_VERSION" ]; then
  # Pinned to Cargo.lock's wasm-bindgen (--force: cargo's record of an install outlives a deleted binary); not --locked: its published lock file names a
  # webpki-roots release the registry no longer offers (the install fails with it).
  say "installing wasm-bindgen-cli $WB_VERSION"; cargo install --force wasm-bindgen-cli --version "$WB_VERSION"
fi
# Pinned, and built from its own lock file (--locked), so a fresh machine builds what was tested.
WASM_PACK_VERSION=0.15.1
if want all && { ! need wasm-pack || [ "$(wasm-pack --version | awk '{print $2}')" != "$WASM_PACK_VERSION" ]; }; then
  say "installing wasm-pack $WASM_PACK_VERSION"; cargo install --force --locked wasm-pack --version "$WASM_PACK_VERSION"
fi

apt_pkgs=()
if want all; then
  need chromium || apt_pkgs+=(chromium)
  need chromedriver || apt_pkgs+=(chromium-driver)
  # Mesa's lavapipe (CPU Vulkan): the WebGPU backend's native tests run on it.
  [ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || ls /usr/share/vulkan/icd.d/lvp_icd*.json > /dev/null 2>&1 || apt_pkgs+=(mesa-vulkan-drivers)
fi
need node || apt_pkgs+=(nodejs npm)
need curl || apt_pkgs+=(curl)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  say "installing ${apt_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${apt_pkgs[@]}" > /dev/null
fi

if [ ! -x node_modules/.bin/wasm-opt ] || [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/typescript ]; then
  say "installing npm packages"; npm ci --no-audit --no-fund
fi

./scripts/fetch-model.sh
