#!/usr/bin/env bash
# Reproduces table.md: every colorization pretext and the random lower bound under the linear probe on the embedded
# synthetic dataset (vgg_small, seed 0, default budget, CPU; 6 min on 2 cores), then the table.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
sslbench run --pretext random,quantized,hypercolumn,splitbrain,cgan --protocol linear --device cpu \
  --out "$here/runs" --cache-dir "${SSLBENCH_CACHE:-$HOME/.cache/sslbench}" --force
sslbench table --runs "$here/runs" --format md > "$here/table.md"
