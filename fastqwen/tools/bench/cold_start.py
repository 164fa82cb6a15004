"""`fastqwen bench --cold-start`: a fresh process to the end of its first generation, first
with empty compile caches, then with the caches that run left behind.

A server replica, a CI job or a notebook kernel pays once for what a benchmark's warm-up
hides: interpreter start, imports, reading the weights, building the engine, and in the
first generation compiling, autotuning and capturing graphs. Only a new process shows
that cost, so each measurement is a child process (`cold_start_child`), started with
`sys.executable`.

Caches: the model checkpoint stays where it is (`$FASTQWEN_CACHE/random` for random
weights, built here before the first child so building it is never timed), while every
on-disk compile cache is pointed at a fresh temporary directory (`cache_env`): Inductor's
(which `engine.compile_cache` honours when set), Triton's and the CUDA driver's JIT cache.
The first child finds them empty; the second, with the same directories, finds what the
first one compiled, as a process started from an image made by `fastqwen warmup` would.

The record (`cold-start-<size>.json` in `--out`) holds `empty_cache_s` and `warm_cache_s`
(the medians over `--cold-start-runs` pairs of children), each child's breakdown
(`cold_start_child.main`), and the environment fields of the bench records. Its schema
differs from theirs, so the bench views skip it.

Standard library only at module level: `bench/anchor_cold_start.py` measures the anchor
with the same parent beside transformers 5.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fastqwen.tools.bench.cold_start_child import CHILD_SCRIPT, ChildSpec

log = logging.getLogger(__name__)

SCHEMA = "fastqwen-cold-start/1"
DEFAULT_TOKENS = 64  # the first generation's length: max_new_tokens = min_new_tokens
# Directories a process compiles into, by the variable that moves each one.
CACHE_VARS = {
    "TORCHINDUCTOR_CACHE_DIR": "inductor",  # FX graphs, AOTAutograd, and Triton's by default
    "TRITON_CACHE_DIR": "triton",  # Triton kernels (fastqwen's own Triton ops included)
    "CUDA_CACHE_PATH": "cuda",  # the driver's JIT cache of PTX compiled to the GPU
}
STDERR_TAIL = 3000  # characters of a failed child's stderr kept in the record


@dataclasses.dataclass(frozen=True)
class ColdStartConfig:
    """One cold-start measurement: `runs` pairs of children (empty caches, then warm)."""

    spec: ChildSpec  # what every child loads and generates
    runs: int = 1  # pairs of (empty, warm) children; each pair has fresh cache directories
    timeout_s: float = 900.0  # per child; a child past it is killed and reported as failed

    def __post_init__(self) -> None:
        if isinstance(self.runs, bool) or not isinstance(self.runs, int) or self.runs < 1:
            raise ValueError(f"cold-start runs must be an integer >= 1, got {self.runs!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"cold-start timeout_s must be > 0, got {self.timeout_s!r}")
        if self.spec.max_new_tokens < 2:
            raise ValueError(
                f"max_new_tokens must be >= 2 for a cold start, got {self.spec.max_new_tokens}"
            )


@dataclasses.dataclass
class ChildRun:
    """One child process: its times seen from the parent, and its own breakdown.

    total_s: from spawning the process to the end of its first generation (the child's
        clock stamp; parent and child share the machine's clock); None if it failed.
    interpreter_s: from spawning to the child script's first statement.
    process_wall_s: from spawning to its exit, teardown included.
    breakdown: what the child wrote (`cold_start_child.main`); None if it failed.
    """

    cache: str  # "empty" or "warm"
    total_s: float | None
    interpreter_s: float | None
    process_wall_s: float
    returncode: int | None
    breakdown: dict | None = None
    error: str | None = None
    stderr_tail: str | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def cache_env(root: Path) -> dict[str, str]:
    """The environment variables that put every compile cache under `root`, one
    subdirectory each (created empty)."""
    env = {}
    for var, name in CACHE_VARS.items():
        path = root / name
        path.mkdir(parents=True, exist_ok=True)
        env[var] = str(path)
    return env


def child_command(spec: ChildSpec, result: Path) -> list[str]:
    """The child's command line: this interpreter running `CHILD_SCRIPT`."""
    return [sys.executable, "-c", CHILD_SCRIPT, spec.to_json(), str(result)]


def spawn_child(
    spec: ChildSpec,
    env: dict[str, str],
    workdir: Path,
    cache: str,
    timeout_s: float,
    command: Callable[[ChildSpec, Path], list[str]] = child_command,
) -> ChildRun:
    """Run one child with `env` added to this process's environment; never raises for a
    child that fails (its error and stderr go into the `ChildRun`).

    command: the child's command line for (spec, result path); the child writes its
        breakdown there as JSON, with at least `start_unix` and `done_unix` (its
        `time.time()` at its first statement and at the end of its first generation).
        Another engine's script (`bench/anchor_cold_start.py`) passes its own.
    """
    result = workdir / f"{cache}-result.json"
    result.unlink(missing_ok=True)
    stderr_path = workdir / f"{cache}-stderr.txt"
    full_env = {**os.environ, **env}
    with open(stderr_path, "w") as stderr:
        spawned = time.time()
        t0 = time.perf_counter()
        try:
            done = subprocess.run(
                command(spec, result),
                env=full_env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                timeout=timeout_s,
                check=False,
            )
            returncode, error = done.returncode, None
        except subprocess.TimeoutExpired:
            returncode, error = None, f"the child ran past {timeout_s:g} s and was killed"
        wall = round(time.perf_counter() - t0, 4)
    tail = stderr_path.read_text(errors="replace")[-STDERR_TAIL:]
    if error is None and returncode != 0:
        error = f"the child exited with {returncode}"
    if error is None and not result.is_file():
        error = "the child exited without writing its result"
    if error is not None:
        log.error("cold start (%s caches) failed: %s\n%s", cache, error, tail)
        return ChildRun(cache, None, None, wall, returncode, error=error, stderr_tail=tail)
    breakdown = json.loads(result.read_text())
    return ChildRun(
        cache,
        total_s=round(breakdown["done_unix"] - spawned, 4),
        interpreter_s=round(breakdown["start_unix"] - spawned, 4),
        process_wall_s=wall,
        returncode=returncode,
        breakdown=breakdown,
    )


Spawn = Callable[[ChildSpec, dict, Path, str, float], ChildRun]


def measure_pairs(
    config: ColdStartConfig,
    spawn: Spawn = spawn_child,
    on_run: Callable[[list[list[ChildRun]]], None] | None = None,
) -> list[list[ChildRun]]:
    """`config.runs` pairs [empty, warm]; each pair in fresh cache directories, removed
    afterwards. A pair whose empty run failed has no warm run (nothing was cached).

    on_run: called with the pairs so far after every child, so a caller can keep what was
        measured if a time limit kills this process before the end.
    """
    pairs: list[list[ChildRun]] = []
    for i in range(config.runs):
        with tempfile.TemporaryDirectory(prefix="fastqwen-cold-start-") as tmp:
            root = Path(tmp)
            env = cache_env(root / "caches")
            for cache in ("empty", "warm"):
                if cache == "warm" and pairs[-1][0].error is not None:
                    break
                run = spawn(config.spec, env, root, cache, config.timeout_s)
                log.info("cold start %d, %s caches: %s s", i, cache, run.total_s)
                if cache == "empty":
                    pairs.append([run])
                else:
                    pairs[-1].append(run)
                if on_run is not None:
                    on_run(pairs)
    return pairs


def summary_fields(pairs: list[list[ChildRun]]) -> dict:
    """`empty_cache_s` and `warm_cache_s` (medians over the successful runs, None if none
    succeeded), the runs behind them, and the first error."""
    runs = [run for pair in pairs for run in pair]
    fields: dict = {}
    for cache in ("empty", "warm"):
        mine = [r for r in runs if r.cache == cache]
        times = [r.total_s for r in mine if r.total_s is not None]
        fields[f"{cache}_cache_s"] = round(statistics.median(times), 3) if times else None
        fields[f"{cache}_cache_runs_s"] = times
        fields[f"{cache}_cache_runs"] = [r.as_dict() for r in mine]
    errors = [f"{r.cache} caches: {r.error}" for r in runs if r.error]
    missing = [c for c in ("empty", "warm") if not any(r.cache == c for r in runs)]
    errors += [f"no run with {c} caches" for c in missing if not errors]
    fields["error"] = errors[0] if errors else None
    return fields


def run_cold_start(
    config: ColdStartConfig,
    spawn: Spawn = spawn_child,
    source=None,
    on_partial: Callable[[dict], None] | None = None,
) -> dict:
    """Measure cold starts of `config.spec`; returns the record (see the module docstring).

    source: the spec's resolved `ModelSource` (default: resolved here, which builds a
        random checkpoint before the first child, so that is never timed).
    on_partial: called with the record so far after every child.
    """
    import torch

    from fastqwen.models.sources import resolve_model
    from fastqwen.tools.bench.run import environment

    spec = config.spec
    source = source or resolve_model(spec.model)
    env = environment(torch.device("cpu"))  # the children report the device they ran on

    def record(pairs: list[list[ChildRun]]) -> dict:
        names = [r.breakdown["device_name"] for p in pairs for r in p if r.breakdown]
        return {
            "schema": SCHEMA,
            "engine": "static",
            "model": spec.model,
            "model_path": source.path,
            "size": source.size,
            "kind": source.kind,
            "random_weights": source.is_random,
            "dtype": spec.dtype,
            "device": spec.device,
            **env,
            "device_name": names[0] if names else None,
            "python_executable": sys.executable,
            "cache_vars": sorted(CACHE_VARS),
            "spec": dataclasses.asdict(spec),
            "runs": config.runs,
            **summary_fields(pairs),
        }

    partial = (lambda pairs: on_partial(record(pairs))) if on_partial else None
    return record(measure_pairs(config, spawn, partial))


def output_file(out: str | Path, size: str | None) -> Path:
    """`out/cold-start-<size>.json`; a results file is never overwritten."""
    path = Path(out) / f"cold-start-{size or 'model'}.json"
    if path.exists():
        raise ValueError(
            f"{path} exists; bench results are never overwritten: choose another --out"
        )
    return path


# ---------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`--cold-start` and its options, beside `fastqwen bench`'s (whose --model, --device,
    --dtype, --engine-option, --text, --speaker, --language, --seed, --max-new-tokens and
    --out it reads)."""
    p.add_argument(
        "--cold-start",
        action="store_true",
        help="measure fresh processes to the end of their first generation (default "
        f"{DEFAULT_TOKENS} tokens, no early EOS), with empty compile caches and then warm "
        "ones; writes cold-start-<size>.json into --out",
    )
    p.add_argument(
        "--cold-start-runs",
        type=int,
        default=1,
        help="pairs of (empty, warm) processes; the record has the medians (default: 1)",
    )
    p.add_argument(
        "--cold-start-warmup",
        action="store_true",
        help="each child calls FastQwen3TTS.warmup() (every batch bucket, as the server "
        "does) before its first generation; its seconds per bucket are in the record",
    )


def run_cli(args: argparse.Namespace, dtype: str, engine_options: dict) -> int:
    """`fastqwen bench --cold-start`: print the record as one JSON line, write it to
    `--out`; exit 1 if a child failed."""
    if list(args.engine) != ["static"]:
        raise SystemExit(
            f"--cold-start measures the static engine only, got --engine {' '.join(args.engine)}"
        )
    if args.out and Path(args.out).suffix == ".json":
        raise SystemExit(
            f"--cold-start writes cold-start-<size>.json: --out must be a directory, got {args.out}"
        )
    from fastqwen.models.sources import resolve_model

    tokens = args.max_new_tokens or DEFAULT_TOKENS
    try:
        spec = ChildSpec(
            model=args.model,
            device=str(args.device),
            dtype=dtype,
            text=args.text,
            speaker=args.speaker,
            language=args.language,
            seed=args.seed,
            max_new_tokens=tokens,
            warmup=args.cold_start_warmup,
            engine_options=engine_options,
        )
        config = ColdStartConfig(spec, runs=args.cold_start_runs)
        source = resolve_model(spec.model)  # a random checkpoint is built here, untimed
        path = output_file(args.out, source.size) if args.out else None  # before any child
    except ValueError as exc:
        raise SystemExit(str(exc)) from None

    def write(record: dict) -> None:  # after every child: a killed run keeps what it measured
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")

    record = run_cold_start(config, source=source, on_partial=write if path else None)
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
    if path is not None:
        write(record)
        log.info("wrote %s", path)
    return 1 if record["error"] else 0


# ---------------------------------------------------------------- committed results


def load_cold_starts(root: str | Path | None = None) -> list[dict]:
    """Every cold-start record under `root` (default: the project's `bench/results`), in any
    run directory or its subfolders, oldest first, each with `run` (its run directory) and
    `file` added. Files that are not cold-start records are skipped."""
    from fastqwen.tools.bench.records import results_root

    base = results_root(root)
    found = []
    for path in sorted(base.glob("**/cold-start*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            continue
        run = path.relative_to(base).parts[0]
        found.append({**data, "run": run, "file": str(path.relative_to(base))})
    return sorted(found, key=lambda r: r.get("timestamp") or "")


def execution_of(record: dict) -> str | None:
    """How the record's frames ran ("graphed", "graphed+compiled", ...), as its first child
    reported it; None for another engine's record."""
    for child in (*record.get("empty_cache_runs", ()), *record.get("warm_cache_runs", ())):
        execution = (child.get("breakdown") or {}).get("execution")
        if execution:
            return execution
    return None


def cold_start_rows(records: list[dict]) -> list[dict]:
    """The newest record of each engine, frame execution, model size and device: one row
    each, with the fresh process's seconds to the end of its first generation with empty
    and with warm caches, and the run that measured it. Rows are ours first, then others'."""
    newest: dict[tuple, dict] = {}
    for record in records:  # oldest first: a later one replaces an earlier one
        engine = record.get("engine")
        execution = execution_of(record)
        if engine == "static":
            name = f"fastqwen ({execution})" if execution else "fastqwen"
        else:
            name = "faster-qwen3-tts" if engine == "anchor" else str(engine)
        key = (name, record.get("size"), record.get("device_name"))
        newest[key] = {
            "engine": name,
            "size": record.get("size"),
            "device": record.get("device_name"),
            "empty_cache_s": record.get("empty_cache_s"),
            "warm_cache_s": record.get("warm_cache_s"),
            "run": record["run"],
        }
    return sorted(
        newest.values(),
        key=lambda r: (not r["engine"].startswith("fastqwen"), r["engine"], r["size"] or ""),
    )


def cold_start_markdown(rows: list[dict]) -> str:
    """`cold_start_rows` as a Markdown table (seconds, one decimal)."""
    if not rows:
        return "No cold-start records yet (`fastqwen bench --cold-start`)."

    def s(value) -> str:
        return "–" if value is None else f"{value:.1f} s"

    lines = [
        "| engine | size | device | empty caches | warm caches | run |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['engine']} | {r['size']} | {r['device']} | {s(r['empty_cache_s'])} "
        f"| {s(r['warm_cache_s'])} | `{r['run']}` |"
        for r in rows
    ]
    return "\n".join(lines)
