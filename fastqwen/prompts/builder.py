"""Talker prompts, built by the official `qwen_tts` code itself.

The prompt (role tokens, codec prefix, speaker vector, ICL reference, trailing text)
is where static and dynamic runs could silently disagree, so we do not rebuild it.
We run the reference wrapper's own `generate_*` code, up to the point where it calls the
talker's `generate`, and record that call's inputs. Both our engine and the reference
runner then start from the very same tensors.

The recording must not change the shared model: another thread may be running the real
`talker.generate` at that moment (the reference runner, or the user's own `qwen_tts` calls).
So the wrapper's code runs on views of the wrapper and its model, whose `talker.generate`
records and stops; the objects themselves are only read.
"""

from __future__ import annotations

import functools
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from fastqwen.locking import serialized

MODES = ("custom_voice", "voice_clone", "voice_design")
METHOD_KIND = {
    "custom_voice": "custom_voice",
    "voice_clone": "base",
    "voice_design": "voice_design",
}


@dataclass
class VoiceRequest:
    """What to say and in which voice; mirrors the arguments of `Qwen3TTSModel.generate_*`."""

    mode: str
    text: str
    language: str = "auto"
    speaker: str | None = None
    instruct: str | None = None
    voice_clone_prompt: list | None = None  # list[qwen_tts VoiceClonePromptItem], voice_clone only
    non_streaming_mode: bool | None = None  # None: the reference default for the mode

    def resolved_non_streaming_mode(self) -> bool:
        if self.non_streaming_mode is not None:
            return bool(self.non_streaming_mode)
        return self.mode != "voice_clone"


@dataclass
class TalkerPrompt:
    """Inputs of the talker's generation loop, exactly as `qwen_tts` prepares them."""

    inputs_embeds: torch.Tensor  # (1, P, H) prompt embeddings
    trailing_text: torch.Tensor  # (1, T, H) added to the input of generated frame i while i < T
    tts_pad_embed: torch.Tensor  # (1, 1, H) added once the trailing text runs out
    suppress_tokens: list[int]  # codebook-0 ids never sampled (2048..3071 except EOS)
    eos_token_id: int
    ref_codes: torch.Tensor | None = None  # (R, 16) ICL reference codes, prepended before decoding
    talker_kwargs: dict[str, Any] = field(default_factory=dict)  # the rest, as recorded

    @property
    def prompt_len(self) -> int:
        return int(self.inputs_embeds.shape[1])


class _Captured(Exception):
    def __init__(self, kwargs: dict[str, Any]):
        super().__init__("talker prompt captured")
        self.kwargs = kwargs


def _record_and_stop(*args: Any, **kwargs: Any) -> None:
    raise _Captured(kwargs)


class _View:
    """`target` with some attributes replaced, as seen through this view only."""

    def __init__(self, target: Any, **replaced: Any):
        self._target = target
        vars(self).update(replaced)

    def __getattr__(self, name: str) -> Any:  # only for names the view does not replace
        return getattr(self._target, name)


CONDITIONING_TEXTS_KEPT = 256  # token ids of reference transcripts and instructions, per model
# How `Qwen3TTSModel._build_assistant_text` ends the text to speak; a reference transcript
# (`_build_ref_text`) and an instruction (`_build_instruct_text`) end otherwise.
_TEXT_TO_SPEAK_END = "<|im_start|>assistant\n"
_CONDITIONING_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tokenizer_keeping_conditioning_texts(tts):
    """`tts._tokenize_texts`, keeping the ids of the texts that come with a voice rather than
    a request: an ICL reference's transcript, a voice design's or custom voice's
    instruction. A cached voice then costs no tokenizer call for them (a call is about
    0.7 ms of host time, in the path to first audio); the text to speak is always tokenized.
    The ids are the tokenizer's own, on the model's device; qwen-tts only reads them."""
    kept = _CONDITIONING_IDS.setdefault(tts, OrderedDict())  # under the builder's turn
    tokenize = tts._tokenize_texts

    def tokenize_keeping(texts: list[str]) -> list[torch.Tensor]:
        out = []
        for text in texts:
            if text.endswith(_TEXT_TO_SPEAK_END):
                out.extend(tokenize([text]))
                continue
            if text not in kept:
                kept[text] = tokenize([text])[0]
                if len(kept) > CONDITIONING_TEXTS_KEPT:
                    kept.popitem(last=False)
            kept.move_to_end(text)
            out.append(kept[text])
        return out

    return tokenize_keeping


def _recording_view(tts) -> _View:
    """`tts` whose `model.generate` runs the real method, up to a recording `talker.generate`.

    Qwen3TTSModel.generate_<mode> calls `self.model.generate`, which calls
    `self.talker.generate`; everything else they touch is read through to the real objects.
    """
    model = tts.model
    # The config as plain attributes where `generate` reads them in a loop: it checks
    # `config.talker_config.codec_eos_token_id` for each of 1,024 suppressed tokens, and a
    # transformers config's attribute lookup is slow Python (about half of a build's host
    # time on the CPU). Read once here; the values are the config's own.
    talker_config = model.config.talker_config
    config = _View(
        model.config,
        talker_config=_View(
            talker_config,
            vocab_size=talker_config.vocab_size,
            codec_eos_token_id=talker_config.codec_eos_token_id,
        ),
    )
    # `device` too: a PreTrainedModel finds it by walking its parameters, a few times a build
    talker = _View(model.talker, generate=_record_and_stop, device=model.talker.device)
    model_view = _View(model, talker=talker, config=config, device=model.device)
    model_view.generate = functools.partial(type(model).generate, model_view)
    return _View(tts, model=model_view, _tokenize_texts=_tokenizer_keeping_conditioning_texts(tts))


def validate_request(tts, request: VoiceRequest) -> None:
    """Raise a ValueError naming the bad value and the choices, before any model code runs."""
    if request.mode not in MODES:
        raise ValueError(f"unknown mode {request.mode!r}; choose one of: {', '.join(MODES)}")
    kind = tts.model.tts_model_type
    needed = METHOD_KIND[request.mode]
    if kind != needed:
        raise ValueError(
            f"{request.mode} needs a {needed!r} model, but this model is {kind!r}; "
            f"load a *-{_KIND_SUFFIX[needed]} checkpoint (or random:<size>-{needed})"
        )
    if not isinstance(request.text, str) or not request.text.strip():
        raise ValueError(f"text must be a non-empty string, got {request.text!r}")
    languages = sorted(str(x).lower() for x in tts.model.get_supported_languages())
    if request.language is None or str(request.language).lower() not in languages:
        raise ValueError(
            f"unknown language {request.language!r}; choose one of: {', '.join(languages)}"
        )
    if request.mode == "custom_voice":
        speakers = sorted(str(x).lower() for x in tts.model.get_supported_speakers())
        if not request.speaker or str(request.speaker).lower() not in speakers:
            raise ValueError(
                f"unknown speaker {request.speaker!r}; choose one of: {', '.join(speakers)}"
            )
    if request.mode == "voice_clone":
        items = request.voice_clone_prompt
        if not items or len(items) != 1:
            raise ValueError(
                "voice_clone needs exactly one voice clone prompt item "
                "(see create_voice_clone_prompt)"
            )
        item = items[0]
        if item.icl_mode and not (item.ref_text or "").strip():
            raise ValueError(
                "ref_text is required for ICL voice cloning; "
                "pass ref_text or x_vector_only_mode=True"
            )


_KIND_SUFFIX = {"custom_voice": "CustomVoice", "base": "Base", "voice_design": "VoiceDesign"}


@serialized  # runs model code: it takes turns with generation (see fastqwen.locking)
def build_talker_prompt(tts, request: VoiceRequest) -> TalkerPrompt:
    """Run the reference wrapper up to the talker's generate and return its inputs.

    Args:
        tts: a loaded `qwen_tts.Qwen3TTSModel`; only read.
        request: the voice request; validated here first.
    """
    validate_request(tts, request)
    nsm = request.resolved_non_streaming_mode()
    wrapper, view = type(tts), _recording_view(tts)
    try:
        if request.mode == "custom_voice":
            wrapper.generate_custom_voice(
                view,
                text=request.text,
                speaker=request.speaker,
                language=request.language,
                instruct=request.instruct,
                non_streaming_mode=nsm,
            )
        elif request.mode == "voice_design":
            wrapper.generate_voice_design(
                view,
                text=request.text,
                instruct=request.instruct or "",
                language=request.language,
                non_streaming_mode=nsm,
            )
        else:
            wrapper.generate_voice_clone(
                view,
                text=request.text,
                language=request.language,
                voice_clone_prompt=request.voice_clone_prompt,
                non_streaming_mode=nsm,
            )
    except _Captured as captured:
        kwargs = captured.kwargs
    else:  # pragma: no cover - only if qwen_tts stops calling talker.generate
        raise RuntimeError(
            "qwen_tts did not reach the talker's generate; unsupported qwen_tts version?"
        )

    mask = kwargs.pop("attention_mask")
    if not bool(mask.all()):
        raise RuntimeError("padded prompts are not supported; generate one text at a time")
    ref_codes = None
    if request.mode == "voice_clone":
        item = request.voice_clone_prompt[0]
        if item.icl_mode and item.ref_code is not None:
            ref_codes = item.ref_code
    return TalkerPrompt(
        inputs_embeds=kwargs.pop("inputs_embeds"),
        trailing_text=kwargs.pop("trailing_text_hidden"),
        tts_pad_embed=kwargs.pop("tts_pad_embed"),
        suppress_tokens=list(kwargs.pop("suppress_tokens")),
        eos_token_id=int(kwargs.pop("eos_token_id")),
        ref_codes=ref_codes,
        talker_kwargs=kwargs,
    )
