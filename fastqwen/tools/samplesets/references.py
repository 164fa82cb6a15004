"""ICL reference recordings: checked before anything loads, and the text each one is read with.

Checks (`check_references`), before a model is loaded: the recording exists, loads as audio
(`fastqwen.prompts.reference_audio.load_reference_audio`: readable, not empty, at least
1 s), and is not silent; those stop the set with an error naming the file and the
parameter. Audio that can be cloned but probably badly (clipped, very quiet, mostly silence)
gives warnings, which go to the log *and* into summary.json, the README and the report.

Text (`prepare_references`), so that the prompt, and so every ICL code, is the same on every
machine:
  1. the text given through `ref_texts` or `PARITY_REF_TEXT*`;
  2. else the recording's known text from a `ref_texts.json` beside it (the shipped
     `samples/ref_audio*.wav` have one);
  3. else an offline transcript (`fastqwen.tools.transcribe`), which must contain words.
In case 2 the recording is transcribed as well, as a check only: the transcript and its word
error rate against the known text are shown beside it (ASR output may differ between
machines, which is why it is not used as the prompt).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastqwen.tools.samplesets.settings import ASR_METHODS, REF_SUFFIXES, SetSettings, rel

log = logging.getLogger(__name__)

KNOWN_TEXTS_FILE = "ref_texts.json"
SILENT_PEAK = 1e-3  # -60 dBFS: nothing to clone
QUIET_PEAK = 10 ** (-30 / 20)  # -30 dBFS: the codec hears mostly noise floor
CLIP_LEVEL = 0.99  # of full scale
CLIP_SHARE = 1e-3  # more than 0.1 % of samples at full scale: clipped
WINDOW_S = 0.05  # windows for the silence share
SILENT_WINDOW_RMS = 10 ** (-50 / 20)
SILENT_SHARE = 0.5


@dataclass
class Reference:
    """An ICL reference recording and the text used for it."""

    path: Path
    text: str
    text_source: str  # "parameter", "PARITY_REF_TEXT_2", "ref_texts.json", "transcribed: ..."
    known_text: str | None = None  # from a ref_texts.json next to the recording
    word_error_rate: float | None = None  # of `transcript` against known_text
    prompt: list | None = None  # qwen_tts voice clone prompt items
    transcript: str | None = None  # what ASR heard (the text used, or a check beside it)
    warnings: list[str] = field(default_factory=list)  # from `audio_warnings`

    def to_json(self) -> dict:
        return {
            "file": rel(self.path),
            "text": self.text,
            "text_source": self.text_source,
            "known_text": self.known_text,
            "transcript": self.transcript,
            "word_error_rate": self.word_error_rate,
            "warnings": list(self.warnings),
        }


def asr_method(backend: str) -> tuple[str, str]:
    """(backend name, description) that `fastqwen.tools.transcribe.transcribe(backend)` will use."""
    from fastqwen.tools.transcribe import available_backends

    if backend == "auto":
        installed = available_backends()
        backend = installed[0] if installed else "faster-whisper"
    return backend, ASR_METHODS.get(backend, backend)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance over the reference length (case and punctuation ignored)."""
    ref, hyp = (re.findall(r"[a-z0-9']+", t.lower()) for t in (reference, hypothesis))
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(len(ref), 1)


def known_text(path: Path) -> str | None:
    """The recording's text from `ref_texts.json` in its folder, if it has one."""
    table = path.parent / KNOWN_TEXTS_FILE
    try:
        return json.loads(table.read_text()).get(path.name)
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _dbfs(x: float) -> str:
    return f"{20 * np.log10(max(x, 1e-12)):.0f} dBFS"


def audio_warnings(wav: np.ndarray, sr: int) -> list[str]:
    """What makes a loadable recording a poor reference (empty: nothing found).

    Raises:
        ValueError: the recording is silent (peak below -60 dBFS).
    """
    peak = float(np.max(np.abs(wav)))
    if peak < SILENT_PEAK:
        raise ValueError(f"is silent (peak {_dbfs(peak)}); use a recording of speech")
    out = []
    clipped = float(np.mean(np.abs(wav) >= CLIP_LEVEL))
    if clipped > CLIP_SHARE:
        out.append(f"clipped: {100 * clipped:.1f}% of samples at full scale")
    if peak < QUIET_PEAK:
        out.append(f"very quiet: peak {_dbfs(peak)}")
    n = int(WINDOW_S * sr)
    windows = wav[: len(wav) // n * n].reshape(-1, n)
    rms = np.sqrt(np.mean(windows.astype(np.float64) ** 2, axis=1))
    silent = float(np.mean(rms < SILENT_WINDOW_RMS))
    if silent > SILENT_SHARE:
        out.append(f"mostly silence: {100 * silent:.0f}% of the recording below -50 dBFS")
    return out


def _slot_fix(settings: SetSettings, i: int) -> str:
    var = f"PARITY_REF_AUDIO{REF_SUFFIXES[i]}" if i < len(REF_SUFFIXES) else None
    origin = settings.origins.get(f"ref_audios[{i}]", settings.origins.get("ref_audios"))
    fix = f"set {var} or ref_audios[{i}]" if var else f"fix ref_audios[{i}]"
    return f"(ref_audios[{i}], from {origin}); {fix}"


def check_references(settings: SetSettings) -> dict[str, list[str]]:
    """Check every ICL recording before loading anything; return the warnings per recording.

    Raises:
        FileNotFoundError: a recording is missing.
        ValueError: a recording is unreadable, too short or silent (naming file and parameter).
    """
    from fastqwen.prompts.reference_audio import load_reference_audio

    found: dict[str, list[str]] = {}
    for i, audio in enumerate(settings.voices if settings.set_name == "icl" else ()):
        if Path(audio).is_dir():
            raise ValueError(
                f"reference audio {rel(audio)} is a directory, not a recording "
                f"{_slot_fix(settings, i)} to an audio file"
            )
        if not Path(audio).is_file():
            raise FileNotFoundError(
                f"reference audio {audio} not found {_slot_fix(settings, i)} to an existing "
                "recording"
            )
        try:
            wav, sr = load_reference_audio(audio)
            found[audio] = audio_warnings(wav, sr)
        except ValueError as exc:
            text = str(exc).removeprefix(f"reference audio from {audio} ")
            raise ValueError(
                f"reference audio {rel(audio)} {text} {_slot_fix(settings, i)}"
            ) from None
        for warning in found[audio]:
            log.warning("reference audio %s: %s", rel(audio), warning)
    return found


def prepare_references(
    settings: SetSettings, transcriber: Callable[[Path, str], str] | None = None
) -> list[Reference]:
    """The text of each recording: given, else known (`ref_texts.json`), else transcribed."""
    if transcriber is None:
        from fastqwen.tools.transcribe import transcribe as transcriber
    backend, method = asr_method(settings.asr_backend)
    refs = []
    for i, (audio, text) in enumerate(zip(settings.voices, settings.ref_texts, strict=True)):
        path = Path(audio)
        known = known_text(path)
        if text is not None:
            source = settings.origins.get(f"ref_texts[{i}]", "parameter")
            refs.append(Reference(path, text, source, known))
            continue
        if known is not None:  # reproducible: ASR only as a check beside it
            try:
                heard = transcriber(path, backend)
            except Exception as exc:  # the check is optional (the asr extra may be missing)
                log.warning("could not transcribe %s as a check: %s", rel(path), exc)
                heard = None
            wer = None if heard is None else round(word_error_rate(known, heard), 4)
            refs.append(Reference(path, known, KNOWN_TEXTS_FILE, known, wer, transcript=heard))
            continue
        heard = transcriber(path, backend)
        if not re.search(r"[^\W_]", heard or ""):
            var = f"PARITY_REF_TEXT{REF_SUFFIXES[i]}" if i < len(REF_SUFFIXES) else None
            fix = f"set {var} or ref_texts[{i}]" if var else f"set ref_texts[{i}]"
            raise ValueError(
                f"the transcript of {rel(path)} is unusable ({heard!r}, from {method}); "
                f"{fix} to the words spoken in the recording"
            )
        refs.append(Reference(path, heard, f"transcribed: {method}", transcript=heard))
    return refs


def transcripts_text(references: list[Reference]) -> str:
    """`icl_transcripts.txt`: the text used for each recording and where it came from."""
    lines = ["# Reference texts of the ICL (voice clone) parity set", ""]
    for ref in references:
        lines += [ref.path.name, f"  source: {ref.text_source}", f"  text: {ref.text}"]
        if ref.known_text is not None and ref.known_text != ref.text:
            lines.append(f"  recorded text ({KNOWN_TEXTS_FILE}): {ref.known_text}")
        if ref.transcript is not None and ref.transcript != ref.text:
            lines.append(f"  ASR transcript (check): {ref.transcript}")
        if ref.word_error_rate is not None:
            lines.append(f"  word error rate of the transcript: {100 * ref.word_error_rate:.1f}%")
        lines += [f"  warning: {w}" for w in ref.warnings]
        lines.append("")
    return "\n".join(lines)


__all__ = [
    "Reference",
    "asr_method",
    "audio_warnings",
    "check_references",
    "known_text",
    "prepare_references",
    "transcripts_text",
    "word_error_rate",
]
