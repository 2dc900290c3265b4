#!/usr/bin/env bash
# The README's recipe study: on one real data set, the planned config against the shipped config and the common
# recipe (scripts/study_recipes/naive_*.yaml), each over SEEDS training seeds on the same folds and test images,
# then paired `graystem compare` of the seed ensembles on the test set and out of fold.
#   bash scripts/study_recipes.sh busi|nih MANIFEST OUT_DIR BUDGET [SEEDS] [ARMS]
# BUDGET is the planned arm's wall time for all its seeds together (`--config auto --budget`). ARMS (default
# "shipped naive planned") picks which to run. Runs one at a time (two CPU jobs side by side only share the
# cores); a finished arm (its summary.json exists) is not run again.
set -euo pipefail
data=$1; manifest=$2; out=$3; budget=$4; seeds=${5:-3}; arms=${6:-shipped naive planned}
here=$(cd "$(dirname "$0")" && pwd)
case $data in
  # the common recipe's min-max intensity changes the pixels the near-copy hashes see, hence its copy groups and
  # test images (docs/plan.md): it is run, but left out of the paired comparison
  busi) shipped=(--config busi); naive=(--config "$here/study_recipes/naive_busi.yaml")
        planned=(--set 'data.exclude=[images/normal/*]'); paired="shipped planned" ;;
  # the chest config's classes and a held-out fifth of the patients (the demo has its own test rows); near
  # copies grouped as the product's default (the demo config only warns), so every arm draws the same split
  nih)  shipped=(--config chest_xray --set 'task.classes=[no_finding,pneumonia]' --set cv.test_fraction=0.2
                 --set data.near_duplicates=group)
        naive=(--config "$here/study_recipes/naive_nih.yaml"); planned=(); paired="shipped naive planned" ;;
  *) echo "study_recipes.sh: data set '$data' is not busi or nih" >&2; exit 2 ;;
esac
run() {  # name, arguments...
  local name=$1; shift
  [ -f "$out/$name/summary.json" ] && return 0
  /usr/bin/time -f "$data $name: %e s" python train.py "$@" --set "data.manifest=$manifest" --quiet \
    --seeds "$seeds" --output-dir "$out/$name"
}
for arm in $arms; do
  case $arm in
    shipped) run shipped "${shipped[@]}" ;;
    naive)   run naive "${naive[@]}" ;;
    planned) run planned --config auto --budget "$budget" "${planned[@]}" ;;
  esac
done
runs=()
for arm in $paired; do [ -f "$out/$arm/summary.json" ] && runs+=("$out/$arm"); done
if [ ${#runs[@]} -ge 2 ]; then
  for on in test oof; do  # oof: the same development images, scored out of fold (the folds may differ)
    graystem compare "${runs[@]}" --on "$on" --json > "$out/compare_$on.json"
    graystem compare "${runs[@]}" --on "$on"
  done
fi
