"""Command line: `python -m fastqwen <command>` (or the `fastqwen` console script).

Commands are argparse subparsers. Each sets `func` (called with the parsed namespace,
returns an exit code). Other modules add commands without editing this file: a module
listed in `PLUGIN_MODULES` that exists and defines `register(subparsers)` is imported by
`build_parser()` and registers its own subparser (e.g. `fastqwen.tools.bench.run` for `bench`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict

from fastqwen import __version__
from fastqwen import constants as C

log = logging.getLogger(__name__)

# Optional command modules, each with `register(subparsers: argparse._SubParsersAction)`.
PLUGIN_MODULES = (
    "fastqwen.tools.bench.run",
    "fastqwen.tools.serve.run",
    "fastqwen.tools.say",
    "fastqwen.tools.warmup",
    "fastqwen.tools.loadtest",
)


def _make_checkpoint(args: argparse.Namespace) -> int:
    from fastqwen.models.checkpoints import build_random_checkpoint

    out = build_random_checkpoint(
        args.size, args.kind, args.out_dir, seed=args.seed, device=args.device
    )
    print(out)
    return 0


def _resolve(args: argparse.Namespace) -> int:
    from fastqwen.models.sources import resolve_model

    source = resolve_model(args.model)
    print(json.dumps(asdict(source), indent=2))
    if source.banner():
        print(f"WARNING: {source.banner()}", file=sys.stderr)
    return 0


def _register_builtin(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-checkpoint",
        help="build a random-weight checkpoint with the real layout",
        description="Build a random-weight Qwen3-TTS checkpoint that qwen_tts loads unchanged.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="directory to write (created if missing)")
    p.add_argument("--size", required=True, choices=C.MODEL_SIZES, help="model size")
    p.add_argument("--kind", required=True, choices=C.MODEL_KINDS, help="model kind")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    p.add_argument(
        "--device", default="cpu", help="device to build on; cuda makes 1.7b take seconds"
    )
    p.set_defaults(func=_make_checkpoint)

    p = sub.add_parser(
        "resolve",
        help="show what a model string resolves to",
        description="Resolve a model string (HF id, directory, random:<size>-<kind>, "
        "auto:<HF id>) and print the result as JSON. Builds random checkpoints on first use.",
    )
    p.add_argument("model", metavar="MODEL")
    p.set_defaults(func=_resolve)


def build_parser() -> argparse.ArgumentParser:
    """The full parser: built-in commands plus those of any installed plugin module."""
    parser = argparse.ArgumentParser(prog="fastqwen", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fastqwen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _register_builtin(sub)
    for name in PLUGIN_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the plugin exists but one of its imports is missing
                raise
            continue
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m fastqwen` and the `fastqwen` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # qwen_tts and transformers log every config default at INFO; keep the output readable.
    for noisy in ("qwen_tts", "transformers"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:  # bad input (a model string, a path): one line
        if args.verbose:
            logging.getLogger(__name__).debug("traceback", exc_info=True)
        print(f"fastqwen {args.command}: error: {exc}", file=sys.stderr)
        return 2
