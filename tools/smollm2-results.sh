#!/usr/bin/env bash
# The research-grade results table of docs/results.md: SmolLM2-135M-Instruct
# (the Q4_1 GGUF, dequantized to f32), calibrated on 128 x 512 tokens of C4
# (train shard, the reference's calibration source), perplexity on the whole
# WikiText-2 and PTB test splits at seqlen 512.
#
#   bash tools/smollm2-results.sh [ROW ...]      (default: every row)
#   SEEDS="0 1 2" bash tools/smollm2-results.sh sparsegpt50 sparsegpt50-4bit
#
# KL from the dense model on the first 64 WikiText-2 windows (one base file of
# 3.2 GB, computed once, then reused by every row):
#   sparselab eval --model SmolLM2-135M-Instruct.Q4_1.gguf --dataset wikitext2 \
#       --seqlen 512 --nsamples 64 --save-kl-base wikitext2-64.klb
#   KL_BASE=wikitext2-64.klb bash tools/smollm2-results.sh gptq3
#   KL_BASE=wikitext2-64.klb EVAL=wikitext2 EVAL_WINDOWS=64 bash tools/smollm2-results.sh
#
# Each row is one `sparselab prune` (or `eval` for dense) command, printed
# before it runs; its report and time/memory log go to $OUT (default
# results/smollm2). A markdown line per run is appended to $OUT/table.md.
# Needs a release build (cargo build --release) and SPARSELAB_DATA pointing at
# the shared data folder (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/release/sparselab"
gguf="${SPARSELAB_SMOLLM2:-$(bash tools/fetch-smollm2.sh)}"
export SPARSELAB_DATA="${SPARSELAB_DATA:-$(cd .. && pwd)/shared/data}"
export HF_HUB_OFFLINE=1
out="${OUT:-results/smollm2}"
seeds="${SEEDS:-0}"
nsamples="${NSAMPLES:-128}"
# EVAL_WINDOWS=N evaluates only the first N windows of each test set (the full
# sets take ~20 minutes per model on 2 cores); unset = the whole test sets.
eval_windows="${EVAL_WINDOWS:-}"
# EVAL="wikitext2" drops PTB.
eval_sets="${EVAL:-wikitext2 ptb}"
# KL_BASE=FILE: a base stored by `sparselab eval --save-kl-base` (the dense
# model on the first windows of one of the eval sets, same seqlen): every
# compressed row then reports KL from the dense model and top-1 agreement on
# the windows the base holds (perplexity still covers the eval windows).
kl_dataset() {
  python3 -c 'import json,struct,sys
f=open(sys.argv[1],"rb"); assert f.read(8)==b"SLKLBASE"
n=struct.unpack("<I",f.read(4))[0]; print(json.loads(f.read(n))["dataset"])' "$KL_BASE"
}
mkdir -p "$out"

declare -A rows=(
  [dense]=""
  [sparsegpt50]="--method sparsegpt --sparsity 0.5"
  [sparsegpt24]="--method sparsegpt --prunen 2 --prunem 4"
  [sparsegpt70]="--method sparsegpt --sparsity 0.7"
  [magnitude50]="--method magnitude --sparsity 0.5"
  [wanda50]="--method wanda --sparsity 0.5"
  [gptq4]="--method sparsegpt --bits 4"
  [gptq3]="--method sparsegpt --bits 3"
  [gptq4-g128]="--method sparsegpt --bits 4 --groupsize 128"
  [gptq3-g128]="--method sparsegpt --bits 3 --groupsize 128"
  [sparsegpt50-4bit]="--method sparsegpt --sparsity 0.5 --bits 4"
  [sparsegpt50-3bit]="--method sparsegpt --sparsity 0.5 --bits 3"
)
order=(dense sparsegpt50 sparsegpt24 sparsegpt70 magnitude50 wanda50 gptq4 gptq3 gptq4-g128 gptq3-g128 sparsegpt50-4bit sparsegpt50-3bit)
[ $# -gt 0 ] && order=("$@")

{
  echo "# $(date -u +%F) eval windows: ${eval_windows:-all}, calibration $nsamples x 512 c4; $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) threads, $(git rev-parse --short HEAD)"
} >>"$out/table.md"

for row in "${order[@]}"; do
  [ -v "rows[$row]" ] || { echo "unknown row $row; rows: ${order[*]}" >&2; exit 2; }
  for seed in $seeds; do
    tag="$row-seed$seed"
    if [ "$row" = dense ]; then
      cmd=("$bin" eval --model "$gguf" --seqlen 512 --json --quiet)
      for e in $eval_sets; do cmd+=(--dataset "$e"); done
      [ -z "$eval_windows" ] || cmd+=(--nsamples "$eval_windows")
      [ "$seed" = 0 ] || continue
    else
      # shellcheck disable=SC2206
      cmd=("$bin" prune --model "$gguf" ${rows[$row]} --calib c4 --nsamples "$nsamples" --seqlen 512
           --seed "$seed" --report "$out/$tag.json" --quiet)
      for e in $eval_sets; do cmd+=(--eval "$e"); done
      [ -z "$eval_windows" ] || cmd+=(--eval-nsamples "$eval_windows")
      [ -z "${KL_BASE:-}" ] || cmd+=(--kl-base "$KL_BASE")
    fi
    echo "+ ${cmd[*]}" | sed "s|$gguf|SmolLM2-135M-Instruct.Q4_1.gguf|"
    /usr/bin/time -v "${cmd[@]}" >"$out/$tag.out" 2>"$out/$tag.time"
    secs=$(sed -n 's/.*Elapsed (wall clock) time.*: //p' "$out/$tag.time")
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$out/$tag.time")
    # "ppl ± se" per dataset, "-" for one that was not evaluated; with a KL
    # base, "KL ± se | top-1 %" of its dataset as well.
    cells=$(python3 - "$out/$tag" "$row" "${KL_BASE:+$(kl_dataset)}" <<'PY'
import json, sys
tag, row, kl_ds = sys.argv[1], sys.argv[2], sys.argv[3]
if row == "dense":
    ev = {}
    for l in open(tag + ".out"):
        if l.startswith("{"):
            d = json.loads(l)
            ev[d["dataset"]] = d
else:
    ev = json.load(open(tag + ".json"))["eval"]
cells = []
for ds in ("wikitext2", "ptb"):
    e = ev.get(ds)
    cells.append(f"{e['ppl']:.2f} ± {e['ppl_se']:.2f}" if e else "-")
if kl_ds:
    e = ev.get(kl_ds, {})
    if row == "dense":
        cells += ["0", "100 %"]
    elif "kl" in e:
        k = e["kl"]
        cells += [f"{k['kl']:.4f} ± {k['kl_se']:.4f}", f"{100 * k['top1']:.1f} ± {100 * k['top1_se']:.1f} %"]
    else:
        cells += ["-", "-"]
print(" | ".join(cells))
PY
)
    line="| $row | $seed | $cells | $secs | $((rss / 1024)) MiB |"
    echo "$line"
    echo "$line" >>"$out/table.md"
  done
done
