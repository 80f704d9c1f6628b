#!/usr/bin/env bash
# Executes notebooks/quickstart_evcxr.ipynb headless and checks its outputs.
#
#   notebooks/check_evcxr.sh                 # the real evcxr kernel through Jupyter
#   notebooks/check_evcxr.sh --compile-only  # the same cells as one plain Rust program
#
# Full mode installs what is missing: evcxr_jupyter (`cargo install --locked`,
# which compiles rust-analyzer crates: tens of minutes on 2 cores) and its
# kernelspec, the rust-src component, and nbconvert/nbclient in a virtual
# environment ($SPARSELAB_NB_VENV, default ~/.cache/sparselab-nb-venv). It then
# runs `jupyter nbconvert --execute` with the `rust` kernel; the notebook's first
# cell makes evcxr compile sparselab at opt-level 2, about a release build.
# Every code cell must succeed, and the outputs must hold the summary as HTML and
# at least four PNG charts that decode (checked without any imaging library).
#
# --compile-only needs no Jupyter: the code cells (less `:dep` lines, with each
# cell's final expression shown through `.evcxr_display()` as evcxr does) are
# built as one program against this checkout and run from notebooks/, and its
# stdout, evcxr's content blocks, gets the same checks. It reuses the build in
# $CARGO_TARGET_DIR (default: the checkout's target/).
#
# Fixtures: as the notebook ($SPARSELAB_FIXTURES, ../shared, ../../shared).
# Scratch files go to $SPARSELAB_NB_WORK (default: a new temporary folder).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
nb="$here/quickstart_evcxr.ipynb"
mode=full
case "${1:-}" in
  --compile-only) mode=compile ;;
  "") ;;
  -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--compile-only]" >&2; exit 2 ;;
esac
work=${SPARSELAB_NB_WORK:-$(mktemp -d)}
mkdir -p "$work"
echo "check_evcxr: mode $mode, scratch $work"

# Checks evcxr outputs. $1: `notebook` (an executed .ipynb) or `blocks` (a file of
# EVCXR_BEGIN_CONTENT blocks); $2: the file.
check_outputs() {
  python3 - "$1" "$2" <<'PY'
import base64, json, struct, sys, zlib

kind, path = sys.argv[1], sys.argv[2]
bundles = []  # one dict mime -> data per displayed value
if kind == "notebook":
    nb = json.load(open(path))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        for out in cell.get("outputs", []):
            if out["output_type"] == "error":
                sys.exit(f"cell {i} failed: {out['ename']}: {out['evalue']}\n" + "\n".join(out.get("traceback", [])))
            if out["output_type"] in ("display_data", "execute_result"):
                bundles.append({k: "".join(v) if isinstance(v, list) else v for k, v in out["data"].items()})
else:
    text = open(path).read()
    current = {}
    lines = iter(text.split("\n"))
    for line in lines:
        if line.startswith("EVCXR_BEGIN_CONTENT "):
            mime = line[len("EVCXR_BEGIN_CONTENT "):]
            body = []
            for l in lines:
                if l == "EVCXR_END_CONTENT":
                    break
                body.append(l)
            else:
                sys.exit(f"unterminated {mime} block")
            if mime in current:
                bundles.append(current)
                current = {}
            current[mime] = "\n".join(body)
        elif current and line.strip() == "":
            continue
        elif current:
            bundles.append(current)
            current = {}
    if current:
        bundles.append(current)

def decode_png(data):
    """Checks signature, chunk CRCs and the inflated pixel data size; returns (width, height)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("no PNG signature")
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, chunk = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if zlib.crc32(tag + chunk) != struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]:
            raise ValueError(f"bad CRC in {tag!r}")
        if tag == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", chunk)
        elif tag == b"IDAT":
            idat += chunk
        elif tag == b"IEND":
            break
        pos += 12 + n
    w, h, depth, colour = ihdr[:4]
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw = zlib.decompress(idat)
    if len(raw) != h * (1 + w * channels * depth // 8):
        raise ValueError(f"{len(raw)} bytes of pixel data for {w}x{h}")
    if len(set(raw)) < 3:
        raise ValueError("a blank image")
    return w, h

pngs = [b["image/png"] for b in bundles if "image/png" in b]
htmls = [b["text/html"] for b in bundles if "text/html" in b]
sizes = [decode_png(base64.b64decode(p)) for p in pngs]
print(f"check_evcxr: {len(bundles)} displayed values, {len(pngs)} PNG charts {sizes}, {len(htmls)} HTML tables")
if len(pngs) < 4:
    sys.exit(f"expected at least 4 PNG charts, found {len(pngs)}")
if not any("sparselab-summary" in h and "<table" in h for h in htmls):
    sys.exit("no summary table among the HTML outputs")
if not any("sparselab-compare" in h for h in htmls):
    sys.exit("no comparison table among the HTML outputs")
if any(s != (800, 500) for s in sizes):
    sys.exit(f"unexpected chart sizes {sizes}")
svgs = [b["image/svg+xml"] for b in bundles if "image/svg+xml" in b]
if len(svgs) != len(pngs) or not all(s.lstrip().startswith("<svg") for s in svgs):
    sys.exit("each chart should also carry image/svg+xml")
print("check_evcxr: OK")
PY
}

if [[ $mode == compile ]]; then
  proj="$work/nbcheck"
  mkdir -p "$proj/src"
  cat > "$proj/Cargo.toml" <<EOF
[package]
name = "nbcheck"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
# As the notebook's :dep line: the library without the command-line front ends.
sparselab = { path = "$repo", default-features = false }

# As the crate's own release profile, so that its dependencies' builds are reused.
[profile.release]
debug = "line-tables-only"

[workspace]
EOF
  cp "$repo/Cargo.lock" "$proj/Cargo.lock"
  python3 - "$nb" > "$proj/src/main.rs" <<'PY'
import json, sys
nb = json.load(open(sys.argv[1]))
out = ["// Generated from quickstart_evcxr.ipynb by check_evcxr.sh --compile-only.",
       "#![allow(unused_imports, unused_variables, unused_mut, clippy::all)]",
       "fn main() {"]
for i, cell in enumerate(nb["cells"]):
    if cell["cell_type"] != "code":
        continue
    lines = [l.rstrip("\n") for l in "".join(cell["source"]).split("\n")]
    lines = [l for l in lines if not l.lstrip().startswith(":")]
    while lines and not lines[-1].strip():
        lines.pop()
    if lines:
        last = lines[-1]
        s = last.strip()
        if s and not s.endswith((";", "}")) and not s.startswith("//"):
            lines[-1] = f"({s}).evcxr_display();"
    out.append(f"    // cell {i}")
    out.extend("    " + l if l else "" for l in lines)
out.append("}")
print("\n".join(out))
PY
  target=${CARGO_TARGET_DIR:-$repo/target}
  echo "check_evcxr: building the notebook's cells (target $target)"
  (cd "$proj" && CARGO_TARGET_DIR="$target" cargo build --release --quiet)
  echo "check_evcxr: running them from $here"
  (cd "$here" && "$target/release/nbcheck") > "$work/blocks.txt"
  check_outputs blocks "$work/blocks.txt"
  exit 0
fi

# Full mode: the real evcxr kernel.
if ! command -v evcxr_jupyter >/dev/null; then
  echo "check_evcxr: installing evcxr_jupyter (tens of minutes)"
  cargo install --locked evcxr_jupyter
fi
rustup component add rust-src >/dev/null 2>&1 || true
evcxr_jupyter --install
venv=${SPARSELAB_NB_VENV:-$HOME/.cache/sparselab-nb-venv}
if ! "$venv/bin/jupyter-nbconvert" --version >/dev/null 2>&1; then
  echo "check_evcxr: installing nbconvert into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet nbconvert nbclient jupyter_client
fi
timeout=${SPARSELAB_NB_TIMEOUT:-7200}
start=$(date +%s)
(cd "$here" && "$venv/bin/jupyter-nbconvert" --to notebook --execute \
  --ExecutePreprocessor.kernel_name=rust \
  --ExecutePreprocessor.timeout="$timeout" \
  --output-dir "$work" --output quickstart_evcxr.executed.ipynb \
  quickstart_evcxr.ipynb)
echo "check_evcxr: executed in $(( $(date +%s) - start )) s: $work/quickstart_evcxr.executed.ipynb"
check_outputs notebook "$work/quickstart_evcxr.executed.ipynb"
