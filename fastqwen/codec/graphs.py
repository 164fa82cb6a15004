"""CUDA graphs of the codec decoder, one per bucketed batch shape.

Why: decoded eagerly, one codec call is several hundred small launches (the codec's
8-layer transformer, the vocoder's convs and SnakeBetas), each a Python op that takes the
GIL. Alone that is a few milliseconds of launch overhead. Beside a busy frame loop and a
reader thread per request it is far worse: every op waits its turn for the GIL, and on an
H200 a codec call that needed ~30 ms of GPU time took ~300 ms of wall time, so the codec
thread, not the model, capped throughput. A replayed graph is one launch and one GIL
hand-off for the whole decode.

Shapes are bucketed so that a few graphs serve every call: rows (spans decoded together),
code window and conv frames are each rounded up to a rung of their ladder, and the
padding is zeros on the right. Right padding cannot change a row's samples: the decoder
is causal end to end (see `codec.batch`). A graph is captured on first use of its shape
and kept per decoder (least recently used dropped past `MAX_GRAPHS`), all in one memory
pool: the codec thread replays one at a time. A shape whose capture fails is remembered
and decoded eagerly. Replays run the same kernels as an eager decode of the padded shape,
so padding changes the audio by float rounding only; the codes never change.

`GRAPH_MAX_WINDOW` is the widest code window graphed (0 turns graphs off: what the
graph-versus-eager checks use).
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

ROW_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
WINDOW_BUCKETS = (16, 32, 64, 128, 192, 256, 336)  # a reference window is at most 325 frames
CONV_BUCKETS = (2, 4, 8, 16, 24, 32, 48, 64, 96, 112)  # result() chunks: 96 + 10 of context
GRAPH_MAX_WINDOW = WINDOW_BUCKETS[-1]  # wider windows decode eagerly; 0: no graphs at all
MAX_GRAPHS = 128  # per decoder; each holds its static buffers and its graph's nodes

# decoder -> _DecoderGraphs
_graphs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def bucket(value: int, ladder: tuple[int, ...]) -> int | None:
    """The smallest rung >= value, or None past the top."""
    for rung in ladder:
        if rung >= value:
            return rung
    return None


@dataclass(frozen=True)
class Group:
    """Spans decoded by one graph replay: their indices and the bucketed shape."""

    members: tuple[int, ...]
    rows: int
    window: int
    conv: int


def plan_groups(
    windows: list[int], convs: list[int], max_frames: int
) -> tuple[list[Group], list[int]]:
    """Split spans (their code windows and conv frames) into graph groups, and the indices
    that must decode eagerly (window past `GRAPH_MAX_WINDOW` or conv frames past the ladder).

    Spans are grouped by conv bucket, the costly dimension (the vocoder runs on every padded
    conv frame), so a stream's two-frame first chunk never pads up to the others' 22. A
    group holds at most the largest row rung whose padded conv frames fit `max_frames`."""
    by_conv: dict[int, list[int]] = {}
    eager = []
    for i, (window, conv) in enumerate(zip(windows, convs, strict=True)):
        w = bucket(window, WINDOW_BUCKETS) if window <= GRAPH_MAX_WINDOW else None
        c = bucket(conv, CONV_BUCKETS)
        if w is None or c is None:
            eager.append(i)
        else:
            by_conv.setdefault(c, []).append(i)
    groups = []
    for conv, members in sorted(by_conv.items()):
        fits = [r for r in ROW_BUCKETS if r * conv <= max_frames] or [1]
        cap = fits[-1]
        for start in range(0, len(members), cap):
            part = tuple(members[start : start + cap])
            window = bucket(max(windows[i] for i in part), WINDOW_BUCKETS)
            groups.append(Group(part, bucket(len(part), ROW_BUCKETS), window, conv))
    return groups, eager


class BatchGraph:
    """One captured decode of (rows, 16, window) codes into (rows, 1, conv * 1920) samples.

    `decode(codes, first, count)` is the decode to capture: row r's conv stage takes the
    latents at `first[r] .. first[r] + count[r]`, left-aligned, zeros after them. The inputs
    live in one packed device buffer, filled from a pinned host buffer by one copy."""

    def __init__(
        self,
        decode: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        rows: int,
        window: int,
        conv: int,
        device: torch.device,
        pool,
        books: int,
    ):
        self.rows, self.window, self.conv, self.books = rows, window, conv, books
        width = books * window + 2  # codes, then first and count
        self.host = torch.zeros((rows, width), dtype=torch.long, pin_memory=True)
        self.packed = torch.zeros((rows, width), dtype=torch.long, device=device)
        codes = self.packed[:, : books * window].view(rows, books, window)
        first, count = self.packed[:, -2], self.packed[:, -1]
        self.copied: torch.cuda.Event | None = None  # the last host-to-device copy
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # compile Triton kernels, pick cuDNN algorithms
                decode(codes, first, count)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the frame loop goes on in its own thread meanwhile (see
        # `engine.runner.capture_graph`)
        capture = torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local")
        with capture, torch.inference_mode():
            self.out = decode(codes, first, count)

    def __call__(self, codes: torch.Tensor, first: list[int], count: list[int]):
        """codes: (n, W, 16) windows, right-padded (n <= rows, W <= window). Returns the
        graph's output buffer, valid until the next replay of this graph. A few host ops in
        all, whatever n: each one waits its turn for the GIL."""
        host = self.host
        if self.copied is not None:
            self.copied.synchronize()  # the previous call's copy has read the host buffer
        host.zero_()
        view = host[:, : self.books * self.window].view(self.rows, self.books, self.window)
        view[: codes.shape[0], :, : codes.shape[1]] = codes.transpose(1, 2)
        host[: len(first), -2] = torch.tensor(first)
        host[: len(count), -1] = torch.tensor(count)  # padding rows: no conv frames, zeros
        self.packed.copy_(host, non_blocking=True)
        self.copied = torch.cuda.Event()
        self.copied.record()
        self.graph.replay()
        return self.out


class _DecoderGraphs:
    """A decoder's graphs by shape, in one memory pool; a failed shape maps to None."""

    def __init__(self):
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: OrderedDict[tuple[int, int, int], BatchGraph | None] = OrderedDict()
        self.captures = 0
        self.replays = 0


def batch_graph(
    decoder: torch.nn.Module,
    group: Group,
    decode: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    books: int,
) -> BatchGraph | None:
    """The graph for `group`'s shape, captured on first use; None if it cannot be."""
    state = _graphs.get(decoder)
    if state is None:
        state = _graphs[decoder] = _DecoderGraphs()
    key = (group.rows, group.window, group.conv)
    if key in state.graphs:
        state.graphs.move_to_end(key)
        return state.graphs[key]
    device = next(decoder.parameters()).device
    try:
        graph = BatchGraph(decode, *key, device, state.pool, books)
        state.captures += 1
    except Exception as exc:  # noqa: BLE001 - capture is an optimisation only
        log.warning("codec decode of shape %s runs eagerly: capture failed (%r)", key, exc)
        graph = None
    state.graphs[key] = graph
    while len(state.graphs) > MAX_GRAPHS:
        state.graphs.popitem(last=False)
    return graph


def drop_graphs(decoder: torch.nn.Module) -> None:
    """Forget `decoder`'s graphs: the next decode of each shape captures anew, under the
    settings in force then (a graph replays the kernels chosen at its capture, e.g. TF32
    convs, whatever the settings at replay)."""
    _graphs.pop(decoder, None)


def note_replay(decoder: torch.nn.Module) -> None:
    state = _graphs.get(decoder)
    if state is not None:
        state.replays += 1


def graph_counts(decoder: torch.nn.Module) -> dict[str, int]:
    """Graphs captured, held, failed and replayed for `decoder` (bench records read them)."""
    state = _graphs.get(decoder)
    if state is None:
        return {"captures": 0, "held": 0, "failed": 0, "replays": 0}
    held = [g for g in state.graphs.values() if g is not None]
    return {
        "captures": state.captures,
        "held": len(held),
        "failed": len(state.graphs) - len(held),
        "replays": state.replays,
    }


__all__ = [
    "CONV_BUCKETS",
    "GRAPH_MAX_WINDOW",
    "MAX_GRAPHS",
    "ROW_BUCKETS",
    "WINDOW_BUCKETS",
    "BatchGraph",
    "Group",
    "batch_graph",
    "bucket",
    "drop_graphs",
    "graph_counts",
    "note_replay",
    "plan_groups",
]
