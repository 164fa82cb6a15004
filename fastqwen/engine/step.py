"""One audio frame: the single function the whole engine loops over.

`frame_step` takes the talker's last hidden state and, in place:
samples codebook 0, runs the code predictor for codebooks 1..15 (one draw each),
sums the 16 codebook embeddings plus the next trailing-text embedding, and runs the
talker one position further. It has fixed shapes, keeps all state in preallocated
tensors and never syncs with the host, so the CUDA path captures it as one graph and
the CPU path runs it eagerly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastqwen.constants import NUM_CODEBOOKS, NUM_CONTROL_CODES
from fastqwen.engine.cache import StaticKVCache
from fastqwen.engine.kernels import EAGER, FrameKernels
from fastqwen.engine.layers import (
    DecoderWeights,
    Positions,
    RopeTable,
    decoder_forward,
    project,
    rms_norm,
)
from fastqwen.engine.sampling import SamplingMode, SamplingTensors, draw_noise


@dataclass
class EngineModel:
    """Weights and caches of one loaded model (views of the qwen_tts modules)."""

    talker: DecoderWeights
    predictor: DecoderWeights
    codec_embedding: torch.Tensor  # (V, H) talker codebook-0 embedding, V = TALKER_VOCAB_SIZE
    codec_head: torch.Tensor  # (V, H)
    predictor_embeddings: list[torch.Tensor]  # 15 x (CODEBOOK_SIZE, H), codebooks 1..15
    predictor_heads: list[torch.Tensor]  # 15 x (CODEBOOK_SIZE, Hp), codebooks 1..15
    to_predictor: tuple[torch.Tensor | None, torch.Tensor | None]  # small_to_mtp_projection
    talker_cache: StaticKVCache
    predictor_cache: StaticKVCache
    talker_rope: RopeTable
    predictor_positions: list[Positions]  # [0, 1] (prefill), then [2] .. [15]
    suppress_mask: torch.Tensor  # (1, V) bool
    eos_id: int
    kernels: FrameKernels = EAGER  # per-frame functions; compiled ones on CUDA

    @classmethod
    def from_qwen_tts(cls, model, max_seq_len: int) -> EngineModel:
        """Wrap a `Qwen3TTSForConditionalGeneration`; allocates the two static caches."""
        talker = model.talker
        cp = talker.code_predictor
        dtype = talker.codec_head.weight.dtype
        device = talker.codec_head.weight.device
        tw = DecoderWeights.from_module(talker.model)
        pw = DecoderWeights.from_module(cp.model)
        tcfg = model.config.talker_config
        vocab = tcfg.vocab_size
        suppress = torch.zeros((1, vocab), dtype=torch.bool, device=device)
        suppress[:, vocab - NUM_CONTROL_CODES :] = True  # control codes are never audio
        suppress[:, tcfg.codec_eos_token_id] = False
        predictor_len = NUM_CODEBOOKS  # hidden + codebooks 0..14 are ever fed in
        m = cls(
            talker=tw,
            predictor=pw,
            codec_embedding=talker.model.codec_embedding.weight.data,
            codec_head=talker.codec_head.weight.data,
            predictor_embeddings=[e.weight.data for e in cp.model.codec_embedding],
            predictor_heads=[h.weight.data for h in cp.lm_head],
            to_predictor=_linear_weights(cp.small_to_mtp_projection),
            talker_cache=StaticKVCache(
                len(tw.layers),
                tw.num_kv_heads,
                tw.head_dim,
                max_seq_len,
                dtype=dtype,
                device=device,
            ),
            predictor_cache=StaticKVCache(
                len(pw.layers),
                pw.num_kv_heads,
                pw.head_dim,
                predictor_len,
                dtype=dtype,
                device=device,
            ),
            talker_rope=RopeTable(tw.inv_freq, max_seq_len, dtype),
            predictor_positions=[],
            suppress_mask=suppress,
            eos_id=int(tcfg.codec_eos_token_id),
        )
        rope = RopeTable(pw.inv_freq, predictor_len, dtype)
        rep = pw.num_heads // pw.num_kv_heads
        spans = [torch.arange(2, device=device)] + [
            torch.tensor([j], device=device) for j in range(2, predictor_len)
        ]
        m.predictor_positions = [Positions.at(p, rope, m.predictor_cache, rep) for p in spans]
        return m

    def talker_positions(self, pos: torch.Tensor) -> Positions:
        rep = self.talker.num_heads // self.talker.num_kv_heads
        return Positions.at(pos, self.talker_rope, self.talker_cache, rep)

    @property
    def device(self) -> torch.device:
        return self.codec_head.device

    @property
    def dtype(self) -> torch.dtype:
        return self.codec_head.dtype


def _linear_weights(module: torch.nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(weight, bias) of a Linear; (None, None) for the Identity the 0.6B model has."""
    if isinstance(module, torch.nn.Identity):
        return None, None
    return module.weight.data, None if module.bias is None else module.bias.data


class FrameState:
    """Everything that changes from frame to frame, preallocated once per engine."""

    def __init__(self, m: EngineModel, max_frames: int):
        dev, dt = m.device, m.dtype
        hidden = m.codec_head.shape[1]
        self.max_frames = max_frames
        self.hidden = torch.zeros((1, 1, hidden), dtype=dt, device=dev)  # talker output, post-norm
        self.pos = torch.zeros((1,), dtype=torch.long, device=dev)  # next talker position
        self.step = torch.zeros((), dtype=torch.long, device=dev)  # frames generated so far
        self.presence = torch.zeros((1, m.codec_head.shape[0]), dtype=torch.bool, device=dev)
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


def talker_logits(m: EngineModel, hidden: torch.Tensor) -> torch.Tensor:
    """(1, 1, H) hidden -> (1, V) float32 logits, cast after the head as HF generate does."""
    return F.linear(hidden[:, -1], m.codec_head).float()


def predictor_logits(m: EngineModel, j: int, hidden: torch.Tensor) -> torch.Tensor:
    """(1, Hp) predictor hidden, before the final norm -> (1, CODEBOOK_SIZE) float32 logits
    of codebook j + 1."""
    w = m.predictor
    return F.linear(rms_norm(hidden, w.final_norm, w.eps), m.predictor_heads[j]).float()


def run_decoder(
    m: EngineModel, w: DecoderWeights, x, at: Positions, cache, normed: bool = True
) -> torch.Tensor:
    """`decoder_forward` with the engine's per-frame kernels (compiled on CUDA);
    normed=False skips the final norm (the predictor's heads fold it in)."""
    final_norm = m.kernels.final_norm if normed else None
    k = m.kernels
    return decoder_forward(w, x, at, cache, k.layer, k.mlp_down, final_norm)


PREFILL_BUCKET = 64  # prompts are padded to a multiple of this, so few prefill shapes exist


def padded_prompt_len(prompt_len: int, window: int) -> int:
    """Prompt length rounded up to the bucket, unless that would not fit the cache window."""
    padded = -(-prompt_len // PREFILL_BUCKET) * PREFILL_BUCKET
    return padded if padded <= window else prompt_len


def prefill(
    m: EngineModel, state: FrameState, inputs_embeds: torch.Tensor, last: torch.Tensor
) -> None:
    """Run the (padded) prompt through the talker; keep the hidden state at index `last`.

    Padding rows sit after the prompt, so causal attention keeps them out of every real
    row; the cache entries they write lie past the prompt and each is overwritten by a
    frame before any query can see it.

    Args:
        inputs_embeds: (1, P_padded, H) prompt embeddings, zero rows after the prompt.
        last: (1,) int64 index of the prompt's last token.
    """
    pos = torch.arange(inputs_embeds.shape[1], device=m.device)
    out = decoder_forward(m.talker, inputs_embeds, m.talker_positions(pos), m.talker_cache)
    state.hidden.copy_(out.index_select(1, last))


def pad_prompt(m: EngineModel, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, P, H) prompt -> ((1, P_padded, H) zero-padded in the engine dtype, (1,) last index)."""
    p = inputs_embeds.shape[1]
    padded = torch.zeros(
        (1, padded_prompt_len(p, m.talker_cache.max_len), inputs_embeds.shape[2]),
        dtype=m.dtype,
        device=m.device,
    )
    padded[:, :p] = inputs_embeds
    return padded, torch.tensor([p - 1], device=m.device)


def eager_prefill(m: EngineModel, state: FrameState, inputs_embeds: torch.Tensor) -> None:
    prefill(m, state, *pad_prompt(m, inputs_embeds))


def predict_codebooks(
    m: EngineModel,
    state: FrameState,
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
    x = project(torch.cat((state.hidden, embeds[:, :1]), dim=1), m.to_predictor)  # (1, 2, Hp)
    out = run_decoder(m, m.predictor, x, at[0], m.predictor_cache, normed=False)
    tokens = []
    for j in range(NUM_CODEBOOKS - 1):
        tok = pick(j, out[:, -1])  # (1,)
        tokens.append(tok)
        last = j + 1 == NUM_CODEBOOKS - 1
        proj = (None, None) if last else m.to_predictor
        x = m.kernels.embed_code(tok, m.predictor_embeddings[j], embeds[:, j + 1], *proj)
        if not last:
            out = run_decoder(m, m.predictor, x, at[j + 1], m.predictor_cache, normed=False)
    return tokens


def advance_talker(m: EngineModel, state: FrameState) -> None:
    """Feed the frame's summed codebook embeddings (+ trailing text) to the talker; step += 1."""
    text = state.trailing.index_select(1, state.step.view(1))  # (1, 1, H)
    x = state.embeds.sum(dim=1, keepdim=True) + text
    at = m.talker_positions(state.pos)
    state.hidden.copy_(run_decoder(m, m.talker, x, at, m.talker_cache))
    state.pos.add_(1)
    state.step.add_(1)


def frame_step(
    m: EngineModel,
    state: FrameState,
    talker_sampling: SamplingTensors,
    sub_sampling: SamplingTensors,
    mode: SamplingMode,
) -> None:
    """Advance one frame in place: codes for frame `state.step`, then the next talker hidden."""
    k, hidden = m.kernels, state.hidden
    noise = draw_noise(m.codec_head.shape[0], m.device) if mode.do_sample else None
    cb0 = k.talker_token(
        hidden,
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
        return k.predictor_token(
            hidden,
            w.final_norm,
            head,
            w.eps,
            noise,
            sub_sampling,
            mode.sub_do_sample,
            mode.sub_top_p,
        )

    rest = predict_codebooks(m, state, cb0, pick)
    frame = torch.cat([cb0] + rest).view(1, NUM_CODEBOOKS)
    state.codes.index_copy_(0, state.step.view(1), frame)
    advance_talker(m, state)
