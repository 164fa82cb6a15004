"""The functions a frame spends its time in, grouped so the CUDA path can fuse them.

On the CPU they run as plain functions. On CUDA `FrameKernels.compiled()` wraps each in
`torch.compile`: one graph per input shape, shared by every layer of a decoder and every
codebook head, so compile time stays in tens of seconds. The random draw itself
(`sampling.draw`) stays eager, so it consumes the generator exactly as the reference does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layers import decoder_layer, rms_norm
from .sampling import SamplingTensors, apply_penalties, warp_scores


def talker_scores(
    hidden: torch.Tensor,
    head: torch.Tensor,
    s: SamplingTensors,
    presence: torch.Tensor,
    blocked: torch.Tensor,
    eos_id: int,
    step: torch.Tensor,
    do_sample: bool,
    top_p: bool,
) -> torch.Tensor:
    """Codebook-0 scores, ready to draw from: head, float32 cast, penalties, then the warp."""
    logits = F.linear(hidden[:, -1], head).float()
    scores = apply_penalties(
        logits, s, presence=presence, blocked=blocked, eos_id=eos_id, step=step
    )
    return warp_scores(scores, s, top_p) if do_sample else scores


def predictor_scores(
    hidden: torch.Tensor, head: torch.Tensor, s: SamplingTensors, do_sample: bool, top_p: bool
) -> torch.Tensor:
    """Scores of one of codebooks 1..15 from the predictor's (1, Hp) hidden state."""
    logits = F.linear(hidden, head).float()
    return warp_scores(logits, s, top_p) if do_sample else logits


def compile_fused(fn: Callable) -> Callable:
    """`torch.compile` tuned for one-token decode on the GPU.

    Coordinate-descent tuning makes Inductor write each (1, K) x (K, N) product as a
    Triton reduction that fuses with the elementwise work around it instead of a cuBLAS
    call plus separate kernels; float32 division is rounded as in eager mode, so the
    sampling warp sees the same numbers as the reference.
    """
    options = {"coordinate_descent_tuning": True, "eager_numerics.division_rounding": True}
    return torch.compile(fn, dynamic=False, fullgraph=True, options=options)


@dataclass(frozen=True)
class FrameKernels:
    layer: Callable = decoder_layer
    final_norm: Callable = rms_norm
    talker_scores: Callable = talker_scores
    predictor_scores: Callable = predictor_scores

    @classmethod
    def compiled(cls) -> FrameKernels:
        # the layer has a graph per talker cache window (up to 5) plus two predictor shapes
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 16)
        return cls(
            compile_fused(decoder_layer),
            compile_fused(rms_norm),
            compile_fused(talker_scores),
            compile_fused(predictor_scores),
        )


EAGER = FrameKernels()
