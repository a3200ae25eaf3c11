#!/usr/bin/env bash
# The carving quality table of the README: for each shared tiny model, the perplexity of the dense
# model and of every configuration below on held-out TinyStories text, with the carve time.
# Calibration and evaluation use disjoint byte ranges of ../shared/data/tinystories_val.txt.
#
#   scripts/carve-quality.sh [BUILD_DIR]        (env: WORK=/tmp/cmoe-quality THREADS=2
#                                                 CONFIGS="S3A3E8 ..." MAX_WINDOWS=0
#                                                 CARVE_ARGS="--balance-bias 1e-3")
#
# Each cell: perplexity (carve seconds, calibration load imbalance = max/mean tokens per routed
# expert, averaged over layers).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"
bin="$build/bin"
shared="$root/../shared"
work="${WORK:-/tmp/cmoe-quality}"
threads="${THREADS:-2}"
configs="${CONFIGS:-S3A3E8 S2A4E8 S2A2E16 S1A3E16 S4A4E16}"
max_windows="${MAX_WINDOWS:-0}"
carve_args="${CARVE_ARGS:-}"
text="$shared/data/tinystories_val.txt"
calib_range="0:400000"
eval_range="400000:"

for tool in cmoe-convert cmoe-carve cmoe-eval; do
  [[ -x "$bin/$tool" ]] || { echo "carve-quality: $bin/$tool missing; build first" >&2; exit 1; }
done
[[ -f "$text" ]] || { echo "carve-quality: $text missing" >&2; exit 1; }
mkdir -p "$work"

# name -> dense HF directory
declare -A dense
"$bin/cmoe-convert" llama2c --model "$shared/models/stories260K/stories260K.bin" \
  --tokenizer "$shared/models/stories260K/tok512.model" --out "$work/stories260K" --force >/dev/null
"$bin/cmoe-convert" llama2c --model "$shared/models/babyllama-tok105/model5000.bin" \
  --tokenizer "$shared/models/babyllama-tok105/tok105.model" --out "$work/babyllama-tok105" \
  --force >/dev/null
dense[stories260K]="$work/stories260K"
dense[tinystories-656k]="$shared/models/tinystories-656k"
dense[babyllama-tok105]="$work/babyllama-tok105"

ppl() {  # model dir -> "ppl tokens ctx"
  "$bin/cmoe-eval" ppl --model "$1" --text "$text" --text-range "$eval_range" \
    --max-windows "$max_windows" --threads "$threads" --json 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin); print("%.3f %d %d" % (j["ppl"], j["tokens_scored"], j["ctx"]))'
}

echo "| model | dense | $(echo $configs | sed 's/ / | /g') |"
echo "|---|---|$(for c in $configs; do printf -- '---|'; done)"
for name in stories260K tinystories-656k babyllama-tok105; do
  read -r dense_ppl tokens ctx < <(ppl "${dense[$name]}")
  row="| $name (ctx $ctx, $tokens tokens) | $dense_ppl |"
  for config in $configs; do
    out="$work/$name-$config"
    json=$("$bin/cmoe-carve" --model "${dense[$name]}" --calib "$text" --calib-range "$calib_range" \
      --config "$config" --out "$out" --force --threads "$threads" --json $carve_args 2>/dev/null)
    secs=$(echo "$json" | python3 -c 'import json,sys; print("%.1f" % json.load(sys.stdin)["carve_seconds"])')
    imbalance=$(python3 -c '
import json, sys
layers = json.load(open(sys.argv[1]))["layers"]
ratios = [max(l["tokens_per_expert"]) * len(l["tokens_per_expert"]) / sum(l["tokens_per_expert"])
          for l in layers]
print("%.2f" % (sum(ratios) / len(ratios)))' "$out/carve_report.json")
    read -r carved_ppl _ _ < <(ppl "$out")
    row="$row $carved_ppl (${secs} s, ${imbalance}x) |"
  done
  echo "$row"
done
