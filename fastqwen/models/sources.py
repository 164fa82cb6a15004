"""Model strings: what a user may pass as `--model`, and how it becomes a loaded qwen_tts model.

Accepted forms:
- a Hugging Face id (`Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice`, ...): used when its files
  are cached or the hub answers; otherwise one clear `ModelUnavailableError`;
- a local checkpoint directory (real or built by `fastqwen.models.checkpoints`);
- `random:<size>-<kind>`: a random-weight checkpoint built on first use into
  `$FASTQWEN_CACHE/random/` (default `~/.cache/fastqwen`) and reused after;
- `auto:<HF id>`: that id if loadable, else the random checkpoint of the same kind,
  sized for the machine, with a loud warning.

Only `auto:` ever falls back: an explicit id, directory or `random:` means exactly that.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fastqwen import constants as C
from fastqwen.models.checkpoints import BUILDER_VERSION, build_random_checkpoint, read_marker

if TYPE_CHECKING:  # importing qwen_tts takes seconds: only where it is used
    from qwen_tts import Qwen3TTSModel

log = logging.getLogger(__name__)

# The published checkpoints (there is no 0.6B VoiceDesign).
HF_IDS = (
    "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice",
    "Qwen/Qwen3-TTS-12Hz-1.7B-Base",
    "Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign",
    "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice",
    "Qwen/Qwen3-TTS-12Hz-0.6B-Base",
)
_HF_ID = re.compile(
    r"^Qwen/Qwen3-TTS-12Hz-(?P<size>0\.6B|1\.7B)-(?P<kind>CustomVoice|Base|VoiceDesign)$"
)
_KIND_FROM_ID = {"CustomVoice": "custom_voice", "Base": "base", "VoiceDesign": "voice_design"}
_SIZE_FROM_TAG = {"0b6": "0.6b", "1b7": "1.7b", "tiny": "tiny"}
# Files qwen_tts reads; a cached snapshot missing any of them would trigger a download.
_REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer_config.json",
    "speech_tokenizer/config.json",
    "speech_tokenizer/model.safetensors",
    "speech_tokenizer/preprocessor_config.json",
)
RANDOM_BANNER = "random weights: audio is noise; timings and token parity are real"
HUB_TIMEOUT_S = 3.0  # one HEAD request, no retries: an offline machine answers fast
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class ModelUnavailableError(ValueError):
    """A Hugging Face id that is neither cached nor reachable."""


class RandomWeightsWarning(UserWarning):
    """`auto:` fell back to a random-weight checkpoint."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model string points, and what it is.

    Attributes:
        name: the string as given.
        path: a local directory, or an HF id that qwen_tts will download.
        kind: "custom_voice", "base" or "voice_design" (qwen_tts' tts_model_type).
        size: "tiny", "0.6b", "1.7b", or None when a directory does not say.
        is_random: the weights are random (built by fastqwen.models.checkpoints).
        fell_back: an `auto:` string whose HF id was unavailable.
        note: one line on how it was resolved.
    """

    name: str
    path: str
    kind: str
    size: str | None
    is_random: bool
    fell_back: bool = False
    note: str = ""

    def banner(self) -> str:
        """Warning text for reports and logs; empty for real weights."""
        if not self.is_random:
            return ""
        text = RANDOM_BANNER
        if self.fell_back:
            text += f" (fallback: {self.note})"
        return text


@dataclass
class LoadedModel:
    """A loaded `qwen_tts.Qwen3TTSModel` with the source it came from."""

    tts: Qwen3TTSModel
    source: ModelSource
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32


def cache_dir() -> Path:
    """Root of fastqwen's cache: `$FASTQWEN_CACHE`, else `~/.cache/fastqwen`."""
    return Path(
        os.environ.get("FASTQWEN_CACHE") or Path.home() / ".cache" / "fastqwen"
    ).expanduser()


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """ "float32"/"fp32", "bfloat16"/"bf16", "float16"/"fp16" or one of those torch dtypes."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(
        f"unsupported dtype {dtype!r}; choose one of {', '.join(_DTYPES)} or the torch dtypes"
    )


def _usage(value: str, what: str | None = None) -> str:
    return (
        f"{what or f'unknown model {value!r}'}. Valid forms: a Hugging Face id "
        f"({', '.join(HF_IDS)}); a local checkpoint directory; random:<size>-<kind> (e.g. "
        f"random:tiny-custom_voice); auto:<HF id>. Sizes: {', '.join(C.MODEL_SIZES)}. "
        f"Kinds: {', '.join(C.MODEL_KINDS)}."
    )


def _looks_like_path(name: str) -> bool:
    """A string meant as a folder (`./ckpt`, `/models/x`, `~/a/b`), not an `org/name` id."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def parse_device(device: str | torch.device) -> torch.device:
    """`device` as a `torch.device`, with an error naming it when torch cannot use it.

    Raises:
        ValueError: not a device string torch knows, or a CUDA device without a CUDA GPU.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a torch device ({exc}); use 'cpu' or 'cuda'"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r}, but torch finds no CUDA GPU here "
            "(torch.cuda.is_available() is False); use device='cpu'"
        )
    return dev


# ---------------------------------------------------------------- random checkpoints


def _build_device(size: str) -> str:
    # tiny is built on CPU everywhere, so its weights are the same on every machine;
    # real sizes are built on the GPU when there is one (seconds instead of minutes).
    return "cuda" if size != "tiny" and torch.cuda.is_available() else "cpu"


def random_checkpoint(size: str, kind: str, *, seed: int = 0) -> Path:
    """Path of the cached random checkpoint for (size, kind, seed), building it if needed.

    The build goes to a temporary sibling directory that is renamed into place, so an
    interrupted build never leaves a half checkpoint where a complete one is expected.
    """
    if size not in C.MODEL_SIZES or kind not in C.MODEL_KINDS:
        raise ValueError(_usage(f"random:{size}-{kind}"))
    root = cache_dir() / "random"
    final = root / (f"{size}-{kind}" if seed == 0 else f"{size}-{kind}-seed{seed}")
    marker = read_marker(final) if final.is_dir() else None
    if marker is not None and marker.get("builder_version") == BUILDER_VERSION:
        return final
    if final.exists():
        log.warning("replacing stale or incomplete random checkpoint %s", final)
        shutil.rmtree(final)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        build_random_checkpoint(size, kind, tmp, seed=seed, device=_build_device(size))
        try:
            os.rename(tmp, final)
        except OSError:
            if read_marker(final) is None:  # not a concurrent builder's finished copy
                raise
            log.info("another process built %s first; using its copy", final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---------------------------------------------------------------- Hugging Face


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_offline() -> bool:
    import huggingface_hub.constants as hf_constants

    # The hub library reads HF_HUB_OFFLINE once at import; read it again so a late setenv counts.
    return (
        bool(hf_constants.HF_HUB_OFFLINE)
        or _env_true("HF_HUB_OFFLINE")
        or _env_true("TRANSFORMERS_OFFLINE")
    )


def _cached_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snap = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError):
        return None
    return snap if all((snap / f).is_file() for f in _REQUIRED_FILES) else None


def _hub_reachable(repo_id: str) -> tuple[bool, str]:
    """One HEAD request for config.json (huggingface_hub's helpers retry for ~20 s offline)."""
    if _hub_offline():
        return False, "HF_HUB_OFFLINE is set"
    import requests
    from huggingface_hub import hf_hub_url

    try:
        resp = requests.head(
            hf_hub_url(repo_id, "config.json"), timeout=HUB_TIMEOUT_S, allow_redirects=False
        )
    except requests.RequestException as exc:
        return False, f"hub unreachable ({type(exc).__name__})"
    if resp.status_code >= 400:
        return False, f"hub answered HTTP {resp.status_code}"
    return True, "reachable"


def _hf_source(name: str, repo_id: str) -> ModelSource | tuple[None, str]:
    """A source for a loadable HF id, or (None, why not)."""
    m = _HF_ID.match(repo_id)
    if m is None:
        raise ValueError(_usage(name))
    kind, size = _KIND_FROM_ID[m["kind"]], m["size"].lower()
    snap = _cached_snapshot(repo_id)
    if snap is not None:
        return ModelSource(
            name, str(snap), kind, size, is_random=False, note=f"cached snapshot of {repo_id}"
        )
    ok, why = _hub_reachable(repo_id)
    if ok:
        return ModelSource(
            name, repo_id, kind, size, is_random=False, note=f"{repo_id} from the hub"
        )
    return None, why


# ---------------------------------------------------------------- resolution


def _dir_source(name: str, path: Path) -> ModelSource:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{name!r} is a directory without config.json, not a Qwen3-TTS checkpoint")
    cfg = json.loads(config_file.read_text())
    kind = cfg.get("tts_model_type")
    if cfg.get("model_type") != "qwen3_tts" or kind not in C.MODEL_KINDS:
        raise ValueError(
            f"{name!r} is not a Qwen3-TTS checkpoint (model_type={cfg.get('model_type')!r}, "
            f"tts_model_type={kind!r})"
        )
    marker = read_marker(path)
    size = marker["size"] if marker else _SIZE_FROM_TAG.get(cfg.get("tts_model_size"))
    note = f"random checkpoint (seed {marker['seed']})" if marker else "local checkpoint"
    return ModelSource(
        name, str(path.resolve()), kind, size, is_random=marker is not None, note=note
    )


def _random_source(name: str, spec: str) -> ModelSource:
    size, sep, kind = spec.partition("-")
    if not sep or size not in C.MODEL_SIZES or kind not in C.MODEL_KINDS:
        raise ValueError(_usage(name))
    path = random_checkpoint(size, kind)
    return ModelSource(
        name, str(path), kind, size, is_random=True, note=f"random checkpoint in {path}"
    )


def _unavailable(repo_id: str, why: str) -> ModelUnavailableError:
    m = _HF_ID.match(repo_id)
    alt = (
        f"random:{m['size'].lower()}-{_KIND_FROM_ID[m['kind']]}"
        if m
        else "random:1.7b-custom_voice"
    )
    return ModelUnavailableError(
        f"model {repo_id!r} is not available: not in the Hugging Face cache and {why}. "
        f"Use a local checkpoint directory, '{alt}' (random weights, same architecture), "
        f"or 'auto:{repo_id}' to fall back to random weights automatically."
    )


def resolve_model(name: str) -> ModelSource:
    """Turn a model string into a `ModelSource` (building a random checkpoint if asked).

    Raises:
        ModelUnavailableError: an HF id that is neither cached nor reachable.
        ValueError: a string of none of the accepted forms.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(_usage(str(name)))
    name = name.strip()
    if name.startswith("random:"):
        return _random_source(name, name.removeprefix("random:"))
    if name.startswith("auto:"):
        repo_id = name.removeprefix("auto:")
        m = _HF_ID.match(repo_id)
        if m is None or repo_id not in HF_IDS:
            raise ValueError(_usage(name))
        found = _hf_source(name, repo_id)
        if isinstance(found, ModelSource):
            return found
        kind = _KIND_FROM_ID[m["kind"]]
        size = m["size"].lower() if torch.cuda.is_available() else "tiny"
        path = random_checkpoint(size, kind)
        note = f"{repo_id} unavailable ({found[1]}); using random:{size}-{kind}"
        message = f"{note}. {RANDOM_BANNER}."
        log.warning("*** %s ***", message)
        warnings.warn(message, RandomWeightsWarning, stacklevel=2)
        return ModelSource(name, str(path), kind, size, is_random=True, fell_back=True, note=note)
    path = Path(name).expanduser()
    if path.is_dir():
        return _dir_source(name, path)
    if path.exists() or _looks_like_path(name):
        where = path.absolute()
        what = f"{where} is a file, not a checkpoint directory" if path.exists() else None
        raise ValueError(_usage(name, f"model {name!r}: {what or f'no such directory {where}'}"))
    if name in HF_IDS:
        found = _hf_source(name, name)
        if isinstance(found, ModelSource):
            return found
        raise _unavailable(name, found[1]) from None
    raise ValueError(_usage(name))


def load_model(
    name: str | ModelSource,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
) -> LoadedModel:
    """Resolve `name` and load it with qwen_tts (SDPA attention), unchanged.

    Args:
        name: a model string (see module docstring) or an already resolved source.
        device: "cpu", "cuda", "cuda:1", ...
        dtype: "float32"/"fp32", "bfloat16"/"bf16", "float16"/"fp16" or a torch dtype.
    """
    torch_dtype = parse_dtype(dtype)
    dev = parse_device(device)
    source = name if isinstance(name, ModelSource) else resolve_model(name)
    from qwen_tts import Qwen3TTSModel

    log.info("loading %s (%s) on %s as %s", source.name, source.path, dev, torch_dtype)
    if source.is_random:
        log.warning("%s: %s", source.name, source.banner())
    tts = Qwen3TTSModel.from_pretrained(
        source.path, device_map=str(dev), dtype=torch_dtype, attn_implementation="sdpa"
    )
    if tts.model.tts_model_type != source.kind:
        raise ValueError(
            f"{source.name!r} loaded as tts_model_type={tts.model.tts_model_type!r}, "
            f"expected {source.kind!r}"
        )
    return LoadedModel(tts=tts, source=source, device=dev, dtype=torch_dtype)


__all__ = [
    "HF_IDS",
    "LoadedModel",
    "ModelSource",
    "ModelUnavailableError",
    "RANDOM_BANNER",
    "RandomWeightsWarning",
    "cache_dir",
    "load_model",
    "parse_device",
    "parse_dtype",
    "random_checkpoint",
    "resolve_model",
]
