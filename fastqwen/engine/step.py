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
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F

from fastqwen.constants import NUM_CODEBOOKS
from fastqwen.device import to_device
from fastqwen.engine.layers import (
    Positions,
    decoder_forward,
    decoder_layer,
    mlp_down,
    project,
    rms_norm,
)
from fastqwen.engine.model import DecoderWeights, StaticModel
from fastqwen.engine.ops import KERNELS, PROMPT, REFERENCE, Ops, prompt_rms_norm
from fastqwen.engine.sampling import (
    RowStreams,
    SamplingMode,
    SamplingTensors,
    apply_penalties,
    draw_noise,
    pick_token,
    warp_scores,
)

# The layer has a graph per (batch bucket, talker cache window) plus two predictor shapes
# per bucket; the runner raises the limit to what its buckets need (`recompile_limit`).
RECOMPILE_LIMIT = 16


def recompile_limit(buckets: int, windows: int) -> int:
    """Dynamo recompiles a function per input shape: enough for every bucket and window."""
    return max(RECOMPILE_LIMIT, buckets * (windows + 2) + 4)


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
    """Codebook 0 of each row from the talker's (B, 1, H) hidden state: head, float32 cast,
    penalties, warp, pick; also marks the token in `presence` for the repetition penalty."""
    logits = ops.linear(hidden[:, -1:], head)[:, -1].float()
    scores = apply_penalties(
        logits, s, presence=presence, blocked=blocked, eos_id=eos_id, step=step
    )
    tok = _pick(scores, s, noise, do_sample, top_p, ops)
    presence.scatter_(1, tok.view(-1, 1), True)
    return tok


def _pick(
    scores: torch.Tensor,
    s: SamplingTensors,
    noise: torch.Tensor | None,
    do_sample: bool,
    top_p: bool,
    ops: Ops,
) -> torch.Tensor:
    """Warp and pick each row's token from its (B, V) float32 scores: in one call where the
    op set has one (`Ops.sample`, not for top-p), else op by op."""
    if do_sample and not top_p and ops.sample is not None:
        return ops.sample(scores, s.temperature, s.top_k, noise, s.do_sample)
    greedy = scores
    if do_sample:
        scores = warp_scores(scores, s, top_p, ops.top_k)
    return pick_token(scores, do_sample, noise, greedy_scores=greedy, sampled=s.do_sample)


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
    """One of codebooks 1..15 of each row from the predictor's (B, Hp) hidden state before
    its final norm (folded into the head's product)."""
    scores = ops.norm_linear(hidden.unsqueeze(1), final_norm, head, eps)[:, -1].float()
    return _pick(scores, s, noise, do_sample, top_p, ops)


def embed_code(
    tok: torch.Tensor,
    table: torch.Tensor,
    slot: torch.Tensor,
    proj_weight: torch.Tensor | None,
    proj_bias: torch.Tensor | None,
    ops: Ops,
) -> torch.Tensor:
    """Write the embeddings of `tok` (B,) into `slot` (B, H) and return them as the
    predictor's next input (B, 1, Hp), through `small_to_mtp_projection` if it has one."""
    emb = F.embedding(tok, table)  # (B, H)
    slot.copy_(emb)
    return project(emb.unsqueeze(1), (proj_weight, proj_bias), ops.linear)


def compile_fused(fn: Callable, exact_division: bool = False, autotune: bool = True) -> Callable:
    """`torch.compile` tuned for one-token decode.

    `autotune`: coordinate-descent tuning of each Triton reduction, which the (1, K) x (K, N)
    products become (`ops.fused_linear`); it is most of a cold start's compile time
    (`EngineConfig.autotune`). `exact_division` rounds float32 division as eager mode does
    (Triton's default is approximate); the sampling functions need it so the warp sees the
    reference's numbers, the layers do not pay for it.
    """
    options = {"coordinate_descent_tuning": autotune}
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

    def compile(self, limit: int = RECOMPILE_LIMIT, autotune: bool = True) -> FrameFunctions:
        """Each function wrapped in `compile_fused` (compiled on first call per shape, up to
        `limit` shapes)."""
        tuned = partial(_compiled, autotune=autotune)
        current = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(current, limit)
        return FrameFunctions(
            ops=self.ops,
            layer=tuned(self.layer),
            mlp_down=tuned(self.mlp_down),
            final_norm=tuned(self.final_norm),
            talker_token=tuned(self.talker_token, exact_division=True),
            predictor_token=tuned(self.predictor_token, exact_division=True),
            embed_code=tuned(self.embed_code),
            compiled=True,
        )


def _compiled(fn: Callable, exact_division: bool = False, autotune: bool = True) -> Callable:
    """`compile_fused` on the function itself, its bound op set passed on at each call.

    Compiling the `partial` would give all six functions one shared Dynamo frame (the
    wrapper that calls a partial), so their graphs would fill one cache and its recompile
    limit together; compiled one by one, each keeps its own.
    """
    if isinstance(fn, partial):
        compiled = compile_fused(fn.func, exact_division, autotune)
        return partial(compiled, *fn.args, **fn.keywords)
    return compile_fused(fn, exact_division, autotune)


REFERENCE_FUNCTIONS = FrameFunctions.of(REFERENCE)
PROMPT_FUNCTIONS = replace(FrameFunctions.of(PROMPT), final_norm=prompt_rms_norm)


def frame_functions(ops: Ops) -> FrameFunctions:
    """The functions frames run with `ops`, uncompiled: with `ops.KERNELS` the final norm is
    the library's fused one as well (the reference's is six elementwise kernels)."""
    if ops is KERNELS:
        return replace(FrameFunctions.of(ops), final_norm=prompt_rms_norm)
    return FrameFunctions.of(ops)


def prompt_functions(frame_ops: Ops, dtype: torch.dtype) -> FrameFunctions:
    """The functions a prefill runs: the reference ones where the frames run the reference
    ops, or in float32 (where the engine keeps the reference's rounding), else `ops.PROMPT`'s
    (the frames' own fused ops are made for one or two tokens, not for a whole prompt)."""
    if frame_ops is REFERENCE or dtype == torch.float32:
        return REFERENCE_FUNCTIONS
    return PROMPT_FUNCTIONS


TRAILING_TEXT_MAX = 512  # trailing text tokens a slot holds (streaming-mode prompts)


class FrameState:
    """Everything that changes from frame to frame, for a batch of slots, preallocated once.

    Row b is slot b: its talker hidden state, next position, frame count, the tokens it
    has generated (repetition penalty), its trailing text and its frame's embeddings.
    `block_codes` collects each row's codes over one block of frames (`block_index`), so
    the host reads a block for every row with one copy.
    """

    def __init__(self, m: StaticModel, max_frames: int, batch: int = 1):
        dev, dt = m.device, m.dtype
        hidden = m.codec_head.shape[1]
        self.max_frames = max_frames
        self.trailing_max = min(max_frames, TRAILING_TEXT_MAX)
        self.hidden = torch.zeros((batch, 1, hidden), dtype=dt, device=dev)  # post-norm
        self.pos = torch.zeros((batch,), dtype=torch.long, device=dev)  # next talker position
        self.step = torch.zeros((batch,), dtype=torch.long, device=dev)  # frames generated
        self.presence = torch.zeros((batch, m.vocab_size), dtype=torch.bool, device=dev)
        self.block_codes = torch.zeros(
            (batch, max_frames, NUM_CODEBOOKS), dtype=torch.long, device=dev
        )
        self.block_index = torch.zeros((), dtype=torch.long, device=dev)
        # The row's trailing text, then tts_pad from `trailing_end` on: the last entry is
        # always tts_pad, and a frame past the text reads it.
        self.trailing = torch.zeros((batch, self.trailing_max + 1, hidden), dtype=dt, device=dev)
        self.embeds = torch.zeros((batch, NUM_CODEBOOKS, hidden), dtype=dt, device=dev)

    @property
    def batch(self) -> int:
        return int(self.pos.shape[0])

    def rows(self, count: int) -> FrameState:
        """The first `count` slots (views, sharing `block_index`), for a batch bucket."""
        view = object.__new__(FrameState)
        vars(view).update(vars(self))
        for name in ("hidden", "pos", "step", "presence", "block_codes", "trailing", "embeds"):
            setattr(view, name, getattr(self, name)[:count])
        return view

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Copies of every tensor, to put back after a graph capture's warm-up runs."""
        return {name: value.clone() for name, value in vars(self).items() if torch.is_tensor(value)}

    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        for name, value in saved.items():
            getattr(self, name).copy_(value)

    def check_text(self, trailing_len: int, frames: int) -> None:
        """Raise if a prompt's trailing text would be cut before the frames that read it."""
        if min(trailing_len, frames) > self.trailing_max:
            raise ValueError(
                f"the text leaves {trailing_len} trailing tokens for {frames} frames, but a "
                f"slot holds at most {self.trailing_max}; split the text, or pass "
                "non_streaming_mode=True to put it all in the prompt"
            )

    def reset(
        self, row: int, prompt_len: int, trailing_text: torch.Tensor, pad: torch.Tensor
    ) -> None:
        """Prepare slot `row` for a new utterance: trailing text, then tts_pad for every later
        frame (`check_text` first)."""
        index = to_device([row], torch.long, self.pos.device)
        self.reset_rows(index, [row], [prompt_len], [trailing_text], [pad])

    def reset_rows(
        self,
        index: torch.Tensor,
        rows: list[int],
        prompt_lens: list[int],
        trailing_texts: list[torch.Tensor],
        pads: list[torch.Tensor],
    ) -> None:
        """`reset` for several rows (`index`: the same rows as a device tensor): the
        trailing text row by row, positions and counters in one indexed write each."""
        for row, text, pad in zip(rows, trailing_texts, pads, strict=True):
            n = min(text.shape[1], self.trailing_max)
            self.trailing[row].copy_(pad.reshape(1, -1).expand_as(self.trailing[row]))
            self.trailing[row, :n].copy_(text[0, :n])
        self.pos.index_copy_(0, index, to_device(prompt_lens, torch.long, self.pos.device))
        self.step.index_fill_(0, index, 0)
        self.presence.index_fill_(0, index, False)

    def park(self, rows: list[int]) -> None:
        """Send idle rows back to position 0: a bucket still runs them, and their positions
        must stay inside every cache window."""
        if rows:
            index = to_device(rows, torch.long, self.pos.device)
            self.pos.index_fill_(0, index, 0)
            self.step.index_fill_(0, index, 0)


def talker_logits(m: StaticModel, hidden: torch.Tensor) -> torch.Tensor:
    """(B, 1, H) hidden -> (B, V) float32 logits, cast after the head as HF generate does."""
    return REFERENCE.linear(hidden[:, -1:], m.codec_head)[:, -1].float()


def predictor_logits(m: StaticModel, j: int, hidden: torch.Tensor) -> torch.Tensor:
    """(B, Hp) predictor hidden, before the final norm -> (B, CODEBOOK_SIZE) float32 logits
    of codebook j + 1."""
    w = m.predictor
    normed = rms_norm(hidden, w.final_norm, w.dims.eps).unsqueeze(1)
    return REFERENCE.linear(normed, m.predictor_heads[j])[:, -1].float()


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
    m: StaticModel,
    state: FrameState,
    inputs_embeds: torch.Tensor,
    last: torch.Tensor,
    slots: torch.Tensor,
    scratch: StaticModel,
    fns: FrameFunctions = REFERENCE_FUNCTIONS,
) -> None:
    """Run J (padded) prompts through the talker together, into slots `slots`.

    The prompts run on the first J rows of a `scratch` cache (their positions start at 0,
    whatever the slots' rows hold), and their keys and values are then copied into the
    slots' rows of `m`'s cache, so joining requests never touch the running ones' rows.
    The prompt runs `fns` eagerly (`prompt_functions`: the reference ops, or the prompt
    ops in bfloat16; once per utterance; the CUDA path replays it as a graph per bucket).
    Padding rows sit after the prompt, so causal attention keeps them out of every real row;
    the cache entries they write lie past the prompt and each is overwritten by a frame
    before any query can see it.

    Args:
        inputs_embeds: (J, P_padded, H) prompt embeddings, zero rows after each prompt.
        last: (J,) int64 index of each prompt's last token.
        slots: (J,) int64 slots the prompts go to.
        scratch: the model on a cache of at least J rows and P_padded positions.
        fns: the functions the prompt runs (`prompt_functions`).
    """
    J, P = inputs_embeds.shape[0], inputs_embeds.shape[1]
    pos = torch.arange(P, device=m.device)
    cache = scratch.talker_cache.rows(J).window(P)
    at = Positions.at(pos, m.talker_rope, cache, m.talker.dims.rep)
    out = run_decoder(fns, m.talker, inputs_embeds, at, cache)
    hidden = out.gather(1, last.view(J, 1, 1).expand(J, 1, out.shape[2]))  # (J, 1, H)
    state.hidden.index_copy_(0, slots, hidden)
    m.talker_cache.kv[..., :P, :].index_copy_(2, slots, cache.kv)


def pad_prompts(m: StaticModel, prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, P_j, H) prompts -> ((J, P_padded, H) zero-padded in the engine dtype, (J,) last
    indices), padded to the bucket of the longest."""
    longest = max(p.shape[1] for p in prompts)
    padded = torch.zeros(
        (len(prompts), padded_prompt_len(longest, m.talker_cache.max_len), prompts[0].shape[2]),
        dtype=m.dtype,
        device=m.device,
    )
    for j, p in enumerate(prompts):
        padded[j, : p.shape[1]] = p[0]
    last = to_device([p.shape[1] - 1 for p in prompts], torch.long, m.device)
    return padded, last


def eager_prefill(
    m: StaticModel,
    state: FrameState,
    prompts: list[torch.Tensor],
    slots: list[int],
    scratch: StaticModel,
    fns: FrameFunctions = REFERENCE_FUNCTIONS,
) -> None:
    padded, last = pad_prompts(m, prompts)
    prefill(m, state, padded, last, to_device(slots, torch.long, m.device), scratch, fns)


def predict_codebooks(
    m: StaticModel,
    state: FrameState,
    fns: FrameFunctions,
    cb0: torch.Tensor,
    pick: Callable[[int, torch.Tensor], torch.Tensor],
) -> list[torch.Tensor]:
    """Codebooks 1..15 of each row from the talker hidden state and codebook 0 (B,);
    fills `state.embeds`.

    `pick(j, hidden)` chooses codebook j + 1 from the predictor's (B, Hp) last hidden
    state before its final norm, which the head folds in: sampling in `frame_step`, the
    given codes in teacher-forced parity checks.
    """
    embeds, at = state.embeds, m.predictor_positions
    embeds[:, 0].copy_(F.embedding(cb0, m.codec_embedding))
    x = torch.cat((state.hidden, embeds[:, :1]), dim=1)  # (B, 2, H)
    # Outside the compiled functions: the op set's product where it keeps rows independent
    # of the batch (the reference's row by row, or the tiled kernel), the library's otherwise.
    x = project(x, m.to_predictor, fns.ops.linear if fns.ops.invariant else F.linear)
    out = run_decoder(fns, m.predictor, x, at[0], m.predictor_cache, normed=False)
    tokens = []
    for j in range(NUM_CODEBOOKS - 1):
        tok = pick(j, out[:, -1])  # (B,)
        tokens.append(tok)
        last = j + 1 == NUM_CODEBOOKS - 1
        proj = (None, None) if last else m.to_predictor
        x = fns.embed_code(tok, m.predictor_embeddings[j], embeds[:, j + 1], *proj)
        if not last:
            out = run_decoder(fns, m.predictor, x, at[j + 1], m.predictor_cache, normed=False)
    return tokens


def advance_talker(m: StaticModel, state: FrameState, fns: FrameFunctions) -> None:
    """Feed each row's summed codebook embeddings (+ trailing text) to the talker; step += 1."""
    B, _, H = state.trailing.shape
    index = state.step.clamp(max=state.trailing.shape[1] - 1)  # past the text: tts_pad
    text = state.trailing.gather(1, index.view(B, 1, 1).expand(B, 1, H))  # (B, 1, H)
    x = state.embeds.sum(dim=1, keepdim=True) + text
    at = m.talker_positions(state.pos.view(B, 1))
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
    generators: list[torch.Generator] | RowStreams | None = None,
    drawing: tuple[list[bool], list[bool]] | None = None,
) -> None:
    """Advance every row one frame in place: its codes for frame `state.step` (into
    `state.block_codes` at `state.block_index`), then its next talker hidden state.

    generators: each row's random stream (None: one row drawing from torch's default), as
        torch generators or as `RowStreams` (one launch for every row's noise).
    drawing: which rows draw for codebook 0 and for codebooks 1..15 (None: all of them;
        `RowStreams` carry their own flags).
    """
    if isinstance(generators, RowStreams):
        drawing = (generators.talker, generators.sub)
    talker_rows, sub_rows = drawing if drawing is not None else (None, None)
    noise = draw_noise(m.vocab_size, m.device, generators, talker_rows) if mode.do_sample else None
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
    )  # (B,)

    def pick(j: int, hidden: torch.Tensor) -> torch.Tensor:
        head = m.predictor_heads[j]
        noise = (
            draw_noise(head.shape[0], m.device, generators, sub_rows)
            if mode.sub_do_sample
            else None
        )
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
    frame = torch.stack([cb0] + rest, dim=1)  # (B, 16)
    state.block_codes.index_copy_(1, state.block_index.view(1), frame.unsqueeze(1))
    state.block_index.add_(1)
    advance_talker(m, state, fns)
