"""The CUDA path: `frame_step`, optionally compiled, captured as one CUDA graph per frame.

Lifecycle (once per engine and sampling mode): warm up on a side stream, capture,
then every frame is a single `graph.replay()`. Capture happens before a generation's
prefill, so the garbage the warm-up writes into the caches and state is overwritten.
Sampling parameters are read from device tensors at replay time, so changing them
needs no recapture; only the `SamplingMode` (greedy or not, top-p on or off) and the
cache window select another graph.

Random draws inside the graph use the CUDA generator's graph-safe Philox offsets, so a
replayed frame draws the same numbers as the same frame run eagerly after the same seed.
With `compile=True`, the decoder layer's two halves (cache write included) and the
head-plus-warp of every sampled token are `torch.compile`d before capture (see `kernels`),
which fuses the many small kernels; the random draws stay eager ops inside the graph.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from fastqwen.engine.kernels import FrameKernels
from fastqwen.engine.sampling import SamplingMode, SamplingTensors
from fastqwen.engine.step import EngineModel, FrameState, frame_step, padded_prompt_len, prefill

log = logging.getLogger(__name__)


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


class GraphedFrameStep:
    """Replays one captured frame per call; captures lazily per sampling mode."""

    def __init__(
        self,
        m: EngineModel,
        state: FrameState,
        talker_sampling: SamplingTensors,
        sub_sampling: SamplingTensors,
        *,
        compile: bool = False,
    ):
        if m.device.type != "cuda":
            raise ValueError(
                f"CUDA graphs need a CUDA model, got device {m.device}; use the eager step on CPU"
            )
        self.m, self.state = m, state
        self.talker_sampling, self.sub_sampling = talker_sampling, sub_sampling
        self.compile = compile
        self.graphs: dict[tuple[int, SamplingMode], torch.cuda.CUDAGraph] = {}
        # (window, padded prompt length) -> (graph, input buffer, last-index buffer)
        self.prefills: dict[
            tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]
        ] = {}
        if compile:
            m.kernels = FrameKernels.compiled()

    def prepare(self, m: EngineModel, mode: SamplingMode) -> Callable[[], None]:
        """Capture (first time only) and return the replay function for this cache window
        (`m` is the engine or a `window` of it) and sampling mode."""
        key = (m.talker_cache.max_len, mode)
        if key not in self.graphs:
            log.info(
                "capturing frame graph: window %d, %s (compile=%s)", key[0], mode, self.compile
            )

            def run() -> None:
                frame_step(m, self.state, self.talker_sampling, self.sub_sampling, mode)

            self.graphs[key] = capture_graph(run, warmup=3 if self.compile else 2)
        return self.graphs[key].replay

    def prefill(self, m: EngineModel, state: FrameState, inputs_embeds: torch.Tensor) -> None:
        """The prompt as one graph replay: captured once per (window, padded prompt length)."""
        p = inputs_embeds.shape[1]
        key = (m.talker_cache.max_len, padded_prompt_len(p, m.talker_cache.max_len))
        if key not in self.prefills:
            buf = torch.zeros((1, key[1], inputs_embeds.shape[2]), dtype=m.dtype, device=m.device)
            last = torch.zeros((1,), dtype=torch.long, device=m.device)
            graph = capture_graph(lambda: prefill(m, state, buf, last))
            self.prefills[key] = (graph, buf, last)
        graph, buf, last = self.prefills[key]
        buf.zero_()
        buf[:, :p].copy_(inputs_embeds)
        last.fill_(p - 1)
        graph.replay()
