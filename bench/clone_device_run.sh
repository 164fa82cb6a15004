#!/usr/bin/env bash
# One device call: voice clone's time to first audio, stage by stage, then as bench records
# beside custom voice's.
#
#   source .gpu-wheels/on-device.sh .gpu-wheels && bash bench/clone_device_run.sh "$OUT"
#
# 1. bench/clone_ttfa.py on random:1.7b-base, ICL and x-vector, new and cached reference
#    (samples/ref_audio.wav, cut to 10 s) -> OUT/clone_ttfa.json (skip: STAGES_LIMIT_S=0)
# 2. fastqwen bench --modes clone_icl,clone_xvector --references cached,new on
#    random:1.7b-base -> OUT/records/ (4 records; skip: CLONE_LIMIT_S=0)
# 3. fastqwen bench --modes custom_voice on random:1.7b-custom_voice -> OUT/records/
#    (skip: CUSTOM_LIMIT_S=0)
# Steps 2 and 3 run the default engine config, 24 tokens a run (TTFA needs the first chunk
# only), no profiler. The limits add up to 240 s.
set -uo pipefail
OUT=${1:?usage: bash bench/clone_device_run.sh OUT_DIR}
export FASTQWEN_CACHE=${FASTQWEN_CACHE:-/tmp/fq-cache}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/records"
REF=(env "PYTHONPATH=$REF_PYTHONPATH" python3)
REFERENCE=samples/ref_audio.wav
REFERENCE_TEXT=$("${REF[@]}" -c 'import json; print(json.load(open("samples/ref_texts.json"))["ref_audio.wav"])')
RUNS=${BENCH_RUNS:-3}
BENCH=(--device cuda --dtype bfloat16 --engine static --runs "$RUNS" --max-new-tokens 24
  --no-profile --out "$OUT/records")
source "$(dirname "$0")/limited.sh"
main() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  limited clone-stages "${STAGES_LIMIT_S:-100}" "${REF[@]}" bench/clone_ttfa.py \
    "$OUT/clone_ttfa.json" --model random:1.7b-base --device cuda --runs "$RUNS" \
    --reference "$REFERENCE" --reference-text "$REFERENCE_TEXT"
  limited clone-records "${CLONE_LIMIT_S:-80}" "${REF[@]}" -m fastqwen bench "${BENCH[@]}" \
    --model random:1.7b-base --modes clone_icl,clone_xvector --references cached,new \
    --reference "$REFERENCE" --reference-text "$REFERENCE_TEXT"
  limited custom-records "${CUSTOM_LIMIT_S:-60}" "${REF[@]}" -m fastqwen bench "${BENCH[@]}" \
    --model random:1.7b-custom_voice --modes custom_voice
  echo "### done at ${SECONDS} s"
}
main 2>&1 | tee "$OUT/clone_device_run.log"
