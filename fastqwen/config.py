"""The two configs: `SamplingParams` (what to generate, per call; shared by the engine, the
reference runner, the notebooks and the bench) and `EngineConfig` (how the engine runs)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class SamplingParams:
    """Every knob of the reference's generation, with the reference defaults.

    `max_new_tokens` counts talker steps as `qwen_tts` does: with no EOS, N steps
    give N - 1 complete frames. `min_new_tokens` suppresses EOS for the first steps.
    """

    max_new_tokens: int = 2048
    min_new_tokens: int = 2
    do_sample: bool = True
    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.05
    subtalker_dosample: bool = True
    subtalker_temperature: float = 0.9
    subtalker_top_k: int = 50
    subtalker_top_p: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 2:
            raise ValueError(f"max_new_tokens must be an integer >= 2, got {self.max_new_tokens!r}")
        if not isinstance(self.min_new_tokens, int) or self.min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be an integer >= 0, got {self.min_new_tokens!r}")
        if self.min_new_tokens > self.max_new_tokens:
            n, m = self.min_new_tokens, self.max_new_tokens
            raise ValueError(f"min_new_tokens ({n}) must be <= max_new_tokens ({m}); lower one")
        for name in ("temperature", "subtalker_temperature"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(
                    f"{name} must be > 0, got {value!r}; use do_sample=False for greedy decoding"
                )
        for name in ("top_k", "subtalker_top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0 disables it), got {value!r}")
        for name in ("top_p", "subtalker_top_p"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> SamplingParams:
        """Build from keyword arguments, ignoring None values and naming unknown ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(
                f"unknown generation parameter(s) {unknown}; "
                f"choose from: {', '.join(sorted(known))}"
            )
        return cls(**{k: v for k, v in kwargs.items() if v is not None})


CODEC_STREAMS = ("shared", "separate")


@dataclass(frozen=True)
class EngineConfig:
    """How the engine allocates and runs.

    How frames run is decided once from these and the device (`engine.runner.Execution`):

    max_seq_len: talker cache positions per slot (prompt + frames); the default covers a
        long prompt plus 2048 frames.
    max_batch_size: slots, i.e. requests generated together in one frame step. Each
        slot holds a whole talker cache (`FastQwen3TTS.kv_bytes_per_slot`), allocated at
        construction.
    batch_buckets: the batch sizes a frame step runs at (one CUDA graph each); a batch
        runs at the smallest bucket that holds its highest slot. None: 1, 2, 4, ... up to
        max_batch_size, and max_batch_size itself.
    max_prefill_batch: prompts prefilled together when requests join at the same frame.
        The rest of the queue joins at the next blocks, one group per block, so a burst of
        B requests ramps up over B / max_prefill_batch blocks (64: a burst of 64 joins at
        once; at 16 a burst of 256 took 16 blocks of 8 frames to fill the batch).
    batch_invariant: on CUDA with the compiled Triton ops, run every product through the
        tiled kernel (one tiling for any number of rows, the single row included) and
        prefill each joining prompt alone, so a request's codes do not depend on the batch.
        Off by default until its cost is measured: the tiled kernel is slower than the
        single-row kernel at batch 1 (bench/results/2026-12-02_h200_8e7c008). The eager
        CPU path (reference ops) is invariant either way.
    fused_noise: on CUDA with graphs, draw every row's sampling noise in one Triton launch
        that reproduces each row's torch generator bit for bit
        (`engine/triton/philox_noise.py`) instead of one `exponential_` call per row and
        token (1,024 launches a frame at batch 64). False: the per-row torch calls.
    sync_every: frames between host checks for EOS (None: 1 on CPU, 8 on CUDA).
    cuda_graph: on CUDA, replay each frame as one captured graph (ignored on CPU).
    codec_stream: where the codec's GPU work runs beside the frame loop's.
        "shared" (default): on the frame loop's stream, so the GPU runs a decode between
        two blocks of frames, never both at once; only a batch of a few first-chunk
        frames (`codec.batch.SIDE_LANE_FRAMES`), whose latency is the time to first
        audio, runs on a high-priority side stream beside the frames. "separate": every
        decode on a side stream of its own, overlapping the frames. Shared is the default
        because it keeps the vocoder's large kernels out of the frame step's chain of
        small ones, whose every kernel would otherwise queue behind them. On an H200 at
        batch 64 the two steady states were alike: 281 audio-s/s shared, 282 separate
        (bench/results/2026-12-03_h200_04f1f3c, 2026-12-03_h200_6b270e2; two calls).
    compile: `torch.compile` the frame functions with the fused ops (`engine.ops`; on CUDA
        with the Triton kernels), with or without CUDA graphs, on CUDA or the CPU. The
        first generation of each batch bucket then compiles and autotunes: 30-54 s a
        bucket at 1.7B on an H200. False (default; None too): no compile. Graphed CUDA
        frames then run the kernel op set (`ops.KERNELS`: every product, attention and
        token draw one hand-written or library kernel) in bfloat16 and float16, which was
        as fast as the compiled frames on an H200 (1.7B, one call: 3.37 against 3.45
        ms/frame at batch 1, a 6.0 against 6.1 ms step at batch 64 sampled), and cut a
        cold start from 57 s to 27 s (bench/results/2026-12-04_h200_61f2482); float32
        frames run the reference ops, which keep the reference's numbers exactly.
    admit_in_block: while a slot is free, end a block of frames at the first frame after a
        request arrives, so it joins a frame or two later instead of up to `sync_every`
        frames later (its time to first audio under load); end it too after a request in it
        is cancelled, so its slot (and, alone, the GPU) is free a frame or two later. On
        CUDA the block's launches are paced a few frames ahead of the GPU
        (`engine.runner.LAUNCH_AHEAD`): 3.45 against 3.39 ms/frame at batch 1 on an H200.
        False: blocks always run to their planned length, launched at once.
    autotune: when compiling, let Inductor tune each generated reduction kernel by
        coordinate descent. It searches launch settings by timing them on the GPU at the
        first compile of each shape, and was 17 of a 57 s cold start on an H200 (1.7B, 8 of
        35 s with Inductor's on-disk cache warm). False skips it: the kernels keep
        Inductor's heuristic settings.
    dynamic_windows: when compiling, compile the frame functions once for every talker
        cache window, its length a symbol (`torch._dynamo.mark_dynamic`), instead of once
        per window: a batch whose longest request needs a longer window (256, 512, 1024,
        ... positions) then costs a graph capture, not a compile, which on an H200 took
        30-54 s per shape and stalls every request meanwhile. Checked on the CPU; off
        until measured on a GPU.
    """

    max_seq_len: int = 2048 + 512
    sync_every: int | None = None
    cuda_graph: bool = True
    compile: bool | None = False
    max_batch_size: int = 8
    batch_buckets: tuple[int, ...] | None = None
    max_prefill_batch: int = 64
    batch_invariant: bool = False
    fused_noise: bool = True
    codec_stream: str = "shared"
    autotune: bool = True
    admit_in_block: bool = True
    dynamic_windows: bool = False

    def __post_init__(self) -> None:
        if self.codec_stream not in CODEC_STREAMS:
            raise ValueError(
                f"codec_stream must be one of {', '.join(CODEC_STREAMS)}, got {self.codec_stream!r}"
            )
        if self.max_seq_len < 16:
            raise ValueError(f"max_seq_len must be >= 16, got {self.max_seq_len}")
        if self.sync_every is not None and self.sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {self.sync_every}")
        for name in ("max_batch_size", "max_prefill_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.batch_buckets is not None:
            buckets = tuple(self.batch_buckets)
            if not buckets or any(
                isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= self.max_batch_size
                for b in buckets
            ):
                raise ValueError(
                    f"batch_buckets must be integers from 1 to max_batch_size "
                    f"({self.max_batch_size}), got {self.batch_buckets!r}"
                )
            object.__setattr__(self, "batch_buckets", tuple(sorted(set(buckets))))

    @property
    def buckets(self) -> tuple[int, ...]:
        """The batch sizes frames run at, ascending; the last is always max_batch_size."""
        if self.batch_buckets is not None:
            return tuple(sorted({*self.batch_buckets, self.max_batch_size}))
        sizes, b = [], 1
        while b < self.max_batch_size:
            sizes.append(b)
            b *= 2
        return (*sizes, self.max_batch_size)


def parse_engine_options(items: list[str]) -> dict:
    """`EngineConfig` fields from command-line `KEY=VALUE` strings (`--engine-option`): each
    value read as JSON where it parses (numbers, true / false, null, lists), else as text.
    Raises naming an item without "=" or a key that is no field."""
    known = {f.name for f in fields(EngineConfig)}
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--engine-option needs KEY=VALUE, got {item!r}")
        if key not in known:
            raise ValueError(
                f"--engine-option {item!r}: {key!r} is no EngineConfig field; "
                f"choose from: {', '.join(sorted(known))}"
            )
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options
