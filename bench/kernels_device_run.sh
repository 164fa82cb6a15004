#!/usr/bin/env bash
# One device call: frames with no compile at all (`ops.KERNELS`, EngineConfig(compile=False))
# against the compiled frames, 1.7B CustomVoice random weights, bf16:
#
#   source .gpu-wheels/on-device.sh .gpu-wheels && bash bench/kernels_device_run.sh "$OUT"
#
# 1. the GPU tests of the kernel frames (and KERNELS_TESTS, a pytest -k expression)
#    -> OUT/test_gpu.log
# 2. fastqwen bench --cold-start with compile=false (a fresh process to the end of its first
#    64-token generation, empty caches then warm) -> OUT/records/cold-start-1.7b.json
# 3. fastqwen bench at batch 1 (168 tokens, 3 runs), compile=false, then the default
#    (compiled) -> OUT/records/
# 4. bench/profile_frame.py at batch 1 and 64, greedy and sampled, uncompiled then compiled
#    -> OUT/profile_uncompiled.json, OUT/profile_compiled.json
# Each step has its own limit (<NAME>_LIMIT_S; 0 skips it); the last one gets what is left
# of KERNELS_BUDGET_S (default 540 s, inside the device's 600 s with on-device.sh before it).
set -uo pipefail
OUT=${1:?usage: bash bench/kernels_device_run.sh OUT_DIR}
export FASTQWEN_CACHE=${FASTQWEN_CACHE:-/tmp/fq-cache}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/records"
REF=(env "PYTHONPATH=$REF_PYTHONPATH" python3)
MODEL=random:1.7b-custom_voice
BENCH=(-m fastqwen bench --device cuda --dtype bfloat16 --engine static --model "$MODEL"
  --runs 3 --max-new-tokens 168 --no-profile --out "$OUT/records")
source "$(dirname "$0")/limited.sh"
main() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  limited gpu-tests "${TESTS_LIMIT_S:-150}" "${REF[@]}" -m pytest -q -p no:cacheprovider \
    tests/test_gpu.py -k "${KERNELS_TESTS:-uncompiled}" --durations=8 2>&1 | tee "$OUT/test_gpu.log"
  limited checkpoint "${BUILD_LIMIT_S:-60}" "${REF[@]}" -c \
    "from fastqwen.models.sources import resolve_model; print(resolve_model('$MODEL').path)"
  limited cold-start "${COLD_LIMIT_S:-150}" "${REF[@]}" -m fastqwen bench --cold-start \
    --cold-start-runs 1 --model "$MODEL" --device cuda --dtype bfloat16 \
    --engine-option compile=false --out "$OUT/records"
  limited bench-uncompiled "${B1_LIMIT_S:-90}" "${REF[@]}" "${BENCH[@]}" --engine-option compile=false
  limited profile-uncompiled "${PROFILE_LIMIT_S:-120}" "${REF[@]}" bench/profile_frame.py \
    "$OUT/profile_uncompiled.json" --batches 1,64 --modes greedy,sampled --no-compile
  limited bench-compiled "${B1C_LIMIT_S:-120}" "${REF[@]}" "${BENCH[@]}"
  local left=$((${KERNELS_BUDGET_S:-540} - SECONDS))
  ((left < 60)) && left=0
  limited profile-compiled "${PROFILEC_LIMIT_S:-$left}" "${REF[@]}" bench/profile_frame.py \
    "$OUT/profile_compiled.json" --batches 1,64 --modes greedy,sampled
  echo "### done at ${SECONDS} s"
}
main 2>&1 | tee "$OUT/kernels_device_run.log"
