"""`fastqwen serve`: load one model on one device, warm it up, serve it over HTTP.

One process serves one model with one engine; to use several GPUs, run one process per
GPU (`--device cuda:N --port ...`) behind any HTTP load balancer.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # local only unless asked: the server has no authentication
DEFAULT_PORT = 8000


def register(sub: argparse._SubParsersAction) -> None:
    from fastqwen.tools.serve.settings import ServeSettings

    defaults = ServeSettings()
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP (OpenAI-compatible /v1/audio/speech)",
        description="Serve one model with one engine: POST /v1/audio/speech (OpenAI and "
        "vLLM-Omni fields), GET /v1/models, /v1/audio/voices, /health. Needs the serve "
        "extra: pip install 'fastqwen[serve]'.",
    )
    p.add_argument("--model", required=True, help="model string, e.g. random:1.7b-custom_voice")
    p.add_argument("--served-model-name", help="the `model` clients send (default: --model)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument("--device", default=None, help="cuda:N or cpu (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument(
        "--max-batch-size", type=int, default=8, help="requests generated together (default 8)"
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=defaults.max_queue,
        help=f"requests waiting beyond the batch before 429 (default {defaults.max_queue})",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=defaults.request_timeout_s,
        help=f"seconds before a request is cancelled (default {defaults.request_timeout_s})",
    )
    p.add_argument(
        "--ref-audio-dir",
        type=Path,
        default=None,
        help="directory whose files ref_audio may name by path (default: none, data URLs only)",
    )
    p.add_argument(
        "--clone-cache-size",
        type=int,
        default=defaults.clone_cache_size,
        help=f"voice-clone prompts kept (default {defaults.clone_cache_size})",
    )
    p.add_argument(
        "--engine-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an EngineConfig field, e.g. compile=true (repeatable)",
    )
    p.add_argument("--no-warmup", action="store_true", help="report healthy without a warm-up")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from fastqwen.tools.serve.app import create_app
        from fastqwen.tools.serve.settings import ServeSettings
    except ModuleNotFoundError as err:
        raise OSError(
            f"fastqwen serve needs {err.name}; install the serve extra: "
            "pip install 'fastqwen[serve]'"
        ) from err
    import torch

    from fastqwen.api import FastQwen3TTS
    from fastqwen.config import EngineConfig, parse_engine_options

    settings = ServeSettings(
        model_name=args.served_model_name or args.model,
        max_queue=args.max_queue,
        request_timeout_s=args.request_timeout,
        ref_audio_dir=args.ref_audio_dir,
        clone_cache_size=args.clone_cache_size,
        warmup=not args.no_warmup,
    )
    if args.ref_audio_dir is not None and not args.ref_audio_dir.is_dir():
        raise ValueError(f"--ref-audio-dir {args.ref_audio_dir} is not a directory")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    options = parse_engine_options(args.engine_option)
    if "max_batch_size" in options:
        raise ValueError("set the batch size with --max-batch-size, not --engine-option")
    config = EngineConfig(max_batch_size=args.max_batch_size, **options)
    log.info("loading %s on %s", args.model, device)
    engine = FastQwen3TTS.from_pretrained(
        args.model, device=device, dtype=args.dtype, config=config
    )
    try:
        uvicorn.run(create_app(engine, settings), host=args.host, port=args.port)
    finally:
        engine.close()
    return 0
