"""Parity between the static engine and the `qwen_tts` reference.

Two views:
- free-running: both sides generate with the same request, parameters and seed;
  we compare their codes (first divergent frame, fraction equal, EOS on each side);
- teacher-forced: the reference's codes are fed through both implementations and we
  compare the logits each predicts at every frame (max |diff|, KL, argmax agreement),
  for codebook 0 (talker) and codebooks 1..15 (code predictor). This separates
  numerical drift from sampling: a small KL with divergent codes means bf16 drift,
  a large KL means a bug.

Every function here that runs the reference holds the process-wide turn (`fastqwen.locking`),
and the engine's side runs in its scheduler, so they may be called from any thread.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fastqwen.config import SamplingParams
from fastqwen.constants import CODEBOOK_SIZE, NUM_CODEBOOKS
from fastqwen.engine.step import (
    advance_talker,
    eager_prefill,
    predict_codebooks,
    predictor_logits,
    talker_logits,
)
from fastqwen.locking import serialized
from fastqwen.prompts.builder import TalkerPrompt, VoiceRequest, build_talker_prompt
from fastqwen.results import GenerationResult
from fastqwen.verify.reference import run_reference


@dataclass
class CodeParity:
    static_frames: int
    dynamic_frames: int
    static_eos: bool
    dynamic_eos: bool
    first_divergent_frame: int | None  # None: identical codes and length
    first_divergent_codebook: int | None
    equal_fraction: float  # over the frames both sides have, all 16 codebooks

    @property
    def identical(self) -> bool:
        return self.first_divergent_frame is None

    def describe(self) -> str:
        if self.identical:
            return f"identical: {self.static_frames} frames, eos {self.static_eos}"
        return (
            f"first difference at frame {self.first_divergent_frame}, "
            f"codebook {self.first_divergent_codebook}; "
            f"frames static {self.static_frames} / dynamic {self.dynamic_frames}; "
            f"{100 * self.equal_fraction:.1f}% of codes equal"
        )


def compare_codes(static: GenerationResult, dynamic: GenerationResult) -> CodeParity:
    a, b = static.codes, dynamic.codes
    n = min(a.shape[0], b.shape[0])
    diff = (a[:n] != b[:n]).nonzero()
    if diff.shape[0]:
        frame, codebook = int(diff[0, 0]), int(diff[0, 1])
    elif a.shape[0] != b.shape[0]:
        frame, codebook = n, None
    else:
        frame, codebook = None, None
    equal = float((a[:n] == b[:n]).float().mean()) if n else float(a.shape[0] == b.shape[0])
    return CodeParity(
        static_frames=int(a.shape[0]),
        dynamic_frames=int(b.shape[0]),
        static_eos=static.eos_reached,
        dynamic_eos=dynamic.eos_reached,
        first_divergent_frame=frame,
        first_divergent_codebook=codebook,
        equal_fraction=equal,
    )


@dataclass
class TeacherForced:
    """Per-frame logit agreement; each list has one entry per frame."""

    cb0_max_abs: list[float]
    cb0_kl: list[float]
    cb0_argmax_equal: list[bool]
    sub_max_abs: list[float]  # max over codebooks 1..15
    sub_kl: list[float]  # mean over codebooks 1..15
    sub_argmax_equal: list[float]  # fraction of codebooks 1..15

    @property
    def max_abs(self) -> float:
        return max(self.cb0_max_abs + self.sub_max_abs, default=0.0)

    def summary(self) -> dict:
        def stats(xs):
            return (float(np.mean(xs)), float(np.max(xs))) if xs else (0.0, 0.0)

        kl_mean, kl_max = stats(self.cb0_kl)
        sub_mean, sub_max = stats(self.sub_kl)
        return {
            "frames": len(self.cb0_kl),
            "max_abs_logit_diff": self.max_abs,
            "cb0_kl_mean": kl_mean,
            "cb0_kl_max": kl_max,
            "cb0_argmax_agree": float(np.mean(self.cb0_argmax_equal))
            if self.cb0_argmax_equal
            else 1.0,
            "sub_kl_mean": sub_mean,
            "sub_kl_max": sub_max,
            "sub_argmax_agree": float(np.mean(self.sub_argmax_equal))
            if self.sub_argmax_equal
            else 1.0,
        }


def _kl(ref: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """KL(ref || test) per row of float32 logits (>= 0; rounding alone can dip below zero)."""
    lp, lq = F.log_softmax(ref.float(), -1), F.log_softmax(test.float(), -1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp(min=0.0)


@serialized
@torch.inference_mode()
def reference_logits(
    tts, prompt: TalkerPrompt, codes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the `qwen_tts` modules for given codes, with no cache at all (full forwards).

    Returns cb0 logits (T, V) and sub-talker logits (T, 15, CODEBOOK_SIZE), float32.
    """
    talker = tts.model.talker
    cp = talker.code_predictor
    dev = prompt.inputs_embeds.device
    codes = codes.to(dev)
    T = codes.shape[0]
    embeds = [talker.get_input_embeddings()(codes[:, :1])]  # (T, 1, H)
    embeds += [
        cp.get_input_embeddings()[j](codes[:, j + 1 : j + 2]) for j in range(NUM_CODEBOOKS - 1)
    ]
    embeds = torch.cat(embeds, dim=1)  # (T, 16, H)
    trailing = prompt.trailing_text[0]
    text = torch.cat(
        [trailing[:T], prompt.tts_pad_embed[0].expand(max(T - trailing.shape[0], 0), -1)]
    )[:T]
    frame_inputs = embeds.sum(1) + text  # (T, H)
    seq = torch.cat(
        [prompt.inputs_embeds, frame_inputs[None, : T - 1]], dim=1
    )  # last frame's input not needed
    hidden = talker.model(inputs_embeds=seq, use_cache=False).last_hidden_state  # (1, P + T - 1, H)
    h = hidden[0, prompt.prompt_len - 1 :]  # (T, H): the state that predicts frame i
    cb0 = talker.codec_head(h).float()
    sub_in = torch.cat([h[:, None], embeds[:, : NUM_CODEBOOKS - 1]], dim=1)  # (T, 16, H)
    sub_h = cp.model(
        inputs_embeds=cp.small_to_mtp_projection(sub_in), use_cache=False
    ).last_hidden_state
    sub = torch.stack(
        [cp.lm_head[j](sub_h[:, j + 1]) for j in range(NUM_CODEBOOKS - 1)], dim=1
    ).float()
    return cb0, sub


@torch.inference_mode()
def engine_logits(
    engine, prompt: TalkerPrompt, codes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the static engine for given codes, running its own prefill and frame
    functions (compiled ones too) in slot 0 on the full-length cache, while the engine's
    scheduler waits."""
    with engine.scheduler.exclusive() as runner:
        return _slot_logits(runner, prompt, codes)


def _slot_logits(runner, prompt: TalkerPrompt, codes: torch.Tensor):
    m, state, fns = runner.model.rows(1), runner.state.rows(1), runner.functions
    codes = codes.to(m.device)
    runner.state.reset(
        0, prompt.prompt_len, prompt.trailing_text.to(m.dtype), prompt.tts_pad_embed.to(m.dtype)
    )
    eager_prefill(
        runner.model,
        runner.state,
        [prompt.inputs_embeds],
        [0],
        runner.scratch,
        runner.prompt_functions,
    )
    cb0_rows, sub_rows = [], []
    for i in range(codes.shape[0]):
        cb0_rows.append(talker_logits(m, state.hidden)[0])
        sub_logits: list[torch.Tensor] = []

        def forced(j: int, hidden: torch.Tensor, row=codes[i], seen=sub_logits) -> torch.Tensor:
            seen.append(predictor_logits(m, j, hidden)[0])
            return row[j + 1 : j + 2]

        predict_codebooks(m, state, fns, codes[i, :1], forced)
        sub_rows.append(torch.stack(sub_logits))
        if i + 1 < codes.shape[0]:
            advance_talker(m, state, fns)
    if not cb0_rows:
        return torch.zeros((0, m.vocab_size)), torch.zeros((0, NUM_CODEBOOKS - 1, CODEBOOK_SIZE))
    return torch.stack(cb0_rows), torch.stack(sub_rows)


@serialized
def teacher_forced(engine, tts, request: VoiceRequest, codes: torch.Tensor) -> TeacherForced:
    """Compare both implementations' logits on the same codes (usually the reference's)."""
    prompt = build_talker_prompt(tts, request)
    ref0, ref_sub = reference_logits(tts, prompt, codes)
    eng0, eng_sub = engine_logits(engine, prompt, codes)
    ref0, ref_sub, eng0, eng_sub = (t.cpu() for t in (ref0, ref_sub, eng0, eng_sub))
    return TeacherForced(
        cb0_max_abs=(ref0 - eng0).abs().amax(-1).tolist(),
        cb0_kl=_kl(ref0, eng0).tolist(),
        cb0_argmax_equal=(ref0.argmax(-1) == eng0.argmax(-1)).tolist(),
        sub_max_abs=(ref_sub - eng_sub).abs().amax(dim=(-1, -2)).tolist(),
        sub_kl=_kl(ref_sub, eng_sub).mean(-1).tolist(),
        sub_argmax_equal=(ref_sub.argmax(-1) == eng_sub.argmax(-1)).float().mean(-1).tolist(),
    )


@dataclass
class ParityReport:
    static: GenerationResult
    dynamic: GenerationResult
    codes: CodeParity
    forced: TeacherForced | None

    def summary(self) -> dict:
        out = {
            "codes": asdict(self.codes),
            "static": self.static.summary(),
            "dynamic": self.dynamic.summary(),
        }
        out["duration_diff_s"] = round(self.static.audio_seconds - self.dynamic.audio_seconds, 4)
        if self.forced is not None:
            out["teacher_forced"] = self.forced.summary()
        return out


@serialized  # both sides, and the comparison, in one turn
def run_parity(
    engine,
    request: VoiceRequest,
    params: SamplingParams,
    seed: int,
    *,
    with_teacher_forcing: bool = True,
    stop: threading.Event | None = None,
) -> ParityReport:
    """Run engine and reference on the same inputs and seed, then compare.

    A set `stop` event ends either side with `GenerationStopped`.
    """
    static = engine.generate(request, params, seed, stop=stop)
    dynamic = run_reference(engine.tts, request, params, seed, stop=stop)
    forced = (
        teacher_forced(engine, engine.tts, request, dynamic.codes) if with_teacher_forcing else None
    )
    return ParityReport(
        static=static, dynamic=dynamic, codes=compare_codes(static, dynamic), forced=forced
    )
