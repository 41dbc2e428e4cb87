#!/usr/bin/env bash
# Renders every experiment's tables, figures and report from its records (results/<experiment>/runs), after
#   SSLBENCH_DATA=../shared/data sslbench run --config results/<experiment>/experiment.toml
# has produced them. Usage, from the repository root: SSLBENCH_DATA=../shared/data bash results/render.sh [experiment ...]
# The colorization grid and the HTML report's grid also need the trained checkpoints (in the cache the run used)
# and the data; without them those two steps are skipped with a message.
set -euo pipefail
cd "$(dirname "$0")/.."
render() {  # experiment, then one `sslbench table` argument list per table
  local exp=$1; shift
  local runs="results/$exp/runs" out="results/$exp/table.md"
  [ -d "$runs" ] || { echo "skip $exp: no records in $runs" >&2; return; }
  echo "# $exp" > "$out"
  for args in "$@"; do
    printf '\n`sslbench table --runs %s %s`\n\n' "$runs" "$args" >> "$out"
    # shellcheck disable=SC2086
    sslbench table --runs "$runs" $args >> "$out"
  done
  sslbench plot --runs "$runs" --kind layers,loss --out "results/$exp/figures" || sslbench plot --runs "$runs" --kind loss --out "results/$exp/figures"
  if sslbench plot --runs "$runs" --kind grid --num-images 6 --out "results/$exp/figures"; then
    sslbench report --runs "$runs" --out "results/$exp/report.html" --grid --num-images 6 --title "sslbench: $exp"
  else
    echo "grid skipped for $exp (no checkpoints or data here); report without it" >&2
    sslbench report --runs "$runs" --out "results/$exp/report.html" --title "sslbench: $exp"
  fi
}
experiments=("$@")
[ ${#experiments[@]} -gt 0 ] || experiments=(cifar10-linear quantized-ablation camvid-finetune synthetic-default)
for exp in "${experiments[@]}"; do
  case $exp in
    cifar10-linear) render "$exp" "--metrics linear,knn --ci" "--metrics colorization,semantic --layout rows --ci" ;;
    quantized-ablation) render "$exp" "--metrics colorization --layout rows --ci" "--metrics linear --ci" ;;
    camvid-finetune) render "$exp" "--metrics miou,pixel_acc --ci" "--metrics class" ;;
    *) render "$exp" "--metrics linear" ;;
  esac
done
