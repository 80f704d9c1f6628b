#!/usr/bin/env bash
# The mixed-precision comparison of docs/results.md (issue 14's evidence):
# SmolLM2-135M-Instruct, 50% SparseGPT, an average of TARGET bits per weight
# over tiers 2,3,4,6,8, widths chosen by each allocation of scripts/mixed.rhai;
# calibration 128 x 512 tokens of C4 train, perplexity on WikiText-2 test.
#
#   bash tools/mixed-results.sh [ALLOCATION ...]
#   TARGETS="3.0 2.5" SEEDS="0 1 2" bash tools/mixed-results.sh uniform error
#
# Allocations: uniform error error-model budget:combined budget:obs random
# (default: all six). Each run's output goes to $OUT (default results/mixed);
# a markdown line per run is appended to $OUT/table.md. EVAL_WINDOWS=N
# evaluates the first N windows only (unset: the whole test set).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/release/sparselab"
gguf="${SPARSELAB_SMOLLM2:-$(bash tools/fetch-smollm2.sh)}"
data="${SPARSELAB_DATA:-$(cd .. && pwd)/shared/data}"
out="${OUT:-results/mixed}"
targets="${TARGETS:-3.0}"
seeds="${SEEDS:-0}"
nsamples="${NSAMPLES:-128}"
eval_windows="${EVAL_WINDOWS:-}"
allocs=(uniform error error-model budget:combined budget:obs random)
[ $# -gt 0 ] && allocs=("$@")
mkdir -p "$out"
echo "# $(date -u +%F) eval windows: ${eval_windows:-all}, calibration $nsamples x 512 c4; $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) threads, $(git rev-parse --short HEAD)" >>"$out/table.md"
for target in $targets; do
  for alloc in "${allocs[@]}"; do
    for seed in $seeds; do
      tag="t$target-${alloc/:/-}-seed$seed"
      cmd=("$bin" run scripts/mixed.rhai --set model="$gguf"
        --set calib_data="$data/c4/c4-train.00000-of-01024.first1000.jsonl"
        --set eval_data="$data/wikitext2/wiki.test.raw"
        --set nsamples="$nsamples" --set target="$target" --set allocation="$alloc" --set seed="$seed")
      [ -z "$eval_windows" ] || cmd+=(--set eval_windows="$eval_windows")
      echo "+ ${cmd[*]}" >&2
      /usr/bin/time -v "${cmd[@]}" >"$out/$tag.log" 2>"$out/$tag.err" || { echo "FAILED: $tag (see $out/$tag.err)" >&2; continue; }
      avg=$(sed -n 's/^average bits //p' "$out/$tag.log")
      ppl=$(sed -n 's/^ppl [^:]*: //p' "$out/$tag.log")
      kl=$(sed -n 's/^kl [^:]*: //p' "$out/$tag.log")
      loss=$(sed -n 's/^OBS loss summed over linears \([^,]*\),.*/\1/p' "$out/$tag.log")
      secs=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$out/$tag.err")
      echo "| $target | $alloc | $seed | $avg | $loss | $ppl | $kl | $secs |" | tee -a "$out/table.md"
    done
  done
done
