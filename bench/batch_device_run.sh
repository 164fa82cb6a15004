#!/usr/bin/env bash
# Throughput against batch size, in one device call. From the repo root on the GPU machine:
#
#   source .gpu-wheels/on-device.sh .gpu-wheels && bash bench/batch_device_run.sh "$OUT"
#
# (optionally prefixed with FASTQWEN_GIT_COMMIT=<hash>: the tree travels without .git).
#
# 1. builds the random-weight 1.7B CustomVoice and 1.7B Base checkpoints on the GPU;
# 2. runs, each in its own process (peak memory is per process):
#      fastqwen's static engine at batch 1, 8, 32, 64, 128, 256 (one engine for all
#        sizes; `fastqwen bench --batch-sizes`), first: it matters most;
#      the batching fork faster-qwen3-tts-batch at 1, 4, 8, 16, 32, 64 on the Base
#        checkpoint (voice clone, x-vector only), as far as its share of the budget goes
#        (bench/batch_anchor_bench.py);
#      faster-qwen3-tts 0.5.4 with the same requests one after another, at 1 and 8 only
#        (bench/anchor_bench.py --batch-sizes; no batching, so its time grows with B);
# 3. writes one JSON record per (engine, batch size) into OUT/records (a size that failed
#    or was skipped gets a record whose "error" says why), prints a summary table last,
#    and packs the records into OUT/batch_records.tgz (the device tool brings back only a
#    few files); the full log is OUT/batch_device_run.log.
#
# Each step has a time limit, cut to what is left of BENCH_BUDGET_S (default 520 s; a step
# with under 30 s left is skipped), so the call, with ~30 s of on-device.sh before it, ends
# inside the 600 s device limit even when a step hangs. Every step writes its records as it
# goes, so a step cut by its limit keeps the sizes it finished.
set -uo pipefail

OUT=${1:?usage: bash bench/batch_device_run.sh OUT_DIR}
BUDGET_S=${BENCH_BUDGET_S:-520}
SIZES=${BENCH_BATCH_SIZES:-1,8,32,64,128,256}
FORK_SIZES=${BENCH_FORK_BATCH_SIZES:-1,4,8,16,32,64}
ANCHOR_SIZES=${BENCH_ANCHOR_BATCH_SIZES:-1,8}
ROUNDS=${BENCH_BATCH_ROUNDS:-2}
export FASTQWEN_CACHE=${FASTQWEN_CACHE:-/tmp/fq-cache}
export PYTHONUNBUFFERED=1
RECORDS=$OUT/records
mkdir -p "$RECORDS"

if [[ -z ${REF_PYTHONPATH:-} || -z ${ANCHOR_PYTHONPATH:-} || -z ${BATCH_ANCHOR_PYTHONPATH:-} ]]; then
  echo "REF_PYTHONPATH / ANCHOR_PYTHONPATH / BATCH_ANCHOR_PYTHONPATH unset: run 'source .gpu-wheels/on-device.sh .gpu-wheels' first" >&2
  exit 2
fi

# Commands, not shell functions: `timeout` runs them.
REF=(env "PYTHONPATH=$REF_PYTHONPATH" python3)
ANCHOR=(env "PYTHONPATH=$ANCHOR_PYTHONPATH" python3)
FORK=(env "PYTHONPATH=$BATCH_ANCHOR_PYTHONPATH" python3)

# missing_records ENGINE MODEL SIZES MESSAGE: an error record for each batch size of ENGINE
# that has no record in RECORDS (the step died, timed out or was skipped).
missing_records() {
  python3 - "$RECORDS" "$@" <<'EOF'
import glob, json, os, sys
out, engine, model, sizes, message = sys.argv[1:6]
done = set()
for path in glob.glob(os.path.join(out, "*.json")):
    try:
        r = json.load(open(path))
    except ValueError:
        continue
    if r.get("engine") == engine and r.get("batch_size") is not None:
        done.add(int(r["batch_size"]))
for b in sorted({int(s) for s in sizes.split(",")} - done):
    with open(os.path.join(out, f"{engine}-b{b}.json"), "w") as f:
        json.dump({"schema": "fastqwen-bench/1", "engine": engine, "model": model,
                   "batch_size": b, "error": message}, f, indent=1)
    print(f"{engine} batch {b}: {message}")
EOF
}

# step NAME LIMIT_S ENGINE MODEL SIZES -- CMD...: run CMD with a time limit inside the budget.
step() {
  local name=$1 limit=$2 engine=$3 model=$4 sizes=$5
  shift 6
  local left=$((BUDGET_S - SECONDS))
  if ((left < 30)); then
    echo "### $name: skipped (${left} s of the ${BUDGET_S} s budget left)"
    missing_records "$engine" "$model" "$sizes" "skipped: time budget spent"
    return
  fi
  ((limit > left)) && limit=$left
  echo "### $name: start at ${SECONDS} s, limit ${limit} s"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "### $name: exit ${rc} after $((SECONDS - t0)) s"
  local why="exit code $rc"
  ((rc == 124 || rc == 137)) && why="timed out after ${limit} s"
  missing_records "$engine" "$model" "$sizes" "$why; no record written (see batch_device_run.log)"
}

main() {
  echo "### batch_device_run.sh at $(date -u +%FT%TZ), budget ${BUDGET_S} s, rounds ${ROUNDS}"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  local versions="import torch, transformers; print(torch.__version__, 'transformers', transformers.__version__)"
  echo "ref: $("${REF[@]}" -c "$versions" 2>&1 | tail -n 1)"
  echo "anchor: $("${ANCHOR[@]}" -c "$versions" 2>&1 | tail -n 1)"
  echo "fork: $("${FORK[@]}" -c "$versions" 2>&1 | tail -n 1)"

  # Checkpoints: not a bench step (no records), but inside the budget.
  echo "### checkpoints: start at ${SECONDS} s"
  timeout --kill-after=10 150 "${REF[@]}" -c "
from fastqwen.models.sources import random_checkpoint
for kind in ('custom_voice', 'base'):
    print(random_checkpoint('1.7b', kind), flush=True)"
  echo "### checkpoints: done at ${SECONDS} s"
  local ck17=$FASTQWEN_CACHE/random/1.7b-custom_voice ck17base=$FASTQWEN_CACHE/random/1.7b-base
  ls -la "$ck17" "$ck17base"

  # Ours first, with at most 300 s (compilation at each size is part of its warm-up).
  step static-batch 300 static random:1.7b-custom_voice "$SIZES" -- \
    "${REF[@]}" -m fastqwen bench --device cuda --dtype bfloat16 --engine static \
    --model random:1.7b-custom_voice --batch-sizes "$SIZES" --batch-rounds "$ROUNDS" \
    --engine-option "compile=${BENCH_COMPILE:-true}" --out "$RECORDS"

  # The fork: its own budget leaves ~90 s for the sequential anchor after it.
  local fork_budget=$((BUDGET_S - SECONDS - 90))
  ((fork_budget < 60)) && fork_budget=60
  step fork-batch $((fork_budget + 20)) faster-qwen3-tts-batch random:1.7b-base "$FORK_SIZES" -- \
    "${FORK[@]}" bench/batch_anchor_bench.py --model-dir "$ck17base" --model-name random:1.7b-base \
    --batch-sizes "$FORK_SIZES" --batch-rounds "$ROUNDS" --budget-s "$fork_budget" --out "$RECORDS"

  # faster-qwen3-tts one request after another: one timed round (its throughput is flat).
  step anchor-sequential 120 faster-qwen3-tts random:1.7b-custom_voice "$ANCHOR_SIZES" -- \
    "${ANCHOR[@]}" bench/anchor_bench.py --model-dir "$ck17" --model-name random:1.7b-custom_voice \
    --batch-sizes "$ANCHOR_SIZES" --batch-rounds 1 --out "$RECORDS"

  echo "### summary (audio s/s: all streams' audio over the round's wall time; best round)"
  python3 - "$RECORDS"/*.json <<'EOF'
import json, sys
rows = []
for path in sys.argv[1:]:
    try:
        r = json.load(open(path))
    except ValueError:
        continue
    if r.get("batch_size") is not None:
        rows.append(r)
order = {"static": 0, "faster-qwen3-tts-batch": 1, "faster-qwen3-tts": 2}
rows.sort(key=lambda r: (order.get(r.get("engine"), 9), int(r["batch_size"])))
def f(v, fmt):
    return "-" if v is None else format(v, fmt)
print(f"{'engine':24} {'B':>4} {'audio s/s':>10} {'step ms':>8} {'rtf min':>8} {'rtf med':>8} "
      f"{'frames':>6} {'wall s':>7} {'peak GB':>8}  error")
for r in rows:
    peak = r.get("peak_memory_bytes")
    print(f"{r.get('engine', '?'):24} {r['batch_size']:>4} {f(r.get('audio_seconds_per_second'), '.1f'):>10} "
          f"{f(r.get('step_ms'), '.2f'):>8} {f(r.get('per_stream_rtf_min'), '.2f'):>8} "
          f"{f(r.get('per_stream_rtf_median'), '.2f'):>8} {f(r.get('frames'), 'd'):>6} "
          f"{f(r.get('wall_s'), '.2f'):>7} {f(None if peak is None else peak / 2**30, '.1f'):>8}  "
          f"{(r.get('error') or '')[:90]}")
EOF
  echo "### done at ${SECONDS} s"
}

main 2>&1 | tee "$OUT/batch_device_run.log"
tar czf "$OUT/batch_records.tgz" -C "$OUT" records && rm -rf "$RECORDS"
