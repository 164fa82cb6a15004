#!/usr/bin/env bash
# The whole benchmark in one device call. From the repo root on the GPU machine:
#
#   source .gpu-wheels/on-device.sh .gpu-wheels && bash bench/device_run.sh "$OUT"
#
# (optionally prefixed with FASTQWEN_GIT_COMMIT=<hash>: the tree travels without .git).
#
# 1. builds the random-weight 1.7B and 0.6B CustomVoice checkpoints on the GPU (fastqwen);
# 2. runs, each in its own process (peak memory is per process):
#      static 1.7B, anchor 1.7B, static 0.6B, anchor 0.6B, dynamic 1.7B (runs=2: ~30 s a run),
#      then static 1.7B without CUDA graphs if time is left;
# 3. writes one JSON record per run into OUT (<engine>-<size>.json; a failed or skipped run
#    gets a record whose "error" says why), the full log in OUT/device_run.log, and prints
#    a summary table last.
#
# Each step has a time limit, cut to what is left of BENCH_BUDGET_S (default 470 s; a step
# with under 30 s left is skipped), so the call, with ~30 s of on-device.sh before it, ends
# well inside the 600 s device limit even when a step hangs.
set -uo pipefail

OUT=${1:?usage: bash bench/device_run.sh OUT_DIR}
BUDGET_S=${BENCH_BUDGET_S:-470}
RUNS=${BENCH_RUNS:-3}
export FASTQWEN_CACHE=${FASTQWEN_CACHE:-/tmp/fq-cache}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

if [[ -z ${REF_PYTHONPATH:-} || -z ${ANCHOR_PYTHONPATH:-} ]]; then
  echo "REF_PYTHONPATH / ANCHOR_PYTHONPATH unset: run 'source .gpu-wheels/on-device.sh .gpu-wheels' first" >&2
  exit 2
fi

# Commands, not shell functions: `timeout` runs them.
REF=(env "PYTHONPATH=$REF_PYTHONPATH" python3)
ANCHOR=(env "PYTHONPATH=$ANCHOR_PYTHONPATH" python3)

# failed_record FILE ENGINE MODEL MESSAGE: a record for a run that wrote none.
failed_record() {
  python3 - "$@" <<'EOF'
import json, sys
path, engine, model, message = sys.argv[1:5]
with open(path, "w") as f:
    json.dump({"schema": "fastqwen-bench/1", "engine": engine, "model": model, "error": message}, f, indent=1)
EOF
}

# step NAME LIMIT_S JSON ENGINE MODEL -- CMD...: run CMD with a time limit inside the budget.
step() {
  local name=$1 limit=$2 json=$3 engine=$4 model=$5
  shift 6
  [[ -n $json ]] && rm -f "$json"  # a stale record must not pass for this run's
  local left=$((BUDGET_S - SECONDS))
  if ((left < 30)); then
    echo "### $name: skipped (${left} s of the ${BUDGET_S} s budget left)"
    [[ -n $json ]] && failed_record "$json" "$engine" "$model" "skipped: time budget spent"
    return
  fi
  ((limit > left)) && limit=$left
  echo "### $name: start at ${SECONDS} s, limit ${limit} s"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "### $name: exit ${rc} after $((SECONDS - t0)) s"
  if [[ -n $json && ! -s $json ]]; then
    local why="exit code $rc"
    ((rc == 124 || rc == 137)) && why="timed out after ${limit} s"
    failed_record "$json" "$engine" "$model" "$why; no record written (see device_run.log)"
  fi
}

main() {
  echo "### device_run.sh at $(date -u +%FT%TZ), budget ${BUDGET_S} s, runs ${RUNS}"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  local versions="import torch, transformers; print(torch.__version__, 'transformers', transformers.__version__)"
  echo "ref: $("${REF[@]}" -c "$versions" 2>&1 | tail -n 1)"
  echo "anchor: $("${ANCHOR[@]}" -c "$versions" 2>&1 | tail -n 1)"

  step checkpoints 180 "" - - -- "${REF[@]}" -c "
from fastqwen.models.sources import random_checkpoint
for size in ('1.7b', '0.6b'):
    print(random_checkpoint(size, 'custom_voice'), flush=True)"
  local ck17=$FASTQWEN_CACHE/random/1.7b-custom_voice ck06=$FASTQWEN_CACHE/random/0.6b-custom_voice
  ls -la "$ck17" "$ck06"

  local bench=(-m fastqwen bench --device cuda --dtype bfloat16)
  local static_opts=(--engine-option "compile=${BENCH_COMPILE:-false}")
  step static-1.7b 260 "$OUT/static-1.7b.json" static random:1.7b-custom_voice -- \
    "${REF[@]}" "${bench[@]}" --engine static --model random:1.7b-custom_voice --runs "$RUNS" \
    "${static_opts[@]}" --out "$OUT/static-1.7b.json"
  step anchor-1.7b 150 "$OUT/anchor-1.7b.json" anchor random:1.7b-custom_voice -- \
    "${ANCHOR[@]}" bench/anchor_bench.py --model-dir "$ck17" --model-name random:1.7b-custom_voice \
    --runs "$RUNS" --out "$OUT/anchor-1.7b.json"
  step static-0.6b 230 "$OUT/static-0.6b.json" static random:0.6b-custom_voice -- \
    "${REF[@]}" "${bench[@]}" --engine static --model random:0.6b-custom_voice --runs "$RUNS" \
    "${static_opts[@]}" --out "$OUT/static-0.6b.json"
  step anchor-0.6b 120 "$OUT/anchor-0.6b.json" anchor random:0.6b-custom_voice -- \
    "${ANCHOR[@]}" bench/anchor_bench.py --model-dir "$ck06" --model-name random:0.6b-custom_voice \
    --runs "$RUNS" --out "$OUT/anchor-0.6b.json"
  # The reference: ~30 s a run at 1.7B, so 2 runs and a short warm-up.
  step dynamic-1.7b 200 "$OUT/dynamic-1.7b.json" dynamic random:1.7b-custom_voice -- \
    "${REF[@]}" "${bench[@]}" --engine dynamic --model random:1.7b-custom_voice --runs 2 \
    --warmup-max-new-tokens 32 --out "$OUT/dynamic-1.7b.json"
  # Optional: what the CUDA graph buys (only when enough time is left).
  if ((BUDGET_S - SECONDS > 120)); then
    step static-eager-1.7b 110 "$OUT/static-eager-1.7b.json" static random:1.7b-custom_voice -- \
      "${REF[@]}" "${bench[@]}" --engine static --model random:1.7b-custom_voice --runs 2 \
      --engine-option cuda_graph=false --warmup-max-new-tokens 32 --out "$OUT/static-eager-1.7b.json"
  fi

  echo "### summary (ms/frame: median [min-max] over warm runs; TTFA: call to first audio)"
  python3 - "$OUT"/*.json <<'EOF'
import json, sys
print(f"{'run':17} {'size':5} {'frames':>6} {'ms/frame':>22} {'x RT':>6} {'prefill':>8} "
      f"{'TTFA ms':>8} {'kern/fr':>8} {'busy ms':>8} {'peak GB':>8} {'peak/(w+kv)':>11}  error")
def f(v, fmt):
    return "-" if v is None else format(v, fmt)
for path in sys.argv[1:]:
    r = json.load(open(path))
    ms = f"{f(r.get('ms_per_frame'), '.2f')} [{f(r.get('ms_per_frame_min'), '.2f')}-{f(r.get('ms_per_frame_max'), '.2f')}]"
    peak = r.get("peak_gpu_bytes")
    name = path.rsplit("/", 1)[-1].removesuffix(".json")
    print(f"{name:17} {str(r.get('size') or '-'):5} {f(r.get('frames'), 'd'):>6} {ms:>22} {f(r.get('rtf'), '.2f'):>6} "
          f"{f(r.get('prefill_ms'), '.1f'):>8} {f(r.get('ttfa_ms'), '.1f'):>8} {f(r.get('kernels_per_frame'), '.0f'):>8} "
          f"{f(r.get('gpu_busy_ms_per_frame'), '.2f'):>8} {f(None if peak is None else peak / 2**30, '.2f'):>8} "
          f"{f(r.get('peak_over_weights_kv'), '.2f'):>11}  {(r.get('error') or r.get('profile_error') or '')[:80]}")
EOF
  echo "### done at ${SECONDS} s"
}

main 2>&1 | tee "$OUT/device_run.log"
