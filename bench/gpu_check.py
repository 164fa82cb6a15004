"""GPU correctness checks for the static engine, run on the device machine.

Writes one JSON document with:
- exact-code parity on CUDA in fp32 (TF32 off): reference vs eager static step vs
  CUDA-graph replay (and graph + torch.compile), greedy and sampled, same seed;
- a sync check: one captured frame replayed under `torch.cuda.set_sync_debug_mode("error")`;
- bf16 teacher-forced logits (static vs reference) at full size: KL per frame,
  argmax agreement, NaN/Inf;
- bf16 streamed vs non-streamed audio at full size: the same codes, and the audio within
  the codec's own rounding on those codes (`fastqwen.verify.streaming`);
- quick bf16 timings of the graph paths, for orientation (the bench reports the real ones).

usage: python bench/gpu_check.py OUT.json [--size 1.7b] [--frames 100] [--skip-compile]
       [--steps fp32_exact_codes,sync_free,bf16]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import traceback

import numpy as np
import torch

from fastqwen import EngineConfig, FastQwen3TTS
from fastqwen.config import SamplingParams
from fastqwen.engine.sampling import SamplingMode
from fastqwen.models.checkpoints import build_random_checkpoint
from fastqwen.prompts.builder import VoiceRequest
from fastqwen.tools.defaults import DEFAULT_SEED, SEED_PROMPTS
from fastqwen.verify.parity import compare_codes, teacher_forced
from fastqwen.verify.reference import run_reference
from fastqwen.verify.streaming import compare_stream

REQUEST = VoiceRequest("custom_voice", SEED_PROMPTS[0], "english", speaker="aiden")


def load(path: str, dtype: torch.dtype):
    from qwen_tts import Qwen3TTSModel

    return Qwen3TTSModel.from_pretrained(
        path, dtype=dtype, device_map="cuda", attn_implementation="sdpa"
    )


def exact_codes(tts, frames: int, compile_too: bool) -> dict:
    """Reference vs eager vs graph (vs compiled graph), fp32, greedy and sampled."""
    out = {}
    engines = {
        "eager": FastQwen3TTS(tts, EngineConfig(cuda_graph=False)),
        "graph": FastQwen3TTS(tts, EngineConfig(cuda_graph=True)),
    }
    if compile_too:
        engines["graph_compiled"] = FastQwen3TTS(tts, EngineConfig(cuda_graph=True, compile=True))
    for mode, params in {
        "greedy": SamplingParams(
            max_new_tokens=frames + 1, do_sample=False, subtalker_dosample=False
        ),
        "sampled": SamplingParams(max_new_tokens=frames + 1),
    }.items():
        ref = run_reference(tts, REQUEST, params, seed=DEFAULT_SEED)
        row = {"reference_frames": ref.frames, "reference_eos": ref.eos_reached}
        for name, eng in engines.items():
            try:
                res = eng.generate(REQUEST, params, seed=DEFAULT_SEED)
                p = compare_codes(res, ref)
                row[name] = {
                    "identical": p.identical,
                    "describe": p.describe(),
                    "frames": res.frames,
                }
            except Exception as e:  # keep going: one broken path must not hide the others
                row[name] = {"error": repr(e), "trace": traceback.format_exc()[-2000:]}
        out[mode] = row
    return out


def sync_free(tts) -> dict:
    """Replay a captured frame and run an eager frame with host syncs turned into errors."""
    eng = FastQwen3TTS(tts, EngineConfig(cuda_graph=True))
    params = SamplingParams(max_new_tokens=20)
    eng.generate(REQUEST, params, seed=0)  # captures
    replay = next(iter(eng.runner.frame_graphs.values())).replay
    result = {}
    torch.cuda.synchronize()
    try:
        torch.cuda.set_sync_debug_mode("error")
        for _ in range(3):
            replay()
        result["graph_replay"] = "no sync"
    except Exception as e:
        result["graph_replay"] = repr(e)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    eager = FastQwen3TTS(tts, EngineConfig(cuda_graph=False))
    eager.generate(REQUEST, params, seed=0)  # leaves params in the runner's sampling tensors
    step = eager.runner.step(next(iter(eager.runner.views.values())), SamplingMode())
    torch.cuda.synchronize()
    try:
        torch.cuda.set_sync_debug_mode("error")
        step()
        result["eager_step"] = "no sync"
    except Exception as e:
        result["eager_step"] = repr(e)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return result


def stream_vs_generate(eng: FastQwen3TTS, params: SamplingParams) -> dict:
    """The same request streamed and not: codes equal, audio within the codec's rounding."""
    eng.generate(REQUEST, params, seed=DEFAULT_SEED)  # warm: window, graphs
    list(eng.stream(REQUEST, params, seed=DEFAULT_SEED))  # warm: codec graphs
    whole = eng.generate(REQUEST, params, seed=DEFAULT_SEED)
    chunks = list(eng.stream(REQUEST, params, seed=DEFAULT_SEED))
    streamed = np.concatenate([c.audio for c in chunks])
    codes = whole.codes.to(eng.device)
    check = compare_stream(streamed, whole.audio, eng.tts.model.speech_tokenizer, codes)
    return {
        "same_codes": bool(torch.equal(eng.last_results[0].codes, whole.codes)),
        "frames": whole.frames,
        "chunks": len(chunks),
        "ttfa_ms": round(1000 * chunks[0].elapsed_s, 2),
        **check.summary(),
        "describe": check.describe(),
    }


def bf16_checks(tts, frames: int, compile_too: bool) -> dict:
    params = SamplingParams(max_new_tokens=frames + 1)
    ref = run_reference(tts, REQUEST, params, seed=DEFAULT_SEED)
    out = {"reference_frames": ref.frames, "reference_ms_per_frame": ref.ms_per_frame}
    eng = FastQwen3TTS(tts, EngineConfig(cuda_graph=True, compile=compile_too))
    forced = teacher_forced(eng, tts, REQUEST, ref.codes)
    summary = forced.summary()
    summary["nan_or_inf"] = any(
        not math.isfinite(x) for x in forced.cb0_kl + forced.sub_kl + forced.cb0_max_abs
    )
    out["teacher_forced"] = summary
    out["teacher_forced_cb0_kl_per_frame"] = [round(x, 6) for x in forced.cb0_kl]
    out["stream_vs_generate"] = stream_vs_generate(eng, params)
    timings = {}
    for name, cfg in {
        "graph": EngineConfig(cuda_graph=True),
        "graph_compiled": EngineConfig(compile=True),
    }.items():
        if name == "graph_compiled" and not compile_too:
            continue
        e = FastQwen3TTS(tts, cfg)
        t0 = time.perf_counter()
        e.generate(REQUEST, params, seed=1)
        warm = time.perf_counter() - t0
        runs = [e.generate(REQUEST, params, seed=1) for _ in range(3)]
        res = runs[-1]
        finite = bool(torch.isfinite(torch.as_tensor(res.audio)).all())
        timings[name] = {
            "warmup_s": round(warm, 2),
            "ms_per_frame": [round(r.ms_per_frame, 3) for r in runs],
            "prefill_ms": round(1000 * res.prefill_s, 2),
            "frames": res.frames,
            "audio_finite": finite,
        }
    out["timings"] = timings
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--size", default="1.7b")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument(
        "--steps", default="fp32_exact_codes,sync_free,bf16", help="comma-separated steps to run"
    )
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "size": args.size}
    compile_too = not args.skip_compile
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_random_checkpoint(args.size, "custom_voice", f"{tmp}/ck", device="cuda")
        report["build_s"] = round(time.perf_counter() - t0, 1)
        steps = [
            (
                "fp32_exact_codes",
                lambda: exact_codes(load(f"{tmp}/ck", torch.float32), args.frames, compile_too),
            ),
            ("sync_free", lambda: sync_free(load(f"{tmp}/ck", torch.bfloat16))),
            (
                "bf16",
                lambda: bf16_checks(load(f"{tmp}/ck", torch.bfloat16), args.frames, compile_too),
            ),
        ]
        for name, fn in steps:
            if name not in args.steps.split(","):
                continue
            t0 = time.perf_counter()
            try:
                report[name] = fn()
            except Exception as e:
                report[name] = {"error": repr(e), "trace": traceback.format_exc()[-3000:]}
            report[name + "_s"] = round(time.perf_counter() - t0, 1)
            torch.cuda.empty_cache()
            print(json.dumps({name: report[name]}, default=str)[:3000], flush=True)
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
