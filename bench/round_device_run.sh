#!/usr/bin/env bash
# One device call: where a batch round's time goes, then batch invariance in invariant mode.
#
#   source .gpu-wheels/on-device.sh .gpu-wheels && bash bench/round_device_run.sh "$OUT"
#
# 1. bench/profile_round.py at ROUND_SIZES (default 64,256) -> OUT/profile_round.json
# 2. bench/batch_check.py --invariant --batch 64 -> OUT/batch_check_invariant.json
set -uo pipefail
OUT=${1:?usage: bash bench/round_device_run.sh OUT_DIR}
export FASTQWEN_CACHE=${FASTQWEN_CACHE:-/tmp/fq-cache}
export PYTHONUNBUFFERED=1
REF=(env "PYTHONPATH=$REF_PYTHONPATH" python3)
source "$(dirname "$0")/limited.sh"
main() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  limited profile-round "${ROUND_LIMIT_S:-330}" "${REF[@]}" bench/profile_round.py \
    "$OUT/profile_round.json" --sizes "${ROUND_SIZES:-64,256}" ${ROUND_ARGS:-}
  limited invariance "${INVARIANCE_LIMIT_S:-200}" "${REF[@]}" bench/batch_check.py \
    "$OUT/batch_check_invariant.json" --invariant --batch 64 --frames 48 --sizes 1,64 \
    --throughput-frames 96
  echo "### done at ${SECONDS} s"
}
main 2>&1 | tee "$OUT/round_device_run.log"
