"""The child process of `fastqwen bench --cold-start`: one fresh interpreter, timed phase by
phase from its first statement to the end of its first generation.

It runs as `python -c CHILD_SCRIPT SPEC_JSON RESULT_PATH` rather than `python -m`: under
`-m` the package imports would run before any timer could start, and the imports are one
of the costs being measured. For the same reason this module imports only the standard
library at module level; torch, transformers, qwen_tts and fastqwen are imported inside
`main`, each timed.

The engine is built the way `FastQwen3TTS.from_pretrained` builds it (`load_model`, then
the constructor), in two timed steps, so reading the weights and building the engine are
told apart. The first generation is the public `generate_<mode>` call with
min_new_tokens = max_new_tokens, so every run makes the same number of frames. On the
compiled and graphed paths it is where compilation, autotuning and graph capture happen;
`Probes` and torch's own compile-time records say how much of it each took.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

# The whole child program: the clock starts at its first statement.
CHILD_SCRIPT = (
    "import time; _t0 = time.time()\n"
    "import sys\n"
    "from fastqwen.tools.bench.cold_start_child import main\n"
    "sys.exit(main(_t0, sys.argv[1], sys.argv[2]))\n"
)

CLONE_REF_TEXT = "Warming up."  # the reference text of the tone a Base model clones
DESIGN_INSTRUCT = "A calm, clear voice."


@dataclass(frozen=True)
class ChildSpec:
    """What one child loads and generates; travels to it as JSON."""

    model: str
    device: str
    dtype: str
    text: str
    speaker: str | None = None  # custom_voice only; None: the model's first speaker
    language: str = "english"
    seed: int = 0
    max_new_tokens: int = 64  # also min_new_tokens: no early EOS, the same frames every run
    warmup: bool = False  # call FastQwen3TTS.warmup() (every batch bucket) before generating
    engine_options: dict = field(default_factory=dict)  # EngineConfig fields

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class PhaseClock:
    """Wall-clock laps since the process's first statement, in the order they happen."""

    def __init__(self, start: float):
        self.start = start
        self.last = start
        self.phases: dict[str, float] = {}

    def lap(self, name: str) -> float:
        now = time.time()
        self.phases[name] = round(now - self.last, 4)
        self.last = now
        return now


def compile_seconds() -> dict[str, float]:
    """torch's cumulative compile-time records of this process (`calculate_time_spent`):
    seconds per event name, e.g. `entire_frame_compile`, `inductor_compile`."""
    try:
        from torch._dynamo.utils import calculate_time_spent
    except ImportError:  # another torch layout: no compile breakdown, the totals remain
        return {}
    return {k: round(v, 4) for k, v in calculate_time_spent().items()}


def compile_summary(times: dict[str, float]) -> dict[str, float]:
    """Named compile phases from `compile_seconds()`'s events (all seconds, whole process).

    - dynamo_s: every `torch.compile` frame compile, end to end (tracing to the compiled
      function, Inductor included); 0 when nothing was compiled;
    - tracing_s: its part outside the backend: Dynamo's bytecode tracing and guards;
    - backend_s: AOTAutograd and Inductor together;
    - inductor_s: Inductor (lowering, codegen, loading the compiled module); a cache hit
      makes it small;
    - codegen_s: Inductor's code generation;
    - kernel_compile_s: Triton (or C++) kernel compilation Inductor waited for;
    - autotune_s: Triton autotuning (config benchmarks and coordinate descent), which
      runs at a kernel's first launch, so outside dynamo_s.
    """

    def total(*names: str) -> float:
        return round(sum(times.get(n, 0.0) for n in names), 4)

    dynamo = total("entire_frame_compile")
    backend = total("backend_compile")
    return {
        "dynamo_s": dynamo,
        "tracing_s": round(max(dynamo - backend, 0.0), 4),
        "backend_s": backend,
        "inductor_s": total("inductor_compile"),
        "codegen_s": total("code_gen"),
        "kernel_compile_s": total("async_compile.precompile", "async_compile.wait"),
        "autotune_s": total(
            "CachingAutotuner.benchmark_all_configs", "CachingAutotuner.coordinate_descent_tuning"
        ),
    }


def compile_counters() -> dict[str, dict[str, int]]:
    """torch's compile counters (`torch._dynamo.utils.counters`): Inductor's FX graph cache
    (`fxgraph_cache_hit`/`_miss`), AOTAutograd's cache, frames compiled, graph breaks."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    keep = ("inductor", "aot_autograd", "frames", "stats", "graph_break")
    return {k: {name: int(n) for name, n in counters[k].items()} for k in keep if counters[k]}


class Probes:
    """Times the engine's one-off work from outside it, while entered.

    The engine has no timing hooks for what happens once per process, and measuring must
    not change it, so this wraps three methods for the duration and restores them on exit:

    - `FrameRunner.step`: a call that adds a frame graph is a capture; recorded per
      (rows, window) with its seconds and the compile seconds inside it (a compiled
      function compiles during the capture's warm-up calls);
    - `FrameRunner.prefill`: the first call (eager, or capture plus replay) and every call
      that captures a prefill graph;
    - `codec.graphs._DecoderGraphs._capture`: each captured codec graph (CUDA only).
    """

    def __init__(self):
        self.frame_captures: list[dict] = []
        self.prefill_calls: list[dict] = []
        self.codec_captures: list[dict] = []
        self._restore: list[tuple[object, str, object]] = []

    def __enter__(self) -> Probes:
        from fastqwen.codec.graphs import _DecoderGraphs
        from fastqwen.engine.runner import FrameRunner

        step, prefill, capture = FrameRunner.step, FrameRunner.prefill, _DecoderGraphs._capture
        probes = self

        def timed_step(runner, m, mode):
            before, t0, c0 = len(runner.frame_graphs), time.perf_counter(), _dynamo_s()
            out = step(runner, m, mode)
            if len(runner.frame_graphs) > before:
                probes.frame_captures.append(
                    _took(t0, c0, rows=m.talker_cache.batch, window=m.talker_cache.max_len)
                )
            return out

        def timed_prefill(runner, slots, prompts, capture=True):
            before, t0, c0 = len(runner.prefill_graphs), time.perf_counter(), _dynamo_s()
            out = prefill(runner, slots, prompts, capture)
            captured = len(runner.prefill_graphs) > before
            if captured or not probes.prefill_calls:
                probes.prefill_calls.append(_took(t0, c0, prompts=len(prompts), captured=captured))
            return out

        def timed_capture(graphs, key, run):
            t0, c0 = time.perf_counter(), _dynamo_s()
            capture(graphs, key, run)
            kind, rows, size = key  # ("latents", rows, window) or ("convs", rows, conv)
            probes.codec_captures.append(_took(t0, c0, kind=kind, rows=rows, size=size))

        for owner, name, wrapper in (
            (FrameRunner, "step", timed_step),
            (FrameRunner, "prefill", timed_prefill),
            (_DecoderGraphs, "_capture", timed_capture),
        ):
            self._restore.append((owner, name, getattr(owner, name)))
            setattr(owner, name, wrapper)
        return self

    def __exit__(self, *exc) -> None:
        while self._restore:
            owner, name, original = self._restore.pop()
            setattr(owner, name, original)

    def summary(self) -> dict:
        """What was captured, in the order it happened, plus totals."""
        return {
            "first_prefill_s": self.prefill_calls[0]["s"] if self.prefill_calls else None,
            "prefill_calls": self.prefill_calls,
            "frame_graph_captures": self.frame_captures,
            "frame_graph_capture_s": round(sum(c["s"] for c in self.frame_captures), 4),
            "codec_graph_captures": len(self.codec_captures),
            "codec_graph_capture_s": round(sum(c["s"] for c in self.codec_captures), 4),
        }


def _dynamo_s() -> float:
    return compile_seconds().get("entire_frame_compile", 0.0)


def _took(t0: float, compile0: float, **what) -> dict:
    return {
        **what,
        "s": round(time.perf_counter() - t0, 4),
        "compile_s": round(_dynamo_s() - compile0, 4),
    }


def first_generation(engine, spec: ChildSpec):
    """The first public `generate_<mode>` call for the engine's model kind: a custom voice
    speaks as `spec.speaker`; a Base model clones a quiet tone (its prompt is part of the
    call, as for a user); a design model follows a fixed instruction."""
    import numpy as np

    gen = dict(max_new_tokens=spec.max_new_tokens, min_new_tokens=spec.max_new_tokens)
    kind, common = engine.model_kind, dict(language=spec.language, seed=spec.seed, **gen)
    if kind == "custom_voice":
        speaker = spec.speaker or sorted(engine.get_supported_speakers())[0]
        return engine.generate_custom_voice(spec.text, speaker=speaker, **common)
    if kind == "voice_design":
        return engine.generate_voice_design(spec.text, instruct=DESIGN_INSTRUCT, **common)
    sr = engine.sample_rate
    tone = (0.1 * np.sin(2 * np.pi * 220 * np.arange(int(1.5 * sr)) / sr)).astype(np.float32)
    return engine.generate_voice_clone(
        spec.text, ref_audio=(tone, sr), ref_text=CLONE_REF_TEXT, **common
    )


def main(start: float, spec_json: str, result_path: str) -> int:
    """Run one cold start and write its breakdown to `result_path` as JSON.

    Args:
        start: `time.time()` at the child script's first statement.
        spec_json: a `ChildSpec` as JSON.
        result_path: where the breakdown goes (the parent reads it after the exit).
    """
    spec = ChildSpec(**json.loads(spec_json))
    clock = PhaseClock(start)
    clock.lap("harness")  # the interpreter's own imports and this module
    import torch

    clock.lap("import_torch")
    import transformers  # noqa: F401 - timed on its own: qwen_tts builds on it

    clock.lap("import_transformers")
    import qwen_tts  # noqa: F401

    clock.lap("import_qwen_tts")
    from fastqwen.api import FastQwen3TTS
    from fastqwen.config import EngineConfig
    from fastqwen.device import synchronize
    from fastqwen.engine.compile_cache import compile_cache_dir
    from fastqwen.models.sources import load_model

    clock.lap("import_fastqwen")
    with Probes() as probes:
        loaded = load_model(spec.model, device=spec.device, dtype=spec.dtype)
        synchronize(loaded.device)
        clock.lap("load_weights")
        config = EngineConfig(**spec.engine_options)
        engine = FastQwen3TTS(loaded.tts, config=config, source=loaded.source)
        synchronize(engine.device)
        clock.lap("build_engine")
        buckets = engine.warmup() if spec.warmup else None
        if spec.warmup:
            synchronize(engine.device)
            clock.lap("warmup")
        compile_before = compile_summary(compile_seconds())
        first_generation(engine, spec)
        synchronize(engine.device)
        done = clock.lap("first_generation")
    result = engine.last_results[0]
    compiled = compile_summary(compile_seconds())
    report = {
        "start_unix": start,
        "done_unix": done,
        "since_start_s": round(done - start, 4),
        "phases_s": clock.phases,
        "first_generation": {
            "frames": result.frames,
            "eos_reached": result.eos_reached,
            "prefill_s": None if result.prefill_s is None else round(result.prefill_s, 4),
            "generate_s": round(result.generate_s, 4),  # token generation, as the engine reports
            "wall_s": round(result.wall_s, 4),  # generation and codec decode
            "compile_s": round(compiled["dynamo_s"] - compile_before["dynamo_s"], 4),
            "autotune_s": round(compiled["autotune_s"] - compile_before["autotune_s"], 4),
        },
        # the whole process's: in the first generation unless --cold-start-warmup ran first
        "captures": probes.summary(),
        "warmup_bucket_s": _rounded(buckets),
        "compile": compiled,
        "compile_events_s": compile_seconds(),
        "counters": compile_counters(),
        "execution": engine.runner.execution.name,
        "compile_cache_dir": str(compile_cache_dir()),  # where this process's kernels went
        "device_name": _device_name(engine.device),
        "torch": torch.__version__,
    }
    engine.close()
    with open(result_path, "w") as f:
        json.dump(report, f)
    return 0


def _rounded(seconds: dict[int, float] | None) -> dict[str, float] | None:
    return None if seconds is None else {str(k): round(v, 4) for k, v in seconds.items()}


def _device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
