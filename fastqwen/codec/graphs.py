"""CUDA graphs of the codec decoder for the short spans at the start of a stream.

At two frames the decoder is bound by kernel launches, not by math: eager it costs
tens of milliseconds of the time to first audio, a captured graph a few. A graph is
captured per span shape (code window, frames of context, frames of conv context) on
first use and kept with the decoder module, so every stream on that model reuses it.
Replays run the same kernels as the eager decode, so the audio is the same. A shape
whose capture fails (a host sync inside the codec) is remembered and decoded eagerly.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

GRAPH_MAX_WINDOW = 16  # code windows up to this many frames are graphed: the first chunks

_graphs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # decoder -> {shape: graph}


class SpanGraph:
    """One captured decode of a fixed-shape code window; call it with (1, 16, W) codes."""

    def __init__(self, decode: Callable[[torch.Tensor], torch.Tensor], codes: torch.Tensor):
        self.codes = codes.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):
                decode(self.codes)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the frame loop runs on in its own thread meanwhile (see
        # `engine.runner.capture_graph`)
        capture = torch.cuda.graph(self.graph, capture_error_mode="thread_local")
        with capture, torch.inference_mode():
            self.out = decode(self.codes)

    def __call__(self, codes: torch.Tensor) -> torch.Tensor:
        self.codes.copy_(codes)
        self.graph.replay()
        return self.out


def graphed_decode(
    decoder: torch.nn.Module,
    key: tuple[int, ...],
    codes: torch.Tensor,
    decode: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """`decode(codes)`, replayed from a CUDA graph when the shape allows one.

    Falls back to calling `decode` directly on the CPU, for long windows (later chunks
    are not latency-bound and have many shapes) and for shapes that cannot be captured.
    """
    if codes.device.type != "cuda" or codes.shape[-1] > GRAPH_MAX_WINDOW:
        return decode(codes)
    per_decoder = _graphs.setdefault(decoder, {})
    graph = per_decoder.get(key)
    if graph is None:
        try:
            graph = SpanGraph(decode, codes)
        except Exception as exc:  # noqa: BLE001 - capture is an optimisation only
            log.warning("codec decode for shape %s runs eagerly: capture failed (%r)", key, exc)
            graph = False
        per_decoder[key] = graph
    return graph(codes) if graph else decode(codes)
