"""Throughput at a batch size: the request mix, per-stream timings, and the record fields.

Shared by our batched bench (`fastqwen.tools.bench.run --batch-sizes`) and the two anchor
scripts (`bench/anchor_bench.py --batch-sizes`, `bench/batch_anchor_bench.py`), so every
engine is measured on the same requests and summarised by the same arithmetic.

Standard library only (plus `fastqwen.tools.defaults`): the anchor scripts import it in
their own environments.

Two ways to load the engine at batch size B:
- steady state (`steady_state_fields`, the record's `audio_seconds_per_second` when
  measured): B requests run, and each one that finishes generating is replaced at once,
  for `waves + 2` waves of B. A freed slot is refilled at the next block, so the decode of
  one wave overlaps the frames of the next, as on a busy server. The figure is the audio
  of the requests submitted after the first B, over the time from the first of those
  submits to the last result (the ramp-up left out);
- a burst round (`Round`, `burst_audio_seconds_per_second`): B requests at once, timed
  from submit to the last decoded result, so it includes the batch filling up and the
  last chunks' decode after the last frame.

The numbers of one burst round:
- `audio_seconds_per_second`: audio delivered by all B requests over the round's wall time
  (first submit to last decoded result);
- `step_ms`: the frame loop's wall time over its frames, one step serving every stream;
- `per_stream_rtf_*`: each stream's audio seconds over its own generation time (submit to
  its last frame), what one listener sees.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from fastqwen.tools.defaults import BENCH_SPEAKERS, SEED_PROMPTS

DEFAULT_BATCH_SIZES = (1, 8, 32, 64, 128, 256)
DEFAULT_BATCH_ROUNDS = 2
DEFAULT_STEADY_WAVES = 3  # waves of B counted in a steady-state run (plus ramp and drain)
MIN_WINDOW = 256  # the engine's smallest cache window; max_seq_len is a multiple of it


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """`"1,8,32"` -> (1, 8, 32), ascending and without repeats; a bad item is named."""
    sizes = []
    for item in str(text).split(","):
        item = item.strip()
        try:
            value = int(item)
        except ValueError:
            value = 0
        if value < 1 or str(value) != item.lstrip("+"):
            raise ValueError(
                f"--batch-sizes takes positive integers separated by commas (e.g. 1,8,32), "
                f"got {item!r} in {text!r}"
            )
        sizes.append(value)
    return tuple(sorted(set(sizes)))


@dataclass(frozen=True)
class BatchRequest:
    """One request of a batch: which seed prompt, which speaker, which seed."""

    index: int
    text: str
    speaker: str
    seed: int


def request_mix(
    batch_size: int,
    seed: int,
    texts: Sequence[str] = SEED_PROMPTS,
    speakers: Sequence[str] = BENCH_SPEAKERS,
) -> list[BatchRequest]:
    """B requests cycling through the seed prompts and the speakers, seeds seed, seed+1, ...

    Distinct seeds make the streams distinct (the same prompt with the same seed would
    make the same codes, which says nothing a batch of one does not).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [
        BatchRequest(
            i, texts[i % len(texts)], speakers[(i // len(texts)) % len(speakers)], seed + i
        )
        for i in range(batch_size)
    ]


def mix_description(requests: Sequence[BatchRequest]) -> dict:
    """What the record keeps of the mix: the distinct texts and speakers, the seed range."""
    return {
        "texts": list(dict.fromkeys(r.text for r in requests)),
        "speakers": list(dict.fromkeys(r.speaker for r in requests)),
        "seeds": [requests[0].seed, requests[-1].seed] if requests else [],
    }


def seq_len_for(prompt_len: int, max_new_tokens: int) -> int:
    """The cache positions a request needs (prompt + frames), rounded up to a power-of-two
    multiple of the smallest window (256, 512, 1024, ...), as the engine's windows are."""
    needed = prompt_len + max_new_tokens - 1
    length = MIN_WINDOW
    while length < needed:
        length *= 2
    return length


@dataclass(frozen=True)
class StreamTiming:
    """One request of a timed round, whatever engine made it."""

    frames: int
    audio_s: float  # seconds of audio delivered
    generate_s: float  # this stream's generation time (prefill + its frames)
    loop_s: float | None = None  # its frames' share of the frame loop, prefill excluded
    prefill_s: float | None = None
    eos_reached: bool = False

    @property
    def rtf(self) -> float:
        return self.audio_s / self.generate_s if self.generate_s > 0 else math.nan


@dataclass(frozen=True)
class Round:
    """One timed round at one batch size."""

    batch_size: int
    wall_s: float  # first submit to last decoded result
    streams: tuple[StreamTiming, ...]
    steps: int | None = None  # frame steps the engine ran in the round (None: not known)
    # where the engine's time went in the round (seconds and counts; None: not known)
    breakdown: dict | None = None

    def __post_init__(self) -> None:
        if len(self.streams) != self.batch_size:
            raise ValueError(f"{len(self.streams)} stream timings for batch size {self.batch_size}")
        if not self.wall_s > 0:
            raise ValueError(f"wall_s must be > 0, got {self.wall_s}")

    @property
    def audio_s(self) -> float:
        return sum(s.audio_s for s in self.streams)

    @property
    def audio_seconds_per_second(self) -> float:
        return self.audio_s / self.wall_s


def best_round(rounds: Sequence[Round]) -> Round:
    """The round with the highest throughput: the one least disturbed by anything else on
    the machine, as the single-stream bench's minimum time would be."""
    if not rounds:
        raise ValueError("no rounds to choose from")
    return max(rounds, key=lambda r: r.audio_seconds_per_second)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def throughput_fields(rounds: Sequence[Round]) -> dict:
    """The batch fields of a record from the timed rounds at one batch size: the best round
    (`best_round`), plus every round's throughput under `batch_rounds_aps`."""
    best = best_round(rounds)
    streams = best.streams
    frames = [s.frames for s in streams]
    rtfs = [s.rtf for s in streams]
    loops = [s.loop_s for s in streams if s.loop_s is not None]
    frames_max = max(frames)
    if loops:  # every stream ran in the same steps: the median is the loop's wall
        loop_s = statistics.median(loops)
    else:  # no per-frame times: the slowest stream's generation, prefill included
        loop_s = max(s.generate_s for s in streams)
    prefills = [s.prefill_s for s in streams if s.prefill_s is not None]
    return {
        "batch_size": best.batch_size,
        "audio_seconds_per_second": _round(best.audio_seconds_per_second),
        "step_ms": _round(1000 * loop_s / max(frames_max, 1)),
        "per_stream_rtf_min": _round(min(rtfs)),
        "per_stream_rtf_median": _round(statistics.median(rtfs)),
        "batch_rounds_aps": [_round(r.audio_seconds_per_second) for r in rounds],
        "steps": best.steps,
        "frames": frames_max,
        "frames_all_runs": sorted(set(frames)),
        "eos_reached": any(s.eos_reached for s in streams),
        "audio_s": _round(best.audio_s),
        "generate_s": _round(max(s.generate_s for s in streams), 4),
        "wall_s": _round(best.wall_s, 4),
        "prefill_ms": _round(1000 * statistics.median(prefills)) if prefills else None,
        "round_breakdown": best.breakdown,
        "runs": len(rounds),
    }


def steady_state_fields(
    requests: Sequence[tuple[float, float, float]], batch_size: int, breakdown: dict | None = None
) -> dict:
    """The steady-state fields from each request's (submit time, finish time, audio seconds):
    the requests submitted after the first B (each into a slot a finished one freed), over
    the time from the first of those submits to the last finish.

    Every counted request is submitted and finished inside the window, so the figure can
    only understate what was sustained: the first wave's ramp-up is left out, its late
    decodes (a lagging codec) still take codec time inside the window, and the drain at
    the end counts at the rate the codec delivered it."""
    n = len(requests)
    if n < 3 * batch_size:
        raise ValueError(f"a steady state needs at least 3 waves of {batch_size} results, got {n}")
    counted = sorted(requests)[batch_size:]
    start = counted[0][0]
    end = max(finished for _, finished, _ in counted)
    if not end > start:
        raise ValueError(f"steady-state window of {end - start} s: nothing to measure")
    audio = sum(a for _, _, a in counted)
    return {
        "audio_seconds_per_second": _round(audio / (end - start)),
        "steady_window_s": _round(end - start, 4),
        "steady_requests": len(counted),
        "steady_breakdown": breakdown,
        "throughput_method": "steady_state",
    }


__all__ = [
    "DEFAULT_STEADY_WAVES",
    "steady_state_fields",
    "DEFAULT_BATCH_ROUNDS",
    "DEFAULT_BATCH_SIZES",
    "BatchRequest",
    "Round",
    "StreamTiming",
    "best_round",
    "mix_description",
    "parse_batch_sizes",
    "request_mix",
    "seq_len_for",
    "throughput_fields",
]
