#!/usr/bin/env bash
# Serving under load, in one device call. From the repo root on the GPU machine:
#
#   source .gpu-wheels/on-device.sh .gpu-wheels && bash bench/serve_device_run.sh "$OUT"
#
# (optionally prefixed with FASTQWEN_GIT_COMMIT=<hash>: the tree travels without .git).
#
# The server needs the serve extra, which the GPU image lacks (it has httpx, anyio, h11 and
# click, which the load tester and uvicorn need), so the wheelhouse must carry it.
# wheelhouse.sh downloads with --no-deps: every dependency is named, pinned to the versions
# the CPU test suite runs (fastapi 0.165 also needs annotated-doc and opentelemetry-api).
# Once a session, from the project root on the machine with network access:
#
#   ../shared/gpu/wheelhouse.sh .gpu-wheels fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 annotated-doc==0.0.7 opentelemetry-api==1.45.2
#
# then carry .gpu-wheels in the device call (the wheels land in REF_PYTHONPATH).
#
# 1. builds the random-weight 1.7B CustomVoice checkpoint on the GPU (not timed as start-up);
# 2. starts `fastqwen serve --model random:1.7b-custom_voice --device cuda --max-batch-size
#    64` on 127.0.0.1 in the background, and records in OUT/serve-health.json how long the
#    process took to answer 200 on /health (model load, then the app's warm-up of every
#    batch bucket: what a load balancer waits for);
# 3. runs `fastqwen loadtest` at each rate of SERVE_RATES (default 1,5,10,20,40,80 req/s):
#    SERVE_WARMUP_S of uncounted warm-up, then SERVE_DURATION_S measured, capped at
#    SERVE_MAX_REQUESTS and cut to what is left of the budget; one OUT/loadtest-<rate>.json
#    each (the whole LoadtestResult: settings, summary, every request). With random weights
#    each request's length is fixed to its text read aloud (no EOS to stop it otherwise);
#    SERVE_PROMPTS=FILE.jsonl sends other request bodies;
# 4. stops the server (also on error or interrupt: trap), keeps its log as OUT/serve.log,
#    and prints a summary table last (`python -m fastqwen.tools.bench.serving OUT`).
#
# The device tool brings back at most 8 files: with SERVE_PACK=1 (default) the results are
# also packed into OUT/serving_records.tgz and the loose copies removed, leaving that,
# serve_device_run.log and nothing else. Unpacked into bench/results/<date>_<gpu>_<commit>_serving/
# they are a serving run for notebooks/serving.ipynb.
#
# Compiled kernels: a fresh machine compiles every batch bucket (~5 minutes at 64). With
# SERVE_COMPILE_CACHE=FILE.tgz (carried), that archive of an earlier run's
# $FASTQWEN_CACHE/compile is unpacked first, so the server starts warm on the same GPU kind;
# SERVE_SAVE_COMPILE_CACHE=1 writes this run's as OUT/compile_cache.tgz.
# SERVE_ENGINE_OPTIONS="KEY=VALUE ..." passes each as `fastqwen serve --engine-option`
# (e.g. compile=true). SERVE_RESTARTS="64 256" then starts a fresh server per batch size on
# the caches the run left and records its time to healthy in OUT/serve-health-restart-<size>.json.
#
# Each phase has a time limit inside SERVE_BUDGET_S (default 520 s of work; with ~30 s of
# on-device.sh before it the call ends inside the 600 s device limit): the checkpoint 150 s,
# the wait for /health SERVE_HEALTH_TIMEOUT_S (default: the budget less 100 s), then each rate its window
# plus SERVE_TIMEOUT_S to drain; a rate with under 20 s left is skipped (the summary says so).
set -uo pipefail

OUT=${1:?usage: bash bench/serve_device_run.sh OUT_DIR}
BUDGET_S=${SERVE_BUDGET_S:-520}
RATES=${SERVE_RATES:-1,5,10,20,40,80}
MODEL=${SERVE_MODEL:-random:1.7b-custom_voice}
MAX_BATCH=${SERVE_MAX_BATCH_SIZE:-64}
DEVICE=${SERVE_DEVICE:-cuda}  # cpu with random:tiny-custom_voice: a quick check of this script
PORT=${SERVE_PORT:-8123}
WARMUP_S=${SERVE_WARMUP_S:-3}
DURATION_S=${SERVE_DURATION_S:-20}
TIMEOUT_S=${SERVE_TIMEOUT_S:-10}
MAX_REQUESTS=${SERVE_MAX_REQUESTS:-2500}
# The warm-up compiles each batch bucket's frame graph (30-54 s each on a fresh H200, seven
# buckets at 64): leave it all of the budget but two rates' worth.
HEALTH_TIMEOUT_S=${SERVE_HEALTH_TIMEOUT_S:-$((BUDGET_S - 100))}
export FASTQWEN_CACHE=${FASTQWEN_CACHE:-/tmp/fq-cache}
export PYTHONUNBUFFERED=1 SERVE_DEVICE=$DEVICE
URL="http://127.0.0.1:$PORT"
mkdir -p "$OUT"

if [[ -z ${REF_PYTHONPATH:-} ]]; then
  echo "REF_PYTHONPATH unset: run 'source .gpu-wheels/on-device.sh .gpu-wheels' first" >&2
  exit 2
fi
PY=(env "PYTHONPATH=$REF_PYTHONPATH" python3)

SERVER_PID=
stop_server() {
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "### stopping the server (pid $SERVER_PID)"
    kill -TERM "$SERVER_PID" 2>/dev/null
    for _ in $(seq 1 20); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
  fi
  SERVER_PID=
}
PROMPTS_FILE=
trap 'stop_server; rm -f "$PROMPTS_FILE"' EXIT
trap 'stop_server; exit 130' INT TERM

# rate_file RATE: the result file name of one rate (5 -> loadtest-5.json, 0.5 -> loadtest-0.5.json).
rate_file() { echo "$OUT/loadtest-$1.json"; }

# wait_healthy PID LIMIT [FILE] [MAX_BATCH]: poll /health until 200; writes FILE (default
# OUT/serve-health.json) either way.
wait_healthy() {
  "${PY[@]}" - "$1" "$2" "$URL" "${3:-$OUT/serve-health.json}" "$MODEL" "${4:-$MAX_BATCH}" "$START_NS" <<'EOF'
import json, os, subprocess, sys, time, urllib.error, urllib.request
pid, limit, url, path, model, max_batch, start_ns = sys.argv[1:8]
start = int(start_ns) / 1e9
deadline, status, healthy_s = time.time() + float(limit), None, None
while time.time() < deadline:
    try:
        os.kill(int(pid), 0)
    except OSError:
        status = "server exited"
        break
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            status = r.status
    except urllib.error.HTTPError as err:
        status = err.code  # 503 while warming up
    except OSError:
        status = "not listening"
    if status == 200:
        healthy_s = time.time() - start
        break
    time.sleep(0.2)
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip().splitlines()
except OSError:  # no GPU driver: a CPU check of the script
    gpu = []
record = {"model": model, "device": os.environ["SERVE_DEVICE"], "device_name": gpu[0] if gpu else None,
          "max_batch_size": int(max_batch), "time_to_healthy_s": healthy_s,
          "last_status": status, "git_commit": os.environ.get("FASTQWEN_GIT_COMMIT"),
          "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))}
json.dump(record, open(path, "w"), indent=1)
print(f"healthy after {healthy_s:.1f} s" if healthy_s is not None else f"not healthy: {status}")
sys.exit(0 if healthy_s is not None else 1)
EOF
}

main() {
  echo "### serve_device_run.sh at $(date -u +%FT%TZ), budget ${BUDGET_S} s, rates ${RATES}"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "ref: $("${PY[@]}" -c 'import torch, fastapi, uvicorn; print(torch.__version__, "fastapi", fastapi.__version__, "uvicorn", uvicorn.__version__)' 2>&1 | tail -n 1)"

  echo "### checkpoint: start at ${SECONDS} s"
  # random:SIZE-KIND is built here; any other model string is loaded by the server itself.
  timeout --kill-after=10 150 "${PY[@]}" -c "
import sys
from fastqwen.models.sources import random_checkpoint
if sys.argv[1].startswith('random:'):
    size, kind = sys.argv[1].removeprefix('random:').split('-', 1)
    print(random_checkpoint(size, kind), flush=True)" "$MODEL"
  echo "### checkpoint: done at ${SECONDS} s"

  # Random weights almost never stop by themselves: fix each request's length to its text
  # read aloud (fastqwen.tools.bench.serving.fixed_length_prompts), unless SERVE_PROMPTS names
  # a JSONL of request bodies.
  local prompts=(${SERVE_PROMPTS:+--prompts "$SERVE_PROMPTS"})
  if [[ -z ${SERVE_PROMPTS:-} && $MODEL == random:* ]]; then
    PROMPTS_FILE=$(mktemp --suffix=.jsonl)
    "${PY[@]}" -m fastqwen.tools.bench.serving --write-prompts "$PROMPTS_FILE" && prompts=(--prompts "$PROMPTS_FILE")
  fi
  echo "### prompts: ${prompts[*]:-the shipped set}"

  if [[ -n ${SERVE_COMPILE_CACHE:-} ]]; then
    mkdir -p "$FASTQWEN_CACHE" && tar xzf "$SERVE_COMPILE_CACHE" -C "$FASTQWEN_CACHE" &&
      echo "### compile cache: unpacked $SERVE_COMPILE_CACHE ($(du -sh "$FASTQWEN_CACHE/compile" | cut -f1))"
  fi
  echo "### server: start at ${SECONDS} s"
  START_NS=$(date +%s%N)
  local options=()
  for option in ${SERVE_ENGINE_OPTIONS:-}; do options+=(--engine-option "$option"); done
  echo "### engine options: ${SERVE_ENGINE_OPTIONS:-(defaults)}"
  "${PY[@]}" -m fastqwen serve --model "$MODEL" --device "$DEVICE" --max-batch-size "$MAX_BATCH" \
    "${options[@]}" --host 127.0.0.1 --port "$PORT" >"$OUT/serve.log" 2>&1 &
  SERVER_PID=$!
  local limit=$HEALTH_TIMEOUT_S left=$((BUDGET_S - SECONDS))
  ((limit > left)) && limit=$left
  if ! wait_healthy "$SERVER_PID" "$limit"; then
    echo "### server not healthy within ${limit} s; last lines of serve.log:"
    tail -n 30 "$OUT/serve.log"
    return 1
  fi
  echo "### server: healthy at ${SECONDS} s"

  local rate
  for rate in ${RATES//,/ }; do
    left=$((BUDGET_S - SECONDS))
    local window=$DURATION_S
    if ((left < 20)); then
      echo "### rate ${rate}: skipped (${left} s of the ${BUDGET_S} s budget left)"
      continue
    fi
    # warm-up + window + drain must fit what is left
    ((WARMUP_S + window + TIMEOUT_S > left)) && window=$((left - WARMUP_S - TIMEOUT_S))
    ((window < 5)) && window=5
    echo "### rate ${rate}: start at ${SECONDS} s, window ${window} s"
    timeout --kill-after=10 $((WARMUP_S + window + TIMEOUT_S + 15)) "${PY[@]}" -m fastqwen loadtest \
      --url "$URL" --rate "$rate" --warmup "$WARMUP_S" --duration "$window" \
      --timeout "$TIMEOUT_S" --max-requests "$MAX_REQUESTS" "${prompts[@]}" \
      -o "$(rate_file "$rate")" 2>&1 | grep -v '^INFO httpx: HTTP Request'  # one line a request
    echo "### rate ${rate}: exit ${PIPESTATUS[0]} at ${SECONDS} s"
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "### the server died; last lines of serve.log:"
      tail -n 30 "$OUT/serve.log"
      break
    fi
  done
  stop_server

  # Restarts on the caches this run left: how long a replica takes to be ready once its
  # kernels are on disk (SERVE_RESTARTS="64 256": one fresh server per batch size).
  local size
  for size in ${SERVE_RESTARTS:-}; do
    left=$((BUDGET_S - SECONDS))
    if ((left < 30)); then
      echo "### restart at max batch ${size}: skipped (${left} s left)"
      continue
    fi
    echo "### restart at max batch ${size}: start at ${SECONDS} s"
    START_NS=$(date +%s%N)
    "${PY[@]}" -m fastqwen serve --model "$MODEL" --device "$DEVICE" --max-batch-size "$size" \
      "${options[@]}" --host 127.0.0.1 --port "$PORT" >"$OUT/serve-restart-$size.log" 2>&1 &
    SERVER_PID=$!
    wait_healthy "$SERVER_PID" "$((left - 5))" "$OUT/serve-health-restart-$size.json" "$size" ||
      tail -n 20 "$OUT/serve-restart-$size.log"
    stop_server
  done

  echo "### summary"
  "${PY[@]}" -m fastqwen.tools.bench.serving "$OUT"
  echo "### done at ${SECONDS} s"
}

# The log through tee, with main in this shell (not a pipeline's subshell), so that the
# EXIT trap knows the server's pid.
exec > >(tee "$OUT/serve_device_run.log") 2>&1
main
stop_server
if [[ ${SERVE_SAVE_COMPILE_CACHE:-0} == 1 && -d $FASTQWEN_CACHE/compile ]]; then
  tar czf "$OUT/compile_cache.tgz" -C "$FASTQWEN_CACHE" compile &&
    echo "### compile cache: $(du -h "$OUT/compile_cache.tgz" | cut -f1) in OUT/compile_cache.tgz"
fi
if [[ ${SERVE_PACK:-1} == 1 ]]; then
  (cd "$OUT" && tar czf serving_records.tgz --exclude serve_device_run.log loadtest-*.json \
    serve-health*.json serve*.log 2>/dev/null &&
    rm -f loadtest-*.json serve-health*.json serve.log serve-restart-*.log)
fi
