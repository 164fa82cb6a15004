"""One audio frame: the single function the whole engine loops over.

`frame_step` takes the talker's last hidden state and, in place:
samples codebook 0, runs the code predictor for codebooks 1..15 (one draw each),
sums the 16 codebook embeddings plus the next trailing-text embedding, and runs the
talker one position further. It has fixed shapes, keeps all state in preallocated
tensors and never syncs with the host, so the CUDA path captures it as one graph and
the CPU path runs it eagerly.

The functions a frame spends its time in (a decoder layer in two halves, and head,
penalties, warp and pick of each token) come as `FrameFunctions`: bound to one `Ops` set
and, on the compiled paths, `torch.compile`d. Each is compiled once per input shape and
shared by every layer of a decoder and every codebook, so compile time stays bounded.
The random variates themselves (`draw_noise`) are made eagerly, one call per token as in
the reference, so the generator advances identically; everything computed from them is
fused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from fastqwen.constants import NUM_CODEBOOKS
from fastqwen.engine.layers import (
    Positions,
    decoder_forward,
    decoder_layer,
    mlp_down,
    project,
    rms_norm,
)
from fastqwen.engine.model import DecoderWeights, StaticModel
from fastqwen.engine.ops import REFERENCE, Ops
from fastqwen.engine.sampling import (
    SamplingMode,
    SamplingTensors,
    apply_penalties,
    draw_noise,
    pick_token,
    warp_scores,
)

RECOMPILE_LIMIT = 16  # the layer has a graph per talker cache window plus two predictor shapes


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
    ops: Ops,
) -> torch.Tensor:
    """Codebook 0 from the talker's (1, 1, H) hidden state: head, float32 cast, penalties,
    warp, pick; also marks the token in `presence` for the repetition penalty."""
    logits = ops.linear(hidden[:, -1:], head)[:, -1].float()
    scores = apply_penalties(
        logits, s, presence=presence, blocked=blocked, eos_id=eos_id, step=step
    )
    if do_sample:
        scores = warp_scores(scores, s, top_p, ops.top_k)
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
    ops: Ops,
) -> torch.Tensor:
    """One of codebooks 1..15 from the predictor's (1, Hp) hidden state before its final
    norm (folded into the head's product)."""
    scores = ops.norm_linear(hidden.unsqueeze(1), final_norm, head, eps)[:, -1].float()
    if do_sample:
        scores = warp_scores(scores, s, top_p, ops.top_k)
    return pick_token(scores, do_sample, noise)


def embed_code(
    tok: torch.Tensor,
    table: torch.Tensor,
    slot: torch.Tensor,
    proj_weight: torch.Tensor | None,
    proj_bias: torch.Tensor | None,
    ops: Ops,
) -> torch.Tensor:
    """Write the embedding of `tok` (1,) into `slot` (1, H) and return it as the
    predictor's next input (1, 1, Hp), through `small_to_mtp_projection` if it has one."""
    emb = F.embedding(tok, table)  # (1, H)
    slot.copy_(emb)
    return project(emb.unsqueeze(0), (proj_weight, proj_bias), ops.linear)


def compile_fused(fn: Callable, exact_division: bool = False) -> Callable:
    """`torch.compile` tuned for one-token decode.

    Coordinate-descent tuning tunes each Triton reduction, which the (1, K) x (K, N)
    products become (`ops.fused_linear`). `exact_division` rounds float32 division as
    eager mode does (Triton's default is approximate); the sampling functions need it so
    the warp sees the reference's numbers, the layers do not pay for it.
    """
    options = {"coordinate_descent_tuning": True}
    if exact_division:
        options["eager_numerics.division_rounding"] = True
    return torch.compile(fn, dynamic=False, fullgraph=True, options=options)


@dataclass(frozen=True)
class FrameFunctions:
    """The functions a frame spends its time in, with one `Ops` set bound."""

    ops: Ops
    layer: Callable  # decoder_layer(x, kv, at, w, dims)
    mlp_down: Callable  # mlp_down(x, h, down)
    final_norm: Callable  # rms_norm(x, weight, eps)
    talker_token: Callable
    predictor_token: Callable
    embed_code: Callable
    compiled: bool = False

    @classmethod
    def of(cls, ops: Ops) -> FrameFunctions:
        """The plain functions, run eagerly."""
        return cls(
            ops=ops,
            layer=partial(decoder_layer, ops=ops),
            mlp_down=partial(mlp_down, ops=ops),
            final_norm=rms_norm,
            talker_token=partial(talker_token, ops=ops),
            predictor_token=partial(predictor_token, ops=ops),
            embed_code=partial(embed_code, ops=ops),
        )

    def compile(self) -> FrameFunctions:
        """Each function wrapped in `compile_fused` (compiled on first call per shape)."""
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, RECOMPILE_LIMIT)
        return FrameFunctions(
            ops=self.ops,
            layer=_compiled(self.layer),
            mlp_down=_compiled(self.mlp_down),
            final_norm=_compiled(self.final_norm),
            talker_token=_compiled(self.talker_token, exact_division=True),
            predictor_token=_compiled(self.predictor_token, exact_division=True),
            embed_code=_compiled(self.embed_code),
            compiled=True,
        )


def _compiled(fn: Callable, exact_division: bool = False) -> Callable:
    """`compile_fused` on the function itself, its bound op set passed on at each call.

    Compiling the `partial` would give all six functions one shared Dynamo frame (the
    wrapper that calls a partial), so their graphs would fill one cache and its recompile
    limit together; compiled one by one, each keeps its own.
    """
    if isinstance(fn, partial):
        return partial(compile_fused(fn.func, exact_division), *fn.args, **fn.keywords)
    return compile_fused(fn, exact_division)


REFERENCE_FUNCTIONS = FrameFunctions.of(REFERENCE)


class FrameState:
    """Everything that changes from frame to frame, preallocated once per engine."""

    def __init__(self, m: StaticModel, max_frames: int):
        dev, dt = m.device, m.dtype
        hidden = m.codec_head.shape[1]
        self.max_frames = max_frames
        self.hidden = torch.zeros((1, 1, hidden), dtype=dt, device=dev)  # talker output, post-norm
        self.pos = torch.zeros((1,), dtype=torch.long, device=dev)  # next talker position
        self.step = torch.zeros((), dtype=torch.long, device=dev)  # frames generated so far
        self.presence = torch.zeros((1, m.vocab_size), dtype=torch.bool, device=dev)
        self.codes = torch.zeros((max_frames, NUM_CODEBOOKS), dtype=torch.long, device=dev)
        self.trailing = torch.zeros((1, max_frames, hidden), dtype=dt, device=dev)
        self.embeds = torch.zeros((1, NUM_CODEBOOKS, hidden), dtype=dt, device=dev)

    def reset(self, prompt_len: int, trailing_text: torch.Tensor, pad: torch.Tensor) -> None:
        """Prepare for a new utterance; trailing text then tts_pad for every later frame."""
        n = min(trailing_text.shape[1], self.max_frames)
        self.trailing.copy_(pad.expand_as(self.trailing))
        self.trailing[:, :n].copy_(trailing_text[:, :n])
        self.pos.fill_(prompt_len)
        self.step.zero_()
        self.presence.zero_()
        self.codes.zero_()


def talker_logits(m: StaticModel, hidden: torch.Tensor) -> torch.Tensor:
    """(1, 1, H) hidden -> (1, V) float32 logits, cast after the head as HF generate does."""
    return F.linear(hidden[:, -1], m.codec_head).float()


def predictor_logits(m: StaticModel, j: int, hidden: torch.Tensor) -> torch.Tensor:
    """(1, Hp) predictor hidden, before the final norm -> (1, CODEBOOK_SIZE) float32 logits
    of codebook j + 1."""
    w = m.predictor
    return F.linear(rms_norm(hidden, w.final_norm, w.dims.eps), m.predictor_heads[j]).float()


def run_decoder(
    fns: FrameFunctions,
    w: DecoderWeights,
    x: torch.Tensor,
    at: Positions,
    cache,
    normed: bool = True,
) -> torch.Tensor:
    """`decoder_forward` with the frame's functions; normed=False skips the final norm
    (the predictor's heads fold it in)."""
    final_norm = fns.final_norm if normed else None
    return decoder_forward(w, x, at, cache, fns.layer, fns.mlp_down, final_norm)


PREFILL_BUCKET = 64  # prompts are padded to a multiple of this, so few prefill shapes exist


def padded_prompt_len(prompt_len: int, window: int) -> int:
    """Prompt length rounded up to the bucket, unless that would not fit the cache window."""
    padded = -(-prompt_len // PREFILL_BUCKET) * PREFILL_BUCKET
    return padded if padded <= window else prompt_len


def prefill(
    m: StaticModel, state: FrameState, inputs_embeds: torch.Tensor, last: torch.Tensor
) -> None:
    """Run the (padded) prompt through the talker; keep the hidden state at index `last`.

    The prompt runs the reference ops eagerly on every path (one call per utterance; the
    CUDA path replays it as a graph per bucket). Padding rows sit after the prompt, so
    causal attention keeps them out of every real row; the cache entries they write lie
    past the prompt and each is overwritten by a frame before any query can see it.

    Args:
        inputs_embeds: (1, P_padded, H) prompt embeddings, zero rows after the prompt.
        last: (1,) int64 index of the prompt's last token.
    """
    pos = torch.arange(inputs_embeds.shape[1], device=m.device)
    at = m.talker_positions(pos)
    out = run_decoder(REFERENCE_FUNCTIONS, m.talker, inputs_embeds, at, m.talker_cache)
    state.hidden.copy_(out.index_select(1, last))


def pad_prompt(m: StaticModel, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, P, H) prompt -> ((1, P_padded, H) zero-padded in the engine dtype, (1,) last index)."""
    p = inputs_embeds.shape[1]
    padded = torch.zeros(
        (1, padded_prompt_len(p, m.talker_cache.max_len), inputs_embeds.shape[2]),
        dtype=m.dtype,
        device=m.device,
    )
    padded[:, :p] = inputs_embeds
    return padded, torch.tensor([p - 1], device=m.device)


def eager_prefill(m: StaticModel, state: FrameState, inputs_embeds: torch.Tensor) -> None:
    prefill(m, state, *pad_prompt(m, inputs_embeds))


def predict_codebooks(
    m: StaticModel,
    state: FrameState,
    fns: FrameFunctions,
    cb0: torch.Tensor,
    pick: Callable[[int, torch.Tensor], torch.Tensor],
) -> list[torch.Tensor]:
    """Codebooks 1..15 from the talker hidden state and codebook 0; fills `state.embeds`.

    `pick(j, hidden)` chooses codebook j + 1 from the predictor's (1, Hp) last hidden
    state before its final norm, which the head folds in: sampling in `frame_step`, the
    given codes in teacher-forced parity checks.
    """
    embeds, at = state.embeds, m.predictor_positions
    embeds[:, 0].copy_(F.embedding(cb0, m.codec_embedding))
    x = torch.cat((state.hidden, embeds[:, :1]), dim=1)  # (1, 2, H)
    x = project(x, m.to_predictor, F.linear)  # (1, 2, Hp)
    out = run_decoder(fns, m.predictor, x, at[0], m.predictor_cache, normed=False)
    tokens = []
    for j in range(NUM_CODEBOOKS - 1):
        tok = pick(j, out[:, -1])  # (1,)
        tokens.append(tok)
        last = j + 1 == NUM_CODEBOOKS - 1
        proj = (None, None) if last else m.to_predictor
        x = fns.embed_code(tok, m.predictor_embeddings[j], embeds[:, j + 1], *proj)
        if not last:
            out = run_decoder(fns, m.predictor, x, at[j + 1], m.predictor_cache, normed=False)
    return tokens


def advance_talker(m: StaticModel, state: FrameState, fns: FrameFunctions) -> None:
    """Feed the frame's summed codebook embeddings (+ trailing text) to the talker; step += 1."""
    text = state.trailing.index_select(1, state.step.view(1))  # (1, 1, H)
    x = state.embeds.sum(dim=1, keepdim=True) + text
    at = m.talker_positions(state.pos)
    state.hidden.copy_(run_decoder(fns, m.talker, x, at, m.talker_cache))
    state.pos.add_(1)
    state.step.add_(1)


def frame_step(
    m: StaticModel,
    state: FrameState,
    fns: FrameFunctions,
    talker_sampling: SamplingTensors,
    sub_sampling: SamplingTensors,
    mode: SamplingMode,
) -> None:
    """Advance one frame in place: codes for frame `state.step`, then the next talker hidden."""
    noise = draw_noise(m.vocab_size, m.device) if mode.do_sample else None
    cb0 = fns.talker_token(
        state.hidden,
        m.codec_head,
        noise,
        talker_sampling,
        state.presence,
        m.suppress_mask,
        m.eos_id,
        state.step,
        mode.do_sample,
        mode.top_p,
    )  # (1,)

    def pick(j: int, hidden: torch.Tensor) -> torch.Tensor:
        head = m.predictor_heads[j]
        noise = draw_noise(head.shape[0], m.device) if mode.sub_do_sample else None
        w = m.predictor
        return fns.predictor_token(
            hidden,
            w.final_norm,
            head,
            w.dims.eps,
            noise,
            sub_sampling,
            mode.sub_do_sample,
            mode.sub_top_p,
        )

    rest = predict_codebooks(m, state, fns, cb0, pick)
    frame = torch.cat([cb0] + rest).view(1, NUM_CODEBOOKS)
    state.codes.index_copy_(0, state.step.view(1), frame)
    advance_talker(m, state, fns)
