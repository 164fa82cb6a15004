#!/usr/bin/env bash
# One device call that checks the batched path's kernels and measures it, within ~520 s:
#
#   source .gpu-wheels/on-device.sh .gpu-wheels && bash bench/batch_verify_run.sh "$OUT"
#
# 1. the one-launch noise kernel against torch's per-row exponential_, bit for bit, and its
#    timing (bench/philox_noise_check.py -> OUT/philox_noise.json);
# 2. the top-k kernel: exactness and timing against the old one (bench/batch_kernel_check.py
#    --top-k-only -> OUT/top_k.json);
# 3. throughput against batch size, decode included (`fastqwen bench --batch-sizes`, records in
#    OUT/records); if that fails with the fused noise, again with fused_noise=false;
# 4. faster-qwen3-tts 0.5.4 at B = 1 in the same call (bench/anchor_bench.py);
# 5. batch invariance of a mixed 64-request batch against solo runs (bench/batch_check.py ->
#    OUT/batch_check.json);
# 6. the GPU tests of the new kernels (pytest -m gpu on two files -> OUT/gpu_tests.txt).
# Each step has its own time limit; OUT/batch_verify_run.log has everything, and the
# records are packed into OUT/verify_records.tgz.
set -uo pipefail

OUT=${1:?usage: bash bench/batch_verify_run.sh OUT_DIR}
SIZES=${BENCH_BATCH_SIZES:-1,8,64,128}
export FASTQWEN_CACHE=${FASTQWEN_CACHE:-/tmp/fq-cache}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/records"
REF=(env "PYTHONPATH=$REF_PYTHONPATH" python3)
ANCHOR=(env "PYTHONPATH=$ANCHOR_PYTHONPATH" python3)

source "$(dirname "$0")/limited.sh"

main() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  limited philox 60 "${REF[@]}" bench/philox_noise_check.py "$OUT/philox_noise.json"
  limited top-k 60 "${REF[@]}" bench/batch_kernel_check.py "$OUT/top_k.json" --top-k-only --repeat 30
  limited checkpoint 90 "${REF[@]}" -c "
from fastqwen.models.sources import random_checkpoint
print(random_checkpoint('1.7b', 'custom_voice'))"
  local bench=("${REF[@]}" -m fastqwen bench --device cuda --dtype bfloat16 --engine static
    --model random:1.7b-custom_voice --batch-sizes "$SIZES" --batch-rounds 2
    --engine-option compile=true --out "$OUT/records")
  if ! limited static-batch 220 "${bench[@]}"; then
    limited static-batch-torch-noise 200 "${bench[@]}" --engine-option fused_noise=false
  fi
  limited anchor 80 "${ANCHOR[@]}" bench/anchor_bench.py \
    --model-dir "$FASTQWEN_CACHE/random/1.7b-custom_voice" --model-name random:1.7b-custom_voice \
    --batch-sizes 1 --batch-rounds 1 --out "$OUT/records"
  limited invariance 120 "${REF[@]}" bench/batch_check.py "$OUT/batch_check.json" \
    --batch 64 --frames 48 --sizes 64 --throughput-frames 96
  limited gpu-tests 60 "${REF[@]}" -m pytest -q -x -p no:cacheprovider -m gpu \
    tests/test_philox_noise.py tests/test_batch_kernels.py > "$OUT/gpu_tests.txt" 2>&1
  tail -n 5 "$OUT/gpu_tests.txt"
  echo "### done at ${SECONDS} s"
}

main 2>&1 | tee "$OUT/batch_verify_run.log"
tar czf "$OUT/verify_records.tgz" -C "$OUT" records && rm -rf "$OUT/records"
