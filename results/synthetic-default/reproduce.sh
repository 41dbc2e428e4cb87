#!/usr/bin/env bash
# Reproduces table.md: the default `sslbench run` (synthetic dataset, vgg_small, seed 0, CPU), then the table.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
sslbench run --device cpu --out "$here/runs" --cache-dir "${SSLBENCH_CACHE:-$HOME/.cache/sslbench}" --force
sslbench table --runs "$here/runs" --format md > "$here/table.md"
