"""Where voice clone's time to first audio goes: the path from a reference file to the first
chunk, stage by stage, with a device sync after each.

For each of ICL and x-vector, with a new reference (never seen: both encoders run) and a
cached one (its prompt in the engine's voice cache), after one warm-up pass, the median of
`--runs` passes of these stages (`STAGES` says what each covers):

    cache_lookup -> [read -> hash -> resample -> speaker_encoder -> codec_encoder (ICL)]
    (new only)
    -> prompt_build -> [codec_prime] (ICL only) -> prefill -> first_frames -> scheduling
    -> first_chunk_decode

They are the calls `FastQwen3TTS.stream_voice_clone` makes, in the same order, made one at a
time here (`create_voice_clone_prompt`, `_encode_voice`, `submit`, `RequestHandle.__iter__`);
the stream primes its decoder while the scheduler prefills, here before the submit, so each
is timed alone. `end_to_end_ms` times the public call itself (`clone.clone_ttfa_ms`), for
comparison with `stage_sum_ms`. The first new pass checks that these stages make the
engine's very prompt (the same codes and speaker vector).

    PYTHONPATH=. python bench/clone_ttfa.py OUT.json                       # random:1.7b-base
    PYTHONPATH=. python bench/clone_ttfa.py /tmp/c.json --model random:tiny-base \\
        --device cpu --runs 1                                              # smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from fastqwen import EngineConfig, FastQwen3TTS
from fastqwen.codec.decoder import StreamingDecoder
from fastqwen.config import parse_engine_options
from fastqwen.device import synchronize
from fastqwen.prompts.builder import VoiceRequest, build_talker_prompt
from fastqwen.prompts.reference_audio import load_reference_audio
from fastqwen.prompts.speaker import speaker_embedding
from fastqwen.prompts.voice_cache import file_identity, voice_key
from fastqwen.results import GenerationStopped
from fastqwen.tools.bench.clone import (
    CLONE_MODES,
    REFERENCE_FILE_RATE,
    REFERENCE_SECONDS,
    CloneCase,
    Reference,
    clone_ttfa_ms,
)
from fastqwen.tools.bench.run import BenchConfig, environment
from fastqwen.tools.defaults import demo_sampling

SCHEMA = "fastqwen-clone-ttfa/1"
STAGES = {
    "cache_lookup": "file_identity (real path, size, inode, mtime) and the voice cache's "
    "file memo and get: a miss for a new reference, the prompt item for a cached one "
    "(an unchanged file seen before is not read again)",
    "read": "new only: load_reference_audio(path, target_sr=None): read the 16-bit WAV, mix "
    "to mono, check it (the voice cache's key is the recording as given)",
    "hash": "new only: voice_key (SHA-256 of the samples, rate, text, mode) and its get",
    "resample": f"new only: {REFERENCE_FILE_RATE} Hz -> 24 kHz (soxr HQ, as librosa)",
    "speaker_encoder": "new only: prompts.speaker.speaker_embedding, qwen-tts' "
    "extract_speaker_embedding with its mel filter bank kept (mel spectrogram on the host, "
    "then the speaker encoder) -> the x-vector",
    "codec_encoder": "new ICL only: the engine's reference_codes.encode (speech_tokenizer's "
    "encoder, a CUDA graph per 2 s length bucket) -> reference codes (R, 16); the engine "
    "skips it for x-vector prompts, which qwen-tts 0.1.1 encodes and then drops. In the "
    "engine it runs on the GPU while the host computes the speaker encoder's mel "
    "spectrogram; here alone",
    "prompt_build": "build_talker_prompt: qwen-tts' generate_voice_clone up to the talker "
    "(text tokens, embeddings, ICL: reference text and codes embedded)",
    "codec_prime": "ICL only: a StreamingDecoder and prime(ref codes): decoding context only",
    "prefill": "the scheduler's prefill of the prompt (its own timing, synced)",
    "first_frames": "the first chunk's frames (talker + code predictor), codes to the host "
    "(the scheduler's block timings)",
    "scheduling": "submit to first chunk's codes received, minus prefill and first_frames: "
    "admitting the request (loading its slot) and the hand-over between threads",
    "first_chunk_decode": "decoder.push(first chunk) through the engine's codec thread, "
    "while the scheduler goes on generating, as in a stream: dequantise, the codec "
    "transformer over the window (ICL: over the primed reference codes too), the vocoder "
    "convs on the new frames",
}

log = logging.getLogger("clone_ttfa")


def _timed(dev: torch.device, fn):
    """(result, ms) of fn(), the device synced before and after."""
    synchronize(dev)
    t0 = time.perf_counter()
    out = fn()
    synchronize(dev)
    return out, 1000 * (time.perf_counter() - t0)


def _encode(fast: FastQwen3TTS, wav, sr: int, case: CloneCase, ref_text, dev, ms: dict):
    """What `fast._encode_voice` (qwen-tts' create_voice_clone_prompt) computes, a stage
    at a time."""
    from qwen_tts.inference.qwen3_tts_model import VoiceClonePromptItem

    model = fast.tts.model
    spk, ms["speaker_encoder"] = _timed(dev, lambda: speaker_embedding(model, wav))
    only = case.x_vector_only
    enc = None
    if not only:
        enc, ms["codec_encoder"] = _timed(dev, lambda: fast.reference_codes.encode(wav))
    return VoiceClonePromptItem(
        ref_code=None if only else enc,
        ref_spk_embedding=spk,
        x_vector_only_mode=only,
        icl_mode=not only,
        ref_text=ref_text,
    )


def _first_chunk(fast: FastQwen3TTS, prompt, decoder, params, cfg, dev, ms: dict) -> None:
    """Submit, wait for the first chunk's codes, decode them; then cancel the request."""
    job = fast.scheduler.job(prompt, params, cfg.seed, first_block=cfg.first_chunk_frames)
    job.wake_frames = need = decoder.frames_to_next_chunk
    synchronize(dev)
    t0 = time.perf_counter()
    fast.scheduler.submit_many([job])
    blocks, got, codes = job.blocks(), 0, []
    while got < need:
        codes.append(next(blocks))
        got += int(codes[-1].shape[0])
    wait_ms = 1000 * (time.perf_counter() - t0)
    stats = job.stats
    ms["prefill"] = 1000 * stats.prefill_s
    ms["first_frames"] = 1000 * sum(stats.block_times_s[: len(codes)])
    ms["scheduling"] = wait_ms - ms["prefill"] - ms["first_frames"]
    audio, ms["first_chunk_decode"] = _timed(dev, lambda: decoder.push(torch.cat(codes)))
    if audio is None or not len(audio):
        raise RuntimeError(f"no audio after {got} frames; expected the first chunk's")
    job.cancel()
    try:
        for _ in blocks:  # until the scheduler frees the slot
            pass
    except GenerationStopped:
        pass


def one_pass(fast, case: CloneCase, path: Path, ref: Reference, params, cfg, dev, check=False):
    """Stage times (ms) of one pass from the reference file to the first chunk, and the
    prompt's length."""
    ms: dict[str, float] = {}
    ref_text = None if case.x_vector_only else ref.text

    def lookup():
        file = (file_identity(path), ref_text or "", case.x_vector_only)
        key = fast.voice_cache.key_of_file(file)
        return file, (fast.voice_cache.get(key) if key is not None else None)

    (file, items), ms["cache_lookup"] = _timed(dev, lookup)
    if (items is not None) != case.reference_cached:
        raise RuntimeError(f"{case.name}: voice cache {'hit' if items else 'miss'} for {path}")
    if items is None:
        (raw, raw_sr), ms["read"] = _timed(
            dev, lambda: load_reference_audio(str(path), target_sr=None)
        )

        def hashed():
            return fast.voice_cache.get(voice_key(raw, raw_sr, ref_text, case.x_vector_only))

        _, ms["hash"] = _timed(dev, hashed)
        (wav, sr), ms["resample"] = _timed(dev, lambda: load_reference_audio((raw, raw_sr)))
        item = _encode(fast, wav, sr, case, ref_text, dev, ms)
        if check:
            _check_same_prompt(item, fast._encode_voice(wav, sr, ref_text, case.x_vector_only)[0])
    else:
        item = items[0]
    request = VoiceRequest("voice_clone", cfg.text, cfg.language, voice_clone_prompt=[item])
    prompt, ms["prompt_build"] = _timed(dev, lambda: build_talker_prompt(fast.tts, request))

    def primed() -> StreamingDecoder:
        decoder = StreamingDecoder(
            fast.tts.model.speech_tokenizer,
            first_chunk_frames=cfg.first_chunk_frames,
            chunk_frames=cfg.chunk_frames,
            decode=fast.codec.decode,
        )
        if prompt.ref_codes is not None:
            decoder.prime(prompt.ref_codes)
        return decoder

    if prompt.ref_codes is not None:
        decoder, ms["codec_prime"] = _timed(dev, primed)
    else:
        decoder = primed()
    _first_chunk(fast, prompt, decoder, params, cfg, dev, ms)
    return ms, prompt.prompt_len


def _check_same_prompt(ours, engine) -> None:
    """The stages must compute what the engine computes, or the breakdown times other work."""
    same_codes = (ours.ref_code is None and engine.ref_code is None) or torch.equal(
        ours.ref_code, engine.ref_code
    )
    same_spk = torch.allclose(ours.ref_spk_embedding, engine.ref_spk_embedding, atol=1e-5)
    if not (same_codes and same_spk and ours.icl_mode == engine.icl_mode):
        raise RuntimeError(
            "the staged encoders made another prompt than FastQwen3TTS._encode_voice "
            f"(codes equal: {same_codes}, speaker vector close: {same_spk}); "
            "update _encode to follow qwen-tts' create_voice_clone_prompt"
        )


def measure(fast, case: CloneCase, ref: Reference, folder: Path, params, cfg, dev) -> dict:
    """Warm-up, then `cfg.runs` passes (each new reference written before its pass) and as
    many public calls; the median per stage."""
    cached = ref.write(folder / "reference.wav")
    if case.reference_cached:  # the engine encodes it once, as an app's first request would
        fast.create_voice_clone_prompt(
            str(cached), None if case.x_vector_only else ref.text, case.x_vector_only
        )
    seeds = iter(range(1_000_000 * (1 + CLONE_MODES.index(case.mode)), 10**9))

    def path() -> Path:
        if case.reference_cached:
            return cached
        seed = next(seeds)
        return ref.perturbed(seed).write(folder / f"new_{seed}.wav")

    passes, lens = zip(
        *(
            one_pass(fast, case, path(), ref, params, cfg, dev, check=i == 0)
            for i in range(cfg.runs + 1)  # the first is the warm-up
        ),
        strict=True,
    )
    passes = passes[1:]
    clone_ttfa_ms(fast, path(), ref, case, params, cfg, dev)  # the public call's warm-up
    ends = [clone_ttfa_ms(fast, path(), ref, case, params, cfg, dev) for _ in range(cfg.runs)]
    stage_runs = {name: [round(p[name], 3) for p in passes] for name in passes[0]}
    stages = {name: round(statistics.median(v), 3) for name, v in stage_runs.items()}
    return {
        "mode": case.mode,
        "reference_cached": case.reference_cached,
        "stages_ms": stages,
        "stage_runs_ms": stage_runs,
        "stage_sum_ms": round(sum(stages.values()), 3),
        "end_to_end_ms": round(statistics.median(ends), 3),
        "end_to_end_runs_ms": [round(e, 3) for e in ends],
        "prompt_len": lens[0],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", help="the JSON file to write")
    p.add_argument("--model", default="random:1.7b-base", help="a Base model (%(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--runs", type=int, default=5, help="timed passes per variant (%(default)s)")
    p.add_argument("--modes", default=",".join(CLONE_MODES), help="of %(default)s")
    p.add_argument("--reference", help="the recording to clone (default: synthesised)")
    p.add_argument("--reference-text", help="its transcript")
    p.add_argument("--reference-seconds", type=float, default=REFERENCE_SECONDS)
    p.add_argument("--first-chunk-frames", type=int, default=2)
    p.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("qwen_tts", "transformers", "fastqwen.prompts.reference_audio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    cases = [CloneCase(m, cached) for m in modes for cached in (False, True)]
    dtype = args.dtype or ("bfloat16" if str(args.device).startswith("cuda") else "float32")
    dev = torch.device(args.device)
    cfg = BenchConfig(runs=args.runs, first_chunk_frames=args.first_chunk_frames)
    params = demo_sampling()
    ref = (
        Reference.load(args.reference, args.reference_text, args.reference_seconds)
        if args.reference
        else Reference.synthetic(args.reference_seconds)
    )
    config = EngineConfig(**parse_engine_options(args.engine_option))
    t0 = time.perf_counter()
    fast = FastQwen3TTS.from_pretrained(args.model, device=args.device, dtype=dtype, config=config)
    load_s = time.perf_counter() - t0
    fast.warmup(buckets=(1,))  # batch 1's graphs before any pass: none of them captures
    result = {
        "schema": SCHEMA,
        "model": args.model,
        "dtype": dtype,
        "device": str(dev),
        **environment(dev),
        "engine_config": dataclasses.asdict(fast.config),
        "load_s": round(load_s, 3),
        "runs": args.runs,
        "text": cfg.text,
        "first_chunk_frames": cfg.first_chunk_frames,
        "reference_s": round(ref.seconds, 3),
        "reference_file_rate": REFERENCE_FILE_RATE,
        "stages": STAGES,
        "variants": [],
    }
    status = 0
    try:
        with tempfile.TemporaryDirectory(prefix="clone-ttfa-") as folder:
            for case in cases:
                try:
                    variant = measure(fast, case, ref, Path(folder), params, cfg, dev)
                except Exception as exc:  # one variant failing keeps the others
                    log.exception("%s failed", case.name)
                    variant = {
                        "mode": case.mode,
                        "reference_cached": case.reference_cached,
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                    status = 1
                log.info("%s: %s", case.name, json.dumps(variant.get("stages_ms", variant)))
                result["variants"].append(variant)
    finally:
        fast.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for v in result["variants"]:
        if "stages_ms" in v:
            line = "  ".join(f"{k} {t:.1f}" for k, t in v["stages_ms"].items())
            print(f"{v['mode']:<14} {'cached' if v['reference_cached'] else 'new':<6} "
                  f"sum {v['stage_sum_ms']:.1f} ms (public call {v['end_to_end_ms']:.1f}): "
                  f"{line}")  # fmt: skip
    return status


if __name__ == "__main__":
    sys.exit(main())
