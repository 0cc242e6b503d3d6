#!/usr/bin/env bash
# Installs what building and testing need, skipping anything already present.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "setup: cargo (Rust) is required" >&2; exit 1; }
command -v python3 >/dev/null || { echo "setup: python3 is required (it fetches the model)" >&2; exit 1; }
./scripts/fetch-model.sh
