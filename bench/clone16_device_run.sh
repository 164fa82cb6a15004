#!/usr/bin/env bash
# One device call: the reference encoder's graphs checked and timed, then voice clone's
# time to first audio stage by stage and as bench records, with the codec on the loop's
# stream (default) and on its own.
#
#   source .gpu-wheels/on-device.sh .gpu-wheels && bash bench/clone16_device_run.sh "$OUT"
#
# 1. tests/test_gpu.py -k "$GPU_TESTS_K" (default: the reference encoder's graphs and the
#    prompt ops)
# 1b. bench/prefill_check.py on random:1.7b-base, bf16 -> OUT/prefill_check.json
# 2. bench/reference_codes_check.py on random:1.7b-base, bf16 then float32
#    -> OUT/reference_codes_check.json, OUT/reference_codes_check_fp32.json
# 3. bench/clone_device_run.sh (stages, clone records, custom voice record) -> OUT/
# 4. bench/clone_ttfa.py with codec_stream=separate -> OUT/clone_ttfa_separate.json
# 5. fastqwen bench, custom voice at batch 1, 168 tokens: ms/frame -> OUT/records/
# Limits: GPU_TEST_LIMIT_S, PREFILL_LIMIT_S, REFCODES_LIMIT_S, STAGES_LIMIT_S, CLONE_LIMIT_S, CUSTOM_LIMIT_S,
# SEPARATE_LIMIT_S, B1_LIMIT_S (0 skips a step).
set -uo pipefail
OUT=${1:?usage: bash bench/clone16_device_run.sh OUT_DIR}
export FASTQWEN_CACHE=${FASTQWEN_CACHE:-/tmp/fq-cache}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/records"
REF=(env "PYTHONPATH=$REF_PYTHONPATH" python3)
source "$(dirname "$0")/limited.sh"
main() {
  limited gpu-tests "${GPU_TEST_LIMIT_S:-60}" "${REF[@]}" -m pytest -q -p no:cacheprovider \
    tests/test_gpu.py -k "${GPU_TESTS_K:-reference_codes or prompt_ops}"
  limited prefill-check "${PREFILL_LIMIT_S:-120}" "${REF[@]}" bench/prefill_check.py \
    "$OUT/prefill_check.json"
  limited reference-codes "${REFCODES_LIMIT_S:-100}" "${REF[@]}" bench/reference_codes_check.py \
    "$OUT/reference_codes_check.json"
  limited reference-codes-fp32 "${REFCODES_LIMIT_S:-100}" "${REF[@]}" \
    bench/reference_codes_check.py "$OUT/reference_codes_check_fp32.json" --dtype float32
  bash "$(dirname "$0")/clone_device_run.sh" "$OUT" > /dev/null
  grep '###' "$OUT/clone_device_run.log"
  REFERENCE_TEXT=$("${REF[@]}" -c \
    'import json; print(json.load(open("samples/ref_texts.json"))["ref_audio.wav"])')
  limited clone-stages-separate "${SEPARATE_LIMIT_S:-100}" "${REF[@]}" bench/clone_ttfa.py \
    "$OUT/clone_ttfa_separate.json" --model random:1.7b-base --device cuda --runs 3 \
    --reference samples/ref_audio.wav --reference-text "$REFERENCE_TEXT" \
    --engine-option codec_stream=separate
  limited bench-b1 "${B1_LIMIT_S:-90}" "${REF[@]}" -m fastqwen bench --device cuda \
    --dtype bfloat16 --engine static --model random:1.7b-custom_voice --runs 3 \
    --max-new-tokens 168 --no-profile --out "$OUT/records"
  echo "### done at ${SECONDS} s"
}
main 2>&1 | tee "$OUT/clone16_device_run.log"
