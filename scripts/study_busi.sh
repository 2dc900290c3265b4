#!/usr/bin/env bash
# The README's BUSI study: benign vs malignant, 5 folds, repeated seeds, paired comparisons.
#   bash scripts/study_busi.sh /path/to/busi/manifest.csv OUT_DIR [SEEDS]
set -euo pipefail
manifest=$1; out=$2; seeds=${3:-3}
common=(--config busi --set "data.manifest=$manifest" --quiet)
run() {  # name, extra --set arguments...
  local name=$1; shift
  [ -f "$out/$name/summary.json" ] && return
  /usr/bin/time -f "$name: %e s" python train.py "${common[@]}" --seeds "$seeds" --output-dir "$out/$name" "$@"
}
run default
run none --set model.pretrained=none
run repeat --set model.stem=repeat
run random --set model.stem=random
[ "${WITH_224:-0}" = 1 ] && run px224 --set data.image_size=224
runs=("$out/default" "$out/none" "$out/repeat" "$out/random")
[ -d "$out/px224" ] && runs+=("$out/px224")
for on in test oof; do
  graystem compare "${runs[@]}" --on "$on" --json > "$out/compare_$on.json"
  graystem compare "${runs[@]}" --on "$on"
done
