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

from fastqwen.constants import NUM_CODEBOOKS

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


MAX_ROWS = ROW_BUCKETS[-1]
MAX_WINDOW = WINDOW_BUCKETS[-1]


class _Inputs:
    """The graphs' inputs, one packed device buffer per decoder: each row's first latent
    and conv frame count (`MAX_ROWS` each), then the codes (rows, 16, window) of the group
    being decoded, filled from a pinned host twin by one copy. Every graph reads its inputs
    from here, whatever its shape."""

    def __init__(self, device: torch.device, books: int):
        self.books = books
        size = 2 * MAX_ROWS + MAX_ROWS * books * MAX_WINDOW
        self.host = torch.zeros(size, dtype=torch.long, pin_memory=True)
        self.packed = torch.zeros(size, dtype=torch.long, device=device)
        self.copied: torch.cuda.Event | None = None  # the last host-to-device copy

    def first(self, rows: int) -> torch.Tensor:
        return self.packed[:rows]

    def count(self, rows: int) -> torch.Tensor:
        return self.packed[MAX_ROWS : MAX_ROWS + rows]

    def codes(self, rows: int, window: int) -> torch.Tensor:
        start = 2 * MAX_ROWS
        return self.packed[start : start + rows * self.books * window].view(
            rows, self.books, window
        )

    def load(
        self, codes: torch.Tensor, first: list[int], count: list[int], rows: int, window: int
    ) -> None:
        """codes: (n, W, 16) windows, right-padded (n <= rows, W <= window); padding rows get
        no conv frames. A few host ops in all, whatever n: each waits its turn for the GIL."""
        if self.copied is not None:
            self.copied.synchronize()  # the previous call's copy has read the host buffer
        used = 2 * MAX_ROWS + rows * self.books * window
        host = self.host[:used]
        host.zero_()
        host[: len(first)] = torch.tensor(first)
        host[MAX_ROWS : MAX_ROWS + len(count)] = torch.tensor(count)
        view = host[2 * MAX_ROWS :].view(rows, self.books, window)
        view[: codes.shape[0], :, : codes.shape[1]] = codes.transpose(1, 2)
        self.packed[:used].copy_(host, non_blocking=True)
        self.copied = torch.cuda.Event()
        self.copied.record()


def _captured(
    run: Callable[[], torch.Tensor | None], pool, device: torch.device
) -> tuple[torch.cuda.CUDAGraph, object]:
    """Warm `run` up twice on a side stream (Triton builds, cuDNN algorithm choices), then
    capture it into a graph of `pool`; returns the graph and what the captured call returned."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(2):
            run()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # thread_local: the frame loop goes on in its own thread meanwhile (see
    # `engine.runner.capture_graph`)
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        with torch.inference_mode():
            out = run()
    return graph, out


class _DecoderGraphs:
    """A decoder's graphs by shape, in one memory pool; a failed shape maps to None.

    A decode is two graphs: the codes' latents (quantizer, pre-conv, transformer) for a
    (rows, window) shape, written into `stage`, and the conv stage (upsampling, vocoder) for
    a (rows, conv) shape, reading from `stage`. Split so, a batch of streams needs a graph
    per rows x window and one per rows x conv, not one per rows x window x conv: the conv
    stage's cuDNN convolutions make a capture slow (~0.2 s on an H200), and a warm-up at 64
    rows made 141 of them (29 s of a server's 35 s warm start)."""

    def __init__(self, device: torch.device, books: int):
        self.pool = torch.cuda.graph_pool_handle()
        self.inputs = _Inputs(device, books)
        self.stage: torch.Tensor | None = None  # (MAX_ROWS, latent, MAX_WINDOW) latents
        self.graphs: OrderedDict[tuple, torch.cuda.CUDAGraph | None] = OrderedDict()
        self.outputs: dict[tuple, torch.Tensor] = {}  # conv graphs' output buffers
        self.lock = threading.Lock()  # one decode at a time: the inputs are shared
        self.captures = 0
        self.replays = 0

    def latents_graph(self, latents: Callable, rows: int, window: int):
        key = ("latents", rows, window)
        if key not in self.graphs:
            codes = self.inputs.codes(rows, window)

            def run():
                out = latents(codes)
                if self.stage is None:  # shaped by the first decode: latent size, dtype
                    self.stage = torch.zeros(
                        (MAX_ROWS, out.shape[1], MAX_WINDOW), dtype=out.dtype, device=out.device
                    )
                self.stage[:rows, :, :window].copy_(out)

            self._capture(key, run)
        return self._use(key)

    def conv_graph(self, convs: Callable, rows: int, conv: int):
        key = ("convs", rows, conv)
        if key not in self.graphs:
            first, count = self.inputs.first(rows), self.inputs.count(rows)

            def run():
                return convs(self.stage[:rows], first, count, conv)

            self._capture(key, run)
        return self._use(key)

    def _capture(self, key: tuple, run: Callable) -> None:
        try:
            t0 = time.perf_counter()
            graph, out = _captured(run, self.pool, self.inputs.packed.device)
            if out is not None:
                self.outputs[key] = out
            self.captures += 1
            log.log(
                logging.DEBUG if _warming.is_set() else logging.INFO,
                "codec graph captured: %s %d rows, %s %d, in %.0f ms (%d held)",
                key[0],
                key[1],
                "window" if key[0] == "latents" else "conv",
                key[2],
                1000 * (time.perf_counter() - t0),
                len(self.graphs) + 1,
            )
        except Exception as exc:  # noqa: BLE001 - capture is an optimisation only
            log.warning("codec decode of shape %s runs eagerly: capture failed (%r)", key, exc)
            graph = None
        self.graphs[key] = graph
        while len(self.graphs) > MAX_GRAPHS:
            old, _ = self.graphs.popitem(last=False)
            self.outputs.pop(old, None)

    def _use(self, key: tuple):
        self.graphs.move_to_end(key)
        return self.graphs[key]


class BatchGraph:
    """One decode of (rows, 16, window) codes into (rows, 1, conv * 1920) samples, as the
    replay of a latents graph and a conv graph (`_DecoderGraphs`).

    `latents(codes)` is the first half of the decode: (rows, 16, window) codes to (rows,
    latent, window) latents; `convs(latents, first, count, conv)` the second: row r's conv
    stage takes its latents `first[r] .. first[r] + count[r]`, left-aligned, zeros after."""

    def __init__(self, state: _DecoderGraphs, latents: Callable, convs: Callable, key):
        self.state = state
        self.rows, self.window, self.conv = key
        self.latents = state.latents_graph(latents, self.rows, self.window)
        self.convs = state.conv_graph(convs, self.rows, self.conv) if self.latents else None
        self.out = state.outputs.get(("convs", self.rows, self.conv))

    @property
    def ok(self) -> bool:
        return self.latents is not None and self.convs is not None

    def __call__(self, codes: torch.Tensor, first: list[int], count: list[int]):
        """codes: (n, W, 16) windows, right-padded (n <= rows, W <= window). Returns the conv
        graph's output buffer, valid until its next replay (hold `lock(decoder)`)."""
        self.state.inputs.load(codes, first, count, self.rows, self.window)
        self.latents.replay()
        self.convs.replay()
        return self.out


def batch_graph(
    decoder: torch.nn.Module,
    group: Group,
    latents: Callable[[torch.Tensor], torch.Tensor],
    convs: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor],
) -> BatchGraph | None:
    """The graphs for `group`'s shape, each captured on first use; None if one cannot be."""
    graph = BatchGraph(_state(decoder), latents, convs, (group.rows, group.window, group.conv))
    return graph if graph.ok else None


_states_lock = threading.Lock()


def _state(decoder: torch.nn.Module) -> _DecoderGraphs:
    with _states_lock:
        state = _graphs.get(decoder)
        if state is None:
            device = next(decoder.parameters()).device
            state = _graphs[decoder] = _DecoderGraphs(device, NUM_CODEBOOKS)
        return state


def lock(decoder: torch.nn.Module) -> threading.Lock:
    """The lock a decode through `decoder`'s graphs (CUDA) holds from its inputs' copy to its
    audio's copy out: the inputs, the latents and each graph's output buffer are shared.
    The lock orders the host calls only: two threads decoding on different streams would
    also need the second to wait for the first's GPU work. The engine decodes on one codec
    thread, whose every call ends with a host copy of its audio (`batch.decode_spans`)."""
    return _state(decoder).lock


def holds(decoder: torch.nn.Module, rows: int, window: int, conv: int) -> bool:
    """Whether both graphs of a (rows, window, conv) decode are captured."""
    state = _graphs.get(decoder)
    if state is None:
        return False
    return all(
        state.graphs.get(key) is not None
        for key in (("latents", rows, window), ("convs", rows, conv))
    )


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
    "holds",
    "lock",
    "bucket",
    "drop_graphs",
    "graph_counts",
    "note_replay",
    "plan_groups",
]
