#!/usr/bin/env bash
# One device call: the codec's conv stage variants, then batched throughput (burst rounds and
# the steady state), then faster-qwen3-tts at B = 1 for the same-call ratio.
#
#   source .gpu-wheels/on-device.sh .gpu-wheels && bash bench/throughput_device_run.sh "$OUT"
#
# 1. bench/codec_variants.py -> OUT/codec_variants.json (skip: CODEC_LIMIT_S=0)
# 2. bench/attention_batch_sweep.py -> OUT/attention_batch_sweep.json (skip: SWEEP_LIMIT_S=0)
# 3. fastqwen bench --batch-sizes $BENCH_BATCH_SIZES (default 1,64,256), one burst round and
#    a steady state of 3 waves per size -> OUT/records/; ENGINE_OPTIONS: more KEY=VALUE
#    engine options, space-separated (e.g. codec_stream=separate); BENCH_FLAGS: more bench
#    flags (e.g. --sample-threads)
# 4. bench/anchor_bench.py at B = 1 (skip: ANCHOR_LIMIT_S=0) -> OUT/records/
set -uo pipefail
OUT=${1:?usage: bash bench/throughput_device_run.sh OUT_DIR}
export FASTQWEN_CACHE=${FASTQWEN_CACHE:-/tmp/fq-cache}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/records"
REF=(env "PYTHONPATH=$REF_PYTHONPATH" python3)
ANCHOR=(env "PYTHONPATH=$ANCHOR_PYTHONPATH" python3)
OPTIONS=(--engine-option compile=true)
for option in ${ENGINE_OPTIONS:-}; do OPTIONS+=(--engine-option "$option"); done
# shellcheck disable=SC2206 # flags split on spaces on purpose
OPTIONS+=(${BENCH_FLAGS:-})
source "$(dirname "$0")/limited.sh"
main() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  limited codec-variants "${CODEC_LIMIT_S:-100}" "${REF[@]}" bench/codec_variants.py \
    "$OUT/codec_variants.json" --no-compile --spans 16,64,128
  limited attention-sweep "${SWEEP_LIMIT_S:-60}" "${REF[@]}" bench/attention_batch_sweep.py \
    "$OUT/attention_batch_sweep.json"
  limited static-batch "${BENCH_LIMIT_S:-330}" "${REF[@]}" -m fastqwen bench --device cuda \
    --dtype bfloat16 --engine static --model random:1.7b-custom_voice \
    --batch-sizes "${BENCH_BATCH_SIZES:-1,64,256}" --batch-rounds "${BENCH_ROUNDS:-1}" \
    --steady-waves "${BENCH_WAVES:-3}" "${OPTIONS[@]}" --out "$OUT/records"
  limited anchor "${ANCHOR_LIMIT_S:-80}" "${ANCHOR[@]}" bench/anchor_bench.py \
    --model-dir "$FASTQWEN_CACHE/random/1.7b-custom_voice" --model-name random:1.7b-custom_voice \
    --batch-sizes 1 --batch-rounds 1 --out "$OUT/records"
  echo "### done at ${SECONDS} s"
}
main 2>&1 | tee "$OUT/throughput_device_run.log"
