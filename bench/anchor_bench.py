"""faster-qwen3-tts 0.5.4 ("the anchor") on the checkpoint and prompt of fastqwen.tools.bench.run.

Run it in its own process, never beside qwen-tts 0.1.1 (the anchor's qwen-tts-hf has the
same import name, `qwen_tts`, and needs transformers 5):

    PYTHONPATH=$ANCHOR_PYTHONPATH python3 bench/anchor_bench.py --model-dir DIR \
        --model-name random:1.7b-custom_voice --out anchor-1.7b.json

For that reason the only fastqwen modules it imports are `fastqwen.tools.bench.measure`
(torch and the standard library: median and spread, byte counts, profiler counts, the record
schema), `fastqwen.tools.defaults` (the demo request), `fastqwen.tools.env` (versions, git)
and `fastqwen.constants`, none of which loads qwen_tts or transformers; its record has the
same keys as fastqwen.tools.bench.records.FIELDS.

What is timed, to match fastqwen.tools.bench.run:
- ms_per_frame: the anchor's own generation time (prefill + decode loop, CUDA-synced, from
  the timing dict of `faster_qwen3_tts.generate.fast_generate`, which we wrap to read it)
  over its frames. Like fastqwen's `generate_s`, it leaves out prompt building and codec
  decode. wall_s is the whole `generate_custom_voice` call.
- time to first audio: `generate_custom_voice_streaming(chunk_size=12)` (its default), from
  the call to its first yielded audio chunk.
- Graph capture happens inside the first call; it is part of warmup_s.

On any failure the script still prints (and writes) one record whose `error` says why.

With `--batch-sizes 1,8` it measures throughput instead (one record per size, engine
"faster-qwen3-tts", into the directory `--out`): faster-qwen3-tts 0.5.4 has no batching, so
the B requests of `fastqwen.tools.bench.throughput.request_mix` run one after another, each
with min_new_tokens = max_new_tokens, and throughput is their audio over the wall time of
all of them (codec decode included). The time grows with B at a constant throughput, so
keep B small (device scripts use 1 and 8).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import platform
import sys
import time
import traceback
from pathlib import Path

log = logging.getLogger("anchor_bench")

# The checkout this script sits in, so its fastqwen imports without an install.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# Safe beside the anchor's transformers 5 (fastqwen/__init__ loads its public names lazily).
from fastqwen.constants import FRAME_RATE_HZ  # noqa: E402
from fastqwen.tools.bench.measure import (  # noqa: E402
    FIELDS,
    PROFILE_TOKENS,
    PROMPT_1,
    SCHEMA,
    module_tensors,
    profile_counts,
    spread,
    tensor_bytes,
)
from fastqwen.tools.bench.throughput import (  # noqa: E402
    DEFAULT_BATCH_ROUNDS,
    Round,
    StreamTiming,
    mix_description,
    parse_batch_sizes,
    request_mix,
    throughput_fields,
)
from fastqwen.tools.defaults import BENCH_RUNS, DEFAULT_SEED, DEMO_MAX_NEW_TOKENS  # noqa: E402
from fastqwen.tools.env import git_state, package_version  # noqa: E402

# ---------------------------------------------------------------- small helpers


def cache_tensors(cache) -> list:
    """Key and value tensors of a transformers StaticCache (5.x `layers`, or 4.x lists)."""
    import torch

    out = []
    for layer in getattr(cache, "layers", None) or []:
        out += [getattr(layer, name, None) for name in ("keys", "values")]
    for name in ("key_cache", "value_cache"):
        out += list(getattr(cache, name, None) or [])
    return [t for t in out if isinstance(t, torch.Tensor)]


def environment(device: str) -> dict:
    import torch
    import transformers

    commit, dirty = git_state()  # in the working directory (device_run.sh: the checkout)
    return {
        "device_name": torch.cuda.get_device_name(device) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "package": f"faster-qwen3-tts {package_version('faster-qwen3-tts')} "
        f"(qwen-tts-hf {package_version('qwen-tts-hf')})",
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        # This script's own hash: the anchor code itself is the pinned wheel.
        "source_hash": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12],
        "timestamp": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def read_marker(model_dir: Path) -> dict:
    """fastqwen's random-checkpoint marker (size, seed), if the directory has one."""
    path = model_dir / "fastqwen_random.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- the anchor


class Anchor:
    """A loaded FasterQwen3TTS plus the timing of its last `fast_generate` call."""

    def __init__(self, model_dir: str, device: str, dtype: str, max_seq_len: int):
        import faster_qwen3_tts.generate as anchor_generate
        import torch
        from faster_qwen3_tts import FasterQwen3TTS

        self.last: dict = {}
        original = anchor_generate.fast_generate

        def recording(*args, **kwargs):
            codes, timing = original(*args, **kwargs)
            self.last = {"timing": timing, "frames": 0 if codes is None else int(codes.shape[0])}
            return codes, timing

        # generate_custom_voice imports fast_generate from this module at each call.
        anchor_generate.fast_generate = recording
        self.device = device
        self.model = FasterQwen3TTS.from_pretrained(
            model_dir, device=device, dtype=getattr(torch, dtype), max_seq_len=max_seq_len
        )

    def sync(self) -> None:
        import torch

        torch.cuda.synchronize(self.device)

    def generate(
        self, args, max_new_tokens: int, request=None, min_new_tokens: int | None = None
    ) -> dict:
        """One non-streamed utterance; returns frames and times like a GenerationResult.

        request: a `throughput.BatchRequest` (text, speaker, seed) instead of args'.
        """
        import torch

        text, speaker, seed = (args.text, args.speaker, args.seed) if request is None else (
            request.text, request.speaker, request.seed
        )  # fmt: skip
        extra = {} if min_new_tokens is None else {"min_new_tokens": min_new_tokens}
        self.last = {}
        torch.manual_seed(seed)
        self.sync()
        t0 = time.perf_counter()
        wavs, sr = self.model.generate_custom_voice(
            text=text,
            speaker=speaker,
            language=args.language,
            max_new_tokens=max_new_tokens,
            **extra,
        )
        self.sync()
        wall_s = time.perf_counter() - t0
        if not self.last:
            raise RuntimeError(
                "faster_qwen3_tts.generate.fast_generate was not called: "
                "the wrapper could not read the anchor's timing (API changed?)"
            )
        timing, frames = self.last["timing"], self.last["frames"]
        generate_s = timing["prefill_ms"] / 1000 + timing["decode_s"]
        return {
            "frames": frames,
            "generate_s": generate_s,
            "prefill_ms": timing["prefill_ms"],
            "wall_s": wall_s,
            "ms_per_frame": 1000 * generate_s / max(frames, 1),
            "audio_s": len(wavs[0]) / sr,
            # The anchor does not say; with no EOS it makes exactly max_new_tokens frames.
            "eos_reached": frames < max_new_tokens,
        }

    def time_to_first_audio(self, args) -> float:
        """ms from the streaming call to its first audio chunk; the rest is dropped."""
        import torch

        torch.manual_seed(args.seed)
        self.sync()
        t0 = time.perf_counter()
        chunks = self.model.generate_custom_voice_streaming(
            text=args.text,
            speaker=args.speaker,
            language=args.language,
            max_new_tokens=args.max_new_tokens,
            chunk_size=args.chunk_size,
        )
        try:
            next(chunks)
            return 1000 * (time.perf_counter() - t0)
        finally:
            chunks.close()


def run_setup(args: argparse.Namespace, rec: dict) -> None:
    """Check the environment and the checkpoint, fill the model's fields of `rec`, and load
    the anchor into `rec["_anchor"]` (popped by the caller)."""
    import torch
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        raise RuntimeError(
            f"transformers {transformers.__version__} found; faster-qwen3-tts 0.5.4 needs 5.x. "
            "Run with PYTHONPATH=$ANCHOR_PYTHONPATH (see .gpu-wheels/on-device.sh)."
        )
    if not torch.cuda.is_available():
        raise RuntimeError("faster-qwen3-tts needs CUDA (it captures CUDA graphs); none found")
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: build it first with fastqwen")
    config = json.loads((model_dir / "config.json").read_text())
    marker = read_marker(model_dir)
    rec.update(
        model_path=str(model_dir.resolve()),
        size=marker.get("size") or config.get("tts_model_size"),
        kind=config.get("tts_model_type"),
        random_weights=bool(marker),
        engine_config={
            "backend": "torch",
            "attn_implementation": "sdpa",
            "max_seq_len": args.max_seq_len,
        },
    )
    torch.cuda.reset_peak_memory_stats(args.device)

    t0 = time.perf_counter()
    rec["_anchor"] = Anchor(args.model_dir, args.device, args.dtype, args.max_seq_len)
    rec["load_s"] = round(time.perf_counter() - t0, 3)


def run(args: argparse.Namespace, rec: dict) -> None:
    """Fill `rec` in place, so a failure part-way still leaves what was measured."""
    import torch

    run_setup(args, rec)
    anchor = rec.pop("_anchor")

    t0 = time.perf_counter()
    warm = anchor.generate(args, args.warmup_max_new_tokens or args.max_new_tokens)
    rec.update(warmup_s=round(time.perf_counter() - t0, 3), warmup_frames=warm["frames"])
    results = []
    for i in range(args.runs):
        results.append(anchor.generate(args, args.max_new_tokens))
        log.info("anchor run %d: %s", i, results[-1])
    ms, ms_min, ms_max = spread([r["ms_per_frame"] for r in results])
    last = results[-1]
    rec.update(
        frames=last["frames"],
        frames_all_runs=sorted({r["frames"] for r in results}),
        eos_reached=last["eos_reached"],
        audio_s=round(last["audio_s"], 3),
        ms_per_frame=ms,
        ms_per_frame_min=ms_min,
        ms_per_frame_max=ms_max,
        ms_per_frame_runs=[round(r["ms_per_frame"], 3) for r in results],
        rtf=round(1000.0 / FRAME_RATE_HZ / ms, 3),
        generate_s=spread([r["generate_s"] for r in results], 4)[0],
        wall_s=spread([r["wall_s"] for r in results], 4)[0],
        prefill_ms=spread([r["prefill_ms"] for r in results])[0],
    )

    ttfa = [anchor.time_to_first_audio(args) for _ in range(args.runs + 1)]
    med, lo, hi = spread(ttfa[1:])
    rec.update(
        ttfa_ms=med,
        ttfa_ms_min=lo,
        ttfa_ms_max=hi,
        ttfa_warmup_ms=round(ttfa[0], 3),
        ttfa_first_chunk_frames=args.chunk_size,
        chunk_frames=args.chunk_size,
    )

    base = anchor.model.model.model  # FasterQwen3TTS -> Qwen3TTSModel -> the nn.Module
    codec = getattr(getattr(base, "speech_tokenizer", None), "model", None)
    weights = tensor_bytes(module_tensors(base, codec))
    caches = (anchor.model.talker_graph.static_cache, anchor.model.predictor_graph.static_cache)
    kv = tensor_bytes(t for c in caches for t in cache_tensors(c)) or None
    peak = int(torch.cuda.max_memory_allocated(args.device))
    rec.update(
        weight_bytes=weights,
        talker_weight_bytes=tensor_bytes(module_tensors(base.talker)),
        kv_cache_bytes=kv,
        peak_gpu_bytes=peak,
        peak_over_weights_kv=round(peak / max(weights + (kv or 0), 1), 3),
    )

    if args.profile:
        if args.out:  # the timings survive a process that dies in the profiler
            write(args.out, {**rec, "profile_error": "the process ended while profiling"})
        try:
            tokens = tuple(args.profile_tokens)
            rec.update(profile_counts(lambda n: anchor.generate(args, n)["frames"], tokens))
        except Exception as exc:  # profiling is optional: keep the timings
            log.warning("profiling failed: %r", exc)
            rec["profile_error"] = f"{type(exc).__name__}: {exc}"


def sequential_round(generate, requests, max_new_tokens: int) -> Round:
    """The B requests one after another through `generate(request, max_new_tokens,
    min_new_tokens) -> dict` (`Anchor.generate`'s result), timed from the first call to the
    last return."""
    t0 = time.perf_counter()
    results = [generate(r, max_new_tokens, max_new_tokens) for r in requests]
    wall = time.perf_counter() - t0
    streams = tuple(
        StreamTiming(
            frames=r["frames"],
            audio_s=r["audio_s"],
            generate_s=r["generate_s"],
            loop_s=r["generate_s"] - r["prefill_ms"] / 1000,
            prefill_s=r["prefill_ms"] / 1000,
            eos_reached=r["eos_reached"],
        )
        for r in results
    )
    return Round(len(requests), wall, streams)


SEQUENTIAL_NOTE = (
    "faster-qwen3-tts has no batching: the B requests ran one after another; measured at "
    "small B only, since its time grows with B at a constant throughput"
)


def run_sequential(args: argparse.Namespace, base: dict) -> list[dict]:
    """Throughput records of the anchor at each of `args.batch_sizes`, one after another.

    `base` holds the fields every record shares; each record is written to
    `args.out/faster-qwen3-tts-b<B>.json` as soon as it is made.
    """
    import torch

    records = []
    rec = dict(base)
    try:
        rec.update(environment(args.device))
        anchor_rec = dict(rec)
        run_setup(args, anchor_rec)  # checks, model facts, load
        anchor = anchor_rec.pop("_anchor")
        rec = anchor_rec
        t0 = time.perf_counter()
        anchor.generate(args, args.max_new_tokens)  # graph capture: the warm-up
        rec["warmup_s"] = round(time.perf_counter() - t0, 3)
    except Exception as exc:
        log.exception("anchor setup failed")
        rec.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        for b in args.batch_sizes:
            records.append({**rec, "batch_size": b})
            write_batch(args.out, records[-1])
        return records

    def generate(request, n, n_min):
        return anchor.generate(args, n, request=request, min_new_tokens=n_min)

    for b in args.batch_sizes:
        out = {**rec, "batch_size": b, "runs": args.batch_rounds, "note": SEQUENTIAL_NOTE}
        requests = request_mix(b, args.seed)
        out["batch_mix"] = mix_description(requests)
        try:
            torch.cuda.reset_peak_memory_stats(args.device)
            rounds = [
                sequential_round(generate, requests, args.max_new_tokens)
                for _ in range(args.batch_rounds)
            ]
            out.update(throughput_fields(rounds))
            out.update(
                peak_active=1,
                peak_memory_bytes=int(torch.cuda.max_memory_allocated(args.device)),
            )
        except Exception as exc:
            log.exception("anchor at batch %d failed", b)
            out.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        records.append(out)
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
        write_batch(args.out, out)
    return records


def write_batch(out: str | None, record: dict) -> None:
    """`out/<engine>-b<B>.json`, when `out` is given."""
    if out:
        write(str(Path(out) / f"{record['engine']}-b{record['batch_size']}.json"), record)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model-dir", required=True, help="checkpoint directory (built by fastqwen)")
    p.add_argument("--model-name", default=None, help="label for the record (default: the dir)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--runs", type=int, default=BENCH_RUNS, help="timed warm runs after one warm-up")
    p.add_argument("--max-new-tokens", type=int, default=DEMO_MAX_NEW_TOKENS)
    p.add_argument("--warmup-max-new-tokens", type=int, default=None)
    p.add_argument("--text", default=PROMPT_1)
    p.add_argument("--speaker", default="aiden")
    p.add_argument("--language", default="english")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument(
        "--chunk-size", type=int, default=12, help="streaming chunk (the anchor's default)"
    )
    p.add_argument(
        "--max-seq-len", type=int, default=2048, help="the anchor's static cache (its default)"
    )
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--profile-tokens", type=int, nargs=2, default=list(PROFILE_TOKENS))
    p.add_argument("--out", default=None, help="also write the record to this JSON file")
    p.add_argument(
        "--batch-sizes",
        default=None,
        help="throughput of B requests one after another, per B (e.g. 1,8); --out is then "
        "a directory",
    )
    p.add_argument("--batch-rounds", type=int, default=DEFAULT_BATCH_ROUNDS)
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs must be >= 1, got {args.runs}")
    if args.batch_sizes is not None:
        try:
            args.batch_sizes = parse_batch_sizes(args.batch_sizes)
        except ValueError as exc:
            p.error(str(exc))
        if args.batch_rounds < 1:
            p.error(f"--batch-rounds must be >= 1, got {args.batch_rounds}")
        if args.out and Path(args.out).suffix == ".json":
            p.error(f"with --batch-sizes, --out is a directory, got {args.out}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "qwen_tts", "faster_qwen3_tts"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    rec = dict.fromkeys(FIELDS)
    rec.update(
        schema=SCHEMA,
        engine="anchor",
        model=args.model_name or args.model_dir,
        dtype=args.dtype,
        device=args.device,
        text=args.text,
        speaker=args.speaker,
        language=args.language,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        runs=args.runs,
    )
    if args.batch_sizes is not None:
        rec.update(engine="faster-qwen3-tts", text=None, speaker=None)
        records = run_sequential(args, rec)
        return int(any(r.get("error") for r in records))
    status = 0
    try:
        rec.update(environment(args.device))
        run(args, rec)
    except Exception as exc:  # a record must come out whatever failed
        log.exception("anchor benchmark failed")
        rec.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        status = 1
    sys.stdout.write(json.dumps(rec) + "\n")
    sys.stdout.flush()
    if args.out:
        write(args.out, rec)
    return status


def write(out: str, record: dict) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
