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


@dataclass(frozen=True)
class SamplingMode:
    """The structural part of sampling, fixed per captured graph.

    `do_sample` decides whether a random draw is made at all (the reference makes none
    when greedy), and top-p costs a second sort that top_p = 1 never needs; everything
    numeric lives in `SamplingTensors`.
    """

    do_sample: bool = True
    top_p: bool = False
    sub_do_sample: bool = True
    sub_top_p: bool = False

    @classmethod
    def of(cls, p: SamplingParams) -> SamplingMode:
        return cls(p.do_sample, p.top_p < 1.0, p.subtalker_dosample, p.subtalker_top_p < 1.0)


class SamplingTensors:
    """Device-side copies of the sampling parameters for one side (talker or sub-talker)."""

    def __init__(self, device: torch.device | str):
        self.temperature = torch.ones((), device=device)
        self.top_k = torch.zeros((), dtype=torch.long, device=device)
        self.top_p = torch.ones((), device=device)
        self.repetition_penalty = torch.ones((), device=device)
        self.min_new_tokens = torch.zeros((), dtype=torch.long, device=device)

    def load_talker(self, p: SamplingParams) -> SamplingTensors:
        """Codebook-0 sampling: all of the talker's parameters."""
        self._fill(p.temperature, p.top_k, p.top_p, p.repetition_penalty, p.min_new_tokens)
        return self

    def load_subtalker(self, p: SamplingParams) -> SamplingTensors:
        """Codebooks 1..15: the reference's code predictor has no penalty and no EOS."""
        self._fill(p.subtalker_temperature, p.subtalker_top_k, p.subtalker_top_p, 1.0, 0)
        return self

    def _fill(
        self,
        temperature: float,
        top_k: int,
        top_p: float,
        repetition_penalty: float,
        min_new_tokens: int,
    ) -> None:
        self.temperature.fill_(temperature)
        self.top_k.fill_(top_k)
        self.top_p.fill_(top_p)
        self.repetition_penalty.fill_(repetition_penalty)
        self.min_new_tokens.fill_(min_new_tokens)


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
        scores: (1, V) float32 logits.
        presence: (1, V) bool, tokens generated so far (repetition penalty).
        blocked: (1, V) bool, tokens that are never sampled.
        step: () int64, number of tokens generated so far.
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
    """Temperature, top-k and (if `top_p`) top-p on (1, V) float32 scores, as HF orders them.

    `top_k` computes the top-k mask: `in_top_k`, or another form of it (`Ops.top_k`).
    """
    scores = scores / s.temperature
    scores = scores.masked_fill(~top_k(scores, s.top_k), float("-inf"))
    if top_p:
        scores = _nucleus(scores, s.top_p)
    return scores


def _top_k_count(scores: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """k from the 0-d `top_k`: V when top_k is 0 (keep all) or above V."""
    vocab = scores.shape[-1]
    return torch.where((top_k <= 0) | (top_k > vocab), vocab, top_k)


def in_top_k(scores: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """(1, V) bool: scores >= the k-th largest score (HF's top-k test, ties kept), where
    k is the 0-d `top_k`, or V when top_k is 0 (keep all) or above V.

    The k-th value is read off a sort, as the reference does.
    """
    k = _top_k_count(scores, top_k)
    kth = scores.sort(dim=-1, descending=True).values.gather(-1, (k - 1).view(1, 1))
    return scores >= kth


def in_top_k_counted(scores: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """`in_top_k` without a sort: a score is at least the k-th largest exactly when fewer
    than k scores are strictly larger, so count those (a V x V comparison that Inductor
    fuses into one reduction). Only comparisons, no arithmetic: the same mask."""
    larger = (scores.unsqueeze(-2) > scores.unsqueeze(-1)).sum(-1)  # (1, V)
    return larger < _top_k_count(scores, top_k)


def draw_noise(vocab: int, device: torch.device) -> torch.Tensor:
    """The (1, V) exponential variates `torch.multinomial` draws for one sample.

    Made eagerly, one call per token as the reference makes them, so the generator
    advances identically; the arithmetic on them can then be fused (`pick_token`).
    """
    return torch.empty((1, vocab), dtype=torch.float32, device=device).exponential_(1)


def pick_token(
    scores: torch.Tensor, do_sample: bool, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """(1, V) scores -> (1,) token: argmax when greedy (no draw), else the sample
    `torch.multinomial(softmax(scores), 1)` gives for that `noise`: argmax of p / noise,
    without multinomial's validity checks (a dozen kernels each time)."""
    if not do_sample:
        return scores.argmax(dim=-1)
    return (scores.softmax(dim=-1) / noise).argmax(dim=-1)


def sample_token(
    scores: torch.Tensor, s: SamplingTensors, do_sample: bool, top_p: bool = True
) -> torch.Tensor:
    """Pick one token from processed (1, V) float32 scores; returns (1,) int64.

    top_p=False skips the nucleus filter (only valid when the tensor holds 1.0).
    """
    noise = None
    if do_sample:
        scores = warp_scores(scores, s, top_p, in_top_k)
        noise = draw_noise(scores.shape[-1], scores.device)
    return pick_token(scores, do_sample, noise)


def _nucleus(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """top-p as Hugging Face does it: drop the low tail whose total probability is <= 1 - top_p."""
    ascending, order = scores.sort(dim=-1, descending=False)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - top_p)
    drop_sorted[..., -1:] = False  # always keep the best token
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))
