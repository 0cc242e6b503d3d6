#!/usr/bin/env bash
# Installs what building and testing need, skipping anything already present:
# the wasm32 target, wasm-pack, wasm-bindgen-cli (the exact version in Cargo.lock),
# Chromium and ChromeDriver, the npm packages (binaryen, playwright-core, typescript), and the default model; and, for the threaded
# wasm build (std rebuilt with atomics), a pinned nightly toolchain with rust-src.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "setup: $*"; }
need() { command -v "$1" >/dev/null 2>&1; }

need cargo || { echo "setup: cargo (Rust) is required" >&2; exit 1; }
need python3 || { echo "setup: python3 is required (it fetches the model)" >&2; exit 1; }

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  say "adding the wasm32-unknown-unknown target"; rustup target add wasm32-unknown-unknown
fi

NIGHTLY=${KVCHAT_NIGHTLY:-nightly-2026-05-20}
if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1 \
  || ! rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src'; then
  say "installing $NIGHTLY with rust-src (the threaded wasm build)"
  rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src --target wasm32-unknown-unknown
fi

WB_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if ! need wasm-bindgen || [ "$(wasm-bindgen --version | awk '{print $2}')" != "$WB_VERSION" ]; then
  # Pinned to Cargo.lock's wasm-bindgen; not --locked: its published lock file names a
  # webpki-roots release the registry no longer offers (the install fails with it).
  say "installing wasm-bindgen-cli $WB_VERSION"; cargo install wasm-bindgen-cli --version "$WB_VERSION"
fi
# Pinned, and built from its own lock file (--locked), so a fresh machine builds what was tested.
WASM_PACK_VERSION=0.15.1
if ! need wasm-pack || [ "$(wasm-pack --version | awk '{print $2}')" != "$WASM_PACK_VERSION" ]; then
  say "installing wasm-pack $WASM_PACK_VERSION"; cargo install --locked wasm-pack --version "$WASM_PACK_VERSION"
fi

apt_pkgs=()
need chromium || apt_pkgs+=(chromium)
need chromedriver || apt_pkgs+=(chromium-driver)
need node || apt_pkgs+=(nodejs npm)
need curl || apt_pkgs+=(curl)
# Mesa's lavapipe (CPU Vulkan): the WebGPU backend's native tests run on it.
[ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || ls /usr/share/vulkan/icd.d/lvp_icd*.json > /dev/null 2>&1 || apt_pkgs+=(mesa-vulkan-drivers)
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
