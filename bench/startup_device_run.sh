#!/usr/bin/env bash
# One device call: where a lone stream's time to first audio goes, and what Inductor's
# coordinate-descent autotuning (EngineConfig.autotune) costs and buys.
#
#   source .gpu-wheels/on-device.sh .gpu-wheels && bash bench/startup_device_run.sh "$OUT"
#
# 1. bench/ttfa_trace.py on random:1.7b-custom_voice, default config -> OUT/ttfa_trace.json
#    (skip: TRACE_LIMIT_S=0)
# 2. fastqwen bench (static, B = 1, 168 tokens, 3 runs, no profiler) with autotune=false,
#    then with the defaults, then with admit_in_block=false (blocks launched at once)
#    -> OUT/records/ (skip: BENCH_LIMIT_S=0, per run)
# 3. fastqwen bench --cold-start with autotune=false -> OUT/cold-start-untuned/
#    (skip: COLD_LIMIT_S=0)
# 4. fastqwen bench --batch-sizes 64 with codec_stream=separate, a burst round and a
#    steady state with thread samples -> OUT/records/ (skip: BATCH_LIMIT_S=0)
# 5. bench/ttfa_trace.py with codec_stream=separate -> OUT/ttfa_trace_separate.json
#    (skip: TRACE2_LIMIT_S=0)
set -uo pipefail
OUT=${1:?usage: bash bench/startup_device_run.sh OUT_DIR}
export FASTQWEN_CACHE=${FASTQWEN_CACHE:-/tmp/fq-cache}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/records" "$OUT/cold-start-untuned"
REF=(env "PYTHONPATH=$REF_PYTHONPATH" python3)
MODEL=random:1.7b-custom_voice
BENCH=(-m fastqwen bench --device cuda --dtype bfloat16 --engine static --model "$MODEL"
  --runs 3 --max-new-tokens 168 --no-profile --out "$OUT/records")
source "$(dirname "$0")/limited.sh"
main() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  limited ttfa-trace "${TRACE_LIMIT_S:-150}" "${REF[@]}" bench/ttfa_trace.py \
    "$OUT/ttfa_trace.json" --model "$MODEL"
  limited bench-untuned "${BENCH_LIMIT_S:-90}" "${REF[@]}" "${BENCH[@]}" \
    --engine-option autotune=false
  limited bench-tuned "${BENCH_LIMIT_S:-90}" "${REF[@]}" "${BENCH[@]}"
  limited bench-no-admit "${BENCH_LIMIT_S:-90}" "${REF[@]}" "${BENCH[@]}" \
    --engine-option admit_in_block=false
  limited batch-separate "${BATCH_LIMIT_S:-150}" "${REF[@]}" -m fastqwen bench --device cuda \
    --dtype bfloat16 --engine static --model "$MODEL" --batch-sizes 64 --batch-rounds 1 \
    --steady-waves 3 --sample-threads --engine-option compile=true \
    --engine-option codec_stream=separate --out "$OUT/records"
  limited ttfa-trace-separate "${TRACE2_LIMIT_S:-100}" "${REF[@]}" bench/ttfa_trace.py \
    "$OUT/ttfa_trace_separate.json" --model "$MODEL" --engine-option codec_stream=separate
  limited cold-start-untuned "${COLD_LIMIT_S:-150}" "${REF[@]}" -m fastqwen bench --cold-start \
    --cold-start-runs 1 --model "$MODEL" --device cuda --dtype bfloat16 \
    --engine-option autotune=false --out "$OUT/cold-start-untuned"
  echo "### done at ${SECONDS} s"
}
main 2>&1 | tee "$OUT/startup_device_run.log"
