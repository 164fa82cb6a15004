"""The functions a frame spends its time in, grouped so the CUDA path can fuse them.

On the CPU they run as plain functions. On CUDA `FrameKernels.compiled()` wraps each in
`torch.compile`: one graph per input shape, shared by every layer of a decoder and every
codebook, so compile time stays around a minute. The random variates themselves
(`sampling.draw_noise`) are made eagerly, one call per token as in the reference, so the
generator advances identically; everything computed from them is fused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastqwen.engine.layers import decoder_layer, linear, mlp_down, norm_linear, project, rms_norm
from fastqwen.engine.sampling import SamplingTensors, apply_penalties, pick_token, warp_scores


def talker_token(
    hidden: torch.Tensor,
    head: torch.Tensor,
    noise: torch.Tensor | None,
    s: SamplingTensors,
    presence: torch.Tensor,
    blocked: torch.Tensor,
    eos_id: int,
    step: torch.Tensor,
    do_sample: bool,
    top_p: bool,
) -> torch.Tensor:
    """Codebook 0 from the talker's (1, 1, H) hidden state: head, float32 cast, penalties,
    warp, pick; also marks the token in `presence` for the repetition penalty."""
    logits = linear(hidden[:, -1:], head)[:, -1].float()
    scores = apply_penalties(
        logits, s, presence=presence, blocked=blocked, eos_id=eos_id, step=step
    )
    if do_sample:
        scores = warp_scores(scores, s, top_p)
    tok = pick_token(scores, do_sample, noise)
    presence.scatter_(1, tok.view(1, 1), True)
    return tok


def predictor_token(
    hidden: torch.Tensor,
    final_norm: torch.Tensor,
    head: torch.Tensor,
    eps: float,
    noise: torch.Tensor | None,
    s: SamplingTensors,
    do_sample: bool,
    top_p: bool,
) -> torch.Tensor:
    """One of codebooks 1..15 from the predictor's (1, Hp) hidden state before its final
    norm (folded into the head's product)."""
    scores = norm_linear(hidden.unsqueeze(1), final_norm, head, eps)[:, -1].float()
    if do_sample:
        scores = warp_scores(scores, s, top_p)
    return pick_token(scores, do_sample, noise)


def embed_code(
    tok: torch.Tensor,
    table: torch.Tensor,
    slot: torch.Tensor,
    proj_weight: torch.Tensor | None,
    proj_bias: torch.Tensor | None,
) -> torch.Tensor:
    """Write the embedding of `tok` (1,) into `slot` (1, H) and return it as the
    predictor's next input (1, 1, Hp), through `small_to_mtp_projection` if it has one."""
    emb = F.embedding(tok, table)  # (1, H)
    slot.copy_(emb)
    return project(emb.unsqueeze(0), (proj_weight, proj_bias))


def compile_fused(fn: Callable, exact_division: bool = False) -> Callable:
    """`torch.compile` tuned for one-token decode on the GPU.

    Coordinate-descent tuning tunes each Triton reduction, which the (1, K) x (K, N)
    products become (`layers.linear`). `exact_division` rounds float32 division as eager
    mode does (Triton's default is approximate); the sampling kernels need it so the
    warp sees the reference's numbers, the layers do not pay for it.
    """
    options = {"coordinate_descent_tuning": True}
    if exact_division:
        options["eager_numerics.division_rounding"] = True
    return torch.compile(fn, dynamic=False, fullgraph=True, options=options)


@dataclass(frozen=True)
class FrameKernels:
    layer: Callable = decoder_layer
    mlp_down: Callable = mlp_down
    final_norm: Callable = rms_norm
    talker_token: Callable = talker_token
    predictor_token: Callable = predictor_token
    embed_code: Callable = embed_code

    @classmethod
    def compiled(cls) -> FrameKernels:
        # the layer has a graph per talker cache window (up to 5) plus two predictor shapes
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 16)
        return cls(
            layer=compile_fused(decoder_layer),
            mlp_down=compile_fused(mlp_down),
            final_norm=compile_fused(rms_norm),
            talker_token=compile_fused(talker_token, exact_division=True),
            predictor_token=compile_fused(predictor_token, exact_division=True),
            embed_code=compile_fused(embed_code),
        )


EAGER = FrameKernels()
