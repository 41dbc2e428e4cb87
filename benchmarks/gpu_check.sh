#!/usr/bin/env bash
# The whole GPU check, on any CUDA machine, in under 8 minutes (each step has its own time limit):
#   1. the tests that need CUDA (they skip on a CPU-only machine; here a skip is a failure);
#   2. `sslbench run` end to end on the GPU: bf16 + channels_last, every default protocol, on the synthetic data;
#   3. the throughput table: images/s per pretext at 224x224, fp32 vs bf16+channels_last (+compile for two), and the
#      fraction of the GPU's bf16 matrix throughput the encoder's forward + backward reaches;
#   4. with two or more GPUs, the same run data-parallel under torchrun (NCCL), compared with the one-GPU records.
# Run from the repository root with the venv active:  bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-check}}"
mkdir -p "$out"
export SSLBENCH_CACHE="$out/cache"

python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this check needs one')"
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

echo "== 1. CUDA tests"
cuda_tests=$(grep -l "cuda.is_available" tests/test_*.py | tr '\n' ' ')
# -rs lists skips; a CUDA test that skips on a CUDA machine is a failure of this check.
timeout 180 python -m pytest -q -x -rs $cuda_tests 2>&1 | tee "$out/cuda_tests.txt"
if grep -q "SKIPPED.*CUDA" "$out/cuda_tests.txt"; then
  echo "a CUDA test skipped on a CUDA machine" >&2
  exit 1
fi

echo "== 2. sslbench run on the GPU (bf16, channels_last)"
timeout 120 sslbench run --device cuda --precision bf16 --channels-last --steps 50 --seeds 0 \
  --pretext random,regression,quantized,cgan --protocol linear,colorization --out "$out/runs-1gpu" --quiet

echo "== 3. throughput at 224x224"
timeout 150 python benchmarks/bench_gpu.py --pretexts regression,quantized,hypercolumn,splitbrain,cgan \
  --settings fp32,bf16+cl --steps 20 | tee "$out/throughput.md"
timeout 120 python benchmarks/bench_gpu.py --pretexts regression,cgan --settings fp32,bf16+cl+compile --steps 20 \
  | tee "$out/throughput_compile.md"

if [ "$gpus" -ge 2 ]; then
  echo "== 4. two GPUs under torchrun (NCCL)"
  timeout 120 torchrun --standalone --nproc_per_node=2 -m sslbench run --device cuda --precision bf16 \
    --channels-last --steps 50 --seeds 0 --pretext random,regression,quantized,cgan --protocol linear,colorization \
    --out "$out/runs-2gpu" --quiet
  sslbench table --runs "$out/runs-1gpu" | tee "$out/table-1gpu.md"
  sslbench table --runs "$out/runs-2gpu" | tee "$out/table-2gpu.md"
else
  echo "== 4. skipped: one GPU"
fi
echo "GPU check passed; outputs in $out"
