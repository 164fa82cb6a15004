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
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

ROW_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
WINDOW_BUCKETS = (16, 32, 64, 128, 192, 256, 336)  # a reference window is at most 325 frames
CONV_BUCKETS = (2, 4, 8, 16, 24, 32, 48, 64, 96, 112)  # result() chunks: 96 + 10 of context
GRAPH_MAX_WINDOW = WINDOW_BUCKETS[-1]  # wider windows decode eagerly; 0: no graphs at all
# Per decoder; each holds its static buffers and its graph's nodes. Above what a batch of
# streams replays (`streamed_shapes`: 140 at 64 rows), so a serving engine never evicts a
# shape it will need again: each recapture stalls every stream for tens of milliseconds.
MAX_GRAPHS = 384

# decoder -> _DecoderGraphs
_graphs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


MAX_ROWS_FRAMES = 4096  # conv frames (rows * conv) of one batched decode: bounds its memory
_warming = threading.Event()  # set while a warm-up captures: its captures log at debug level


@contextmanager
def warming():
    """Captures inside are expected (a warm-up's): logged at debug level, not info."""
    _warming.set()
    try:
        yield
    finally:
        _warming.clear()


def streamed_shapes(
    max_rows: int, first_chunk_frames: int, chunk_frames: int, conv_context: int
) -> list[tuple[int, int, int]]:
    """The (rows, window, conv) graph shapes batches of streamed chunks replay, rows up to
    `max_rows` (at most the top row rung): first chunks without history (conv bucket of
    `first_chunk_frames`, the smallest window), and every window with the conv bucket of a
    later chunk (up to `chunk_frames` new frames plus `conv_context`) and the rung below
    it (a second chunk, a short flush). Rarer shapes (the flush of an utterance a few
    frames long) are captured on first use."""
    rows = [r for r in ROW_BUCKETS if r <= max(1, max_rows)]
    first = bucket(first_chunk_frames, CONV_BUCKETS)
    later = bucket(chunk_frames + conv_context, CONV_BUCKETS)
    convs = sorted({c for c in (later, _rung_below(later, CONV_BUCKETS)) if c is not None})
    shapes = []
    for r in rows:
        if first is not None:
            shapes.append((r, WINDOW_BUCKETS[0], first))
        for conv in convs:
            shapes.extend((r, w, conv) for w in WINDOW_BUCKETS if w >= conv)
    return [s for s in shapes if s[1] <= GRAPH_MAX_WINDOW and s[0] * s[2] <= MAX_ROWS_FRAMES]


def _rung_below(value: int | None, ladder: tuple[int, ...]) -> int | None:
    if value is None or value not in ladder or ladder.index(value) == 0:
        return None
    return ladder[ladder.index(value) - 1]


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
        t0 = time.perf_counter()
        graph = BatchGraph(decode, *key, device, state.pool, books)
        state.captures += 1
        log.log(
            logging.DEBUG if _warming.is_set() else logging.INFO,
            "codec graph captured: %d rows, window %d, conv %d, in %.0f ms (%d held)",
            *key,
            1000 * (time.perf_counter() - t0),
            len(state.graphs) + 1,
        )
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
