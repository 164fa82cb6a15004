"""`FrameRunner`: the one object that decides how a frame runs, and owns what that needs.

It holds the frame state, the sampling tensors and random generators of every slot, the
cache views, the frame functions and the CUDA graphs, and decides once, from
`EngineConfig` and the device, between

- eager: the reference ops (`ops.REFERENCE`), plain Python; the CPU default, bit-identical
  to `qwen_tts`;
- graphed (the CUDA default): each frame replayed as one captured CUDA graph (per batch
  bucket, cache window and `SamplingMode`) of the uncompiled functions, on the kernel ops
  (`ops.KERNELS`) in bfloat16 and float16, on the reference ops in float32; and each group
  of joining prompts as a graph per (count, padded length) (`step.PREFILL_BUCKET`);
- compiled (`EngineConfig(compile=True)`): the fused ops (`ops.TRITON` on CUDA, `ops.FUSED`
  elsewhere) in `torch.compile`d frame functions, called once per frame (CPU included,
  through Inductor's C++ backend), graphed or not.

Graph lifecycle: warm up on a side stream, capture, then every frame is one `replay()`.
Capture happens before a generation's prefill, so the garbage the warm-up writes into the
caches and state is overwritten. Sampling parameters are read from device tensors at
replay time, so changing them needs no recapture. Random draws inside a graph use each slot's
CUDA generator's graph-safe Philox offsets (registered with the graph), so a replayed frame
draws the same numbers as the same frame run eagerly after the same seed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from fastqwen.config import EngineConfig, SamplingParams
from fastqwen.constants import NUM_CODEBOOKS
from fastqwen.device import to_device
from fastqwen.engine.cache import StaticKVCache
from fastqwen.engine.compile_cache import use_compile_cache
from fastqwen.engine.loop import check_fits
from fastqwen.engine.model import StaticModel
from fastqwen.engine.ops import FUSED, KERNELS, REFERENCE, TRITON, TRITON_INVARIANT, Ops
from fastqwen.engine.sampling import (
    RowStreams,
    SamplingMode,
    SamplingTensors,
    apply_penalties,
    sample_token,
    subtalker_values,
    talker_values,
)
from fastqwen.engine.step import (
    FrameState,
    eager_prefill,
    frame_functions,
    frame_step,
    pad_prompts,
    prefill,
    prompt_functions,
    recompile_limit,
    talker_logits,
)
from fastqwen.prompts.builder import TalkerPrompt

log = logging.getLogger(__name__)

MIN_WINDOW = 256  # smallest talker cache window; windows double up to max_seq_len
CUDA_SYNC_EVERY = 8  # frames between host looks at the codes on CUDA (EngineConfig.sync_every)
# Frames queued beyond the one the host waits for when a block may end early
# (`FrameRunner.run_block`'s `stop`): the GPU stays busy while the host wakes up.
LAUNCH_AHEAD = 2


@dataclass(frozen=True)
class Execution:
    """How frames run: compiled frame functions or not, replayed from CUDA graphs or not."""

    compiled: bool
    graphed: bool

    @classmethod
    def choose(cls, config: EngineConfig, device: torch.device) -> Execution:
        """CUDA graphs only on CUDA (`cuda_graph` is ignored elsewhere); compiled only when
        `compile` is True (None: not compiled; see `EngineConfig.compile`)."""
        graphed = device.type == "cuda" and config.cuda_graph
        compiled = bool(config.compile)
        return cls(compiled=compiled, graphed=graphed)

    @property
    def name(self) -> str:
        if self.graphed:
            return "graphed+compiled" if self.compiled else "graphed"
        return "compiled" if self.compiled else "eager"


def default_ops(
    execution: Execution,
    device: torch.device,
    invariant: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Ops:
    """Compiled: the fused forms, with the Triton kernels on CUDA (the batch-invariant set
    with `invariant`). Not compiled: on CUDA graphs in bfloat16 or float16, the kernels
    alone (`ops.KERNELS`; the invariant set with `invariant`); otherwise the reference
    ops, so float32 and the CPU keep the reference's numbers."""
    if not execution.compiled:
        if execution.graphed and dtype != torch.float32 and KERNELS is not None:
            return TRITON_INVARIANT if invariant else KERNELS
        return REFERENCE
    if device.type == "cuda" and TRITON is not None:
        return TRITON_INVARIANT if invariant else TRITON
    if invariant:
        raise ValueError(
            "batch_invariant needs the Triton kernels on CUDA, or the eager reference ops "
            "(compile=False), which are invariant already; the compiled CPU ops are not"
        )
    return FUSED


def capture_graph(
    fn: Callable[[], None], warmup: int = 2, generators: list[torch.Generator] = ()
) -> torch.cuda.CUDAGraph:
    """Warm `fn` up on a side stream, then record it into a CUDA graph.

    `generators` (besides torch's default one) are registered with the graph, so each
    replay advances their Philox offsets as an eager call would.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    for generator in generators:
        graph.register_generator_state(generator)
    # thread_local: the codec thread keeps decoding (allocating, syncing its own stream)
    # while a graph is captured here; under the default "global" mode any such call from
    # another thread invalidates this capture, and a failed capture breaks every later one.
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        fn()
    return graph


def _draw_offsets(model: StaticModel, device: torch.device) -> tuple[int, int]:
    """How far one frame's draws move a CUDA generator's Philox offset: codebook 0's one
    draw, and codebooks 1..15's fifteen (measured, as torch rounds each call's share)."""
    generator = torch.Generator(device)

    def moved(vocab: int) -> int:
        before = generator.get_offset()
        torch.empty((vocab,), device=device).exponential_(1, generator=generator)
        return generator.get_offset() - before

    sub_vocab = model.predictor_heads[0].shape[0]
    return moved(model.vocab_size), (NUM_CODEBOOKS - 1) * moved(sub_vocab)


def prefill_group(count: int, limit: int) -> int:
    """Prompts a graphed prefill of `count` runs: the next power of two, at most `limit`."""
    group = 1
    while group < count:
        group *= 2
    return min(group, limit)


def window_length(needed: int, max_seq_len: int) -> int:
    """The smallest cache window (256, 512, 1024, ... positions) that fits `needed`."""
    length = MIN_WINDOW
    while length < needed:
        length *= 2
    return min(length, max_seq_len)


class FrameRunner:
    """Runs the frames of one loaded model for a batch of slots; the API and the scheduler
    ask it to admit requests into slots and for blocks of codes.

    Each slot has its row in the caches, the frame state and the sampling tensors, and
    its own random generator, seeded per request: a row draws exactly what the reference
    would draw for that request alone, whatever the other rows do. A step runs the first
    `bucket` slots (`EngineConfig.buckets`), on the smallest cache window that fits every
    request in them.

    Args:
        model: weights and full-length caches (`StaticModel.from_qwen_tts`) with
            `config.max_batch_size` slots.
        config: how to run (`EngineConfig`); decides eager, compiled and graphed once.
        ops: the op set, overriding the default for the execution (`default_ops`): e.g.
            `ops.FUSED` or `ops.TRITON` (under Triton's interpreter) eagerly on the CPU.
        row_streams: draw the noise through `RowStreams` (one launch for all rows), overriding
            the default (graphed CUDA with `config.fused_noise`); the tests run it on the
            CPU under Triton's interpreter.
    """

    def __init__(
        self,
        model: StaticModel,
        config: EngineConfig,
        *,
        ops: Ops | None = None,
        row_streams: bool | None = None,
    ):
        if model.talker_cache.batch != config.max_batch_size:
            raise ValueError(
                f"the model's caches have {model.talker_cache.batch} slots but "
                f"max_batch_size is {config.max_batch_size}"
            )
        self.model = model
        self.config = config
        self.device = model.device
        self.gpu_s = 0.0  # GPU time of the blocks run (CUDA only; `run_block`)
        self.execution = Execution.choose(config, self.device)
        self.ops = (
            ops
            if ops is not None
            else default_ops(self.execution, self.device, config.batch_invariant, model.dtype)
        )
        if self.execution.compiled or self.device.type == "cuda":
            use_compile_cache()  # a later process reuses the kernels compiled here
        functions = frame_functions(self.ops)
        windows = len(range(MIN_WINDOW.bit_length(), config.max_seq_len.bit_length() + 1))
        limit = recompile_limit(len(config.buckets), windows)
        self.functions = (
            functions.compile(limit, autotune=config.autotune)
            if self.execution.compiled
            else functions
        )
        self.prompt_functions = prompt_functions(self.ops, model.dtype)
        batch = config.max_batch_size
        self.uncaptured_prefills = 0  # prefills run without a graph beside running requests
        self.state = FrameState(model, config.max_seq_len, batch)
        self.talker_sampling = SamplingTensors(self.device, batch)
        self.sub_sampling = SamplingTensors(self.device, batch)
        self.generators = [torch.Generator(self.device) for _ in range(batch)]
        # Whether each slot's request samples codebook 0 and codebooks 1..15: a greedy side
        # makes no draws in the reference, so it must not move the slot's stream.
        self.drawing: list[tuple[bool, bool]] = [(True, True)] * batch
        # Graphed on CUDA: the same streams as device tensors, every row's noise in one
        # launch (`RowStreams`); else one torch call per row, and graphs move the greedy
        # rows' streams back after each replay (`draw_offsets`, `_rewinds`).
        fused = self.execution.graphed and config.fused_noise and TRITON is not None
        fused = fused if row_streams is None else row_streams
        self.streams = RowStreams(self.device, batch) if fused else None
        graphed_torch_draws = self.execution.graphed and self.streams is None
        self.draw_offsets = _draw_offsets(model, self.device) if graphed_torch_draws else None
        scratch = StaticKVCache(
            len(model.talker.layers),
            model.talker.dims.num_kv_heads,
            model.talker.dims.head_dim,
            config.max_seq_len,
            dtype=model.dtype,
            device=self.device,
            batch=min(config.max_prefill_batch, config.max_batch_size),
        )
        self.scratch = model.with_talker_cache(scratch)
        self.views: dict[tuple[int, int], StaticModel] = {}  # (bucket, window) -> model view
        self.frame_graphs: dict[tuple[int, int, SamplingMode], torch.cuda.CUDAGraph] = {}
        # (prompts, padded length) -> (graph, inputs, last indices, slots)
        self.prefill_graphs: dict[
            tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]
        ] = {}
        log.info(
            "frames run %s with the %s ops, prompts with the %s ops",
            self.execution.name,
            self.ops.name,
            self.prompt_functions.ops.name,
        )

    @property
    def sync_every(self) -> int:
        if self.config.sync_every is not None:
            return self.config.sync_every
        return CUDA_SYNC_EVERY if self.device.type == "cuda" else 1

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    def bucket(self, rows: int) -> int:
        """The smallest batch bucket with at least `rows` rows."""
        for size in self.config.buckets:
            if size >= rows:
                return size
        raise ValueError(f"{rows} rows exceed max_batch_size ({self.max_batch_size})")

    def view(self, bucket: int, needed: int) -> StaticModel:
        """The model on its first `bucket` slots and the smallest cache window that fits
        `needed` positions: attention reads every position of its window, so short
        utterances run faster on a short one."""
        key = (bucket, window_length(needed, self.config.max_seq_len))
        if key not in self.views:
            view = self.model.window(key[1]).rows(bucket)
            if self.config.dynamic_windows and self.execution.compiled:
                view = view.with_talker_cache(view.talker_cache.symbolic())
            self.views[key] = view
        return self.views[key]

    # ---- admitting requests -----------------------------------------------------------
    def check(self, prompt: TalkerPrompt, params: SamplingParams) -> int:
        """Frames a request may produce; raises naming the limit if it cannot fit a slot."""
        max_frames = check_fits(prompt.prompt_len, params, self.config.max_seq_len)
        self.state.check_text(int(prompt.trailing_text.shape[1]), max_frames)
        return max_frames

    def load(self, slot: int, prompt: TalkerPrompt, params: SamplingParams, seed: int) -> None:
        """Prepare slot `slot` for a request (before its prefill): its frame state, sampling
        rows and random stream."""
        self.load_many([(slot, prompt, params, seed)])

    def load_many(self, joiners: list[tuple[int, TalkerPrompt, SamplingParams, int]]) -> None:
        """`load` for several (slot, prompt, params, seed) at once: each per-slot tensor is
        written for all of them by one indexed write, from one host-to-device copy that does
        not wait for the frames queued on the stream."""
        if not joiners:
            return
        dt = self.model.dtype
        slots = [slot for slot, _, _, _ in joiners]
        index = to_device(slots, torch.long, self.device)
        self.state.reset_rows(
            index,
            slots,
            [prompt.prompt_len for _, prompt, _, _ in joiners],
            [prompt.trailing_text.to(dt) for _, prompt, _, _ in joiners],
            [prompt.tts_pad_embed.to(dt) for _, prompt, _, _ in joiners],
        )
        self.talker_sampling.load_rows(index, [talker_values(p) for _, _, p, _ in joiners])
        self.sub_sampling.load_rows(index, [subtalker_values(p) for _, _, p, _ in joiners])
        for slot, _, params, seed in joiners:
            self.generators[slot].manual_seed(seed)
            self.drawing[slot] = (params.do_sample, params.subtalker_dosample)
        if self.streams is not None:
            self.streams.load_rows(
                index,
                [(seed, p.do_sample, p.subtalker_dosample) for _, _, p, seed in joiners],
            )

    def prefill(self, slots: list[int], prompts: list[TalkerPrompt], capture: bool = True) -> None:
        """Prefill the prompts into their slots, together (at most `max_prefill_batch`):
        eagerly, or as one graph replay per (count, padded length).

        `capture=False` (requests are running): a shape with no graph yet runs without one,
        in the same padded shape, so the same kernels; a capture (its warm-up runs, then the
        recording) would hold up every running request for tens of milliseconds, and on an
        H200 the steady state's joiners, in groups of 1-8 with lengths not seen before,
        spent 53 ms an admission. (Not in `batch_invariant` mode, whose solo prefills must
        run exactly as in a solo run.)"""
        if self.config.batch_invariant and len(prompts) > 1:
            # Alone, a prompt's products have the same shapes as in a solo run.
            for slot, prompt in zip(slots, prompts, strict=True):
                self.prefill([slot], [prompt])
            return
        self._prefill_embeds(slots, [p.inputs_embeds for p in prompts], capture)

    def warm_prefills(self, lengths: list[int]) -> int:
        """Capture the prefill graph of one prompt at each padded length of `lengths`
        (multiples of `step.PREFILL_BUCKET`), so a lone request joining an idle engine never
        waits for a capture: on an H200 a capture for a length not seen before held a
        request's first audio up by 0.4-0.9 s. Zeros run through slot 0, so call it while
        no request runs (`Scheduler.exclusive`). Returns the graphs captured (0 without
        CUDA graphs)."""
        if not self.execution.graphed:
            return 0
        hidden = self.state.hidden.shape[-1]
        captured = 0
        for length in lengths:
            if (1, length) in self.prefill_graphs:
                continue
            embeds = torch.zeros((1, length, hidden), dtype=self.model.dtype, device=self.device)
            self._prefill_embeds([0], [embeds], capture=True)
            captured += 1
        return captured

    def _prefill_embeds(self, slots: list[int], embeds: list[torch.Tensor], capture: bool) -> None:
        """`prefill` of prompt embeddings (1, P_j, H) into `slots`."""
        if not self.execution.graphed:
            eager_prefill(
                self.model, self.state, embeds, slots, self.scratch, self.prompt_functions
            )
            return
        # A graph per prompt count would mean max_prefill_batch captures per length: the
        # group is padded to a power of two by repeating its last prompt into its slot
        # (the copies compute the same rows, so which one lands last does not matter).
        count = len(embeds)
        group = prefill_group(count, self.scratch.talker_cache.batch)
        embeds = embeds + [embeds[-1]] * (group - count)
        slots = list(slots) + [slots[-1]] * (group - len(slots))
        padded, last = pad_prompts(self.model, embeds)
        key = (group, padded.shape[1])
        if key not in self.prefill_graphs and not (capture or self.config.batch_invariant):
            self.uncaptured_prefills += 1
            rows = to_device(slots, torch.long, self.device)
            prefill(self.model, self.state, padded, last, rows, self.scratch, self.prompt_functions)
            return
        if key not in self.prefill_graphs:
            # Capture with this call's inputs: the warm-up runs then write only the
            # joining slots' rows, which the replay below fills for real.
            buf, last_buf = padded.clone(), last.clone()
            slots_buf = torch.tensor(slots, device=self.device)
            graph = capture_graph(
                lambda: prefill(
                    self.model,
                    self.state,
                    buf,
                    last_buf,
                    slots_buf,
                    self.scratch,
                    self.prompt_functions,
                )
            )
            self.prefill_graphs[key] = (graph, buf, last_buf, slots_buf)
        graph, buf, last_buf, slots_buf = self.prefill_graphs[key]
        buf.copy_(padded)
        last_buf.copy_(last)
        slots_buf.copy_(to_device(slots, torch.long, self.device))
        graph.replay()

    # ---- running frames ---------------------------------------------------------------
    def step(self, m: StaticModel, mode: SamplingMode) -> Callable[[], None]:
        """One frame of the rows of view `m`: a graph replay (captured on first use) or a call."""
        rows = m.talker_cache.batch
        state = self.state.rows(rows)
        talker, sub = self.talker_sampling.rows(rows), self.sub_sampling.rows(rows)
        generators = self.generators[:rows]
        streams = self.streams.rows(rows) if self.streams is not None else None

        def run() -> None:
            if streams is not None:  # the streams carry which rows draw
                frame_step(m, state, self.functions, talker, sub, mode, streams)
                return
            drawing = [d[0] for d in self.drawing[:rows]], [d[1] for d in self.drawing[:rows]]
            frame_step(m, state, self.functions, talker, sub, mode, generators, drawing)

        def replay_all_draws() -> None:
            frame_step(m, state, self.functions, talker, sub, mode, generators)

        if not self.execution.graphed:
            return run
        # a graph of torch draws draws for every row; run_block moves streams back
        run = replay_all_draws if streams is None else run
        key = (rows, m.talker_cache.max_len, mode)
        if key not in self.frame_graphs:
            log.info(
                "capturing frame graph: %d rows, window %d, %s (%s)",
                rows, key[1], mode, self.execution.name,
            )  # fmt: skip
            warmup = 3 if self.execution.compiled else 2
            registered = generators if streams is None else ()
            with self.preserved():
                graph = capture_graph(run, warmup=warmup, generators=registered)
            self.frame_graphs[key] = graph
        replay = self.frame_graphs[key].replay
        rewind = self._rewinds(rows, mode) if streams is None else []
        if not rewind:
            return replay

        def replay_and_rewind() -> None:
            replay()
            for generator, offset in rewind:
                generator.set_offset(generator.get_offset() - offset)

        return replay_and_rewind

    def _rewinds(self, rows: int, mode: SamplingMode) -> list[tuple[torch.Generator, int]]:
        """(generator, offset) of the rows whose request is greedy on a side the graph
        samples: after each replay their stream goes back by what that side drew, so it
        stands where the reference's (which made no such draw) would."""
        talker, sub = self.draw_offsets
        out = []
        for generator, (draws_talker, draws_sub) in zip(
            self.generators[:rows], self.drawing[:rows], strict=True
        ):
            offset = (talker if mode.do_sample and not draws_talker else 0) + (
                sub if mode.sub_do_sample and not draws_sub else 0
            )
            if offset:
                out.append((generator, offset))
        return out

    @contextmanager
    def preserved(self) -> Iterator[None]:
        """Put the frame state and the random streams back after a capture's warm-up runs,
        so a graph can be captured while requests are running in the slots. (The cache
        entries the warm-up writes lie at or past each row's position, and every frame
        writes its position before any query reads it.)"""
        saved = self.state.snapshot()
        streams = [g.get_state() for g in self.generators]
        offsets = self.streams.offset.clone() if self.streams is not None else None
        try:
            yield
        finally:
            self.state.restore(saved)
            if offsets is not None:
                self.streams.offset.copy_(offsets)
            for g, state in zip(self.generators, streams, strict=True):
                g.set_state(state)

    def run_block(
        self,
        step: Callable[[], None],
        rows: int,
        n: int,
        stop: Callable[[], bool] | None = None,
        min_frames: int = 1,
    ) -> torch.Tensor:
        """Up to n frames of `step`; returns the (rows, frames run, 16) int64 codes on the
        CPU (the one host sync of a block). On CUDA, `gpu_s` adds the GPU time from the
        block's first launch to its last (with whatever else ran on the stream in between):
        against the scheduler's wall time for the block, it tells the GPU's share from the
        host's.

        `stop`: asked after each frame from `min_frames` on; True ends the block there (a
        request waiting to join then waits a frame or two, not a whole block). On CUDA the
        launches are then paced to `LAUNCH_AHEAD` frames ahead of the GPU: launched all at
        once, the block's frames would all be queued before the first one ran, and nothing
        could end it early."""
        cuda = self.device.type == "cuda"
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        self.state.block_index.zero_()
        marks: list[torch.cuda.Event] = []
        frames = 0
        while frames < n:
            step()
            frames += 1
            if stop is None or frames == n:
                continue
            if cuda:
                marks.append(torch.cuda.Event())
                marks[-1].record()
                if len(marks) > LAUNCH_AHEAD:
                    marks[-1 - LAUNCH_AHEAD].synchronize()
            if frames >= min_frames and stop():
                break
        if cuda:
            end.record()
        codes = self.state.block_codes[:rows, :frames].to("cpu", copy=True)
        if cuda:
            self.gpu_s += start.elapsed_time(end) / 1000  # both done: the copy waited
        return codes

    def final_token_is_eos(self, slot: int, params: SamplingParams) -> bool:
        """The reference samples one more codebook-0 token after the last full frame; do the
        same for a slot that ended at its limit, so `eos_reached` agrees."""
        return self.final_tokens_are_eos([(slot, params)])[0]

    def final_tokens_are_eos(self, ends: list[tuple[int, SamplingParams]]) -> list[bool]:
        """`final_token_is_eos` for every (slot, params) that ended at its limit in a block,
        with two host syncs in all instead of two per slot: at batch 256 every request of
        a wave ends in the same block."""
        if not ends:
            return []
        slots = [slot for slot, _ in ends]
        offsets = None
        if self.streams is not None and self.device.type == "cuda":  # they moved on the device
            offsets = self.streams.offset[slots].tolist()
        tokens = []
        for i, (slot, params) in enumerate(ends):
            s = SamplingTensors(self.device).load_talker(params)
            row = slice(slot, slot + 1)
            scores = apply_penalties(
                talker_logits(self.model, self.state.hidden[row]),
                s,
                presence=self.state.presence[row],
                blocked=self.model.suppress_mask,
                eos_id=self.model.eos_id,
                step=self.state.step[row],
            )
            generators = [self.generators[slot]]
            if offsets is not None:
                generators[0].set_offset(offsets[i])
            tokens.append(sample_token(scores, s, params.do_sample, generators=generators).view(()))
        return [token == self.model.eos_id for token in torch.stack(tokens).tolist()]
