"""`FrameRunner`: the one object that decides how a frame runs, and owns what that needs.

It holds the frame state, the sampling tensors, the cache windows, the frame functions
and the CUDA graphs, and decides once, from `EngineConfig` and the device, between

- eager: the reference ops (`ops.REFERENCE`), plain Python; the CPU default, bit-identical
  to `qwen_tts`;
- compiled: the fused ops (`ops.TRITON` on CUDA, `ops.FUSED` elsewhere) in
  `torch.compile`d frame functions, called once per frame (CPU included, through
  Inductor's C++ backend);
- graphed: each frame replayed as one captured CUDA graph (per cache window and
  `SamplingMode`), of the compiled functions or of the eager ones, and each prompt as a
  graph per padded length (`step.PREFILL_BUCKET`).

Graph lifecycle: warm up on a side stream, capture, then every frame is one `replay()`.
Capture happens before a generation's prefill, so the garbage the warm-up writes into the
caches and state is overwritten. Sampling parameters are read from device tensors at
replay time, so changing them needs no recapture. Random draws inside a graph use the CUDA
generator's graph-safe Philox offsets, so a replayed frame draws the same numbers as the
same frame run eagerly after the same seed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from fastqwen.config import EngineConfig, SamplingParams
from fastqwen.engine.loop import LoopStats, check_fits, run_frames
from fastqwen.engine.model import StaticModel
from fastqwen.engine.ops import FUSED, REFERENCE, TRITON, Ops
from fastqwen.engine.sampling import SamplingMode, SamplingTensors
from fastqwen.engine.step import (
    FrameFunctions,
    FrameState,
    eager_prefill,
    frame_step,
    padded_prompt_len,
    prefill,
)
from fastqwen.prompts.builder import TalkerPrompt

log = logging.getLogger(__name__)

MIN_WINDOW = 256  # smallest talker cache window; windows double up to max_seq_len
CUDA_SYNC_EVERY = 8  # frames between host looks at the codes on CUDA (EngineConfig.sync_every)


@dataclass(frozen=True)
class Execution:
    """How frames run: compiled frame functions or not, replayed from CUDA graphs or not."""

    compiled: bool
    graphed: bool

    @classmethod
    def choose(cls, config: EngineConfig, device: torch.device) -> Execution:
        """CUDA graphs only on CUDA (`cuda_graph` is ignored elsewhere); `compile=None`
        compiles exactly when graphing."""
        graphed = device.type == "cuda" and config.cuda_graph
        compiled = graphed if config.compile is None else config.compile
        return cls(compiled=compiled, graphed=graphed)

    @property
    def name(self) -> str:
        if self.graphed:
            return "graphed+compiled" if self.compiled else "graphed"
        return "compiled" if self.compiled else "eager"


def default_ops(execution: Execution, device: torch.device) -> Ops:
    """The reference ops when not compiled; compiled, the fused forms, with the Triton
    kernels on CUDA."""
    if not execution.compiled:
        return REFERENCE
    if device.type == "cuda" and TRITON is not None:
        return TRITON
    return FUSED


def capture_graph(fn: Callable[[], None], warmup: int = 2) -> torch.cuda.CUDAGraph:
    """Warm `fn` up on a side stream, then record it into a CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


class FrameRunner:
    """Runs the frames of one loaded model; the API asks it for code blocks.

    Args:
        model: weights and full-length caches (`StaticModel.from_qwen_tts`).
        config: how to run (`EngineConfig`); decides eager, compiled and graphed once.
        ops: the op set, overriding the default for the execution (`default_ops`): e.g.
            `ops.FUSED` or `ops.TRITON` (under Triton's interpreter) eagerly on the CPU.
    """

    def __init__(self, model: StaticModel, config: EngineConfig, *, ops: Ops | None = None):
        self.model = model
        self.config = config
        self.device = model.device
        self.execution = Execution.choose(config, self.device)
        self.ops = ops if ops is not None else default_ops(self.execution, self.device)
        functions = FrameFunctions.of(self.ops)
        self.functions = functions.compile() if self.execution.compiled else functions
        self.state = FrameState(model, config.max_seq_len)
        self.talker_sampling = SamplingTensors(self.device)
        self.sub_sampling = SamplingTensors(self.device)
        self.windows: dict[int, StaticModel] = {}
        self.frame_graphs: dict[tuple[int, SamplingMode], torch.cuda.CUDAGraph] = {}
        # (window, padded prompt length) -> (graph, input buffer, last-index buffer)
        self.prefill_graphs: dict[
            tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]
        ] = {}
        log.info("frames run %s with the %s ops", self.execution.name, self.ops.name)

    @property
    def sync_every(self) -> int:
        if self.config.sync_every is not None:
            return self.config.sync_every
        return CUDA_SYNC_EVERY if self.device.type == "cuda" else 1

    def window(self, needed: int) -> StaticModel:
        """The model on the smallest cache window (256, 512, 1024, ... positions) that fits
        `needed` positions: attention reads every position of its window, so a short
        utterance runs faster on a short one."""
        length = MIN_WINDOW
        while length < needed:
            length *= 2
        length = min(length, self.config.max_seq_len)
        if length not in self.windows:
            self.windows[length] = self.model.window(length)
        return self.windows[length]

    def step(self, m: StaticModel, mode: SamplingMode) -> Callable[[], None]:
        """One frame on window `m`: a graph replay (captured on first use) or a call."""

        def run() -> None:
            frame_step(m, self.state, self.functions, self.talker_sampling, self.sub_sampling, mode)

        if not self.execution.graphed:
            return run
        key = (m.talker_cache.max_len, mode)
        if key not in self.frame_graphs:
            log.info("capturing frame graph: window %d, %s (%s)", key[0], mode, self.execution.name)
            warmup = 3 if self.execution.compiled else 2
            self.frame_graphs[key] = capture_graph(run, warmup=warmup)
        return self.frame_graphs[key].replay

    def prefill(self, m: StaticModel, inputs_embeds: torch.Tensor) -> None:
        """The (1, P, H) prompt into window `m`'s cache and `state.hidden`: eagerly, or as one
        graph replay captured once per (window, padded prompt length)."""
        if not self.execution.graphed:
            eager_prefill(m, self.state, inputs_embeds)
            return
        p = inputs_embeds.shape[1]
        key = (m.talker_cache.max_len, padded_prompt_len(p, m.talker_cache.max_len))
        if key not in self.prefill_graphs:
            buf = torch.zeros((1, key[1], inputs_embeds.shape[2]), dtype=m.dtype, device=m.device)
            last = torch.zeros((1,), dtype=torch.long, device=m.device)
            graph = capture_graph(lambda: prefill(m, self.state, buf, last))
            self.prefill_graphs[key] = (graph, buf, last)
        graph, buf, last = self.prefill_graphs[key]
        buf.zero_()
        buf[:, :p].copy_(inputs_embeds)
        last.fill_(p - 1)
        graph.replay()

    def frames(
        self,
        prompt: TalkerPrompt,
        params: SamplingParams,
        seed: int | None,
        stats: LoopStats,
        first_block: int | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[torch.Tensor]:
        """The generator of (k, 16) int64 CPU code blocks for one utterance (`run_frames`).

        Checks that the utterance fits the cache, loads `params` into the sampling tensors
        and captures what is missing before returning, so errors surface here.
        """
        max_frames = check_fits(prompt.prompt_len, params, self.config.max_seq_len)
        m = self.window(prompt.prompt_len + max_frames)
        self.talker_sampling.load_talker(params)
        self.sub_sampling.load_subtalker(params)
        step = self.step(m, SamplingMode.of(params))
        return run_frames(
            m,
            self.state,
            prompt,
            params,
            seed,
            step=step,
            prefill=lambda embeds: self.prefill(m, embeds),
            max_frames=max_frames,
            sync_every=self.sync_every,
            first_block=first_block,
            stats=stats,
            stop=stop,
        )
