#!/usr/bin/env bash
# One device call: cold starts, a fresh process to the end of its first 64-token generation,
# with empty compile caches and then with the caches the first process left.
#
#   source .gpu-wheels/on-device.sh .gpu-wheels && bash bench/cold_start_device_run.sh "$OUT"
#
# 0. builds the random 1.7b checkpoint in $FASTQWEN_CACHE (untimed) if it is not there
# 1. fastqwen bench --cold-start (static engine, bf16, 1.7b CustomVoice; its default
#    EngineConfig, graphed and compiled) -> OUT/records/cold-start-1.7b.json
#    (COLD_RUNS pairs, default 1; skip: COLD_LIMIT_S=0)
# 2. bench/anchor_cold_start.py, faster-qwen3-tts the same way
#    -> OUT/records/cold-start-anchor-1.7b.json (skip: ANCHOR_LIMIT_S=0)
set -uo pipefail
OUT=${1:?usage: bash bench/cold_start_device_run.sh OUT_DIR}
export FASTQWEN_CACHE=${FASTQWEN_CACHE:-/tmp/fq-cache}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/records"
REF=(env "PYTHONPATH=$REF_PYTHONPATH" python3)
ANCHOR=(env "PYTHONPATH=$ANCHOR_PYTHONPATH" python3)
MODEL=random:1.7b-custom_voice
source "$(dirname "$0")/limited.sh"
main() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  limited checkpoint "${BUILD_LIMIT_S:-60}" "${REF[@]}" -c \
    "from fastqwen.models.sources import resolve_model; print(resolve_model('$MODEL').path)"
  limited cold-start "${COLD_LIMIT_S:-170}" "${REF[@]}" -m fastqwen bench --cold-start \
    --cold-start-runs "${COLD_RUNS:-1}" --model "$MODEL" --device cuda --dtype bfloat16 \
    --out "$OUT/records"
  limited anchor-cold-start "${ANCHOR_LIMIT_S:-70}" "${ANCHOR[@]}" bench/anchor_cold_start.py \
    --model-dir "$FASTQWEN_CACHE/random/1.7b-custom_voice" --model-name "$MODEL" \
    --out "$OUT/records"
  echo "### done at ${SECONDS} s"
}
main 2>&1 | tee "$OUT/cold_start_device_run.log"
