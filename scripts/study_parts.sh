#!/usr/bin/env bash
# The recipe parts' study (docs/plan.md): a finished run's own config plus ONE recipe part at a time (weight EMA,
# label smoothing, MixUp), the same training seeds on the same folds and test images, then a paired
# `graystem compare` of each arm's seed ensemble against the base run, on the test set and out of fold.
#   bash scripts/study_parts.sh BASE_RUN OUT_DIR [SEEDS] [ARMS]
# BASE_RUN is a run folder trained with --seeds SEEDS (default 3), e.g. a planned run of study_recipes.sh.
# ARMS (default "ema smoothing mixup") picks the arms. Runs one at a time (two CPU jobs side by side only share
# the cores); a finished arm (its summary.json exists) is not run again.
set -euo pipefail
base=$1; out=$2; seeds=${3:-3}; arms=${4:-ema smoothing mixup}
[ -f "$base/summary.json" ] || { echo "study_parts.sh: $base has no summary.json (not a finished run)" >&2; exit 2; }
mkdir -p "$out"
for arm in $arms; do
  case $arm in
    # the product's defaults for each part (pipeline/schema.py): decay 0.99 with timm's warm-up; 0.1 smoothing;
    # MixUp alpha 0.2 on every batch
    ema)       part=(--set 'train.ema={decay: 0.99}') ;;
    smoothing) part=(--set train.label_smoothing=0.1) ;;
    mixup)     part=(--set 'train.mixup={mixup_alpha: 0.2}') ;;
    *) echo "study_parts.sh: arm '$arm' is not ema, smoothing or mixup" >&2; exit 2 ;;
  esac
  if [ ! -f "$out/$arm/summary.json" ]; then
    /usr/bin/time -f "$arm: %e s" python train.py --config "$base/config.yaml" "${part[@]}" --quiet \
      --seeds "$seeds" --output-dir "$out/$arm"
  fi
  for on in test oof; do
    graystem compare "$base" "$out/$arm" --on "$on" --json > "$out/${arm}_$on.json"
    graystem compare "$base" "$out/$arm" --on "$on"
  done
done
