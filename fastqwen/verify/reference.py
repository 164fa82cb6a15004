"""The dynamic side: the official `qwen_tts` generation, with every parameter honoured.

`Qwen3TTSModel.generate_*` fixes `min_new_tokens` at 2 and drops unknown kwargs, so we
go one level deeper: the prompt comes from the wrapper itself (`prompts.build_talker_prompt`),
then we call the talker's own Hugging Face `generate` (DynamicCache, HF sampling) with
all of `SamplingParams`, and post-process exactly as `Qwen3TTSForConditionalGeneration.generate`.
Its calls take the process-wide turn (`fastqwen.locking`): they seed and draw from torch's
process-wide random generators, which the engine does not use (each of its slots has its own).
"""

from __future__ import annotations

import threading
import time

import torch

from fastqwen.codec.decoder import decode_utterance
from fastqwen.config import SamplingParams
from fastqwen.constants import NUM_CODEBOOKS
from fastqwen.device import synchronize
from fastqwen.engine.loop import trim_at_eos
from fastqwen.locking import serialized
from fastqwen.prompts.builder import TalkerPrompt, VoiceRequest, build_talker_prompt
from fastqwen.results import GenerationResult, GenerationStopped


def seed_everything(seed: int) -> None:
    """Seed the generators the reference draws from (CPU and, if present, CUDA)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    torch.manual_seed(seed)


def _stop_criteria(stop: threading.Event):
    """HF stopping criteria that end `generate` after the token during which `stop` was set."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnEvent(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
            return torch.full((input_ids.shape[0],), stop.is_set(), device=input_ids.device)

    return StoppingCriteriaList([StopOnEvent()])


@serialized  # it draws from torch's process-wide generators (see fastqwen.locking)
def talker_generate(
    tts, prompt: TalkerPrompt, params: SamplingParams, stop: threading.Event | None = None
):
    """The reference generation loop for one prompt; returns (codes (T, 16), eos_reached).

    A set `stop` event ends it after the current token with `GenerationStopped`.
    """
    talker = tts.model.talker
    embeds = prompt.inputs_embeds
    kwargs = dict(prompt.talker_kwargs)
    kwargs.update(
        max_new_tokens=params.max_new_tokens,
        min_new_tokens=params.min_new_tokens,
        do_sample=params.do_sample,
        top_k=params.top_k,
        top_p=params.top_p,
        temperature=params.temperature,
        repetition_penalty=params.repetition_penalty,
        subtalker_dosample=params.subtalker_dosample,
        subtalker_top_k=params.subtalker_top_k,
        subtalker_top_p=params.subtalker_top_p,
        subtalker_temperature=params.subtalker_temperature,
        eos_token_id=prompt.eos_token_id,
        suppress_tokens=prompt.suppress_tokens,
        output_hidden_states=True,
        return_dict_in_generate=True,
    )
    if stop is not None:
        kwargs["stopping_criteria"] = _stop_criteria(stop)
    out = talker.generate(
        inputs_embeds=embeds,
        attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device),
        trailing_text_hidden=prompt.trailing_text,
        tts_pad_embed=prompt.tts_pad_embed,
        **kwargs,
    )
    # Same post-processing as Qwen3TTSForConditionalGeneration.generate (batch of one).
    steps = [hid[-1] for hid in out.hidden_states if hid[-1] is not None]
    if stop is not None and stop.is_set():
        raise GenerationStopped(len(steps))
    if steps:
        codes = torch.stack(steps, dim=1)[0]  # (T, 16)
    else:
        codes = torch.zeros((0, NUM_CODEBOOKS), dtype=torch.long, device=embeds.device)
    codes, _ = trim_at_eos(codes, prompt.eos_token_id)
    eos_reached = bool(out.sequences[0, -1] == prompt.eos_token_id)
    return codes, eos_reached


@serialized
@torch.no_grad()
def run_reference(
    tts,
    request: VoiceRequest,
    params: SamplingParams,
    seed: int,
    *,
    stop: threading.Event | None = None,
) -> GenerationResult:
    """Generate one utterance with `qwen_tts` (dynamic cache), seeded right before the loop.

    Args:
        tts: a loaded `qwen_tts.Qwen3TTSModel`.
        request: text, voice and mode.
        params: all generation parameters; each one takes effect.
        seed: RNG seed, applied immediately before the first draw, as the engine does.
        stop: when set (from another thread), the run ends with `GenerationStopped`.
    """
    prompt = build_talker_prompt(tts, request)
    device = prompt.inputs_embeds.device
    seed_everything(seed)
    synchronize(device)
    t0 = time.perf_counter()
    codes, eos_reached = talker_generate(tts, prompt, params, stop)
    synchronize(device)
    t1 = time.perf_counter()
    audio, sr = decode_utterance(tts.model.speech_tokenizer, codes, prompt.ref_codes)
    t2 = time.perf_counter()
    return GenerationResult(
        audio=audio,
        sample_rate=sr,
        codes=codes.detach().to("cpu", torch.long),
        eos_reached=eos_reached,
        engine="dynamic",
        wall_s=t2 - t0,
        generate_s=t1 - t0,
    )
