"""The voice clone modes of `fastqwen bench`: time to first audio from a reference recording.

`fastqwen bench --model random:1.7b-base --modes clone_icl,clone_xvector` writes one record
per mode and reference variant, in the schema of the custom voice records (`records.FIELDS`),
with `mode`, `reference_cached` and `reference_s` set:

- generation speed (`ms_per_frame` ...): non-streamed runs of the clone request, its prompt
  made beforehand, exactly as for custom voice;
- `ttfa_ms`: from calling `stream_voice_clone` with the path of a reference recording to its
  first audio chunk. Inside that call the engine reads and resamples the reference, hashes
  it, and then either takes its prompt from the voice cache (`reference_cached` true: the
  same recording every run, encoded by the warm-up) or runs the speaker encoder and the
  codec's encoder (`reference_cached` false: a recording never seen before, every run); then
  it builds the talker prompt, prefills, runs the first chunk's frames and decodes them (ICL:
  with the reference codes as the decoder's left context).

So a clone record's `ttfa_ms` is what a user waits for from a reference file, the same span
as a custom voice record's (call to first chunk). `bench/clone_ttfa.py` splits it into stages.

The reference is a given recording (`--reference`, `--reference-text`) or, by default, a
synthesised one (`Reference.synthetic`), cut to `--reference-seconds`. A new reference is it
plus seeded noise at -60 dBFS, different every run, so its hash (and the cache) never
matches. Every reference file is written before the clock starts, as 16-bit WAV at
`REFERENCE_FILE_RATE`: a common recording rate, so resampling to 24 kHz is in the timed path
as it is for most uploads.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from fastqwen.config import SamplingParams, parse_engine_options
from fastqwen.constants import SAMPLE_RATE
from fastqwen.device import synchronize
from fastqwen.tools.bench.records import FIELDS, MODES, SCHEMA

log = logging.getLogger(__name__)

CLONE_MODES = MODES[1:]  # ("clone_icl", "clone_xvector")
REFERENCES = ("cached", "new")  # `--references`: the reference's prompt reused, or never seen
REFERENCE_FILE_RATE = 44_100  # Hz of every reference file the timed calls read
REFERENCE_SECONDS = 10.0  # references are cut to this (the brief of a voice clone: up to 10 s)
NEW_REFERENCE_NOISE = 1e-3  # -60 dBFS: inaudible, yet above 16-bit rounding, so every hash differs
# The synthetic reference's transcript: about as many words as 10 s of speech, so the ICL
# prompt is as long as a real one's (the random-weight models do not listen to it).
SYNTHETIC_TEXT = (
    "Please remember to water the plants on Tuesday morning, and leave the spare key under "
    "the blue flower pot by the front door."
)


def _parse_list(text: str, choices: tuple[str, ...], option: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [t for t in items if t not in choices]
    if not items or bad:
        raise ValueError(
            f"{option} {text!r}: expected a comma-separated list of {', '.join(choices)}"
        )
    return items


def parse_modes(text: str) -> tuple[str, ...]:
    """`custom_voice,clone_icl` -> ("custom_voice", "clone_icl"); a ValueError names a bad one."""
    return _parse_list(text, MODES, "--modes")


def parse_references(text: str) -> tuple[bool, ...]:
    """`cached,new` -> (True, False): whether each variant's reference is in the cache."""
    return tuple(r == "cached" for r in _parse_list(text, REFERENCES, "--references"))


@dataclasses.dataclass(frozen=True)
class Reference:
    """A reference recording and its transcript (the ICL prompt's `ref_text`)."""

    wav: np.ndarray  # (samples,) float32 mono
    sample_rate: int
    text: str

    @property
    def seconds(self) -> float:
        return self.wav.size / self.sample_rate

    @classmethod
    def load(cls, path: str | Path, text: str, seconds: float = REFERENCE_SECONDS) -> Reference:
        """A recording from a file (mixed to mono, at its own rate), cut to `seconds`."""
        from fastqwen.prompts.reference_audio import load_reference_audio

        info = sf.info(str(path)) if Path(path).is_file() else None
        rate = info.samplerate if info is not None else SAMPLE_RATE
        wav, sr = load_reference_audio(path, target_sr=rate)  # its checks and messages
        if not (text or "").strip():
            raise ValueError(f"--reference {path} needs its transcript: pass --reference-text")
        return cls(wav[: int(seconds * sr)], sr, text)

    @classmethod
    def synthetic(cls, seconds: float = REFERENCE_SECONDS, seed: int = 0) -> Reference:
        """Voice-like sound: a gliding pitch with harmonics, syllable-rate loudness and
        some breath noise, at 24 kHz. Enough for the encoders' cost, which depends on the
        length, not the words."""
        if seconds < 1.0:
            raise ValueError(
                f"reference seconds must be >= 1.0 (the engine's minimum), got {seconds}"
            )
        rng = np.random.default_rng(seed)
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        f0 = 140 + 30 * np.sin(2 * np.pi * 0.3 * t) + 10 * np.sin(2 * np.pi * 1.7 * t)
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        voice = sum(np.sin(k * phase) / k for k in range(1, 12))
        syllables = 0.5 * (1 + np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 2 * np.pi)))
        wav = voice * syllables + 0.05 * rng.standard_normal(t.size)
        wav = 0.5 * wav / np.abs(wav).max()
        return cls(wav.astype(np.float32), SAMPLE_RATE, SYNTHETIC_TEXT)

    def perturbed(self, seed: int) -> Reference:
        """The same recording plus seeded noise at -60 dBFS: a reference never seen before."""
        noise = np.random.default_rng(seed).standard_normal(self.wav.size).astype(np.float32)
        wav = np.clip(self.wav + NEW_REFERENCE_NOISE * noise, -1.0, 1.0)
        return dataclasses.replace(self, wav=wav)

    def write(self, path: Path, rate: int = REFERENCE_FILE_RATE) -> Path:
        """Write as 16-bit PCM WAV at `rate`, as a recording would arrive."""
        wav = self.wav
        if rate != self.sample_rate:
            wav = soxr.resample(wav, self.sample_rate, rate, quality="soxr_hq")
        sf.write(str(path), wav, rate, subtype="PCM_16")
        return path


@dataclasses.dataclass(frozen=True)
class CloneCase:
    """One clone record: the mode, and whether its reference's prompt is in the cache."""

    mode: str  # one of CLONE_MODES
    reference_cached: bool

    def __post_init__(self) -> None:
        if self.mode not in CLONE_MODES:
            raise ValueError(f"clone mode {self.mode!r}: choose one of {', '.join(CLONE_MODES)}")

    @property
    def x_vector_only(self) -> bool:
        return self.mode == "clone_xvector"

    @property
    def name(self) -> str:
        return f"{self.mode}/{'cached' if self.reference_cached else 'new'}"


def clone_ttfa_ms(fast, path: Path, ref: Reference, case: CloneCase, params, cfg, dev) -> float:
    """ms from `stream_voice_clone(ref_audio=path)` to its first audio chunk on an idle engine
    (the last stream's cancelled block has ended); the rest of the stream is dropped
    (closing it cancels the request)."""
    fast.scheduler.wait_idle()
    synchronize(dev)
    t0 = time.perf_counter()
    chunks = fast.stream_voice_clone(
        cfg.text,
        cfg.language,
        ref_audio=str(path),
        ref_text=None if case.x_vector_only else ref.text,
        x_vector_only_mode=case.x_vector_only,
        seed=cfg.seed,
        first_chunk_frames=cfg.first_chunk_frames,
        chunk_frames=cfg.chunk_frames,
        **dataclasses.asdict(params),
    )
    try:
        next(chunks)
        return 1000 * (time.perf_counter() - t0)
    finally:
        chunks.close()


class _References:
    """Reference files in one folder: the cached one per mode, and a new one per call."""

    def __init__(self, ref: Reference, folder: Path):
        self.ref, self.folder, self._count = ref, folder, 0
        self.cached = ref.write(folder / "reference.wav")

    def new(self) -> Path:
        self._count += 1  # a different noise seed each time, across modes too
        return self.ref.perturbed(self._count).write(self.folder / f"new_{self._count}.wav")


def _measure_case(fast, case: CloneCase, refs: _References, params, cfg, dev) -> dict:
    """Generation timings and streamed TTFA of one case (see the module docstring)."""
    from fastqwen.prompts.builder import VoiceRequest
    from fastqwen.tools.bench import run as bench
    from fastqwen.tools.bench.measure import spread

    ref = refs.ref
    ref_text = None if case.x_vector_only else ref.text
    prompt = fast.create_voice_clone_prompt(str(refs.cached), ref_text, case.x_vector_only)
    request = VoiceRequest("voice_clone", cfg.text, cfg.language, voice_clone_prompt=prompt)
    out: dict = {}
    t0 = time.perf_counter()
    warm_tokens = cfg.warmup_max_new_tokens or params.max_new_tokens
    warm = fast.generate(request, dataclasses.replace(params, max_new_tokens=warm_tokens), cfg.seed)
    synchronize(dev)
    out.update(warmup_s=round(time.perf_counter() - t0, 3), warmup_frames=warm.frames)
    results = [fast.generate(request, params, cfg.seed) for _ in range(cfg.runs)]
    for i, r in enumerate(results):
        log.info("%s run %d: %s", case.name, i, r.summary())
    out.update(bench.timing_fields(results))

    stats = fast.voice_cache.stats
    ttfa = []
    for i in range(cfg.runs + 1):  # the first call is the streamed warm-up
        path = refs.cached if case.reference_cached else refs.new()
        hits, misses = stats.hits, stats.misses
        ttfa.append(clone_ttfa_ms(fast, path, ref, case, params, cfg, dev))
        hit = stats.hits > hits and stats.misses == misses
        if hit != case.reference_cached:  # the record would measure the other variant
            raise RuntimeError(
                f"{case.name}: the voice cache {'missed' if case.reference_cached else 'hit'} "
                f"in TTFA call {i}; a cached reference needs voice_cache_size > 0, a new one "
                "a recording the engine has not seen"
            )
    med, lo, hi = spread(ttfa[1:])
    out.update(
        ttfa_ms=med,
        ttfa_ms_min=lo,
        ttfa_ms_max=hi,
        ttfa_warmup_ms=round(ttfa[0], 3),
        ttfa_first_chunk_frames=cfg.first_chunk_frames,
        chunk_frames=cfg.chunk_frames,
    )
    return out


def run_clone_bench(
    model: str,
    modes: tuple[str, ...] = CLONE_MODES,
    references: tuple[bool, ...] = (True, False),
    *,
    device: str = "cuda",
    dtype: str = "bfloat16",
    engine_options: dict | None = None,
    sampling: SamplingParams | None = None,
    reference: Reference | None = None,
    on_record: Callable[[dict], None] | None = None,
    **settings,
) -> list[dict]:
    """One record per (clone mode, reference variant), all on one engine (loaded once).

    Args:
        model: a Base model (`random:1.7b-base`, `Qwen/Qwen3-TTS-12Hz-1.7B-Base`, a dir).
        modes: clone modes of `CLONE_MODES`.
        references: for each variant, whether the reference is cached (True) or new (False).
        device, dtype, engine_options, sampling, **settings: as `run.run_bench` (a
            `BenchConfig`'s fields; `speaker` is unused, `profile` ignored: the frame cost
            does not depend on the mode, the custom voice record has it).
        reference: the recording to clone (default: `Reference.synthetic()`).
        on_record: called with each record when it is made.
    """
    from fastqwen import EngineConfig, FastQwen3TTS
    from fastqwen.tools.bench import run as bench
    from fastqwen.tools.defaults import demo_sampling
    from fastqwen.tools.env import package_version

    cfg = bench.BenchConfig(**settings)
    cases = [CloneCase(m, cached) for m in modes for cached in references]
    params = sampling or demo_sampling()
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but CUDA is not available; use --device cpu")
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    ref = reference or Reference.synthetic()
    env = bench.environment(dev)
    t0 = time.perf_counter()
    config = EngineConfig(**(engine_options or {}))
    fast = FastQwen3TTS.from_pretrained(model, device=device, dtype=dtype, config=config)
    synchronize(dev)
    load_s = time.perf_counter() - t0
    if fast.model_kind != "base":
        fast.close()
        raise ValueError(
            f"clone modes need a Base model, but {model} is {fast.model_kind!r}; "
            "pass --model random:<size>-base or a *-Base checkpoint"
        )
    src = fast.source
    records = []
    try:
        weights, talker = bench.qwen_tts_weight_bytes(fast.tts)
        kv = bench._static_kv_bytes(fast)
        with tempfile.TemporaryDirectory(prefix="fastqwen-clone-") as folder:
            refs = _References(ref, Path(folder))
            for case in cases:
                rec = dict.fromkeys(FIELDS)
                rec.update(
                    schema=SCHEMA,
                    engine="static",
                    model=model,
                    dtype=dtype,
                    device=str(dev),
                    **env,
                    text=cfg.text,
                    language=cfg.language,
                    mode=case.mode,
                    reference_cached=case.reference_cached,
                    reference_s=round(ref.seconds, 3),
                    seed=cfg.seed,
                    max_new_tokens=params.max_new_tokens,
                    sampling=dataclasses.asdict(params),
                    runs=cfg.runs,
                    load_s=round(load_s, 3),
                    model_path=src.path,
                    size=src.size,
                    kind=src.kind,
                    random_weights=src.is_random,
                    package=f"qwen-tts {package_version('qwen-tts')}",
                    engine_config=dataclasses.asdict(fast.config),
                )
                try:
                    rec.update(_measure_case(fast, case, refs, params, cfg, dev))
                    rec.update(bench.memory_fields(dev, weights, talker, kv))
                except Exception as exc:  # one case failing keeps the others
                    log.exception("%s failed", case.name)
                    rec.update(
                        error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()
                    )
                records.append(rec)
                if on_record is not None:
                    on_record(rec)
    finally:
        fast.close()
    return records


# ---------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`--modes` and the reference options of `fastqwen bench`."""
    from fastqwen.tools.bench.run import argument_type  # run imports this module

    p.add_argument(
        "--modes",
        type=argument_type(parse_modes),
        default=("custom_voice",),
        metavar="MODE,...",
        help=f"what to measure, one record each: {', '.join(MODES)} (clone modes need a "
        "Base model, e.g. --model random:1.7b-base; default: custom_voice)",
    )
    p.add_argument(
        "--references",
        type=argument_type(parse_references),
        default=(True, False),
        metavar="cached,new",
        help="clone modes: one record per reference variant; cached: the same recording "
        "each run, its prompt from the engine's voice cache; new: a recording never seen "
        "before each run, so both encoders run in the timed path (default: cached,new)",
    )
    p.add_argument(
        "--reference",
        default=None,
        metavar="AUDIO",
        help="clone modes: the recording to clone (default: a synthesised voice-like sound)",
    )
    p.add_argument("--reference-text", default=None, help="the transcript of --reference")
    p.add_argument(
        "--reference-seconds",
        type=float,
        default=REFERENCE_SECONDS,
        help="clone modes: cut the reference to this many seconds (default: %(default)s)",
    )


def reference_from_args(args: argparse.Namespace) -> Reference:
    """The `Reference` the CLI options ask for."""
    if args.reference is None:
        if args.reference_text is not None:
            raise ValueError("--reference-text needs --reference (the recording it transcribes)")
        return Reference.synthetic(args.reference_seconds)
    return Reference.load(args.reference, args.reference_text, args.reference_seconds)


def run_clone_cli(args: argparse.Namespace, dtype: str, settings: dict, emit) -> int:
    """The clone modes of `args.modes` (static engine), each record to `emit` when made;
    `settings` are the `BenchConfig` fields. Returns the exit code."""
    from fastqwen.tools.bench.run import error_record, sampling_from_args

    modes = tuple(m for m in args.modes if m in CLONE_MODES)
    if list(args.engine) != ["static"]:
        raise SystemExit(
            f"clone modes measure the static engine only, got --engine {' '.join(args.engine)}"
        )
    if args.out and Path(args.out).suffix == ".json" and len(modes) * len(args.references) > 1:
        raise SystemExit(
            f"clone modes write one record per mode and reference: --out must be a directory, "
            f"got {args.out}"
        )
    try:
        records = run_clone_bench(
            args.model,
            modes,
            args.references,
            device=args.device,
            dtype=dtype,
            engine_options=parse_engine_options(args.engine_option),
            sampling=sampling_from_args(args),
            reference=reference_from_args(args),
            on_record=emit,
            **settings,
        )
    except Exception as exc:  # before any case ran (no CUDA, wrong model): each says why
        log.exception("clone bench on %s failed", args.model)
        for mode in modes:
            for cached in args.references:
                emit(error_record("static", args.model, exc, dtype=dtype, device=args.device,
                                  mode=mode, reference_cached=cached))  # fmt: skip
        return 1
    return int(any(r.get("error") for r in records))


__all__ = [
    "CLONE_MODES",
    "REFERENCES",
    "REFERENCE_FILE_RATE",
    "CloneCase",
    "Reference",
    "add_arguments",
    "clone_ttfa_ms",
    "parse_modes",
    "parse_references",
    "reference_from_args",
    "run_clone_bench",
    "run_clone_cli",
]
