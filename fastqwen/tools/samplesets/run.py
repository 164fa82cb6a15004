"""Generate one parity sample set: static and dynamic audio for every (voice, prompt) pair.

`run_sample_set(settings)` loads the model once, then for each pair runs, with the same
seed: the static engine's non-streaming `generate`, the `qwen_tts` reference (both through
`fastqwen.verify.parity.run_parity`, teacher-forced logits included), and one streaming run of the
static engine for its time to first audio. Untimed warm-up runs come first (see `warm_up`),
so no row's timings include graph capture, compiling or first-call allocations.

A failing pair becomes an "error" row; the others still run, but the set is then not
published: the output folder keeps the earlier set, this run's files go to `failed/<set>/`,
and `SetRun.raise_if_incomplete()` raises (the notebooks' last cell). Inputs that make the
whole set meaningless stop it before a model loads, with an error naming the file or
parameter: a missing, short or silent recording, a model of the wrong kind, an unusable
device, an unknown speaker, an unusable transcript. See `artifacts` for the lock and the
publishing order, `references` for the recordings' checks and texts.

On a CPU with the `tiny` random checkpoint we run torch with one thread: the tiny layers are
far too small to gain from intra-op parallelism, and on a 2-core machine OpenMP contention
made two threads several times slower than one (the test suite does the same).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fastqwen import __version__
from fastqwen.prompts.builder import VoiceRequest
from fastqwen.tools.env import git_commit, package_version
from fastqwen.tools.samplesets import artifacts as A
from fastqwen.tools.samplesets.references import (
    Reference,
    asr_method,
    check_references,
    prepare_references,
    transcripts_text,
    word_error_rate,
)
from fastqwen.tools.samplesets.settings import PARAMS, SetSettings, pair_id, rel, wav_name
from fastqwen.verify.parity import ParityReport, run_parity
from fastqwen.verify.reference import run_reference
from fastqwen.verify.streaming import StreamParity, compare_stream

log = logging.getLogger(__name__)
SET_MODEL_KIND = {"customvoice": "custom_voice", "icl": "base"}  # the model kind a set needs
GPU_FREE_NOTE = "no GPU here, so the tiny random checkpoint stands in (it runs on a 2-core CPU)"


@dataclass
class StreamCheck:
    """The static engine's streaming run of a pair, judged against its `generate` audio."""

    ttfa_s: float  # time to first audio chunk
    chunks: int
    parity: StreamParity  # the difference, and the codec's own rounding as its bound

    @property
    def max_abs_diff(self) -> float:
        return self.parity.max_abs_diff

    def to_json(self) -> dict:
        return {"ttfa_ms": round(1000 * self.ttfa_s, 3), "chunks": self.chunks} | {
            k: v if isinstance(v, bool) else float(v) for k, v in self.parity.summary().items()
        }


@dataclass
class PairOutcome:
    """One (voice, prompt) pair: the parity report and files, or the error."""

    set_name: str
    voice: str
    k: int
    prompt: str
    files: dict[str, Path] = field(default_factory=dict)  # side -> WAV path
    report: ParityReport | None = None
    stream: StreamCheck | None = None
    error: str | None = None
    traceback: str | None = None

    @property
    def pair(self) -> str:
        return pair_id(self.set_name, self.voice, self.k)

    @property
    def ok(self) -> bool:
        return self.error is None

    def row(self) -> dict:
        """The pair's row in summary.json."""
        out = {
            "pair": self.pair,
            "voice": rel(self.voice) if self.set_name == "icl" else self.voice,
            "prompt_index": self.k,
            "status": "ok" if self.ok else "error",
            "error": self.error,
            "files": {side: p.name for side, p in self.files.items()},
        }
        if self.report is not None:
            out.update(self.report.summary())
            out["codes_sha256"] = {
                "static": A.codes_digest(self.report.static.codes),
                "dynamic": A.codes_digest(self.report.dynamic.codes),
            }
        if self.stream is not None:
            out["stream"] = self.stream.to_json()
            out["static"]["ttfa_ms"] = out["stream"]["ttfa_ms"]
        return out


@dataclass
class SetRun:
    """Everything a notebook shows about one generated set."""

    settings: SetSettings
    source: object  # fastqwen.models.sources.ModelSource
    engine: object | None  # fastqwen.api.FastQwen3TTS, reused by the listening panel
    outcomes: list[PairOutcome]
    references: list[Reference]
    section: dict  # this set's section of summary.json
    threads: int
    files_dir: Path | None = None  # output_dir when published, else its failed/<set>/

    @property
    def banner(self) -> str:
        return banner_text(self.source, self.settings.device)

    @property
    def output_dir(self) -> Path:
        return self.settings.output_dir

    @property
    def complete(self) -> bool:
        """Every pair succeeded, so the set was published in `output_dir`."""
        return all(o.ok for o in self.outcomes)

    def raise_if_incomplete(self) -> None:
        """Fail (a notebook's last cell: the report then exits non-zero and its index says
        failed) when a pair failed; the message says what and where the files are."""
        failed = [o for o in self.outcomes if not o.ok]
        if failed:
            raise IncompleteSetError(
                f"{len(failed)} of {len(self.outcomes)} pairs of the {self.settings.set_name} "
                f"set failed (first: {failed[0].pair}: {failed[0].error}); {rel(self.output_dir)} "
                f"keeps the earlier set, and this run's files are in {rel(self.files_dir)}"
            )


class IncompleteSetError(RuntimeError):
    """A sample-set run in which some pair failed."""


def banner_text(source, device: str) -> str:
    """The report's warning for random weights; empty for real ones."""
    if not source.is_random:
        return ""
    text = "Random weights: the audio is noise; timings and parity are still real."
    if source.fell_back:
        text += f" The real model is not available ({source.note})"
        if source.size == "tiny" and not str(device).startswith("cuda"):
            text += f"; {GPU_FREE_NOTE}"
        text += "."
    return text


def configure_threads(source, device: str) -> int:
    """One torch thread for the tiny model on CPU (see the module docstring)."""
    if source.size == "tiny" and not str(device).startswith("cuda"):
        torch.set_num_threads(1)
    return torch.get_num_threads()


# ------------------------------------------------------------------ one pair


def make_request(
    settings: SetSettings, voice: str, text: str, references: list[Reference]
) -> VoiceRequest:
    """The request for one pair: a speaker, or the voice clone prompt of a recording."""
    if settings.set_name == "customvoice":
        return VoiceRequest("custom_voice", text, settings.language, speaker=voice)
    ref = next(r for r in references if str(r.path) == str(voice))
    return VoiceRequest("voice_clone", text, settings.language, voice_clone_prompt=ref.prompt)


def stream_check(
    engine, request: VoiceRequest, params, seed: int, static, stop=None
) -> StreamCheck:
    """Stream the static engine once: time to first audio, and the audio against the
    non-streamed `static` result of the same request and seed, within the codec's rounding."""
    chunks = list(engine.stream(request, params, seed, stop=stop))
    audio = np.concatenate([c.audio for c in chunks]) if chunks else np.zeros(0, np.float32)
    speech_tokenizer = engine.tts.model.speech_tokenizer
    device = next(speech_tokenizer.model.parameters()).device
    item = (request.voice_clone_prompt or [None])[0]
    ref_codes = getattr(item, "ref_code", None) if getattr(item, "icl_mode", False) else None
    return StreamCheck(
        ttfa_s=chunks[0].elapsed_s if chunks else float("nan"),
        chunks=len(chunks),
        parity=compare_stream(
            audio, static.audio, speech_tokenizer, static.codes.to(device), ref_codes
        ),
    )


def run_pair(
    engine, request: VoiceRequest, params, seed: int, *, teacher_forcing: bool = True, stop=None
) -> tuple[ParityReport, StreamCheck]:
    """Static, dynamic (and teacher-forced) with one seed, then the streaming run.

    `stop`: a `threading.Event`; once set, the run raises `fastqwen.GenerationStopped`.
    """
    report = run_parity(
        engine, request, params, seed, with_teacher_forcing=teacher_forcing, stop=stop
    )
    return report, stream_check(engine, request, params, seed, report.static, stop)


WARM_UP_NOTE = (
    "before each pair, an untimed static generate of its request and settings; before the "
    "first, also a stream read to the end and a 2-step reference run"
)


def warm_up(
    engine,
    request: VoiceRequest,
    params,
    seed: int,
    *,
    full: bool = True,
    reference: Callable = run_reference,
) -> None:
    """Run, untimed, what the pair's timed runs will need for the first time.

    On CUDA the static engine captures on first use a frame graph per (cache window,
    sampling mode), a prefill graph per (window, prompt bucket) and codec graphs per stream
    span, and compiles. The window grows with prompt length + `max_new_tokens`, so a short
    warm-up would capture a smaller window than the timed run uses: we warm up with the
    pair's own request and params. A later pair whose prompt lands in another window or
    bucket would capture during its timed `generate`, so `full=False` (every pair after the
    first) repeats only the static generate; `full=True` also reads a stream to the end (the
    stream path and codec span graphs) and runs the reference for 2 steps (its first-call
    allocations; it has no graphs).

    Args:
        engine: a `FastQwen3TTS` (or anything with its `generate`, `stream` and `tts`).
        reference: `run_reference`'s signature; a stand-in for tests.
    """
    engine.generate(request, params, seed)
    if not full:
        return
    for _ in engine.stream(request, params, seed):
        pass
    short = dataclasses.replace(params, max_new_tokens=2, min_new_tokens=0)
    reference(engine.tts, request, short, seed)


# ------------------------------------------------------------------ the set


def resolve_source(settings: SetSettings):
    """The `ModelSource` of `settings.model` (an `auto:` string may fall back to random weights)."""
    from fastqwen.models.sources import resolve_model

    return resolve_model(settings.model)


def _load(settings: SetSettings, source, loader):
    from fastqwen import EngineConfig, FastQwen3TTS
    from fastqwen.models.sources import load_model

    source = source if source is not None else resolve_source(settings)
    needed = SET_MODEL_KIND[settings.set_name]
    if source.kind != needed:
        default = next(p.default for p in PARAMS[settings.set_name] if p.name == "model")
        raise ValueError(
            f"model {settings.model!r} (from {settings.origins.get('model', 'default')}) is a "
            f"{source.kind} model, but the {settings.set_name} set needs a {needed} model, "
            f"e.g. {default!r} or 'random:tiny-{needed}'"
        )
    loaded = (loader or load_model)(source, device=settings.device, dtype=settings.dtype)
    config = None if settings.max_seq_len is None else EngineConfig(settings.max_seq_len)
    return FastQwen3TTS(loaded.tts, config=config, source=loaded.source), loaded.source


def _check_device(settings: SetSettings) -> None:
    """A device torch can use here, or an error naming the parameter."""
    from fastqwen.models.sources import parse_device

    try:
        parse_device(settings.device)
    except ValueError as exc:
        origin = settings.origins.get("device", "default")
        raise ValueError(f"{exc} (notebook parameter device, from {origin})") from None


def _check_speakers(settings: SetSettings, engine) -> None:
    if settings.set_name != "customvoice":
        return
    supported = [str(s).lower() for s in engine.get_supported_speakers() or []]
    bad = [v for v in settings.voices if v not in supported]
    if bad:
        raise ValueError(
            f"unknown speaker(s) {bad} (speakers, from {settings.origins.get('voices')}); "
            f"this model has: {', '.join(supported)}"
        )


def run_sample_set(
    settings: SetSettings,
    *,
    source=None,
    loader: Callable | None = None,
    transcriber: Callable[[Path, str], str] | None = None,
    progress: bool = True,
) -> SetRun:
    """Generate the set described by `settings` and write its files.

    Args:
        settings: from `fastqwen.tools.samplesets.settings.resolve_settings` or `notebook_settings`.
        source: an already resolved `ModelSource` (default: resolve `settings.model`).
        loader: `fastqwen.models.sources.load_model` or a stand-in with its signature.
        transcriber: `(path, backend) -> text`, default `fastqwen.tools.transcribe.transcribe`.
        progress: a tqdm bar over the pairs, on stderr.

    Holds the set's lock on `settings.output_dir` for the whole run (a second run of the
    set into the folder raises `artifacts.SetBusyError` at once). When every pair succeeds,
    publishes the set there (`artifacts.publish_set`): the WAVs, `icl_transcripts.txt`
    (ICL), this set's section of `summary.json` with a checksum per file, and `README.md`;
    this set's WAVs from earlier runs with other settings are removed. When a pair fails, the
    folder keeps the earlier set as it was, and this run's files go to `failed/<set>/`;
    `SetRun.raise_if_incomplete()` then raises.
    """
    started, t0 = A.utc_now(), time.perf_counter()
    commit = git_commit(settings.project_dir)  # the code's, before this run writes anything
    _check_device(settings)
    audio_warnings = check_references(settings)  # before loading: missing, short, silent
    out = settings.output_dir
    with A.run_lock(out, settings.set_name):
        engine, source = _load(settings, source, loader)
        threads = configure_threads(source, settings.device)
        _check_speakers(settings, engine)
        references: list[Reference] = []
        if settings.set_name == "icl":
            references = prepare_references(settings, transcriber)
            for ref in references:
                ref.warnings = audio_warnings.get(str(ref.path), [])
                ref.prompt = engine.create_voice_clone_prompt(str(ref.path), ref.text)
        staging = A.staging_dir(out, settings.set_name)
        try:
            outcomes = _run_pairs(settings, engine, references, staging, progress)
            section = _section(settings, source, references, outcomes, threads)
            section["run"] |= {
                "started": started,
                "finished": A.utc_now(),
                "wall_s": round(time.perf_counter() - t0, 2),
                "git_commit": commit,
            }
            files_dir, section = _finish(settings, outcomes, section, references, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return SetRun(settings, source, engine, outcomes, references, section, threads, files_dir)


def _run_pairs(settings, engine, references, staging: Path, progress: bool) -> list[PairOutcome]:
    """Every pair, its WAVs written into `staging`; a failing pair becomes an error row."""
    params = settings.sampling_params()
    outcomes, warmed = [], False
    bar = tqdm(
        settings.pairs(),
        desc=settings.set_name,
        unit="pair",
        file=sys.stderr,
        disable=not progress,
        ascii=True,
    )
    for voice, k, text in bar:
        outcome = PairOutcome(settings.set_name, voice, k, text)
        bar.set_postfix_str(outcome.pair)
        try:
            request = make_request(settings, voice, text, references)
            warm_up(engine, request, params, settings.seed, full=not warmed)
            warmed = True
            outcome.report, outcome.stream = run_pair(engine, request, params, settings.seed)
            for side in ("static", "dynamic"):
                result = getattr(outcome.report, side)
                path = staging / wav_name(settings.set_name, voice, k, side)
                A.atomic_write_bytes(path, A.wav_bytes(result.audio, result.sample_rate))
                outcome.files[side] = path
        except Exception as exc:  # one bad pair must not lose the others
            outcome.error = _with_hint(f"{type(exc).__name__}: {exc}")
            outcome.traceback = traceback.format_exc()
            log.error("%s failed: %s", outcome.pair, outcome.error)
        outcomes.append(outcome)
    bar.close()
    return outcomes


def _with_hint(error: str) -> str:
    """Say how to apply the engine's "larger max_seq_len" advice from a notebook."""
    if "larger max_seq_len" in error:
        error += " (notebook parameter max_seq_len, or PARITY_MAX_SEQ_LEN)"
    return error


def _section(settings, source, references, outcomes, threads: int) -> dict:
    """This run's section of summary.json, but for its times and commit (the caller's) and
    its `files` checksums (added on writing)."""
    return {
        "settings": settings.to_json(),
        "origins": dict(settings.origins),
        "model": {
            "requested": settings.model,
            "resolved": f"random:{source.size}-{source.kind}" if source.is_random else source.path,
            "kind": source.kind,
            "size": source.size,
            "is_random": source.is_random,
            "fell_back": source.fell_back,
            "note": source.note,
            "banner": banner_text(source, settings.device),
        },
        "run": {
            "fastqwen": __version__,
            "torch": torch.__version__,
            "qwen_tts": package_version("qwen-tts"),
            "torch_threads": threads,
            "warm_up": WARM_UP_NOTE,
            "complete": all(o.ok for o in outcomes),
        },
        "references": [r.to_json() for r in references],
        "transcription": asr_method(settings.asr_backend)[1]
        if any(r.transcript is not None for r in references)
        else None,
        "rows": [o.row() for o in outcomes],
    }


def _finish(settings, outcomes, section, references, staging: Path) -> tuple[Path, dict]:
    """Publish a complete set, or keep an incomplete one in failed/<set>/; point every
    outcome's files at where they now are."""
    from fastqwen.tools.samplesets.readme import render_readme

    out, name = settings.output_dir, settings.set_name
    extra = {A.TRANSCRIPTS_FILE: transcripts_text(references)} if name == "icl" else {}
    if all(o.ok for o in outcomes):
        staged = [p for o in outcomes for p in o.files.values()]
        A.publish_set(out, name, staged, section, render=render_readme, extra=extra)
        target = out
    else:
        target = A.keep_failed(out, name, staging, section, render=render_readme, extra=extra)
        log.error(
            "%s: %d of %d pairs failed; %s keeps the earlier set, this run's files are in %s",
            name,
            sum(not o.ok for o in outcomes),
            len(outcomes),
            out,
            target,
        )
    for o in outcomes:
        o.files = {side: target / p.name for side, p in o.files.items()}
    return target, A.read_summary(target)["sets"][name]


__all__ = [
    "IncompleteSetError",
    "PairOutcome",
    "Reference",
    "SetRun",
    "StreamCheck",
    "banner_text",
    "make_request",
    "resolve_source",
    "run_pair",
    "run_sample_set",
    "warm_up",
    "word_error_rate",  # from .references, kept importable here
]
