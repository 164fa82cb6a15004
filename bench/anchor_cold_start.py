"""The cold start of faster-qwen3-tts ("the anchor"): a fresh process to the end of its first
generation, measured as `fastqwen bench --cold-start` measures ours.

    PYTHONPATH=$ANCHOR_PYTHONPATH python3 bench/anchor_cold_start.py --model-dir DIR \\
        --model-name random:1.7b-custom_voice --out OUT_DIR

The parent is `fastqwen.tools.bench.cold_start` (standard library only, so it loads beside
the anchor's transformers 5): pairs of children with empty, then warm, compile caches. The
anchor keeps no compiled kernels of its own (its CUDA graphs are captured in each
process), so the two should be close; both are kept so the comparison with ours is like
for like. Each child is this script with `--child`: it takes the clock at its first
statement, then imports torch, transformers and faster_qwen3_tts,
`FasterQwen3TTS.from_pretrained` (the anchor reads the weights and sets up its static
cache in one call, `load`), and one `generate_custom_voice` with min_new_tokens =
max_new_tokens (default 64). Writes `cold-start-anchor-<size>.json` into `--out`.
"""

import time

_T0 = time.time()  # the child's clock: before any other import

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# The checkout this script sits in, so its fastqwen imports without an install.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# Standard library only, safe beside transformers 5 and cheap before a child's first lap.
from fastqwen.tools.bench import cold_start  # noqa: E402
from fastqwen.tools.bench.cold_start_child import ChildSpec, PhaseClock  # noqa: E402

log = logging.getLogger("anchor_cold_start")

MAX_SEQ_LEN = 2048  # the anchor's default static cache, as in bench/anchor_bench.py


def child(spec: ChildSpec, result: str) -> int:
    """One cold start of the anchor; its breakdown goes to `result` as JSON."""
    clock = PhaseClock(_T0)
    clock.lap("harness")
    import torch

    clock.lap("import_torch")
    import transformers  # noqa: F401 - timed on its own

    clock.lap("import_transformers")
    from faster_qwen3_tts import FasterQwen3TTS

    clock.lap("import_anchor")
    model = FasterQwen3TTS.from_pretrained(
        spec.model, device=spec.device, dtype=getattr(torch, spec.dtype), max_seq_len=MAX_SEQ_LEN
    )
    torch.cuda.synchronize(spec.device)
    clock.lap("load")
    torch.manual_seed(spec.seed)
    wavs, sr = model.generate_custom_voice(
        text=spec.text,
        speaker=spec.speaker,
        language=spec.language,
        max_new_tokens=spec.max_new_tokens,
        min_new_tokens=spec.max_new_tokens,
    )
    torch.cuda.synchronize(spec.device)
    done = clock.lap("first_generation")
    report = {
        "start_unix": _T0,
        "done_unix": done,
        "since_start_s": round(done - _T0, 4),
        "phases_s": clock.phases,
        "audio_s": round(len(wavs[0]) / sr, 3),
        "device_name": torch.cuda.get_device_name(spec.device),
        "torch": torch.__version__,
    }
    Path(result).write_text(json.dumps(report))
    return 0


def child_command(spec: ChildSpec, result: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", spec.to_json(), str(result)]


def model_size(model_dir: str) -> str:
    """The size in fastqwen's random-checkpoint marker, else "model"."""
    try:
        return json.loads((Path(model_dir) / "fastqwen_random.json").read_text())["size"]
    except (OSError, ValueError, KeyError):
        return "model"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fastqwen.tools.bench.measure import PROMPT_1  # imports torch: the parent only
    from fastqwen.tools.defaults import DEFAULT_SEED

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-dir", required=True, help="checkpoint directory (built by fastqwen)")
    p.add_argument("--model-name", default=None, help="label for the record (default: the dir)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--max-new-tokens", type=int, default=cold_start.DEFAULT_TOKENS)
    p.add_argument("--text", default=PROMPT_1)
    p.add_argument("--speaker", default="aiden")
    p.add_argument("--language", default="english")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--runs", type=int, default=1, help="pairs of (empty, warm) processes")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per child")
    p.add_argument("--out", required=True, help="directory for cold-start-anchor-<size>.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--child"]:
        return child(ChildSpec(**json.loads(sys.argv[2])), sys.argv[3])
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    size = model_size(args.model_dir)
    spec = ChildSpec(
        model=args.model_dir,
        device=args.device,
        dtype=args.dtype,
        text=args.text,
        speaker=args.speaker,
        language=args.language,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
    )
    try:
        config = cold_start.ColdStartConfig(spec, runs=args.runs, timeout_s=args.timeout)
        path = Path(args.out) / f"cold-start-anchor-{size}.json"
        if path.exists():
            raise ValueError(f"{path} exists; bench results are never overwritten")
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    spawn = functools.partial(cold_start.spawn_child, command=child_command)
    pairs = cold_start.measure_pairs(config, spawn)
    from fastqwen.tools.env import git_state, package_version

    commit, dirty = git_state()
    record = {
        "schema": cold_start.SCHEMA,
        "engine": "anchor",
        "model": args.model_name or args.model_dir,
        "model_path": args.model_dir,
        "size": size,
        "dtype": args.dtype,
        "device": args.device,
        "device_name": next(
            (r.breakdown["device_name"] for p in pairs for r in p if r.breakdown), None
        ),
        "package": f"faster-qwen3-tts {package_version('faster-qwen3-tts')}",
        "git_commit": commit,
        "git_dirty": dirty,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python_executable": sys.executable,
        "cache_vars": sorted(cold_start.CACHE_VARS),
        "spec": json.loads(spec.to_json()),
        "runs": args.runs,
        **cold_start.summary_fields(pairs),
    }
    sys.stdout.write(json.dumps(record) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    log.info("wrote %s", path)
    return 1 if record["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
