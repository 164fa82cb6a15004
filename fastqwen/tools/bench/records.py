"""Bench records: the schema every engine writes, and loading them per device call.

A record is one JSON object with the keys of `FIELDS`, in that order, written by
`fastqwen.tools.bench.run` (static and dynamic engines) and `bench/anchor_bench.py` (the
anchor); bench/README.md says what each field means. A field an engine cannot measure is
null.

Timings compare only within one device call, so records are loaded as a `BenchRun`: the
records of one directory under `bench/results/` (or of one live run in this process). The
newest run is the directory whose latest record `timestamp` is newest; names do not sort by
time (`..._h100_<commit>`). Files without the schema (`profile_frame_*.json`,
`gpu_check_*.json`) are skipped.

Standard library only: the anchor's script imports `FIELDS` and `SCHEMA` beside
transformers 5.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fastqwen.tools.env import project_dir, project_path

log = logging.getLogger(__name__)

SCHEMA = "fastqwen-bench/1"
FIELDS = (
    "schema engine model model_path size kind random_weights dtype device device_name "
    "torch cuda transformers package python git_commit git_dirty source_hash timestamp "
    "text speaker language mode reference_cached reference_s seed max_new_tokens sampling "
    "runs engine_config load_s warmup_s "
    "warmup_frames frames frames_all_runs eos_reached audio_s ms_per_frame ms_per_frame_min "
    "ms_per_frame_max ms_per_frame_runs rtf generate_s wall_s prefill_ms ttfa_ms ttfa_ms_min "
    "ttfa_ms_max ttfa_warmup_ms ttfa_first_chunk_frames chunk_frames weight_bytes "
    "talker_weight_bytes kv_cache_bytes peak_gpu_bytes peak_over_weights_kv kernels_per_frame "
    "memops_per_frame gpu_busy_ms_per_frame launches_per_frame graph_launches_per_frame "
    "syncs_per_frame profile_frames"
).split() + [
    # Batched throughput (null in single-stream records): `fastqwen.tools.bench.throughput`.
    *(
        "batch_size audio_seconds_per_second step_ms per_stream_rtf_min per_stream_rtf_median "
        "batch_rounds_aps steps peak_active round_breakdown peak_memory_bytes kv_bytes_per_slot "
        "batch_mix throughput_method burst_audio_seconds_per_second steady_window_s "
        "steady_requests steady_breakdown steady_samples note"
    ).split(),
    "profile_error",
    "error",
]
# What a single-stream record measures (`mode`): a built-in speaker, or a clone of a
# reference recording, in context (ICL: its codes and transcript in the prompt) or from its
# speaker vector alone (`fastqwen.tools.bench.clone`). Records older than the field are
# custom voice.
MODES = ("custom_voice", "clone_icl", "clone_xvector")
RESULTS_DIR = Path("bench/results")  # relative to the project folder
ENGINE_ORDER = (
    "static",
    "static-eager",
    "anchor",
    "faster-qwen3-tts",
    "faster-qwen3-tts-batch",
    "dynamic",
)
SIZE_ORDER = ("1.7b", "0.6b", "tiny")


@dataclass
class BenchRun:
    """The records of one device call (one results directory, or one live run)."""

    name: str
    records: list[dict]
    path: Path | None = None
    skipped: list[str] = field(default_factory=list)  # files that are not bench records

    def values(self, key: str) -> list:
        """The distinct non-null values of `key` over the records, in first-seen order."""
        return list(dict.fromkeys(r[key] for r in self.records if r.get(key) is not None))

    @property
    def newest_timestamp(self) -> str:
        return max((r.get("timestamp") or "" for r in self.records), default="")

    @property
    def single(self) -> list[dict]:
        """The single-stream custom voice records (the engines table, speedups and
        targets: the engines are compared on the same request)."""
        return [r for r in self.records if not is_batch(r) and not is_clone(r)]

    @property
    def modes(self) -> list[dict]:
        """The single-stream records of every mode, custom voice and clone (the modes
        table: time to first audio per mode)."""
        return [r for r in self.records if not is_batch(r)]

    @property
    def batch(self) -> list[dict]:
        """The batched-throughput records (one per engine and batch size)."""
        return [r for r in self.records if is_batch(r)]

    def find(self, label: str, size: str) -> dict | None:
        """The single-stream record of engine `label` (see `label`) at `size` that has no
        error."""
        for r in self.single:
            if r["label"] == label and r.get("size") == size and not r.get("error"):
                return r
        return None


def is_batch(record: Mapping) -> bool:
    """Whether `record` measures throughput at a batch size (`fastqwen bench
    --batch-sizes`, the anchors' batch scripts) rather than one stream."""
    return record.get("batch_size") is not None


def mode_of(record: Mapping) -> str:
    """The record's `mode` (one of `MODES`); records older than the field are custom voice."""
    return record.get("mode") or "custom_voice"


def is_clone(record: Mapping) -> bool:
    """Whether `record` measures a voice clone mode (`fastqwen bench --modes clone_icl`)."""
    return mode_of(record) != "custom_voice"


def results_root(root: str | Path | None = None) -> Path:
    """`root` (relative to the project folder), default `bench/results` there."""
    return project_path(RESULTS_DIR if root is None else root)


def label(record: Mapping) -> str:
    """Engine name for tables: `static` (CUDA graph), `static-eager` (none), `anchor`, ..."""
    engine = record.get("engine") or "?"
    config = record.get("engine_config") or {}
    if engine == "static" and config.get("cuda_graph") is False:
        return "static-eager"
    return engine


def config_text(record: Mapping) -> str:
    """The engine's settings in a few words: `graph+compile`, `eager`, `torch/sdpa`, ..."""
    config = record.get("engine_config") or {}
    if record.get("engine") == "static":
        graphed = config.get("cuda_graph", True)
        # records written before compile became opt-in say null where they compiled
        compiled = config.get("compile") or (config.get("compile", False) is None and graphed)
        parts = ["graph" if graphed else "eager"]
        return "+".join(parts + (["compile"] if compiled else []))
    if record.get("engine") == "anchor":
        return "/".join(str(config[k]) for k in ("backend", "attn_implementation") if k in config)
    return ""


def load_record(path: Path) -> dict | None:
    """The record in `path` with `label` and `file` added; None if it is not a bench record."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("skipping %s: %s", path, exc)
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return None
    return {**data, "label": label(data), "file": Path(path).name}


def sort_key(record: Mapping) -> tuple:
    """Sizes largest first, then engines in `ENGINE_ORDER`, then file name."""
    size, lab = record.get("size"), record["label"]
    return (
        SIZE_ORDER.index(size) if size in SIZE_ORDER else len(SIZE_ORDER),
        str(size),
        ENGINE_ORDER.index(lab) if lab in ENGINE_ORDER else len(ENGINE_ORDER),
        lab,
        record["file"],
    )


def load_run(directory: str | Path) -> BenchRun:
    """Every bench record of one directory, sorted by size, then engine."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise ValueError(f"results directory {directory} does not exist")
    records, skipped = [], []
    for path in sorted(directory.glob("*.json")):
        record = load_record(path)
        if record is None:
            skipped.append(path.name)
        else:
            records.append(record)
    return BenchRun(directory.name, sorted(records, key=sort_key), directory, skipped)


def list_runs(root: str | Path | None = None, kind: str | None = None) -> list[BenchRun]:
    """The run directories under `root` (default `bench/results`) that hold bench records,
    oldest first; `kind` "single" keeps the runs with single-stream records of our engine
    (a run of the anchors alone is no benchmark of fastqwen), "batch" those with batch
    records."""
    if kind not in (None, "single", "batch"):
        raise ValueError(f"kind must be None, 'single' or 'batch', got {kind!r}")
    root = results_root(root)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    runs = [run for run in map(load_run, subdirs) if run.records]
    if kind == "single":
        runs = [run for run in runs if any(r.get("engine") == "static" for r in run.single)]
    elif kind == "batch":
        runs = [run for run in runs if run.batch]
    return sorted(runs, key=lambda run: (run.newest_timestamp, run.name))


def select_run(results_dir: str | Path | None = None, root: str | Path | None = None):
    """The run in `results_dir` (a directory name under `root`, or a path from the project
    folder), or the newest under `root` (default `bench/results`) with single-stream
    records (a batch-only run has its own view: `select_batch_run`).

    Returns None when `results_dir` is None and `root` holds no run.
    """
    if results_dir is None:
        runs = list_runs(root, kind="single")
        return runs[-1] if runs else None
    root = results_root(root)
    candidates = (root / results_dir, project_path(results_dir))
    path = next((p for p in candidates if p.is_dir()), None)
    if path is None:
        names = ", ".join(run.name for run in list_runs(root)) or "none"
        raise ValueError(
            f"results_dir {results_dir!r} is not a directory under {root} or "
            f"{project_dir()}; runs in {root}: {names}"
        )
    run = load_run(path)
    if not run.records:
        raise ValueError(f"{path} holds no {SCHEMA} records (skipped: {run.skipped})")
    return run


def select_batch_run(results_dir: str | Path | None = None, root: str | Path | None = None):
    """The run with batch records to show: `results_dir`'s if it has any, else (no
    `results_dir`) the newest under `root`; None when there is none, so the notebook says
    nothing about batching."""
    if results_dir is not None:
        run = select_run(results_dir, root)
        return run if run.batch else None
    runs = list_runs(root, kind="batch")
    return runs[-1] if runs else None


def write_run(run: BenchRun, directory: str | Path) -> Path:
    """One JSON file per record in `directory` (created); never overwrites a file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for record in run.records:
        path = directory / record["file"]
        if path.exists():
            raise ValueError(f"{path} exists; bench results are never overwritten")
        data = {k: v for k, v in record.items() if k not in ("label", "file")}
        path.write_text(json.dumps(data, indent=1) + "\n")
    return directory


__all__ = [
    "ENGINE_ORDER",
    "FIELDS",
    "MODES",
    "RESULTS_DIR",
    "SCHEMA",
    "SIZE_ORDER",
    "BenchRun",
    "config_text",
    "is_batch",
    "is_clone",
    "label",
    "list_runs",
    "load_record",
    "load_run",
    "mode_of",
    "results_root",
    "select_batch_run",
    "select_run",
    "sort_key",
    "write_run",
]
