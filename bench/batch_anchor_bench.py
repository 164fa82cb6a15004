"""The batching fork of the anchor, faster-qwen3-tts-batch 0.2.0: throughput per batch size.

Run it in its own process, in the fork's environment (faster-qwen3-tts 0.2.6 over the
qwen-tts 0.1.1 set; it fails on 0.5.4), on a Base checkpoint (the fork batches voice
clone only):

    PYTHONPATH=$BATCH_ANCHOR_PYTHONPATH python3 bench/batch_anchor_bench.py \\
        --model-dir $FASTQWEN_CACHE/random/1.7b-base --model-name random:1.7b-base \\
        --batch-sizes 1,4,8,16,32,64 --budget-s 150 --out OUT_DIR

What it measures, to compare with `fastqwen bench --batch-sizes` (same request texts and
seeds, `fastqwen.tools.bench.throughput`; same record fields and arithmetic):
- voice clone in x-vector mode (`xvec_only=True`) from a short synthetic reference WAV
  written here (a voiced tone with vibrato and a little noise; the speaker encoder only
  needs audio), with the seed prompts as texts; our engine speaks the same texts with
  CustomVoice speakers, which costs the same per frame (the record's `note` says so);
- every request with min_new_tokens = max_new_tokens (default 168), so none stops early;
  `frames` is what the fork made;
- per size: the fork's wrapper built for that size (its CUDA graphs are captured for a
  fixed batch), `warmup()`, one warm-up round, then `--batch-rounds` timed rounds of one
  `generate_voice_clone_batch` call each (prompt building, generation and codec decode);
  the record reports the best round, as ours does;
- per-stream times from the fork's own timing dicts (prefill and decode loop, read by
  wrapping `batched_fast_generate`), so `per_stream_rtf_*` leaves out the codec decode.

Sizes run in ascending order while the time budget (`--budget-s`) allows: a size whose
estimated time (the last size's time scaled by the batch ratio) does not fit is skipped,
with a record saying so. Any failure still writes a record whose `error` says why.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import math
import platform
import random
import struct
import sys
import time
import traceback
import wave
from pathlib import Path

log = logging.getLogger("batch_anchor_bench")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's fastqwen
from fastqwen.tools.bench.measure import FIELDS, SCHEMA  # noqa: E402
from fastqwen.tools.bench.throughput import (  # noqa: E402
    DEFAULT_BATCH_ROUNDS,
    Round,
    StreamTiming,
    mix_description,
    parse_batch_sizes,
    request_mix,
    throughput_fields,
)
from fastqwen.tools.defaults import DEFAULT_SEED, DEMO_MAX_NEW_TOKENS  # noqa: E402
from fastqwen.tools.env import git_state, package_version  # noqa: E402

ENGINE = "faster-qwen3-tts-batch"
FORK_BATCH_SIZES = "1,4,8,16,32,64"
REF_TEXT = "This is a short synthetic reference recording."
NOTE = (
    "voice clone, x-vector only, on a Base checkpoint, from a synthetic reference WAV (the "
    "fork batches voice clone only); fastqwen's batch records speak the same texts with "
    "CustomVoice speakers"
)

# ---------------------------------------------------------------- pure helpers


def write_reference_wav(path: str | Path, seconds: float = 3.0, rate: int = 24000, seed: int = 0):
    """A mono 16-bit WAV of a voiced tone (150 Hz with harmonics and a 5 Hz vibrato) plus
    a little noise: enough for the speaker encoder, built without any recording."""
    rng = random.Random(seed)
    n = int(seconds * rate)
    frames = bytearray()
    phase = 0.0
    for i in range(n):
        t = i / rate
        f0 = 150.0 * (1 + 0.03 * math.sin(2 * math.pi * 5 * t))
        phase += 2 * math.pi * f0 / rate
        envelope = min(1.0, t / 0.05, (seconds - t) / 0.05)
        voiced = sum(math.sin(k * phase) / k for k in (1, 2, 3, 4, 5))
        sample = 0.25 * envelope * voiced + 0.01 * rng.gauss(0, 1)
        frames += struct.pack("<h", max(-32767, min(32767, int(sample * 32767))))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(bytes(frames))
    return path


def fork_requests(batch_size: int, seed: int, ref_audio: str, language: str = "english"):
    """The fork's request dicts for `request_mix(batch_size, seed)` (texts and seeds; the
    voice is the reference WAV's)."""
    mix = request_mix(batch_size, seed)
    return mix, [
        {"text": r.text, "language": language, "ref_audio": ref_audio, "ref_text": REF_TEXT}
        for r in mix
    ]


def fits_budget(elapsed_s: float, budget_s: float, last: tuple[int, float] | None, b: int) -> bool:
    """Whether size `b` is likely to finish inside the budget: the last size's time
    (size, seconds) scaled by b / size, against what is left. The first size always runs."""
    if last is None:
        return True
    size, seconds = last
    return elapsed_s + seconds * b / size <= budget_s


def streams_from(outputs: list, timings: list[dict], frames: list[int]) -> tuple:
    """StreamTimings from the fork's outputs ([(audio_arrays, sample_rate)]), its timing
    dicts and the frames of each sample."""
    streams = []
    for (arrays, sr), timing, n in zip(outputs, timings, frames, strict=True):
        samples = sum(len(a) for a in arrays)
        prefill_s = timing.get("prefill_ms", 0.0) / 1000
        decode_s = timing.get("decode_s", 0.0)
        streams.append(
            StreamTiming(
                frames=n,
                audio_s=samples / sr,
                generate_s=prefill_s + decode_s,
                loop_s=decode_s,
                prefill_s=prefill_s,
                eos_reached=False,  # min_new_tokens = max_new_tokens: no early EOS
            )
        )
    return tuple(streams)


# ---------------------------------------------------------------- the fork


def environment(device: str) -> dict:
    import torch
    import transformers

    commit, dirty = git_state()
    return {
        "device_name": torch.cuda.get_device_name(device) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "package": f"faster-qwen3-tts-batch {package_version('faster-qwen3-tts-batch')} "
        f"(faster-qwen3-tts {package_version('faster-qwen3-tts')}, "
        f"qwen-tts {package_version('qwen-tts')})",
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "source_hash": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12],
        "timestamp": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


class Fork:
    """The fork's model, rebuilt per batch size over one loaded base, plus the timing
    dicts and frames of its last batch (from a wrapper around `batched_fast_generate`)."""

    def __init__(self, model_dir: str, device: str, dtype: str, max_seq_len: int):
        import faster_qwen3_tts_batch.batched_generate as batched
        import torch
        from faster_qwen3_tts_batch import BatchedFasterQwen3TTS

        self.cls = BatchedFasterQwen3TTS
        self.device = device
        self.max_seq_len = max_seq_len
        self.timings: list[dict] = []
        self.frames: list[int] = []
        original = batched.batched_fast_generate

        def recording(*args, **kwargs):
            results = original(*args, **kwargs)
            self.timings = [dict(timing or {}) for _, timing in results]
            self.frames = [0 if codes is None else int(codes.shape[0]) for codes, _ in results]
            return results

        # generate_voice_clone_batch imports it from this module at each call.
        batched.batched_fast_generate = recording
        self.model = BatchedFasterQwen3TTS.from_pretrained(
            model_dir,
            max_batch_size=1,
            device=device,
            dtype=getattr(torch, dtype),
            max_seq_len=max_seq_len,
        )
        self.model.warmup()

    def resize(self, batch_size: int) -> None:
        """The fork's wrapper for `batch_size` over the same weights; warmup() captures its
        graphs."""
        import gc

        import torch

        if self.model.max_batch_size != batch_size:
            base = self.model.base
            self.model = None
            gc.collect()
            torch.cuda.empty_cache()
            self.model = self.cls(base, max_batch_size=batch_size, max_seq_len=self.max_seq_len)
            self.model.warmup()

    def round(self, requests: list[dict], seeds: list[int], max_new_tokens: int) -> Round:
        import torch

        torch.manual_seed(seeds[0])  # the fork draws for the whole batch from one generator
        self.timings, self.frames = [], []
        torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        outputs = self.model.generate_voice_clone_batch(
            requests,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            xvec_only=True,
        )
        torch.cuda.synchronize(self.device)
        wall = time.perf_counter() - t0
        if len(self.timings) != len(requests):
            raise RuntimeError(
                "faster_qwen3_tts_batch.batched_generate.batched_fast_generate was not called "
                "(or returned another count): the wrapper could not read the fork's timing"
            )
        return Round(len(requests), wall, streams_from(outputs, self.timings, self.frames))


def run(args: argparse.Namespace, base: dict, emit) -> None:
    """Every size in turn; `emit(record)` writes each as soon as it is made."""
    import torch
    import transformers

    started = time.perf_counter()
    rec = dict(base)

    def fail_all(sizes, message: str, tb: str | None = None) -> None:
        for b in sizes:
            emit({**rec, "batch_size": b, "error": message, "traceback": tb})

    try:
        rec.update(environment(args.device))
        if int(transformers.__version__.split(".")[0]) >= 5:
            raise RuntimeError(
                f"transformers {transformers.__version__} found; the fork runs over "
                "faster-qwen3-tts 0.2.6 and transformers 4.x: PYTHONPATH=$BATCH_ANCHOR_PYTHONPATH"
            )
        if not torch.cuda.is_available():
            raise RuntimeError("faster-qwen3-tts-batch needs CUDA (it captures CUDA graphs)")
        model_dir = Path(args.model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        marker_path = model_dir / "fastqwen_random.json"
        marker = json.loads(marker_path.read_text()) if marker_path.is_file() else {}
        rec.update(
            model_path=str(model_dir.resolve()),
            size=marker.get("size") or config.get("tts_model_size"),
            kind=config.get("tts_model_type"),
            random_weights=bool(marker),
            engine_config={"backend": "torch", "max_seq_len": args.max_seq_len, "xvec_only": True},
        )
        if rec["kind"] != "base":
            raise ValueError(
                f"the fork batches voice clone: needs a Base checkpoint, got {rec['kind']}"
            )
        ref = write_reference_wav(Path(args.work_dir) / "batch_anchor_ref.wav", args.ref_seconds)
        t0 = time.perf_counter()
        fork = Fork(args.model_dir, args.device, args.dtype, args.max_seq_len)
        rec["load_s"] = round(time.perf_counter() - t0, 3)
    except Exception as exc:
        log.exception("fork setup failed")
        fail_all(args.batch_sizes, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        return

    last: tuple[int, float] | None = None
    for i, b in enumerate(args.batch_sizes):
        elapsed = time.perf_counter() - started
        if not fits_budget(elapsed, args.budget_s, last, b):
            fail_all(
                args.batch_sizes[i:],
                f"skipped: time budget ({args.budget_s:.0f} s, {elapsed:.0f} s spent; batch "
                f"{last[0]} took {last[1]:.0f} s)",
            )
            return
        out = {**rec, "batch_size": b, "runs": args.batch_rounds}
        t_size = time.perf_counter()
        try:
            mix, requests = fork_requests(b, args.seed, str(ref))
            seeds = [r.seed for r in mix]
            out["batch_mix"] = mix_description(mix)
            fork.resize(b)
            t0 = time.perf_counter()
            warm = fork.round(requests, seeds, args.max_new_tokens)
            out.update(
                warmup_s=round(time.perf_counter() - t0, 3),
                warmup_frames=max(s.frames for s in warm.streams),
            )
            torch.cuda.reset_peak_memory_stats(args.device)
            rounds = [
                fork.round(requests, seeds, args.max_new_tokens) for _ in range(args.batch_rounds)
            ]
            out.update(throughput_fields(rounds))
            out.update(
                peak_active=b,
                peak_memory_bytes=int(torch.cuda.max_memory_allocated(args.device)),
            )
        except Exception as exc:  # out of memory at one size: record it, try no larger one
            log.exception("fork at batch %d failed", b)
            out.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            emit(out)
            fail_all(args.batch_sizes[i + 1 :], f"skipped: batch {b} failed")
            return
        last = (b, time.perf_counter() - t_size)
        emit(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model-dir", required=True, help="a Base checkpoint directory")
    p.add_argument("--model-name", default=None, help="label for the records (default: the dir)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--batch-sizes", default=FORK_BATCH_SIZES, help="default: %(default)s")
    p.add_argument("--batch-rounds", type=int, default=DEFAULT_BATCH_ROUNDS)
    p.add_argument("--max-new-tokens", type=int, default=DEMO_MAX_NEW_TOKENS)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--max-seq-len", type=int, default=1024, help="the fork's static caches")
    p.add_argument("--ref-seconds", type=float, default=3.0, help="synthetic reference length")
    p.add_argument("--budget-s", type=float, default=math.inf, help="seconds for all sizes")
    p.add_argument("--work-dir", default="/tmp", help="where the reference WAV is written")
    p.add_argument("--out", default=None, help="directory: one <engine>-b<B>.json per size")
    args = p.parse_args(argv)
    try:
        args.batch_sizes = parse_batch_sizes(args.batch_sizes)
    except ValueError as exc:
        p.error(str(exc))
    if args.batch_rounds < 1:
        p.error(f"--batch-rounds must be >= 1, got {args.batch_rounds}")
    if args.max_new_tokens < 2:
        p.error(f"--max-new-tokens must be >= 2, got {args.max_new_tokens}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "qwen_tts", "faster_qwen3_tts", "faster_qwen3_tts_batch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    base = dict.fromkeys(FIELDS)
    base.update(
        schema=SCHEMA,
        engine=ENGINE,
        model=args.model_name or args.model_dir,
        dtype=args.dtype,
        device=args.device,
        language="english",
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        note=NOTE,
    )
    records: list[dict] = []

    def emit(record: dict) -> None:
        records.append(record)
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
        if args.out:
            path = Path(args.out) / f"{ENGINE}-b{record['batch_size']}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1) + "\n")

    run(args, base, emit)
    return int(not records or any(r.get("error") for r in records))


if __name__ == "__main__":
    sys.exit(main())
