"""The body of `POST /v1/audio/speech` and how it becomes an engine request.

Field names follow the OpenAI speech API (`model`, `input`, `voice`, `response_format`,
`speed`, `instructions`, `stream_format`) and vLLM-Omni's Qwen3-TTS extensions
(`task_type`, `language`, `ref_audio`, `ref_text`, `x_vector_only_mode`, `max_new_tokens`,
...), so clients of either work unchanged. The generation fields are the fields of
`SamplingParams`, derived from the dataclass so the two never drift apart.

Every field is honoured or refused: a value the engine cannot serve (a speed other than
1.0, an unknown format, a task type of another model) is a `FieldError` naming the field,
never silently dropped; unknown field names are rejected by pydantic.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from pydantic import BaseModel, ConfigDict, create_model

from fastqwen.config import SamplingParams
from fastqwen.prompts.builder import VoiceRequest
from fastqwen.tools.defaults import token_cap
from fastqwen.tools.serve.audio import FORMATS, STREAM_FORMATS
from fastqwen.tools.serve.voices import DEFAULT_VOICE, MODES, TASK_TYPES


class FieldError(ValueError):
    """A request field the server cannot honour (HTTP 400); `param` names the field."""

    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param


class _SpeechFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str
    model: str | None = None
    voice: str | None = None
    response_format: str = "wav"
    stream: bool = False
    stream_format: str | None = None  # "audio" (raw bytes); "sse" is not served
    speed: float = 1.0
    language: str | None = None
    instructions: str | None = None
    task_type: str | None = None  # CustomVoice / VoiceDesign / Base; None: the model's
    ref_audio: str | None = None  # base64 data URL, or a path under --ref-audio-dir
    ref_text: str | None = None
    x_vector_only_mode: bool | None = None
    non_streaming_mode: bool | None = None
    seed: int | None = None


_TYPES = {"int": int, "float": float, "bool": bool}
# Every SamplingParams field, optional: None keeps the SamplingParams default.
SAMPLING_FIELDS = tuple(f.name for f in fields(SamplingParams))
SpeechRequest = create_model(
    "SpeechRequest",
    __base__=_SpeechFields,
    **{f.name: (_TYPES[str(f.type)] | None, None) for f in fields(SamplingParams)},
)
SpeechRequest.__doc__ = "The JSON body of POST /v1/audio/speech."


@dataclass
class Plan:
    """A checked request, before the engine sees it: what to submit and how to answer."""

    mode: str
    response_format: str
    stream: bool
    params: SamplingParams
    speaker: str | None = None
    instruct: str | None = None
    language: str = "auto"
    non_streaming_mode: bool | None = None


def check_request(body, model_kind: str, served_names: tuple[str, ...]) -> Plan:
    """Check the fields that need no model code; raises FieldError naming the field."""
    if body.model is not None and body.model not in served_names:
        raise FieldError(
            "model", f"model {body.model!r} is not served here; use {', '.join(served_names)}"
        )
    fmt = body.response_format.lower()
    if fmt not in FORMATS:
        raise FieldError(
            "response_format",
            f"response_format {body.response_format!r} is not supported; "
            f"choose one of: {', '.join(FORMATS)}",
        )
    if body.stream and fmt not in STREAM_FORMATS:
        raise FieldError(
            "response_format",
            f"response_format {fmt!r} cannot be streamed; stream {' or '.join(STREAM_FORMATS)}",
        )
    if body.stream_format is not None and body.stream_format != "audio":
        raise FieldError(
            "stream_format",
            f"stream_format {body.stream_format!r} is not supported; use 'audio' (raw bytes)",
        )
    if body.speed != 1.0:
        raise FieldError("speed", f"speed {body.speed!r} is not supported; only 1.0 is")
    served_task = TASK_TYPES[model_kind]
    if body.task_type is not None and body.task_type != served_task:
        known = ", ".join(TASK_TYPES.values())
        why = (
            f"this server's model is a {served_task} model"
            if body.task_type in TASK_TYPES.values()
            else f"choose one of: {known}"
        )
        raise FieldError(
            "task_type",
            f"task_type {body.task_type!r} cannot be served: {why}; "
            f"use task_type {served_task!r} or omit it",
        )
    mode = MODES[model_kind]
    params = _sampling(body)
    if body.max_new_tokens is None:  # capped from the text (`defaults.token_cap`)
        cap = max(token_cap(body.input, params.max_new_tokens), params.min_new_tokens)
        params = replace(params, max_new_tokens=cap)
    plan = Plan(
        mode=mode,
        response_format=fmt,
        stream=body.stream,
        params=params,
        language=(body.language or "auto").lower(),
        non_streaming_mode=body.non_streaming_mode,
    )
    if mode == "custom_voice":
        if not body.voice:
            raise FieldError("voice", "voice is required: name one of the model's speakers")
        plan.speaker = body.voice.lower()
        plan.instruct = body.instructions
    elif body.voice is not None and body.voice.lower() != DEFAULT_VOICE:
        raise FieldError(
            "voice",
            f"voice {body.voice!r} cannot be used by a {served_task} model; omit it or "
            f"send {DEFAULT_VOICE!r} (the voice comes from "
            f"{'instructions' if mode == 'voice_design' else 'ref_audio'})",
        )
    if mode == "voice_design":
        if not (body.instructions or "").strip():
            raise FieldError("instructions", "VoiceDesign needs instructions describing the voice")
        plan.instruct = body.instructions
    if mode == "voice_clone":
        if body.instructions is not None:
            raise FieldError("instructions", "instructions are not supported by Base models")
        if not body.ref_audio:
            raise FieldError("ref_audio", "Base (voice clone) requests need ref_audio")
    else:
        for name in ("ref_audio", "ref_text", "x_vector_only_mode"):
            if getattr(body, name) is not None:
                raise FieldError(
                    name, f"{name} is only for Base (voice clone) models; this is {served_task}"
                )
    return plan


def _sampling(body) -> SamplingParams:
    given = {name: getattr(body, name) for name in SAMPLING_FIELDS}
    try:
        return SamplingParams.from_kwargs(**given)
    except ValueError as err:
        named = str(err).split(" ", 1)[0]  # SamplingParams' messages start with the field
        raise FieldError(named if named in SAMPLING_FIELDS else None, str(err)) from err


def voice_request(plan: Plan, text: str, clone_prompt: list | None = None) -> VoiceRequest:
    """The engine request for a checked plan (the engine validates text, speaker, language)."""
    return VoiceRequest(
        plan.mode,
        text,
        plan.language,
        speaker=plan.speaker,
        instruct=plan.instruct,
        voice_clone_prompt=clone_prompt,
        non_streaming_mode=plan.non_streaming_mode,
    )
