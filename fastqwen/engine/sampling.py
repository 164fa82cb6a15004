"""Token sampling that makes the same random draws as Hugging Face `generate`.

The reference applies, in order: repetition penalty, EOS suppression before
`min_new_tokens`, the suppressed-token mask, then (sampling only) temperature, top-k,
top-p, softmax and one `torch.multinomial` draw. We keep that order and make that
draw, so the same seed gives the same codes. Every numeric parameter is a device tensor, so
changing it needs no graph recapture; `do_sample` is structural because a greedy pick
makes no draw, and the number of draws must match the reference.

top-k is always applied (top_k = 0 means the whole vocabulary). top-p runs only when
top_p < 1 (a `SamplingMode` flag); at top_p = 1 it would remove only tokens whose
probability is already exactly zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastqwen.config import SamplingParams
from fastqwen.device import to_device


@dataclass(frozen=True)
class SamplingMode:
    """The structural part of sampling, fixed per captured graph.

    `do_sample` decides whether random draws are made at all (the reference makes none
    when greedy), and top-p costs a second sort that top_p = 1 never needs; everything
    numeric lives in `SamplingTensors`. A batch runs in the union of its rows' modes: a
    greedy row of a sampling batch picks its argmax (`pick_token`), and top-p at 1.0 keeps
    every token that has any probability.
    """

    do_sample: bool = True
    top_p: bool = False
    sub_do_sample: bool = True
    sub_top_p: bool = False

    @classmethod
    def of(cls, p: SamplingParams) -> SamplingMode:
        return cls(p.do_sample, p.top_p < 1.0, p.subtalker_dosample, p.subtalker_top_p < 1.0)

    @classmethod
    def union(cls, params: list[SamplingParams]) -> SamplingMode:
        """The mode that serves every row of a batch."""
        modes = [cls.of(p) for p in params] or [cls()]
        return cls(*(any(getattr(m, f) for m in modes) for f in cls.__dataclass_fields__))


def talker_values(p: SamplingParams) -> tuple:
    """A talker row of `SamplingTensors`: (temperature, top_k, top_p, repetition_penalty,
    min_new_tokens, do_sample)."""
    return (p.temperature, p.top_k, p.top_p, p.repetition_penalty, p.min_new_tokens, p.do_sample)


def subtalker_values(p: SamplingParams) -> tuple:
    """A sub-talker row, in `talker_values`' order: no penalty, no EOS."""
    return (
        p.subtalker_temperature, p.subtalker_top_k, p.subtalker_top_p, 1.0, 0,
        p.subtalker_dosample,
    )  # fmt: skip


class SamplingTensors:
    """Device-side copies of the sampling parameters of one side (talker or sub-talker),
    one row per batch slot.

    Every numeric parameter is a (B, 1) or (B,) tensor, so rows sample with their own
    settings in one graph, and a new request loads its row without a recapture.
    """

    def __init__(self, device: torch.device | str, batch: int = 1):
        self.temperature = torch.ones((batch, 1), device=device)
        self.top_k = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.top_p = torch.ones((batch, 1), device=device)
        self.repetition_penalty = torch.ones((batch, 1), device=device)
        self.min_new_tokens = torch.zeros((batch,), dtype=torch.long, device=device)
        self.do_sample = torch.ones((batch,), dtype=torch.bool, device=device)

    def load_talker(self, p: SamplingParams, row: int = 0) -> SamplingTensors:
        """Codebook-0 sampling: all of the talker's parameters."""
        self._fill(row, *talker_values(p))
        return self

    def load_subtalker(self, p: SamplingParams, row: int = 0) -> SamplingTensors:
        """Codebooks 1..15: the reference's code predictor has no penalty and no EOS."""
        self._fill(row, *subtalker_values(p))
        return self

    def load_rows(self, index: torch.Tensor, values: list[tuple]) -> None:
        """Rows `index` (a device tensor) set to `values`, one `talker_values` or
        `subtalker_values` tuple per row: two host-to-device copies and six indexed writes
        for any number of rows, where `_fill` makes six launches per row (a burst of 64
        joiners was ~400 small ops, each taking the GIL beside 64 reader threads)."""
        device = self.temperature.device
        floats = to_device(
            [(t, p, r) for t, _, p, r, _, _ in values], self.temperature.dtype, device
        )
        longs = to_device([(k, m, int(d)) for _, k, _, _, m, d in values], torch.long, device)
        self.temperature.index_copy_(0, index, floats[:, 0:1])
        self.top_p.index_copy_(0, index, floats[:, 1:2])
        self.repetition_penalty.index_copy_(0, index, floats[:, 2:3])
        self.top_k.index_copy_(0, index, longs[:, 0:1])
        self.min_new_tokens.index_copy_(0, index, longs[:, 1])
        self.do_sample.index_copy_(0, index, longs[:, 2].bool())

    def rows(self, count: int) -> SamplingTensors:
        """The first `count` rows (views), for a batch bucket."""
        view = object.__new__(SamplingTensors)
        for name, value in vars(self).items():
            setattr(view, name, value[:count])
        return view

    def _fill(
        self,
        row: int,
        temperature: float,
        top_k: int,
        top_p: float,
        repetition_penalty: float,
        min_new_tokens: int,
        do_sample: bool,
    ) -> None:
        self.temperature[row].fill_(temperature)
        self.top_k[row].fill_(top_k)
        self.top_p[row].fill_(top_p)
        self.repetition_penalty[row].fill_(repetition_penalty)
        self.min_new_tokens[row].fill_(min_new_tokens)
        self.do_sample[row].fill_(do_sample)


def apply_penalties(
    scores: torch.Tensor,
    s: SamplingTensors,
    *,
    presence: torch.Tensor,
    blocked: torch.Tensor,
    eos_id: int,
    step: torch.Tensor,
) -> torch.Tensor:
    """Logit processors of the talker, in the reference's order.

    Args:
        scores: (B, V) float32 logits.
        presence: (B, V) bool, tokens generated so far (repetition penalty).
        blocked: (1, V) bool, tokens that are never sampled.
        step: (B,) int64, number of tokens each row has generated so far.
    """
    penalized = torch.where(
        scores < 0, scores * s.repetition_penalty, scores / s.repetition_penalty
    )
    scores = torch.where(presence, penalized, scores)
    eos_blocked = step < s.min_new_tokens
    scores = scores.clone()
    scores[:, eos_id] = torch.where(eos_blocked, float("-inf"), scores[:, eos_id])
    return scores.masked_fill(blocked, float("-inf"))


def warp_scores(
    scores: torch.Tensor, s: SamplingTensors, top_p: bool, top_k: Callable
) -> torch.Tensor:
    """Temperature, top-k and (if `top_p`) top-p on (B, V) float32 scores, as HF orders them.

    `top_k` computes the top-k mask: `in_top_k`, or another form of it (`Ops.top_k`).
    """
    scores = scores / s.temperature
    scores = scores.masked_fill(~top_k(scores, s.top_k), float("-inf"))
    if top_p:
        scores = _nucleus(scores, s.top_p)
    return scores


def _top_k_count(scores: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """k from `top_k` ((B, 1) or 0-d): V when top_k is 0 (keep all) or above V."""
    vocab = scores.shape[-1]
    return torch.where((top_k <= 0) | (top_k > vocab), vocab, top_k)


def in_top_k(scores: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """(B, V) bool: scores >= the k-th largest score of the row (HF's top-k test, ties
    kept), where k is the row's `top_k` ((B, 1), or 0-d for all rows), or V when top_k is 0
    (keep all) or above V.

    The k-th value is read off a sort, as the reference does.
    """
    k = _top_k_count(scores, top_k).expand(scores.shape[0], 1)
    kth = scores.sort(dim=-1, descending=True).values.gather(-1, k - 1)
    return scores >= kth


def in_top_k_counted(scores: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """`in_top_k` without a sort: a score is at least the k-th largest exactly when fewer
    than k scores are strictly larger, so count those (a V x V comparison that Inductor
    fuses into one reduction). Only comparisons, no arithmetic: the same mask."""
    larger = (scores.unsqueeze(-2) > scores.unsqueeze(-1)).sum(-1)  # (B, V)
    return larger < _top_k_count(scores, top_k)


def _as_int64(seed: int) -> int:
    """torch keeps a generator's seed as uint64; the seed tensor holds int64."""
    seed %= 2**64
    return seed - 2**64 if seed >= 2**63 else seed


class RowStreams:
    """Each slot's random stream as device tensors: the seed and Philox offset of the CUDA
    generator the slot's request would draw from, and whether it samples codebook 0 and
    codebooks 1..15. `draw_noise` then fills every row in one launch
    (`triton.philox_noise`), inside a graph, moving only the drawing rows' offsets, exactly
    as the rows' own generators would move."""

    def __init__(self, device: torch.device | str, batch: int):
        self.seed = torch.zeros((batch,), dtype=torch.long, device=device)
        self.offset = torch.zeros((batch,), dtype=torch.long, device=device)
        self.talker = torch.ones((batch,), dtype=torch.bool, device=device)
        self.sub = torch.ones((batch,), dtype=torch.bool, device=device)

    def load(self, row: int, seed: int, talker: bool, sub: bool) -> None:
        """A new request in `row`: its generator freshly seeded (offset 0)."""
        self.load_rows(to_device([row], torch.long, self.seed.device), [(seed, talker, sub)])

    def load_rows(self, index: torch.Tensor, rows: list[tuple[int, bool, bool]]) -> None:
        """`load` for the rows `index` (a device tensor), one (seed, talker, sub) each, in
        one host-to-device copy."""
        values = to_device(
            [(_as_int64(seed), int(t), int(s)) for seed, t, s in rows], torch.long, index.device
        )
        self.seed.index_copy_(0, index, values[:, 0])
        self.offset.index_fill_(0, index, 0)
        self.talker.index_copy_(0, index, values[:, 1].bool())
        self.sub.index_copy_(0, index, values[:, 2].bool())

    def rows(self, count: int) -> RowStreams:
        view = object.__new__(RowStreams)
        for name, value in vars(self).items():
            setattr(view, name, value[:count])
        return view


def draw_noise(
    vocab: int,
    device: torch.device,
    generators: list[torch.Generator] | RowStreams | None = None,
    drawing: list[bool] | torch.Tensor | None = None,
) -> torch.Tensor:
    """The (B, V) exponential variates `torch.multinomial` draws for one sample per row.

    Each row draws from its own generator (its request's seeded stream), one call per
    token as the reference makes them, so each stream advances exactly as the reference's
    would alone; the arithmetic on them can then be fused (`pick_token`). Without
    generators, one row from torch's default generator. `drawing` (eager runs) leaves out
    the rows whose request is greedy on this side: the reference makes no draw there, so
    neither may the row's stream (a graph draws for every row, and the runner moves those
    streams back instead: `FrameRunner.run_block`).
    """
    if generators is None:
        return torch.empty((1, vocab), dtype=torch.float32, device=device).exponential_(1)
    if isinstance(generators, RowStreams):
        from fastqwen.engine.triton.philox_noise import (
            device_grid_cap,
            exponential_rows,
            philox_increment,
        )

        increment = philox_increment(vocab, device_grid_cap(torch.device(device)))
        s = generators
        return exponential_rows(s.seed, s.offset, drawing, vocab, increment)
    noise = torch.ones((len(generators), vocab), dtype=torch.float32, device=device)
    for i, (row, generator) in enumerate(zip(noise, generators, strict=True)):
        if drawing is None or drawing[i]:
            row.exponential_(1, generator=generator)
    return noise


def pick_token(
    scores: torch.Tensor,
    do_sample: bool,
    noise: torch.Tensor | None = None,
    *,
    greedy_scores: torch.Tensor | None = None,
    sampled: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, V) scores -> (B,) tokens: argmax when greedy (no draw), else the sample
    `torch.multinomial(softmax(scores), 1)` gives for that `noise`: argmax of p / noise,
    without multinomial's validity checks (a dozen kernels each time).

    In a batch that samples, rows whose `sampled` flag (B,) is off take the argmax of
    their `greedy_scores` (the scores before warping), as the reference's greedy does.
    """
    if not do_sample:
        return scores.argmax(dim=-1)
    tokens = (scores.softmax(dim=-1) / noise).argmax(dim=-1)
    if sampled is None:
        return tokens
    return torch.where(sampled, tokens, greedy_scores.argmax(dim=-1))


def sample_token(
    scores: torch.Tensor,
    s: SamplingTensors,
    do_sample: bool,
    top_p: bool = True,
    generators: list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Pick one token per row from processed (B, V) float32 scores; returns (B,) int64.

    top_p=False skips the nucleus filter (only valid when the tensor holds 1.0).
    """
    noise = None
    greedy = scores
    if do_sample:
        scores = warp_scores(scores, s, top_p, in_top_k)
        noise = draw_noise(scores.shape[-1], scores.device, generators)
    return pick_token(scores, do_sample, noise, greedy_scores=greedy, sampled=s.do_sample)


def _nucleus(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """top-p as Hugging Face does it: drop the low tail whose total probability is <= 1 - top_p."""
    ascending, order = scores.sort(dim=-1, descending=False)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - top_p)
    drop_sorted[..., -1:] = False  # always keep the best token
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))
