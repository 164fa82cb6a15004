"""Make the three committed voice-clone reference recordings with espeak-ng.

The Base (voice clone) parity runs need reference speech with a known transcript that we may
redistribute. Synthetic speech from espeak-ng is exactly that: no real person's voice, and
the transcript is the text we fed in. Three espeak-ng voices give three distinct speakers.

    apt-get install -y espeak-ng   # Debian; the script checks that it is on PATH
    python scripts/make_reference_audio.py            # writes samples/ref_audio*.wav
    python scripts/make_reference_audio.py --out-dir /tmp/refs

espeak-ng writes 22.05 kHz 16-bit mono; we resample to 24 kHz with the same loader the
engine uses (`fastqwen.prompts.reference_audio.load_reference_audio`), peak-normalise to
-1 dBFS and save 16-bit PCM, so each file is 6-12 s and under 600 KB.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from fastqwen.constants import SAMPLE_RATE
from fastqwen.prompts.reference_audio import load_reference_audio

logger = logging.getLogger("make_reference_audio")

REPO_ROOT = Path(__file__).resolve().parents[1]
PEAK_DBFS = -1.0
MIN_SECONDS, MAX_SECONDS = 6.0, 12.0
MAX_BYTES = 600_000


@dataclass(frozen=True)
class Recording:
    filename: str
    voice: str  # espeak-ng voice+variant (`espeak-ng --voices=en`, `--voices=variant`)
    words_per_minute: int
    pitch: int  # espeak-ng pitch, 0..99 (default 50)
    text: str


# Slow speech with a small word gap (-g) transcribes reliably with Whisper tiny.en.
# Texts are plain words without digits so that a transcript can be compared word by word.
RECORDINGS = (
    Recording(
        "ref_audio.wav",
        "en-gb+f3",  # British English, female variant
        130,
        50,
        "Please remember to water the plants on Tuesday morning, and leave the spare key "
        "under the blue flower pot by the front door.",
    ),
    Recording(
        "ref_audio_2.wav",
        "en-us+m1",  # American English, male variant
        130,
        40,
        "The weather station recorded light rain in the afternoon, followed by clear skies "
        "and a cool evening with a few bright stars.",
    ),
    Recording(
        "ref_audio_3.wav",
        "en+klatt2",  # English with the Klatt formant synthesiser: a third, distinct timbre
        130,
        65,
        "Our small bakery opens early every day, and the first loaves of warm bread are "
        "usually gone before the morning train arrives.",
    ),
)


def espeak_version() -> str:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def synthesize(rec: Recording, out_path: Path) -> float:
    """Speak `rec` into `out_path` (24 kHz mono PCM_16) and return its duration in seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "espeak.wav"
        cmd = [
            "espeak-ng",
            "-v", rec.voice,
            "-s", str(rec.words_per_minute),
            "-p", str(rec.pitch),
            "-g", "3",  # extra gap between words, in 10 ms units at the default speed
            "-w", str(raw),
            rec.text,
        ]  # fmt: skip
        subprocess.run(cmd, check=True)
        wav, sr = load_reference_audio(raw, target_sr=SAMPLE_RATE)
    wav = wav * (10 ** (PEAK_DBFS / 20) / np.abs(wav).max())
    sf.write(out_path, wav, sr, subtype="PCM_16")
    duration = wav.size / sr
    size = out_path.stat().st_size
    if not MIN_SECONDS <= duration <= MAX_SECONDS or size > MAX_BYTES:
        raise RuntimeError(
            f"{out_path.name}: {duration:.1f} s, {size} bytes; want {MIN_SECONDS}-{MAX_SECONDS} s "
            f"and <= {MAX_BYTES} bytes. Adjust its text or words_per_minute."
        )
    return duration


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=REPO_ROOT / "samples",
        help="where to write the WAVs and ref_texts.json (default: samples/)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if shutil.which("espeak-ng") is None:
        parser.error("espeak-ng is not on PATH; on Debian: apt-get install -y espeak-ng")
    logger.info("%s", espeak_version())
    args.out_dir.mkdir(parents=True, exist_ok=True)

    texts = {}
    for rec in RECORDINGS:
        duration = synthesize(rec, args.out_dir / rec.filename)
        texts[rec.filename] = rec.text
        logger.info("%s: %s, %.2f s", rec.filename, rec.voice, duration)
    texts_path = args.out_dir / "ref_texts.json"
    texts_path.write_text(json.dumps(texts, indent=2) + "\n")
    logger.info("wrote %s", texts_path)


if __name__ == "__main__":
    main()
