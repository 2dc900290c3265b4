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
run px224 --set data.image_size=224
graystem compare "$out/default" "$out/none" "$out/repeat" "$out/random" "$out/px224" --json > "$out/compare.json"
graystem compare "$out/default" "$out/none" "$out/repeat" "$out/random" "$out/px224"
