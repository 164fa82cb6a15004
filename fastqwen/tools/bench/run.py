"""Benchmark one engine on one model: warm-up, then several timed runs, one JSON record.

Engines:
- `static`: ours (`FastQwen3TTS`), timed non-streamed and streamed (time to first audio);
- `dynamic`: the qwen-tts 0.1.1 reference (`run_reference`: HF generate, DynamicCache).

The third engine of the comparison, faster-qwen3-tts ("anchor"), needs transformers 5 and
runs in its own process (`bench/anchor_bench.py`); it writes records of the same shape.

Every engine generates with one `SamplingParams` (default: `demo_sampling()`, the
`SamplingParams` defaults with `DEMO_MAX_NEW_TOKENS`), handed to it unchanged; the CLI has
one option per field, and the record keeps it under `sampling`.

What is measured, per record (bench/README.md describes every field):
- speed: ms per frame (generation incl. prefill, excl. codec decode) as median, min and max
  over `runs` warm runs, after one warm-up run that is reported on its own;
- static only: prefill time, and time to first audio of `stream()` (call to first chunk);
- CUDA only: kernels, GPU-busy time and host launches per frame from torch.profiler,
  taken as the difference of two short generations so prefill and codec decode cancel;
- CUDA only: peak allocated memory against weights + KV cache.

Run one process per (engine, model) when peak memory matters: the peak is process-wide.

`--batch-sizes 1,8,32` measures throughput instead (`run_batch_bench`, static only): one
engine for all sizes, one warm-up round per size, then `--batch-rounds` timed rounds of B
requests submitted together; one record per size, reporting the best round (highest
audio seconds per second). The arithmetic, shared with the anchors' batch scripts
(`bench/anchor_bench.py --batch-sizes`, `bench/batch_anchor_bench.py`), is in
`fastqwen.tools.bench.throughput`.

`--modes clone_icl,clone_xvector` (a Base model) measures voice cloning instead, one record
per mode and reference variant (cached or new): `fastqwen.tools.bench.clone`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import hashlib
import json
import logging
import platform
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

import fastqwen
from fastqwen.codec.graphs import graph_counts
from fastqwen.config import SamplingParams, parse_engine_options
from fastqwen.constants import FRAME_RATE_HZ
from fastqwen.device import synchronize
from fastqwen.tools.bench import clone as clone_bench
from fastqwen.tools.bench import cold_start
from fastqwen.tools.bench.measure import (
    FIELDS,
    PROFILE_TOKENS,
    PROMPT_1,
    SCHEMA,
    module_tensors,
    profile_counts,
    spread,
    tensor_bytes,
)
from fastqwen.tools.bench.sampler import ThreadSampler
from fastqwen.tools.bench.throughput import (
    DEFAULT_BATCH_ROUNDS,
    DEFAULT_BATCH_SIZES,
    DEFAULT_STEADY_WAVES,
    Round,
    StreamTiming,
    mix_description,
    parse_batch_sizes,
    request_mix,
    seq_len_for,
    steady_state_fields,
    throughput_fields,
)
from fastqwen.tools.defaults import (
    BENCH_RUNS,
    BENCH_SPEAKERS,
    DEFAULT_SEED,
    SEED_PROMPTS,
    demo_sampling,
)
from fastqwen.tools.env import git_state, package_version

log = logging.getLogger(__name__)

ENGINES = ("static", "dynamic")

# ---------------------------------------------------------------- environment


def source_hash() -> str:
    """sha256 (12 hex) over fastqwen/**/*.py: names the code measured even without git."""
    h = hashlib.sha256()
    pkg = Path(fastqwen.__file__).resolve().parent  # the installed package, wherever it is
    for path in sorted(pkg.rglob("*.py")):
        h.update(path.relative_to(pkg).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def environment(device: torch.device) -> dict:
    """Machine, library versions and code identity (git in the working directory) for a
    record."""
    import transformers

    cpu = f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    commit, dirty = git_state()
    return {
        "device_name": device_name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "source_hash": source_hash(),
        "timestamp": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


# ---------------------------------------------------------------- measurement helpers


def qwen_tts_weight_bytes(tts) -> tuple[int, int]:
    """(all model weights incl. the codec, talker incl. code predictor) of a Qwen3TTSModel."""
    model = tts.model
    codec = getattr(getattr(model, "speech_tokenizer", None), "model", None)
    return tensor_bytes(module_tensors(model, codec)), tensor_bytes(module_tensors(model.talker))


def memory_fields(device: torch.device, weights: int, talker: int, kv: int | None) -> dict:
    """Weight, KV and peak bytes; the peak counts from the last reset_peak_memory_stats."""
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    ratio = None if peak is None else round(peak / max(weights + (kv or 0), 1), 3)
    return dict(
        weight_bytes=weights,
        talker_weight_bytes=talker,
        kv_cache_bytes=kv,
        peak_gpu_bytes=peak,
        peak_over_weights_kv=ratio,
    )


# ---------------------------------------------------------------- the engines


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """How each engine is run (what it generates is a `SamplingParams`); the CLI has one
    option per field."""

    runs: int = BENCH_RUNS  # timed warm runs, after one warm-up run
    warmup_max_new_tokens: int | None = None  # a shorter warm-up (default: max_new_tokens)
    text: str = PROMPT_1  # the seed's prompt 1
    speaker: str = "aiden"
    language: str = "english"
    seed: int = DEFAULT_SEED  # the same seed for every run: every run makes the same frames
    first_chunk_frames: int = 2  # streaming (static): frames in the first audio chunk
    chunk_frames: int = 12  # streaming (static): frames in each later chunk
    profile: bool = True  # kernels per frame from torch.profiler (CUDA only)
    profile_tokens: tuple[int, int] = PROFILE_TOKENS  # max_new_tokens of the 2 profiled runs

    def __post_init__(self) -> None:
        if self.runs < 1:
            raise ValueError(f"runs must be >= 1, got {self.runs}")
        short, long = self.profile_tokens
        if not 2 <= short < long:
            raise ValueError(f"profile_tokens must be 2 <= short < long, got {self.profile_tokens}")


@dataclasses.dataclass
class _Engine:
    """One engine ready to run: `generate(params) -> GenerationResult` plus what it wraps."""

    generate: Callable
    tts: object  # the qwen_tts.Qwen3TTSModel
    source: object  # fastqwen.models.sources.ModelSource
    fast: object | None = None  # the FastQwen3TTS (static only)


def _load(
    engine: str, model: str, device: str, dtype: str, request, seed: int, options: dict | None
) -> _Engine:
    if engine == "static":
        from fastqwen import EngineConfig, FastQwen3TTS

        config = EngineConfig(**(options or {}))
        fast = FastQwen3TTS.from_pretrained(model, device=device, dtype=dtype, config=config)
        return _Engine(lambda p: fast.generate(request, p, seed), fast.tts, fast.source, fast)
    from fastqwen.models.sources import load_model
    from fastqwen.verify.reference import run_reference

    if options:
        raise ValueError(f"engine options {options} apply to the static engine only")
    loaded = load_model(model, device=device, dtype=dtype)
    return _Engine(lambda p: run_reference(loaded.tts, request, p, seed), loaded.tts, loaded.source)


def _static_kv_bytes(fast) -> int | None:
    model = fast.runner.model
    caches = [getattr(model, name, None) for name in ("talker_cache", "predictor_cache")]
    if any(c is None for c in caches):
        log.warning("engine has no talker_cache/predictor_cache: KV bytes not reported")
        return None
    return tensor_bytes(c.kv for c in caches)


def _time_to_first_audio(fast, request, params, cfg: BenchConfig, device: torch.device) -> float:
    """ms from calling stream() to its first audio chunk on an idle engine; the rest of the
    stream is dropped. The last stream's cancelled block has ended first (`wait_idle`):
    started beside it, the request would time the end of another's work as well."""
    fast.scheduler.wait_idle()
    synchronize(device)
    t0 = time.perf_counter()
    chunks = fast.stream(
        request,
        params,
        cfg.seed,
        first_chunk_frames=cfg.first_chunk_frames,
        chunk_frames=cfg.chunk_frames,
    )
    try:
        next(chunks)
        return 1000 * (time.perf_counter() - t0)
    finally:
        chunks.close()


def timing_fields(results: list) -> dict:
    """Median and spread over the timed runs (GenerationResults)."""
    ms, ms_min, ms_max = spread([r.ms_per_frame for r in results])
    prefills = [1000 * r.prefill_s for r in results if r.prefill_s is not None]
    last = results[-1]
    return {
        "frames": last.frames,
        "frames_all_runs": sorted({r.frames for r in results}),
        "eos_reached": last.eos_reached,
        "audio_s": round(last.audio_seconds, 3),
        "ms_per_frame": ms,
        "ms_per_frame_min": ms_min,
        "ms_per_frame_max": ms_max,
        "ms_per_frame_runs": [round(r.ms_per_frame, 3) for r in results],
        "rtf": round(1000.0 / FRAME_RATE_HZ / ms, 3),  # x real time at the median speed
        "generate_s": spread([r.generate_s for r in results], 4)[0],
        "wall_s": spread([r.wall_s for r in results], 4)[0],
        "prefill_ms": spread(prefills)[0] if prefills else None,
    }


def run_bench(
    engine: str,
    model: str,
    *,
    device: str = "cuda",
    dtype: str = "bfloat16",
    engine_options: dict | None = None,
    sampling: SamplingParams | None = None,
    on_partial: Callable[[dict], None] | None = None,
    **settings,
) -> list[dict]:
    """Benchmark `engine` on `model`; returns one record (a list: main() prints each one).

    Args:
        engine: "static" (ours) or "dynamic" (the qwen-tts reference).
        model: any model string `fastqwen.models.sources` accepts (`random:1.7b-custom_voice`,
            a dir).
        device, dtype: where and in what precision to load it.
        engine_options: `EngineConfig` fields (static only), e.g. {"cuda_graph": False}.
        sampling: what every timed run generates with, passed to the engine unchanged
            (default: `demo_sampling()`); the warm-up and profiled runs change only
            `max_new_tokens`.
        on_partial: called with the record before profiling, so the timings survive a
            process that dies in the profiler (attaching CUPTI after graph capture is
            not safe on every CUDA stack).
        **settings: `BenchConfig` fields (runs, text, speaker, seed, profile, ...).
    """
    from fastqwen.prompts.builder import VoiceRequest

    cfg = BenchConfig(**settings)
    params = sampling or demo_sampling()
    if engine not in ENGINES:
        raise ValueError(
            f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)} "
            "(the anchor runs from bench/anchor_bench.py, in its own process)"
        )
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but CUDA is not available; use --device cpu")
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)  # the peak of this engine alone

    request = VoiceRequest("custom_voice", cfg.text, cfg.language, speaker=cfg.speaker)
    rec = dict.fromkeys(FIELDS)
    rec.update(
        schema=SCHEMA,
        engine=engine,
        model=model,
        dtype=dtype,
        device=str(dev),
        **environment(dev),
        text=cfg.text,
        speaker=cfg.speaker,
        language=cfg.language,
        mode="custom_voice",
        seed=cfg.seed,
        max_new_tokens=params.max_new_tokens,
        sampling=dataclasses.asdict(params),
        runs=cfg.runs,
    )

    t0 = time.perf_counter()
    eng = _load(engine, model, device, dtype, request, cfg.seed, engine_options)
    synchronize(dev)
    src = eng.source
    rec.update(
        load_s=round(time.perf_counter() - t0, 3),
        model_path=src.path,
        size=src.size,
        kind=src.kind,
        random_weights=src.is_random,
        package=f"qwen-tts {package_version('qwen-tts')}",
        engine_config=dataclasses.asdict(eng.fast.config) if eng.fast else None,
    )

    t0 = time.perf_counter()
    warm_tokens = cfg.warmup_max_new_tokens or params.max_new_tokens
    warm = eng.generate(dataclasses.replace(params, max_new_tokens=warm_tokens))
    synchronize(dev)
    rec.update(warmup_s=round(time.perf_counter() - t0, 3), warmup_frames=warm.frames)
    log.info("%s warm-up: %s", engine, warm.summary())
    results = []
    for i in range(cfg.runs):
        results.append(eng.generate(params))
        log.info("%s run %d: %s", engine, i, results[-1].summary())
    rec.update(timing_fields(results))

    if eng.fast is not None:  # streaming: the first call is its warm-up
        ttfa = [
            _time_to_first_audio(eng.fast, request, params, cfg, dev) for _ in range(cfg.runs + 1)
        ]
        med, lo, hi = spread(ttfa[1:])
        rec.update(
            ttfa_ms=med,
            ttfa_ms_min=lo,
            ttfa_ms_max=hi,
            ttfa_warmup_ms=round(ttfa[0], 3),
            ttfa_first_chunk_frames=cfg.first_chunk_frames,
            chunk_frames=cfg.chunk_frames,
        )

    weights, talker = qwen_tts_weight_bytes(eng.tts)
    kv = _static_kv_bytes(eng.fast) if eng.fast is not None else None
    rec.update(memory_fields(dev, weights, talker, kv))

    def frames_of(n: int) -> int:
        return eng.generate(dataclasses.replace(params, max_new_tokens=n)).frames

    if cfg.profile and dev.type == "cuda":
        if on_partial is not None:
            on_partial({**rec, "profile_error": "the process ended while profiling"})
        try:
            rec.update(profile_counts(frames_of, cfg.profile_tokens))
        except Exception as exc:  # profiling is optional: keep the timings
            log.warning("profiling failed: %r", exc)
            rec["profile_error"] = f"{type(exc).__name__}: {exc}"
    return [rec]


# ---------------------------------------------------------------- batched throughput


def _peak_bytes(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _batch_round(fast, requests, params: SamplingParams, dev: torch.device) -> Round:
    """Submit every request at once (`submit_many`: they join at the same frame), read the
    results in as many threads, and time from submit to the last decoded result.

    One reader thread per request: each handle's `generate_s` then ends when its own last
    frame arrives, not after the decodes of the handles read before it.
    """
    from concurrent.futures import ThreadPoolExecutor

    from fastqwen.prompts.builder import VoiceRequest

    voice = [VoiceRequest("custom_voice", r.text, "english", speaker=r.speaker) for r in requests]
    seeds = [r.seed for r in requests]
    steps0 = fast.scheduler.steps
    fast.scheduler.peak_active = 0  # this round's concurrency, not the warm-up's
    synchronize(dev)
    before = _engine_times(fast)
    t0 = time.perf_counter()
    handles = fast.submit_many(voice, params, seeds, streaming=False)
    with ThreadPoolExecutor(max_workers=len(handles)) as pool:
        results = list(pool.map(lambda h: h.result(), handles))
    synchronize(dev)
    wall = time.perf_counter() - t0
    after = _engine_times(fast)
    breakdown = {k: round(after[k] - before[k], 4) for k in after}
    breakdown["wall_s"] = round(wall, 4)
    streams = tuple(
        StreamTiming(
            frames=r.frames,
            audio_s=r.audio_seconds,
            generate_s=r.generate_s,
            loop_s=sum(r.frame_times_s) if r.frame_times_s else None,
            prefill_s=r.prefill_s,
            eos_reached=r.eos_reached,
        )
        for r in results
    )
    steps = fast.scheduler.steps - steps0
    return Round(len(requests), wall, streams, steps=steps, breakdown=breakdown)


def _steady_state(
    fast, requests, params: SamplingParams, dev: torch.device, waves: int, sample: bool = False
) -> dict:
    """`waves + 2` waves of the B requests through B lanes: a lane submits a request, and
    the next as soon as that one has finished generating (`RequestHandle.wait_done`), so
    at most B requests hold slots and a freed slot is refilled at the next block, while
    reader threads decode the results (one per request, as in a burst round): one wave's
    last chunks are decoded during the next wave's frames. Returns `steady_state_fields`,
    and with `sample` where the frame loop's and the codec's threads spent the run
    (`ThreadSampler`) as `steady_samples`."""
    import itertools
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from fastqwen.prompts.builder import VoiceRequest

    B = len(requests)
    total = (waves + 2) * B
    numbers = itertools.count()
    lock = threading.Lock()
    completions: list[tuple[float, float, float]] = []  # (submitted, finished, audio s)

    def read(handle, submitted: float) -> None:
        result = handle.result()
        with lock:
            completions.append((submitted, time.perf_counter(), result.audio_seconds))

    def lane(readers: ThreadPoolExecutor) -> list:
        futures = []
        while (i := next(numbers)) < total:
            r = requests[i % B]
            voice = VoiceRequest("custom_voice", r.text, "english", speaker=r.speaker)
            submitted = time.perf_counter()
            handle = fast.submit(voice, params, r.seed, streaming=False)
            futures.append(readers.submit(read, handle, submitted))
            handle.wait_done()
        return futures

    synchronize(dev)
    before = _engine_times(fast)
    sampler = ThreadSampler((fast.scheduler.name, "fastqwen-codec"))
    t0 = time.perf_counter()
    with (
        sampler if sample else nullcontext(),
        ThreadPoolExecutor(2 * B) as readers,
        ThreadPoolExecutor(B) as lanes,
    ):
        for future in [lanes.submit(lane, readers) for _ in range(B)]:
            for read_future in future.result():
                read_future.result()
    after = _engine_times(fast)
    breakdown = {k: round(after[k] - before[k], 4) for k in after}
    breakdown["wall_s"] = round(time.perf_counter() - t0, 4)
    fields = steady_state_fields(completions, B, breakdown)
    if sample:
        fields["steady_samples"] = sampler.summary()
    return fields


def _engine_times(fast) -> dict:
    """The scheduler's and the codec thread's cumulative times and counts (`LoopTimes`,
    `CodecWorker`): a round's breakdown is the difference of two of these."""
    times = vars(fast.scheduler.times)
    codec = fast.codec
    graphs = graph_counts(codec.decoder)
    return {
        **{f"loop_{k}": v for k, v in times.items()},
        "loop_frames_gpu_s": fast.runner.gpu_s,  # GPU time of those blocks (CUDA)
        "loop_uncaptured_prefills": fast.runner.uncaptured_prefills,  # CUDA graphs only
        "codec_busy_s": codec.busy_s,
        "codec_batches": codec.batches,
        "codec_side_batches": codec.side_batches,
        "codec_spans": codec.spans,
        "codec_graph_replays": graphs["replays"],
        "codec_graph_captures": graphs["captures"],
    }


def run_batch_bench(
    model: str,
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
    *,
    device: str = "cuda",
    dtype: str = "bfloat16",
    engine_options: dict | None = None,
    sampling: SamplingParams | None = None,
    rounds: int = DEFAULT_BATCH_ROUNDS,
    steady_waves: int = DEFAULT_STEADY_WAVES,
    sample_threads: bool = False,
    seed: int = DEFAULT_SEED,
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Throughput of the static engine at each batch size: one record per size.

    One engine serves every size (`EngineConfig(max_batch_size=max(sizes),
    batch_buckets=sizes)`), so its caches are allocated once and each size runs at its own
    bucket. `max_seq_len` is the longest prompt of the mix plus the frames, rounded up to a
    cache window (`seq_len_for`), unless `engine_options` sets it. If the engine does not
    fit at the largest size, that size gets an error record (the engine's message names
    the memory) and the engine is built again without it.

    For each size, ascending: one warm-up round (graph capture, compilation), then `rounds`
    timed rounds of B requests from `request_mix` (the seed prompts and `BENCH_SPEAKERS`
    cycled, seeds seed, seed+1, ...), each with `min_new_tokens = max_new_tokens` so no
    stream stops early. The record reports the best round (highest audio seconds per
    second; `throughput.best_round`) and keeps every round's throughput in
    `batch_rounds_aps`, as `burst_audio_seconds_per_second`. Then, unless `steady_waves`
    is 0, a steady-state run (`_steady_state`, `throughput.steady_state_fields`) whose
    figure becomes the record's `audio_seconds_per_second` (`throughput_method` says
    which); `sample_threads` adds where the engine's threads spent it
    (`steady_samples`). A size that fails (out of memory) gets an error record and the
    larger ones are still tried.

    on_record: called with each record as soon as it is made (main() writes it), so the
        sizes done survive a process that dies later.
    """
    from fastqwen import EngineConfig, FastQwen3TTS
    from fastqwen.models.sources import load_model
    from fastqwen.prompts.builder import VoiceRequest, build_talker_prompt

    sizes = tuple(sorted(set(batch_sizes)))
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch sizes must be integers >= 1, got {batch_sizes!r}")
    if rounds < 1:
        raise ValueError(f"--batch-rounds must be >= 1, got {rounds}")
    base = sampling or demo_sampling()
    n = base.max_new_tokens
    params = dataclasses.replace(base, min_new_tokens=n)  # no early EOS: every stream N - 1
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but CUDA is not available; use --device cpu")
    options = dict(engine_options or {})

    t0 = time.perf_counter()
    loaded = load_model(model, device=device, dtype=dtype)
    synchronize(dev)
    load_s = time.perf_counter() - t0
    src = loaded.source
    mix = request_mix(max(sizes), seed)
    prompt_len = max(
        build_talker_prompt(
            loaded.tts, VoiceRequest("custom_voice", r.text, "english", speaker=r.speaker)
        ).prompt_len
        for r in mix[: len(SEED_PROMPTS) * len(BENCH_SPEAKERS)]
    )
    options.setdefault("max_seq_len", seq_len_for(prompt_len, n))
    env = environment(dev)

    def base_record(batch_size: int, config: dict | None) -> dict:
        rec = dict.fromkeys(FIELDS)
        rec.update(
            schema=SCHEMA,
            engine="static",
            model=model,
            dtype=dtype,
            device=str(dev),
            **env,
            language="english",
            mode="custom_voice",
            seed=seed,
            max_new_tokens=n,
            sampling=dataclasses.asdict(params),
            runs=rounds,
            engine_config=config,
            load_s=round(load_s, 3),
            model_path=src.path,
            size=src.size,
            kind=src.kind,
            random_weights=src.is_random,
            package=f"qwen-tts {package_version('qwen-tts')}",
            batch_size=batch_size,
            batch_mix=mix_description(request_mix(batch_size, seed)),
        )
        return rec

    records: list[dict] = []

    def emit(rec: dict) -> None:
        records.append(rec)
        if on_record is not None:
            on_record(rec)

    fast = None
    while sizes:  # the engine for the largest size that fits
        config = EngineConfig(**{**options, "max_batch_size": sizes[-1], "batch_buckets": sizes})
        try:
            fast = FastQwen3TTS(loaded.tts, config=config, source=src)
            break
        except (ValueError, torch.OutOfMemoryError) as exc:
            log.warning("engine for batch %d does not fit: %s", sizes[-1], exc)
            rec = base_record(sizes[-1], dataclasses.asdict(config))
            rec.update(error=f"{type(exc).__name__}: {exc}")
            emit(rec)
            sizes = sizes[:-1]
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    if fast is None:
        return records
    try:
        config = dataclasses.asdict(fast.config)
        weights, talker = qwen_tts_weight_bytes(fast.tts)
        kv = _static_kv_bytes(fast)
        for b in sizes:
            rec = base_record(b, config)
            rec.update(
                weight_bytes=weights,
                talker_weight_bytes=talker,
                kv_cache_bytes=kv,
                kv_bytes_per_slot=fast.kv_bytes_per_slot,
            )
            requests = request_mix(b, seed)
            try:
                t0 = time.perf_counter()
                warm = _batch_round(fast, requests, params, dev)
                rec.update(
                    warmup_s=round(time.perf_counter() - t0, 3),
                    warmup_frames=max(s.frames for s in warm.streams),
                )
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)  # the peak of this size's rounds
                timed = []
                for i in range(rounds):
                    timed.append(_batch_round(fast, requests, params, dev))
                    log.info(
                        "static batch %d round %d: %.1f audio s/s, wall %.2f s",
                        b, i, timed[-1].audio_seconds_per_second, timed[-1].wall_s,
                    )  # fmt: skip
                rec.update(throughput_fields(timed))
                rec["burst_audio_seconds_per_second"] = rec["audio_seconds_per_second"]
                rec["throughput_method"] = "burst"
                if steady_waves:
                    steady = _steady_state(
                        fast, requests, params, dev, steady_waves, sample=sample_threads
                    )
                    log.info(
                        "static batch %d steady state: %.1f audio s/s over %.2f s",
                        b, steady["audio_seconds_per_second"], steady["steady_window_s"],
                    )  # fmt: skip
                    rec.update(steady)
                rec.update(
                    peak_active=fast.scheduler.peak_active,
                    peak_memory_bytes=_peak_bytes(dev),
                    peak_gpu_bytes=_peak_bytes(dev),
                )
            except Exception as exc:  # one size failing (out of memory) keeps the others
                log.exception("static batch %d failed", b)
                rec.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
                gc.collect()
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            emit(rec)
    finally:
        fast.close()
    return records


# ---------------------------------------------------------------- command line


def error_record(engine: str, model: str, exc: BaseException, **extra) -> dict:
    """A record for a run that failed: the same keys, nulls, and the error."""
    rec = dict.fromkeys(FIELDS)
    rec.update(
        schema=SCHEMA,
        engine=engine,
        model=model,
        **extra,
        error=f"{type(exc).__name__}: {exc}",
        traceback=traceback.format_exc(),
    )
    return rec


def output_path(out: str, record: dict) -> Path:
    """`out` itself if it ends in .json, else a unique file name inside the directory `out`."""
    path = Path(out)
    if path.suffix == ".json":
        return path
    on_gpu = str(record.get("device") or "").startswith("cuda")
    gpu = (record.get("device_name") or "gpu").replace("NVIDIA ", "") if on_gpu else "cpu"
    stamp = (record.get("timestamp") or "").replace("-", "").replace(":", "")
    batch = record.get("batch_size")
    parts = [stamp, record["engine"], record.get("size") or "model", record.get("dtype"), gpu]
    if batch is not None:
        parts.insert(2, f"b{batch}")
    if record.get("mode") in clone_bench.CLONE_MODES:  # one run writes several per model
        parts.insert(2, f"{record['mode']}-{'cached' if record.get('reference_cached') else 'new'}")
    name = "_".join(str(p) for p in parts if p).lower()
    return path / ("".join(c if c.isalnum() or c in "._" else "-" for c in name) + ".json")


def argument_type(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse `type` from a parser whose ValueError names the problem: argparse then
    prints that message instead of a generic "invalid value"."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The CLI options: engine, model, device, output, one per BenchConfig field and one per
    SamplingParams field."""
    p.add_argument(
        "--engine",
        nargs="+",
        choices=ENGINES,
        default=["static"],
        help="engines to run, one after another (default: static)",
    )
    p.add_argument(
        "--model",
        default="random:1.7b-custom_voice",
        help="HF id, checkpoint dir or random:<size>-<kind> (default: %(default)s)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument(
        "--engine-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an EngineConfig field of the static engine, e.g. cuda_graph=false",
    )
    p.add_argument("--out", help="write each record as JSON: a *.json file or a directory")
    p.add_argument(
        "--batch-sizes",
        type=argument_type(parse_batch_sizes),
        default=None,
        metavar="B1,B2,...",
        help="measure throughput at these batch sizes instead (static engine only; one "
        "record per size; e.g. 1,8,32,64,128,256). --max-new-tokens is every request's "
        "length (EOS suppressed), --seed the first request's seed",
    )
    p.add_argument(
        "--batch-rounds",
        type=int,
        default=DEFAULT_BATCH_ROUNDS,
        help="timed rounds per batch size after one warm-up round; the record reports the "
        "best round (default: %(default)s)",
    )
    p.add_argument(
        "--steady-waves",
        type=int,
        default=DEFAULT_STEADY_WAVES,
        help="waves of B requests counted in the steady-state run after the rounds (B "
        "running, B queued, each replaced when it ends; 0: no steady-state run; default: "
        "%(default)s)",
    )
    p.add_argument(
        "--sample-threads",
        action="store_true",
        help="sample the frame loop's and the codec's Python stacks during the steady-state "
        "run, and record where they spent it (steady_samples)",
    )
    clone_bench.add_arguments(p)  # --modes, --references, --reference ...
    for f in dataclasses.fields(BenchConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "profile":
            p.add_argument(
                "--no-profile",
                dest="profile",
                action="store_false",
                help="skip the torch.profiler counts",
            )
        elif f.name == "profile_tokens":
            p.add_argument(
                flag,
                type=int,
                nargs=2,
                default=list(f.default),
                metavar=("SHORT", "LONG"),
                help="max_new_tokens of the two profiled runs (default: %(default)s)",
            )
        else:
            kind = int if f.type in ("int", "int | None") else str
            p.add_argument(flag, type=kind, default=f.default, help="default: %(default)s")
    demo = demo_sampling()
    for f in dataclasses.fields(SamplingParams):
        flag, default = "--" + f.name.replace("_", "-"), getattr(demo, f.name)
        help_text = f"SamplingParams.{f.name} (default: {default})"
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            p.add_argument(flag, type={"int": int, "float": float}[f.type], help=help_text)
    cold_start.add_arguments(p)  # --cold-start and its options


def sampling_from_args(args: argparse.Namespace) -> SamplingParams:
    """The `SamplingParams` the CLI options ask for (unset ones: `demo_sampling()`'s)."""
    return demo_sampling(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingParams)}
    )


def run_cli(args: argparse.Namespace) -> int:
    """Run what `args` asks; one JSON line per record on stdout. Returns the exit code."""
    dtype = args.dtype or ("bfloat16" if str(args.device).startswith("cuda") else "float32")
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(BenchConfig)}
    settings["profile_tokens"] = tuple(settings["profile_tokens"])
    if getattr(args, "batch_sizes", None):
        return _run_batch_cli(args, dtype)
    if getattr(args, "cold_start", False):
        return cold_start.run_cli(args, dtype, parse_engine_options(args.engine_option))
    status = 0
    modes = getattr(args, "modes", ("custom_voice",))
    if set(modes) & set(clone_bench.CLONE_MODES):
        status = clone_bench.run_clone_cli(args, dtype, settings, lambda r: _emit(args.out, r))
    if "custom_voice" not in modes:
        return status
    for engine in args.engine:
        try:
            records = run_bench(
                engine,
                args.model,
                device=args.device,
                dtype=dtype,
                engine_options=parse_engine_options(args.engine_option),
                sampling=sampling_from_args(args),
                on_partial=(lambda r: _write(args.out, r)) if args.out else None,
                **settings,
            )
        except Exception as exc:  # one failed engine must not lose the others
            log.exception("%s on %s failed", engine, args.model)
            records = [error_record(engine, args.model, exc, dtype=dtype, device=args.device)]
            status = 1
        for record in records:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()
            if args.out:
                log.info("wrote %s", _write(args.out, record))
    return status


def _run_batch_cli(args: argparse.Namespace, dtype: str) -> int:
    """`--batch-sizes`: one record per size, each printed (and written) when it is made."""
    if list(args.engine) != ["static"]:
        raise SystemExit(
            f"--batch-sizes measures the static engine only, got --engine {' '.join(args.engine)}"
        )
    if args.batch_rounds < 1:
        raise SystemExit(f"--batch-rounds must be >= 1, got {args.batch_rounds}")
    if args.steady_waves < 0:
        raise SystemExit(f"--steady-waves must be >= 0, got {args.steady_waves}")
    if args.out and Path(args.out).suffix == ".json":
        raise SystemExit(
            f"--batch-sizes writes one record per size: --out must be a directory, got {args.out}"
        )

    def emit(record: dict) -> None:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
        if args.out:
            log.info("wrote %s", _write(args.out, record))

    try:
        records = run_batch_bench(
            args.model,
            args.batch_sizes,
            device=args.device,
            dtype=dtype,
            engine_options=parse_engine_options(args.engine_option),
            sampling=sampling_from_args(args),
            rounds=args.batch_rounds,
            steady_waves=args.steady_waves,
            sample_threads=args.sample_threads,
            seed=args.seed,
            on_record=emit,
        )
    except Exception as exc:  # before any size ran (no CUDA, no model): every size says why
        log.exception("batch bench on %s failed", args.model)
        for b in args.batch_sizes:
            emit(error_record("static", args.model, exc, dtype=dtype, device=args.device,
                              batch_size=b))  # fmt: skip
        return 1
    return int(any(r.get("error") for r in records))


def _emit(out: str | None, record: dict) -> None:
    """Print `record` as one JSON line, and write it under `out` if given."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
    if out:
        log.info("wrote %s", _write(out, record))


def _write(out: str, record: dict) -> Path:
    path = output_path(out, record)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def register(subparsers) -> argparse.ArgumentParser:
    """Add `fastqwen bench` to the CLI (fastqwen.tools.cli imports this module as a plugin)."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark the static engine and the qwen-tts reference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run_cli)
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m fastqwen.tools.bench.run ...`, the same as `python -m fastqwen bench ...`."""
    parser = argparse.ArgumentParser(
        prog="python -m fastqwen.tools.bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("qwen_tts", "transformers"):  # they log every config default at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return run_cli(args)


if __name__ == "__main__":
    sys.exit(main())
