"""`fastqwen say "Hello" --voice aiden -o out.wav`: speak a text into a file.

Long text is split at sentence boundaries and every sentence is submitted at once
(`FastQwen3TTS.submit_many`), so the engine generates them as one batch; the audio is
joined in order with a short pause. Each sentence's `max_new_tokens` is capped from its
length, so a sentence whose EOS never comes stops after a few seconds of audio instead
of running to the configured limit.

The default model, `auto:Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice`, is the small CustomVoice
model when the hub can be reached, and otherwise its random-weight stand-in (with a banner).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import fields
from pathlib import Path

import numpy as np

from fastqwen.config import SamplingParams
from fastqwen.tools.defaults import token_cap

log = logging.getLogger(__name__)

DEFAULT_MODEL = "auto:Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
DEFAULT_VOICE = "aiden"
PAUSE_S = 0.2  # silence between sentences
# A sentence ends at . ! ? or … (followed by space), or at CJK full stops (no space needed).
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|(?<=[。！？])")


def split_sentences(text: str) -> list[str]:
    """The text's sentences, whitespace-trimmed, empty ones dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def read_text(args: argparse.Namespace) -> str:
    if args.file is not None:
        return sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    if args.text == "-":
        return sys.stdin.read()
    if args.text is None:
        raise ValueError("give the text as an argument, with -f FILE, or '-' for stdin")
    return args.text


def say(engine, text: str, args: argparse.Namespace, progress: bool = True) -> np.ndarray:
    """Speak `text` with `engine`, sentence by sentence in one batch; the joined audio."""
    from tqdm.auto import tqdm

    from fastqwen.prompts.builder import VoiceRequest

    sentences = split_sentences(text)
    if not sentences:
        raise ValueError("the text is empty; give something to say")
    kind = engine.model_kind
    given = {f.name: getattr(args, f.name) for f in fields(SamplingParams)}
    base = SamplingParams.from_kwargs(**given)
    voice: dict = {"language": (args.language or "auto").lower()}
    if kind != "custom_voice" and args.voice is not None:
        raise ValueError(f"--voice names a speaker of a CustomVoice model; this is {kind!r}")
    if kind == "custom_voice":
        speaker = (args.voice or DEFAULT_VOICE).lower()
        voice.update(mode="custom_voice", speaker=speaker, instruct=args.instructions)
    elif kind == "voice_design":
        if not args.instructions:
            raise ValueError("a VoiceDesign model needs --instructions describing the voice")
        voice.update(mode="voice_design", instruct=args.instructions)
    else:
        if args.instructions is not None:
            raise ValueError("--instructions is not supported by a Base (voice clone) model")
        if args.ref_audio is None:
            raise ValueError("a Base model clones a voice: give --ref-audio (and --ref-text)")
        prompt = engine.create_voice_clone_prompt(
            args.ref_audio, args.ref_text, x_vector_only_mode=args.x_vector_only
        )
        voice.update(mode="voice_clone", voice_clone_prompt=prompt)
    requests = [VoiceRequest(text=s, **voice) for s in sentences]
    params = [
        SamplingParams.from_kwargs(
            **{**given, "max_new_tokens": token_cap(s, base.max_new_tokens)},
        )
        for s in sentences
    ]
    handles = engine.submit_many(requests, params, args.seed, streaming=False)
    results: list = [None] * len(handles)
    bar = tqdm(total=len(handles), unit="sentence", disable=not progress)
    try:
        with ThreadPoolExecutor(max_workers=min(4, len(handles))) as pool:
            waiting = {pool.submit(h.result): i for i, h in enumerate(handles)}
            for done in as_completed(waiting):
                results[waiting[done]] = done.result()
                bar.update(1)
    except BaseException:
        for h in handles:
            h.cancel()
        raise
    finally:
        bar.close()
    for i, r in enumerate(results):
        if not r.eos_reached:
            log.warning("sentence %d hit its cap of %d frames without EOS", i + 1, r.frames)
    sr = results[0].sample_rate
    pause = np.zeros(int(args.pause * sr), dtype=np.float32)
    pieces = []
    for i, r in enumerate(results):
        pieces += [pause, r.audio] if i else [r.audio]
    return np.concatenate(pieces)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "say",
        help="speak a text into an audio file",
        description="Speak a text into an audio file (format from the extension: .wav, "
        ".flac, ...). Sentences are generated together as one batch.",
    )
    p.add_argument("text", nargs="?", help="what to say; '-' reads stdin")
    p.add_argument("-f", "--file", help="read the text from FILE ('-' for stdin)")
    p.add_argument("-o", "--output", default="out.wav", help="output file (default out.wav)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model string (default {DEFAULT_MODEL})")
    p.add_argument("--device", default=None, help="cuda:N or cpu (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument(
        "--voice", default=None, help=f"speaker of a CustomVoice model (default {DEFAULT_VOICE})"
    )
    p.add_argument("--language", default=None, help="language (default auto)")
    p.add_argument("--instructions", help="style (CustomVoice) or voice description (VoiceDesign)")
    p.add_argument("--ref-audio", help="reference recording to clone (Base models)")
    p.add_argument("--ref-text", help="what the reference says (ICL cloning)")
    p.add_argument("--x-vector-only", action="store_true", help="clone from the x-vector alone")
    p.add_argument("--seed", type=int, default=None, help="RNG seed (default: random)")
    p.add_argument("--pause", type=float, default=PAUSE_S, help="seconds between sentences")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    sampling = p.add_argument_group("sampling (SamplingParams; default: its defaults)")
    for f in fields(SamplingParams):
        flag = "--" + f.name.replace("_", "-")
        if str(f.type) == "bool":
            sampling.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = int if str(f.type) == "int" else float
            sampling.add_argument(flag, type=kind, default=None, help=f"default {f.default}")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import soundfile as sf
    import torch

    from fastqwen.api import FastQwen3TTS

    text = read_text(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    engine = FastQwen3TTS.from_pretrained(args.model, device=device, dtype=args.dtype)
    try:
        audio = say(engine, text, args, progress=not args.no_progress)
    finally:
        engine.close()
    sf.write(args.output, audio, engine.sample_rate)
    print(f"{args.output}: {len(audio) / engine.sample_rate:.2f} s")
    return 0
